"""Heun's method on the EDM form of the probability-flow ODE, with optional stochastic churn.

In the scaled variables x̃ = x/m and σ̃ = σ/m = e^{−λ} the probability-flow ODE of any linear
SDE is dx̃/dσ̃ = (x̃ − x̂_0(x, t))/σ̃ (Karras et al. 2022, eq. 4 with s(t) = 1 after scaling), so
one loop serves VP, sub-VP and VE; the grid's times are mapped to σ̃ through ``log_snr``.
Reference: Karras, Aittala, Aila & Laine 2022, "Elucidating the Design Space of
Diffusion-Based Generative Models", Algorithms 1 (Heun) and 2 (stochastic sampler).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from ..options import option
from ..protocol import Context, SamplerBase, State
from ._common import lincomb

__all__ = ["EDMHeun"]


@dataclass(frozen=True)
class EDMHeun(SamplerBase):
    """EDM Heun sampler (2 NFE per step) on any grid (default Karras ρ = 7).

    Step i: d = (x̃ − x̂_0(x̃, σ̃_i))/σ̃_i; x̃' = x̃ + (σ̃_{i+1} − σ̃_i) d;
    x̃_{i+1} = x̃ + (σ̃_{i+1} − σ̃_i) (d + d')/2 with d' at (x̃', σ̃_{i+1}).
    With ``denoise`` the run ends with EDM's first-order last step to σ̃ = 0, an Euler step that
    equals Tweedie's x̂_0 (1 NFE).  With ``s_churn > 0`` (Algorithm 2): on σ̃_i ∈ [s_tmin, s_tmax]
    raise the noise to σ̂ = σ̃_i (1 + γ), γ = min(s_churn/N, √2 − 1) (capped at σ̃(T)), by adding
    √(σ̂² − σ̃_i²) s_noise z, then take the Heun step from σ̂.  Order 2 for the ODE; with churn
    weak order 2 as long as γ = s_churn/N (below the cap): adding the noise moves p_σ̃ to p_σ̂
    exactly, so only the Heun steps err.  (At the cap γ stays √2 − 1 as N grows and the error
    stops decreasing: keep s_churn below 0.41·N.)
    """

    s_churn: float = option(0.0, within="[0, inf)")
    s_tmin: float = option(0.0, within="[0, inf]")
    s_tmax: float = option(math.inf, within="[0, inf]")
    s_noise: float = option(1.0, within="[0, inf)")
    default_grid: str = "karras"
    default_steps: int = 12
    nfe_per_step: ClassVar[int] = 2
    order: ClassVar[float] = 2.0

    def __post_init__(self):
        super().__post_init__()
        if not self.s_tmin <= self.s_tmax:
            raise ValueError(f"need 0 <= s_tmin <= s_tmax, got {self.s_tmin}, {self.s_tmax}")

    @property
    def stochastic(self) -> bool:
        return self.s_churn > 0

    def prepare(self, ctx: Context, ts: list[float]):
        sig = [math.exp(-0.5 * ctx.sde.log_snr(t)) for t in ts]  # σ̃ = σ/m
        return sig, min(self.s_churn / (len(ts) - 1), math.sqrt(2.0) - 1.0)

    def step(self, ctx: Context, state: State, t: float, t_next: float) -> State:
        # In x itself: d = (x̃ − x̂_0)/σ̃ = −σ s(x, t) with x̃ = x/m, so with r = m_{i+1}/m_i
        # x' = r x − m_{i+1} Δσ̃ σ_i s and x_{i+1} = r x − m_{i+1} Δσ̃ (σ_i s + σ_{i+1} s')/2.
        (sig, gamma), i, x, sde = state.memory, state.i, state.x, ctx.sde
        s_cur, s_next = sig[i], sig[i + 1]
        m_cur = sde.mean_scale(t)
        if gamma > 0 and self.s_tmin <= s_cur <= self.s_tmax:
            s_hat = min(s_cur * (1.0 + gamma), sig[0])
            if s_hat > s_cur:  # churn: raise the noise level, then integrate from σ̂
                t = float(sde.t_from_log_snr(-2.0 * math.log(s_hat)))
                m_hat = sde.mean_scale(t)
                std = m_hat * math.sqrt(s_hat**2 - s_cur**2) * self.s_noise
                x = ctx.settle(lincomb([(m_hat / m_cur, x)], into=ctx.noise(x.shape, std=std)), t)
                s_cur, m_cur = s_hat, m_hat
        m_next = sde.mean_scale(t_next)
        c = m_next * (s_next - s_cur)
        s1 = ctx.score(x, t)
        x_pred = ctx.settle(lincomb([(m_next / m_cur, x), (-c * s_cur * m_cur, s1)]), t_next)
        s2 = ctx.score(x_pred, t_next)
        x = lincomb([(0.5 * c * s_cur * m_cur, s1), (-0.5 * c * s_next * m_next, s2)], into=x_pred)
        return state.advance(ctx.settle(x, t_next), t_next)
