"""The committed suites' summary table of benchmarks/README.md (between ``<!-- suites-table -->``
markers), from ``benchmarks/results/{ring8_vp,ring8_ve,gmm64_vp}/results.jsonl``.

    python benchmarks/suites_table.py

Per method and suite: counted NFE from which the per-component W2 and the log-density gap stay
within 2× of their floors at every larger budget measured, and the median overhead (wall time ÷
time inside the score in the same run; "—" for rows recorded before the score was timed in the run).
"""

from __future__ import annotations

from pathlib import Path
from statistics import median

from scoresolve.bench.report import aggregate, nfe_to_reach
from scoresolve.bench.store import ResultStore

ROOT = Path(__file__).resolve().parent
SUITES = ["ring8_vp", "ring8_ve", "gmm64_vp"]


def _nfe(v) -> str:
    return "—" if v is None else (f"{v:.0f}" if float(v).is_integer() else f"{v:.1f}")


def table() -> str:
    aggs = {s: aggregate(ResultStore(ROOT / "results" / s / "results.jsonl").rows()) for s in SUITES}
    methods = sorted({a["method"] for v in aggs.values() for a in v})
    head = ["method"] + [f"{s} {c}" for s in SUITES for c in ("cW2", "logp", "ovh")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in methods:
        cells = [m]
        for s in SUITES:
            a_m = [a for a in aggs[s] if a["method"] == m and a["seeds"]]
            top = max((a["nfe"] for a in a_m), default=None)
            for metric in ("component_w2", "logp_gap"):
                n = nfe_to_reach(a_m, metric)
                cells.append(_nfe(n) if n is not None else (f">{_nfe(top)}" if top else "—"))
            ovh = [a["overhead"] for a in a_m if a["overhead"] is not None]
            cells.append(f"{median(ovh):.2f}" if ovh else "—")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    path = ROOT / "README.md"
    text = path.read_text()
    start, end = "<!-- suites-table -->", "<!-- /suites-table -->"
    i, j = text.index(start) + len(start), text.index(end)
    path.write_text(text[:i] + "\n" + table() + "\n" + text[j:])
    print("updated", path)


if __name__ == "__main__":
    main()
