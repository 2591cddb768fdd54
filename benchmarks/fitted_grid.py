"""Fitted grids (issue 17, ≤ 15 NFE): unipc at 15 NFE on its log-SNR-uniform grid and on a grid
fitted by ``scoresolve.fit_grid`` to a pilot batch, on the repository's problems and the held-out
mixtures (seeds 101-106, which no default was tuned on), VP, VE and sub-VP.

Per (problem, SDE): one fit, pilot of ``PILOT`` prior draws from seed 12345 (not an evaluation seed),
``MAX_EVALS`` pilot solves, reference ode_adaptive_ps at 1e-7; its grid and cost are kept in
``results/fitted_grid_fits.jsonl``.  Then each grid samples 10k fresh draws per evaluation seed
(0, 1, 2) at eps without final denoising, measured against the exact p_eps (benchmarks/bias_common.py:
W2 and log-density gap as multiples of their floors, the signed bias).  Under sub-VP both grids
end at σ/m = 0.01 and the tail step carries the samples to eps.

    python benchmarks/fitted_grid.py run       # appends to benchmarks/results/fitted_grid*.jsonl (resumes)
    python benchmarks/fitted_grid.py report    # writes benchmarks/fitted_grid.md
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bias_common import SAMPLES, append, done, ground, line, measure, problem, rows, summary, write_report  # noqa: E402

import scoresolve as ss  # noqa: E402

ROOT = Path(__file__).resolve().parent
OUT, FITS = ROOT / "results" / "fitted_grid.jsonl", ROOT / "results" / "fitted_grid_fits.jsonl"
METHOD, NFE, PILOT, MAX_EVALS, PILOT_SEED, SEEDS = "unipc", 15, 1024, 1500, 12345, 3
PROBLEMS = ["ring8", "gmm64", "mix2s101", "mix4s102", "mix8s103", "mix16s104", "mix32s105", "mix128s106"]
SDES = ["vp", "ve", "subvp"]
GRIDS = ("log_snr", "fitted")


def fit(prob: str, sde_name: str, tgt, sde) -> dict:
    """The fitted grid of (prob, sde) as ``sample`` options, fitted now or read back."""
    for r in rows(FITS) if FITS.exists() else []:
        if (r["problem"], r["sde"]) == (prob, sde_name):
            ts = torch.tensor(r["ts"], dtype=torch.float64)
            return {"grid": ts} if r.get("eps") is None else {"grid": ts, "eps": r["eps"]}
    t0 = time.perf_counter()
    f = ss.fit_grid(tgt.score_fn(sde), sde, (PILOT, tgt.dim), METHOD, NFE, max_evals=MAX_EVALS,
                    generator=torch.Generator().manual_seed(PILOT_SEED), progress=False)
    append(FITS, dict(problem=prob, sde=sde_name, ts=f.ts.tolist(), eps=f.eps, loss=f.loss, loss_start=f.loss_start,
                      median_error=f.median_error, median_error_start=f.median_error_start, pilot_nfe=f.pilot_nfe,
                      evaluations=f.evaluations, seconds=time.perf_counter() - t0))
    print(f"fit {prob} {sde_name}: median squared error {f.median_error_start:.3g} -> {f.median_error:.3g}, "
          f"{f.pilot_nfe:.0f} evaluations per pilot sample, {time.perf_counter() - t0:.0f} s", flush=True)
    return f.sample_options


def run() -> None:
    torch.set_num_threads(1)
    finished = done(OUT, ("problem", "sde", "grid", "seed"))
    for prob in PROBLEMS:
        for sde_name in SDES:
            todo = [(g, s) for g in GRIDS for s in range(SEEDS) if (prob, sde_name, g, s) not in finished]
            if not todo:
                continue
            tgt, sde = problem(prob), ss.SDES[sde_name]()
            gr, score = ground(tgt, sde, sde.default_eps), tgt.score_fn(sde)
            grids = {"log_snr": dict(nfe=NFE), "fitted": fit(prob, sde_name, tgt, sde)}
            for g, seed in todo:
                res = ss.sample(score, sde, (SAMPLES, tgt.dim), METHOD, denoise=False,
                                generator=torch.Generator().manual_seed(seed), progress=False, **grids[g])
                row = dict(problem=prob, sde=sde_name, grid=g, seed=seed, nfe=res.nfe, **measure(res.samples, gr, seed))
                append(OUT, row)
                print(f"{prob} {sde_name} {g} seed {seed}: {line(row)}", flush=True)


def report() -> None:
    found, fits, body = rows(OUT), {(r["problem"], r["sde"]): r for r in rows(FITS)}, []
    for prob in PROBLEMS:
        for sde_name in SDES:
            cells = [[r for r in found if (r["problem"], r["sde"], r["grid"]) == (prob, sde_name, g)] for g in GRIDS]
            if not all(cells):
                continue
            f = fits[(prob, sde_name)]
            cost = (f"{f['median_error_start']:.2g} → {f['median_error']:.2g}, {f['pilot_nfe']:.0f}, "
                    f"{f['seconds']:.0f} s")
            body.append(f"| {prob} | {sde_name.upper()} | " + " | ".join(summary(c) for c in cells) + f" | {cost} |")
    title = f"{METHOD} at {NFE} NFE: the log-SNR grid and a grid fitted on a pilot batch (issue 17)"
    write_report("fitted_grid", title,
                 f", {SEEDS} seeds; fit: pilot of {PILOT} draws (seed {PILOT_SEED}), at most {MAX_EVALS} pilot "
                 "solves; fit: the pilot's median squared endpoint error start → fitted, score evaluations per "
                 "pilot sample (reference solve included), wall time on one thread (other jobs running: indicative)",
                 ["problem", "SDE", "log-SNR grid: NFE, W2, gap, bias", "fitted grid: NFE, W2, gap, bias",
                  "fit: median error, evaluations per pilot sample, time"], body)


if __name__ == "__main__":
    {"run": run, "report": report}[sys.argv[1] if len(sys.argv) > 1 else "run"]()
