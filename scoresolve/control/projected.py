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

``Projected(base, observation)`` wraps any sampler without changing it: it installs the
projection as the post-step hook of the shared loop (``protocol.Context.post_step``; for ODE
samplers also a pinned score) and then runs ``base``'s own steps, so ``sample()`` shares NFE
counting, noise, progress, callbacks and results, and every registered method works.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from torch import Tensor

from ..protocol import Context, Sampler, SamplerBase, State
from ..score import ScoreWrapper
from ..sde import append_dims

__all__ = ["Observation", "Projected", "WrapsBase"]


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

    @property
    def empty(self) -> bool:
        """Nothing observed (an all-zero mask): the projection is the identity."""
        return self.mask is not None and not bool(self.mask.any())

    def rows(self, idx: Tensor | None) -> Observation:
        """The observation of the batch rows ``idx`` (None: all; batch-1 parts broadcast)."""
        if idx is None:
            return self

        def sel(v):
            return v if v is None or v.shape[0] == 1 else v.index_select(0, idx)

        return replace(self, anchor=sel(self.anchor), mask=sel(self.mask))

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


class _PinnedScore(ScoreWrapper):
    """s̃(u, t) = (I − P) s(Π(u, t), t) with Π(u, t) = (I − P) u + m(t) b.

    Under the probability-flow drift f u − ½ g² s̃ the observed part obeys du/dt = f(t) u, whose
    solution from m(T) b is m(t) b exactly: the observed coordinates follow the forward mean and
    the free ones see the score at the pinned state, so any ODE solver (adaptive included)
    integrates the constrained flow.  Each call is one evaluation of the wrapped score; the rows
    evaluated are ``ctx.rows`` (per-sample adaptive solvers run a subset)."""

    def __init__(self, score, obs: Observation, ctx: Context):
        super().__init__(score)
        self.obs, self.ctx = obs, ctx

    def __call__(self, u: Tensor, t) -> Tensor:
        obs = self.obs.rows(self.ctx.rows)
        s = self.score(obs.replace(u, self.ctx.sde.mean_scale(t)), t)
        return s - obs.project(s)


class WrapsBase:
    """Mixin for samplers that wrap another (field ``base``): cost, order, grid and step
    defaults, stochasticity and the adaptive interface are the base sampler's."""

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

    @property
    def stochastic(self) -> bool:
        return self.base.stochastic

    @property
    def batch_coupling(self) -> str | None:
        return getattr(self.base, "batch_coupling", None)

    @property
    def max_steps(self):
        return getattr(self.base, "max_steps", None)

    def extra_nfe(self, denoise: bool) -> int:
        return self.base.extra_nfe(denoise)

    def step(self, ctx: Context, state: State, t: float, t_next: float) -> State:
        return self.base.step(ctx, state, t, t_next)

    def attempt(self, ctx: Context, state: State, t_end: float) -> State:
        return self.base.attempt(ctx, state, t_end)

    def reached(self, state: State, t_end: float) -> bool:
        return self.base.reached(state, t_end)

    def finish(self, ctx: Context, state: State, denoise: bool) -> Tensor:
        return self.base.finish(ctx, state, denoise)

    run = SamplerBase.run  # the whole solve through the shared loop (tests)


@dataclass(frozen=True, eq=False)
class Projected(WrapsBase):
    """Run ``base`` (any sampler) with the observed part of the state replaced after every step
    and sub-step (Song et al. 2021, Appendix I.2-I.3), through the shared loop's hooks.

    Stochastic samplers replace it by a draw m(t) y + σ(t) A z of the forward marginal of the
    known data, one noise draw per replacement.  Deterministic (ODE) samplers use the noise-free
    forward mean m(t) y and a pinned score (the observed coordinates then follow an exact ODE
    solution, see ``_PinnedScore``): a deterministic right-hand side keeps the solve
    deterministic, so adaptive step-size control and the one-to-one latent map of the flow stay
    meaningful.  The returned samples carry the observation exactly (A x = y).  An empty
    observation (all-zero mask) changes nothing: the run equals ``base``'s own.
    """

    base: object
    observation: Observation

    def __post_init__(self):
        if not isinstance(self.base, Sampler):
            raise TypeError(f"base must be a sampler implementing scoresolve.protocol.Sampler (a name's "
                            f"object from scoresolve.SAMPLERS), got {type(self.base).__name__}")

    def init(self, ctx: Context, x: Tensor, ts: list[float]) -> State:
        obs = self.observation.to(x)
        if obs.anchor.shape[0] not in (1, x.shape[0]):
            raise ValueError(f"the observation has batch {obs.anchor.shape[0]} but the sample "
                             f"batch is {x.shape[0]}")
        if not obs.empty:
            sde, noise, stochastic = ctx.sde, ctx.noise, self.base.stochastic

            def replace_observed(v: Tensor, t) -> Tensor:
                if stochastic:  # a draw of the forward marginal of the known data
                    return obs.replace(v, *sde.marginal(t), noise(v.shape))
                return obs.replace(v, sde.mean_scale(t))

            ctx.post_step = _then(ctx.post_step, replace_observed)
            ctx.final = _then1(ctx.final, lambda v: obs.replace(v, 1.0))
            if not stochastic:
                ctx.score = _PinnedScore(ctx.score, obs, ctx)
        state = self.base.init(ctx, x, ts)
        state.stats["projected"] = True
        return state


def _then(first, second):
    """The post-step hook ``second ∘ first`` (``first`` may be None)."""
    return second if first is None else (lambda v, t: second(first(v, t), t))


def _then1(first, second):
    return second if first is None else (lambda v: second(first(v)))
