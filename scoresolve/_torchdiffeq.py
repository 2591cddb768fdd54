"""The one place that touches torchdiffeq's internals: its adaptive Runge-Kutta solvers driven
one attempted step at a time, exactly as ``torchdiffeq.odeint`` drives them (same input checks,
same solver object, same interpolation at the output times), so a stepwise solve returns the
same numbers as ``odeint``.  Solvers that are not adaptive Runge-Kutta (fixed-grid methods,
``scipy_solver``) are solved whole by ``odeint`` and reported at the output times.

Accepted and rejected steps are counted by torchdiffeq's own step callbacks.  Two departures
from torchdiffeq, both towards scipy's RK45 (score_sde's ODE sampler): the initial step's probe
stays inside the interval, and the solver "rk45" (registered into torchdiffeq's table) estimates
its error with Dormand and Prince's own fourth-order weights and sizes its steps by scipy's rule.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["StepwiseODE", "ADAPTIVE_RK", "STEPWISE", "initial_step", "solvers", "weightless_stages"]

ADAPTIVE_RK = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")  # torchdiffeq's
STEPWISE = ("rk45",) + ADAPTIVE_RK  # what StepwiseODE steps one proposal at a time


def solvers() -> dict:
    """torchdiffeq's solvers, with "rk45" added: Dormand-Prince 5(4) with the error estimate of Dormand and
    Prince's own embedded fourth-order weights, as scipy's RK45 (score_sde's ODE sampler) has it.
    torchdiffeq's dopri5 estimates its error with Shampine's weights instead, which accept larger
    steps towards t = 0 on VE (the 8-ring at rtol 1e-3: 69 NFE and 4.3× the W2 floor where scipy's
    estimate takes 77 and reaches it).  Its steps are sized by scipy's rule too (see ``RK45``): a whole
    solve takes scipy's accepted steps and evaluation count."""
    from torchdiffeq._impl.dopri5 import Dopri5Solver
    from torchdiffeq._impl.odeint import SOLVERS

    if "rk45" not in SOLVERS:  # registered once, so torchdiffeq.odeint(method="rk45") works too
        tab = Dopri5Solver.tableau
        b_hat = torch.tensor([5179 / 57600, 0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40],
                             dtype=torch.float64)

        class RK45(Dopri5Solver):
            """Dopri5 with scipy's error weights and scipy's step-size rule after an accepted step:
            h ← h · min(10, 0.9 err^(−1/5)) (torchdiffeq's ``ifactor`` and ``safety`` options), capped at 1
            if the step was rejected before (torchdiffeq never shrinks an accepted step: its factor is
            at least 1 there).  Rejections are unchanged (both take max(0.2, 0.9 err^(−1/5)))."""

            tableau = tab._replace(c_error=tab.c_sol - b_hat)

            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                norm, self._err, self._retried = self.norm, None, False

                def recorded(x):  # torchdiffeq's error ratio of the step in progress
                    self._err = norm(x)
                    return self._err

                self.norm = recorded

            def _adaptive_step(self, rk_state):
                out = super()._adaptive_step(rk_state)
                if out.t1 == rk_state.t1:  # rejected
                    self._retried = True
                    return out
                err, grow = float(self._err), float(self.ifactor)  # scipy: SAFETY 0.9, MAX_FACTOR 10 (the defaults)
                factor = grow if err == 0 else min(grow, float(self.safety) * err ** (-1.0 / float(self.order)))
                if self._retried:
                    factor, self._retried = min(1.0, factor), False
                dt = ((out.t1 - rk_state.t1) * factor).clamp(self.min_step, self.max_step)
                return out._replace(dt=dt)

        SOLVERS["rk45"] = RK45
    return SOLVERS


def initial_step(f, t0: Tensor, y0: Tensor, f0: Tensor, t1: Tensor, rtol, atol, norm, order: int) -> Tensor:
    """The initial step of Hairer, Nørsett & Wanner (ODEs I, §II.4), as torchdiffeq and scipy
    choose it, but with the probe f(t_0 + h_0, y_0 + h_0 f_0) kept inside [t_0, t_1] (as scipy does):
    torchdiffeq probes however far beyond the end that lies (the VP score at t = −22 from the ODE
    sampler, the VE score at t = 1.13 > T from encode), and its first step then spans the interval.
    One evaluation (the probe); returns the step's size.  ``norm`` None: the RMS, torchdiffeq's default."""
    norm = norm or (lambda e: e.abs().pow(2).mean().sqrt())
    direction, span = torch.sign(t1 - t0), (t1 - t0).abs()
    scale = atol + y0.abs() * rtol
    d0, d1 = norm(y0 / scale).abs(), norm(f0 / scale).abs()
    h0 = torch.where((d0 < 1e-5) | (d1 < 1e-5), torch.full_like(d0, 1e-6), 0.01 * d0 / d1)
    h0 = torch.minimum(h0.to(t0.dtype), span)
    step = direction * h0
    f1 = f(t0 + step, y0 + step.to(y0.dtype) * f0)
    d2 = (norm((f1 - f0) / scale) / h0.to(f0.dtype)).abs()
    dmax = torch.maximum(d1, d2)
    h1 = torch.where(dmax <= 1e-15, torch.clamp(h0 * 1e-3, min=1e-6), (0.01 / dmax.to(t0.dtype)) ** (1.0 / order))
    return torch.minimum(torch.minimum(100 * h0, h1), span)


class _Func(torch.nn.Module):
    """dy/dt = f(t, y) with torchdiffeq's step callbacks counting accepted and rejected steps."""

    def __init__(self, f: Callable[[Tensor, Tensor], Tensor]):
        super().__init__()
        self.f = f
        self.accepted = 0
        self.rejected = 0
        self.known: tuple[Tensor, Tensor] | None = None  # (y, f(t_0, y)) already evaluated
        self.last: tuple[Tensor, Tensor] | None = None

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        if self.known is not None and y is self.known[0]:  # the solver's own start: not evaluated twice
            out, self.known = self.known[1], None
            return out
        out = self.f(t, y)
        self.last = (y, out)
        return out

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
                 atol: float, method: str = "rk45", options: dict | None = None):
        from torchdiffeq._impl.misc import _check_inputs
        from torchdiffeq._impl.rk_common import RKAdaptiveStepsizeODESolver

        SOLVERS = solvers()
        self.func = _Func(f)
        _, func, y0, t, rtol, atol, method, options, _, self.reversed = _check_inputs(
            self.func, y0, ts, rtol, atol, method, options, None, SOLVERS)
        self.solver = SOLVERS[method](func=func, y0=y0, rtol=rtol, atol=atol, **options)
        self.t = t.to(self.solver.dtype)
        self.stepwise = isinstance(self.solver, RKAdaptiveStepsizeODESolver)
        if self.stepwise:
            if self.solver.first_step is None:
                self.solver.first_step = self._first_step()
            self.solver._before_integrate(self.t)
        else:  # not adaptive Runge-Kutta: the whole solve at once
            self.ys = self.solver.integrate(self.t)

    def _first_step(self) -> Tensor:
        """``initial_step`` in the solver's own (increasing) time; the solver's own f(t_0) call is
        then served from it."""
        s = self.solver
        f0 = s.func(self.t[0], s.y0)  # in the solver's time (torchdiffeq reverses a decreasing one)
        self.func.known = self.func.last  # what f itself returned, for the solver's own first call
        return initial_step(s.func, self.t[0], s.y0, f0, self.t[-1], s.rtol, s.atol, s.norm, s.order)

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
        solver = solvers()[method]
        tab, mid = solver.tableau, solver.mid
        n = len(tab.alpha)
        return frozenset(j for j in range(1, n)  # the last stage is the next step's first (FSAL)
                         if tab.c_sol[j] == 0 and tab.c_error[j] == 0 and mid[j] == 0)
    except (ImportError, AttributeError, KeyError, IndexError):  # another torchdiffeq layout
        return frozenset()
