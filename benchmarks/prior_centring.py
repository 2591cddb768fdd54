"""Where the reverse solve starts: the plain prior N(0, σ_T² I) against p_T itself and against the prior centred at
m(T) μ̂ (``sample(..., data_mean="estimate")``; issue 17).

The true p_T is the data diffused to T, centred at m(T) μ (μ the data's mean), not at 0.  From the plain prior every
sample starts off by m(T) μ: under VE (m = 1, σ_max = 50) that is |μ|/50, 0.02-0.32 prior sds on the held-out
mixtures (|μ| 0.9-16); under VP m(T)|μ| ≈ 0.006-0.1.  The offset moves mass between the modes, which the
per-component W2 sees.  ``data_mean="estimate"`` reads μ̂ off one evaluation of 256 fixed prior draws at T (the mean of
x̂_0 = (x + σ_T² s)/m_T) and adds m(T) μ̂ to the draws.

Configurations per case (10k samples at eps, no final denoising, against the exact p_eps; seeds 0-2):
  tight ps       ``ode_adaptive_ps`` at rtol = atol = 1e-4 from the plain prior, from draws of p_T itself (exact
                 data samples diffused to T) and from the centred prior: with the solver's error out of the way, the
                 start's share of the error;
  ps defaults    ``ode_adaptive_ps`` at its defaults, plain and centred;
  o4 scale-grid  ``unipc`` with ``solver_order=4`` at 15 NFE on ``grid="scale"``, plain and centred.

    python benchmarks/prior_centring.py run [--problems a,b]   # appends to results/prior_centring.jsonl (resumes)
    python benchmarks/prior_centring.py report                 # writes benchmarks/prior_centring.md
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bias_common import append, config_table, gap_summary, line, measure, pending, rows, run_or_report, write_report  # noqa: E402

import scoresolve as ss  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "prior_centring.jsonl"
PROBLEMS = ["mix2s101", "mix4s102", "mix8s103", "mix16s104", "mix32s105", "mix128s106", "ring8", "gmm64"]
SDES = {name: (sde, sde.default_eps) for name, sde in (("vp", ss.VPSDE()), ("ve", ss.VESDE()))}
SEEDS = range(3)
# label: (method, sample options, start) with start "plain", "p_T" (exact draws of p_T) or "centred"
CONFIGS = {
    "tight ps, plain": ("ode_adaptive_ps", {"rtol": 1e-4, "atol": 1e-4}, "plain"),
    "tight ps, p_T": ("ode_adaptive_ps", {"rtol": 1e-4, "atol": 1e-4}, "p_T"),
    "tight ps, centred": ("ode_adaptive_ps", {"rtol": 1e-4, "atol": 1e-4}, "centred"),
    "ps defaults, plain": ("ode_adaptive_ps", {}, "plain"),
    "ps defaults, centred": ("ode_adaptive_ps", {}, "centred"),
    "o4 scale-grid, plain": ("unipc:solver_order=4", {"nfe": 15, "grid": "scale"}, "plain"),
    "o4 scale-grid, centred": ("unipc:solver_order=4", {"nfe": 15, "grid": "scale"}, "centred"),
}


def _p_t(target, sde, n: int, seed: int) -> torch.Tensor:
    """n draws of p_T: data samples diffused to T (their own seeds)."""
    m, s = (float(v) for v in sde.marginal(torch.tensor(sde.T, dtype=torch.float64)))
    x0 = target.sample(n, generator=torch.Generator().manual_seed(5000 + seed)).float()
    return m * x0 + s * torch.randn(x0.shape, generator=torch.Generator().manual_seed(6000 + seed))


def run(problems: list[str]) -> None:
    torch.set_num_threads(1)
    for name, sde_name, sde, eps, target, score, gr, todo in pending(OUT, "config", problems, SDES, CONFIGS, SEEDS):
        for config, seed in todo:
            method, opts, start = CONFIGS[config]
            kw = dict(denoise=False, eps=eps, generator=torch.Generator().manual_seed(seed), **opts)
            if start == "p_T":
                kw["x_init"] = _p_t(target, sde, 10_000, seed)
            elif start == "centred":
                kw["data_mean"] = "estimate"
            res = ss.sample(score, sde, (10_000, target.dim), method, **kw)
            row = dict(problem=name, sde=sde_name, config=config, seed=seed, nfe=float(res.nfe),
                       **measure(res.samples, gr, seed))
            append(OUT, row)
            print(f"[{name}:{sde_name}] {config} seed {seed}: {line(row)}", flush=True)


READING = [
    "", "Reading:",
    "- With the solver's own error out of the way (tight ps), the plain prior leaves the per-component W2 above its "
    "floor where the data's mean lies far from 0 in prior sds: under VE mix4s102 2.19 (|μ|/σ_max = 0.08), mix8s103 "
    "1.26, mix16s104 1.22; under VP mix4s102 1.34.  Draws of p_T itself read 0.99 / 0.98 / 1.04 / 1.02, the centred "
    "prior 1.15 / 1.09 / 1.00 / 1.15: most of the difference is the offset, found by one evaluation of 256 fixed "
    "draws; the rest is p_T's covariance (the data's spread added to σ_T² I), which the centring leaves.",
    "- At the defaults of ode_adaptive_ps the same: mix4s102 VE 2.23 → 1.17 (the one case of 16 beyond 2×, now "
    "within).  With unipc order 4 on the scale grid at 15 NFE, both metrics within 2× in 3 → 6 of 16 cases "
    "(geometric-mean gap 2.74 → 2.68).",
    "- The log-density gap is not moved beyond its noise by the centring (geometric means 1.11 → 1.07 tight, 1.15 → "
    "1.18 at the defaults).  The draws of p_T read a lower gap (0.74): not traced; they are built from exact data "
    "samples (seeds 5000+), which the samples may stay coupled to.",
]


def report() -> None:
    cases = [(p, s) for p in PROBLEMS for s in SDES]
    header = ["problem", "SDE", *CONFIGS]
    body, per = config_table(rows(OUT), cases, CONFIGS, lambda r: r["config"])
    body.append("| **gap, geometric mean (both ≤ 2)** | | " + " | ".join(gap_summary(per[c]) for c in CONFIGS) + " |")
    write_report("prior_centring", "Where the solve starts: the plain prior, p_T itself, the centred prior (issue 17)",
                 ", seeds 0-2, VP and VE at their default eps", header, body + READING)


if __name__ == "__main__":
    run_or_report(__doc__, run, report, PROBLEMS)
