"""``sample``: the one entry point that draws samples with any registered sampler, and
``start``: the same set-up for driving a sampler step by step by hand."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from . import loop
from .checks import (
    check_count,
    check_device,
    check_dtype,
    check_eps,
    check_generator,
    check_sde,
    check_seeds,
    check_shape,
    check_x_init,
    warn_batch_dependent,
)
from .noise import Noise
from .protocol import Context, Sampler, tail_log_snr
from .registry import resolve, with_options
from .results import SampleResult
from .score import CountingScore, LastEvaluation, ScoreFn, ScoreWrapper, all_finite
from .sde import SDE, append_dims
from .timegrid import GRIDS, check_grid, make_grid

__all__ = ["sample", "start", "Start", "steps_for_nfe"]


def steps_for_nfe(method, nfe: int, denoise: bool = True) -> int:
    """The largest step count whose score evaluations fit a budget of ``nfe`` per sample."""
    sampler = resolve("method", method)
    per = sampler.nfe_per_step
    if per is None:
        raise ValueError(f"{type(sampler).__name__} is adaptive: set its rtol/atol, not nfe=")
    steps = (nfe - sampler.extra_nfe(denoise)) // per
    if steps < 1:
        raise ValueError(
            f"nfe={nfe} is below the minimum of this method "
            f"({per + sampler.extra_nfe(denoise)} score evaluations)"
        )
    return int(steps)


def _fixed_step_ode(sampler) -> bool:
    """A deterministic fixed-step sampler: one whose grid can end with the tail step (and be fitted)."""
    return sampler.nfe_per_step is not None and not sampler.stochastic


def _tail_start(sampler, sde: SDE, eps: float) -> float | None:
    """t_c where the generated grid of a fixed-step sampler with ``tail_sigma`` stops, σ̃(t_c) = σ/m =
    tail_sigma, when the run ends below it (``protocol.tail_step`` then ends it), else None.
    Deterministic samplers only; not where the peers are reproduced: DDIM's ``step_to`` (diffusers'
    timesteps), ``lower_order_final="diffusers"``, and the peers' own schedules (``sde.peer_grids``:
    KarrasSDE, DiscreteVPSDE)."""
    sigma = getattr(sampler, "tail_sigma", None)
    if sigma is None or not _fixed_step_ode(sampler):  # (ode_adaptive_ps: its own tail)
        return None
    if getattr(sampler, "step_to", None) is not None or getattr(sampler, "lower_order_final", None) == "diffusers":
        return None  # reproductions of diffusers' / k-diffusion's steps
    if getattr(sde, "peer_grids", False):  # k-diffusion's and diffusers' own schedules: their grids to the end
        return None
    lam_c = tail_log_snr(sde, sde.T, eps, sigma)
    return None if lam_c is None else float(sde.t_from_log_snr(2.0 * lam_c))


class Start(NamedTuple):
    """What ``start`` returns: the sampler, its context (SDE, counted score, noise, hooks), the
    initial state x at ts[0] and the grid ts (Python floats, T → eps; → t_c when ``ctx.tail`` is
    set, and ``finish`` then takes the tail step to eps)."""

    sampler: Sampler
    ctx: Context
    x: Tensor
    ts: list[float]


class _X0View(ScoreWrapper):
    """The score seen through x̂_0 = (x + σ² s)/m: with ``hook``, s is replaced by the score of
    the hooked prediction, (m·hook(x̂_0, t) − x)/σ² (thresholding, clipping), and ``raw`` keeps
    the model's own score of the last call (for DDIM's ``hooked_eps=False``); with ``track``
    the latest x̂_0 is kept for callbacks.  Costs a pass over x per evaluation, only when used."""

    def __init__(self, score, sde: SDE, hook=None, track: bool = False):
        super().__init__(score)
        self.sde, self.hook, self.track, self.x0, self.ctx, self.raw = sde, hook, track, None, None, None

    def __call__(self, x: Tensor, t) -> Tensor:
        s = self.score(x, t)
        m, sd = self.sde.marginal(t)
        if isinstance(m, Tensor):
            m, sd = append_dims(m, x.ndim).to(x.dtype), append_dims(sd, x.ndim).to(x.dtype)
        x0 = (x + sd * sd * s) / m
        if self.hook is not None:
            self.raw = s
            x0 = self.hook(x0, t)
            s = (m * x0 - x) / (sd * sd)
        if self.track:
            rows = None if self.ctx is None else self.ctx.rows
            if rows is None:
                self.x0 = x0
            else:  # an evaluation on some rows (per-sample adaptive solvers): update those rows
                if self.x0 is None or self.x0.shape[0] != self.ctx_batch:
                    self.x0 = torch.full((self.ctx_batch,) + tuple(x0.shape[1:]), float("nan"), dtype=x0.dtype,
                                         device=x0.device)
                self.x0[rows] = x0
        return s


def sample(
    score_fn: ScoreFn,
    sde: SDE,
    shape: Sequence[int],
    method="pc",
    *,
    steps: int | None = None,
    nfe: int | None = None,
    grid: str | Tensor | None = None,
    eps: float | None = None,
    generator: torch.Generator | None = None,
    seeds: Sequence[int] | Tensor | None = None,
    x_init: Tensor | None = None,
    data_mean: str | float | Tensor | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    denoise: bool = True,
    return_trajectory: bool = False,
    progress: bool = False,
    check: bool = True,
    callback: Callable[[int, float | Tensor, Tensor, Tensor | None], None] | None = None,
    x0_hook: Callable[[Tensor, float | Tensor], Tensor] | None = None,
    **options,
) -> SampleResult:
    """Draw samples by solving the reverse-time SDE or the probability-flow ODE of ``sde``.

    Args:
        score_fn: any callable (x, t) -> ∇_x log p_t(x), x of shape (B, ...), t of shape (B,).
        sde: the forward SDE (``VPSDE``, ``SubVPSDE``, ``VESDE``).
        shape: (batch, *data_dims), positive integers.
        method: a name from ``SAMPLERS``, a spec with options (``"unipc:solver_order=4"``, as on the
            command line), or a sampler object.  Classical: "pc", "em",
            "reverse_diffusion", "ancestral", "ald", "ode", "ode_euler", "ode_heun"; fast:
            "ddim", "ddim_eta", "heun_edm", "edm_churn", "dpmpp_2s", "dpmpp_2m", "dpmpp_3m",
            "dpmpp_2m_sde", "unipc", "gotta_go_fast", "ode_adaptive_ps", "ode_adaptive_rk23",
            "sde_srk"; k-diffusion / diffusers names: "euler" (= ddim), "heun" (= heun_edm), "lms",
            "euler_ancestral", "dpm_2", "unipc_bh2", "unipc_bh1" (``list(scoresolve.SAMPLERS)``
            is the authority).
        steps: grid steps, an integer >= 1 (default: the method's); excludes ``nfe``.
        nfe: budget of score evaluations per sample (integer); the step count is derived from it
            (for "ode_adaptive_ps": every sample stays within it, see ``AdaptiveMultistep.nfe_budget``).
        grid: a grid kind ("uniform", "quadratic", "log_snr", "karras"; "scale" for the
            deterministic fixed-step samplers: ``scale_grid``'s grid, its first step out of the prior
            placed from the data's scale read off one evaluation of 256 prior draws at T, which counts
            in the NFE as 256 rows — for small batches make it once with ``scale_grid`` and pass its
            ``sample_options``; 6.4x -> 3.6x the log-density gap's floor at 15 NFE, see
            ``scale_grid``), or a decreasing
            tensor of times from T to eps (then ``steps`` and ``eps`` come from it; with ``eps``
            below its end, the deterministic fixed-step samplers end with the tail step from the
            grid's end to eps, as on their generated grids: ``fit_grid``'s sub-VP grids).
        eps: end time (default ``sde.default_eps``: 1e-3 VP/sub-VP, 1e-5 VE).  Where it lies below
            σ/m = 0.01 (sub-VP's default), "ode_adaptive_ps" and the deterministic exponential samplers
            stop there and end with one score-form step (``protocol.tail_step``, reusing the last
            evaluation: no NFE; option ``tail_sigma``, None to integrate to eps).
        generator: torch.Generator on ``device``; excludes ``seeds``.
        seeds: one integer per sample (int64 range); excludes ``generator``.  Sample i then
            gets the same noise in any batch, and is bit for bit the same sample in any batch
            for the methods whose steps act on each row alone: every fixed-step method and
            "ode_adaptive_ps"/"ode_adaptive_rk23" (per-sample step control), except a
            Langevin corrector with ``snr_norm="batch"`` (the default of "pc": its step size uses
            norms averaged over the batch; a warning says so; pass ``snr_norm="sample"``).  It does
            not hold for "ode" (dopri5 steps shared by the batch: differences within rtol/atol),
            "gotta_go_fast" (draws numbered by the batch's proposals) and "sde_srk" (Brownian path
            seeded from the batch); a warning names the reason (the sampler's ``batch_coupling``).
        x_init: start from these states at T instead of the prior (a finite floating tensor of
            shape ``shape``).
        data_mean: centre the prior draws at m(T) μ, μ the data's mean (a number or a tensor broadcastable
            to a sample), or "estimate": μ̂ read off one evaluation of 256 prior draws at T
            (``scalegrid.data_mean``, seeded like ``grid="scale"``'s pilot and shared with it; the rows count
            in the NFE as 256 rows: for small batches estimate it once and pass the tensor).  The true p_T
            is the data diffused to T, centred at m(T) μ, not 0: from N(0, σ_T² I) the samples inherit the
            offset m(T)|μ|/σ_T (VE: |μ|/σ_max) in the prior's units, which moves mass between modes.
            Measured (benchmarks/prior_centring.md; ``ode_adaptive_ps`` at rtol 1e-4, 10k samples, 16 seeds): the
            per-component W2 over its floor under VE (σ_max = 50) 2.19 → 1.00 on a 4-d mixture with |μ| = 3.9,
            1.26 → 1.02 in 8-d, 1.21 → 0.98 in 16-d, under VP 1.20 → 1.00; the signed log-density bias in 16-d
            −1.27 ± 0.23 → +0.05 ± 0.24 floors.  None (default): N(0, σ_prior² I).
        device, dtype: of the samples (default: the generator's device / x_init's, float32).
            float16/bfloat16: adaptive ODE solves (``ode``) integrate in float32 and cast back.
        denoise: return the noise-free mean of the last step (Tweedie step for ODE/ALD).
        return_trajectory: keep the states at every grid time.
        progress: show a tqdm bar.
        check: validate every score output (shape, device, NaN/Inf with step and time).
        callback: ``callback(i, t, x, x0)`` after every accepted step, for every method: i counts
            accepted steps, t the time reached (a (B,) tensor for per-sample adaptive solvers),
            x the state (do not modify it in place), x0 the x̂_0 of the latest evaluation.
        x0_hook: ``hook(x0, t) -> x0`` applied to every data prediction x̂_0 = (x + σ² s)/m the
            sampler makes (the score is replaced by that of the hooked prediction), e.g.
            clipping to [−1, 1] or dynamic thresholding; works with every method.
        **options: fields of the sampler, e.g. predictor=, corrector=, snr=, rtol=, max_steps=.

    Returns:
        SampleResult(samples, nfe, ts, trajectory, stats) with nfe *counted*; stats hold the wall
        time, the time spent inside the score (``score_time``) and their ratio ``overhead``.

    Raises:
        ValueError / TypeError naming the argument and the valid choices;
        ``scoresolve.StepLimitError`` when an adaptive solve uses up ``max_steps`` (naming the time reached).
    """
    s = start(score_fn, sde, shape, method, steps=steps, nfe=nfe, grid=grid, eps=eps, generator=generator,
              seeds=seeds, x_init=x_init, data_mean=data_mean, device=device, dtype=dtype, denoise=denoise, check=check,
              x0_hook=x0_hook, track_x0=callback is not None, **options)
    sampler, score = s.sampler, s.ctx.score
    wall = time.perf_counter()
    with torch.no_grad():  # a network score must not build a graph across steps (guidance enables it locally)
        solve = loop.run(sampler, s.ctx, s.x, s.ts, keep=return_trajectory, progress=progress,
                         callback=callback, x0_of=(lambda: score.x0) if callback is not None else None,
                         max_steps=getattr(sampler, "max_steps", None))
    if solve.x.is_cuda:
        torch.cuda.synchronize(solve.x.device)
    wall = time.perf_counter() - wall
    ts = s.ts if s.ctx.tail is None else s.ts + [s.ctx.tail[1]]  # the tail step's end
    stats = {"calls": score.calls, "steps": len(ts) - 1, "method": type(sampler).__name__,
             "wall_time": wall, "score_time": score.seconds,
             "overhead": wall / score.seconds if score.seconds > 0 else float("nan"), **solve.stats}
    traj = torch.stack(solve.trajectory) if solve.trajectory is not None else None
    if not all_finite(solve.x):
        raise FloatingPointError(
            f"sampling produced non-finite samples ({type(sampler).__name__}, {len(s.ts) - 1} steps)"
        )
    return SampleResult(solve.x, score.nfe, torch.tensor(ts, dtype=torch.float64), traj, stats)


def _pilot_x0(score: CountingScore, sde: SDE, shape, device: torch.device, dtype: torch.dtype) -> Tensor:
    """x̂_0 at ``SCALE_PILOT`` prior draws at T (seeded ``PILOT_SEED``, in calls of ``PILOT_CHUNK`` rows: the same
    for every seed and batch), from calls of the run's counted score (the rows count in the NFE): what
    ``grid="scale"`` and ``data_mean="estimate"`` read."""
    from .gridfit import prior_draws
    from .scalegrid import PILOT_CHUNK, PILOT_SEED, SCALE_PILOT, pilot_x0

    pilot = torch.Generator(device=device).manual_seed(PILOT_SEED)
    x = prior_draws(sde, (SCALE_PILOT, *shape[1:]), pilot, device, dtype)
    return pilot_x0(score, sde, x, PILOT_CHUNK)


def _scale_grid(x0: Tensor, sampler, method, sde: SDE, steps: int, end: float) -> Tensor:
    """``grid="scale"``: ``scalegrid.scaled_jump``'s grid at the data scale ŝ of the pilot's x̂_0 (``_pilot_x0``)."""
    from .gridfit import fittable_methods
    from .scalegrid import scale_of, scaled_jump

    if not _fixed_step_ode(sampler):
        raise ValueError(f'grid="scale" places the steps of a deterministic fixed-step sampler; method={method!r} '
                         f"is not one; valid choices: {', '.join(fittable_methods())}")
    if steps < 2:
        raise ValueError(f'grid="scale" places at least 2 steps (a first step and the rest), got steps={steps}')
    return scaled_jump(sde, steps, end, scale_of(x0, sde))[0]


def check_data_mean(data_mean, shape: tuple[int, ...], x_init: Tensor | None) -> None:
    """``data_mean``: None, "estimate", a finite number or a finite tensor broadcastable to a sample of ``shape``
    (not with ``x_init``, whose states are used as given)."""
    if data_mean is None:
        return
    if x_init is not None:
        raise ValueError("pass x_init= or data_mean=, not both: data_mean centres the prior draws, x_init "
                         "replaces them")
    if isinstance(data_mean, str):
        if data_mean != "estimate":
            raise ValueError(f"unknown data_mean={data_mean!r}; valid choices: None, 'estimate', a number or a tensor")
        return
    if isinstance(data_mean, bool) or not isinstance(data_mean, (int, float, Tensor)):
        raise TypeError(f"data_mean must be None, 'estimate', a number or a tensor, got {type(data_mean).__name__}")
    mu, dims = torch.as_tensor(data_mean), shape[1:]
    if mu.ndim > len(dims):
        raise ValueError(f"data_mean of shape {tuple(mu.shape)} is larger than a sample of shape {dims}")
    # (torch.broadcast_shapes would import torch.fx on its first call: half a second)
    if any(a not in (1, b) for a, b in zip(reversed(mu.shape), reversed(dims))):
        raise ValueError(f"data_mean has shape {tuple(mu.shape)}, which does not broadcast to a sample of shape {dims}")
    if not bool(torch.isfinite(mu).all()):
        raise ValueError("data_mean contains NaN/Inf")


def start(
    score_fn: ScoreFn,
    sde: SDE,
    shape: Sequence[int],
    method="pc",
    *,
    steps: int | None = None,
    nfe: int | None = None,
    grid: str | Tensor | None = None,
    eps: float | None = None,
    generator: torch.Generator | None = None,
    seeds: Sequence[int] | Tensor | None = None,
    x_init: Tensor | None = None,
    data_mean: str | float | Tensor | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    denoise: bool = True,
    check: bool = True,
    x0_hook: Callable[[Tensor, float | Tensor], Tensor] | None = None,
    track_x0: bool = False,
    **options,
) -> Start:
    """Everything ``sample`` sets up before its loop, for driving a sampler by hand::

        s = scoresolve.start(score_fn, sde, (16, 2), "dpmpp_2m", nfe=20, generator=g)
        state = s.sampler.init(s.ctx, s.x, s.ts)
        for t, t_next in zip(s.ts[:-1], s.ts[1:]):
            state = s.sampler.step(s.ctx, state, t, t_next)   # inspect or edit state.x here
        samples = s.sampler.finish(s.ctx, state, denoise=True)

    gives the samples ``sample`` gives with the same arguments (bit for bit on CPU).  Arguments
    as for ``sample``; ``track_x0`` keeps the latest x̂_0 in ``s.ctx.score.x0``.
    """
    check_sde(sde)
    sampler = with_options(resolve("method", method), options)
    shape = check_shape(shape)
    if steps is not None and nfe is not None:
        raise ValueError("pass steps= or nfe=, not both")
    steps, nfe = check_count("steps", steps), check_count("nfe", nfe)
    if nfe is not None and sampler.nfe_per_step is None and hasattr(sampler, "nfe_budget"):
        sampler, nfe = dataclasses.replace(sampler, nfe_budget=nfe), None  # an adaptive solve within a budget
    if nfe is not None:
        steps = steps_for_nfe(sampler, nfe, denoise)

    # device / dtype / randomness
    check_generator(generator)
    check_x_init(x_init, shape)
    check_data_mean(data_mean, shape, x_init)
    device = check_device(device, x_init, generator)
    dtype = check_dtype(dtype, x_init)
    seeds = check_seeds(seeds, shape[0])
    warn_batch_dependent(sampler, seeds)
    noise = Noise(generator, seeds, device, dtype)

    score = CountingScore(score_fn, shape[0], check=check)
    if x_init is None:  # prior draws: the first call at T can tell a score from a denoiser
        score.prior_check = (float(sde.T), float(sde.std(sde.T)))

    pilot: list[Tensor] = []  # x̂_0 at a fixed pilot of prior draws, evaluated once if asked for

    def pilot_x0() -> Tensor:
        if not pilot:
            pilot.append(_pilot_x0(score, sde, shape, device, dtype))
        return pilot[0]

    # time grid
    tail = None
    if grid is not None and not isinstance(grid, str):
        if steps is not None:
            raise ValueError("a grid tensor fixes the steps; do not pass steps/nfe too")
        ts = check_grid(grid, sde)
        if eps is not None:  # the grid ends at t_c, the tail step carries the samples to eps
            eps = check_eps(eps, sde)
            if not eps < float(ts[-1]):
                raise ValueError(f"eps={eps:g} with a grid tensor must lie below the grid's end "
                                 f"({float(ts[-1]):g}): the tail step goes from there to eps")
            if not _fixed_step_ode(sampler):
                raise ValueError(f"eps with a grid tensor adds the tail step (protocol.tail_step), which "
                                 f"{type(sampler).__name__} does not take: deterministic fixed-step samplers only")
            tail = float(ts[-1])
    else:
        kind = grid or sampler.default_grid
        if kind not in GRIDS and kind != "scale":
            raise ValueError(f"unknown grid {kind!r}; valid choices: {', '.join([*GRIDS, 'scale'])}")
        eps = sde.default_eps if eps is None else check_eps(eps, sde)
        tail = _tail_start(sampler, sde, float(eps))
        n, end = steps or sampler.default_steps, float(eps) if tail is None else tail
        if kind == "scale":
            ts = _scale_grid(pilot_x0(), sampler, method, sde, n, end)
        else:
            ts = make_grid(kind, sde, n, end)

    # initial state
    if x_init is not None:
        x = x_init.to(device=device, dtype=dtype)
        noise.draws += 1  # keep the noise stream the same as with a prior draw
    else:
        x = noise(shape, std=sde.prior_std())
        if data_mean is not None:  # the prior centred where p_T is: m(T) μ
            from .scalegrid import centre

            x = centre(x, sde, pilot_x0().mean(0) if isinstance(data_mean, str) else data_mean)

    if x0_hook is not None or track_x0:
        score = _X0View(score, sde, x0_hook, track_x0)
    ctx = Context(sde, score, noise, denoise, tail=None if tail is None else (ts[-1].item(), float(eps)))
    if isinstance(score, _X0View):
        score.ctx, score.ctx_batch = ctx, shape[0]
    if tail is not None:  # the tail step reuses the last evaluation
        ctx.score = LastEvaluation(score)
    return Start(sampler, ctx, x, ts.tolist())
