"""UniPC-class predictor-corrector: an exponential multistep predictor and a corrector that
reuses the next step's model evaluation, so the order goes up by one at no extra NFE.

Reference: Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling
of Diffusion Models", Algorithms 1-2 (UniP-p, UniC-p); exact φ-weights as in DPM-Solver++.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from ..samplers import Run, grid_steps
from ..sde import SDE
from ._common import denoised, exp_weights, lincomb, schedule
from .exponential import _finish, step_orders

__all__ = ["UniPC"]


@dataclass(frozen=True)
class UniPC:
    """UniP-p predictor + UniC-p corrector in λ = log(m/σ) on the data prediction x̂_0.

    Step i (h = λ_{i+1} − λ_i, past data predictions D_j at λ_j, newest D_i):
      predictor  x̃_{i+1} = (σ_{i+1}/σ_i) x_i + m_{i+1} Σ_{j≤i} w_j D_j   (p past nodes)
      evaluate   D_{i+1} = x̂_0(x̃_{i+1}, t_{i+1})                          (the next step's NFE)
      corrector  x_{i+1} = (σ_{i+1}/σ_i) x_i + m_{i+1} Σ_{j≤i+1} w^c_j D_j (nodes incl. λ_{i+1})
    The next predictor starts from the corrected x_{i+1} but keeps D_{i+1} (evaluated at x̃):
    1 NFE per step, order p + 1.  The last step is not corrected (its evaluation would be an
    extra NFE).  Weights are the exact integrals of e^{−(h−u)} against the Lagrange basis
    (an exponential Adams-Bashforth / Adams-Moulton pair in λ).
    """

    predictor_order: int = 3
    lower_order_final: bool = True
    default_grid: str = "log_snr"
    default_steps: int = 20
    nfe_per_step: ClassVar[int] = 1

    def __post_init__(self):
        if self.predictor_order not in (1, 2, 3):
            raise ValueError(f"predictor_order must be 1, 2 or 3, got {self.predictor_order!r}")

    @property
    def order(self) -> float:
        return float(self.predictor_order + 1)

    def extra_nfe(self, denoise: bool) -> int:
        return int(denoise)

    def run(self, sde: SDE, score, x: Tensor, ts: list[float], noise, *, denoise: bool,
            keep: bool, progress: bool) -> Run:
        sc = schedule(sde, ts)
        n = len(ts) - 1
        ks = step_orders(n, self.predictor_order, self.lower_order_final)
        coef = []
        for i, k in enumerate(ks):
            h = sc.lam[i + 1] - sc.lam[i]
            past = [sc.lam[i - j] - sc.lam[i] for j in range(k)]
            wp = exp_weights(h, past)
            wc = exp_weights(h, [h] + past)
            am = sc.alpha[i + 1]
            coef.append((sc.sigma[i + 1] / sc.sigma[i], [am * w for w in wp], [am * w for w in wc]))
        traj = [x] if keep else None
        score.step = 0
        hist = [denoised(score, x, ts[0], sc.alpha[0], sc.sigma[0])]  # newest first
        for i, (_, t_next) in enumerate(grid_steps(ts, progress, "unipc")):
            a, wp, wc = coef[i]
            k = len(wp)
            x_pred = lincomb([(a, x)] + list(zip(wp, hist[:k])))
            if i + 1 < n:
                score.step = i + 1
                d_next = denoised(score, x_pred, t_next, sc.alpha[i + 1], sc.sigma[i + 1])
                x = lincomb([(a, x), (wc[0], d_next)] + list(zip(wc[1:], hist[:k])))
                hist = [d_next] + hist[: self.predictor_order - 1]
            else:
                x = x_pred
            if keep:
                traj.append(x)
        return Run(_finish(sde, score, x, ts, denoise), traj, {})
