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
from ..sde import SDE
from ._common import Rows, copy_rows, gather_rows, lanes, row_coef, unlane
from .brownian import BrownianMemory

__all__ = ["Accepted", "PerSampleAdaptive", "GottaGoFast", "AdaptiveODE", "improved_euler_step"]


def _sum_square(v: Tensor) -> Tensor:
    """Σ v² per sample; a small row as a sum of columns (a reduction over a short inner
    dimension costs ~10× more)."""
    v = v.flatten(1)
    if v.shape[1] > 8:
        return torch.linalg.vector_norm(v, dim=1).square_()
    sq = v.square()
    out = sq[:, 0].clone()
    for j in range(1, v.shape[1]):
        out += sq[:, j]
    return out


def _rms(v: Tensor) -> Tensor:
    """Root mean square per sample."""
    return _sum_square(v).div_(v[0].numel()).sqrt_()


def _noise_delta(m: Tensor, s: Tensor, rtol: float, atol: float, data_scale: float) -> Tensor:
    """δ = atol·s_d·m + rtol·σ per row (``error_norm="noise"``): absolute errors in data units
    (s_d = ``data_scale``), relative ones to the noise level; m, σ (b,) at the step's end."""
    a_d = atol * data_scale
    return torch.add(m, s, alpha=rtol / a_d).mul_(a_d)


def reaches(ha: Tensor, rem: Tensor) -> Tensor:
    """The rows whose step of ``ha`` (in λ) ends at the stop ``rem`` away: also those short of it by less
    than 1e-9, which are rounding (a step grown to the remaining distance, 2·rem/3 after a step of
    rem/3, lands an ulp short) and would leave a step of an ulp to take."""
    return ha >= rem - 1e-9


def _scaled_x0(ctx: Context, y: Tensor, tt: Tensor, s: Tensor, shape: torch.Size) -> Tensor:
    """m x̂_0 = y + σ² s(y, t) on the rows of y (a ``lanes`` view of samples of ``shape``, as is
    the result), at per-row times tt (float64) with σ = σ(tt)."""
    yr = unlane(y, shape)
    out = ctx.score(yr, tt.to(torch.promote_types(yr.dtype, torch.float32)))
    return torch.addcmul(y, row_coef(s * s, y), lanes(out))


def _new_size(h: Tensor, err: Tensor, safety: float, exponent: float, per_sample: bool) -> Tensor:
    """h θ E^{−r}, growth capped at 10× (E can be 0 on a linear stretch)."""
    if not per_sample:
        err = err.max().expand_as(err)
    return h * (safety * err.clamp_min(1e-12).pow(-exponent)).clamp(max=10.0)


def improved_euler_step(sde: SDE, score, x: Tensor, t: Tensor, t_next: Tensor, z: Tensor | None = None, *,
                        dw: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """One reverse-SDE step t -> t_next (per-sample float64 times, h = t − t_next > 0) with a
    shared draw z, or its Brownian increment dw = √h z itself: returns (Euler-Maruyama x',
    stochastic improved Euler x'').  2 evaluations.

    x' = x − h F(x, t) + g(t) √h z;  x̃ = x' − h F(x', t') + g(t') √h z;  x'' = ½ (x + x̃),
    F(x, t) = f(t) x − g(t)² s(x, t) the reverse drift.
    Reference: Jolicoeur-Martineau et al. 2021, Algorithm 1.
    """
    tdt = torch.promote_types(x.dtype, torch.float32)
    h = t - t_next
    tt = torch.stack([t, t_next])  # both stages' coefficients at once, as (2, b) rows
    f, g = (torch.as_tensor(v, dtype=tt.dtype, device=tt.device).expand_as(tt)  # an SDE may return a float
            for v in (sde.drift_coef(tt), sde.diffusion(tt)))
    if dw is None:
        dw, g_w = z, g * h.sqrt()
    else:
        g_w = g
    # per stage: a = 1 − h f, c = h g², the noise's g (√h); the second stage's halved (x'' = ½ x + ½ x̃)
    k = torch.stack([torch.addcmul(h.new_ones(()), h, f, value=-1.0), g * g * h, g_w])
    k[:, 1] *= 0.5
    shape, xl, dwl = x.shape[1:], lanes(x), lanes(dw)  # the linear combinations on lanes views
    (a0, a1), (c0, c1), (n0, n1) = row_coef(k, xl).unbind(0)
    # x' = (1 − h f) x + h g² s(x, t) + g √h z
    x1l = torch.addcmul(xl * a0, c0, lanes(score(x, t.to(tdt)))).addcmul_(n0, dwl)
    x1 = unlane(x1l, shape)
    # x'' = ½ x + ½ (1 − h f') x' + ½ h g'² s(x', t') + ½ g' √h z
    x2 = torch.addcmul(xl * 0.5, a1, x1l)
    x2.addcmul_(c1, lanes(score(x1, t_next.to(tdt)))).addcmul_(n1, dwl)
    return x1, unlane(x2, shape)


def _rk23_coefficients(sde: SDE, la: Tensor, ha: Tensor, sig: Tensor, dtype: torch.dtype
                       ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``AdaptiveODE``'s per-row coefficients of a step h = ``ha`` from λ = ``la`` (σ = ``sig``):
    the times (3, b) of the stages and the step's end, m at the end, σ (3, b) at all three, and k
    (10, b), rows (σ_1, σ_2, σ' over σ;
    u_1's D_0; u_2's D_0 and m_1 D_1; x_3's D_0 and m_2 D_2; x_2's D_0 and m_1 D_1), computed in
    the state's real ``dtype``: in float64 they cost a float32 state's step as much as a cheap
    score, and they round no worse than the state they scale (λ and t keep float64)."""
    la, ha, sig = (v.to(dtype) for v in (la, ha, sig))
    z = ha * torch.tensor([1 / 3, 2 / 3, 1.0], dtype=dtype, device=ha.device).unsqueeze(1)  # (3, b)
    ts, m, s = sde.at_log_snr(2 * (la + z))  # at t_1, t_2, t'
    i = torch.expm1(-z).neg_()  # I(z) = 1 − e^{−z}
    mi = m * i
    c2 = 2 * m[1] * (1 - i[1] / z[1])  # 2 m_2 φ(2h/3)
    c3 = 1.5 * m[2] * (1 - i[2] / ha)  # third order: (3/2) m' φ(h); second: (3/2) m' I(h)
    c2nd = 1.5 * mi[2]
    k = torch.stack([*(s / sig), mi[0], mi[1] - c2, c2 / m[0], mi[2] - c3, c3 / m[1], mi[2] - c2nd, c2nd / m[0]])
    return ts, m[2], s, k


@dataclass
class Accepted:
    """The accepted proposals of a step: ``oks`` among the proposals, ``acc`` among the batch's
    rows, and, when every row ran and most were accepted, ``rej`` the rejected positions."""

    oks: Rows
    acc: Rows
    rej: Tensor | None

    def merge(self, old: Tensor, new: Tensor) -> Tensor:
        """``old`` with the accepted rows replaced by ``new``'s (``new``: values on the running
        rows, taken over).  Copies only the fewer of the accepted and the rejected rows."""
        if self.acc.all:
            return new
        if self.rej is not None:
            copy_rows(new, self.rej, gather_rows(old, self.rej))
            return new
        copy_rows(old, self.acc.idx, self.oks.of(new))
        return old


def batch_rows(mem, run: Rows) -> Rows:
    """The batch rows of ``run`` (rows of the solver's memory): the same rows unless the memory was
    compacted to the samples still running (``mem.active``: their batch indices)."""
    active = getattr(mem, "active", None)
    if active is None:
        return run
    return Rows(active if run.all else active.index_select(0, run.idx), mem.x.shape[0])


@dataclass(frozen=True)
class PerSampleAdaptive(SamplerBase):
    """The skeleton of a solver with a step size per sample.

    The state's memory holds per-sample tensors: ``x`` (the working state, updated row by row),
    ``t`` (times), ``h`` (step sizes), ``rows`` (evaluations per sample), ``acc_n``/``rej_n``
    (accepted/rejected proposals per sample) and the solver's own.  ``reached`` finds the rows
    still running towards t_end; ``attempt`` proposes one step for exactly those rows
    (``_propose``, which writes the accepted ones and returns the acceptance mask).  ``every`` indexes
    the memory's rows; a subclass may drop the rows that ended from its own per-row tensors
    (``active``: the batch rows of the memory's rows; ``batch_rows`` maps them), x, t and the
    counters staying the batch's.
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
        running = self._running(mem, t_end)
        mem.idx = mem.every if bool(running.all()) else running.nonzero().squeeze(1)
        if mem.idx.numel():
            return False
        state.x, state.t = mem.x.to(mem.dtype, copy=True), t_end  # a copy: the working state changes in place
        return True

    def attempt(self, ctx: Context, state: State, t_end: float) -> State:
        mem = state.memory
        run = Rows(mem.idx, mem.every.numel())
        ctx.rows = batch_rows(mem, run).idx if getattr(mem, "active", None) is not None or not run.all else None
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
                               acc_n=torch.zeros(b, **f64), rej_n=torch.zeros(b, **f64), t_last=ts[-1], idx=None,
                               every=torch.arange(b, device=x.device))

    @staticmethod
    def _accept(ok: Tensor, n_ok: int, run: Rows, b: int) -> Accepted:
        """Which proposals (``ok``, ``n_ok`` of them True) were accepted, for ``Accepted.merge``."""
        if n_ok == ok.numel():
            return Accepted(Rows(run.idx, ok.numel()), run, None)
        pos = ok.nonzero().squeeze(1)
        rej = (~ok).nonzero().squeeze(1) if run.all and 2 * n_ok > ok.numel() else None
        return Accepted(Rows(pos, ok.numel()), Rows(run.idx.index_select(0, pos), b), rej)

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
    E = ‖(x' − x'')/δ‖_rms; accept (x ← x'') if E ≤ 1, then h ← min(t − eps, θ h E^{−r}) (growth
    ≤ 10×).  The tolerance δ (``error_norm``):
      "noise" (default)  δ = atol·s_d·m(t') + rtol·σ(t') per sample (s_d = ``data_scale``): absolute
                         errors in data units, relative ones to the noise level at the step's end,
                         as ``ode_adaptive_ps``; invariant to translating the data;
      "state"            δ = max(atol, rtol·max(|x'|, |x'_prev|)) per coordinate, the paper's.
    The paper's norm ties the tolerance to the state's magnitude, so at the end of the solve (where
    the data's small-scale structure is made) it is as loose as the data are far from the origin,
    and everywhere it depends on where the data sit.  Unlike the paper, a rejected step's
    Brownian increment is remembered and the retry draws from its Brownian bridge
    (``BrownianMemory``, RSwM): redrawing makes acceptance depend on the noise and biases the
    samples, badly so with a step per sample.  2 NFE per attempted step on the
    rows still running.  With ``denoise`` a final Tweedie step (1 NFE).  The accepted improved
    Euler step is weak order 2 for this additive-noise SDE (Kloeden & Platen 1992, §15.1;
    measured on Gaussians); Euler-Maruyama, order 1, only estimates its error.
    Reference: Jolicoeur-Martineau et al. 2021, "Gotta Go Fast When Generating Data with
    Score-Based Models", Algorithm 1 (its defaults: ``error_norm="state"``, ε_rel = rtol = 0.05,
    ε_abs = atol = 0.0078, r = θ = 0.9).
    Defaults here: the noise norm, rtol = atol = 0.04, s_d = 0.2 (δ = 0.008 m + 0.04 σ), r = ½ (the
    EM/improved-Euler difference, the error estimate, is O(h)).  Measured (10k samples, 3-12 seeds,
    benchmarks/ggf_norm.md): both floors on the 8-ring and a 64-d mixture (VP and VE) and on a
    held-out 8-d one at 139-282 NFE, where the state norm (rtol 0.02) spent 228-538 and missed the
    64-d VE log-density floor (2.5×); the paper's defaults miss it on VE by 2.5-6.6×, and on the
    8-ring moved to (5, 5) by 83× (the noise norm: 0.74×).
    """

    rtol: float = option(0.04, within="(0, inf)")
    atol: float = option(0.04, within="(0, inf)")
    h_init: float = option(0.01, within="(0, inf)")
    exponent: float = option(0.5, within="(0, inf)")
    error_norm: str = option("noise", choices=("noise", "state"))
    data_scale: float = option(0.2, within="(0, inf)")
    order: ClassVar[float] = 2.0
    batch_coupling: ClassVar[str] = ("its noise draws are numbered by the batch's proposals, whose count "
                                     "depends on the other samples' step sizes")
    stochastic: ClassVar[bool] = True

    def _start(self, ctx: Context, x: Tensor, ts: list[float]) -> SimpleNamespace:
        mem = self._counters(x, ts)
        mem.h = torch.full_like(mem.t, self.h_init)
        mem.x_prev = x.abs() if self.error_norm == "state" else None
        mem.memory = BrownianMemory(x)
        return mem

    def _running(self, mem, t_end: float) -> Tensor:
        return mem.t > t_end

    def _propose(self, ctx: Context, mem, run: Rows, t_end: float) -> Tensor:
        x, b, idx = mem.x, mem.x.shape[0], run.idx
        xa, ta = run.of(x), run.of(mem.t)
        rem = ta - t_end
        ha = torch.minimum(run.of(mem.h), rem)
        last = torch.ge(ha, rem, out=torch.empty_like(ha))  # 0/1: lerp gives t_end exactly at the last step
        tn = torch.lerp(ta - ha, rem.new_full((), t_end), last)
        w_h = mem.memory.propose(idx, ha, run.of(ctx.noise(x.shape)).to(x.dtype))  # W(h), unbiased by rejections
        x1, x2 = improved_euler_step(ctx.sde, ctx.score, xa, ta, tn, dw=w_h)
        run.add(mem.rows, 2.0)
        n = x[0].numel()
        if self.error_norm == "noise":  # δ one number per row: E² = Σ (x' − x'')² / (n δ²)
            delta = _noise_delta(*ctx.sde.marginal(tn), self.rtol, self.atol, self.data_scale)
            e2 = _sum_square(x1.sub_(x2)).double().div_(delta.square_().mul_(n))
            keep = [(x2, xa), (tn, ta)]
        else:  # δ = rtol·m per coordinate, m = max(|x'|, |x'_prev|, atol/rtol); x' is not needed past its error
            a1, xp = x1.abs(), run.of(mem.x_prev)
            m = torch.maximum(a1, xp).clamp_(min=self.atol / self.rtol)
            e2 = _sum_square(x1.sub_(x2).div_(m)).double().div_(n * self.rtol**2)
            keep = [(x2, xa), (tn, ta), (a1, xp)]
        if not self.per_sample:
            e2 = e2.max().expand_as(e2)
        ok = e2 <= 1.0
        n_ok = int(ok.sum())  # the one host sync of the step control
        # the rejected rows keep their state: copied into the proposal's (fewer rows than a merge)
        rej = (~ok).nonzero().squeeze(1) if n_ok < ok.numel() else None
        mem.memory.resolve(idx, ha, w_h, ok, n_rejected=ok.numel() - n_ok, rejected=rej)
        if rej is not None:
            for new, old in keep:
                copy_rows(new, rej, gather_rows(old, rej))
        mem.x, mem.t = run.set(x, x2), run.set(mem.t, tn)
        if self.error_norm == "state":
            mem.x_prev = run.set(mem.x_prev, a1)
        run.add(mem.acc_n, ok)  # rej_n follows at the end: proposals (rows / 2) − acc_n
        # h θ E^{−r}, growth capped at 10× (E can be 0 on a linear stretch): E² clamped at (θ/10)^{2/r}
        e2 = e2.clamp_min((self.safety / 10.0) ** (2.0 / self.exponent))
        fac = e2.sqrt_().rsqrt_() if self.exponent == 0.5 else e2.pow_(-0.5 * self.exponent)  # (E²)^{−r/2}
        mem.h = run.set(mem.h, fac.mul_(self.safety) * ha)
        return ok if run.all else self._accepted_mask(run, ok, b)

    def finish(self, ctx: Context, state: State, denoise: bool) -> Tensor:
        mem = state.memory
        mem.rej_n = mem.rows * 0.5 - mem.acc_n
        return super().finish(ctx, state, denoise)


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
        mem.ms = x.new_tensor(ctx.sde.marginal(ts[0])).expand(x.shape[0], 2).contiguous()  # (m, σ) per sample
        mem.h = torch.full_like(mem.t, self.h_init)
        mem.d0 = torch.empty_like(x)
        mem.have_d0 = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        mem.stale = True  # no row has D_0 (a shortcut for have_d0 all False)
        return mem

    def _running(self, mem, t_end: float) -> Tensor:
        mem.lam_end = 0.5 * mem.sde.log_snr(t_end)
        return mem.lam < mem.lam_end

    def _propose(self, ctx: Context, mem, run: Rows, t_end: float) -> Tensor:
        sde, x, b, idx, lam_end = ctx.sde, mem.x, mem.x.shape[0], run.idx, mem.lam_end
        shape = x.shape[1:]  # the linear combinations on lanes views
        need = run if mem.stale else Rows(idx[~run.of(mem.have_d0)], b)
        if need.idx.numel():  # D_0 at the current point (kept across rejections)
            ctx.rows = None if need.all else need.idx
            tt = need.of(mem.t)
            m, s = need.of(mem.ms).unbind(1)
            yl = lanes(need.of(x))
            need.write(mem.d0, unlane(_scaled_x0(ctx, yl, tt, s, shape).div_(row_coef(m, yl)), shape))
            ctx.rows = None if run.all else idx
            need.add(mem.rows, 1.0)
            need.write(mem.have_d0, torch.ones_like(need.idx, dtype=torch.bool))
        xa, la = run.of(x), run.of(mem.lam)
        xl, da = lanes(xa), lanes(run.of(mem.d0))
        rem = lam_end - la
        ha = torch.minimum(run.of(mem.h), rem)
        last = reaches(ha, rem)
        lam_n = torch.where(last, lam_end, la + ha)
        ts, mn, (s1, s2, sn), k = _rk23_coefficients(sde, la, ha, run.of(mem.ms)[:, 1], xa.dtype)
        ts[2] = torch.where(last, t_end, ts[2])
        a1, a2, an, b1, b2, e2, b3, e3, b2nd, e2nd = row_coef(k, xl).unbind(0)
        u1 = torch.addcmul(xl * a1, b1, da)  # u_1 = (σ_1/σ) x + m_1 I_1 D_0
        d1 = _scaled_x0(ctx, u1, ts[0], s1, shape)  # m_1 D_1
        u2 = torch.addcmul(xl * a2, b2, da).addcmul_(e2, d1)
        d2 = _scaled_x0(ctx, u2, ts[1], s2, shape)  # m_2 D_2
        run.add(mem.rows, 2.0)
        base = xl * an
        x3 = torch.addcmul(base, b3, da).addcmul_(e3, d2)
        x2 = torch.addcmul(base, b2nd, da).addcmul_(e2nd, d1)
        x3, x2 = unlane(x3, shape), unlane(x2, shape)
        delta = torch.maximum(x2.abs(), xa.abs()).mul_(self.rtol).clamp_(min=self.atol)
        err = _rms(x2.sub_(x3).div_(delta)).double()
        ok = err <= 1 if self.per_sample else (err.max() <= 1).expand_as(err)
        sel = self._accept(ok, int(ok.sum()), run, b)
        mem.x = sel.merge(x, x3)
        mem.lam = sel.merge(mem.lam, lam_n)
        mem.t = sel.merge(mem.t, ts[2].double())
        mem.ms = sel.merge(mem.ms, torch.stack([mn, sn], 1))
        sel.acc.write(mem.have_d0, torch.zeros_like(sel.acc.idx, dtype=torch.bool))
        mem.stale = sel.acc.all
        run.add(mem.acc_n, ok.double())
        run.add(mem.rej_n, (~ok).double())
        mem.h = run.set(mem.h, _new_size(ha, err, self.safety, 1.0 / 3.0, self.per_sample))
        return self._accepted_mask(run, ok, b)
