"""Predictors: one reverse-time step t -> t_next (t_next < t), as pure functions.

Signature: ``predictor(sde, score, x, t, t_next, noise) -> Step(x, x_mean)`` with ``t``,
``t_next`` floats, ``score(x, t)`` the (counted) score, ``noise(shape, std=1.0)`` a fresh
N(0, std²) draw.  Coefficients come from the SDE's continuous marginal through
``sde.transition(t_next, t) = (a, v)``, so every predictor is valid on any grid and step count.
Reference: Song et al. 2021, §4.1-4.2 and Appendix E-F.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from .sde import SDE

__all__ = ["Step", "euler_maruyama", "reverse_diffusion", "ancestral", "none", "PREDICTORS"]


class Step(NamedTuple):
    x: Tensor
    x_mean: Tensor


def euler_maruyama(sde: SDE, score, x: Tensor, t: float, t_next: float, noise) -> Step:
    """Euler-Maruyama on the reverse SDE, dt = t_next − t < 0:
    x' = x + [f(t) x − g(t)² s(x, t)] dt + g(t) √|dt| z.   Weak order 1, strong order ½."""
    dt = t_next - t
    s = score(x, t)
    f, g = sde.drift_coef(t), sde.diffusion(t)
    x_mean = torch.mul(x, 1.0 + f * dt).add_(s, alpha=-g * g * dt)
    return Step(noise(x.shape, std=g * math.sqrt(-dt)).add_(x_mean), x_mean)


def reverse_diffusion(sde: SDE, score, x: Tensor, t: float, t_next: float, noise) -> Step:
    """Reverse-diffusion predictor: reverse the forward discretisation x_t = a x_{t'} + √v z,
    i.e. x' = x − (a − 1) x + v s(x, t) + √v z with (a, v) the exact transition t' -> t.
    Reference: Song et al. 2021, eq. 46 (Appendix E)."""
    a, v = sde.transition(t_next, t)
    s = score(x, t)
    x_mean = torch.mul(x, 2.0 - a).add_(s, alpha=v)
    return Step(noise(x.shape, std=math.sqrt(v)).add_(x_mean), x_mean)


def ancestral(sde: SDE, score, x: Tensor, t: float, t_next: float, noise) -> Step:
    """Ancestral sampling from the Gaussian posterior q(x_{t'} | x_t, x̂_0) with Tweedie's x̂_0:
    x' = (x + v s(x, t)) / a + σ(t') √(v) / σ(t) z.  For VP this is DDPM (Ho et al. 2020, with
    the posterior variance β̃), for VE the SMLD sampler (Song et al. 2021, eq. 47)."""
    a, v = sde.transition(t_next, t)
    s = score(x, t)
    x_mean = torch.add(x, s, alpha=v).mul_(1.0 / a)
    sd = sde.std(t_next) * math.sqrt(v) / sde.std(t)
    return Step(noise(x.shape, std=sd).add_(x_mean), x_mean)


def none(sde: SDE, score, x: Tensor, t: float, t_next: float, noise) -> Step:
    """No predictor: the state is left as it is (corrector-only sampling)."""
    return Step(x, x)


PREDICTORS = {"euler_maruyama": euler_maruyama, "reverse_diffusion": reverse_diffusion, "ancestral": ancestral,
              "none": none}
