"""Issue 17, item 1: a fixed-step grid chosen from a pilot batch's local-error steps (training-free).

The pilot: ``ode_adaptive_ps`` at its default tolerance on 512 samples of another seed.  Its
controller sets each sample's step h(λ) so the local error is at the tolerance, so its step density
1/h(λ) is where a shared grid needs its nodes (for an order-k method with local error C(λ) h^{k+1},
the budget-optimal grid equidistributes C^{1/(k+1)}, the density the controller produces).  The
grid: N nodes equidistributing the pilot's mean step count n̄(λ) (each sample's accepted-step
index, interpolated linearly in λ, averaged over the pilot).  Then ``unipc`` with N steps on that
grid against ``unipc`` at ``nfe=N`` on its default (log-SNR) grid, 10k samples at eps without
denoising against the exact p_eps, ratios to the noise floor; the pilot's evaluations are reported
per sample of the 10k batch, not hidden.

    python benchmarks/pilot_grid.py            # writes benchmarks/pilot_grid.md
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

import scoresolve as ss
from scoresolve.metrics import component_w2, logp_gap, noise_floor
from scoresolve.targets import GaussianMixture

ROOT = Path(__file__).resolve().parent
CASES = [("ring8", "vp"), ("ring8", "ve"), ("gmm64", "vp")]
BUDGETS = (15, 20)
SEEDS, SAMPLES, PILOT = 2, 10_000, 512


def _problem(name: str) -> GaussianMixture:
    if name == "ring8":
        return GaussianMixture.ring(8, 2.0, 0.1)
    return GaussianMixture.random(64, 10, seed=0, anisotropic=True)


def _interp(xq: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear y(xq) through the increasing nodes (x, y)."""
    i = torch.searchsorted(x, xq).clamp(1, x.numel() - 1)
    w = (xq - x[i - 1]) / (x[i] - x[i - 1]).clamp_min(1e-300)
    return y[i - 1] + w * (y[i] - y[i - 1])


def pilot_grid(score, sde: ss.SDE, dim: int, steps: int, *, seed: int = 99) -> tuple[torch.Tensor, float]:
    """(grid of ``steps`` + 1 times from T to eps, the pilot's counted row evaluations)."""
    times: list[torch.Tensor] = []
    res = ss.sample(score, sde, (PILOT, dim), "ode_adaptive_ps", generator=torch.Generator().manual_seed(seed),
                    denoise=False, callback=lambda i, t, x, x0: times.append(t.clone()))
    lam0, lam1 = 0.5 * sde.log_snr(sde.T), 0.5 * sde.log_snr(sde.default_eps)
    fine = torch.linspace(lam0, lam1, 2001, dtype=torch.float64)
    count = torch.zeros_like(fine)
    for path in torch.stack(times).T:  # one sample's times after every iteration
        lam = torch.cat([fine[:1], 0.5 * sde.log_snr(torch.unique_consecutive(path))])
        count += _interp(fine, lam, torch.arange(lam.numel(), dtype=torch.float64))
    count /= PILOT
    lam = _interp(torch.linspace(0.0, float(count[-1]), steps + 1, dtype=torch.float64), count, fine)
    ts = sde.t_from_log_snr(2.0 * lam)
    ts[0], ts[-1] = sde.T, sde.default_eps
    return ts, res.nfe * PILOT


def run() -> list[str]:
    torch.set_num_threads(1)
    rows = []
    for prob, sde_name in CASES:
        tgt, sde = _problem(prob), ss.SDES[sde_name]()
        truth, score = tgt.diffused(sde.default_eps, sde), tgt.score_fn(sde)
        floor = noise_floor(truth, SAMPLES, repeats=4, metrics=("component_w2", "logp_gap"))
        for n in BUDGETS:
            grid, pilot_rows = pilot_grid(score, sde, tgt.dim, n)
            for label, kw in (("default (log-SNR)", dict(nfe=n)), ("pilot", dict(grid=grid))):
                w2 = lp = 0.0
                for seed in range(SEEDS):
                    x = ss.sample(score, sde, (SAMPLES, tgt.dim), "unipc", denoise=False,
                                  generator=torch.Generator().manual_seed(seed), **kw).samples
                    ref = truth.sample(SAMPLES, generator=torch.Generator().manual_seed(1000 + seed),
                                       dtype=torch.float64)
                    w2 += component_w2(x, truth) / floor["component_w2"][0] / SEEDS
                    lp += logp_gap(x, truth, ref) / floor["logp_gap"][0] / SEEDS
                extra = f"{pilot_rows / SAMPLES:.2f}" if label == "pilot" else "0"
                rows.append(f"| {prob} {sde_name.upper()} | {n} | {label} | {extra} | {w2:.2f} | {lp:.2f} |")
                print(rows[-1], flush=True)
    return rows


def main() -> None:
    rows = run()
    lines = ["# Fixed-step grids from a pilot batch (issue 17, item 1)", "",
             "`python benchmarks/pilot_grid.py` (see its docstring for the construction).  `unipc`, 10k samples, "
             f"{SEEDS} seeds, samples at eps against the exact p_eps; W2 = per-component W2, logp = log-density gap, "
             "both as multiples of their noise floors.  *pilot NFE* is the pilot's counted evaluations per sample "
             "of one 10k batch (the grid can be reused across batches).", "",
             "| case | N | grid | pilot NFE / sample | W2 | logp |", "|---|---|---|---|---|---|", *rows, "",
             "Not adopted: at 15 NFE the pilot grid is worse than the log-SNR grid in every case, at 20 better "
             "only on the 8-ring, and neither reaches both floors (issue 17 asks ≤ 2 at ≤ 15 NFE); the "
             "per-sample adaptive `ode_adaptive_ps` reaches them at 20-25 (benchmarks/fast_results.md).  A "
             "shared grid cannot follow each sample's own difficulty, which is where the per-sample "
             "solver's steps go."]
    (ROOT / "pilot_grid.md").write_text("\n".join(lines) + "\n")
    print("wrote", ROOT / "pilot_grid.md")


if __name__ == "__main__":
    sys.exit(main())
