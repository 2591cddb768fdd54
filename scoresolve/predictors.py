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

from .sde import SDE, SubVPSDE

__all__ = ["Step", "euler_maruyama", "reverse_diffusion", "frozen_is_stable", "ancestral", "none", "PREDICTORS"]


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


def reverse_diffusion(sde: SDE, score, x: Tensor, t: float, t_next: float, noise, *,
                      coefficients: str = "transition") -> Step:
    """Reverse-diffusion predictor: reverse the forward discretisation x_t = a x_{t'} + √v z,
    i.e. x' = x − (a − 1) x + v s(x, t) + √v z with (a, v) the exact transition t' -> t
    (``coefficients="transition"``), or the exact step of the forward SDE with f and g frozen at t,
    where the score is taken (``"frozen"``): a = e^{f(t) Δ}, v = g(t)² (e^{2 f(t) Δ} − 1) / (2 f(t)),
    Δ = t − t' (v = g(t)² Δ where f = 0: on VE this is the Euler-Maruyama step).

    On sub-VP it is the Euler-Maruyama step, as in score_sde (whose SubVPSDE has no discretisation
    of its own, so its reverse-diffusion predictor discretises by EM): the transition step measured
    about 3× further from the log-density floor there at 20-100 steps (benchmarks/classical_results.md).
    ``"stable"``: the frozen step unless it amplifies variance errors.  Where f = 0 (VE) the frozen
    step moves a state much wider than the data as x' = (1 − c) x + √(c) σ(t) z, c = g(t)² Δ / σ(t)²,
    while the marginal shrinks by r = σ(t) / σ(t'): a variance error is carried on with the factor
    ((1 − c) r)².  The transition step is taken where |1 − c| r ≥ ``FROZEN_GROWTH_LIMIT`` (1.4, set
    from measurements, not derived: on VE's default grid, σ 50 → 0.01, 10 steps give |1 − c| r = 1.64
    and the frozen step ends at 194 / 1390 × floor on a 2-mode mixture against the transition's
    52 / 165; at 11 steps, 1.19, the frozen step is ahead, 39 / 133 against 46 / 143, and with
    σ_max = 20 at 10 steps, 1.11, too; benchmarks/classical_results.md, finding 14).
    With f ≠ 0 (VP) "stable" is the frozen step.

    Reference: Song et al. 2021, eq. 46 (Appendix E)."""
    if isinstance(sde, SubVPSDE):
        return euler_maruyama(sde, score, x, t, t_next, noise)
    if coefficients == "stable":
        coefficients = "frozen" if frozen_is_stable(sde, t, t_next) else "transition"
    if coefficients == "frozen":
        d, f, g2 = t - t_next, float(sde.drift_coef(t)), float(sde.diffusion(t)) ** 2
        a, v = math.exp(f * d), (g2 * d if f == 0.0 else g2 * math.expm1(2.0 * f * d) / (2.0 * f))
    else:
        a, v = sde.transition(t_next, t)
    s = score(x, t)
    x_mean = torch.mul(x, 2.0 - a).add_(s, alpha=v)
    return Step(noise(x.shape, std=math.sqrt(v)).add_(x_mean), x_mean)


FROZEN_GROWTH_LIMIT = 1.4  # see reverse_diffusion's "stable"


def frozen_is_stable(sde: SDE, t: float, t_next: float) -> bool:
    """Whether reverse diffusion's ``coefficients="stable"`` takes the frozen step t -> t_next: always
    where f(t) ≠ 0, and where f = 0 while |1 − g(t)² Δ / σ(t)²| · σ(t) / σ(t_next) < FROZEN_GROWTH_LIMIT."""
    if float(sde.drift_coef(t)) != 0.0:
        return True
    sig, sig_next = float(sde.std(t)), float(sde.std(t_next))
    c = float(sde.diffusion(t)) ** 2 * (t - t_next) / sig**2
    return abs(1.0 - c) * sig < FROZEN_GROWTH_LIMIT * sig_next


def ancestral(sde: SDE, score, x: Tensor, t: float, t_next: float, noise, *,
              variance: float | str = 0.0) -> Step:
    """Ancestral sampling from the Gaussian posterior q(x_{t'} | x_t, x̂_0) with Tweedie's x̂_0:
    x' = (x + v s(x, t)) / a + √((1 − λ) β̃ + λ v) z,  β̃ = σ(t')² v / σ(t)².

    ``variance`` λ ∈ [0, 1] interpolates the noise variance between the posterior variance β̃
    (λ = 0: DDPM's σ² = β̃, the SMLD sampler of Song et al. 2021, eq. 47) and the transition
    variance v (λ = 1: DDPM's σ² = β, what score_sde's VP ancestral step uses).  β̃ ignores the
    uncertainty of x̂_0 and under-disperses on coarse grids, v over-disperses (a VE Gaussian at 10
    steps ends at 0.71 / 1.51 × its std, λ = ½ at 1.18).  ``"analytic"``: Analytic-DPM's variance, β̃ plus the
    uncertainty of x̂_0 carried into x_{t'},

        β̃ + v² / (a² σ(t)²) · (1 − σ(t)² E‖s‖² / d),   E‖s‖² the mean over the batch,

    from E Cov(x_0 | x_t) = σ(t)² / m(t)² · (I − σ(t)² E s sᵀ) (Tweedie, second order): no extra
    evaluation, but a sample's noise depends on its batch mates.  Measured on exact mixtures
    (benchmarks/classical_results.md, finding 15) it is the closest of the choices to both floors at
    10-20 steps on VE and VP, and level with λ = ½ at 50-1000.
    Reference: Ho et al. 2020, §3.2 (the two choices of σ_t²); Song et al. 2021, eq. 47; Bao et al.
    2022, "Analytic-DPM: an analytic estimate of the optimal reverse variance" (ICLR), Theorem 1."""
    a, v = sde.transition(t_next, t)
    s = score(x, t)
    x_mean = torch.add(x, s, alpha=v).mul_(1.0 / a)
    sig = sde.std(t)
    sd = sde.std(t_next) * math.sqrt(v) / sig  # √β̃
    if variance == "analytic":
        # E‖s‖² / d over the batch (accumulated in float64: s² of a half-precision batch overflows)
        sig2, ms = float(sig) ** 2, float(torch.linalg.vector_norm(s, dtype=torch.float64)) ** 2 / s.numel()
        sd = math.sqrt(sd * sd + v * v / (a * a * sig2) * min(max(1.0 - sig2 * ms, 0.0), 1.0))
    elif variance:
        sd = math.sqrt((1.0 - variance) * sd * sd + variance * v)
    return Step(noise(x.shape, std=sd).add_(x_mean), x_mean)


def none(sde: SDE, score, x: Tensor, t: float, t_next: float, noise) -> Step:
    """No predictor: the state is left as it is (corrector-only sampling)."""
    return Step(x, x)


PREDICTORS = {"euler_maruyama": euler_maruyama, "reverse_diffusion": reverse_diffusion, "ancestral": ancestral,
              "none": none}
