"""Fast samplers: exponential integrators (DDIM, DPM-Solver++, UniPC-class), EDM Heun, per-sample
adaptive SDE/ODE solvers and the torchsde backend.  Registered by name in ``registry.SAMPLERS``."""

from .adaptive import AdaptiveODE, GottaGoFast
from .adaptive_ms import AdaptiveMultistep
from .edm import EDMHeun
from .exponential import DDIM, DPMSolver2S, DPMSolverMultistep, DPMSolverSDE
from .sdeint import TorchSDE
from .unipc import UniPC

__all__ = [
    "DDIM", "DPMSolver2S", "DPMSolverMultistep", "DPMSolverSDE", "UniPC", "EDMHeun",
    "GottaGoFast", "AdaptiveODE", "AdaptiveMultistep", "TorchSDE",
]
