"""Sample quality for a benchmark cell: every metric, its noise floor, and the ratio to it.

The truth a sampler is judged against is the distribution its output is meant to follow:
with ``denoise`` (the Tweedie step x̂_0 = E[x_0 | x_eps]) the data distribution itself, without
it p_eps = ``target.diffused(eps, sde)`` (for VE that is the data smoothed by σ(eps) ≈ σ_min).
The same truth gives the floor (exact sample sets of the same size) and the reference sets.

Metrics (all small-is-better): the whole of ``scoresolve.metrics`` for analytic problems
(component_w2, mode_tv, mean_err, cov_err, sliced_w2, mmd, logp_gap), plus the closed-form
W2 and KL between the samples' Gaussian moment fit and the truth's moments (``gauss_w2``,
``gauss_kl``: exact for the single-Gaussian problem).  User problems (reference samples only)
get the two-sample ones: sliced_w2, mmd, mean_err, cov_err, gauss_w2 (moments of a disjoint
reference subset of the same size).  MMD² (quadratic cost) uses the first ``mmd_samples``
(2000) of each set, in the floor as in the cells.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from .. import metrics as M
from ..sde import SDE
from ..targets import GaussianMixture
from .problems import Problem

__all__ = ["ANALYTIC_METRICS", "SAMPLE_METRICS", "SIGNED_METRICS", "available_metrics", "Judge", "gaussian_kl",
           "ratio"]

ANALYTIC_METRICS = M.TARGET_METRICS + M.TWO_SAMPLE_METRICS + ("gauss_w2", "gauss_kl")
SAMPLE_METRICS = ("sliced_w2", "mmd", "mean_err", "cov_err", "gauss_w2")
_MAX_DIM_GAUSS_W2 = 1024  # eigendecompositions of d×d covariances; skipped by default above this


def available_metrics(problem: Problem) -> tuple[str, ...]:
    return ANALYTIC_METRICS if problem.analytic else SAMPLE_METRICS


def default_metrics(problem: Problem) -> tuple[str, ...]:
    names = available_metrics(problem)
    if problem.dim > _MAX_DIM_GAUSS_W2:
        names = tuple(m for m in names if m not in ("gauss_w2", "gauss_kl", "cov_err"))
    return names


def check_metrics(problem: Problem, names: tuple[str, ...] | None) -> tuple[str, ...]:
    """The metrics to compute for ``problem`` (default: all available); clear error otherwise."""
    if names is None:
        return default_metrics(problem)
    valid = available_metrics(problem)
    bad = [m for m in names if m not in valid]
    if bad:
        kind = "analytic" if problem.analytic else "reference-sample"
        raise ValueError(f"unknown metric(s) {', '.join(map(repr, bad))} for the {kind} problem "
                         f"{problem.name!r}; valid choices: {', '.join(valid)}")
    return tuple(dict.fromkeys(names))


def _moments(x: Tensor) -> tuple[Tensor, Tensor]:
    x = x.detach().flatten(1).to(torch.float64).cpu()
    return x.mean(0), torch.cov(x.T).reshape(x.shape[1], x.shape[1])


def gaussian_kl(mu1: Tensor, c1: Tensor, mu2: Tensor, c2: Tensor) -> float:
    """KL(N(μ1, C1) ‖ N(μ2, C2)) = ½ [tr(C2⁻¹C1) + (μ2−μ1)ᵀC2⁻¹(μ2−μ1) − d + log det C2 − log det C1]."""
    l2 = torch.linalg.cholesky(c2)
    a = torch.cholesky_solve(c1, l2)
    dm = (mu2 - mu1).unsqueeze(1)
    quad = float((dm * torch.cholesky_solve(dm, l2)).sum())
    logdet2 = 2 * float(torch.log(torch.diagonal(l2)).sum())
    sign, logdet1 = torch.linalg.slogdet(c1)
    if float(sign) <= 0:
        return math.inf
    return 0.5 * (float(a.trace()) + quad - c1.shape[0] + logdet2 - float(logdet1))


SIGNED_METRICS = ("mmd",)  # unbiased estimators whose floor mean is ≈ 0 (can be negative)


def ratio(value: float | None, floor: tuple[float, float], metric: str = "") -> tuple[float | None, str]:
    """(value / floor mean, "mean") for the non-negative metrics; for signed ones (unbiased
    MMD², floor mean ≈ 0) the distance from the floor in floor sds, ((value − mean) / sd, "sd").
    Either way ≤ 2 reads "within 2× of the floor"."""
    mean, sd = floor
    if value is None:
        return None, "mean"
    if not math.isfinite(value):
        return math.inf, "mean"
    if metric in SIGNED_METRICS:
        return ((value - mean) / sd if math.isfinite(sd) and sd > 0 else None), "sd"
    return (value / mean if mean > 0 else None), "mean"


@dataclass(frozen=True, eq=False)
class Judge:
    """Scores n samples of one (problem, sde, denoise, eps) against their truth.

    Args:
        problem: the problem.
        sde: the SDE of the run (for the diffused truth without denoising).
        n: samples per cell (the floor uses sets of the same size).
        metrics: names from ``available_metrics(problem)``.
        denoise: whether the sampler returns the Tweedie-denoised x̂_0.
        eps: the end time of the sampler.
        mmd_samples: MMD² uses the first ``mmd_samples`` of each set (its cost is quadratic).
    """

    problem: Problem
    sde: SDE
    n: int
    metrics: tuple[str, ...]
    denoise: bool = True
    eps: float = 1e-3
    mmd_samples: int = 2000

    @cached_property
    def truth(self) -> GaussianMixture | None:
        tgt = self.problem.target
        if tgt is None or self.denoise:
            return tgt
        return tgt.diffused(self.eps, self.sde)

    def _reference(self, generator: torch.Generator, offset: int = 0) -> Tensor:
        if self.truth is not None:
            return self.truth.sample(self.n, generator=generator, dtype=torch.float64)
        ref = self.problem.reference
        perm = torch.randperm(ref.shape[0], generator=generator)
        return ref[perm[offset : offset + self.n]]

    def evaluate(self, x: Tensor, seed: int) -> dict[str, float]:
        """Every metric of ``x`` (n, *shape); the reference set is drawn with ``seed``."""
        g = torch.Generator().manual_seed(10_000_019 + seed)
        return self._evaluate(x.detach().cpu().flatten(1), self._reference(g))

    def _evaluate(self, x: Tensor, ref: Tensor, want: tuple[str, ...] | None = None) -> dict[str, float]:
        out: dict[str, float] = {}
        want = self.metrics if want is None else want
        truth = self.truth
        k = self.mmd_samples
        if "sliced_w2" in want:
            out["sliced_w2"] = M.sliced_wasserstein(x, ref.flatten(1))
        if "mmd" in want:
            out["mmd"] = M.mmd(x[:k], ref.flatten(1)[:k])
        if truth is not None:
            if "component_w2" in want:
                out["component_w2"] = M.component_w2(x, truth)
            if "mode_tv" in want:
                out["mode_tv"] = M.mode_weight_tv(x, truth)
            if "mean_err" in want or "cov_err" in want:
                out["mean_err"], out["cov_err"] = M.mean_cov_error(x, truth)
            if "logp_gap" in want:
                out["logp_gap"] = M.logp_gap(x, truth, ref)
            mu_t, c_t = truth.mean(), truth.cov()
        else:
            mu_t, c_t = _moments(ref)
        if any(m in want for m in ("gauss_w2", "gauss_kl", "mean_err", "cov_err")):
            mu, c = _moments(x)
            if "gauss_w2" in want:
                out["gauss_w2"] = M.gaussian_w2(mu, c, mu_t, c_t)
            if "gauss_kl" in want:
                out["gauss_kl"] = gaussian_kl(mu, c, mu_t, c_t)
            if truth is None and "mean_err" in want:
                out["mean_err"] = float((mu - mu_t).norm())
            if truth is None and "cov_err" in want:
                out["cov_err"] = float((c - c_t).norm() / c_t.norm())
        return {m: float(out[m]) for m in want}

    def floor(self, repeats: int = 8, seed: int = 12345) -> dict[str, tuple[float, float]]:
        """{metric: (mean, sd)} over ``repeats`` exact sample sets of size n, each against an
        independent exact reference set of the same size; ``logp_gap``'s in closed form
        (``metrics.logp_gap_floor``)."""
        if repeats < 2:
            raise ValueError(f"floor repeats must be >= 2 (for an sd), got {repeats}")
        g = torch.Generator().manual_seed(seed)
        closed = "logp_gap" in self.metrics and self.truth is not None  # (closed form below; the draws stay)
        want = tuple(m for m in self.metrics if not (closed and m == "logp_gap"))
        vals: dict[str, list[float]] = {m: [] for m in want}
        for _ in range(repeats):
            if self.truth is not None:
                x, ref = self._reference(g), self._reference(g)
            else:  # two disjoint subsets of the reference samples
                perm = torch.randperm(self.problem.reference.shape[0], generator=g)
                x = self.problem.reference[perm[: self.n]]
                ref = self.problem.reference[perm[self.n : 2 * self.n]]
            for k, v in self._evaluate(x.flatten(1), ref, want).items():
                vals[k].append(v)
        out = {}
        for k, v in vals.items():
            t = torch.tensor(v, dtype=torch.float64)
            out[k] = (float(t.mean()), float(t.std()))
        if closed:  # the repeats' mean of it is off by ~27 %
            out["logp_gap"] = M.logp_gap_floor(self.truth, self.n)
        return {m: out[m] for m in self.metrics}
