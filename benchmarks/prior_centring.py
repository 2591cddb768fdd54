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
A second table: the signed log-density bias of tight ps, plain and centred, over 16 seeds (100-115) on the VE
mixtures of 4-32 dimensions and mix4s102 under VP (the gap's noise is too large for 3 seeds to show a bias of a
floor or so).

    python benchmarks/prior_centring.py run [--problems a,b]   # appends to results/prior_centring.jsonl (resumes)
    python benchmarks/prior_centring.py report                 # writes benchmarks/prior_centring.md
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bias_common import (  # noqa: E402
    append,
    config_table,
    gap_summary,
    line,
    measure,
    pending,
    rows,
    run_or_report,
    summary,
    write_report,
)

import scoresolve as ss  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "prior_centring.jsonl"
OUT_BIAS = OUT.with_name("prior_centring_bias.jsonl")
BIAS_CASES = [("mix4s102", "ve"), ("mix8s103", "ve"), ("mix16s104", "ve"), ("mix32s105", "ve"), ("mix4s102", "vp")]
BIAS_SEEDS = range(100, 116)
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
    _run_bias(problems)


def _run_bias(problems: list[str]) -> None:
    configs = ("tight ps, plain", "tight ps, centred")
    cases = {n for n, _ in BIAS_CASES if n in problems}
    for name, sde_name, sde, eps, target, score, gr, todo in pending(OUT_BIAS, "config", cases, SDES, configs,
                                                                     BIAS_SEEDS):
        if (name, sde_name) not in BIAS_CASES:
            continue
        for config, seed in todo:
            method, opts, start = CONFIGS[config]
            res = ss.sample(score, sde, (10_000, target.dim), method, denoise=False, eps=eps,
                            data_mean="estimate" if start == "centred" else None,
                            generator=torch.Generator().manual_seed(seed), **opts)
            row = dict(problem=name, sde=sde_name, config=config, seed=seed, nfe=float(res.nfe),
                       **measure(res.samples, gr, seed))
            append(OUT_BIAS, row)
            print(f"[{name}:{sde_name}] {config} seed {seed}: {line(row)}", flush=True)


READING = [
    "", "Reading:",
    "- With the solver's own error out of the way (tight ps), the plain prior leaves the per-component W2 above its "
    "floor where the data's mean lies far from 0 in prior sds: over 16 seeds under VE mix4s102 2.19 (|μ|/σ_max = "
    "0.08), mix8s103 1.26, mix16s104 1.21, under VP mix4s102 1.20; from the centred prior 1.00 / 1.02 / 0.98 / 1.00, "
    "as from draws of p_T itself (3 seeds: 0.99 / 0.98 / 1.04 / 1.02).  One evaluation of 256 fixed draws finds the "
    "offset.",
    "- The signed log-density bias moves too (16 seeds): mix16s104 VE −1.27 ± 0.23 → +0.05 ± 0.24, mix32s105 VE "
    "−0.58 → +0.02, mix8s103 VE +0.55 → −0.45; the gap falls or stays in all five cases (1.57 → 1.16, 0.99 → 0.86, "
    "1.21 → 0.69, 1.31 → 1.17, 1.16 → 1.16).  Three seeds (the first table) are too few to see it: there the gap "
    "reads 1.11 → 1.07 (geometric mean, tight) and 1.15 → 1.18 at the defaults.",
    "- At the defaults of ode_adaptive_ps: mix4s102 VE W2 2.23 → 1.17 (the one case of 16 beyond 2×, now within).  "
    "With unipc order 4 on the scale grid at 15 NFE, both metrics within 2× in 3 → 6 of 16 cases (geometric-mean "
    "gap 2.74 → 2.68).",
    "- Draws of p_T itself read a lower gap than either prior (0.74, 3 seeds): not traced; they are built from exact "
    "data samples (seeds 5000+), which the samples may stay coupled to.",
]


def report() -> None:
    cases = [(p, s) for p in PROBLEMS for s in SDES]
    header = ["problem", "SDE", *CONFIGS]
    body, per = config_table(rows(OUT), cases, CONFIGS, lambda r: r["config"])
    body.append("| **gap, geometric mean (both ≤ 2)** | | " + " | ".join(gap_summary(per[c]) for c in CONFIGS) + " |")
    by = {}
    for r in rows(OUT_BIAS):
        by.setdefault((r["problem"], r["sde"], r["config"]), []).append(r)
    body += ["", "Tight ps over 16 seeds: NFE, W2, gap, signed log-density bias (floor units ± standard error):",
             "", "| problem | SDE | plain prior | centred prior |", "|---|---|---|---|"]
    body += [f"| {n} | {e} | " + " | ".join(summary(by[(n, e, c)]) if (n, e, c) in by else "—"
                                           for c in ("tight ps, plain", "tight ps, centred")) + " |"
             for n, e in BIAS_CASES]
    write_report("prior_centring", "Where the solve starts: the plain prior, p_T itself, the centred prior (issue 17)",
                 ", seeds 0-2, VP and VE at their default eps", header, body + READING)


if __name__ == "__main__":
    run_or_report(__doc__, run, report, PROBLEMS)
