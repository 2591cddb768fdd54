"""UniPC with the B(h) weights of the paper and of diffusers' ``UniPCMultistepScheduler``
(``solver_type="bh1"`` / ``"bh2"``), data prediction, 1 NFE per step.

With h = λ_{i+1} − λ_i, D_j = x̂_0 at λ_j (newest D_i), r_j = (λ_{i−j} − λ_i)/h and
ΔD_j = (D_{i−j} − D_i)/r_j:
    predictor  x̃_{i+1} = (σ_{i+1}/σ_i) x_i − m_{i+1} (e^{−h} − 1) D_i − m_{i+1} B(h) Σ_j ρ^p_j ΔD_j
    corrector  x_{i+1} = (σ_{i+1}/σ_i) x_i − m_{i+1} (e^{−h} − 1) D_i
                         − m_{i+1} B(h) (Σ_j ρ^c_j ΔD_j + ρ^c_k (D_{i+1} − D_i)),  D_{i+1} = x̂_0(x̃_{i+1})
with B(h) = −h (bh1) or e^{−h} − 1 (bh2), ρ solving R ρ = g, R_{nj} = r_j^n and
g_n = n! φ_{n+1}(−h)·(−h)/B(h) (the φ-functions of −h), ρ^p = ½ for a 2-step predictor.  The
``unipc`` sampler instead integrates the Lagrange interpolant exactly; these weights agree
with it to the method's order and reproduce diffusers.  Orders: warm-up min(order, i + 1) and,
with ``lower_order_final``, min(order, N − i) counting the final x̂_0 (``denoise=True``) as
step N (diffusers' rule, applied at every step count).  The last grid step is not corrected.
diffusers' ``final_sigmas_type="sigma_min"`` (its last step to timestep 0, no x̂_0) is the grid
with t(τ = 0) appended and ``denoise=False``; its "bh1" with the default
``final_sigmas_type="zero"`` returns NaN (B(h) = −h = −∞ at σ = 0), which this sampler avoids
(its final x̂_0 is the Tweedie step).
Reference: Zhao et al. 2023, "UniPC", Algorithms 2-3 and Appendix (B(h) choices);
diffusers ``UniPCMultistepScheduler.multistep_uni_p_bh_update`` / ``multistep_uni_c_bh_update``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from ..options import option
from ..protocol import Context, SamplerBase, State
from ._common import _solve, lincomb, scaled_denoised, schedule

__all__ = ["UniPCBh", "bh_weights"]


def bh_weights(h: float, rks: list[float], variant: str) -> tuple[float, list[float], list[float]]:
    """(B(h), ρ^p, ρ^c) for one step with the past ratios ``rks`` (k − 1 of them; r = 1 is added)."""
    hh = -h
    b_h = hh if variant == "bh1" else math.expm1(hh)
    r = list(rks) + [1.0]
    k = len(r)
    g, h_phi_k, fact = [], math.expm1(hh) / hh - 1.0, 1
    for n in range(1, k + 1):
        g.append(h_phi_k * fact / b_h)
        fact *= n + 1
        h_phi_k = h_phi_k / hh - 1.0 / fact
    mat = [[rj ** (n - 1) for rj in r] for n in range(1, k + 1)]
    if k == 1:
        rho_p, rho_c = [], [0.5]
    else:
        rho_p = [0.5] if k == 2 else _solve([row[:-1] for row in mat[:-1]], g[:-1])
        rho_c = _solve(mat, g)
    return b_h, rho_p, rho_c


@dataclass(frozen=True)
class UniPCBh(SamplerBase):
    """UniP-p / UniC-p with B(h) weights (``solver_type`` "bh1" or "bh2"; diffusers' default is
    bh2 with ``solver_order=2``), 1 NFE per step, order ``solver_order + 1``; see the module doc."""

    solver_order: int = option(2, choices=(1, 2, 3))
    solver_type: str = option("bh2", choices=("bh1", "bh2"))
    lower_order_final: bool = True
    default_grid: str = "log_snr"
    default_steps: int = 20
    nfe_per_step: ClassVar[int] = 1
    denoise_with: ClassVar[str] = "step"  # with lower_order_final the final x̂_0 counts as a step

    @property
    def order(self) -> float:
        return float(self.solver_order + 1)

    def init(self, ctx: Context, x: Tensor, ts: list[float]) -> State:
        sc = schedule(ctx.sde, ts)
        x = ctx.settle(x, ts[0])
        n = len(ts) if ctx.denoise else len(ts) - 1  # diffusers' step count: the final x̂_0 is a step
        ks = [min(self.solver_order, i + 1, n - i if self.lower_order_final else self.solver_order)
              for i in range(len(ts) - 1)]
        d0 = scaled_denoised(ctx.score, x, ts[0], sc.sigma[0])  # m_0 D_0: the 1/m_j go into the weights
        return State(x, ts[0], memory=(sc, ks, [d0]))

    def step(self, ctx: Context, state: State, t: float, t_next: float) -> State:
        (sc, ks, hist), i, x = state.memory, state.i, state.x  # hist: m_j D_j at λ_i, λ_{i−1}, ...
        k, h = ks[i], sc.lam[i + 1] - sc.lam[i]
        rks = [(sc.lam[i - j] - sc.lam[i]) / h for j in range(1, k)]
        b_h, rho_p, rho_c = bh_weights(h, rks, self.solver_type)
        a, m1 = sc.sigma[i + 1] / sc.sigma[i], sc.alpha[i + 1]
        c0 = -m1 * math.expm1(-h)
        # Σ_j ρ_j ΔD_j = Σ_j ρ_j (D_{i−j} − D_i)/r_j, as weights on D_i and the D_{i−j}
        wp = [-m1 * b_h * rho / r for rho, r in zip(rho_p, rks)]
        x_pred = lincomb([(a, x), ((c0 - sum(wp)) / sc.alpha[i], hist[0])]
                         + [(w / sc.alpha[i - j - 1], hist[j + 1]) for j, w in enumerate(wp)])
        if i + 1 == len(ks):  # the last step is not corrected
            return state.advance(ctx.settle(x_pred, t_next), t_next)
        d_next = scaled_denoised(ctx.score, ctx.settle(x_pred, t_next), t_next, sc.sigma[i + 1])
        wc = [-m1 * b_h * rho / r for rho, r in zip(rho_c[:-1], rks)]
        wl = -m1 * b_h * rho_c[-1]
        # corrector = predictor + its change of weights, accumulated into x̃ (its evaluation has returned)
        x = lincomb([(wl / m1, d_next), ((sum(wp) - sum(wc) - wl) / sc.alpha[i], hist[0])]
                    + [((c - p) / sc.alpha[i - j - 1], hist[j + 1]) for j, (c, p) in enumerate(zip(wc, wp))],
                    into=x_pred)
        hist[:] = [d_next] + hist[: self.solver_order]
        return state.advance(ctx.settle(x, t_next), t_next)
