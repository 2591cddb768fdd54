"""SDE coefficients against their defining identities (no trust in the formulas themselves)."""

import math

import pytest
import torch
from helpers import marginal_np
from hypothesis import given
from hypothesis import strategies as st

import scoresolve as ss

SDES = [ss.VPSDE(), ss.SubVPSDE(), ss.VESDE(), ss.VPSDE(beta_min=0.5, beta_max=10.0),
        ss.VESDE(sigma_min=0.05, sigma_max=10.0)]
times = st.floats(min_value=1e-3, max_value=0.99)


@pytest.mark.parametrize("sde", SDES, ids=repr)
@given(t=times)
def test_drift_is_dlogm_dt_and_variance_obeys_fokker_planck(sde, t):
    # f = d log m / dt  and  d σ²/dt = 2 f σ² + g²   (moments of a linear SDE)
    h = 1e-6
    tt = torch.tensor([t - h, t, t + h], dtype=torch.float64)
    logm = sde.log_mean_scale(tt)
    var = sde.std(tt) ** 2
    f, g = sde.drift_coef(t), sde.diffusion(t)
    assert math.isclose(float(logm[2] - logm[0]) / (2 * h), f, rel_tol=1e-6, abs_tol=1e-8)
    dvar = float(var[2] - var[0]) / (2 * h)
    assert math.isclose(dvar, 2 * f * float(var[1]) + g * g, rel_tol=1e-5, abs_tol=1e-8)


@pytest.mark.parametrize("sde", SDES, ids=repr)
@given(t=times)
def test_float_and_tensor_agree_and_log_snr_inverts(sde, t):
    tt = torch.tensor([t], dtype=torch.float64)
    for name in ("log_mean_scale", "std", "diffusion", "drift_coef", "log_snr"):
        assert math.isclose(getattr(sde, name)(t), float(getattr(sde, name)(tt)), rel_tol=1e-12,
                            abs_tol=1e-14)
    lam = sde.log_snr(t)
    assert math.isclose(sde.t_from_log_snr(lam), t, rel_tol=1e-9, abs_tol=1e-12)
    assert math.isclose(float(sde.t_from_log_snr(torch.tensor(lam, dtype=torch.float64))), t,
                        rel_tol=1e-9, abs_tol=1e-12)


@pytest.mark.parametrize("sde", SDES, ids=repr)
@given(s=times, dt=st.floats(0.0, 0.5))
def test_transition_composes_to_marginal(sde, s, dt):
    # x_t = a x_s + √v z with x_s = m_s x_0 + σ_s z'  must give N(m_t x_0, σ_t²)
    t = min(s + dt, 1.0)
    a, v = sde.transition(s, t)
    m_s, sd_s = sde.marginal(s)
    m_t, sd_t = sde.marginal(t)
    assert math.isclose(a * m_s, m_t, rel_tol=1e-12)
    assert math.isclose(a * a * sd_s**2 + v, sd_t**2, rel_tol=1e-9, abs_tol=1e-15)


@pytest.mark.parametrize("sde", SDES, ids=repr)
def test_prior_matches_marginal_at_T_and_prior_logp(sde):
    m, s = sde.marginal(sde.T)
    if isinstance(sde, ss.VESDE):
        assert sde.prior_std() == pytest.approx(s, rel=1e-12)
    else:  # VP-type: the prior N(0, I) is the T -> ∞ limit; at T=1, m(T)² + σ(T)² = 1 still holds
        assert sde.prior_std() == 1.0
        assert m * m + (s * s if type(sde) is ss.VPSDE else 0.0) <= 1.0 + 1e-12
    z = torch.randn(5, 3, 2, dtype=torch.float64)
    ref = torch.distributions.Normal(0.0, sde.prior_std()).log_prob(z).flatten(1).sum(1)
    torch.testing.assert_close(sde.prior_logp(z), ref)
    x = sde.prior_sample((20000, 2), generator=torch.Generator().manual_seed(0),
                         dtype=torch.float64)
    # a sample sd of n Gaussian draws has relative sd 1/√(2n): 5 of those
    assert abs(float(x.std()) / sde.prior_std() - 1) <= 5 / math.sqrt(2 * x.numel())


def test_bad_parameters_raise():
    with pytest.raises(ValueError, match="beta_min"):
        ss.VPSDE(beta_min=5.0, beta_max=1.0)
    with pytest.raises(ValueError, match="sigma_min"):
        ss.VESDE(sigma_min=1.0, sigma_max=0.5)


def test_reverse_drift_float_and_tensor_time():
    sde = ss.VPSDE()
    x, s = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    a = ss.reverse_drift(sde, s, x, 0.3, probability_flow=True)
    b = ss.reverse_drift(sde, s, x, torch.full((4,), 0.3, dtype=torch.float64), probability_flow=True)
    torch.testing.assert_close(a, b)
    f, g2 = sde.drift_coef(0.3), sde.diffusion(0.3) ** 2
    torch.testing.assert_close(a, f * x - 0.5 * g2 * s)


def test_parameter_bounds_are_exactly_those_documented():
    for bad in (dict(beta_min=0.0, beta_max=1.0), dict(beta_min=1.0, beta_max=1.0), dict(beta_min=-0.1, beta_max=1.0)):
        with pytest.raises(ValueError, match="beta_min"):
            ss.VPSDE(**bad)
    for bad in (dict(sigma_min=0.0, sigma_max=1.0), dict(sigma_min=1.0, sigma_max=1.0)):
        with pytest.raises(ValueError, match="sigma_min"):
            ss.VESDE(**bad)
    ss.VPSDE(beta_min=1e-3, beta_max=2e-3)
    ss.VESDE(sigma_min=0.5, sigma_max=0.9)  # any 0 < σ_min < σ_max, also below 1
    assert repr(ss.VPSDE()) == "VPSDE(beta_min=0.1, beta_max=20.0)"
    assert repr(ss.VESDE(sigma_min=0.5, sigma_max=0.9)) == "VESDE(sigma_min=0.5, sigma_max=0.9)"


@pytest.mark.parametrize("sde", SDES, ids=repr)
def test_coefficients_are_elementwise_on_tensors_of_times(sde):
    tt = torch.linspace(1e-3, 1.0, 7, dtype=torch.float64)
    for name in ("log_mean_scale", "std", "diffusion", "drift_coef", "log_snr", "mean_scale"):
        got = getattr(sde, name)(tt)
        want = torch.tensor([getattr(sde, name)(float(t)) for t in tt], dtype=torch.float64)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("sde", SDES, ids=repr)
def test_prior_sample_follows_its_generator(sde):
    a = sde.prior_sample((4, 3), generator=torch.Generator().manual_seed(1))
    b = sde.prior_sample((4, 3), generator=torch.Generator().manual_seed(1))
    c = sde.prior_sample((4, 3), generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    torch.testing.assert_close(a, sde.prior_std() * torch.randn((4, 3), generator=torch.Generator().manual_seed(1)))


@pytest.mark.parametrize("sde", SDES, ids=repr)
def test_reverse_drifts_against_coefficients_written_from_the_marginal(sde):
    """Reverse SDE f x − g² s and probability flow f x − ½ g² s (Song et al. 2021 eqs. 6, 13), with
    f = ṁ/m and ½ g² = σσ̇ − (ṁ/m) σ² from the marginal alone (tests/helpers.marginal_np)."""
    x, s = torch.randn(4, 3, dtype=torch.float32), torch.randn(4, 3, dtype=torch.float32)
    t = 0.37
    _, dlogm, sig, dsig = marginal_np(sde, t)
    half_g2 = sig * dsig - dlogm * sig * sig
    for pf, c in ((False, 2.0), (True, 1.0)):
        want = dlogm * x.double() - c * half_g2 * s.double()
        for tt in (t, torch.full((4,), t, dtype=torch.float64)):
            got = ss.reverse_drift(sde, s, x, tt, probability_flow=pf)
            assert got.dtype == torch.float32  # follows x, whatever the dtype of t
            torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ss.reverse_drift(sde, s, x, t), ss.reverse_drift(sde, s, x, t, probability_flow=False))


@pytest.mark.parametrize("sde", SDES, ids=repr)
def test_drift_is_the_log_mean_derivative_times_x(sde):
    x = torch.randn(3, 2, 2, dtype=torch.float64)
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    want = torch.stack([marginal_np(sde, float(ti))[1] * xi for ti, xi in zip(t, x)])
    torch.testing.assert_close(sde.drift(x, t), want, rtol=1e-12, atol=1e-14)
    got = sde.drift(x.float(), t)  # a float32 state with float64 times stays float32
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want.float(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("sde", SDES, ids=repr)
def test_transition_on_tensors_of_times_and_its_clamp(sde):
    s = torch.tensor([0.1, 0.3, 0.5, 0.7], dtype=torch.float64)
    t = s + torch.tensor([0.0, 0.05, 0.2, 0.3], dtype=torch.float64)
    a, v = sde.transition(s, t)
    for i in range(4):
        af, vf = sde.transition(float(s[i]), float(t[i]))
        assert math.isclose(float(a[i]), af, rel_tol=1e-12)
        assert math.isclose(float(v[i]), vf, rel_tol=1e-9, abs_tol=1e-15)
    assert float(v[0]) == 0.0 and bool((v >= 0).all())  # s = t: no variance added (clamped, never negative)


@pytest.mark.parametrize("sde", SDES, ids=repr)
def test_prior_logp_of_a_single_point_and_prior_sample_dtype(sde):
    z = torch.randn(1, 3, dtype=torch.float64)
    ref = torch.distributions.Normal(0.0, sde.prior_std()).log_prob(z).sum(1)
    torch.testing.assert_close(sde.prior_logp(z), ref)
    assert sde.prior_sample((2, 3), dtype=torch.float64).dtype == torch.float64
