"""fit_grid: a fixed-step sampler's grid fitted on a pilot batch against the probability-flow paths
(ground truth: ode_adaptive_ps at rtol 1e-7 on the exact mixture score, from the same prior draws)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import scoresolve as ss
from scoresolve.samplers import AdaptiveMultistep
from scoresolve.targets import GaussianMixture
from scoresolve.timegrid import check_grid

RING = GaussianMixture.ring(8, 2.0, 0.1)
SDE = ss.VPSDE()


@pytest.fixture(scope="module")
def fitted():
    return ss.fit_grid(RING.score_fn(SDE), SDE, (256, 2), "unipc", 8, max_evals=300, objective="endpoint",
                       data_mean=None, generator=torch.Generator().manual_seed(0), progress=False)


def _endpoint_errors(x_T: torch.Tensor, **grid) -> tuple[torch.Tensor, float]:
    """Squared endpoint errors against the exact flow of x_T, and the NFE."""
    exact = ss.sample(RING.score_fn(SDE), SDE, x_T.shape, AdaptiveMultistep(rtol=1e-7, atol=1e-7, tail_sigma=None),
                      x_init=x_T, denoise=False).samples
    out = ss.sample(RING.score_fn(SDE), SDE, x_T.shape, "unipc", x_init=x_T, denoise=False, **grid)
    return (out.samples.double() - exact.double()).square().sum(1), out.nfe


def test_the_fitted_grid_is_closer_to_the_flow_on_samples_it_was_not_fitted_on(fitted):
    """On 1000 fresh prior draws the fitted 8-step grid's squared endpoint errors against the exact
    flow, mean and median, are below a tenth of the log-SNR-uniform grid's (measured 1.7e-5 vs 0.025
    and 3.0e-6 vs 0.017; the pilot's medians 2.9e-6 vs 0.017): the search places the steps for the
    paths, not for its 256 pilot draws."""
    x_T = torch.randn(1000, 2, generator=torch.Generator().manual_seed(1)) * SDE.prior_std()
    fit_err, fit_nfe = _endpoint_errors(x_T, grid=fitted.ts)
    uniform_err, uniform_nfe = _endpoint_errors(x_T, nfe=8)
    assert fit_nfe == uniform_nfe == 8
    assert fit_err.mean() < uniform_err.mean() / 10 and fit_err.median() < uniform_err.median() / 10
    assert fitted.median_error < fitted.median_error_start / 10 and fitted.loss < fitted.loss_start


def test_the_grid_runs_from_T_to_eps_and_the_cost_is_counted(fitted):
    ts = fitted.ts
    assert ts.dtype == torch.float64 and len(ts) == 9
    assert ts[0] == SDE.T and ts[-1] == SDE.default_eps and bool((ts.diff() < 0).all())
    assert 2 <= fitted.evaluations <= 300
    # the reference solve of the pilot, then 8 evaluations per pilot solve
    assert fitted.pilot_nfe > 8 * fitted.evaluations + 50


def test_any_search_point_is_a_strictly_decreasing_grid():
    """The search may push increments to nothing (softmax of θ ~ ±50): every time still strictly below the last."""
    from scoresolve.gridfit import _grid

    lam0, lam1 = (0.5 * float(SDE.log_snr(torch.tensor(t, dtype=torch.float64))) for t in (SDE.T, SDE.default_eps))
    for theta in (np.array([60.0, -60.0, -60.0, 0.0, -60.0]), np.zeros(5), np.array([-60.0] * 4 + [60.0])):
        ts = _grid(theta, lam0, lam1, SDE, SDE.T, SDE.default_eps)
        assert bool((ts.diff() < 0).all()) and ts[0] == SDE.T and ts[-1] == SDE.default_eps
        assert torch.equal(check_grid(ts, SDE), ts)


def test_fitting_is_reproducible_bit_for_bit(fitted):
    again = ss.fit_grid(RING.score_fn(SDE), SDE, (256, 2), "unipc", 8, max_evals=300, objective="endpoint",
                        data_mean=None, generator=torch.Generator().manual_seed(0), progress=False)
    assert torch.equal(again.ts, fitted.ts) and again.loss == fitted.loss


def test_a_saved_fit_loads_as_the_same_grid_and_samples_the_same(fitted, tmp_path):
    """save / load: every field back, the times bit for bit (float64 through JSON), so a later
    session samples exactly what this one does; a record missing fields is refused by name."""
    path = tmp_path / "fit.json"
    fitted.save(path)
    back = ss.FittedGrid.load(path)
    assert back.ts.dtype == torch.float64 and torch.equal(back.ts, fitted.ts)
    assert {k: v for k, v in back.to_dict().items() if k != "ts"} == {k: v for k, v in fitted.to_dict().items()
                                                                       if k != "ts"}
    assert fitted.seconds > 0
    a, b = (ss.sample(RING.score_fn(SDE), SDE, (64, 2), "unipc", denoise=False,
                      generator=torch.Generator().manual_seed(3), **f.sample_options).samples for f in (fitted, back))
    assert torch.equal(a, b)
    record = fitted.to_dict()
    del record["method"], record["nfe"]
    with pytest.raises(ValueError, match="not a FittedGrid record: missing method, nfe"):
        ss.FittedGrid.from_dict(record)


@pytest.mark.parametrize("kw,match", [
    (dict(method="em"), r"method='em' has no fixed deterministic grid.*valid choices: .*unipc"),
    (dict(method="ode_adaptive_ps"), r"no fixed deterministic grid"),
    (dict(start="cosine"), r"unknown start='cosine'; valid choices: .*log_snr"),
    (dict(nfe=1), r"nfe=1 leaves unipc one step"),
    (dict(max_evals=0), r"max_evals must be an integer >= 2"),
])
def test_bad_arguments_are_named(kw, match):
    args = dict(method="unipc", nfe=8) | kw
    with pytest.raises(ValueError, match=match):
        ss.fit_grid(RING.score_fn(SDE), SDE, (16, 2), args.pop("method"), args.pop("nfe"), progress=False, **args)


def test_a_grid_tensor_with_eps_below_its_end_ends_with_the_tail_step():
    """A generated sub-VP grid stops at σ/m = 0.01 and the tail step carries the samples to eps: the same
    grid passed as a tensor with that eps gives the same samples, bit for bit, at the same NFE."""
    sub, eps = ss.SubVPSDE(), ss.SubVPSDE().default_eps
    for method in ("unipc", "ddim"):
        gen = ss.sample(RING.score_fn(sub), sub, (64, 2), method, nfe=12, generator=torch.Generator().manual_seed(0))
        again = ss.sample(RING.score_fn(sub), sub, (64, 2), method, grid=gen.ts[:-1], eps=eps,
                          generator=torch.Generator().manual_seed(0))
        assert torch.equal(again.samples, gen.samples) and again.nfe == gen.nfe == 12
    with pytest.raises(ValueError, match=r"eps=0.001 with a grid tensor must lie below the grid's end"):
        ss.sample(RING.score_fn(sub), sub, (4, 2), "unipc", grid=gen.ts, eps=eps)
    with pytest.raises(ValueError, match=r"adds the tail step.*deterministic fixed-step samplers only"):
        ss.sample(RING.score_fn(sub), sub, (4, 2), "em", grid=gen.ts[:-1], eps=eps)


def test_a_sub_vp_fit_ends_at_the_tail_and_beats_the_generated_grid_on_fresh_draws():
    """Sub-VP's default end lies below σ/m = 0.01: the fitted grid ends there (as the generated one) and
    ``sample_options`` adds eps, so the tail step carries the samples on; on fresh draws their endpoint errors
    against the exact flow are below a tenth of the generated grid's (measured median 5.0e-5 vs 0.019)."""
    sub, eps = ss.SubVPSDE(), ss.SubVPSDE().default_eps
    fit = ss.fit_grid(RING.score_fn(sub), sub, (128, 2), "unipc", 8, max_evals=150, data_mean=None,
                      generator=torch.Generator().manual_seed(0), progress=False)
    assert fit.eps == eps and set(fit.sample_options) == {"grid", "eps"}
    m_c, s_c = sub.marginal(float(fit.ts[-1]))
    assert abs(float(s_c / m_c) - 0.01) < 1e-9
    x_T = torch.randn(1000, 2, generator=torch.Generator().manual_seed(1)) * sub.prior_std()
    exact = ss.sample(RING.score_fn(sub), sub, x_T.shape, AdaptiveMultistep(rtol=1e-7, atol=1e-7, tail_sigma=None),
                      x_init=x_T, denoise=False).samples.double()
    errs = {}
    for name, kw in (("fitted", fit.sample_options), ("generated", dict(nfe=8))):
        res = ss.sample(RING.score_fn(sub), sub, x_T.shape, "unipc", x_init=x_T, denoise=False, **kw)
        assert res.nfe == 8 and res.ts[-1] == eps
        errs[name] = (res.samples.double() - exact).square().sum(1)
    assert errs["fitted"].median() < errs["generated"].median() / 10, errs


def test_a_fit_names_the_options_it_was_fitted_for(fitted):
    """A grid fitted for unipc with solver_order=4 records "unipc:solver_order=4" (an old option name by its
    new one), which rebuilds that sampler; the default options record the bare name."""
    from scoresolve.registry import format_spec, method_from_spec, parse_spec

    assert fitted.method == "unipc"
    kw = dict(max_evals=4, generator=torch.Generator().manual_seed(0), progress=False)
    o4 = ss.fit_grid(RING.score_fn(SDE), SDE, (32, 2), "unipc", 8, solver_order=4, **kw)
    assert o4.method == "unipc:solver_order=4" and method_from_spec(o4.method) == ss.UniPC(solver_order=4)
    with pytest.warns(DeprecationWarning):
        old = ss.fit_grid(RING.score_fn(SDE), SDE, (32, 2), "unipc", 8, predictor_order=4, **kw)
    assert old.method == "unipc:solver_order=4"
    same = ss.fit_grid(RING.score_fn(SDE), SDE, (32, 2), "unipc", 8, solver_order=3, **kw)  # the default
    assert same.method == "unipc"
    kw["generator"] = torch.Generator().manual_seed(0)
    again = ss.fit_grid(RING.score_fn(SDE), SDE, (32, 2), o4.method, 8, **kw)  # the recorded spec refits
    assert again.method == o4.method and torch.equal(again.ts, o4.ts)
    sg = ss.scale_grid(RING.score_fn(SDE), SDE, (64, 2), "unipc:solver_order=4", 8)
    assert sg.method == "unipc:solver_order=4"
    opts = {"correct_last": True, "nfe_budget": None, "rtol": 0.005, "solver_order": 2, "error_norm": "state"}
    assert parse_spec(format_spec("ode_adaptive_ps", opts)) == ("ode_adaptive_ps", opts)


def test_the_logp_objective_is_the_exact_mean_log_density_change_on_a_gaussian():
    """objective="logp": on a Gaussian the trapezoid rule is exact, so the fit's loss on its grid is the pilot's
    mean |log p_eps(x) − log p_eps(x_ref)| computed from the closed-form density; the search lowers it, and each
    pilot solve costs one evaluation more than the sampler's."""
    rot = torch.linalg.qr(torch.randn(4, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64))[0]
    cov = rot @ torch.diag(torch.tensor([0.05, 0.1, 0.3, 1.0], dtype=torch.float64) ** 2) @ rot.T
    gauss = GaussianMixture(torch.ones(1), torch.tensor([[1.0, -0.5, 0.0, 2.0]]), cov.unsqueeze(0))
    x_T = torch.randn(64, 4, generator=torch.Generator().manual_seed(1)) * SDE.prior_std()
    fit = ss.fit_grid(gauss.score_fn(SDE), SDE, x_T.shape, "unipc", 6, objective="logp", max_evals=40, x_init=x_T,
                      progress=False)
    assert fit.objective == "logp" and fit.loss < fit.loss_start / 2
    exact = ss.sample(gauss.score_fn(SDE), SDE, x_T.shape, AdaptiveMultistep(rtol=1e-7, atol=1e-7, tail_sigma=None),
                      x_init=x_T, denoise=False)
    on_fit = ss.sample(gauss.score_fn(SDE), SDE, x_T.shape, "unipc", x_init=x_T, denoise=False, grid=fit.ts).samples
    truth = gauss.diffused(SDE.default_eps, SDE)
    change = (truth.log_prob(on_fit.double()) - truth.log_prob(exact.samples.double())).abs().mean()
    assert float(change) == pytest.approx(fit.loss, rel=1e-4)
    assert fit.pilot_nfe == exact.nfe + 1 + fit.evaluations * 7  # the reference, its endpoints' score, 6 + 1 per solve
    endpoint = ss.fit_grid(gauss.score_fn(SDE), SDE, x_T.shape, "unipc", 6, objective="endpoint", max_evals=40,
                           x_init=x_T, progress=False)
    assert endpoint.objective == "endpoint" and not torch.equal(endpoint.ts, fit.ts)
    record = endpoint.to_dict()
    del record["objective"]  # a record saved before the option existed
    assert ss.FittedGrid.from_dict(record).objective == "endpoint"
    with pytest.raises(ValueError, match=r"unknown objective='kl'; valid choices: endpoint, logp, auto"):
        ss.fit_grid(gauss.score_fn(SDE), SDE, x_T.shape, "unipc", 6, objective="kl", progress=False)


def test_auto_keeps_the_objective_whose_grid_changes_fresh_draws_log_density_least():
    """objective="auto": both grids fitted on the pilot, then the one with the smaller mean |Δ log p| on fresh draws
    (the generator's next ones) is kept, bit for bit the grid of that objective's own fit; checked against the
    closed-form density of a Gaussian, where the trapezoid rule is exact."""
    rot = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64))[0]
    cov = rot @ torch.diag(torch.tensor([0.04, 0.2, 0.8], dtype=torch.float64) ** 2) @ rot.T
    gauss = GaussianMixture(torch.ones(1), torch.tensor([[0.5, 1.0, -1.0]]), cov.unsqueeze(0))
    kw = dict(max_evals=30, progress=False)
    auto = ss.fit_grid(gauss.score_fn(SDE), SDE, (48, 3), "unipc", 6, objective="auto", data_mean=None,
                       generator=torch.Generator().manual_seed(2), **kw)
    g = torch.Generator().manual_seed(2)
    pilot, fresh = (ss.gridfit.prior_draws(SDE, (48, 3), g, None, torch.float32) for _ in range(2))
    fits = {o: ss.fit_grid(gauss.score_fn(SDE), SDE, (48, 3), "unipc", 6, objective=o, x_init=pilot, **kw)
            for o in ("endpoint", "logp")}
    exact = ss.sample(gauss.score_fn(SDE), SDE, fresh.shape, AdaptiveMultistep(rtol=1e-7, atol=1e-7, tail_sigma=None),
                      x_init=fresh, denoise=False).samples.double()
    truth = gauss.diffused(SDE.default_eps, SDE)
    change = {o: float((truth.log_prob(ss.sample(gauss.score_fn(SDE), SDE, fresh.shape, "unipc", x_init=fresh,
                                                 denoise=False, grid=f.ts).samples.double())
                        - truth.log_prob(exact)).abs().mean()) for o, f in fits.items()}
    assert not torch.equal(fits["endpoint"].ts, fits["logp"].ts)
    chosen = min(change, key=change.get)
    assert auto.objective == f"auto:{chosen}" and torch.equal(auto.ts, fits[chosen].ts)
    assert auto.pilot_nfe > fits["endpoint"].pilot_nfe + fits["logp"].pilot_nfe


def test_a_pilot_given_as_x_init_is_the_pilot(fitted):
    """The same prior draws passed as x_init give the same fit as drawing them from the generator."""
    x_T = torch.randn(256, 2, generator=torch.Generator().manual_seed(0)) * SDE.prior_std()
    given = ss.fit_grid(RING.score_fn(SDE), SDE, None, "unipc", 8, max_evals=300, x_init=x_T, objective="endpoint",
                        progress=False)
    assert torch.equal(given.ts, fitted.ts) and given.pilot_nfe == fitted.pilot_nfe
