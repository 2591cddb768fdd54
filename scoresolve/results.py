"""Result types: one per entry point, whatever the flags."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

__all__ = ["SampleResult"]


@dataclass(frozen=True)
class SampleResult:
    """What ``sample`` returns.

    Attributes:
        samples: (B, ...) final samples (the noise-free mean of the last step when denoised).
        nfe: counted score evaluations per sample (rows evaluated / batch size), including
            corrector, denoising and rejected adaptive steps.
        ts: the float64 time grid used (for adaptive solvers, the accepted times when known).
        trajectory: (N+1, B, ...) states on the grid when ``return_trajectory=True``, else None.
        stats: method-specific statistics (calls, steps, accepted/rejected, wall time, ...).
    """

    samples: Tensor
    nfe: float
    ts: Tensor | None = None
    trajectory: Tensor | None = None
    stats: dict[str, Any] = field(default_factory=dict)
