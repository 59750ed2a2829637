"""Checks registered by name: the diagnosis runs the registry, one check per finding family.

In the manner of cleanlab's Datalab issue managers: each family of findings (``stability.*``, ``regime.*``,
``data.*``, ``gap.*``, ``split.*``, ``recording.*``) is one function registered with :func:`register`, taking a
:class:`Context` and returning complete findings. :func:`run_checks` calls them in registry order; a check may
read the findings of the checks before it (``ctx.findings``) and the split findings (``ctx.split``, computed
once), so no finding is edited after it is built.

A new check is a function in its family's module plus one ``@register(...)`` line; nothing else is wired by
hand::

    @register("my_family", order=55, description="what it looks for")
    def my_family(ctx: Context) -> list[Finding]:
        ...
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ..findings import Finding
from ..record import Run
from .gap import EpochDecomposition

__all__ = ["Check", "Context", "register", "registered_checks", "run_checks"]


@dataclass
class Context:
    """What a check sees.

    Attributes
    ----------
    run : Run
        The run (with the diagnosis's end-of-epoch estimates when it has no probe passes).
    decomposition : list of EpochDecomposition
        Per-epoch gap decomposition.
    audit : losslens.audit.AuditResult or None
        A split audit given to the diagnosis.
    findings : list of Finding
        The findings of the checks that ran before, in order.
    """

    run: Run
    decomposition: list[EpochDecomposition]
    audit: Any = None
    findings: list[Finding] = field(default_factory=list)
    _split: list[Finding] | None = None

    @property
    def split(self) -> list[Finding]:
        """The split findings: the audit's, or the exact-duplicate check the adapters ran when recording started
        (``run.meta["split_exact_duplicates"]``); computed once."""
        if self._split is None:
            from .split import split_findings_of

            self._split = split_findings_of(self.run, self.audit)
        return self._split

    def has(self, code: str) -> bool:
        """Whether an earlier check produced ``code``."""
        return any(f.code == code for f in self.findings)


@dataclass(frozen=True)
class Check:
    """A registered check: its family ``name``, its place in the output (``order``), what it looks for."""

    name: str
    order: int
    func: Callable[[Context], list[Finding]]
    description: str


_REGISTRY: dict[str, Check] = {}


def register(name: str, *, order: int, description: str) -> Callable[[Callable[[Context], list[Finding]]],
                                                                     Callable[[Context], list[Finding]]]:
    """Register ``func(ctx) -> list[Finding]`` as the check of family ``name``.

    Raises
    ------
    ValueError
        If another function is already registered under ``name`` or at ``order``.
    """
    def deco(func: Callable[[Context], list[Finding]]) -> Callable[[Context], list[Finding]]:
        old = _REGISTRY.get(name)
        if old is not None and old.func is not func:
            raise ValueError(f"register: a check named {name!r} exists ({old.func.__module__}.{old.func.__name__})")
        clash = [c.name for c in _REGISTRY.values() if c.order == order and c.name != name]
        if clash:
            raise ValueError(f"register: order {order} is taken by {clash[0]!r}")
        _REGISTRY[name] = Check(name, order, func, description)
        return func
    return deco


def registered_checks() -> list[Check]:
    """The registered checks, in the order they run and their findings are listed."""
    from . import checks as _builtin  # noqa: F401  (registers the built-in checks)

    return sorted(_REGISTRY.values(), key=lambda c: c.order)


def run_checks(run: Run, decomposition: list[EpochDecomposition], audit: Any = None) -> list[Finding]:
    """Every registered check on ``run``, in order; their findings concatenated."""
    ctx = Context(run, decomposition, audit)
    for check in registered_checks():
        ctx.findings.extend(check.func(ctx))
    return ctx.findings
