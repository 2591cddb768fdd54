"""The one loop that drives every sampler: grid iteration, trajectory, progress, callbacks, step
budget and the final denoising.  Samplers only step (``protocol.Sampler``); whatever is written
here works for every method."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

from torch import Tensor
from tqdm.auto import tqdm

from .ode import step_limit_error
from .protocol import Context, Sampler, tail_step

__all__ = ["run", "Solve"]


class Solve(NamedTuple):
    """What ``run`` returns: the samples, the states on the grid (or None) and the statistics."""

    x: Tensor
    trajectory: list[Tensor] | None
    stats: dict


def _progress(sampler, ts: list[float], progress: bool):
    name = type(sampler).__name__
    if sampler.nfe_per_step is not None:
        return tqdm(total=len(ts) - 1, desc=name, disable=not progress, leave=False)
    # adaptive: the bar shows the time reached, from T down to eps
    return tqdm(total=round(ts[0] - ts[-1], 6), desc=f"{name} (time reached t={ts[0]:.4g})",
                disable=not progress, leave=False, bar_format="{desc} {percentage:3.0f}%|{bar}| [{elapsed}]")


def _t_min(t) -> float:
    """The time every sample has reached (per-sample solvers: the latest of their times)."""
    return float(t.max()) if isinstance(t, Tensor) else float(t)


def run(
    sampler: Sampler,
    ctx: Context,
    x: Tensor,
    ts: list[float],
    *,
    keep: bool = False,
    progress: bool = False,
    callback: Callable[[int, float | Tensor, Tensor, Tensor | None], None] | None = None,
    x0_of: Callable[[], Tensor | None] | None = None,
    max_steps: int | None = None,
) -> Solve:
    """Solve with ``sampler`` from ``x`` at ts[0] through the decreasing grid ``ts``.

    Args:
        sampler: any ``protocol.Sampler`` (adaptive ones are stepped one proposal at a time).
        ctx: SDE, counted score, noise, hooks (``ctx.denoise``: end with the final denoising).
        x: (B, ...) the state at ts[0].
        ts: the grid T = t_0 > ... > t_N = eps (for adaptive samplers: the output times).
        keep: keep the state at every grid time (the trajectory).
        progress: a tqdm bar (grid steps, or the time reached for adaptive samplers).
        callback: ``callback(i, t, x, x0)`` after every accepted step: i counts accepted steps
            (per-sample solvers: proposals in which some sample was accepted), t the time reached
            (a (B,) tensor for per-sample solvers), x the state, x0 the latest x̂₀ (from
            ``x0_of``) or None.
        x0_of: returns the sampler's latest x̂₀ (the Tweedie estimate at its last evaluation).
        max_steps: bound on the proposed steps of an adaptive solve; exceeding it raises
            ``ode.StepLimitError`` naming the time reached.
    """
    score = ctx.score
    bar = _progress(sampler, ts, progress)
    state = sampler.init(ctx, x, ts)
    traj = [state.x] if keep else None
    adaptive = sampler.nfe_per_step is None
    accepted = 0
    try:
        for t, t_next in zip(ts[:-1], ts[1:]):
            if not adaptive:
                score.step = state.i
                state = sampler.step(ctx, state, t, t_next)
                accepted += 1
                bar.update(1)
                if callback is not None:
                    callback(accepted - 1, t_next, state.x, x0_of() if x0_of else None)
            else:
                while not sampler.reached(state, t_next):
                    if max_steps is not None and state.i >= max_steps:
                        raise step_limit_error(type(sampler).__name__, max_steps, _t_min(state.t), ts[0], t_next,
                                               "max_steps=")
                    score.step = state.i
                    state = sampler.attempt(ctx, state, t_next)
                    ok = state.accepted
                    if bool(ok if not isinstance(ok, Tensor) else ok.any()):
                        accepted += 1
                        if callback is not None:
                            callback(accepted - 1, state.t, state.x, x0_of() if x0_of else None)
                    if progress:
                        reached = _t_min(state.t)
                        bar.n = round(ts[0] - reached, 6) if math.isfinite(reached) else bar.n
                        name = type(sampler).__name__
                        bar.set_description_str(f"{name} (time reached t={reached:.4g})", refresh=True)
            if keep:
                traj.append(state.x)
        score.step = state.i
        if ctx.tail is not None:  # here rather than in finish, so that the trajectory reaches the end
            state = tail_step(ctx, state)
            accepted += 1
            if keep:
                traj.append(state.x)
            if callback is not None:
                callback(accepted - 1, state.t, state.x, x0_of() if x0_of else None)
        x = sampler.finish(ctx, state, ctx.denoise)
    finally:
        bar.close()
    return Solve(x, traj, {**state.stats, "accepted_steps": accepted})
