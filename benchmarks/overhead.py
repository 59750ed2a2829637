"""The cost of measuring (issue 18): whole-run CPU-time ratios of ``losslens.torch.LossLens`` on real workloads,
side by side with the approaches users have now, and whether the probe buys the precision it claims.

Workloads (one torch thread, generated data, seeded):

* ``cnn``: three conv blocks 32-64-128 (batch norm, ReLU, max-pool), dropout 0.2, global average pooling, a linear
  head; 32x32x3 images of 10 classes (a smooth class template plus noise), 20 000 training and 5 000 validation
  images, batch 64, SGD with momentum, 5 epochs. The user's own validation pass: eval mode, batches of 256.
* ``transformer``: a 2-layer BERT built from a ``BertConfig`` (hidden 128, 4 heads, 64 tokens, vocabulary 1 000),
  4-class sequence classification, 4 000 training and 1 000 validation sequences, batch 32, AdamW, 3 epochs.
  The user's validation pass: batches of 64.
* ``mlp``: the earlier benchmark's task, kept for continuity: ``make_classification`` with 40 features and 10
  classes, 50 000 training and 10 000 validation samples, an MLP 40-256-256-10 with dropout 0.2, batch 64, Adam,
  3 epochs. The user's validation pass: batches of 1024.

Variants, each a whole run (construction, training, every epoch end) in its own fresh Python process, timed with
``time.process_time`` (that process's CPU time) after a warm-up. The variants of a repetition run in lockstep
(``run_lockstep``): they take turns on one core every ``TURN_STEPS`` training steps (about 1-4 s) and at every epoch
end, the others blocked on a pipe meanwhile, so the drifts of this shared machine's speed (the MLP's plain loop took
5.6-8.3 s CPU in ten runs one after another) hit all of them alike:

* ``plain``: the training loop with the user's own validation pass each epoch;
* ``default``: ``LossLens(model, loss, train_data=(X, y), val_data=val_loader)`` with its defaults, where
  ``val_loader`` is the ``DataLoader`` of the user's validation pass (its batch size), and the user's validation
  pass removed (the recorder measures the validation loss);
* ``step-only`` (MLP only): ``probe_size=0`` and no ``val_data``: ``lens.step`` every step, the user's pass stays;
* ``full pass``: plain plus an eval-mode pass over the whole training set each epoch (what ``trueloss`` does);
* ``subset pass``: plain plus an eval-mode pass over a fixed training subset as large as the default probe (the
  Hugging Face ``eval_dataset`` approach).

Printed per workload and variant: the median CPU-time ratio to ``plain`` over the repetitions, with its range, and
the ``default`` run's probe size and eval batch size. Repetition ``r`` uses seed ``r`` for every variant (data
order, initial weights), so its variants train bit-identical weights; the full-pass anchor's exact eval-mode loss
over the whole training set is then compared with the ``default`` run's probe estimate ``C`` of the same epoch:
the share of epochs where it lies within 2 standard errors is the coverage (goal >= 95 %). Each repetition's
``default`` run draws its own probe (``probe_seed=r``; the cost does not depend on it). The probe is stratified by
class, as the recorder does for labels it can read (``probe_permutation``); the redrawn probes use the same design.

Run::

    python benchmarks/overhead.py                                   # all three workloads, 5 repetitions
    python benchmarks/overhead.py --workloads mlp --reps 3          # one workload
    python benchmarks/overhead.py --workloads cnn --reps 2 --json a.json   # save the runs...
    python benchmarks/overhead.py --merge a.json b.json             # ...and print the table of several

    python benchmarks/overhead.py --pass-costs                      # training step vs probe pass, per sample

(the CNN takes about 18 minutes of CPU per repetition; two processes with ``--first-rep`` can share two cores:
each repetition's variants take turns with each other, so a steady load on the other core hits them alike).
``--device cuda`` runs the same on a GPU and counts host-device synchronisations per step inside ``lens.step``
(``torch.cuda.set_sync_debug_mode``; goal: none).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from losslens.record import EVAL_CLEAN  # noqa: E402
from losslens.recording.probe import class_strata, probe_permutation  # noqa: E402
from losslens.torch import LossLens  # noqa: E402

# -- workloads ------------------------------------------------------------------------------------------------

def cnn_data(seed: int = 0, n_train: int = 20_000, n_val: int = 5_000):
    g = torch.Generator().manual_seed(1000 + seed)
    templates = nn.functional.interpolate(torch.randn(10, 3, 8, 8, generator=g), size=32, mode="bilinear",
                                          align_corners=False)
    y = torch.randint(0, 10, (n_train + n_val,), generator=g)
    X = 0.6 * templates[y] + torch.randn(n_train + n_val, 3, 32, 32, generator=g)
    return X[:n_train], y[:n_train], X[n_train:], y[n_train:]


def cnn_model() -> nn.Module:
    def block(i: int, o: int) -> list[nn.Module]:
        return [nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(), nn.MaxPool2d(2)]
    return nn.Sequential(*block(3, 32), *block(32, 64), *block(64, 128), nn.Dropout(0.2), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(128, 10))


def transformer_data(seed: int = 0, n_train: int = 4_000, n_val: int = 1_000, length: int = 64):
    g = torch.Generator().manual_seed(2000 + seed)
    X = torch.randint(4, 1000, (n_train + n_val, length), generator=g)
    y = torch.randint(0, 4, (n_train + n_val,), generator=g)
    # the class is written by a few key tokens at random places, among noise tokens
    for k in range(4):
        pos = torch.randint(0, length, (n_train + n_val, 3), generator=g)
        keep = y == k
        X[keep.nonzero().squeeze(1)[:, None], pos[keep]] = k
    return X[:n_train], y[:n_train], X[n_train:], y[n_train:]


def transformer_model() -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(vocab_size=1000, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=256, max_position_embeddings=64, num_labels=4)

    class Classifier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = BertForSequenceClassification(cfg)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.bert(input_ids=ids).logits
    return Classifier()


def mlp_data(seed: int = 0, n_train: int = 50_000, n_val: int = 10_000):
    from sklearn.datasets import make_classification

    X, y = make_classification(n_samples=n_train + n_val, n_features=40, n_informative=20, n_redundant=5,
                               n_classes=10, n_clusters_per_class=2, class_sep=1.0, flip_y=0.02, random_state=0)
    X, y = torch.tensor(X, dtype=torch.float32), torch.tensor(y, dtype=torch.long)
    return X[:n_train], y[:n_train], X[n_train:], y[n_train:]


def mlp_model() -> nn.Module:
    return nn.Sequential(nn.Linear(40, 256), nn.ReLU(), nn.Dropout(0.2), nn.Linear(256, 256), nn.ReLU(),
                         nn.Dropout(0.2), nn.Linear(256, 10))


WORKLOADS = {
    # name: (data, model, optimizer, batch, user's validation batch, epochs, variants)
    "cnn": (cnn_data, cnn_model, lambda p: torch.optim.SGD(p, lr=0.02, momentum=0.9), 64, 256, 5,
            ("plain", "default", "full pass", "subset pass")),
    "transformer": (transformer_data, transformer_model, lambda p: torch.optim.AdamW(p, lr=5e-4), 32, 64, 3,
                    ("plain", "default", "full pass", "subset pass")),
    "mlp": (mlp_data, mlp_model, lambda p: torch.optim.Adam(p, lr=1e-3), 64, 1024, 3,
            ("plain", "default", "step-only", "full pass", "subset pass")),
}


# -- one run --------------------------------------------------------------------------------------------------

def eval_pass(model: nn.Module, X: torch.Tensor, y: torch.Tensor, batch: int, device: torch.device,
              per_sample: bool = False):
    """Mean eval-mode cross-entropy over (X, y), in batches, as a user writes it (or the per-sample losses)."""
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    parts = []
    with torch.no_grad():
        for i in range(0, len(y), batch):
            out = model(X[i:i + batch].to(device))
            losses = nn.functional.cross_entropy(out, y[i:i + batch].to(device), reduction="none")
            total += losses.double().sum()
            if per_sample:
                parts.append(losses.double().cpu())
    return torch.cat(parts).numpy() if per_sample else float(total) / len(y)


#: Probe redraws per epoch for the redraw coverage (as the issue's measurement: 2 000; ``--redraws``).
REDRAWS = 2000

#: Training steps per turn in lockstep (:func:`run_lockstep`): about 1-4 s of CPU on this machine's cores.
TURN_STEPS = {"cnn": 25, "transformer": 25, "mlp": 100}


def redraw_coverage(losses: np.ndarray, n: int, seed: int, strata: np.ndarray | None, redraws: int) -> float:
    """Share of ``redraws`` probes of ``n`` samples, drawn with the recorder's design (``probe_permutation`` with
    seeds other than the run's, stratified by ``strata`` when given), whose mean lies within 2 standard errors
    (their own sample standard deviation / sqrt(n)) of the mean over every sample."""
    full = float(losses.mean())
    hits = 0
    for k in range(redraws):
        sub = losses[probe_permutation(10_000 * (seed + 1) + k, losses.size, strata)[:n]]
        hits += abs(float(sub.mean()) - full) <= 2 * float(sub.std(ddof=1)) / math.sqrt(n)
    return hits / redraws


def run_once(workload: str, variant: str, data, seed: int, epochs: int, subset: int, device: torch.device,
             store_dir: Path, redraws: int = REDRAWS, turn: Callable[[], None] | None = None) -> dict:
    """One whole run of ``variant``; ``turn()`` (lockstep, :func:`run_lockstep`) is called every
    :data:`TURN_STEPS` training steps and after each epoch's end, at the same places in every variant."""
    make_data, make_model, make_opt, batch, val_batch, _, _ = WORKLOADS[workload]
    Xtr, ytr, Xva, yva = data
    c0 = time.process_time()
    faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.manual_seed(seed)
    model = make_model().to(device)
    opt = make_opt(model.parameters())
    loss_fn = nn.CrossEntropyLoss()
    lens = None
    store = str(store_dir / f"{workload}-{variant}-{time.perf_counter_ns()}.db")
    # CPU seconds of the parts timed once per epoch (a diagnostic; lens.step is not timed, to leave it untouched)
    parts = {"setup": 0.0, "epoch end": 0.0, "user validation": 0.0}
    c1 = time.process_time()
    if variant == "default":
        # defaults, except the probe's seed: each repetition draws its own probe, so the coverage counts draws
        val_loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(Xva, yva), batch_size=val_batch)
        lens = LossLens(model, loss_fn, train_data=(Xtr, ytr), val_data=val_loader, run=variant, store=store,
                        probe_seed=seed)
    elif variant == "step-only":
        lens = LossLens(model, loss_fn, train_data=(Xtr, ytr), run=variant, store=store, probe_size=0)
    parts["setup"] = time.process_time() - c1
    subset_idx = torch.from_numpy(np.sort(np.random.default_rng(seed).permutation(len(ytr))[:subset]))
    g = torch.Generator().manual_seed(seed)
    exact: list[float] = []
    redrawn: list[float] = []
    syncs, excluded = 0, 0.0
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(ytr), generator=g)
        for j, i in enumerate(range(0, len(ytr), batch)):
            if turn is not None and j and j % TURN_STEPS[workload] == 0:
                turn()
            idx = order[i:i + batch]
            xb, yb = Xtr[idx].to(device), ytr[idx].to(device)
            opt.zero_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward()
            opt.step()
            if lens is not None:
                if device.type == "cuda":
                    syncs += count_syncs(lambda: lens.step(loss, batch_size=len(yb)))
                else:
                    lens.step(loss, batch_size=len(yb))
        if variant != "default":
            c1 = time.process_time()
            eval_pass(model, Xva, yva, val_batch, device)        # the user's own validation pass
            parts["user validation"] += time.process_time() - c1
        if variant == "full pass":
            losses = eval_pass(model, Xtr, ytr, val_batch, device, per_sample=True)
            exact.append(float(losses.mean()))
            c1 = time.process_time()
            redrawn.append(redraw_coverage(losses, subset, seed, class_strata(ytr.numpy()), redraws))
            excluded += time.process_time() - c1     # the benchmark's own statistics are not the anchor's cost
        elif variant == "subset pass":
            eval_pass(model, Xtr[subset_idx], ytr[subset_idx], val_batch, device)
        if lens is not None:
            c1 = time.process_time()
            lens.end_epoch()
            parts["epoch end"] += time.process_time() - c1
        if turn is not None:
            turn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    out: dict = {"workload": workload, "variant": variant, "seed": seed, "redraws": redraws,
                 "cpu_seconds": time.process_time() - c0 - excluded, "exact_train_loss": exact,
                 "redraw_coverage": redrawn, "parts": parts,
                 # page faults: a variant whose allocations churn memory pays for it in the training loop too
                 "minor_page_faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0}
    if lens is not None:
        run = lens.run
        out["probe_size"] = run.meta.get("probe_size")
        out["eval_batch_size"] = lens._fw.eval_bs
        out["probe"] = [(e.get(EVAL_CLEAN).mean, e.get(EVAL_CLEAN).sem) if e.get(EVAL_CLEAN) else None
                        for e in run.epochs]
        out["syncs_per_step"] = syncs / max(1, sum(e.n_steps for e in run.epochs)) if device.type == "cuda" else None
        lens.finish()
    return out


def count_syncs(fn) -> int:
    """Host-device synchronisations inside ``fn()`` (``torch.cuda.set_sync_debug_mode("warn")`` warnings)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def workload_data(workload: str, scale: float):
    """The workload's data (seed 0), its first ``scale`` share of each split (at least 64 samples)."""
    return tuple(t[:max(64, int(scale * len(t)))] for t in WORKLOADS[workload][0](0))


def _child_argv(workload: str, variant: str, seed: int, epochs: int, subset: int, device: torch.device,
                store_dir: Path, scale: float, redraws: int, lockstep: bool = False) -> list[str]:
    """The command line of a child process that runs one variant (:func:`one_run`)."""
    spec = dict(workload=workload, variant=variant, seed=seed, epochs=epochs, subset=subset, device=str(device),
                store_dir=str(store_dir), scale=scale, redraws=redraws, lockstep=lockstep)
    return [sys.executable, __file__, "--one", json.dumps(spec)]


def run_fresh(workload: str, variant: str, seed: int, epochs: int, subset: int, device: torch.device,
              store_dir: Path, scale: float, redraws: int = REDRAWS) -> dict:
    """:func:`run_once` alone in a new Python process (:func:`one_run`), which reports its numbers as JSON; why each
    run gets its own process: :func:`run_lockstep`."""
    argv = _child_argv(workload, variant, seed, epochs, subset, device, store_dir, scale, redraws)
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{workload} {variant} seed {seed} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def one_run(spec: str) -> None:
    """The child side of :func:`run_fresh` and :func:`run_lockstep`: one run, its numbers printed as one JSON line
    (in lockstep, after "ready" and every "turn", it waits for a line on stdin)."""
    a = json.loads(spec)
    torch.set_num_threads(1)
    data = workload_data(a["workload"], a["scale"])
    # warm-up, before the clock: the first steps of a process initialise the kernels (a constant cost, about 2 s,
    # that would otherwise dilute the ratios of short runs)
    _, make_model, make_opt, batch = WORKLOADS[a["workload"]][:4]
    torch.manual_seed(0)
    model = make_model()
    opt = make_opt(model.parameters())
    for i in (0, batch):
        opt.zero_grad()
        nn.functional.cross_entropy(model(data[0][i:i + batch]), data[1][i:i + batch]).backward()
        opt.step()
    del model, opt
    turn = None
    if a.get("lockstep"):
        def turn() -> None:                  # hand the core to the next variant and wait for ours (no CPU time)
            print("turn", flush=True)
            sys.stdin.readline()

        print("ready", flush=True)
        sys.stdin.readline()
    print(json.dumps(run_once(a["workload"], a["variant"], data, a["seed"], a["epochs"], a["subset"],
                              torch.device(a["device"]), Path(a["store_dir"]), a["redraws"], turn)), flush=True)


def run_lockstep(workload: str, variants: list[str], seed: int, epochs: int, subset: int, device: torch.device,
                 store_dir: Path, scale: float, redraws: int = REDRAWS) -> list[dict]:
    """The variants of one repetition as whole runs in their own processes (as :func:`run_fresh`), taking turns on one
    core: each runs :data:`TURN_STEPS` training steps (or an epoch's end) while the others wait blocked on a pipe,
    which costs no CPU time, then hands over; the order within a round rotates.

    Why: on this shared virtual machine the speed of a core drifts over tens of seconds (the MLP's plain loop took
    5.6-8.3 s CPU in ten runs one after another, with fewer than 3 000 page faults each), so whole runs one after
    another compare different machine states. Runs that take turns every second or so see the same ones, and
    each run still has its own process, allocator and caches (every turn starts with the caches the other
    variants left, alike for all of them). Own processes, because the C allocator keeps state from one run to the
    next (glibc's dynamic mmap and trim thresholds, ``mallopt(3)``): in one shared process a run's page faults
    depended on which runs came before it (the plain loop faulted 75 times after one order, 3.1 million times after
    another), which scattered the ratios by +-5 %. Data generation and the import of torch happen before a run's
    clock starts.
    """
    procs = {}
    for v in variants:
        argv = _child_argv(workload, v, seed, epochs, subset, device, store_dir, scale, redraws, lockstep=True)
        err = tempfile.TemporaryFile(mode="w+")
        procs[v] = (subprocess.Popen(argv, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=err, text=True, bufsize=1), err)

    def read(v: str) -> str:
        line = procs[v][0].stdout.readline()
        if not line:
            procs[v][1].seek(0)
            raise RuntimeError(f"{workload} {v} seed {seed} failed:\n{procs[v][1].read()[-3000:]}")
        return line.strip()

    for v in variants:
        if read(v) != "ready":
            raise RuntimeError(f"{workload} {v}: expected 'ready'")
    results: dict[str, dict] = {}
    active, k = list(variants), 0
    while active:
        for v in active[k % len(active):] + active[:k % len(active)]:
            procs[v][0].stdin.write("go\n")
            procs[v][0].stdin.flush()
            line = read(v)
            if line != "turn":
                results[v] = json.loads(line)
        active = [v for v in active if v not in results]
        k += 1
    for p, err in procs.values():
        p.wait()
        err.close()
    return [results[v] for v in variants]


def default_probe_size(workload: str, device: torch.device, store_dir: Path, scale: float) -> int:
    """The default probe size of this workload (fixed from sample counts at the first epoch end: one short run)."""
    r = run_fresh(workload, "default", 0, 1, 1, device, store_dir, scale)
    return int(r["probe_size"])


def pass_costs(workload: str, n: int = 4096, rounds: int = 3) -> dict:
    """CPU time per sample (µs) of a training step and of the probe passes (``--pass-costs`` prints the ratios).

    On ``n`` training samples (the first ones), the least of ``rounds`` repetitions: a training step (forward,
    backward, update) in training batches; an eval-mode forward without gradients in the user's validation batches
    (the recorder's default eval batch with ``val_data=`` a ``DataLoader``, see ``run_once``) and in training
    batches; a train-mode forward without gradients in training batches (the ``T`` pass). The ratio of a training
    sample to a probe-pass sample is what ``losslens.recording.probe.TRAIN_STEP_FORWARDS`` assumes.
    """
    make_data, make_model, make_opt, batch, val_batch, _, _ = WORKLOADS[workload]
    Xtr, ytr, _, _ = make_data(0)
    n = min(n, len(ytr))
    torch.manual_seed(0)
    model = make_model()
    opt = make_opt(model.parameters())
    loss_fn = nn.CrossEntropyLoss()

    def train() -> None:
        model.train()
        for i in range(0, n, batch):
            opt.zero_grad()
            loss_fn(model(Xtr[i:i + batch]), ytr[i:i + batch]).backward()
            opt.step()

    def forward(bs: int, mode: bool) -> None:
        model.train(mode)
        with torch.no_grad():
            for i in range(0, n, bs):
                loss_fn(model(Xtr[i:i + bs]), ytr[i:i + bs])

    def per_sample(fn) -> float:
        spent = []
        for _ in range(rounds):
            c = time.process_time()
            fn()
            spent.append(time.process_time() - c)
        return min(spent) / n * 1e6

    return {"training step": per_sample(train),
           f"eval mode, batch {val_batch}": per_sample(lambda: forward(val_batch, False)),
           f"eval mode, batch {batch}": per_sample(lambda: forward(batch, False)),
           f"train mode, batch {batch}": per_sample(lambda: forward(batch, True))}


# -- table ----------------------------------------------------------------------------------------------------

def _ci(hits: list[bool]) -> str:
    """95 % Clopper-Pearson interval of a share (scipy.stats.binomtest), in words."""
    from scipy.stats import binomtest

    ci = binomtest(int(sum(hits)), len(hits)).proportion_ci(0.95)
    return f"95 % interval {100 * ci.low:.0f}-{100 * ci.high:.0f} %"


def table(results: list[dict]) -> str:
    lines = []
    cover_all: list[bool] = []
    redraw_all: list[float] = []
    for w in [w for w in WORKLOADS if any(r["workload"] == w for r in results)]:
        rs = [r for r in results if r["workload"] == w]
        seeds = sorted({r["seed"] for r in rs})
        plain = {r["seed"]: r["cpu_seconds"] for r in rs if r["variant"] == "plain"}
        d = next((r for r in rs if r["variant"] == "default"), {})
        base = (f"plain run median {statistics.median(plain.values()):.1f} s CPU" if plain else
                "no plain runs in these results: no ratios (merge a run with --variants plain)")
        lines.append(f"\n{w}: {len(seeds)} repetitions; default probe {d.get('probe_size')} samples, eval batch "
                     f"{d.get('eval_batch_size')}; {base}")
        lines.append(f"  {'variant':<14}{'CPU-time ratio':>16}  range")
        for v in WORKLOADS[w][6]:
            ratios = [r["cpu_seconds"] / plain[r["seed"]] for r in rs if r["variant"] == v and r["seed"] in plain]
            if ratios:
                faults = [r["minor_page_faults"] for r in rs if r["variant"] == v and "minor_page_faults" in r]
                lines.append(f"  {v:<14}{statistics.median(ratios):>16.3f}  {min(ratios):.3f}-{max(ratios):.3f}"
                             + (f"   minor page faults {statistics.median(faults):,.0f}" if faults else ""))
        # where the default's time goes (a diagnostic): setup and epoch ends against the user's validation passes
        dparts = [r["parts"] for r in rs if r["variant"] == "default" and "parts" in r]
        uval = [r["parts"]["user validation"] for r in rs if r["variant"] == "plain" and "parts" in r]
        if dparts and uval and plain:
            setup = statistics.median(p["setup"] for p in dparts)
            ends = statistics.median(p["epoch end"] for p in dparts)
            base = statistics.median(plain.values())
            lines.append(f"  default, by parts (median CPU s): setup {setup:.2f}, epoch ends {ends:.2f} (the user's "
                         f"validation passes they replace: {statistics.median(uval):.2f}); attributed ratio "
                         f"{1 + (setup + ends - statistics.median(uval)) / base:.3f} plus lens.step")
        # coverage: the exact eval-mode training loss (full-pass anchor) within 2 SE of the probe estimate
        full = {r["seed"]: r["exact_train_loss"] for r in rs if r["variant"] == "full pass"}
        hits = []
        for r in rs:
            if r["variant"] != "default" or r["seed"] not in full:
                continue
            for p, x in zip(r["probe"], full[r["seed"]]):
                if p is not None:
                    hits.append(abs(p[0] - x) <= 2 * p[1])
        cover_all += hits
        if hits:
            draws = sum(1 for r in rs if r["variant"] == "default" and r["seed"] in full)
            lines.append(f"  coverage: exact training loss within 2 SE of the probe's in {sum(hits)} of {len(hits)} "
                         f"epochs ({100 * np.mean(hits):.0f} %, {_ci(hits)}; {draws} probe draws, each fixed for "
                         "its run)")
        red = [c for r in rs if r["variant"] == "full pass" for c in r.get("redraw_coverage", [])]
        red_n = next((r.get("redraws", REDRAWS) for r in rs if r["variant"] == "full pass"), REDRAWS)
        redraw_all.extend(red)
        if red:
            lines.append(f"  redrawn probes of the same size: {100 * np.mean(red):.1f} % within 2 SE (per epoch "
                         f"{100 * min(red):.1f}-{100 * max(red):.1f} %, {red_n} redraws in each of {len(red)} "
                         "epochs)")
        syncs = [r["syncs_per_step"] for r in rs if r.get("syncs_per_step") is not None]
        if syncs:
            lines.append(f"  host-device synchronisations per lens.step: {max(syncs):.3f}")
    if cover_all:
        lines.append(f"\nall workloads: coverage {sum(cover_all)} of {len(cover_all)} epochs "
                     f"({100 * np.mean(cover_all):.1f} %, {_ci(cover_all)}; goal >= 95 %)"
                     + (f"; redrawn probes {100 * np.mean(redraw_all):.1f} %" if redraw_all else "")
                     + "; goal for 'default': CPU-time ratio <= 1.05")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workloads", default="cnn,transformer,mlp")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--first-rep", type=int, default=0, help="seed of the first repetition (to split over processes)")
    ap.add_argument("--epochs", type=int, default=None, help="epochs per run (default: the workload's)")
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of each workload's data (smoke tests)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--variants", default=None, help="run only these variants (comma-separated)")
    ap.add_argument("--redraws", type=int, default=REDRAWS, help="probe redraws per epoch for the redraw coverage")
    ap.add_argument("--json", default=None, help="write every run's numbers here")
    ap.add_argument("--merge", nargs="*", default=None, help="print the table of these --json files and exit")
    ap.add_argument("--pass-costs", action="store_true",
                    help="print the CPU time per sample of a training step and of each probe pass, and exit")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)    # one run in a fresh process (run_fresh)
    a = ap.parse_args(argv)
    if a.one is not None:
        one_run(a.one)
        return 0
    if a.pass_costs:
        torch.set_num_threads(1)
        for w in a.workloads.split(","):
            c = pass_costs(w)
            step = c.pop("training step")
            print(f"{w}: training step {step:.1f} µs per sample; " + "; ".join(
                f"{k} {v:.1f} µs (a training sample costs {step / v:.2f} of these)" for k, v in c.items()), flush=True)
        return 0
    if a.merge is not None:
        print(table([r for f in a.merge for r in json.loads(Path(f).read_text())]))
        return 0
    torch.set_num_threads(1)
    device = torch.device(a.device)
    results: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for w in a.workloads.split(","):
            epochs, variants = WORKLOADS[w][5:]
            epochs = a.epochs or epochs
            subset = default_probe_size(w, device, Path(tmp), a.scale)
            chosen = [v for v in variants if not a.variants or v in a.variants.split(",")]
            for rep in range(a.first_rep, a.first_rep + a.reps):
                for r in run_lockstep(w, chosen, rep, epochs, subset, device, Path(tmp), a.scale, a.redraws):
                    results.append(r)
                    print(f"{w} rep {rep} {r['variant']:<12} {r['cpu_seconds']:8.2f} s CPU", flush=True)
                if a.json:
                    Path(a.json).write_text(json.dumps(results))
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
