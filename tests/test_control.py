"""Controllable generation against closed-form conditionals of Gaussian mixtures.

Tolerances come from Monte-Carlo standard errors (Bonferroni over the statistics of a test,
family-wise α = 0.01) or are the issue's bars (mode-weight TV ≤ 0.02, round trip ≤ 1e-3).
"""

import math
import re

import pytest
import torch
from scipy import stats

import scoresolve as ss
from scoresolve.control import (
    classifier_free,
    colorize,
    decode,
    encode,
    guided,
    inpaint,
    interpolate,
    linear_inverse,
    slerp,
)
from scoresolve.control.projected import Observation, Projected
from scoresolve.targets import GaussianMixture

SDES = {"vp": ss.VPSDE(), "subvp": ss.SubVPSDE(), "ve": ss.VESDE(sigma_max=20.0)}
ALPHA = 0.01
F64 = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- closed-form conditionals
def complement(A: torch.Tensor) -> torch.Tensor:
    """N (n, n−k) with orthonormal columns spanning the null space of A (A Aᵀ = I)."""
    q, _ = torch.linalg.qr(A.T, mode="complete")
    return q[:, A.shape[0]:]


def exact_conditional(gm: GaussianMixture, A: torch.Tensor, y: torch.Tensor):
    """The law of u = Nᵀx given A x = y, a Gaussian mixture: posterior weights
    w_k N(y; Aμ_k, AΣ_kAᵀ), means Nᵀμ_k + Σ_fo Σ_oo⁻¹ (y − Aμ_k), covariances Σ_ff − Σ_fo Σ_oo⁻¹ Σ_of.
    Returns (mixture, its mean, its covariance, N)."""
    N = complement(A)
    C = gm.component_covs()
    L = torch.linalg.cholesky(A @ C @ A.T)
    r = y - gm.means @ A.T
    sol = torch.cholesky_solve(r.unsqueeze(-1), L).squeeze(-1)
    logw = gm.weights.log() - 0.5 * (r * sol).sum(-1) - L.diagonal(dim1=1, dim2=2).log().sum(-1)
    cfo = N.T @ C @ A.T
    means = gm.means @ N + (cfo @ sol.unsqueeze(-1)).squeeze(-1)
    covs = N.T @ C @ N - cfo @ torch.cholesky_solve(cfo.transpose(1, 2), L)
    cond = GaussianMixture(logw.softmax(0), means, covs)
    return cond, cond.mean(), cond.cov(), N


def group_z_scores(u: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """u: (G, K, f) samples in G independent groups (particles within a group are correlated).
    Per group: the sample mean minus the exact mean, and the second moment about the exact mean
    minus the exact covariance (upper triangle); z = average / (between-group sd / √G)."""
    d = u - mean
    iu = torch.triu_indices(u.shape[-1], u.shape[-1])
    second = (d.unsqueeze(-1) * d.unsqueeze(-2)).mean(1)[:, iu[0], iu[1]] - cov[iu[0], iu[1]]
    s = torch.cat([d.mean(1), second], 1)
    return s.mean(0) / (s.std(0) / math.sqrt(u.shape[0]))


def iid_z_scores(u: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """The same statistics for n iid samples (n, f), standard errors from the sample itself."""
    d = u - mean
    iu = torch.triu_indices(u.shape[-1], u.shape[-1])
    second = (d.unsqueeze(-1) * d.unsqueeze(-2))[:, iu[0], iu[1]] - cov[iu[0], iu[1]]
    s = torch.cat([d, second], 1)
    return s.mean(0) / (s.std(0) / math.sqrt(u.shape[0]))


def t_crit(m: int, dof: float) -> float:
    """Two-sided Bonferroni critical value for m statistics at family-wise ALPHA."""
    return float(stats.t.ppf(1 - ALPHA / (2 * m), dof))


MIX4 = GaussianMixture.random(4, 2, seed=0, spread=1.5, std_range=(0.3, 0.8))
MASK4 = torch.tensor([1.0, 1.0, 0.0, 0.0])


def _budget(method: str) -> dict:
    """12 evaluations for a fixed-step method; the adaptive ones choose their own."""
    return {"nfe": 12} if ss.SAMPLERS[method].nfe_per_step else {}


# ---------------------------------------------------------------- guidance
GUIDE_MIX = GaussianMixture.unequal((0.6, 0.3, 0.1), separation=2.0, std=0.6, dim=2)
TARGET = 2  # the 10 % component, overlapping its neighbour


def component_score(gm: GaussianMixture, k: int, sde):
    comp = GaussianMixture(torch.ones(1), gm.means[k : k + 1], gm.covs[k : k + 1])
    return lambda x, t: comp.score(x, t, sde)


def exact_label_grad(gm: GaussianMixture, k: int, sde):
    """∇ log p_t(y = k | x) = ∇ log N_k,t(x) − ∇ log p_t(x), closed form."""
    ck = component_score(gm, k, sde)
    return lambda x, t: ck(x, t) - gm.score(x, t, sde)


def label_log_likelihood(gm: GaussianMixture, k: int, sde):
    return lambda x, t: gm.component_log_prob(x, t, sde).log_softmax(-1)[:, k]


def mode_tv(x: torch.Tensor, ref: torch.Tensor, gm: GaussianMixture) -> float:
    return float(0.5 * (gm.responsibilities(x).mean(0) - gm.responsibilities(ref).mean(0)).abs().sum())


@pytest.mark.parametrize("name", list(SDES))
def test_guidance_with_exact_likelihood_samples_the_chosen_component(name):
    sde = SDES[name]
    cond = guided(GUIDE_MIX.score_fn(sde), exact_label_grad(GUIDE_MIX, TARGET, sde), scale=1.0)
    res = ss.sample(cond, sde, (4000, 2), "pc", steps=200, generator=gen(1), dtype=F64)
    comp = GaussianMixture(torch.ones(1), GUIDE_MIX.means[TARGET:], GUIDE_MIX.covs[TARGET:])
    ref = comp.sample(100_000, generator=gen(2), dtype=F64)
    unguided = GUIDE_MIX.sample(4000, generator=gen(3), dtype=F64)
    assert mode_tv(unguided, ref, GUIDE_MIX) > 0.5  # the guidance has work to do
    assert mode_tv(res.samples, ref, GUIDE_MIX) <= 0.02
    assert res.nfe == 400


def test_guidance_from_classifier_autograd_samples_the_chosen_component():
    sde = SDES["vp"]
    logits = lambda x, t: GUIDE_MIX.component_log_prob(x, t, sde)  # noqa: E731  (a "classifier")
    cond = guided(GUIDE_MIX.score_fn(sde), classifier=logits, y=TARGET)
    res = ss.sample(cond, sde, (4000, 2), "ode", generator=gen(4), dtype=F64)
    comp = GaussianMixture(torch.ones(1), GUIDE_MIX.means[TARGET:], GUIDE_MIX.covs[TARGET:])
    assert mode_tv(res.samples, comp.sample(100_000, generator=gen(5), dtype=F64), GUIDE_MIX) <= 0.02


@pytest.mark.parametrize("name", list(SDES))
def test_guidance_autograd_equals_closed_form(name):
    sde = SDES[name]
    x = GUIDE_MIX.sample(64, 0.3, sde, generator=gen(6), dtype=F64)
    t = torch.rand(64, generator=gen(7), dtype=F64) * 0.9 + 0.05
    a = guided(GUIDE_MIX.score_fn(sde), log_likelihood=label_log_likelihood(GUIDE_MIX, 1, sde), scale=2.5)
    b = guided(GUIDE_MIX.score_fn(sde), exact_label_grad(GUIDE_MIX, 1, sde), scale=2.5)
    c = guided(GUIDE_MIX.score_fn(sde), classifier=lambda x, t: GUIDE_MIX.component_log_prob(x, t, sde),
               y=torch.ones(64, dtype=torch.long), scale=2.5)
    torch.testing.assert_close(a(x, t), b(x, t), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(c(x, t), b(x, t), rtol=1e-9, atol=1e-9)
    # scale 1 gives the component's own score
    one = guided(GUIDE_MIX.score_fn(sde), exact_label_grad(GUIDE_MIX, 1, sde))
    torch.testing.assert_close(one(x, t), component_score(GUIDE_MIX, 1, sde)(x, t))


def test_classifier_free_interpolates_and_extrapolates():
    sde = SDES["vp"]
    su, sc = GUIDE_MIX.score_fn(sde), component_score(GUIDE_MIX, 0, sde)
    x = torch.randn(16, 2, generator=gen(8), dtype=F64)
    t = torch.full((16,), 0.4, dtype=F64)
    torch.testing.assert_close(classifier_free(sc, su, 1.0)(x, t), sc(x, t))
    torch.testing.assert_close(classifier_free(sc, su, 0.0)(x, t), su(x, t))
    torch.testing.assert_close(classifier_free(sc, su, 3.0)(x, t), su(x, t) + 3.0 * (sc(x, t) - su(x, t)))
    assert classifier_free(sc, su, 3.0).evaluations_per_call == 2
    assert classifier_free(sc, su, 1.0).evaluations_per_call == 1


# ---------------------------------------------------------------- inverse problems
@pytest.mark.parametrize("name", list(SDES))
def test_inpainting_particles_match_exact_conditional(name):
    """2-component mixture in d=4, coordinates 0 and 1 known, observed half-way between the
    components: the posterior weights (0.11 / 0.89) differ from the prior ones (0.52 / 0.48)."""
    sde, groups, k = SDES[name], 16, 256
    y = 0.5 * (MIX4.means[0, :2] + MIX4.means[1, :2])
    cond, mean, cov, N = exact_conditional(MIX4, torch.eye(4, dtype=F64)[:2], y)
    assert abs(float(cond.weights[0]) - float(MIX4.weights[0])) > 0.3
    known = torch.zeros(groups, 4, dtype=F64)
    known[:, :2] = y
    res = inpaint(MIX4.score_fn(sde), sde, known, MASK4, particles=k, steps=500, generator=gen(11))
    assert res.samples.shape == (groups * k, 4) and res.nfe == 500
    torch.testing.assert_close(res.samples[:, :2], known[:1, :2].expand(groups * k, 2), rtol=0, atol=0)
    z = group_z_scores((res.samples @ N).reshape(groups, k, 2), mean, cov)
    assert z.abs().max() <= t_crit(len(z), groups - 1), z


def test_particle_sampler_options_and_statistics():
    """particles=2 is allowed, one observation serves every group, ESS statistics are fractions."""
    from scoresolve.control.smc import ParticleSampler

    sde = SDES["vp"]
    obs = Observation(anchor=torch.zeros(1, 4, dtype=F64), mask=MASK4[None].double())
    base = ss.SAMPLERS["reverse_diffusion"]
    res = ss.sample(MIX4.score_fn(sde), sde, (6, 4), ParticleSampler(base, obs, 2), steps=20, dtype=F64,
                    generator=gen(12))
    assert res.samples.shape == (6, 4) and torch.equal(res.samples[:, :2], torch.zeros(6, 2, dtype=F64))
    assert res.stats["particles"] == 2 and isinstance(res.stats["resamples"], int)
    assert res.nfe == 20 and ss.steps_for_nfe(ParticleSampler(base, obs, 2), 20) == 20  # no final evaluation
    s = ss.start(MIX4.score_fn(sde), sde, (6, 4), ParticleSampler(base, obs, 2), steps=5, dtype=F64, generator=gen(12))
    state = s.sampler.init(s.ctx, s.x, s.ts)
    assert (state.i, state.t) == (0, s.ts[0])  # stepped by hand, the state says where it is
    for k, (t, t_next) in enumerate(zip(s.ts[:-1], s.ts[1:])):
        state = s.sampler.step(s.ctx, state, t, t_next)
        assert (state.i, state.t) == (k + 1, t_next)
    assert isinstance(res.stats["ess_min"], float) and 0 < res.stats["ess_min"] <= 1
    # observed half-way between two modes the weights degenerate: a group is resampled before the
    # last step (every group is, at the last) exactly when its ESS fell below 0.5·K
    y = 0.5 * (MIX4.means[0, :2] + MIX4.means[1, :2])
    mid = Observation(anchor=torch.cat([y, torch.zeros(2, dtype=F64)])[None], mask=MASK4[None].double())
    res = ss.sample(MIX4.score_fn(sde), sde, (24, 4), ParticleSampler(base, mid, 8), steps=20, dtype=F64,
                    generator=gen(12))
    assert res.stats["resamples"] > 3 and 0 < res.stats["ess_min"] < 0.5
    never = ss.sample(MIX4.score_fn(sde), sde, (24, 4), ParticleSampler(base, mid, 8, 1e-9), steps=20, dtype=F64,
                      generator=gen(12))
    assert never.stats["resamples"] == 3  # only the final resampling of each group
    with pytest.raises(ValueError, match=r"^ess_threshold must lie in \(0, 1\], got 1.5$"):
        ParticleSampler(base, obs, 2, 1.5)
    for bad in (2.5, True):
        with pytest.raises(ValueError, match=rf"^particles must be an integer >= 2, got {bad!r}$"):
            ParticleSampler(base, obs, bad)
    with pytest.raises(ValueError, match=r"^batch 5 is not a multiple of particles=2$"):
        ss.sample(MIX4.score_fn(sde), sde, (5, 4), ParticleSampler(base, obs, 2), steps=5, dtype=F64)
    two = Observation(anchor=torch.zeros(2, 4, dtype=F64), mask=MASK4[None].double())
    with pytest.raises(ValueError, match=r"^the observation has batch 2; expected 1 or 3 groups of 2 particles$"):
        ss.sample(MIX4.score_fn(sde), sde, (6, 4), ParticleSampler(base, two, 2), steps=5, dtype=F64)
    with pytest.raises(ValueError, match=r"^particles= supports the predictors euler_maruyama, reverse_diffusion"):
        ParticleSampler(ss.SAMPLERS["pc"].__class__(predictor="none", corrector="none"), obs, 2)
    with pytest.raises(ValueError, match=r"^ess_threshold must lie in \(0, 1\], got 0.0$"):
        ParticleSampler(base, obs, 2, 0.0)
    with pytest.raises(ValueError, match=r"^particles= needs a predictor-only sampler \(method em, reverse_diffusion "
                                         r"or ancestral, or corrector='none'\): a corrector would bias the weights$"):
        ParticleSampler(ss.SAMPLERS["pc"], obs, 2)
    with pytest.raises(TypeError, match=r"^particles= needs a predictor-only PC sampler \(em, reverse_diffusion, "
                                        r"ancestral\), got DDIM$"):
        ParticleSampler(ss.SAMPLERS["ddim_eta"], obs, 2)


@pytest.mark.parametrize("base", [ss.SAMPLERS["em"], ss.SAMPLERS["reverse_diffusion"], ss.SAMPLERS["ancestral"],
                                  ss.PC(predictor="ancestral", corrector="none", variance=1.0, t_eval=0.5)],
                         ids=["em", "reverse_diffusion", "ancestral", "ancestral_beta_shifted"])
@pytest.mark.parametrize("name", list(SDES))
def test_particle_weights_are_the_kernel_density_of_the_observed_step(name, base):
    """After one step every particle's log-weight grows by log N(k_{t'}; P x̄, s² P): the density of
    the observed path point under the base sampler's own Gaussian move (with its options), x̄ and
    s read off that move (noise of ones gives x̄ + s), the density from torch.distributions."""
    from scoresolve.control.smc import ParticleSampler
    from scoresolve.protocol import Context

    sde, groups, k = SDES[name], 3, 4
    obs = Observation(anchor=torch.tensor([[0.4, -0.3, 0.0, 0.0]], dtype=F64), mask=MASK4[None].double())
    smc = ParticleSampler(base, obs, k, ess_threshold=1e-9)
    g = gen(31)
    ctx = Context(sde, MIX4.score_fn(sde), lambda shape, std=1.0: torch.randn(shape, generator=g, dtype=F64) * std)
    state = smc.init(ctx, torch.randn(groups * k, 4, generator=g, dtype=F64), [0.8, 0.7, 0.6])
    ones = Context(sde, ctx.score, lambda shape, std=1.0: torch.full(shape, std, dtype=F64))
    up, mean = base.propose(ones, state.x, 0.8, 0.7, 0.5)  # step 1 of 2 (em's ramped shift on VP)
    state = smc.step(ctx, state, 0.8, 0.7)
    logp = torch.distributions.Normal(mean[:, :2], up[:, :2] - mean[:, :2]).log_prob(state.memory.path[:, :2])
    logp = logp.sum(1).reshape(groups, k)
    logw = state.memory.logw
    assert state.memory.resamples == 0
    torch.testing.assert_close(logw - logw[:, :1], logp - logp[:, :1], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("method", ["em", "ddim", "ode_adaptive_ps"])
def test_nested_projections_compose(method):
    """Projected(Projected(base, obs1), obs2): both hooks run (neither replaces the other) and the
    samples carry both observations exactly."""
    sde = SDES["vp"]
    m1, m2 = torch.tensor([1.0, 0.0, 0.0, 0.0]), torch.tensor([0.0, 0.0, 1.0, 0.0])
    a1, a2 = torch.full((1, 4), 0.3, dtype=F64) * m1, torch.full((1, 4), -0.4, dtype=F64) * m2
    inner = Projected(ss.SAMPLERS[method], Observation(anchor=a1, mask=m1[None].double()))
    outer = Projected(inner, Observation(anchor=a2, mask=m2[None].double()))
    seen = []
    res = ss.sample(MIX4.score_fn(sde), sde, (16, 4), outer, dtype=F64, generator=gen(26),
                    callback=lambda i, t, x, x0: seen.append((t, x[:, [0, 2]].clone())),
                    **_budget(method))
    assert bool((res.samples[:, 0] == 0.3).all()) and bool((res.samples[:, 2] == -0.4).all())
    if method == "ddim":  # deterministic: after every step both observed coordinates sit at m(t)·y
        for t, obs in seen:
            want = sde.mean_scale(t) * torch.tensor([0.3, -0.4], dtype=F64)
            torch.testing.assert_close(obs, want.expand_as(obs), rtol=1e-12, atol=1e-12)
    assert res.stats["projected"] is True
    free = res.samples[:, [1, 3]]
    assert bool(torch.isfinite(free).all()) and float(free.std(0).min()) > 0.05  # still sampled


@pytest.mark.parametrize("method", ["em", "pc", "ald", "dpmpp_2m_sde"])
def test_stochastic_replacement_is_a_draw_of_the_forward_marginal(method):
    """After every step the observed coordinates are m(t)·y + σ(t)·z, z ~ N(0, I) fresh per row:
    across the batch their mean is m(t)·y and their sd σ(t) (5 standard errors, every step)."""
    sde, n = SDES["vp"], 4000
    y = torch.tensor([0.3, -0.2, 0.0, 0.0], dtype=F64)
    seen = []
    inpaint(MIX4.score_fn(sde), sde, y.expand(n, 4).clone(), MASK4, method=method, steps=10, dtype=F64,
            generator=gen(29), callback=lambda i, t, x, x0: seen.append((t, x[:, :2].clone())))
    assert len(seen) >= 9
    for t, obs in seen[:-1]:  # the last step ends on the exact observation
        m, sd = sde.marginal(t)
        assert float((obs.mean(0) - m * y[:2]).abs().max()) < 5 * sd / math.sqrt(n), t
        assert float((obs.std(0) - sd).abs().max()) < 5 * sd / math.sqrt(2 * n), t


def test_particle_path_of_the_observed_part_is_a_draw_of_the_forward_marginal():
    """SMCDiff's observed path k_t is a bridge drawn backwards from k_0 = y, one per group: at every step
    it is a draw of the forward marginal m(t)·y + σ(t)·z (mean and sd over 2000 groups, 5 standard errors)."""
    sde, groups = SDES["vp"], 2000
    y = torch.tensor([0.3, -0.2, 0.0, 0.0], dtype=F64)
    seen = []
    inpaint(MIX4.score_fn(sde), sde, y.expand(2 * groups, 4).clone(), MASK4, particles=2, steps=10, dtype=F64,
            generator=gen(30), callback=lambda i, t, x, x0: seen.append((t, x[::2, :2].clone())))
    assert len(seen) >= 9
    for t, obs in seen[:-1]:
        m, sd = sde.marginal(t)
        assert float((obs.mean(0) - m * y[:2]).abs().max()) < 5 * sd / math.sqrt(groups), t
        assert float((obs.std(0) - sd).abs().max()) < 5 * sd / math.sqrt(2 * groups), t


def test_systematic_resampling_keeps_each_particle_floor_or_ceil_of_k_w_times():
    """Systematic resampling (Kitagawa 1996): offspring counts N_j ∈ {⌊K w_j⌋, ⌈K w_j⌉}, summing to K, indices
    sorted; all the weight on the last particle gives K copies of it; equal weights keep every particle once."""
    from scoresolve.control.smc import _systematic

    g, k = 64, 7
    logw = torch.randn(g, k, generator=gen(31), dtype=F64) * 2.0
    u = torch.rand(g, generator=gen(32), dtype=F64)
    idx = _systematic(logw, u)
    w = logw.softmax(1)
    counts = torch.stack([torch.bincount(row, minlength=k) for row in idx]).to(F64)
    assert bool(((counts >= (k * w).floor() - 1e-9) & (counts <= (k * w).ceil() + 1e-9)).all())
    assert bool((counts.sum(1) == k).all()) and bool((idx.diff(dim=1) >= 0).all())
    last = torch.full((g, k), -math.inf, dtype=F64)
    last[:, -1] = 0.0
    assert bool((_systematic(last, u) == k - 1).all())
    assert bool((_systematic(torch.zeros(g, k, dtype=F64), u) == torch.arange(k)).all())


@pytest.mark.parametrize("method", ["ode_heun", "dpmpp_2s", "ode_adaptive_rk23", "ode"])
def test_deterministic_samplers_evaluate_the_score_at_the_pinned_state(method):
    """_PinnedScore: in every evaluation, intermediate stages included, the user's score sees the
    observed coordinates at the forward mean m(t)·y exactly (the constrained flow)."""
    sde = SDES["vp"]
    y = torch.tensor([0.3, -0.2, 0.0, 0.0], dtype=F64)
    bad = []

    def score(x, t):
        want = sde.mean_scale(t)[:, None] * y[:2] if isinstance(t, torch.Tensor) else sde.mean_scale(t) * y[:2]
        if not torch.allclose(x[:, :2], want.expand_as(x[:, :2]), rtol=0, atol=1e-12):
            bad.append(float(t.reshape(-1)[0]))
        return MIX4.score(x, t, sde)

    inpaint(score, sde, y.expand(8, 4).clone(), MASK4, method=method, dtype=F64, generator=gen(28),
            **_budget(method))
    assert not bad, bad[:5]


@pytest.mark.parametrize("method", ["pc", "gotta_go_fast", "ode_adaptive_ps"])
def test_inpainting_keeps_the_requested_dtype(method):
    """known/mask/A in float64, samples asked for in float32: the observation follows the state."""
    sde = SDES["vp"]
    known = torch.tensor([[0.5, 0.0, 0.0, 0.0]], dtype=F64).expand(4, 4).clone()
    res = inpaint(MIX4.score_fn(sde), sde, known, MASK4.double(), method=method, dtype=torch.float32,
                  generator=gen(35), **_budget(method))
    assert res.samples.dtype == torch.float32
    A = torch.tensor([[0.6, 0.8, 0.0, 0.0]], dtype=F64)
    lin = linear_inverse(MIX4.score_fn(sde), sde, torch.full((4, 1), 0.5, dtype=F64), A, dtype=torch.float32,
                         method=method, generator=gen(35), **_budget(method))
    assert lin.samples.dtype == torch.float32


def test_inpaint_argument_errors_name_the_argument():
    sde = SDES["vp"]
    s = MIX4.score_fn(sde)
    with pytest.raises(TypeError, match=r"^known must be a tensor, got list$"):
        inpaint(s, sde, [[0.0] * 4], MASK4)
    with pytest.raises(ValueError, match=r"^mask must be binary \(0/1 or bool\), found values such as \[0.5, 2.0\]$"):
        inpaint(s, sde, torch.zeros(3, 4), torch.tensor([1.0, 0.5, 0.0, 2.0]))
    with pytest.raises(TypeError, match=r"^base must be a sampler implementing scoresolve.protocol.Sampler \(a name's "
                                        r"object from scoresolve.SAMPLERS\), got str$"):
        Projected("em", Observation(anchor=torch.zeros(1, 4), mask=MASK4[None]))
    with pytest.raises(TypeError, match=r"^mask must be a tensor, got list$"):
        inpaint(s, sde, torch.zeros(3, 4), [1, 1, 0, 0])
    with pytest.raises(ValueError, match=r"^unknown method 'nope'; valid choices: "):
        inpaint(s, sde, torch.zeros(3, 4), MASK4, method="nope")
    with pytest.raises(ValueError, match=r"^the observation has batch 2 but the sample batch is 3$"):
        ss.sample(s, sde, (3, 4), Projected(ss.SAMPLERS["em"], Observation(anchor=torch.zeros(2, 4), mask=MASK4[None])))
    known = torch.zeros(2, 4)
    low = inpaint(s, sde, known, MASK4, particles=4, steps=10, generator=gen(27))
    every = inpaint(s, sde, known, MASK4, particles=4, steps=10, generator=gen(27), ess_threshold=1.0)
    assert every.stats["resamples"] > low.stats["resamples"]  # ess_threshold reaches the sampler


def test_pinned_score_is_the_score_at_the_pinned_state_with_the_observed_part_removed():
    """s̃(u, t) = (I − P) s(Π(u, t), t), Π(u, t) = (I − P) u + m(t) b, written out."""
    from scoresolve.control.projected import _PinnedScore
    from scoresolve.protocol import Context

    sde = SDES["vp"]
    b = torch.tensor([[0.3, -0.2, 0.0, 0.0]], dtype=F64)
    obs = Observation(anchor=b, mask=MASK4[None].double())
    ctx = Context(sde, None, None, True)
    pinned = _PinnedScore(lambda x, t: MIX4.score(x, t, sde), obs, ctx)
    u = torch.randn(5, 4, generator=gen(30), dtype=F64)
    t = torch.full((5,), 0.4, dtype=F64)
    m = sde.mean_scale(0.4)
    want = MIX4.score(torch.cat([m * b[:, :2].expand(5, 2), u[:, 2:]], 1), t, sde)
    want[:, :2] = 0.0
    torch.testing.assert_close(pinned(u, t), want, rtol=1e-12, atol=1e-12)


def test_per_sample_masks_follow_their_rows():
    """Row i keeps its own mask: through the particle sampler's repeat and the per-sample
    adaptive solvers' row subsets."""
    sde = SDES["vp"]
    known = torch.tensor([[0.5, 0.0, 0.0, 0.0], [0.0, 0.0, -0.5, 0.0], [0.0, 0.4, 0.0, 0.0]], dtype=F64)
    masks = (known != 0).double()
    res = inpaint(MIX4.score_fn(sde), sde, known, masks, particles=2, steps=20, generator=gen(31))
    for i in range(3):
        rows, on = res.samples[2 * i:2 * i + 2], masks[i].bool()
        assert torch.equal(rows[:, on], known[i, on].expand(2, 1)), i
        assert bool((rows[:, ~on] != 0).all())
    seen_subset = []
    score = MIX4.score_fn(sde)
    res = inpaint(lambda x, t: seen_subset.append(x.shape[0]) or score(x, t), sde, known, masks,
                  method="ode_adaptive_ps", generator=gen(31))
    assert min(seen_subset) < 3  # some evaluations ran on a subset of the rows
    torch.testing.assert_close(res.samples * masks, known, rtol=0, atol=0)


def test_linear_inverse_on_the_flattened_sample():
    sde = SDES["vp"]
    A = torch.tensor([[0.6, 0.8, 0.0, 0.0]], dtype=F64)
    y = torch.tensor([[0.5], [-0.25]], dtype=F64)
    res = linear_inverse(MIX4.score_fn(sde), sde, y, A, dim=None, shape=(2, 4), method="ode_heun", nfe=12,
                         generator=gen(32))
    torch.testing.assert_close(res.samples @ A.T, y, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match=r"^with dim=None, y must have shape \(B, 1\), got \(2, 1, 1\)$"):
        linear_inverse(MIX4.score_fn(sde), sde, y[:, :, None], A, dim=None)
    with pytest.raises(ValueError, match=r"^shape \(2, 5\) must be \(B=2, ...\) with 4 elements per sample$"):
        linear_inverse(MIX4.score_fn(sde), sde, y, A, dim=None, shape=(2, 5))


def test_colorize_passes_its_method_and_particles_on():
    sde = SDES["vp"]
    gm = GaussianMixture.random(3, 2, seed=5)
    gray = torch.full((2, 1), 0.2, dtype=F64)
    a = colorize(gm.score_fn(sde), sde, gray, method="ode_heun", nfe=12, generator=gen(33))
    w = torch.full((1, 3), 1 / math.sqrt(3), dtype=F64)
    b = linear_inverse(gm.score_fn(sde), sde, gray * math.sqrt(3), w, method="ode_heun", nfe=12, generator=gen(33))
    torch.testing.assert_close(a.samples, b.samples, rtol=1e-12, atol=1e-12)  # y = gray/‖w‖ rounds differently
    torch.testing.assert_close(a.samples.mean(1, keepdim=True), gray, rtol=1e-12, atol=1e-12)
    k = colorize(gm.score_fn(sde), sde, gray, particles=2, steps=10, generator=gen(33))
    assert k.samples.shape == (4, 3) and k.stats["particles"] == 2
    with pytest.raises(ValueError, match=r"^channels must be an integer >= 2, got 1$"):
        colorize(gm.score_fn(sde), sde, gray, channels=1)
    with pytest.raises(TypeError, match=r"^gray must be a tensor, got list$"):
        colorize(gm.score_fn(sde), sde, [[0.2]])
    with pytest.raises(ValueError, match=r"^A must be a \(k, n\) matrix with orthonormal rows, got list$"):
        linear_inverse(gm.score_fn(sde), sde, gray, [[1.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match=r"^A must be a \(k, n\) matrix with orthonormal rows, got \(3,\)$"):
        linear_inverse(gm.score_fn(sde), sde, gray, torch.ones(3))


def test_linear_inverse_particles_match_exact_conditional():
    """y = A x with one rotated row (a colorization-like observation) in d=3."""
    sde, groups, k = SDES["vp"], 16, 256
    gm = GaussianMixture.random(3, 2, seed=5, spread=1.5, std_range=(0.3, 0.8))
    a = torch.tensor([[1.0, 2.0, -2.0]], dtype=F64) / 3.0
    y = a @ gm.means.mean(0)
    cond, mean, cov, N = exact_conditional(gm, a, y)
    res = linear_inverse(gm.score_fn(sde), sde, y.expand(groups, 1), a, particles=k, steps=500,
                         generator=gen(13))
    torch.testing.assert_close(res.samples @ a.T, y.expand(groups * k, 1), rtol=1e-12, atol=1e-12)
    z = group_z_scores((res.samples @ N).reshape(groups, k, 2), mean, cov)
    assert z.abs().max() <= t_crit(len(z), groups - 1), z


# Known coordinates independent of the component and of the free ones: here the replacement
# method (one independent sample per row) is exact, so it must leave the free part's law intact.
INDEP = GaussianMixture(
    torch.tensor([0.7, 0.3]),
    torch.tensor([[0.5, -0.3, -1.5, 0.0], [0.5, -0.3, 1.5, 1.0]]),
    torch.stack([torch.block_diag(torch.tensor([[0.3, 0.1], [0.1, 0.2]]), c) for c in
                 (torch.tensor([[0.4, 0.15], [0.15, 0.3]]), torch.tensor([[0.2, -0.05], [-0.05, 0.5]]))]),
)


@pytest.mark.parametrize("method", ["pc", "ode"])
@pytest.mark.parametrize("name", list(SDES))
def test_replacement_inpainting_exact_when_known_part_is_independent(name, method):
    sde, n = SDES[name], 3000
    y = torch.tensor([1.0, -1.0], dtype=F64)
    cond, mean, cov, N = exact_conditional(INDEP, torch.eye(4, dtype=F64)[:2], y)
    torch.testing.assert_close(cond.weights, INDEP.weights)
    known = torch.zeros(n, 4, dtype=F64)
    known[:, :2] = y
    steps = {"pc": 500, "ode": None}[method]
    res = inpaint(INDEP.score_fn(sde), sde, known, MASK4, method=method, steps=steps, generator=gen(13))
    assert torch.equal(res.samples[:, :2], known[:, :2])
    z = iid_z_scores(res.samples @ N, mean, cov)
    assert z.abs().max() <= t_crit(len(z), n - 1), z


def test_ode_inpainting_is_deterministic_and_pins_the_known_part():
    sde = SDES["ve"]
    known = MIX4.sample(8, generator=gen(14), dtype=F64)
    x_init = sde.prior_std() * torch.randn(8, 4, generator=gen(15), dtype=F64)
    runs = [inpaint(MIX4.score_fn(sde), sde, known, MASK4, method="ode", x_init=x_init,
                    return_trajectory=True) for _ in range(2)]
    assert torch.equal(runs[0].samples, runs[1].samples)
    traj = runs[0].trajectory  # (len(ts), B, d): the known part follows m(t) · known
    for ti, xi in zip(runs[0].ts.tolist(), traj):
        torch.testing.assert_close(xi[:, :2], sde.mean_scale(ti) * known[:, :2])
    assert torch.equal(runs[0].samples[:, :2], known[:, :2])


def test_inpainting_nfe_seeds_and_per_sample_masks():
    sde = SDES["vp"]
    known = MIX4.sample(4, generator=gen(16), dtype=F64)
    masks = torch.tensor([[1, 0, 0, 0], [0, 1, 1, 0], [1, 1, 1, 1], [0, 0, 0, 0]], dtype=torch.bool)
    res = inpaint(MIX4.score_fn(sde), sde, known, masks, method="pc", steps=10, seeds=[1, 2, 3, 4])
    assert res.nfe == 20  # predictor + corrector per step, counted by sample()
    m = masks.to(F64)
    assert torch.equal(res.samples * m, known * m)
    # without a batch-coupled corrector, a row does not depend on its batch mates
    a = inpaint(MIX4.score_fn(sde), sde, known, masks, method="reverse_diffusion", steps=10, seeds=[1, 2, 3, 4])
    b = inpaint(MIX4.score_fn(sde), sde, known[:2], masks[:2], method="reverse_diffusion", steps=10,
                seeds=[1, 2])
    torch.testing.assert_close(a.samples[:2], b.samples, rtol=0, atol=0)
    for method in ("ald", "ode_heun", "em", "ancestral"):
        out = inpaint(MIX4.score_fn(sde), sde, known, masks, method=method, steps=5, generator=gen(17))
        assert torch.equal(out.samples * m, known * m) and bool(torch.isfinite(out.samples).all())


def test_colorize_images_keeps_the_gray_level():
    sde = SDES["vp"]
    gm = GaussianMixture.random(12, 2, seed=2, spread=1.0)  # images (3, 2, 2) flattened
    gray = torch.randn(5, 1, 2, 2, generator=gen(18), dtype=F64)
    res = colorize(gm.score_fn(sde), sde, gray, steps=20, generator=gen(19))
    assert res.samples.shape == (5, 3, 2, 2)
    torch.testing.assert_close(res.samples.mean(1, keepdim=True), gray, rtol=1e-12, atol=1e-12)
    w = torch.tensor([0.299, 0.587, 0.114], dtype=F64)
    res = colorize(gm.score_fn(sde), sde, gray, weights=w, steps=20, generator=gen(19))
    torch.testing.assert_close((res.samples * w[:, None, None]).sum(1, keepdim=True), gray,
                               rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- encoding
@pytest.mark.parametrize("name", list(SDES))
def test_encode_decode_round_trip(name):
    sde = SDES[name]
    gm = GaussianMixture.random(3, 3, seed=1, spread=1.5, std_range=(0.2, 0.6))
    x = gm.sample(500, sde.default_eps, sde, generator=gen(20), dtype=F64)
    enc = encode(gm.score_fn(sde), sde, x, rtol=1e-5, atol=1e-5)
    again = encode(gm.score_fn(sde), sde, x, rtol=1e-5, atol=1e-5)
    assert torch.equal(enc.latent, again.latent) and enc.nfe > 0
    dec = decode(gm.score_fn(sde), sde, enc.latent, rtol=1e-5, atol=1e-5)
    rel = float((dec.samples - x).norm() / x.norm())
    assert rel <= 1e-3, rel
    # decode is the ODE sampler started at the latent, without the denoising step
    same = ss.sample(gm.score_fn(sde), sde, x.shape, "ode", x_init=enc.latent, denoise=False)
    torch.testing.assert_close(dec.samples, same.samples, rtol=0, atol=0)


def _mixture_cdf_1d(gm: GaussianMixture, j: int, t: float, sde, z: torch.Tensor) -> torch.Tensor:
    m, s = sde.marginal(t)
    sd = (m * m * gm.component_covs()[:, j, j] + s * s).sqrt()
    return (gm.weights * torch.special.ndtr((z[:, None] - m * gm.means[:, j]) / sd)).sum(1)


@pytest.mark.parametrize("name", list(SDES))
def test_encodings_of_exact_samples_are_distributed_as_the_prior(name):
    """KS per coordinate against the prior N(0, σ_prior²) and against the exact marginal of
    p_T (what the flow maps p_eps to), Bonferroni over the 2d tests at family-wise α = 0.01."""
    sde, n = SDES[name], 2000
    gm = GaussianMixture.random(3, 3, seed=1, spread=1.5, std_range=(0.2, 0.6))
    x = gm.sample(n, sde.default_eps, sde, generator=gen(21), dtype=F64)
    z = encode(gm.score_fn(sde), sde, x).latent
    level = ALPHA / (2 * gm.dim)
    grid = torch.linspace(-5, 5, 2001, dtype=F64)
    for j in range(gm.dim):
        # the premise: p_T is close to the prior (for VE here, within a third of the KS
        # critical distance: the mixture's offset over σ_max = 20)
        gap = (_mixture_cdf_1d(gm, j, sde.T, sde, grid * sde.prior_std()) - torch.special.ndtr(grid)).abs().max()
        assert gap < 0.5 * stats.kstwo.ppf(1 - level, n)
        p_prior = stats.kstest((z[:, j] / sde.prior_std()).numpy(), "norm").pvalue
        p_exact = stats.kstest(z[:, j].numpy(),
                               lambda v, j=j: _mixture_cdf_1d(gm, j, sde.T, sde, torch.as_tensor(v)).numpy()).pvalue
        assert min(p_prior, p_exact) >= level, (j, p_prior, p_exact)


def test_interpolation_ends_at_the_inputs_and_slerp_keeps_norms():
    sde = SDES["vp"]
    gm = GaussianMixture.random(3, 3, seed=1, spread=1.5, std_range=(0.2, 0.6))
    xa, xb = gm.sample(2, sde.default_eps, sde, generator=gen(22), dtype=F64).split(1)
    path = interpolate(gm.score_fn(sde), sde, xa, xb, n=5)
    assert path.samples.shape == (5, 1, 3) and path.nfe > 0
    torch.testing.assert_close(path.samples[0], xa, rtol=0, atol=1e-3)
    torch.testing.assert_close(path.samples[-1], xb, rtol=0, atol=1e-3)
    a = torch.tensor([[3.0, 0.0]], dtype=F64)
    b = torch.tensor([[0.0, 3.0]], dtype=F64)
    zs = slerp(a, b, torch.linspace(0, 1, 7, dtype=F64))
    torch.testing.assert_close(zs.norm(dim=-1), torch.full((7, 1), 3.0, dtype=F64))
    torch.testing.assert_close(zs[3, 0], torch.tensor([3 / math.sqrt(2)] * 2, dtype=F64))
    torch.testing.assert_close(slerp(a, a, torch.tensor([0.5]))[0], a)  # θ = 0: linear


@pytest.mark.parametrize("spherical", [True, False])
def test_interpolation_decodes_the_mixed_latents_in_the_data_dtype(spherical):
    sde = SDES["vp"]
    gm = GaussianMixture.random(3, 3, seed=1, spread=1.5, std_range=(0.2, 0.6))
    xa, xb = gm.sample(4, sde.default_eps, sde, generator=gen(23), dtype=torch.float32).split(2)
    path = interpolate(gm.score_fn(sde), sde, xa, xb, n=4, spherical=spherical)
    z = encode(gm.score_fn(sde), sde, torch.cat([xa, xb])).latent.double()
    za, zb = z[:2], z[2:]
    al = torch.linspace(0, 1, 4, dtype=F64)
    assert torch.equal(path.alphas, al)
    if spherical:  # per pair: the angle between its two latents, written out here
        th = torch.acos((za * zb).sum(1) / (za.norm(dim=1) * zb.norm(dim=1)))
        want = ((((1 - al)[:, None] * th).sin() / th.sin())[..., None] * za
                + ((al[:, None] * th).sin() / th.sin())[..., None] * zb)
    else:
        want = (1 - al)[:, None, None] * za + al[:, None, None] * zb
    assert path.latents.dtype == torch.float32 and path.samples.dtype == torch.float32
    torch.testing.assert_close(path.latents.double(), want, rtol=1e-5, atol=1e-5)
    dec = decode(gm.score_fn(sde), sde, path.latents.reshape(8, 3))
    torch.testing.assert_close(path.samples.reshape(8, 3), dec.samples, rtol=0, atol=0)
    assert path.stats == {"nfe_encode": path.stats["nfe_encode"], "nfe_decode": dec.nfe,
                          "method": "slerp" if spherical else "linear"}
    assert path.nfe == path.stats["nfe_encode"] + dec.nfe and path.stats["nfe_encode"] > 0


def test_slerp_works_per_pair_and_keeps_the_dtype():
    a = torch.tensor([[3.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[0.0, 3.0], [1.0, 0.0]])
    zs = slerp(a, b, torch.linspace(0, 1, 5, dtype=F64))
    assert zs.dtype == torch.float32 and zs.shape == (5, 2, 2)
    torch.testing.assert_close(zs.norm(dim=-1), torch.tensor([3.0, 1.0]).expand(5, 2))


def test_encode_and_interpolate_pass_their_arguments_on():
    sde = SDES["vp"]
    gm = GaussianMixture.random(3, 3, seed=1, spread=1.5, std_range=(0.2, 0.6))
    x = gm.sample(4, sde.default_eps, sde, generator=gen(34), dtype=F64)
    with pytest.raises(ss.StepLimitError, match="budget of 2 attempted steps"):  # options reach the solver
        encode(gm.score_fn(sde), sde, x, options={"max_num_steps": 2})

    def nan_score(y, t):
        return torch.full_like(y, float("nan"))

    with pytest.raises(ss.NonFiniteScoreError):
        encode(nan_score, sde, x)
    with pytest.raises(ss.NonFiniteScoreError):
        interpolate(nan_score, sde, x[:2], x[2:], n=3)
    path = interpolate(gm.score_fn(sde), sde, x[:2], x[2:], n=2, rtol=1e-3, atol=1e-3)  # n = 2: the two ends
    assert path.samples.shape == (2, 2, 3)
    dec = decode(gm.score_fn(sde), sde, path.latents.reshape(4, 3), rtol=1e-3, atol=1e-3)
    assert path.stats["nfe_decode"] == dec.nfe  # the tolerances reach decode
    assert dec.nfe < decode(gm.score_fn(sde), sde, path.latents.reshape(4, 3)).nfe
    with pytest.raises(ValueError, match=r"^z must be a tensor of shape \(batch, \*data_shape\)$"):
        decode(gm.score_fn(sde), sde, [[0.0, 1.0]])
    with pytest.raises(ValueError, match=r"^x_a and x_b must be tensors of the same shape \(batch, \*data_shape\)$"):
        interpolate(gm.score_fn(sde), sde, x[:2], x[:1])


def test_encode_reports_its_calls():
    sde = SDES["vp"]
    enc = encode(MIX4.score_fn(sde), sde, MIX4.sample(8, sde.default_eps, sde, generator=gen(24)))
    assert enc.stats["calls"] == enc.nfe > 0 and enc.stats["wall_time"] > 0


@pytest.mark.parametrize("name", list(SDES))
def test_encode_evaluates_the_score_inside_eps_to_t_only(name):
    """The initial-step probe stays in [eps, T] (torchdiffeq's own called the VE score at t = 1.13)."""
    sde, seen = ss.VESDE() if name == "ve" else SDES[name], []
    score = GaussianMixture.ring(8, 2.0, 0.1).score_fn(sde)

    def spy(x, t):
        seen.append(float(t.flatten()[0]))
        return score(x, t)

    x = GaussianMixture.ring(8, 2.0, 0.1).sample(256, generator=gen(26), dtype=F64)
    enc = encode(spy, sde, x, rtol=1e-3, atol=1e-3)
    assert sde.default_eps <= min(seen) and max(seen) <= sde.T, (min(seen), max(seen))
    assert enc.nfe == len(seen)


def test_linear_inverse_takes_a_float64_matrix_for_float32_data():
    sde = SDES["vp"]
    A = torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=F64)
    res = linear_inverse(MIX4.score_fn(sde), sde, torch.full((3, 1), 0.5), A, method="em", steps=5,
                         generator=gen(25))
    assert res.samples.dtype == torch.float32
    torch.testing.assert_close(res.samples[:, 0], torch.full((3,), 0.5))


def test_error_messages_name_what_was_wrong():
    sde = SDES["vp"]
    s = MIX4.score_fn(sde)
    with pytest.raises(ValueError, match=r"^rtol and atol must be > 0, got rtol=0.0, atol=1e-05$"):
        encode(s, sde, torch.zeros(3, 4), rtol=0.0)
    with pytest.raises(ValueError, match=r"^A must have 1 <= k <= n rows for n=2 columns, got k=3$"):
        linear_inverse(s, sde, torch.zeros(3, 3), torch.zeros(3, 2))
    with pytest.raises(ValueError, match=r"^dim must index a data axis of y \(1..1\), got 2$"):
        linear_inverse(s, sde, torch.zeros(3, 1), torch.tensor([[1.0, 0.0, 0.0, 0.0]]), dim=2)
    with pytest.raises(ValueError, match=r"^shape \(3, 5\) does not match y and A: expected \(3, 4\)$"):
        linear_inverse(s, sde, torch.zeros(3, 1), torch.tensor([[1.0, 0.0, 0.0, 0.0]]), shape=(3, 5))
    with pytest.raises(ValueError, match=r"classifier must return logits of shape \(B, n_classes\), got \(2,\)"):
        guided(s, classifier=lambda x, t: x[:, 0], y=0)(
            torch.zeros(2, 4), torch.full((2,), 0.5))
    with pytest.raises(TypeError, match=r"^uncond_score must be callable \(x, t\) -> score, got int$"):
        classifier_free(s, 3)
    for bad in ("2", True, float("inf")):
        with pytest.raises(TypeError, match=rf"^scale must be a finite number >= 0, got {re.escape(repr(bad))}$"):
            guided(s, lambda x, t: x, scale=bad)
    with pytest.raises(ValueError, match=r"\(got none\)$"):
        guided(s)
    with pytest.raises(TypeError, match=r"^log_likelihood_grad must be callable \(x, t\) -> Tensor, got int$"):
        guided(s, 3)
    x2, t2 = torch.zeros(2, 4), torch.full((2,), 0.5)
    with pytest.raises(ValueError, match=r"^log_likelihood must return shape \(B,\) = \(2,\), got float$"):
        guided(s, log_likelihood=lambda x, t: 1.0)(x2, t2)
    with pytest.raises(ValueError, match=r"got list$"):
        guided(s, classifier=lambda x, t: [1.0], y=0)(x2, t2)
    msg = r"^log_likelihood_grad must return a tensor shaped like x \(2, 4\), got float$"
    with pytest.raises(ValueError, match=msg):
        guided(s, lambda x, t: 1.0)(x2, t2)


# ---------------------------------------------------------------- errors
def test_clear_errors():
    sde = SDES["vp"]
    s = MIX4.score_fn(sde)
    known = torch.zeros(3, 4)
    with pytest.raises(ValueError, match="mask of shape"):
        inpaint(s, sde, known, torch.ones(3))
    with pytest.raises(ValueError, match="binary"):
        inpaint(s, sde, known, torch.tensor([1.0, 0.5, 0.0, 0.0]))
    with pytest.raises(ValueError, match="predictor-only"):
        inpaint(s, sde, known, MASK4, method="pc", particles=8)
    with pytest.raises(ValueError, match="particles must be"):
        inpaint(s, sde, known, MASK4, particles=1)
    with pytest.raises(TypeError, match="unknown option"):
        inpaint(s, sde, known, MASK4, snr_typo=0.1)
    with pytest.raises(ValueError, match="scale must be >= 0"):
        guided(s, lambda x, t: x, scale=-1.0)
    with pytest.raises(ValueError, match="scale must be >= 0"):
        classifier_free(s, s, scale=-0.5)
    with pytest.raises(ValueError, match="exactly one"):
        guided(s)
    with pytest.raises(ValueError, match="exactly one"):
        guided(s, lambda x, t: x, log_likelihood=lambda x, t: x.sum(1))
    with pytest.raises(ValueError, match="labels"):
        guided(s, classifier=lambda x, t: x)
    with pytest.raises(ValueError, match="shape \\(B,\\)"):
        guided(s, log_likelihood=lambda x, t: x)(torch.zeros(2, 4), torch.full((2,), 0.5))
    with pytest.raises(ValueError, match="orthonormal rows"):
        linear_inverse(s, sde, torch.zeros(3, 1), torch.tensor([[1.0, 1.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="rows"):
        linear_inverse(s, sde, torch.zeros(3, 2), torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="size 1 along dim"):
        colorize(s, sde, torch.zeros(3, 3, 2, 2))
    with pytest.raises(TypeError, match="base must be a sampler"):
        Projected(object(), Observation(anchor=torch.zeros(1, 4), mask=MASK4[None]))
    with pytest.raises(ValueError, match="eps"):
        encode(s, sde, known, eps=2.0)
    with pytest.raises(ValueError, match="n must be"):
        interpolate(s, sde, known, known, n=1)


def test_classifier_free_guidance_counts_both_model_evaluations():
    sde = ss.VPSDE()
    gm = ss.targets.GaussianMixture.ring(4, 2.0, 0.2)
    sc = su = gm.score_fn(sde)
    res = ss.sample(ss.classifier_free(sc, su, 2.0), sde, (8, 2), "em", steps=10,
                    generator=torch.Generator().manual_seed(0))
    assert res.nfe == 20
