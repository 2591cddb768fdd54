"""``scoresolve bench report DIR``: markdown tables and PNG plots from ``DIR/results.jsonl``.

Per (problem, sde): the noise floors; per method the counted NFE from which each key metric
stays within 2× of its floor, the solver overhead and throughput; the best method within each
NFE budget; every cell; and plots of each metric against counted NFE (log-log, one line per
method, floor band and 2× line), with a sample scatter beside exact samples for 2-D problems.
Seeds are averaged.  Ratios are to the floor's mean, or to its sd where the floor's mean is not
clearly above zero (unbiased MMD²), marked "σ".
"""

from __future__ import annotations

import io
import math
from collections import defaultdict
from pathlib import Path
from statistics import median

from .store import ResultStore, atomic_write_bytes
from .store import safe_name as _safe

__all__ = ["write_report", "aggregate", "nfe_to_reach", "KEY_METRICS"]

KEY_METRICS = ("component_w2", "logp_gap", "mode_tv", "gauss_w2", "gauss_kl", "sliced_w2", "mmd")
WITHIN = 2.0


def display_method(row: dict) -> str:
    """The method as the report names it: ``unipc (fitted grid)`` for ``--fit-grid`` cells, ``unipc
    (scale grid)`` for ``--scale-grid`` ones, series of their own beside the method on its default grid."""
    grid = {"fit": "fitted grid", "scale": "scale grid"}.get(row.get("budget_kind"))
    return f"{row['method']} ({grid})" if grid else row["method"]


def _mean(vals):
    vals = [v for v in vals if isinstance(v, (int, float)) and math.isfinite(v)]
    return sum(vals) / len(vals) if vals else None


def aggregate(rows: list[dict]) -> list[dict]:
    """One entry per (method, budget): seed-averaged metrics, ratios, NFE and timings."""
    cells: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        cells[(display_method(r), r["budget_kind"], r["budget"])].append(r)
    out = []
    for (method, kind, budget), rs in cells.items():
        ok = [r for r in rs if r.get("status") == "ok"]
        names = sorted({m for r in ok for m in r.get("metrics", {})})
        agg = {
            "method": method, "budget_kind": kind, "budget": budget, "budget_label": rs[0]["budget_label"],
            "seeds": len(ok), "failed": len(rs) - len(ok),
            "nfe": _mean(r.get("nfe") for r in ok),
            "metrics": {m: _mean(r["metrics"].get(m) for r in ok) for m in names},
            "ratio": {m: _mean(r["ratio"].get(m) for r in ok) for m in names},
            "basis": ok[0].get("ratio_basis", {}) if ok else {},
        }
        for k in ("wall_s", "score_s", "bare_s", "overhead", "samples_per_s", "peak_mem_mb"):
            agg[k] = _mean(r.get(k) for r in ok)
        # rows written before the score was timed inside the run divided by bare calls made on other
        # inputs (it could fall below 1): not shown; re-run the cell to get the in-run overhead
        agg["overhead"] = _mean(r.get("overhead") for r in ok if r.get("score_s"))
        agg["samples_file"] = ok[0].get("samples_file") if ok else None
        out.append(agg)
    return sorted(out, key=lambda a: (a["method"], a["nfe"] if a["nfe"] is not None else math.inf))


def _dist(a: dict, m: str) -> float | None:
    """Distance from the floor: the ratio, or |ratio| when it is in floor sds (signed metrics)."""
    r = a["ratio"].get(m)
    return abs(r) if r is not None and a.get("basis", {}).get(m) == "sd" else r


def nfe_to_reach(aggs: list[dict], metric: str, within: float = WITHIN) -> float | None:
    """Smallest counted NFE from which ``metric`` stays within ``within``× its floor at every
    larger budget measured (None if it never does).  ``aggs`` are one method's entries."""
    pts = sorted((a["nfe"], _dist(a, metric)) for a in aggs if a["nfe"] is not None)
    best = None
    for nfe, r in reversed(pts):
        if r is None or r > within:
            break
        best = nfe
    return best


def _fmt(v, digits: int = 3) -> str:
    if v is None:
        return "—"
    if isinstance(v, float) and not math.isfinite(v):
        return "inf"
    if v == 0:
        return "0"
    a = abs(v)
    return f"{v:.{digits}g}" if 1e-3 <= a < 1e5 else f"{v:.2e}"


def _nfe(v) -> str:
    if v is None:
        return "—"
    return str(int(round(v))) if abs(v - round(v)) < 0.05 else f"{v:.1f}"


def _ratio(a: dict, m: str) -> str:
    r = a["ratio"].get(m)
    return "—" if r is None else f"{_fmt(r, 2)}{'σ' if a['basis'].get(m) == 'sd' else '×'}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _save(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def _styles(methods: list[str]) -> dict[str, dict]:
    """A distinct (colour, marker, dash) per method, stable for a given method list."""
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]
    markers, dashes = "os^vD<>ph*P", ["-", "--", ":"]
    return {m: {"color": cmap(i % 20), "marker": markers[i % len(markers)], "ls": dashes[(i // 10) % 3]}
            for i, m in enumerate(methods)}


def _plot_metrics(aggs, floors, metrics, title, path: Path) -> None:
    from matplotlib.figure import Figure

    ncol = min(3, len(metrics))
    nrow = math.ceil(len(metrics) / ncol)
    fig = Figure(figsize=(4.4 * ncol + 2.2, 3.4 * nrow))
    methods = sorted({a["method"] for a in aggs})
    style = _styles(methods)
    for i, m in enumerate(metrics):
        ax = fig.add_subplot(nrow, ncol, i + 1)
        for meth in methods:
            pts = sorted((a["nfe"], a["metrics"].get(m)) for a in aggs
                         if a["method"] == meth and a["nfe"] is not None and a["metrics"].get(m) is not None)
            if pts:
                ax.plot(*zip(*pts), ms=3.5, lw=1.2, label=meth, **style[meth])
        mean, sd = floors.get(m, (None, None))
        signed = mean is None or not mean > 0 or any(
            (a["metrics"].get(m) or 1.0) <= 0 for a in aggs)
        if mean is not None:
            ax.axhspan(mean - sd, mean + sd, color="0.8", alpha=0.6, lw=0, label="floor ± sd")
            if mean > sd:
                ax.axhline(WITHIN * mean, color="0.3", ls="--", lw=0.9, label="2× floor")
        ax.set_xscale("log")
        if signed:
            ax.set_yscale("symlog", linthresh=max(sd or 1e-6, 1e-12))
        else:
            ax.set_yscale("log")
        ax.set_title(m, fontsize=10)
        ax.set_xlabel("counted NFE")
        ax.grid(True, which="major", alpha=0.3)
    handles, labels = fig.axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)


def _plot_scatter(aggs, exact_file: Path, root: Path, title, path: Path) -> bool:
    import numpy as np
    from matplotlib.figure import Figure

    if not exact_file.exists():
        return False
    exact = np.load(exact_file)
    budgets = sorted({a["budget"] for a in aggs if a["budget_kind"] in ("nfe", "fit", "scale")})
    nfes = sorted(a["nfe"] for a in aggs if a["nfe"] is not None)
    if budgets:
        picks = sorted(set([budgets[0], budgets[len(budgets) // 2], budgets[-1]]))
    elif nfes:
        picks = [nfes[-1]]
    else:  # every cell failed: nothing to plot
        return False
    methods = sorted({a["method"] for a in aggs})
    ncol = min(8, len(methods) + 1)
    rows_per = math.ceil((len(methods) + 1) / ncol)
    lo, hi = exact.min(0) - 0.8, exact.max(0) + 0.8
    fig = Figure(figsize=(1.7 * ncol, 1.85 * rows_per * len(picks)))
    for i, b in enumerate(picks):
        panels = [("exact", exact, f"exact (budget {_nfe(b)})", "k")]
        for meth in methods:
            cands = [a for a in aggs if a["method"] == meth and a["samples_file"] and a["nfe"]
                     and a["nfe"] <= b + 1e-9]
            if cands:  # the method's most expensive cell within the budget
                a = max(cands, key=lambda a: a["nfe"])
                panels.append((meth, np.load(root / a["samples_file"]), f"{meth}\nNFE {_nfe(a['nfe'])}", "C0"))
            else:
                panels.append((meth, None, f"{meth}\n(none ≤ {_nfe(b)})", "C0"))
        for j, (_, x, label, colour) in enumerate(panels):
            ax = fig.add_subplot(rows_per * len(picks), ncol, i * rows_per * ncol + j + 1)
            if x is not None:
                ax.scatter(x[:, 0], x[:, 1], s=0.5, c=colour)
            ax.set_title(label, fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlim(lo[0], hi[0])
            ax.set_ylim(lo[1], hi[1])
            ax.set_aspect("equal")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    _save(fig, path)
    return True


def _section(rows: list[dict], root: Path) -> str:
    r0 = rows[0]
    problem, sde = r0["problem"], r0["sde"]
    ok_rows = [r for r in rows if r.get("status") == "ok"]
    floors = {m: tuple(v) for m, v in (ok_rows[0] if ok_rows else r0).get("floor", {}).items()}
    metrics = list(floors) or sorted({m for r in ok_rows for m in r.get("metrics", {})})
    key = [m for m in KEY_METRICS if m in metrics] or metrics[:4]
    aggs = aggregate(rows)
    methods = list(dict.fromkeys(a["method"] for a in aggs))
    seeds = sorted({r["seed"] for r in rows})
    truth = ("the data distribution (outputs are Tweedie-denoised)" if r0.get("denoise")
             else f"p_eps, eps={r0.get('eps')}")
    lines = [f"## {problem} · {sde}", "",
             f"{r0.get('problem_desc', '')}; SDE `{r0.get('sde_repr', sde)}`; {r0['samples']} samples × "
             f"{len(seeds)} seed(s); device {r0.get('device')}, {r0.get('dtype')}, {r0.get('threads')} "
             f"thread(s); eps {r0.get('eps')}; truth: {truth}.", ""]
    lines += ["**Noise floors** (metric of exact samples of the same size; mean ± sd; the log-density gap's "
              "in closed form):", "",
              _table(["metric", "floor mean", "floor sd"],
                     [[m, _fmt(floors[m][0]), _fmt(floors[m][1])] for m in metrics if m in floors]), ""]

    plot = f"plots/{problem}_{sde}_metrics.png"
    _plot_metrics([a for a in aggs if a["seeds"]], floors, metrics, f"{problem} · {sde}", root / plot)

    mem = "CUDA max alloc MB" if ok_rows and ok_rows[0].get("mem_kind") == "cuda_max_allocated" else "peak RSS MB"
    head = ["method", "NFE/step", "order"] + [f"NFE to ≤2× {m}" for m in key] + [
        "overhead (median)", "samples/s (max budget)", mem]
    body = []
    for meth in methods:
        a_m = [a for a in aggs if a["method"] == meth and a["seeds"]]
        info = next((r["method_info"] for r in rows if display_method(r) == meth), {})
        reach = []
        for m in key:
            n = nfe_to_reach(a_m, m)
            top = max((a["nfe"] for a in a_m), default=None)
            reach.append(_nfe(n) if n is not None else (f"> {_nfe(top)}" if top else "—"))
        ovh = [a["overhead"] for a in a_m if a["overhead"] is not None]
        last = max(a_m, key=lambda a: a["nfe"]) if a_m else None
        body.append([meth, str(info.get("nfe_per_step") or "adaptive"), _fmt(info.get("order"))] + reach + [
            _fmt(median(ovh)) if ovh else "—", _fmt(last["samples_per_s"]) if last else "—",
            _fmt(max((a["peak_mem_mb"] or 0 for a in a_m), default=None)) if a_m else "—"])
    lines += ["**Per method**: counted NFE from which the metric stays within 2× of its floor at every "
              "larger budget measured; overhead = sampler wall time / time spent inside the score "
              "during that run (synchronised; ≥ 1 by construction).", "", _table(head, body), ""]

    budgets = sorted({a["budget"] for a in aggs if a["budget_kind"] in ("nfe", "fit", "scale")})
    body = []
    for b in budgets:
        cells = []
        for m in key:
            cands = [a for a in aggs if a["nfe"] is not None and a["nfe"] <= b + 1e-9
                     and a["ratio"].get(m) is not None]
            best = min(cands, key=lambda a: _dist(a, m), default=None)
            cells.append("—" if best is None else
                         f"{best['method']} {_ratio(best, m)} @{_nfe(best['nfe'])}")
        body.append([_nfe(b)] + cells)
    if body:
        lines += ["**Best method within each NFE budget** (lowest ratio to floor among cells whose "
                  "counted NFE fits the budget; adaptive methods included at their counted NFE):", "",
                  _table(["budget"] + key, body), ""]

    lines += [f"![metrics vs NFE]({plot})", ""]
    exact = root / f"samples/{_safe(problem)}_{_safe(sde)}__exact.npy"
    if r0.get("dim") == 2 and exact.exists():
        sc = f"plots/{problem}_{sde}_samples.png"
        if _plot_scatter([a for a in aggs if a["seeds"]], exact, root, f"{problem} · {sde}", root / sc):
            lines += [f"![samples]({sc})", ""]

    head = ["method", "budget", "NFE"] + metrics + ["wall s", "overhead", "samples/s", "peak MB", "status"]
    body = [[a["method"], a["budget_label"], _nfe(a["nfe"])] + [_ratio(a, m) for m in metrics]
            + [_fmt(a["wall_s"]), _fmt(a["overhead"]), _fmt(a["samples_per_s"]), _fmt(a["peak_mem_mb"]),
               "ok" if not a["failed"] else f"{a['failed']} failed"] for a in aggs]
    lines += ["<details><summary>All cells (metric / floor)</summary>", "", _table(head, body), "",
              "</details>", ""]
    over = [r for r in rows if r.get("over_budget")]
    if over:
        lines += ["**Counted NFE above the nominal budget** (the method's declared NFE per step is off):",
                  ""] + [f"- `{r['key']}`: counted {_nfe(r['nfe'])}" for r in over] + [""]
    errs = [r for r in rows if r.get("status") != "ok"]
    if errs:
        lines += ["**Failed cells**:", ""] + [f"- `{r['key']}`: {r.get('error')}" for r in errs] + [""]
    return "\n".join(lines)


def write_report(directory: str | Path) -> Path:
    """Write ``DIR/report.md`` and ``DIR/plots/*.png`` from ``DIR/results.jsonl``; returns the
    report's path.

    Raises:
        ValueError: no results file or no rows in it.
    """
    root = Path(directory)
    store = ResultStore(root / "results.jsonl")
    if not store.path.exists():
        raise ValueError(f"{root} has no results.jsonl (run `scoresolve bench ... --out {root}` first)")
    rows = store.rows()
    if not rows:
        raise ValueError(f"{store.path} holds no rows")
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["problem"], r["sde"])].append(r)
    parts = [f"# Benchmark report: {root.name}", "",
             f"{len(rows)} cells ({sum(r.get('status') == 'ok' for r in rows)} ok) from `results.jsonl`; "
             "regenerate with `scoresolve bench report " + str(directory) + "`.", ""]
    for rs in groups.values():
        parts.append(_section(rs, root))
    path = root / "report.md"
    atomic_write_bytes(path, "\n".join(parts).encode())
    return path
