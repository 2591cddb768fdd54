"""Randomness for samplers: only ever through an argument.

``Noise`` hands out standard-normal tensors shaped like the state, one *draw* at a time.  It is
backed either by a ``torch.Generator`` (fast; a sample depends on its position in the batch) or
by per-sample integer seeds, where draw number j for sample i is a pure function of
(seed_i, j, element): a counter-based generator (SplitMix64 finaliser + Box-Muller) written in
torch integer ops, so a sample is the same whatever batch it is drawn in, on any device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["Noise", "counter_normal"]

_GOLDEN = -7046029254386353131  # 0x9E3779B97F4A7C15 as signed int64
_M1 = -4658895280553007687  # 0xBF58476D1CE4E5B9
_M2 = -7723592293110705685  # 0x94D049BB133111EB


def _shr(x: Tensor, k: int) -> Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def _mix(x: Tensor) -> Tensor:
    """SplitMix64 finaliser (bijective avalanche mix of 64-bit words); int64 wraps on overflow."""
    x = (x ^ _shr(x, 30)) * _M1
    x = (x ^ _shr(x, 27)) * _M2
    return x ^ _shr(x, 31)


def _uniform(bits: Tensor) -> Tensor:
    """Top 53 bits -> float64 uniform in (0, 1)."""
    return (_shr(bits, 11).to(torch.float64) + 0.5) * (1.0 / (1 << 53))


def counter_normal(
    seeds: Tensor, draw: int, numel: int, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Standard normals of shape (len(seeds), numel), a pure function of (seed, draw, index).

    Box-Muller on two hashed 53-bit uniforms per element; exact up to float64 rounding.
    """
    idx = torch.arange(numel, device=seeds.device, dtype=torch.int64)
    step = torch.full((), draw + 1, dtype=torch.int64, device=seeds.device) * _GOLDEN  # wraps
    key = _mix(_mix(seeds.unsqueeze(1) + step) + (2 * idx + 1) * _GOLDEN)
    u1 = _uniform(_mix(key))
    u2 = _uniform(_mix(key ^ _M1))
    z = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos((2.0 * math.pi) * u2)
    return z.to(dtype)


class Noise:
    """A source of N(0, I) draws shaped like the sampler state.

    Args:
        generator: a ``torch.Generator`` on the sampling device (or None for torch's global RNG).
        seeds: one integer seed per sample (batch-invariant mode); excludes ``generator``.
        device, dtype: of the draws.
    """

    def __init__(
        self,
        generator: torch.Generator | None = None,
        seeds: Sequence[int] | Tensor | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ):
        if generator is not None and seeds is not None:
            raise ValueError("pass either generator= or seeds=, not both")
        self.generator = generator
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.dtype = dtype
        self.seeds = None
        if seeds is not None:
            s = torch.as_tensor(list(seeds) if not isinstance(seeds, Tensor) else seeds)
            if s.ndim != 1 or s.dtype.is_floating_point:
                raise ValueError("seeds must be a 1-D sequence of integers, one per sample")
            self.seeds = s.to(device=self.device, dtype=torch.int64)
        self.draws = 0

    def __call__(self, shape: Sequence[int], std: float = 1.0) -> Tensor:
        """The next draw of N(0, std² I) of the given shape (shape[0] is the batch).

        ``std`` is applied while drawing (no extra pass over the tensor); the result is a fresh
        tensor the caller owns, so samplers may accumulate into it in place."""
        shape = tuple(shape)
        self.draws += 1
        if self.seeds is None:
            out = torch.empty(shape, device=self.device, dtype=self.dtype)
            return out.normal_(0.0, std, generator=self.generator)
        if shape[0] != self.seeds.shape[0]:
            raise ValueError(f"seeds has {self.seeds.shape[0]} entries but the batch is {shape[0]}")
        numel = math.prod(shape[1:])
        z = counter_normal(self.seeds, self.draws, numel, torch.float64)
        return (z if std == 1.0 else z * std).to(self.dtype).reshape(shape)

    def like(self, x: Tensor) -> Tensor:
        return self(x.shape)
