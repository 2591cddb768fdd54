"""Per-sample adaptive exponential multistep predictor-corrector for the probability-flow ODE.

Every sample keeps its own log-SNR λ, step h and history of data predictions, so the weights
differ per sample and are computed batched on (b,) rows (``exp_pc_weights``, Newton's form: the
predictor's weights, the history's extrapolation to the step's end and the corrector's weight of
the new value, ~30 row operations for k = 3).  A step costs one evaluation (at the predicted
point); the corrector (one order higher, UniC-style) both improves the state and, through its
difference to the predictor, ω·(x̂_0' − P(λ')), estimates the local error.

The error is measured against the noise level (``norm="noise"``): δ = m(t)·(atol·s_d + rtol·σ̃(t)),
σ̃ = σ/m = e^{−λ}.  In the scaled state y = x/m the probability-flow ODE in λ is the same for VP,
sub-VP and VE, and δ/m depends on λ only, so the controller takes the same steps for all three
SDEs (up to where λ starts and ends); unlike a tolerance relative to |x| it is also invariant to
translating the data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace

import torch
from torch import Tensor

from .._compat import renamed
from ..options import option
from ..protocol import Context, tail_factors, tail_log_snr
from ._common import Rows, exp_pc_weights, gather_rows, lanes, row_coef, unlane
from .adaptive import Accepted, PerSampleAdaptive, _noise_delta, _rms, _scaled_x0, batch_rows, reaches

__all__ = ["AdaptiveMultistep"]

_LOG_E_MIN = math.log(1e-4)  # the predictive factor reads errors clamped at 1e-4
# the share of the memory's rows that must have ended before it is compacted to the running ones (a
# compaction gathers every per-row tensor once; the rows it drops are no longer gathered at each step)
COMPACT_AT = 0.125


@renamed(predictor_order="solver_order", norm="error_norm", max_iters="max_steps")
@dataclass(frozen=True)
class AdaptiveMultistep(PerSampleAdaptive):
    """Adaptive UniPC-class multistep with a step size per sample (1 NFE per attempted step).

    With past data predictions D_j at λ_j (newest D_0 at the current λ) and h the sample's step:
      predictor  x̃ = (σ'/σ) x + m' Σ_j w_j D_j             (order k ≤ ``solver_order``)
      evaluate   D' = x̂_0(x̃, t(λ + h))                      (1 NFE, on the running rows only)
      corrector  x' = (σ'/σ) x + m' (w^c_0 D' + Σ_j w^c_j D_j)  (order k + 1)
                 = x̃ + ω m' (D' − P(λ'))                     (P: the history's interpolant)
    E = ‖(x' − x̃)/δ‖_rms with δ = m'·(atol·s_d + rtol·σ'/m') (``error_norm="noise"``, s_d =
    ``data_scale``: absolute errors in data units, relative ones to the noise level) or
    δ = atol + rtol·max(|x|, |x'|) (``error_norm="state"``, the classical mixed norm); accept x'
    (keeping D') if E ≤ 1;  h ← h · clip(θ E^{−1/(k+1)} · min(1, E_prev/E)^{β/(k+1)},
    ``min_factor``, ``max_factor``) with E_prev the sample's last accepted error and β =
    ``predictive`` (a Gustafsson-style predictive factor: a growing error shrinks the next step
    before it is rejected; β = 0 is the plain controller).  The first step (order 1)
    starts at ``h_init`` in λ; the history builds up one order per accepted step.  The step that
    reaches eps is the predictor alone (as in UniPC; ``correct_last=True`` evaluates and
    corrects it too, 1 more NFE): measured on the mixtures, this costs no accuracy.
    ``per_sample=False`` shares one step (the batch maximum of E) for comparison.  Once a share
    ``COMPACT_AT`` of the rows have ended, the step memory keeps the running rows only (bit for bit the
    same samples; fewer gathers and scatters per step while the rows end over many steps).
    The tail (``tail_sigma`` = σ̃_c): where the solve ends below σ̃_c = σ/m (sub-VP's default end
    σ̃ ≈ 1e-4; VP's and VE's defaults end at ≈ 0.01 and keep no tail), the steps stop at σ̃_c and
    ``protocol.tail_step``'s score-form step in σ̃² ends it.  As that step holds m·s, the step landing
    at λ_c is the predictor alone, like the last one without a tail, and the tail takes
    s_c = (m_p/m_c) s_p from the sample's newest evaluation, σ_p² s_p = D_0 − x (no NFE;
    ``correct_last=True`` evaluates at λ_c).  Without the tail the samples came out narrower
    (16-128-d mixtures under sub-VP, 10k samples, benchmarks/subvp_tail.md: log-density bias +1.6
    to +5.4 noise floors at 24.5-27.4 NFE; with it −0.7 to +1.3 at 4 NFE fewer, as under VP,
    whose solve ends at about σ̃_c).  Taking the history's extrapolation P(λ_c) for x̂_0 there
    instead narrowed the samples as much as no tail at all.
    With ``denoise`` a final Tweedie step (1 NFE).
    Fixed budget (``nfe_budget=N``, or ``sample(..., nfe=N)``): every sample makes at most N score
    evaluations (the final denoising included): with R evaluations left a sample's step is
    at least (λ_end − λ)/(R + 1) (the final predictor-only step costs none; with a tail λ_c replaces
    λ_end), and a step taken at that bound
    is accepted whatever its error, so the solve always ends within N; with a tolerance tighter
    than the budget allows it uses exactly N.
    Reference: Zhao et al. 2023 (UniPC) for the predictor-corrector pair; Hairer, Nørsett &
    Wanner, "Solving ODEs I", §III.5 (variable-step Adams methods, step-size control);
    Gustafsson 1994 (ACM TOMS 20), Hairer & Wanner, "Solving ODEs II", §IV.8 (predictive control).
    Defaults (rtol = atol = 0.01, s_d = 0.2, θ = 0.75, max_factor 2, β = 1) were chosen on the
    8-ring and a 64-d mixture and checked on held-out ones (benchmarks/fast_results.md).
    """

    rtol: float = option(1e-2, within="(0, inf)")
    atol: float = option(1e-2, within="(0, inf)")
    h_init: float = option(0.5, within="(0, inf)")
    safety: float = option(0.75, within="(0, 1]")
    solver_order: int = option(3, choices=(1, 2, 3))
    error_norm: str = option("noise", choices=("noise", "state"))
    data_scale: float = option(0.2, within="(0, inf)")
    min_factor: float = option(0.2, within="(0, 1)")
    max_factor: float = option(2.0, within="(1, inf)")
    predictive: float = option(1.0, within="[0, inf)")
    correct_last: bool = False
    nfe_budget: int | None = option(None, within="[2, inf)", integer=True, allow_none=True)
    tail_sigma: float | None = option(0.01, within="(0, inf)", allow_none=True)

    @property
    def order(self) -> float:
        return float(self.solver_order + 1)

    def extra_nfe(self, denoise: bool) -> int:
        return 1 + int(denoise)  # x̂_0 at the start, and the final denoising

    def _factor(self, log_err: Tensor, log_prev: Tensor, q, ok: Tensor) -> Tensor:
        """Step factor θ E^{−1/q} min(1, E_prev/E)^{β/q}, clipped (no growth after a rejection), from
        log E (clamped at 1e-12) and log E_prev (E_prev clamped at 1e-4): a tensor pow costs ~10x
        an exp."""
        expo = -log_err
        if self.predictive:
            expo.add_((log_prev - log_err.clamp_min(_LOG_E_MIN)).clamp_(max=0.0), alpha=self.predictive)
        fac = expo.div_(q).add_(math.log(self.safety)).exp_().clamp_(self.min_factor, self.max_factor)
        return torch.where(ok, fac, fac.clamp(max=1.0))

    def _start(self, ctx: Context, x: Tensor, ts: list[float]) -> SimpleNamespace:
        p, sde = self.solver_order, ctx.sde
        mem = self._counters(x, ts, rows=1.0)
        mem.sde, mem.lam = sde, torch.full_like(mem.t, 0.5 * sde.log_snr(ts[0]))
        mem.sig = torch.full_like(mem.t, sde.std(ts[0]))  # σ at each sample's time
        mem.h = torch.full_like(mem.t, self.h_init)
        ctx.score.step = 0
        m0, s0 = sde.marginal(mem.t)
        # the history, newest first: p tensors of scaled data predictions m x̂_0 = x + σ² s, their λ
        # and m (every row's history has n_hist valid entries; the rest repeat the oldest)
        mem.hist = [unlane(_scaled_x0(ctx, lanes(x), mem.t, s0, x.shape[1:]), x.shape[1:])] * p
        mem.hlam, mem.hm = [mem.lam.clone()] * p, [m0] * p
        mem.n_hist = torch.ones(x.shape[0], dtype=torch.long, device=x.device)
        mem.active = None  # the batch rows of the memory's rows, once compacted (``_compact``)
        mem.full = p == 1  # on the host: every row holds p entries (all at full order)
        mem.log_eprev = torch.zeros_like(mem.t)  # log of the last accepted error (E_prev = 1 at the start)
        # λ_c = −log tail_sigma, where the last segment's steps stop and the tail step takes over (None: the
        # end's σ̃ ≥ tail_sigma, or the last segment starts past λ_c)
        mem.lam_tail = tail_log_snr(sde, ts[-2], ts[-1], self.tail_sigma) if len(ts) >= 2 else None
        need = 1 + int(ctx.denoise) + int(self.correct_last)
        if self.nfe_budget is not None and self.nfe_budget < need:
            raise ValueError(f"nfe_budget={self.nfe_budget} is below the {need} evaluations a run needs here (the "
                             "start, the final denoising, an evaluated last step with correct_last=True); raise "
                             "nfe_budget, or pass denoise=False / correct_last=False")
        return mem

    def _running(self, mem, t_end: float) -> Tensor:
        mem.lam_end = 0.5 * mem.sde.log_snr(t_end)
        running = mem.lam < mem.lam_end
        if t_end == mem.t_last:  # once enough rows have ended, drop them from the step memory
            n, left = running.numel(), int(running.sum())
            if left and n - left >= max(1.0, COMPACT_AT * n):
                _compact(mem, running.nonzero().squeeze(1))
                running = running.new_ones(left)
        return running

    def _propose(self, ctx: Context, mem, run: Rows, t_end: float) -> Tensor:
        p, sde, x, lam_end = self.solver_order, ctx.sde, mem.x, mem.lam_end
        b, bm, idx = x.shape[0], mem.every.numel(), run.idx  # batch rows, memory rows (fewer once compacted)
        frun = batch_rows(mem, run)  # the running rows in the batch (x, t and the counters are the batch's)
        tail = mem.lam_tail is not None and t_end == mem.t_last  # the steps stop at λ_c, the tail step ends
        lam_stop = mem.lam_tail if tail else lam_end
        xa, la = frun.of(x), run.of(mem.lam)
        rem = lam_stop - la
        ha = torch.minimum(run.of(mem.h), rem)
        forced = None
        if self.nfe_budget is not None:  # at least (λ_stop − λ)/(R + 1) with R evaluations left
            reserved = int(ctx.denoise) + int(self.correct_last)  # the final denoising, an evaluated last step
            left = (self.nfe_budget - reserved - frun.of(mem.rows)).clamp_min(0)
            floor_h = rem / (left + 1)
            forced = ha <= floor_h
            ha = torch.maximum(ha, floor_h)
        last = reaches(ha, rem)
        any_last = bool(last.any())
        lam_n = la + ha
        if any_last:  # the end exactly, not λ + (λ_end − λ) rounded
            lam_n = torch.where(last, lam_stop, lam_n)
        tn, m_n, s_n = sde.at_log_snr(2 * lam_n)
        if any_last and not tail:
            tn = torch.where(last, t_end, tn)
        ratio = s_n / run.of(mem.sig)
        if not mem.full:
            mem.full = int(mem.n_hist.min()) >= p
        shape = x.shape[1:]
        xl, hist = lanes(xa), [lanes(run.of(d)) for d in mem.hist]  # linear combinations on lanes views
        inv_h = ha.reciprocal()
        v = [(run.of(lj) - la).mul_(inv_h) for lj in mem.hlam[1:]]  # older nodes in units of the step (newest: 0)
        scale = [m_n / run.of(mj) for mj in mem.hm]  # the history holds m_j x̂_0, the step needs m' x̂_0
        if mem.full:  # the usual case: every row at order p
            k = None
            w, ell, omega = exp_pc_weights(ha, v)
            x_pred, x_ext = _combine(xl, hist, ratio, w, ell, scale)
        else:
            k = run.of(mem.n_hist).clamp(max=p)
            x_pred, x_ext, omega = torch.empty_like(xl), torch.empty_like(xl), torch.empty_like(ha)
            for kk in range(1, p + 1):  # rows grouped by their current order
                grp = Rows((k == kk).nonzero().squeeze(1), idx.numel())
                if grp.idx.numel() == 0:
                    continue
                w, ell, om = exp_pc_weights(grp.of(ha), [grp.of(vj) for vj in v[:kk - 1]])
                xp, xe = _combine(grp.of(xl), [grp.of(d) for d in hist[:kk]], grp.of(ratio), w, ell,
                                  [grp.of(c) for c in scale[:kk]])
                for buf, val in ((x_pred, xp), (x_ext, xe), (omega, om)):
                    grp.write(buf, val)
        final = not self.correct_last and t_end == mem.t_last and any_last
        if final:  # the rows whose step ends the solve (or lands at λ_c) take the predictor: their new value is
            # set to the history's extrapolation (no evaluation), so the gap is 0 and the corrector leaves them
            d_new, keep = x_ext.clone(), (~last).nonzero().squeeze(1)
            if keep.numel():
                part = Rows(frun.idx.index_select(0, keep), b)
                ctx.rows = part.idx
                d_new[keep] = _scaled_x0(ctx, x_pred.index_select(0, keep), tn.index_select(0, keep),
                                         s_n.index_select(0, keep), shape)
                part.add(mem.rows, 1.0)
        else:
            d_new = _scaled_x0(ctx, x_pred, tn, s_n, shape)
            frun.add(mem.rows, 1.0)
        if tail and any_last:  # the tail step's σ_c² s_c = −pulled at λ_c: evaluated with ``correct_last``,
            if final:  # else m s held from the newest entry: σ_c² (m_p/m_c) s_p with σ_p² s_p = D_p − x_p
                coef = s_n.square().mul_(run.of(mem.hm[0])).div_(run.of(mem.sig).square().mul_(m_n))
                pulled = torch.sub(xl, hist[0]).mul_(row_coef(coef, xl))
            else:
                pulled = torch.sub(x_pred, d_new)
        gap = torch.sub(d_new, x_ext, out=x_ext)  # m' (x̂_0' − P(λ')): the new value off the history's extrapolation
        x_corr = unlane(x_pred.addcmul_(row_coef(omega, xl), gap), shape)  # the corrector; x' − x̃ = ω·gap
        if self.error_norm == "noise":  # δ is one number per row: ‖diff/δ‖ = |ω| ‖gap‖/δ
            delta = _noise_delta(m_n, s_n, self.rtol, self.atol, self.data_scale)
            err = _rms(unlane(gap, shape)).double().mul_(omega.abs()).div_(delta)
        else:
            delta = torch.maximum(xa.abs(), x_corr.abs()).mul_(self.rtol).add_(self.atol)
            err = _rms(unlane(gap.mul_(row_coef(omega, gap)), shape).div_(delta)).double()
        if not self.per_sample:
            err = err.max().expand_as(err)
        log_err = err.clamp_min(1e-12).log_()
        ok = log_err <= 0
        for always in (forced, last if final else None):  # a step at the budget's bound; the final predictor
            if always is not None:
                ok |= always
        if tail and any_last:
            x_corr, lam_n, tn, m_n, s_n = self._tail_step(sde, t_end, lam_end, last, x_corr, pulled, shape,
                                                          lam_n, tn, m_n, s_n)
        # accepted among the running rows, and in the batch (no gather when all were accepted)
        n_ok = int(ok.sum())
        sel = self._accept(ok, n_ok, run, bm)
        sel_b = sel if frun is run else self._accept(ok, n_ok, frun, b)
        rest = _not_pushed(sel, bm)
        mem.hlam = _push(mem.hlam, lam_n.clone(), sel, rest)
        mem.hist = _push(mem.hist, unlane(d_new, shape), sel, rest)
        mem.hm = _push(mem.hm, m_n, sel, rest)
        mem.x = sel_b.merge(x, x_corr)
        mem.lam = sel.merge(mem.lam, lam_n)
        mem.t = sel_b.merge(mem.t, tn)
        mem.sig = sel.merge(mem.sig, s_n)
        if not mem.full:  # the history's depth matters until every row is at full order
            sel.acc.add(mem.n_hist, 1)
        frun.add(mem.acc_n, ok.double())
        frun.add(mem.rej_n, (~ok).double())
        lp_run = run.of(mem.log_eprev)
        q = float(p + 1) if k is None else k.double() + 1
        fac = self._factor(log_err, lp_run, q, ok)
        mem.log_eprev = run.set(mem.log_eprev, torch.where(ok, log_err.clamp_min(_LOG_E_MIN), lp_run))
        mem.h = run.set(mem.h, fac.mul_(ha))
        return self._accepted_mask(frun, ok, b)

    @staticmethod
    def _tail_step(sde, t_end: float, lam_end: float, last: Tensor, x: Tensor, pulled: Tensor, shape,
                   lam_n: Tensor, tn: Tensor, m_n: Tensor, s_n: Tensor) -> tuple[Tensor, ...]:
        """The rows ``last`` (at λ_c) to the end by ``protocol.tail_step``'s step, x_end = a (x + c s),
        with σ² s = −``pulled`` = −m (x̃ − x̂_0) at the evaluated point (lanes view); the other rows and
        their times as they are."""
        m_e, s_e = (float(v) for v in sde.marginal(torch.tensor([t_end], dtype=torch.float64)))
        a, c = tail_factors(m_n, s_n, m_e, s_e)  # x_end = a (x + c s), and σ² s = −pulled
        xl = lanes(x)
        jump = torch.addcmul(xl, row_coef(c.div_(s_n.square()).neg_(), xl), pulled).mul_(row_coef(a, xl))
        x = unlane(torch.where(_row_mask(last, xl), jump, xl), shape)
        return (x, torch.where(last, lam_end, lam_n), torch.where(last, t_end, tn), torch.where(last, m_e, m_n),
                torch.where(last, s_e, s_n))


def _compact(mem, keep: Tensor) -> None:
    """The step memory (λ, σ, h, the history, ...) of the rows ``keep`` only: the rows that ended stop
    costing a gather and a scatter of every per-row tensor at every later step.  ``mem.active`` maps
    memory rows to batch rows (x, t and the counters stay the batch's)."""
    for name in ("lam", "sig", "h", "n_hist", "log_eprev"):
        setattr(mem, name, getattr(mem, name).index_select(0, keep))
    for name in ("hist", "hlam", "hm"):
        setattr(mem, name, [gather_rows(v, keep) for v in getattr(mem, name)])
    mem.active = keep if mem.active is None else mem.active.index_select(0, keep)
    mem.every = torch.arange(keep.numel(), device=keep.device)


def _row_mask(mask: Tensor, like: Tensor) -> Tensor:
    """A (B,) bool mask shaped to select ``like``'s rows in ``torch.where``."""
    return mask.view(mask.shape + (1,) * (like.ndim - 1))


def _combine(x: Tensor, hist: list[Tensor], ratio: Tensor, w: list[Tensor], ell: list[Tensor], scale: list[Tensor]
             ) -> tuple[Tensor, Tensor]:
    """The predictor r x + Σ_j w_j c_j D_j and the extrapolation Σ_j l_j c_j D_j (c_j = ``scale``);
    x and the D_j are ``lanes`` views."""
    x_pred, x_ext = x * row_coef(ratio, x), hist[0] * row_coef(ell[0] * scale[0], x)
    for j, (wj, d) in enumerate(zip(w, hist)):
        x_pred.addcmul_(row_coef(wj * scale[j], d), d)
        if j:
            x_ext.addcmul_(row_coef(ell[j] * scale[j], d), d)
    return x_pred, x_ext


def _push(hist: list[Tensor], fresh: Tensor, sel: Accepted, rest: Tensor | None) -> list[Tensor]:
    """The history with the new entry in front for the accepted rows (their oldest entry dropped),
    the other rows' history unchanged; ``fresh``: the new entries on the running rows (taken
    over).  ``rest``: the batch rows not accepted, when they are fewer than the accepted ones
    (else None).  Touches only the fewer of the two: rotates the list and shifts the rest back,
    or shifts the accepted rows forward."""
    if sel.acc.all:
        return [fresh] + hist[:-1]
    out = [h.clone() if any(h is g for g in hist[:i]) else h for i, h in enumerate(hist)]  # entries may alias
    if rest is not None:
        first = out[0].index_select(0, rest)
        for j in range(len(out) - 1):
            out[j][rest] = out[j + 1].index_select(0, rest)
        if fresh.shape[0] == out[0].shape[0]:  # every row ran: the new entries are the head
            head = fresh
        else:  # the dropped oldest entries make room for the new ones
            head = out[-1]
            head[sel.acc.idx] = sel.oks.of(fresh)
        head[rest] = first
        return [head] + out[:-1]
    idx = sel.acc.idx
    for j in range(len(out) - 1, 0, -1):
        out[j][idx] = out[j - 1].index_select(0, idx)
    out[0][idx] = sel.oks.of(fresh)
    return out


def _not_pushed(sel: Accepted, b: int) -> Tensor | None:
    """The batch rows whose history stays (rejected, or not running), when fewer than the accepted
    ones, else None (``_push`` then moves the accepted rows instead)."""
    if sel.acc.all or 2 * sel.acc.idx.numel() <= b:
        return None
    if sel.rej is not None:
        return sel.rej
    mask = torch.ones(b, dtype=torch.bool, device=sel.acc.idx.device)
    mask[sel.acc.idx] = False
    return mask.nonzero().squeeze(1)
