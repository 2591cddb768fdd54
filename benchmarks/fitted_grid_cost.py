"""What a fitted grid needs (issue 17): pilot size × pilot solves of ``scoresolve.fit_grid`` against
the quality of ``unipc`` at 15 NFE on the grid it returns.

Per (problem, SDE, pilot, solves, pilot seed): one fit (prior draws from the pilot seed), then 10k
fresh draws per evaluation seed (0, 1, 2) at eps without final denoising, measured against the exact
p_eps (benchmarks/bias_common.py).  Three pilot seeds per configuration: a fit depends on its pilot
draws, and that spread is part of what a configuration gives.  The 1024 × 1500 fits of seed 12345 are
benchmarks/fitted_grid.py's (same measure).  Cost: score evaluations per pilot sample (reference solve included) and
in all (× pilot), wall time on one thread.

    python benchmarks/fitted_grid_cost.py run [CASE ...]  # appends to results/fitted_grid_cost.jsonl (resumes)
    python benchmarks/fitted_grid_cost.py report          # writes benchmarks/fitted_grid_cost.md
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bias_common import append, ground, measure, problem, rows, write_report  # noqa: E402

import scoresolve as ss  # noqa: E402

ROOT = Path(__file__).resolve().parent
OUT, FULL = ROOT / "results" / "fitted_grid_cost.jsonl", ROOT / "results" / "fitted_grid.jsonl"
FULL_FITS = ROOT / "results" / "fitted_grid_fits.jsonl"
CASES = ["ring8:vp", "mix2s101:vp", "mix8s103:vp", "mix32s105:vp", "mix4s102:ve", "mix16s104:ve", "gmm64:vp"]
CONFIGS = [(128, 200), (256, 400), (256, 1500), (1024, 400), (1024, 1500)]
PILOT_SEEDS, SEEDS = (12345, 777, 2024), 3
FULL_SEED = 12345  # benchmarks/fitted_grid.py's pilot seed


def run(cases=CASES) -> None:
    torch.set_num_threads(1)
    finished = {(r["problem"], r["sde"], r["pilot"], r["evals"], r.get("pilot_seed", FULL_SEED))
                for r in (rows(OUT) if OUT.exists() else [])}
    for case in cases:
        prob, sde_name = case.split(":")
        todo = [(*c, ps) for ps in PILOT_SEEDS for c in CONFIGS if (prob, sde_name, *c, ps) not in finished
                and (c, ps) != ((1024, 1500), FULL_SEED)]
        if not todo:
            continue
        tgt, sde = problem(prob), ss.SDES[sde_name]()
        gr, score = ground(tgt, sde, sde.default_eps), tgt.score_fn(sde)
        for pilot, evals, pilot_seed in todo:
            start = time.perf_counter()
            fit = ss.fit_grid(score, sde, (pilot, tgt.dim), "unipc", 15, max_evals=evals,
                              generator=torch.Generator().manual_seed(pilot_seed), progress=False)
            sec = time.perf_counter() - start
            ms = [measure(ss.sample(score, sde, (10_000, tgt.dim), "unipc", denoise=False, progress=False,
                                    generator=torch.Generator().manual_seed(s), **fit.sample_options).samples, gr, s)
                  for s in range(SEEDS)]
            row = dict(problem=prob, sde=sde_name, pilot=pilot, evals=evals, pilot_seed=pilot_seed, sec=sec,
                       pilot_nfe=fit.pilot_nfe,
                       used=fit.evaluations, **{k: sum(m[k] for m in ms) / SEEDS for k in ("w2", "gap", "bias")})
            append(OUT, row)
            print(f"{prob} {sde_name} {pilot}x{evals} pilot seed {pilot_seed}: W2 {row['w2']:.2f}, "
                  f"gap {row['gap']:.2f}, {sec:.0f} s", flush=True)


def report() -> None:
    found = rows(OUT)
    fits = {(r["problem"], r["sde"]): r for r in rows(FULL_FITS)}
    for (prob, sde_name), f in fits.items():  # benchmarks/fitted_grid.py's fit and its three evaluation seeds
        ref = [r for r in rows(FULL) if (r["problem"], r["sde"], r["grid"]) == (prob, sde_name, "fitted")]
        if ref:
            found.append(dict(problem=prob, sde=sde_name, pilot=1024, evals=1500, pilot_seed=FULL_SEED,
                              sec=f["seconds"], pilot_nfe=f["pilot_nfe"],
                              **{k: sum(r[k] for r in ref) / len(ref) for k in ("w2", "gap", "bias")}))
    body, means = [], {}
    for case in CASES:
        prob, sde_name = case.split(":")
        for pilot, evals in CONFIGS:
            rs = [r for r in found
                  if (r["problem"], r["sde"], r["pilot"], r["evals"]) == (prob, sde_name, pilot, evals)]
            if not rs:
                continue
            n, per = len(rs), sum(r["pilot_nfe"] for r in rs) / len(rs)
            gaps = [r["gap"] for r in rs]
            means.setdefault((pilot, evals), []).append(sum(gaps) / n)
            body.append(f"| {prob} | {sde_name.upper()} | {pilot} × {evals} | {n} | {per:.0f} | "
                        f"{pilot * per / 1e6:.2f}M | "
                        f"{sum(r['sec'] for r in rs) / n:.0f} s | {sum(r['w2'] for r in rs) / n:.2f} | "
                        f"{sum(gaps) / n:.2f} ({min(gaps):.2f}–{max(gaps):.2f}) | "
                        f"{sum(r['bias'] for r in rs) / n:+.2f} |")
    body += [f"| all | | {p} × {e} | | | | | | **{sum(v) / len(v):.2f}** (mean of {len(v)} cases) | |"
             for (p, e), v in sorted(means.items(), key=lambda kv: kv[0][0] * kv[0][1])]
    write_report("fitted_grid_cost", "Fitted grids: pilot size and pilot solves against quality (unipc, 15 NFE)",
                 f", {SEEDS} evaluation seeds per fit; fits from the prior draws of pilot seeds {PILOT_SEEDS}; "
                 "each row the mean over its fits (gap: mean and range over the pilot seeds); wall time on a shared "
                 "machine (indicative)",
                 ["problem", "SDE", "pilot × solves", "fits", "evaluations per pilot sample", "evaluations in all",
                  "fit time", "W2", "gap (pilot range)", "bias (mean)"], body)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "report":
        report()
    else:
        run(sys.argv[2:] or CASES)
