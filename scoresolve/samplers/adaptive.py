"""Adaptive samplers with a step size per sample: Gotta Go Fast (reverse SDE) and an embedded
exponential Runge-Kutta 3(2) pair for the probability-flow ODE.

Each sample carries its own time, step size and error estimate; every proposal evaluates the
score only on the rows that have not reached the end time, so ``CountingScore`` charges a
fraction of an NFE per call and the reported NFE is the mean per sample.  ``PerSampleAdaptive``
is the skeleton the three per-sample solvers share (running rows, proposals, acceptance counts,
step budget, statistics); each solver writes only its proposal and step-size rule.  ``per_sample=False``
gives the usual batch-shared step (the error norm is the batch maximum, as in dpm-solver's
adaptive mode) for comparison.  The grid's interior times, if any, are checkpoints every
sample lands on (the trajectory is kept there).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import ClassVar

import torch
from torch import Tensor

from .._compat import renamed
from ..ode import score_in_dtype, working_dtype
from ..options import option
from ..protocol import Context, SamplerBase, State
from ..sde import SDE, append_dims
from ._common import Rows
from .brownian import BrownianMemory

__all__ = ["PerSampleAdaptive", "GottaGoFast", "AdaptiveODE", "improved_euler_step"]


def _rms(v: Tensor) -> Tensor:
    return v.flatten(1).pow(2).mean(1).sqrt()


def _col(v: Tensor, like: Tensor) -> Tensor:
    """A per-sample float64 coefficient (b,) as a column in the state's dtype."""
    return append_dims(v, like.ndim).to(like.dtype)


def _new_size(h: Tensor, err: Tensor, safety: float, exponent: float, per_sample: bool) -> Tensor:
    """h θ E^{−r}, growth capped at 10× (E can be 0 on a linear stretch)."""
    if not per_sample:
        err = err.max().expand_as(err)
    return h * (safety * err.clamp_min(1e-12).pow(-exponent)).clamp(max=10.0)


def improved_euler_step(sde: SDE, score, x: Tensor, t: Tensor, t_next: Tensor, z: Tensor
                        ) -> tuple[Tensor, Tensor]:
    """One reverse-SDE step t -> t_next (per-sample float64 times, h = t − t_next > 0) with a
    shared draw z: returns (Euler-Maruyama x', stochastic improved Euler x'').  2 evaluations.

    x' = x − h F(x, t) + g(t) √h z;  x̃ = x' − h F(x', t') + g(t') √h z;  x'' = ½ (x + x̃),
    F(x, t) = f(t) x − g(t)² s(x, t) the reverse drift.
    Reference: Jolicoeur-Martineau et al. 2021, Algorithm 1.
    """
    tdt = torch.promote_types(x.dtype, torch.float32)

    def drift(y: Tensor, tt: Tensor) -> Tensor:
        return _col(sde.drift_coef(tt), y) * y - _col(sde.diffusion(tt) ** 2, y) * score(y, tt.to(tdt))

    h = _col(t - t_next, x)
    sq = (t - t_next).sqrt()
    x1 = x - h * drift(x, t) + _col(sde.diffusion(t) * sq, x) * z
    x2 = x1 - h * drift(x1, t_next) + _col(sde.diffusion(t_next) * sq, x) * z
    return x1, 0.5 * (x + x2)


@dataclass(frozen=True)
class PerSampleAdaptive(SamplerBase):
    """The skeleton of a solver with a step size per sample.

    The state's memory holds per-sample tensors: ``x`` (the working state, updated row by row),
    ``t`` (times), ``h`` (step sizes), ``rows`` (evaluations per sample), ``acc_n``/``rej_n``
    (accepted/rejected proposals per sample) and the solver's own.  ``reached`` finds the rows
    still running towards t_end; ``attempt`` proposes one step for exactly those rows
    (``_propose``, which writes the accepted ones and returns the acceptance mask).
    Subclasses implement ``_start(ctx, x, ts) -> memory``, ``_running(mem, t_end) -> (B,) bool``
    and ``_propose(ctx, mem, run, t_end) -> (B,) bool accepted``.
    """

    rtol: float = option(1e-3, within="(0, inf)")
    atol: float = option(1e-3, within="(0, inf)")
    h_init: float = option(0.05, within="(0, inf)")
    safety: float = option(0.9, within="(0, 1]")
    per_sample: bool = True
    max_steps: int = option(100_000, within="[1, inf)", integer=True)
    default_grid: str = "uniform"
    default_steps: int = 1
    nfe_per_step: ClassVar[None] = None

    def init(self, ctx: Context, x: Tensor, ts: list[float]) -> State:
        work = working_dtype(x.dtype)  # float16/bfloat16: step control and state in float32
        if work != x.dtype:
            ctx.score = score_in_dtype(ctx.score, x.dtype, work)
        mem = self._start(ctx, ctx.settle(x, ts[0]).to(work, copy=True), ts)
        mem.dtype = x.dtype
        return State(mem.x.to(x.dtype, copy=True), ts[0], memory=mem)

    def reached(self, state: State, t_end: float) -> bool:
        mem = state.memory
        mem.idx = self._running(mem, t_end).nonzero().squeeze(1)
        if mem.idx.numel():
            return False
        state.x, state.t = mem.x.to(mem.dtype, copy=True), t_end  # a copy: the working state changes in place
        return True

    def attempt(self, ctx: Context, state: State, t_end: float) -> State:
        mem, b = state.memory, state.memory.x.shape[0]
        run = Rows(mem.idx, b)
        ctx.rows = None if run.all else mem.idx
        ok = self._propose(ctx, mem, run, t_end)
        ctx.rows = None
        mem.x = ctx.settle(mem.x, mem.t)
        state.i += 1
        state.x, state.t, state.accepted = mem.x, mem.t, ok
        return state

    def step(self, ctx: Context, state: State, t: float, t_next: float) -> State:
        while not self.reached(state, t_next):
            state = self.attempt(ctx, state, t_next)
        return state

    def finish(self, ctx: Context, state: State, denoise: bool) -> Tensor:
        mem = state.memory
        state.stats.update(nfe_per_sample=mem.rows.cpu(), accepted=float(mem.acc_n.mean()),
                           rejected=float(mem.rej_n.mean()), iterations=state.i)
        return super().finish(ctx, state, denoise).to(mem.dtype)

    @staticmethod
    def _counters(x: Tensor, ts: list[float], rows: float = 0.0) -> SimpleNamespace:
        f64 = dict(device=x.device, dtype=torch.float64)
        b = x.shape[0]
        return SimpleNamespace(x=x, t=torch.full((b,), ts[0], **f64), rows=torch.full((b,), rows, **f64),
                               acc_n=torch.zeros(b, **f64), rej_n=torch.zeros(b, **f64), t_last=ts[-1], idx=None)

    @staticmethod
    def _accepted_rows(ok: Tensor, n_ok: int, run: Rows, b: int) -> tuple[Rows, Rows]:
        """(accepted positions among the proposals, accepted rows of the batch); when every
        proposal was accepted (``n_ok`` = all) these are the proposals themselves, no gather."""
        if n_ok == ok.numel():
            return Rows(run.idx, ok.numel()), run
        pos = ok.nonzero().squeeze(1)
        return Rows(pos, ok.numel()), Rows(run.idx.index_select(0, pos), b)

    @staticmethod
    def _accepted_mask(run: Rows, ok: Tensor, b: int) -> Tensor:
        mask = torch.zeros(b, dtype=torch.bool, device=ok.device)
        run.write(mask, ok)
        return mask


@renamed(max_iters="max_steps")
@dataclass(frozen=True)
class GottaGoFast(PerSampleAdaptive):
    """Adaptive reverse-SDE solver with a step size per sample (Gotta Go Fast).

    With dt = −h, the reverse drift F(x, t) = f(t) x − g(t)² s(x, t) and one draw z:
      x'  = x − h F(x, t) + g(t) √h z                    (Euler-Maruyama)
      x̃   = x' − h F(x', t − h) + g(t − h) √h z
      x'' = ½ (x + x̃)                                     (stochastic improved Euler)
    E = ‖(x' − x'')/δ‖_rms with δ = max(atol, rtol·max(|x'|, |x'_prev|)) per sample; accept
    (x ← x'') if E ≤ 1, then h ← min(t − eps, θ h E^{−r}).  Unlike the paper, a rejected step's
    Brownian increment is remembered and the retry draws from its Brownian bridge
    (``BrownianMemory``, RSwM): redrawing makes acceptance depend on the noise and biases the
    samples, badly so with a step per sample.  2 NFE per attempted step on the
    rows still running.  With ``denoise`` a final Tweedie step (1 NFE).  The accepted improved
    Euler step is weak order 2 for this additive-noise SDE (Kloeden & Platen 1992, §15.1;
    measured on Gaussians); Euler-Maruyama, order 1, only estimates its error.
    Reference: Jolicoeur-Martineau et al. 2021, "Gotta Go Fast When Generating Data with
    Score-Based Models", Algorithm 1 (its defaults ε_rel = 0.05, ε_abs = 0.0078, r = θ = 0.9).
    Defaults here: ε_rel = 0.02 and r = ½ (the EM/improved-Euler difference, the error estimate,
    is O(h); about a third of the proposals are still rejected, the estimate being noisy).
    Measured on the 8-ring (VP, 10k samples): the paper's defaults spend 194 NFE and leave the
    log-density gap at 4.5× its floor; these spend 306 NFE and reach both floors (0.84× / 0.29×);
    see benchmarks/classical_results.md.
    """

    rtol: float = option(0.02, within="(0, inf)")
    atol: float = option(0.0078, within="(0, inf)")
    h_init: float = option(0.01, within="(0, inf)")
    exponent: float = option(0.5, within="(0, inf)")
    order: ClassVar[float] = 2.0
    batch_coupling: ClassVar[str] = ("its noise draws are numbered by the batch's proposals, whose count "
                                     "depends on the other samples' step sizes")
    stochastic: ClassVar[bool] = True

    def _start(self, ctx: Context, x: Tensor, ts: list[float]) -> SimpleNamespace:
        mem = self._counters(x, ts)
        mem.h = torch.full_like(mem.t, self.h_init)
        mem.x_prev, mem.memory = x.abs(), BrownianMemory(x)
        return mem

    def _running(self, mem, t_end: float) -> Tensor:
        return mem.t > t_end

    def _propose(self, ctx: Context, mem, run: Rows, t_end: float) -> Tensor:
        x, b, idx = mem.x, mem.x.shape[0], run.idx
        xa, ta = run.of(x), run.of(mem.t)
        ha = torch.minimum(run.of(mem.h), ta - t_end)
        last = ha >= ta - t_end
        tn = torch.where(last, torch.full_like(ta, t_end), ta - ha)
        w_h = mem.memory.propose(idx, ha, run.of(ctx.noise(x.shape)).to(x.dtype))  # W(h), unbiased by rejections
        x1, x2 = improved_euler_step(ctx.sde, ctx.score, xa, ta, tn, w_h / _col(ha.sqrt(), xa))
        run.add(mem.rows, 2.0)
        delta = torch.maximum(x1.abs(), run.of(mem.x_prev)).mul_(self.rtol).clamp_(min=self.atol)
        err = _rms((x1 - x2) / delta).double()
        ok = err <= 1 if self.per_sample else (err.max() <= 1).expand_as(err)
        n_ok = int(ok.sum())  # the one host sync of the step control
        mem.memory.resolve(idx, ha, w_h, ok, n_rejected=ok.numel() - n_ok)
        oks, acc = self._accepted_rows(ok, n_ok, run, b)
        mem.x = acc.set(x, oks.of(x2))
        mem.x_prev = acc.set(mem.x_prev, oks.of(x1).abs())
        mem.t = acc.set(mem.t, oks.of(tn))
        run.add(mem.acc_n, ok.double())
        run.add(mem.rej_n, (~ok).double())
        mem.h = run.set(mem.h, _new_size(ha, err, self.safety, self.exponent, self.per_sample))
        return self._accepted_mask(run, ok, b)


@renamed(max_iters="max_steps")
@dataclass(frozen=True)
class AdaptiveODE(PerSampleAdaptive):
    """Probability-flow ODE with an embedded exponential RK 3(2) pair and per-sample steps.

    In λ = log(m/σ) with the data prediction D = x̂_0 (h a per-sample step, λ_1 = λ + h/3,
    λ_2 = λ + 2h/3, I(z) = 1 − e^{−z}, φ(z) = 1 − I(z)/z):
      u_1 = (σ_1/σ) x + m_1 I(h/3) D_0,                    D_1 = x̂_0(u_1)
      u_2 = (σ_2/σ) x + m_2 I(2h/3) D_0 + 2 m_2 φ(2h/3) (D_1 − D_0),   D_2 = x̂_0(u_2)
      x_3 = (σ'/σ) x + m' I(h) D_0 + (3/2) m' φ(h) (D_2 − D_0)           (third order)
      x_2 = (σ'/σ) x + m' I(h) D_0 + (3/2) m' I(h) (D_1 − D_0)           (second order)
    E = ‖(x_3 − x_2)/δ‖_rms, δ = max(atol, rtol·max(|x_2|, |x|)); accept x_3 if E ≤ 1;
    h ← min(λ_end − λ, θ h E^{−1/3}).  3 NFE per accepted step, 2 per rejected one (D_0 is
    kept), only on the rows still running.  With ``denoise`` a final Tweedie step.
    Reference: Lu et al. 2022a, "DPM-Solver", §4 (DPM-Solver-23 adaptive, Algorithm 4) and
    Appendix (DPM-Solver-3, r_1 = 1/3, r_2 = 2/3), here in data-prediction form.
    """

    order: ClassVar[float] = 3.0

    def _start(self, ctx: Context, x: Tensor, ts: list[float]) -> SimpleNamespace:
        mem = self._counters(x, ts)
        mem.sde, mem.lam = ctx.sde, torch.full_like(mem.t, 0.5 * ctx.sde.log_snr(ts[0]))
        mem.h = torch.full_like(mem.t, self.h_init)
        mem.d0 = torch.empty_like(x)
        mem.have_d0 = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        return mem

    def _running(self, mem, t_end: float) -> Tensor:
        mem.lam_end = 0.5 * mem.sde.log_snr(t_end)
        return mem.lam < mem.lam_end

    def _propose(self, ctx: Context, mem, run: Rows, t_end: float) -> Tensor:
        sde, x, b, idx, lam_end = ctx.sde, mem.x, mem.x.shape[0], run.idx, mem.lam_end
        tdt = torch.promote_types(x.dtype, torch.float32)

        def x0(y: Tensor, tt: Tensor) -> Tensor:  # x̂_0 = (y + σ² s)/m
            m, s = (_col(v, y) for v in sde.marginal(tt))
            return torch.addcmul(y, s * s, ctx.score(y, tt.to(tdt))).div_(m)

        need = Rows(idx[~run.of(mem.have_d0)], b)
        if need.idx.numel():  # D_0 at the current point (kept across rejections)
            ctx.rows = None if need.all else need.idx
            need.write(mem.d0, x0(need.of(x), need.of(mem.t)))
            ctx.rows = None if run.all else idx
            need.add(mem.rows, 1.0)
            need.write(mem.have_d0, torch.ones_like(need.idx, dtype=torch.bool))
        xa, la, ta, da = run.of(x), run.of(mem.lam), run.of(mem.t), run.of(mem.d0)
        ha = torch.minimum(run.of(mem.h), lam_end - la)
        last = ha >= lam_end - la
        l1, l2 = la + ha / 3, la + 2 * ha / 3
        t1, t2 = sde.t_from_log_snr(2 * l1), sde.t_from_log_snr(2 * l2)
        tn = torch.where(last, torch.full_like(ta, t_end), sde.t_from_log_snr(2 * (la + ha)))
        s = _col(sde.std(ta), xa)
        i1, i2, i3 = (-torch.expm1(-z) for z in (ha / 3, 2 * ha / 3, ha))
        m1, s1 = (_col(v, xa) for v in sde.marginal(t1))
        u1 = xa * (s1 / s) + m1 * _col(i1, xa) * da
        d1 = x0(u1, t1)
        m2, s2 = (_col(v, xa) for v in sde.marginal(t2))
        phi2 = _col(1 - i2 / (2 * ha / 3), xa)
        u2 = xa * (s2 / s) + m2 * _col(i2, xa) * da + 2 * m2 * phi2 * (d1 - da)
        d2 = x0(u2, t2)
        run.add(mem.rows, 2.0)
        mn, sn = (_col(v, xa) for v in sde.marginal(tn))
        base = xa * (sn / s) + mn * _col(i3, xa) * da
        x3 = base + 1.5 * mn * _col(1 - i3 / ha, xa) * (d2 - da)  # third order
        x2 = base + 1.5 * mn * _col(i3, xa) * (d1 - da)  # second order
        delta = torch.maximum(x2.abs(), xa.abs()).mul_(self.rtol).clamp_(min=self.atol)
        err = _rms((x3 - x2) / delta).double()
        ok = err <= 1 if self.per_sample else (err.max() <= 1).expand_as(err)
        oks, acc = self._accepted_rows(ok, int(ok.sum()), run, b)
        mem.x = acc.set(x, oks.of(x3))
        mem.lam = acc.set(mem.lam, oks.of(torch.where(last, torch.full_like(la, lam_end), la + ha)))
        mem.t = acc.set(mem.t, oks.of(tn))
        acc.write(mem.have_d0, torch.zeros_like(acc.idx, dtype=torch.bool))
        run.add(mem.acc_n, ok.double())
        run.add(mem.rej_n, (~ok).double())
        mem.h = run.set(mem.h, _new_size(ha, err, self.safety, 1.0 / 3.0, self.per_sample))
        return self._accepted_mask(run, ok, b)
