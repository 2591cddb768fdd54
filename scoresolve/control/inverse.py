"""Linear inverse problems with an unconditional score: inpainting, colorization and any
observation y = A x whose matrix has orthonormal rows.

Each function builds an ``Observation`` and calls ``scoresolve.sample`` with the requested
sampler wrapped in ``Projected`` (the replacement method) or, with ``particles=K``, in
``ParticleSampler`` (SMC, asymptotically exact), so NFE counting, seeds and results are those
of ``sample``.
Reference: Song et al. 2021, §5 and Appendix I.2 (imputation), I.3 (colorization).
"""

from __future__ import annotations

import inspect
import math

import torch
from torch import Tensor

from ..registry import resolve, with_options
from ..results import SampleResult
from ..sampling import sample
from ..score import ScoreFn
from ..sde import SDE
from .projected import Observation, Projected
from .smc import ParticleSampler

__all__ = ["inpaint", "linear_inverse", "colorize"]

_SAMPLE_ARGS = frozenset(inspect.signature(sample).parameters) - {"score_fn", "sde", "shape", "method"}


def _run(score_fn, sde, shape, obs: Observation, method, particles, like: Tensor,
         kwargs: dict) -> SampleResult:
    """sample() with ``method`` wrapped in Projected (or ParticleSampler with ``particles``);
    sampler options (snr=, rtol=, ...) go to the base sampler, the rest to sample()."""
    options = {k: v for k, v in kwargs.items() if k not in _SAMPLE_ARGS}
    args = {k: v for k, v in kwargs.items() if k in _SAMPLE_ARGS}
    threshold = options.pop("ess_threshold", 0.5) if particles is not None else None
    if method is None:
        method = "pc" if particles is None else "reverse_diffusion"
    base = with_options(resolve("method", method), options)
    if particles is not None:
        sampler = ParticleSampler(base, obs, particles, threshold)
        shape = (shape[0] * particles,) + tuple(shape[1:])
    else:
        sampler = Projected(base, obs)
    if args.get("x_init") is None and args.get("generator") is None:
        args.setdefault("device", like.device)
    if args.get("x_init") is None:
        args.setdefault("dtype", like.dtype)
    return sample(score_fn, sde, shape, sampler, **args)


def _float(name: str, v) -> Tensor:
    if not isinstance(v, Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(v).__name__}")
    if not v.dtype.is_floating_point:
        v = v.to(torch.get_default_dtype())
    if not bool(torch.isfinite(v).all()):
        raise ValueError(f"{name} contains NaN or Inf (fill entries that are not observed with 0)")
    return v


def inpaint(
    score_fn: ScoreFn, sde: SDE, known: Tensor, mask: Tensor, *, method=None,
    particles: int | None = None, **kwargs,
) -> SampleResult:
    """Sample p_0(x | x[mask] = known[mask]): keep ``known`` where mask = 1, fill in the rest.

    After every sampler step the masked coordinates are replaced by a draw of their forward
    marginal, x ← (1 − mask) ⊙ x + mask ⊙ (m(t) known + σ(t) z) (the mean m(t) known for ODE
    samplers); the returned samples equal ``known`` on the mask.

    Args:
        score_fn: the unconditional score (x, t) -> ∇ log p_t(x).
        sde: the forward SDE the score belongs to.
        known: (B, *data_shape) data whose masked part is observed (the rest is ignored).
        mask: 0/1 (or bool) tensor broadcastable to ``known`` (e.g. data_shape, or per sample).
        method: a sampler name or object: pc (default), em, reverse_diffusion, ancestral, ald,
            ode, ode_euler, ode_heun (or PC(...), ProbabilityFlowODE(...), ...).
        particles: K >= 2 switches to the particle sampler (``smc.ParticleSampler``,
            SMCDiff): K interacting particles per row of ``known``, asymptotically exact in K;
            the samples are then (B·K, ...), row i's particles at [i·K, (i+1)·K).  Needs a
            predictor-only method (default reverse_diffusion; em, ancestral); option
            ``ess_threshold`` (0.5).  Without it (default) the replacement method: one
            independent sample per row, exact only when the observed part carries no
            information the free part's modes depend on (see ``smc``).
        **kwargs: ``sample()`` arguments (steps, nfe, grid, eps, generator, seeds, denoise, ...)
            and options of the sampler (snr, n_corrector_steps, rtol, ...).

    Returns:
        SampleResult with samples of shape known.shape and the counted NFE.

    Raises:
        ValueError: mask shape does not broadcast to ``known``, or mask not binary.
    Reference: Song et al. 2021, Appendix I.2.
    """
    known = _float("known", known)
    if known.ndim < 2:
        raise ValueError(f"known must have shape (batch, *data_shape), got {tuple(known.shape)}")
    if not isinstance(mask, Tensor):
        raise TypeError(f"mask must be a tensor, got {type(mask).__name__}")
    try:
        ok = torch.broadcast_shapes(mask.shape, known.shape) == known.shape
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not match known of shape "
                         f"{tuple(known.shape)}: pass data_shape {tuple(known.shape[1:])}, "
                         "(1, *data_shape), (B, *data_shape) or a broadcastable shape")
    if not bool(((mask == 0) | (mask == 1)).all()):
        bad = mask[(mask != 0) & (mask != 1)].flatten()[:3].tolist()
        raise ValueError(f"mask must be binary (0/1 or bool), found values such as {bad}")
    mask = mask.to(device=known.device, dtype=known.dtype)
    mask = mask.reshape((1,) * (known.ndim - mask.ndim) + tuple(mask.shape))
    obs = Observation(anchor=mask * known, mask=mask)
    return _run(score_fn, sde, tuple(known.shape), obs, method, particles, known, kwargs)


def check_orthonormal_rows(A: Tensor, name: str = "A", tol: float = 1e-5) -> Tensor:
    """Validate a (k, n) matrix with A Aᵀ = I_k (the observed rows of an orthogonal matrix)."""
    if not isinstance(A, Tensor) or A.ndim != 2:
        got = tuple(A.shape) if isinstance(A, Tensor) else type(A).__name__
        raise ValueError(f"{name} must be a (k, n) matrix with orthonormal rows, got {got}")
    k, n = A.shape
    if not 1 <= k <= n:
        raise ValueError(f"{name} must have 1 <= k <= n rows for n={n} columns, got k={k}")
    a = A.detach().to(torch.float64)
    err = float((a @ a.T - torch.eye(k, dtype=torch.float64, device=a.device)).abs().max())
    if not err <= tol:
        raise ValueError(
            f"{name} must have orthonormal rows (A Aᵀ = I, e.g. the observed rows of an "
            f"orthogonal decoupling matrix Mᵀ); max |A Aᵀ − I| = {err:.3g} > {tol:g}"
        )
    return A


def linear_inverse(
    score_fn: ScoreFn, sde: SDE, y: Tensor, A: Tensor, *, dim: int | None = 1,
    shape: tuple[int, ...] | None = None, method=None, particles: int | None = None, **kwargs,
) -> SampleResult:
    """Sample p_0(x | A x = y) for A with orthonormal rows (A Aᵀ = I).

    A is applied along axis ``dim`` of each sample (shape (k, C), C = that axis' size: a
    per-pixel map of the channels, or any map of R^d for vector data with dim=1), or to the
    flattened sample with ``dim=None`` (shape (k, n)).  Completing Aᵀ to an orthogonal M
    decouples the data so that y is a set of coordinates of Mᵀ x; after every step
    x ← x − AᵀA x + Aᵀ(m(t) y + σ(t) A z)  (Song et al. 2021, Appendix I.3).

    Args:
        y: (B, *data_shape) with axis ``dim`` of size k; with dim=None shape (B, k).
        A: (k, C) or (k, n) with orthonormal rows.
        dim: the sample axis A acts on (1 = channels / vector coordinates), or None.
        shape: (B, *data_shape) of the samples; needed only with dim=None (default (B, n)).
        method, particles, **kwargs: as for ``inpaint``.

    Raises:
        ValueError: A not of orthonormal rows, y or shape inconsistent with A.
    Reference: Song et al. 2021, Appendix I.3.
    """
    y = _float("y", y)
    A = check_orthonormal_rows(A).to(device=y.device, dtype=y.dtype)
    k, n = A.shape
    if dim is None:
        if y.ndim != 2 or y.shape[1] != k:
            raise ValueError(f"with dim=None, y must have shape (B, {k}), got {tuple(y.shape)}")
        shape = tuple(shape) if shape is not None else (y.shape[0], n)
        if shape[0] != y.shape[0] or math.prod(shape[1:]) != n:
            raise ValueError(f"shape {shape} must be (B={y.shape[0]}, ...) with {n} elements per sample")
        anchor = (y @ A).reshape(shape)
    else:
        if y.ndim < 2 or not 1 <= dim < y.ndim:
            raise ValueError(f"dim must index a data axis of y (1..{y.ndim - 1}), got {dim}")
        if y.shape[dim] != k:
            raise ValueError(f"y has size {y.shape[dim]} along dim={dim} but A has k={k} rows")
        anchor = (y.movedim(dim, -1) @ A).movedim(-1, dim)
        if shape is not None and tuple(shape) != tuple(anchor.shape):
            raise ValueError(f"shape {tuple(shape)} does not match y and A: expected {tuple(anchor.shape)}")
        shape = tuple(anchor.shape)
    obs = Observation(anchor=anchor, matrix=A, dim=dim)
    return _run(score_fn, sde, shape, obs, method, particles, y, kwargs)


def colorize(
    score_fn: ScoreFn, sde: SDE, gray: Tensor, *, channels: int = 3, weights: Tensor | None = None,
    dim: int = 1, method=None, particles: int | None = None, **kwargs,
) -> SampleResult:
    """Sample colour images whose gray level Σ_c w_c x_c equals ``gray``.

    The observation is y = A x per pixel with A = wᵀ/‖w‖ (one orthonormal row; the reference
    code's decoupling matrix has this first column for w = (⅓, ⅓, ⅓)), y = gray / ‖w‖.

    Args:
        gray: (B, 1, H, W) (size 1 along ``dim``), in the data's scale.
        channels: number of colour channels C of the samples.
        weights: (C,) gray-level weights; default the channel mean (1/C each).
        method, particles, **kwargs: as for ``inpaint``.

    Returns:
        SampleResult with samples of shape (B, C, H, W) ((B·K, C, H, W) with particles).
    Reference: Song et al. 2021, Appendix I.3.
    """
    gray = _float("gray", gray)
    if gray.ndim < 2 or not 1 <= dim < gray.ndim or gray.shape[dim] != 1:
        raise ValueError(f"gray must have size 1 along dim={dim} (e.g. (B, 1, H, W)), "
                         f"got shape {tuple(gray.shape)}")
    if not isinstance(channels, int) or channels < 2:
        raise ValueError(f"channels must be an integer >= 2, got {channels!r}")
    w = torch.full((channels,), 1.0 / channels, dtype=torch.float64) if weights is None else (
        torch.as_tensor(weights, dtype=torch.float64).flatten())
    if w.shape != (channels,) or not float(w.norm()) > 0:
        raise ValueError(f"weights must be {channels} numbers, not all zero; got {w.tolist()}")
    A = (w / w.norm()).reshape(1, channels)
    return linear_inverse(score_fn, sde, gray / float(w.norm()), A.to(gray.dtype), dim=dim,
                          method=method, particles=particles, **kwargs)
