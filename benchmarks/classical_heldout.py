"""Held-out check of the classical defaults (issue 18): em, reverse_diffusion, ancestral, pc and ald against
the reference-style score_sde samplers (benchmarks/reference_sde.py) on mixtures no default was chosen
on (``mix<d>s<seed>`` of ``scoresolve.bench.problems``: 2-8 rotated anisotropic components, unequal
weights), 10k samples, 2 seeds per cell.

    python benchmarks/classical_heldout.py [--problems mix2s201,mix4s202,mix8s203] [--sdes vp,ve,subvp]
        [--methods em,reverse_diffusion,ancestral,pc] [--budgets 10,20,50,100]
    python benchmarks/classical_heldout.py --methods ald --budgets 20,50,100,1000

Cells are `comp. W2 / logp gap` as multiples of their noise floors; "behind" where ours is further from
the floor than the reference on either metric (2 % slack, log-density gaps below 1.5× floor count as
reached).  Rows go to benchmarks/results/classical_heldout.jsonl as they finish; a re-run skips them and
rewrites benchmarks/classical_heldout.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import classical_bench as cb  # noqa: E402

import scoresolve as ss  # noqa: E402
from scoresolve.bench.problems import analytic_problem  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
JSONL = os.path.join(HERE, "results", "classical_heldout.jsonl")
SEEDS = 2


def measure(target, sde, method: str, budget: int, impl: str, floor: dict, ref_x) -> tuple[float, float]:
    """Mean (W2, logp) multiples of the floor over the seeds; NaN when a run is not finite."""
    w = lp = 0.0
    for seed in range(SEEDS):
        score = target.score_fn(sde)
        with torch.no_grad():
            x = (cb.reference if impl == "ref" else cb.ours)(method, sde, score, (ref_x.shape[0], target.dim),
                                                              budget, seed)[0]
        if not bool(torch.isfinite(x).all()):
            return math.nan, math.nan
        ev = ss.metrics.evaluate(x, target, ref_x, metrics=cb.METRICS)
        w += ev["component_w2"] / floor["component_w2"][0] / SEEDS
        lp += ev["logp_gap"] / floor["logp_gap"][0] / SEEDS
    return w, lp


def behind(ours: dict, ref: dict) -> bool:
    if not math.isfinite(ref["w2"]):
        return False
    return not (ours["w2"] <= ref["w2"] * 1.02 and ours["lp"] <= max(ref["lp"] * 1.02, 1.5))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--problems", default="mix2s201,mix4s202,mix8s203")
    p.add_argument("--sdes", default="vp,ve,subvp")
    p.add_argument("--methods", default="em,reverse_diffusion,ancestral,pc")
    p.add_argument("--budgets", default="10,20,50,100")
    p.add_argument("--samples", type=int, default=10_000)
    a = p.parse_args()
    torch.set_num_threads(1)
    rows = [json.loads(line) for line in open(JSONL)] if os.path.exists(JSONL) else []
    done = {(r["problem"], r["sde"], r["method"], r["budget"], r["impl"]) for r in rows}
    for prob in a.problems.split(","):
        target = analytic_problem(prob).target
        floor = ss.metrics.noise_floor(target, a.samples, repeats=5, metrics=cb.METRICS)
        ref_x = target.sample(a.samples, generator=torch.Generator().manual_seed(99), dtype=torch.float64)
        for sde_name in a.sdes.split(","):
            sde = cb.SDES[sde_name]()
            for method in a.methods.split(","):
                for budget in map(int, a.budgets.split(",")):
                    for impl in ("ours", "ref"):
                        key = (prob, sde_name, method, budget, impl)
                        if key in done or (impl == "ref" and method == "ancestral" and sde_name == "subvp"):
                            continue  # score_sde has no ancestral sampling for sub-VP
                        if not cb.runs(method, budget):
                            continue
                        w, lp = measure(target, sde, method, budget, impl, floor, ref_x)
                        rows.append(dict(zip(("problem", "sde", "method", "budget", "impl"), key), w2=w, lp=lp))
                        os.makedirs(os.path.dirname(JSONL), exist_ok=True)
                        with open(JSONL + ".tmp", "w") as f:
                            f.writelines(json.dumps(r) + "\n" for r in rows)
                        os.replace(JSONL + ".tmp", JSONL)
                        print(json.dumps(rows[-1]), flush=True)
    report(rows)


def report(rows: list[dict]) -> None:
    cells = {(r["problem"], r["sde"], r["method"], r["budget"], r["impl"]): r for r in rows}
    lines = ["# Classical defaults on held-out mixtures (issue 18)", "",
             "`python benchmarks/classical_heldout.py`: ours against the reference-style score_sde samplers on "
             f"mixtures no default was chosen on, 10k samples, {SEEDS} seeds; `comp. W2 / logp gap` ×floor.", "",
             "| problem | SDE | method | NFE | ours | reference | |", "|---|---|---|---|---|---|---|"]
    n_behind = n_cells = 0
    for (prob, sde, method, budget, impl), r in cells.items():
        if impl != "ours":
            continue
        ref = cells.get((prob, sde, method, budget, "ref"))
        late = ref is not None and behind(r, ref)
        n_cells += ref is not None
        n_behind += late
        ref_txt = "—" if ref is None else f"{ref['w2']:.2f} / {ref['lp']:.2f}"
        lines.append(f"| {prob} | {sde} | {method} | {budget} | {r['w2']:.2f} / {r['lp']:.2f} | {ref_txt} | "
                     f"{'behind' if late else ''} |")
    lines += ["", f"Ours behind the reference in {n_behind} of {n_cells} cells."]
    with open(os.path.join(HERE, "classical_heldout.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
