"""The probability-flow ODE dx/dt = f(t) x − ½ g(t)² ∇ log p_t(x): drift, fixed-step and
adaptive (torchdiffeq) solvers.

Reference: Song et al. 2021, eq. 13 and §4.3; Dormand & Prince 1980 (RK45 / dopri5).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._torchdiffeq import STEPWISE, initial_step, solvers
from .predictors import Step
from .sde import SDE, reverse_drift

__all__ = ["flow_drift", "euler_step", "heun_step", "tweedie_denoise", "solve_adaptive", "StepLimitError",
           "DEFAULT_MAX_STEPS"]


def flow_drift(sde: SDE, score, x: Tensor, t: float | Tensor) -> Tensor:
    """F(x, t) = f(t) x − ½ g(t)² s(x, t): one score evaluation."""
    if isinstance(t, Tensor):
        t = t.expand(x.shape[0])
    return reverse_drift(sde, score(x, t), x, t, probability_flow=True)


def euler_step(sde: SDE, score, x: Tensor, t: float, t_next: float, noise=None) -> Step:
    """x' = x + F(x, t) dt.  Order 1, one evaluation."""
    x = x + (t_next - t) * flow_drift(sde, score, x, t)
    return Step(x, x)


def heun_step(sde: SDE, score, x: Tensor, t: float, t_next: float, noise=None) -> Step:
    """Heun (explicit trapezoid): x̃ = x + F(x,t) dt; x' = x + ½ [F(x,t) + F(x̃,t')] dt.
    Order 2, two evaluations.  Reference: Karras et al. 2022, Algorithm 1."""
    dt = t_next - t
    d1 = flow_drift(sde, score, x, t)
    x_pred = x + dt * d1
    x = x + (0.5 * dt) * (d1 + flow_drift(sde, score, x_pred, t_next))
    return Step(x, x)


def tweedie_denoise(sde: SDE, score, x: Tensor, t: float) -> Tensor:
    """E[x_0 | x_t] = (x + σ(t)² s(x, t)) / m(t) (Tweedie's formula): one evaluation."""
    m, s = sde.marginal(t)
    return (x + (s * s) * score(x, t)) / m


DEFAULT_MAX_STEPS = 10_000
LOW_PRECISION = (torch.float16, torch.bfloat16)


class StepLimitError(RuntimeError):
    """An adaptive solve used up its step budget (``max_steps``) before reaching its end time."""


def check_max_steps(max_steps) -> int:
    """``max_steps`` as an int >= 1, or ValueError naming it."""
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"max_steps must be an integer >= 1 (attempted steps of an adaptive solve), "
                         f"got {max_steps!r}")
    return max_steps


def step_limit_error(what: str, max_steps: int, t: float, t0: float, t1: float, how: str) -> StepLimitError:
    """The error of a solve from t0 to t1 stopped at t after ``max_steps`` attempted steps."""
    return StepLimitError(f"the {what} solve from t={t0:.6g} to t={t1:.6g} stopped at t={t:.6g}: its step "
                          f"budget of {max_steps} attempted steps is used up (tolerances too tight for this "
                          f"score or data?); raise it with {how} or loosen rtol/atol")


def working_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype an adaptive solve integrates in: float32 for float16/bfloat16 (their step-size
    arithmetic underflows to t = NaN), else ``dtype``."""
    return torch.float32 if dtype in LOW_PRECISION else dtype


def score_in_dtype(score, dtype: torch.dtype, work: torch.dtype):
    """``score`` called with x cast to ``dtype`` (the user's), its output cast to ``work``."""
    if dtype == work:
        return score

    def cast(x: Tensor, t) -> Tensor:
        return score(x.to(dtype), t).to(work)

    return cast


class _Rhs:
    """The flow's right-hand side for torchdiffeq, counting attempted steps against a budget."""

    def __init__(self, sde: SDE, score, max_steps: int, t0: float, t1: float, how: str, method: str):
        self.sde, self.score, self.max_steps, self.how, self.method = sde, score, max_steps, how, method
        self.t0, self.t1, self.t, self.attempts, self.accepted, self.rejected = t0, t1, t0, 0, 0, 0
        self.times: list[float] = []
        self.known: tuple[Tensor, Tensor] | None = None  # (y_0, f(t_0, y_0)) already evaluated

    def __call__(self, tt: Tensor, y: Tensor) -> Tensor:
        if self.known is not None and y is self.known[0]:  # the solver's own start: not evaluated twice
            out, self.known = self.known[1], None
            return out
        self.times.append(float(tt))
        return flow_drift(self.sde, self.score, y, tt)

    def callback_step(self, t0: Tensor, y0, dt: Tensor) -> None:
        self.attempts += 1
        if self.attempts > self.max_steps:
            raise step_limit_error(self.method, self.max_steps, self.t, self.t0, self.t1, self.how)

    def callback_accept_step(self, t0: Tensor, y0, dt: Tensor) -> None:
        self.t = float(t0 + dt)
        self.accepted += 1

    def callback_reject_step(self, t0: Tensor, y0, dt: Tensor) -> None:
        self.rejected += 1


def solve_adaptive(
    sde: SDE, score, x: Tensor, ts: Tensor, *, rtol: float, atol: float, method: str = "dopri5",
    options: dict | None = None, max_steps: int | None = None,
) -> tuple[Tensor, dict]:
    """Integrate the probability-flow ODE through the decreasing times ``ts`` with torchdiffeq.

    The solver is pinned to land on ts[-1] exactly (``step_t``), so it never evaluates the score
    at t < eps.  float16/bfloat16 states are integrated in float32 (the score still sees x in the
    state's dtype) and the result is cast back.

    Args:
        sde, score: the SDE and the score (x, t) -> s.
        x: (B, ...) states at ts[0].
        ts: decreasing times, ts[0] the start.
        rtol, atol: torchdiffeq tolerances.
        method: a torchdiffeq solver name.
        options: torchdiffeq options; ``max_num_steps`` (or ``max_steps``) there sets ``max_steps``.
        max_steps: budget of attempted steps over the whole solve (default 10 000).

    Returns:
        The states at ``ts`` (len(ts), B, ...) in x's dtype, and solver statistics.

    Raises:
        StepLimitError: the budget ran out; the message names the time reached.
    """
    import torchdiffeq

    solvers()  # torchdiffeq's, with "rk45" registered
    opts = dict(options or {})
    given = opts.pop("max_steps", opts.pop("max_num_steps", None))
    budget = max_steps if max_steps is not None else given
    budget = check_max_steps(DEFAULT_MAX_STEPS if budget is None else budget)
    work = working_dtype(x.dtype)
    t = ts.to(device=x.device, dtype=torch.promote_types(work, torch.float32))
    if method in STEPWISE:
        opts = {"step_t": t[-1:].clone(), **opts}
    how = "max_steps="
    rhs = _Rhs(sde, score_in_dtype(score, x.dtype, work), budget, float(t[0]), float(t[-1]), how, method)
    y0 = x.to(work)
    if method in STEPWISE and "first_step" not in opts:  # torchdiffeq's own probes beyond the interval
        f0 = rhs(t[0], y0)
        opts["first_step"] = initial_step(rhs, t[0], y0, f0, t[-1], rtol, atol, opts.get("norm"),
                                          solvers()[method].order)
        rhs.known = (y0, f0)
    ys = torchdiffeq.odeint(rhs, y0, t, rtol=rtol, atol=atol, method=method, options=opts)
    steps = {"steps_attempted": rhs.accepted + rhs.rejected, "steps_accepted": rhs.accepted,
             "steps_rejected": rhs.rejected} if method in STEPWISE else {}  # torchdiffeq's own callbacks
    return ys.to(x.dtype), {"solver": method, "rtol": rtol, "atol": atol, "rhs_evals": len(rhs.times), **steps}

