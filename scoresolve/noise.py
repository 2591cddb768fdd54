"""Randomness for samplers: only ever through an argument.

``Noise`` hands out standard-normal tensors shaped like the state, one *draw* at a time.  It is
backed either by a ``torch.Generator`` (fast; a sample depends on its position in the batch) or
by per-sample integer seeds, where draw number j for sample i is a pure function of
(seed_i, j, element): a counter-based generator (SplitMix64 finaliser + Box-Muller) written in
torch integer ops, so a sample is the same whatever batch it is drawn in, on any device.

On CPU, torch's generator (mt19937, serial) fills a (10000, 64) tensor in ~2 ms, 5-10% of a
cheap score's call.  ``Noise`` therefore draws the *next* large tensor on a worker thread while
the sampler evaluates the score (``_Prefetch``), from a shadow copy of the generator's state, and
hands the caller's generator the state it would have had: the draws, and the generator after the
run, are bit-identical to drawing them in line.
"""

from __future__ import annotations

import math
import threading
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


class _Prefetch:
    """The next N(0, I) draw of a CPU generator, made on a worker thread.

    ``take`` returns it only if it is what the caller asks for now (same shape and dtype) and the
    caller's generator is still in the state it was copied from (nothing else drew from it, e.g.
    the score); otherwise None, and the caller draws in line.  normal_(0, 1) scaled by std equals
    normal_(0, std) bit for bit (torch computes r cos(θ)·std + mean), so scaling afterwards is exact.
    """

    def __init__(self, generator: torch.Generator | None):
        self.generator = generator if generator is not None else torch.default_generator
        self.shadow = torch.Generator()
        self.thread: threading.Thread | None = None
        self.key: tuple | None = None
        self.before: Tensor | None = None
        self.result: tuple[Tensor, Tensor] | None = None

    def _fill(self, shape: tuple[int, ...], dtype: torch.dtype) -> None:
        z = torch.empty(shape, dtype=dtype).normal_(generator=self.shadow)
        self.result = (z, self.shadow.get_state())

    def start(self, shape: tuple[int, ...], dtype: torch.dtype) -> None:
        self.before = self.generator.get_state()
        self.shadow.set_state(self.before)
        self.key, self.result = (shape, dtype), None
        self.thread = threading.Thread(target=self._fill, args=self.key, daemon=True)
        self.thread.start()

    def take(self, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor | None:
        if self.thread is None:
            return None
        self.thread.join()
        self.thread = None
        untouched = torch.equal(self.generator.get_state(), self.before)
        if self.result is None or self.key != (shape, dtype) or not untouched:
            return None
        z, after = self.result
        self.generator.set_state(after)
        return z


class Noise:
    """A source of N(0, I) draws shaped like the sampler state.

    Args:
        generator: a ``torch.Generator`` on the sampling device (or None for torch's global RNG).
        seeds: one integer seed per sample (batch-invariant mode); excludes ``generator``.
        device, dtype: of the draws.
        prefetch: draw the next tensor on a worker thread while the score runs (CPU generators,
            draws of at least ``prefetch_min_numel`` elements); the numbers are the same either way.
    """

    prefetch_min_numel = 1 << 16  # below this a thread costs more than the draw

    def __init__(
        self,
        generator: torch.Generator | None = None,
        seeds: Sequence[int] | Tensor | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        prefetch: bool = True,
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
        self._prefetch = _Prefetch(generator) if prefetch and seeds is None and self.device.type == "cpu" else None

    def __call__(self, shape: Sequence[int], std: float = 1.0) -> Tensor:
        """The next draw of N(0, std² I) of the given shape (shape[0] is the batch).

        ``std`` is applied while drawing (no extra pass over the tensor); the result is a fresh
        tensor the caller owns, so samplers may accumulate into it in place."""
        shape = tuple(shape)
        self.draws += 1
        if self.seeds is None:
            return self._draw(shape, std)
        if shape[0] != self.seeds.shape[0]:
            raise ValueError(f"seeds has {self.seeds.shape[0]} entries but the batch is {shape[0]}")
        numel = math.prod(shape[1:])
        z = counter_normal(self.seeds, self.draws, numel, torch.float64)
        return (z if std == 1.0 else z * std).to(self.dtype).reshape(shape)

    def _draw(self, shape: tuple[int, ...], std: float) -> Tensor:
        pf = self._prefetch
        if pf is None or math.prod(shape) < self.prefetch_min_numel:
            return torch.empty(shape, device=self.device, dtype=self.dtype).normal_(0.0, std, generator=self.generator)
        z = pf.take(shape, self.dtype)
        if z is None:
            z = torch.empty(shape, dtype=self.dtype).normal_(0.0, std, generator=self.generator)
        elif std != 1.0:
            z.mul_(std)
        pf.start(shape, self.dtype)
        return z

    def like(self, x: Tensor) -> Tensor:
        return self(x.shape)
