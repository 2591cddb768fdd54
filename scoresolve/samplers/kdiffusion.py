"""k-diffusion's samplers in σ̃: linear multistep (LMS), Euler ancestral and DPM-2.

They step the probability-flow ODE of any linear SDE in the scaled variables x̃ = x/m,
σ̃ = σ/m = e^{−λ}, where it reads dx̃/dσ̃ = d = (x̃ − x̂_0)/σ̃ (EDM, eq. 4); in x itself
d = −σ s(x, t) and x = m x̃, so one loop serves VP, discrete-VP and σ (Karras) SDEs.  A
k-diffusion σ grid ends in 0; here the grid ends at its last σ > 0 and the step to σ = 0
(which needs one more evaluation) is the final denoising (``denoise=True``).
(Euler = ``DDIM`` and Heun = ``EDMHeun``: the same updates, see ``registry``.)
Reference: Crowson, k-diffusion ``sampling.py`` (sample_lms, sample_euler_ancestral,
sample_dpm_2); Karras et al. 2022 (EDM), eq. 4 and Algorithm 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from ..options import option
from ..protocol import Context, SamplerBase, State, tweedie
from ._common import lincomb

__all__ = ["LMS", "EulerAncestral", "DPM2", "lms_coefficients"]

# 4-point Gauss-Legendre on [0, 1]: exact for the (degree ≤ 3) Lagrange polynomials of order ≤ 4
_GL_X = [0.5 - 0.4305681557970263, 0.5 - 0.1699905217924281, 0.5 + 0.1699905217924281, 0.5 + 0.4305681557970263]
_GL_W = [0.1739274225687269, 0.3260725774312731, 0.3260725774312731, 0.1739274225687269]


def lms_coefficients(nodes: list[float], a: float, b: float) -> list[float]:
    """c_j = ∫_a^b L_j(σ) dσ, L_j the Lagrange basis on ``nodes`` (newest first, ≤ 4 of them).

    Computed exactly (Gauss-Legendre, 4 points); k-diffusion and diffusers integrate the same
    polynomials with ``scipy.integrate.quad`` (epsrel = 1e-4, exact for polynomials in practice).
    """
    out = []
    for j, nj in enumerate(nodes):
        acc = 0.0
        for u, w in zip(_GL_X, _GL_W):
            s = a + u * (b - a)
            p = 1.0
            for k, nk in enumerate(nodes):
                if k != j:
                    p *= (s - nk) / (nj - nk)
            acc += w * p
        out.append(acc * (b - a))
    return out


def _scaled(ctx: Context, ts: list[float]) -> tuple[list[float], list[float]]:
    """σ̃(t) = exp(−½ log-SNR(t)) and m(t) at every grid time."""
    return ([math.exp(-0.5 * ctx.sde.log_snr(t)) for t in ts], [ctx.sde.mean_scale(t) for t in ts])


@dataclass(frozen=True)
class LMS(SamplerBase):
    """k-diffusion's linear multistep method in σ̃ (order ``solver_order``, default 4), 1 NFE per step.

    x̃_{i+1} = x̃_i + Σ_{j<k} c_j d_{i−j},  c_j = ∫_{σ̃_i}^{σ̃_{i+1}} L_j(σ) dσ,  d = (x̃ − x̂_0)/σ̃,
    L_j the Lagrange basis on the last k = min(i + 1, order) σ̃'s.  With ``denoise`` the run ends
    with the same step to σ̃ = 0 (1 NFE), as k-diffusion's last step.
    Reference: k-diffusion ``sample_lms`` / ``linear_multistep_coeff``; diffusers ``LMSDiscreteScheduler``.
    """

    solver_order: int = option(4, choices=(1, 2, 3, 4))
    default_grid: str = "karras"
    default_steps: int = 20
    nfe_per_step: ClassVar[int] = 1
    denoise_with: ClassVar[str] = "step"

    @property
    def order(self) -> float:
        return float(self.solver_order)

    def prepare(self, ctx: Context, ts: list[float]):
        sig, m = _scaled(ctx, ts)
        return sig, m, [ctx.sde.std(t) for t in ts], []

    def _lms(self, ctx: Context, state: State, t: float, sig_next: float, m_next: float) -> Tensor:
        (sig, m, std, ds), i, x = state.memory, state.i, state.x
        ds[:] = [ctx.score(x, t)] + ds[: self.solver_order - 1]  # scores s_j, newest first: d_j = −σ_j s_j
        k = min(i + 1, self.solver_order)
        c = lms_coefficients([sig[i - j] for j in range(k)], sig[i], sig_next)
        # x_{i+1} = m_{i+1} (x_i/m_i + Σ c_j d_j), the −σ_j of d_j folded into the weights
        return lincomb([(m_next / m[i], x)] + [(-m_next * cj * std[i - j], sj)
                                               for j, (cj, sj) in enumerate(zip(c, ds))])

    def step(self, ctx: Context, state: State, t: float, t_next: float) -> State:
        sig, m = state.memory[:2]
        x = self._lms(ctx, state, t, sig[state.i + 1], m[state.i + 1])
        return state.advance(ctx.settle(x, t_next), t_next)

    def finish(self, ctx: Context, state: State, denoise: bool) -> Tensor:
        x = self._lms(ctx, state, state.t, 0.0, 1.0) if denoise else state.x  # σ̃ = 0: x̃ = x̂_0, m = 1
        return x if ctx.final is None else ctx.final(x)


@dataclass(frozen=True)
class EulerAncestral(SamplerBase):
    """k-diffusion's Euler ancestral sampler: an Euler step in σ̃ down to σ_down, then fresh noise
    up to σ̃_{i+1}, with σ_up = min(σ̃', η √(σ̃'² (σ̃² − σ̃'²)/σ̃²)), σ_down = √(σ̃'² − σ_up²).

    x̃' = x̂_0 + σ_down (x̃ − x̂_0)/σ̃ + s_noise σ_up z.  With η = 1 this is DDIM(η = 1) (ancestral
    sampling), but every grid step draws noise and ``denoise`` ends with x̂_0 at the last σ̃
    (k-diffusion's step to σ = 0, 1 NFE).
    Reference: k-diffusion ``sample_euler_ancestral`` / ``get_ancestral_step``; Song et al. 2021 (DDIM, η).
    """

    eta: float = option(1.0, within="[0, 1]")
    s_noise: float = option(1.0, within="[0, inf)")
    default_grid: str = "karras"
    default_steps: int = 30
    nfe_per_step: ClassVar[int] = 1
    order: ClassVar[float] = 1.0
    stochastic: ClassVar[bool] = True

    def prepare(self, ctx: Context, ts: list[float]):
        return _scaled(ctx, ts)

    def step(self, ctx: Context, state: State, t: float, t_next: float) -> State:
        (sig, m), i, x = state.memory, state.i, state.x
        s0, s1 = sig[i], sig[i + 1]
        up = min(s1, self.eta * math.sqrt(s1 * s1 * (s0 * s0 - s1 * s1) / (s0 * s0)))
        down = math.sqrt(s1 * s1 - up * up)
        # x̃' = x̂_0 + (down/σ̃)(x̃ − x̂_0), with x̂_0 = x/m + σ̃ σ s (so x̃ − x̂_0 = −σ̃ σ s); x' = m' x̃'
        sigma = s0 * m[i]
        terms = [(m[i + 1] / m[i], x), (m[i + 1] * s0 * sigma * (1.0 - down / s0), ctx.score(x, t))]
        x = lincomb(terms, into=ctx.noise(x.shape, std=m[i + 1] * up * self.s_noise)) if up > 0 else lincomb(terms)
        return state.advance(ctx.settle(x, t_next), t_next)

    def finish(self, ctx: Context, state: State, denoise: bool) -> Tensor:
        x = tweedie(ctx, state.x, state.t) if denoise else state.x
        return x if ctx.final is None else ctx.final(x)


@dataclass(frozen=True)
class DPM2(SamplerBase):
    """k-diffusion's DPM-2: a second-order midpoint step in σ̃ with the midpoint at the geometric
    mean σ_mid = √(σ̃_i σ̃_{i+1}), 2 NFE per step:
    x̃_2 = x̃ + (σ_mid − σ̃_i) d(x̃, σ̃_i);  x̃' = x̃ + (σ̃_{i+1} − σ̃_i) d(x̃_2, σ_mid).
    With ``denoise`` an Euler step to σ̃ = 0 (x̂_0, 1 NFE), as k-diffusion's last step.
    Reference: k-diffusion ``sample_dpm_2`` (after Lu et al. 2022, DPM-Solver-2 in σ̃).
    """

    default_grid: str = "karras"
    default_steps: int = 15
    nfe_per_step: ClassVar[int] = 2
    order: ClassVar[float] = 2.0

    def prepare(self, ctx: Context, ts: list[float]):
        return _scaled(ctx, ts)

    def step(self, ctx: Context, state: State, t: float, t_next: float) -> State:
        (sig, m), i, x, sde = state.memory, state.i, state.x, ctx.sde
        s0, s1 = sig[i], sig[i + 1]
        s_mid = math.exp(0.5 * (math.log(s0) + math.log(s1)))
        t_mid = float(sde.t_from_log_snr(-2.0 * math.log(s_mid)))
        m_mid = sde.mean_scale(t_mid)
        # d = −σ s in x̃ units; x_2 = m_mid (x/m_i + (σ_mid − σ̃_i) d)
        x2 = lincomb([(m_mid / m[i], x), (-m_mid * (s_mid - s0) * s0 * m[i], ctx.score(x, t))])
        x2 = ctx.settle(x2, t_mid)
        s2 = ctx.score(x2, t_mid)
        x = lincomb([(m[i + 1] / m[i], x), (-m[i + 1] * (s1 - s0) * s_mid * m_mid, s2)])
        return state.advance(ctx.settle(x, t_next), t_next)
