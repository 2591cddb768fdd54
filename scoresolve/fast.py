"""Deprecated alias of ``scoresolve.samplers`` (the fast samplers now live there, beside the
classical ones); importing it warns, and it goes away in the next release."""

import warnings

from .samplers import (  # noqa: F401
    DDIM,
    AdaptiveMultistep,
    AdaptiveODE,
    DPMSolver2S,
    DPMSolverMultistep,
    DPMSolverSDE,
    EDMHeun,
    GottaGoFast,
    TorchSDE,
    UniPC,
)

warnings.warn("scoresolve.fast is now scoresolve.samplers; the alias goes away in the next release",
              DeprecationWarning, stacklevel=2)
