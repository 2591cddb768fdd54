"""Samplers: small frozen dataclasses holding their options, each with a visible loop.

Every sampler declares ``order`` (weak order for SDE samplers, order for ODE samplers) and
``nfe_per_step`` (score evaluations per grid step; None when adaptive), and implements
``run(sde, score, x, ts, noise, *, denoise, keep, progress) -> Run``.  The loop owns all state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar, NamedTuple

import torch
from torch import Tensor
from tqdm.auto import tqdm

from . import ode
from .sde import SDE

__all__ = ["Run", "PC", "AnnealedLangevin", "ProbabilityFlowODE", "FixedStepODE"]


class Run(NamedTuple):
    x: Tensor
    trajectory: list[Tensor] | None
    stats: dict
    ts: Tensor | None = None


def grid_steps(ts: list[float], progress: bool, desc: str):
    """The grid's consecutive pairs (t_i, t_{i+1}), T → eps, behind a tqdm bar (off unless
    ``progress``): the loop every fixed-grid sampler, including a user's own, iterates."""
    pairs = list(zip(ts[:-1], ts[1:]))
    return tqdm(pairs, desc=desc, disable=not progress, leave=False)


def _resolve(kind: str, fn):
    from .registry import resolve

    return resolve(kind, fn)


@dataclass(frozen=True)
class PC:
    """Predictor-corrector sampling (Song et al. 2021, Algorithms 2-3).

    For each grid step t -> t':  corrector at t (``n_corrector_steps`` MCMC steps), then the
    predictor from t to t'.  With ``denoise`` the last predictor's noise-free mean is returned.
    Names or callables are accepted for ``predictor`` and ``corrector`` (see ``registry``).
    """

    predictor: str | Callable = "reverse_diffusion"
    corrector: str | Callable = "langevin"
    snr: float = 0.16
    n_corrector_steps: int = 1
    norm: str = "batch"
    default_grid: str = "uniform"
    default_steps: int = 1000
    order: float = 1.0

    def __post_init__(self):
        _resolve("predictor", self.predictor)
        _resolve("corrector", self.corrector)
        if not self.snr > 0:
            raise ValueError(f"snr must be > 0, got {self.snr}")
        if self.norm not in ("batch", "sample"):
            raise ValueError(f"norm must be 'batch' or 'sample', got {self.norm!r}")
        if not isinstance(self.n_corrector_steps, int) or self.n_corrector_steps < 0:
            raise ValueError(f"n_corrector_steps must be an integer >= 0, got {self.n_corrector_steps}")

    @property
    def nfe_per_step(self) -> int:
        p = 0 if _resolve("predictor", self.predictor).__name__ == "none" else 1
        c = 0 if _resolve("corrector", self.corrector).__name__ == "none" else 1
        return p + c * self.n_corrector_steps

    def extra_nfe(self, denoise: bool) -> int:
        return 0

    def run(self, sde: SDE, score, x: Tensor, ts: list[float], noise, *, denoise: bool,
            keep: bool, progress: bool) -> Run:
        predictor = _resolve("predictor", self.predictor)
        corrector = _resolve("corrector", self.corrector)
        use_corrector = corrector.__name__ != "none" and self.n_corrector_steps > 0
        traj = [x] if keep else None
        x_mean = x
        for i, (t, t_next) in enumerate(grid_steps(ts, progress, "pc")):
            score.step = i
            if use_corrector:  # corrector first, at the current time (as in the reference)
                x, x_mean = corrector(sde, score, x, t, noise, snr=self.snr,
                                      n_steps=self.n_corrector_steps, norm=self.norm)
            x, x_mean = predictor(sde, score, x, t, t_next, noise)
            if keep:
                traj.append(x)
        return Run(x_mean if denoise else x, traj, {})


@dataclass(frozen=True)
class AnnealedLangevin:
    """Annealed Langevin dynamics (NCSN; Song & Ermon 2019, Algorithm 1).

    Levels are the grid times t_1 > ... > t_L (for VE on the default log-SNR grid: geometric
    noise levels σ_1 > ... > σ_L).  At level i, ``n_steps_each`` steps of
    x' = x + (α_i/2) s(x, t_i) + √α_i z with α_i = step_lr · σ_i² / σ_L².
    For VP-type SDEs the data scale m(t) also changes between levels; Langevin cannot follow it
    once σ_i is below the data's own scale, so x is rescaled by m(t_i)/m(t_{i−1}) on entering a
    level (ALD on x/m, which is exactly NCSN's algorithm for VE, where m = 1).
    ``step_lr=None`` picks ε by the NCSNv2 rule (Song & Ermon 2020, Technique 4) for the
    grid's level ratio.  With ``denoise`` a final Tweedie step x̂_0 = (x + σ_L² s)/m (1 NFE).
    """

    n_steps_each: int = 10
    step_lr: float | None = None
    default_grid: str = "log_snr"
    default_steps: int = 100
    order: float = 1.0

    def __post_init__(self):
        if not isinstance(self.n_steps_each, int) or self.n_steps_each < 1:
            raise ValueError(f"n_steps_each must be an integer >= 1, got {self.n_steps_each}")
        if self.step_lr is not None and not self.step_lr > 0:
            raise ValueError(f"step_lr must be > 0, got {self.step_lr}")

    @property
    def nfe_per_step(self) -> int:
        return self.n_steps_each

    def extra_nfe(self, denoise: bool) -> int:
        return int(denoise)

    def run(self, sde: SDE, score, x: Tensor, ts: list[float], noise, *, denoise: bool,
            keep: bool, progress: bool) -> Run:
        from .ncsn import ald_step_size

        sig = [sde.std(t) for t in ts[1:]]
        gamma = (sig[0] / sig[-1]) ** (1.0 / (len(sig) - 1)) if len(sig) > 1 else 1.0
        eps_lr = self.step_lr if self.step_lr is not None else ald_step_size(
            gamma, self.n_steps_each, sig[-1])
        traj = [x] if keep else None
        for i, (t_prev, t) in enumerate(grid_steps(ts, progress, "ald")):
            score.step = i
            ratio = sde.mean_scale(t) / sde.mean_scale(t_prev)
            if ratio != 1.0:
                x = x * ratio  # follow m(t) between levels
            alpha = eps_lr * (sde.std(t) / sig[-1]) ** 2
            for _ in range(self.n_steps_each):
                s = score(x, t)
                x = noise(x.shape, std=alpha**0.5).add_(x).add_(s, alpha=0.5 * alpha)
            if keep:
                traj.append(x)
        if denoise:
            score.step = len(ts) - 1
            x = ode.tweedie_denoise(sde, score, x, ts[-1])
        return Run(x, traj, {"step_lr": eps_lr})


@dataclass(frozen=True)
class ProbabilityFlowODE:
    """Probability-flow ODE with an adaptive Runge-Kutta solver (torchdiffeq; dopri5 = RK45).

    Integrates dx/dt = f(t) x − ½ g(t)² s(x, t) from T to eps through the grid times (the
    trajectory is reported there); with ``denoise`` a final Tweedie step (1 NFE).
    The batch shares one step size (torchdiffeq's error norm is over the whole batch).
    Reference: Song et al. 2021, §4.3 and Appendix D.
    """

    rtol: float = 1e-5
    atol: float = 1e-5
    solver: str = "dopri5"
    options: dict = field(default_factory=dict)
    default_grid: str = "uniform"
    default_steps: int = 1
    order: float = 5.0
    nfe_per_step: ClassVar[None] = None

    def __post_init__(self):
        if not (self.rtol > 0 and self.atol > 0):
            raise ValueError(f"rtol and atol must be > 0, got rtol={self.rtol}, atol={self.atol}")

    def extra_nfe(self, denoise: bool) -> int:
        return int(denoise)

    def run(self, sde: SDE, score, x: Tensor, ts: list[float], noise, *, denoise: bool,
            keep: bool, progress: bool) -> Run:
        grid = torch.tensor(ts, dtype=torch.float64)
        ys, stats = ode.solve_adaptive(sde, score, x, grid, rtol=self.rtol, atol=self.atol,
                                       method=self.solver, options=self.options)
        x = ys[-1]
        if denoise:
            x = ode.tweedie_denoise(sde, score, x, ts[-1])
        return Run(x, list(ys) if keep else None, stats)


@dataclass(frozen=True)
class FixedStepODE:
    """Probability-flow ODE on the grid with a fixed-step method: ``euler`` (order 1, 1 NFE
    per step) or ``heun`` (order 2, 2 NFE per step); with ``denoise`` a final Tweedie step."""

    method: str = "heun"
    default_grid: str = "uniform"
    default_steps: int = 100
    _METHODS: ClassVar[dict] = {"euler": (ode.euler_step, 1, 1.0), "heun": (ode.heun_step, 2, 2.0)}

    def __post_init__(self):
        if self.method not in self._METHODS:
            raise ValueError(f"unknown ODE method {self.method!r}; valid choices: "
                             f"{', '.join(self._METHODS)}")

    @property
    def nfe_per_step(self) -> int:
        return self._METHODS[self.method][1]

    @property
    def order(self) -> float:
        return self._METHODS[self.method][2]

    def extra_nfe(self, denoise: bool) -> int:
        return int(denoise)

    def run(self, sde: SDE, score, x: Tensor, ts: list[float], noise, *, denoise: bool,
            keep: bool, progress: bool) -> Run:
        step = self._METHODS[self.method][0]
        traj = [x] if keep else None
        for i, (t, t_next) in enumerate(grid_steps(ts, progress, f"ode_{self.method}")):
            score.step = i
            x, _ = step(sde, score, x, t, t_next)
            if keep:
                traj.append(x)
        if denoise:
            score.step = len(ts) - 1
            x = ode.tweedie_denoise(sde, score, x, ts[-1])
        return Run(x, traj, {})
