"""Forward SDEs of score-based generative modelling: VP, sub-VP and VE.

All three are linear with additive noise, dx = f(t) x dt + g(t) dw, so their marginals are
p_t(x) = ∫ p_0(y) N(x; m(t) y, σ(t)² I) dy and everything a sampler needs follows from
``marginal(t) = (m(t), σ(t))``: the transition s→t has scale a = m(t)/m(s) and variance
v = σ(t)² − a² σ(s)².  The SDE holds only continuous coefficients, never a step count.

Scalar methods accept a Python float (exact float64 arithmetic, used by the sampling loops so
no device synchronisation happens) or a tensor of times (elementwise, any device/dtype).

Reference: Song et al. 2021, "Score-Based Generative Modeling through Stochastic Differential
Equations", eqs. 5-6 (reverse SDE, probability-flow ODE), 9-11 and Appendix B (VE/VP/sub-VP).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import Tensor

Scalar = float | Tensor

__all__ = ["SDE", "VPSDE", "SubVPSDE", "VESDE", "reverse_drift", "append_dims", "keeps_mean", "SDES"]


def append_dims(v: Tensor, ndim: int) -> Tensor:
    """Append trailing singleton dims to ``v`` (shape (B,)) so it broadcasts against ndim dims."""
    return v.reshape(v.shape + (1,) * (ndim - v.ndim))


def keeps_mean(sde: SDE) -> bool:
    """Whether the SDE keeps the mean, m(t) = 1 (the variance-exploding family, Karras' schedule)."""
    return sde.log_mean_scale(sde.T) == 0.0


def _ops(t: Scalar):
    return torch if isinstance(t, Tensor) else math


def _softplus(x: Scalar) -> Scalar:
    if isinstance(x, Tensor):
        return torch.nn.functional.softplus(x)
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


class SDE(ABC):
    """A linear forward SDE dx = f(t) x dt + g(t) dw on [0, T].

    Subclasses define ``log_mean_scale``, ``std``, ``diffusion``, ``drift_coef`` (f(t) =
    d log m(t)/dt) and ``t_from_log_snr``; marginals, transitions, log-SNR, prior and reverse
    drifts are derived here.
    """

    T: float = 1.0
    default_eps: float = 1e-3
    name: str = "sde"
    # the peers' own schedules (KarrasSDE, DiscreteVPSDE) set this: on them the fixed-step samplers run
    # their grids to the end as k-diffusion and diffusers do, without ``protocol.tail_step``
    peer_grids: bool = False

    # --- marginal p_t(x | x_0) = N(m(t) x_0, σ(t)² I) -------------------------------------
    @abstractmethod
    def log_mean_scale(self, t: Scalar) -> Scalar:
        """log m(t)."""

    @abstractmethod
    def std(self, t: Scalar) -> Scalar:
        """σ(t)."""

    @abstractmethod
    def diffusion(self, t: Scalar) -> Scalar:
        """g(t)."""

    @abstractmethod
    def drift_coef(self, t: Scalar) -> Scalar:
        """f(t) = d log m(t) / dt, so that the drift is f(t) x."""

    @abstractmethod
    def t_from_log_snr(self, lam: Scalar) -> Scalar:
        """Inverse of ``log_snr``."""

    def at_log_snr(self, lam: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(t, m(t), σ(t)) at the times where the log-SNR is ``lam`` (a tensor): what a solver
        stepping in log-SNR needs at each new point (subclasses may skip the round trip via t)."""
        t = self.t_from_log_snr(lam)
        return (t, *self.marginal(t))

    def mean_scale(self, t: Scalar) -> Scalar:
        return _ops(t).exp(self.log_mean_scale(t))

    def marginal(self, t: Scalar) -> tuple[Scalar, Scalar]:
        """(m(t), σ(t)) of the perturbation kernel p_t(x | x_0) = N(m x_0, σ² I)."""
        return self.mean_scale(t), self.std(t)

    def log_snr(self, t: Scalar) -> Scalar:
        """λ(t) = log(m(t)² / σ(t)²), strictly decreasing in t."""
        return 2.0 * (self.log_mean_scale(t) - _ops(t).log(self.std(t)))

    def transition(self, s: Scalar, t: Scalar) -> tuple[Scalar, Scalar]:
        """(a, v) with x_t | x_s ~ N(a x_s, v I): a = m(t)/m(s), v = σ(t)² − a² σ(s)²."""
        a = _ops(t).exp(self.log_mean_scale(t) - self.log_mean_scale(s))
        v = self.std(t) ** 2 - (a * self.std(s)) ** 2
        v = v.clamp_min(0.0) if isinstance(v, Tensor) else max(v, 0.0)
        return a, v

    # --- the SDE itself --------------------------------------------------------------------
    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        """f(x, t) = f(t) x for x of shape (B, ...) and t of shape (B,)."""
        return append_dims(self.drift_coef(t), x.ndim).to(x.dtype) * x

    # --- prior -----------------------------------------------------------------------------
    def prior_std(self) -> float:
        return float(self.std(self.T))

    def prior_sample(
        self,
        shape: tuple[int, ...],
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Tensor:
        """x_T ~ N(0, σ_prior² I)."""
        z = torch.randn(shape, generator=generator, device=device, dtype=dtype)
        return self.prior_std() * z

    def prior_logp(self, z: Tensor) -> Tensor:
        """log N(z; 0, σ_prior² I), summed over all but the batch dim -> shape (B,)."""
        s = self.prior_std()
        d = z[0].numel()
        sq = z.flatten(1).pow(2).sum(1)
        return -0.5 * d * math.log(2 * math.pi * s * s) - 0.5 * sq / (s * s)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


@dataclass(frozen=True, repr=False)
class VPSDE(SDE):
    """Variance-preserving SDE: dx = −½ β(t) x dt + √β(t) dw, β(t) = β_min + t (β_max − β_min).

    m(t) = exp(−¼ t² (β_max − β_min) − ½ t β_min), σ(t)² = 1 − m(t)²; prior N(0, I).
    Reference: Song et al. 2021, eq. 11 (continuous DDPM).
    """

    beta_min: float = 0.1
    beta_max: float = 20.0
    name = "vp"

    def __post_init__(self):
        if not (self.beta_min > 0 and self.beta_max > self.beta_min):
            raise ValueError(
                f"VPSDE needs 0 < beta_min < beta_max, got beta_min={self.beta_min}, "
                f"beta_max={self.beta_max}"
            )

    def beta(self, t: Scalar) -> Scalar:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def _int_beta(self, t: Scalar) -> Scalar:
        return 0.5 * t * t * (self.beta_max - self.beta_min) + t * self.beta_min

    def log_mean_scale(self, t: Scalar) -> Scalar:
        return -0.5 * self._int_beta(t)

    def std(self, t: Scalar) -> Scalar:
        return self._std_from_int_beta(self._int_beta(t))

    def _std_from_int_beta(self, ib: Scalar) -> Scalar:
        return _ops(ib).sqrt(-_ops(ib).expm1(-ib))

    def marginal(self, t: Scalar) -> tuple[Scalar, Scalar]:
        ib = self._int_beta(t)  # once for both (the per-sample solvers call this every step)
        return _ops(t).exp(-0.5 * ib), self._std_from_int_beta(ib)

    def diffusion(self, t: Scalar) -> Scalar:
        return _ops(t).sqrt(self.beta(t))

    def drift_coef(self, t: Scalar) -> Scalar:
        return -0.5 * self.beta(t)

    def prior_std(self) -> float:
        return 1.0

    def _t_from_int_beta(self, ib: Scalar) -> Scalar:
        db = self.beta_max - self.beta_min
        return 2.0 * ib / (self.beta_min + _ops(ib).sqrt(self.beta_min**2 + 2.0 * db * ib))

    def t_from_log_snr(self, lam: Scalar) -> Scalar:
        # σ²/m² = e^{-λ}  =>  ∫β = log(1 + e^{-λ})
        return self._t_from_int_beta(_softplus(-lam))

    def at_log_snr(self, lam: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        # with e = σ²/m² = e^{−λ}: ∫β = log(1 + e), m = (1 + e)^{−½}, σ = m √e (no cancellation at
        # either end, and no expm1/softplus, the per-sample solver's costliest operations per step;
        # e overflows only for λ < −709, far outside any VP schedule's range)
        e = torch.exp(-lam)
        m = (1.0 + e).rsqrt_()
        return self._t_from_int_beta(torch.log1p(e)), m, e.sqrt_().mul_(m)


@dataclass(frozen=True, repr=False)
class SubVPSDE(VPSDE):
    """Sub-VP SDE: dx = −½ β(t) x dt + √(β(t)(1 − e^{−2∫β})) dw.

    Same m(t) as VP, σ(t) = 1 − m(t)² (always below the VP std); prior N(0, I).
    Reference: Song et al. 2021, eq. 12.
    """

    name = "subvp"

    def _std_from_int_beta(self, ib: Scalar) -> Scalar:
        return -_ops(ib).expm1(-ib)

    def diffusion(self, t: Scalar) -> Scalar:
        return _ops(t).sqrt(-self.beta(t) * _ops(t).expm1(-2.0 * self._int_beta(t)))

    @staticmethod
    def _std_from_log_snr(lam: Scalar) -> Scalar:
        # u = m²: λ = log u − 2 log(1 − u)  =>  e^λ u² − (2e^λ + 1) u + e^λ = 0, smaller root.
        # In σ = w = 1 − u: e^λ w² + w − 1 = 0, so w = 2 / (1 + sqrt(1 + 4e^λ)) (no cancellation)
        o = _ops(lam)
        return 2.0 / (1.0 + o.sqrt(1.0 + 4.0 * o.exp(lam)))

    def at_log_snr(self, lam: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        # σ as in t_from_log_snr, m = σ e^{λ/2} (λ = log(m²/σ²)), ∫β = −log(1 − σ) = −log m²: as
        # log1p where σ is small, as −λ − 2 log σ where 1 − σ is (in float32, 1 − σ at T is ~1e-3 off)
        sig = self._std_from_log_snr(lam)
        ib = torch.where(sig < 0.5, torch.log1p(-sig).neg_(), torch.log(sig).mul_(-2.0).sub_(lam))
        return self._t_from_int_beta(ib), torch.exp(0.5 * lam).mul_(sig), sig

    def t_from_log_snr(self, lam: Scalar) -> Scalar:
        return self._t_from_int_beta(-_ops(lam).log1p(-self._std_from_log_snr(lam)))


class VarianceExploding(SDE):
    """The variance-exploding family: no drift (m = 1), prior N(0, σ_max² I); subclasses give
    σ(t), g(t) and t(λ)."""

    sigma_max: float

    def log_mean_scale(self, t: Scalar) -> Scalar:
        return t * 0.0

    def drift_coef(self, t: Scalar) -> Scalar:
        return t * 0.0

    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        return torch.zeros_like(x)

    def prior_std(self) -> float:
        return self.sigma_max


@dataclass(frozen=True, repr=False)
class VESDE(VarianceExploding):
    """Variance-exploding SDE: dx = σ(t) √(2 log(σ_max/σ_min)) dw, σ(t) = σ_min (σ_max/σ_min)^t.

    m(t) = 1.  Convention (as in the reference code): the marginal std at t is σ(t), which is
    σ_min at t = 0, so "p_0" is the data smoothed by N(0, σ_min² I); prior N(0, σ_max² I).
    Reference: Song et al. 2021, eq. 9 (continuous SMLD / NCSN).
    """

    sigma_min: float = 0.01
    sigma_max: float = 50.0
    name = "ve"
    default_eps = 1e-5

    def __post_init__(self):
        if not (0 < self.sigma_min < self.sigma_max):
            raise ValueError(
                f"VESDE needs 0 < sigma_min < sigma_max, got sigma_min={self.sigma_min}, "
                f"sigma_max={self.sigma_max}"
            )

    @property
    def _log_ratio(self) -> float:
        return math.log(self.sigma_max / self.sigma_min)

    def std(self, t: Scalar) -> Scalar:
        return self.sigma_min * _ops(t).exp(t * self._log_ratio)

    def diffusion(self, t: Scalar) -> Scalar:
        return self.std(t) * math.sqrt(2.0 * self._log_ratio)

    def t_from_log_snr(self, lam: Scalar) -> Scalar:
        return (-0.5 * lam - math.log(self.sigma_min)) / self._log_ratio


SDES: dict[str, type[SDE]] = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE}


def reverse_drift(
    sde: SDE, score: Tensor, x: Tensor, t: Scalar, probability_flow: bool = False
) -> Tensor:
    """Drift of the reverse-time SDE, f(t) x − g(t)² s, or of the probability-flow ODE,
    f(t) x − ½ g(t)² s, given the score value ``s`` at (x, t).

    ``t`` is a float (one time for the batch) or a (B,) tensor.
    Reference: Song et al. 2021, eqs. 6 and 13.
    """
    f, g2 = sde.drift_coef(t), sde.diffusion(t) ** 2
    c = 0.5 if probability_flow else 1.0
    if isinstance(t, Tensor):
        f = append_dims(f, x.ndim).to(x.dtype)
        g2 = append_dims(g2, x.ndim).to(x.dtype)
    return f * x - c * g2 * score
