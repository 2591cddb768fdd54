"""Analytic mixture targets: score = autograd of log p_t; exact samples have the right law."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import scoresolve as ss
from scoresolve.targets import GaussianMixture

SDES = {"vp": ss.VPSDE(), "subvp": ss.SubVPSDE(), "ve": ss.VESDE(sigma_max=5.0)}


@st.composite
def mixtures(draw):
    d = draw(st.integers(1, 4))
    k = draw(st.integers(1, 3))
    seed = draw(st.integers(0, 10_000))
    full = draw(st.booleans())
    return GaussianMixture.random(d, k, seed=seed, anisotropic=full, spread=2.0)


@given(gm=mixtures(), sde=st.sampled_from(list(SDES)), t=st.floats(1e-3, 1.0))
def test_score_equals_autograd_of_log_prob(gm, sde, t):
    sde = SDES[sde]
    x = gm.sample(16, t, sde, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x.requires_grad_(True)
    tt = torch.full((16,), t, dtype=torch.float64)
    (grad,) = torch.autograd.grad(gm.log_prob(x, tt, sde).sum(), x)
    torch.testing.assert_close(gm.score(x.detach(), tt, sde), grad, rtol=1e-8, atol=1e-8)


@given(gm=mixtures(), sde=st.sampled_from(list(SDES)), t=st.floats(1e-3, 1.0))
def test_score_per_row_times_equals_autograd_and_shared_path(gm, sde, t):
    """Rows at different times take the per-row path; a shared time the batched-precision path."""
    sde = SDES[sde]
    x = gm.sample(16, t, sde, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    tt = t * torch.linspace(0.5, 1.0, 16, dtype=torch.float64)
    xr = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(gm.log_prob(xr, tt, sde).sum(), xr)
    torch.testing.assert_close(gm.score(x, tt, sde), grad, rtol=1e-8, atol=1e-8)
    per_row = torch.cat([gm.score(x[i:i + 1], tt[i:i + 1], sde) for i in range(16)])
    torch.testing.assert_close(gm.score(x, tt, sde), per_row, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gm.score(x, t, sde), gm.score(x, torch.full((16,), t, dtype=torch.float64), sde))
    x32 = x.float()
    torch.testing.assert_close(gm.score(x32, t, sde), gm.score(x, t, sde).float(), rtol=1e-4, atol=1e-4)


@given(gm=mixtures(), sde=st.sampled_from(list(SDES)), t=st.floats(1e-3, 1.0))
def test_score_vjp_equals_hessian_of_log_prob(gm, sde, t):
    """The hand-written VJP of the shared-time score (both branches: with the per-row Jacobians
    kept, and without) is the Hessian of log p_t."""
    from scoresolve.targets import mixture

    sde = SDES[sde]
    x = gm.sample(8, t, sde, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    hess = torch.func.vmap(torch.func.hessian(lambda z: gm.log_prob(z[None], t, sde)[0]))(x)
    eye = torch.eye(gm.dim, dtype=x.dtype)
    limits = (mixture._JAC_REL, mixture._JAC_ABS)
    try:
        for keep in (True, False):
            mixture._JAC_REL, mixture._JAC_ABS = limits if keep else (0, 0)
            xr = x.clone().requires_grad_(True)
            s = gm.score(xr, t, sde)
            vjps = [torch.autograd.grad(s, xr, eye[i].expand_as(x), retain_graph=True)[0] for i in range(gm.dim)]
            torch.testing.assert_close(torch.stack(vjps, 1), hess, rtol=1e-8, atol=1e-8)
    finally:
        mixture._JAC_REL, mixture._JAC_ABS = limits


@given(gm=mixtures(), sde=st.sampled_from(list(SDES)), t=st.floats(1e-3, 1.0))
def test_diffused_mixture_equals_log_prob_at_t(gm, sde, t):
    sde = SDES[sde]
    x = torch.randn(8, gm.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(gm.diffused(t, sde).log_prob(x), gm.log_prob(x, t, sde))


def test_log_prob_matches_torch_distributions():
    gm = GaussianMixture.random(3, 4, seed=3)
    mix = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(gm.weights),
        torch.distributions.MultivariateNormal(gm.means, gm.component_covs()),
    )
    x = torch.randn(50, 3, dtype=torch.float64)
    torch.testing.assert_close(gm.log_prob(x), mix.log_prob(x))


@pytest.mark.parametrize("gm", [GaussianMixture.ring(8, 2.0, 0.1), GaussianMixture.random(5, 3, seed=4)],
                         ids=["ring", "random5"])
def test_exact_samples_moments_within_monte_carlo_error(gm):
    n = 40_000
    x = gm.sample(n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    cov = gm.cov()
    se_mean = (cov.diagonal() / n).sqrt()
    assert ((x.mean(0) - gm.mean()).abs() < 5 * se_mean).all()
    # variance of a sample variance ≈ (m4 − σ⁴)/n; bound m4 by the sample's own 4th moment
    xc = x - x.mean(0)
    se_var = ((xc**4).mean(0) - xc.var(0) ** 2).clamp_min(0).div(n).sqrt()
    assert ((xc.var(0) - cov.diagonal()).abs() < 5 * se_var).all()


def test_sample_labels_and_weights():
    gm = GaussianMixture.unequal((0.8, 0.2))
    _, k = gm.sample(20_000, generator=torch.Generator().manual_seed(0), return_labels=True)
    frac = float((k == 0).float().mean())
    assert abs(frac - 0.8) < 5 * math.sqrt(0.16 / 20_000)


@pytest.mark.parametrize("n,spacing,std", [(3, 2.0, 0.1), (2, 1.5, 0.3)])
def test_grid_mixture_is_the_documented_square_grid(n, spacing, std):
    gm = GaussianMixture.grid(n, spacing, std)
    axis = [(i - (n - 1) / 2) * spacing for i in range(n)]
    want = sorted((a, b) for a in axis for b in axis)
    assert sorted(map(tuple, gm.means.tolist())) == want  # exact: k·spacing in binary
    torch.testing.assert_close(gm.weights, torch.full((n * n,), 1 / n**2, dtype=torch.float64))
    torch.testing.assert_close(gm.covs, torch.full((n * n, 2), std**2, dtype=torch.float64))
    assert gm.means.mean(0).abs().max() < 1e-12  # centred
    assert GaussianMixture.grid().means.shape == (9, 2)  # 3×3 by default


def test_unequal_mixture_is_the_documented_line_of_components():
    gm = GaussianMixture.unequal((0.5, 0.3, 0.2), separation=0.3, std=0.7, dim=3)
    want = torch.zeros(3, 3, dtype=torch.float64)
    want[:, 0] = torch.tensor([-0.3, 0.0, 0.3], dtype=torch.float64)
    assert torch.equal(gm.means, want)  # in float64, as given
    torch.testing.assert_close(gm.covs, torch.full((3, 3), 0.49, dtype=torch.float64))
    torch.testing.assert_close(gm.weights, torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64))


def test_random_mixture_is_a_function_of_its_seed_and_options():
    torch.manual_seed(0)
    a = GaussianMixture.random(4, 3, seed=5)
    torch.manual_seed(1)  # the global RNG plays no part
    b = GaussianMixture.random(4, 3, seed=5)
    for u, v in ((a.weights, b.weights), (a.means, b.means), (a.covs, b.covs)):
        assert torch.equal(u, v)
    assert float(a.weights.max() - a.weights.min()) > 1e-3  # unequal by default (uniform in [0.5, 1.5])
    assert a.weights.max() / a.weights.min() <= 3.0
    eq = GaussianMixture.random(4, 3, seed=5, unequal_weights=False, anisotropic=False)
    torch.testing.assert_close(eq.weights, torch.full((3,), 1 / 3, dtype=torch.float64))
    stds = eq.covs.sqrt()
    assert eq.covs.shape == (3, 4) and bool(((stds >= 0.1) & (stds <= 0.5)).all())
    lam = torch.linalg.eigvalsh(a.covs)  # anisotropic: the same stds, along rotated axes
    assert bool(((lam.sqrt() >= 0.1 - 1e-12) & (lam.sqrt() <= 0.5 + 1e-12)).all())
    assert float(a.covs[:, 0, 1:].abs().max()) > 1e-3


def test_responsibilities_at_time_t_are_the_diffused_posteriors():
    """p_t(k | x) ∝ w_k N(x; m μ_k, m² Σ_k + σ² I), written out with scipy."""
    from scipy.stats import multivariate_normal

    sde = ss.VPSDE()
    gm = GaussianMixture.random(3, 4, seed=2)
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t = 0.4
    m, s = sde.marginal(t)
    dens = torch.tensor([[float(gm.weights[k]) * multivariate_normal(
        (m * gm.means[k]).numpy(), (m * m * gm.component_covs()[k] + s * s * torch.eye(3, dtype=torch.float64)).numpy()
    ).pdf(xi.numpy()) for k in range(4)] for xi in x], dtype=torch.float64)
    torch.testing.assert_close(gm.responsibilities(x, t, sde), dens / dens.sum(1, keepdim=True), rtol=1e-9, atol=1e-12)


def test_mixture_samples_follow_the_generator_and_dtype():
    gm = GaussianMixture.ring(4, 2.0, 0.1)
    torch.manual_seed(0)
    a = gm.sample(50, generator=torch.Generator().manual_seed(9))
    torch.manual_seed(1)  # the global RNG plays no part
    b = gm.sample(50, generator=torch.Generator().manual_seed(9))
    assert torch.equal(a, b) and a.dtype == torch.float32
    assert gm.sample(5, dtype=torch.float64, generator=torch.Generator().manual_seed(9)).dtype == torch.float64


def test_bad_mixture_parameters():
    with pytest.raises(ValueError, match="weights"):
        GaussianMixture(torch.tensor([1.0, -1.0]), torch.zeros(2, 2), torch.ones(2))
    with pytest.raises(ValueError, match="covs"):
        GaussianMixture(torch.ones(2), torch.zeros(2, 2), torch.ones(3, 3))
    with pytest.raises(ValueError, match="positive definite"):
        GaussianMixture(torch.ones(1), torch.zeros(1, 2), -torch.eye(2).unsqueeze(0))
