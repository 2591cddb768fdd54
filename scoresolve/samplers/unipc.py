"""UniPC-class predictor-corrector: an exponential multistep predictor and a corrector that
reuses the next step's model evaluation, so the order goes up by one at no extra NFE.

Reference: Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling
of Diffusion Models", Algorithms 1-2 (UniP-p, UniC-p); exact φ-weights as in DPM-Solver++.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace

import torch
from torch import Tensor

from .._compat import renamed
from ..options import option
from ..protocol import Context, State
from ._common import exp_weights, lincomb, scaled_denoised
from .exponential import Multistep

__all__ = ["UniPC", "REFINE_CAP", "refine_rows"]

REFINE_CAP = 64  # evaluations a re-solve of one sample may make (``refine``)


@renamed(predictor_order="solver_order")
@dataclass(frozen=True)
class UniPC(Multistep):
    """UniP-p predictor + UniC-p corrector in λ = log(m/σ) on the data prediction x̂_0.

    Step i (h = λ_{i+1} − λ_i, past data predictions D_j = x̂_0 at λ_j, newest D_i):
      predictor  x̃_{i+1} = (σ_{i+1}/σ_i) x_i + m_{i+1} Σ_{j<p} w_j D_{i−j}          (p past nodes)
      evaluate   D_{i+1} = x̂_0(x̃_{i+1}, t_{i+1})                                  (the next step's NFE)
      corrector  x_{i+1} = (σ_{i+1}/σ_i) x_i + m_{i+1} (w^c_0 D_{i+1} + Σ_{j<p} w^c_{j+1} D_{i−j})
    with w, w^c the exact integrals of e^{−(h−u)} against the Lagrange basis on the nodes (an
    exponential Adams-Bashforth / Adams-Moulton pair in λ).  The next predictor starts from the
    corrected x_{i+1} and keeps D_{i+1} (evaluated at x̃): 1 NFE per step, order p + 1
    (p = ``solver_order``).  The last step is not corrected (its evaluation would be an extra
    NFE).  The first evaluation D_0 is made when the state is built.
    ``solver_order=4`` (order 5): on the scale grid (``grid="scale"``) at 15 NFE the geometric-mean
    log-density gap over 28 held-out mixture cases fell 3.6× → 2.7× the floor (benchmarks/low_nfe_grids.md)
    and at 20 NFE 2.2× → 1.9×, but at 10 NFE it was worse on half of them (W2 up to 17×; both a scratch
    run): too few steps for four past nodes, so 3 stays the default.

    ``refine=r`` (mean evaluations per sample, default 0: off) spends up to r more evaluations per
    sample on the samples the steps were least sure of: each sample's error estimate is its largest
    corrector increment relative to the noise level, e = max_i ‖x_{i+1} − x̃_{i+1}‖_rms / σ_{i+1}
    (UniC's local error estimate, free), and after the solve the samples in decreasing e are solved
    again from their start by ``ode_adaptive_ps`` (rtol = atol = ``refine_tol``), each within
    ``REFINE_CAP`` evaluations, as long as the evaluations spent stay within r per sample on average
    (with r · batch below ``REFINE_CAP`` none is).  ``nfe=N`` leaves ⌈r⌉ of the N to it.  ``stats`` report
    ``refined`` (samples re-solved), ``refine_nfe`` (their evaluations per sample) and ``row_error`` (e).
    At 15 NFE the samples that land between the modes of a mixture (a few in a thousand, the
    log-density gap's worst) are among those with the largest e: with ``fit_grid``'s grid and
    ``refine=1`` both metrics are within 2× of their floors on all 18 held-out cases (13 without)
    and on 14 of 16 fresh ones (benchmarks/refine.md, benchmarks/heldout_results.md).  The refined
    samples depend on the batch (the ranking and the budget are the batch's); with post-step hooks
    (projections) it is refused;
    ``x0_hook`` applies to the re-solves too, ``callback`` and ``return_trajectory`` see the base solve.
    Latency: the re-solves are a few sequential solves (chunks) of small batches, ~140 score calls at
    refine=1 on 10k samples against the base's 15; NFE counts rows, so where a call costs the same
    whatever its rows (a GPU far from full) their wall time is that of ~140 calls.
    """

    solver_order: int = option(3, choices=(1, 2, 3, 4))
    refine: float = option(0.0, within="[0, inf)")
    refine_tol: float = option(1e-2, within="(0, inf)")

    @property
    def order(self) -> float:
        return float(self.solver_order + 1)

    @property
    def batch_coupling(self) -> str | None:
        return "refine= re-solves the samples ranked worst within the batch's budget" if self.refine else None

    def extra_nfe(self, denoise: bool) -> int:
        return super().extra_nfe(denoise) + math.ceil(self.refine)

    def init(self, ctx: Context, x: Tensor, ts: list[float]) -> State:
        sc, ks, hist = self.prepare(ctx, ts)
        x = ctx.settle(x, ts[0])
        hist.append(scaled_denoised(ctx.score, x, ts[0], sc.sigma[0]))  # m_0 x̂_0(x_0): D_0, stored times m
        track = None
        if self.refine:
            if ctx.post_step is not None or ctx.final is not None:
                raise ValueError("refine= re-solves samples without the run's post-step hooks (projections); "
                                 "pass refine=0 with them")
            track = SimpleNamespace(x=x.clone(), err=x.new_zeros(x.shape[0]), ts=(ts[0], ts[-1]))
        return State(x, ts[0], memory=(sc, ks, hist, track))

    def step(self, ctx: Context, state: State, t: float, t_next: float) -> State:
        (sc, ks, hist, track), i, x = state.memory, state.i, state.x  # hist: m_j D_j, newest first
        h, k = sc.lam[i + 1] - sc.lam[i], ks[i]
        a, m_next = sc.sigma[i + 1] / sc.sigma[i], sc.alpha[i + 1]
        past = [sc.lam[i - j] - sc.lam[i] for j in range(k)]
        w = exp_weights(h, past)
        x_pred = lincomb([(a, x)] + [(m_next * w[j] / sc.alpha[i - j], hist[j]) for j in range(k)])
        if i + 1 == len(ks):  # the last step is not corrected
            return state.advance(ctx.settle(x_pred, t_next), t_next)
        settled = ctx.settle(x_pred, t_next)
        d_next = scaled_denoised(ctx.score, settled, t_next, sc.sigma[i + 1])
        wc = exp_weights(h, [h] + past)
        # corrector = predictor + m'(w^c_0 D_{i+1} + Σ_j (w^c_{j+1} − w_j) D_{i−j}), accumulated into x̃ (its
        # evaluation has returned): the a·x term and a buffer fewer than forming it afresh
        corr = [(wc[0], d_next)] + [(m_next * (wc[j + 1] - w[j]) / sc.alpha[i - j], hist[j]) for j in range(k)]
        if track is not None:  # the increment on its own, for the error estimate ‖x − x̃‖_rms / σ' (the state
            inc = lincomb(corr)  # is formed as without refine: the same samples, bit for bit)
            rms = inc.flatten(1).norm(dim=1).div_(math.sqrt(inc[0].numel()) * sc.sigma[i + 1])
            torch.maximum(track.err, rms.to(track.err.dtype), out=track.err)
        x = lincomb(corr, into=x_pred)
        hist[:] = [d_next] + hist[: self.solver_order]
        return state.advance(ctx.settle(x, t_next), t_next)

    def finish(self, ctx: Context, state: State, denoise: bool) -> Tensor:
        x = super().finish(ctx, state, denoise)
        track = state.memory[3]
        if track is None:
            return x
        end = ctx.tail[1] if ctx.tail is not None else track.ts[1]
        refined, spent = refine_rows(ctx, x, track.x, track.err, [track.ts[0], end], self.refine, self.refine_tol,
                                     denoise)
        state.stats.update(refined=refined, refine_nfe=spent, row_error=track.err)
        return x


def refine_rows(ctx: Context, x: Tensor, x_start: Tensor, err: Tensor, ts: list[float], budget: float, tol: float,
                denoise: bool) -> tuple[int, float]:
    """Replace rows of ``x`` (in place) in decreasing ``err`` by ``ode_adaptive_ps`` solves (rtol = atol = ``tol``)
    from their states ``x_start`` at ts[0] to ts[-1] (with ``denoise``: the final denoising too), each within
    ``REFINE_CAP`` evaluations, in chunks that fit what is left of ``budget`` evaluations per row of ``x`` even
    if every solve used its cap (until a chunk would be under an eighth of the first).  The score is the run's
    (counted: the re-solves add to its NFE).  Returns (rows replaced, evaluations spent per row of x)."""
    from .adaptive_ms import AdaptiveMultistep

    n, score = x.shape[0], ctx.score
    sampler = AdaptiveMultistep(rtol=tol, atol=tol, nfe_budget=REFINE_CAP)
    order = torch.sort(err, descending=True, stable=True).indices
    nfe0, done, first = score.nfe, 0, None
    while done < n:
        take = min(int((budget - (score.nfe - nfe0)) * n) // REFINE_CAP, n - done)
        if take <= 0 or (first is not None and 8 * take < first):  # the chunks shrink geometrically: the last,
            break  # smallest ones would add sequential calls for a few of the lowest-ranked rows
        first = take if first is None else first
        rows = order[done:done + take]
        x[rows] = sampler.run(ctx.sde, score, x_start[rows], ts, ctx.noise, denoise=denoise).x.to(x.dtype)
        done += take
    return done, float(score.nfe - nfe0)
