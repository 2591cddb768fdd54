"""scoresolve: differential-equation solvers for sampling score-based generative models.

``sample(score_fn, sde, shape, method="pc")`` solves the reverse-time SDE or the
probability-flow ODE of a forward SDE (VP, sub-VP, VE) for any score callable, and reports the
score evaluations it actually made.
"""

from . import control, distributed, metrics, ncsn, protocol, samplers, targets, thresholding, train
from .adapters import edm_precond, from_diffusers, from_karras, from_v_prediction
from .control import (
    classifier_free,
    colorize,
    decode,
    encode,
    guided,
    inpaint,
    interpolate,
    linear_inverse,
)
from .diffusers_match import match_scheduler
from .gridfit import FittedGrid, fit_grid
from .likelihood import LikelihoodResult, bits_per_dim, likelihood
from .noise import Noise
from .ode import StepLimitError
from .protocol import AdaptiveSampler, Context, Sampler, State
from .registry import CORRECTORS, PREDICTORS, SAMPLERS, resolve
from .results import SampleResult
from .samplers import (
    DDIM,
    PC,
    AdaptiveMultistep,
    AdaptiveODE,
    AnnealedLangevin,
    DPMSolver2S,
    DPMSolverMultistep,
    DPMSolverSDE,
    EDMHeun,
    FixedStepODE,
    GottaGoFast,
    ProbabilityFlowODE,
    TorchSDE,
    UniPC,
    grid_steps,
)
from .sampling import Start, sample, start, steps_for_nfe
from .scalegrid import ScaleGrid, data_mean, data_scale, scale_grid
from .schedules import DiscreteVPSDE, KarrasSDE, ddim_step_to, grid_from_sigmas, spaced_timesteps, timestep_grid
from .score import (
    CountingScore,
    NonFiniteScoreError,
    NonFiniteStateError,
    ScoreFn,
    from_denoiser,
    from_epsilon,
    from_sigma_model,
)
from .sde import SDE, SDES, VESDE, VPSDE, SubVPSDE, append_dims, reverse_drift
from .timegrid import GRIDS, make_grid

__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "fast":  # renamed to scoresolve.samplers; the alias goes away in the next release
        import importlib

        return importlib.import_module(".fast", __name__)
    raise AttributeError(f"module 'scoresolve' has no attribute {name!r}")

__all__ = [
    "SDE", "VPSDE", "SubVPSDE", "VESDE", "SDES", "reverse_drift", "append_dims",
    "sample", "start", "Start", "steps_for_nfe", "SampleResult",
    "Sampler", "AdaptiveSampler", "State", "Context", "StepLimitError", "protocol", "samplers",
    "PC", "AnnealedLangevin", "ProbabilityFlowODE", "FixedStepODE", "grid_steps",
    "DDIM", "DPMSolver2S", "DPMSolverMultistep", "DPMSolverSDE", "UniPC", "EDMHeun",
    "GottaGoFast", "AdaptiveODE", "AdaptiveMultistep", "TorchSDE",
    "PREDICTORS", "CORRECTORS", "SAMPLERS", "resolve",
    "ScoreFn", "CountingScore", "NonFiniteScoreError", "NonFiniteStateError", "from_epsilon", "from_denoiser",
    "from_sigma_model", "Noise", "GRIDS", "make_grid", "fit_grid", "FittedGrid",
    "scale_grid", "ScaleGrid", "data_scale", "data_mean", "targets", "metrics", "ncsn",
    "train", "distributed",
    "control", "guided", "classifier_free", "inpaint", "colorize", "linear_inverse",
    "encode", "decode", "interpolate", "likelihood", "bits_per_dim", "LikelihoodResult",
    "DiscreteVPSDE", "KarrasSDE", "spaced_timesteps", "timestep_grid", "ddim_step_to", "grid_from_sigmas",
    "from_diffusers", "match_scheduler", "from_karras", "from_v_prediction", "edm_precond", "thresholding",
]
