"""Shared ground-truth problems for the tests."""

import math

import torch

import scoresolve as ss
from scoresolve.targets import GaussianMixture

SDES = {"vp": ss.VPSDE(), "subvp": ss.SubVPSDE(), "ve": ss.VESDE(sigma_max=20.0)}


def gaussian_1d(mu: float = 1.0, std: float = 0.5) -> GaussianMixture:
    return GaussianMixture(torch.ones(1), torch.tensor([[mu]]), torch.tensor([std**2]))


def gaussian_flow_map(gm: GaussianMixture, sde, x_T: torch.Tensor, t: float) -> torch.Tensor:
    """Exact probability-flow map T -> t for a diagonal Gaussian: per coordinate
    x_t = m_t μ + (τ_t / τ_T)(x_T − m_T μ), τ_s² = m_s² s² + σ_s²."""
    mu, var = gm.means[0], gm.covs[0]
    m_T, s_T = sde.marginal(sde.T)
    m_t, s_t = sde.marginal(t)
    tau_T = (m_T**2 * var + s_T**2).sqrt()
    tau_t = (m_t**2 * var + s_t**2).sqrt()
    return m_t * mu + tau_t / tau_T * (x_T - m_T * mu)


class BasisNoise:
    """A noise source whose k-th draw is 1 in row k + 2 and 0 elsewhere.

    With a linear score the sampler output is x_N = A x_T + b + Σ_k c_k z_k; running it on rows
    (x_T = mean, noise 0), (x_T = mean + sd, noise 0) and (x_T = mean, z_k = e_k) reads off
    b, A and every c_k, so the output's exact mean and variance follow without Monte Carlo.
    """

    def __init__(self):
        self.k = 0

    def __call__(self, shape, std: float = 1.0):
        z = torch.zeros(shape, dtype=torch.float64)
        if self.k + 2 < shape[0]:
            z[self.k + 2] = std
        self.k += 1
        return z


def exact_output_moments(sampler, gm, sde, steps: int, eps: float = 1e-3, grid: str = "uniform"):
    """Exact (mean, variance) of a linear-in-noise sampler's output for a 1-D Gaussian target
    started from the exact p_T."""
    p_T = gm.diffused(sde.T, sde)
    n_draws = steps * (1 + getattr(sampler, "n_corrector_steps", 0))
    x = torch.full((n_draws + 2, 1), float(p_T.mean()[0]), dtype=torch.float64)
    x[1] += math.sqrt(float(p_T.cov()[0, 0]))
    ts = ss.make_grid(grid, sde, steps, eps).tolist()
    score = ss.CountingScore(gm.score_fn(sde), x.shape[0])
    out = sampler.run(sde, score, x, ts, BasisNoise(), denoise=False, keep=False, progress=False).x[:, 0]
    return float(out[0]), float((out[1] - out[0]) ** 2 + ((out[2:] - out[0]) ** 2).sum())


def loglog_slope(ns, errs) -> float:
    x = torch.tensor(ns, dtype=torch.float64).log()
    y = torch.tensor(errs, dtype=torch.float64).log()
    xc = x - x.mean()
    return float((xc * (y - y.mean())).sum() / (xc * xc).sum())
