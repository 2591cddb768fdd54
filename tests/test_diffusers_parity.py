"""Parity with diffusers' own schedulers: same seeded UNet2DModel (float64), same initial noise,
same timesteps; scoresolve through ``from_diffusers`` in three lines.

Two tolerances, both relative to max |x|:
- stock diffusers (float32 ``alphas_cumprod``/``sigmas``, DPM-Solver's state cast to float32
  in ``step``): ≤ 1e-6, the float32 rounding of its tables and state;
- diffusers lifted to float64 (``float64_scheduler``: tables in float64, the float32 cast
  removed): ≤ 1e-12; measured ~1e-15.
"""

import pytest
import torch
from diffusers_helpers import diffusers, float64_scheduler, rel, run_diffusers, tiny_unet

import scoresolve as ss

STEPS = (10, 20, 50)
PREDICTIONS = ("epsilon", "v_prediction")


@pytest.fixture(scope="module")
def unet():
    return tiny_unet()


@pytest.fixture(scope="module")
def x_T():
    return torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def _ours(unet, sched, x_T, method, n, spacing, convention, **options):
    sde = ss.DiscreteVPSDE.from_diffusers(sched)  # line 1: the schedule
    score = ss.from_diffusers(unet, sde)  # line 2: the model (prediction type from the config)
    grid = ss.timestep_grid(sde, n, spacing, convention=convention, steps_offset=sched.config.steps_offset)
    return ss.sample(score, sde, x_T.shape, method, grid=grid, x_init=x_T, **options)  # line 3


def _check(unet, x_T, cls, config, method, n, spacing, convention, **options):
    sched = cls(**config)
    ref, calls = run_diffusers(unet, sched, x_T, n)
    res = _ours(unet, sched, x_T, method, n, spacing, convention, **options)
    assert res.nfe == calls == n
    assert rel(res.samples, ref) <= 1e-6, rel(res.samples, ref)
    sched64 = float64_scheduler(cls(**config))
    ref64, _ = run_diffusers(unet, sched64, x_T, n, f64=True)
    assert rel(res.samples, ref64) <= 1e-12, rel(res.samples, ref64)


@pytest.mark.parametrize("prediction_type", PREDICTIONS)
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("n", STEPS)
def test_ddim_matches_diffusers(unet, x_T, n, spacing, prediction_type):
    """DDIMScheduler(η = 0, clip_sample=False) = ``ddim`` on the same timesteps; diffusers' last
    step to ᾱ = 1 is our final x̂_0 (``denoise=True``)."""
    config = dict(prediction_type=prediction_type, timestep_spacing=spacing, clip_sample=False,
                  steps_offset=1 if spacing == "leading" else 0)
    _check(unet, x_T, diffusers.DDIMScheduler, config, "ddim", n, spacing, "ddim")


def test_ddim_linspace_is_not_a_consistent_solver(unet, x_T):
    """With ``timestep_spacing="linspace"`` diffusers' DDIM steps to τ − N//n but evaluates the
    model next at the next listed timestep (round(linspace(0, N−1, n))), so its state is
    mislabelled and no ODE solver on any grid reproduces it; scoresolve's ``ddim`` on those
    timesteps is the consistent DDIM, and the two differ by far more than rounding."""
    sched = diffusers.DDIMScheduler(timestep_spacing="linspace", clip_sample=False)
    ref, _ = run_diffusers(unet, sched, x_T, 10)
    res = _ours(unet, sched, x_T, "ddim", 10, "linspace", "ddim")
    assert rel(res.samples, ref) > 1e-3


@pytest.mark.parametrize("prediction_type", PREDICTIONS)
@pytest.mark.parametrize("spacing", ["leading", "linspace", "trailing"])
@pytest.mark.parametrize("n", STEPS)
def test_dpmpp_2m_matches_diffusers(unet, x_T, n, spacing, prediction_type):
    """DPMSolverMultistepScheduler(dpmsolver++, order 2, midpoint) = ``dpmpp_2m`` with
    ``lower_order_final="diffusers"``: diffusers' "lower order final" below 15 steps counts its
    last step (to σ = 0, our final x̂_0), so at order 2 no grid step is lowered, while
    scoresolve's default (True) also lowers the last grid step."""
    config = dict(prediction_type=prediction_type, timestep_spacing=spacing, algorithm_type="dpmsolver++",
                  solver_order=2, steps_offset=1 if spacing == "leading" else 0)
    _check(unet, x_T, diffusers.DPMSolverMultistepScheduler, config, "dpmpp_2m", n, spacing, "dpmsolver",
           lower_order_final="diffusers")


def test_timesteps_match_diffusers():
    """``spaced_timesteps`` reproduces ``set_timesteps`` of both conventions, every spacing."""
    for cls, conv in ((diffusers.DDIMScheduler, "ddim"), (diffusers.DPMSolverMultistepScheduler, "dpmsolver"),
                      (diffusers.UniPCMultistepScheduler, "dpmsolver")):
        for spacing in ss.schedules.SPACINGS:
            for n, offset in ((7, 0), (10, 1), (20, 0), (50, 1), (999, 0)):
                sched = cls(timestep_spacing=spacing, steps_offset=offset)
                sched.set_timesteps(n)
                ours = ss.spaced_timesteps(n, spacing, steps_offset=offset, convention=conv)
                assert torch.equal(sched.timesteps.long(), ours), (cls.__name__, spacing, n)


@pytest.mark.parametrize("name", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_tables_match_diffusers(name):
    """Named schedules and configs rebuild diffusers' float32 table bit for bit."""
    kw = dict(beta_schedule=name, beta_start=0.00085, beta_end=0.012) if name == "scaled_linear" else \
        dict(beta_schedule=name)
    sched = diffusers.DDPMScheduler(**kw)
    for sde in (ss.DiscreteVPSDE.from_diffusers(sched), ss.DiscreteVPSDE.from_diffusers(dict(sched.config))):
        assert torch.equal(sde.alphas_cumprod, sched.alphas_cumprod.double())
        t = sde.timestep_to_t(torch.arange(1000))
        assert torch.allclose(sde.mean_scale(t) ** 2, sched.alphas_cumprod.double(), rtol=1e-14, atol=0)


def _check_sigma_scheduler(unet, x_T, cls, config, method, n, spacing, **options):
    """diffusers' σ-schedulers (Euler, Heun, LMS) step x̃ = x/m in σ̃ = σ/m from x̃_T = z·init_noise_sigma;
    scoresolve starts from x_T = m(t_0) x̃_T and ends, like them, at x̂_0."""
    results = []
    for f64 in (False, True):
        sched = cls(**config) if not f64 else float64_scheduler(cls(**config))
        ref, calls = run_diffusers(unet, sched, x_T, n, f64=f64)
        sde = ss.DiscreteVPSDE.from_diffusers(sched)  # interpolation="sigma", as these schedulers
        if spacing == "linspace":  # fractional timesteps (float32), the grid read off the scheduler
            grid = sde.timestep_to_t(torch.unique_consecutive(sched.timesteps))
        else:
            grid = ss.timestep_grid(sde, n, spacing, steps_offset=sched.config.steps_offset)
        x_init = x_T * float(sched.init_noise_sigma) * sde.mean_scale(float(grid[0]))
        res = ss.sample(ss.from_diffusers(unet, sde), sde, x_T.shape, method, grid=grid, x_init=x_init, **options)
        assert res.nfe == calls
        results.append(rel(res.samples, ref))
    assert results[0] <= 1e-6 and results[1] <= 1e-12, results


@pytest.mark.parametrize("prediction_type", PREDICTIONS)
@pytest.mark.parametrize("spacing", ["leading", "linspace", "trailing"])
@pytest.mark.parametrize("n", STEPS)
@pytest.mark.parametrize("name, method", [("EulerDiscreteScheduler", "euler"), ("HeunDiscreteScheduler", "heun"),
                                          ("LMSDiscreteScheduler", "lms")])
def test_sigma_schedulers_match_diffusers(unet, x_T, name, method, n, spacing, prediction_type):
    """Euler = ``euler`` (= DDIM), Heun = ``heun`` (= EDM Heun; 2n − 1 NFE), LMS = ``lms`` (order 4,
    its last multistep step to σ = 0 is our final denoising).  With "linspace" their timesteps
    are fractional and σ̃ is interpolated linearly in τ: ``DiscreteVPSDE(interpolation="sigma")``,
    which ``from_diffusers`` picks for these schedulers."""
    config = dict(prediction_type=prediction_type, timestep_spacing=spacing,
                  steps_offset=1 if spacing == "leading" else 0)
    _check_sigma_scheduler(unet, x_T, getattr(diffusers, name), config, method, n, spacing)


@pytest.mark.parametrize("n", (10, 20))
def test_ddim_clip_sample_and_dpmpp_thresholding(unet, x_T, n):
    """clip_sample / dynamic thresholding as x̂_0 hooks: DDIM(clip_sample=True,
    use_clipped_model_output=True) = ``ddim`` with ``clip_x0()``; DPM-Solver++(2M) with
    thresholding = ``dpmpp_2m`` with ``dynamic_threshold()``.  (diffusers' DDIM default,
    use_clipped_model_output=False, pairs the clipped x̂_0 with the unclipped ε̂, which is not a
    function of a hooked x̂_0: not reproduced.)  The float32 bound is 1e-5 here: the random UNet's
    unclipped x̂_0 reach ~600 while the clipped output stays in [−1, 1], and float32 rounding is
    relative to the former (the same runs without clipping agree to ~1e-8 of their max |x|).
    Lifted to float64 diffusers agrees to ~1e-14."""
    def ddim_loop(sched, x, f64):
        if f64:
            sched = float64_scheduler(sched)
            sched.set_timesteps(n)
        else:
            sched.set_timesteps(n)
        with torch.no_grad():
            for tau in sched.timesteps:
                x = sched.step(unet(x, tau).sample, tau, x, use_clipped_model_output=True).prev_sample
        return x

    clip = ss.thresholding.clip_x0(1.0)
    for f64, tol in ((False, 1e-5), (True, 1e-12)):
        sched = diffusers.DDIMScheduler(clip_sample=True, timestep_spacing="trailing")
        ref = ddim_loop(sched, x_T.clone(), f64)
        sde = ss.DiscreteVPSDE.from_diffusers(sched)
        res = ss.sample(ss.from_diffusers(unet, sde), sde, x_T.shape, "ddim", x_init=x_T, x0_hook=clip,
                        grid=ss.timestep_grid(sde, n, "trailing"))
        assert rel(res.samples, ref) <= tol, rel(res.samples, ref)
    config = dict(thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=1.5, timestep_spacing="trailing")
    _check(unet, x_T, diffusers.DPMSolverMultistepScheduler, config, "dpmpp_2m", n, "trailing", "dpmsolver",
           lower_order_final=False, x0_hook=ss.thresholding.dynamic_threshold(0.9, 1.5))


@pytest.mark.parametrize("solver_type, final", [("bh2", "zero"), ("bh2", "sigma_min"), ("bh1", "sigma_min")])
@pytest.mark.parametrize("prediction_type", PREDICTIONS)
@pytest.mark.parametrize("spacing", ["leading", "linspace", "trailing"])
@pytest.mark.parametrize("n", STEPS)
def test_unipc_matches_diffusers(unet, x_T, n, spacing, prediction_type, solver_type, final):
    """UniPCMultistepScheduler (order 2, B(h) = bh1 / bh2) = ``unipc_bh1`` / ``unipc_bh2``.
    ``final_sigmas_type="sigma_min"`` ends at timestep 0 without x̂_0: our grid gets t(τ = 0)
    appended and ``denoise=False``.  (diffusers' bh1 with the default final_sigmas_type="zero"
    returns NaN: B(h) = −h is −∞ at σ = 0.)"""
    config = dict(prediction_type=prediction_type, timestep_spacing=spacing, solver_type=solver_type,
                  final_sigmas_type=final, steps_offset=1 if spacing == "leading" else 0)
    cls = diffusers.UniPCMultistepScheduler
    for f64, tol in ((False, 1e-6), (True, 1e-12)):
        sched = cls(**config) if not f64 else float64_scheduler(cls(**config))
        ref, calls = run_diffusers(unet, sched, x_T, n, f64=f64)
        sde = ss.DiscreteVPSDE.from_diffusers(sched)
        grid = ss.timestep_grid(sde, n, spacing, convention="dpmsolver", steps_offset=config["steps_offset"])
        if final == "sigma_min":
            grid = torch.cat([grid, grid.new_tensor([sde.timestep_to_t(0)])])
        res = ss.sample(ss.from_diffusers(unet, sde), sde, x_T.shape, f"unipc_{solver_type}", grid=grid,
                        x_init=x_T, denoise=final == "zero")
        assert res.nfe == calls == n
        assert rel(res.samples, ref) <= tol, (f64, rel(res.samples, ref))
