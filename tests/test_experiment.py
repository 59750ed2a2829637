"""Experiments: bands, verdicts across seeds, compare, split checks, report and CLI — with real seeded runs.

The runs are small PyTorch MLPs on scikit-learn's digits (CPU, one thread, a
fraction of a second each), recorded with the DESIGN protocol: step losses,
the reported epoch mean R, and per-sample end-of-epoch losses T (train mode,
only with dropout), C (eval mode, probe set) and V (validation set).
"""

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from scipy import stats
from sklearn.datasets import load_digits

from losslens.diagnose import diagnose
from losslens.experiment import (
    align,
    bands,
    bootstrap_band,
    combine_terms,
    compare,
    experiment_verdicts,
    load_experiment,
    summarize_run,
)
from losslens.experiment.bands import Aligned
from losslens.experiment.cli import compare as compare_cmd
from losslens.record import Epoch, Measurement, Run, Steps
from losslens.recording.fingerprint import CONTENT_HASH_VERSION, split_fingerprints
from losslens.report.experiment import save_experiment_html
from losslens.store import Store, StoreError

torch.set_num_threads(1)

_D = load_digits()
_X = (_D.data / 16.0).astype(np.float32)
_Y = _D.target.astype(np.int64)

#: A configuration whose fit-regime verdict depends on the seed (good fit vs still improving).
FLIPPING = dict(epochs=8, n_train=200, lr=0.02, n_val=400)
#: A configuration whose regime is the same for every seed (still improving after 6 epochs).
STEADY = dict(epochs=6, n_train=400, lr=0.003, n_val=400)


def train_run(seed, dropout=0.0, epochs=8, n_train=200, n_val=400, hidden=32, lr=0.02, split_seed=0, n_probe=200,
              batch=32, experiment=None, name=None):
    """Train a small MLP with Adam and record a Run (seeded; bit-reproducible on CPU)."""
    perm = np.random.default_rng(split_seed).permutation(len(_X))
    tr, va = perm[:n_train], perm[n_train:n_train + n_val]
    Xtr, Ytr = torch.from_numpy(_X[tr]), torch.from_numpy(_Y[tr])
    Xva, Yva = torch.from_numpy(_X[va]), torch.from_numpy(_Y[va])
    probe = np.sort(np.random.default_rng(1234).choice(n_train, n_probe, replace=False))
    Xpr, Ypr = Xtr[probe], Ytr[probe]
    torch.manual_seed(seed)
    layers = [torch.nn.Linear(64, hidden), torch.nn.ReLU()]
    if dropout > 0:
        layers.append(torch.nn.Dropout(dropout))
    model = torch.nn.Sequential(*layers, torch.nn.Linear(hidden, 10))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    per_sample = torch.nn.CrossEntropyLoss(reduction="none")
    gen = torch.Generator().manual_seed(seed)
    prior = np.bincount(_Y[tr][probe], minlength=10) / n_probe
    prior = prior[prior > 0]
    meta = {"seed": seed, "loss_kind": "cross_entropy", "baseline_loss": float(-(prior * np.log(prior)).sum()),
            "train_size": n_train, "val_size": n_val, "dropout": dropout}
    meta.update(split_fingerprints(train=(_X[tr], _Y[tr]), val=(_X[va], _Y[va])))
    run = Run(name or f"seed{seed}", meta=meta, experiment=experiment, status="finished")
    steps = []
    for e in range(epochs):
        model.train()
        order = torch.randperm(n_train, generator=gen)
        losses, sizes = [], []
        for i in range(0, n_train, batch):
            idx = order[i:i + batch]
            loss = per_sample(model(Xtr[idx]), Ytr[idx]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
            sizes.append(len(idx))
        ms = {}
        with torch.no_grad():
            if dropout > 0:
                ms["train_mode"] = Measurement.from_values("train_mode", per_sample(model(Xpr), Ypr).numpy())
            model.eval()
            ms["eval_clean"] = Measurement.from_values("eval_clean", per_sample(model(Xpr), Ypr).numpy())
            ms["validation"] = Measurement.from_values("validation", per_sample(model(Xva), Yva).numpy())
        losses, sizes = np.array(losses), np.array(sizes, dtype=float)
        run.epochs.append(Epoch(e, train_loss=float((losses * sizes).sum() / sizes.sum()), n_steps=len(losses),
                                n_samples=int(sizes.sum()), measurements=ms))
        steps.append(Steps.build(np.full(len(losses), e), losses, batch_size=sizes))
    run.steps = Steps.concat(steps)
    return run


@pytest.fixture(scope="module")
def pool():
    """30 seeds of one configuration (no dropout)."""
    return [train_run(s, **FLIPPING) for s in range(30)]


@pytest.fixture(scope="module")
def dropout_runs():
    return [train_run(100 + s, dropout=0.5, **FLIPPING) for s in range(5)]


# -- bands ---------------------------------------------------------------------------------------------

def test_bootstrap_band_coverage_on_known_means():
    """Pointwise coverage of a known mean curve over repeated synthetic trials (k = 5 runs, normal scatter)."""
    rng = np.random.default_rng(0)
    x = np.arange(1, 21, dtype=float)
    truth = 1.0 / np.sqrt(x)
    cover = {"expanded": [], "percentile": [], "t": []}
    for trial in range(150):
        Y = truth + rng.normal(0, 0.05, size=(5, x.size))
        al = Aligned("validation", "epoch", x, Y, np.full_like(Y, np.nan), [f"r{i}" for i in range(5)])
        for method in cover:
            b = bootstrap_band(al, B=2000, method=method, seed=trial)
            cover[method].append(b.contains(truth).mean())
    cov = {m: float(np.mean(v)) for m, v in cover.items()}
    # expanded percentile: ~0.92 for k = 5 (t: 0.95); the plain percentile interval under-covers (~0.82).
    assert 0.88 <= cov["expanded"] <= 0.98, cov
    assert 0.91 <= cov["t"] <= 0.99, cov
    assert cov["percentile"] < cov["expanded"] - 0.04, cov


def test_bands_of_real_runs_cover_the_pool_mean_and_contain_runs_as_expected(pool):
    """Subsets of 5 real runs: the band covers the 30-run mean near the nominal rate; it is a band for the mean,
    so it lies within the runs' envelope and part — not all — of the individual runs fall inside it."""
    truth = align(pool, "validation").values.mean(axis=0)
    rng = np.random.default_rng(1)
    covered, inside = [], []
    for trial in range(120):
        sub = [pool[i] for i in rng.choice(len(pool), 5, replace=False)]
        b = bootstrap_band(align(sub, "validation"), B=2000, seed=trial)
        Y = b.aligned.values
        assert np.all(b.lo <= b.mean) and np.all(b.mean <= b.hi)
        assert np.all(b.lo >= Y.min(axis=0) - 1e-12) and np.all(b.hi <= Y.max(axis=0) + 1e-12)
        covered.append(b.contains(truth).mean())
        inside.append(np.mean([b.contains(y).mean() for y in Y]))
    coverage = float(np.mean(covered))
    assert 0.85 <= coverage <= 0.995, coverage
    # for a 95 % band of the mean of 5 runs about 70-85 % of individual points lie inside, not all
    assert 0.45 <= float(np.mean(inside)) <= 0.95, np.mean(inside)


def test_align_on_samples_and_steps_interpolates_between_batch_sizes():
    a = train_run(0, epochs=4, batch=32)
    b = train_run(1, epochs=4, batch=50, n_train=250)
    al = align([a, b], "validation", on="samples")
    # a: 200 samples per epoch, b: 250; the grid is their union and nothing is extrapolated
    assert set(al.x) == {200, 400, 600, 800, 250, 500, 750, 1000}
    assert np.isnan(al.values[0, al.x == 1000]).all() and np.isnan(al.values[1, al.x == 200]).all()
    j = int(np.flatnonzero(al.x == 500)[0])
    va = a.series("validation")[1]
    assert al.values[0, j] == pytest.approx(va[1] + (va[2] - va[1]) * 100 / 200)
    assert al.values[1, j] == pytest.approx(b.series("validation")[1][1])
    st = align([a, b], "train_loss", on="steps")
    # epoch means at the middle of the first epoch's steps: a has 7 steps per epoch, b 5
    assert st.x[:2].tolist() == [2.5, 3.5]
    ep = align([a, b], "train_loss", on="epoch")
    assert np.allclose(ep.x, np.arange(4) + 0.5)
    a.epochs[2].n_samples = 0
    with pytest.raises(ValueError, match="n_samples"):
        align([a, b], "validation", on="samples")
    with pytest.raises(ValueError, match="none of the 2 runs"):
        align([a, b], "eval_augmented")
    with pytest.raises(ValueError, match="on='minutes'"):
        align([a, b], on="minutes")


# -- verdicts --------------------------------------------------------------------------------------------

def test_regime_that_flips_between_seeds_is_uncertain(pool):
    runs = pool[:8]
    found = {f.code: f for f in experiment_verdicts(runs)}
    per_seed = {r.name: next(c for c in diagnose(r).codes() if c.startswith("regime.")) for r in runs}
    assert len(set(per_seed.values())) >= 2, f"precondition: this configuration should flip, got {per_seed}"
    assert "experiment.regime_uncertain" in found and "experiment.regime" not in found
    f = found["experiment.regime_uncertain"]
    assert f.data["per_seed"] == per_seed
    assert sum(f.data["counts"].values()) == 8
    # every single run's verdict, alone, is reported as a verdict about one seed, not the configuration
    solo = {x.code for x in experiment_verdicts(runs[:1])}
    assert {"experiment.too_few_runs", "experiment.regime"} <= solo


def test_regime_that_holds_for_every_seed_is_reported_as_such():
    runs = [train_run(s, **STEADY) for s in range(5)]
    found = {f.code: f for f in experiment_verdicts(runs)}
    assert "experiment.regime_uncertain" not in found
    assert found["experiment.regime"].data["regime"] == "regime.still_improving"
    assert "experiment.split_changed" not in found and "experiment.split_overlap" not in found


def test_best_epoch_spread_and_terms_across_seeds(pool, dropout_runs):
    found = {f.code: f for f in experiment_verdicts(dropout_runs)}
    be = found["experiment.best_epoch"].data
    per_run = [int(np.argmin(r.series("validation")[1])) for r in dropout_runs]
    assert be["best_epochs"] == per_run
    assert be["best_epoch_sd"] == pytest.approx(np.std(per_run, ddof=1))
    terms = found["experiment.decomposition"].data["terms"]
    tm = terms["train_mode"]
    # dropout 0.5 costs training loss in every seed and across seeds
    assert tm["status"] == "beyond noise" and all(tm["per_seed_beyond"]) and tm["lo"] > 0
    # without dropout the pass is skipped: exactly zero, never "beyond noise"
    t0 = {f.code: f for f in experiment_verdicts(pool[:5])}["experiment.decomposition"].data["terms"]
    assert t0["train_mode"]["status"] == "skipped" and t0["train_mode"]["mean"] == 0


def test_combine_terms_within_and_between_run_noise():
    # beyond noise in two seeds, opposite signs, mean within noise across seeds: uncertain
    t = combine_terms("timing", [0.10, -0.09, 0.01, 0.02, -0.03], [0.02] * 5)
    assert t.status == "uncertain" and t.per_seed_beyond.tolist() == [True, True, False, False, False]
    # SE of the mean over seeds is the between-run SD / sqrt(k); the interval is t on k - 1 df
    v = np.array([0.10, 0.12, 0.09, 0.11])
    t = combine_terms("train_mode", v, [0.01] * 4)
    assert t.se_mean == pytest.approx(v.std(ddof=1) / 2)
    assert t.hi - t.mean == pytest.approx(stats.t.ppf(0.975, 3) * v.std(ddof=1) / 2)
    assert t.status == "beyond noise"
    assert t.tau == pytest.approx(math.sqrt(max(0.0, v.var(ddof=1) - 0.01 ** 2)))
    # small in every run, consistent across seeds: beyond noise across seeds even if no single run shows it
    t = combine_terms("timing", [0.011, 0.012, 0.010, 0.011, 0.012, 0.010], [0.008] * 6)
    assert not t.per_seed_beyond.any() and t.status == "beyond noise"
    # one run: only its own noise
    assert combine_terms("timing", [0.1], [0.01]).status == "single run"
    assert combine_terms("timing", [0.01], [0.01]).status == "within noise"


# -- compare ---------------------------------------------------------------------------------------------

def test_compare_finds_the_dropout_difference(pool, dropout_runs):
    c = compare(pool[:5], dropout_runs, "dropout 0.0", "dropout 0.5")
    tm = c.differences["train_mode"]
    assert tm.beyond_noise and tm.lo > 0 and tm.basis == "Welch t over seeds"
    assert "best_val" in c.beyond_noise()
    # the interval agrees with scipy's Welch test
    for name in ("best_val", "gap", "timing"):
        d = c.differences[name]
        p = stats.ttest_ind(d.b_values, d.a_values, equal_var=False).pvalue
        assert d.beyond_noise == (p < 0.05), (name, p)
    # single runs: within-run errors only, and the result says so
    one = compare(pool[0], dropout_runs[0])
    assert one.differences["train_mode"].basis == "within-run only" and one.differences["train_mode"].beyond_noise
    assert "compare.within_run_only" in [f.code for f in one.findings]
    mixed = compare(pool[:5], dropout_runs[0])
    assert mixed.differences["best_val"].basis.startswith("t, seed spread")


def test_compare_identical_configurations_false_positive_rate(pool):
    """Identical configuration, different seeds: random 5-vs-5 splits of 30 seeds are beyond noise at about the
    nominal 5 % rate."""
    rng = np.random.default_rng(7)
    hits = {"best_val": 0, "gap": 0, "timing": 0, "generalization_gap": 0}
    n = 200
    summaries = [summarize_run(r) for r in pool]
    for _ in range(n):
        idx = rng.permutation(len(pool))
        c = compare([summaries[i] for i in idx[:5]], [summaries[i] for i in idx[5:10]])
        for q in hits:
            hits[q] += c.differences[q].beyond_noise
        assert not c.differences["train_mode"].beyond_noise
    rates = {q: h / n for q, h in hits.items()}
    assert max(rates.values()) <= 0.15, rates
    assert np.mean(list(rates.values())) <= 0.10, rates


# -- split ------------------------------------------------------------------------------------------------

def test_changed_split_is_flagged(pool):
    moved = train_run(1, split_seed=1, **FLIPPING)
    found = {f.code: f for f in experiment_verdicts([pool[0], moved, pool[2]])}
    ch = found["experiment.split_changed"]
    assert sorted(len(v) for v in ch.data["groups"].values()) == [1, 2]
    ov = found["experiment.split_overlap"]
    pair = next(p for p in ov.data["pairs"] if p["validation_of"] == "seed1" and p["trained_on_by"] == "seed0")
    # the true fraction: run 1's validation samples that run 0 trained on (and run 1 did not)
    p0 = np.random.default_rng(0).permutation(len(_X))
    p1 = np.random.default_rng(1).permutation(len(_X))
    truth = np.isin(p1[200:600], p0[:200]).sum()
    assert pair["found"] == truth > 0
    clean = {f.code for f in experiment_verdicts(pool[:3])}
    assert not clean & {"experiment.split_changed", "experiment.split_overlap", "experiment.split_unknown"}

    c = compare(pool[:2], [moved])
    assert "compare.split_differs" in [f.code for f in c.findings]
    bare = Run("imported", epochs=pool[0].epochs)
    assert "experiment.split_unknown" in {f.code for f in experiment_verdicts([pool[0], bare])}


def test_runs_with_an_older_content_hash_are_not_compared(pool):
    """Fingerprints of an older content-hash version differ for the same samples: such a run is listed as not
    checkable, never reported as a changed or overlapping split."""
    import copy

    old = copy.deepcopy(pool[1])
    old.meta.pop("content_hash")
    old.meta["val_fingerprint"] = "sha256:" + "0" * 64          # what the older hash gave for the same samples
    found = {f.code: f for f in experiment_verdicts([pool[0], old, pool[2]])}
    assert "experiment.split_changed" not in found and "experiment.split_overlap" not in found
    unknown = found["experiment.split_unknown"]
    assert unknown.data["older_content_hash"] == [unknown.data["runs"][0]] and "older losslens" in unknown.message
    assert pool[0].meta["content_hash"] == CONTENT_HASH_VERSION == 3



# -- store, report, CLI --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")

def store_path(tmp_path_factory, pool, dropout_runs):
    path = tmp_path_factory.mktemp("exp") / "losslens.db"
    with Store(path) as st:
        for r in pool[:5]:
            r.experiment = "dropout-0.0"
            st.save_run(r)
        for r in dropout_runs:
            r.experiment = "<b>dropout 0.5</b>"
            st.save_run(r)
    return path


def test_store_round_trip_and_html_report(store_path, tmp_path):
    exp = load_experiment(store_path, "dropout-0.0")
    assert len(exp) == 5 and [r.meta["seed"] for r in exp.runs] == list(range(5))
    with pytest.raises(StoreError, match="dropout-0.0"):
        load_experiment(store_path, "nope")
    with pytest.raises(FileNotFoundError, match="missing.db"):
        load_experiment(tmp_path / "missing.db", "x")
    exp2 = load_experiment(store_path, "<b>dropout 0.5</b>")
    out = tmp_path / "e.html"
    save_experiment_html(exp2, out)
    html = out.read_text()
    with pytest.warns(FutureWarning, match="save_experiment_html"):   # the deprecated method still writes it
        exp2.save_html(tmp_path / "old.html")
    assert (tmp_path / "old.html").read_text().count("data:image/png;base64,") == 2
    assert "&lt;b&gt;dropout 0.5&lt;/b&gt;" in html and "<b>dropout 0.5</b>" not in html
    assert html.count("data:image/png;base64,") == 2  # epochs and samples seen
    assert "experiment.decomposition" in html and "<script" not in html
    d = exp2.to_dict()
    json.dumps(d, allow_nan=False)
    assert d["terms"]["train_mode"]["status"] == "beyond noise"
    c = compare(exp, exp2)
    assert (c.a_name, c.b_name) == ("dropout-0.0", "<b>dropout 0.5</b>") and "train_mode" in c.beyond_noise()
    bm = bands(exp2.runs, on="samples")
    assert set(bm) == {"validation", "eval_clean", "train_loss"}


def test_cli_compare(store_path, tmp_path):
    runner = CliRunner()
    out_json, out_html = tmp_path / "c.json", tmp_path / "c.html"
    res = runner.invoke(compare_cmd, ["dropout-0.0", "<b>dropout 0.5</b>", "--store", str(store_path),
                                      "--json", str(out_json), "--html", str(out_html)])
    assert res.exit_code == 0, res.output
    line = next(ln for ln in res.output.splitlines() if ln.startswith("train_mode"))
    assert "*" in line
    data = json.loads(out_json.read_text())
    assert data["differences"]["train_mode"]["beyond_noise"] and "train_mode" in data["beyond_noise"]
    html = out_html.read_text()
    assert "&lt;b&gt;dropout 0.5&lt;/b&gt;" in html and "data:image/png;base64," in html
    # a run id on one side, a run name on the other
    res = runner.invoke(compare_cmd, ["1", "seed100", "--store", str(store_path)])
    assert res.exit_code == 0 and "within-run only" in res.output
    res = runner.invoke(compare_cmd, ["dropout-0.0", "nothing-here", "--store", str(store_path)])
    assert res.exit_code != 0 and "B: 'nothing-here' is neither an experiment nor a run" in res.output
    assert "dropout-0.0" in res.output  # lists what the store holds
    res = runner.invoke(compare_cmd, ["a", "b", "--store", str(tmp_path / "none.db")])
    assert res.exit_code != 0 and "none.db" in res.output and "does not exist" in res.output
    assert not (tmp_path / "none.db").exists()


def _synthetic_run(rng, d_probe, d_val, seed_sd=0.02, noise_sd=0.3, gen=-0.2, name="r"):
    """One run of two epochs whose per-sample losses share the sample difficulties of fixed probe/val sets."""
    epochs = []
    for e in range(2):
        c = 0.8 + d_probe + rng.normal(0, seed_sd) + rng.normal(0, noise_sd, d_probe.size)
        v = 0.8 - gen + d_val + rng.normal(0, seed_sd) + rng.normal(0, noise_sd, d_val.size)
        epochs.append(Epoch(e, train_loss=float(c.mean()) + 0.05, n_steps=10, n_samples=100, measurements={
            "eval_clean": Measurement.from_values("eval_clean", c),
            "validation": Measurement.from_values("validation", v)}))
    return Run(name, epochs=epochs, meta={"val_fingerprint": "sha256:same", "probe_fingerprint": "sha256:p"})


def test_sampling_error_shared_by_runs_on_one_validation_set_is_counted():
    """Every run validates on the same fixed samples: their difficulty is common to all seeds and does not average
    out. The across-seed interval of the generalization term covers the population value at about the nominal
    rate only with the shared part; between-run spread alone is far too narrow."""
    from losslens.experiment.verdicts import shared_se, term_summaries

    rng = np.random.default_rng(11)
    hit_with, hit_without, trials = 0, 0, 120
    for _ in range(trials):
        d_probe, d_val = rng.normal(0, 1, 150), rng.normal(0, 1, 200)  # one probe and one validation set
        sums = [summarize_run(_synthetic_run(rng, d_probe, d_val, name=f"s{i}")) for i in range(5)]
        t = term_summaries(sums)["generalization_gap"]
        hit_with += t.lo <= 0.2 <= t.hi
        naive = combine_terms("generalization_gap", t.values, t.ses)
        hit_without += naive.lo <= 0.2 <= naive.hi
        # the shared part equals the SE of the seed-averaged per-sample losses, set by set
        c = np.mean([s.samples["generalization_gap"][0][2] for s in sums], axis=0)
        v = np.mean([s.samples["generalization_gap"][1][2] for s in sums], axis=0)
        assert shared_se(sums, "generalization_gap") == pytest.approx(
            math.sqrt(c.var(ddof=1) / c.size + v.var(ddof=1) / v.size))
    assert hit_with / trials >= 0.9, hit_with / trials
    assert hit_without / trials <= 0.6, hit_without / trials
    # different validation sets per run: nothing is shared
    sums = [summarize_run(_synthetic_run(rng, rng.normal(0, 1, 150), rng.normal(0, 1, 200))) for _ in range(3)]
    for i, s in enumerate(sums):
        s.samples["generalization_gap"] = [(sg, f"{key}-{i}", x) for sg, key, x in s.samples["generalization_gap"]]
    assert shared_se(sums, "generalization_gap") == 0.0


def test_runs_recorded_by_the_torch_adapter(tmp_path):
    """Runs recorded by losslens.torch.LossLens into one experiment, with fingerprints passed through ``meta=`` or
    computed by the recorder itself: the experiment loads, its verdicts run, a run with another random split is
    flagged, and ``losslens compare`` (through the main command group) reads the store."""
    from losslens.cli import main
    from losslens.torch import LossLens

    def record(seed, split_seed, store, explicit=True):
        perm = np.random.default_rng(split_seed).permutation(len(_X))
        tr, va = perm[:300], perm[300:600]
        train = (torch.from_numpy(_X[tr]), torch.from_numpy(_Y[tr]))
        val = (torch.from_numpy(_X[va]), torch.from_numpy(_Y[va]))
        torch.manual_seed(seed)
        model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Dropout(0.3),
                                    torch.nn.Linear(32, 10))
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        loss_fn = torch.nn.CrossEntropyLoss()
        lens = LossLens(model, loss_fn, train_data=train, val_data=val, run=f"lens-seed{seed}", store=store,
                        experiment="lens-exp", seed=seed, optimizer=opt, probe_size=200,
                        meta=split_fingerprints(train=train, val=val) if explicit else None)
        g = torch.Generator().manual_seed(seed)
        for _ in range(4):
            order = torch.randperm(300, generator=g)
            for i in range(0, 300, 50):
                idx = order[i:i + 50]
                opt.zero_grad()
                loss = loss_fn(model(train[0][idx]), train[1][idx])
                loss.backward()
                opt.step()
                lens.step(loss, batch_size=len(idx))
            lens.end_epoch()
        lens.finish()

    path = tmp_path / "lens.db"
    with Store(path) as st:
        for seed in range(3):
            record(seed, 0, st)
    exp = load_experiment(path, "lens-exp")
    assert len(exp) == 3 and all(len(r.epochs) == 4 for r in exp.runs)
    codes = {f.code for f in exp.verdicts()}
    assert "experiment.decomposition" in codes and not codes & {"experiment.split_changed", "experiment.split_unknown"}
    assert exp.terms()["train_mode"].k == 3
    with Store(path) as st:
        record(3, 1, st, explicit=False)  # the recorder fingerprints the sets itself
    exp = load_experiment(path, "lens-exp")
    assert exp.runs[-1].meta["val_fingerprint"] != exp.runs[0].meta["val_fingerprint"]
    codes = {f.code for f in exp.verdicts()}
    assert {"experiment.split_changed", "experiment.split_overlap"} <= codes
    res = CliRunner().invoke(main, ["compare", "lens-seed0", "lens-exp", "--store", str(path)])
    assert res.exit_code == 0, res.output
    assert "t, seed spread from the other side" in res.output


def _load_example(name):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_multiple_runs_examples_write_their_band_figure_and_pages(tmp_path):
    """Both multiple-runs examples, shortened (2 repeats, a few epochs), write the figure and the pages."""
    _load_example("multiple_runs_torch").main(["--repeats", "2", "--epochs", "3", "--out", str(tmp_path / "t")])
    for f in ("multiple_runs_torch.png", "multiple_runs_torch.html", "compare_dropout.html", "compare_dropout.json"):
        assert (tmp_path / "t" / f).stat().st_size > 1000, f
    assert len(load_experiment(tmp_path / "t" / "losslens.db", "mlp-dropout-0.5")) == 2
    _load_example("multiple_runs_lstm").main(["--repeats", "2", "--epochs", "6", "--out", str(tmp_path / "k")])
    exp = load_experiment(tmp_path / "k" / "losslens.db", "lstm-10-units-300-epochs")
    assert len(exp) == 2 and all(len(r.epochs) == 6 and r.meta["val_fingerprint"] for r in exp.runs)
    assert (tmp_path / "k" / "multiple_runs_lstm.png").stat().st_size > 1000
    assert "experiment.split_changed" not in {f.code for f in exp.verdicts()}
