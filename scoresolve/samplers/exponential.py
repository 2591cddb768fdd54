"""Exponential integrators in the half log-SNR λ = log(m/σ) with the data prediction x̂_0:
DDIM (η-family), DPM-Solver++ single-step 2S, multistep 2M/3M and the SDE variant 2M-SDE.

With h = λ_{i+1} − λ_i > 0 every update is
    x_{i+1} = (σ_{i+1}/σ_i) e^{−ηh} x_i + m_{i+1} Σ_j w_j x̂_0(x_j, t_j) [+ σ_{i+1} √(1 − e^{−2ηh}) z],
the weights w_j integrating ρ e^{−ρ(h−u)} (ρ = 1 + η) against the polynomial through past
data predictions.  All weights are Python floats computed from the grid.
Reference: Song et al. 2021 (DDIM); Lu et al. 2022a (DPM-Solver), 2022b (DPM-Solver++).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from .._compat import renamed
from ..options import option
from ..protocol import Context, SamplerBase, State
from ._common import Schedule, exp_weights, lincomb, scaled_denoised, schedule

__all__ = ["DDIM", "DPMSolver2S", "Multistep", "DPMSolverMultistep", "DPMSolverSDE", "step_orders",
           "multistep_weights"]


def step_orders(n_steps: int, order: int, lower_order_final: bool | str, denoise: bool = True) -> list[int]:
    """Per-step order of a multistep method: warm-up min(order, i+1); with ``lower_order_final``
    and fewer than 15 steps the last steps also drop to min(order, n − i) (Lu et al. 2022b,
    §3.3: the last λ-steps of short time-uniform grids are long, and high orders are unstable
    there).  ``lower_order_final="diffusers"`` counts the final x̂_0 (``denoise``) as the last of
    n + 1 steps, as diffusers and k-diffusion do, so order 2 lowers no grid step."""
    ks = [min(order, i + 1) for i in range(n_steps)]
    n = n_steps + 1 if lower_order_final == "diffusers" and denoise else n_steps
    if lower_order_final and n < 15:
        ks = [min(k, n - i) for i, k in enumerate(ks)]
    return ks


def multistep_weights(sc, i: int, k: int, rate: float = 1.0, variant: str = "exact") -> list[float]:
    """Weights of the stored m_{i−j} x̂_0(x_{i−j}), j < k (newest first), in step i of the k-step
    exponential Adams-Bashforth method: m_{i+1} w_j / m_{i−j} with w_j = ∫_0^h ρ e^{−ρ(h−u)} L_j(u) du
    (L_j the Lagrange basis on the past λ's; ρ = ``rate``).  ``variant="midpoint"`` with k = 2 gives
    the published DPM-Solver++(2M) weights (1 − e^{−h})·(1 + 1/(2r), −1/(2r)), r = h_{i−1}/h."""
    h = sc.lam[i + 1] - sc.lam[i]
    if variant == "midpoint" and k == 2:
        w0 = -math.expm1(-rate * h)
        half_r = 0.5 * h / (sc.lam[i] - sc.lam[i - 1])
        w = [w0 * (1 + half_r), -w0 * half_r]
    else:
        w = exp_weights(h, [sc.lam[i - j] - sc.lam[i] for j in range(k)], rate)
    return [sc.alpha[i + 1] * wj / sc.alpha[i - j] for j, wj in enumerate(w)]


def _times(values) -> tuple[float, ...]:
    """A sequence or 1-d tensor of times as float64 numbers (checked finite)."""
    try:
        times = tuple(float(v) for v in torch.as_tensor(values, dtype=torch.float64).flatten())
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"step_to must be a sequence or 1-d tensor of times, got {values!r}") from err
    if not all(math.isfinite(v) for v in times):
        raise ValueError(f"step_to must be finite times, got {times}")
    return times


@dataclass(frozen=True)
class DDIM(SamplerBase):
    """DDIM, the first-order exponential integrator, with the stochastic η-family.

    c = η σ_{i+1} √(1 − e^{−2h}) (the posterior std for η = 1) and
    x_{i+1} = m_{i+1} x̂_0 + √(σ_{i+1}² − c²) ε̂ + c z,  ε̂ = (x_i − m_i x̂_0)/σ_i.
    η = 0 is deterministic (order 1 for the probability-flow ODE); η = 1 is ancestral sampling
    (weak order 1).  With ``denoise`` an ODE run ends with a Tweedie step (1 NFE) and a
    stochastic run's last step returns its noise-free mean.

    Two options reproduce diffusers' ``DDIMScheduler`` where it is not this method (both off
    by default; with neither set the steps are those above):

    ``hooked_eps=False`` (diffusers' ``use_clipped_model_output=False``, its default): with an
    ``x0_hook`` (``clip_x0`` for ``clip_sample``, ``dynamic_threshold``) the update pairs the
    hooked x̂_0 with the model's own ε̂ = −σ_i s_model instead of the ε̂ above, re-derived from the
    hooked x̂_0 (True, = ``use_clipped_model_output=True``).  Without a hook it changes nothing.

    ``step_to``: t'_i, the time step i lands on.  Step i evaluates at t_i, forms the update
    above with m, σ, λ of t'_i in place of those of t_{i+1}, and calls the result the state at
    t_{i+1}: a relabelling.  This is diffusers' DDIM, which steps from timestep τ_i to
    τ_i − N//n but evaluates the model next at τ_{i+1} (they differ for "linspace", and for
    "trailing" when n does not divide N); ``schedules.ddim_step_to`` computes them.  Where
    t'_i ≠ t_{i+1} this is DDIM on no grid: each step integrates from t_i to t'_i, then the
    state moves unchanged to t_{i+1}, a local error of order |t'_i − t_{i+1}| rather than h²
    (for diffusers up to a timestep or more per step, whatever n).  Use it to reproduce diffusers;
    without it DDIM is the consistent solver.
    One time per score evaluation: len(grid) − 1 steps and, with ``denoise`` (η = 0), one more
    for the final evaluation at grid[-1]: 0 (m = 1, diffusers' ᾱ = 1) gives the final x̂_0, as
    without step_to; a positive time a last DDIM step to it (diffusers' ``set_alpha_to_one=False``,
    or a last timestep τ ≥ N//n).  Each t'_i must lie in (0, t_i] (the last one in [0, t_i]).
    Reference: Song, Meng & Ermon 2021, "Denoising Diffusion Implicit Models", eq. 12 and 16;
    diffusers ``DDIMScheduler.step``.
    """

    eta: float = option(0.0, within="[0, 1]")
    hooked_eps: bool = option(True, choices=(True, False))
    step_to: Sequence[float] | Tensor | None = None
    tail_sigma: float | None = option(0.01, within="(0, inf)", allow_none=True)
    default_grid: str = "log_snr"
    default_steps: int = 50
    nfe_per_step: ClassVar[int] = 1
    order: ClassVar[float] = 1.0

    @property
    def stochastic(self) -> bool:
        return self.eta > 0

    @property
    def denoise_with(self) -> str:
        return "none" if self.eta > 0 else "tweedie"

    def prepare(self, ctx: Context, ts: list[float]):
        """(schedule on the grid, schedule at the landing time of each step): the next grid
        time, or ``step_to`` (with one more entry when the final evaluation steps to t' > 0)."""
        sc = schedule(ctx.sde, ts)
        if self.step_to is None:
            return sc, Schedule(sc.t[1:], sc.alpha[1:], sc.sigma[1:], sc.lam[1:])
        step_to = _times(self.step_to)
        steps, n = len(ts) - 1, len(ts) - 1 + self.extra_nfe(ctx.denoise)
        if len(step_to) != n:
            final = " and the final x̂_0 evaluation at grid[-1] (denoise=True)" if n > steps else ""
            raise ValueError(f"step_to must hold one time per score evaluation: {n} (the {steps} grid steps"
                             f"{final}), got {len(step_to)}")
        for i, (t, t_land) in enumerate(zip(ts, step_to)):
            if not (0 <= t_land <= t and (t_land > 0 or i == steps)):
                within = "[0, " if i == steps else "(0, "
                raise ValueError(f"step_to[{i}] = {t_land} must lie in {within}{t}] (step {i} starts at grid[{i}] "
                                 f"= {t} and lands at or below it)")
        land = step_to if step_to[-1] > 0 else step_to[:steps]
        return sc, schedule(ctx.sde, list(land))

    def _update(self, ctx: Context, x, t: float, sc: Schedule, land: Schedule, i: int, noise: bool):
        """The update from x at t = grid[i] to the landing time land.t[i] (one evaluation)."""
        h = land.lam[i] - sc.lam[i]
        # keep-fraction of ε̂: q = √(1 − η²(1 − e^{−2h})); x̂_0 weight m'(1 − e^{−h} q), stably
        logq = 0.5 * math.log1p(-(self.eta**2) * -math.expm1(-2 * h))
        a = land.sigma[i] / sc.sigma[i] * math.exp(logq)
        b = -land.alpha[i] * math.expm1(logq - h)
        s = ctx.score(x, t)
        raw = None if self.hooked_eps else getattr(ctx.score, "raw", None)
        if raw is None:  # x' = a x + b x̂_0 with x̂_0 = (x + σ² s)/m, as one combination of x and s
            terms = [(a + b / sc.alpha[i], x), (b * sc.sigma[i] ** 2 / sc.alpha[i], s)]
        else:  # x' = m' x̂_0 + σ' q ε̂ with the hooked x̂_0 = (x + σ² s)/m and the model's ε̂ = −σ s_raw
            terms = [(land.alpha[i] / sc.alpha[i], x), (land.alpha[i] * sc.sigma[i] ** 2 / sc.alpha[i], s),
                     (-a * sc.sigma[i] ** 2, raw)]
        if noise:
            c = self.eta * land.sigma[i] * math.sqrt(-math.expm1(-2 * h))
            return lincomb(terms, into=ctx.noise(x.shape, std=c))
        return lincomb(terms)  # ODE, or a stochastic run's last step returning its noise-free mean

    def step(self, ctx: Context, state: State, t: float, t_next: float) -> State:
        (sc, land), i = state.memory, state.i
        noise = self.eta > 0 and not (ctx.denoise and i == len(sc.t) - 2)
        return state.advance(ctx.settle(self._update(ctx, state.x, t, sc, land, i, noise), t_next), t_next)

    def finish(self, ctx: Context, state: State, denoise: bool) -> Tensor:
        sc, land = state.memory
        if not (denoise and len(land.t) == len(sc.t)):  # the final x̂_0 (or no final evaluation)
            return super().finish(ctx, state, denoise)
        x = self._update(ctx, state.x, state.t, sc, land, len(sc.t) - 1, False)  # a last step to step_to[-1] > 0
        return x if ctx.final is None else ctx.final(x)


@dataclass(frozen=True)
class DPMSolver2S(SamplerBase):
    """DPM-Solver++(2S): single-step second order in data-prediction form, 2 NFE per step.

    With the intermediate λ_s = λ_i + r h (r = ½ by default, t_s = t(λ_s)):
    u = (σ_s/σ_i) x_i + m_s (1 − e^{−rh}) x̂_0(x_i);
    x_{i+1} = (σ_{i+1}/σ_i) x_i + m_{i+1} (1 − e^{−h}) [(1 − 1/(2r)) x̂_0(x_i) + 1/(2r) x̂_0(u, t_s)].
    Reference: Lu et al. 2022b, "DPM-Solver++", Algorithm 1.
    """

    r: float = option(0.5, within="(0, 1)")
    tail_sigma: float | None = option(0.01, within="(0, inf)", allow_none=True)
    default_grid: str = "log_snr"
    default_steps: int = 10
    nfe_per_step: ClassVar[int] = 2
    order: ClassVar[float] = 2.0

    def prepare(self, ctx: Context, ts: list[float]):
        return schedule(ctx.sde, ts)

    def step(self, ctx: Context, state: State, t: float, t_next: float) -> State:
        sc, i, x, sde = state.memory, state.i, state.x, ctx.sde
        h = sc.lam[i + 1] - sc.lam[i]
        t_s = float(sde.t_from_log_snr(2.0 * (sc.lam[i] + self.r * h)))
        a_s, s_s = sde.marginal(t_s)
        d0 = scaled_denoised(ctx.score, x, t, sc.sigma[i])  # m_i x̂_0(x_i)
        u = lincomb([(s_s / sc.sigma[i], x), (-a_s * math.expm1(-self.r * h) / sc.alpha[i], d0)])
        u = ctx.settle(u, t_s)
        s_u = ctx.score(u, t_s)
        w = -sc.alpha[i + 1] * math.expm1(-h)
        c = 0.5 / self.r
        # x_{i+1} = (σ'/σ_i) x + w (1 − c) x̂_0(x_i) + w c (u + σ_s² s_u)/m_s, accumulated into u
        x = lincomb([(s_s**2, s_u), (sc.sigma[i + 1] / sc.sigma[i] * a_s / (w * c), x),
                     (a_s * (1 - c) / (c * sc.alpha[i]), d0)], into=u).mul_(w * c / a_s)
        return state.advance(ctx.settle(x, t_next), t_next)


@dataclass(frozen=True)
class Multistep(SamplerBase):
    """Options and state shared by the multistep methods (DPM-Solver++ kM and its SDE variant,
    UniPC): ``solver_order`` past data predictions at most, fewer in the first steps and, with
    ``lower_order_final``, in the last ones (``step_orders``); 1 NFE per step.  The state's
    memory is (schedule, per-step orders, history of m x̂_0, newest first).
    ``tail_sigma`` (ODE samplers here, DDIM and DPM-Solver++(2S) too): where a generated grid would
    end below σ̃ = σ/m = tail_sigma (sub-VP's default end, σ̃ ≈ 1e-4), it ends at tail_sigma and
    ``protocol.tail_step`` (no evaluation: the last one's m·s held) carries the samples to eps; VP's and
    VE's default ends lie above 0.01, and the peers' reproductions keep their grids (KarrasSDE,
    DiscreteVPSDE, ``lower_order_final="diffusers"``, DDIM's ``step_to``).  None: the grid to eps."""

    solver_order: int = 2
    lower_order_final: bool | str = option(True, choices=(True, False, "diffusers"))
    tail_sigma: float | None = option(0.01, within="(0, inf)", allow_none=True)
    default_grid: str = "log_snr"
    default_steps: int = 20
    nfe_per_step: ClassVar[int] = 1

    def prepare(self, ctx: Context, ts: list[float]):
        ks = step_orders(len(ts) - 1, self.solver_order, self.lower_order_final, ctx.denoise)
        return schedule(ctx.sde, ts), ks, []


@renamed(order="solver_order")
@dataclass(frozen=True)
class DPMSolverMultistep(Multistep):
    """DPM-Solver++(kM): multistep exponential Adams-Bashforth in λ on x̂_0, 1 NFE per step.

    x_{i+1} = (σ_{i+1}/σ_i) x_i + m_{i+1} Σ_{j<k} w_j x̂_0(x_{i−j}), w_j = ∫_0^h e^{−(h−u)} L_j(u) du
    with L_j the Lagrange basis on the past λ's, so any grid spacing is handled exactly.
    ``variant="midpoint"`` with order 2 uses the published 2M weights (1 − e^{−h})·(1 + 1/(2r),
    −1/(2r)); "exact" uses the integrals above.  (The widely copied 3M code weights the
    second difference by half its Taylor value, which makes it second order; ours is third.)
    Lower order in the first steps, and in the last ones for < 15 steps (``lower_order_final``).
    Reference: Lu et al. 2022b, "DPM-Solver++", Algorithm 2 and Appendix B.
    """

    solver_order: int = option(2, choices=(1, 2, 3, 4))
    variant: str = option("midpoint", choices=("midpoint", "exact"))

    @property
    def order(self) -> float:
        return float(self.solver_order)

    def step(self, ctx: Context, state: State, t: float, t_next: float) -> State:
        (sc, ks, hist), i, x = state.memory, state.i, state.x
        hist[:] = [scaled_denoised(ctx.score, x, t, sc.sigma[i])] + hist[: self.solver_order - 1]  # m x̂_0, newest first
        w = multistep_weights(sc, i, ks[i], 1.0, self.variant)
        x = lincomb([(sc.sigma[i + 1] / sc.sigma[i], x)] + list(zip(w, hist)))
        return state.advance(ctx.settle(x, t_next), t_next)


@dataclass(frozen=True)
class DPMSolverSDE(Multistep):
    """SDE-DPM-Solver++(2M): the reverse-SDE family η ∈ (0, 1] (η = 1 is the reverse SDE).

    x_{i+1} = (σ_{i+1}/σ_i) e^{−ηh} x_i + m_{i+1} [w_0 x̂_0(x_i) + w_1 x̂_0(x_{i−1})]
              + σ_{i+1} √(1 − e^{−2ηh}) z,
    w the exact integrals of (1+η) e^{−(1+η)(h−u)} against the linear interpolant in λ.
    First step first order.  With ``denoise`` the last step's noise-free mean is returned.
    Reference: Lu et al. 2022b, "DPM-Solver++", Appendix B (SDE-DPM-Solver++(2M)).
    """

    solver_order: int = option(2, choices=(1, 2))
    default_steps: int = 25
    eta: float = option(1.0, within="(0, 1]")
    tail_sigma: None = None  # a reverse-SDE sampler: no deterministic tail
    denoise_with: ClassVar[str] = "none"
    stochastic: ClassVar[bool] = True

    @property
    def order(self) -> float:
        """Weak order, as measured on Gaussian targets (linear score, exact output moments):
        2 with the history term, 1 without.  For nonlinear scores no proof is known to us."""
        return float(self.solver_order)

    def step(self, ctx: Context, state: State, t: float, t_next: float) -> State:
        (sc, ks, hist), i, x = state.memory, state.i, state.x
        h = sc.lam[i + 1] - sc.lam[i]
        hist[:] = [scaled_denoised(ctx.score, x, t, sc.sigma[i])] + hist[: self.solver_order - 1]
        w = multistep_weights(sc, i, ks[i], 1.0 + self.eta, "exact")
        terms = [(sc.sigma[i + 1] / sc.sigma[i] * math.exp(-self.eta * h), x)] + list(zip(w, hist))
        if ctx.denoise and i == len(ks) - 1:  # the last step's noise-free mean
            x = lincomb(terms)
        else:
            c = sc.sigma[i + 1] * math.sqrt(-math.expm1(-2 * self.eta * h))
            x = lincomb(terms, into=ctx.noise(x.shape, std=c))
        return state.advance(ctx.settle(x, t_next), t_next)
