"""Issue 17: a fixed NFE budget for the per-sample adaptive multistep solver, and the held-out
mixtures of the benchmark suite (ground truth: the exact Gaussian flow map, exact mixtures)."""

from __future__ import annotations

import pytest
import torch
from helpers import SDES, gaussian_flow_map, loglog_slope

import scoresolve as ss
from scoresolve.bench.problems import analytic_problem
from scoresolve.samplers import AdaptiveMultistep
from scoresolve.targets import GaussianMixture

DIAG = GaussianMixture(torch.ones(1), torch.tensor([[0.5, -1.0]]), torch.tensor([[0.3**2, 0.1**2]]))
EASY_HARD = GaussianMixture(torch.tensor([0.5, 0.5]), torch.tensor([[-3.0, 0.0], [3.0, 0.0]]),
                            torch.tensor([1.0, 0.02**2]))


@pytest.mark.parametrize("denoise", [False, True])
@pytest.mark.parametrize("sde_name", ["vp", "subvp", "ve"])
def test_budget_caps_every_sample_and_a_tight_tolerance_uses_all_of_it(sde_name, denoise):
    sde = SDES[sde_name]
    score = EASY_HARD.score_fn(sde)
    for n in (6, 15):
        res = ss.sample(score, sde, (200, 2), "ode_adaptive_ps", nfe=n, denoise=denoise,
                        generator=torch.Generator().manual_seed(0))
        assert float(res.stats["nfe_per_sample"].max()) <= n and torch.isfinite(res.samples).all()
        tight = ss.sample(score, sde, (200, 2), AdaptiveMultistep(rtol=1e-9, atol=1e-9), nfe=n, denoise=denoise,
                          generator=torch.Generator().manual_seed(0))
        assert tight.nfe == n  # exactly n calls for every sample


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_budget_mode_converges_at_the_multistep_order(sde_name):
    """With a tolerance the budget cannot meet, the steps are (λ_end − λ)/(R + 1): error falls at least as N^−p
    (p = 3; the corrector adds one order where the steps are smooth)."""
    sde, eps = SDES[sde_name], 1e-3
    x_T = DIAG.diffused(sde.T, sde).sample(16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = gaussian_flow_map(DIAG, sde, x_T, eps)
    ns, errs = [32, 64, 128], []
    for n in ns:
        res = ss.sample(DIAG.score_fn(sde), sde, x_T.shape, AdaptiveMultistep(rtol=1e-12, atol=1e-12), nfe=n,
                        eps=eps, x_init=x_T, denoise=False)
        assert res.nfe == n
        errs.append(float((res.samples - exact).abs().max()))
    assert -loglog_slope(ns, errs) > 2.8, errs


def test_heldout_mixtures_are_what_the_suite_says():
    for name, d in (("mix2s101", 2), ("mix128s106", 128)):
        t = analytic_problem(name).target
        assert t.dim == d and 2 <= t.n_components <= 8
        assert abs(float(t.weights.min()) - 0.05) < 1e-12 and abs(float(t.weights.sum()) - 1) < 1e-12
        ev = torch.linalg.eigvalsh(t.covs).sqrt()
        assert abs(float(ev.min()) - 0.05) < 1e-9 and abs(float(ev.max()) - 0.5) < 1e-9
    t = analytic_problem("two16").target
    assert t.weights.tolist() == pytest.approx([0.8, 0.2])
