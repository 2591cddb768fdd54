"""Benchmark problems: analytic mixtures with exact scores, and users' own score functions.

A ``Problem`` bundles what a cell needs: a score factory ``sde -> score_fn``, the data shape,
and the ground truth the samples are judged against: an exact ``GaussianMixture`` (analytic
problems: every metric has a noise floor from exact samples) or a tensor of reference
samples (user problems: two-sample metrics, floor from disjoint reference subsets).

Analytic names: ``ring8`` (8 components on a circle of radius 2, std 0.1), ``grid`` (5×5
components 2 apart, std 0.1), ``gmm16`` / ``gmm64`` (``GaussianMixture.random(d, 10,
anisotropic=True)``: 10 components with rotated per-direction stds in [0.1, 0.5]), ``gauss``
(one anisotropic Gaussian in d=16, stds log-spaced in [0.1, 1]); ``gmm<d>`` and ``gauss<d>``
give other dimensions.
"""

from __future__ import annotations

import importlib
import inspect
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from ..sde import SDE, SDES
from ..targets import GaussianMixture

__all__ = [
    "Problem",
    "PROBLEMS",
    "analytic_problem",
    "user_problem",
    "run_dir_problem",
    "load_callable",
    "load_reference",
    "make_sde",
]


@dataclass(frozen=True, eq=False)
class Problem:
    """One benchmark problem.

    Attributes:
        name: label used in cell keys, file names and the report.
        shape: data shape without the batch dimension.
        score_for: sde -> score_fn(x, t).
        target: the exact data distribution (analytic problems), else None.
        reference: (N, *shape) exact samples (user problems), else None.
        sde: the SDE the score belongs to (user problems), or None (any SDE).
        description: one line for the report.
    """

    name: str
    shape: tuple[int, ...]
    score_for: Callable[[SDE], Callable]
    target: GaussianMixture | None = None
    reference: Tensor | None = None
    sde: SDE | None = None
    description: str = ""
    info: dict = field(default_factory=dict)

    @property
    def analytic(self) -> bool:
        return self.target is not None

    @property
    def dim(self) -> int:
        return math.prod(self.shape)


def _gauss(dim: int, seed: int = 0) -> GaussianMixture:
    """N(μ, Σ) in R^dim: μ ~ N(0, I), Σ = Q diag(s²) Qᵀ with s log-spaced in [0.1, 1]."""
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(1, dim, generator=g, dtype=torch.float64)
    q, r = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    s = torch.logspace(-1, 0, dim, dtype=torch.float64)
    return GaussianMixture(torch.ones(1), mu, (q @ torch.diag(s * s) @ q.T).unsqueeze(0))


def _gmm(dim: int) -> GaussianMixture:
    return GaussianMixture.random(dim, 10, seed=0, anisotropic=True)


def _mix(dim: int, seed: int) -> GaussianMixture:
    """A hard random mixture for held-out checks: k ∈ [2, 8] components (drawn), weights
    log-normal then shifted so the smallest is exactly 0.05, means ~ N(0, 2² I), rotated
    per-direction stds log-uniform in [0.05, 0.5] with both ends attained (a 10× span)."""
    g = torch.Generator().manual_seed(1_000 + seed)
    k = int(torch.randint(2, 9, (1,), generator=g))
    raw = torch.randn(k, generator=g, dtype=torch.float64).exp()
    raw = raw - raw.min()
    w = 0.05 + (1 - 0.05 * k) * raw / raw.sum()
    means = 2.0 * torch.randn(k, dim, generator=g, dtype=torch.float64)
    stds = 0.05 * 10 ** torch.rand(k, dim, generator=g, dtype=torch.float64)
    stds.view(-1)[0], stds.view(-1)[-1] = 0.05, 0.5
    q, r = torch.linalg.qr(torch.randn(k, dim, dim, generator=g, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r, dim1=1, dim2=2)).unsqueeze(1)
    return GaussianMixture(w, means, q @ torch.diag_embed(stds**2) @ q.transpose(1, 2))


def _two(dim: int) -> GaussianMixture:
    """Two anisotropic components, weights 0.8 / 0.2, stds 0.05…0.5 (10×) along rotated axes."""
    g = torch.Generator().manual_seed(dim)
    means = torch.zeros(2, dim, dtype=torch.float64)
    means[0, 0], means[1, 0] = -1.0, 1.5
    stds = torch.stack([torch.logspace(math.log10(0.05), math.log10(0.5), dim, dtype=torch.float64),
                        torch.logspace(math.log10(0.5), math.log10(0.05), dim, dtype=torch.float64)])
    q, r = torch.linalg.qr(torch.randn(2, dim, dim, generator=g, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r, dim1=1, dim2=2)).unsqueeze(1)
    return GaussianMixture(torch.tensor([0.8, 0.2], dtype=torch.float64), means,
                           q @ torch.diag_embed(stds**2) @ q.transpose(1, 2))


PROBLEMS: dict[str, tuple[Callable[[], GaussianMixture], str]] = {
    "ring8": (lambda: GaussianMixture.ring(8, 2.0, 0.1),
              "8 isotropic components on a circle, radius 2, std 0.1"),
    "grid": (lambda: GaussianMixture.grid(5, 2.0, 0.1), "5x5 isotropic components, spacing 2, std 0.1"),
    "gmm16": (lambda: _gmm(16), "10 anisotropic components in d=16 (random(16, 10, seed=0))"),
    "gmm64": (lambda: _gmm(64), "10 anisotropic components in d=64 (random(64, 10, seed=0))"),
    "gauss": (lambda: _gauss(16), "one anisotropic Gaussian in d=16, stds log-spaced in [0.1, 1]"),
}
_PATTERNS = {"gmm": (_gmm, "10 anisotropic components in d={d} (random({d}, 10, seed=0))"),
             "two": (_two, "two anisotropic components in d={d}, weights 0.8/0.2, stds 0.05-0.5"),
             "gauss": (_gauss, "one anisotropic Gaussian in d={d}, stds log-spaced in [0.1, 1]")}


def analytic_problem(name: str) -> Problem:
    """A problem from ``PROBLEMS`` (or ``gmm<d>`` / ``gauss<d>``) with its exact target.

    Raises:
        ValueError: unknown name (the message lists the valid choices).
    """
    if name in PROBLEMS:
        make, desc = PROBLEMS[name]
        target = make()
    else:
        m = re.fullmatch(r"(gmm|gauss|two)(\d+)", name)
        h = re.fullmatch(r"mix(\d+)s(\d+)", name)
        if h and int(h.group(1)) >= 1:
            d, seed = int(h.group(1)), int(h.group(2))
            target = _mix(d, seed)
            desc = (f"held-out mixture in d={d}, seed {seed}: {target.n_components} rotated components, "
                    "min weight 0.05, stds 0.05-0.5")
            return Problem(name, (target.dim,), target.score_fn, target=target, description=desc)
        if not m or int(m.group(2)) < 1:
            raise ValueError(f"unknown problem {name!r}; valid choices: {', '.join(PROBLEMS)}, "
                             "gmm<d>, gauss<d>, two<d>, mix<d>s<seed> (or --score module:function / --run DIR)")
        make, desc = _PATTERNS[m.group(1)]
        target = make(int(m.group(2)))
        desc = desc.format(d=int(m.group(2)))
    return Problem(name, (target.dim,), target.score_fn, target=target, description=desc)


# ---------------------------------------------------------------------------------- user input
def make_sde(name: str, options: dict | None = None) -> SDE:
    """An SDE from its name ("vp", "subvp", "ve") and constructor options (e.g. sigma_max)."""
    if name not in SDES:
        raise ValueError(f"unknown sde {name!r}; valid choices: {', '.join(SDES)}")
    try:
        return SDES[name](**(options or {}))
    except TypeError as e:
        raise ValueError(f"bad --sde-opt for {name!r}: {e}") from None


def load_callable(spec: str):
    """Import ``"package.module:attribute"`` (attribute may be dotted)."""
    if spec.count(":") != 1:
        raise ValueError(f"--score must look like 'package.module:function', got {spec!r}")
    mod_name, attr = spec.split(":")
    try:
        obj = importlib.import_module(mod_name)
    except ImportError as e:
        raise ValueError(f"--score {spec!r}: cannot import module {mod_name!r} ({e})") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"--score {spec!r}: module {mod_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"--score {spec!r} is not callable")
    return obj


def _as_score(obj, sde: SDE, device: torch.device):
    """``obj`` is a score (x, t) -> s, or a factory taking no arguments or ``sde=``/``device=``
    keywords that returns one."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return obj
    kwargs = {k: v for k, v in (("sde", sde), ("device", device)) if k in sig.parameters}
    try:
        sig.bind(**kwargs)
    except TypeError:
        return obj  # needs positional arguments: it is the score itself
    score = obj(**kwargs)
    if not callable(score):
        raise ValueError(f"the --score factory returned {type(score).__name__}, not a callable score")
    return score


def load_reference(path: str | Path, shape: tuple[int, ...] | None) -> Tensor:
    """Reference samples from a ``.pt`` (a tensor, or a dict with one tensor / a ``samples``
    entry) or ``.npy`` file, checked against ``shape``; returned as float32 (N, *shape) on CPU."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--reference {str(path)!r}: no such file")
    if path.suffix == ".npy":
        import numpy as np

        ref = torch.from_numpy(np.load(path))
    elif path.suffix in (".pt", ".pth"):
        ref = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(ref, dict):
            tensors = {k: v for k, v in ref.items() if isinstance(v, Tensor)}
            ref = tensors.get("samples", next(iter(tensors.values())) if len(tensors) == 1 else None)
    else:
        raise ValueError(f"--reference {str(path)!r}: expected a .pt or .npy file")
    if not isinstance(ref, Tensor) or not ref.is_floating_point() or ref.ndim < 2:
        raise ValueError(f"--reference {str(path)!r} must hold a float tensor (N, *shape), got "
                         f"{tuple(ref.shape) if isinstance(ref, Tensor) else type(ref).__name__}")
    if shape is not None and tuple(ref.shape[1:]) != tuple(shape):
        want = ", ".join(map(str, shape))
        raise ValueError(f"--reference {str(path)!r} has samples of shape {tuple(ref.shape[1:])}, "
                         f"but --shape is {tuple(shape)} (expected an array (N, {want}))")
    if not bool(torch.isfinite(ref).all()):
        raise ValueError(f"--reference {str(path)!r} contains NaN or Inf")
    return ref.float().contiguous()


def user_problem(spec: str, sde: SDE, reference: Tensor, shape: tuple[int, ...] | None = None,
                 *, name: str | None = None, device="cpu") -> Problem:
    """A problem from a ``module:function`` score (or score factory) and reference samples."""
    obj = load_callable(spec)
    shape = tuple(reference.shape[1:]) if shape is None else tuple(shape)
    score = _as_score(obj, sde, torch.device(device))
    return Problem(name or spec.split(":")[1].split(".")[-1], shape, lambda _sde: score,
                   reference=reference, sde=sde, description=f"user score {spec}",
                   info={"score": spec})


def run_dir_problem(path: str | Path, reference: Tensor | None, *, name: str | None = None) -> Problem:
    """A problem from a ``scoresolve train`` run directory (``scoresolve.train.load_run``); the
    reference defaults to the test split of the run's dataset."""
    try:
        from ..train import load_run
    except ImportError as e:
        raise ValueError(f"--run needs scoresolve.train, which is not available ({e})") from None
    if not Path(path).is_dir():
        raise ValueError(f"--run {str(path)!r}: no such directory")
    run = load_run(path)
    shape = tuple(run.data_shape)
    if reference is None:
        dataset = run.config.get("dataset") if isinstance(run.config, dict) else None
        if dataset is None:
            raise ValueError(f"--run {str(path)!r}: the run names no dataset; pass --reference FILE")
        from ..train.data import load_dataset

        reference = load_dataset(dataset, split="test").float()
    if tuple(reference.shape[1:]) != shape:
        raise ValueError(f"reference samples have shape {tuple(reference.shape[1:])}, but the run "
                         f"{str(path)!r} models data of shape {shape}")
    return Problem(name or Path(path).resolve().name, shape, lambda _sde: run.score_fn,
                   reference=reference, sde=run.sde, description=f"trained run {path}",
                   info={"run": str(path)})
