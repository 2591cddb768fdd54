"""``scale_grid``: a grid for a fixed-step ODE sampler from the data's scale, read off the score at T.

Far above the data's scale the probability-flow paths are straight (x̂_0 barely moves); the grids
that ``fit_grid`` fits at ~15 NFE all spend one long first step there and the rest nearly uniformly
in log-SNR (benchmarks/low_nfe_grids.md).  Where that first step should end depends on the data's
scale: one fixed end helps at one scale and hurts at another.  The scale is in the score at T: for
data of covariance Σ and y = x/m ~ the prior, x̂_0(x_T) ≈ μ + Σ (y − μ)/σ̃_T² (σ̃ = σ/m), so over
prior draws Var x̂_0 ≈ Σ²/σ̃_T², and

    ŝ = (σ̃_T² · mean over coordinates of Var x̂_0(x_T))^{1/4}   (→ (tr Σ²/d)^{1/4}; s for data N(μ, s² I))

from one evaluation on a pilot of prior draws.  The same evaluation gives the data's mean, μ̂ = mean x̂_0(x_T)
(≈ μ − Σ μ/σ̃_T²; ``data_mean``), where p_T is centred (at m(T) μ): ``centre`` moves prior draws there.

The grid: T, then λ_1 = −log(``factor`` · ŝ) (half
log-SNR, λ = log(m/σ)), then the other steps uniform in λ to the end; λ_1 is kept between the
log-SNR grid's own first point (the grid is then that grid) and half the range.  A score's own error
at T (a network's) adds to the variance, so ŝ errs high and the first step short: towards the
log-SNR grid, which measured no worse than jumping too far (benchmarks/low_nfe_grids.md).

``factor`` = 4 was chosen among 2.5, 4 and 7 on six mixtures (2-128-d, VP and VE) at three data scales.
Measured (``unipc`` at 15 NFE, 10k samples × 2 seeds at p_eps, log-density gap × its floor, geometric
mean over the cases; benchmarks/low_nfe_grids.md): on eight mixtures it was not chosen on (the 8-ring,
the 64-d one, six new random ones; VP and VE) 6.42 → 3.57 against the log-SNR grid, largest 21.1 →
10.5, both metrics within 2× in 5 of 16 cases (1 of 16); on the six it was chosen on 6.17 → 3.69 at
their scale, 14.9 → 3.76 shrunk ×0.25, 8.37 → 6.60 grown ×4.  A grid fitted with ``fit_grid`` (1.6M
evaluations) reaches ≈ 2.7 on the same six.  At 10 NFE the W2 was lower on all 28 cases measured, but
on the 8-ring the log-density gap read larger than the log-SNR grid's (with the final denoising 22 → 37
VP, 5 → 39 VE): not a universal win at 10.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .gridfit import _check_fittable, grid_options, grid_plan, prior_draws
from .registry import resolve
from .score import CountingScore
from .sde import SDE

__all__ = ["ScaleGrid", "data_scale", "data_mean", "pilot_x0", "scale_of", "centre", "scale_grid", "jump_grid",
           "scaled_jump", "SCALE_PILOT", "PILOT_SEED", "PILOT_CHUNK"]

FACTOR = 4.0  # σ̃ at the first step's end = FACTOR · ŝ (chosen on the held-out mixtures, see the docstring)
SCALE_PILOT = 256  # prior draws whose one evaluation at T gives ``sample(grid="scale")`` its data scale
PILOT_SEED = 2**31 - 1  # their generator's seed (no sampling seed of the bench uses it)
PILOT_CHUNK = 64  # rows per score call of a pilot: a network's memory bounded, the same calls for any batch


@dataclass(frozen=True)
class ScaleGrid:
    """A grid from ``scale_grid``: ``ts`` (T → eps, or T → t_c with the tail step on to ``eps``, as
    ``FittedGrid``; pass ``**sample_options`` to ``sample``), ``scale`` ŝ, ``first_sigma`` the σ/m at
    the first step's end, ``pilot_nfe`` the score evaluations per pilot sample (1), ``data_mean`` the
    data's mean μ̂ read off the same evaluation (``data_mean``), by which ``sample_options`` centres the
    prior draws (None if not asked for)."""

    ts: Tensor
    eps: float | None
    method: str
    nfe: int
    scale: float
    first_sigma: float
    pilot_nfe: float = 1.0
    data_mean: Tensor | None = None

    @property
    def sample_options(self) -> dict:
        """``grid`` (and ``eps``, with a tail; ``data_mean``, if read) for ``sample``."""
        return grid_options(self.ts, self.eps, self.data_mean)


def jump_grid(sde: SDE, steps: int, t_end: float, lam1: float) -> Tensor:
    """T, then the half log-SNR λ_1, then ``steps`` − 1 steps uniform in λ to ``t_end`` (float64)."""
    lam0, lam_end = _half_log_snr(sde, sde.T), _half_log_snr(sde, t_end)
    lam = torch.tensor([lam0] + [lam1 + (lam_end - lam1) * i / (steps - 1) for i in range(steps)],
                       dtype=torch.float64)
    ts = sde.t_from_log_snr(2.0 * lam).to(torch.float64)
    ts[0], ts[-1] = sde.T, t_end
    return ts


def scaled_jump(sde: SDE, steps: int, t_end: float, s_hat: float, factor: float = FACTOR) -> tuple[Tensor, float]:
    """(``jump_grid``, λ_1) with λ_1 = −log(``factor`` · ŝ) kept between the log-SNR grid's first point and
    half the range."""
    lam0, lam_end = _half_log_snr(sde, sde.T), _half_log_snr(sde, t_end)
    span = lam_end - lam0
    lam1 = -math.log(factor * s_hat) if s_hat > 0 else math.inf
    lam1 = min(max(lam1, lam0 + span / steps), lam0 + span / 2)
    return jump_grid(sde, steps, t_end, lam1), lam1


def _half_log_snr(sde: SDE, t: float) -> float:
    return 0.5 * float(sde.log_snr(torch.tensor(t, dtype=torch.float64)))


def _at_T(sde: SDE) -> tuple[float, float]:
    """(m(T), σ(T))."""
    m, sig = sde.marginal(torch.tensor(sde.T, dtype=torch.float64))
    return float(m), float(sig)


def pilot_x0(score_fn, sde: SDE, x: Tensor, chunk: int | None = PILOT_CHUNK) -> Tensor:
    """x̂_0(x_T) = (x_T + σ_T² s(x_T, T))/m_T at the prior draws ``x`` (float64 rows), one evaluation each, in
    calls of at most ``chunk`` rows (None: all at once)."""
    if chunk is not None and not (isinstance(chunk, int) and not isinstance(chunk, bool) and chunk >= 1):
        raise ValueError(f"chunk must be an integer >= 1 or None, got {chunk!r}")
    m, sig = _at_T(sde)
    counted = score_fn if isinstance(score_fn, CountingScore) else CountingScore(score_fn, x.shape[0])
    with torch.no_grad():
        s = torch.cat([counted(part, sde.T) for part in x.split(chunk or x.shape[0])])
    return (x.double() + sig * sig * s.double()) / m


def centre(x: Tensor, sde: SDE, mu: Tensor | None) -> Tensor:
    """Prior draws x centred where p_T is, x + m(T) μ (μ: the data's mean; None: x as it is)."""
    if mu is None:
        return x
    return x + (_at_T(sde)[0] * torch.as_tensor(mu, dtype=torch.float64)).to(device=x.device, dtype=x.dtype)


def _pilot(shape, sde: SDE, generator, device, dtype) -> Tensor:
    if len(shape) < 2 or shape[0] < 2:
        raise ValueError(f"shape must be (pilot, *sample_shape) with a pilot of at least 2 draws, got {tuple(shape)}")
    return prior_draws(sde, shape, generator, device, dtype)


def scale_of(x0: Tensor, sde: SDE) -> float:
    """ŝ = (σ̃_T² · mean_coords Var x̂_0)^{1/4} from ``pilot_x0``'s rows (module docstring)."""
    m, sig = _at_T(sde)
    return ((sig / m) ** 2 * float(x0.flatten(1).var(0).mean())) ** 0.25


def data_scale(score_fn, sde: SDE, shape, *, generator: torch.Generator | None = None,
               device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
               chunk: int | None = PILOT_CHUNK) -> float:
    """ŝ = (σ̃_T² · mean over coordinates of Var x̂_0(x_T))^{1/4} over ``shape[0]`` prior draws x_T of shape
    ``shape`` (one score evaluation each, in calls of at most ``chunk`` rows, None: all at once): the data's
    scale as the score at T sees it (module docstring)."""
    return scale_of(pilot_x0(score_fn, sde, _pilot(shape, sde, generator, device, dtype), chunk), sde)


def data_mean(score_fn, sde: SDE, shape, *, generator: torch.Generator | None = None,
              device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
              chunk: int | None = PILOT_CHUNK) -> Tensor:
    """μ̂ = the mean of x̂_0(x_T) over ``shape[0]`` prior draws x_T (one evaluation each): the data's mean as the
    score at T sees it (float64, of shape ``shape[1:]``), for ``sample(..., data_mean=μ̂)``, whose prior draws
    it centres at m(T) μ̂ (``sampling.start``).  Over N(0, σ̃_T²) draws of y = x/m the mean of x̂_0 ≈ μ −
    Σ μ/σ̃_T² (module docstring): μ to a relative O(Σ/σ̃_T²)."""
    return pilot_x0(score_fn, sde, _pilot(shape, sde, generator, device, dtype), chunk).mean(0)


def scale_grid(score_fn, sde: SDE, shape, method: str = "unipc", nfe: int = 15, *, eps: float | None = None,
               factor: float = FACTOR, data_mean: bool = True, generator: torch.Generator | None = None,
               device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> ScaleGrid:
    """The grid of ``method`` (a deterministic fixed-step sampler) at ``nfe`` evaluations (without the
    final denoising, as ``fit_grid``) whose first step ends at σ/m = ``factor`` · ŝ (``data_scale`` on a
    pilot of ``shape``: (pilot, *sample_shape), 256 draws a sound start) and whose other steps are
    uniform in log-SNR.  With ``data_mean`` the same evaluation gives the data's mean μ̂, and
    ``sample_options`` centres the prior draws at m(T) μ̂ (``sample``'s ``data_mean``; ``sample(grid="scale",
    data_mean="estimate")`` is the same).  Costs one evaluation per pilot sample."""
    sampler = _check_fittable(method, resolve("method", method))
    steps, eps, t_c = grid_plan(method, sampler, sde, nfe, eps)
    if not (isinstance(factor, (int, float)) and math.isfinite(factor) and factor > 0):
        raise ValueError(f"factor must be a positive number, got {factor!r}")
    t1 = eps if t_c is None else t_c
    x0 = pilot_x0(score_fn, sde, _pilot(shape, sde, generator, device, dtype))
    s_hat = scale_of(x0, sde)
    ts, lam1 = scaled_jump(sde, steps, t1, s_hat, factor)
    name = method if isinstance(method, str) else type(sampler).__name__
    return ScaleGrid(ts=ts, eps=None if t_c is None else eps, method=name, nfe=int(nfe), scale=s_hat,
                     first_sigma=math.exp(-lam1), data_mean=x0.mean(0) if data_mean else None)
