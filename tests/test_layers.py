"""Imports point down the layers of DESIGN.md, and only the adapters import a deep-learning framework.

Every ``import`` statement in ``src/losslens`` is read with :mod:`ast` (module level and inside functions alike,
so a lazy import cannot hide an upward dependency), resolved to a module of the package, and placed in a layer.
A module may import its own layer and the layers below it. The few exceptions are listed in ``ALLOWED`` with
their reason; each must still exist (a stale exception fails the test).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

#: Bottom to top (DESIGN.md, "Layers"). A ``*.cli`` module of any package belongs to the cli layer.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("record", ("losslens", "losslens.record", "losslens.store", "losslens.findings")),
    ("importers", ("losslens.importers",)),
    ("recording", ("losslens.recording",)),
    ("audit", ("losslens.audit",)),
    ("diagnose", ("losslens.diagnose",)),
    # Above the diagnosis (not below it, as DESIGN.md first drew them): the sinks write the decomposition and the
    # headline verdict into TensorBoard, MLflow, W&B and the frameworks' logs live, at each epoch end (issue 15).
    ("adapters", ("losslens.torch", "losslens.keras", "losslens.lightning", "losslens.transformers",
                  "losslens.fastai", "losslens.sinks")),
    ("experiment", ("losslens.experiment",)),
    ("report", ("losslens.report",)),
    ("cli", ("losslens.cli", "losslens.demo")),
]

FRAMEWORKS = ("torch", "keras", "lightning", "pytorch_lightning", "transformers", "tensorflow", "jax", "fastai")
ADAPTERS = dict(LAYERS)["adapters"]

#: (importing module, imported module): why the upward import is allowed.
ALLOWED = {
    ("losslens.recording.deprecations", "losslens.report"):
        "the deprecated adapter method diagnose() (removed in 0.3) builds a Report lazily",
}


def _module_name(path: Path, src: Path = SRC) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _layer(module: str) -> int:
    if module.rsplit(".", 1)[-1] == "cli":
        return len(LAYERS) - 1
    best, depth = None, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > depth:
                best, depth = i, len(p)
    assert best is not None, f"{module} is in no layer: add it to LAYERS"
    return best


def _imports(path: Path, src: Path = SRC) -> list[tuple[str, int]]:
    """(imported module, line) for every import in the file, relative imports resolved."""
    mod = _module_name(path, src)
    package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.append((target, node.lineno))
            for alias in node.names:   # `from . import fingerprint` imports a module
                out.append((f"{target}.{alias.name}", node.lineno))
        elif isinstance(node, ast.Import):
            out.extend((alias.name, node.lineno) for alias in node.names)
    return out


def _package_module(name: str, src: Path = SRC) -> str | None:
    """The longest prefix of ``name`` that is a module or package of losslens (``from x import Name`` lists names
    that are not modules)."""
    parts = name.split(".")
    while parts:
        cand = ".".join(parts)
        rel = Path(*parts)
        if (src / rel).with_suffix(".py").exists() or (src / rel / "__init__.py").exists():
            return cand
        parts.pop()
    return None


FILES = sorted((SRC / "losslens").rglob("*.py"))


def test_every_module_has_a_layer():
    for f in FILES:
        _layer(_module_name(f))


def upward_imports(path: Path, src: Path = SRC) -> list[str]:
    """The imports of one file that point up the layers (minus ``ALLOWED``), as readable lines."""
    mod = _module_name(path, src)
    mine = _layer(mod)
    bad = set()
    for target, line in _imports(path, src):
        if not target.startswith("losslens"):
            continue
        dep = _package_module(target, src)
        if dep is None or dep == mod:
            continue
        if _layer(dep) > mine and not any(mod == a and (dep == b or dep.startswith(b + ".")) for a, b in ALLOWED):
            bad.add(f"{mod}:{line} imports {dep} ({LAYERS[_layer(dep)][0]} is above {LAYERS[mine][0]})")
    return sorted(bad)


@pytest.mark.parametrize("path", FILES, ids=lambda p: _module_name(p))
def test_imports_point_down(path):
    bad = upward_imports(path)
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("path", FILES, ids=lambda p: _module_name(p))
def test_the_core_imports_no_framework(path):
    """DESIGN.md: record, recording, importers, audit, diagnose, experiment and report import no deep-learning
    framework (the adapters do, and the cli's demo trains a torch model)."""
    mod = _module_name(path)
    if LAYERS[_layer(mod)][0] in ("adapters", "cli"):
        return
    bad = [f"{mod}:{line} imports {t}" for t, line in _imports(path) if t.split(".")[0] in FRAMEWORKS]
    assert not bad, "\n".join(bad)


def test_the_allowed_exceptions_are_still_needed():
    seen = set()
    for f in FILES:
        mod = _module_name(f)
        for target, _ in _imports(f):
            dep = _package_module(target) if target.startswith("losslens") else None
            for a, b in ALLOWED:
                if mod == a and dep is not None and (dep == b or dep.startswith(b + ".")):
                    seen.add((a, b))
    assert seen == set(ALLOWED), f"stale exceptions: {set(ALLOWED) - seen}"


def test_the_check_catches_an_upward_import(tmp_path):
    """The rule can fail: an adapter importing the report layer, lazily inside a method, is reported; a cli module
    of any package may import anything."""
    pkg = tmp_path / "losslens"
    (pkg / "report").mkdir(parents=True)
    (pkg / "audit").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "report" / "__init__.py").write_text("")
    (pkg / "audit" / "__init__.py").write_text("")
    (pkg / "keras.py").write_text("def diagnose():\n    from .report import Report\n")
    (pkg / "audit" / "cli.py").write_text("from ..report import Report\n")
    assert upward_imports(pkg / "keras.py", tmp_path) == [
        "losslens.keras:2 imports losslens.report (report is above adapters)"]
    assert upward_imports(pkg / "audit" / "cli.py", tmp_path) == []


def test_one_report_layer():
    """Every page comes from the report layer: one jinja environment, templates on one base, no HTML pages built
    elsewhere (an ``<html`` literal outside the templates)."""
    envs, pages = [], []
    for f in FILES:
        text = f.read_text(encoding="utf-8")
        if "jinja2.Environment(" in text:
            envs.append(_module_name(f))
        if "<html" in text.lower():
            pages.append(_module_name(f))
    assert envs == ["losslens.report._env"]
    assert pages == []
    templates = SRC / "losslens" / "report" / "templates"
    pages = [t.name for t in templates.glob("*.html.j2") if not t.name.startswith("_") and "fragment" not in t.name]
    assert set(pages) == {"base.html.j2", "run.html.j2", "audit.html.j2", "experiment.html.j2",
                          "comparison.html.j2", "overview.html.j2"}
    for name in pages:
        if name != "base.html.j2":
            assert (templates / name).read_text().startswith('{% extends "base.html.j2" %}'), name
