"""likelihood() and bits_per_dim() against exact log-densities of Gaussian mixtures.

Ground truth: GaussianMixture.log_prob(x, eps, sde) is the exact log p_eps.  The ODE estimate is
closed with the exact p_T (``prior_logp=``) where the bar is about the solver, so the prior
mismatch (a modelling error no tolerance removes) is checked separately.  Statistical
tolerances come from the standard errors of the check itself.
"""

import json
import math
import re
import sys
import types
import warnings

import pytest
import torch

import scoresolve as ss
from scoresolve.likelihood import LikelihoodResult, bits_per_dim, likelihood
from scoresolve.targets import GaussianMixture

SDES = {"vp": ss.VPSDE(), "subvp": ss.SubVPSDE(), "ve": ss.VESDE(sigma_max=20.0)}
RING = GaussianMixture.ring(8, 2.0, 0.1)
GMM16 = GaussianMixture.random(16, 4, seed=3)
PROBLEMS = {"ring": (RING, 128), "gmm16": (GMM16, 64)}


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def data(gm, n, sde, seed=0, eps=None):
    eps = sde.default_eps if eps is None else eps
    return gm.sample(n, t=eps, sde=sde, dtype=torch.float64, generator=gen(seed))


def exact_prior(gm, sde):
    return lambda z: gm.log_prob(z, sde.T, sde)


def error(gm, sde, x, res, eps=None):
    eps = sde.default_eps if eps is None else eps
    return res.logp - gm.log_prob(x, eps, sde)


# ------------------------------------------------------------------ accuracy of the exact trace
@pytest.mark.parametrize("sde_name", list(SDES))
@pytest.mark.parametrize("problem", list(PROBLEMS))
def test_exact_trace_bias_below_1e3_nats(problem, sde_name):
    gm, n = PROBLEMS[problem]
    sde = SDES[sde_name]
    x = data(gm, n, sde)
    res = likelihood(gm.score_fn(sde), sde, x, prior_logp=exact_prior(gm, sde))
    err = error(gm, sde, x, res)
    assert abs(float(err.mean())) <= 1e-3
    assert float(err.abs().max()) <= 2e-2  # every point, not just the mean (per-point error norm)
    # each piece against ground truth: the change of log-density along the flow is
    # log p_eps(x) − log p_T(x(T)) under the exact densities, and the prior term is log p_T(x(T))
    z = res.latent
    exact_delta = gm.log_prob(x, sde.default_eps, sde) - gm.log_prob(z, sde.T, sde)
    assert float((res.delta_logp - exact_delta).abs().max()) <= 2e-2
    torch.testing.assert_close(res.prior_logp, gm.log_prob(z, sde.T, sde))
    torch.testing.assert_close(res.stats["prior_mismatch"], sde.prior_logp(z) - gm.log_prob(z, sde.T, sde))
    assert torch.equal(res.logp_stderr, torch.zeros(n, dtype=torch.float64))
    # bits/dim of the exact density, to the same accuracy as the nats above
    exact_bpd = -gm.log_prob(x, sde.default_eps, sde) / (gm.dim * math.log(2))
    assert float((res.bpd - exact_bpd).abs().max()) <= 2e-2 / (gm.dim * math.log(2))


def test_default_prior_differs_only_by_the_mismatch():
    sde = SDES["ve"]
    x = data(RING, 32, sde)
    a = likelihood(RING.score_fn(sde), sde, x)
    b = likelihood(RING.score_fn(sde), sde, x, prior_logp=exact_prior(RING, sde))
    torch.testing.assert_close(a.delta_logp, b.delta_logp, rtol=0, atol=0)
    torch.testing.assert_close(a.logp - b.logp, b.stats["prior_mismatch"])


def test_error_falls_as_rtol_falls():
    sde = SDES["vp"]
    x = data(RING, 64, sde, seed=1)
    rms = []
    for tol in (1e-3, 1e-5, 1e-7):
        res = likelihood(RING.score_fn(sde), sde, x, rtol=tol, atol=tol, prior_logp=exact_prior(RING, sde))
        rms.append(float(error(RING, sde, x, res).pow(2).mean().sqrt()))
    assert rms[0] > 10 * rms[1] > 100 * rms[2], rms


def test_float32_and_image_shaped_points():
    sde = SDES["vp"]
    x = data(RING, 16, sde).float()
    res = likelihood(RING.score_fn(sde), sde, x.reshape(16, 1, 2, 1), rtol=1e-4, atol=1e-4,
                     prior_logp=lambda z: RING.log_prob(z.flatten(1), sde.T, sde).float())
    assert res.logp.dtype == torch.float32 and res.latent.shape == (16, 1, 2, 1)
    exact = RING.log_prob(x.double(), sde.default_eps, sde)
    assert float((res.logp.double() - exact).abs().mean()) < 1e-2


# ------------------------------------------------------------------ Hutchinson
@pytest.fixture(scope="module")
def hutchinson_runs():
    sde = SDES["vp"]
    x = data(RING, 1000, sde, seed=2)
    exact = RING.log_prob(x, sde.default_eps, sde)
    runs = {}
    for k in (1, 4, 16):
        res = likelihood(RING.score_fn(sde), sde, x, trace="hutchinson", probes=k, generator=gen(10 + k),
                         error_norm="batch", rtol=1e-4, atol=1e-4, prior_logp=exact_prior(RING, sde))
        runs[k] = (res, res.logp - exact)
    return runs


def test_hutchinson_is_unbiased(hutchinson_runs):
    for _, err in hutchinson_runs.values():
        se = float(err.std()) / math.sqrt(err.numel())
        assert abs(float(err.mean())) <= 4 * se


def _log_sd_var(e):
    """Var(log sd) ≈ (kurtosis − 1) / (4n) (delta method)."""
    c = e - e.mean()
    kurt = float(c.pow(4).mean() / c.pow(2).mean() ** 2)
    return (kurt - 1) / (4 * e.numel())


def test_hutchinson_spread_falls_like_one_over_sqrt_k(hutchinson_runs):
    for k_lo, k_hi in ((1, 4), (4, 16)):
        e_lo, e_hi = hutchinson_runs[k_lo][1], hutchinson_runs[k_hi][1]
        log_ratio = math.log(float(e_lo.std()) / float(e_hi.std()))
        tol = 4 * math.sqrt(_log_sd_var(e_lo) + _log_sd_var(e_hi))
        assert abs(log_ratio - math.log(2.0)) <= tol, (k_lo, k_hi, math.exp(log_ratio), tol)


def test_hutchinson_stderr_is_calibrated(hutchinson_runs):
    """E[stderr²] = σ²(x)/K = E[err²] (per point; the solver error is negligible here)."""
    assert torch.isnan(hutchinson_runs[1][0].logp_stderr).all()
    for k in (4, 16):
        res, err = hutchinson_runs[k]
        diff = res.logp_stderr.pow(2) - err.pow(2)
        assert abs(float(diff.mean())) <= 4 * float(diff.std()) / math.sqrt(diff.numel())


def test_gaussian_probes_and_cost_counts(hutchinson_runs):
    sde = SDES["vp"]
    x = data(RING, 200, sde, seed=4)
    res = likelihood(RING.score_fn(sde), sde, x, trace="hutchinson", probe_dist="gaussian", probes=3,
                     generator=gen(1), prior_logp=exact_prior(RING, sde))
    err = res.logp - RING.log_prob(x, sde.default_eps, sde)
    assert abs(float(err.mean())) <= 4 * float(err.std()) / math.sqrt(200)
    s = res.stats
    assert s["forwards"] == s["rhs_evals"] and s["vjps"] == 3 * s["divergence_evals"]
    assert res.nfe == s["forwards"] + s["vjps"]


# ------------------------------------------------------------------ cost accounting
class CountingFn:
    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, x, t):
        self.calls += 1
        return self.fn(x, t)


def test_one_forward_per_rhs_and_steps_match_the_solver(monkeypatch):
    from torchdiffeq._impl import rk_common

    orig = rk_common.RKAdaptiveStepsizeODESolver._adaptive_step
    seen = {"accepted": 0, "rejected": 0}

    def instrumented(self, state):
        new = orig(self, state)
        seen["accepted" if new.t1 != state.t1 else "rejected"] += 1
        return new

    monkeypatch.setattr(rk_common.RKAdaptiveStepsizeODESolver, "_adaptive_step", instrumented)
    sde = SDES["vp"]
    fn = CountingFn(GMM16.score_fn(sde))
    x = data(GMM16, 16, sde)
    res = likelihood(fn, sde, x, rtol=1e-3, atol=1e-3)
    s = res.stats
    assert fn.calls == s["forwards"] == s["rhs_evals"]
    assert (s["steps_accepted"], s["steps_rejected"]) == (seen["accepted"], seen["rejected"])
    # dopri5: 2 evaluations choose the first step, 6 per attempted step (FSAL); the divergence
    # is skipped at the c = 1/5 stage of each step (zero weight for Δ), d VJPs everywhere else
    attempted = s["steps_accepted"] + s["steps_rejected"]
    assert s["rhs_evals"] == 2 + 6 * attempted
    assert s["divergence_evals"] == s["rhs_evals"] - attempted
    assert s["vjps"] == 16 * s["divergence_evals"] and res.nfe == s["forwards"] + s["vjps"]
    ts = s["ts"]
    assert float(ts[-1]) == sde.T and bool((ts.diff() > 0).all())


@pytest.mark.parametrize("method", ["dopri5", "dopri8"])
def test_skipping_weightless_stages_changes_nothing(method):
    sde = SDES["subvp"]
    x = data(RING, 32, sde, seed=6)
    kw = dict(trace="hutchinson", probes=2, generator=None, rtol=1e-4, atol=1e-4, solver=method)
    a = likelihood(RING.score_fn(sde), sde, x, seeds=range(32), **kw)
    b = likelihood(RING.score_fn(sde), sde, x, seeds=range(32), skip_stages=False, **kw)
    assert torch.equal(a.logp, b.logp) and torch.equal(a.latent, b.latent)
    assert a.stats["rhs_evals"] == b.stats["rhs_evals"] == b.stats["divergence_evals"]
    skipped = {"dopri5": 1, "dopri8": 4}[method]
    attempted = a.stats["steps_accepted"] + a.stats["steps_rejected"]
    assert a.stats["divergence_evals"] == a.stats["rhs_evals"] - skipped * attempted


# ------------------------------------------------------------------ the mixture's hand-written VJP
@pytest.mark.parametrize("gm", [RING, GMM16], ids=["ring", "gmm16"])
def test_exact_trace_through_the_mixture_vjp_equals_plain_autograd(gm):
    """The analytic score's hand-written VJP (its closed-form Jacobian) gives the same exact-trace
    likelihood, to float64 round-off, as plain autograd: here the score is ∇ log p_t taken by
    autograd of log_prob (create_graph), so each VJP is a double backward through log_prob."""
    sde = SDES["vp"]
    x = data(gm, 32, sde, seed=7)

    def autograd_score(z, t):
        with torch.enable_grad():
            zr = z if z.requires_grad else z.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(gm.log_prob(zr, t, sde).sum(), zr, create_graph=True)
        return g

    for kw in ({}, {"trace": "hutchinson", "probes": 3, "generator": gen(1)}):
        fast = likelihood(gm.score_fn(sde), sde, x, **kw)
        kw = {**kw, "generator": gen(1)} if kw else kw
        slow = likelihood(autograd_score, sde, x, **kw)
        assert fast.stats["rhs_evals"] == slow.stats["rhs_evals"], kw
        torch.testing.assert_close(fast.logp, slow.logp, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(fast.latent, slow.latent, rtol=1e-10, atol=1e-10)


# ------------------------------------------------------------------ batched VJPs
def _mlp_score(d: int):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(d + 1, 32), torch.nn.SiLU(), torch.nn.Linear(32, d)).double()
    return lambda x, t: net(torch.cat([x, t[:, None].to(x.dtype)], 1))


@pytest.mark.parametrize("kind", ["mixture", "mlp"])
def test_vmap_vjps_equal_the_loop(kind):
    """vjp="vmap" batches the d (exact) or K (Hutchinson) VJPs of an evaluation into one backward;
    the estimate, the solve and the counts are those of the one-at-a-time loop."""
    sde = SDES["vp"]
    x = data(GMM16, 24, sde, seed=8)
    score = GMM16.score_fn(sde) if kind == "mixture" else _mlp_score(16)
    for n, kw in ((24, {}), (24, {"trace": "hutchinson", "probes": 3}), (1, {})):
        a = likelihood(score, sde, x[:n], rtol=1e-4, atol=1e-4, seeds=range(n), **kw)
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # batched for real, no fallback to the loop
            b = likelihood(score, sde, x[:n], rtol=1e-4, atol=1e-4, seeds=range(n), vjp="vmap", **kw)
        assert (a.stats["rhs_evals"], a.stats["vjps"]) == (b.stats["rhs_evals"], b.stats["vjps"]), kw
        assert (a.stats["vjp"], b.stats["vjp"]) == ("loop", "vmap")  # the path that ran
        torch.testing.assert_close(b.logp, a.logp, rtol=1e-12, atol=1e-12)


def test_unknown_vjp_mode_is_refused():
    sde = SDES["vp"]
    with pytest.raises(ValueError, match="unknown vjp 'batched'; valid choices: loop, vmap"):
        likelihood(lambda z, t: -z, sde, data(RING, 4, sde), vjp="batched")


# ------------------------------------------------------------------ batch independence
def test_a_point_does_not_depend_on_its_batch():
    """The step size is shared by the batch, so a point's estimate changes with its batch mates,
    but with the per-point error norm each solve holds that point to the tolerance: the change
    is bounded by its solver error (here < 1e-3 nats at rtol 1e-5), not by anything the mates do.
    With per-point seeds the Hutchinson probes follow the point too."""
    sde = SDES["vp"]
    x = data(RING, 96, sde, seed=5)
    a, mates1, mates2 = x[:16], x[16:56], x[56:]
    score = RING.score_fn(sde)
    for kw in ({}, {"trace": "hutchinson", "probes": 2}):
        hutch = bool(kw)
        seeds = list(range(100, 116))
        s1 = seeds + list(range(40)) if hutch else None
        s2 = list(range(500, 540)) + seeds if hutch else None
        r1 = likelihood(score, sde, torch.cat([a, mates1]), seeds=s1, **kw)
        r2 = likelihood(score, sde, torch.cat([mates2, a]), seeds=s2, **kw)
        r3 = likelihood(score, sde, a[:1], seeds=seeds[:1] if hutch else None, **kw)
        diff = (r1.logp[:16] - r2.logp[40:]).abs()
        assert float(diff.max()) <= 1e-3, kw
        assert abs(float(r1.logp[0] - r3.logp[0])) <= 1e-3, kw


# ------------------------------------------------------------------ errors
def test_errors_name_the_argument_and_the_choices():
    sde = SDES["vp"]
    score = RING.score_fn(sde)
    x = data(RING, 4, sde)
    with pytest.raises(ValueError, match="floating-point.*bits_per_dim"):
        likelihood(score, sde, torch.zeros(4, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"shape \(B, \*data_dims\)"):
        likelihood(score, sde, x[0])
    for bad in (0, -1, True, 2.0):
        with pytest.raises(ValueError, match="probes must be an integer >= 1"):
            likelihood(score, sde, x, trace="hutchinson", probes=bad)
    with pytest.raises(ValueError, match="only to trace='hutchinson'"):
        likelihood(score, sde, x, probes=4)
    with pytest.raises(ValueError, match="unknown trace 'hutch'; valid choices: exact, hutchinson"):
        likelihood(score, sde, x, trace="hutch")
    with pytest.raises(ValueError, match="unknown probe_dist 'normal'; valid choices: rademacher, gaussian"):
        likelihood(score, sde, x, trace="hutchinson", probe_dist="normal")
    with pytest.raises(ValueError, match="unknown solver 'rk4'; valid choices: dopri5, dopri8"):
        likelihood(score, sde, x, solver="rk4")
    with pytest.raises(ValueError, match="unknown error_norm"):
        likelihood(score, sde, x, error_norm="max")
    for eps in (0.0, -1e-3, 1.0, 2.0):
        with pytest.raises(ValueError, match=r"eps must lie in \(0, T=1.0\)"):
            likelihood(score, sde, x, eps=eps)
    with pytest.raises(ValueError, match="rtol and atol"):
        likelihood(score, sde, x, rtol=0)
    with pytest.raises(ValueError, match="seeds must have one entry per point"):
        likelihood(score, sde, x, trace="hutchinson", seeds=[1, 2])
    with pytest.raises(ValueError, match="prior_logp must return shape"):
        likelihood(score, sde, x, rtol=1e-2, atol=1e-2, prior_logp=lambda z: z)
    with pytest.raises(TypeError, match="sde must be"):
        likelihood(score, "vp", x)


def test_non_finite_values_are_reported_with_the_time():
    sde = SDES["vp"]
    x = data(RING, 4, sde)

    def nan_score(x, t):
        return torch.where(t[:, None] > 0.5, torch.full_like(x, float("nan")), -x)

    with pytest.raises(ss.NonFiniteScoreError, match=r"NaN/Inf at step \d+, t=") as info:
        likelihood(nan_score, sde, x)
    assert 0.5 < float(re.search(r"t=([0-9.e-]+)", str(info.value)).group(1)) <= 1.0

    def nan_divergence(x, t):  # finite value, NaN gradient once t > 0.3
        return -x + torch.sqrt(0 * x) if float(t[0]) > 0.3 else -x

    msg = r"divergence of score_fn is NaN/Inf at t=.* \(step \d+, 4 of 4 points affected\)$"
    with pytest.raises(ss.NonFiniteScoreError, match=msg) as info:
        likelihood(nan_divergence, sde, x)
    assert 0.3 < float(re.search(r"t=([0-9.e-]+)", str(info.value)).group(1)) <= 1.0


def test_non_finite_data_are_refused_by_name():
    sde = SDES["vp"]
    x = data(RING, 3, sde)
    x[1, 0] = float("nan")
    with pytest.raises(ValueError, match=r"^x contains NaN/Inf$"):
        likelihood(RING.score_fn(sde), sde, x)


def test_scores_without_autograd_are_refused():
    sde = SDES["vp"]
    x = data(RING, 4, sde)
    score = RING.score_fn(sde)

    def detached(x, t):
        return score(x.detach(), t)

    with pytest.raises(RuntimeError, match="does not depend on x through autograd"):
        likelihood(detached, sde, x)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        likelihood(score, sde, x)
    with torch.no_grad():  # plain no_grad is fine: the solver re-enables grad for the score
        res = likelihood(score, sde, x, rtol=1e-3, atol=1e-3)
    assert torch.isfinite(res.logp).all()


# ------------------------------------------------------------------ bits per dim
GAUSS3 = GaussianMixture(torch.ones(1), torch.full((1, 3), 0.1), torch.tensor([0.25]))


def expected_bound(gm, sde, imgs, c, b):
    """Closed form of E_U[log p_eps(b + c (k + U))] + d log c for a one-component isotropic
    Gaussian N(μ, s²) (p_eps = N(m μ, m² s² + σ²) per coordinate): per dim
    −½ log(2π v) − ((ȳ − m μ)² + c²/12)/(2v) + log c, ȳ = b + c (k + ½) the bin centre;
    and the exact discrete log P(k) (a product of Φ differences)."""
    m, s = sde.marginal(sde.default_eps)
    mu, v = m * float(gm.means[0, 0]), m * m * float(gm.covs[0, 0]) + s * s
    centre = b + c * (imgs.double() + 0.5)
    bound = (-0.5 * math.log(2 * math.pi * v) - ((centre - mu) ** 2 + c * c / 12) / (2 * v) + math.log(c)).sum(1)
    normal = torch.distributions.Normal(mu, math.sqrt(v))
    edges = b + c * imgs.double()
    return bound, (normal.cdf(edges + c) - normal.cdf(edges)).log().sum(1)


@pytest.mark.parametrize("scaling", ["bins", "levels"])
def test_bits_per_dim_matches_the_closed_form_bound_of_a_gaussian(scaling):
    """The dequantized bound equals its closed form within the Monte-Carlo error of the U draws,
    and cannot exceed the exact discrete log-likelihood."""
    sde = SDES["vp"]
    kw = {"bits": 3} if scaling == "bins" else {"levels": 9}
    c = 0.25  # 2/2^3 for "bins", 2/(9 − 1) for "levels"
    b = -1.0 if scaling == "bins" else -1.0 - c / 2
    imgs = torch.tensor([[0, 3, 7], [4, 4, 4], [2, 5, 6], [1, 7, 3]], dtype=torch.uint8)
    res = bits_per_dim(GAUSS3.score_fn(sde), sde, imgs, scaling=scaling, repeats=8, dtype=torch.float64,
                       generator=gen(0), prior_logp=exact_prior(GAUSS3, sde), **kw)
    assert isinstance(res, LikelihoodResult) and res.stats["offset_bpd"] == pytest.approx(2.0)
    bound, exact = expected_bound(GAUSS3, sde, imgs, c, b)
    assert ((res.logp - bound).abs() <= 4 * res.logp_stderr + 1e-3).all(), (res.logp - bound, res.logp_stderr)
    assert (bound <= exact).all() and ((exact - bound) < 0.1).all()
    # bits/dim: the closed-form bound in bits, with 8 bits per dim less the log c offset
    bpd_bound = -bound / (3 * math.log(2))
    assert ((res.bpd - bpd_bound).abs() <= (4 * res.logp_stderr + 1e-3) / (3 * math.log(2))).all()
    # bin centres instead of the bound: one solve, deterministic, close to the exact value here
    mid = bits_per_dim(GAUSS3.score_fn(sde), sde, imgs, scaling=scaling, dequantize="none",
                       dtype=torch.float64, prior_logp=exact_prior(GAUSS3, sde), **kw)
    assert mid.stats["repeats"] == 1 and ((mid.logp - exact).abs() < 0.05).all()


def test_bits_per_dim_offsets_follow_bit_depth_and_range():
    sde = SDES["vp"]
    gm = GaussianMixture(torch.ones(1), torch.zeros(1, 2), torch.tensor([0.1]))
    imgs = torch.tensor([[0, 255], [128, 64]], dtype=torch.uint8)
    kw = dict(repeats=1, rtol=1e-3, atol=1e-3, generator=gen(0))
    a = bits_per_dim(gm.score_fn(sde), sde, imgs, **kw)
    b = bits_per_dim(gm.score_fn(sde), sde, imgs, data_range=(0.0, 1.0), **kw)
    c = bits_per_dim(gm.score_fn(sde), sde, imgs // 16, levels=17, scaling="levels", **kw)
    assert a.stats["offset_bpd"] == pytest.approx(7.0) and b.stats["offset_bpd"] == pytest.approx(8.0)
    assert c.stats["offset_bpd"] == pytest.approx(3.0)  # bins of 2/16 around 17 levels on [-1, 1]
    assert torch.isnan(a.logp_stderr).all()


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
@pytest.mark.parametrize("source", ["generator", "seeds"])
def test_trace_probes_have_identity_second_moment(kind, source):
    """E[v vᵀ] = I (what makes Hutchinson's vᵀ J v unbiased), ±1 entries for Rademacher, in x's dtype."""
    from scoresolve.likelihood import _draw_probes

    x = torch.zeros(500, 3, dtype=torch.float32)
    kw = dict(generator=gen(4), seeds=None) if source == "generator" else dict(generator=None, seeds=list(range(500)))
    v = _draw_probes(kind, 40, x, **kw)
    assert v.shape == (40, 500, 3) and v.dtype == torch.float32
    if kind == "rademacher":
        assert bool((v.abs() == 1).all())
    flat = v.double().reshape(-1, 3)
    second = flat.T @ flat / flat.shape[0]  # 20k draws: entries have sd ≤ sqrt(2/20000) = 0.01
    assert float((second - torch.eye(3, dtype=torch.float64)).abs().max()) < 5 * math.sqrt(2 / flat.shape[0])
    assert float(flat.mean(0).abs().max()) < 5 / math.sqrt(flat.shape[0])


def test_a_single_point_and_two_probes_and_what_the_stats_record():
    """Batch 1 (exact and Hutchinson with K = 2 > B), a score that ignores x, and the run's record."""
    sde = SDES["vp"]
    x = data(GMM16, 1, sde, seed=7)
    res = likelihood(GMM16.score_fn(sde), sde, x, prior_logp=exact_prior(GMM16, sde))
    assert abs(float(error(GMM16, sde, x, res)[0])) <= 2e-2
    assert torch.equal(res.logp_stderr, torch.zeros(1, dtype=torch.float64))  # exact: no Monte-Carlo error
    assert res.stats["probes"] == 0 and res.stats["probe_dist"] is None
    assert res.stats["atol"] == 1e-5 and res.stats["eps"] == sde.default_eps and res.stats["dim"] == 16
    two = likelihood(GMM16.score_fn(sde), sde, x, trace="hutchinson", probes=2, generator=gen(1))
    assert two.stats["probes"] == 2 and two.stats["probe_dist"] == "rademacher"
    assert bool(torch.isfinite(two.logp_stderr).all()) and float(two.logp_stderr[0]) > 0
    one = likelihood(GMM16.score_fn(sde), sde, x, trace="hutchinson", probes=1, generator=gen(1))
    assert torch.isnan(one.logp_stderr).all()  # one probe: its spread is unknown
    w = torch.zeros(16, dtype=torch.float64, requires_grad=True)  # a score through parameters only: ∇·s = 0
    flat = likelihood(lambda y, t: w.expand_as(y) * 1.0, sde, x)
    assert torch.isfinite(flat.logp).all()


def test_float64_exact_trace_reaches_float64_accuracy():
    """A Gaussian's flow at rtol = atol = 1e-8: the log-density to ~1e-8, so every piece of the
    augmented state (the divergence included) is accumulated in float64."""
    sde = SDES["vp"]
    gm = GaussianMixture(torch.ones(1), torch.zeros(1, 3), torch.tensor([0.3]))
    x = data(gm, 5, sde)
    res = likelihood(gm.score_fn(sde), sde, x, rtol=1e-8, atol=1e-8, prior_logp=exact_prior(gm, sde))
    assert float(error(gm, sde, x, res).abs().max()) < 5e-8


def test_tolerances_reach_the_solver():
    sde = SDES["vp"]
    x = data(RING, 8, sde)
    loose = likelihood(RING.score_fn(sde), sde, x, rtol=1e-2, atol=1e-12)
    tight = likelihood(RING.score_fn(sde), sde, x, rtol=1e-6, atol=1e-12)
    assert loose.stats["rhs_evals"] < tight.stats["rhs_evals"]
    assert (loose.stats["rtol"], tight.stats["rtol"]) == (1e-2, 1e-6)


def test_point_error_norm_is_the_worst_points_rms():
    """error_norm="point": max over points of max(RMS of its x error, largest |Δ error|)."""
    from scoresolve.likelihood import _point_norm

    ex = torch.tensor([[3.0, 4.0], [1.0, -1.0]], dtype=torch.float64)  # RMS 3.536, 1
    ed = torch.tensor([[0.5], [-2.0]], dtype=torch.float64)
    assert float(_point_norm((ex, ed))) == pytest.approx(math.sqrt(12.5))
    assert float(_point_norm((ex, 5 * ed))) == pytest.approx(10.0)
    assert float(_point_norm((-ex, ed))) == pytest.approx(math.sqrt(12.5))  # signs do not matter
    x = data(RING, 3, SDES["vp"])
    kw = dict(rtol=1e-3, atol=1e-3)
    assert likelihood(RING.score_fn(SDES["vp"]), SDES["vp"], x, **kw).latent is not None
    assert likelihood(RING.score_fn(SDES["vp"]), SDES["vp"], x, return_latent=False, **kw).latent is None


def test_step_budget_counts_rejected_steps_too():
    sde = SDES["vp"]
    x = data(RING, 8, sde)
    free = likelihood(RING.score_fn(sde), sde, x, rtol=1e-7, atol=1e-7)
    acc, rej = free.stats["steps_accepted"], free.stats["steps_rejected"]
    assert rej > 0
    likelihood(RING.score_fn(sde), sde, x, rtol=1e-7, atol=1e-7, max_steps=acc + rej)  # exactly enough
    with pytest.raises(ss.StepLimitError, match=rf"budget of {acc + rej - 1} attempted steps"):
        likelihood(RING.score_fn(sde), sde, x, rtol=1e-7, atol=1e-7, max_steps=acc + rej - 1)


def test_bits_per_dim_records_per_image_pieces():
    sde = SDES["vp"]
    gm = GaussianMixture(torch.ones(1), torch.zeros(1, 2), torch.tensor([0.1]))
    imgs = torch.tensor([[0, 255], [128, 64], [3, 9]], dtype=torch.uint8)
    res = bits_per_dim(gm.score_fn(sde), sde, imgs, repeats=3, rtol=1e-3, atol=1e-3, generator=gen(5))
    per = res.stats["per_repeat_logp"]
    assert per.shape == (3, 3)
    torch.testing.assert_close(res.logp_stderr, per.std(0) / math.sqrt(3), rtol=1e-12, atol=0)
    assert res.prior_logp.shape == res.delta_logp.shape == (3,)
    torch.testing.assert_close(res.prior_logp + res.delta_logp + res.stats["offset_nats"], res.logp,
                               rtol=1e-6, atol=1e-5)  # float32 solves
    assert (res.stats["levels"], res.stats["data_range"]) == (256, (-1.0, 1.0))
    assert res.stats["offset_nats"] == pytest.approx(2 * math.log(2 / 256))
    mid = bits_per_dim(gm.score_fn(sde), sde, imgs, dequantize="none", rtol=1e-3, atol=1e-3)
    assert torch.equal(mid.logp_stderr, torch.zeros(3, dtype=mid.logp.dtype))  # exact trace, bin centres
    g1 = GaussianMixture(torch.ones(1), torch.zeros(1, 1), torch.tensor([0.1]))
    one = bits_per_dim(g1.score_fn(sde), sde, imgs[:, :1], repeats=1, rtol=1e-3, atol=1e-3, generator=gen(5))
    assert one.logp.shape == (3,)  # one value per image is data too


def test_bits_per_dim_is_reproducible_and_sums_its_solves():
    """One generator drives the dequantization noise and the Hutchinson probes; the totals are the solves'."""
    sde = SDES["vp"]
    gm = GaussianMixture(torch.ones(1), torch.zeros(1, 2), torch.tensor([0.1]))
    imgs = torch.tensor([[0, 255], [128, 64]], dtype=torch.uint8)
    kw = dict(repeats=2, rtol=1e-3, atol=1e-3, trace="hutchinson", probes=1)
    a, b = (bits_per_dim(gm.score_fn(sde), sde, imgs, generator=gen(3), **kw) for _ in range(2))
    assert torch.equal(a.logp, b.logp)
    torch.manual_seed(0)  # the global RNG must play no part
    c = bits_per_dim(gm.score_fn(sde), sde, imgs, generator=gen(3), **kw)
    assert torch.equal(a.logp, c.logp)
    assert a.stats["bin_width"] == pytest.approx(2 / 256)
    for key in ("forwards", "vjps", "wall_time"):
        assert a.stats[key] == pytest.approx(sum(r[key] for r in a.stats["solves"])) and a.stats[key] > 0


def test_bits_per_dim_errors():
    sde = SDES["vp"]
    score = RING.score_fn(sde)
    with pytest.raises(ValueError, match=r"must lie in \[0, 255\] for bits=8; got values in \[0, 256\]"):
        bits_per_dim(score, sde, torch.tensor([[0, 256]]))
    with pytest.raises(ValueError, match=r"\[0, 15\] for bits=4; got values in \[-1, 3\]"):
        bits_per_dim(score, sde, torch.tensor([[-1, 3]]), bits=4)
    with pytest.raises(ValueError, match="integer pixel levels"):
        bits_per_dim(score, sde, torch.tensor([[0.5, -0.25]]))
    with pytest.raises(ValueError, match="unknown dequantize 'variational'; valid choices: uniform, none"):
        bits_per_dim(score, sde, torch.tensor([[0, 1]]), dequantize="variational")
    with pytest.raises(ValueError, match="repeats must be an integer >= 1"):
        bits_per_dim(score, sde, torch.tensor([[0, 1]]), repeats=0)
    for name, bad in (("levels", 2.5), ("levels", True), ("repeats", 2.0), ("repeats", True)):
        with pytest.raises(ValueError, match=rf"^{name} must be an integer >= [12], got {bad!r}$"):
            bits_per_dim(score, sde, torch.tensor([[0, 1]]), **{name: bad})
    with pytest.raises(ValueError, match=r"^dtype must be a floating type, got torch.int32$"):
        bits_per_dim(score, sde, torch.tensor([[0, 1]]), dtype=torch.int32)
    with pytest.raises(ValueError, match=r"^images must hold integer pixel levels \(e.g. uint8\); got non-integer"):
        bits_per_dim(score, sde, torch.tensor([[0.5, 1.0]]))
    with pytest.raises(TypeError, match=r"^x must be a tensor of shape \(B, ...\), got list$"):
        likelihood(score, sde, [[0.0, 1.0]])
    for bad in (True, 8.0, 0):
        with pytest.raises(ValueError, match=rf"bits must be an integer >= 1, got {bad!r}"):
            bits_per_dim(score, sde, torch.tensor([[0, 1]]), bits=bad)
    with pytest.raises(TypeError, match=r"images must be a tensor of shape \(B, ...\), got list"):
        bits_per_dim(score, sde, [[0, 1]])
    with pytest.raises(ValueError, match=r"images must have shape \(B, \*data_dims\) with B >= 1, got \(2, 0\)"):
        bits_per_dim(score, sde, torch.zeros(2, 0, dtype=torch.uint8))
    with pytest.raises(ValueError, match="bits must be an integer >= 1"):
        bits_per_dim(score, sde, torch.tensor([[0, 1]]), bits=0)
    with pytest.raises(ValueError, match=r"\[0, 16\] for levels=17; got values in \[0, 17\]"):
        bits_per_dim(score, sde, torch.tensor([[0, 17]]), levels=17, scaling="levels")
    with pytest.raises(ValueError, match="unknown scaling 'centred'; valid choices: bins, levels"):
        bits_per_dim(score, sde, torch.tensor([[0, 1]]), scaling="centred")
    with pytest.raises(ValueError, match="levels must be an integer >= 2"):
        bits_per_dim(score, sde, torch.tensor([[0, 1]]), levels=1)
    with pytest.raises(ValueError, match="data_range"):
        bits_per_dim(score, sde, torch.tensor([[0, 1]]), data_range=(1.0, -1.0))


# ------------------------------------------------------------------ CLI
def _fake_train(monkeypatch, gm, sde, quantized=False):
    run = types.SimpleNamespace(score_fn=gm.score_fn(sde), sde=sde, config={}, data_shape=(gm.dim,))
    train = types.ModuleType("scoresolve.train")
    train.load_run = lambda path, **kw: run

    def load_dataset(name, split="train"):
        x = gm.sample(50, t=sde.default_eps, sde=sde, generator=gen(7 if split == "test" else 8))
        if quantized:  # 17 levels on [-1, 1], as load_dataset scales digits
            x = ((x.clamp(-1, 1) + 1) * 8).round() / 8 - 1
        return x

    dmod = types.ModuleType("scoresolve.train.data")
    dmod.load_dataset = load_dataset
    train.data = dmod
    monkeypatch.setitem(sys.modules, "scoresolve.train", train)
    monkeypatch.setitem(sys.modules, "scoresolve.train.data", dmod)


def test_cli_writes_json_atomically(tmp_path, monkeypatch):
    from scoresolve.cli import main

    sde = SDES["vp"]
    _fake_train(monkeypatch, RING, sde)
    out = tmp_path / "sub" / "nll.json"
    rc = main(["likelihood", "--run", str(tmp_path), "--data", "ring8", "--out", str(out),
               "--limit", "20", "--trace", "hutchinson", "--probes", "4", "--rtol", "1e-3",
               "--atol", "1e-3", "--batch-size", "8", "--dtype", "float64"])
    assert rc == 0
    rep = json.loads(out.read_text())
    assert rep["n"] == 20 and len(rep["logp"]) == 20 and rep["probes"] == 4 and len(rep["solves"]) == 3
    assert rep["levels"] is None and rep["kind"].startswith("continuous")
    x = RING.sample(50, t=sde.default_eps, sde=sde, generator=gen(7))[:20].double()
    err = torch.tensor(rep["logp"], dtype=torch.float64) - RING.log_prob(x, sde.default_eps, sde)
    assert abs(float(err.mean())) <= 4 * float(err.std()) / math.sqrt(20) + 1e-2
    assert [p.name for p in out.parent.iterdir()] == ["nll.json"]  # no temp file left behind
    assert main(["likelihood", "--run", "r", "--data", "d", "--out", str(out), "--probes", "3"]) == 2


def test_cli_reports_the_dequantized_bound_for_quantized_data(tmp_path, monkeypatch):
    from scoresolve.cli import main

    sde = SDES["vp"]
    gm = GaussianMixture(torch.ones(1), torch.full((1, 2), 0.1), torch.tensor([0.25]))
    _fake_train(monkeypatch, gm, sde, quantized=True)
    out = tmp_path / "nll.json"
    rc = main(["likelihood", "--run", str(tmp_path), "--data", "digits", "--out", str(out),
               "--rtol", "1e-4", "--atol", "1e-4", "--dtype", "float64", "--repeats", "2"])
    assert rc == 0
    rep = json.loads(out.read_text())
    assert rep["levels"] == 17 and "dequantization bound" in rep["kind"] and rep["n"] == 50
    # closed form of the expected bound for each image (levels scaling: bins of 1/8 centred on k/8 − 1)
    x = gm.sample(50, t=sde.default_eps, sde=sde, generator=gen(7))
    k = ((x.clamp(-1, 1) + 1) * 8).round()
    c = 2 / 16
    bound, _ = expected_bound(gm, sde, k, c, -1.0 - c / 2)
    diff = torch.tensor(rep["logp"], dtype=torch.float64) - bound
    assert abs(float(diff.mean())) <= 4 * float(diff.std()) / math.sqrt(50) + 1e-3
    # the reported bits/dim is the closed-form bound's, within the same Monte-Carlo error
    bpd_se = 4 * float(diff.std()) / math.sqrt(50) / (2 * math.log(2)) + 1e-3
    assert abs(rep["bits_per_dim"] - float(-bound.mean()) / (2 * math.log(2))) <= bpd_se
    assert main(["likelihood", "--run", "r", "--data", "digits", "--out", str(out), "--levels", "5"]) == 2


def test_cli_on_a_trained_run(tmp_path):
    """End to end with the training package: train a tiny ring8 model, then its NLL via the CLI
    equals likelihood() on load_run's score (same solves, so to the solver's rounding)."""
    from scoresolve.cli import main
    from scoresolve.train import cli as train_cli
    from scoresolve.train import load_run
    from scoresolve.train.data import load_dataset

    rund = tmp_path / "run"
    assert train_cli.train_main(["--data", "ring8", "--out", str(rund), "--steps", "20", "--width", "16",
                                 "--depth", "1", "--no-progress", "--checkpoint-every", "20"]) == 0
    run = load_run(rund)
    x = load_dataset("ring8", "test")[:8]
    # the likelihood differentiates the score: a loaded run must keep x's graph (no torch.no_grad() inside)
    assert run.score_fn(x.clone().requires_grad_(True), torch.full((8,), 0.5)).requires_grad, (
        "load_run's score_fn cannot be differentiated (runs under torch.no_grad())")
    out = tmp_path / "nll.json"
    assert main(["likelihood", "--run", str(rund), "--data", "ring8", "--out", str(out), "--limit", "8",
                 "--rtol", "1e-3", "--atol", "1e-3"]) == 0
    rep = json.loads(out.read_text())
    res = likelihood(run.score_fn, run.sde, x, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(torch.tensor(rep["logp"], dtype=torch.float64), res.logp.double(), rtol=0, atol=1e-4)


# ------------------------------------------------------------------ quadrature on the solver's steps
@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_quadrature_reaches_the_exact_log_density_with_fewer_vjps(sde_name):
    """x integrated alone, ∫ tr∇s dt by Gauss-Legendre on each accepted step: the error against
    the exact log p_eps falls with the tolerance as the stage-integrated solve's does, at a
    fraction of its VJPs (3 divergences per accepted step, none at rejected steps)."""
    sde = SDES[sde_name]
    x = data(GMM16, 64, sde, seed=2)
    exact = GMM16.log_prob(x, sde.default_eps, sde)
    kw = dict(prior_logp=exact_prior(GMM16, sde))
    rms = {}
    for tol in (1e-3, 1e-5):
        res = likelihood(GMM16.score_fn(sde), sde, x, rtol=tol, atol=tol, quadrature=3, **kw)
        s = res.stats
        assert s["quadrature"] == 3 and s["divergence_evals"] == 3 * s["steps_accepted"]
        assert s["vjps"] == 16 * s["divergence_evals"] and s["forwards"] == s["rhs_evals"] + s["divergence_evals"]
        rms[tol] = float((res.logp - exact).pow(2).mean().sqrt())
    staged = likelihood(GMM16.score_fn(sde), sde, x, rtol=1e-5, atol=1e-5, **kw)
    assert rms[1e-5] < 2e-3 and rms[1e-5] < rms[1e-3] / 5
    assert rms[1e-5] < 2 * float((staged.logp - exact).pow(2).mean().sqrt()) + 1e-4
    assert res.stats["vjps"] < staged.stats["vjps"] / 2


def test_quadrature_error_falls_with_the_nodes_at_a_fixed_tolerance():
    """At a tight tolerance the step grid resolves x; the midpoint rule (order 2) then leaves a
    quadrature error that 3 Gauss nodes (order 6) remove."""
    sde = SDES["vp"]
    x = data(RING, 64, sde, seed=4)
    exact = RING.log_prob(x, sde.default_eps, sde)
    err = {n: float((likelihood(RING.score_fn(sde), sde, x, rtol=1e-6, atol=1e-6, quadrature=n,
                                prior_logp=exact_prior(RING, sde)).logp - exact).abs().max()) for n in (1, 3)}
    assert err[3] < 1e-3 < err[1] and err[3] < err[1] / 10


def test_quadrature_with_hutchinson_probes_and_vmap_matches_the_loop():
    sde = SDES["subvp"]
    x = data(GMM16, 16, sde, seed=5)
    kw = dict(trace="hutchinson", probes=3, seeds=range(16), rtol=1e-4, atol=1e-4, quadrature=2)
    a = likelihood(GMM16.score_fn(sde), sde, x, **kw)
    b = likelihood(GMM16.score_fn(sde), sde, x, vjp="vmap", **kw)
    assert torch.allclose(a.logp, b.logp, rtol=0, atol=1e-10) and bool((a.logp_stderr > 0).all())
    assert a.stats["vjps"] == 3 * a.stats["divergence_evals"]


@pytest.mark.parametrize("bad", [-1, 1.5, True])
def test_quadrature_argument_is_checked(bad):
    sde = SDES["vp"]
    x = data(RING, 4, sde)
    with pytest.raises(ValueError, match="quadrature must be an integer >= 0"):
        likelihood(RING.score_fn(sde), sde, x, quadrature=bad)
    with pytest.raises(ValueError, match="needs an FSAL solver: dopri5, bosh3"):
        likelihood(RING.score_fn(sde), sde, x, quadrature=2, solver="dopri8")
