"""The fast samplers against closed-form ground truth.

Orders: ODE methods push fixed exact x_T points through the probability-flow map of a diagonal
Gaussian (linear and known in closed form); SDE methods on a 1-D Gaussian, where every sampler
is linear in x_T and in its noise draws, so the output mean and variance follow exactly from
basis draws (no Monte Carlo); the torchsde methods by strong error against the exact solution
of the linear reverse SDE on the same Brownian path.  Slopes come from log-log regressions.
"""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from helpers import SDES, Z_MAX, BasisNoise, distribution_z_scores, gaussian_1d, gaussian_flow_map, loglog_slope

import scoresolve as ss
from scoresolve.samplers import (
    DDIM,
    AdaptiveMultistep,
    AdaptiveODE,
    DPMSolverSDE,
    EDMHeun,
    GottaGoFast,
    TorchSDE,
    adaptive_ms,
)
from scoresolve.samplers._common import (
    Rows,
    _moments,
    exp_moments,
    exp_pc_weights,
    exp_weights,
    lanes,
    lincomb,
    row_coef,
    schedule,
    unlane,
)
from scoresolve.samplers.adaptive import PerSampleAdaptive, improved_euler_step
from scoresolve.samplers.adaptive_ms import _compact, _not_pushed, _push
from scoresolve.samplers.exponential import step_orders
from scoresolve.targets import GaussianMixture

FAST = ["ddim", "ddim_eta", "heun_edm", "edm_churn", "dpmpp_2s", "dpmpp_2m", "dpmpp_3m",
        "dpmpp_2m_sde", "unipc", "gotta_go_fast", "ode_adaptive_ps", "ode_adaptive_rk23",
        "sde_srk"]
ODE_FIXED = ["ddim", "heun_edm", "dpmpp_2s", "dpmpp_2m", "dpmpp_3m", "unipc"]
ORDER_TOL = 0.35  # |measured slope − declared order| allowed in the regressions below
RING = GaussianMixture.ring(8, 2.0, 0.1)


def _budget(name: str) -> dict:
    return {} if ss.SAMPLERS[name].nfe_per_step is None else {"nfe": 24}


# ---------------------------------------------------------------- interface and weights
@pytest.mark.parametrize("name", FAST)
def test_registered_with_declared_order_and_cost(name):
    s = ss.SAMPLERS[name]
    assert float(s.order) >= 1.0
    assert s.nfe_per_step is None or (isinstance(s.nfe_per_step, int) and s.nfe_per_step >= 1)
    assert s.default_grid in ss.GRIDS
    for d in (False, True):
        assert isinstance(s.extra_nfe(d), int)


def _gauss_legendre(n: int, a: float, b: float):
    u, w = (torch.tensor(v, dtype=torch.float64) for v in np.polynomial.legendre.leggauss(n))
    return a + 0.5 * (b - a) * (u + 1), 0.5 * (b - a) * w


@pytest.mark.parametrize("h", [1e-7, 1e-3, 0.2499, 0.2501, 0.4, 1.99, 3.5, 12.0, 80.0])
def test_exp_moments_match_quadrature(h):
    # Ĵ_k(h) = ∫_0^1 e^{−h(1−u)} u^k du by Gauss-Legendre (exact to ~1e-15 for these h)
    u, w = _gauss_legendre(200, 0.0, 1.0)
    ref = torch.stack([(w * torch.exp(-h * (1 - u)) * u**k).sum() for k in range(5)])
    got = exp_moments(torch.tensor(h, dtype=torch.float64), 4)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=0)
    torch.testing.assert_close(torch.tensor(_moments(h, 4), dtype=torch.float64), ref, rtol=1e-12, atol=0)


def test_exp_weights_integrate_polynomials_of_their_degree_exactly():
    h, nodes = 0.7, [0.0, -0.5, -1.3, 0.7]
    w = exp_weights(h, nodes, rate=2.0)
    u, q = _gauss_legendre(100, 0.0, h)
    for k in range(len(nodes)):
        exact = float((q * 2.0 * torch.exp(-2.0 * (h - u)) * u**k).sum())
        assert math.isclose(sum(wj * v**k for wj, v in zip(w, nodes)), exact, rel_tol=1e-10, abs_tol=1e-14)


def test_exp_weights_refuse_a_non_positive_step_by_name():
    with pytest.raises(ValueError, match="h > 0"):
        exp_weights(0.0, [0.0])


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_exp_pc_weights_are_the_predictor_and_the_corrector_one_order_higher(k):
    """``exp_pc_weights`` (the per-sample solver's Newton form) against the scalar ``exp_weights``:
    w = the predictor's weights on the nodes (0, v_1, …), and ω, w − ω·l = the corrector's on
    (h, 0, v_1, …); l interpolates (Σ l_j = 1, exact on polynomials of degree < k), on both sides
    of the per-sample series switch (h = 0.02) and of the shared one (0.25).  Tolerance: the
    recursion's relative error ≲ 1e-16·k!/h^k at the switch (1.5e-9 for k = 4), 1e-14 elsewhere."""
    gen = torch.Generator().manual_seed(5)
    h = torch.tensor([1e-6, 0.01, 0.0199, 0.0201, 0.05, 0.2, 0.26, 0.9, 3.0, 12.0], dtype=torch.float64)
    nodes = -torch.rand(len(h), k, generator=gen, dtype=torch.float64).add(0.2).cumsum(1) * h[:, None]
    nodes[:, 0] = 0.0
    w, ell, omega = exp_pc_weights(h, [nodes[:, j] / h for j in range(1, k)])
    w, ell = torch.stack(w, 1), torch.stack(ell, 1)
    for i, hi in enumerate(h.tolist()):
        rtol = 1e-16 * math.factorial(k) / min(hi, 0.25) ** k * 10 if 0.02 <= hi < 0.25 else 1e-12
        rtol = max(rtol, 1e-12)
        ref_p = torch.tensor(exp_weights(hi, nodes[i].tolist()), dtype=torch.float64)
        ref_c = torch.tensor(exp_weights(hi, [hi] + nodes[i].tolist()), dtype=torch.float64)
        got_c = torch.cat([omega[i : i + 1], w[i] - omega[i] * ell[i]])
        scale_p, scale_c = ref_p.abs().max(), ref_c.abs().max()
        torch.testing.assert_close(w[i], ref_p, rtol=0, atol=rtol * scale_p)
        torch.testing.assert_close(got_c, ref_c, rtol=0, atol=rtol * scale_c)
        u = nodes[i] / hi
        for n in range(k):  # P(h) for y = v^n (v = u/h) is 1
            assert abs(float((ell[i] * u**n).sum()) - 1.0) < 1e-9


def _naive_push(hist, fresh, pushed):
    """The history with ``fresh`` (full batch) in front for the rows ``pushed``, row by row."""
    out = [h.clone() for h in hist]
    for r in pushed.nonzero().squeeze(1).tolist():
        for j in range(len(hist) - 1, 0, -1):
            out[j][r] = hist[j - 1][r]
        out[0][r] = fresh[r]
    return out


@pytest.mark.parametrize("case", ["all_ran_few_rejected", "all_ran_most_rejected", "some_stopped_few", "most_stopped"])
def test_per_sample_history_push_moves_only_the_accepted_rows(case):
    """``_push`` (the multistep solver's history update) = the row-by-row definition, by either
    path (rotate and shift back the rest, or shift the accepted rows forward), with rows that
    stopped (not running) and with a history whose entries alias (the solver's first step)."""
    b, d, p = 12, 3, 3
    gen = torch.Generator().manual_seed(2)
    running = {"all_ran_few_rejected": b, "all_ran_most_rejected": b, "some_stopped_few": 10, "most_stopped": 4}[case]
    idx = torch.randperm(b, generator=gen)[:running].sort().values
    n_rej = {"all_ran_few_rejected": 2, "all_ran_most_rejected": 9, "some_stopped_few": 1, "most_stopped": 1}[case]
    ok = torch.ones(running, dtype=torch.bool)
    ok[torch.randperm(running, generator=gen)[:n_rej]] = False
    for alias in (False, True):
        first = torch.randn(b, d, generator=gen, dtype=torch.float64)
        hist = [first] * p if alias else [torch.randn(b, d, generator=gen, dtype=torch.float64) for _ in range(p)]
        fresh_full = torch.randn(b, d, generator=gen, dtype=torch.float64)
        pushed = torch.zeros(b, dtype=torch.bool)
        pushed[idx[ok]] = True
        want = _naive_push(hist, fresh_full, pushed)
        run = Rows(idx, b)
        sel = PerSampleAdaptive._accept(ok, int(ok.sum()), run, b)
        got = _push([h for h in hist], run.of(fresh_full).clone(), sel, _not_pushed(sel, b))
        for g, w_ in zip(got, want):
            torch.testing.assert_close(g, w_, rtol=0, atol=0)
        if alias:  # the shared tensor is copied before any row moves, never written
            torch.testing.assert_close(hist[0], first, rtol=0, atol=0)


@pytest.mark.parametrize("options", [{}, {"nfe": 20}, {"correct_last": True, "denoise": False}])
def test_per_sample_compacted_memory_changes_nothing(monkeypatch, options):
    """``ode_adaptive_ps`` drops the rows that ended from its step memory (``COMPACT_AT``): compacting
    at every ending, at the default share, or never gives the same samples, counts, evaluations and
    callback states and x̂_0's, bit for bit (the callback's x̂_0 is written row by row through the
    evaluated rows' batch indices, so a compacted memory's own indices would show there).  Sub-VP:
    its tail step ends the rows at λ_c."""
    target, sde = GaussianMixture.ring(8, 2.0, 0.1), ss.SubVPSDE()
    base = target.score_fn(sde)

    def run(share):
        monkeypatch.setattr(adaptive_ms, "COMPACT_AT", share)
        compactions, sizes, seen = [], [], []
        monkeypatch.setattr(adaptive_ms, "_compact",
                            lambda mem, keep, f=_compact: compactions.append(1) or f(mem, keep))
        res = ss.sample(lambda x, t: sizes.append(x.shape[0]) or base(x, t), sde, (600, 2), "ode_adaptive_ps",
                        generator=torch.Generator().manual_seed(4),
                        callback=lambda i, t, x, x0: seen.append((t.clone(), x.clone(), x0.clone())), **options)
        return res, sizes, seen, len(compactions)

    every, default, never = run(0.0), run(0.125), run(2.0)
    assert every[3] > default[3] > 0 == never[3]  # the three paths differ
    for res, sizes, seen, _ in (every, default):
        assert torch.equal(res.samples, never[0].samples) and res.nfe == never[0].nfe and sizes == never[1]
        assert torch.equal(res.stats["nfe_per_sample"], never[0].stats["nfe_per_sample"])
        for k in ("accepted", "rejected"):
            assert res.stats[k] == never[0].stats[k]
        assert len(seen) == len(never[2])
        for a, b in zip(seen, never[2]):
            for u, v in zip(a, b):
                assert torch.equal(u.nan_to_num(-7.0), v.nan_to_num(-7.0))


def test_rows_add_counts_on_the_selected_rows_only():
    """``Rows.add`` on a subset (the per-sample counters) adds a number or per-row values there only."""
    v = torch.zeros(6, dtype=torch.float64)
    rows = Rows(torch.tensor([1, 4]), 6)
    rows.add(v, 1.0)
    rows.add(v, torch.tensor([True, False]).double())
    assert v.tolist() == [0.0, 2.0, 0.0, 0.0, 1.0, 0.0]
    Rows(torch.arange(6), 6).add(v, 0.5)
    assert v.tolist() == [0.5, 2.5, 0.5, 0.5, 1.5, 0.5]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize("layout", ["b1", "b2", "b3", "b122", "b2_transposed", "b2_odd_offset"])
def test_lanes_scale_each_row_by_its_own_coefficient(layout, dtype):
    """``lanes`` / ``row_coef`` / ``unlane``: per-row scaling and a fused multiply-add on the lanes view
    equal the broadcast column computation (to the last bit for a product, to float rounding for the
    fused one), and the view maps back to the original shape with row i still row i."""
    g = torch.Generator().manual_seed(0)
    b = 7
    base = torch.randn(b, 4, generator=g, dtype=torch.float64).to(dtype)
    x = {"b1": base[:, :1].contiguous(), "b2": base[:, :2].contiguous(), "b3": base[:, :3].contiguous(),
         "b122": base.view(b, 1, 2, 2), "b2_transposed": base[:, :2].t().contiguous().t(),
         "b2_odd_offset": base[:, 1:3]}[layout]
    y = torch.randn(x.shape, generator=g, dtype=torch.float64).to(dtype)
    c = torch.randn(b, generator=g, dtype=torch.float64)
    col = c.to(dtype).view((b,) + (1,) * (x.ndim - 1))
    xl, yl = lanes(x), lanes(y)
    shape = x.shape[1:]
    assert torch.equal(unlane(xl, shape), x)  # the same numbers in the same rows
    assert torch.equal(unlane(xl * row_coef(c, xl), shape), x * col)
    tol = dict(rtol=4 * torch.finfo(dtype).eps, atol=4 * torch.finfo(dtype).eps)
    torch.testing.assert_close(unlane(torch.addcmul(xl, row_coef(c, xl), yl), shape), torch.addcmul(x, col, y), **tol)


def test_lanes_keep_the_real_layout_off_the_cpu():
    """The complex view is a CPU measure: elsewhere a 2-D sample keeps its (B, 2) layout (and a
    coefficient broadcasts as a column), so devices without full complex support are not asked for it."""
    x = torch.empty(5, 2, device="meta")
    assert lanes(x) is x and row_coef(torch.ones(5, dtype=torch.float64, device="meta"), x).shape == (5, 1)


@pytest.mark.parametrize("sde", [ss.VPSDE(), ss.VPSDE(beta_min=0.5, beta_max=35.0), ss.SubVPSDE(), ss.VESDE()],
                         ids=["vp", "vp_steep", "subvp", "ve"])
def test_at_log_snr_is_the_time_and_marginal_at_that_log_snr(sde):
    """``sde.at_log_snr(λ)`` = (t(λ), m(t), σ(t)) to round-off over the whole schedule (VP and sub-VP
    take shortcuts through e^{∓λ}; VE the round trip through t)."""
    t = torch.linspace(1e-5, 1.0, 2001, dtype=torch.float64)
    got_t, m, s = sde.at_log_snr(sde.log_snr(t))
    m_ref, s_ref = sde.marginal(t)
    torch.testing.assert_close(got_t, t, rtol=1e-10, atol=0)
    torch.testing.assert_close(m, m_ref, rtol=1e-10, atol=0)
    torch.testing.assert_close(s, s_ref, rtol=1e-10, atol=0)


def test_lincomb_float_and_tensor_coefficients():
    """Σ c_i x_i with floats, per-row tensors and zeros; ``into`` accumulates in place."""
    gen = torch.Generator().manual_seed(0)
    x, y, z = (torch.randn(4, 3, generator=gen, dtype=torch.float64) for _ in range(3))
    c = torch.tensor([[0.5], [-1.0], [2.0], [0.0]], dtype=torch.float64)
    torch.testing.assert_close(lincomb([(2.0, x), (c, y), (0.0, z), (-3.0, z)]), 2 * x + c * y - 3 * z)
    buf = x.clone()
    out = lincomb([(c, y), (1.5, z)], into=buf)
    assert out is buf
    torch.testing.assert_close(buf, x + c * y + 1.5 * z)


# ---------------------------------------------------------------- orders (ODE)
DIAG = GaussianMixture(torch.ones(1), torch.tensor([[0.5, -1.0]]), torch.tensor([[0.25, 0.04]]))


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
@pytest.mark.parametrize("name", ODE_FIXED)
def test_ode_order_against_exact_gaussian_flow_map(name, sde_name):
    sde, eps = SDES[sde_name], 1e-3
    sampler = ss.SAMPLERS[name]
    x_T = DIAG.diffused(sde.T, sde).sample(16, generator=torch.Generator().manual_seed(0),
                                            dtype=torch.float64)
    exact = gaussian_flow_map(DIAG, sde, x_T, eps)
    ns = [16, 32, 64, 128] if sampler.nfe_per_step == 1 else [12, 24, 48, 96]
    errs = []
    for n in ns:  # a Karras grid: uneven λ-steps, so no superconvergence of uniform steps
        res = ss.sample(DIAG.score_fn(sde), sde, x_T.shape, name, steps=n, grid="karras", eps=eps,
                        x_init=x_T, denoise=False)
        errs.append(float((res.samples - exact).abs().max()))
    assert abs(-loglog_slope(ns, errs) - sampler.order) < ORDER_TOL, errs


def _unipc_unfolded(sde, score, x, ts, p):
    """UniPC exactly as written in the paper: predictor, evaluation, corrector, every step."""
    sc = schedule(sde, ts)
    n = len(ts) - 1
    ks = step_orders(n, p, True)
    hist = [(x + sc.sigma[0] ** 2 * score(x, ts[0])) / sc.alpha[0]]  # x̂_0, newest first
    traj = [x]
    for i, k in enumerate(ks):
        h = sc.lam[i + 1] - sc.lam[i]
        past = [sc.lam[i - j] - sc.lam[i] for j in range(k)]
        base = sc.sigma[i + 1] / sc.sigma[i] * x
        x_pred = base + sc.alpha[i + 1] * sum(w * d for w, d in zip(exp_weights(h, past), hist))
        if i + 1 < n:
            d_new = (x_pred + sc.sigma[i + 1] ** 2 * score(x_pred, ts[i + 1])) / sc.alpha[i + 1]
            wc = exp_weights(h, [h] + past)
            x = base + sc.alpha[i + 1] * sum(w * d for w, d in zip(wc, [d_new] + hist))
            hist = [d_new] + hist[: p - 1]
        else:
            x = x_pred
        traj.append(x)
    return traj


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_unipc_folded_corrector_is_the_unfolded_algorithm(sde_name):
    # the loop folds each corrector into the next predictor; states and trajectory must be
    # those of the textbook loop up to float64 rounding, on a nonlinear (mixture) score
    sde = SDES[sde_name]
    ts = ss.make_grid("log_snr", sde, 9, sde.default_eps).tolist()
    x_T = torch.randn(32, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * sde.prior_std()
    score = RING.score_fn(sde)
    res = ss.sample(score, sde, x_T.shape, "unipc", grid=torch.tensor(ts, dtype=torch.float64), x_init=x_T,
                    denoise=False, return_trajectory=True)
    ref = _unipc_unfolded(sde, lambda x, t: score(x, torch.full((x.shape[0],), t, dtype=x.dtype)), x_T, ts, 3)
    scale = max(float(r.abs().max()) for r in ref)
    for got, want in zip(res.trajectory, ref):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12 * scale)


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
@pytest.mark.parametrize("sampler", [AdaptiveMultistep(), AdaptiveMultistep(solver_order=2), AdaptiveODE()],
                         ids=["ams_p3", "ams_p2", "rk23"])
def test_adaptive_ode_error_falls_with_nfe_at_its_declared_order(sampler, sde_name):
    # error ∝ NFE^(−order) when the tolerance is swept (wider band: step control adds noise)
    sde, eps = SDES[sde_name], 1e-3
    x_T = DIAG.diffused(sde.T, sde).sample(16, generator=torch.Generator().manual_seed(0),
                                            dtype=torch.float64)
    exact = gaussian_flow_map(DIAG, sde, x_T, eps)
    nfes, errs = [], []
    for tol in [1e-4, 1e-5, 1e-6, 1e-7]:
        res = ss.sample(DIAG.score_fn(sde), sde, x_T.shape, replace(sampler, rtol=tol, atol=tol),
                        eps=eps, x_init=x_T, denoise=False)
        nfes.append(res.nfe)
        errs.append(float((res.samples - exact).abs().max()))
    assert abs(-loglog_slope(nfes, errs) - sampler.order) < ORDER_TOL + 0.25, (nfes, errs)


@pytest.mark.parametrize("sde_name", ["vp", "ve", "subvp"])
def test_rk23_float32_state_is_as_accurate_as_float64(sde_name):
    # the step's coefficients are computed in the state's dtype: in float32 they must not add error
    # beyond float32 rounding (~1e-6 here after ~50 steps) to the solver's own (different accept/reject
    # sequences move it by a few %); t from λ in float32 near T (sub-VP: 1 − σ ≈ 4e-5) once doubled it
    sde, eps = SDES[sde_name], 1e-3
    x_T = DIAG.diffused(sde.T, sde).sample(64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = gaussian_flow_map(DIAG, sde, x_T, eps)
    for tol in [1e-3, 1e-4]:
        errs = [float((ss.sample(DIAG.score_fn(sde), sde, x_T.shape, AdaptiveODE(rtol=tol, atol=tol), eps=eps,
                                 x_init=x_T.to(dt), denoise=False, dtype=dt).samples.double() - exact).abs().max())
                for dt in (torch.float64, torch.float32)]
        assert errs[1] <= 1.25 * errs[0] + 2e-6, (tol, errs)


# ---------------------------------------------------------------- orders (SDE, weak, exact moments)
def _exact_moments(step_fn, gm, sde, n_draws: int) -> tuple[float, float]:
    """Mean and variance of a sampler that is linear in x_T and its draws, from p_T exactly."""
    p_T = gm.diffused(sde.T, sde)
    x = torch.full((n_draws + 2, 1), float(p_T.mean()[0]), dtype=torch.float64)
    x[1] += math.sqrt(float(p_T.cov()[0, 0]))
    out = step_fn(x, BasisNoise())[:, 0]
    return float(out[0]), float((out[1] - out[0]) ** 2 + ((out[2:] - out[0]) ** 2).sum())


def _weak_slope(run, ns, gm, sde, eps):
    ex = gm.diffused(eps, sde)
    errs = []
    for n in ns:
        mean, var = _exact_moments(lambda x, z, n=n: run(x, z, n), gm, sde, n_draws=n)
        errs.append(abs(mean - float(ex.mean()[0])) + abs(var - float(ex.cov()[0, 0])))
    return -loglog_slope(ns, errs), errs


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
@pytest.mark.parametrize("sampler", [DDIM(eta=1.0), DDIM(eta=0.5), DPMSolverSDE(),
                                     DPMSolverSDE(eta=0.5), EDMHeun(s_churn=2.0)], ids=repr)
def test_sde_weak_order_from_exact_output_moments(sampler, sde_name):
    sde, eps, gm = SDES[sde_name], 1e-3, gaussian_1d(1.0, 0.5)

    def run(x, noise, n):
        ts = ss.make_grid(sampler.default_grid, sde, n, eps).tolist()
        score = ss.CountingScore(gm.score_fn(sde), x.shape[0])
        return sampler.run(sde, score, x, ts, noise, denoise=False, keep=False, progress=False).x

    slope, errs = _weak_slope(run, [16, 32, 64, 128], gm, sde, eps)
    # ±0.3, below half the gap between integer orders (DDIM-η measures 0.85-0.9 here)
    assert abs(slope - sampler.order) <= 0.3, (slope, errs)


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_gotta_go_fast_step_has_its_declared_weak_order(sde_name):
    # the improved-Euler step GGF accepts, on a fixed uniform grid
    sde, eps, gm = SDES[sde_name], 1e-3, gaussian_1d(1.0, 0.5)

    def run(x, noise, n):
        ts = ss.make_grid("uniform", sde, n, eps).tolist()
        score = ss.CountingScore(gm.score_fn(sde), x.shape[0])
        for t, tn in zip(ts[:-1], ts[1:]):
            tt = torch.full((x.shape[0],), t, dtype=torch.float64)
            x = improved_euler_step(sde, score, x, tt, torch.full_like(tt, tn), noise(x.shape))[1]
        return x

    slope, errs = _weak_slope(run, [64, 128, 256, 512], gm, sde, eps)
    assert abs(slope - GottaGoFast().order) < ORDER_TOL, errs


def test_brownian_memory_keeps_the_path_brownian_under_noise_dependent_rejections():
    # steps over [0, 1] rejected whenever the draw is large: with memory W(1) stays N(0, 1)
    from scoresolve.samplers.brownian import BrownianMemory

    n, g = 20000, torch.Generator().manual_seed(0)
    x = torch.zeros(n, 1, dtype=torch.float64)
    mem = BrownianMemory(x)
    f64 = dict(dtype=torch.float64)
    t, w, h = torch.zeros(n, **f64), torch.zeros(n, 1, **f64), torch.full((n,), 0.5, **f64)
    while bool((t < 1).any()):
        idx = (t < 1).nonzero().squeeze(1)
        ha = torch.minimum(h[idx], 1 - t[idx])
        w_h = mem.propose(idx, ha, torch.randn(idx.numel(), 1, generator=g, dtype=torch.float64))
        ok = (w_h[:, 0].abs() < 0.8 * ha.sqrt()) | (ha < 0.02)  # rejection depends on the noise
        mem.resolve(idx, ha, w_h, ok)
        t[idx[ok]] = torch.where(ha[ok] >= 1 - t[idx[ok]], torch.ones_like(ha[ok]), t[idx[ok]] + ha[ok])
        w[idx[ok]] += w_h[ok]
        h[idx] = torch.where(ok, ha * 1.5, ha * 0.5)
    se = math.sqrt(2 / n)
    assert abs(float(w.var()) - 1.0) < 4 * se and abs(float(w.mean())) < 4 / math.sqrt(n)


def test_brownian_memory_draws_from_the_brownian_bridge():
    """Reveal W(2), W(1), W(1.5) by rejections, accept h = 1, then ask for W(1.75) − W(1):
    (W(1), W(1.5), W(1.75), W(2)) must have Brownian motion's covariance min(s, t)."""
    from scoresolve.samplers.brownian import BrownianMemory

    n, g = 40000, torch.Generator().manual_seed(1)
    f64 = dict(dtype=torch.float64)
    mem = BrownianMemory(torch.zeros(n, 1, **f64))
    idx, no, yes = torch.arange(n), torch.zeros(n, dtype=torch.bool), torch.ones(n, dtype=torch.bool)

    def ask(h, ok=None):
        hh = torch.full((n,), h, **f64)
        w = mem.propose(idx, hh, torch.randn(n, 1, generator=g, **f64))
        if ok is not None:
            mem.resolve(idx, hh, w, ok)
        return w

    w2 = ask(2.0, no)
    w1 = ask(1.0, no)  # bridge from (0, 0) to (2, W(2))
    w15 = ask(1.5, no)  # bridge from (1, W(1)) to (2, W(2))
    assert torch.equal(ask(1.0, yes), w1)  # a revealed point comes back as it is; accepted: origin at 1
    assert torch.equal(ask(0.5), w15 - w1)
    w175 = w1 + ask(0.75)  # bridge from (0.5, W(1.5) − W(1)) to (1, W(2) − W(1))
    path = torch.cat([w1, w15, w175, w2], 1)
    times = torch.tensor([1.0, 1.5, 1.75, 2.0], **f64)
    want = torch.minimum(times[:, None], times[None, :])
    got = path.T @ path / n
    se = ((want.diagonal()[:, None] * want.diagonal()[None, :] + want**2) / n).sqrt()
    assert bool(((got - want).abs() < 5 * se).all()), got


def test_brownian_memory_bookkeeping_when_few_or_none_are_rejected():
    """What the rejection memory must keep: one rejected row's point (n_rejected = 1), and the shift
    of rows holding a point when they are accepted, with and without rejections elsewhere."""
    from scoresolve.samplers.brownian import BrownianMemory

    f64 = dict(dtype=torch.float64)
    g = torch.Generator().manual_seed(2)
    n = 4
    idx = torch.arange(n)

    def ask(mem, h):
        hh = torch.full((n,), h, **f64)
        return hh, mem.propose(idx, hh, torch.randn(n, 1, generator=g, **f64))

    for n_rejected_elsewhere in (0, 1):
        mem = BrownianMemory(torch.zeros(n, 1, **f64))
        h, w2 = ask(mem, 2.0)
        ok = torch.tensor([False, True, True, True])  # one rejection: row 0 remembers (2, W(2))
        mem.resolve(idx, h, w2, ok, n_rejected=1)
        h, again = ask(mem, 2.0)
        assert float(again[0, 0]) == float(w2[0, 0])  # the remembered point, not a fresh draw
        h, w1 = ask(mem, 1.0)  # row 0: a bridge; the others: fresh
        ok = torch.ones(n, dtype=torch.bool)
        ok[1] = not n_rejected_elsewhere
        mem.resolve(idx, h, w1, ok, n_rejected=n_rejected_elsewhere)  # row 0 accepted: its point moves to τ = 1
        _, rest = ask(mem, 1.0)
        assert float(rest[0, 0]) == float(w2[0, 0] - w1[0, 0])


def test_per_sample_gotta_go_fast_matches_the_exact_variance():
    sde, gm, n = ss.VPSDE(), gaussian_1d(1.0, 0.5), 8000
    res = ss.sample(gm.score_fn(sde), sde, (n, 1), GottaGoFast(rtol=0.01, atol=0.01), denoise=False,
                    generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ex = gm.diffused(sde.default_eps, sde)
    var = float(ex.cov()[0, 0])
    assert abs(float(res.samples.var()) - var) < 4 * var * math.sqrt(2 / n) + 0.01 * var
    assert abs(float(res.samples.mean()) - float(ex.mean()[0])) < 4 * math.sqrt(var / n) + 0.01


# ---------------------------------------------------------------- torchsde: strong order, coupled paths
def _exact_linear_sde(gm, sde, x0: torch.Tensor, bm, t_end: float, n_fine: int = 2048) -> torch.Tensor:
    """x(τ_end) of dx = (a x + b) dτ + g dW (the reverse SDE of a 1-D Gaussian, τ = T − t):
    Φ x0 + ∫Φ(τ_end, r) b dr + ∫Φ(τ_end, r) g dW.  The Itô integral of the smooth kernel
    k = Φ g by parts, k W|_0^τ − ∫ W k' dr, with ∫ W dr exact per fine interval from the
    path's increments and space-time areas (W_j h + U_j), so only k' is discretised (O(h²))."""
    mu, var = float(gm.means[0, 0]), float(gm.covs[0, 0])
    tau = torch.linspace(0.0, sde.T - t_end, n_fine + 1, dtype=torch.float64)
    dt = float(tau[1] - tau[0])
    t = sde.T - tau
    m, s = sde.marginal(t)
    v = m * m * var + s * s
    g2 = sde.diffusion(t) ** 2
    a = -sde.drift_coef(t) - g2 / v
    cum = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumulative_trapezoid(a, dx=dt)])
    phi = torch.exp(cum[-1] - cum)  # Φ(τ_end, r)
    kern = phi * sde.diffusion(t)
    dw, u = zip(*(bm(float(r0), float(r1), return_U=True) for r0, r1 in zip(tau[:-1], tau[1:])))
    dw, u = torch.stack(dw)[..., 0], torch.stack(u)[..., 0]  # (n_fine, B)
    w = torch.cat([torch.zeros_like(dw[:1]), dw.cumsum(0)])
    int_w_dk = ((kern[1:] - kern[:-1])[:, None] / dt * (w[:-1] * dt + u)).sum(0)
    det = torch.trapezoid(phi * g2 * m * mu / v, dx=dt)
    return (phi[0] * x0[:, 0] + det + kern[-1] * w[-1] - int_w_dk)[:, None]


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
@pytest.mark.parametrize("method", ["srk", "reversible_heun"])
def test_torchsde_strong_order_on_coupled_brownian_paths(method, sde_name):
    import torchsde

    sde, t_end, gm = SDES[sde_name], 0.05, gaussian_1d(1.0, 0.5)
    x0 = gm.diffused(sde.T, sde).sample(64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    bm = torchsde.BrownianInterval(t0=0.0, t1=sde.T - t_end, size=(64, 1), dtype=torch.float64,
                                   entropy=7, levy_area_approximation="space-time")
    sampler = TorchSDE(method, bm=bm)
    ns = [16, 32, 64, 128] if method == "srk" else [128, 256, 512, 1024]  # RH: stiff start
    outs = []
    for n in ns:  # coarse queries first: later finer queries then split the interval tree cheaply
        grid = torch.linspace(sde.T, t_end, n + 1, dtype=torch.float64)
        outs.append(ss.sample(gm.score_fn(sde), sde, x0.shape, sampler, grid=grid, x_init=x0,
                              denoise=False).samples)
    exact = _exact_linear_sde(gm, sde, x0, bm, t_end)
    errs = [float((o - exact).abs().mean()) for o in outs]
    # at least the declared strong order; on this linear additive-noise problem the stochastic
    # error terms are small, so the deterministic order 2 may show (SRK measures ≈ 2)
    assert sampler.strong_order - ORDER_TOL < -loglog_slope(ns, errs) < sampler.strong_order + 0.75, errs


# ---------------------------------------------------------------- NFE accounting
@pytest.mark.parametrize("name", [n for n in FAST if ss.SAMPLERS[n].nfe_per_step is not None])
@pytest.mark.parametrize("denoise", [False, True])
def test_fixed_step_nfe_is_counted_and_matches_declaration(name, denoise):
    s, sde = ss.SAMPLERS[name], ss.VPSDE()
    res = ss.sample(RING.score_fn(sde), sde, (32, 2), name, steps=7, denoise=denoise,
                    generator=torch.Generator().manual_seed(0))
    assert res.nfe == 7 * s.nfe_per_step + s.extra_nfe(denoise)
    assert ss.steps_for_nfe(name, 25, denoise) * s.nfe_per_step + s.extra_nfe(denoise) <= 25


class _RowLog:
    def __init__(self, fn):
        self.fn, self.sizes = fn, []

    def __call__(self, x, t):
        self.sizes.append(x.shape[0])
        return self.fn(x, t)


EASY_HARD = GaussianMixture(torch.tensor([0.5, 0.5]), torch.tensor([[-3.0, 0.0], [3.0, 0.0]]),
                            torch.tensor([1.0, 0.02**2]))  # a broad and a very narrow component


@pytest.mark.parametrize("sampler", [AdaptiveMultistep(rtol=1e-3, atol=1e-3),
                                     AdaptiveODE(rtol=1e-3, atol=1e-3),
                                     GottaGoFast(rtol=2e-2, atol=2e-2)], ids=lambda s: type(s).__name__)
def test_per_sample_nfe_counts_only_rows_evaluated(sampler):
    sde, b = ss.VPSDE(), 64
    log = _RowLog(EASY_HARD.score_fn(sde))
    res = ss.sample(log, sde, (b, 2), sampler, denoise=False, generator=torch.Generator().manual_seed(0))
    per = res.stats["nfe_per_sample"]
    assert math.isclose(res.nfe, sum(log.sizes) / b, rel_tol=1e-12)
    assert math.isclose(res.nfe, float(per.mean()), rel_tol=1e-12)
    assert min(log.sizes) < b and float(per.max()) > 1.3 * float(per.min())  # finished rows stop


def _flow_error(res, ref):
    return float((res.samples - ref).norm(dim=1).mean())


def test_per_sample_adaptive_ode_costs_less_than_a_shared_step_at_equal_error():
    # the classical state norm (δ ∝ |x|): with the noise norm every sample gets the same δ at a
    # given λ and the gain is smaller (0.89x here), see test_noise_norm_... below
    sde, n = ss.VPSDE(), 256
    x_T = torch.randn(n, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    score = EASY_HARD.score_fn(sde)
    ref = ss.sample(score, sde, x_T.shape, AdaptiveMultistep(rtol=1e-7, atol=1e-7), x_init=x_T,
                    denoise=False).samples
    ps = ss.sample(score, sde, x_T.shape, AdaptiveMultistep(rtol=1e-3, atol=1e-3, error_norm="state"), x_init=x_T,
                   denoise=False)
    sh = ss.sample(score, sde, x_T.shape, AdaptiveMultistep(rtol=1e-3, atol=1e-3, error_norm="state", per_sample=False),
                   x_init=x_T, denoise=False)
    # cost at equal error: the shared run follows the hardest sample and is more accurate at the
    # same tolerance, so read its NFE at the per-sample run's error off its own error-NFE curve
    # (log-log interpolation between the two tolerances that bracket that error)
    target = _flow_error(ps, ref)
    curve = []
    for tol in (1e-3, 3e-3, 1e-2, 3e-2, 1e-1):
        shared = AdaptiveMultistep(rtol=tol, atol=tol, error_norm="state", per_sample=False)
        r = ss.sample(score, sde, x_T.shape, shared, x_init=x_T, denoise=False)
        curve.append((_flow_error(r, ref), r.nfe))
    assert curve[0][0] < target < curve[-1][0], (target, curve)  # the sweep brackets the target
    (e0, n0), (e1, n1) = next((a, b) for a, b in zip(curve, curve[1:]) if a[0] <= target <= b[0])
    shared_nfe = math.exp(math.log(n0) + (math.log(target) - math.log(e0)) / (math.log(e1) - math.log(e0))
                          * (math.log(n1) - math.log(n0)))
    assert sh.nfe >= shared_nfe  # sanity: at the same tolerance the shared run costs at least that
    assert ps.nfe < 0.85 * shared_nfe, (ps.nfe, shared_nfe, curve)


def _ve_matching(vp: ss.VPSDE, eps: float) -> ss.VESDE:
    """A VE SDE whose σ/m runs over VP's range on [eps, 1]: σ_max = σ̃_VP(1), σ(eps) = σ̃_VP(eps)."""
    hi = math.log(vp.std(1.0) / vp.marginal(1.0)[0])
    lo = math.log(vp.std(eps) / vp.marginal(eps)[0])
    return ss.VESDE(sigma_min=math.exp((lo - eps * hi) / (1 - eps)), sigma_max=math.exp(hi))


@pytest.mark.parametrize("norm", ["noise", "state"])
def test_noise_norm_takes_the_same_steps_for_vp_and_ve(norm):
    # In y = x/m the flow in λ is the same for every SDE and the noise norm's δ/m depends on λ
    # only, so VP and a VE spanning the same λ range take the same steps and reach the same y.
    vp, eps = ss.VPSDE(), 1e-3
    ve = _ve_matching(vp, eps)
    gm = GaussianMixture.ring(8, 2.0, 0.1)
    z = torch.randn(256, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    runs = {}
    for name, sde in (("vp", vp), ("ve", ve)):
        x_T = z * sde.std(1.0)
        runs[name] = ss.sample(gm.score_fn(sde), sde, z.shape, AdaptiveMultistep(error_norm=norm), eps=eps,
                               x_init=x_T, denoise=False)
    nfe_vp, nfe_ve = (runs[k].stats["nfe_per_sample"] for k in ("vp", "ve"))
    y_vp = runs["vp"].samples / vp.marginal(eps)[0]
    if norm == "noise":
        assert torch.equal(nfe_vp, nfe_ve)
        torch.testing.assert_close(y_vp, runs["ve"].samples, rtol=1e-6, atol=1e-6)
    else:  # the classical |x|-relative norm is not SDE-invariant
        assert not torch.equal(nfe_vp, nfe_ve)


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_default_adaptive_ode_logp_bias_within_the_noise_floor_at_25_nfe(sde_name):
    # The bar's metric, paired: the mean exact log p_eps of the default solver's samples against
    # that of the exact flow from the same x_T (a rtol = 1e-7 solve), within the noise floor of
    # |mean log p| for 10k exact samples, at <= 25 counted NFE (measured: bias -0.6 floors, 24 NFE).
    sde = SDES[sde_name]
    eps = sde.default_eps
    gm = GaussianMixture.ring(8, 2.0, 0.1)
    truth = gm.diffused(eps, sde)
    floor = ss.metrics.noise_floor(truth, 10_000, repeats=8, metrics=("logp_gap",))["logp_gap"][0]
    x_T = torch.randn(2000, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * sde.prior_std()
    score = gm.score_fn(sde)
    res = ss.sample(score, sde, x_T.shape, "ode_adaptive_ps", x_init=x_T, denoise=False)
    ref = ss.sample(score, sde, x_T.shape, AdaptiveMultistep(rtol=1e-7, atol=1e-7), x_init=x_T,
                    denoise=False).samples
    bias = float(truth.log_prob(res.samples).mean() - truth.log_prob(ref).mean())
    assert res.nfe <= 25, res.nfe
    assert abs(bias) < floor, (bias, floor)


# ---------------------------------------------------------------- precision, end point, SDEs, seeds
@pytest.mark.parametrize("sde_name", ["vp", "subvp", "ve"])
@pytest.mark.parametrize("name", FAST)
def test_bf16_score_gives_finite_float32_samples(name, sde_name):
    sde = SDES[sde_name]
    exact = RING.score_fn(sde)
    res = ss.sample(lambda x, t: exact(x, t).bfloat16(), sde, (64, 2), name,
                    generator=torch.Generator().manual_seed(0), **_budget(name))
    assert res.samples.dtype == torch.float32 and bool(torch.isfinite(res.samples).all())


@pytest.mark.parametrize("sde_name", ["vp", "subvp", "ve"])
@pytest.mark.parametrize("name", ["ddim", "ddim_eta", "heun_edm", "dpmpp_2s", "dpmpp_2m", "dpmpp_3m",
                                  "dpmpp_2m_sde", "unipc", "ode_adaptive_ps"])
def test_fast_samplers_reach_the_target_on_every_sde_and_a_tiny_eps(name, sde_name):
    # mode weights, per-component means and widths and the mean exact log-density of 2000 samples,
    # each within Z_MAX standard errors of its exact expectation (helpers.distribution_z_scores)
    sde, eps = SDES[sde_name], 1e-5
    tgt = RING.diffused(eps, sde)
    # first-order methods carry an O(1/NFE) bias: DDIM on sub-VP is 15% too wide in variance at 100 NFE
    # (4.8 se here), so they get 4x the budget (bias ~4%, well inside the 4.5 se ≈ 10% threshold)
    order = float(ss.SAMPLERS[name].order)
    budget = {} if ss.SAMPLERS[name].nfe_per_step is None else {"nfe": 100 if order >= 2 else 400}
    res = ss.sample(RING.score_fn(sde), sde, (2000, 2), name, eps=eps, denoise=False,
                    generator=torch.Generator().manual_seed(1), **budget)
    assert bool(torch.isfinite(res.samples).all())
    ref = tgt.log_prob(tgt.sample(100_000, generator=torch.Generator().manual_seed(2), dtype=torch.float64))
    z = distribution_z_scores(res.samples, tgt, ref)
    assert max(abs(v) for v in z.values()) <= Z_MAX, z


@pytest.mark.parametrize("name", ["ddim_eta", "edm_churn", "dpmpp_2m_sde", "gotta_go_fast", "sde_srk"])
def test_generator_reproducibility(name):
    sde = ss.VESDE(sigma_max=20.0)

    def draw():
        return ss.sample(RING.score_fn(sde), sde, (16, 2), name, generator=torch.Generator().manual_seed(5),
                         **_budget(name)).samples

    a, b = draw(), draw()
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["ddim_eta", "edm_churn", "dpmpp_2m_sde", "gotta_go_fast"])
def test_per_sample_seeds_make_samples_batch_invariant(name):
    """float64: in float32 the CPU kernels round rows differently by batch size (vector body or
    scalar tail), which Gotta Go Fast's step control amplifies to ~3e-5 over its ~100 steps."""
    sde, f64 = ss.VPSDE(), dict(dtype=torch.float64, **_budget(name))
    big = ss.sample(RING.score_fn(sde), sde, (8, 2), name, seeds=list(range(8)), **f64)
    small = ss.sample(RING.score_fn(sde), sde, (3, 2), name, seeds=[0, 1, 2], **f64)
    torch.testing.assert_close(small.samples, big.samples[:3], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kwargs, match", [
    (dict(method=DDIM(eta=1.0)), None),
    (dict(method="ddim", eta=1.5), "eta"),
    (dict(method="dpmpp_2m", order=7), "order"),
    (dict(method="dpmpp_2m", variant="x"), "variant"),
    (dict(method="ode_adaptive_ps", rtol=0.0), "rtol"),
    (dict(method="sde_srk", method_name=1), "option"),
])
def test_option_errors_name_the_argument(kwargs, match):
    sde = ss.VPSDE()
    kwargs = dict(kwargs)
    method = kwargs.pop("method")
    if match is None:
        ss.sample(RING.score_fn(sde), sde, (4, 2), method, steps=3)
        return
    with pytest.raises((ValueError, TypeError), match=match):
        ss.sample(RING.score_fn(sde), sde, (4, 2), method, steps=3, **kwargs)


def test_torchsde_rejects_an_unknown_method():
    with pytest.raises(ValueError, match="srk, reversible_heun"):
        TorchSDE("milstein")


def test_step_orders_lower_the_last_steps_as_documented():
    """Warm-up min(order, i + 1); below 15 steps the last ones drop to min(order, n − i), with
    "diffusers" counting the final x̂_0 as step n + 1 (so order 2 lowers no grid step) unless
    there is no final x̂_0 (denoise=False)."""
    from scoresolve.samplers.exponential import step_orders

    assert step_orders(10, 2, True) == [1] + [2] * 8 + [1]
    assert step_orders(10, 2, "diffusers") == [1] + [2] * 9
    assert step_orders(10, 2, "diffusers", denoise=False) == [1] + [2] * 8 + [1]
    assert step_orders(13, 3, "diffusers") == [1, 2] + [3] * 10 + [2]  # n = 14 < 15
    assert step_orders(14, 3, "diffusers") == [1, 2] + [3] * 12  # n = 15: not lowered
    assert step_orders(14, 3, True) == [1, 2] + [3] * 10 + [2, 1]
    assert step_orders(15, 2, True) == [1] + [2] * 14 and step_orders(6, 2, False) == [1] + [2] * 5


def test_diffusers_lower_order_final_without_a_final_denoise_lowers_the_last_grid_step():
    """lower_order_final="diffusers" counts the final x̂_0 as a step only when there is one."""
    sde = ss.VPSDE()
    gm = ss.targets.GaussianMixture.random(2, 3, seed=4)
    x = gm.sample(16, sde.T, sde, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    run = lambda lof: ss.sample(gm.score_fn(sde), sde, x.shape, ss.samplers.DPMSolverMultistep(lower_order_final=lof),  # noqa: E731
                                steps=8, x_init=x, denoise=False).samples
    assert torch.equal(run("diffusers"), run(True)) and not torch.equal(run("diffusers"), run(False))


@pytest.mark.parametrize("method,per_accepted,per_rejected,final_free", [
    ("ode_adaptive_ps", 1, 1, 1),  # 1 NFE per proposal; the step that reaches eps is the predictor alone
    ("ode_adaptive_rk23", 3, 2, 0),  # D_0 is kept across a rejection
    ("gotta_go_fast", 2, 2, 0),
])
@pytest.mark.parametrize("denoise", [True, False])
@pytest.mark.parametrize("grid", [None, "checkpoints"])
def test_adaptive_nfe_is_the_declared_cost_of_the_proposals(method, per_accepted, per_rejected, final_free, denoise,
                                                            grid):
    """Counted NFE = extra_nfe(denoise) + the docstring's cost per accepted / rejected proposal
    (what the benchmark planner budgets with)."""
    sde = ss.VPSDE()
    kw = {} if grid is None else {"grid": torch.tensor([1.0, 0.5, 0.1, 1e-3])}  # interior times are landed on
    r = ss.sample(RING.score_fn(sde), sde, (200, 2), method, denoise=denoise,
                  generator=torch.Generator().manual_seed(0), **kw)
    want = (ss.SAMPLERS[method].extra_nfe(denoise) + per_accepted * r.stats["accepted"]
            + per_rejected * r.stats["rejected"] - final_free)
    assert r.nfe == pytest.approx(want, rel=1e-12)
    assert r.stats["iterations"] >= r.stats["accepted"] + r.stats["rejected"]  # batch proposals ≥ any sample's


@pytest.mark.parametrize("cls", [GottaGoFast, AdaptiveODE, AdaptiveMultistep])
def test_shared_step_mode_gives_every_sample_the_same_steps(cls):
    """per_sample=False: one step size for the batch (its largest error), so every sample makes the
    same number of evaluations, and no more proposals are accepted than with per-sample steps."""
    sde = ss.VPSDE()
    kw = dict(generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    shared = ss.sample(RING.score_fn(sde), sde, (64, 2), cls(per_sample=False), **kw)
    nfe = shared.stats["nfe_per_sample"]
    assert bool((nfe == nfe[0]).all()) and torch.isfinite(shared.samples).all()
    own = ss.sample(RING.score_fn(sde), sde, (64, 2), cls(), **kw)
    assert own.stats["nfe_per_sample"].std() > 0 and shared.nfe >= own.stats["nfe_per_sample"].min()


def test_adaptive_multistep_step_factor_is_clipped_and_never_grows_after_a_rejection():
    """h ← h·clip(θ E^{−1/q} min(1, E_prev/E)^{β/q}, min_factor, max_factor); after a rejection at most 1.
    (``_factor`` takes log E and log E_prev, E_prev clamped at 1e-4 as the solver stores it.)"""
    s = AdaptiveMultistep()
    f64 = dict(dtype=torch.float64)
    err = torch.tensor([1e-9, 0.5, 1.5, 1e6], **f64)
    prev = torch.tensor([1.0, 0.3, 2.0, 1e-6], **f64)
    q = torch.full((4,), 3.0, **f64)

    def factor(ok):
        return s._factor(err.clamp_min(1e-12).log(), prev.clamp_min(1e-4).log(), q, ok)

    for ok in (torch.ones(4, dtype=torch.bool), torch.zeros(4, dtype=torch.bool)):
        raw = (s.safety * err.pow(-1 / q)
               * (prev.clamp_min(1e-4) / err.clamp_min(1e-4)).clamp(max=1.0).pow(s.predictive / q))
        top = s.max_factor if bool(ok[0]) else 1.0
        torch.testing.assert_close(factor(ok), raw.clamp(s.min_factor, top), rtol=1e-14, atol=0)
    assert float(factor(torch.zeros(4, dtype=torch.bool)).max()) == 1.0
    assert float(factor(torch.zeros(4, dtype=torch.bool)).min()) == s.min_factor


def test_gotta_go_fast_single_step_is_the_improved_euler_step_over_the_whole_interval():
    """A tolerance that accepts anything and h_init > T − eps: one step, clipped to [eps, T].  With
    a zero score on VE (f = 0) the step is x_T + ½(g(T) + g(eps)) √(T − eps) z, z the second draw."""
    sde = ss.VESDE(sigma_max=5.0)
    g = torch.Generator().manual_seed(3)
    res = ss.sample(lambda x, t: torch.zeros_like(x), sde, (6, 2), GottaGoFast(rtol=1e9, atol=1e9, h_init=10.0),
                    denoise=False, check=False, generator=g, dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    x_T = torch.empty(6, 2, dtype=torch.float64).normal_(0.0, sde.prior_std(), generator=g)
    z = torch.empty(6, 2, dtype=torch.float64).normal_(generator=g)
    eps, T = sde.default_eps, sde.T
    c = 0.5 * (sde.diffusion(T) + sde.diffusion(eps)) * math.sqrt(T - eps)
    assert res.stats["accepted"] == 1.0 and res.stats["rejected"] == 0.0
    torch.testing.assert_close(res.samples, x_T + c * z, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("sde,eps", [(ss.VESDE(sigma_max=5.0), None), (ss.VPSDE(), 0.5)], ids=["ve", "vp"])
@pytest.mark.parametrize("rtol,data_scale,quantile", [(0.3, 0.2, 0.3), (0.05, 0.5, 0.7)])
def test_gotta_go_fast_noise_norm_accepts_exactly_the_rows_within_delta(sde, eps, rtol, data_scale, quantile):
    """One proposal over the whole interval T -> eps with a zero score: a row is accepted (and
    done after 2 NFE) iff ‖x' − x''‖_rms ≤ δ = atol·s_d·m(eps) + rtol·σ(eps) (x', x'' the
    Euler-Maruyama and improved Euler steps from the row's x_T and first draw; VP ends at t = 0.5,
    where m = 0.28).  atol is set so that δ is the ``quantile`` of the rows' errors."""
    n, eps = 400, eps or sde.default_eps
    g = torch.Generator().manual_seed(3)
    x_T = torch.empty(n, 3, dtype=torch.float64).normal_(0.0, sde.prior_std(), generator=g)
    z = torch.empty(n, 3, dtype=torch.float64).normal_(generator=g)  # the first proposal's draw
    t, t_end = torch.full((n,), sde.T, dtype=torch.float64), torch.full((n,), eps, dtype=torch.float64)
    x1, x2 = improved_euler_step(sde, lambda x, tt: torch.zeros_like(x), x_T, t, t_end, z)
    err = (x1 - x2).square().mean(1).sqrt()
    m, sig = (float(v) for v in sde.marginal(eps))
    atol = (float(err.quantile(quantile)) - rtol * sig) / (data_scale * m)
    res = ss.sample(lambda x, t: torch.zeros_like(x), sde, (n, 3),
                    GottaGoFast(rtol=rtol, atol=atol, data_scale=data_scale, h_init=10.0), eps=eps, denoise=False,
                    check=False, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    within = err <= atol * data_scale * m + rtol * sig
    assert abs(float(within.double().mean()) - quantile) < 0.01
    assert torch.equal(res.stats["nfe_per_sample"] == 2.0, within)


def test_gotta_go_fast_default_norm_is_invariant_to_translating_the_data():
    """On VE the reverse SDE commutes with x -> x + c (f = 0, s_c(x + c) = s(x)) and so does the
    noise norm's δ (no |x| in it): the shifted mixture's samples are the original ones + c, step for
    step.  The paper's norm (δ ∝ |x|) takes other steps and another number of evaluations."""
    sde, c = ss.VESDE(sigma_max=20.0), torch.tensor([6.0, -4.0], dtype=torch.float64)
    moved = GaussianMixture(RING.weights, RING.means + c, RING.covs)
    x_T = torch.randn(500, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * sde.prior_std()

    def run(target, x_init, **kw):
        return ss.sample(target.score_fn(sde), sde, x_init.shape, GottaGoFast(**kw), x_init=x_init, denoise=False,
                         generator=torch.Generator().manual_seed(1))

    base, shifted = run(RING, x_T), run(moved, x_T + c)
    assert torch.equal(base.stats["nfe_per_sample"], shifted.stats["nfe_per_sample"])
    # rounding only: x + c carries ulp(60) ~ 1e-14 at T, amplified over ~250 steps to ≤ 1e-8;
    # other steps would move samples by ≥ 1e-3
    torch.testing.assert_close(shifted.samples, base.samples + c, rtol=0, atol=1e-7)
    state = dict(error_norm="state", rtol=0.02, atol=0.0078)
    assert run(RING, x_T, **state).nfe != run(moved, x_T + c, **state).nfe


@pytest.mark.parametrize("cls", [GottaGoFast, AdaptiveODE, AdaptiveMultistep])
def test_the_last_callback_of_an_adaptive_solve_sees_the_final_state(cls):
    sde = ss.VPSDE()
    seen = []
    r = ss.sample(RING.score_fn(sde), sde, (64, 2), cls(), denoise=False, generator=torch.Generator().manual_seed(0),
                  callback=lambda i, t, x, x0: seen.append(x.clone()))
    assert len(seen) == r.stats["accepted_steps"] and torch.equal(seen[-1], r.samples)


@pytest.mark.parametrize("cls", [GottaGoFast, AdaptiveODE, AdaptiveMultistep])
def test_adaptive_trajectory_keeps_each_checkpoint(cls):
    """The state kept at an interior checkpoint is a copy: later steps do not overwrite it."""
    sde = ss.VPSDE()
    r = ss.sample(RING.score_fn(sde), sde, (64, 2), cls(), grid=torch.tensor([1.0, 0.5, 0.1, 1e-3]),
                  denoise=False, return_trajectory=True, generator=torch.Generator().manual_seed(0))
    traj = r.trajectory
    assert traj.shape[0] == 4 and torch.equal(traj[-1], r.samples)
    for i in range(3):
        assert not torch.equal(traj[i], traj[i + 1]), i
