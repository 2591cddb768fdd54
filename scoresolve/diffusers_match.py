"""The ``sample()`` arguments that reproduce a configured diffusers scheduler.

    sde = ss.DiscreteVPSDE.from_diffusers(scheduler)
    score = ss.from_diffusers(unet, sde)
    res = ss.sample(score, sde, noise.shape, **ss.match_scheduler(scheduler, sde, 50, noise))

gives the samples of diffusers' loop (``set_timesteps(50)``, ``x = noise * init_noise_sigma``,
``x = scheduler.step(unet(scale_model_input(x, τ), τ).sample, τ, x).prev_sample`` for each τ)
to float32 rounding, at the same number of UNet calls.  Which scoresolve method each scheduler is:

- ``DDIMScheduler`` (η = 0): ``ddim`` with ``step_to=ddim_step_to(...)``; ``clip_sample`` → ``x0_hook=clip_x0``,
  ``thresholding`` → ``dynamic_threshold``, ``hooked_eps=use_clipped_model_output``.
- ``DPMSolverMultistepScheduler`` (dpmsolver++, order 2, midpoint): ``dpmpp_2m``,
  ``lower_order_final="diffusers"`` (or False); ``thresholding`` → ``dynamic_threshold``.
- ``UniPCMultistepScheduler`` (bh1 / bh2): ``unipc_bh1`` / ``unipc_bh2`` with its ``solver_order``;
  ``final_sigmas_type="sigma_min"`` → t(τ = 0) appended to the grid, ``denoise=False``.  (With "zero",
  diffusers' bh1, and its bh2 with ``lower_order_final=False``, return inf/NaN: the last step to
  σ = 0 divides by σ; ours ends with the Tweedie x̂_0.)
- ``EulerDiscreteScheduler`` / ``HeunDiscreteScheduler`` / ``LMSDiscreteScheduler``: ``euler`` (= ``ddim``),
  ``heun`` (= ``heun_edm``), ``lms`` (order 4), all in σ̃ = σ/m.

The grid is the scheduler's own ``timesteps`` (a copy of the scheduler is set, the caller's is
not touched) as times t = (τ + 1)/N; the σ-schedulers (Euler, Heun, LMS) start from
``noise · init_noise_sigma`` in x̃ = x/m, so ``x_init = noise · init_noise_sigma · m(t_0)``
(σ(t_0) or √(σ² + m²)(t_0), in float64).
Configurations that change the method itself (Karras/exponential σs, other algorithm types
or solver orders, a disabled corrector, ...) raise instead of running something else.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping

import torch
from torch import Tensor

from .schedules import DiscreteVPSDE, ddim_step_to
from .thresholding import clip_x0, dynamic_threshold

__all__ = ["match_scheduler", "MATCHED_SCHEDULERS"]

# config entries every matched scheduler must leave at these values
_COMMON = {"use_karras_sigmas": False, "use_exponential_sigmas": False, "use_beta_sigmas": False,
           "rescale_betas_zero_snr": False}
_REQUIRED = {
    "DDIMScheduler": {},
    "DPMSolverMultistepScheduler": {"algorithm_type": "dpmsolver++", "solver_order": 2, "solver_type": "midpoint",
                                    "euler_at_final": False, "final_sigmas_type": "zero", "use_lu_lambdas": False,
                                    "variance_type": None},
    "UniPCMultistepScheduler": {"predict_x0": True, "disable_corrector": [], "use_flow_sigmas": False},
    "EulerDiscreteScheduler": {"interpolation_type": "linear", "final_sigmas_type": "zero",
                               "timestep_type": "discrete"},
    "HeunDiscreteScheduler": {},
    "LMSDiscreteScheduler": {},
}
MATCHED_SCHEDULERS = tuple(_REQUIRED)


def _check_config(name: str, cfg: Mapping) -> None:
    for key, want in {**_COMMON, **_REQUIRED[name]}.items():
        have = cfg.get(key, want)
        if have != want and not (want == [] and not have):
            raise ValueError(f"{name}({key}={have!r}) is not reproduced by match_scheduler; it matches "
                             f"{key}={want!r} (the other settings of the table in scoresolve.diffusers_match)")


def _hook(cfg: Mapping):
    if cfg.get("thresholding", False):
        return dynamic_threshold(cfg.get("dynamic_thresholding_ratio", 0.995), cfg.get("sample_max_value", 1.0))
    if cfg.get("clip_sample", False):
        return clip_x0(cfg.get("clip_sample_range", 1.0))
    return None


def match_scheduler(scheduler, sde: DiscreteVPSDE, steps: int, noise: Tensor | None = None, *,
                    use_clipped_model_output: bool = False) -> dict:
    """Keyword arguments for ``sample(score, sde, shape, **kwargs)`` that reproduce ``scheduler``
    at ``steps`` steps: ``method``, ``grid``, the method's options and, given diffusers' unit
    ``noise``, the ``x_init`` diffusers starts from.

    Args:
        scheduler: a configured diffusers scheduler, one of ``MATCHED_SCHEDULERS``.
        sde: ``DiscreteVPSDE.from_diffusers(scheduler)`` (the SDE the score adapter uses).
        steps: what you would pass to ``scheduler.set_timesteps``.
        noise: the standard-normal tensor diffusers' loop starts from (``x = noise *
            init_noise_sigma``); None leaves ``x_init`` out (a fresh prior draw).
        use_clipped_model_output: DDIM's ``step(..., use_clipped_model_output=)``.

    Raises:
        TypeError: not a matched scheduler, or ``sde`` not a ``DiscreteVPSDE``.
        ValueError: a configuration that is a different method (named in the message).
    """
    name = next((c.__name__ for c in type(scheduler).__mro__ if c.__name__ in _REQUIRED), None)
    if name is None:
        raise TypeError(f"match_scheduler reproduces {', '.join(MATCHED_SCHEDULERS)}; got {type(scheduler).__name__}")
    if not isinstance(sde, DiscreteVPSDE):
        raise TypeError(f"sde must be DiscreteVPSDE.from_diffusers(scheduler), got {type(sde).__name__}")
    cfg = scheduler.config
    _check_config(name, cfg)
    if sde.num_train_timesteps != cfg.get("num_train_timesteps", 1000):
        raise ValueError(f"sde has {sde.num_train_timesteps} timesteps but the scheduler "
                         f"{cfg.get('num_train_timesteps')}: build it with DiscreteVPSDE.from_diffusers(scheduler)")
    own = copy.deepcopy(scheduler)
    own.set_timesteps(steps)
    taus = torch.unique_consecutive(own.timesteps.to(torch.float64))  # Heun lists its timesteps twice
    grid = sde.timestep_to_t(taus)
    out: dict = {"grid": grid}
    if name == "DDIMScheduler":
        spacing, offset = cfg.get("timestep_spacing", "leading"), cfg.get("steps_offset", 0)
        out.update(method="ddim", hooked_eps=use_clipped_model_output,
                   step_to=ddim_step_to(sde, steps, spacing, steps_offset=offset,
                                        set_alpha_to_one=cfg.get("set_alpha_to_one", True)))
    elif name == "DPMSolverMultistepScheduler":
        out.update(method="dpmpp_2m", lower_order_final="diffusers" if cfg.get("lower_order_final", True) else False)
    elif name == "UniPCMultistepScheduler":
        solver_type = cfg.get("solver_type", "bh2")
        if solver_type not in ("bh1", "bh2"):
            raise ValueError(f"UniPCMultistepScheduler(solver_type={solver_type!r}) is not reproduced; "
                             "valid choices: bh1, bh2")
        out.update(method=f"unipc_{solver_type}", solver_order=cfg.get("solver_order", 2),
                   lower_order_final=bool(cfg.get("lower_order_final", True)))
        if cfg.get("final_sigmas_type", "zero") == "sigma_min":
            out.update(grid=torch.cat([grid, grid.new_tensor([float(sde.timestep_to_t(0))])]), denoise=False)
    else:
        out["method"] = {"EulerDiscreteScheduler": "euler", "HeunDiscreteScheduler": "heun",
                         "LMSDiscreteScheduler": "lms"}[name]
    hook = _hook(cfg)  # clip_sample / thresholding (the σ-schedulers' configs have neither)
    if hook is not None:
        out["x0_hook"] = hook
    if noise is not None:
        out["x_init"] = noise
        if out["method"] in ("euler", "heun", "lms"):  # x̃_T = noise · init_noise_sigma, and x = m x̃
            m, sig = sde.marginal(float(grid[0]))
            # init_noise_sigma = σ̃_max ("linspace", "trailing") or √(σ̃_max² + 1), in float64 here
            scale = sig if cfg.get("timestep_spacing", "linspace") in ("linspace", "trailing") else math.hypot(sig, m)
            out["x_init"] = noise * scale
    return out
