"""Headline verdicts against the expert labels of ../shared/real-logs (issue 12).

Every labelled run is imported, diagnosed, and its headline verdict
(:func:`losslens.diagnose.headline`) compared with the set of verdicts the two
expert readings found defensible (``acceptable`` in ``labels.tsv``). Prints the
agreement, the confusion table (label -> verdict) and every disagreement with
the label's evidence beside losslens's deciding finding.

    python benchmarks/verdicts.py [FOLDER] [--markdown]

FOLDER defaults to ../shared/real-logs next to the repository. ``--markdown``
prints the per-run table used in docs/real-logs.md. Exit status 0 always (a
benchmark, not a test); tests/test_verdicts_real_logs.py asserts the target.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

from losslens.diagnose.labels import labelled_verdicts


def main(argv: list[str]) -> int:
    args = [a for a in argv if not a.startswith("--")]
    folder = Path(args[0]) if args else Path(__file__).resolve().parents[1].parent / "shared" / "real-logs"
    rows = labelled_verdicts(folder)
    scored = [r for r in rows if r["label"] != "same_run_as_train"]
    ok = [r for r in scored if r["agrees"]]
    errors = [r for r in scored if r["verdict"] == "error"]
    if "--markdown" in argv:
        print("| file | run | expert verdict (acceptable) | losslens verdict | deciding finding | agrees |")
        print("|---|---|---|---|---|---|")
        for r in scored:
            print(f"| `{r['file']}` | {r['run_index']} | {r['label']} ({', '.join(r['acceptable'])}) | "
                  f"{r['verdict']}{_best(r)} | {r['finding'] or '—'} | {'yes' if r['agrees'] else '**no**'} |")
        return 0
    print(f"agreement with the acceptable set: {len(ok)} / {len(scored)} = {100 * len(ok) / len(scored):.1f} %")
    print(f"tracebacks or refused files: {len(errors)}")
    conf = Counter((r["label"], r["verdict"]) for r in scored)
    labels = sorted({r["label"] for r in scored})
    verdicts = sorted({r["verdict"] for r in scored})
    w = max(len(v) for v in verdicts + labels) + 1
    print("\nconfusion (rows: expert verdict, columns: losslens verdict)")
    print(" " * w + "".join(v[:w - 1].rjust(w) for v in verdicts))
    for lab in labels:
        print(lab.ljust(w) + "".join(str(conf.get((lab, v), "")).rjust(w) for v in verdicts))
    print("\ndisagreements")
    for r in scored:
        if not r["agrees"]:
            print(f"- {r['file']} [{r['run_index']}]: expert {r['label']} (acceptable {','.join(r['acceptable'])}); "
                  f"losslens {r['verdict']}{_best(r)} by {r['finding']}")
            print(f"    expert:   {r['evidence']}")
            print(f"    losslens: {r['sentence']}")
    return 0


def _best(r: dict) -> str:
    b = r.get("best")
    if not b:
        return ""
    return f" (best {'step ' + str(b['step']) if b.get('step') is not None else 'epoch ' + str(b['epoch'])})"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
