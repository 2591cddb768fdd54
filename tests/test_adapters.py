"""Discrete and Karras SDEs and the model adapters, against exact Gaussian answers and diffusers."""

import math
import warnings

import pytest
import torch
from diffusers_helpers import diffusers, tiny_unet
from helpers import gaussian_flow_map

import scoresolve as ss
from scoresolve.adapters import PREDICTION_TYPES, DiffusersScore
from scoresolve.targets import GaussianMixture

MU, STD = 0.7, 0.4


def gaussian_1d(mu: float, std: float) -> GaussianMixture:
    f64 = dict(dtype=torch.float64)
    return GaussianMixture(torch.ones(1, **f64), torch.tensor([[mu]], **f64), torch.tensor([std**2], **f64))


def exact_denoiser(x, sigma):
    """E[x_0 | x_0 + σ z = x] for x_0 ~ N(μ, s²): (s² x + σ² μ)/(s² + σ²)."""
    s2 = sigma.reshape(-1, *([1] * (x.ndim - 1))) ** 2
    return (STD**2 * x + s2 * MU) / (STD**2 + s2)


@pytest.mark.parametrize("sde", [ss.KarrasSDE(), ss.DiscreteVPSDE(schedule="linear"),
                                 ss.DiscreteVPSDE(schedule="squaredcos_cap_v2"),
                                 ss.DiscreteVPSDE(schedule="scaled_linear", interpolation="sigma")], ids=repr)
def test_sde_is_consistent(sde):
    """log-SNR and its inverse, f = d log m/dt and g² = dσ²/dt − 2fσ² by finite differences."""
    t = torch.linspace(sde.default_eps * 1.5, sde.T * 0.999, 37, dtype=torch.float64)
    assert torch.allclose(sde.t_from_log_snr(sde.log_snr(t)), t, rtol=1e-12, atol=0)
    for tf in t[::6].tolist():
        assert math.isclose(sde.t_from_log_snr(sde.log_snr(tf)), tf, rel_tol=1e-12)
        m, s = sde.marginal(tf)
        f64 = dict(dtype=torch.float64)
        assert torch.allclose(sde.marginal(torch.tensor([tf], **f64))[1], torch.tensor([s], **f64))
        h = 1e-7 * sde.T
        if isinstance(sde, ss.DiscreteVPSDE):  # stay inside one linear piece
            n = sde.num_train_timesteps
            tf = (math.floor(tf * n) + 0.5) / n
            m, s = sde.marginal(tf)
        dlogm = (sde.log_mean_scale(tf + h) - sde.log_mean_scale(tf - h)) / (2 * h)
        dvar = (sde.std(tf + h) ** 2 - sde.std(tf - h) ** 2) / (2 * h)
        assert math.isclose(sde.drift_coef(tf), dlogm, rel_tol=1e-6, abs_tol=1e-9)
        assert math.isclose(sde.diffusion(tf) ** 2, dvar - 2 * dlogm * s * s, rel_tol=1e-5)


def test_discrete_sde_drift_is_the_flow_of_its_marginals():
    """The probability-flow drift f x − ½ g² s equals d/dt of the exact flow map of a Gaussian
    (built from the marginals alone), inside the linear pieces of log m.  (At the table's
    points β(t) = −2f jumps: solvers stepping in t, ode_euler/ode_heun/em/pc, see a piecewise
    constant β; the exponential integrators use only the marginals.)"""
    sde, gm = ss.DiscreteVPSDE(schedule="linear"), gaussian_1d(MU, STD)
    x_T = torch.tensor([[-1.3], [0.2], [2.0]], dtype=torch.float64)
    for tf in (0.9005, 0.5005, 0.1005, 0.0105, 0.0015):
        h = 1e-6
        fd = (gaussian_flow_map(gm, sde, x_T, tf + h) - gaussian_flow_map(gm, sde, x_T, tf - h)) / (2 * h)
        x, t = gaussian_flow_map(gm, sde, x_T, tf), torch.full((3,), tf, dtype=torch.float64)
        drift = ss.reverse_drift(sde, gm.score_fn(sde)(x, t), x, t, probability_flow=True)
        assert torch.allclose(drift, fd, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("sde", [ss.KarrasSDE(), ss.DiscreteVPSDE(schedule="scaled_linear", beta_start=0.00085,
                                                                  beta_end=0.012)], ids=repr)
def test_from_karras_is_the_exact_score(sde):
    """A k-diffusion denoiser D(x, σ) in σ̃ = σ/m gives the exact score on any SDE."""
    gm = gaussian_1d(MU, STD)
    x = torch.randn(6, 1, dtype=torch.float64)
    t = torch.linspace(sde.T, sde.default_eps * 2, 6, dtype=torch.float64)
    assert torch.allclose(ss.from_karras(exact_denoiser, sde)(x, t), gm.score_fn(sde)(x, t), rtol=1e-10)


def test_edm_precond_and_v_prediction():
    """edm_precond around the ideal F reproduces D; v = mε − σx_0 round-trips to the score."""
    def ideal_f(xin, c_noise):  # F = (D − c_skip x)/c_out, written from the exact D
        sigma = torch.exp(4 * c_noise).reshape(-1, 1)
        x = xin * (sigma**2 + 0.25).sqrt()
        return (exact_denoiser(x, sigma) - 0.25 / (sigma**2 + 0.25) * x) / (sigma * 0.5 / (sigma**2 + 0.25).sqrt())

    x, sig = torch.randn(5, 1, dtype=torch.float64), torch.logspace(-2, 1.9, 5, dtype=torch.float64)
    assert torch.allclose(ss.edm_precond(ideal_f)(x, sig), exact_denoiser(x, sig), rtol=1e-10)
    gm = gaussian_1d(MU, STD)
    t = torch.linspace(0.9, 0.01, 5, dtype=torch.float64)
    # m² + σ² = 1 only on VP: sub-VP, VE and EDM catch a conversion that assumes it.
    for sde in (ss.DiscreteVPSDE(), ss.SubVPSDE(), ss.VESDE(), ss.KarrasSDE()):

        def v_model(x, t, sde=sde):
            m, s = (v.reshape(-1, 1) for v in sde.marginal(t))
            x0 = (x + s * s * gm.score_fn(sde)(x, t)) / m
            return m * (x - m * x0) / s - s * x0

        score = gm.score_fn(sde)(x, t)
        assert torch.allclose(ss.from_v_prediction(v_model, sde)(x, t), score, rtol=1e-9), type(sde).__name__


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_every_prediction_type_converts_to_the_exact_score(prediction_type):
    """A model predicting ε = −σ s, x_0 = (x + σ² s)/m (Tweedie) or v = m ε − σ x_0 (Salimans & Ho 2022),
    each written from the exact score, gives back that score on every SDE (m ≠ 1 and m² + σ² ≠ 1 included)."""
    gm = gaussian_1d(MU, STD)
    x, t = torch.randn(5, 1, dtype=torch.float64), torch.linspace(0.9, 0.01, 5, dtype=torch.float64)
    for sde in (ss.DiscreteVPSDE(), ss.VPSDE(), ss.SubVPSDE(), ss.VESDE(), ss.KarrasSDE()):
        exact = gm.score_fn(sde)

        def model(x, tau, sde=sde, exact=exact):  # tau is t itself (timestep= below)
            m, s = (v.reshape(-1, 1) for v in sde.marginal(tau))
            eps, x0 = -s * exact(x, tau), (x + s * s * exact(x, tau)) / m
            return {"epsilon": eps, "sample": x0, "v_prediction": m * eps - s * x0}[prediction_type]

        got = DiffusersScore(model, sde, prediction_type, timestep=lambda t: t)(x, t)
        assert torch.allclose(got, exact(x, t), rtol=1e-9), type(sde).__name__


def test_karras_grid_and_sigmas():
    """grid="karras" on KarrasSDE is k-diffusion's get_sigmas_karras (without its final 0)."""
    sde, n = ss.KarrasSDE(), 12
    ramp = torch.linspace(0, 1, n + 1, dtype=torch.float64)
    for rho in (7.0, 3.0, 1.0):  # ρ = 1: uniform in σ
        kd = (80 ** (1 / rho) + ramp * (0.002 ** (1 / rho) - 80 ** (1 / rho))) ** rho
        assert torch.allclose(ss.make_grid("karras", sde, n, 0.002, rho=rho), kd, rtol=1e-12), rho
    assert torch.equal(ss.grid_from_sigmas(sde, torch.cat([kd, kd.new_zeros(1)])), kd)
    vp = ss.DiscreteVPSDE()
    t = ss.grid_from_sigmas(vp, kd / 10)
    assert torch.allclose(torch.exp(-0.5 * vp.log_snr(t)), kd / 10, rtol=1e-10)


class CallCounter(torch.nn.Module):
    """Wraps a UNet and counts the rows it is called on."""

    def __init__(self, unet):
        super().__init__()
        self.unet, self.rows, self.calls, self.last_kwargs = unet, 0, 0, {}

    def forward(self, x, timestep, **kw):
        self.rows += x.shape[0]
        self.calls += 1
        self.last_kwargs = kw
        return self.unet(x, timestep, **kw)


def test_batched_classifier_free_guidance_counts_two_nfe():
    """cond and uncond in one forward of 2B rows; equal to two separate adapters combined."""
    unet = tiny_unet(num_class_embeds=4)
    sched = diffusers.DDIMScheduler()
    sde = ss.DiscreteVPSDE.from_diffusers(sched)
    model = CallCounter(unet)
    labels, null = torch.tensor([1, 2]), torch.tensor([3])
    score = ss.from_diffusers(model, sde, class_labels=labels, guidance_scale=3.0, uncond={"class_labels": null})
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    res = ss.sample(score, sde, x.shape, "ddim", grid=ss.timestep_grid(sde, 5, "trailing"), x_init=x)
    assert model.calls == 5 and model.rows == 20 and res.nfe == 10
    assert torch.equal(model.last_kwargs["class_labels"], torch.tensor([1, 2, 3, 3]))
    t = torch.full((2,), 0.5, dtype=torch.float64)
    cond, unc = ss.from_diffusers(unet, sde, class_labels=labels), ss.from_diffusers(unet, sde, class_labels=null)
    assert torch.allclose(score(x, t), ss.classifier_free(cond, unc, 3.0)(x, t), rtol=1e-10)


def test_errors_name_the_fix():
    unet, sde = tiny_unet(), ss.DiscreteVPSDE()
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(TypeError, match=r"dtype=torch.float64"):
        ss.sample(ss.from_diffusers(unet, sde), sde, x.shape, "ddim", steps=2)
    with pytest.raises(TypeError, match="DiscreteVPSDE"):
        ss.from_diffusers(unet, ss.VPSDE())
    with pytest.raises(ValueError, match="prediction_type"):
        ss.from_diffusers(unet, sde, "x0")
    with pytest.raises(ValueError, match="DiscreteVPSDE.from_diffusers"):
        ss.sample(ss.from_diffusers(unet, sde), ss.VPSDE(), x.shape, "ddim", dtype=torch.float64,
                  grid=torch.tensor([1.0 + 1 / 1000, 0.5]))
    with pytest.raises(ValueError, match=r"KarrasSDE\(sigma_max=157"):
        ss.sample(lambda x, t: -x, ss.KarrasSDE(), x.shape, "ddim", grid=torch.tensor([157.0, 1.0]))
    with pytest.raises(ValueError, match="valid choices: leading, linspace, trailing"):
        ss.timestep_grid(sde, 10, "uniform")
    with pytest.raises(ValueError, match="rescale_betas_zero_snr"):
        ss.DiscreteVPSDE.from_diffusers(diffusers.DDIMScheduler(rescale_betas_zero_snr=True))


def test_likelihood_vmap_falls_back_on_a_unet():
    """diffusers' UNets cannot be vmapped ("NYI: querying is_contiguous inside of vmap"):
    vjp="vmap" warns and gives the loop's numbers."""
    unet = tiny_unet(channels=1)
    sde = ss.DiscreteVPSDE()
    score = ss.from_diffusers(unet, sde)
    x = 0.5 * torch.randn(2, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    kw = dict(trace="hutchinson", probes=2, rtol=1e-3, atol=1e-3, seeds=[0, 1])
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        a = ss.likelihood(score, sde, x, vjp="vmap", **kw)
    assert any("falling back to vjp='loop'" in str(m.message) for m in w) and a.stats["vjp"] == "loop"
    b = ss.likelihood(score, sde, x, vjp="loop", **kw)
    assert torch.allclose(a.logp, b.logp, rtol=1e-12)


def test_every_sampler_counts_unet_calls():
    """Every registered sampler runs on (B, 3, 16, 16) through the diffusers adapter, and the
    counted NFE is the number of UNet evaluations (rows / batch)."""
    model = CallCounter(tiny_unet(size=16))
    sde = ss.DiscreteVPSDE.from_diffusers(diffusers.DDPMScheduler())
    score = ss.from_diffusers(model, sde)
    for name, sampler in ss.SAMPLERS.items():
        model.rows = 0
        opts = {"steps": 3} if sampler.nfe_per_step is not None else {}
        opts.update({k: 1e-2 for k in ("rtol", "atol") if hasattr(sampler, k)})
        res = ss.sample(score, sde, (2, 3, 16, 16), name, generator=torch.Generator().manual_seed(0),
                        dtype=torch.float64, **opts)
        assert res.samples.shape == (2, 3, 16, 16) and bool(res.samples.isfinite().all()), name
        assert res.nfe * 2 == model.rows, (name, res.nfe, model.rows)


def test_a_denoiser_passed_as_a_score_is_warned_about():
    """On prior draws the first call at T tells a score (≈ −x/σ(T)²) from a denoiser or an
    ε-prediction; the wrapped versions pass silently."""
    sde, gm = ss.KarrasSDE(), gaussian_1d(MU, STD)
    run = dict(steps=3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with pytest.warns(UserWarning, match="from_karras"):
        ss.sample(lambda x, t: exact_denoiser(x, t), sde, (64, 1), "heun", **run)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ss.sample(ss.from_karras(exact_denoiser, sde), sde, (64, 1), "heun", **run)
        ss.sample(gm.score_fn(sde), sde, (64, 1), "heun", **run)


def test_ddim_step_to_on_the_grid_is_plain_ddim():
    """Landing on the next grid time (and 0 for the final x̂_0) is DDIM itself, bit for bit; for
    "trailing" with n | N diffusers' landing times are exactly that; bad step_to names the fix."""
    sde = ss.DiscreteVPSDE(schedule="linear")
    score, x = gaussian_1d(MU, STD).score_fn(sde), torch.randn(64, 1, dtype=torch.float64,
                                                                generator=torch.Generator().manual_seed(0))
    grid = ss.timestep_grid(sde, 10, "trailing")
    assert torch.equal(ss.ddim_step_to(sde, 10, "trailing"), torch.cat([grid[1:], grid.new_zeros(1)]))
    plain = ss.sample(score, sde, x.shape, "ddim", grid=grid, x_init=x)
    landed = ss.sample(score, sde, x.shape, "ddim", grid=grid, x_init=x, step_to=ss.ddim_step_to(sde, 10, "trailing"))
    assert torch.equal(plain.samples, landed.samples) and landed.nfe == plain.nfe == 10
    off = ss.sample(score, sde, x.shape, "ddim", grid=ss.timestep_grid(sde, 10, "linspace"), x_init=x,
                    step_to=ss.ddim_step_to(sde, 10, "linspace"))
    assert off.nfe == 10 and not torch.equal(off.samples, plain.samples)
    with pytest.raises(ValueError, match=r"one time per score evaluation: 10 \(the 9 grid steps and the final x̂_0 "
                                         r"evaluation at grid\[-1\] \(denoise=True\)\), got 9"):
        ss.sample(score, sde, x.shape, "ddim", grid=grid, x_init=x, step_to=grid[1:])
    with pytest.raises(ValueError, match=r"one time per score evaluation: 9 \(the 9 grid steps\), got 10"):
        ss.sample(score, sde, x.shape, "ddim", grid=grid, x_init=x, denoise=False,
                  step_to=torch.cat([grid[1:], grid.new_zeros(1)]))
    zero_early = torch.cat([grid[1:5], grid.new_zeros(1), grid[6:], grid.new_zeros(1)])
    with pytest.raises(ValueError, match=r"step_to\[4\] = 0.0 must lie in \(0, "):  # only the last may be 0
        ss.sample(score, sde, x.shape, "ddim", grid=grid, x_init=x, step_to=zero_early)
    below = torch.cat([grid[1:], grid.new_tensor([-0.1])])
    with pytest.raises(ValueError, match=r"step_to\[9\] = -0.1 must lie in \[0, "):  # the last may be 0, not below
        ss.sample(score, sde, x.shape, "ddim", grid=grid, x_init=x, step_to=below)
    with pytest.raises(TypeError, match="step_to must be a sequence or 1-d tensor of times, got 'late'"):
        ss.sample(score, sde, x.shape, "ddim", grid=grid, x_init=x, step_to="late")
    as_list = ss.sample(score, sde, x.shape, "ddim", grid=grid, x_init=x,  # float64 numbers, not float32
                        step_to=ss.ddim_step_to(sde, 10, "linspace").tolist())
    assert torch.equal(as_list.samples, ss.sample(score, sde, x.shape, "ddim", grid=grid, x_init=x,
                                                  step_to=ss.ddim_step_to(sde, 10, "linspace")).samples)
    same = torch.cat([grid[:1], grid[2:], grid.new_zeros(1)])  # a zero-length first step is allowed
    assert ss.sample(score, sde, x.shape, "ddim", grid=grid, x_init=x, step_to=same).nfe == 10
    with pytest.raises(ValueError, match=r"step_to\[0\] .* must lie in \(0, "):
        above = torch.cat([grid[:1] + 0.01, grid[2:], grid[:1] * 0])  # step 0 would land above its start
        ss.sample(score, sde, x.shape, "ddim", grid=grid, x_init=x, step_to=above)
    with pytest.raises(ValueError, match="finite"):
        ss.sample(score, sde, x.shape, "ddim", grid=grid, x_init=x, step_to=[float("nan")] * 10)
