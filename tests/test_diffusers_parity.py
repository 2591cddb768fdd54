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


def _ours(unet, sched, x_T, n, **match):
    """The three lines a user writes to reproduce ``sched`` at n steps from diffusers' noise x_T."""
    sde = ss.DiscreteVPSDE.from_diffusers(sched)  # line 1: the schedule
    score = ss.from_diffusers(unet, sde)  # line 2: the model (prediction type from the config)
    return ss.sample(score, sde, x_T.shape, **ss.match_scheduler(sched, sde, n, x_T, **match))  # line 3


def _check(unet, x_T, cls, config, n, nfe=None):
    """``_ours`` against ``cls(**config)`` run by diffusers, stock (≤ 1e-6) and lifted to float64 (≤ 1e-12)."""
    results = []
    for f64 in (False, True):
        sched = cls(**config) if not f64 else float64_scheduler(cls(**config))
        ref, calls = run_diffusers(unet, sched, x_T, n, f64=f64)
        res = _ours(unet, cls(**config), x_T, n)
        assert res.nfe == calls == (nfe or n)
        results.append(rel(res.samples, ref))
    assert results[0] <= 1e-6 and results[1] <= 1e-12, results


def _ddim(unet, sched, x_T, n, hooked_eps=False):
    return _ours(unet, sched, x_T, n, use_clipped_model_output=hooked_eps)


def _amplification(unet, config, x_T, n, step, ref64, delta=1e-10):
    """κ: how much diffusers' own DDIM (lifted to float64) amplifies a relative perturbation of
    x_T, max |Δx_0| / max |x_0| per unit δ."""
    sched = float64_scheduler(diffusers.DDIMScheduler(**config))
    out, _ = run_diffusers(unet, sched, x_T * (1 + delta), n, f64=True, step_kwargs=step)
    return rel(out, ref64) / delta


def _check_ddim(unet, x_T, config, n, use_clipped_model_output=False):
    """``_ddim`` against DDIMScheduler(**config) run by diffusers, stock and lifted to float64.

    With clip_sample the bounds are 1e-6·κ and 1e-12·κ (κ ≥ 1, ``_amplification``): the random
    UNet's unclipped x̂_0 reach ~600 while the clipped ones stay in [−1, 1], so rounding errors
    relative to the former are amplified.  With ε-prediction and the model's unclipped ε̂
    (diffusers' default) each step is x' = √ᾱ' clip(x̂_0) + √(1 − ᾱ') ε̂(x), the random network
    iterated, and κ reaches ~4e4 at 50 steps: stock diffusers then differs from itself lifted
    to float64 by up to 7e-3, so no fixed bound near 1e-6 can hold for anyone.  Without
    clipping κ ≈ 1 and the bounds are 1e-6 and 1e-12."""
    res = _ddim(unet, diffusers.DDIMScheduler(**config), x_T, n, hooked_eps=use_clipped_model_output)
    step = dict(use_clipped_model_output=use_clipped_model_output)
    ref64, calls = run_diffusers(unet, float64_scheduler(diffusers.DDIMScheduler(**config)), x_T, n, f64=True,
                                 step_kwargs=step)
    kappa = max(1.0, _amplification(unet, config, x_T, n, step, ref64)) if config.get("clip_sample", True) else 1.0
    ref, calls32 = run_diffusers(unet, diffusers.DDIMScheduler(**config), x_T, n, step_kwargs=step)
    assert res.nfe == calls == calls32 == n
    assert rel(res.samples, ref64) <= 1e-12 * kappa, (kappa, rel(res.samples, ref64))
    assert rel(res.samples, ref) <= 1e-6 * kappa, (kappa, rel(res.samples, ref))


CLIP = {"no_clip": dict(clip_sample=False), "clip": dict(clip_sample=True),  # diffusers' default
        "clip_clipped_eps": dict(clip_sample=True, use_clipped_model_output=True)}


@pytest.mark.parametrize("clip", CLIP)
@pytest.mark.parametrize("prediction_type", PREDICTIONS)
@pytest.mark.parametrize("spacing", ["leading", "linspace", "trailing"])
@pytest.mark.parametrize("n", STEPS + (15,))
def test_ddim_matches_diffusers(unet, x_T, n, spacing, prediction_type, clip):
    """DDIMScheduler(η = 0) = ``ddim`` on its timesteps with ``step_to=ddim_step_to(...)``: from
    τ_i diffusers steps to τ_i − N//n, which is τ_{i+1} for "leading" and for "trailing" when n
    divides N, and otherwise ("linspace"; "trailing" with n = 15) a relabelled state.  The last
    step to ᾱ = 1 is our final x̂_0 (``denoise=True``); "trailing" with n = 15 ends at timestep
    66 and steps to timestep 0.  clip_sample = ``x0_hook=clip_x0()`` with
    ``hooked_eps=use_clipped_model_output``: diffusers' default (False) pairs the clipped x̂_0
    with the model's unclipped ε̂; True re-derives ε̂ from the clipped x̂_0 (the hooked score)."""
    config = dict(prediction_type=prediction_type, timestep_spacing=spacing,
                  steps_offset=1 if spacing == "leading" else 0, **CLIP[clip])
    clipped_eps = config.pop("use_clipped_model_output", False)
    _check_ddim(unet, x_T, config, n, clipped_eps)


@pytest.mark.parametrize("spacing, n, clip", [("leading", 20, "clip"), ("linspace", 15, "no_clip"),
                                              ("linspace", 10, "clip"), ("trailing", 10, "clip_clipped_eps"),
                                              ("trailing", 15, "no_clip")])
def test_ddim_without_alpha_to_one_matches_diffusers(unet, x_T, spacing, n, clip):
    """``set_alpha_to_one=False``: diffusers' last step lands on ᾱ_0 (timestep 0), not ᾱ = 1;
    ``ddim_step_to(..., set_alpha_to_one=False)`` ends there and the final evaluation is a DDIM
    step to it instead of x̂_0 ("linspace": from timestep 0 to timestep 0, which with clipping
    is not the identity)."""
    config = dict(timestep_spacing=spacing, set_alpha_to_one=False, steps_offset=1 if spacing == "leading" else 0,
                  **CLIP[clip])
    clipped_eps = config.pop("use_clipped_model_output", False)
    _check_ddim(unet, x_T, config, n, clipped_eps)


def test_ddim_options_matter(unet, x_T):
    """Where the options matter, leaving them out is far from diffusers: "linspace" without
    ``step_to`` is the consistent DDIM on those timesteps, and with clip_sample the hooked ε̂
    (``hooked_eps=True``) is not diffusers' default."""
    sched = diffusers.DDIMScheduler(timestep_spacing="linspace", clip_sample=False)
    ref, _ = run_diffusers(unet, sched, x_T, 10)
    sde = ss.DiscreteVPSDE.from_diffusers(sched)
    res = ss.sample(ss.from_diffusers(unet, sde), sde, x_T.shape, "ddim", grid=ss.timestep_grid(sde, 10, "linspace"),
                    x_init=x_T)
    assert rel(res.samples, ref) > 1e-3
    sched = diffusers.DDIMScheduler(timestep_spacing="trailing", clip_sample=True)
    ref, _ = run_diffusers(unet, sched, x_T, 10)
    assert rel(_ddim(unet, sched, x_T, 10, hooked_eps=True).samples, ref) > 1e-3


def test_ddim_step_to_matches_diffusers():
    """``ddim_step_to`` is t(τ − N//n) for diffusers' τ, and below timestep 0 time 0 (ᾱ = 1,
    ``set_alpha_to_one=True``) or t(0) (ᾱ_0)."""
    sde = ss.DiscreteVPSDE()
    for spacing in ss.schedules.SPACINGS:
        for n, offset, one in ((7, 0, True), (10, 1, False), (15, 0, True), (50, 1, True), (999, 0, False)):
            sched = diffusers.DDIMScheduler(timestep_spacing=spacing, steps_offset=offset, set_alpha_to_one=one)
            sched.set_timesteps(n)
            prev = sched.timesteps - 1000 // n
            abar = torch.where(prev >= 0, sched.alphas_cumprod[prev.clamp(min=0)], sched.final_alpha_cumprod)
            t = ss.ddim_step_to(sde, n, spacing, steps_offset=offset, set_alpha_to_one=one)
            assert torch.allclose(sde.mean_scale(t) ** 2, abar.double(), rtol=1e-14, atol=0), (spacing, n)


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
    _check(unet, x_T, diffusers.DPMSolverMultistepScheduler, config, n)


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
    _check(unet, x_T, getattr(diffusers, name), config, n, nfe=2 * n - 1 if method == "heun" else n)


@pytest.mark.parametrize("n", (10, 20))
def test_dpmpp_thresholding(unet, x_T, n):
    """Dynamic thresholding as an x̂_0 hook: DPM-Solver++(2M) with thresholding = ``dpmpp_2m``
    with ``dynamic_threshold()``.  (DDIM's clip_sample: ``test_ddim_clip_sample_matches_diffusers``.)"""
    config = dict(thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=1.5, timestep_spacing="trailing")
    _check(unet, x_T, diffusers.DPMSolverMultistepScheduler, config, n)


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
    _check(unet, x_T, diffusers.UniPCMultistepScheduler, config, n)


@pytest.mark.parametrize("n", (10, 20))
@pytest.mark.parametrize("name, config", [
    ("UniPCMultistepScheduler", dict(solver_order=3, timestep_spacing="trailing")),
    ("UniPCMultistepScheduler", dict(solver_order=1, timestep_spacing="leading", steps_offset=1)),
    # (lower_order_final=False with the default final_sigmas_type="zero": diffusers returns inf)
    ("UniPCMultistepScheduler", dict(lower_order_final=False, final_sigmas_type="sigma_min",
                                     timestep_spacing="linspace")),
    ("DPMSolverMultistepScheduler", dict(lower_order_final=False, timestep_spacing="leading", steps_offset=1)),
    ("DPMSolverMultistepScheduler", dict(beta_schedule="squaredcos_cap_v2", timestep_spacing="trailing")),
    ("EulerDiscreteScheduler", dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)),
], ids=lambda v: v if isinstance(v, str) else "-".join(f"{k}={x}" for k, x in v.items()))
def test_match_scheduler_other_configs(unet, x_T, n, name, config):
    """``match_scheduler`` follows the config: solver orders, lower_order_final, other β schedules."""
    _check(unet, x_T, getattr(diffusers, name), config, n)


def test_match_scheduler_ddim_thresholding(unet, x_T):
    """DDIM with ``thresholding=True`` = ``dynamic_threshold`` as the x̂_0 hook (κ-scaled bounds as for clip_sample)."""
    _check_ddim(unet, x_T, dict(thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=1.5,
                                timestep_spacing="trailing"), 10)


def test_match_scheduler_refuses_other_methods(unet, x_T):
    """A configuration that is another method raises, naming the setting; the caller's scheduler is untouched."""
    sde = ss.DiscreteVPSDE()
    for sched, match in ((diffusers.DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++"), "algorithm_type"),
                         (diffusers.DPMSolverMultistepScheduler(solver_order=3), "solver_order"),
                         (diffusers.EulerDiscreteScheduler(use_karras_sigmas=True), "use_karras_sigmas"),
                         (diffusers.UniPCMultistepScheduler(disable_corrector=[0]), "disable_corrector")):
        with pytest.raises(ValueError, match=match):
            ss.match_scheduler(sched, sde, 10)
    with pytest.raises(TypeError, match="DDIMScheduler, DPMSolverMultistepScheduler"):
        ss.match_scheduler(diffusers.PNDMScheduler(), sde, 10)
    with pytest.raises(TypeError, match="DiscreteVPSDE"):
        ss.match_scheduler(diffusers.DDIMScheduler(), ss.VPSDE(), 10)
    sched = diffusers.DDIMScheduler()
    kwargs = ss.match_scheduler(sched, sde, 10, x_T)
    assert sched.num_inference_steps is None and kwargs["method"] == "ddim" and kwargs["x_init"] is x_T


@pytest.mark.parametrize("n", (14, 15))
def test_dpmpp_2m_at_diffusers_lower_order_boundary(unet, x_T, n):
    """diffusers lowers the order of its last steps below 15 timesteps: both sides of the switch."""
    _check(unet, x_T, diffusers.DPMSolverMultistepScheduler, dict(timestep_spacing="trailing"), n)
