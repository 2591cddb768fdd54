"""The probability-flow ODE dx/dt = f(t) x − ½ g(t)² ∇ log p_t(x): drift, fixed-step and
adaptive (torchdiffeq) solvers.

Reference: Song et al. 2021, eq. 13 and §4.3; Dormand & Prince 1980 (RK45 / dopri5).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .predictors import Step
from .sde import SDE, reverse_drift

__all__ = ["flow_drift", "euler_step", "heun_step", "tweedie_denoise", "solve_adaptive"]


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


def solve_adaptive(
    sde: SDE, score, x: Tensor, ts: Tensor, *, rtol: float, atol: float, method: str = "dopri5",
    options: dict | None = None,
) -> tuple[Tensor, dict]:
    """Integrate the probability-flow ODE through the decreasing times ``ts`` with torchdiffeq.

    Returns the states at ``ts`` (len(ts), B, ...) and solver statistics.  The solver is pinned
    to land on ts[-1] exactly (``step_t``), so it never evaluates the score at t < eps.
    """
    import torchdiffeq

    t = ts.to(device=x.device, dtype=torch.promote_types(x.dtype, torch.float32))
    opts = {} if method not in ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun") else {
        "step_t": t[-1:].clone()
    }
    opts.update(options or {})

    times: list[float] = []

    def func(tt: Tensor, y: Tensor) -> Tensor:
        times.append(float(tt))
        return flow_drift(sde, score, y, tt)

    ys = torchdiffeq.odeint(func, x, t, rtol=rtol, atol=atol, method=method, options=opts)
    return ys, {"solver": method, "rtol": rtol, "atol": atol, "rhs_evals": len(times),
                **(dopri5_step_counts(times) if method == "dopri5" else {})}


def dopri5_step_counts(times: list[float]) -> dict:
    """Accepted and rejected steps of a torchdiffeq dopri5 solve, read off the times at which
    the right-hand side was evaluated: two calls choose the first step, then every attempted
    step evaluates stages at t0 + c·h, c = (1/5, 3/10, 4/5, 8/9, 1, 1) (the first stage is reused
    from the previous step), so t0 = (5 τ_1 − τ_5) / 4; an attempt is rejected when the next one
    starts from the same t0."""
    body = times[2:]
    n = len(body) // 6
    if n == 0 or len(body) % 6:
        return {}
    t0 = [(5 * body[6 * k] - body[6 * k + 4]) / 4 for k in range(n)]
    h = [body[6 * k + 4] - t0[k] for k in range(n)]
    # the stage times carry the solver dtype's rounding: same start = within 1e-3 of a step
    rejected = sum(abs(t0[k + 1] - t0[k]) <= 1e-3 * abs(h[k]) for k in range(n - 1))
    return {"steps_attempted": n, "steps_accepted": n - rejected, "steps_rejected": rejected}

