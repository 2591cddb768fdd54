"""Score-matching objectives for every SDE: continuous denoising score matching, the discrete
NCSN and DDPM losses, and sliced score matching.

All denoising losses estimate  E_t E_{x_0, z} [ λ(t) ‖s_θ(x_t, t) − ∇ log p(x_t | x_0)‖² ]  with
x_t = m(t) x_0 + σ(t) z, written per sample as w(t) ‖σ s_θ + z‖² with w = λ/σ² divided by the
density of t (so t ~ U[eps, T] estimates the t-average over [eps, T], and importance sampling of t
changes the variance, never the expectation):
    "perceptual"  λ = σ²         (Song et al. 2021's default; = ε-prediction MSE)
    "likelihood"  λ = g²         (Song et al. 2021b: the loss bounds the negative log-likelihood)
Importance sampling draws t from r(t) ∝ λ(t)/σ(t)².  For likelihood weighting g²/σ² = −dλ_snr/dt
for all three SDEs (λ_snr = log m²/σ²), so t is drawn uniformly in log-SNR: no SDE branches.

A loss is called as ``loss(model, x0, generator) -> scalar`` and gives the score callable that
matches its parameterization with ``loss.score_fn(model)``.

Reference: Song et al. 2021, "Score-Based Generative Modeling through SDEs", eq. 7;
Song, Durkan, Murray & Ermon 2021, "Maximum Likelihood Training of Score-Based Diffusion
Models", §4 (likelihood weighting, importance sampling); Song & Ermon 2019 (NCSN), eq. 5;
Ho et al. 2020 (DDPM), eq. 14; Song, Garg, Shi & Ermon 2019, "Sliced Score Matching", eq. 8.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..ncsn import geometric_sigmas
from ..score import ScoreFn
from ..sde import SDE, VESDE
from .parameterization import Parameterization, resolve_sde, sde_config, sde_from_config

__all__ = [
    "TimeSampler", "DenoisingLoss", "SlicedScoreLoss", "dsm_loss", "ncsn_loss", "ddpm_loss",
    "ssm_loss", "loss_from_config", "LOSSES", "WEIGHTINGS", "T_SAMPLINGS", "REDUCTIONS",
]

WEIGHTINGS = ("perceptual", "likelihood")
T_SAMPLINGS = ("uniform", "importance")
REDUCTIONS = ("mean", "sum")


def _choice(arg: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"unknown {arg} {value!r}; valid choices: {', '.join(choices)}")


def _check_eps(eps, sde: SDE) -> float:
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not 0 < eps < sde.T:
        raise ValueError(f"eps (the smallest training time) must lie in (0, T={sde.T}), got {eps!r}")
    return float(eps)


@dataclass(frozen=True)
class TimeSampler:
    """Draws training times and their weights w = λ/σ² / ((T − eps) r(t)).

    ``levels`` (float64 times) replaces the continuous range by a uniform choice among discrete
    levels (NCSN σ levels, DDPM steps); weighting is then "perceptual" (w = 1).
    """

    sde: SDE
    weighting: str = "perceptual"
    sampling: str = "uniform"
    eps: float = 1e-5
    levels: Tensor | None = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        _choice("weighting", self.weighting, WEIGHTINGS)
        _choice("t_sampling", self.sampling, T_SAMPLINGS)

    def weight(self, t: Tensor) -> Tensor:
        """λ(t)/σ(t)² (float64): 1 for "perceptual", g²/σ² for "likelihood"."""
        if self.weighting == "perceptual":
            return torch.ones_like(t)
        return self.sde.diffusion(t) ** 2 / self.sde.std(t) ** 2

    def draw(self, n: int, generator: torch.Generator | None, device) -> tuple[Tensor, Tensor]:
        """(t, w), both float64 of shape (n,)."""
        u = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
        if self.levels is not None:
            lv = self.levels.to(device)
            return lv[(u * len(lv)).long().clamp_max(len(lv) - 1)], torch.ones_like(u)
        T, eps = self.sde.T, self.eps
        if self.sampling == "importance" and self.weighting == "likelihood":
            lo, hi = self.sde.log_snr(T), self.sde.log_snr(eps)  # r(t) ∝ −dλ_snr/dt
            t = self.sde.t_from_log_snr(lo + u * (hi - lo)).clamp(eps, T)
            return t, torch.full_like(u, (hi - lo) / (T - eps))
        # uniform t (also importance sampling for "perceptual", where r ∝ λ/σ² is constant)
        t = eps + (T - eps) * u
        return t, self.weight(t)


def _reduce(v: Tensor, reduction: str) -> Tensor:
    v = v.flatten(1)
    return v.mean(1) if reduction == "mean" else v.sum(1)


class _Loss:
    """Shared parts: the parameterization's score_fn and the config that rebuilds the loss."""

    param: Parameterization
    spec: dict

    @property
    def sde(self) -> SDE | None:
        return self.param.sde

    def score_fn(self, model: nn.Module) -> ScoreFn:
        """The score callable (x, t) -> ∇ log p_t(x) of a model trained with this loss."""
        return self.param.score_fn(model)

    def config(self) -> dict:
        """JSON-able; ``loss_from_config(loss.config())`` rebuilds an equal loss."""
        sde = None if self.sde is None else sde_config(self.sde)
        return {**self.spec, "sde": sde}

    def __call__(self, model: nn.Module, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return self.per_sample(model, x0, generator).mean()


@dataclass(frozen=True)
class DenoisingLoss(_Loss):
    """w(t) ‖σ s_θ(x_t, t) + z‖² averaged over the batch (the reduction is over data dims)."""

    param: Parameterization
    times: TimeSampler
    reduction: str = "mean"
    spec: dict = field(default_factory=dict, compare=False, repr=False)

    def per_sample(self, model: nn.Module, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The loss of each sample, shape (B,)."""
        t, w = self.times.draw(x0.shape[0], generator, x0.device)
        z = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        m, s = self.param.coeffs(t, x0.ndim, x0.dtype)
        out = self.param.net_output(model, m * x0 + s * z, t, m, s)
        r = self.param.residual(out, x0, z, m, s)
        return w.to(x0.dtype) * _reduce(r * r, self.reduction)


@dataclass(frozen=True)
class SlicedScoreLoss(_Loss):
    """w σ² [2 vᵀ∇_x(vᵀ s_θ) + ‖s_θ‖²] (SSM-VR, v ~ N(0, I)), or with ``variance_reduction=False``
    w σ² [2 vᵀ∇_x(vᵀ s_θ) + (vᵀ s_θ)²]: equal to the denoising loss up to a constant in θ, without
    using the perturbation kernel's score.  Without an SDE it fits the score of the data itself
    (no noise at all; the model is queried at t = 0)."""

    param: Parameterization
    times: TimeSampler | None
    reduction: str = "mean"
    n_projections: int = 1
    variance_reduction: bool = True
    spec: dict = field(default_factory=dict, compare=False, repr=False)

    def per_sample(self, model: nn.Module, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        b = x0.shape[0]
        if self.times is None:
            t = torch.zeros(b, device=x0.device, dtype=torch.float64)
            w = torch.ones_like(t)
            m, s = self.param.coeffs(t, x0.ndim, x0.dtype)
            x = x0.detach().clone()
        else:
            t, w = self.times.draw(b, generator, x0.device)
            m, s = self.param.coeffs(t, x0.ndim, x0.dtype)
            z = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
            x = m * x0 + s * z
            w = w * self.sde.std(t) ** 2
        x.requires_grad_(True)
        score = self.param.score(self.param.net_output(model, x, t, m, s), x, m, s)
        total = torch.zeros(b, device=x0.device, dtype=x0.dtype)
        for _ in range(self.n_projections):
            v = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
            (jvp,) = torch.autograd.grad((score * v).sum(), x, create_graph=True)
            if self.variance_reduction:
                quad = _reduce(score * score, self.reduction)
            else:  # (vᵀs)² is a full contraction: "mean" divides it by the dimension, like ‖s‖²
                per_dim = 1.0 if self.reduction == "sum" else x0[0].numel()
                quad = (score * v).flatten(1).sum(1) ** 2 / per_dim
            total = total + _reduce(2 * jvp * v, self.reduction) + quad
        return w.to(x0.dtype) * total / self.n_projections


def _param(sde, parameterization, scale_by_sigma, scale_input) -> Parameterization:
    return Parameterization(sde, parameterization, scale_by_sigma, scale_input)


def dsm_loss(
    sde: SDE | str, *, weighting: str = "perceptual", t_sampling: str = "uniform", eps: float = 1e-5,
    reduction: str = "mean", parameterization: str = "epsilon", scale_by_sigma: bool = False,
    scale_input: bool = True,
) -> DenoisingLoss:
    """Continuous-time denoising score matching, (1/(T−eps)) ∫ λ(t) E‖s_θ(x_t,t) − ∇log p(x_t|x_0)‖² dt.

    Args:
        sde: an SDE or a name ("vp", "subvp", "ve").
        weighting: "perceptual" (λ = σ²) or "likelihood" (λ = g²).
        t_sampling: "uniform" or "importance" (r(t) ∝ λ/σ²; variance reduction).
        eps: smallest training time, > 0 (the reference code trains with 1e-5).
        reduction: "mean" or "sum" over the data dimensions.
        parameterization: what the network outputs: "epsilon", "score" or "x0".
        scale_by_sigma: score = output/σ (NCSNv2), for parameterization="score".
        scale_input: feed x_t/√(m² + σ²) to the network.

    Raises:
        ValueError naming the argument and the valid choices.
    Reference: Song et al. 2021, eq. 7; Song et al. 2021b, Thm. 1 and §4.2.
    """
    sde = resolve_sde(sde)
    eps = _check_eps(eps, sde)
    _choice("reduction", reduction, REDUCTIONS)
    spec = dict(kind="dsm", weighting=weighting, t_sampling=t_sampling, eps=eps, reduction=reduction,
                parameterization=parameterization, scale_by_sigma=scale_by_sigma, scale_input=scale_input)
    return DenoisingLoss(_param(sde, parameterization, scale_by_sigma, scale_input),
                         TimeSampler(sde, weighting, t_sampling, eps), reduction, spec)


def ncsn_loss(
    sde: VESDE | str = "ve", *, n_levels: int = 10, reduction: str = "sum",
    parameterization: str = "score", scale_by_sigma: bool = True, scale_input: bool = True,
) -> DenoisingLoss:
    """The NCSN loss over L geometric noise levels σ_1 = σ_max > ... > σ_L = σ_min of a VE SDE,
    (1/L) Σ_i σ_i² E‖s_θ(x_0 + σ_i z, σ_i) + z/σ_i‖² (the paper's constant ½ dropped).

    Level σ_i is the VE time t_i = log(σ_i/σ_min)/log(σ_max/σ_min), so the network is conditioned
    on t like every other loss here and its score_fn serves all samplers.
    Reference: Song & Ermon 2019, eqs. 5-6; NCSNv2 (Song & Ermon 2020) for scale_by_sigma.
    """
    sde = resolve_sde(sde)
    if not isinstance(sde, VESDE):
        raise ValueError(f"ncsn_loss needs a VE SDE (noise levels σ around the data), got sde={sde.name!r}")
    if not isinstance(n_levels, int) or n_levels < 2:
        raise ValueError(f"n_levels must be an integer >= 2, got {n_levels!r}")
    _choice("reduction", reduction, REDUCTIONS)
    sig = geometric_sigmas(sde.sigma_max, sde.sigma_min, n_levels)
    levels = (sig / sde.sigma_min).log() / math.log(sde.sigma_max / sde.sigma_min)
    spec = dict(kind="ncsn", n_levels=n_levels, reduction=reduction, parameterization=parameterization,
                scale_by_sigma=scale_by_sigma, scale_input=scale_input)
    return DenoisingLoss(_param(sde, parameterization, scale_by_sigma, scale_input),
                         TimeSampler(sde, levels=levels.clamp(0.0, sde.T)), reduction, spec)


def ddpm_loss(sde: SDE | str = "vp", *, n_steps: int = 1000, scale_input: bool = True) -> DenoisingLoss:
    """DDPM's L_simple, E_i E‖ε − ε_θ(√ᾱ_i x_0 + √(1−ᾱ_i) ε, i)‖², on the N-step discretisation
    t_i = i/N (i = 1..N) with ᾱ_i = m(t_i)², so the ε-model's score −ε_θ/σ is the continuous model's.
    Reference: Ho et al. 2020, eq. 14 and Algorithm 1; Song et al. 2021, §3.4 (VP as DDPM's limit).
    """
    sde = resolve_sde(sde)
    if not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(f"n_steps must be an integer >= 1, got {n_steps!r}")
    levels = torch.arange(1, n_steps + 1, dtype=torch.float64) * (sde.T / n_steps)
    spec = dict(kind="ddpm", n_steps=n_steps, scale_input=scale_input)
    return DenoisingLoss(_param(sde, "epsilon", False, scale_input), TimeSampler(sde, levels=levels),
                         "mean", spec)


def ssm_loss(
    sde: SDE | str | None, *, weighting: str = "perceptual", t_sampling: str = "uniform",
    eps: float = 1e-5, reduction: str = "mean", parameterization: str = "score",
    scale_by_sigma: bool = False, scale_input: bool = True, n_projections: int = 1,
    variance_reduction: bool = True,
) -> SlicedScoreLoss:
    """Sliced score matching, E_t λ(t) E_x E_v [2 vᵀ∇_x(vᵀ s_θ(x_t,t)) + (vᵀ s_θ)²] on the
    perturbed data (its minimiser is the score of p_t, with no kernel score needed), or with
    ``sde=None`` on the clean data (Song et al. 2019: no noise at all).
    Arguments as in ``dsm_loss``; ``n_projections`` random directions v per sample;
    ``variance_reduction`` replaces (vᵀs)² by its mean ‖s‖² (SSM-VR).
    Reference: Song, Garg, Shi & Ermon 2019, eqs. 7-8.
    """
    if not isinstance(n_projections, int) or n_projections < 1:
        raise ValueError(f"n_projections must be an integer >= 1, got {n_projections!r}")
    _choice("weighting", weighting, WEIGHTINGS)
    _choice("t_sampling", t_sampling, T_SAMPLINGS)
    _choice("reduction", reduction, REDUCTIONS)
    spec = dict(kind="ssm", weighting=weighting, t_sampling=t_sampling, eps=eps, reduction=reduction,
                parameterization=parameterization, scale_by_sigma=scale_by_sigma, scale_input=scale_input,
                n_projections=n_projections, variance_reduction=variance_reduction)
    if sde is None:
        return SlicedScoreLoss(_param(None, parameterization, scale_by_sigma, False), None, reduction,
                               n_projections, variance_reduction, spec)
    sde = resolve_sde(sde)
    eps = _check_eps(eps, sde)
    spec["eps"] = eps
    return SlicedScoreLoss(_param(sde, parameterization, scale_by_sigma, scale_input),
                           TimeSampler(sde, weighting, t_sampling, eps), reduction, n_projections,
                           variance_reduction, spec)


LOSSES = {"dsm": dsm_loss, "ncsn": ncsn_loss, "ddpm": ddpm_loss, "ssm": ssm_loss}


def loss_from_config(cfg: dict) -> DenoisingLoss | SlicedScoreLoss:
    """Rebuild a loss from ``loss.config()``."""
    cfg = dict(cfg)
    kind = cfg.pop("kind", None)
    _choice("loss kind", kind, LOSSES)
    sde = cfg.pop("sde")
    return LOSSES[kind](None if sde is None else sde_from_config(sde), **cfg)
