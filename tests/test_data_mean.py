"""``data_mean``: prior draws centred where p_T is, m(T) μ (ground truth: Gaussian data, whose probability-flow
map and x̂_0 at T are closed-form)."""

from __future__ import annotations

import math

import pytest
import torch

import scoresolve as ss
from scoresolve.samplers import AdaptiveMultistep
from scoresolve.scalegrid import PILOT_SEED, SCALE_PILOT
from scoresolve.targets import GaussianMixture

MU = torch.tensor([6.0, -6.0, 3.0, 0.0])


def _gauss(s: float = 1.0) -> GaussianMixture:
    return GaussianMixture(torch.ones(1), MU.unsqueeze(0), torch.full((1,), s * s))


@pytest.mark.parametrize("sde_name", ["ve", "vp"])
def test_data_mean_reads_the_closed_form_mean_of_x0_at_T(sde_name):
    """Data N(μ, s² I): over prior draws y = x/m ~ N(0, σ̃_T² I), x̂_0 = μ + s²/(s² + σ̃²)(y − μ), so its mean is
    μ σ̃²/(s² + σ̃²) and its sd s² σ̃/(s² + σ̃²) per coordinate; 4096 draws: 5 standard errors."""
    sde = {"ve": ss.VESDE(), "vp": ss.VPSDE()}[sde_name]
    got = ss.data_mean(_gauss().score_fn(sde), sde, (4096, 4), generator=torch.Generator().manual_seed(0),
                       dtype=torch.float64)
    m, sig = (float(v) for v in sde.marginal(torch.tensor(sde.T, dtype=torch.float64)))
    st2 = (sig / m) ** 2
    want = MU.double() * st2 / (1 + st2)
    se = st2 ** 0.5 / (1 + st2) / math.sqrt(4096)
    assert got.shape == (4,) and got.dtype == torch.float64
    assert float((got - want).abs().max()) < 5 * se, (got, want, se)


def test_the_centred_prior_removes_the_offset_the_plain_prior_leaves():
    """VE, data N(μ, I) with |μ| = 9: the flow maps x_T to μ + r (x_T − μ), r = √((1 + σ_eps²)/(1 + σ_T²)), so from
    N(0, σ_T² I) the samples' mean is (1 − r) μ, off by r μ = 0.12 in the first coordinate (measured here against
    that closed form), and from the prior centred at μ̂ (``data_mean="estimate"``) it is μ.  8000 samples: the mean's
    standard error is r σ_T / √8000 ≈ 0.011, the bound 4 of them; the offset is 11."""
    sde = ss.VESDE()
    score = _gauss().score_fn(sde)
    s_eps, s_T = (float(sde.std(torch.tensor(t, dtype=torch.float64))) for t in (sde.default_eps, sde.T))
    r = math.sqrt((1 + s_eps**2) / (1 + s_T**2))
    se = r * s_T / math.sqrt(8000)
    method = AdaptiveMultistep(rtol=1e-5, atol=1e-5)
    kw = dict(denoise=False, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    plain = ss.sample(score, sde, (8000, 4), method, **kw).samples.mean(0)
    kw["generator"] = torch.Generator().manual_seed(1)
    centred = ss.sample(score, sde, (8000, 4), method, data_mean="estimate", **kw).samples.mean(0)
    assert float((plain - (1 - r) * MU.double()).abs().max()) < 4 * se, (plain, r)
    assert float((centred - MU.double()).abs().max()) < 4 * se, centred
    assert float((plain - MU.double()).abs().max()) > 8 * se  # the offset the check is there to see


def test_centring_shifts_the_same_draws_and_counts_the_pilot():
    """``data_mean=μ`` adds m(T) μ to the prior draws the run would make anyway (the noise stream is unchanged);
    "estimate" takes μ̂ = ``data_mean`` of 256 draws seeded ``PILOT_SEED`` (whatever the batch or seeds: sample i is
    the same sample in any batch) and counts their 256 rows in the NFE."""
    sde = ss.VPSDE()
    score = _gauss().score_fn(sde)
    m_big = float(sde.marginal(torch.tensor(sde.T, dtype=torch.float64))[0])
    base = ss.start(score, sde, (5, 4), "unipc", nfe=10, generator=torch.Generator().manual_seed(3))
    given = ss.start(score, sde, (5, 4), "unipc", nfe=10, data_mean=MU, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(given.x - base.x, (m_big * MU).expand(5, 4), rtol=0, atol=1e-6)
    mu_hat = ss.data_mean(score, sde, (SCALE_PILOT, 4), generator=torch.Generator().manual_seed(PILOT_SEED))
    est = ss.sample(score, sde, (5, 4), "unipc", nfe=10, data_mean="estimate", seeds=[7, 8, 9, 10, 11])
    ref = ss.sample(score, sde, (5, 4), "unipc", nfe=10, data_mean=mu_hat, seeds=[7, 8, 9, 10, 11])
    two = ss.sample(score, sde, (2, 4), "unipc", nfe=10, data_mean="estimate", seeds=[7, 8])
    assert torch.equal(est.samples, ref.samples) and torch.equal(two.samples, est.samples[:2])
    assert est.nfe == pytest.approx(10 + 256 / 5, abs=1e-12) and ref.nfe == 10


def test_fit_grid_centres_its_pilot_and_its_samples_alike(tmp_path):
    """``fit_grid``'s default reads μ̂ off its own pilot draws (closed form as above, 5 standard errors of 256
    draws), solves the pilot from the centred draws, and records μ̂: ``sample_options`` centres later samples,
    ``save``/``load`` keep it; ``data_mean=None`` fits from the plain prior and records None."""
    sde = ss.VESDE()
    score = _gauss().score_fn(sde)
    kw = dict(max_evals=20, objective="endpoint", progress=False)
    fit = ss.fit_grid(score, sde, (256, 4), "unipc", 8, generator=torch.Generator().manual_seed(0), **kw)
    st2 = float(sde.std(torch.tensor(sde.T, dtype=torch.float64))) ** 2
    se = st2 ** 0.5 / (1 + st2) / math.sqrt(256)
    assert float((fit.data_mean - MU.double() * st2 / (1 + st2)).abs().max()) < 5 * se, fit.data_mean
    assert torch.equal(fit.sample_options["data_mean"], fit.data_mean)
    fit.save(tmp_path / "fit.json")
    back = ss.FittedGrid.load(tmp_path / "fit.json")
    assert torch.equal(back.data_mean, fit.data_mean) and torch.equal(back.ts, fit.ts)
    plain = ss.fit_grid(score, sde, (256, 4), "unipc", 8, data_mean=None, generator=torch.Generator().manual_seed(0),
                        **kw)
    assert plain.data_mean is None and "data_mean" not in plain.sample_options
    old = {k: v for k, v in plain.to_dict().items() if k != "data_mean"}  # a record written before the field
    assert ss.FittedGrid.from_dict(old).data_mean is None


def test_data_mean_errors_name_the_argument():
    sde = ss.VPSDE()
    score = _gauss().score_fn(sde)
    with pytest.raises(ValueError, match="pass x_init= or data_mean=, not both"):
        ss.sample(score, sde, (3, 4), "unipc", nfe=8, x_init=torch.zeros(3, 4), data_mean="estimate")
    with pytest.raises(ValueError, match="unknown data_mean='mean'; valid choices: None, 'estimate'"):
        ss.sample(score, sde, (3, 4), "unipc", nfe=8, data_mean="mean")
    with pytest.raises(ValueError, match=r"data_mean has shape \(3,\), which does not broadcast to a sample of shape"):
        ss.sample(score, sde, (3, 4), "unipc", nfe=8, data_mean=torch.zeros(3))
    with pytest.raises(ValueError, match=r"larger than a sample of shape \(4,\)"):
        ss.sample(score, sde, (3, 4), "unipc", nfe=8, data_mean=torch.zeros(2, 4))
    with pytest.raises(ValueError, match="data_mean contains NaN/Inf"):
        ss.sample(score, sde, (3, 4), "unipc", nfe=8, data_mean=float("inf"))
    with pytest.raises(TypeError, match="data_mean must be None, 'estimate', a number or a tensor, got list"):
        ss.sample(score, sde, (3, 4), "unipc", nfe=8, data_mean=[1.0])
    with pytest.raises(ValueError, match="unknown data_mean='auto'"):
        ss.fit_grid(score, sde, (8, 4), "unipc", 8, data_mean="auto", max_evals=2, progress=False)
    with pytest.raises(ValueError, match=r"data_mean has shape \(3,\), which does not broadcast"):  # sample's check
        ss.fit_grid(score, sde, (8, 4), "unipc", 8, data_mean=torch.zeros(3), max_evals=2, progress=False)
