"""Argument checks of ``sample()``: each raises ValueError / TypeError naming the argument and
its valid range, before any score is evaluated.

Integers may be any integral type (``int``, ``numpy.int64``, a 0-d integer tensor: anything with
``__index__``) but never ``bool``; floats any real number but never ``bool``.
"""

from __future__ import annotations

import numbers
import operator
import warnings
from collections.abc import Sequence

import torch
from torch import Tensor

from .sde import SDE

__all__ = [
    "check_sde", "check_shape", "check_count", "check_eps", "check_device", "check_dtype", "check_generator",
    "check_seeds", "check_x_init", "warn_batch_dependent",
]

INT64 = (-(2**63), 2**63 - 1)


def _as_int(value) -> int | None:
    """``value`` as an int if it is integral and not a bool (else None)."""
    if isinstance(value, bool) or (isinstance(value, Tensor) and value.dtype == torch.bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def check_sde(sde) -> SDE:
    """``sde`` must be a scoresolve SDE instance."""
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be a scoresolve SDE (VPSDE, SubVPSDE, VESDE), got {type(sde).__name__}")
    return sde


def check_shape(shape) -> tuple[int, ...]:
    """``shape`` as (batch, *data_dims) of positive ints; an int n means (n,) (then rejected: no data dim)."""
    items = (shape,) if _as_int(shape) is not None else shape
    if isinstance(items, (str, bytes)) or not isinstance(items, (Sequence, torch.Size)):
        raise TypeError(f"shape must be a tuple of positive ints (batch, *data_dims), got {shape!r}")
    dims = [_as_int(s) for s in items]
    if any(d is None for d in dims):
        raise TypeError(f"shape must be a tuple of positive ints (batch, *data_dims), got {shape!r}")
    if len(dims) < 2 or any(d < 1 for d in dims):
        raise ValueError(f"shape must be (batch, *data_dims) with at least one data dim and sizes >= 1, "
                         f"got {tuple(dims)}")
    return tuple(dims)


def check_count(name: str, value, lo: int = 1) -> int | None:
    """``value`` (None allowed) as an int >= lo; bools and non-integral numbers are refused."""
    if value is None:
        return None
    n = _as_int(value)
    if n is None or n < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")
    return n


def check_eps(eps, sde: SDE) -> float | None:
    """``eps`` (None allowed) as a float in (0, T)."""
    if eps is None:
        return None
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not 0 < float(eps) < sde.T:
        raise ValueError(f"eps must lie in (0, T={sde.T}), got {eps!r}")
    return float(eps)


def check_generator(generator) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")


def check_device(device, x_init: Tensor | None, generator: torch.Generator | None) -> torch.device:
    """The sampling device: ``device``, else x_init's, else the generator's, else CPU."""
    if device is None:
        device = x_init.device if x_init is not None else (generator.device if generator is not None else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be a torch.device or a name such as 'cpu' or 'cuda:0', got {device!r}") from None
    if generator is not None and generator.device.type != device.type:
        raise ValueError(f"generator is on {generator.device} but sampling runs on {device}; "
                         "create it with torch.Generator(device=...)")
    return device


def check_dtype(dtype, x_init: Tensor | None) -> torch.dtype:
    """The sampling dtype: ``dtype``, else x_init's, else torch's default; a floating torch.dtype."""
    if dtype is None:
        dtype = x_init.dtype if x_init is not None else torch.get_default_dtype()
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a floating torch.dtype (e.g. torch.float32), got {dtype!r}")
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating type (float16, bfloat16, float32, float64), got {dtype}")
    return dtype


def check_seeds(seeds, batch: int) -> Tensor | None:
    """``seeds`` as a 1-D int64 tensor with one entry per sample, each in the int64 range."""
    if seeds is None:
        return None
    if isinstance(seeds, Tensor):
        if seeds.dtype.is_floating_point or seeds.dtype.is_complex or seeds.dtype == torch.bool:
            raise TypeError(f"seeds must hold integers, got a {seeds.dtype} tensor")
        values = seeds
    else:
        if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Sequence) and not hasattr(seeds, "__len__"):
            raise TypeError(f"seeds must be a sequence of integers (one per sample), got {type(seeds).__name__}")
        ints = [_as_int(s) for s in seeds]
        if any(i is None for i in ints):
            raise TypeError("seeds must be a sequence of integers (one per sample); got a non-integer entry")
        bad = [i for i in ints if not INT64[0] <= i <= INT64[1]]
        if bad:
            raise ValueError(f"seeds must lie in the int64 range [-2**63, 2**63 - 1], got {bad[0]}")
        values = torch.tensor(ints, dtype=torch.int64)
    if values.ndim != 1:
        raise ValueError(f"seeds must be 1-D (one integer per sample), got shape {tuple(values.shape)}")
    if values.shape[0] != batch:
        raise ValueError(f"seeds must have one entry per sample: {values.shape[0]} given, batch {batch}")
    return values


def check_x_init(x_init, shape: tuple[int, ...]) -> None:
    """``x_init`` (None allowed) must be a finite floating tensor of ``shape``."""
    if x_init is None:
        return
    if not isinstance(x_init, Tensor):
        raise TypeError(f"x_init must be a torch.Tensor of shape {shape}, got {type(x_init).__name__} "
                        "(convert numpy arrays with torch.from_numpy)")
    if not x_init.dtype.is_floating_point:
        raise TypeError(f"x_init must be a floating-point tensor, got {x_init.dtype}")
    if tuple(x_init.shape) != shape:
        raise ValueError(f"x_init has shape {tuple(x_init.shape)}, expected {shape}")
    if not bool(torch.isfinite(x_init).all()):
        raise ValueError("x_init contains NaN/Inf")


def warn_batch_dependent(sampler, seeds) -> None:
    """Warn once when ``seeds=`` is given but the sampler couples the samples of a batch (its
    ``batch_coupling`` says how): then a sample still depends on its batch mates."""
    reason = getattr(sampler, "batch_coupling", None)
    if seeds is not None and reason:
        warnings.warn(f"seeds= makes the noise of each sample batch-independent, but {type(sampler).__name__}: "
                      f"{reason}, so a sample still depends on its batch mates", stacklevel=3)
