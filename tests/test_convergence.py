"""Convergence of every registered method against ground truth that trusts none of our code.

- Deterministic samplers (classified by never drawing noise): the exact probability-flow map of
  a Gaussian (closed form) and, on random mixtures, scipy's DOP853 at rtol 1e-11 on the flow
  written here in numpy from the mixture's parameters and the SDE's marginal (helpers).
- Stochastic samplers affine in their noise: weak order from the exact output mean and variance
  on a Gaussian (BasisNoise bookkeeping, no Monte Carlo).
- Every predictor and corrector of the registries, the corrector at a fixed time against the
  moments of p_t it must leave invariant up to its discretisation bias.

Order bounds: a declared order p must show as a log-log slope within ±0.3 of −p.  0.3 is below
half the gap (0.5) between neighbouring integer orders, so no method of order p ± 1 can pass
(nor a "slope 0.45 as order 1"), and leaves 0.2 for pre-asymptotic curvature; step counts are
chosen in the asymptotic range, the bound is not widened per method.
"""

import math
from dataclasses import replace

import pytest
import torch
from helpers import (
    SDES,
    Z_MAX,
    classify,
    exact_moments_on_grid,
    gaussian_1d,
    gaussian_flow_map,
    loglog_slope,
    mixture_flow_reference,
)
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

import scoresolve as ss
from scoresolve.targets import GaussianMixture

F64 = torch.float64
ORDER_TOL = 0.3  # see the module docstring
NO_SHRINK = (Phase.explicit, Phase.reuse, Phase.generate)  # a failing example is reported as found: shrinking
# it would rerun the scipy reference and three solves per candidate, minutes on 2 cores
KIND = {name: classify(s) for name, s in ss.SAMPLERS.items()}
DETERMINISTIC_FIXED = [n for n, k in KIND.items() if k == "deterministic" and ss.SAMPLERS[n].nfe_per_step]
DETERMINISTIC_ADAPTIVE = [n for n, k in KIND.items() if k == "deterministic" and not ss.SAMPLERS[n].nfe_per_step]
LINEAR_STOCHASTIC = [n for n, k in KIND.items() if k == "linear"]
DIAG = GaussianMixture(torch.ones(1), torch.tensor([[0.5, -1.0]]), torch.tensor([[0.25, 0.04]]))


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_classification_covers_the_known_kinds():
    # a mutation must not silently move a sampler out of the exact-moment or flow-map checks
    assert {"ode_euler", "ode_heun", "ddim", "dpmpp_2m", "unipc"} <= set(DETERMINISTIC_FIXED)
    assert {"em", "reverse_diffusion", "ddim_eta", "edm_churn", "dpmpp_2m_sde"} <= set(LINEAR_STOCHASTIC)
    # ancestral's analytic variance reads the batch's score norms (not affine in the noise): its fixed-λ
    # variants keep the exact-moment order check (test_classical), the default is checked against a
    # Gaussian's exact std at 10 steps (test_analytic_variance_matches_a_gaussian_target_...)
    assert KIND["ancestral"] == "nonlinear"
    assert classify(ss.PC(predictor="ancestral", corrector="none", variance=0.5)) == "linear"
    assert "ode" in DETERMINISTIC_ADAPTIVE


def _ns(sampler, base=(16, 32, 64, 128)):
    """Step counts at equal NFE budgets: 16..128 evaluations per sample times nfe_per_step⁻¹."""
    per = sampler.nfe_per_step
    return [max(4, b * 2 // per) for b in base]


# ---------------------------------------------------------------- deterministic: exact Gaussian map
def _no_tail(sampler) -> dict:
    """The integrator itself, to the end: no tail step (below σ̃ = 0.01, i.e. on sub-VP, the exponential
    samplers end with one step of fixed error O((σ̃_c/s)⁴), which does not fall with the steps)."""
    return {"tail_sigma": None} if getattr(sampler, "tail_sigma", None) is not None else {}


@pytest.mark.parametrize("sde_name", list(SDES))
@pytest.mark.parametrize("name", DETERMINISTIC_FIXED)
def test_deterministic_order_against_the_exact_gaussian_flow_map(name, sde_name):
    if name in PEER_STARTUP:
        pytest.xfail("start-up steps limit the global order (see PEER_STARTUP)")
    sde, eps, sampler = SDES[sde_name], 1e-3, ss.SAMPLERS[name]
    x_T = DIAG.diffused(sde.T, sde).sample(16, generator=gen(0), dtype=F64)
    exact = gaussian_flow_map(DIAG, sde, x_T, eps)
    ns = _ns(sampler)
    errs = []
    for n in ns:  # a Karras grid: uneven λ-steps, so no superconvergence of uniform steps
        res = ss.sample(DIAG.score_fn(sde), sde, x_T.shape, name, steps=n, grid="karras", eps=eps,
                        x_init=x_T, denoise=False, **_no_tail(sampler))
        errs.append(float((res.samples - exact).abs().max()))
    assert abs(-loglog_slope(ns, errs) - sampler.order) <= ORDER_TOL, (ns, errs)


# options the registry does not exercise (a coefficient that only matters away from the default)
OPTION_VARIANTS = {
    "dpmpp_2s_r1/3": ss.samplers.DPMSolver2S(r=1 / 3), "dpmpp_2s_r0.8": ss.samplers.DPMSolver2S(r=0.8),
    "dpmpp_1m": ss.samplers.DPMSolverMultistep(solver_order=1),
    "dpmpp_3m_midpoint": ss.samplers.DPMSolverMultistep(solver_order=3, variant="midpoint"),
    "unipc_p1": ss.samplers.UniPC(solver_order=1), "unipc_p2": ss.samplers.UniPC(solver_order=2),
    "unipc_p4": ss.samplers.UniPC(solver_order=4),
    "unipc_bh2_p1": ss.samplers.UniPCBh(solver_order=1), "lms_2": ss.samplers.LMS(solver_order=2),
}


@pytest.mark.parametrize("sde_name", list(SDES))
@pytest.mark.parametrize("variant", list(OPTION_VARIANTS))
def test_option_variants_keep_their_order_against_the_exact_gaussian_flow_map(variant, sde_name):
    """As above, for sampler options off their defaults (DPM-Solver-2S's intermediate point r,
    other orders): their declared order against the closed-form flow map.  Order 5 (UniPC with 4 past
    nodes) reaches its asymptotic range later (32 → 64 steps: slope 6.3, then 4.9 and 5.0): twice the steps."""
    sde, eps, sampler = SDES[sde_name], 1e-3, OPTION_VARIANTS[variant]
    x_T = DIAG.diffused(sde.T, sde).sample(16, generator=gen(0), dtype=F64)
    exact = gaussian_flow_map(DIAG, sde, x_T, eps)
    ns, errs = _ns(sampler, tuple(b * 2 ** max(0, math.ceil(sampler.order) - 4) for b in (16, 32, 64, 128))), []
    for n in ns:
        res = ss.sample(DIAG.score_fn(sde), sde, x_T.shape, sampler, steps=n, grid="karras", eps=eps,
                        x_init=x_T, denoise=False, **_no_tail(sampler))
        errs.append(float((res.samples - exact).abs().max()))
    assert abs(-loglog_slope(ns, errs) - sampler.order) <= ORDER_TOL, (ns, errs)


# ---------------------------------------------------------------- deterministic: random mixtures
@st.composite
def mixtures(draw):
    dim, k = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    gm = GaussianMixture.random(dim, k, seed=draw(st.integers(0, 10_000)), spread=1.5,
                                std_range=(0.3, 0.8), anisotropic=draw(st.booleans()))
    return gm


def _mixture_case(gm, sde, seed, eps=1e-2):
    x_T = gm.sample(8, sde.T, sde, generator=gen(seed), dtype=F64)
    return x_T, mixture_flow_reference(gm, sde, x_T, eps)


# Start-up steps of lower order limit the global order of multistep methods once the first
# interval's error dominates; on VE the 3-step DPM-Solver++ drops from 3 towards 2 and below
# (slope 2.4 → 1.7 over 64..512 uniform steps) and recovers 3.00 when the first three intervals
# are refined: a library defect, reported on issue 15, kept visible here.
KNOWN_ORDER_DEFECTS = {("dpmpp_3m", "ve")}
# the peers' own start-up rules (k-diffusion's LMS warms up at orders 1-3; diffusers' UniPC-bh lowers
# its order in the first and last steps): measured slopes 3.2-3.7 for LMS (declared 4) over 32-1024 steps
PEER_STARTUP = {"lms", "unipc_bh1", "unipc_bh2"}


@pytest.mark.slow
@pytest.mark.parametrize("sde_name", list(SDES))
@pytest.mark.parametrize("name", DETERMINISTIC_FIXED)
@settings(max_examples=3, phases=NO_SHRINK)
@given(gm=mixtures(), seed=st.integers(0, 100))
def test_deterministic_sampler_converges_at_its_order_to_an_independent_flow_on_random_mixtures(
    name, sde_name, gm, seed
):
    """Property: on any Gaussian mixture a fixed-step deterministic method converges to the flow
    solved by scipy on a numpy score (sharing no drift code with ours) at its declared order.
    Steps: 64..256 evaluations per sample (errors below ~1e-3, the asymptotic range; at 16..64
    Heun still shows 1.7), doubled for order 4, which reaches its range later."""
    if (name, sde_name) in KNOWN_ORDER_DEFECTS or name in PEER_STARTUP:
        pytest.xfail("start-up steps limit the global order (see KNOWN_ORDER_DEFECTS, PEER_STARTUP)")
    sde, eps = SDES[sde_name], 1e-2
    sampler = ss.SAMPLERS[name]
    x_T, ref = _mixture_case(gm, sde, seed, eps)
    ns = _ns(sampler, tuple(b * 2 ** max(0, math.ceil(sampler.order) - 3) for b in (64, 128, 256)))
    errs = [float((ss.sample(gm.score_fn(sde), sde, x_T.shape, name, steps=n, x_init=x_T, eps=eps,
                             denoise=False, grid="karras", **_no_tail(sampler)).samples - ref).abs().max()) for n in ns]
    assert abs(-loglog_slope(ns, errs) - sampler.order) <= ORDER_TOL, (ns, errs)


@pytest.mark.slow
@pytest.mark.parametrize("name", DETERMINISTIC_ADAPTIVE)
@settings(max_examples=4, phases=NO_SHRINK)
@given(gm=mixtures(), sde_name=st.sampled_from(list(SDES)), seed=st.integers(0, 100))
def test_adaptive_deterministic_sampler_converges_to_an_independent_flow_on_random_mixtures(name, gm, sde_name, seed):
    sde, eps = SDES[sde_name], 1e-2
    x_T, ref = _mixture_case(gm, sde, seed, eps)
    scale = float(ref.abs().max())
    errs = [float((ss.sample(gm.score_fn(sde), sde, x_T.shape, name, x_init=x_T, eps=eps, denoise=False, rtol=tol,
                             atol=tol).samples - ref).abs().max()) for tol in (1e-4, 1e-6)]
    # local error control of an order-p (p >= 2) pair gives a global error ∝ tol^{p/(p+1)} >= tol^{2/3}:
    # 100x tighter must gain >= 21x; ask 10x (step-control noise), and a converged value << scale
    assert errs[1] < errs[0] / 10 or errs[0] < 1e-9 * scale, errs
    assert errs[1] < 1e-4 * scale, errs


# ---------------------------------------------------------------- stochastic: weak order, exact moments
def _weak_errors(sampler, sde, ns, gm, eps=1e-3, grid=None):
    ex = gm.diffused(eps, sde)
    m_ex, v_ex = float(ex.mean()[0]), float(ex.cov()[0, 0])
    errs = []
    for n in ns:
        ts = ss.make_grid(grid or sampler.default_grid, sde, n, eps).tolist()
        per = max(1, sampler.nfe_per_step or 1)
        m, v = exact_moments_on_grid(sampler, gm, sde, ts, n_draws=n * (per + 1))
        errs.append(abs(m - m_ex) + abs(v - v_ex))
    return errs


def _check_weak_order(order, ns, errs):
    slope = -loglog_slope(ns, errs)
    # at least the declared order; on a Gaussian the leading error term may cancel (e.g. EM on VE),
    # and then the next term, one order higher, shows: allow up to order + 1 (± the same 0.3)
    assert order - ORDER_TOL <= slope <= order + 1 + ORDER_TOL, (ns, errs, slope)


# ALD declares order 1, but with a fixed number of Langevin steps per level its weak error falls
# only like N^-0.4 in the number of levels N (64..512, every SDE): reported on issue 15.
KNOWN_WEAK_ORDER_DEFECTS = {"ald"}


@pytest.mark.parametrize("slope", [0.45, 0.69])
def test_weak_order_check_rejects_a_slope_off_by_more_than_its_bound(slope):
    ns = [64, 128, 256, 512]
    with pytest.raises(AssertionError):
        _check_weak_order(1.0, ns, [n**-slope for n in ns])
    _check_weak_order(1.0, ns, [n**-0.75 for n in ns])  # and accepts one within it


@pytest.mark.parametrize("sde_name", list(SDES))
@pytest.mark.parametrize("name", LINEAR_STOCHASTIC)
def test_stochastic_sampler_weak_order_from_exact_moments(name, sde_name):
    sampler = ss.SAMPLERS[name]
    if name in KNOWN_WEAK_ORDER_DEFECTS:
        pytest.xfail("declared weak order not reached (see KNOWN_WEAK_ORDER_DEFECTS)")
    ns = [64, 128, 256, 512] if sampler.order == 1 else [16, 32, 64, 128]
    _check_weak_order(sampler.order, ns, _weak_errors(sampler, SDES[sde_name], ns, gaussian_1d()))


@pytest.mark.parametrize("sde_name", list(SDES))
@pytest.mark.parametrize("predictor", [p for p in ss.PREDICTORS if p != "none"])
def test_every_predictor_has_weak_order_one(predictor, sde_name):
    sampler = ss.PC(predictor=predictor, corrector="none")
    ns = [64, 128, 256, 512]
    _check_weak_order(1.0, ns, _weak_errors(sampler, SDES[sde_name], ns, gaussian_1d(), grid="uniform"))


def test_none_predictor_and_corrector_leave_the_state_exactly_unchanged():
    sde = ss.VPSDE()
    x = torch.randn(5, 3, generator=gen(1), dtype=F64)
    res = ss.sample(lambda z, t: -z, sde, x.shape, "pc", predictor="none", corrector="none", steps=4, x_init=x,
                    denoise=False, generator=gen(2))
    assert torch.equal(res.samples, x) and res.nfe == 0


# ---------------------------------------------------------------- correctors at a fixed time
def _corrector_run(corrector, sde, gm, t, n, snr, n_steps, seed=0, norm="batch"):
    """n_steps corrector steps at time t from exact samples of p_t, through PC with the "none"
    predictor on a one-step grid [t, t/2] (so the none predictor is run too)."""
    x = gm.sample(n, t, sde, generator=gen(seed), dtype=F64)
    res = ss.sample(gm.score_fn(sde), sde, x.shape, "pc", predictor="none", corrector=corrector, snr=snr,
                    n_corrector_steps=n_steps, snr_norm=norm, grid=torch.tensor([t, t / 2], dtype=F64), x_init=x,
                    denoise=False, generator=gen(seed + 1), t_eval=0.0)  # pc shifts on VP: the corrector at t
    assert res.nfe == (0 if corrector == "none" else n_steps)
    return res.samples


ISO = GaussianMixture(torch.ones(1), torch.full((1, 32), 0.7), torch.tensor([0.3]))  # N(0.7, 0.3 I) in 32-d
ISO128 = GaussianMixture(torch.ones(1), torch.full((1, 128), 0.7), torch.tensor([0.3]))


@pytest.mark.parametrize("sde_name", list(SDES))
@pytest.mark.parametrize("corrector", list(ss.CORRECTORS))
def test_every_corrector_leaves_p_t_invariant_up_to_its_bias(corrector, sde_name):
    """Langevin steps x' = x + ε s + √(2ε) z on N(μ, v) contract the mean by (1 − ε/v) and have
    stationary variance v / (1 − ε/(2v)): the mean stays μ and the variance ratio lies in
    [1, 1/(1 − snr²)] for the SNR step rules (ε ≤ 2 snr² v), within Monte-Carlo error."""
    sde, t, snr, n = SDES[sde_name], 0.3, 0.16, 256
    p_t = ISO.diffused(t, sde)
    mu, v = float(p_t.means[0, 0]), float(p_t.covs[0, 0])
    x = _corrector_run(corrector, sde, ISO, t, n, snr, 50)
    m = x.numel()  # n × d independent coordinates
    assert abs(float(x.mean()) - mu) <= Z_MAX * math.sqrt(v / m)
    ratio = float(x.var()) / v
    se = math.sqrt(2 / m) / (1 - snr**2)
    assert 1 - Z_MAX * se <= ratio <= 1 / (1 - snr**2) + Z_MAX * se, ratio


@pytest.mark.parametrize("sde_name", list(SDES))
def test_langevin_stationary_variance_is_one_plus_snr_squared(sde_name, norm="batch"):
    """The batch-norm SNR rule ε = 2 (snr ‖z‖/‖s‖)² on N(μ, v I) in d dims: ‖z‖² ≈ d and
    ‖s‖² ≈ d r / v at variance r v, so ε = 2 snr² v / r and the stationary ratio r = 1/(1 − ε/(2v))
    solves r = 1 + snr².  At snr = 0.5: 1.25 (a quartered step would give 1.0625).  (The per-sample
    rule's heavy-tailed ‖z‖²/‖s‖² gives a larger ratio, 1.41 at d = 32: not covered here.)"""
    sde, t, snr, n = SDES[sde_name], 0.3, 0.5, 256
    p_t = ISO128.diffused(t, sde)
    v = float(p_t.covs[0, 0])
    x = _corrector_run("langevin", sde, ISO128, t, n, snr, 30, norm=norm)  # (1 − ε/v)^60 = 0.6^60: start forgotten
    ratio = float(x.var()) / v
    se = math.sqrt(2 / x.numel()) * (1 + snr**2)
    # ± Z_MAX se + O(1/d) from the ratio of mean norms: 0.045 here, while a step off by 20% moves r by 0.05
    assert abs(ratio - (1 + snr**2)) <= Z_MAX * se + 1 / ISO128.dim, ratio
    assert abs(float(x.mean()) - float(p_t.means[0, 0])) <= Z_MAX * math.sqrt(ratio * v / x.numel())


@pytest.mark.parametrize("sde_name", list(SDES))
def test_annealed_langevin_corrector_follows_the_exact_ula_recursion(sde_name):
    """ε = 2 (snr σ(t))² is deterministic, so the corrector is affine in its noise: from the exact
    1-D p_t = N(μ, v) the output moments are exact, mean μ and variance
    a^{2M} v + 2ε (1 − a^{2M}) / (1 − a²), a = 1 − ε/v (σ(t) written here from the SDE's parameters)."""
    from helpers import marginal_np

    sde, t, snr, M = SDES[sde_name], 0.3, 0.4, 7
    gm = gaussian_1d(1.0, 0.5)
    p_t = gm.diffused(t, sde)
    mu, v = float(p_t.mean()[0]), float(p_t.cov()[0, 0])
    sampler = ss.PC(predictor="none", corrector="annealed_langevin", snr=snr, n_corrector_steps=M)
    mean, var = exact_moments_on_grid(sampler, gm, sde, [t, t / 2], n_draws=M)
    eps = 2 * (snr * marginal_np(sde, t)[2]) ** 2
    a = 1 - eps / v
    assert math.isclose(mean, mu, rel_tol=1e-10, abs_tol=1e-12)
    assert math.isclose(var, a ** (2 * M) * v + 2 * eps * (1 - a ** (2 * M)) / (1 - a * a), rel_tol=1e-10)


# ---------------------------------------------------------------- distribution-level checks have power
def test_distribution_checks_pass_exact_samples_and_fail_5pct_wide_components_or_a_missing_mode():
    """The checks of test_every_registered_sampler_reaches_the_noise_floor, at its sample size,
    on exact samples (pass) and on the same samples with every component 5% too wide, one mode
    emptied into its neighbour, or everything on one mode (each must fail)."""
    from helpers import distribution_z_scores

    ring = GaussianMixture.ring(8, 2.0, 0.2)
    n = 8000
    x, k = ring.sample(n, generator=gen(0), dtype=F64, return_labels=True)
    ref = ring.log_prob(ring.sample(200_000, generator=gen(1), dtype=F64))
    centre = ring.means[k]
    ok = distribution_z_scores(x, ring, ref)
    assert max(abs(v) for v in ok.values()) <= Z_MAX, ok
    wide = distribution_z_scores(centre + 1.05 * (x - centre), ring, ref)
    assert wide["width"] > Z_MAX, wide
    moved = x.clone()
    moved[k == 0] += ring.means[1] - ring.means[0]
    assert distribution_z_scores(moved, ring, ref)["weights"] > Z_MAX
    collapsed = distribution_z_scores(ring.means[0] + (x - centre), ring, ref)
    assert collapsed["weights"] > Z_MAX, collapsed


# ---------------------------------------------------------------- the final denoising step
@pytest.mark.parametrize("sde_name", list(SDES))
@pytest.mark.parametrize("name", [n for n in DETERMINISTIC_FIXED + DETERMINISTIC_ADAPTIVE
                                  if ss.SAMPLERS[n].denoise_with == "tweedie"
                                  and ss.SAMPLERS[n].extra_nfe(True) > ss.SAMPLERS[n].extra_nfe(False)])
def test_final_denoising_step_is_the_exact_posterior_mean(name, sde_name):
    """denoise=True ends a deterministic run with Tweedie's x̂_0 = E[x_0 | x_eps]; for the 1-D
    Gaussian N(μ, v) that is μ + m v / (m² v + σ²) (x − m μ), (m, σ) written from the SDE's parameters."""
    from helpers import marginal_np

    sde, eps, gm = SDES[sde_name], 1e-2, gaussian_1d(1.0, 0.5)
    x_T = gm.sample(16, sde.T, sde, generator=gen(3), dtype=F64)
    kw = {"steps": 8} if ss.SAMPLERS[name].nfe_per_step else {}
    plain, den = (ss.sample(gm.score_fn(sde), sde, x_T.shape, name, x_init=x_T, eps=eps, denoise=d, **kw).samples
                  for d in (False, True))
    m, _, s, _ = marginal_np(sde, eps)
    torch.testing.assert_close(den, 1.0 + m * 0.25 / (m * m * 0.25 + s * s) * (plain - m), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("sde_name", list(SDES))
def test_ald_is_exactly_annealed_langevin_on_a_gaussian(sde_name):
    """ALD misses its declared weak order (KNOWN_WEAK_ORDER_DEFECTS), so its algorithm is pinned
    instead: on N(μ, v) each level rescales by m(t_i)/m(t_{i−1}) and takes Langevin steps
    x' = (1 − α/(2 v_t)) x + (α/2) m μ / v_t + √α z, α = ε (σ_i/σ_L)² = 2 σ_i², whose exact mean and variance
    recursion (coefficients written from the SDE's parameters) the sampler must reproduce."""
    from helpers import marginal_np

    sde, gm, k, n = SDES[sde_name], gaussian_1d(1.0, 0.5), 3, 6
    ts = ss.make_grid("log_snr", sde, n, 1e-3).tolist()
    mean, var = exact_moments_on_grid(ss.AnnealedLangevin(n_steps_each=k), gm, sde, ts, n_draws=n * k)
    sig = [marginal_np(sde, t)[2] for t in ts[1:]]
    lr = 2.0 * sig[-1] ** 2  # the default step: α_i = 2 σ_i²
    m0, _, s0, _ = marginal_np(sde, ts[0])
    mu, v = m0 * 1.0, m0 * m0 * 0.25 + s0 * s0
    for t_prev, t in zip(ts[:-1], ts[1:]):
        m, _, s, _ = marginal_np(sde, t)
        r = m / marginal_np(sde, t_prev)[0]
        mu, v = r * mu, r * r * v
        alpha, vt = lr * (s / sig[-1]) ** 2, m * m * 0.25 + s * s
        for _ in range(k):
            a = 1 - alpha / (2 * vt)
            mu, v = a * mu + 0.5 * alpha * m * 1.0 / vt, a * a * v + alpha
    assert math.isclose(mean, mu, rel_tol=1e-9) and math.isclose(var, v, rel_tol=1e-9), (mean, mu, var, v)


@pytest.mark.parametrize("predictor", list(ss.PREDICTORS))
def test_predictor_mean_is_the_step_without_its_noise(predictor):
    # denoise=True returns the last step's x_mean: it must be the update with its noise draw left out
    sde, gm = ss.VPSDE(), gaussian_1d()
    x = torch.randn(5, 1, generator=gen(0), dtype=F64)
    score = ss.CountingScore(gm.score_fn(sde), 5)
    step = ss.PREDICTORS[predictor](sde, score, x, 0.5, 0.4, lambda shape, std=1.0: torch.zeros(shape, dtype=F64))
    assert torch.equal(step.x, step.x_mean)
    noisy = ss.PREDICTORS[predictor](sde, score, x, 0.5, 0.4, lambda shape, std=1.0: torch.full(shape, std, dtype=F64))
    torch.testing.assert_close(noisy.x_mean, step.x_mean, rtol=0, atol=0)


@pytest.mark.parametrize("corrector", list(ss.CORRECTORS))
def test_corrector_defaults_one_step_and_zero_steps(corrector):
    sde, gm = ss.VPSDE(), gaussian_1d()
    x = torch.randn(6, 1, generator=gen(0), dtype=F64)
    score = ss.CountingScore(gm.score_fn(sde), 6)
    fn = ss.CORRECTORS[corrector]
    noise = ss.Noise(generator=gen(1), dtype=F64)
    one = fn(sde, score, x, 0.5, noise, snr=0.16)  # documented default: n_steps=1 (and norm="batch")
    assert score.calls == (0 if corrector == "none" else 1) and one.x_mean is not None
    assert fn(sde, score, x, 0.5, noise, snr=0.16, n_steps=0) == (x, x) or corrector == "none"
    if corrector == "none":
        assert torch.equal(one.x, x) and torch.equal(one.x_mean, x)


def test_langevin_per_sample_norms_keep_a_sample_independent_of_its_mates():
    sde, gm = ss.VPSDE(), gaussian_1d()
    x = torch.randn(6, 3, generator=gen(0), dtype=F64)
    z = torch.randn(6, 3, generator=gen(1), dtype=F64)

    def run(rows, norm):
        score = ss.CountingScore(gm.score_fn(sde), len(rows))
        return ss.CORRECTORS["langevin"](sde, lambda a, t: score(a.reshape(-1, 1), t).reshape(a.shape),
                                         x[rows], 0.5, lambda shape, std=1.0: z[rows].clone(), snr=0.3, norm=norm).x

    torch.testing.assert_close(run([0, 1, 2, 3, 4, 5], "sample")[:2], run([0, 1], "sample"), rtol=1e-14, atol=0)
    assert not torch.allclose(run([0, 1, 2, 3, 4, 5], "batch")[:2], run([0, 1], "batch"))
    with pytest.raises(ValueError, match="norm must be 'batch' or 'sample', got 'x'"):
        run([0], "x")


# ---------------------------------------------------------------- the adaptive probability-flow solver
@pytest.mark.parametrize("method", ["dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun"])
def test_solve_adaptive_stays_above_eps_reaches_the_exact_map_and_honours_its_tolerances(method):
    from scoresolve.ode import solve_adaptive

    sde, gm, eps = ss.VPSDE(), gaussian_1d(1.0, 0.5), 1e-3
    seen = []

    def score(x, t):
        seen.append(float(t.min()))
        return gm.score_fn(sde)(x, t)

    x_T = gm.sample(16, sde.T, sde, generator=gen(0), dtype=F64)
    ts = torch.tensor([1.0, 0.5, eps], dtype=F64)
    ys, stats = solve_adaptive(sde, score, x_T, ts, rtol=1e-5, atol=1e-5, method=method)
    assert min(seen) >= eps and ys.shape == (3, 16, 1)  # pinned to land on eps, never past it
    exact = torch.stack([gaussian_flow_map(gm, sde, x_T, t) for t in ts.tolist()])
    err = float((ys - exact).abs().max())
    err_loose = float((solve_adaptive(sde, gm.score_fn(sde), x_T, ts, rtol=1e-3, atol=1e-3, method=method)[0]
                       - exact).abs().max())
    # global error ∝ tol^{p/(p+1)} for an order-p pair (p >= 1: 100x tighter gains >= 10x); ask 5x
    assert err < err_loose / 5 and err < 1e-2, (err, err_loose)
    assert (stats["solver"], stats["rtol"], stats["atol"], stats["rhs_evals"]) == (method, 1e-5, 1e-5, len(seen))
    assert stats["steps_accepted"] >= 1 and stats["steps_rejected"] >= 0  # from torchdiffeq's callbacks
    if method == "dopri5":  # 2 evaluations pick the first step, then 6 per attempted step
        assert stats["rhs_evals"] == 2 + 6 * stats["steps_attempted"]
        assert stats["steps_accepted"] + stats["steps_rejected"] == stats["steps_attempted"] >= 1
    loose = solve_adaptive(sde, score, x_T, ts, rtol=1e-2, atol=1e-2, method=method)[1]
    assert loose["rhs_evals"] < stats["rhs_evals"]
    # atol is passed through: with rtol negligible, a tighter atol costs more evaluations
    by_atol = [solve_adaptive(sde, score, x_T, ts, rtol=1e-12, atol=a, method=method)[1]["rhs_evals"]
               for a in (1e-2, 1e-4)]
    assert by_atol[0] < by_atol[1], by_atol
    by_rtol = [solve_adaptive(sde, score, x_T, ts, rtol=r, atol=1e-12, method=method)[1]["rhs_evals"]
               for r in (1e-2, 1e-4)]  # and so is rtol, varied alone
    assert by_rtol[0] < by_rtol[1], by_rtol


def test_solve_adaptive_runs_the_solver_it_names():
    """The five pairs differ in stages and order, so they spend different numbers of evaluations and
    land on different states at the same tolerance: a solver name that is not passed on would not."""
    from scoresolve.ode import solve_adaptive

    sde, gm = ss.VPSDE(), gaussian_1d(1.0, 0.5)
    x_T = gm.sample(16, sde.T, sde, generator=gen(0), dtype=F64)
    ts = torch.tensor([1.0, 1e-3], dtype=F64)
    runs = {m: solve_adaptive(sde, gm.score_fn(sde), x_T, ts, rtol=1e-4, atol=1e-4, method=m)
            for m in ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")}
    evals = {m: st["rhs_evals"] for m, (_, st) in runs.items()}
    assert len(set(evals.values())) == 5, evals
    finals = [ys[-1] for ys, _ in runs.values()]
    assert all(not torch.equal(a, b) for i, a in enumerate(finals) for b in finals[i + 1:])
    from scoresolve.ode import StepLimitError

    with pytest.raises(StepLimitError, match="the bosh3 solve from t=1 to t=0.001 stopped"):  # and names it
        solve_adaptive(sde, gm.score_fn(sde), x_T, ts, rtol=1e-10, atol=1e-10, method="bosh3", max_steps=3)


def test_solve_adaptive_defaults_to_dopri5_and_float32_states_stay_float32():
    from scoresolve.ode import solve_adaptive

    sde, gm = ss.VPSDE(), gaussian_1d()
    x = torch.randn(4, 1, generator=gen(0))
    ys, stats = solve_adaptive(sde, gm.score_fn(sde), x, torch.tensor([1.0, 1e-2], dtype=F64), rtol=1e-3, atol=1e-3)
    assert stats["solver"] == "dopri5" and ys.dtype == torch.float32


@pytest.mark.parametrize("opts", [dict(s_churn=3.0, s_tmin=0.2, s_tmax=20.0, s_noise=1.1),
                                  dict(s_churn=6.0)], ids=["window", "capped"])
def test_edm_churn_adds_exactly_the_noise_of_algorithm_2(opts):
    """With a zero score the Heun steps do not move x (d = (x − x̂_0)/σ = 0), so the output's
    variance is the churn alone: Σ_i s_noise² (σ̂_i² − σ_i²) over the steps with σ_i in
    [s_tmin, s_tmax], σ̂_i = min(σ_i (1 + γ), σ_0), γ = min(s_churn/N, √2 − 1) (EDM, Algorithm 2).
    Sample variance of 40,000 draws: relative standard error √(2/n) = 0.7%; bound 5 of them."""
    sde, n_samples, steps = ss.KarrasSDE(), 40_000, 12
    sampler = ss.samplers.EDMHeun(**opts)
    res = ss.sample(lambda x, t: torch.zeros_like(x), sde, (n_samples, 1), sampler, steps=steps,
                    x_init=torch.zeros(n_samples, 1, dtype=F64), generator=gen(0))
    sig = res.ts.tolist()  # σ(t) = t on the Karras SDE
    gamma = min(opts["s_churn"] / steps, math.sqrt(2.0) - 1.0)
    lo, hi, s_noise = opts.get("s_tmin", 0.0), opts.get("s_tmax", math.inf), opts.get("s_noise", 1.0)
    var = sum(s_noise**2 * (min(s * (1 + gamma), sig[0]) ** 2 - s * s) for s in sig[:-1] if lo <= s <= hi)
    assert var > 0
    se = math.sqrt(2.0 / n_samples)
    assert abs(float(res.samples.var()) / var - 1.0) <= 5 * se, (float(res.samples.var()), var)


def test_edm_churn_window_must_be_ordered():
    with pytest.raises(ValueError, match=r"need 0 <= s_tmin <= s_tmax, got 2.0, 1.0"):
        ss.samplers.EDMHeun(s_churn=1.0, s_tmin=2.0, s_tmax=1.0)
    assert ss.samplers.EDMHeun(s_churn=1.0, s_tmin=1.0, s_tmax=1.0).s_tmax == 1.0  # a one-point window is allowed


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
@pytest.mark.parametrize("opts", [dict(), dict(eta=0.7, s_noise=1.2), dict(eta=0.0)],
                         ids=["default", "eta_snoise", "eta0"])
def test_euler_ancestral_adds_exactly_k_diffusions_noise(opts, sde_name):
    """With a zero score x̂_0 = x̃ and the Euler part does not move x̃ = x/m, so the output's
    variance is the noise alone: m(t_N)² Σ_i s_noise² σ_up,i², σ_up = min(σ̃', η √(σ̃'²(σ̃² − σ̃'²)/σ̃²))
    (k-diffusion's get_ancestral_step); η = 0 adds none.  40,000 draws: 5 standard errors."""
    sde, n_samples, steps = SDES[sde_name], 40_000, 10
    sampler = ss.samplers.EulerAncestral(**opts)
    x0 = torch.zeros(n_samples, 1, dtype=F64)
    res = ss.sample(lambda x, t: torch.zeros_like(x), sde, x0.shape, sampler, steps=steps, x_init=x0,
                    denoise=False, generator=gen(1))
    ts = res.ts.tolist()
    sig = [sde.std(t) / sde.mean_scale(t) for t in ts]
    eta, s_noise = opts.get("eta", 1.0), opts.get("s_noise", 1.0)
    ups = [min(s1, eta * math.sqrt(s1 * s1 * (s0 * s0 - s1 * s1) / (s0 * s0))) for s0, s1 in zip(sig[:-1], sig[1:])]
    var = sde.mean_scale(ts[-1]) ** 2 * sum((s_noise * u) ** 2 for u in ups)
    if eta == 0:
        assert torch.equal(res.samples, x0)
        return
    assert abs(float(res.samples.var()) / var - 1.0) <= 5 * math.sqrt(2.0 / n_samples), (float(res.samples.var()), var)


@pytest.mark.parametrize("name", ["lms", "euler_ancestral", "euler", "dpm_2"])
def test_denoise_false_returns_the_state_at_the_last_grid_time(name):
    """A zero score makes x̂_0 = x/m: ``denoise=True`` returns x/m(eps), ``denoise=False`` x itself
    (eps = 0.05 on VP, so m(eps) ≈ 0.985 tells them apart exactly)."""
    sde, eps = SDES["vp"], 0.05
    x = torch.randn(4, 2, dtype=F64, generator=gen(2))
    kw = dict(steps=5, eps=eps, x_init=x, generator=gen(3))
    if name == "euler_ancestral":
        kw["method"] = ss.samplers.EulerAncestral(eta=0.0)
    else:
        kw["method"] = name
    zero = lambda x, t: torch.zeros_like(x)  # noqa: E731
    kept = ss.sample(zero, sde, x.shape, denoise=False, **kw).samples
    den = ss.sample(zero, sde, x.shape, denoise=True, **kw).samples
    m_eps = sde.mean_scale(eps)
    torch.testing.assert_close(kept, x * (m_eps / sde.mean_scale(sde.T)), rtol=1e-12, atol=0)
    torch.testing.assert_close(den, kept / m_eps, rtol=1e-12, atol=0)


@pytest.mark.parametrize("levels", [1, 2, 4])
@pytest.mark.parametrize("rule", ["ratio", "ncsnv2", "lr"])
def test_annealed_langevin_sampler_is_song_and_ermon_algorithm_1(levels, rule):
    """NCSN's ALD (Song & Ermon 2019, Alg. 1) on VE, written here from the paper with σ_i from the SDE's
    parameters: at each level x <- x + (α_i/2) s(x, σ_i) + √α_i z, α_i = ε σ_i²/σ_L², n_steps_each times.
    ε: by default 2 σ_L² (α_i = 2 σ_i²); with step_ratio=None NCSNv2's Technique 4 (Song & Ermon 2020,
    eq. 9 ratio = 1, γ = σ_1/σ_2); step_lr given, that."""
    from helpers import marginal_np

    sde, gm, T = ss.VESDE(sigma_max=10.0), gaussian_1d(1.0, 0.5), 3
    kw = {"ratio": {}, "ncsnv2": {"step_ratio": None}, "lr": {"step_lr": 0.004}}[rule]
    s = ss.start(gm.score_fn(sde), sde, (6, 1), "ald", steps=levels, n_steps_each=T, **kw,
                 generator=gen(2), dtype=F64, denoise=False)
    draws = torch.randn(levels * T, 6, 1, generator=gen(3), dtype=F64)
    it = iter(draws)
    ctx = replace(s.ctx, noise=lambda shape, std=1.0: next(it) * std)
    state = s.sampler.init(ctx, s.x, s.ts)
    for t, t_next in zip(s.ts[:-1], s.ts[1:]):
        state = s.sampler.step(ctx, state, t, t_next)
    sig = [marginal_np(sde, t)[2] for t in s.ts[1:]]
    eps = state.stats["step_lr"]
    if rule == "ncsnv2":  # Technique 4: ε brings (1 − u)^{2T} (γ² − c) + c, c = 2u/(1 − (1 − u)²), u = ε/σ_L², to 1
        import numpy as np

        gamma = sig[0] / sig[1] if levels > 1 else 1.0

        def miss(u):
            c = 2 * u / (1 - (1 - u) ** 2)
            return np.abs((1 - u) ** (2 * T) * (gamma**2 - c) + c - 1)

        assert miss(eps / sig[-1] ** 2) <= miss(np.linspace(1e-6, 1 - 1e-6, 200_001)).min() + 1e-9
    elif rule == "ratio":
        assert eps == 2.0 * sig[-1] ** 2
    else:
        assert eps == 0.004
    x, k = s.x.clone(), 0
    for t, si in zip(s.ts[1:], sig):
        alpha = eps * si**2 / sig[-1] ** 2
        for _ in range(T):
            x = x + 0.5 * alpha * gm.score_fn(sde)(x, torch.full((6,), t, dtype=F64)) + math.sqrt(alpha) * draws[k]
            k += 1
    torch.testing.assert_close(s.sampler.finish(ctx, state, denoise=False), x, rtol=1e-12, atol=1e-12)


def _one_step(method, sde, i=0, **options):
    """(x, z, x', s(x, t), t, t') of a sampler's step i on a 1-D Gaussian, its noise replaced by std·z."""
    gm = gaussian_1d()
    s = ss.start(gm.score_fn(sde), sde, (8, 1), method, steps=6, generator=gen(6), dtype=F64, denoise=False,
                 **options)
    z = torch.randn(8, 1, generator=gen(7), dtype=F64)
    ctx = replace(s.ctx, noise=lambda shape, std=1.0: z * std)
    state = s.sampler.init(ctx, s.x, s.ts)
    for k in range(i + 1):
        x = state.x
        state = s.sampler.step(ctx, state, s.ts[k], s.ts[k + 1])
    t0, t1 = s.ts[i], s.ts[i + 1]
    return x, z, state.x, gm.score_fn(sde)(x, torch.full((8,), t0, dtype=F64)), t0, t1


def _m_sigma(sde, t):
    """(m(t), σ(t)) from the SDE's parameters (helpers.marginal_np); EDM's SDE: σ(t) = t, m = 1 (Karras Table 1)."""
    from helpers import marginal_np

    if isinstance(sde, ss.KarrasSDE):
        return 1.0, t
    m, _, sigma, _ = marginal_np(sde, t)
    return m, sigma


@pytest.mark.parametrize("variance", [0.0, 0.5, 1.0])
def test_ancestral_step_is_the_posterior_draw_of_its_paper(variance):
    """One ancestral step, written from Ho et al. 2020 eq. 11 / Song et al. 2021 eq. 47 with (m, σ) from the SDE's
    parameters: x' = (x + v s)/a + √((1 − λ) β̃ + λ v) z, a = m(t)/m(t'), v = σ(t)² − a² σ(t')², β̃ = σ(t')² v/σ(t)²."""

    for sde in (ss.VPSDE(), ss.SubVPSDE(), ss.VESDE()):
        x, z, got, s, t0, t1 = _one_step("pc", sde, predictor="ancestral", corrector="none", variance=variance,
                                         t_eval=0.0)
        (m0, s0), (m1, s1) = _m_sigma(sde, t0), _m_sigma(sde, t1)
        a = m0 / m1
        v = s0**2 - a**2 * s1**2
        want = (x + v * s) / a + math.sqrt((1 - variance) * s1**2 * v / s0**2 + variance * v) * z
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("eta", [0.3, 1.0])
def test_ddim_eta_step_is_eq_12_of_the_ddim_paper(eta):
    """Song, Meng & Ermon 2021, eq. 12 (ᾱ = m², VP): x' = √ᾱ' x̂_0 + √(1 − ᾱ' − c²) ε̂ + c z,
    c = η √((1 − ᾱ')/(1 − ᾱ)) √(1 − ᾱ/ᾱ'), ε̂ = −σ s, x̂_0 = (x − √(1 − ᾱ) ε̂)/√ᾱ."""
    from helpers import marginal_np

    sde = ss.VPSDE()
    x, z, got, s, t0, t1 = _one_step("ddim_eta", sde, eta=eta)
    ab0, ab1 = marginal_np(sde, t0)[0] ** 2, marginal_np(sde, t1)[0] ** 2
    eps = -math.sqrt(1 - ab0) * s
    x0 = (x - math.sqrt(1 - ab0) * eps) / math.sqrt(ab0)
    c = eta * math.sqrt((1 - ab1) / (1 - ab0)) * math.sqrt(1 - ab0 / ab1)
    want = math.sqrt(ab1) * x0 + math.sqrt(1 - ab1 - c * c) * eps + c * z
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("method,eta,s_noise", [("dpmpp_2m_sde", 0.4, None), ("dpmpp_2m_sde", 1.0, None),
                                                ("euler_ancestral", 0.4, 1.0), ("euler_ancestral", 1.0, 0.7)])
def test_k_diffusion_stochastic_first_step_in_sigma_tilde(method, eta, s_noise):
    """First steps written from k-diffusion's formulas in σ̃ = σ/m, x̃ = x/m, h = log σ̃ − log σ̃' (VP):
    dpmpp_2m_sde: x̃' = (σ̃'/σ̃) e^{−ηh} x̃ + (1 − e^{−(1+η)h}) x̂_0 + σ̃' √(1 − e^{−2ηh}) z;
    euler_ancestral: σ_up = min(σ̃', η √(σ̃'² (σ̃² − σ̃'²)/σ̃²)), x̃' = x̂_0 + σ_down (x̃ − x̂_0)/σ̃ + σ_up z."""

    sde = ss.VPSDE()
    x, z, got, s, t0, t1 = _one_step(method, sde, eta=eta, **({} if s_noise is None else {"s_noise": s_noise}))
    (m0, s0), (m1, s1) = _m_sigma(sde, t0), _m_sigma(sde, t1)
    st0, st1 = s0 / m0, s1 / m1
    xt, x0 = x / m0, (x + s0**2 * s) / m0
    if method == "dpmpp_2m_sde":
        h = math.log(st0 / st1)
        want = (st1 / st0) * math.exp(-eta * h) * xt + -math.expm1(-(1 + eta) * h) * x0 \
            + st1 * math.sqrt(-math.expm1(-2 * eta * h)) * z
    else:
        up = min(st1, eta * math.sqrt(st1**2 * (st0**2 - st1**2) / st0**2))
        down = math.sqrt(st1**2 - up**2)
        want = x0 + down * (xt - x0) / st0 + s_noise * up * z
    torch.testing.assert_close(got, m1 * want, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("sde", [ss.KarrasSDE(), ss.VPSDE()], ids=["edm", "vp"])
@pytest.mark.parametrize("s_noise,i", [(1.0, 2), (0.8, 2), (1.0, 0)])
def test_edm_churn_step_is_algorithm_2_of_karras_et_al(sde, s_noise, i):
    """Karras et al. 2022, Alg. 2 in σ̃ = σ/m, x̃ = x/m (D = x̂_0 from the exact score): γ = min(S_churn/N, √2 − 1)
    on σ̃ ∈ [S_tmin, S_tmax] (else 0), σ̂ = σ̃(1 + γ), x̂ = x̃ + √(σ̂² − σ̃²) S_noise z, then Heun from σ̂.
    Step 2 lies inside the default [0.05, 50], step 0 (σ̃ = 80 or ≈ 150) above it."""

    churn, n = 2.0, 6
    x, z, got, _, t0, t1 = _one_step("edm_churn", sde, i=i, s_churn=churn, s_noise=s_noise)
    (m0, s0), (m1, s1) = _m_sigma(sde, t0), _m_sigma(sde, t1)
    st0, st1 = s0 / m0, s1 / m1
    inside = 0.05 <= st0 <= 50.0  # the default S_tmin, S_tmax
    assert inside == (i == 2)
    sh = st0 * (1 + min(churn / n, math.sqrt(2) - 1)) if inside else st0
    xh = x / m0 + math.sqrt(sh**2 - st0**2) * s_noise * z

    def denoiser(xt, st):  # D(x̃; σ̃) of the target N(1, 0.25): the posterior mean given x̃ = x_0 + σ̃ n
        return (0.25 * xt + st**2 * 1.0) / (0.25 + st**2)

    d = (xh - denoiser(xh, sh)) / sh
    xe = xh + (st1 - sh) * d
    want = xh + (st1 - sh) * 0.5 * (d + (xe - denoiser(xe, st1)) / st1)
    torch.testing.assert_close(got, m1 * want, rtol=1e-9, atol=1e-11)
