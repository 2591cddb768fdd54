"""Per-sample adaptive exponential multistep predictor-corrector for the probability-flow ODE.

Every sample keeps its own log-SNR λ, step h and history of data predictions, so the Lagrange
weights differ per sample and are computed batched (``exp_weights_t``, k ≤ 4 nodes per row).  A step costs
one evaluation (at the predicted point); the corrector (one order higher, UniC-style) both
improves the state and, through its difference to the predictor, estimates the local error.

The error is measured against the noise level (``norm="noise"``): δ = m(t)·(atol·s_d + rtol·σ̃(t)),
σ̃ = σ/m = e^{−λ}.  In the scaled state y = x/m the probability-flow ODE in λ is the same for VP,
sub-VP and VE, and δ/m depends on λ only, so the controller takes the same steps for all three
SDEs (up to where λ starts and ends); unlike a tolerance relative to |x| it is also invariant to
translating the data.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import torch
from torch import Tensor

from .._compat import renamed
from ..options import option
from ..protocol import Context
from ._common import Rows, exp_moments_t, exp_weights_t
from .adaptive import Accepted, PerSampleAdaptive, _col, _rms, _scaled_x0

__all__ = ["AdaptiveMultistep"]


@renamed(predictor_order="solver_order", norm="error_norm", max_iters="max_steps")
@dataclass(frozen=True)
class AdaptiveMultistep(PerSampleAdaptive):
    """Adaptive UniPC-class multistep with a step size per sample (1 NFE per attempted step).

    With past data predictions D_j at λ_j (newest D_0 at the current λ) and h the sample's step:
      predictor  x̃ = (σ'/σ) x + m' Σ_j w_j D_j             (order k ≤ ``solver_order``)
      evaluate   D' = x̂_0(x̃, t(λ + h))                      (1 NFE, on the running rows only)
      corrector  x' = (σ'/σ) x + m' (w^c_0 D' + Σ_j w^c_j D_j)  (order k + 1)
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
    ``per_sample=False`` shares one step (the batch maximum of E) for comparison.
    With ``denoise`` a final Tweedie step (1 NFE).
    Fixed budget (``nfe_budget=N``, or ``sample(..., nfe=N)``): every sample makes at most N score
    evaluations (the final denoising included): with R evaluations left a sample's step is at least
    (λ_end − λ)/(R + 1) (the final predictor-only step costs none), and a step taken at that bound
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

    @property
    def order(self) -> float:
        return float(self.solver_order + 1)

    def extra_nfe(self, denoise: bool) -> int:
        return 1 + int(denoise)  # x̂_0 at the start, and the final denoising

    def _factor(self, err: Tensor, err_prev: Tensor, q: Tensor, ok: Tensor) -> Tensor:
        """Step factor θ E^{−1/q} min(1, E_prev/E)^{β/q}, clipped (no growth after a rejection)."""
        fac = self.safety * err.clamp_min(1e-12).pow(-1.0 / q)
        if self.predictive:
            fac = fac * (err_prev / err.clamp_min(1e-4)).clamp(max=1.0).pow(self.predictive / q)
        return torch.where(ok, fac.clamp(self.min_factor, self.max_factor), fac.clamp(self.min_factor, 1.0))

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
        mem.hist = [_scaled_x0(ctx, x, mem.t, s0)] * p
        mem.hlam, mem.hm = [mem.lam.clone()] * p, [m0] * p
        mem.n_hist = torch.ones(x.shape[0], dtype=torch.long, device=x.device)
        mem.full = p == 1  # on the host: every row holds p entries (all at full order)
        mem.eprev = torch.ones_like(mem.t)
        return mem

    def _running(self, mem, t_end: float) -> Tensor:
        mem.lam_end = 0.5 * mem.sde.log_snr(t_end)
        return mem.lam < mem.lam_end

    @staticmethod
    def _weights(ha: Tensor, nodes: Tensor, scale: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Predictor weights (one per node), the corrector's weight of the new evaluation and of
        the nodes (the step's end first), each node's times ``scale`` = m'/m_j (the history holds
        m_j x̂_0, the new evaluation m' x̂_0)."""
        kk = nodes.shape[1]
        mom = exp_moments_t(ha, kk + 1)  # shared by the predictor (first kk) and the corrector
        wp = exp_weights_t(ha, nodes, moments=mom[:, :kk]) * scale
        wc = exp_weights_t(ha, torch.cat([ha.unsqueeze(1), nodes], 1), moments=mom)
        return wp, wc[:, 0], wc[:, 1:] * scale

    def _propose(self, ctx: Context, mem, run: Rows, t_end: float) -> Tensor:
        p, sde, x, b, idx, lam_end = self.solver_order, ctx.sde, mem.x, mem.x.shape[0], run.idx, mem.lam_end
        xa, la = run.of(x), run.of(mem.lam)
        rem = lam_end - la
        ha = torch.minimum(run.of(mem.h), rem)
        forced = None
        if self.nfe_budget is not None:  # at least (λ_end − λ)/(R + 1) with R evaluations left
            left = (self.nfe_budget - int(ctx.denoise) - run.of(mem.rows)).clamp_min(0)
            floor_h = rem / (left + 1)
            forced = ha <= floor_h
            ha = torch.maximum(ha, floor_h)
        last = ha >= rem
        any_last = bool(last.any())
        lam_n, tn = la + ha, sde.t_from_log_snr(2 * (la + ha))
        if any_last:  # the end exactly, not λ + (λ_end − λ) rounded
            lam_n, tn = torch.where(last, lam_end, lam_n), torch.where(last, t_end, tn)
        m_n, s_n = sde.marginal(tn)
        ratio = _col(s_n / run.of(mem.sig), xa)
        if not mem.full:
            mem.full = int(mem.n_hist.min()) >= p
        hist = [run.of(d) for d in mem.hist]
        past = torch.stack([run.of(v) for v in mem.hlam], 1) - la.unsqueeze(1)  # (b, p) offsets ≤ 0
        scale = m_n.unsqueeze(1) / torch.stack([run.of(v) for v in mem.hm], 1)
        if mem.full:  # the usual case: every row at order p
            k = None
            wp, wc0, wc = self._weights(ha, past, scale)
            x_pred, x_cb = _combine(xa * ratio, hist, wp, wc)
        else:
            k = run.of(mem.n_hist).clamp(max=p)
            x_pred, x_cb = torch.empty_like(xa), torch.empty_like(xa)
            wc0 = torch.empty_like(ha)
            for kk in range(1, p + 1):  # rows grouped by their current order
                grp = Rows((k == kk).nonzero().squeeze(1), idx.numel())
                if grp.idx.numel() == 0:
                    continue
                wp, w0, wc = self._weights(grp.of(ha), grp.of(past[:, :kk]), grp.of(scale[:, :kk]))
                xp, xc = _combine(grp.of(xa) * grp.of(ratio), [grp.of(d) for d in hist[:kk]], wp, wc)
                for buf, v in ((x_pred, xp), (x_cb, xc), (wc0, w0)):
                    grp.write(buf, v)
        accepted = torch.zeros(b, dtype=torch.bool, device=x.device)
        if not self.correct_last and t_end == mem.t_last and any_last:  # final step: predictor only
            done = idx[last]
            x[done] = x_pred[last]
            mem.lam[done] = lam_end
            mem.t[done] = t_end
            mem.acc_n[done] += 1
            accepted[done] = True
            keep = (~last).nonzero().squeeze(1)
            if keep.numel() == 0:
                return accepted
            idx, xa, la, ha, lam_n, tn, m_n, s_n, x_pred, x_cb, wc0 = (
                v.index_select(0, keep) for v in (idx, xa, la, ha, lam_n, tn, m_n, s_n, x_pred, x_cb, wc0))
            k = None if k is None else k[keep]
            forced = None if forced is None else forced[keep]
            run = Rows(idx, b)
            ctx.rows = None if run.all else idx
        d_new = _scaled_x0(ctx, x_pred, tn, s_n)
        run.add(mem.rows, 1.0)
        x_corr = x_cb.addcmul_(_col(wc0, xa), d_new)
        diff = x_corr - x_pred
        if self.error_norm == "noise":  # δ is one number per row: ‖diff/δ‖ = ‖diff‖/δ
            err = _rms(diff).double() / (self.atol * self.data_scale * m_n + self.rtol * s_n)
        else:
            delta = torch.maximum(xa.abs(), x_corr.abs()).mul_(self.rtol).add_(self.atol)
            err = _rms(diff.div_(delta)).double()
        if not self.per_sample:
            err = err.max().expand_as(err)
        ok = err <= 1 if forced is None else (err <= 1) | forced
        # accepted among the running rows, and in the batch (no gather when all were accepted)
        sel = self._accept(ok, int(ok.sum()), run, b)
        mem.hlam = _push(mem.hlam, lam_n.clone(), sel)
        mem.hist = _push(mem.hist, d_new, sel)
        mem.hm = _push(mem.hm, m_n, sel)
        mem.x = sel.merge(x, x_corr)
        mem.lam = sel.merge(mem.lam, lam_n)
        mem.t = sel.merge(mem.t, tn)
        mem.sig = sel.merge(mem.sig, s_n)
        sel.acc.add(mem.n_hist, 1)
        run.add(mem.acc_n, ok.double())
        run.add(mem.rej_n, (~ok).double())
        e_run = run.of(mem.eprev)
        q = float(p + 1) if k is None else k.double() + 1
        fac = self._factor(err, e_run, q, ok)
        mem.eprev = run.set(mem.eprev, torch.where(ok, err.clamp_min(1e-4), e_run))
        mem.h = run.set(mem.h, ha * fac)
        sel.acc.write(accepted, torch.ones_like(sel.acc.idx, dtype=torch.bool))
        return accepted


def _combine(base: Tensor, hist: list[Tensor], wp: Tensor, wc: Tensor) -> tuple[Tensor, Tensor]:
    """The predictor base + Σ_j wp_j D_j and the corrector's known part base + Σ_j wc_j D_j."""
    x_pred = x_cb = base
    for j, d in enumerate(hist[: wp.shape[1]]):
        first = j == 0  # out of place: base stays intact
        x_pred = torch.addcmul(x_pred, _col(wp[:, j], d), d) if first else x_pred.addcmul_(_col(wp[:, j], d), d)
        x_cb = torch.addcmul(x_cb, _col(wc[:, j], d), d) if first else x_cb.addcmul_(_col(wc[:, j], d), d)
    return x_pred, x_cb


def _push(hist: list[Tensor], fresh: Tensor, sel: Accepted) -> list[Tensor]:
    """The history with the new entry in front for the accepted rows (their oldest entry dropped),
    the other rows' history unchanged; ``fresh``: the new entries on the running rows (taken
    over).  Like ``Accepted.merge``, touches only the fewer of the accepted and rejected rows."""
    if sel.acc.all:
        return [fresh] + hist[:-1]
    out = [h.clone() if any(h is g for g in hist[:i]) else h for i, h in enumerate(hist)]  # entries may alias
    if sel.rej is not None:  # rotate, then shift the rejected rows back
        rej = sel.rej
        first = out[0][rej]
        for j in range(len(out) - 1):
            out[j][rej] = out[j + 1][rej]
        fresh[rej] = first
        return [fresh] + out[:-1]
    idx = sel.acc.idx
    for j in range(len(out) - 1, 0, -1):
        out[j][idx] = out[j - 1][idx]
    out[0][idx] = sel.oks.of(fresh)
    return out
