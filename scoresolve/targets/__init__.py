"""Analytic targets: the ground truth for tests and benchmarks."""

from .mixture import GaussianMixture

__all__ = ["GaussianMixture"]
