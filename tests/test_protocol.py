"""The sampler protocol and the one loop: callbacks, stepping by hand, hooks, budgets, names."""

import copy
import subprocess
import sys
import warnings
from dataclasses import replace

import pytest
import torch

import scoresolve as ss
from scoresolve.targets import GaussianMixture

RING = GaussianMixture.ring(8, 2.0, 0.2)
F64 = torch.float64
FIXED = [m for m, s in ss.SAMPLERS.items() if s.nfe_per_step is not None]
ADAPTIVE = [m for m, s in ss.SAMPLERS.items() if s.nfe_per_step is None]


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def budget(method):
    if method == "ald":  # 10 Langevin steps per noise level: give it levels, not an NFE budget
        return {"steps": 10}
    return {"nfe": 12} if ss.SAMPLERS[method].nfe_per_step is not None else {}


def test_every_registered_sampler_implements_the_protocol():
    for name, s in ss.SAMPLERS.items():
        assert isinstance(s, ss.Sampler), name
        if s.nfe_per_step is None:
            assert isinstance(s, ss.AdaptiveSampler), name


@pytest.mark.parametrize("method", list(ss.SAMPLERS))
def test_callback_once_per_accepted_step_with_x_and_x0(method):
    sde = ss.VPSDE()
    calls = []

    def cb(i, t, x, x0):
        calls.append((i, t, x.clone(), None if x0 is None else x0.clone()))

    res = ss.sample(RING.score_fn(sde), sde, (16, 2), method, generator=gen(1), dtype=F64, callback=cb,
                    **budget(method))
    plain = ss.sample(RING.score_fn(sde), sde, (16, 2), method, generator=gen(1), dtype=F64, **budget(method))
    assert torch.equal(res.samples, plain.samples)  # watching does not change the run
    assert [c[0] for c in calls] == list(range(len(calls)))
    if ss.SAMPLERS[method].nfe_per_step is not None:
        assert len(calls) == res.stats["steps"]
        assert [c[1] for c in calls] == res.ts[1:].tolist()
    else:
        assert len(calls) == res.stats["accepted_steps"] >= 1
    i, t, x, x0 = calls[-1]
    assert x.shape == (16, 2) and x0 is not None and x0.shape == (16, 2)
    # x0 is Tweedie's estimate at the sampler's latest evaluation (near eps): a point of the data's
    # scale (the ring has radius 2; a few coarse steps leave it off by up to ~50%)
    assert torch.isfinite(x0).all() and 1.0 < float(x0.norm(dim=1).mean()) < 3.5


@pytest.mark.parametrize("method", FIXED)
@pytest.mark.parametrize("sde", [ss.VPSDE(), ss.VESDE(sigma_max=20.0), ss.SubVPSDE()], ids=["vp", "ve", "subvp"])
def test_stepping_by_hand_gives_the_samples_of_sample(method, sde):  # sub-VP: the grid stops short, finish ends it
    kw = dict(dtype=F64, **budget(method))
    ref = ss.sample(RING.score_fn(sde), sde, (16, 2), method, generator=gen(3), **kw).samples
    s = ss.start(RING.score_fn(sde), sde, (16, 2), method, generator=gen(3), **kw)
    state = s.sampler.init(s.ctx, s.x, s.ts)
    assert (state.i, state.t) == (0, s.ts[0])  # a state says where it is: a hook or callback reads it
    for k, (t, t_next) in enumerate(zip(s.ts[:-1], s.ts[1:])):
        state = s.sampler.step(s.ctx, state, t, t_next)
        assert (state.i, state.t) == (k + 1, t_next), method
    assert torch.equal(s.sampler.finish(s.ctx, state, denoise=True), ref)


@pytest.mark.parametrize("method", ADAPTIVE)
def test_adaptive_samplers_step_by_hand_too(method):
    sde = ss.VPSDE()
    ref = ss.sample(RING.score_fn(sde), sde, (16, 2), method, generator=gen(3), dtype=F64).samples
    s = ss.start(RING.score_fn(sde), sde, (16, 2), method, generator=gen(3), dtype=F64)
    state = s.sampler.init(s.ctx, s.x, s.ts)
    assert bool((torch.as_tensor(state.t) == s.ts[0]).all())  # per-sample solvers: a time per row, all at T
    for t, t_next in zip(s.ts[:-1], s.ts[1:]):
        state = s.sampler.step(s.ctx, state, t, t_next)
    assert torch.equal(s.sampler.finish(s.ctx, state, denoise=True), ref)


@pytest.mark.parametrize("sde", [ss.VPSDE(), ss.SubVPSDE(), ss.VESDE(sigma_max=20.0)], ids=["vp", "subvp", "ve"])
def test_ald_inpainting_with_an_empty_mask_is_ald(sde):
    # the projected sampler runs ALD's own step: with nothing observed it is sample(method="ald")
    # (0.1.0 re-implemented the loop without the m(t)/m(t_prev) rescale and failed this on VP)
    known = torch.zeros(64, 2, dtype=F64)
    inp = ss.inpaint(RING.score_fn(sde), sde, known, torch.zeros(2, dtype=F64), method="ald", steps=20,
                     generator=gen(4))
    ald = ss.sample(RING.score_fn(sde), sde, (64, 2), "ald", dtype=F64, steps=20, generator=gen(4))
    assert torch.equal(inp.samples, ald.samples)


@pytest.mark.parametrize("method", list(ss.SAMPLERS))
def test_inpainting_accepts_every_registered_method(method):
    sde = ss.VPSDE()
    known = torch.tensor([[2.0, 0.0]], dtype=F64).expand(32, 2).clone()
    mask = torch.tensor([1.0, 0.0], dtype=F64)
    res = ss.inpaint(RING.score_fn(sde), sde, known, mask, method=method, generator=gen(5), **budget(method))
    assert torch.equal(res.samples[:, 0], known[:, 0])  # the observation is carried exactly
    assert torch.isfinite(res.samples).all()
    assert res.nfe >= 1


def test_an_identity_x0_hook_changes_nothing_and_a_clip_bounds_the_denoised_samples():
    sde = ss.VPSDE()
    for method in ("ddim", "dpmpp_2m", "unipc", "em", "ode_heun", "ode_adaptive_ps"):
        def run(hook=None, method=method):
            return ss.sample(RING.score_fn(sde), sde, (32, 2), method, generator=gen(6), dtype=F64, x0_hook=hook,
                             **budget(method)).samples

        plain, same, clipped = run(), run(lambda x0, t: x0), run(lambda x0, t: x0.clamp(-1, 1))
        torch.testing.assert_close(same, plain, rtol=1e-10, atol=1e-10)
        if ss.SAMPLERS[method].denoise_with == "tweedie":  # the last x̂_0 is clipped: so are the samples
            assert float(clipped.abs().max()) <= 1.0 + 1e-12
        assert not torch.allclose(clipped, plain)


@pytest.mark.parametrize("method", ADAPTIVE)
def test_adaptive_solves_are_bounded_and_say_where_they_stopped(method):
    sde = ss.VPSDE()
    with pytest.raises(ss.StepLimitError, match=r"stopped at t=.*budget of 3 attempted steps"):
        ss.sample(RING.score_fn(sde), sde, (8, 2), method, generator=gen(), max_steps=3)


@pytest.mark.parametrize("method", ["ode", "ode_adaptive_ps", "gotta_go_fast", "dpmpp_2m"])
def test_progress_bar_for_every_kind_of_sampler(method, capsys):
    sde = ss.VPSDE()
    ss.sample(RING.score_fn(sde), sde, (8, 2), method, generator=gen(), progress=True, **budget(method))
    err = capsys.readouterr().err
    assert ("time reached" in err) == (ss.SAMPLERS[method].nfe_per_step is None) and err.strip()


@pytest.mark.parametrize("cls,old,new,value", [
    (ss.PC, "norm", "snr_norm", "sample"),
    (ss.DPMSolverMultistep, "order", "solver_order", 3),
    (ss.UniPC, "predictor_order", "solver_order", 2),
    (ss.AdaptiveMultistep, "predictor_order", "solver_order", 2),
    (ss.AdaptiveMultistep, "norm", "error_norm", "state"),
    (ss.GottaGoFast, "max_iters", "max_steps", 7),
    (ss.FixedStepODE, "method", "scheme", "euler"),
    (ss.TorchSDE, "method", "solver", "srk"),
])
def test_old_option_names_work_for_one_release_with_a_warning(cls, old, new, value):
    with pytest.warns(DeprecationWarning, match=f"{old} renamed to {new}"):
        obj = cls(**{old: value})
    assert getattr(obj, new) == value
    if old != "order":  # `order` now reads the declared convergence order
        assert getattr(obj, old) == value
    if old not in ("method", "max_iters"):  # sample() has its own method=; max_iters=7 stops the solve
        sde = ss.VPSDE()
        with pytest.warns(DeprecationWarning):
            ss.sample(RING.score_fn(sde), sde, (4, 2), cls(), generator=gen(), steps=2, **{old: value})


def test_scoresolve_fast_still_imports_with_a_warning():
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        assert ss.fast.UniPC is ss.UniPC
    assert any(issubclass(x.category, DeprecationWarning) for x in w) or "scoresolve.fast" in sys.modules


def test_import_scoresolve_pulls_no_scipy():
    code = "import sys, scoresolve; print(sorted(m for m in sys.modules if m.split('.')[0] == 'scipy'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_likelihood_old_argument_names_warn_and_work():
    sde = ss.VPSDE()
    x = RING.sample(4, generator=gen(), dtype=F64)
    new = ss.likelihood(RING.score_fn(sde), sde, x, trace="hutchinson", probe_dist="gaussian", solver="bosh3",
                        seeds=range(4), rtol=1e-3, atol=1e-3)
    with pytest.warns(DeprecationWarning, match="probe, method renamed to probe_dist, solver"):
        old = ss.likelihood(RING.score_fn(sde), sde, x, trace="hutchinson", probe="gaussian", method="bosh3",
                            seeds=range(4), rtol=1e-3, atol=1e-3)
    assert torch.equal(new.logp, old.logp) and new.stats["solver"] == "bosh3"
    with pytest.warns(DeprecationWarning, match=r"^likelihood: argument\(s\) method renamed to solver"):
        mixed = ss.likelihood(RING.score_fn(sde), sde, x, trace="hutchinson", probe_dist="gaussian", method="bosh3",
                              seeds=range(4), rtol=1e-3, atol=1e-3)
    assert torch.equal(new.logp, mixed.logp) and mixed.stats["probe_dist"] == "gaussian"
    with pytest.raises(TypeError, match=r"^likelihood\(\) got an unexpected keyword argument 'nope'$"):
        ss.likelihood(RING.score_fn(sde), sde, x, nope=1)


@pytest.mark.parametrize("method", list(ss.SAMPLERS))
@pytest.mark.parametrize("dtype", [torch.float32, F64, torch.bfloat16])
def test_the_score_sees_times_in_the_state_dtype_one_per_row(method, dtype):
    """A network's time embedding needs t as a (rows,) tensor in the state's dtype (float32 for a
    half-precision state): a float64 t next to float32 weights raises in torch.nn.Linear."""
    sde = ss.VPSDE()
    seen = []

    def score(x, t):
        seen.append((x.dtype, t.dtype, t.shape, x.shape[0]))
        return RING.score(x.double(), t.double(), sde).to(x.dtype)

    ss.sample(score, sde, (32, 2), method, dtype=dtype, generator=gen(), **budget(method))
    want_t = torch.promote_types(dtype, torch.float32)
    assert seen and all(xd == dtype and td == want_t and ts == (n,) for xd, td, ts, n in seen), set(seen)


@pytest.mark.parametrize("method", list(ss.SAMPLERS))
@pytest.mark.parametrize("sde", [ss.VPSDE(), ss.VESDE()], ids=["vp", "ve"])
def test_half_precision_gives_finite_half_samples_with_every_method(method, sde):
    res = ss.sample(RING.score_fn(sde), sde, (32, 2), method, dtype=torch.float16, generator=gen(8), **budget(method))
    assert res.samples.dtype == torch.float16 and torch.isfinite(res.samples).all()


@pytest.mark.parametrize("method", list(ss.SAMPLERS))
def test_seeds_warn_exactly_for_the_samplers_that_couple_a_batch(method):
    sde = ss.VPSDE()
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        ss.sample(RING.score_fn(sde), sde, (4, 2), method, seeds=range(4), **budget(method))
    warned = [x for x in w if "depends on its batch mates" in str(x.message)]
    coupled = ("pc", "ancestral", "ode", "gotta_go_fast", "sde_srk")
    assert len(warned) == (method in coupled), [str(x.message) for x in w]


# these end with a noisy state that denoise maps through Tweedie (k-diffusion's step to σ = 0, NCSN's final
# denoising), or churn before the last Heun step (Karras et al. 2022, Alg. 2): the last noise is meant to count
NOISY_LAST = ("ald", "edm_churn", "euler_ancestral")


@pytest.mark.parametrize("method", [m for m in FIXED if ss.SAMPLERS[m].stochastic and m not in NOISY_LAST])
def test_denoised_last_step_is_its_noise_free_mean(method):
    """Under denoise=True a stochastic sampler's last step returns its mean: the last step's noise,
    however large, must not reach the samples (a noisy last step adds σ(eps)² of variance, far below
    what a statistical check resolves, so this is checked exactly)."""
    sde = ss.VPSDE()
    # pc's corrector draws before the last move (score_sde's order) and its noise does reach the samples
    only_last_move = {"pc": {"corrector": "none"}}.get(method, {})
    s = ss.start(RING.score_fn(sde), sde, (16, 2), method, generator=gen(4), dtype=F64, **budget(method),
                 **only_last_move)
    state = s.sampler.init(s.ctx, s.x, s.ts)
    for t, t_next in zip(s.ts[:-2], s.ts[1:-1]):
        state = s.sampler.step(s.ctx, state, t, t_next)
    outs = []
    for scale in (0.0, 1.0, 1e6):
        g = gen(5)
        ctx = replace(s.ctx, noise=lambda shape, std=1.0, g=g, c=scale: torch.randn(shape, generator=g,
                                                                                   dtype=F64) * std * c)
        last = s.sampler.step(ctx, copy.deepcopy(state), s.ts[-2], s.ts[-1])
        outs.append(s.sampler.finish(ctx, last, denoise=True))
    assert torch.isfinite(outs[2]).all()
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2]), method
