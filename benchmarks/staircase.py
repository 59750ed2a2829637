"""The epoch staircase on real fine-tunes (issue 17, item 5): how often ``data.epoch_staircase`` is found on a
3-epoch fine-tune that memorizes, and how often on the same fine-tune fed a non-repeating stream (false alarms).

The workload is a tiny GPT-2 built from a config (2 layers, width 128) that learns *facts*: each row is a key token
followed by four answer tokens drawn at random from 16, so the answers of an unseen key cannot be predicted
(loss ``log 16`` per answer token at best) and the loss of a seen key falls only by memorizing it. A model trained
from scratch does not memorize a fact from one exposure, so, like the language models users fine-tune, the model is
first pre-trained (25 epochs on 1 024 other facts, a plain PyTorch loop), which teaches it to store a new key
quickly (AdamW, learning rate 3e-3, batch 16). It is then fine-tuned with the Hugging Face ``Trainer`` and
``losslens.transformers.LossLens`` (batch 16, constant learning rate 1e-3, the step loss logged at every step,
evaluated each epoch on 256 unseen facts) for 3 epochs on:

* **repeating** data: the same 1 024 facts each epoch, reshuffled (the users' fine-tune: it memorizes);
* **non-repeating** data: 1 024 new facts each epoch, the same schedule and the same number of steps (a shuffled,
  non-repeating stream: no sample is seen twice, so there is no boundary effect to find).

Run: ``python benchmarks/staircase.py [--pretrained 3] [--seeds 4]``: ``pretrained × seeds`` fine-tunes per arm
(a pre-trained model is shared by its seeds' fine-tunes, which differ in the fine-tuning facts and the Trainer's
seed). It prints each run's pooled boundary drop with its standard error, the measured memorization (the
validation loss minus the probe's eval-mode loss, first and last epoch) and the found/false-alarm counts with
Clopper–Pearson 95 % intervals. ``tests/test_staircase.py`` runs one seed of each arm.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

#: Answer tokens (ids 2..17); keys follow them. Token 0 is unused (no padding: every row has the same length).
ANSWERS, ANSWER_LEN = 16, 4
N_PRETRAIN, N_TRAIN, N_VAL = 1024, 1024, 256
WIDTH, LAYERS = 128, 2
EPOCHS, BATCH, LR, FINE_TUNE_LR = 3, 16, 3e-3, 1e-3
PRETRAIN_EPOCHS = 25
#: Key ranges: pre-training facts, validation facts, then one block of training facts per epoch (the repeating
#: arm uses only the first).
KEY0 = 2 + ANSWERS
VOCAB = KEY0 + N_PRETRAIN + N_VAL + EPOCHS * N_TRAIN


def facts(n: int, first_key: int, seed: int) -> dict[str, torch.Tensor]:
    """``n`` facts with keys ``first_key … first_key + n − 1``: ``input_ids`` (n, 1 + ANSWER_LEN) and ``labels``
    (the same ids, the key's label −100: only the answer tokens are counted)."""
    g = torch.Generator().manual_seed(seed)
    keys = torch.arange(first_key, first_key + n)[:, None]
    answers = torch.randint(2, 2 + ANSWERS, (n, ANSWER_LEN), generator=g)
    ids = torch.cat([keys, answers], dim=1)
    labels = ids.clone()
    labels[:, 0] = -100
    return {"input_ids": ids, "labels": labels}


class Facts(torch.utils.data.Dataset):
    """A map-style dataset of facts; with ``blocks`` > 1, ``set_epoch(e)`` switches to block ``e`` (new keys and
    answers each epoch: the non-repeating stream)."""

    def __init__(self, first_key: int, seed: int, n: int = N_TRAIN, blocks: int = 1) -> None:
        self.blocks = [facts(n, first_key + b * n, seed + b) for b in range(blocks)]
        self.block = 0

    def set_epoch(self, epoch: int) -> None:
        self.block = min(int(epoch), len(self.blocks) - 1)

    def __len__(self) -> int:
        return len(self.blocks[0]["input_ids"])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        b = self.blocks[self.block]
        return {"input_ids": b["input_ids"][i], "labels": b["labels"][i]}


def pretrained(seed: int) -> torch.nn.Module:
    """A tiny GPT-2 pre-trained on ``N_PRETRAIN`` facts (plain loop, AdamW, batch 16, ``PRETRAIN_EPOCHS``)."""
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=VOCAB, n_positions=1 + ANSWER_LEN, n_embd=WIDTH, n_layer=LAYERS, n_head=4,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=False,
                     bos_token_id=0, eos_token_id=0, pad_token_id=0)
    model = GPT2LMHeadModel(cfg)
    data = facts(N_PRETRAIN, KEY0, seed + 1000)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed + 2000)
    for _ in range(PRETRAIN_EPOCHS):
        order = torch.randperm(N_PRETRAIN, generator=g)
        for k in range(0, N_PRETRAIN, BATCH):
            idx = order[k:k + BATCH]
            loss = model(input_ids=data["input_ids"][idx], labels=data["labels"][idx]).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model


def fine_tune(model: torch.nn.Module, *, repeating: bool, seed: int, out: Path) -> tuple[Any, Any]:
    """Fine-tune a copy of ``model`` for ``EPOCHS`` epochs with the Trainer and the losslens callback.

    Returns ``(trainer, run)``: ``run`` is the recorded :class:`~losslens.record.Run` (step losses at every step,
    probes and validation at each epoch end)."""
    from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

    from losslens.transformers import LossLens

    train = Facts(KEY0 + N_PRETRAIN + N_VAL, 10_000 + seed, blocks=1 if repeating else EPOCHS)
    val = Facts(KEY0 + N_PRETRAIN, 20_000 + seed, n=N_VAL)

    class NewBlockEachEpoch(TrainerCallback):
        def on_epoch_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            train.set_epoch(round(state.epoch or 0.0))

    args = TrainingArguments(output_dir=str(out / "trainer"), num_train_epochs=EPOCHS,
                             per_device_train_batch_size=BATCH, per_device_eval_batch_size=N_VAL,
                             learning_rate=FINE_TUNE_LR, lr_scheduler_type="constant", weight_decay=0.0,
                             warmup_steps=0, logging_steps=1, eval_strategy="epoch", save_strategy="no",
                             report_to=[], use_cpu=True, disable_tqdm=True, seed=seed, dataloader_num_workers=0)
    lens = LossLens(run=f"facts-{'repeating' if repeating else 'stream'}-{seed}", store=out / "s.db",
                    probe_size=256, probe_seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = Trainer(model=copy.deepcopy(model), args=args, train_dataset=train, eval_dataset=val,
                          callbacks=[NewBlockEachEpoch(), lens])
        trainer.remove_callback(PrinterCallback)    # disable_tqdm prints every log line instead
        trainer.train()
    return trainer, lens.lens.run


def summarize(run: Any) -> dict[str, Any]:
    """The staircase measurement of one recorded run: ``found``, the pooled drop and its SE, the memorization."""
    from losslens.diagnose.staircase import Z_STAIRCASE, boundary_jumps, measured_memorization, staircase_findings

    jumps = boundary_jumps(run)
    j = np.array([x["jump"] for x in jumps])
    se = math.sqrt(sum(x["se"] ** 2 for x in jumps)) / len(jumps) if jumps else math.nan
    return {"found": bool(staircase_findings(run)), "mean_jump": float(j.mean()) if jumps else math.nan,
            "se": se, "z": float(j.mean()) / se if jumps and se > 0 else math.nan, "threshold_z": -Z_STAIRCASE,
            "memorization": measured_memorization(run)}


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    from scipy.stats import beta

    a = (1 - level) / 2
    lo = float(beta.ppf(a, k, n - k + 1)) if k > 0 else 0.0
    hi = float(beta.ppf(1 - a, k + 1, n - k)) if k < n else 1.0
    return lo, hi


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pretrained", type=int, default=3, help="pre-trained models (seeds 0 … n−1)")
    ap.add_argument("--seeds", type=int, default=4, help="fine-tuning seeds per pre-trained model and arm")
    a = ap.parse_args(argv)
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    counts = {True: 0, False: 0}
    n = a.pretrained * a.seeds
    t0 = time.process_time()
    print(f"{'arm':<14} {'model':>5} {'seed':>4} {'drop ± SE':>17} {'z':>6} "
          f"{'memorization V−C first → last':>34}  found")
    with tempfile.TemporaryDirectory() as tmp:
        for p in range(a.pretrained):
            base = pretrained(p)
            for s in range(a.seeds):
                for repeating in (True, False):
                    out = Path(tmp) / f"{p}-{s}-{int(repeating)}"
                    _, run = fine_tune(base, repeating=repeating, seed=100 * p + s, out=out)
                    r = summarize(run)
                    counts[repeating] += r["found"]
                    m = r["memorization"]
                    mem = (f"{m['gap_first']:+.3f} → {m['gap_last']:+.3f} (± {m['gap_last_se']:.3f})"
                           if m else "n/a")
                    arm = "repeating" if repeating else "non-repeating"
                    print(f"{arm:<14} {p:>5} {s:>4} {r['mean_jump']:>+9.3f} ± {r['se']:.3f} {r['z']:>6.1f} "
                          f"{mem:>34}  {'yes' if r['found'] else 'no'}", flush=True)
    for repeating, what in ((True, "found on memorizing fine-tunes"), (False, "false alarms on non-repeating streams")):
        lo, hi = clopper_pearson(counts[repeating], n)
        print(f"{what}: {counts[repeating]} / {n} ({100 * counts[repeating] / n:.0f} %, 95 % CI "
              f"{100 * lo:.0f}–{100 * hi:.0f} %)")
    print(f"CPU time {time.process_time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
