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
    ``lower_order_final=False``: diffusers' "lower order final" below 15 steps lowers only its
    last step (to σ = 0, our final x̂_0), while scoresolve's also lowers the last grid step."""
    config = dict(prediction_type=prediction_type, timestep_spacing=spacing, algorithm_type="dpmsolver++",
                  solver_order=2, steps_offset=1 if spacing == "leading" else 0)
    _check(unet, x_T, diffusers.DPMSolverMultistepScheduler, config, "dpmpp_2m", n, spacing, "dpmsolver",
           lower_order_final=False)


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
