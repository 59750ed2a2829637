"""Compare two experiments (or runs): which differences are beyond noise.

For each quantity — the lowest validation loss, the generalization gap
(V − C) and each decomposition term (:mod:`losslens.diagnose.gap`) — every run
gives one value with its within-run standard error (:func:`.verdicts.summarize_run`),
and the difference ``B − A`` of the side means gets a confidence interval:

* **both sides with ≥ 2 runs**: Welch's t interval over seeds
  (Welch 1947, "The generalization of Student's problem when several different
  population variances are involved", *Biometrika* 34): standard error
  ``sqrt(S_a²/k_a + S_b²/k_b)`` from the observed between-run variances (which
  contain the within-run noise, see :mod:`.verdicts`), degrees of freedom by
  the Welch–Satterthwaite formula;
* **one side a single run, the other ≥ 2 runs**: the single run's seed
  variance is unknown, so the other side's between-run variance stands in for
  it (equal spread assumed), floored at the run's own squared SE; t on the
  other side's ``k − 1`` degrees of freedom;
* **two single runs**: only the within-run standard errors are known:
  ``sqrt(s_a² + s_b²)`` with normal quantiles. Seed-to-seed variation is then
  not included, and the result says so (``basis="within-run only"``).

Both sides are normally evaluated on the same validation set and probe
indices; the sampling error of those samples is then common to both sides and
cancels in the difference, so the intervals are about the configurations on
these evaluation samples. When the sides validated on different samples
(``compare.split_differs``), each side's shared sampling error
(:func:`.verdicts.shared_se`) is added to the difference's variance.

A difference is **beyond noise** when its interval excludes 0. Quantities a
side did not measure, or where both sides are exactly zero (a skipped pass),
are reported and never called beyond noise. Runs whose validation sets differ
between the sides (content fingerprints) are flagged: their validation losses
are then not measured on the same samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from scipy import stats

from ..diagnose import Finding
from ..diagnose.gap import TERM_LABELS
from ..record import Run
from .verdicts import LEVEL, TERMS, RunSummary, shared_se, summarize_run

__all__ = ["Difference", "Comparison", "compare", "QUANTITIES", "QUANTITY_LABELS"]

#: Quantities compared, in report order.
QUANTITIES = ("best_val", "gap") + TERMS

#: What each compared quantity is.
QUANTITY_LABELS = {
    "best_val": "lowest validation loss (eval mode, end of epoch; per run, at its best epoch)",
    "gap": "generalization gap: validation loss − eval-mode training loss (V − C)",
    **TERM_LABELS,
}


@dataclass
class Difference:
    """One quantity compared between two sides.

    Attributes
    ----------
    name : str
    a_values, b_values : numpy.ndarray
        Per-run values of each side (loss per sample).
    a_mean, b_mean : float
        Side means.
    a_se, b_se : float
        Standard errors of the side means used for the interval.
    diff : float
        ``b_mean − a_mean``.
    se : float
        Standard error of ``diff``.
    df : float
        Degrees of freedom of the t quantile (inf for the normal quantile).
    lo, hi : float
        Confidence interval of ``diff`` at ``level``.
    beyond_noise : bool
        The interval excludes 0.
    basis : str
        ``"Welch t over seeds"``, ``"t, seed spread from the other side"``,
        ``"within-run only"`` or ``"not comparable"``.
    """

    name: str
    a_values: np.ndarray
    b_values: np.ndarray
    a_mean: float
    b_mean: float
    a_se: float
    b_se: float
    diff: float
    se: float
    df: float
    lo: float
    hi: float
    beyond_noise: bool
    basis: str

    @property
    def label(self) -> str:
        return QUANTITY_LABELS.get(self.name, self.name)

    def to_dict(self) -> dict[str, Any]:
        def num(x: float) -> float | None:
            return float(x) if x is not None and math.isfinite(x) else None

        return {"name": self.name, "label": self.label, "a_mean": num(self.a_mean), "b_mean": num(self.b_mean),
                "a_se": num(self.a_se), "b_se": num(self.b_se), "diff": num(self.diff), "se": num(self.se),
                "df": num(self.df), "lo": num(self.lo), "hi": num(self.hi), "beyond_noise": bool(self.beyond_noise),
                "basis": self.basis, "a_values": [num(float(v)) for v in self.a_values],
                "b_values": [num(float(v)) for v in self.b_values]}


@dataclass
class Comparison:
    """The result of :func:`compare`.

    Attributes
    ----------
    a_name, b_name : str
        Names of the two sides.
    a_runs, b_runs : list of RunSummary
    differences : dict of str -> Difference
        In the order of :data:`QUANTITIES`, for the quantities at least one side has.
    level : float
    at : str
        Epoch of the decomposition terms (``"last"`` or ``"best"``).
    findings : list of Finding
        ``compare.split_differs`` when the sides validated on different samples;
        ``compare.within_run_only`` when both sides are single runs.
    """

    a_name: str
    b_name: str
    a_runs: list[RunSummary]
    b_runs: list[RunSummary]
    differences: dict[str, Difference]
    level: float
    at: str
    findings: list[Finding] = field(default_factory=list)

    def beyond_noise(self) -> list[str]:
        """Names of the quantities whose difference is beyond noise."""
        return [n for n, d in self.differences.items() if d.beyond_noise]

    def to_dict(self) -> dict[str, Any]:
        return {"a": {"name": self.a_name, "runs": [s.label for s in self.a_runs]},
                "b": {"name": self.b_name, "runs": [s.label for s in self.b_runs]},
                "level": self.level, "at": self.at, "difference": "B − A",
                "differences": {n: d.to_dict() for n, d in self.differences.items()},
                "beyond_noise": self.beyond_noise(),
                "findings": [f.to_dict() for f in self.findings]}

    def to_text(self) -> str:
        """A plain-text table of the comparison."""
        lines = [f"A: {self.a_name} ({len(self.a_runs)} run(s))    B: {self.b_name} ({len(self.b_runs)} run(s))",
                 f"difference B − A with its {int(round(100 * self.level))} % interval; * = beyond noise", ""]
        w = max(len(n) for n in self.differences) if self.differences else 10
        lines.append(f"{'quantity':<{w}}  {'A':>10}  {'B':>10}  {'B − A':>10}  {'interval':>23}  basis")
        for n, d in self.differences.items():
            star = "*" if d.beyond_noise else " "
            lines.append(f"{n:<{w}}  {_f(d.a_mean):>10}  {_f(d.b_mean):>10}  {_f(d.diff, True):>10}{star} "
                         f"[{_f(d.lo, True):>10}, {_f(d.hi, True):>10}]  {d.basis}")
        lines.append("")
        for side, sums in (("A", self.a_runs), ("B", self.b_runs)):
            counts: dict[str, int] = {}
            for s in sums:
                counts[s.regime or "no verdict"] = counts.get(s.regime or "no verdict", 0) + 1
            lines.append(f"fit regime per run, {side}: " + ", ".join(f"{c} ×{n}" for c, n in counts.items()))
        for f in self.findings:
            lines += ["", f"[{f.severity}] {f.title}: {f.message}"]
        return "\n".join(lines)


def _f(x: float, signed: bool = False) -> str:
    if not math.isfinite(x):
        return "n/a"
    return f"{x:+.4g}" if signed else f"{x:.4g}"


def _side(runs: Sequence[Run] | Sequence[RunSummary], at: str) -> list[RunSummary]:
    out = []
    for i, r in enumerate(runs):
        out.append(r if isinstance(r, RunSummary) else summarize_run(r, at))
    return out


def _difference(name: str, a: list[tuple[float, float, str]], b: list[tuple[float, float, str]],
                level: float, extra_var: float = 0.0) -> Difference:
    av = np.array([x[0] for x in a if math.isfinite(x[0])], dtype=np.float64)
    bv = np.array([x[0] for x in b if math.isfinite(x[0])], dtype=np.float64)
    as_ = np.array([x[1] for x in a if math.isfinite(x[0])], dtype=np.float64)
    bs_ = np.array([x[1] for x in b if math.isfinite(x[0])], dtype=np.float64)
    nan = math.nan
    a_mean = float(av.mean()) if av.size else nan
    b_mean = float(bv.mean()) if bv.size else nan
    diff = b_mean - a_mean
    statuses = {x[2] for x in a + b}
    if not av.size or not bv.size:
        return Difference(name, av, bv, a_mean, b_mean, nan, nan, diff, nan, nan, nan, nan, False, "not comparable")
    ka, kb = av.size, bv.size
    if ka >= 2 and kb >= 2:
        va, vb = av.var(ddof=1) / ka, bv.var(ddof=1) / kb
        se = math.sqrt(va + vb)
        if se > 0:
            df = (va + vb) ** 2 / ((va ** 2 / (ka - 1) if va > 0 else 0) + (vb ** 2 / (kb - 1) if vb > 0 else 0))
        else:
            df = math.inf
        basis = "Welch t over seeds"
        a_se, b_se = math.sqrt(va), math.sqrt(vb)
    elif ka == 1 and kb == 1:
        sa = float(as_[0]) if math.isfinite(as_[0]) else nan
        sb = float(bs_[0]) if math.isfinite(bs_[0]) else nan
        se, df, basis, a_se, b_se = math.hypot(sa, sb), math.inf, "within-run only", sa, sb
    else:
        many, single_se = (av, float(bs_[0])) if kb == 1 else (bv, float(as_[0]))
        var_many = float(many.var(ddof=1))
        var_single = max(var_many, single_se ** 2 if math.isfinite(single_se) else 0.0)
        se_many, se_single = math.sqrt(var_many / many.size), math.sqrt(var_single)
        se = math.hypot(se_many, se_single)
        df = float(many.size - 1)
        basis = "t, seed spread from the other side"
        a_se, b_se = (se_many, se_single) if kb == 1 else (se_single, se_many)
    if extra_var > 0 and math.isfinite(se) and basis != "within-run only":
        # different evaluation samples on the two sides: their sampling errors do not cancel
        v0 = se ** 2
        se = math.sqrt(v0 + extra_var)
        df = (v0 + extra_var) ** 2 / (v0 ** 2 / df) if v0 > 0 and math.isfinite(df) else math.inf
        basis += " + sampling error of the different evaluation sets"
    if not math.isfinite(se):
        return Difference(name, av, bv, a_mean, b_mean, a_se, b_se, diff, se, df, nan, nan, False, basis)
    if se == 0 and np.all(av == av[0]) and np.all(bv == bv[0]) and statuses <= {"skipped", "measured"} and \
            not (np.any(as_ > 0) or np.any(bs_ > 0)) and diff == 0.0:
        return Difference(name, av, bv, a_mean, b_mean, 0.0, 0.0, 0.0, 0.0, df, 0.0, 0.0, False,
                          "exactly equal (no variation)")
    crit = float(stats.t.ppf(0.5 + level / 2, df)) if math.isfinite(df) else float(stats.norm.ppf(0.5 + level / 2))
    lo, hi = diff - crit * se, diff + crit * se
    beyond = (lo > 0 or hi < 0) if se > 0 else diff != 0.0
    return Difference(name, av, bv, a_mean, b_mean, a_se, b_se, diff, se, df, lo, hi, bool(beyond), basis)


def compare(a: Sequence[Run] | Run, b: Sequence[Run] | Run, a_name: str = "A", b_name: str = "B",
            level: float = LEVEL, at: str = "last") -> Comparison:
    """Compare two experiments or runs.

    Parameters
    ----------
    a, b : Experiment, Run, or sequence of Run (or of :class:`~.verdicts.RunSummary`)
        The two sides; a single Run is a side of one run.
    a_name, b_name : str
        Names shown in reports (default: the experiments' names, else "A" and "B").
    level : float
        Two-sided confidence level of the intervals of the difference.
    at : str
        Epoch of the gap and decomposition terms per run: ``"last"`` or ``"best"``.

    Returns
    -------
    Comparison
        Differences are ``B − A`` in loss per sample.

    Raises
    ------
    ValueError
        If a side has no runs, or ``level`` is not in (0, 1).
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"compare(level={level!r}): must be in (0, 1)")
    def as_list(x: Any) -> list[Any]:
        if isinstance(x, Run):
            return [x]
        runs = getattr(x, "runs", None)  # an Experiment
        return list(runs) if runs is not None else list(x)

    if a_name == "A" and isinstance(getattr(a, "name", None), str) and hasattr(a, "runs"):
        a_name = a.name
    if b_name == "B" and isinstance(getattr(b, "name", None), str) and hasattr(b, "runs"):
        b_name = b.name
    a_list, b_list = as_list(a), as_list(b)
    for nm, lst in ((a_name, a_list), (b_name, b_list)):
        if not lst:
            raise ValueError(f"compare: side {nm!r} has no runs")
    sa, sb = _side(a_list, at), _side(b_list, at)
    runs_a = [r for r in a_list if isinstance(r, Run)]
    runs_b = [r for r in b_list if isinstance(r, Run)]
    fa = {r.info.split.val_fingerprint for r in runs_a} - {None}
    fb = {r.info.split.val_fingerprint for r in runs_b} - {None}
    split_differs = bool(fa and fb and fa != fb)
    diffs: dict[str, Difference] = {}
    for q in QUANTITIES:
        def rows(side: list[RunSummary]) -> list[tuple[float, float, str]]:
            out = []
            for s in side:
                if q in ("best_val", "gap"):
                    v, se = s.quantity(q)
                    if math.isfinite(v):
                        out.append((v, se, "measured"))
                elif q in s.terms:
                    out.append(s.terms[q])
            return out

        ra, rb = rows(sa), rows(sb)
        if not ra and not rb:
            continue
        extra = shared_se(sa, q) ** 2 + shared_se(sb, q) ** 2 if split_differs else 0.0
        diffs[q] = _difference(q, ra, rb, level, extra)
    findings: list[Finding] = []
    if split_differs:
        findings.append(Finding(
            "compare.split_differs", "warning", "The two sides did not validate on the same samples",
            f"Validation-set fingerprints differ between {a_name!r} and {b_name!r}: differences in validation loss "
            "mix the configuration's effect with the split's.",
            "Use one fixed split for every run you compare.", data={"a": sorted(fa), "b": sorted(fb)}))
    if len(sa) == 1 and len(sb) == 1:
        findings.append(Finding(
            "compare.within_run_only", "info", "Single runs: seed-to-seed variation is not included",
            "Both sides are single runs, so the intervals contain only the measurement noise of the fixed "
            "validation and probe sets; another seed can differ by more.",
            "Repeat each configuration with several seeds (one experiment each) and compare the experiments."))
    return Comparison(a_name, b_name, sa, sb, diffs, level, at, findings)
