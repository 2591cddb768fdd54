"""Core benchmark: every classical sampler on the 8-ring (radius 2, std 0.1), VP and VE, for
steps ∈ {10, 20, 50, 100, 1000}: counted NFE, quality against the noise floor, and solver
overhead = wall time of sampling / time spent inside the score during that same run
(``SampleResult.stats["score_time"]``, so ≥ 1 by construction), the smaller of two runs.

    python benchmarks/core_bench.py [--samples 10000] [--threads 1] [--out benchmarks/core_results.md]
                                    [--readme README.md] [--retime]

``--retime`` re-measures only the timing of the cells already in the JSON-lines file (two runs
each, same seeds) and rewrites the tables.

With ``--readme`` the compact table (one row per SDE and sampler) replaces the block between
``<!-- core-table -->`` markers in that file.

Results are appended per cell to a JSON-lines file beside the table (atomic rewrite) and a
re-run skips finished cells.
"""

from __future__ import annotations

import argparse
import json
import os

import torch

import scoresolve as ss

METHODS = ["pc", "em", "reverse_diffusion", "ancestral", "ald", "ode", "ode_euler", "ode_heun"]
STEPS = [10, 20, 50, 100, 1000]
METRICS = ("component_w2", "mode_tv", "sliced_w2", "logp_gap")


def _kw(method: str, steps: int) -> dict:
    if ss.SAMPLERS[method].nfe_per_step is None:  # adaptive: the step grid is only an output grid
        tol = {10: 1e-2, 20: 1e-3, 50: 1e-4, 100: 1e-5, 1000: 1e-7}[steps]
        return {"rtol": tol, "atol": tol}
    return {"steps": steps}


def timing(sde, target, method: str, steps: int, n: int, seed: int, runs: int = 2):
    """(first result, timing fields): wall and in-run score time of the run with the smaller
    overhead (the first run may pay one-off allocations)."""
    score_fn = target.score_fn(sde)
    results = [ss.sample(score_fn, sde, (n, 2), method, generator=torch.Generator().manual_seed(seed),
                         **_kw(method, steps)) for _ in range(runs)]
    best = min(results, key=lambda r: r.stats["overhead"])
    return results[0], {"wall": best.stats["wall_time"], "score_s": best.stats["score_time"],
                        "overhead": best.stats["overhead"]}


def run_cell(sde, target, method: str, steps: int, n: int, seed: int) -> dict:
    res, times = timing(sde, target, method, steps, n, seed)
    ev = ss.metrics.evaluate(res.samples, target, metrics=METRICS,
                             reference=target.sample(n, generator=torch.Generator().manual_seed(99),
                                                     dtype=torch.float64))
    return {"sde": sde.name, "method": method, "steps": steps, "nfe": res.nfe, **times, **ev}


def _ratio(r: dict, floor: dict, key: str) -> str:
    return f"{r[key] / floor[key][0]:.1f}"


def compact_table(rows: list[dict], floor: dict, steps: list[int]) -> str:
    """One row per (sde, method): `NFE: W2×floor / logp×floor` per step count, and the mean
    overhead of the 50- and 100-step cells (shorter cells last < 0.1 s and time noisily)."""
    head = "| sde | method | " + " | ".join(f"steps {s}" for s in steps) + " | overhead (50 and 100 steps) |"
    lines = [head, "|" + "---|" * (len(steps) + 3)]
    keys = dict.fromkeys((r["sde"], r["method"]) for r in rows if "error" not in r)
    for sde, method in keys:
        cells, ovh = [], []
        for s in steps:
            r = next((r for r in rows if (r["sde"], r["method"], r["steps"]) == (sde, method, s)
                      and "error" not in r), None)
            cells.append("—" if r is None else
                         f"{r['nfe']:g}: {_ratio(r, floor, 'component_w2')} / {_ratio(r, floor, 'logp_gap')}")
            if r is not None and s in (50, 100):
                ovh.append(r["overhead"])
        med = sum(ovh) / len(ovh) if ovh else float("nan")
        lines.append(f"| {sde} | {method} | " + " | ".join(cells) + f" | {med:.2f} |")
    return "\n".join(lines)


def _replace_block(path: str, marker: str, text: str) -> None:
    src = open(path).read()
    start, end = f"<!-- {marker} -->", f"<!-- /{marker} -->"
    if start not in src or end not in src:
        raise SystemExit(f"--readme: {path} has no {start} ... {end} block")
    head, rest = src.split(start, 1)
    new = head + start + "\n" + text + "\n" + end + rest.split(end, 1)[1]
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(new)
    os.replace(tmp, path)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--samples", type=int, default=10_000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="benchmarks/core_results.md")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--steps", default=",".join(map(str, STEPS)))
    p.add_argument("--readme", default=None, help="also write the compact table into this file")
    p.add_argument("--retime", action="store_true", help="re-measure the timing of the recorded cells only")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    target = ss.targets.GaussianMixture.ring(8, 2.0, 0.1)
    floor = ss.metrics.noise_floor(target, a.samples, repeats=5, metrics=METRICS)
    jsonl = os.path.splitext(a.out)[0] + ".jsonl"
    rows = [json.loads(line) for line in open(jsonl)] if os.path.exists(jsonl) else []
    sdes = {"vp": ss.VPSDE(), "ve": ss.VESDE()}

    def save():
        tmp = jsonl + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        os.replace(tmp, jsonl)

    if a.retime:  # the samples (hence metrics) repeat exactly with the seed; only the clock is re-read
        for r in rows:
            if "error" in r or "score_s" in r:
                continue
            _, times = timing(sdes[r["sde"]], target, r["method"], r["steps"], a.samples, seed=0)
            r.pop("bare", None), r.pop("quiet_rerun", None)
            r.update(times, retimed=True)
            save()
            print(json.dumps(r), flush=True)
    done = {(r["sde"], r["method"], r["steps"]) for r in rows}
    for sde in (ss.VPSDE(), ss.VESDE()):
        for method in a.methods.split(","):
            for steps in map(int, a.steps.split(",")):
                if (sde.name, method, steps) in done:
                    continue
                try:
                    row = run_cell(sde, target, method, steps, a.samples, seed=0)
                except Exception as e:  # record and go on
                    row = {"sde": sde.name, "method": method, "steps": steps, "error": repr(e)}
                rows.append(row)
                save()
                print(json.dumps(row), flush=True)
    lines = [f"# Core samplers on the 8-ring (radius 2, std 0.1), {a.samples} samples, "
             f"{a.threads} thread(s)\n",
             "Noise floor (mean ± sd over 5 exact sample sets of the same size): "
             + ", ".join(f"{k} {m:.4f} ± {s:.4f}" for k, (m, s) in floor.items()) + "\n",
             "Ratios are metric / floor mean. Steps for `ode` (adaptive) map to rtol=atol "
             "1e-2, 1e-3, 1e-4, 1e-5, 1e-7. Overhead = sampling wall time / time spent inside the score "
             "during that same run (≥ 1 by construction; the smaller of two runs), measured on a shared, "
             "loaded machine (2026-12-04, load average ≈ 10 on 2 cores).\n",
             "| sde | method | steps | NFE | comp. W2 (×floor) | mode TV | sliced W2 (×floor) | "
             "logp gap (×floor) | overhead |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['sde']} | {r['method']} | {r['steps']} | error: {r['error'][:60]} |||||")
            continue
        lines.append(
            f"| {r['sde']} | {r['method']} | {r['steps']} | {r['nfe']} | "
            f"{r['component_w2']:.4f} ({r['component_w2'] / floor['component_w2'][0]:.1f}) | "
            f"{r['mode_tv']:.4f} | {r['sliced_w2']:.4f} ({r['sliced_w2'] / floor['sliced_w2'][0]:.1f}) | "
            f"{r['logp_gap']:.4f} ({r['logp_gap'] / floor['logp_gap'][0]:.1f}) | {r['overhead']:.2f} |")
    compact = compact_table(rows, floor, STEPS)
    lines += ["", "## Compact: `NFE: comp. W2 / logp gap` as multiples of their floors", "", compact]
    tmp = a.out + ".tmp"
    with open(tmp, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(tmp, a.out)
    print(f"wrote {a.out}")
    if a.readme:
        _replace_block(a.readme, "core-table", compact)
        print(f"updated {a.readme}")


if __name__ == "__main__":
    main()
