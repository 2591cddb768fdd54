"""The one place that touches torchsde's internals: a solver object whose ``step(t0, t1, y,
extra)`` takes exactly one step of a given method (``torchsde.sdeint`` would step a fixed dt
across the grid and interpolate)."""

from __future__ import annotations

__all__ = ["stepper"]


def stepper(sde, bm, method: str, sde_type: str, dt: float):
    """torchsde's solver for ``method`` on ``sde`` (an object in torchsde's f/g/g_prod protocol,
    with ``noise_type``/``sde_type``) driven by the Brownian motion ``bm``; call
    ``init_extra_solver_state(t0, y0)`` once, then ``step(t0, t1, y, extra) -> (y, extra)``."""
    from torchsde._core import base_sde, methods

    return methods.select(method=method, sde_type=sde_type)(
        sde=base_sde.ForwardSDE(sde), bm=bm, dt=dt, adaptive=False, rtol=0.0, atol=0.0, dt_min=0.0, options={})
