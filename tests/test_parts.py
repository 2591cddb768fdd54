"""Grids, noise, score adapters, NCSN helpers and metrics."""

import math

import pytest
import torch
from helpers import SDES
from scipy import stats

import scoresolve as ss
from scoresolve.noise import counter_normal
from scoresolve.targets import GaussianMixture

F64 = torch.float64


# ---------------------------------------------------------------- time grids
@pytest.mark.parametrize("kind", list(ss.GRIDS))
@pytest.mark.parametrize("sde_name", list(SDES))
def test_grids_decrease_from_T_to_eps(kind, sde_name):
    sde = SDES[sde_name]
    ts = ss.make_grid(kind, sde, 37, 1e-3)
    assert ts.shape == (38,) and ts.dtype == F64
    assert ts[0] == sde.T and ts[-1] == 1e-3
    assert bool((ts[1:] < ts[:-1]).all())


@pytest.mark.parametrize("sde_name", list(SDES))
def test_log_snr_and_karras_grids_are_uniform_in_their_variable(sde_name):
    sde = SDES[sde_name]
    lam = sde.log_snr(ss.make_grid("log_snr", sde, 20, 1e-3))
    torch.testing.assert_close(lam.diff(), lam.diff().mean().expand(20), rtol=1e-6, atol=1e-9)
    sig = (-0.5 * sde.log_snr(ss.make_grid("karras", sde, 20, 1e-3))).exp() ** (1 / 7)
    torch.testing.assert_close(sig.diff(), sig.diff().mean().expand(20), rtol=1e-6, atol=1e-9)
    sq = ss.make_grid("quadratic", sde, 20, 1e-3).sqrt()
    torch.testing.assert_close(sq.diff(), sq.diff().mean().expand(20))


def test_grid_errors():
    sde = ss.VPSDE()
    with pytest.raises(ValueError, match="unknown grid"):
        ss.make_grid("nope", sde, 10, 1e-3)
    with pytest.raises(ValueError, match="steps"):
        ss.make_grid("uniform", sde, 0, 1e-3)
    with pytest.raises(ValueError, match="strictly decreasing"):
        ss.sample(lambda x, t: -x, sde, (2, 2), "em", grid=torch.tensor([0.1, 0.5, 1.0]))


# ---------------------------------------------------------------- noise
def test_counter_normal_is_standard_normal_and_independent():
    seeds = torch.arange(2000)
    z1 = counter_normal(seeds, 1, 50, F64)
    z2 = counter_normal(seeds, 2, 50, F64)
    assert stats.kstest(z1.flatten().numpy(), "norm").pvalue > 1e-3
    assert stats.kstest(z2.flatten().numpy(), "norm").pvalue > 1e-3
    n = z1.numel()
    assert abs(float((z1 * z2).mean())) < 5 / math.sqrt(n)  # draws uncorrelated
    assert abs(float((z1[:, :-1] * z1[:, 1:]).mean())) < 5 / math.sqrt(n)  # elements uncorrelated
    assert abs(float((z1[:-1] * z1[1:]).mean())) < 5 / math.sqrt(n)  # neighbouring seeds uncorrelated
    torch.testing.assert_close(counter_normal(seeds[5:7], 1, 50, F64), z1[5:7], rtol=0, atol=0)


def test_noise_source_modes():
    a = ss.Noise(generator=torch.Generator().manual_seed(3))((4, 2))
    b = ss.Noise(generator=torch.Generator().manual_seed(3))((4, 2))
    assert torch.equal(a, b)
    n = ss.Noise(seeds=[1, 2, 3])
    first, second = n((3, 5)), n((3, 5))
    assert not torch.equal(first, second)
    with pytest.raises(ValueError, match="either generator= or seeds="):
        ss.Noise(generator=torch.Generator(), seeds=[1])
    with pytest.raises(ValueError, match="seeds has 3 entries but the batch is 2"):
        n((2, 5))


def test_noise_std_scales_the_draw_it_would_have_made():
    for make in (lambda: ss.Noise(generator=torch.Generator().manual_seed(5), dtype=F64),
                 lambda: ss.Noise(seeds=[4, 5, 6], dtype=F64)):
        unit, scaled = make()((3, 7)), make()((3, 7), std=0.37)
        torch.testing.assert_close(scaled, 0.37 * unit, rtol=1e-15, atol=0)


def _draw_sequence(noise, gen):
    """Draws of changing shape, std and interleaved use of the caller's generator."""
    out = [noise((64, 3)), noise((64, 3), std=0.37), noise((64, 3), std=2.5e-3), noise((32, 6))]
    out.append(torch.randn(5, generator=gen))  # someone else draws from the generator in between
    out += [noise((32, 6), std=1.7), noise((64, 3)), noise((64, 3), std=0.5)]
    return out + [gen.get_state()]


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_prefetched_draws_equal_draws_made_in_line(monkeypatch, dtype):
    """The worker-thread prefetch changes nothing: the same numbers and the same generator state after."""
    monkeypatch.setattr(ss.Noise, "prefetch_min_numel", 1)
    runs = []
    for prefetch in (False, True):
        gen = torch.Generator().manual_seed(11)
        runs.append(_draw_sequence(ss.Noise(generator=gen, dtype=dtype, prefetch=prefetch), gen))
    assert ss.Noise(generator=torch.Generator(), prefetch=True)._prefetch is not None
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("method", ["pc", "em", "ancestral", "ald", "euler_ancestral", "dpmpp_2m_sde", "edm_churn"])
def test_stochastic_samples_are_the_same_with_and_without_prefetch(monkeypatch, method):
    sde = ss.VPSDE()
    gm = GaussianMixture.random(3, 2, seed=4)
    gen_in_score = torch.Generator().manual_seed(0)

    def run(min_numel, shared):
        monkeypatch.setattr(ss.Noise, "prefetch_min_numel", min_numel)
        gen = torch.Generator().manual_seed(7)
        if shared:  # a score that draws from the sampler's own generator: the prefetch must step aside
            score = lambda x, t: gm.score(x, t, sde) + 0 * torch.randn(1, generator=gen)  # noqa: E731
        else:
            score = lambda x, t: gm.score(x, t, sde) + 0 * torch.randn(1, generator=gen_in_score)  # noqa: E731
        x = ss.sample(score, sde, (50, 3), method, steps=8, generator=gen, progress=False).samples
        return x, gen.get_state()

    for shared in (False, True):
        (a, sa), (b, sb) = run(1 << 62, shared), run(1, shared)
        assert torch.equal(a, b) and torch.equal(sa, sb)


# ---------------------------------------------------------------- adapters
@pytest.mark.parametrize("sde_name", list(SDES))
def test_adapters_reproduce_the_exact_score(sde_name):
    sde = SDES[sde_name]
    gm = GaussianMixture.random(3, 2, seed=1)
    x = torch.randn(16, 3, dtype=F64)
    t = torch.rand(16, dtype=F64) * 0.9 + 0.05
    exact = gm.score(x, t, sde)
    m, s = (v[:, None] for v in sde.marginal(t))
    eps_model = lambda x, t: -s * gm.score(x, t, sde)  # noqa: E731  ε = −σ ∇log p
    denoiser = lambda x, t: (x + s * s * gm.score(x, t, sde)) / m  # noqa: E731  Tweedie
    sigma_model = lambda x, sig: gm.score(x, sde.t_from_log_snr(-2 * sig.log()), sde)  # noqa: E731
    torch.testing.assert_close(ss.from_epsilon(eps_model, sde)(x, t), exact)
    torch.testing.assert_close(ss.from_denoiser(denoiser, sde)(x, t), exact)
    if isinstance(sde, ss.VESDE):
        torch.testing.assert_close(ss.from_sigma_model(sigma_model, sde)(x, t), exact)


def test_half_precision_score_keeps_solver_state_precision():
    sde = ss.VPSDE()
    gm = GaussianMixture.ring(8, 2.0, 0.2)
    score = lambda x, t: gm.score_fn(sde)(x.bfloat16().float(), t).bfloat16()  # noqa: E731
    res = ss.sample(score, sde, (200, 2), "pc", steps=50, generator=torch.Generator().manual_seed(0))
    assert res.samples.dtype == torch.float32 and torch.isfinite(res.samples).all()


# ---------------------------------------------------------------- NCSN helpers
def test_ncsn_helpers():
    sig = ss.ncsn.geometric_sigmas(50.0, 0.01, 10)
    assert sig[0] == pytest.approx(50.0) and sig[-1] == pytest.approx(0.01)
    ratios = sig[:-1] / sig[1:]
    torch.testing.assert_close(ratios, ratios.mean().expand(9))
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0], [1.0, 1.0]])
    assert ss.ncsn.sigma_max_from_data(x) == pytest.approx(5.0)
    for d in (10, 3072):
        g = ss.ncsn.gamma_from_dim(d)
        r = math.sqrt(2 * d)
        val = stats.norm.cdf(r * (g - 1) + 3 * g) - stats.norm.cdf(r * (g - 1) - 3 * g)
        assert val == pytest.approx(0.5, abs=1e-8) and g > 1
    # NCSNv2's CIFAR-10 config (D = 3072) uses 232 levels from σ = 50 to 0.01
    assert abs(ss.ncsn.n_levels(50.0, 0.01, ss.ncsn.gamma_from_dim(3072)) - 232) <= 0.1 * 232
    with pytest.raises(ValueError, match="dim >= 5"):
        ss.ncsn.gamma_from_dim(2)
    assert ss.ncsn.n_levels(50.0, 0.01, 1.1) == math.ceil(math.log(5000) / math.log(1.1)) + 1
    eps = ss.ncsn.ald_step_size(1.05, 5, 0.01)
    u = eps / 0.01**2
    best = ss.ncsn.ald_variance_ratio(u, 1.05, 5)
    for other in (u * 0.9, u * 1.1):
        assert abs(best - 1) <= abs(ss.ncsn.ald_variance_ratio(other, 1.05, 5) - 1) + 1e-12


# ---------------------------------------------------------------- metrics
def test_metrics_detect_what_they_should_and_floors_are_small():
    gm = GaussianMixture.ring(8, 2.0, 0.1)
    n = 5000
    g = torch.Generator().manual_seed(0)
    x = gm.sample(n, generator=g, dtype=F64)
    floor = ss.metrics.noise_floor(gm, n, repeats=6)
    ev = ss.metrics.evaluate(x, gm, generator=g)
    for k, v in ev.items():  # exact samples sit at the floor
        mean, sd = floor[k]
        assert v <= mean + 5 * sd + 1e-12, (k, v, floor[k])
    # widen every component by 10%: per-component W2 sees it far above its floor
    wide = GaussianMixture(gm.weights, gm.means, gm.covs * 1.21)
    xw = wide.sample(n, generator=g, dtype=F64)
    w_mean, w_sd = floor["component_w2"]
    assert ss.metrics.component_w2(xw, gm) > w_mean + 5 * w_sd
    # move weight from one mode to another: mode TV sees it
    skew = GaussianMixture(gm.weights * torch.tensor([2.0] + [1.0] * 7), gm.means, gm.covs)
    assert ss.metrics.mode_weight_tv(skew.sample(n, generator=g), gm) > floor["mode_tv"][0] + 5 * floor["mode_tv"][1]


def test_logp_gap_floor_in_closed_form_matches_the_gap_of_exact_sets():
    """The closed-form floor of logp_gap (two means of log p over n exact draws: a half-normal of
    variance 2 Var[log p] / n) against 1500 repeats of the gap itself on an anisotropic 4-d mixture
    with unequal weights: mean and sd within 4 Monte-Carlo standard errors (measured: 0.3 and 0.9 se);
    noise_floor reports it."""
    gm = GaussianMixture.random(4, 3, seed=5, anisotropic=True)
    n, reps = 400, 1500
    mean, sd = ss.metrics.logp_gap_floor(gm, n)
    g = torch.Generator().manual_seed(1)
    gaps = torch.tensor([ss.metrics.logp_gap(gm.sample(n, generator=g, dtype=F64), gm,
                                             gm.sample(n, generator=g, dtype=F64)) for _ in range(reps)], dtype=F64)
    se_mean = float(gaps.std()) / reps**0.5
    se_sd = float(gaps.std()) / (2 * reps) ** 0.5 * 1.3  # (a half-normal's sd: kurtosis ~3.9 -> ~1.3x the normal's se)
    assert abs(float(gaps.mean()) - mean) < 4 * se_mean, (float(gaps.mean()), mean, se_mean)
    assert abs(float(gaps.std()) - sd) < 4 * se_sd, (float(gaps.std()), sd, se_sd)
    assert ss.metrics.noise_floor(gm, n, repeats=2, metrics=("logp_gap",))["logp_gap"] == (mean, sd)


def test_gaussian_w2_closed_form():
    c1 = torch.diag(torch.tensor([1.0, 4.0], dtype=F64))
    c2 = torch.diag(torch.tensor([4.0, 1.0], dtype=F64))
    mu = torch.zeros(2, dtype=F64)
    # diagonal: W2² = Σ (√a − √b)² = 1 + 1
    assert ss.metrics.gaussian_w2(mu, c1, mu + 1, c2) == pytest.approx(math.sqrt(2 + 2))


def test_gaussian_w2_of_non_commuting_covariances_against_scipy_sqrtm():
    """W2² = |Δμ|² + tr C1 + tr C2 − 2 tr (C2^{½} C1 C2^{½})^{½} with the matrix roots from scipy (rotated,
    non-commuting covariances: the shortcut tr(C1^{½} C2^{½}) of commuting ones is wrong here)."""
    from scipy.linalg import sqrtm

    rot = torch.tensor([[math.cos(0.6), -math.sin(0.6)], [math.sin(0.6), math.cos(0.6)]], dtype=F64)
    c1 = torch.tensor([[2.0, 0.3], [0.3, 0.5]], dtype=F64)
    c2 = rot @ torch.diag(torch.tensor([3.0, 0.2], dtype=F64)) @ rot.T
    mu1, mu2 = torch.tensor([0.5, -1.0], dtype=F64), torch.tensor([0.0, 0.7], dtype=F64)
    r2 = sqrtm(c2.numpy()).real
    cross = sqrtm(r2 @ c1.numpy() @ r2).real.trace()
    want = math.sqrt(float((mu1 - mu2) @ (mu1 - mu2)) + float(c1.trace() + c2.trace()) - 2 * cross)
    assert ss.metrics.gaussian_w2(mu1, c1, mu2, c2) == pytest.approx(want, rel=1e-10)


def test_component_fit_is_each_components_sample_mean_and_biased_covariance():
    """Far-apart components give responsibilities of 1 to the own component, so the soft fit is each
    group's sample mean and covariance with divisor n (np.cov(bias=True)), here at n = 6 where n and n ± 1
    differ by 17%; component_w2 is then the Gaussian W2 of that fit against the true component."""
    import numpy as np

    gm = GaussianMixture(torch.tensor([0.5, 0.5]), torch.tensor([[-50.0, 0.0], [50.0, 0.0]], dtype=F64),
                         torch.tensor([[0.5, 2.0], [1.0, 0.25]], dtype=F64))
    z = torch.randn(2, 6, 2, generator=torch.Generator().manual_seed(3), dtype=F64)
    x = torch.cat([gm.means[j] + gm.covs[j].sqrt() * z[j] for j in range(2)])
    k = torch.tensor([0] * 6 + [1] * 6)
    per = ss.metrics.component_w2(x, gm, reduce=False)
    for j in range(2):
        xs = x[k == j].numpy()
        mu, cov = torch.from_numpy(xs.mean(0)), torch.from_numpy(np.cov(xs.T, bias=True))
        want = ss.metrics.gaussian_w2(mu, cov, gm.means[j], gm.component_covs()[j])
        assert float(per[j]) == pytest.approx(want, rel=1e-9), j


def test_mmd_is_the_unbiased_statistic_of_gretton_et_al():
    """Gretton et al. 2012, eq. 3 (unbiased MMD²), written with numpy loops: the mean of k(x_i, x_j) over i ≠ j, the
    same for y, minus twice the mean of k(x_i, y_j); k = exp(−‖a − b‖²/(2h²)), h given or the (lower, as torch's)
    median of y's nonzero pairwise distances; chunked sums give the same number."""
    import numpy as np

    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(9, 3, generator=g, dtype=F64), 1.3 * torch.randn(7, 3, generator=g, dtype=F64) + 0.4
    xs, ys = x.numpy(), y.numpy()

    def mean_k(a, b, h, same):
        vals = [math.exp(-np.sum((a[i] - b[j]) ** 2) / (2 * h * h)) for i in range(len(a)) for j in range(len(b))
                if not (same and i == j)]
        return sum(vals) / len(vals)

    def want(h):
        return mean_k(xs, xs, h, True) + mean_k(ys, ys, h, True) - 2 * mean_k(xs, ys, h, False)

    dist = sorted(float(np.linalg.norm(ys[i] - ys[j])) for i in range(7) for j in range(7) if i != j)
    for h, kw in ((0.7, {"bandwidth": 0.7}), (0.7, {"bandwidth": 0.7, "chunk": 2}), (dist[(len(dist) - 1) // 2], {})):
        assert ss.metrics.mmd(x, y, **kw) == pytest.approx(want(h), rel=1e-10, abs=1e-13), kw


def test_sliced_w2_in_one_dimension_is_the_empirical_w2():
    """In 1-D every unit direction is ±1, so SW2 is the W2 of the two empirical laws: √mean((x_(i) − y_(i))²) for
    equal sizes, and against y's quantiles at (i + ½)/n (numpy's linear quantiles) for unequal ones."""
    import numpy as np

    g = torch.Generator().manual_seed(6)
    x, y = torch.randn(40, 1, generator=g, dtype=F64), 2.0 * torch.rand(40, 1, generator=g, dtype=F64)
    want = math.sqrt(float(np.mean((np.sort(x.numpy()[:, 0]) - np.sort(y.numpy()[:, 0])) ** 2)))
    assert ss.metrics.sliced_wasserstein(x, y, n_proj=5) == pytest.approx(want, rel=1e-12)
    q = (np.arange(40) + 0.5) / 40
    want = math.sqrt(float(np.mean((np.sort(x.numpy()[:, 0]) - np.quantile(y.numpy()[:25, 0], q)) ** 2)))
    assert ss.metrics.sliced_wasserstein(x, y[:25], n_proj=5) == pytest.approx(want, rel=1e-12)


def test_sliced_w2_equals_its_closed_form_for_gaussians():
    """For x ~ N(μ1, s1² I), y ~ N(μ2, s2² I) in R^d every projection θᵀ gives 1-D Gaussians, so
    W2²(θ) = (θᵀΔ)² + (s1 − s2)² and, over uniform unit θ, SW2² = |Δ|²/d + (s1 − s2)²."""
    g = torch.Generator().manual_seed(0)
    n, d = 8000, 4
    x = torch.randn(n, d, generator=g, dtype=F64)
    # equal means: every projection has the same W2 = |s1 − s2|, so only the samples' noise remains:
    # quantile-matched W2² has sd ≈ (s2 − s1)² √(2/n), plus an O(log n / n) two-sample bias
    y = 1.5 * torch.randn(n, d, generator=g, dtype=F64)
    sw2 = ss.metrics.sliced_wasserstein(x, y) ** 2
    assert abs(sw2 - 0.25) <= 5 * 0.25 * math.sqrt(2 / n) + 10 * math.log(n) / n, sw2
    # a shift Δ: (θᵀΔ)² = |Δ|² u², u² ~ Beta(1/2, (d−1)/2) with variance 2(d−1)/(d²(d+2)), averaged
    # over the 256 projections
    delta = torch.tensor([1.0, -2.0, 0.5, 1.0], dtype=F64)
    sw2 = ss.metrics.sliced_wasserstein(x, torch.randn(n, d, generator=g, dtype=F64) + delta) ** 2
    expect = float(delta @ delta) / d
    se = float(delta @ delta) * math.sqrt(2 * (d - 1) / (d * d * (d + 2)) / 256)
    assert abs(sw2 - expect) <= 5 * se + 10 * math.log(n) / n, (sw2, expect, se)
    # unequal sizes take the quantile path: same law, so W2 → 0 at the sampling-noise rate
    y = torch.randn(n // 4, d, generator=g, dtype=F64)
    assert ss.metrics.sliced_wasserstein(x[: n // 2], y, n_proj=32) ** 2 <= 20 * math.log(n) / n
    # MMD: unbiased, so ≈ 0 (sd ~ 1/n) for the same law and clearly positive for a shift
    same = ss.metrics.mmd(x[:2000], torch.randn(2000, d, generator=g, dtype=F64))
    assert abs(same) <= 5e-3 and ss.metrics.mmd(x[:2000], x[:2000] + 3.0) > 0.1


def test_metric_errors():
    gm = GaussianMixture.ring()
    with pytest.raises(ValueError, match="unknown metric"):
        ss.metrics.evaluate(torch.zeros(10, 2), gm, metrics=("fid",))
    with pytest.raises(ValueError, match=r"shape \(n, 2\)"):
        ss.metrics.evaluate(torch.zeros(10, 3), gm)


def test_check_grid_accepts_exactly_the_documented_grids():
    from scoresolve.timegrid import check_grid

    sde = ss.VPSDE()
    ts = check_grid([1.0, 0.5, 0.1], sde)
    assert ts.dtype == F64 and ts.device.type == "cpu" and ts.tolist() == [1.0, 0.5, 0.1]
    assert check_grid(torch.tensor([0.3, 1e-6], dtype=torch.float32), sde).dtype == F64
    with pytest.raises(ValueError, match=r"1-D tensor of at least 2 times, got shape \(1,\)"):
        check_grid([0.5], sde)
    with pytest.raises(ValueError, match=r"1-D tensor of at least 2 times, got shape \(2, 2\)"):
        check_grid([[1.0, 0.5], [0.4, 0.1]], sde)
    for bad in ([1.0, 0.5, 0.5, 0.1], [1.0, 0.4, 0.6, 0.1], [0.9, 0.5, 0.6], [0.2, 0.5]):
        with pytest.raises(ValueError, match=r"strictly decreasing \(from T towards eps\)"):
            check_grid(bad, sde)
    with pytest.raises(ValueError, match=r"grid must lie in \(0, T=1.0\]; got \[0.0, 1.0\]"):
        check_grid([1.0, 0.5, 0.0], sde)
    with pytest.raises(ValueError, match=r"got \[0.1, 1.5\]"):
        check_grid([1.5, 0.5, 0.1], sde)
    with pytest.raises(ValueError, match=r"got \[-0.1, 0.5\]"):
        check_grid([0.5, 0.2, -0.1], sde)
    check_grid([1.0, 0.6, 0.5, 0.1], sde)  # the end points alone decide the range


def test_make_grid_bounds_are_exactly_those_documented():
    sde = ss.VPSDE()
    assert ss.make_grid("uniform", sde, 1, 0.5).tolist() == [1.0, 0.5]  # one step is a valid grid
    for steps in (0, -1, 2.0):
        with pytest.raises(ValueError, match=f"steps must be an integer >= 1, got {steps!r}"):
            ss.make_grid("uniform", sde, steps, 1e-3)
    for eps in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match=rf"eps must lie in \(0, T=1.0\), got {eps}"):
            ss.make_grid("uniform", sde, 4, eps)
    with pytest.raises(ValueError, match="unknown grid 'x'; valid choices: uniform, quadratic, log_snr, karras"):
        ss.make_grid("x", sde, 4, 1e-3)
