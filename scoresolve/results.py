"""Result types: one per entry point, whatever the flags (sample, likelihood, encode, interpolate)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

__all__ = ["SampleResult", "LikelihoodResult", "EncodeResult", "Interpolation"]


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


@dataclass(frozen=True)
class LikelihoodResult:
    """What ``likelihood`` and ``bits_per_dim`` return (all per-point tensors have shape (B,)).

    Attributes:
        logp: log p_eps(x) in nats (``bits_per_dim``: the dequantized lower bound on log P(x)).
        logp_stderr: standard error of ``logp`` from the Hutchinson probes (0 for the exact
            trace; NaN with a single probe) or, for ``bits_per_dim``, from the repeats.
        bpd: −logp / (d log 2), bits per dimension.
        nfe: counted evaluations per point: score forward passes plus VJPs.
        latent: x(T) (None if not requested or for ``bits_per_dim``).
        prior_logp: log π(x(T)).
        delta_logp: ∫_eps^T div F dt (mean over probes).
        stats: forwards, vjps, vjp ("vmap" or "loop": the path that ran), rhs_evals, steps_accepted,
            steps_rejected, ts, wall_time, ...
    """

    logp: Tensor
    logp_stderr: Tensor
    bpd: Tensor
    nfe: float
    latent: Tensor | None
    prior_logp: Tensor
    delta_logp: Tensor
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EncodeResult:
    """What ``encode`` returns.

    Attributes:
        latent: (B, ...) states at T.
        nfe: counted score evaluations per sample (rejected adaptive steps included).
        ts: the float64 times integrated through, (eps, T).
        stats: calls, wall time, solver settings.
    """

    latent: Tensor
    nfe: float
    ts: Tensor
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Interpolation:
    """What ``interpolate`` returns.

    Attributes:
        samples: (n, B, ...) decoded points; samples[0] ≈ x_a, samples[-1] ≈ x_b.
        latents: (n, B, ...) the interpolated latents.
        alphas: (n,) interpolation weights in [0, 1].
        nfe: score evaluations per sample of encoding plus per point of decoding.
        stats: nfe_encode, nfe_decode, method.
    """

    samples: Tensor
    latents: Tensor
    alphas: Tensor
    nfe: float
    stats: dict[str, Any] = field(default_factory=dict)
