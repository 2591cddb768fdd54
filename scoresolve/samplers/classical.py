"""The classical samplers (Song et al. 2021): predictor-corrector, annealed Langevin dynamics and
the probability-flow ODE (adaptive Runge-Kutta through torchdiffeq, or fixed-step Euler/Heun).

Each is a frozen dataclass of options implementing ``protocol.Sampler``: ``init`` builds the
state, ``step`` advances it one grid interval; ``loop.run`` drives them.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor

from .. import correctors, ode, predictors
from .._compat import renamed
from .._torchdiffeq import STEPWISE, StepwiseODE
from ..options import option
from ..protocol import Context, SamplerBase, State
from ..sde import SDE, SubVPSDE, keeps_mean

__all__ = ["PC", "AnnealedLangevin", "ProbabilityFlowODE", "FixedStepODE", "grid_steps"]



def _lookup(kind: str, table: dict, fn):
    if isinstance(fn, str):
        try:
            return table[fn]
        except KeyError:
            raise ValueError(f"unknown {kind} {fn!r}; valid choices: {', '.join(table)}") from None
    if callable(fn):
        return fn
    raise TypeError(f"{kind} must be a name ({', '.join(table)}) or a callable, got {type(fn).__name__}")


PREDICTORS, CORRECTORS = predictors.PREDICTORS, correctors.CORRECTORS
T_EVAL_PROFILES = ("shifted", "ramped", "shifted_vp")


def grid_steps(ts: list[float], progress: bool = False, desc: str = ""):
    """The grid's consecutive pairs (t_i, t_{i+1}), T → eps, behind a tqdm bar (off unless
    ``progress``), for loops written by hand around ``sampler.step``."""
    from tqdm.auto import tqdm

    pairs = list(zip(ts[:-1], ts[1:]))
    return tqdm(pairs, desc=desc, disable=not progress, leave=False)


@renamed(norm="snr_norm")
@dataclass(frozen=True)
class PC(SamplerBase):
    """Predictor-corrector sampling (Song et al. 2021, Algorithms 2-3).

    For each grid step t -> t':  corrector at t (``n_corrector_steps`` MCMC steps), then the
    predictor from t to t'.  With ``denoise`` the run ends on the last step's ``end``: "mean",
    its noise-free mean; "x0", the data prediction x̂_0 = (x + σ² s)/m of its own score evaluation
    (no extra NFE); "auto" (default): x0 where the SDE keeps noise at t = 0 (σ(0) > 0: VE's σ_min),
    which the last step's mean keeps and x̂_0 removes, as score_sde's final VE step to σ = 0 does;
    "mean" otherwise (VP, sub-VP, discrete and Karras schedules: σ(0) = 0; with ``t_eval`` = 1 the
    last step already lands there).  Measured on the 8-ring and a 2-mode mixture
    (benchmarks/classical_results.md), x0 on VE brings ancestral and pc at 50-1000 NFE level with or
    ahead of the reference where the mean was behind; the shifted em / reverse_diffusion steps are
    ahead with the mean at every budget, and at 1000 steps only with it (x̂_0, the posterior mean,
    narrows the data by σ_min²: finding 17), so those two are registered with end="mean".
    Names or callables are accepted for ``predictor`` and ``corrector`` (``PREDICTORS``,
    ``CORRECTORS``).  ``snr_norm`` is the Langevin corrector's norm rule ("batch": norms averaged
    over the batch, as the reference; "sample": per sample, batch-invariant).

    ``t_eval`` θ ∈ [0, 1], or a profile of ``T_EVAL_PROFILES``: "shifted" (θ = 1, but 0 on sub-VP,
    where the shift measured further from the component-W2 floor than the reference at 20-100 steps),
    "ramped" (as "shifted", but on VP the shift grows with the part of the time span done,
    θ = (T − t')/(T − t_N) after a step to t' (on a uniform grid (i + 1)/N at step i of N), as score_sde's
    lag does, i/(N − 1) on its uniform grid; measured better on both metrics for em on VP, worse on VE
    and for reverse_diffusion; by time rather than by step index since finding 18) or "shifted_vp"
    (θ = 1 on VP, 0 on VE and sub-VP: pc's, whose shifted step blows up on VE at 10-20 NFE).  The
    predictor steps on the interval shifted by θ dt, i.e. from
    t_θ = t + θ (t' − t) to t_θ + (t' − t) (cut at t = 0 for the transition-based predictors), so
    its score and coefficients are taken at t_θ while the state is at t, and the corrector, too,
    targets p_{t_θ} (score_sde's lag moves both; measured on VP pc at 50-100 NFE: the log-density gap
    of the 2-mode mixture 3.76 → 1.29, gmm64 11.4 → 2.59 ×floor, benchmarks/classical_results.md); for EM:
    x' = x + [f x − g² s](x, t_θ) dt + g(t_θ) √|dt| z (θ = 0: the textbook step).  A shift towards
    t' counters the first-order steps' under-contraction on coarse grids; score_sde's loop does
    the same implicitly (dt = −1/N on a grid of spacing (T − eps)/(N − 1) lags its evaluation
    times by up to one step, the last one at eps).  ``variance`` λ ∈ [0, 1] is the ancestral predictor's
    noise variance, (1 − λ) β̃ + λ β, or "analytic" (Analytic-DPM's, from the batch's score norms; see
    ``predictors.ancestral``); ``coefficients`` is the
    reverse-diffusion predictor's: "transition" (the exact transition over the step), "frozen"
    (f, g frozen at the evaluation time; see ``predictors.reverse_diffusion``), "stable" (frozen where
    that step is stable, else the transition: VE's coarse grids) or "auto" (frozen on
    VP, where the mean decays, transition on VE, whose frozen step is Euler-Maruyama's; no effect on
    the other predictors, so ``pc`` with another predictor keeps working).
    Reference: Li et al. 2024, "Alleviating exposure bias in diffusion models through sampling
    with shifted time steps" (ICLR); Ho et al. 2020, §3.2.
    """

    predictor: str | object = "reverse_diffusion"
    corrector: str | object = "langevin"
    snr: float = option(0.16, within="(0, inf)")
    n_corrector_steps: int = option(1, within="[0, inf)", integer=True)
    snr_norm: str = option("batch", choices=("batch", "sample"))
    t_eval: float | str = 0.0  # checked in __post_init__ (a number in [0, 1] or a profile)
    variance: float | str = 0.0  # checked in __post_init__ (a number in [0, 1] or "analytic")
    coefficients: str = option("transition", choices=("transition", "frozen", "stable", "auto"))
    end: str = option("auto", choices=("auto", "mean", "x0"))
    default_grid: str = "uniform"
    default_steps: int = 1000
    order: float = 1.0
    denoise_with: ClassVar[str] = "mean"
    stochastic: ClassVar[bool] = True

    def __post_init__(self):
        predictor = _lookup("predictor", PREDICTORS, self.predictor)
        _lookup("corrector", CORRECTORS, self.corrector)
        super().__post_init__()
        te = self.t_eval
        number = isinstance(te, (int, float)) and not isinstance(te, bool)
        if not (te in T_EVAL_PROFILES if isinstance(te, str) else number and 0 <= te <= 1):
            profiles = ", ".join(map(repr, T_EVAL_PROFILES))
            raise ValueError(f"t_eval must be a number in [0, 1] or one of {profiles}; got {te!r}")
        va = self.variance
        if not (va == "analytic" or isinstance(va, (int, float)) and not isinstance(va, bool) and 0 <= va <= 1):
            raise ValueError(f"variance must be a number in [0, 1] or 'analytic'; got {va!r}")
        if self.variance and predictor is not predictors.ancestral:
            raise ValueError(f"variance={self.variance} is the ancestral predictor's noise choice ((1 − λ) β̃ + λ β); "
                             f"predictor {getattr(predictor, '__name__', predictor)!r} has no such option: "
                             f"use predictor='ancestral' or variance=0")
        if self.coefficients in ("frozen", "stable") and predictor is not predictors.reverse_diffusion:
            raise ValueError(f"coefficients={self.coefficients!r} is the reverse_diffusion predictor's option; "
                             f"predictor {getattr(predictor, '__name__', predictor)!r} has no such option")

    @property
    def batch_coupling(self) -> str | None:
        if self.variance == "analytic":
            return ("its analytic variance takes E‖s‖² as the mean over the batch; pass a number "
                    "(variance=0.5) for batch-invariant samples")
        if self._corrector_steps and self.snr_norm == "batch" and self.corrector in ("langevin", correctors.langevin):
            return ("its langevin corrector sets its step from norms averaged over the batch (snr_norm='batch'); "
                    "pass snr_norm='sample' (or a sampler without a corrector)")
        return None

    @property
    def nfe_per_step(self) -> int:
        return int(self._predictor is not predictors.none) + self._corrector_steps

    @property
    def _predictor(self):
        return _lookup("predictor", PREDICTORS, self.predictor)

    @property
    def _corrector_steps(self) -> int:
        corrector = _lookup("corrector", CORRECTORS, self.corrector)
        return 0 if corrector is correctors.none else self.n_corrector_steps

    def shift(self, sde: SDE, frac: float = 1.0) -> float:
        """θ of ``t_eval`` for this SDE at the fraction ``frac`` of the run's time span done after the step."""
        if not isinstance(self.t_eval, str):
            return float(self.t_eval)
        if isinstance(sde, SubVPSDE):
            return 0.0
        if self.t_eval == "shifted_vp":
            return 0.0 if keeps_mean(sde) else 1.0
        return frac if self.t_eval == "ramped" and not keeps_mean(sde) else 1.0

    def coefficients_on(self, sde: SDE) -> str:
        """The reverse-diffusion predictor's ``coefficients`` on this SDE ("auto" resolved)."""
        if self.coefficients == "auto":
            return "transition" if keeps_mean(sde) else "frozen"
        return self.coefficients

    def prepare(self, ctx: Context, ts: list[float]) -> tuple[float, float]:
        # the final time (the step that reaches it may end on x̂_0) and the first (the ramp's span)
        return ts[-1], ts[0]

    def ends_on_x0(self, sde: SDE) -> bool:
        """Whether ``denoise`` returns the last evaluation's x̂_0 rather than the last step's mean."""
        return self.end == "x0" or (self.end == "auto" and float(sde.std(0.0)) > 0.0)

    def step(self, ctx: Context, state: State, t: float, t_next: float) -> State:
        x = state.x
        corrector = _lookup("corrector", CORRECTORS, self.corrector)
        final, start = state.memory if isinstance(state.memory, tuple) else (None, None)
        frac = 1.0 if start is None or start == final else min(1.0, (start - t_next) / (start - final))
        t_c = t + self.shift(ctx.sde, frac) * (t_next - t)  # the corrector moves with the step (t_eval)
        for _ in range(self._corrector_steps):  # corrector first
            x, _ = corrector(ctx.sde, ctx.score, x, t_c, ctx.noise, snr=self.snr, n_steps=1, norm=self.snr_norm)
            x = ctx.settle(x, t)
        if ctx.denoise and t_next == final and self.ends_on_x0(ctx.sde):
            x, x_mean = self._propose_x0(ctx, x, t, t_next, frac)
        else:
            x, x_mean = self.propose(ctx, x, t, t_next, frac)
        return state.advance(ctx.settle(x, t_next), t_next, x_mean)

    def _propose_x0(self, ctx: Context, x: Tensor, t: float, t_next: float, frac: float) -> predictors.Step:
        """The predictor's move, with x̂_0 = (y + σ(τ)² s)/m(τ) of its (last) evaluation s = s(y, τ) in
        place of its mean (the mean when the predictor evaluates nothing)."""
        seen = []

        def score(y, tt):
            out = ctx.score(y, tt)
            seen.append((y, out, tt))
            return out

        x_new, x_mean = self.propose(dataclasses.replace(ctx, score=score), x, t, t_next, frac)
        if not seen:
            return predictors.Step(x_new, x_mean)
        y, s, tt = seen[-1]
        m, sigma = ctx.sde.marginal(float(tt))
        return predictors.Step(x_new, torch.add(y, s, alpha=sigma * sigma).div_(m))

    def propose(self, ctx: Context, x: Tensor, t: float, t_next: float, frac: float = 1.0) -> predictors.Step:
        """The predictor's move t -> t_next with this sampler's options (``variance``, ``t_eval``,
        ``coefficients``); ``frac`` = (T − t')/(T − t_N), the part of the run's time span done after this step
        (``t_eval="ramped"``)."""
        predictor, t0, t1 = self._predictor, t, t_next
        if self.variance and predictor is predictors.ancestral:
            predictor = functools.partial(predictor, variance=self.variance)
        if predictor is predictors.reverse_diffusion:
            predictor = functools.partial(predictor, coefficients=self.coefficients_on(ctx.sde))
        theta = self.shift(ctx.sde, frac)
        if theta:  # the step taken on the interval shifted by θ dt
            t0 = t + theta * (t_next - t)
            t1 = t0 + (t_next - t)
            if predictor is not predictors.euler_maruyama:
                t1 = max(t1, 0.0)  # transition-based steps: the interval is cut at t = 0
        return predictor(ctx.sde, ctx.score, x, t0, t1, ctx.noise)


@dataclass(frozen=True)
class AnnealedLangevin(SamplerBase):
    """Annealed Langevin dynamics (NCSN; Song & Ermon 2019, Algorithm 1).

    Levels are the grid times t_1 > ... > t_L (for VE on the default log-SNR grid: geometric
    noise levels σ_1 > ... > σ_L).  At level i, ``n_steps_each`` steps of
    x' = x + (α_i/2) s(x, t_i) + √α_i z with α_i = ε σ_i² / σ_L² (NCSN's ε = ``step_lr``).
    For VP-type SDEs the data scale m(t) also changes between levels; Langevin cannot follow it
    once σ_i is below the data's own scale, so x is rescaled by m(t_i)/m(t_{i−1}) on entering a
    level (ALD on x/m, which is exactly NCSN's algorithm for VE, where m = 1).
    Step size: ``step_lr`` if given; else α_i = ``step_ratio`` · σ_i² (ε = step_ratio · σ_L²),
    by default 2, where one step is x' = m x̂_0(x) + √2 σ_i z (the Tweedie mean, renoised);
    ``step_ratio=None`` picks ε by NCSNv2's Technique 4 (Song & Ermon 2020: the variance ratio
    of a point mass's chain nearest 1 for the grid's level ratio), which here takes steps 4-30x
    smaller (α_i/σ_i² = 0.06-0.24 at 10-100 levels) and mixes too slowly: measured on the 2-D and
    64-d mixtures, VP / sub-VP / VE, 3 seeds, 10k samples (×floor, W2 / log-density gap),
    Technique 4 → ratio 2: 8-ring VE 100 levels 3.06 / 17.7 → 1.01 / 0.66, 2-mode VP 100 levels
    16.1 / 46.2 → 1.45 / 1.35, 64-d VE 10 levels 8.73 / 1084 → 1.27 / 64 (benchmarks/
    classical_results.md); ratios 1.5-2.5 were within 2x of each other, 3 unstable on the
    2-mode mixture (VE logp 6.0).  With ``denoise`` a final Tweedie step x̂_0 = (x + σ_L² s)/m (1 NFE).
    """

    n_steps_each: int = option(10, within="[1, inf)", integer=True)
    step_lr: float | None = option(None, within="(0, inf)", allow_none=True)
    step_ratio: float | None = option(2.0, within="(0, 4)", allow_none=True)
    default_grid: str = "log_snr"
    default_steps: int = 100
    order: float = 1.0
    stochastic: ClassVar[bool] = True

    @property
    def nfe_per_step(self) -> int:
        return self.n_steps_each

    def init(self, ctx: Context, x: Tensor, ts: list[float]) -> State:
        from ..ncsn import ald_step_size

        sig = [ctx.sde.std(t) for t in ts[1:]]
        gamma = (sig[0] / sig[-1]) ** (1.0 / (len(sig) - 1)) if len(sig) > 1 else 1.0
        if self.step_lr is not None:
            lr = self.step_lr
        elif self.step_ratio is not None:
            lr = self.step_ratio * sig[-1] ** 2
        else:
            lr = ald_step_size(gamma, self.n_steps_each, sig[-1])
        return State(x, ts[0], memory=(lr, sig[-1]), stats={"step_lr": lr})

    def step(self, ctx: Context, state: State, t_prev: float, t: float) -> State:
        lr, sigma_last = state.memory
        x, sde = state.x, ctx.sde
        ratio = sde.mean_scale(t) / sde.mean_scale(t_prev)
        if ratio != 1.0:
            x = x * ratio  # follow m(t) between levels
        x = ctx.settle(x, t)
        alpha = lr * (sde.std(t) / sigma_last) ** 2
        for _ in range(self.n_steps_each):
            s = ctx.score(x, t)
            x = ctx.settle(ctx.noise(x.shape, std=alpha**0.5).add_(x).add_(s, alpha=0.5 * alpha), t)
        return state.advance(x, t)


@dataclass(frozen=True)
class ProbabilityFlowODE(SamplerBase):
    """Probability-flow ODE with an adaptive Runge-Kutta solver (torchdiffeq, stepped one proposal at a time).

    Integrates dx/dt = f(t) x − ½ g(t)² s(x, t) from T to eps through the grid times (the
    trajectory is reported there, interpolated as torchdiffeq does); with ``denoise`` a final
    Tweedie step (1 NFE).  The batch shares one step size (the error norm is over the whole
    batch); the initial-step probe stays inside [eps, T] and the step landing on eps is pinned,
    so the score is never evaluated outside it.  Default ``solver="rk45"``: Dormand-Prince 5(4)
    with the error estimate and step-size rule of scipy's RK45 (score_sde's ODE sampler), so a tolerance
    means what it means there and a solve takes scipy's steps; torchdiffeq's "dopri5" estimates with
    Shampine's weights (larger steps near t = 0) and never shrinks a step after accepting it.
    ``max_steps`` bounds the proposed steps (``StepLimitError`` names the time reached).  float16 and
    bfloat16 states are integrated in float32 (their step-size arithmetic underflows) and cast back.
    ``solver``: any torchdiffeq method; the adaptive Runge-Kutta ones (dopri5, dopri8, bosh3,
    fehlberg2, adaptive_heun) are stepped one proposal at a time, others are solved whole.
    Reference: Song et al. 2021, §4.3 and Appendix D; Dormand & Prince 1980.
    """

    rtol: float = option(1e-5, within="(0, inf)")
    atol: float = option(1e-5, within="(0, inf)")
    solver: str = "rk45"
    options: dict = field(default_factory=dict)
    max_steps: int = option(ode.DEFAULT_MAX_STEPS, within="[1, inf)", integer=True)
    default_grid: str = "uniform"
    default_steps: int = 1
    order: float = 5.0
    nfe_per_step: ClassVar[None] = None
    batch_coupling: ClassVar[str] = ("dopri5 shares one step size across the batch (samples differ within "
                                     "rtol/atol); ode_adaptive_ps steps each sample on its own")

    def init(self, ctx: Context, x: Tensor, ts: list[float]) -> State:
        x = ctx.settle(x, ts[0])
        work = ode.working_dtype(x.dtype)  # float16/bfloat16 states are integrated in float32
        t = torch.tensor(ts, dtype=torch.float64).to(device=x.device, dtype=torch.promote_types(work, torch.float32))
        opts = {"step_t": t[-1:].clone()} if self.solver in STEPWISE else {}
        opts.update(self.options)
        if "max_num_steps" in opts or "max_steps" in opts:
            raise ValueError("cap the attempted steps with max_steps=N (ProbabilityFlowODE(max_steps=N) or "
                             "sample(..., max_steps=N)), not options={'max_num_steps': N}")
        sde, score, stats = ctx.sde, ctx.score, {"solver": self.solver, "rtol": self.rtol, "atol": self.atol,
                                                 "rhs_evals": 0}

        score_w = ode.score_in_dtype(score, x.dtype, work)

        def drift(tt: Tensor, y: Tensor) -> Tensor:
            stats["rhs_evals"] += 1
            return ode.flow_drift(sde, score_w, y, tt)

        ode_ = StepwiseODE(drift, x.to(work), t, rtol=self.rtol, atol=self.atol, method=self.solver, options=opts)
        return State(x, ts[0], memory=[ode_, 1, ts, ctx], stats=stats)

    def attempt(self, ctx: Context, state: State, t_end: float) -> State:
        ode_ = state.memory[0]
        state.accepted = ode_.attempt()
        state.i += 1
        state.t = ode_.t_reached
        return state

    def reached(self, state: State, t_end: float) -> bool:
        ode_, k, ts, ctx = state.memory
        if not ode_.reached(k):
            return False
        x = ode_.value(k).to(state.x.dtype)  # the state at the output time ts[k]
        state.x, state.t = ctx.settle(x, ts[k]), ts[k]
        state.memory[1] = k + 1
        f = ode_.func
        state.stats.update(steps_accepted=f.accepted, steps_rejected=f.rejected,
                           steps_attempted=f.accepted + f.rejected)
        return True

    def step(self, ctx: Context, state: State, t: float, t_next: float) -> State:
        while not self.reached(state, t_next):
            state = self.attempt(ctx, state, t_next)
        return state


@renamed(method="scheme")
@dataclass(frozen=True)
class FixedStepODE(SamplerBase):
    """Probability-flow ODE on the grid with a fixed-step method: ``scheme="euler"`` (order 1,
    1 NFE per step) or ``"heun"`` (order 2, 2 NFE per step); with ``denoise`` a final Tweedie
    step.  Reference: Song et al. 2021, eq. 13; Karras et al. 2022, Algorithm 1 (Heun)."""

    _SCHEMES: ClassVar[dict] = {"euler": (ode.euler_step, 1, 1.0), "heun": (ode.heun_step, 2, 2.0)}
    scheme: str = option("heun", choices=tuple(_SCHEMES))
    default_grid: str = "uniform"
    default_steps: int = 100

    @property
    def nfe_per_step(self) -> int:
        return self._SCHEMES[self.scheme][1]

    @property
    def order(self) -> float:
        return self._SCHEMES[self.scheme][2]

    def step(self, ctx: Context, state: State, t: float, t_next: float) -> State:
        x, _ = self._SCHEMES[self.scheme][0](ctx.sde, ctx.score, state.x, t, t_next)
        return state.advance(ctx.settle(x, t_next), t_next)
