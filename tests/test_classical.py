"""Issue 18: the classical samplers' options (t_eval, variance, the "classical" grid) keep the
methods' weak order and behave as documented."""

import math

import pytest
import torch
from helpers import SDES, exact_output_moments, gaussian_1d, loglog_slope

import scoresolve as ss

RING = ss.targets.GaussianMixture.ring(8, 2.0, 0.1)


def _ring_samples(sde, method, shape=(16, 2), seed=5, **kw):
    """Samples of the 8-ring from a fixed seed, float64 (``method``: a name or a sampler)."""
    return ss.sample(RING.score_fn(sde), sde, shape, method, generator=torch.Generator().manual_seed(seed),
                     dtype=torch.float64, **kw)


def _score_times(sde, sampler, steps=6):
    """(the grid, the time of every score evaluation) of a ``steps``-step run on a 1-D Gaussian, no denoising."""
    gm, seen = gaussian_1d(0.5, 0.3), []

    def score(x, t):
        seen.append(float(t.flatten()[0]) if torch.is_tensor(t) else float(t))
        return gm.score_fn(sde)(x, t)

    res = ss.sample(score, sde, (8, 1), sampler, steps=steps, denoise=False, generator=torch.Generator().manual_seed(0))
    return res.ts.tolist(), seen


@pytest.mark.parametrize("sde_name", list(SDES))
@pytest.mark.parametrize("opts", [{"predictor": "euler_maruyama", "t_eval": 1.0},
                                  {"predictor": "euler_maruyama", "t_eval": "ramped"},
                                  {"predictor": "euler_maruyama", "t_eval": 0.5},
                                  {"predictor": "reverse_diffusion", "t_eval": 1.0},
                                  {"predictor": "reverse_diffusion", "t_eval": 1.0, "coefficients": "frozen"},
                                  {"predictor": "ancestral", "variance": 0.5},
                                  {"predictor": "ancestral", "variance": 1.0}])
def test_options_keep_weak_order_one(opts, sde_name):
    """Exact output moments (no Monte-Carlo error) converge like 1/N on the classical grid."""
    sde, gm = SDES[sde_name], gaussian_1d()
    ref = gm.diffused(1e-3, sde)
    sampler = ss.PC(corrector="none", **opts)
    ns = [128, 256, 512, 1024]
    errs = []
    for n in ns:
        m, v = exact_output_moments(sampler, gm, sde, n, grid="classical")
        errs.append(abs(m - float(ref.mean()[0])) + abs(v - float(ref.cov()[0, 0])))
    assert loglog_slope(ns, errs) <= -0.85, errs


def test_ancestral_variance_interpolates_between_posterior_and_transition():
    """One step's output variance is (1 − λ) β̃ + λ v exactly (basis-noise bookkeeping)."""
    sde, gm = SDES["vp"], gaussian_1d()
    outs = [exact_output_moments(ss.PC(predictor="ancestral", corrector="none", variance=lam), gm, sde, 4)[1]
            for lam in (0.0, 0.5, 1.0)]
    assert outs[0] < outs[1] < outs[2]
    assert abs(outs[1] - 0.5 * (outs[0] + outs[2])) < 1e-12 * outs[2]


def test_em_ramps_its_shift_with_the_time_elapsed_on_vp():
    """em on VP evaluates step i at t_i + θ_i (t_{i+1} − t_i), θ_i = (T − t_{i+1}) / (T − t_N): score_sde's lag
    (i/(N − 1) on its uniform grid) carried over to the quadratic grid by time, not by step index."""
    sde = SDES["vp"]
    ts, seen = _score_times(sde, "em", steps=6)
    want = [t + (ts[0] - t1) / (ts[0] - ts[-1]) * (t1 - t) for t, t1 in zip(ts[:-1], ts[1:])]
    assert seen == pytest.approx(want, rel=1e-6)  # the score sees t in float32
    by_index = [t + (i + 1) / 6 * (t1 - t) for i, (t, t1) in enumerate(zip(ts[:-1], ts[1:]))]
    assert seen != pytest.approx(by_index, rel=1e-3)  # the quadratic grid tells the two apart


def test_classical_grid_is_quadratic_for_vp_and_uniform_for_ve():
    for name, kind in (("vp", "quadratic"), ("subvp", "quadratic"), ("ve", "uniform")):
        sde = SDES[name]
        assert torch.equal(ss.make_grid("classical", sde, 7, 1e-3), ss.make_grid(kind, sde, 7, 1e-3))


@pytest.mark.parametrize("bad", [{"t_eval": 1.5}, {"t_eval": -0.1}, {"t_eval": "ramp"}, {"t_eval": None},
                                 {"variance": 2.0}, {"variance": "optimal"}])
def test_out_of_range_options_name_the_argument(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        ss.PC(**bad)


def test_variance_belongs_to_the_ancestral_predictor():
    # silently ignored before: em and reverse_diffusion have no β̃/β choice
    for predictor in ("euler_maruyama", "reverse_diffusion"):
        with pytest.raises(ValueError, match=rf"^variance=0.5 is the ancestral predictor's .* {predictor!r}"):
            ss.PC(predictor=predictor, variance=0.5)
    with pytest.raises(ValueError, match="variance=1.0"):
        ss.sample(lambda x, t: -x, SDES["vp"], (2, 1), "ancestral", predictor="euler_maruyama", variance=1.0)


def test_registered_defaults():
    for m in ("em", "reverse_diffusion"):  # the shifted step, except on sub-VP
        assert ss.SAMPLERS[m].default_grid == "classical"
        assert [ss.SAMPLERS[m].shift(SDES[s]) for s in ("vp", "ve", "subvp")] == [1.0, 1.0, 0.0]
    # em's shift grows along the run on VP only; reverse_diffusion's does not
    assert [ss.SAMPLERS["em"].shift(SDES[s], 0.25) for s in ("vp", "ve", "subvp")] == [0.25, 1.0, 0.0]
    assert ss.SAMPLERS["reverse_diffusion"].shift(SDES["vp"], 0.25) == 1.0
    # pc: the shifted frozen step on VP only (on VE it blows up at 10-20 NFE)
    assert [ss.SAMPLERS["pc"].shift(SDES[s], 0.25) for s in ("vp", "ve", "subvp")] == [1.0, 0.0, 0.0]
    assert [ss.SAMPLERS["pc"].coefficients_on(SDES[s]) for s in ("vp", "ve")] == ["frozen", "transition"]
    assert ss.SAMPLERS["pc"].default_grid == "classical_pc"
    assert ss.SAMPLERS["ancestral"].variance == "analytic" and ss.SAMPLERS["ancestral"].default_grid == "classical"
    assert ss.SAMPLERS["ancestral"].batch_coupling
    assert not ss.PC(predictor="ancestral", corrector="none", variance=0.5).batch_coupling
    assert ss.PC(t_eval=0.5).shift(SDES["subvp"]) == 0.5  # a number is taken as it is
    assert ss.SAMPLERS["reverse_diffusion"].coefficients == "stable" and ss.SAMPLERS["pc"].coefficients == "auto"
    ends = [ss.SAMPLERS[m].end for m in ("em", "reverse_diffusion", "ancestral", "pc")]
    assert ends == ["mean", "mean", "auto", "auto"]


def _gaussian_std_ratio(sde, sampler, steps, d=4, n=20_000):
    """Sample std / exact std of p_eps for N(0, 0.1² I_d), one seed (Monte-Carlo sd of the ratio ≈ 1/√(2 n d))."""
    gm = ss.targets.GaussianMixture(torch.ones(1), torch.zeros(1, d), (0.01 * torch.eye(d))[None])
    truth = math.sqrt(float(gm.diffused(sde.default_eps, sde).covs[0, 0, 0]))
    res = ss.sample(gm.score_fn(sde), sde, (n, d), sampler, steps=steps, generator=torch.Generator().manual_seed(0))
    return float(res.samples.std()) / truth


def test_analytic_variance_matches_a_gaussian_target_where_the_fixed_choices_do_not():
    """VE, 10 steps from σ = 50 to 0.01: the posterior variance β̃ under-disperses, the transition
    variance over-disperses and ½ of each too (measured 0.71 / 1.51 / 1.18 × the exact std); Analytic-DPM's
    variance, β̃ + the carried uncertainty of x̂_0 estimated from the batch's score norms, lands within 5 %
    (0.97).  The ratio's Monte-Carlo sd is 0.0025."""
    sde = SDES["ve"]
    ratio = {lam: _gaussian_std_ratio(sde, ss.PC(predictor="ancestral", corrector="none", variance=lam,
                                                 default_grid="classical"), 10) for lam in (0.0, 0.5, 1.0, "analytic")}
    assert abs(ratio["analytic"] - 1) < 0.05, ratio
    assert all(abs(ratio[lam] - 1) > 0.15 for lam in (0.0, 0.5, 1.0)), ratio


def test_analytic_variance_is_posterior_plus_the_x0_uncertainty():
    """One step by hand, noise stubbed to its std: √(β̃ + v²/(a² σ²) (1 − σ² mean(s²)))."""
    sde = SDES["vp"]
    x = torch.tensor([[0.3, -0.2], [0.4, 0.1], [-0.5, 0.3]], dtype=torch.float64)
    gm = ss.targets.GaussianMixture(torch.ones(1), torch.zeros(1, 2), (0.04 * torch.eye(2))[None])
    score, t, t_next = gm.score_fn(sde), 0.4, 0.3
    stub = lambda shape, std=1.0: torch.full(shape, std, dtype=x.dtype)  # noqa: E731
    out = ss.predictors.ancestral(sde, score, x, t, t_next, stub, variance="analytic")
    a, v = sde.transition(t_next, t)
    sig2 = float(sde.std(t)) ** 2
    s = score(x, torch.full((3,), t, dtype=x.dtype))
    share = 1 - sig2 * float(s.pow(2).mean())  # the x̂_0 uncertainty's share of σ², inside (0, 1) here (no clamp)
    assert 0.05 < share < 0.95
    var = float(sde.std(t_next)) ** 2 * v / sig2 + v * v / (a * a * sig2) * share
    torch.testing.assert_close(out.x - out.x_mean, torch.full_like(x, math.sqrt(var)), rtol=1e-13, atol=0)
    torch.testing.assert_close(out.x_mean, (x + v * s) / a, rtol=1e-13, atol=1e-15)


def test_stable_coefficients_leave_the_frozen_step_where_it_amplifies_variance_errors():
    """On VE's default grid (σ 50 → 0.01) the frozen step carries a variance error on with
    ((1 − c) r)² per step: at 10 steps |1 − c| r = 1.64 and the run ends at 2.39 × the exact std; "stable"
    takes the transition there (1.62).  At 12 steps (0.85) it is the frozen step bit for bit (1.10;
    the transition: 1.48), as with σ_max = 20 at 10 steps (1.11)."""
    sde = ss.VESDE()

    def run(c, steps, sde=sde):
        return _gaussian_std_ratio(sde, ss.PC(predictor="reverse_diffusion", corrector="none", t_eval="shifted",
                                              coefficients=c, default_grid="classical"), steps)

    assert abs(run("stable", 10) - 1) < 0.5 * abs(run("frozen", 10) - 1)
    assert run("stable", 12) == run("frozen", 12)
    assert abs(run("stable", 12) - 1) < 0.5 * abs(run("transition", 12) - 1)
    assert run("stable", 10, SDES["ve"]) == run("frozen", 10, SDES["ve"])
    grid = ss.make_grid("classical", sde, 10, sde.default_eps).tolist()
    assert not ss.predictors.frozen_is_stable(sde, grid[1], grid[2])
    assert ss.predictors.frozen_is_stable(SDES["vp"], 0.9, 0.1)  # f ≠ 0: always the frozen step


def test_frozen_reverse_diffusion_is_the_exact_step_with_f_and_g_frozen_at_the_evaluation_time():
    """On VE (f = 0) it is the Euler-Maruyama step; on VP a = e^{f Δ}, v = 1 − e^{−β Δ} (β frozen),
    not the transition over the interval."""
    def run(sde, **opts):
        return _ring_samples(sde, ss.PC(corrector="none", t_eval=1.0, **opts), steps=8).samples

    ve, vp = SDES["ve"], SDES["vp"]
    frozen_ve = run(ve, predictor="reverse_diffusion", coefficients="frozen")
    torch.testing.assert_close(frozen_ve, run(ve, predictor="euler_maruyama"), rtol=1e-12, atol=1e-12)
    assert not torch.allclose(frozen_ve, run(ve, predictor="reverse_diffusion"))
    # "auto": frozen on VP, the transition on VE
    assert torch.equal(run(vp, coefficients="auto"), run(vp, coefficients="frozen"))
    assert torch.equal(run(ve, coefficients="auto"), run(ve, coefficients="transition"))
    assert not torch.equal(run(vp, coefficients="auto"), run(vp, coefficients="transition"))
    # one VP step from a point mass, by hand: mean (2 − a) x + v s, variance v, with β at t
    x = torch.full((2, 1), 0.3, dtype=torch.float64)
    t, t_next = 0.6, 0.5
    gm = ss.targets.GaussianMixture(torch.ones(1), torch.tensor([[1.0]]), torch.tensor([0.25]))
    score = gm.score_fn(vp)
    out = ss.predictors.reverse_diffusion(vp, score, x, t, t_next,
                                          lambda shape, std=1.0: torch.full(shape, std, dtype=torch.float64),
                                          coefficients="frozen")
    b = float(vp.beta(t)) * (t - t_next)
    a, v = math.exp(-0.5 * b), -math.expm1(-b)
    s = score(x, t)
    torch.testing.assert_close(out.x_mean, (2 - a) * x + v * s, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(out.x - out.x_mean, torch.full_like(x, math.sqrt(v)), rtol=1e-14, atol=1e-14)


def test_coefficients_belong_to_the_reverse_diffusion_predictor():
    with pytest.raises(ValueError, match=r"^coefficients='frozen' is the reverse_diffusion predictor's"):
        ss.PC(predictor="euler_maruyama", coefficients="frozen")
    with pytest.raises(ValueError, match="coefficients must be one of"):
        ss.PC(coefficients="exact")
    # "auto" (pc's default) concerns the reverse-diffusion predictor only: pc with another predictor works
    ss.PC(predictor="ancestral", coefficients="auto")


def test_classical_pc_grid_by_sde_and_step_count():
    """Quadratic for sub-VP, uniform for VE; on VP quadratic up to 100 steps, uniform beyond."""
    for name, n, kind in (("vp", 7, "quadratic"), ("vp", 100, "quadratic"), ("vp", 101, "uniform"),
                          ("subvp", 7, "quadratic"), ("subvp", 500, "quadratic"), ("ve", 7, "uniform")):
        assert torch.equal(ss.make_grid("classical_pc", SDES[name], n, 1e-3), ss.make_grid(kind, SDES[name], n, 1e-3))


def test_reverse_diffusion_on_subvp_is_the_euler_maruyama_step():
    """As score_sde's (its sub-VP has no discretisation of its own); elsewhere it is the transition step."""
    for name, same in (("subvp", True), ("vp", False), ("ve", False)):
        out = [_ring_samples(SDES[name], ss.PC(predictor=p, corrector="none"), steps=8).samples
               for p in ("reverse_diffusion", "euler_maruyama")]
        assert torch.equal(out[0], out[1]) == same, name


def test_unknown_predictor_or_corrector_names_the_argument_and_the_choices():
    with pytest.raises(ValueError, match=r"unknown predictor 'heun'; valid choices: euler_maruyama, reverse_diffusion"):
        ss.PC(predictor="heun")
    with pytest.raises(ValueError, match=r"unknown corrector 'mala'; valid choices: langevin"):
        ss.PC(corrector="mala")
    with pytest.raises(TypeError, match=r"predictor must be a name \(euler_maruyama, reverse_diffusion, .*got int"):
        ss.PC(predictor=3)
    own = lambda sde, score, x, t, t_next, noise: ss.predictors.reverse_diffusion(sde, score, x, t, t_next, noise)  # noqa: E731
    assert ss.PC(predictor=own).predictor is own  # a callable is taken as it is


def test_grid_steps_pairs_the_grid_for_hand_written_loops(capsys):
    ts = [1.0, 0.5, 0.25, 1e-3]
    assert list(ss.grid_steps(ts)) == [(1.0, 0.5), (0.5, 0.25), (0.25, 1e-3)]
    assert capsys.readouterr().err == ""  # no bar unless asked
    assert len(list(ss.grid_steps(ts, progress=True, desc="my loop"))) == 3
    assert "my loop" in capsys.readouterr().err


def test_probability_flow_ode_reports_its_solver_and_refuses_torchdiffeq_step_caps():
    sde, gm = SDES["vp"], gaussian_1d(0.5, 0.3)
    res = ss.sample(gm.score_fn(sde), sde, (64, 1), "ode", generator=torch.Generator().manual_seed(0))
    assert (res.stats["solver"], res.stats["rtol"], res.stats["atol"]) == ("rk45", 1e-5, 1e-5)
    st = res.stats
    assert st["steps_rejected"] > 0 and st["steps_attempted"] == st["steps_accepted"] + st["steps_rejected"]
    # rk45 (Dormand-Prince): 6 new stages per attempt (FSAL), + f(T), + the initial step-size probe, + the Tweedie step
    assert res.nfe == 6 * st["steps_attempted"] + 3
    msg = (r"cap the attempted steps with max_steps=N \(ProbabilityFlowODE\(max_steps=N\) or "
           r"sample\(\.\.\., max_steps=N\)\), not options=\{'max_num_steps': N\}")
    with pytest.raises(ValueError, match=msg):
        ss.sample(gm.score_fn(sde), sde, (4, 1), ss.ProbabilityFlowODE(options={"max_num_steps": 5}))
    with pytest.raises(ValueError, match="max_steps=N"):
        ss.sample(gm.score_fn(sde), sde, (4, 1), ss.ProbabilityFlowODE(options={"max_steps": 5}))


@pytest.mark.parametrize("theta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("predictor", ["euler_maruyama", "reverse_diffusion"])
def test_t_eval_evaluates_the_score_at_the_shifted_time(predictor, theta):
    """``t_eval`` θ: the predictor from t to t' takes its score at t + θ (t' − t) (towards t')."""
    ts, seen = _score_times(SDES["vp"], ss.PC(predictor=predictor, corrector="none", t_eval=theta))
    want = [t + theta * (tn - t) for t, tn in zip(ts[:-1], ts[1:])]
    assert seen == pytest.approx(want, rel=1e-6, abs=0)


@pytest.mark.parametrize("sde_name,ramped", [("vp", True), ("ve", False), ("subvp", None)])
def test_ramped_t_eval_grows_the_shift_along_the_run_on_vp(sde_name, ramped):
    """t_eval="ramped": step i of N takes its score at t + θ_i (t' − t), θ_i = (i + 1)/N on VP; θ = 1 on VE,
    0 on sub-VP (the "shifted" profile there)."""
    ts, seen = _score_times(SDES[sde_name], ss.PC(predictor="euler_maruyama", corrector="none", t_eval="ramped"))
    theta = [(i + 1) / 6 if ramped else 1.0 if ramped is False else 0.0 for i in range(6)]
    want = [t + th * (tn - t) for th, t, tn in zip(theta, ts[:-1], ts[1:])]
    assert seen == pytest.approx(want, rel=1e-6, abs=0)


@pytest.mark.parametrize("sde_name,theta", [("vp", 1.0), ("ve", 0.0), ("subvp", 0.0)])
def test_pc_corrector_moves_with_the_shifted_step(sde_name, theta):
    """pc's default (t_eval="shifted_vp"): each step's corrector and predictor both evaluate at
    t + θ (t' − t), θ = 1 on VP and 0 on VE and sub-VP (the corrector at t fails on VP)."""
    ts, seen = _score_times(SDES[sde_name], "pc")
    want = [t + theta * (tn - t) for t, tn in zip(ts[:-1], ts[1:]) for _ in range(2)]
    assert seen == pytest.approx(want, rel=1e-6, abs=0)


X0_END_SAMPLERS = [{"predictor": "euler_maruyama", "t_eval": 1.0}, {"predictor": "reverse_diffusion", "t_eval": 1.0},
                   {"predictor": "ancestral", "variance": 0.5}, {"predictor": "reverse_diffusion"}]


@pytest.mark.parametrize("opts", X0_END_SAMPLERS)
def test_x0_end_converges_to_tweedie_of_p_eps_at_weak_order_one(opts):
    """``end="x0"``: the output is x̂_0 = (x + σ² s)/m of the last evaluation, so for a Gaussian N(μ, s0²)
    under VE (σ(0) = σ_min > 0) its exact moments tend to those of E[x_0 | x_eps], x_eps ~ p_eps:
    (μ, s0⁴/(s0² + σ_eps²)), like 1/N; the last step's mean tends to p_eps's (μ, s0² + σ_eps²), 4 % away."""
    sde, s0, eps = SDES["ve"], 0.05, 1e-3
    gm = gaussian_1d(1.0, s0)
    var_eps = float(sde.std(eps)) ** 2
    target = s0**4 / (s0**2 + var_eps)
    sampler = ss.PC(corrector="none", end="x0", **opts)
    ns = [128, 256, 512, 1024]
    errs = []
    for n in ns:
        m, v = exact_output_moments(sampler, gm, sde, n, eps=eps, grid="classical", denoise=True)
        errs.append(abs(m - 1.0) + abs(v - target))
    gap = s0**2 + var_eps - target  # where the last step's mean would go
    # (ancestral's x̂_0 end is within 1e-6 of the limit at every N: no slope to measure there)
    assert errs[-1] < 0.2 * gap and (loglog_slope(ns, errs) <= -0.85 or max(errs) < 0.01 * gap), errs


@pytest.mark.parametrize("method", ["em", "reverse_diffusion", "ancestral", "pc"])
def test_end_auto_is_x0_where_the_sde_keeps_noise_at_t0_and_costs_no_evaluation(method):
    """VE keeps σ_min at t = 0, which the last step's mean keeps: "auto" ends on x̂_0 there; VP and
    sub-VP (σ(0) = 0) keep the mean.  Either way the run makes the same number of evaluations."""
    for name, auto_is in (("ve", "x0"), ("vp", "mean"), ("subvp", "mean")):
        sde = SDES[name]
        runs = {end: _ring_samples(sde, method, (32, 2), 3, nfe=20, end=end) for end in ("auto", "x0", "mean")}
        assert torch.equal(runs["auto"].samples, runs[auto_is].samples), name
        assert len({r.nfe for r in runs.values()}) == 1 and runs["auto"].nfe == 20
        assert not torch.equal(runs["x0"].samples, runs["mean"].samples)
        undenoised = _ring_samples(sde, method, (32, 2), 3, nfe=20, end="x0", denoise=False)
        plain = _ring_samples(sde, method, (32, 2), 3, nfe=20, end="mean", denoise=False)
        assert torch.equal(undenoised.samples, plain.samples)  # end only concerns the final denoising


def test_end_names_its_choices():
    with pytest.raises(ValueError, match="end"):
        ss.PC(end="tweedie")
