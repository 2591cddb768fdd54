"""Controllable generation with an unconditional score: guidance, inverse problems
(inpainting, colorization, linear observations; replacement method or particles) and
deterministic encoding through the probability-flow ODE.

Reference: Song et al. 2021, §5 and Appendix I; Appendix D.2 for encodings.
"""

from .encode import EncodeResult, Interpolation, decode, encode, interpolate, slerp
from .guidance import ClassifierFreeScore, GuidedScore, classifier_free, guided
from .inverse import colorize, inpaint, linear_inverse
from .projected import Observation, Projected
from .smc import ParticleSampler

__all__ = [
    "guided", "classifier_free", "GuidedScore", "ClassifierFreeScore",
    "inpaint", "colorize", "linear_inverse", "Observation", "Projected", "ParticleSampler",
    "encode", "decode", "interpolate", "slerp", "EncodeResult", "Interpolation",
]
