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


def exact_output_moments(sampler, gm, sde, steps: int, eps: float = 1e-3, grid: str = "uniform",
                         denoise: bool = False):
    """Exact (mean, variance) of a linear-in-noise sampler's output for a 1-D Gaussian target
    started from the exact p_T (with ``denoise``, of what the final denoising returns)."""
    p_T = gm.diffused(sde.T, sde)
    n_draws = steps * (1 + getattr(sampler, "n_corrector_steps", 0))
    x = torch.full((n_draws + 2, 1), float(p_T.mean()[0]), dtype=torch.float64)
    x[1] += math.sqrt(float(p_T.cov()[0, 0]))
    ts = ss.make_grid(grid, sde, steps, eps).tolist()
    score = ss.CountingScore(gm.score_fn(sde), x.shape[0])
    out = sampler.run(sde, score, x, ts, BasisNoise(), denoise=denoise, keep=False, progress=False).x[:, 0]
    return float(out[0]), float((out[1] - out[0]) ** 2 + ((out[2:] - out[0]) ** 2).sum())


def loglog_slope(ns, errs) -> float:
    x = torch.tensor(ns, dtype=torch.float64).log()
    y = torch.tensor(errs, dtype=torch.float64).log()
    xc = x - x.mean()
    return float((xc * (y - y.mean())).sum() / (xc * xc).sum())


# ---------------------------------------------------------------- generic exact moments
class ScaledBasisNoise(BasisNoise):
    """BasisNoise with every draw multiplied by ``scale`` (to test that a sampler is affine in
    its noise: the output's deviation from the noise-free row must scale by the same factor)."""

    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale

    def __call__(self, shape, std: float = 1.0):
        return super().__call__(shape, std) * self.scale


def run_with_noise(sampler, gm, sde, x, ts, noise):
    """One ``sampler.run`` on the exact score of ``gm`` through the grid ``ts`` (list, T → eps)."""
    score = ss.CountingScore(gm.score_fn(sde), x.shape[0])
    return sampler.run(sde, score, x, list(ts), noise, denoise=False, keep=False, progress=False).x


def basis_rows(gm, sde, t0: float, n_draws: int) -> torch.Tensor:
    """Rows (mean, mean + sd, mean, mean, ...) of the exact 1-D p_{t0}, for BasisNoise bookkeeping."""
    p = gm.diffused(t0, sde)
    x = torch.full((n_draws + 2, 1), float(p.mean()[0]), dtype=torch.float64)
    x[1] += math.sqrt(float(p.cov()[0, 0]))
    return x


def exact_moments_on_grid(sampler, gm, sde, ts, n_draws: int):
    """Exact (mean, variance) of a sampler affine in its start and noise, started from the exact
    1-D p_{ts[0]} (no Monte Carlo; see BasisNoise)."""
    out = run_with_noise(sampler, gm, sde, basis_rows(gm, sde, ts[0], n_draws), ts, BasisNoise())[:, 0]
    return float(out[0]), float((out[1] - out[0]) ** 2 + ((out[2:] - out[0]) ** 2).sum())


class CountingNoise:
    """Zero noise that counts how often it was asked for a draw."""

    def __init__(self):
        self.calls = 0

    def __call__(self, shape, std: float = 1.0):
        self.calls += 1
        return torch.zeros(shape, dtype=torch.float64)


def classify(sampler, steps: int = 6) -> str:
    """"deterministic" (never draws noise), "linear" (stochastic, exactly affine in its start and
    noise for a linear score: BasisNoise moments are exact) or "nonlinear" (e.g. batch-norm step
    rules, adaptive acceptance, an internal Brownian tree)."""
    gm, sde = gaussian_1d(), SDES["vp"]
    if getattr(sampler, "nfe_per_step", None) is None:  # adaptive: acceptance depends on the noise
        probe = CountingNoise()
        run_with_noise(sampler, gm, sde, torch.zeros(4, 1, dtype=torch.float64),
                       make_grid_list(sampler, sde, steps), probe)
        return "deterministic" if probe.calls == 0 else "nonlinear"
    ts = make_grid_list(sampler, sde, steps)
    probe = CountingNoise()
    n = steps * (sampler.nfe_per_step + 1) + 2
    x = basis_rows(gm, sde, ts[0], n)
    run_with_noise(sampler, gm, sde, x, ts, probe)
    if probe.calls == 0:
        return "deterministic"
    if probe.calls > n:
        return "nonlinear"
    a = run_with_noise(sampler, gm, sde, x, ts, ScaledBasisNoise(1.0))
    b = run_with_noise(sampler, gm, sde, x, ts, ScaledBasisNoise(2.0))
    lin = torch.allclose(b[2:] - b[0], 2 * (a[2:] - a[0]), rtol=1e-9, atol=1e-12) and torch.equal(a[:2], b[:2])
    return "linear" if lin and bool((a[2:] != a[0]).any()) else "nonlinear"


def make_grid_list(sampler, sde, steps: int, eps: float = 1e-3) -> list[float]:
    return ss.make_grid(sampler.default_grid, sde, steps, eps).tolist()


# ---------------------------------------------------------------- an independent flow
def marginal_np(sde, t):
    """(m, ṁ/m, σ, σ̇) of the SDE's perturbation kernel, written here from Song et al. 2021
    eqs. 9-12 with the SDE's parameters only (no scoresolve code)."""
    import numpy as np

    if isinstance(sde, ss.VESDE):
        r = math.log(sde.sigma_max / sde.sigma_min)
        s = sde.sigma_min * np.exp(r * t)
        return 1.0, 0.0, s, s * r
    beta = sde.beta_min + t * (sde.beta_max - sde.beta_min)
    ib = sde.beta_min * t + 0.5 * (sde.beta_max - sde.beta_min) * t * t
    m, dlogm = math.exp(-0.5 * ib), -0.5 * beta
    if isinstance(sde, ss.SubVPSDE):
        return m, dlogm, 1.0 - math.exp(-ib), beta * math.exp(-ib)
    s = math.sqrt(1.0 - math.exp(-ib))
    return m, dlogm, s, 0.5 * beta * math.exp(-ib) / s


def mixture_score_np(weights, means, covs, m, s, x):
    """∇ log Σ_k w_k N(x; m μ_k, m² Σ_k + σ² I) in numpy, x of shape (B, d)."""
    import numpy as np

    d = x.shape[1]
    logs, grads = [], []
    for w, mu, c in zip(weights, means, covs):
        cov = m * m * c + s * s * np.eye(d)
        diff = x - m * mu
        sol = np.linalg.solve(cov, diff.T).T
        _, logdet = np.linalg.slogdet(cov)
        logs.append(math.log(w) - 0.5 * (diff * sol).sum(1) - 0.5 * logdet)
        grads.append(-sol)
    lg = np.stack(logs, 1)
    r = np.exp(lg - lg.max(1, keepdims=True))
    r /= r.sum(1, keepdims=True)
    return np.einsum("bk,kbd->bd", r, np.stack(grads))


def mixture_flow_reference(gm, sde, x_T: torch.Tensor, t_end: float, rtol: float = 1e-11) -> torch.Tensor:
    """x(t_end) of the probability-flow ODE dx/dt = (ṁ/m) x − (σσ̇ − (ṁ/m) σ²) ∇log p_t(x) from
    x(T) = x_T, by scipy's DOP853 at rtol 1e-11 on a numpy mixture score: shares no code with
    the samplers, the SDE classes or the mixture's own score (½g² = σσ̇ − (ṁ/m)σ² for any linear SDE)."""
    from scipy.integrate import solve_ivp

    w, mu, covs = (v.numpy() for v in (gm.weights, gm.means, gm.component_covs()))
    shape = tuple(x_T.shape)

    def rhs(t, y):
        x = y.reshape(shape)
        m, dlogm, s, ds = marginal_np(sde, t)
        return (dlogm * x - (s * ds - dlogm * s * s) * mixture_score_np(w, mu, covs, m, s, x)).ravel()

    sol = solve_ivp(rhs, (sde.T, t_end), x_T.double().numpy().ravel(), method="DOP853", rtol=rtol,
                    atol=rtol)
    assert sol.success, sol.message
    return torch.from_numpy(sol.y[:, -1].reshape(shape))


# ---------------------------------------------------------------- distribution-level checks
def distribution_z_scores(x: torch.Tensor, gm, ref_logp: torch.Tensor) -> dict[str, float]:
    """|z|-scores (statistic minus its exact expectation, over its standard error from the
    sample size) of four checks of samples x against the mixture gm (the law they should follow):

    - mode weights: mean_i p(k|x_i) has expectation w_k and sd ≤ √(w_k(1−w_k)/n) (a
      responsibility has less spread than the indicator), max over k;
    - per-component means: responsibility-weighted mean, se √(C_k,jj / n_k), max over k, j;
    - per-component width: W = mean_k tr(C_k⁻¹ Ĉ_k)/d − 1 of the responsibility-weighted
      covariances Ĉ_k, se √(Σ_k 2/(n_k d)) / K (a Gaussian sample variance has relative sd
      √(2/n)); signed (positive: too wide);
    - log-density: mean log p(x) minus the mean over a large exact sample (ref_logp), se from
      both sample sds.
    """
    x = x.detach().double().reshape(x.shape[0], -1)
    n, d = x.shape
    r = gm.responsibilities(x)
    nk = r.sum(0)
    w = gm.weights
    z_w = ((r.mean(0) - w) / (w * (1 - w) / n).clamp_min(1e-300).sqrt()).abs().max()
    mu = (r.T @ x) / nk[:, None]
    covs = gm.component_covs()
    z_mu = ((mu - gm.means) / (covs.diagonal(dim1=1, dim2=2) / nk[:, None]).sqrt()).abs().max()
    diff = x.unsqueeze(1) - mu
    chat = torch.einsum("bk,bkd,bke->kde", r, diff, diff) / nk[:, None, None]
    ratio = torch.einsum("kde,ked->k", torch.linalg.inv(covs), chat) / d - 1
    k = gm.n_components
    width = float(ratio.mean())
    z_width = width / float((2.0 / (nk * d)).sum().sqrt() / k)
    lp = gm.log_prob(x)
    se_lp = math.sqrt(float(lp.var()) / n + float(ref_logp.var()) / ref_logp.numel())
    z_lp = float(lp.mean() - ref_logp.mean()) / se_lp
    return {"weights": float(z_w), "means": float(z_mu), "width": z_width, "logp": z_lp}


Z_MAX = 4.5  # per check: P(|N(0,1)| > 4.5) ≈ 7e-6, so ~100 parametrised checks × 4 stay well below 1e-3
