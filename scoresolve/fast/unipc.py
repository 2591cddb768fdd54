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
from ._common import exp_weights, lincomb, scaled_denoised, schedule
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
    (an exponential Adams-Bashforth / Adams-Moulton pair in λ).  The loop never forms the
    corrected x_{i+1}: the next predictor is linear in it, so the corrector's terms are folded
    into the predictor's weights (one linear combination per step; trajectories form it).
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
        plans, fixes = _plans(sc, step_orders(n, self.predictor_order, self.lower_order_final))
        traj = [x] if keep else None
        score.step = 0
        hist = {0: scaled_denoised(score, x, ts[0], sc.sigma[0])}  # grid index l -> m_l x̂_0
        for i, (_, t_next) in enumerate(grid_steps(ts, progress, "unipc")):
            a, w = plans[i]
            x = lincomb([(a, x)] + [(c, hist[j]) for j, c in w.items()])  # the predictor x̃_{i+1}
            if i + 1 < n:
                score.step = i + 1
                hist[i + 1] = scaled_denoised(score, x, t_next, sc.sigma[i + 1])
                oldest = min(plans[i + 1][1])  # later steps need nothing older
                hist = {j: d for j, d in hist.items() if j >= oldest}
            if keep:  # the corrected state, which the loop itself never forms
                traj.append(lincomb([(1.0, x)] + [(c, hist[j]) for j, c in fixes[i].items()]))
        return Run(_finish(sde, score, x, ts, denoise), traj, {})


def _plans(sc, ks: list[int]) -> tuple[list[tuple[float, dict[int, float]]], list[dict[int, float]]]:
    """Step i as x̃_{i+1} = a x̃_i + Σ_l w_l (m_l x̂_0)_l, with the corrector folded in.

    The corrected x_{i+1} = x̃_{i+1} + Σ_l δ_l D_l (D_l = m_l x̂_0 at grid point l, evaluated at
    x̃_l; δ = corrector − predictor weights) is only ever used by the next predictor, which is
    linear in it, so its δ-terms are merged into the next predictor's weights: one combination
    per step instead of two.  Returns (a, w) per step and the δ of each step (for trajectories).
    """
    plans, fixes, pending = [], [], {}
    for i, k in enumerate(ks):
        h = sc.lam[i + 1] - sc.lam[i]
        past = [sc.lam[i - j] - sc.lam[i] for j in range(k)]
        am = sc.alpha[i + 1]
        a = sc.sigma[i + 1] / sc.sigma[i]
        wp = exp_weights(h, past)
        w = {j: a * c for j, c in pending.items()}
        for j in range(k):
            w[i - j] = w.get(i - j, 0.0) + am * wp[j] / sc.alpha[i - j]
        plans.append((a, w))
        pending = {}
        if i + 1 < len(ks):  # the last step is not corrected (its evaluation would be an extra NFE)
            wc = exp_weights(h, [h] + past)
            pending = {i + 1: wc[0] * am / sc.alpha[i + 1]}  # = wc[0]
            for j in range(k):
                pending[i - j] = am * (wc[j + 1] - wp[j]) / sc.alpha[i - j]
        fixes.append(pending)
    return plans, fixes
