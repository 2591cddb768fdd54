"""A reference-style implementation of score_sde's samplers (Song et al. 2021), written from the
paper and its published algorithm descriptions (not imported), to compare scoresolve against.

What it reproduces, on purpose, including the quirks (see /work/shared/FIELD.md):
  * the SDE object owns a step count N; the PC loop visits the N points ``linspace(T, eps, N)``
    and every predictor uses dt = −1/N (not the grid spacing (T − eps)/(N − 1)), so the last
    step, taken at t = eps, reaches "eps − 1/N" and its noise-free mean x_mean is returned;
  * reverse-diffusion, ancestral and Langevin read discrete tables built for N, indexed by
    i = ⌊t (N − 1) / T⌋: VP β_i = linspace(β_min/N, β_max/N, N), α_i = 1 − β_i; VE σ_i =
    geometric linspace(σ_min, σ_max, N) with σ_{−1} = 0; sub-VP reverse diffusion uses the
    generic discretisation f dt, g √dt with dt = 1/N;
  * VP ancestral: x' = (x + β_i s)/√(1 − β_i) + √β_i z (variance β, not the posterior β̃);
    VE ancestral: x' = x + (σ_i² − σ_{i−1}²) s + √(σ_{i−1}²(σ_i² − σ_{i−1}²)/σ_i²) z;
  * Langevin: ε = 2 α_i (snr ‖z‖/‖s‖)² with the norms averaged over the batch (α_i = 1 − β_i
    for VP and sub-VP, 1 for VE); annealed Langevin ε = 2 α_i (snr σ(t))²;
  * the probability-flow ODE: scipy RK45 on the flattened batch from T to eps (rtol, atol),
    then one reverse-diffusion step at eps as the final denoising (counted here).

NFE are counted in a wrapper around the score (the final denoising included).
Reference: Song et al. 2021, "Score-Based Generative Modeling through Stochastic Differential
Equations", Algorithms 2-5, Appendix E-G.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

import scoresolve as ss


def _sqrt(v: float) -> float:
    """√v, NaN for v < 0 (as torch gives; the reference's tables go negative at small N)."""
    return math.sqrt(v) if v >= 0 else float("nan")


class Counted:
    """score(x, t) with t a (B,) tensor, counting evaluations per sample."""

    def __init__(self, score_fn):
        self.fn, self.nfe = score_fn, 0

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        self.nfe += 1
        return self.fn(x, t)


class Discrete:
    """The N-point tables of the reference for one SDE."""

    def __init__(self, sde: ss.SDE, n: int):
        self.sde, self.N = sde, n
        if isinstance(sde, ss.VPSDE):  # sub-VP included (it subclasses VPSDE)
            self.betas = torch.linspace(sde.beta_min / n, sde.beta_max / n, n, dtype=torch.float64)
            self.alphas = 1.0 - self.betas
        else:
            self.sigmas = torch.exp(torch.linspace(math.log(sde.sigma_min), math.log(sde.sigma_max), n,
                                                   dtype=torch.float64))

    def index(self, t: float) -> int:
        return int(t * (self.N - 1) / self.sde.T)  # .long() truncates

    def alpha(self, t: float) -> float:
        return float(self.alphas[self.index(t)]) if isinstance(self.sde, ss.VPSDE) else 1.0

    def discretize(self, x: Tensor, t: float) -> tuple[Tensor, float]:
        """(f, G) of the discretised forward step at t: x_{i+1} = x_i + f + G z."""
        sde, i = self.sde, self.index(t)
        if type(sde) is ss.VPSDE:
            beta = float(self.betas[i])
            return (_sqrt(1.0 - beta) - 1.0) * x, _sqrt(beta)
        if isinstance(sde, ss.VESDE):
            sig = float(self.sigmas[i])
            adj = 0.0 if i == 0 else float(self.sigmas[i - 1])
            return torch.zeros_like(x), _sqrt(sig * sig - adj * adj)
        dt = 1.0 / self.N  # sub-VP: the generic discretisation
        return sde.drift_coef(t) * dt * x, sde.diffusion(t) * _sqrt(dt)


def _vec(t: float, x: Tensor) -> Tensor:
    return torch.full((x.shape[0],), t, dtype=x.dtype)


def euler_maruyama(d: Discrete, score, x, t, g):
    dt = -1.0 / d.N
    s = score(x, _vec(t, x))
    f, gg = d.sde.drift_coef(t), d.sde.diffusion(t)
    x_mean = x + (f * x - gg * gg * s) * dt
    return x_mean + gg * _sqrt(-dt) * torch.randn(x.shape, generator=g, dtype=x.dtype), x_mean


def reverse_diffusion(d: Discrete, score, x, t, g):
    f, G = d.discretize(x, t)
    s = score(x, _vec(t, x))
    x_mean = x - (f - G * G * s)
    return x_mean + G * torch.randn(x.shape, generator=g, dtype=x.dtype), x_mean


def ancestral(d: Discrete, score, x, t, g):
    sde, i = d.sde, d.index(t)
    if isinstance(sde, ss.VESDE):
        sig = float(d.sigmas[i])
        adj = 0.0 if i == 0 else float(d.sigmas[i - 1])
        s = score(x, _vec(t, x))
        x_mean = x + s * (sig * sig - adj * adj)
        std = _sqrt(adj * adj * (sig * sig - adj * adj) / (sig * sig))
        return x_mean + std * torch.randn(x.shape, generator=g, dtype=x.dtype), x_mean
    if type(sde) is not ss.VPSDE:
        raise NotImplementedError("the reference has ancestral sampling for VP and VE only")
    beta = float(d.betas[i])
    s = score(x, _vec(t, x))
    x_mean = (x + beta * s) / _sqrt(1.0 - beta) if beta != 1 else x * float("inf")  # NaN / inf once β ≥ 1 (N ≤ 20)
    return x_mean + _sqrt(beta) * torch.randn(x.shape, generator=g, dtype=x.dtype), x_mean


def langevin(d: Discrete, score, x, t, g, snr: float, n_steps: int = 1):
    alpha = d.alpha(t)
    x_mean = x
    for _ in range(n_steps):
        s = score(x, _vec(t, x))
        z = torch.randn(x.shape, generator=g, dtype=x.dtype)
        gn = s.flatten(1).norm(dim=1).mean()
        zn = z.flatten(1).norm(dim=1).mean()
        eps = (snr * zn / gn) ** 2 * 2 * alpha
        x_mean = x + eps * s
        x = x_mean + torch.sqrt(eps * 2) * z
    return x, x_mean


def annealed_langevin(d: Discrete, score, x, t, g, snr: float, n_steps: int = 1):
    alpha = d.alpha(t)
    std = d.sde.std(t)
    eps = (snr * std) ** 2 * 2 * alpha
    x_mean = x
    for _ in range(n_steps):
        s = score(x, _vec(t, x))
        x_mean = x + eps * s
        x = x_mean + _sqrt(eps * 2) * torch.randn(x.shape, generator=g, dtype=x.dtype)
    return x, x_mean


PREDICTORS = {"euler_maruyama": euler_maruyama, "reverse_diffusion": reverse_diffusion, "ancestral": ancestral,
              "none": None}
CORRECTORS = {"langevin": langevin, "ald": annealed_langevin, "none": None}


def prior_draw(sde, shape, g: torch.Generator, dtype=torch.float32) -> Tensor:
    """x_T ~ N(0, σ_prior² I), the first draw of every reference sampler from its generator."""
    return sde.prior_std() * torch.randn(shape, generator=g, dtype=dtype)


def pc_sample(sde, score_fn, shape, n: int, predictor="euler_maruyama", corrector="none", *, snr=0.16,
              n_steps=1, eps=None, seed=0, dtype=torch.float32, denoise=True):
    """The reference PC sampler: N points linspace(T, eps, N), corrector then predictor at each;
    returns (samples, counted NFE)."""
    eps = sde.default_eps if eps is None else eps
    g = torch.Generator().manual_seed(seed)
    d = Discrete(sde, n)
    score = Counted(score_fn)
    x = prior_draw(sde, shape, g, dtype)
    x_mean = x
    pred, corr = PREDICTORS[predictor], CORRECTORS[corrector]
    with torch.no_grad():
        for t in torch.linspace(sde.T, eps, n, dtype=torch.float64).tolist():
            if corr is not None:
                x, x_mean = corr(d, score, x, t, g, snr, n_steps)
            if pred is not None:
                x, x_mean = pred(d, score, x, t, g)
    return (x_mean if denoise else x), score.nfe


def ode_sample(sde, score_fn, shape, *, rtol=1e-5, atol=1e-5, eps=None, seed=0, dtype=torch.float32,
               n_denoise=1000, denoise=True):
    """The reference probability-flow ODE sampler: scipy RK45 on the flattened batch, then a
    reverse-diffusion step at eps on the tables of N = ``n_denoise``; returns (samples, NFE)."""
    from scipy import integrate

    eps = sde.default_eps if eps is None else eps
    g = torch.Generator().manual_seed(seed)
    score = Counted(score_fn)
    x = prior_draw(sde, shape, g, dtype)

    def rhs(t, y):
        xx = torch.from_numpy(y).reshape(shape).to(dtype)
        with torch.no_grad():
            s = score(xx, _vec(t, xx))
        f, gg = sde.drift_coef(t), sde.diffusion(t)
        return (f * xx - 0.5 * gg * gg * s).reshape(-1).double().numpy()

    sol = integrate.solve_ivp(rhs, (sde.T, eps), x.reshape(-1).double().numpy(), rtol=rtol, atol=atol,
                              method="RK45")
    x = torch.from_numpy(sol.y[:, -1]).reshape(shape).to(dtype)
    if denoise:
        with torch.no_grad():
            _, x = reverse_diffusion(Discrete(sde, n_denoise), score, x, eps, g)
    return x, score.nfe


def _self_check() -> None:
    sde = ss.VPSDE()
    target = ss.targets.GaussianMixture.ring(8, 2.0, 0.1)
    x, nfe = pc_sample(sde, target.score_fn(sde), (1000, 2), 100)
    assert nfe == 100 and bool(torch.isfinite(x).all()), nfe
    x, nfe = ode_sample(sde, target.score_fn(sde), (100, 2), rtol=1e-3, atol=1e-3)
    assert bool(torch.isfinite(x).all()), nfe
    print("ok", nfe, np.round(float(x.norm(dim=1).mean()), 3))


if __name__ == "__main__":
    _self_check()
