"""The one place that touches torchdiffeq's internals: its adaptive Runge-Kutta solvers driven
one attempted step at a time, exactly as ``torchdiffeq.odeint`` drives them (same input checks,
same solver object, same interpolation at the output times), so a stepwise solve returns the
same numbers as ``odeint``.  Solvers that are not adaptive Runge-Kutta (fixed-grid methods,
``scipy_solver``) are solved whole by ``odeint`` and reported at the output times.

Accepted and rejected steps are counted by torchdiffeq's own step callbacks.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["StepwiseODE", "ADAPTIVE_RK", "weightless_stages"]

ADAPTIVE_RK = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")


class _Func(torch.nn.Module):
    """dy/dt = f(t, y) with torchdiffeq's step callbacks counting accepted and rejected steps."""

    def __init__(self, f: Callable[[Tensor, Tensor], Tensor]):
        super().__init__()
        self.f = f
        self.accepted = 0
        self.rejected = 0

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        return self.f(t, y)

    def callback_accept_step(self, t0, y0, dt) -> None:
        self.accepted += 1

    def callback_reject_step(self, t0, y0, dt) -> None:
        self.rejected += 1


class StepwiseODE:
    """Integrate dy/dt = f(t, y) from ts[0] through the monotone output times ``ts``.

    ``attempt()`` proposes one step (True when accepted); ``reached(k)`` tells whether the solve
    has passed output time ts[k]; ``value(k)`` is the state there (interpolated, as odeint does).
    ``t_reached`` is the time the accepted steps have reached (in the caller's direction).
    """

    def __init__(self, f: Callable[[Tensor, Tensor], Tensor], y0: Tensor, ts: Tensor, *, rtol: float,
                 atol: float, method: str = "dopri5", options: dict | None = None):
        from torchdiffeq._impl.misc import _check_inputs
        from torchdiffeq._impl.odeint import SOLVERS
        from torchdiffeq._impl.rk_common import RKAdaptiveStepsizeODESolver

        self.func = _Func(f)
        _, func, y0, t, rtol, atol, method, options, _, self.reversed = _check_inputs(
            self.func, y0, ts, rtol, atol, method, options, None, SOLVERS)
        self.solver = SOLVERS[method](func=func, y0=y0, rtol=rtol, atol=atol, **options)
        self.t = t.to(self.solver.dtype)
        self.stepwise = isinstance(self.solver, RKAdaptiveStepsizeODESolver)
        if self.stepwise:
            self.solver._before_integrate(self.t)
        else:  # not adaptive Runge-Kutta: the whole solve at once
            self.ys = self.solver.integrate(self.t)

    def attempt(self) -> bool:
        before = self.solver.rk_state.t1
        self.solver.rk_state = self.solver._adaptive_step(self.solver.rk_state)
        return bool(self.solver.rk_state.t1 != before)

    def reached(self, k: int) -> bool:
        return not self.stepwise or not bool(self.t[k] > self.solver.rk_state.t1)

    def value(self, k: int) -> Tensor:
        if not self.stepwise:
            return self.ys[k]
        from torchdiffeq._impl.interp import _interp_evaluate

        rk = self.solver.rk_state
        return _interp_evaluate(rk.interp_coeff, rk.t0, rk.t1, self.t[k])

    @property
    def t_reached(self) -> float:
        t = float(self.solver.rk_state.t1) if self.stepwise else float(self.t[-1])
        return -t if self.reversed else t

    @property
    def state(self) -> Tensor:
        """The solution at ``t_reached``."""
        return self.solver.rk_state.y1 if self.stepwise else self.ys[-1]


def weightless_stages(method: str) -> frozenset[int]:
    """Stages j (j-th evaluation of a step, j >= 1) whose derivative has weight 0 in the solution,
    the error estimate and the dense-output interpolant of torchdiffeq's tableau for ``method``
    (dopri5: the c = 1/5 stage; dopri8: 4 of 12); empty when the layout is not the expected one."""
    try:
        from torchdiffeq._impl.odeint import SOLVERS

        solver = SOLVERS[method]
        tab, mid = solver.tableau, solver.mid
        n = len(tab.alpha)
        return frozenset(j for j in range(1, n)  # the last stage is the next step's first (FSAL)
                         if tab.c_sol[j] == 0 and tab.c_error[j] == 0 and mid[j] == 0)
    except (ImportError, AttributeError, KeyError, IndexError):  # another torchdiffeq layout
        return frozenset()
