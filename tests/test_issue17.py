"""Issue 17: a fixed NFE budget for the per-sample adaptive multistep solver, and the held-out
mixtures of the benchmark suite (ground truth: the exact Gaussian flow map, exact mixtures)."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import SDES, gaussian_flow_map, loglog_slope

import scoresolve as ss
from scoresolve.bench.problems import analytic_problem
from scoresolve.protocol import Context, State, tail_step
from scoresolve.samplers import AdaptiveMultistep
from scoresolve.score import CountingScore, LastEvaluation
from scoresolve.targets import GaussianMixture

RING_SUBVP = GaussianMixture.ring(8, 2.0, 0.1)
DIAG = GaussianMixture(torch.ones(1), torch.tensor([[0.5, -1.0]]), torch.tensor([[0.3**2, 0.1**2]]))
EASY_HARD = GaussianMixture(torch.tensor([0.5, 0.5]), torch.tensor([[-3.0, 0.0], [3.0, 0.0]]),
                            torch.tensor([1.0, 0.02**2]))


@pytest.mark.parametrize("denoise", [False, True])
@pytest.mark.parametrize("sde_name", ["vp", "subvp", "ve"])
def test_budget_caps_every_sample_and_a_tight_tolerance_uses_all_of_it(sde_name, denoise):
    sde = SDES[sde_name]
    score = EASY_HARD.score_fn(sde)
    for n in (6, 15):
        res = ss.sample(score, sde, (200, 2), "ode_adaptive_ps", nfe=n, denoise=denoise,
                        generator=torch.Generator().manual_seed(0))
        assert float(res.stats["nfe_per_sample"].max()) <= n and torch.isfinite(res.samples).all()
        tight = ss.sample(score, sde, (200, 2), AdaptiveMultistep(rtol=1e-9, atol=1e-9), nfe=n, denoise=denoise,
                          generator=torch.Generator().manual_seed(0))
        assert tight.nfe == n  # exactly n calls for every sample


def test_a_step_grown_to_the_remaining_distance_ends_the_solve():
    """Under a budget a step forced to rem/3, then doubled (max_factor 2), is the remaining 2 rem/3 in exact
    arithmetic but often an ulp short in floating point: those rows must end there, not take an ulp step
    next (a wasted evaluation; at λ_c under sub-VP a zero step and NaN samples at 18-22 NFE on the 8-ring)."""
    from scoresolve.samplers.adaptive import reaches

    lam = torch.linspace(-3.0, 2.5, 4001, dtype=torch.float64)
    stop = torch.tensor(4.605170185988091, dtype=torch.float64)
    forced = (stop - lam) / 3
    after = lam + forced
    short = 2 * forced < stop - after
    assert short.any()  # the rounding the check is about happens
    assert reaches(2 * forced, stop - after).all()
    assert not reaches(torch.tensor([0.5]), torch.tensor([0.5 + 1e-6])).any()
    for sde_name in ("subvp", "vp"):
        sde = SDES[sde_name]
        res = ss.sample(RING_SUBVP.score_fn(sde), sde, (10_000, 2), "ode_adaptive_ps", nfe=20, denoise=False,
                        generator=torch.Generator().manual_seed(0))
        assert torch.isfinite(res.samples).all() and float(res.stats["nfe_per_sample"].max()) <= 20


def test_a_budget_below_what_the_run_needs_names_it():
    """Start + final denoising + an evaluated last step (``correct_last``) need 3; the tail needs none."""
    sde = ss.SubVPSDE()
    with pytest.raises(ValueError, match=r"nfe_budget=2 is below the 3 evaluations.*correct_last"):
        ss.sample(RING_SUBVP.score_fn(sde), sde, (8, 2), AdaptiveMultistep(correct_last=True, nfe_budget=2))
    for opts, denoise in ((dict(correct_last=True), False), ({}, True)):
        res = ss.sample(RING_SUBVP.score_fn(sde), sde, (64, 2), AdaptiveMultistep(nfe_budget=2, **opts),
                        denoise=denoise, generator=torch.Generator().manual_seed(0))
        assert res.nfe == 2 and torch.isfinite(res.samples).all()


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_budget_mode_converges_at_the_multistep_order(sde_name):
    """With a tolerance the budget cannot meet, the steps are (λ_end − λ)/(R + 1): error falls at least as N^−p
    (p = 3; the corrector adds one order where the steps are smooth)."""
    sde, eps = SDES[sde_name], 1e-3
    x_T = DIAG.diffused(sde.T, sde).sample(16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = gaussian_flow_map(DIAG, sde, x_T, eps)
    ns, errs = [32, 64, 128], []
    for n in ns:
        res = ss.sample(DIAG.score_fn(sde), sde, x_T.shape, AdaptiveMultistep(rtol=1e-12, atol=1e-12), nfe=n,
                        eps=eps, x_init=x_T, denoise=False)
        assert res.nfe == n
        errs.append(float((res.samples - exact).abs().max()))
    assert -loglog_slope(ns, errs) > 2.8, errs


def test_heldout_mixtures_are_what_the_suite_says():
    for name, d in (("mix2s101", 2), ("mix128s106", 128)):
        t = analytic_problem(name).target
        assert t.dim == d and 2 <= t.n_components <= 8
        assert abs(float(t.weights.min()) - 0.05) < 1e-12 and abs(float(t.weights.sum()) - 1) < 1e-12
        ev = torch.linalg.eigvalsh(t.covs).sqrt()
        assert abs(float(ev.min()) - 0.05) < 1e-9 and abs(float(ev.max()) - 0.5) < 1e-9
    t = analytic_problem("two16").target
    assert t.weights.tolist() == pytest.approx([0.8, 0.2])


# ---------------------------------------------------------------- the tail below σ̃ = tail_sigma
def _tail_prediction(gm, sde, x_T, c, eps, t_p=None):
    """The exact flow to σ̃ = c, then the documented score-form step to eps:
    x̃_end = x̃_c − ½ (σ̃_c² − σ̃_end²) g, with g = (x̃ − x̂_0(x̃))/σ̃² = −m s at t_c (the Gaussian's exact
    x̂_0), or at t_p on the exact flow (the fixed-step samplers' tail, which holds their last evaluation's)."""
    t_c = float(sde.t_from_log_snr(torch.tensor(-2 * math.log(c), dtype=torch.float64)))
    (m_c, s_c), (m_e, s_e) = sde.marginal(t_c), sde.marginal(eps)
    xt, mu, var = gaussian_flow_map(gm, sde, x_T, t_c) / m_c, gm.means[0], gm.covs[0]
    v_c, v_e = (s_c / m_c) ** 2, (s_e / m_e) ** 2
    if t_p is None:
        g = (xt - (mu + var / (var + v_c) * (xt - mu))) / v_c
    else:
        m_p, s_p = sde.marginal(t_p)
        xp, v_p = gaussian_flow_map(gm, sde, x_T, t_p) / m_p, (s_p / m_p) ** 2
        g = (xp - (mu + var / (var + v_p) * (xp - mu))) / v_p
    return m_e * (xt - 0.5 * (v_c - v_e) * g)


def test_tail_is_the_score_form_step_and_its_error_falls_as_the_fourth_power_of_tail_sigma():
    """Under sub-VP (σ̃ ends at 1e-4) the solve stops at σ̃_c and takes the documented step.  At a tight
    tolerance the samples are the exact flow to σ̃_c followed by that step with m·s held from the sample's
    last evaluation (at t_p, just above t_c; ``correct_last=True``: evaluated at t_c), and their error
    against the exact flow to eps falls as σ̃_c⁴ (for a Gaussian the step is exact to O((σ̃_c/s)⁴); a step
    that contracted by the whole x̃ − x̂_0 (DDIM's), or none, would leave O(σ̃_c²)).  Holding m·s from t_c
    instead of t_p is 6e-6 off here, the history's extrapolation of x̂_0 to σ̃_c 1e-8."""
    sde = ss.SubVPSDE()
    eps, tol = sde.default_eps, dict(rtol=1e-10, atol=1e-10)
    x_T = DIAG.diffused(sde.T, sde).sample(16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = gaussian_flow_map(DIAG, sde, x_T, eps)
    cs, errs = [0.04, 0.02, 0.01], []
    for c in cs:
        res = ss.sample(DIAG.score_fn(sde), sde, x_T.shape, AdaptiveMultistep(tail_sigma=c, **tol), x_init=x_T,
                        denoise=False)
        errs.append(float((res.samples - exact).abs().max()))
        evaluated = ss.sample(DIAG.score_fn(sde), sde, x_T.shape, AdaptiveMultistep(tail_sigma=c, correct_last=True,
                              **tol), x_init=x_T, denoise=False)
        torch.testing.assert_close(evaluated.samples, _tail_prediction(DIAG, sde, x_T, c, eps), rtol=0, atol=5e-9)
        for i in range(3):  # one sample per run (the steps are per sample): its last evaluation's time is t_p
            times = []

            def score(x, t, times=times):
                times.append(float(t.flatten()[0]))
                return DIAG.score_fn(sde)(x, t)

            one = ss.sample(score, sde, (1, 2), AdaptiveMultistep(tail_sigma=c, **tol), x_init=x_T[i:i + 1],
                            denoise=False)
            torch.testing.assert_close(one.samples, _tail_prediction(DIAG, sde, x_T[i:i + 1], c, eps, times[-1]),
                                       rtol=0, atol=5e-9)
    assert 3.5 < loglog_slope(cs, errs) < 4.5, errs  # error ∝ σ̃_c^slope


def test_tail_applies_only_below_tail_sigma_and_costs_no_evaluation():
    """VP's and VE's default ends (σ̃ ≈ 0.0105, 0.0100009) lie above 0.01: the same samples as without a
    tail.  Under sub-VP the step that lands at σ̃_c is the predictor alone (the tail's x̂_0 extrapolated),
    so, as without a tail, NFE = 1 (start) + accepted + rejected − 1 (the last step)."""
    gm = GaussianMixture.ring(8, 2.0, 0.1)
    runs = {}
    for name in ("vp", "ve", "subvp"):
        sde = SDES[name]
        runs[name] = [ss.sample(gm.score_fn(sde), sde, (300, 2), AdaptiveMultistep(tail_sigma=c), denoise=False,
                                generator=torch.Generator().manual_seed(0)) for c in (0.01, None)]
    for name in ("vp", "ve"):
        assert torch.equal(runs[name][0].samples, runs[name][1].samples)
    tail, plain = runs["subvp"]
    assert not torch.equal(tail.samples, plain.samples)
    assert tail.nfe == pytest.approx(tail.stats["accepted"] + tail.stats["rejected"], rel=1e-12)
    assert plain.nfe == pytest.approx(plain.stats["accepted"] + plain.stats["rejected"], rel=1e-12)  # the last free


@pytest.fixture(scope="module")
def mix16_subvp():
    """A 16-d anisotropic mixture with unequal weights under sub-VP, 2000 prior draws, the mean exact log
    p_eps of their exact flow (rtol 1e-7, no tail) and the noise floor of |mean log p| for 10k samples."""
    gm = analytic_problem("mix16s7").target
    sde = ss.SubVPSDE()
    truth = gm.diffused(sde.default_eps, sde)
    floor = ss.metrics.noise_floor(truth, 10_000, repeats=8, metrics=("logp_gap",))["logp_gap"][0]
    x_T = torch.randn(2000, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * sde.prior_std()
    ref = ss.sample(gm.score_fn(sde), sde, x_T.shape, AdaptiveMultistep(rtol=1e-7, atol=1e-7, tail_sigma=None),
                    x_init=x_T, denoise=False).samples

    def bias(method, **kw) -> tuple[float, float]:
        """(paired bias of the mean log p_eps, in floors; NFE)."""
        res = ss.sample(gm.score_fn(sde), sde, x_T.shape, method, x_init=x_T, denoise=False, **kw)
        return float(truth.log_prob(res.samples).mean() - truth.log_prob(ref).mean()) / floor, res.nfe

    return bias


def test_subvp_default_has_no_narrowing_log_density_bias(mix16_subvp):
    """Paired against the exact flow from the same x_T: the mean exact log p_eps of the default solver's
    samples within the noise floor of 10k exact samples (measured 0.16 floors; without the tail +3.3: the
    multistep in λ narrows the samples below σ̃ ≈ 0.01, where x̂_0 − x̃ ∝ σ̃² is exponential in λ)."""
    bias, nfe = mix16_subvp("ode_adaptive_ps")
    assert nfe <= 25, nfe
    assert abs(bias) < 1.0, bias


def test_fixed_step_tail_is_the_grid_to_t_c_then_the_tail_step():
    """Under sub-VP the exponential samplers' grid stops at σ̃ = 0.01 and the tail step ends the run: the
    samples are those of the grid to t_c (tail_sigma=None, eps=t_c) carried by x_end = (m_e/m_c)(x + ½(σ_c² −
    m_c² σ̃_e²) s_c) with s_c = (m_p/m_c) s_p from the run's last evaluation (t_p, s_p): no evaluation more,
    all of the budget for the grid; the trajectory and ts reach eps.  A score without that record (a
    hand-built Context) is evaluated at t_c."""
    sde = ss.SubVPSDE()
    eps, score = sde.default_eps, RING_SUBVP.score_fn(sde)
    x_T = torch.randn(64, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * sde.prior_std()
    for method in ("unipc", "dpmpp_2m", "dpmpp_2s", "ddim"):
        calls = []

        def logged(x, t, calls=calls):
            calls.append((float(t[0]), score(x, t)))
            return calls[-1][1]

        res = ss.sample(logged, sde, x_T.shape, method, nfe=15, x_init=x_T, denoise=False, return_trajectory=True)
        t_c = float(res.ts[-2])
        (m_c, s_c), (m_e, s_e) = sde.marginal(t_c), sde.marginal(eps)
        assert float(res.ts[-1]) == eps and s_c / m_c == pytest.approx(0.01, rel=1e-9)
        head = ss.sample(score, sde, x_T.shape, method, steps=res.stats["steps"] - 1, eps=t_c, tail_sigma=None,
                         x_init=x_T, denoise=False)
        t_p, s_p = calls[-1]
        assert t_p > t_c
        want = m_e / m_c * (head.samples + 0.5 * (s_c**2 - (m_c * s_e / m_e) ** 2) * sde.mean_scale(t_p) / m_c * s_p)
        torch.testing.assert_close(res.samples, want, rtol=0, atol=1e-10)
        assert res.nfe == head.nfe == len(calls) and 14 <= res.nfe <= 15, method
        assert len(res.trajectory) == len(res.ts) and torch.equal(res.trajectory[-1], res.samples)
    # no record of the last evaluation: the step evaluates the score at t_c
    counted = CountingScore(score, 64)
    ctx = Context(sde, counted, None, denoise=False, tail=(t_c, eps))
    x = head.samples
    out = tail_step(ctx, State(x.clone(), t_c))
    want = m_e / m_c * (x + 0.5 * (s_c**2 - (m_c * s_e / m_e) ** 2) * score(x, torch.full((64,), t_c)))
    torch.testing.assert_close(out.x, want, rtol=0, atol=1e-10)
    assert counted.nfe == 1 and out.t == eps
    # the record with a float time or per-row times gives the same step, and no evaluation
    recorded = LastEvaluation(CountingScore(score, 64))
    recorded.last = (t_p, s_p)
    ctx = Context(sde, recorded, None, denoise=False, tail=(t_c, eps))
    x_f = tail_step(ctx, State(x.clone(), t_c)).x
    recorded.last = (torch.full((64,), t_p, dtype=torch.float64), s_p)
    torch.testing.assert_close(tail_step(ctx, State(x.clone(), t_c)).x, x_f, rtol=0, atol=1e-12)
    assert recorded.nfe == 0


def test_fixed_step_tail_on_a_gaussian_is_the_exact_flow_then_the_tail_step():
    """unipc at 200 steps to σ̃_c = 0.02 is the exact flow there (its error ~1e-7), so the samples are the
    exact flow to σ̃_c followed by the documented step with g held from the last evaluation, at the grid's
    node before t_c (3.6e-5 from the exact flow to eps; 6.5e-6 from the step with g at t_c)."""
    sde = ss.SubVPSDE()
    x_T = DIAG.diffused(sde.T, sde).sample(16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    res = ss.sample(DIAG.score_fn(sde), sde, x_T.shape, "unipc", steps=200, tail_sigma=0.02, x_init=x_T,
                    denoise=False)
    t_p = float(res.ts[-3])  # ts: ..., t_p, t_c, eps
    torch.testing.assert_close(res.samples, _tail_prediction(DIAG, sde, x_T, 0.02, sde.default_eps, t_p), rtol=0,
                               atol=1e-6)


def test_fixed_step_tail_leaves_vp_ve_and_the_peers_schedules_unchanged():
    """VP's and VE's default ends lie above σ̃ = 0.01; k-diffusion's KarrasSDE (σ_min = 0.002) and a diffusers
    table ending at σ̃ ≈ 0.003 lie below it but keep the peers' grids, as does lower_order_final="diffusers"."""
    gm = GaussianMixture.ring(8, 2.0, 0.1)
    table = ss.schedules.DiscreteVPSDE(schedule="linear", beta_start=1e-5, beta_end=0.02)
    cases = [(SDES["vp"], {}), (SDES["ve"], {}), (ss.schedules.KarrasSDE(), {}), (table, {}),
             (SDES["subvp"], {"lower_order_final": "diffusers"})]
    for sde, kw in cases:
        for method in ("unipc", "dpmpp_2m", "dpmpp_3m", "dpmpp_2s", "ddim"):
            if "lower_order_final" in kw and method not in ("unipc", "dpmpp_2m", "dpmpp_3m"):
                continue
            runs = [ss.sample(gm.score_fn(sde), sde, (64, 2), method, nfe=15, tail_sigma=c, **kw,
                              generator=torch.Generator().manual_seed(0)).samples for c in (0.01, None)]
            assert torch.equal(*runs), (sde, method, kw)


def test_fixed_step_tail_brings_subvp_closer_to_the_exact_flow(mix16_subvp):
    """Paired log-density bias of unipc at 20 NFE under sub-VP (measured −4.1 floors with the tail, −15.1
    without: a grid to eps spends a third of its steps below σ̃ = 0.01 and narrows nothing correctly there)."""
    with_tail, nfe = mix16_subvp("unipc", nfe=20)
    without, _ = mix16_subvp("unipc", nfe=20, tail_sigma=None)
    assert nfe == 20
    assert abs(with_tail) < 6.0 and abs(with_tail) < 0.5 * abs(without), (with_tail, without)
