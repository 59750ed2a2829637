"""Experiments: several runs of one configuration (different seeds), judged together.

One run is one sample: a curve, a best epoch or a regime verdict from one seed
can change with the next. An **experiment** is the group of runs stored under
one name (``Store.create_run(name, meta, experiment="my-config")``).

>>> from losslens.experiment import load_experiment, compare   # doctest: +SKIP
>>> exp = load_experiment("losslens.db", "lstm-10-units")
>>> band = exp.band("validation", on="epoch")                   # mean curve + 95 % bootstrap band
>>> [f.code for f in exp.verdicts()]                            # experiment.* findings
>>> exp.save_html("lstm.html")
>>> result = compare(load_experiment("losslens.db", "dropout-0.5"), load_experiment("losslens.db", "dropout-0.0"))
>>> result.beyond_noise()                                       # e.g. ['train_mode', ...]

Modules: :mod:`.bands` (alignment on epochs / samples / steps and bootstrap
bands), :mod:`.verdicts` (regime, best epoch, decomposition terms across
seeds, split checks), :mod:`.compare` (differences with intervals),
:mod:`losslens.recording.fingerprint` (content fingerprints of the data sets), :mod:`.report`
(HTML page), :mod:`.cli` (``losslens compare``). No deep-learning framework is
imported.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Sequence

from ..diagnose import Finding
from ..record import Run
from ..recording.deprecations import deprecated_page
from ..recording.fingerprint import auto_fingerprints, fingerprint_samples, sample_hashes, split_fingerprints
from ..store import Store
from .bands import AXES, Aligned, Band, align, bands, bootstrap_band
from .compare import Comparison, Difference, compare
from .verdicts import RunSummary, TermSummary, combine_terms, experiment_verdicts, summarize_run, term_summaries

__all__ = [
    "Experiment",
    "load_experiment",
    "align",
    "bands",
    "bootstrap_band",
    "experiment_verdicts",
    "compare",
    "combine_terms",
    "summarize_run",
    "fingerprint_samples",
    "sample_hashes",
    "split_fingerprints",
    "auto_fingerprints",
    "Aligned",
    "Band",
    "Comparison",
    "Difference",
    "RunSummary",
    "TermSummary",
    "AXES",
]


@dataclass
class Experiment:
    """The runs of one configuration with different seeds.

    Parameters
    ----------
    name : str
        The experiment's name.
    runs : list of Run
        Its runs (at least one).

    Raises
    ------
    ValueError
        If ``runs`` is empty.
    """

    name: str
    runs: list[Run] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.runs = list(self.runs)
        if not self.runs:
            raise ValueError(f"Experiment {self.name!r}: no runs")
        self._summaries: list[RunSummary] | None = None
        self._summaries_at: str | None = None

    def __len__(self) -> int:
        return len(self.runs)

    def summaries(self, at: str = "last") -> list[RunSummary]:
        """Per-run numbers (:func:`~.verdicts.summarize_run`), cached per ``at``."""
        if self._summaries is None or self._summaries_at != at:
            self._summaries = [summarize_run(r, at) for r in self.runs]
            self._summaries_at = at
        return self._summaries

    def align(self, kind: str = "validation", on: str = "epoch") -> Aligned:
        """:func:`~.bands.align` over this experiment's runs."""
        return align(self.runs, kind, on)

    def band(self, kind: str = "validation", on: str = "epoch", **kwargs: Any) -> Band:
        """Mean curve with a bootstrap band (:func:`~.bands.bootstrap_band`; keyword arguments go there)."""
        return bootstrap_band(self.align(kind, on), **kwargs)

    def bands(self, kinds: Sequence[str] = ("validation", "eval_clean", "train_loss"), on: str = "epoch",
              **kwargs: Any) -> dict[str, Band]:
        """:func:`~.bands.bands` over this experiment's runs."""
        return bands(self.runs, kinds, on, **kwargs)

    def verdicts(self, at: str = "last") -> list[Finding]:
        """:func:`~.verdicts.experiment_verdicts` over this experiment's runs."""
        return experiment_verdicts(self.runs, at=at, summaries=self.summaries(at))

    def terms(self, at: str = "last") -> dict[str, TermSummary]:
        """Decomposition terms and the generalization gap combined across runs."""
        return term_summaries(self.summaries(at))

    def save_html(self, path: str | os.PathLike[str], on: str = "epoch") -> None:
        """Deprecated (removed in 0.3): :func:`losslens.report.experiment.save_experiment_html`."""
        deprecated_page(self, "Experiment.save_html()", "losslens.report.experiment.save_experiment_html(exp, path)",
                        "experiment_page", path=path, on=on)

    def to_dict(self, at: str = "last") -> dict[str, Any]:
        """JSON-serialisable summary: runs, findings, terms."""
        return {"name": self.name, "runs": [s.label for s in self.summaries(at)],
                "findings": [f.to_dict() for f in self.verdicts(at)],
                "terms": {n: t.to_dict() for n, t in self.terms(at).items()}}


def load_experiment(store: Store | str | os.PathLike[str], name: str) -> Experiment:
    """Load every run of an experiment from a store.

    Parameters
    ----------
    store : Store or path
        An open :class:`~losslens.store.Store`, or the path of an existing store file.
    name : str
        Experiment name.

    Raises
    ------
    FileNotFoundError
        If ``store`` is a path that does not exist (a store is never created by reading).
    losslens.store.StoreError
        If the store has no experiment of that name (the message lists the experiments).
    """
    if isinstance(store, Store):
        return Experiment(name, store.load_experiment(name))
    if not os.path.exists(store):
        raise FileNotFoundError(f"store file {os.fspath(store)!r} does not exist")
    with Store(store, read_only=True) as st:
        return Experiment(name, st.load_experiment(name))
