"""The sampler protocol: what every sampler declares, the state it advances, and the context
(SDE, counted score, noise, hooks) its steps read.

A sampler builds its state once (``init``) and advances it one grid interval at a time
(``step(ctx, state, t, t_next) -> state``); ``finish`` turns the last state into samples (the
final denoising).  Adaptive samplers (``nfe_per_step is None``) have the same shape, and in
addition expose one *proposed* step at a time (``attempt``; accepted or rejected, per sample
where the solver has a step per sample) and ``reached``, so the one loop in ``loop.py`` can
report progress as the time reached, bound the number of attempts and call back on acceptance.
The loop owns everything else: grid iteration, trajectory, progress bar, callbacks, NFE
bookkeeping.  Driving a sampler by hand is the same three calls::

    ctx, state, ts = scoresolve.start(score_fn, sde, shape, "dpmpp_2m", steps=20, generator=g)
    for t, t_next in zip(ts[:-1], ts[1:]):
        state = sampler.step(ctx, state, t, t_next)     # state.x, state.x0 to inspect or edit
    x = sampler.finish(ctx, state, denoise=True)

Samplers are frozen dataclasses holding options only; everything that changes during a run
lives in ``State`` (its ``memory`` holds what a method keeps between steps: multistep history,
per-sample step sizes, ...).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import Tensor

from .options import check_options
from .sde import SDE, append_dims

__all__ = ["State", "Context", "Sampler", "AdaptiveSampler", "SamplerBase", "tweedie"]


@dataclass(eq=False)
class State:
    """What a sampler carries from one step to the next.

    Attributes:
        x: (B, ...) the state at time ``t``.
        t: time reached (float; a (B,) float64 tensor for per-sample adaptive solvers).
        i: grid steps taken (proposed steps for adaptive solvers).
        x_mean: the noise-free mean of the last stochastic step (``denoise`` returns it).
        memory: whatever the method keeps between steps (history, coefficients, step sizes).
        accepted: for adaptive solvers, whether the last proposal was accepted (a (B,) bool
            tensor for per-sample solvers; rows not running are False).
        stats: statistics the method reports in ``SampleResult.stats``.
    """

    x: Tensor
    t: float | Tensor
    i: int = 0
    x_mean: Tensor | None = None
    memory: Any = None
    accepted: bool | Tensor = True
    stats: dict = field(default_factory=dict)

    def advance(self, x: Tensor, t: float | Tensor, x_mean: Tensor | None = None) -> State:
        """Record one step: the new state x at time t (and its noise-free mean)."""
        self.x, self.t, self.x_mean = x, t, x_mean
        self.i += 1
        return self


@dataclass(eq=False)
class Context:
    """What every step reads: the SDE, the (counted) score, the noise source and the hooks.

    Attributes:
        sde: the forward SDE.
        score: the score, called as ``score(x, t)`` with t a float or a (B,) tensor; a
            ``CountingScore`` (possibly behind an x̂₀ hook) when built by ``sample``/``start``.
        noise: ``noise(shape, std=1.0)`` gives a fresh N(0, std²) tensor the caller owns.
        denoise: whether the run ends with the final denoising (a stochastic sampler's last
            step then computes only its noise-free mean).
        post_step: ``hook(x, t) -> x`` applied to every state a sampler forms at time t
            (after each predictor and each corrector sub-step; projections for inverse problems).
        final: ``hook(x) -> x`` applied to the samples after the final denoising.
        rows: the batch rows the current evaluation covers (per-sample adaptive solvers
            evaluate the running rows only; None = every row), for hooks with per-row data.
        tail: (t_c, t_end) when the grid stops at t_c short of the run's end t_end and ``finish``
            carries the samples there by one score-form step (``tail_step``), else None.
    """

    sde: SDE
    score: Callable[..., Tensor]
    noise: Callable[..., Tensor]
    denoise: bool = True
    post_step: Callable[[Tensor, Any], Tensor] | None = None
    final: Callable[[Tensor], Tensor] | None = None
    rows: Tensor | None = None
    tail: tuple[float, float] | None = None

    def settle(self, x: Tensor, t) -> Tensor:
        """x after the post-step hook (x itself when there is none)."""
        return x if self.post_step is None else self.post_step(x, t)


@runtime_checkable
class Sampler(Protocol):
    """A fixed-grid sampler: declares its cost and order, advances one grid interval per step.

    ``nfe_per_step``: score evaluations per grid step (None for adaptive samplers);
    ``extra_nfe(denoise)``: evaluations outside the steps (final denoising, a first
    evaluation); ``order``: weak order for SDE samplers, order for ODE samplers;
    ``default_grid`` / ``default_steps``: what ``sample`` uses when not told;
    ``stochastic``: whether the sampler draws noise (projections draw or take the mean).
    """

    nfe_per_step: int | None
    order: float
    default_grid: str
    default_steps: int
    stochastic: bool

    def extra_nfe(self, denoise: bool) -> int: ...

    def init(self, ctx: Context, x: Tensor, ts: list[float]) -> State: ...

    def step(self, ctx: Context, state: State, t: float, t_next: float) -> State: ...

    def finish(self, ctx: Context, state: State, denoise: bool) -> Tensor: ...


@runtime_checkable
class AdaptiveSampler(Sampler, Protocol):
    """An adaptive sampler: ``attempt`` proposes one step towards ``t_end`` (accepted or
    rejected, per sample where the step size is per sample) and ``reached`` tells when every
    sample has arrived at ``t_end``; ``step`` is attempts until arrival."""

    def attempt(self, ctx: Context, state: State, t_end: float) -> State: ...

    def reached(self, state: State, t_end: float) -> bool: ...


def tail_log_snr(sde: SDE, t_from: float, t_to: float, sigma: float | None) -> float | None:
    """λ_c = −log ``sigma`` when a solve from t_from down to t_to crosses σ/m = sigma (above it at
    t_from, below at t_to), where a tail step would take over; else None."""
    if sigma is None:
        return None
    lam_c = -math.log(sigma)
    return lam_c if 0.5 * sde.log_snr(t_from) < lam_c < 0.5 * sde.log_snr(t_to) else None


def tail_factors(m_c, s_c, m_e: float, s_e: float):
    """(a, c) of the tail step x_end = a (x + c s(x, t_c)) from m, σ at t_c and at the end:
    a = m_end/m_c, c = ½ (σ_c² − m_c² σ̃_end²) (σ̃ = σ/m); per-row tensors for (B,) m_c, s_c."""
    return m_e / m_c, 0.5 * (s_c * s_c - (m_c * s_e / m_e) ** 2)


def tail_step(ctx: Context, state: State) -> State:
    """The end of a run whose grid stops at t_c short of its end (``ctx.tail`` = (t_c, t_end)): one
    step of the probability-flow ODE in v = σ̃² = (σ/m)² with m·s held fixed, dx̃/dv = −s/(2m),
    x̃ = x/m:  x_end = (m_end/m_c) (x + ½ (σ_c² − m_c² σ̃_end²) s_c).  Below the data's scales m·s
    hardly moves with v (for a Gaussian of std s_d the step is exact to O((σ̃_c/s_d)⁴) with the score
    at t_c), while x̂_0 − x̃ ∝ σ̃² is exponential in λ = −log σ̃, which the exponential integrators'
    polynomials in λ extrapolate badly.  No evaluation: s_c = (m_p/m_c) s_p from the run's latest
    one (``ctx.score.last`` = (t_p, s_p), the last grid step's, at σ̃_p just above σ̃_c; m·s changes
    between them by O((σ̃_p² − σ̃_c²)/s_d²)); a score without ``last`` is evaluated at t_c (1 NFE).
    A state already at t_end is returned as is."""
    if ctx.tail is None or state.t != ctx.tail[0]:
        return state
    t_c, t_end = ctx.tail
    m_c, s_c = ctx.sde.marginal(t_c)
    a, c = tail_factors(m_c, s_c, *ctx.sde.marginal(t_end))
    last = getattr(ctx.score, "last", None)
    if last is None or last[1].shape != state.x.shape:
        x = torch.add(state.x, ctx.score(state.x, t_c), alpha=c)
    else:
        t_p, s_p = last
        if isinstance(t_p, Tensor):  # per-row times: the factor per row
            ratio = append_dims(ctx.sde.mean_scale(t_p.to(torch.float64)) / m_c, s_p.ndim).to(s_p.dtype)
            x = torch.addcmul(state.x, ratio * c, s_p)
        else:
            x = torch.add(state.x, s_p, alpha=c * float(ctx.sde.mean_scale(t_p)) / m_c)
    return state.advance(ctx.settle(x.mul_(a), t_end), t_end)


def tweedie(ctx: Context, x: Tensor, t: float) -> Tensor:
    """E[x_0 | x_t] = (x + σ(t)² s(x, t)) / m(t) (Tweedie's formula): one evaluation."""
    m, s = ctx.sde.marginal(t)
    return (x + (s * s) * ctx.score(x, t)) / m


class SamplerBase:
    """Defaults shared by the samplers (one level, no further hierarchy).

    ``denoise_with``: "tweedie" (a final Tweedie step, 1 NFE: ODE samplers, ALD), "step" (1 NFE
    like Tweedie, but the method's own last step to σ = 0, whose earlier steps may depend on
    ``denoise``: k-diffusion's LMS, diffusers' UniPC), "mean" (the last stochastic step's
    noise-free mean, no NFE), or "none".
    """

    denoise_with: ClassVar[str] = "tweedie"
    stochastic: ClassVar[bool] = False
    # why a sample depends on its batch mates even with per-sample seeds (None: it does not)
    batch_coupling: ClassVar[str | None] = None

    def __post_init__(self):
        check_options(self)

    def extra_nfe(self, denoise: bool) -> int:
        return int(denoise and self.denoise_with in ("tweedie", "step"))

    def init(self, ctx: Context, x: Tensor, ts: list[float]) -> State:
        return State(ctx.settle(x, ts[0]), ts[0], memory=self.prepare(ctx, ts))

    def prepare(self, ctx: Context, ts: list[float]) -> Any:
        """Whatever the steps precompute from the grid (coefficients); None by default."""
        return None

    def finish(self, ctx: Context, state: State, denoise: bool) -> Tensor:
        state = tail_step(ctx, state)
        x = state.x
        if denoise and self.denoise_with in ("tweedie", "step"):
            x = tweedie(ctx, x, state.t if not isinstance(state.t, Tensor) else float(state.t.max()))
        elif denoise and self.denoise_with == "mean" and state.x_mean is not None:
            x = state.x_mean
        return x if ctx.final is None else ctx.final(x)

    def run(self, sde: SDE, score, x: Tensor, ts: list[float], noise, *, denoise: bool = True,
            keep: bool = False, progress: bool = False):
        """The whole solve through the shared loop (``loop.run``), for callers that hold a
        score, a noise source and a grid themselves (tests with a basis-noise source)."""
        from .loop import run

        return run(self, Context(sde, score, noise, denoise), x, ts, keep=keep, progress=progress)


def batch_t(t: float | Tensor, x: Tensor) -> Tensor:
    """t as a (B,) tensor for x (per-sample times pass through)."""
    if isinstance(t, Tensor):
        return t.expand(x.shape[0]) if t.ndim == 0 else t
    return torch.full((x.shape[0],), t, device=x.device, dtype=torch.promote_types(x.dtype, torch.float32))
