"""Samplers that hold a known linear part of the state on the forward marginal of the data.

Song et al. 2021, Appendix I.2-I.3: to sample p_0(x | A x = y) with an unconditional score,
run any reverse-time sampler and, after every step that lands at time t, replace the observed
part of the state by a draw of the forward marginal of the known data,
    x ← (I − P) x + Aᵀ(m(t) y + σ(t) A z),   P = AᵀA,  z ~ N(0, I),
which needs A to have orthonormal rows (A Aᵀ = I): then A x_t = m y + σ A w with A w ~ N(0, I)
exactly, because the forward noise is isotropic.  An orthogonal decoupling matrix M whose
first columns are Aᵀ rotates the data so the observation is a set of coordinates; only A is
ever used.  Inpainting is the case P = diag(mask).

The replacement is an approximation: the free part sees the score at a fresh draw of the
observed part, so the observation informs it only at the signal-to-noise ratio of the current
time.  It is exact when the free part does not depend on the observed one, and close for
unimodal posteriors (correctors help), but it keeps roughly the prior mode weights where the
observation should change them (2-component mixture: 0.48 / 0.52 sampled, 0.11 / 0.89 exact);
``smc.ParticleSampler`` is the asymptotically exact alternative.

This module wraps the core samplers without changing them: ``Projected(base, observation)``
has the sampler interface of ``scoresolve.samplers`` and runs ``base``'s own step functions
with the projection after each step, so ``sample()`` shares NFE counting, noise and results.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from .. import ode
from ..ncsn import ald_step_size
from ..registry import resolve
from ..samplers import PC, AnnealedLangevin, FixedStepODE, ProbabilityFlowODE, Run, grid_steps
from ..sde import SDE, append_dims

__all__ = ["Observation", "Projected", "SUPPORTED"]


@dataclass(frozen=True, eq=False)
class Observation:
    """A known linear part of the data, A x_0 = y, with A Aᵀ = I.

    Stored as the anchor b = Aᵀ y (shaped like a batch of samples) and the projector P = AᵀA:
    either ``mask`` (P = diag(mask), inpainting) or ``matrix`` A of shape (k, C) applied along
    axis ``dim`` of each sample (``dim=None``: A is (k, n) on the flattened sample).
    """

    anchor: Tensor
    mask: Tensor | None = None
    matrix: Tensor | None = None
    dim: int | None = 1

    def to(self, x: Tensor) -> Observation:
        """The same observation on x's device and dtype."""
        def conv(v):
            return None if v is None else v.to(device=x.device, dtype=x.dtype)

        return replace(self, anchor=conv(self.anchor), mask=conv(self.mask), matrix=conv(self.matrix))

    def repeat(self, k: int) -> Observation:
        """Each observation repeated for k consecutive samples (batch-1 parts broadcast)."""

        def rep(v):
            return v if v is None or v.shape[0] == 1 else v.repeat_interleave(k, 0)

        return replace(self, anchor=rep(self.anchor), mask=rep(self.mask))

    def project(self, v: Tensor) -> Tensor:
        """P v: the observed component of v."""
        if self.mask is not None:
            return self.mask * v
        a = self.matrix
        if self.dim is None:
            return ((v.flatten(1) @ a.T) @ a).reshape(v.shape)
        vm = v.movedim(self.dim, -1)
        return ((vm @ a.T) @ a).movedim(-1, self.dim)

    def replace(self, x: Tensor, m, s=0.0, z: Tensor | None = None) -> Tensor:
        """(I − P) x + m b + s P z: the observed part of x set to a forward-marginal draw
        (or to its mean m b when ``z`` is None; to b itself with m = 1).  m, s: floats or (B,)."""
        if isinstance(m, Tensor):
            m = append_dims(m, x.ndim).to(x.dtype)
        out = x - self.project(x) + m * self.anchor
        if z is not None:
            if isinstance(s, Tensor):
                s = append_dims(s, x.ndim).to(x.dtype)
            out = out + s * self.project(z)
        return out


class _PinnedScore:
    """s̃(u, t) = (I − P) s(Π(u, t), t) with Π(u, t) = (I − P) u + m(t) b.

    Under the probability-flow drift f u − ½ g² s̃ the observed part obeys du/dt = f(t) u, whose
    solution from m(T) b is m(t) b exactly: the observed coordinates follow the forward mean and
    the free ones see the score at the pinned state, so any ODE solver (adaptive included)
    integrates the constrained flow.  Each call is one evaluation of the wrapped score."""

    def __init__(self, score, obs: Observation, sde: SDE):
        self.score, self.obs, self.sde = score, obs, sde

    def __call__(self, u: Tensor, t) -> Tensor:
        x = self.obs.replace(u, self.sde.mean_scale(t))
        s = self.score(x, t)
        return s - self.obs.project(s)


def _run_pc(base: PC, sde, score, x, ts, noise, obs, keep, progress):
    predictor = resolve("predictor", base.predictor)
    corrector = resolve("corrector", base.corrector)
    n_corr = base.n_corrector_steps if corrector.__name__ != "none" else 0
    x = obs.replace(x, *sde.marginal(ts[0]), noise(x.shape))
    traj = [x] if keep else None
    x_mean = x
    for i, (t, t_next) in enumerate(grid_steps(ts, progress, "pc_projected")):
        score.step = i
        m, s = sde.marginal(t)
        for _ in range(n_corr):  # corrector at t, re-projected after each MCMC step
            x, _ = corrector(sde, score, x, t, noise, snr=base.snr, n_steps=1, norm=base.norm)
            x = obs.replace(x, m, s, noise(x.shape))
        x, x_mean = predictor(sde, score, x, t, t_next, noise)  # predictor t -> t_next
        x = obs.replace(x, *sde.marginal(t_next), noise(x.shape))
        if keep:
            traj.append(x)
    return x_mean, x, traj, {}


def _run_ald(base: AnnealedLangevin, sde, score, x, ts, noise, obs, keep, progress):
    sig = [sde.std(t) for t in ts[1:]]
    gamma = (sig[0] / sig[-1]) ** (1.0 / (len(sig) - 1)) if len(sig) > 1 else 1.0
    lr = base.step_lr if base.step_lr is not None else ald_step_size(gamma, base.n_steps_each, sig[-1])
    traj = [x] if keep else None
    for i, (_, t) in enumerate(grid_steps(ts, progress, "ald_projected")):
        score.step = i
        alpha = lr * (sde.std(t) / sig[-1]) ** 2
        m, s = sde.marginal(t)
        x = obs.replace(x, m, s, noise(x.shape))
        for _ in range(base.n_steps_each):
            x = x + (0.5 * alpha) * score(x, t) + math.sqrt(alpha) * noise(x.shape)
            x = obs.replace(x, m, s, noise(x.shape))
        if keep:
            traj.append(x)
    return None, x, traj, {"step_lr": lr}


def _run_fixed_ode(base: FixedStepODE, sde, score, x, ts, noise, obs, keep, progress):
    step = base._METHODS[base.method][0]
    pinned = _PinnedScore(score, obs, sde)
    x = obs.replace(x, sde.mean_scale(ts[0]))
    traj = [x] if keep else None
    for i, (t, t_next) in enumerate(grid_steps(ts, progress, f"ode_{base.method}_projected")):
        score.step = i
        x, _ = step(sde, pinned, x, t, t_next)
        x = obs.replace(x, sde.mean_scale(t_next))
        if keep:
            traj.append(x)
    return None, x, traj, {}


def _run_adaptive_ode(base: ProbabilityFlowODE, sde, score, x, ts, noise, obs, keep, progress):
    x = obs.replace(x, sde.mean_scale(ts[0]))
    grid = torch.tensor(ts, dtype=torch.float64)
    ys, stats = ode.solve_adaptive(sde, _PinnedScore(score, obs, sde), x, grid, rtol=base.rtol,
                                   atol=base.atol, method=base.solver, options=base.options)
    ys = [obs.replace(y, sde.mean_scale(t)) for y, t in zip(ys, ts)]
    return None, ys[-1], (ys if keep else None), stats


# sampler type -> runner (x_mean or None, x, trajectory, stats); subclasses match too
SUPPORTED = {PC: _run_pc, AnnealedLangevin: _run_ald, FixedStepODE: _run_fixed_ode,
             ProbabilityFlowODE: _run_adaptive_ode}


def _runner(base):
    for cls, fn in SUPPORTED.items():
        if isinstance(base, cls):
            return fn
    raise TypeError(
        f"{type(base).__name__} has no projected variant for inverse problems; supported "
        f"samplers: {', '.join(c.__name__ for c in SUPPORTED)} (methods pc, em, "
        "reverse_diffusion, ancestral, ald, ode, ode_euler, ode_heun)"
    )


class WrapsBase:
    """Mixin for samplers that wrap another (field ``base``): NFE per step, order, grid and
    step defaults are the base sampler's."""

    @property
    def nfe_per_step(self):
        return self.base.nfe_per_step

    @property
    def order(self) -> float:
        return self.base.order

    @property
    def default_grid(self) -> str:
        return self.base.default_grid

    @property
    def default_steps(self) -> int:
        return self.base.default_steps


@dataclass(frozen=True, eq=False)
class Projected(WrapsBase):
    """Run ``base`` (a PC, ALD or probability-flow ODE sampler) with the observed part of the
    state replaced after every step (Song et al. 2021, Appendix I.2-I.3).

    Stochastic samplers (PC, ALD) replace it by a draw m(t) y + σ(t) A z of the forward marginal
    of the known data, one noise draw per replacement.  ODE samplers use the noise-free forward
    mean m(t) y (the observed coordinates then follow an exact ODE solution, see
    ``_PinnedScore``): a deterministic right-hand side keeps the solve deterministic, so that
    adaptive step-size control and the one-to-one latent map of the flow stay meaningful.
    The returned samples carry the observation exactly (A x = y).  NFE per step, order, grid
    and step defaults are those of ``base``.
    """

    base: object
    observation: Observation

    def __post_init__(self):
        _runner(self.base)

    def extra_nfe(self, denoise: bool) -> int:
        return self.base.extra_nfe(denoise)

    def run(self, sde: SDE, score, x: Tensor, ts: list[float], noise, *, denoise: bool,
            keep: bool, progress: bool) -> Run:
        obs = self.observation.to(x)
        if obs.anchor.shape[0] not in (1, x.shape[0]):
            raise ValueError(f"the observation has batch {obs.anchor.shape[0]} but the sample "
                             f"batch is {x.shape[0]}")
        x_mean, x, traj, stats = _runner(self.base)(self.base, sde, score, x, ts, noise, obs,
                                                    keep, progress)
        if denoise:
            if x_mean is not None:  # PC: the last predictor's noise-free mean
                x = x_mean
            else:  # ODE / ALD: Tweedie's formula at eps with the unconditional score
                score.step = len(ts) - 1
                x = ode.tweedie_denoise(sde, score, x, ts[-1])
        return Run(obs.replace(x, 1.0), traj, {"projected": True, **stats})
