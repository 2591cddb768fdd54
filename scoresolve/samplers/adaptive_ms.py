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
from ..sde import append_dims
from ._common import Rows, exp_moments_t, exp_weights_t
from .adaptive import PerSampleAdaptive

__all__ = ["AdaptiveMultistep"]


def _rms(v: Tensor) -> Tensor:
    return v.flatten(1).pow(2).mean(1).sqrt()


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

    def _tolerance(self, x: Tensor, x_new: Tensor, m: Tensor, s: Tensor) -> Tensor:
        """δ per element: m·(atol·s_d + rtol·σ/m) ("noise") or atol + rtol·max(|x|, |x'|) ("state")."""
        if self.error_norm == "state":
            return torch.maximum(x.abs(), x_new.abs()).mul_(self.rtol).add_(self.atol)
        return append_dims(self.atol * self.data_scale * m + self.rtol * s, x.ndim).to(x.dtype)

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
        mem.h = torch.full_like(mem.t, self.h_init)
        ctx.score.step = 0
        mem.hist = _x0(ctx, x, mem.t).unsqueeze(0).repeat(p, *([1] * x.ndim))  # (p, B, ...) newest first
        mem.hlam = mem.lam.unsqueeze(0).repeat(p, 1)  # (p, B)
        mem.n_hist = torch.ones(x.shape[0], dtype=torch.long, device=x.device)
        mem.eprev = torch.ones_like(mem.t)
        return mem

    def _running(self, mem, t_end: float) -> Tensor:
        mem.lam_end = 0.5 * mem.sde.log_snr(t_end)
        return mem.lam < mem.lam_end

    def _propose(self, ctx: Context, mem, run: Rows, t_end: float) -> Tensor:
        p, sde, x, b, idx, lam_end = self.solver_order, ctx.sde, mem.x, mem.x.shape[0], run.idx, mem.lam_end
        f64 = dict(device=x.device, dtype=torch.float64)
        xa, la, ta = run.of(x), run.of(mem.lam), run.of(mem.t)
        ha = torch.minimum(run.of(mem.h), lam_end - la)
        forced = None
        if self.nfe_budget is not None:  # at least (λ_end − λ)/(R + 1) with R evaluations left
            left = (self.nfe_budget - int(ctx.denoise) - run.of(mem.rows)).clamp_min(0)
            floor_h = (lam_end - la) / (left + 1)
            forced = ha <= floor_h
            ha = torch.maximum(ha, floor_h)
        last = ha >= lam_end - la
        tn = torch.where(last, torch.full_like(ta, t_end), sde.t_from_log_snr(2 * (la + ha)))
        m_n, s_n = sde.marginal(tn)
        ratio = _col(s_n / sde.std(ta), xa)
        k = run.of(mem.n_hist).clamp(max=p)
        past = run.of(mem.hlam, 1) - la  # (p, b) offsets ≤ 0
        parts = []
        for kk in range(1, p + 1):  # rows grouped by their current order
            grp = Rows((k == kk).nonzero().squeeze(1), idx.numel())
            if grp.idx.numel() == 0:
                continue
            hg, mg = grp.of(ha), grp.of(m_n)[:, None]
            nodes = grp.of(past[:kk], 1).T  # (g, kk)
            mom = exp_moments_t(hg, kk + 1)  # shared by the predictor (first kk) and corrector
            wp = exp_weights_t(hg, nodes, moments=mom[:, :kk]) * mg
            wc = exp_weights_t(hg, torch.cat([hg[:, None], nodes], 1), moments=mom) * mg
            d = Rows(idx if grp.all else idx[grp.idx], b).of(mem.hist[:kk], 1)  # (kk, g, ...)
            base = grp.of(xa) * grp.of(ratio)
            parts.append((grp, base + (_col(wp.T, d) * d).sum(0), base + (_col(wc[:, 1:].T, d) * d).sum(0),
                          wc[:, 0]))
        if parts[0][0].all:
            _, x_pred, x_corr_base, wc0 = parts[0]
        else:
            x_pred, x_corr_base = torch.empty_like(xa), torch.empty_like(xa)
            wc0 = torch.empty(idx.numel(), **f64)
            for grp, xp, xc, w0 in parts:
                grp.write(x_pred, xp)
                grp.write(x_corr_base, xc)
                grp.write(wc0, w0)
        accepted = torch.zeros(b, dtype=torch.bool, device=x.device)
        if not self.correct_last and t_end == mem.t_last and bool(last.any()):  # final step: predictor only
            fin = last
            done = idx[fin]
            x[done] = x_pred[fin]
            mem.lam[done] = lam_end
            mem.t[done] = t_end
            mem.acc_n[done] += 1
            accepted[done] = True
            keep_rows = ~fin
            idx, xa, la, ta, ha, last, tn = (v[keep_rows] for v in (idx, xa, la, ta, ha, last, tn))
            x_pred, x_corr_base, wc0, k = (v[keep_rows] for v in (x_pred, x_corr_base, wc0, k))
            forced = None if forced is None else forced[keep_rows]
            m_n, s_n = m_n[keep_rows], s_n[keep_rows]
            if idx.numel() == 0:
                return accepted
            run = Rows(idx, b)
            ctx.rows = None if run.all else idx
        d_new = _x0(ctx, x_pred, tn)
        run.add(mem.rows, 1.0)
        x_corr = x_corr_base + _col(wc0, xa) * d_new
        delta = self._tolerance(xa, x_corr, m_n, s_n)
        err = _rms((x_corr - x_pred) / delta).double()
        if not self.per_sample:
            err = err.max().expand_as(err)
        ok = err <= 1 if forced is None else (err <= 1) | forced
        # accepted among the running rows, and in the batch (no gather when all were accepted)
        oks, acc = self._accepted_rows(ok, int(ok.sum()), run, b)
        mem.x = acc.set(x, oks.of(x_corr))
        mem.lam = acc.set(mem.lam, oks.of(torch.where(last, torch.full_like(la, lam_end), la + ha)))
        mem.t = acc.set(mem.t, oks.of(tn))
        if acc.all:  # shift every row's history by one
            mem.hist = torch.cat([d_new.unsqueeze(0), mem.hist[:-1]])
            mem.hlam = torch.cat([mem.lam.unsqueeze(0), mem.hlam[:-1]])
        else:
            mem.hist[:, acc.idx] = torch.cat([oks.of(d_new).unsqueeze(0), mem.hist[:-1, acc.idx]])
            mem.hlam[:, acc.idx] = torch.cat([mem.lam[acc.idx].unsqueeze(0), mem.hlam[:-1, acc.idx]])
        acc.add(mem.n_hist, 1)
        run.add(mem.acc_n, ok.double())
        run.add(mem.rej_n, (~ok).double())
        e_run = run.of(mem.eprev)
        fac = self._factor(err, e_run, k.double() + 1, ok)
        mem.eprev = run.set(mem.eprev, torch.where(ok, err.clamp_min(1e-4), e_run))
        mem.h = run.set(mem.h, ha * fac)
        acc.write(accepted, torch.ones_like(acc.idx, dtype=torch.bool))
        return accepted


def _col(v: Tensor, like: Tensor) -> Tensor:
    return append_dims(v, like.ndim).to(like.dtype)


def _x0(ctx: Context, y: Tensor, tt: Tensor) -> Tensor:
    """x̂_0 = (y + σ² s(y, t))/m on the rows of y, at per-row times tt (float64)."""
    m, s = ctx.sde.marginal(tt)
    tdt = torch.promote_types(y.dtype, torch.float32)
    return torch.addcmul(y, _col(s * s, y), ctx.score(y, tt.to(tdt))).div_(_col(m, y))
