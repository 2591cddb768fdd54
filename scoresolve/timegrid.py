"""Decreasing time grids T = t_0 > t_1 > ... > t_N = eps, as data.

Every sampler step reads its own dt = t_{i+1} − t_i from the grid, so any grid works with
any sampler.  Kinds:
    uniform    t_i = T + (eps − T) i/N
    quadratic  √t uniform (denser near eps; Song et al. 2020 DDIM / Lu et al. 2022)
    log_snr    λ(t) = log(m²/σ²) uniform (DPM-Solver, Lu et al. 2022)
    karras     σ̃ = σ/m uniform in σ̃^{1/ρ}, ρ = 7 (EDM, Karras et al. 2022, eq. 5)
    classical  quadratic for SDEs whose mean decays (VP, sub-VP), uniform for VE (where uniform
               in t is uniform in log σ): the measured best for the classical SDE samplers
               (benchmarks/classical_results.md)
    classical_pc  pc's: quadratic for sub-VP, uniform for VE, and for VP quadratic up to 100 steps,
               uniform beyond (pc's shifted step gains from the fine end at ≤ 100 steps, while at
               more steps its Langevin corrector, crowded at small σ, widens the components:
               benchmarks/classical_results.md, finding 12)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from .sde import SDE, SubVPSDE, keeps_mean

__all__ = ["make_grid", "GRIDS", "check_grid"]


def _uniform(sde: SDE, n: int, eps: float, **_) -> Tensor:
    return torch.linspace(sde.T, eps, n + 1, dtype=torch.float64)


def _quadratic(sde: SDE, n: int, eps: float, **_) -> Tensor:
    return torch.linspace(math.sqrt(sde.T), math.sqrt(eps), n + 1, dtype=torch.float64) ** 2


def _log_snr(sde: SDE, n: int, eps: float, **_) -> Tensor:
    lam = torch.linspace(sde.log_snr(sde.T), sde.log_snr(eps), n + 1, dtype=torch.float64)
    return sde.t_from_log_snr(lam)


def _karras(sde: SDE, n: int, eps: float, rho: float = 7.0, **_) -> Tensor:
    smax, smin = (math.exp(-0.5 * sde.log_snr(t)) for t in (sde.T, eps))
    r = torch.linspace(0, 1, n + 1, dtype=torch.float64)
    sig = (smax ** (1 / rho) + r * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
    return sde.t_from_log_snr(-2.0 * sig.log())


def _classical(sde: SDE, n: int, eps: float, **_) -> Tensor:
    if keeps_mean(sde):  # VE: m(t) = 1
        return _uniform(sde, n, eps)
    return _quadratic(sde, n, eps)


CLASSICAL_PC_QUADRATIC_STEPS = 100  # VP: the quadratic grid up to this many steps, uniform beyond


def _classical_pc(sde: SDE, n: int, eps: float, **_) -> Tensor:
    if isinstance(sde, SubVPSDE):
        return _quadratic(sde, n, eps)
    return _classical(sde, n, eps) if n <= CLASSICAL_PC_QUADRATIC_STEPS else _uniform(sde, n, eps)


GRIDS: dict[str, Callable[..., Tensor]] = {
    "uniform": _uniform,
    "quadratic": _quadratic,
    "log_snr": _log_snr,
    "karras": _karras,
    "classical": _classical,
    "classical_pc": _classical_pc,
}


def make_grid(
    kind: str, sde: SDE, steps: int, eps: float, *, rho: float = 7.0
) -> Tensor:
    """A float64 grid of ``steps + 1`` decreasing times from ``sde.T`` to ``eps``.

    Raises:
        ValueError: unknown kind, steps < 1, or eps outside (0, T).
    """
    if kind not in GRIDS:
        raise ValueError(f"unknown grid {kind!r}; valid choices: {', '.join(GRIDS)}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if not 0 < eps < sde.T:
        raise ValueError(f"eps must lie in (0, T={sde.T}), got {eps}")
    ts = GRIDS[kind](sde, steps, eps, rho=rho)
    # pin the end points exactly (inverting λ(t) rounds)
    ts[0], ts[-1] = sde.T, eps
    return ts


def check_grid(ts: Tensor, sde: SDE) -> Tensor:
    """Validate a user grid: 1-D, strictly decreasing, inside (0, T]."""
    ts = torch.as_tensor(ts, dtype=torch.float64).cpu()
    if ts.ndim != 1 or ts.numel() < 2:
        raise ValueError(f"grid must be a 1-D tensor of at least 2 times, got shape {tuple(ts.shape)}")
    if not bool((ts[1:] < ts[:-1]).all()):
        raise ValueError("grid must be strictly decreasing (from T towards eps)")
    if not (float(ts[-1]) > 0 and float(ts[0]) <= sde.T):
        raise ValueError(
            f"grid must lie in (0, T={sde.T}]; got [{float(ts[-1])}, {float(ts[0])}]"
            + (_cover_hint(sde, float(ts[0])) if float(ts[0]) > sde.T else "")
        )
    return ts


def _cover_hint(sde: SDE, t_max: float) -> str:
    """Which SDE setting covers a grid reaching t_max > T."""
    from .schedules import DiscreteVPSDE, KarrasSDE
    from .sde import VESDE, VPSDE

    if isinstance(sde, KarrasSDE):
        return f"; the grid is in σ: KarrasSDE(sigma_max={t_max:g}) covers it"
    if isinstance(sde, DiscreteVPSDE):
        return (f"; t = (timestep + 1)/N, so t = {t_max:g} is timestep {sde.t_to_timestep(t_max):g} beyond the "
                f"table's last ({sde.num_train_timesteps - 1}): build the grid with timestep_grid(sde, ...)")
    if isinstance(sde, VESDE):
        return ("; VESDE's t is log-scaled in σ: pass a grid of times in [0, 1], or use KarrasSDE(sigma_max=...) "
                "for a grid of σ's")
    if isinstance(sde, VPSDE):
        return ("; a diffusers/DDPM timestep grid (t = (τ + 1)/N reaching 1 + 1/N, or τ/N) needs the discrete "
                "table: DiscreteVPSDE.from_diffusers(scheduler) (or schedule='linear') with timestep_grid(...)")
    return ""
