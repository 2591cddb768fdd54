"""Discrete noise-level helpers from the NCSN papers, and their link to the VE SDE.

Reference: Song & Ermon 2019 (NCSN), "Generative Modeling by Estimating Gradients of the Data
Distribution"; Song & Ermon 2020 (NCSNv2), "Improved Techniques for Training Score-Based
Generative Models", Techniques 1, 2 and 4.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "geometric_sigmas",
    "sigma_max_from_data",
    "gamma_from_dim",
    "n_levels",
    "ald_step_size",
    "ald_variance_ratio",
]


def geometric_sigmas(sigma_max: float, sigma_min: float, n: int) -> Tensor:
    """σ_1 = σ_max > ... > σ_n = σ_min with constant ratio (float64, shape (n,))."""
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
    if n < 2:
        raise ValueError(f"n must be >= 2, got {n}")
    return torch.logspace(math.log10(sigma_max), math.log10(sigma_min), n, dtype=torch.float64)


def sigma_max_from_data(x: Tensor, chunk: int = 2048) -> float:
    """NCSNv2 Technique 1: σ_1 = the largest Euclidean distance between two data points."""
    x = x.flatten(1).to(torch.float64)
    best = 0.0
    for i in range(0, x.shape[0], chunk):
        best = max(best, float(torch.cdist(x[i : i + chunk], x).max()))
    return best


def gamma_from_dim(dim: int, target: float = 0.5) -> float:
    """NCSNv2 Technique 2: the common ratio γ = σ_{i-1}/σ_i solving
    Φ(√(2D)(γ−1) + 3γ) − Φ(√(2D)(γ−1) − 3γ) = target (≈ 0.5)."""
    from scipy.optimize import brentq  # scipy only when needed: `import scoresolve` stays light
    from scipy.stats import norm

    r = math.sqrt(2 * dim)
    if r <= 3:  # then Φ(r(γ−1) − 3γ) → 0 as γ grows and the left side never falls to 0.5
        raise ValueError(f"the γ rule needs dim >= 5 (it is meant for high-dimensional data), got {dim}")

    def f(g: float) -> float:
        return norm.cdf(r * (g - 1) + 3 * g) - norm.cdf(r * (g - 1) - 3 * g) - target

    hi = 2.0
    while f(hi) > 0:
        hi *= 2
    return float(brentq(f, 1.0 + 1e-12, hi))


def n_levels(sigma_max: float, sigma_min: float, gamma: float) -> int:
    """Number of geometric levels with ratio at most γ from σ_max down to σ_min."""
    return int(math.ceil(math.log(sigma_max / sigma_min) / math.log(gamma))) + 1


def ald_variance_ratio(u: float, gamma: float, n_steps_each: int) -> float:
    """s_T² / σ_i² after T Langevin steps at one level for a Gaussian, with u = ε/σ_L²
    (NCSNv2 eq. 4): (1 − u)^{2T} (γ² − 2/(2 − u)) + 2/(2 − u)."""
    c = 2.0 / (2.0 - u)
    return (1.0 - u) ** (2 * n_steps_each) * (gamma**2 - c) + c


def ald_step_size(gamma: float, n_steps_each: int, sigma_last: float) -> float:
    """NCSNv2 Technique 4: the step ε (α_i = ε σ_i²/σ_L²) making the variance ratio of
    ``ald_variance_ratio`` as close to 1 as possible."""
    from scipy.optimize import minimize_scalar  # scipy only when needed

    if gamma <= 1.0:
        gamma = 1.0 + 1e-9
    res = minimize_scalar(
        lambda u: abs(ald_variance_ratio(u, gamma, n_steps_each) - 1.0),
        bounds=(1e-12, 1.0 - 1e-12), method="bounded", options={"xatol": 1e-12},
    )
    return float(res.x) * sigma_last**2
