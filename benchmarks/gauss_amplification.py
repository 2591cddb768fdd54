"""Where a 15-NFE solver's log-density gap comes from in high dimension, and a grid that removes it there
(issue 17, item 1): measured, not adopted.

On a Gaussian N(μ, s²) (one coordinate) the probability-flow ODE is linear, x(t) − m μ = A(t) (x_T − m_T μ)
with A(t) = √(m² s² + σ²) / √(m_T² s² + σ_T²), and so is every fixed-step exponential sampler: it returns
G(s) (x_T − m_T μ) on the grid.  e(s) = G/A − 1 is its relative amplitude error at scale s, computed here
without sampling (one solve of a diagonal Gaussian whose coordinates have the stds s, from x_T = 1).  A
component whose directions have stds s_i comes out with variances off by ≈ 2 e(s_i), and the samples'
mean log-density by ≈ −Σ_i e(s_i): in d dimensions about d·e, against a floor of about √(d/2)/√n.  At
n = 10k and d = 128 the gap stays within its floor only for |e| ≲ 6e-4.

Grids compared (``unipc`` with ``solver_order=4``, 15 NFE, no final denoising):
  scale         ``scale_grid``'s (first step from the data's scale, then uniform in log-SNR);
  gauss         the minimax grid for e: the log-SNR increments (softmax-parameterised, as ``fit_grid``) that
                minimise the 8-norm of e over s ∈ [10^-2.5, 10] (Powell), one grid per SDE, no data;
  scale+gauss   scale's first step kept, the other steps minimising the 8-norm of e over s ∈ [10^-2.5, 2ŝ].
Cases: the eight validation mixtures of low_nfe_grids.py, VP and VE, seeds 0 and 1, 10k samples at eps
against the exact p_eps (bias_common.py).

    python benchmarks/gauss_amplification.py run [--problems ring8,gmm64]   # appends to
                                             # results/gauss_amplification.jsonl (resumes)
    python benchmarks/gauss_amplification.py report   # writes benchmarks/gauss_amplification.md
"""

from __future__ import annotations

import functools
import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bias_common import append, config_table, gap_summary, line, measure, pending, rows, run_or_report, write_report  # noqa: E402
from low_nfe_grids import SDES, SEEDS, VALIDATION  # noqa: E402

import scoresolve as ss  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "gauss_amplification.jsonl"
NFE, OPTIONS = 15, {"solver_order": 4}
CONFIGS = ("scale", "gauss", "scale+gauss")
COMPONENT_STDS = (0.05, 0.5)  # the validation and held-out mixtures' per-direction stds


def amplitude_error(sde, ts: torch.Tensor, s: torch.Tensor, method: str = "unipc", **options) -> torch.Tensor:
    """e(s) = G(s)/A(s) − 1 of ``method`` on the grid ``ts`` for Gaussians of stds ``s`` (float64)."""
    def score(x, t):
        m, sig = (v.unsqueeze(1) for v in sde.marginal(t.double()))
        return -x / (m * m * s * s + sig * sig)

    x_T = torch.ones(1, s.numel(), dtype=torch.float64)
    res = ss.sample(score, sde, x_T.shape, method, x_init=x_T, grid=ts, denoise=False, check=False, **options)
    (m_T, s_T), (m_e, s_e) = sde.marginal(ts[0]), sde.marginal(ts[-1])
    return res.samples[0] * torch.sqrt(m_T**2 * s**2 + s_T**2) / torch.sqrt(m_e**2 * s**2 + s_e**2) - 1


def _lam(sde, t) -> float:
    return 0.5 * float(sde.log_snr(torch.as_tensor(t, dtype=torch.float64)))


def minimax_grid(sde, head: torch.Tensor, end: float, steps: int, s: torch.Tensor) -> torch.Tensor:
    """``head`` (the grid's first times, kept) then steps − len(head) + 1 steps to ``end`` whose log-SNR
    increments minimise the 8-norm of ``amplitude_error`` over the scales ``s``."""
    from scipy.optimize import minimize

    l0, l1, n = _lam(sde, head[-1]), _lam(sde, end), steps - len(head) + 1

    def grid(theta: np.ndarray) -> torch.Tensor:
        w = torch.softmax(torch.as_tensor(theta, dtype=torch.float64), 0)
        lam = l0 + (l1 - l0) * torch.cumsum(w, 0)[:-1]
        return torch.cat([head.double(), sde.t_from_log_snr(2.0 * lam), torch.tensor([end], dtype=torch.float64)])

    def loss(theta: np.ndarray) -> float:
        e = amplitude_error(sde, grid(theta), s, **OPTIONS).abs()
        return math.log(float(e.pow(8).mean().pow(1 / 8)))

    found = minimize(loss, np.zeros(n), method="Powell", options={"maxfev": 2000, "xtol": 1e-3, "ftol": 1e-4})
    return grid(found.x)


@functools.cache
def gauss_grid(sde_name: str) -> torch.Tensor:
    sde, eps = SDES[sde_name]
    return minimax_grid(sde, torch.tensor([float(sde.T)]), eps, NFE, torch.logspace(-2.5, 1, 57, dtype=torch.float64))


def grids(sde_name: str, score, dim: int) -> dict[str, tuple[torch.Tensor, float]]:
    """The three configurations' grids (and ŝ)."""
    sde, eps = SDES[sde_name]
    pilot = torch.Generator().manual_seed(ss.scalegrid.PILOT_SEED)
    fit = ss.scale_grid(score, sde, (256, dim), "unipc", NFE, eps=eps, generator=pilot)  # order 4 takes the same steps
    hi = math.log10(2 * fit.scale)
    mixed = minimax_grid(sde, fit.ts[:2], eps, NFE, torch.logspace(-2.5, hi, 41, dtype=torch.float64))
    return {"scale": fit.ts, "gauss": gauss_grid(sde_name), "scale+gauss": mixed}, fit.scale


def run(problems: list[str]) -> None:
    torch.set_num_threads(1)
    s_mix = torch.logspace(*(math.log10(v) for v in COMPONENT_STDS), 21, dtype=torch.float64)
    for name, sde_name, sde, _, target, score, gr, todo in pending(OUT, "config", problems, SDES, CONFIGS, SEEDS):
        by_config, scale = grids(sde_name, score, target.dim)
        for config, seed in todo:
            ts = by_config[config]
            e = amplitude_error(sde, ts, s_mix, **OPTIONS)
            res = ss.sample(score, sde, (10_000, target.dim), "unipc", grid=ts, denoise=False,
                            generator=torch.Generator().manual_seed(seed), **OPTIONS)
            row = dict(problem=name, sde=sde_name, config=config, seed=seed, nfe=float(res.nfe), scale=scale,
                       e_max=float(e.abs().max()), e_mean=float(e.mean()),
                       lam=[round(_lam(sde, t), 3) for t in ts], **measure(res.samples, gr, seed))
            append(OUT, row)
            print(f"[{name} {sde_name}] {config} seed {seed}: {line(row)}, e max {row['e_max']:.1e}", flush=True)


def _amplitude_table() -> list[str]:
    """max |e| and mean e over the mixtures' component stds, on the log-SNR grid and the minimax grid."""
    s = torch.logspace(*(math.log10(v) for v in COMPONENT_STDS), 21, dtype=torch.float64)
    out = ["", "Amplitude error e(s) over s ∈ [0.05, 0.5] (no sampling), `unipc` order 4 at 15 NFE: max |e| / mean e",
           "", "| SDE | log-SNR grid | gauss grid |", "|---|---|---|"]
    for sde_name, (sde, eps) in SDES.items():
        cells = []
        for ts in (ss.timegrid.make_grid("log_snr", sde, NFE, eps), gauss_grid(sde_name)):
            e = amplitude_error(sde, ts.double(), s, **OPTIONS)
            cells.append(f"{float(e.abs().max()):.1e} / {float(e.mean()):+.1e}")
        out.append(f"| {sde_name} | " + " | ".join(cells) + " |")
    return out


READING = [
    "", "Reading:",
    "- The premise holds: the amplitude error predicts the sampled spread, and on the log-SNR grid it is 1.7-2.7 % at "
    "15 NFE, enough for a log-density gap of many floors in 128-d (d·e against √(d/2)/√n).",
    "- The minimax grid cuts it ~20× (to ~1e-3) with no data and no evaluations, and helps where the "
    "components' own spread is what the gap measures: mix128s306 2.69 → 1.12 (VP), 5.18 → 2.83 (VE).",
    "- Elsewhere the gap is not the amplitude's: with e ≈ 1e-3 the bias stays at −4 to −8 floors on the 8-ring, "
    "mix8s303 and mix16s304, and the scale grid's first step (placed from the data's scale) matters more: "
    "over the 16 cases the gauss grid reads 3.77 against the scale grid's 2.62.  Keeping the scale grid's "
    "first step and fitting the rest to the amplitude (scale+gauss) is worse still (8.61): the steps it moves "
    "to the end are taken from mode selection.",
    "- So no grid of this kind is adopted.  Scratch runs (not committed) combining the amplitude term with "
    "`fit_grid`'s pilot loss, and a pilot estimate of the log-density change ½Δ·(s(x) + s(x_ref)), were mixed: "
    "the latter overfits the 256-draw pilot (the 8-ring's W2 3.24×), the former ruins gmm64 (gap 16×) where the "
    "data's scale is the spread of the means, not of the components.",
]


def _check() -> list[str]:
    """The premise, checked by sampling: on N(1, 0.1² I) in 64-d the samples' std over the exact one is 1 + e(0.1)
    (log-SNR grid), and e falls with the step count at the solver's order."""
    sde, eps = SDES["vp"]
    s, d, n = 0.1, 64, 20_000

    def score(x, t):
        m, sig = (v.unsqueeze(1) for v in sde.marginal(t.double()))
        return (-(x.double() - m) / (m * m * s * s + sig * sig)).to(x.dtype)

    ts = ss.timegrid.make_grid("log_snr", sde, NFE, eps).double()
    e = float(amplitude_error(sde, ts, torch.tensor([s], dtype=torch.float64), **OPTIONS))
    x = ss.sample(score, sde, (n, d), "unipc", grid=ts, denoise=False, generator=torch.Generator().manual_seed(0),
                  **OPTIONS).samples.double()
    m_e, s_e = sde.marginal(eps)
    ratio = float(x.std(0).mean()) / math.sqrt(m_e**2 * s**2 + s_e**2)
    by_steps = []
    for k in (15, 30, 60, 120):
        grid = ss.timegrid.make_grid("log_snr", sde, k, eps).double()
        e_k = float(amplitude_error(sde, grid, torch.tensor([s], dtype=torch.float64), **OPTIONS))
        by_steps.append(f"{k}: {abs(e_k):.1e}")
    return ["", f"Check (VP, log-SNR grid, s = 0.1): predicted std ratio 1 + e = {1 + e:.4f}, sampled {ratio:.4f} "
            f"(± {1 / math.sqrt(2 * n * d):.4f}, {n} samples in {d}-d); |e| by steps: " + ", ".join(by_steps) + "."]


def report() -> None:
    header = ["problem", "SDE", *(f"{c}: W2 / gap (e max)" for c in CONFIGS)]
    body, per = config_table(rows(OUT), [(p, s) for p in VALIDATION for s in SDES], CONFIGS, lambda r: r["config"],
                             extra=lambda rs: f" ({rs[0]['e_max']:.0e})")
    body.append("| **gap, geometric mean (both ≤ 2)** | | " + " | ".join(gap_summary(per[c]) for c in CONFIGS) + " |")
    high = {c: [x for x in per[c] if x[0] in ("gmm64", "mix32s305", "mix128s306")] for c in CONFIGS}
    body.append("| ≥ 32-d cases | | " + " | ".join(gap_summary(high[c]) for c in CONFIGS) + " |")
    body += _amplitude_table() + _check() + READING
    write_report("gauss_amplification", "The Gaussian amplitude error of a 15-NFE grid (issue 17): measured, "
                 "not adopted", f", `unipc` order 4 at {NFE} NFE; e max: max |e(s)| over the components' stds "
                 "[0.05, 0.5]", header, body)


if __name__ == "__main__":
    run_or_report(__doc__, run, report, VALIDATION)
