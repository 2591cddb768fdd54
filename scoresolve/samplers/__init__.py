"""Every sampler, one module per family, each a frozen dataclass implementing
``protocol.Sampler`` (registered by name in ``registry.SAMPLERS``):

- ``classical``: predictor-corrector, annealed Langevin, probability-flow ODE (Song et al. 2021);
- ``exponential``: DDIM (η), DPM-Solver++ 2S / multistep / SDE, in half log-SNR;
- ``unipc``: UniPC predictor-corrector; ``edm``: EDM Heun (+ churn);
- ``kdiffusion``: k-diffusion's LMS, Euler ancestral and DPM-2 in σ̃;
- ``adaptive``: per-sample adaptive solvers (Gotta Go Fast, exponential RK 3(2), adaptive
  multistep) on one shared skeleton;
- ``torchsde``: the torchsde stochastic Runge-Kutta backend.
"""

from .adaptive import AdaptiveODE, GottaGoFast
from .adaptive_ms import AdaptiveMultistep
from .classical import PC, AnnealedLangevin, FixedStepODE, ProbabilityFlowODE, grid_steps
from .edm import EDMHeun
from .exponential import DDIM, DPMSolver2S, DPMSolverMultistep, DPMSolverSDE
from .kdiffusion import DPM2, LMS, EulerAncestral
from .torchsde import TorchSDE
from .unipc import UniPC
from .unipc_bh import UniPCBh

__all__ = [
    "PC", "AnnealedLangevin", "ProbabilityFlowODE", "FixedStepODE", "grid_steps",
    "DDIM", "DPMSolver2S", "DPMSolverMultistep", "DPMSolverSDE", "UniPC", "EDMHeun",
    "GottaGoFast", "AdaptiveODE", "AdaptiveMultistep", "TorchSDE", "LMS", "EulerAncestral", "DPM2",
    "UniPCBh",
]
