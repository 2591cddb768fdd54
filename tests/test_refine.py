"""UniPC's ``refine``: the samples its corrector was least sure of, solved again by ode_adaptive_ps.

Ground truth: the exact log-density of p_eps (closed form for a Gaussian mixture) and the probability-flow
endpoints of the same starts at rtol = atol = 1e-7."""

from __future__ import annotations

import pytest
import torch

import scoresolve as ss
from scoresolve.bench.problems import analytic_problem
from scoresolve.samplers import AdaptiveMultistep, UniPC
from scoresolve.samplers.unipc import REFINE_CAP

# the held-out mix2s101: 4 components in 2-D, stds 0.05-0.5, smallest weight 0.05; rows land between modes at 15 NFE
MIX2 = analytic_problem("mix2s101").target
N, STEPS = 2000, 14


def _runs(sde):
    score = MIX2.score_fn(sde)
    x_T = torch.randn(N, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * sde.prior_std()
    kw = dict(x_init=x_T, steps=STEPS, denoise=False)
    base = ss.sample(score, sde, (N, 2), UniPC(solver_order=4), **kw)
    refined = ss.sample(score, sde, (N, 2), UniPC(solver_order=4, refine=2.0), **kw)
    return score, x_T, base, refined


@pytest.mark.parametrize("sde", [ss.VPSDE(), ss.VESDE()], ids=["vp", "ve"])
def test_refine_resolves_the_rows_ranked_worst_and_counts_them(sde):
    score, x_T, base, refined = _runs(sde)
    k, spent = refined.stats["refined"], refined.stats["refine_nfe"]
    assert k > 0 and 0 < spent <= 2.0
    assert refined.nfe == pytest.approx(base.nfe + spent, rel=1e-12)
    top = torch.sort(refined.stats["row_error"], descending=True, stable=True).indices[:k]
    rest = torch.ones(N, dtype=torch.bool)
    rest[top] = False
    assert torch.equal(refined.samples[rest], base.samples[rest])  # the others untouched
    # each re-solve is ode_adaptive_ps from the row's own start (per-sample steps: the chunks do not matter, but
    # the mixture's score rounds differently when a call's rows share one t: ~1e-13; other steps move rows ≥ 1e-4)
    alone = ss.sample(score, sde, (k, 2), AdaptiveMultistep(rtol=1e-2, atol=1e-2, nfe_budget=REFINE_CAP),
                      x_init=x_T[top], denoise=False)
    torch.testing.assert_close(refined.samples[top], alone.samples, rtol=0, atol=1e-9)


@pytest.mark.parametrize("sde", [ss.VPSDE(), ss.VESDE()], ids=["vp", "ve"])
def test_refine_ranking_finds_the_rows_the_steps_got_wrong(sde):
    # measured (N = 2000): the refined rows' endpoint error 10.2x / 9.5x the others', 54 % / 55 % of them among
    # the true worst k (k/N = 6 % by chance), their mean log-density −4.35 → −0.73 / −2.49 → −1.34
    score, x_T, base, refined = _runs(sde)
    exact = ss.sample(score, sde, (N, 2), AdaptiveMultistep(rtol=1e-7, atol=1e-7), x_init=x_T, denoise=False)
    err = (base.samples - exact.samples).norm(dim=1)
    k = refined.stats["refined"]
    top = torch.sort(refined.stats["row_error"], descending=True, stable=True).indices[:k]
    chosen = torch.zeros(N, dtype=torch.bool)
    chosen[top] = True
    assert float(err[chosen].mean()) > 5 * float(err[~chosen].mean())
    assert float(chosen[err.argsort(descending=True)[:k]].double().mean()) > 5 * k / N
    p_eps = MIX2.diffused(sde.default_eps, sde)
    before, after = p_eps.log_prob(base.samples[top]).mean(), p_eps.log_prob(refined.samples[top]).mean()
    assert float(after - before) > 0.5


def test_refine_takes_its_share_of_an_nfe_budget_and_none_below_the_cap():
    sde = ss.VPSDE()
    r = ss.sample(MIX2.score_fn(sde), sde, (N, 2), "unipc:solver_order=4;refine=1", nfe=15, denoise=False,
                  generator=torch.Generator().manual_seed(1))
    assert r.stats["steps"] == 14 and r.nfe <= 15 and r.stats["refined"] > 0
    small = ss.sample(MIX2.score_fn(sde), sde, (16, 2), "unipc:solver_order=4;refine=1", nfe=15, denoise=False,
                      generator=torch.Generator().manual_seed(1))
    assert small.stats["refined"] == 0 and small.nfe == 14  # 16 evaluations < one re-solve's cap


def test_refine_with_denoise_ends_the_re_solved_rows_alike():
    sde = ss.VPSDE()
    score = MIX2.score_fn(sde)
    x_T = torch.randn(N, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    r = ss.sample(score, sde, (N, 2), UniPC(solver_order=4, refine=1.0), x_init=x_T, steps=STEPS)
    top = torch.sort(r.stats["row_error"], descending=True, stable=True).indices[:r.stats["refined"]]
    alone = ss.sample(score, sde, (top.numel(), 2), AdaptiveMultistep(rtol=1e-2, atol=1e-2, nfe_budget=REFINE_CAP),
                      x_init=x_T[top])
    torch.testing.assert_close(r.samples[top], alone.samples, rtol=0, atol=1e-9)  # as above


def test_refine_errors_name_the_argument():
    with pytest.raises(ValueError, match="refine"):
        UniPC(refine=-1.0)
    sde = ss.VPSDE()
    s = ss.start(MIX2.score_fn(sde), sde, (8, 2), UniPC(refine=1.0), steps=5)
    s.ctx.post_step = lambda x, t: x
    with pytest.raises(ValueError, match="refine"):
        s.sampler.init(s.ctx, s.x, s.ts)


def test_fit_grid_leaves_the_refine_budget_out_of_its_steps():
    sde = ss.VPSDE()
    fit = ss.fit_grid(MIX2.score_fn(sde), sde, (64, 2), "unipc:solver_order=4;refine=1", 15, max_evals=4,
                      objective="endpoint", generator=torch.Generator().manual_seed(0), progress=False)
    assert len(fit.ts) - 1 == 14 and "refine=1" in fit.method
    r = ss.sample(MIX2.score_fn(sde), sde, (N, 2), fit.method, denoise=False,
                  generator=torch.Generator().manual_seed(3), **fit.sample_options)
    assert r.nfe <= 15 and r.stats["refined"] > 0
