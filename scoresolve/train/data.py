"""Training data that needs no download: 2-D toy sets and scikit-learn's 8×8 digits.

Every set is returned *scaled*: x = (raw − shift) / scale, so that the data lie in [−1, 1] (up to
the Gaussian tails of the noisy toy sets); the inverse is raw = scale · x + shift
(``to_raw(name, x)``).  The scale of each set:

    name          raw coordinates                                   scale  shift
    ring8         GaussianMixture.ring(8, radius=2, std=0.1)         2.5    0
    moons         two interleaving half-circles (sklearn's), noise 0.05   1.6    (0.5, 0.25)
    swiss_roll    (t cos t, t sin t), t ∈ [1.5π, 4.5π], noise 0.3    15     0
    checkerboard  8 unit-square cells of a 4×4 board on [−4, 4]²     4      0
    digits        sklearn.datasets.load_digits pixels in [0, 16]     8      8

so e.g. digit pixels are x = raw/8 − 1.  The toy sets are drawn with fixed seeds (train: 20,000
points, seed 0; test: 5,000, seed 1); digits are split deterministically: the first 1,500 images
train, the last 297 test.  Shapes: toy (N, 2), digits (N, 1, 8, 8), float32.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..targets import GaussianMixture

__all__ = ["DatasetSpec", "DATASETS", "SPLITS", "load_dataset", "to_raw", "from_raw", "toy_sampler",
           "exact_target"]

SPLITS = {"train": (20_000, 0), "test": (5_000, 1)}  # toy sets: (size, seed)
DIGITS_TRAIN = 1500


def _ring8() -> GaussianMixture:
    return GaussianMixture.ring(k=8, radius=2.0 / 2.5, std=0.1 / 2.5)


def _moons(n: int, g: torch.Generator) -> Tensor:
    theta = math.pi * torch.rand(n, generator=g, dtype=torch.float64)
    inner = torch.rand(n, generator=g, dtype=torch.float64) < 0.5
    x = torch.where(inner, 1.0 - theta.cos(), theta.cos())
    y = torch.where(inner, 0.5 - theta.sin(), theta.sin())
    return torch.stack([x, y], 1) + 0.05 * torch.randn(n, 2, generator=g, dtype=torch.float64)


def _swiss_roll(n: int, g: torch.Generator) -> Tensor:
    t = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=g, dtype=torch.float64))
    return torch.stack([t * t.cos(), t * t.sin()], 1) + 0.3 * torch.randn(n, 2, generator=g, dtype=torch.float64)


def _checkerboard(n: int, g: torch.Generator) -> Tensor:
    cells = torch.tensor([(i, j) for i in range(4) for j in range(4) if (i + j) % 2 == 0], dtype=torch.float64)
    k = torch.randint(len(cells), (n,), generator=g)
    return 2.0 * (cells[k] + torch.rand(n, 2, generator=g, dtype=torch.float64) - 2.0)


@dataclass(frozen=True)
class DatasetSpec:
    """A data set: item shape, the affine map raw = scale · x + shift, and (for toy sets) a
    sampler of fresh raw points."""

    name: str
    item_shape: tuple[int, ...]
    scale: float
    shift: tuple[float, ...] | float
    raw_sampler: Callable[[int, torch.Generator], Tensor] | None = None
    description: str = ""

    def _shift(self, x: Tensor) -> Tensor | float:
        return self.shift if isinstance(self.shift, float) else torch.tensor(self.shift, dtype=x.dtype,
                                                                            device=x.device)

    def to_raw(self, x: Tensor) -> Tensor:
        return x * self.scale + self._shift(x)

    def from_raw(self, raw: Tensor) -> Tensor:
        return (raw - self._shift(raw)) / self.scale


DATASETS: dict[str, DatasetSpec] = {
    "ring8": DatasetSpec("ring8", (2,), 2.5, 0.0, lambda n, g: GaussianMixture.ring(8, 2.0, 0.1).sample(
        n, generator=g, dtype=torch.float64), "8 Gaussians of std 0.1 on a circle of radius 2"),
    "moons": DatasetSpec("moons", (2,), 1.6, (0.5, 0.25), _moons, "two moons, noise 0.05"),
    "swiss_roll": DatasetSpec("swiss_roll", (2,), 15.0, 0.0, _swiss_roll, "2-D swiss roll, noise 0.3"),
    "checkerboard": DatasetSpec("checkerboard", (2,), 4.0, 0.0, _checkerboard, "4x4 checkerboard on [-4, 4]^2"),
    "digits": DatasetSpec("digits", (1, 8, 8), 8.0, 8.0, None, "scikit-learn 8x8 digits (1,797 images)"),
}


def _spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid choices: {', '.join(DATASETS)}")
    return DATASETS[name]


def toy_sampler(name: str) -> Callable[[int, torch.Generator], Tensor]:
    """A callable (n, generator) -> n fresh scaled points of a toy set (usable as ``fit``'s data)."""
    spec = _spec(name)
    if spec.raw_sampler is None:
        raise ValueError(f"dataset {name!r} is a fixed set, not a sampler; use load_dataset({name!r})")

    def sample(n: int, generator: torch.Generator | None = None) -> Tensor:
        return spec.from_raw(spec.raw_sampler(n, generator)).to(torch.float32)

    sample.__qualname__ = f"toy_sampler({name!r})"
    return sample


def _digits() -> tuple[Tensor, Tensor]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError("the digits data set needs scikit-learn: pip install 'scoresolve[images]'") from None
    d = load_digits()
    return torch.as_tensor(d.images, dtype=torch.float32).unsqueeze(1), torch.as_tensor(d.target)


def load_dataset(name: str, split: str = "train", *, return_labels: bool = False):
    """The scaled data set ``name`` ("ring8", "moons", "swiss_roll", "checkerboard", "digits").

    Args:
        name: a key of ``DATASETS``.
        split: "train" or "test" (deterministic: fixed seeds; digits' last 297 images are test).
        return_labels: also return the digit labels (digits only).

    Returns:
        float32 tensor (N, *item_shape) in [−1, 1] (raw = scale · x + shift, see ``to_raw``);
        with ``return_labels`` a pair (x, labels).
    """
    spec = _spec(name)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid choices: {', '.join(SPLITS)}")
    if name == "digits":
        x, y = _digits()
        sl = slice(0, DIGITS_TRAIN) if split == "train" else slice(DIGITS_TRAIN, None)
        x, y = spec.from_raw(x[sl]), y[sl]
        return (x, y) if return_labels else x
    if return_labels:
        raise ValueError(f"return_labels is for the digits data set only, not {name!r}")
    n, seed = SPLITS[split]
    return toy_sampler(name)(n, torch.Generator().manual_seed(seed))


def to_raw(name: str, x: Tensor) -> Tensor:
    """Undo the scaling: raw = scale · x + shift (e.g. digits back to pixels in [0, 16])."""
    return _spec(name).to_raw(x)


def from_raw(name: str, raw: Tensor) -> Tensor:
    """Apply the scaling: x = (raw − shift) / scale."""
    return _spec(name).from_raw(raw)


def exact_target(name: str) -> GaussianMixture | None:
    """The exact density of a data set in scaled coordinates where one exists (ring8: the ring
    GaussianMixture.ring(8, radius=0.8, std=0.04)), else None."""
    _spec(name)
    return _ring8() if name == "ring8" else None
