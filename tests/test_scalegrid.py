"""scale_grid / data_scale: a fixed-step grid from the data's scale read off the score at T (ground truth:
Gaussian data, whose x̂_0 at T has a closed-form variance; exact mixture log-densities)."""

from __future__ import annotations

import math

import pytest
import torch

import scoresolve as ss
from scoresolve.score import NonFiniteScoreError
from scoresolve.targets import GaussianMixture

SDES = {"vp": ss.VPSDE(), "ve": ss.VESDE()}


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
@pytest.mark.parametrize("s", [0.05, 0.5, 2.0])
def test_data_scale_is_the_closed_form_for_gaussian_data(sde_name, s):
    """Data N(μ, s² I) in 4-d: x̂_0(x_T) = μ + s²/(s² + σ̃²) (y − μ) with Var y = s² + σ̃², so
    ŝ⁴ = σ̃_T² s⁴/(s² + σ̃_T²) (→ s).  4096 pilot draws × 4 coordinates: the variance estimate's relative
    sd is √(2/4095)/2 = 1.1 %, ŝ's a quarter of it; 5 sd = 1.4 %."""
    sde = SDES[sde_name]
    target = GaussianMixture(torch.ones(1), torch.tensor([[0.3, -1.0, 2.0, 0.0]]), torch.full((1,), s * s))
    got = ss.data_scale(target.score_fn(sde), sde, (4096, 4), generator=torch.Generator().manual_seed(3),
                        dtype=torch.float64)
    m, sig = (float(v) for v in sde.marginal(torch.tensor(sde.T, dtype=torch.float64)))
    st2 = (sig / m) ** 2
    want = (st2 * s ** 4 / (s * s + st2)) ** 0.25
    assert abs(got / want - 1) < 5 * 0.25 * math.sqrt(2 / 4095) / 2, (got, want)


def test_scale_grid_jumps_to_factor_times_the_scale_then_steps_uniformly_in_log_snr():
    """T, then σ/m = factor · ŝ, then steps − 1 equal steps in λ to eps; the ends exact; a factor too large
    for a jump gives the log-SNR grid itself, one too small stops the first step at half the range."""
    sde, target = SDES["vp"], GaussianMixture.ring(8, 2.0, 0.1)
    kw = dict(generator=torch.Generator().manual_seed(0))
    g = ss.scale_grid(target.score_fn(sde), sde, (256, 2), "unipc", 12, **kw)
    assert g.ts.dtype == torch.float64 and len(g.ts) == 13 and float(g.ts[0]) == sde.T and float(g.ts[-1]) == 1e-3
    assert set(g.sample_options) == {"grid", "data_mean"} and g.sample_options["grid"] is g.ts
    assert g.nfe == 12 and g.method == "unipc" and g.pilot_nfe == 1.0
    torch.testing.assert_close(g.sample_options["data_mean"], ss.data_mean(target.score_fn(sde), sde, (256, 2),
                               generator=torch.Generator().manual_seed(0)), rtol=0, atol=1e-12)
    plain = ss.scale_grid(target.score_fn(sde), sde, (256, 2), "unipc", 12, data_mean=False,
                          generator=torch.Generator().manual_seed(0)).sample_options
    assert set(plain) == {"grid"} and torch.equal(plain["grid"], g.ts)
    lam = 0.5 * sde.log_snr(g.ts)
    assert g.first_sigma == pytest.approx(ss.scalegrid.FACTOR * g.scale, rel=1e-12)
    assert float(lam[1]) == pytest.approx(-math.log(g.first_sigma), abs=1e-9)
    torch.testing.assert_close(lam[2:] - lam[1:-1], (lam[2:] - lam[1:-1]).mean().expand(11), rtol=0, atol=1e-9)
    assert g.scale == pytest.approx(ss.data_scale(target.score_fn(sde), sde, (256, 2),
                                                  generator=torch.Generator().manual_seed(0)), rel=1e-12)
    no_jump = ss.scale_grid(target.score_fn(sde), sde, (256, 2), "unipc", 12, factor=1e6, **kw)
    torch.testing.assert_close(no_jump.ts, ss.make_grid("log_snr", sde, 12, 1e-3), rtol=1e-12, atol=1e-12)
    far = ss.scale_grid(target.score_fn(sde), sde, (256, 2), "unipc", 12, factor=1e-9, **kw)
    lam_far = 0.5 * sde.log_snr(far.ts)
    assert float(lam_far[1]) == pytest.approx(float(lam_far[0] + lam_far[-1]) / 2, abs=1e-9)


def test_scaled_jump_places_the_first_step_for_any_scale():
    """λ_1 = −log(factor · ŝ) for scales below and above 1 (clamped between the log-SNR grid's first
    point and half the range), half the range for ŝ = 0 (data at one point); a given eps is kept; the
    pilot's smallest size (2 draws) and chunk (1 row) are accepted."""
    sde = SDES["vp"]
    lam0, lam_end = (0.5 * float(sde.log_snr(torch.tensor(t, dtype=torch.float64))) for t in (sde.T, 1e-3))
    for s_hat in (0.5, 0.9, 1.2):
        ts, lam1 = ss.scalegrid.scaled_jump(sde, 10, 1e-3, s_hat)
        assert lam1 == pytest.approx(-math.log(ss.scalegrid.FACTOR * s_hat), rel=1e-12)
        assert 0.5 * float(sde.log_snr(ts[1])) == pytest.approx(lam1, abs=1e-9)
    assert ss.scalegrid.scaled_jump(sde, 10, 1e-3, 0.0)[1] == pytest.approx((lam0 + lam_end) / 2, rel=1e-12)
    target = GaussianMixture.ring(8, 0.75, 0.04)  # ŝ < 1: the jump still placed from it
    small = ss.scale_grid(target.score_fn(sde), sde, (256, 2), "unipc", 12, eps=1e-4,
                          generator=torch.Generator().manual_seed(0))
    assert small.scale < 1 and small.eps == 1e-4  # below σ/m = 0.01: the grid stops at the tail's start
    assert 0.5 * float(sde.log_snr(small.ts[1])) == pytest.approx(-math.log(small.first_sigma), abs=1e-9)
    assert small.first_sigma == pytest.approx(ss.scalegrid.FACTOR * small.scale, rel=1e-12)
    obj = ss.scale_grid(target.score_fn(sde), sde, (256, 2), ss.UniPC(solver_order=4), 12, eps=1e-4,
                        generator=torch.Generator().manual_seed(0))  # a sampler object: named by its class
    assert obj.method == "UniPC" and torch.equal(obj.ts, small.ts)
    two = ss.data_scale(target.score_fn(sde), sde, (2, 2), generator=torch.Generator().manual_seed(0))
    rows = ss.data_scale(target.score_fn(sde), sde, (4, 2), generator=torch.Generator().manual_seed(0), chunk=1)
    assert two > 0 and rows == pytest.approx(
        ss.data_scale(target.score_fn(sde), sde, (4, 2), generator=torch.Generator().manual_seed(0)), rel=1e-6)


def test_scale_grid_ends_at_the_tail_start_where_the_sampler_takes_the_tail_step():
    """Sub-VP's default end lies below σ/m = 0.01: the grid ends at t_c and carries eps for the tail step."""
    sde, target = ss.SubVPSDE(), GaussianMixture.ring(8, 2.0, 0.1)
    g = ss.scale_grid(target.score_fn(sde), sde, (128, 2), "unipc", 10, generator=torch.Generator().manual_seed(0))
    assert g.eps == sde.default_eps and float(g.ts[-1]) > g.eps
    assert float(sde.std(g.ts[-1]) / sde.mean_scale(g.ts[-1])) == pytest.approx(0.01, rel=1e-9)
    res = ss.sample(target.score_fn(sde), sde, (100, 2), "unipc", **g.sample_options, denoise=False,
                    generator=torch.Generator().manual_seed(1))
    assert res.nfe == 10


@pytest.mark.parametrize("method, one_call", [("unipc", False), ("dpmpp_3m", True)])
def test_scale_grid_brings_the_15_nfe_bias_closer_on_a_small_scale_mixture(method, one_call):
    """A 4-d mixture (mix4s7, never used to choose the factor) shrunk to a quarter: 15 NFE, 10k samples at
    p_eps, exact log-densities.  The signed log-density bias (mean log p of the samples minus its exact
    expectation), in units of its noise sd (sd(log p)/√10⁴ from 200k exact draws): on the log-SNR grid it is
    below −5 (the samples too wide; measured −11.5 unipc, −15.4 dpmpp_3m), and the scale grid moves it
    towards 0 by more than 3 sds of the difference of two such estimates (3√2; measured to −3.5 and −1.3).
    unipc through ``scale_grid`` + ``sample_options`` (exactly 15 NFE, the pilot apart), dpmpp_3m (a sampler
    the factor was not chosen for) through ``sample(grid="scale")``."""
    from scoresolve.bench.problems import analytic_problem

    base, n = analytic_problem("mix4s7").target, 10_000
    target = GaussianMixture(base.weights, 0.25 * base.means, 0.0625 * base.covs)
    sde = SDES["vp"]
    truth = target.diffused(1e-3, sde)
    exact = truth.log_prob(truth.sample(200_000, generator=torch.Generator().manual_seed(5), dtype=torch.float64))
    noise = float(exact.std()) / math.sqrt(n)
    score = target.score_fn(sde)
    if one_call:
        scale = {"nfe": 15, "grid": "scale"}
    else:
        scale = ss.scale_grid(score, sde, (256, 4), method, 15,
                              generator=torch.Generator().manual_seed(2**31 - 1)).sample_options
    biases = {}
    for name, opts in (("log_snr", {"nfe": 15}), ("scale", scale)):
        res = ss.sample(score, sde, (n, 4), method, denoise=False, generator=torch.Generator().manual_seed(0),
                        **opts)
        assert res.nfe == pytest.approx(15 + 256 / n if name == "scale" and one_call else 15, abs=1e-12)
        biases[name] = (float(truth.log_prob(res.samples.double()).mean()) - float(exact.mean())) / noise
    assert biases["log_snr"] < -5, biases
    assert biases["scale"] - biases["log_snr"] > 3 * math.sqrt(2), biases
    assert abs(biases["scale"]) < abs(biases["log_snr"]), biases


def test_scale_grid_errors_name_the_argument():
    sde, target = SDES["vp"], GaussianMixture.ring(8, 2.0, 0.1)
    score = target.score_fn(sde)
    with pytest.raises(ValueError, match="method='ode_adaptive_ps' has no fixed deterministic grid.*valid choices"):
        ss.scale_grid(score, sde, (64, 2), "ode_adaptive_ps")
    with pytest.raises(ValueError, match="unknown method 'nope'; valid choices: pc"):
        ss.scale_grid(score, sde, (64, 2), "nope")
    with pytest.raises(ValueError, match="nfe=1 leaves unipc one step"):
        ss.scale_grid(score, sde, (64, 2), "unipc", 1)
    with pytest.raises(ValueError, match="factor must be a positive number"):
        ss.scale_grid(score, sde, (64, 2), factor=0.0)
    with pytest.raises(ValueError, match="shape must be \\(pilot, \\*sample_shape\\)"):
        ss.data_scale(score, sde, (1, 2))
    with pytest.raises(NonFiniteScoreError, match="NaN/Inf"):
        ss.data_scale(lambda x, t: x * float("nan"), sde, (8, 2))


@pytest.mark.parametrize("sde_name", ["vp", "ve", "subvp"])
def test_sample_grid_scale_is_scale_grid_with_its_pilot_counted(sde_name):
    """``sample(grid="scale", data_mean="estimate")``: the grid and the data mean ``scale_grid`` reads off 256
    prior draws seeded ``PILOT_SEED`` (the tail start and eps under sub-VP), the same samples as passing its
    ``sample_options``, the same grid for a batch of 3 and of 300, and the pilot's 256 rows counted once in the
    NFE: 12 + 256/300."""
    sde = {"subvp": ss.SubVPSDE(), **SDES}[sde_name]
    target = GaussianMixture.random(3, 4, seed=11)
    score = target.score_fn(sde)
    fit = ss.scale_grid(score, sde, (ss.scalegrid.SCALE_PILOT, 3), "dpmpp_2m", 12, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(ss.scalegrid.PILOT_SEED))
    kw = dict(denoise=False, dtype=torch.float64)
    res = ss.sample(score, sde, (300, 3), "dpmpp_2m", nfe=12, grid="scale", data_mean="estimate",
                    generator=torch.Generator().manual_seed(4), **kw)
    ref = ss.sample(score, sde, (300, 3), "dpmpp_2m", generator=torch.Generator().manual_seed(4),
                    **fit.sample_options, **kw)
    small = ss.sample(score, sde, (3, 3), "dpmpp_2m", nfe=12, grid="scale", **kw)
    ends = fit.ts.tolist() + ([fit.eps] if fit.eps is not None else [])
    assert res.ts.tolist() == ends == small.ts.tolist()
    assert torch.equal(res.samples, ref.samples)
    assert res.nfe == pytest.approx(12 + 256 / 300, abs=1e-12) and ref.nfe == 12
    assert small.nfe == pytest.approx(12 + 256 / 3, abs=1e-12)


def test_sample_grid_scale_errors_name_the_choices():
    sde, target = SDES["vp"], GaussianMixture.ring(8, 2.0, 0.1)
    score = target.score_fn(sde)
    with pytest.raises(ValueError, match="grid=\"scale\" places the steps.*method='em'.*valid choices: .*unipc"):
        ss.sample(score, sde, (8, 2), "em", grid="scale")
    with pytest.raises(ValueError, match="at least 2 steps.*steps=1"):
        ss.sample(score, sde, (8, 2), "unipc", steps=1, grid="scale")
    with pytest.raises(ValueError, match="unknown grid 'scales'; valid choices: .*karras.*scale"):
        ss.sample(score, sde, (8, 2), "unipc", grid="scales")


def test_data_scale_evaluates_the_pilot_in_chunks_of_the_same_draws():
    """The pilot goes to the score in calls of ``chunk`` rows (64 by default: a network's memory bounded, the
    same calls whatever the batch): 256 draws in 4 calls of 64, the same draws as all at once, so the same ŝ
    up to the score's own rounding; a bad chunk is refused by name."""
    sde, target = SDES["vp"], GaussianMixture.random(3, 4, seed=11)
    calls = []

    def score(x, t):
        calls.append(x.shape[0])
        return target.score_fn(sde)(x, t)

    kw = dict(dtype=torch.float64)
    one = ss.data_scale(score, sde, (256, 3), generator=torch.Generator().manual_seed(1), chunk=None, **kw)
    assert calls == [256]
    calls.clear()
    chunked = ss.data_scale(score, sde, (256, 3), generator=torch.Generator().manual_seed(1), **kw)
    assert calls == [64] * 4 and chunked == pytest.approx(one, rel=1e-12)
    with pytest.raises(ValueError, match="chunk must be an integer >= 1 or None, got 0"):
        ss.data_scale(score, sde, (256, 3), chunk=0)
