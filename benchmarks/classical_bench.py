"""The classical samplers (em, reverse_diffusion, ancestral, pc, ald, ode) against a
reference-style implementation of score_sde's samplers (``benchmarks/reference_sde.py``, written
from the paper), cell by cell: same exact score, same counted NFE, 10k samples, 3 seeds.

    python benchmarks/classical_bench.py run --problem ring8 --sde vp [--methods em,pc]
        [--budgets 10,20,50,100,1000] [--seeds 3] [--samples 10000] [--threads 1]
    python benchmarks/classical_bench.py report          # -> benchmarks/classical_results.md

Problems: ring8 (8 components on a circle, radius 2, std 0.1), two (2 unequal anisotropic
components in 2-D: weights 0.8/0.2, stds 0.5×0.1 rotated and 0.2×0.4), gmm64
(``GaussianMixture.random(64, 10, seed=0)``).  Metrics: per-component Gaussian-fit W2 and the
exact log-density gap, as multiples of their noise floors (``scoresolve.metrics.noise_floor``,
5 exact sample sets of the same size).  Budgets: em / reverse_diffusion / ancestral: N = budget
steps (the reference: N grid points); pc: budget/2 steps of predictor + corrector (snr 0.16);
ald: 10 Langevin steps per level (ours: NCSN's algorithm + 1 Tweedie evaluation; reference:
score_sde's annealed-Langevin corrector with no predictor); ode: the budget picks rtol = atol
(10: 1e-1 … 1000: 1e-5) for both adaptive RK45 solvers and the NFE are reported as counted.
The 1000 budget runs one seed.  Overhead = wall time / time spent inside the score, both
measured in the same run (a timing wrapper around the score).

Results are appended per cell to benchmarks/results/classical/<problem>_<sde>.jsonl (atomic
rewrite); a re-run skips finished cells.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference_sde as ref  # noqa: E402

import scoresolve as ss  # noqa: E402

METHODS = ["em", "reverse_diffusion", "ancestral", "pc", "ald", "ode"]
BUDGETS = [10, 20, 50, 100, 1000]
METRICS = ("component_w2", "logp_gap")
ODE_TOL = {10: 1e-1, 20: 1e-2, 50: 1e-3, 100: 1e-4, 200: 1e-4, 1000: 1e-5}
PRED = {"em": "euler_maruyama", "reverse_diffusion": "reverse_diffusion", "ancestral": "ancestral",
        "pc": "reverse_diffusion", "ald": "none"}
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "classical")


def two_mode() -> ss.targets.GaussianMixture:
    """Two unequal anisotropic components in 2-D (weights 0.8 / 0.2)."""
    c, s = math.cos(0.5), math.sin(0.5)
    r = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
    covs = torch.stack([r @ torch.diag(torch.tensor([0.25, 0.01], dtype=torch.float64)) @ r.T,
                        torch.diag(torch.tensor([0.04, 0.16], dtype=torch.float64))])
    means = torch.tensor([[-1.5, 0.0], [2.0, 1.0]], dtype=torch.float64)
    return ss.targets.GaussianMixture(torch.tensor([0.8, 0.2]), means, covs)


PROBLEMS = {"ring8": lambda: ss.targets.GaussianMixture.ring(8, 2.0, 0.1), "two": two_mode,
            "gmm64": lambda: ss.targets.GaussianMixture.random(64, 10, seed=0, anisotropic=True)}
SDES = {"vp": ss.VPSDE, "subvp": ss.SubVPSDE, "ve": ss.VESDE}


class Timed:
    """The score with the time spent inside it accumulated (same run as the sampling)."""

    def __init__(self, fn):
        self.fn, self.seconds = fn, 0.0

    def __call__(self, x, t):
        start = time.perf_counter()
        out = self.fn(x, t)
        self.seconds += time.perf_counter() - start
        return out


def ours(method: str, sde, score, shape, budget: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    if method == "ode":
        tol = ODE_TOL[budget]
        res = ss.sample(score, sde, shape, "ode", rtol=tol, atol=tol, generator=g)
    elif method == "ald":
        res = ss.sample(score, sde, shape, "ald", steps=budget // 10, generator=g)
    else:
        res = ss.sample(score, sde, shape, method, nfe=budget, generator=g)
    return res.samples, res.nfe


def reference(method: str, sde, score, shape, budget: int, seed: int):
    if method == "ode":
        tol = ODE_TOL[budget]
        return ref.ode_sample(sde, score, shape, rtol=tol, atol=tol, seed=seed)
    if method == "ancestral" and isinstance(sde, ss.SubVPSDE):
        raise NotImplementedError("score_sde has no ancestral sampling for sub-VP")
    n = budget // 2 if method == "pc" else budget // 10 if method == "ald" else budget
    corrector = {"pc": "langevin", "ald": "ald"}.get(method, "none")
    return ref.pc_sample(sde, score, shape, n, PRED[method], corrector, snr=0.16,
                         n_steps=10 if method == "ald" else 1, seed=seed)


def cell(impl: str, method: str, sde, target, budget: int, seed: int, n: int, ref_x) -> dict:
    score = Timed(target.score_fn(sde))
    shape = (n, target.dim)
    row = {"impl": impl, "method": method, "budget": budget, "seed": seed}
    start = time.perf_counter()
    try:
        with torch.no_grad():
            x, nfe = (ours if impl == "ours" else reference)(method, sde, score, shape, budget, seed)
    except NotImplementedError as e:
        return {**row, "error": str(e)}
    wall = time.perf_counter() - start
    row.update(nfe=nfe, wall=wall, score_time=score.seconds, overhead=wall / max(score.seconds, 1e-12))
    if not bool(torch.isfinite(x).all()):
        return {**row, "component_w2": float("nan"), "logp_gap": float("nan"), "nan": True}
    row.update(ss.metrics.evaluate(x, target, ref_x, metrics=METRICS))
    return row


def _write(path: str, rows: list[dict]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    os.replace(tmp, path)


def run(a) -> None:
    torch.set_num_threads(a.threads)
    target, sde = PROBLEMS[a.problem](), SDES[a.sde]()
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, f"{a.problem}_{a.sde}.jsonl")
    rows = [json.loads(line) for line in open(path)] if os.path.exists(path) else []
    floor = next((r for r in rows if r.get("floor")), None)
    if floor is None:
        fl = ss.metrics.noise_floor(target, a.samples, repeats=5, metrics=METRICS)
        floor = {"floor": True, **{k: v[0] for k, v in fl.items()}, **{k + "_sd": v[1] for k, v in fl.items()}}
        rows.append(floor)
        _write(path, rows)
    ref_x = target.sample(a.samples, generator=torch.Generator().manual_seed(99), dtype=torch.float64)
    done = {(r["impl"], r["method"], r["budget"], r["seed"]) for r in rows if not r.get("floor")}
    for budget in map(int, a.budgets.split(",")):
        for seed in range(1 if budget >= 1000 else a.seeds):
            for method in a.methods.split(","):
                if method == "ald" and budget < 20:
                    continue
                for impl in ("ours", "ref"):
                    if (impl, method, budget, seed) in done:
                        continue
                    r = cell(impl, method, sde, target, budget, seed, a.samples, ref_x)
                    rows.append(r)
                    _write(path, rows)
                    print(a.problem, a.sde, json.dumps(r), flush=True)


def _fmt(v: float) -> str:
    return "NaN" if not math.isfinite(v) else f"{v:.2f}" if v < 100 else f"{v:.3g}"


def summarize(rows: list[dict]) -> dict:
    """(impl, method, budget) -> mean NFE, mean W2 / logp multiples of the floor, overhead."""
    floor = next(r for r in rows if r.get("floor"))
    out: dict = {}
    for r in rows:
        if r.get("floor") or "error" in r:
            continue
        out.setdefault((r["impl"], r["method"], r["budget"]), []).append(r)
    summary = {}
    for k, rs in out.items():
        w = [r["component_w2"] / floor["component_w2"] for r in rs]
        lp = [r["logp_gap"] / floor["logp_gap"] for r in rs]
        summary[k] = {"nfe": sum(r["nfe"] for r in rs) / len(rs), "w2": sum(w) / len(w), "lp": sum(lp) / len(lp),
                      "ovh": sum(r["overhead"] for r in rs) / len(rs), "n": len(rs)}
    return summary


def report(a) -> None:
    lines = ["# Classical samplers against score_sde's algorithms (reference-style, benchmarks/reference_sde.py)",
             "",
             "Made by `python benchmarks/classical_bench.py run --problem P --sde S` for each problem and SDE",
             "below, then `python benchmarks/classical_bench.py report` (1 thread, 10k samples; 3 seeds per cell,",
             "1 at 1000 NFE; gmm64 as listed in its header). Each cell: `NFE: comp. W2 / logp gap`, both as",
             "multiples of their noise floor, mean over seeds; **bold** where ours is at least as close as the",
             "reference on both metrics (or the reference failed). `ode`: same rtol = atol for both (budget",
             "10/20/50/100/1000 → 1e-1/1e-2/1e-3/1e-4/1e-5), counted NFE. Overhead = wall ÷ time inside the",
             "score in the same run (measured on a shared 2-core machine under load by other jobs).", ""]
    for fname in sorted(os.listdir(OUT)):
        if not fname.endswith(".jsonl"):
            continue
        rows = [json.loads(line) for line in open(os.path.join(OUT, fname))]
        s = summarize(rows)
        budgets = sorted({k[2] for k in s})
        lines += [f"## {fname[:-6]}", "", "| method | impl | " + " | ".join(f"{b}" for b in budgets)
                  + " | overhead |", "|" + "---|" * (len(budgets) + 3)]
        for m in METHODS:
            for impl in ("ours", "ref"):
                cells, ovh = [], []
                for b in budgets:
                    c = s.get((impl, m, b))
                    if c is None:
                        cells.append("—")
                        continue
                    o = s.get(("ref" if impl == "ours" else "ours", m, b))
                    txt = f"{c['nfe']:.0f}: {_fmt(c['w2'])} / {_fmt(c['lp'])}"
                    good = impl == "ours" and (o is None or not math.isfinite(o["w2"]) or
                                               (c["w2"] <= o["w2"] * 1.02 and c["lp"] <= max(o["lp"] * 1.02, 1.5)))
                    cells.append(f"**{txt}**" if good else txt)
                    ovh.append(c["ovh"])
                if any(x != "—" for x in cells):
                    lines.append(f"| {m} | {impl} | " + " | ".join(cells) + f" | {sum(ovh) / len(ovh):.2f} |")
        lines.append("")
    with open(a.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {a.out}")


def main() -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--problem", choices=list(PROBLEMS), required=True)
    r.add_argument("--sde", choices=list(SDES), required=True)
    r.add_argument("--methods", default=",".join(METHODS))
    r.add_argument("--budgets", default=",".join(map(str, BUDGETS)))
    r.add_argument("--seeds", type=int, default=3)
    r.add_argument("--samples", type=int, default=10_000)
    r.add_argument("--threads", type=int, default=1)
    rep = sub.add_parser("report")
    rep.add_argument("--out", default=os.path.join(os.path.dirname(OUT), "..", "classical_results.md"))
    a = p.parse_args()
    run(a) if a.cmd == "run" else report(a)


if __name__ == "__main__":
    main()
