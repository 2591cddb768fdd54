"""Practitioners' schedules as SDEs: a VP SDE from a discrete table (diffusers' ``betas`` /
``alphas_cumprod``), an EDM/Karras SDE in σ, and diffusers' ``timestep_spacing`` as grids.

Discrete VP: timesteps τ = 0..N−1 with ᾱ_τ = Π_{k≤τ}(1 − β_k).  Time t = (τ + 1)/N puts τ on
[1/N, 1] (T = 1 is the last timestep, N − 1) and log m(t) = ½ log ᾱ is interpolated
piecewise-linearly in t through the table's points and (0, 0), so m(0) = 1 (diffusers'
``set_alpha_to_one``).  The SDE is exactly the table at its points, and between them β(t) =
−2 d log m/dt is piecewise constant.
Reference: Lu et al. 2022, "DPM-Solver", Appendix (NoiseScheduleVP, schedule="discrete");
Ho et al. 2020 (DDPM, linear), Rombach et al. 2022 (scaled_linear), Nichol & Dhariwal 2021
(squaredcos_cap_v2); Karras et al. 2022 (EDM: x = x_0 + σ z, σ(t) = t).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from .sde import SDE, Scalar, VarianceExploding, _softplus

__all__ = ["DiscreteVPSDE", "KarrasSDE", "diffusers_betas", "BETA_SCHEDULES", "spaced_timesteps",
           "timestep_grid", "ddim_step_to", "grid_from_sigmas", "SPACINGS"]

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "cosine")
SPACINGS = ("leading", "linspace", "trailing")


def _cosine_betas(n: int, max_beta: float = 0.999) -> list[float]:
    def abar(s: float) -> float:
        return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

    return [min(1 - abar((i + 1) / n) / abar(i / n), max_beta) for i in range(n)]


def diffusers_betas(schedule: str = "linear", num_train_timesteps: int = 1000, beta_start: float = 1e-4,
                    beta_end: float = 0.02, dtype: torch.dtype = torch.float32) -> Tensor:
    """β_τ of a named schedule, computed as diffusers does (in float32 by default, so the table
    is bit-identical to the one the model was trained with).

    linear: linspace(β_start, β_end); scaled_linear: linspace(√β_start, √β_end)²;
    squaredcos_cap_v2 / cosine: β_τ = min(1 − ᾱ((τ+1)/N)/ᾱ(τ/N), 0.999), ᾱ(s) = cos²((s + 0.008)/1.008 · π/2).

    Raises:
        ValueError: unknown schedule (valid: linear, scaled_linear, squaredcos_cap_v2, cosine).
    """
    n = int(num_train_timesteps)
    if schedule == "linear":
        return torch.linspace(beta_start, beta_end, n, dtype=dtype)
    if schedule == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, n, dtype=dtype) ** 2
    if schedule in ("squaredcos_cap_v2", "cosine"):
        return torch.tensor(_cosine_betas(n), dtype=dtype)
    raise ValueError(f"unknown beta schedule {schedule!r}; valid choices: {', '.join(BETA_SCHEDULES)}")


class DiscreteVPSDE(SDE):
    """The VP SDE of a discrete diffusion table, continuous in t (DPM-Solver's "discrete" schedule).

    t ↔ timestep: t = (τ + 1)/N, τ = N t − 1 (exact at every table point); m(t)² = ᾱ_τ there,
    log m linear in t between points and m(0) = 1; σ(t)² = 1 − m(t)²; prior N(0, I).

    Args:
        alphas_cumprod: ᾱ_τ, τ = 0..N−1 (strictly decreasing in (0, 1)); or give
        betas: β_τ, so ᾱ = cumprod(1 − β); or
        schedule: a name from ``BETA_SCHEDULES`` with ``num_train_timesteps``, ``beta_start``,
            ``beta_end`` (diffusers' defaults: linear 1e-4…0.02, N = 1000).
        prediction_type: what models trained on this table predict ("epsilon", "v_prediction",
            "sample"); the default of ``from_diffusers`` adapters.
        interpolation: between the table's points, "log_alpha" (log m linear in t: DPM-Solver's
            discrete schedule, β(t) piecewise constant) or "sigma" (σ̃ = σ/m linear in t: what
            diffusers' Euler / Heun / LMS schedulers do for fractional timesteps).  The two agree
            at the table's points, so only grids off the integer timesteps tell them apart.
    Reference: Lu et al. 2022, DPM-Solver, NoiseScheduleVP("discrete").
    """

    name = "discrete_vp"
    peer_grids = True  # diffusers' timesteps to the table's end, without the tail step below σ/m = 0.01

    def __init__(self, alphas_cumprod: Tensor | Sequence[float] | None = None, *,
                 betas: Tensor | Sequence[float] | None = None, schedule: str | None = None,
                 num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
                 prediction_type: str = "epsilon", interpolation: str = "log_alpha"):
        given = [k for k, v in (("alphas_cumprod", alphas_cumprod), ("betas", betas), ("schedule", schedule))
                 if v is not None]
        if len(given) > 1:
            raise ValueError(f"give one of alphas_cumprod=, betas= or schedule=, got {', '.join(given)}")
        if alphas_cumprod is None:
            if betas is None:
                betas = diffusers_betas(schedule or "linear", num_train_timesteps, beta_start, beta_end)
            betas = torch.as_tensor(betas)
            alphas_cumprod = torch.cumprod(1.0 - betas, 0)  # in the table's dtype, as diffusers does
        ac = torch.as_tensor(alphas_cumprod).detach().cpu().to(torch.float64).flatten()
        if ac.numel() < 2 or not bool(((ac > 0) & (ac < 1)).all()) or not bool((ac[1:] < ac[:-1]).all()):
            raise ValueError("alphas_cumprod must be strictly decreasing in (0, 1) with at least 2 entries "
                             "(a zero-terminal-SNR table, ᾱ_{N-1} = 0, is not supported)")
        if prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(f"prediction_type must be 'epsilon', 'v_prediction' or 'sample', got {prediction_type!r}")
        self.alphas_cumprod = ac
        self.num_train_timesteps = ac.numel()
        self.prediction_type = prediction_type
        self.T = 1.0
        self.default_eps = 1.0 / self.num_train_timesteps
        if interpolation not in ("log_alpha", "sigma"):
            raise ValueError(f"interpolation must be 'log_alpha' or 'sigma', got {interpolation!r}")
        self.interpolation = interpolation
        # knots at t_k = k/N, k = 0..N (k = 0: m = 1): y = −log m (DPM-Solver) or σ̃ = σ/m (diffusers' σ-schedulers)
        y = -0.5 * ac.log() if interpolation == "log_alpha" else ((1.0 - ac) / ac).sqrt()
        self._y = torch.cat([ac.new_zeros(1), y])
        self._y_list = self._y.tolist()

    @classmethod
    def from_diffusers(cls, scheduler_or_config, interpolation: str | None = None) -> DiscreteVPSDE:
        """From a diffusers scheduler (its own ``alphas_cumprod`` table) or its config (a dict or
        ``FrozenDict``; the table is rebuilt as diffusers builds it, in float32).

        ``interpolation`` defaults to "sigma" for diffusers' σ-schedulers (Euler, Euler
        ancestral, Heun, LMS, KDPM2: σ̃ interpolated linearly in the timestep) and to
        "log_alpha" otherwise (DDIM, DPM-Solver, UniPC only use integer timesteps).

        Raises:
            ValueError: ``rescale_betas_zero_snr`` set, or an unknown ``beta_schedule``.
        """
        cfg = getattr(scheduler_or_config, "config", scheduler_or_config)
        if not isinstance(cfg, Mapping):
            raise TypeError(f"expected a diffusers scheduler or its config dict, got {type(cfg).__name__}")
        if cfg.get("rescale_betas_zero_snr", False):
            raise ValueError("rescale_betas_zero_snr=True (ᾱ_{N-1} = 0) is not supported: σ/m is infinite at T")
        if interpolation is None:
            sigma_schedulers = ("EulerDiscrete", "EulerAncestralDiscrete", "HeunDiscrete", "LMSDiscrete", "KDPM2")
            name = type(scheduler_or_config).__name__
            interpolation = "sigma" if name.startswith(sigma_schedulers) else "log_alpha"
        kw = dict(prediction_type=cfg.get("prediction_type", "epsilon"), interpolation=interpolation)
        table = getattr(scheduler_or_config, "alphas_cumprod", None)
        if table is not None:
            return cls(table, **kw)
        if cfg.get("trained_betas") is not None:
            return cls(betas=torch.tensor(cfg["trained_betas"], dtype=torch.float32), **kw)
        return cls(schedule=cfg.get("beta_schedule", "linear"),
                   num_train_timesteps=cfg.get("num_train_timesteps", 1000),
                   beta_start=cfg.get("beta_start", 1e-4), beta_end=cfg.get("beta_end", 0.02), **kw)

    # --- t <-> timestep ----------------------------------------------------------------------
    def t_to_timestep(self, t: Scalar) -> Scalar:
        """τ = N t − 1 (float; an integer exactly at the table's points)."""
        return self.num_train_timesteps * t - 1.0

    def timestep_to_t(self, timestep) -> Scalar:
        """t = (τ + 1)/N; accepts ints, floats or tensors (returned as float64)."""
        if isinstance(timestep, Tensor):
            return (timestep.to(torch.float64) + 1.0) / self.num_train_timesteps
        return (float(timestep) + 1.0) / self.num_train_timesteps

    # --- coefficients: y(t) piecewise linear through the knots (k/N, y_k), y increasing -----------
    def _segment(self, t: Scalar):
        n = self.num_train_timesteps
        if isinstance(t, Tensor):
            u = t.to(torch.float64) * n
            k = u.floor().clamp(0, n - 1)
            y = self._y.to(u.device)
            return y[k.long()], y[k.long() + 1], u - k
        u = float(t) * n
        k = min(max(int(math.floor(u)), 0), n - 1)
        return self._y_list[k], self._y_list[k + 1], u - k

    def _knot_y(self, t: Scalar):
        lo, hi, frac = self._segment(t)
        return lo + frac * (hi - lo), self.num_train_timesteps * (hi - lo)  # y(t), y'(t)

    @staticmethod
    def _cast(v, t):
        return v.to(t.dtype) if isinstance(t, Tensor) and t.is_floating_point() else v

    def log_mean_scale(self, t: Scalar) -> Scalar:
        y, _ = self._knot_y(t)
        if self.interpolation == "log_alpha":  # y = −log m
            return self._cast(-y, t)
        return self._cast(-0.5 * (torch.log1p(y * y) if isinstance(y, Tensor) else math.log1p(y * y)), t)

    def std(self, t: Scalar) -> Scalar:
        y, _ = self._knot_y(t)
        o = torch if isinstance(y, Tensor) else math
        if self.interpolation == "log_alpha":
            return self._cast(o.sqrt(-o.expm1(-2.0 * y)), t)
        return self._cast(y / o.sqrt(1.0 + y * y), t)  # y = σ̃ = σ/m

    def drift_coef(self, t: Scalar) -> Scalar:
        """f(t) = d log m/dt on the linear piece containing t (right-continuous)."""
        y, dy = self._knot_y(t)
        return self._cast(-dy if self.interpolation == "log_alpha" else -y * dy / (1.0 + y * y), t)

    def diffusion(self, t: Scalar) -> Scalar:
        f = self.drift_coef(t)  # VP: σ² = 1 − m², so g² = dσ²/dt − 2fσ² = −2f
        return torch.sqrt(-2.0 * f) if isinstance(f, Tensor) else math.sqrt(-2.0 * f)

    def prior_std(self) -> float:
        return 1.0

    def t_from_log_snr(self, lam: Scalar) -> Scalar:
        # log_alpha: y = −log m = ½ log(1 + e^{−λ});  sigma: y = σ̃ = e^{−λ/2}; then invert the linear pieces
        n = self.num_train_timesteps
        if isinstance(lam, Tensor):
            lam64 = lam.to(torch.float64)
            target = (0.5 * torch.nn.functional.softplus(-lam64) if self.interpolation == "log_alpha"
                      else torch.exp(-0.5 * lam64))
            y = self._y.to(target.device)
            k = (torch.searchsorted(y, target.contiguous(), right=True) - 1).clamp(0, n - 1)
            lo, hi = y[k], y[k + 1]
            return ((k + (target - lo) / (hi - lo)) / n).to(lam.dtype)
        target = 0.5 * _softplus(-float(lam)) if self.interpolation == "log_alpha" else math.exp(-0.5 * float(lam))
        k = min(max(bisect.bisect_right(self._y_list, target) - 1, 0), n - 1)
        lo, hi = self._y_list[k], self._y_list[k + 1]
        return (k + (target - lo) / (hi - lo)) / n

    def __repr__(self) -> str:
        ac = self.alphas_cumprod
        return (f"DiscreteVPSDE(N={self.num_train_timesteps}, alphas_cumprod=[{float(ac[0]):.6g} … "
                f"{float(ac[-1]):.4g}], prediction_type={self.prediction_type!r}, "
                f"interpolation={self.interpolation!r})")


class KarrasSDE(VarianceExploding):
    """The EDM / k-diffusion SDE in σ: x = x_0 + σ z with σ(t) = t, so dx = √(2t) dw.

    m = 1, σ(t) = t, T = σ_max, default end time σ_min; a time grid *is* a σ grid, so a
    denoiser D(x, σ) and k-diffusion's sigmas are used as they are (see ``from_karras``,
    ``grid_from_sigmas``); prior N(0, σ_max² I).
    Reference: Karras et al. 2022, "Elucidating the Design Space...", eq. 1 and Table 1 (σ(t) = t, s(t) = 1).
    """

    name = "karras"
    peer_grids = True  # k-diffusion's grids to σ_min, without the tail step below σ = 0.01

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"KarrasSDE needs 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, "
                             f"sigma_max={sigma_max}")
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.T, self.default_eps = self.sigma_max, self.sigma_min

    def std(self, t: Scalar) -> Scalar:
        return t * 1.0

    def diffusion(self, t: Scalar) -> Scalar:
        return torch.sqrt(2.0 * t) if isinstance(t, Tensor) else math.sqrt(2.0 * t)

    def t_from_log_snr(self, lam: Scalar) -> Scalar:
        return torch.exp(-0.5 * lam) if isinstance(lam, Tensor) else math.exp(-0.5 * lam)

    def __repr__(self) -> str:
        return f"KarrasSDE(sigma_min={self.sigma_min}, sigma_max={self.sigma_max})"


def spaced_timesteps(steps: int, spacing: str = "leading", *, num_train_timesteps: int = 1000,
                     steps_offset: int = 0, convention: str = "ddim") -> Tensor:
    """The integer timesteps diffusers' ``set_timesteps`` makes, decreasing (int64, ``steps`` of them).

    convention "ddim" (DDIM, PNDM, Euler, Heun, LMS, DDPM schedulers):
        linspace  round(linspace(0, N−1, n));  leading  (N//n)·k + offset;  trailing  round(N − k N/n) − 1.
    convention "dpmsolver" (DPMSolverMultistep, UniPC; n + 1 points, the 0 dropped):
        linspace  round(linspace(0, N−1, n+1))[1:];  leading  (N//(n+1))·k + offset, k ≥ 1;  trailing as ddim.
    Reference: diffusers ``set_timesteps``; Lin et al. 2024, "Common Diffusion Noise Schedules
    and Sample Steps are Flawed", Table 2.

    Raises:
        ValueError: unknown spacing or convention, or steps outside [1, N].
    """
    import numpy as np

    n, big = int(steps), int(num_train_timesteps)
    if spacing not in SPACINGS:
        raise ValueError(f"unknown timestep_spacing {spacing!r}; valid choices: {', '.join(SPACINGS)}")
    if convention not in ("ddim", "dpmsolver"):
        raise ValueError(f"unknown convention {convention!r}; valid choices: ddim, dpmsolver")
    if not 1 <= n <= big:
        raise ValueError(f"steps must lie in [1, num_train_timesteps={big}], got {steps!r}")
    if spacing == "trailing":
        ts = np.round(np.arange(big, 0, -big / n)).astype(np.int64) - 1
    elif convention == "ddim":
        if spacing == "linspace":
            ts = np.linspace(0, big - 1, n).round()[::-1].astype(np.int64)
        else:
            ts = (np.arange(0, n) * (big // n)).round()[::-1].astype(np.int64) + steps_offset
    elif spacing == "linspace":
        ts = np.linspace(0, big - 1, n + 1).round()[::-1][:-1].astype(np.int64)
    else:
        ts = (np.arange(0, n + 1) * (big // (n + 1))).round()[::-1][:-1].astype(np.int64) + steps_offset
    return torch.from_numpy(ts.copy())


def timestep_grid(sde: DiscreteVPSDE, steps: int, spacing: str = "leading", *, steps_offset: int = 0,
                  convention: str = "ddim") -> Tensor:
    """``spaced_timesteps`` as a float64 grid of continuous times t = (τ + 1)/N for ``sample(grid=...)``.

    The samplers then step between consecutive listed timesteps and, with ``denoise=True``
    (the default), end with x̂_0 at the last one: diffusers' last step to ᾱ = 1
    (``set_alpha_to_one=True``, ``final_sigmas_type="zero"``), at the same NFE.
    """
    if not isinstance(sde, DiscreteVPSDE):
        raise TypeError(f"timestep_grid needs a DiscreteVPSDE (a discrete table), got {type(sde).__name__}")
    taus = spaced_timesteps(steps, spacing, num_train_timesteps=sde.num_train_timesteps,
                            steps_offset=steps_offset, convention=convention)
    if int(taus.max()) >= sde.num_train_timesteps:
        raise ValueError(f"steps_offset={steps_offset} puts timestep {int(taus.max())} beyond the table's last "
                         f"({sde.num_train_timesteps - 1})")
    return sde.timestep_to_t(taus)


def ddim_step_to(sde: DiscreteVPSDE, steps: int, spacing: str = "leading", *, steps_offset: int = 0,
                 set_alpha_to_one: bool = True) -> Tensor:
    """Where diffusers' ``DDIMScheduler`` steps from each of its timesteps, as times for
    ``DDIM(step_to=...)`` on ``grid=timestep_grid(sde, steps, spacing, steps_offset=...)``.

    From τ_i it steps to τ_i − N//n, then evaluates the model at the next listed τ_{i+1}
    (which differs for "linspace", and for "trailing" when n does not divide N); below
    timestep 0 it uses ``final_alpha_cumprod``: time 0 (ᾱ = 1, the final x̂_0) with
    ``set_alpha_to_one=True``, else t(τ = 0) (ᾱ_0).  ``steps`` times (float64), one per UNet
    call, the last for the final evaluation at the last timestep (``denoise=True``)::

        ss.sample(score, sde, shape, "ddim", x_init=noise, grid=ss.timestep_grid(sde, n, spacing),
                  step_to=ss.ddim_step_to(sde, n, spacing))

    Reference: diffusers ``DDIMScheduler.step`` (``prev_timestep``, ``final_alpha_cumprod``).
    """
    grid = timestep_grid(sde, steps, spacing, steps_offset=steps_offset)  # checks sde, spacing, steps, offset
    prev = sde.t_to_timestep(grid).round().long() - sde.num_train_timesteps // int(steps)
    below = grid.new_tensor(0.0 if set_alpha_to_one else sde.timestep_to_t(0))
    return torch.where(prev >= 0, sde.timestep_to_t(prev.clamp(min=0)), below)


def grid_from_sigmas(sde: SDE, sigmas: Tensor | Sequence[float]) -> Tensor:
    """A k-diffusion σ grid (σ̃ = σ/m, decreasing, optionally ending in 0) as times of ``sde``:
    t = t(λ = −2 log σ̃).  A trailing 0 is dropped: ``sample(..., denoise=True)`` ends with
    x̂_0 at the last σ, which is k-diffusion's last step to σ = 0 at the same NFE.
    On ``KarrasSDE`` the times are the sigmas themselves.
    """
    s = torch.as_tensor(sigmas, dtype=torch.float64).flatten().cpu()
    if s.numel() and float(s[-1]) == 0.0:
        s = s[:-1]
    if not bool((s > 0).all()):
        raise ValueError("sigmas must be positive (a single trailing 0 is allowed)")
    if isinstance(sde, KarrasSDE):
        return s.clone()
    return torch.as_tensor(sde.t_from_log_snr(-2.0 * s.log()), dtype=torch.float64)
