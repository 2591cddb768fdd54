"""Correctors: MCMC steps at a fixed time t that move x towards p_t, as pure functions.

Signature: ``corrector(sde, score, x, t, noise, *, snr, n_steps) -> Step(x, x_mean)``.
Reference: Song et al. 2021, Algorithms 4-5 and Appendix G.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .predictors import Step
from .sde import SDE, append_dims

__all__ = ["langevin", "annealed_langevin", "none", "CORRECTORS"]


def _per_sample_norm(v: Tensor) -> Tensor:
    return torch.linalg.vector_norm(v.flatten(1), dim=1)


def langevin(
    sde: SDE, score, x: Tensor, t: float, noise, *, snr: float, n_steps: int = 1,
    norm: str = "batch",
) -> Step:
    """Langevin MCMC with the signal-to-noise step rule:
    ε = 2 (snr ‖z‖ / ‖s(x, t)‖)²,  x' = x + ε s(x, t) + √(2ε) z.

    ``norm="batch"`` (default, as the reference code) averages ‖z‖ and ‖s‖ over the batch;
    ``norm="sample"`` uses each sample's own norms, so a sample never depends on its batch
    mates.  The per-sample ratio ‖z‖²/‖s‖² is F(d, d)-distributed for a Gaussian and
    heavy-tailed in low dimension (infinite mean for d ≤ 2): samples that sit near a mode get
    huge steps.  Measured on the 2-D 8-ring (200 steps) the per-sample rule leaves the
    per-component W2 at 100× its noise floor and at 1.6× on a 16-d mixture, against 1.0× for
    the batch rule, so the batch rule is the default; use "sample" for high-dimensional data
    (images) or when batch invariance matters more.
    (The reference also scales ε by α_i = 1 − β_i of its N-step VP table; that factor tends to
    1 as N grows and is 1 here, so the rule does not depend on a step count.)
    Reference: Song et al. 2021, Algorithm 4.
    """
    if norm not in ("batch", "sample"):
        raise ValueError(f"norm must be 'batch' or 'sample', got {norm!r}")
    x_mean = x
    for _ in range(n_steps):
        s = score(x, t)
        z = noise(x.shape)
        gn, zn = _per_sample_norm(s), _per_sample_norm(z)
        if norm == "batch":
            gn, zn = gn.mean().expand_as(gn), zn.mean().expand_as(zn)
        step = 2.0 * (snr * zn / gn.clamp_min(torch.finfo(gn.dtype).tiny)) ** 2
        step = append_dims(step, x.ndim)
        x_mean = torch.addcmul(x, step, s)
        x = z.mul_((2.0 * step).sqrt()).add_(x_mean)
    return Step(x, x_mean)


def annealed_langevin(
    sde: SDE, score, x: Tensor, t: float, noise, *, snr: float, n_steps: int = 1,
    norm: str = "batch",
) -> Step:
    """Annealed Langevin step with the step tied to the noise level:
    ε = 2 (snr σ(t))²,  x' = x + ε s(x, t) + √(2ε) z.
    Reference: Song et al. 2021, Appendix G (AnnealedLangevinDynamics corrector)."""
    step = 2.0 * (snr * sde.std(t)) ** 2
    x_mean = x
    for _ in range(n_steps):
        s = score(x, t)
        x_mean = torch.add(x, s, alpha=step)
        x = noise(x.shape, std=math.sqrt(2.0 * step)).add_(x_mean)
    return Step(x, x_mean)


def none(sde: SDE, score, x: Tensor, t: float, noise, *, snr: float = 0.0, n_steps: int = 0,
         norm: str = "batch") -> Step:
    """No corrector."""
    return Step(x, x)


CORRECTORS = {"langevin": langevin, "annealed_langevin": annealed_langevin, "none": none}
