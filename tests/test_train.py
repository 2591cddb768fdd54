"""Training: losses against closed-form expectations, networks, exact resume (also after SIGKILL),
bad input, data sets, CLI; and a small-budget training run against the exact mixture score."""

import json
import math
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from helpers import SDES, gaussian_1d

import scoresolve as ss
from scoresolve import train
from scoresolve.targets import GaussianMixture
from scoresolve.train import data as tdata
from scoresolve.train.cli import sample_main, train_main

F64 = torch.float64
MU, STD = 0.7, 0.3
GM = gaussian_1d(MU, STD)
V0 = float(GM.covs.flatten()[0])  # STD² as the mixture stores it


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


class ExactNet(torch.nn.Module):
    """A 'network' whose output is the exact score of ``target``, written in the loss's
    parameterization (it undoes the input scaling), so loss(ExactNet) is the loss's minimum."""

    def __init__(self, loss, target=GM):
        super().__init__()
        self.param, self.target = loss.param, target
        self.dummy = torch.nn.Parameter(torch.zeros((), dtype=F64))

    def forward(self, xin, t):
        p = self.param
        m, s = p.coeffs(t, xin.ndim, xin.dtype)
        x = xin * torch.sqrt(m * m + s * s) if (p.scale_input and p.sde is not None) else xin
        return p.output_from_score(self.target.score(x, t.to(F64), p.sde).to(xin.dtype), x, m, s)


def _gauss_integral(loss, f):
    """(1/(T−eps)) ∫ w(t) f(m, σ) dt on a log-spaced grid (or the mean over discrete levels)."""
    ts = loss.times
    if ts.levels is not None:
        m, s = loss.sde.marginal(ts.levels)
        return float(f(m, s).mean())
    u = torch.linspace(math.log(ts.eps), math.log(loss.sde.T), 200_001, dtype=F64)
    t = u.exp()
    m, s = loss.sde.marginal(t)
    return float(torch.trapezoid(ts.weight(t) * f(m, s) * t, u) / (loss.sde.T - ts.eps))


def _mc(loss, n=20_000, seed=0):
    x0 = GM.sample(n, generator=gen(seed), dtype=F64)
    v = loss.per_sample(ExactNet(loss), x0, gen(seed + 1)).detach()
    return float(v.mean()), float(v.std() / math.sqrt(n)), float(v.std())


def _dsm_exact(m, s):
    # E(σ s* + z)² for x_0 ~ N(μ, v0): m² v0 / (m² v0 + σ²) per dimension
    return m * m * V0 / (m * m * V0 + s * s)


# ---------------------------------------------------------------- parameterizations
@pytest.mark.parametrize("output,scale", [("score", False), ("score", True), ("epsilon", False), ("x0", False)])
def test_parameterization_residual_is_the_score_map(output, scale):
    """residual(out) = σ s(out) + z for x = m x0 + σ z, and output_from_score inverts score()."""
    g = gen(1)
    p = train.Parameterization(ss.VPSDE(), output, scale_by_sigma=scale)
    out, x0, z = (torch.randn(64, 3, generator=g, dtype=F64) for _ in range(3))
    m, s = torch.rand(64, 1, generator=g, dtype=F64) + 0.1, torch.rand(64, 1, generator=g, dtype=F64) + 0.01
    x = m * x0 + s * z
    sc = p.score(out, x, m, s)
    torch.testing.assert_close(p.residual(out, x0, z, m, s), s * sc + z, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(p.output_from_score(sc, x, m, s), out, rtol=1e-9, atol=1e-9)


# ---------------------------------------------------------------- losses vs closed form
@pytest.mark.parametrize("sde_name", list(SDES))
@pytest.mark.parametrize("weighting,t_sampling", [("perceptual", "uniform"), ("likelihood", "importance"),
                                                  ("perceptual", "importance")])
@pytest.mark.parametrize("param", ["epsilon", "score", "x0"])
def test_dsm_loss_at_exact_score_matches_closed_form(sde_name, weighting, t_sampling, param):
    """At the exact score of N(μ, v0) the loss's expectation is (1/(T−eps)) ∫ λ/σ² · m²v0/(m²v0+σ²) dt
    (quadrature); the Monte-Carlo mean agrees within 4.5 standard errors, and the loss's score_fn
    returns the exact score (the loss and the score agree whatever the parameterization)."""
    loss = train.dsm_loss(SDES[sde_name], weighting=weighting, t_sampling=t_sampling, parameterization=param,
                          eps=1e-5, scale_by_sigma=param == "score")
    mean, se, _ = _mc(loss)
    exact = _gauss_integral(loss, _dsm_exact)
    assert abs(mean - exact) < 4.5 * se + 1e-4 * abs(exact), (mean, se, exact)
    x = GM.sample(100, t=0.3, sde=loss.sde, generator=gen(3), dtype=F64)
    t = torch.full((100,), 0.3, dtype=F64)
    score_fn = loss.score_fn(ExactNet(loss))
    torch.testing.assert_close(score_fn(x, t), GM.score(x, t, loss.sde), rtol=1e-8, atol=1e-8)
    # differentiable in x when x requires grad (the likelihood's divergence): ∂s/∂x = −1/(m²v0 + σ²)
    xg = x.clone().requires_grad_(True)
    (div,) = torch.autograd.grad(score_fn(xg, t).sum(), xg)
    m, s = loss.sde.marginal(0.3)
    torch.testing.assert_close(div, torch.full_like(x, -1 / (m * m * V0 + s * s)), rtol=1e-8, atol=1e-8)
    assert not score_fn(x, t).requires_grad


@pytest.mark.parametrize("sde_name", ["vp", "subvp"])
def test_importance_sampling_reduces_variance_not_the_mean(sde_name):
    """Likelihood weighting: uniform and importance-sampled t estimate the same integral; importance
    sampling (r ∝ g²/σ²) cuts the per-sample spread by well over 3×."""
    kw = dict(weighting="likelihood", eps=1e-5)
    uni = train.dsm_loss(SDES[sde_name], t_sampling="uniform", **kw)
    imp = train.dsm_loss(SDES[sde_name], t_sampling="importance", **kw)
    mu, seu, sdu = _mc(uni)
    mi, sei, sdi = _mc(imp)
    assert sdi < sdu / 3, (sdi, sdu)
    assert abs(mu - mi) < 4.5 * math.hypot(seu, sei), (mu, seu, mi, sei)


def test_ncsn_and_ddpm_losses_match_closed_form():
    for loss in (train.ncsn_loss(SDES["ve"], n_levels=10, reduction="mean"), train.ddpm_loss(SDES["vp"])):
        mean, se, _ = _mc(loss)
        exact = _gauss_integral(loss, _dsm_exact)
        assert abs(mean - exact) < 4.5 * se, (loss.spec["kind"], mean, se, exact)
    lv = train.ncsn_loss(SDES["ve"], n_levels=10).times.levels
    sig = SDES["ve"].std(lv)
    torch.testing.assert_close(sig, ss.ncsn.geometric_sigmas(SDES["ve"].sigma_max, SDES["ve"].sigma_min, 10))


@pytest.mark.parametrize("sde_name,weighting", [("vp", "perceptual"), ("vp", "likelihood"), ("ve", "perceptual")])
def test_sliced_score_matching_matches_closed_form(sde_name, weighting):
    """At the exact score, SSM-VR has expectation −(1/(T−eps)) ∫ w σ²/(m²v0 + σ²) dt (= DSM minus E w)."""
    loss = train.ssm_loss(SDES[sde_name], weighting=weighting, t_sampling="importance", parameterization="epsilon")
    mean, se, _ = _mc(loss, n=10_000)
    exact = _gauss_integral(loss, lambda m, s: -s * s / (m * m * V0 + s * s))
    assert abs(mean - exact) < 4.5 * se, (mean, se, exact)


def test_sliced_score_matching_without_noise():
    """sde=None: the objective on clean data, E[2 vᵀ∇(vᵀs) + ‖s‖²] = −1/v0 at the exact score."""
    loss = train.ssm_loss(None)
    mean, se, _ = _mc(loss, n=10_000)
    assert abs(mean + 1 / V0) < 4.5 * se, (mean, se)


# ---------------------------------------------------------------- networks
def test_networks_shapes_time_conditioning_and_config_roundtrip():
    g = gen(0)
    mlp = train.ScoreMLP(dim=3, hidden=16, depth=2)
    x = torch.randn(5, 3, generator=g)
    a, b = mlp(x, torch.full((5,), 0.1)), mlp(x, torch.full((5,), 0.9))
    assert a.shape == x.shape and not torch.allclose(a, b)
    for size, mults in ((8, (1, 2)), (28, (1, 2, 2))):
        net = train.UNet(in_channels=1, channels=8, channel_mults=mults)
        torch.nn.init.normal_(net.conv_out.weight, std=0.1)  # the output layer starts at zero
        img = torch.randn(2, 1, size, size, generator=g)
        out = net(img, torch.tensor([0.1, 0.9]))
        assert out.shape == img.shape
        assert not torch.allclose(out[0], net(img, torch.tensor([0.9, 0.9]))[0])
        out.square().mean().backward()
        clone = train.net_from_config(net.config())
        clone.load_state_dict(net.state_dict())
        assert torch.equal(clone(img, torch.tensor([0.1, 0.9])), out.detach())


# ---------------------------------------------------------------- training runs
RING = GaussianMixture.ring(k=8, radius=2.0, std=0.1)


def test_small_budget_training_learns_the_ring():
    """A small budget (about 12 s on one core) already meets the bar's trend: the learned score at
    t = 0.5 is within 0.2 relative L2 of the exact mixture score, and ODE samples have sliced-W2
    within 2× its noise floor and mode-weight TV below 0.05.  Those two metrics are weak (a blurred
    ring without separated modes passes them at this sample size), so the per-component
    Gaussian-fit W2 must also drop below 0.2 (measured 0.09; an unseparated ring gives 0.36).
    The full 60-s run is benchmarks/train_bench.py."""
    sde = ss.VPSDE()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = train.ScoreMLP(dim=2, hidden=64, depth=2)
    loss = train.dsm_loss(sde, eps=1e-5)
    state = train.fit(model, loss, lambda n, g: RING.sample(n, generator=g), steps=1500, batch_size=1024,
                      lr=2e-3, progress=False)
    x = RING.sample(4000, t=0.5, sde=sde, generator=gen(1), dtype=F64)
    t = torch.full((4000,), 0.5, dtype=F64)
    exact = RING.score(x, t, sde)
    rel = float((state.score_fn()(x, t) - exact).norm() / exact.norm())
    assert rel < 0.2, rel
    n = 2000
    res = ss.sample(state.score_fn(), sde, (n, 2), "ode_heun", steps=50, generator=gen(2))
    floor = ss.metrics.noise_floor(RING, n, repeats=3, metrics=("sliced_w2",))["sliced_w2"][0]
    ev = ss.metrics.evaluate(res.samples, RING, metrics=("sliced_w2", "mode_tv", "component_w2"), generator=gen(3))
    assert ev["mode_tv"] < 0.05 and ev["sliced_w2"] < 2 * floor and ev["component_w2"] < 0.2, (ev, floor)


def _tiny(seed=0):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return train.ScoreMLP(dim=2, hidden=16, depth=1, embed_dim=8)


def _tiny_data():
    return RING.sample(500, generator=gen(7))


def _assert_same_weights(a: train.TrainState, b: train.TrainState):
    for (k, p), q in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(p, q), k
    for (k, p), q in zip(a.ema.state_dict().items(), b.ema.state_dict().values()):
        assert torch.equal(p, q), k


def test_resume_is_bit_exact_and_continues_the_step_counter(tmp_path):
    """Interrupted after step 23 (checkpoint at 20), resumed to 60: the same weights, EMA and loss
    history as an uninterrupted run; a finished run can also be extended, and a time limit stops
    cleanly with a checkpoint."""
    loss = train.dsm_loss("vp", weighting="likelihood", t_sampling="importance")
    kw = dict(steps=60, batch_size=32, checkpoint_every=10, progress=False, log_every=7)
    full = train.fit(_tiny(), loss, _tiny_data(), checkpoint=tmp_path / "a.pt", **kw)

    def boom(step, _):
        if step == 23:
            raise KeyboardInterrupt

    ck = tmp_path / "b.pt"
    with pytest.raises(KeyboardInterrupt):
        train.fit(_tiny(), loss, _tiny_data(), checkpoint=ck, callback=boom, **kw)
    assert train.load_checkpoint(ck)["step"] == 20
    resumed = train.fit(_tiny(seed=1), loss, _tiny_data(), checkpoint=ck, **kw)
    assert resumed.resumed_from == 20 and resumed.step == 60
    _assert_same_weights(full, resumed)
    assert resumed.history == full.history

    ck2 = tmp_path / "c.pt"
    short = train.fit(_tiny(), loss, _tiny_data(), checkpoint=ck2, **{**kw, "steps": 1000}, time_limit=1e-9)
    assert short.step == 1 and train.load_checkpoint(ck2)["step"] == 1
    train.fit(_tiny(), loss, _tiny_data(), checkpoint=ck2, **{**kw, "steps": 35})
    extended = train.fit(_tiny(), loss, _tiny_data(), checkpoint=ck2, **kw)
    _assert_same_weights(full, extended)


KILL_SCRIPT = """
import sys, time, torch
torch.set_num_threads(1)
sys.path.insert(0, {tests!r})
from test_train import _tiny, _tiny_data
from scoresolve import train
train.fit(_tiny(), train.dsm_loss("vp"), _tiny_data(), steps={steps}, batch_size=32, checkpoint={ckpt!r},
          checkpoint_every=10, progress=False, callback=lambda s, l: time.sleep(0.004))
"""


def test_sigkill_mid_run_then_resume_reaches_the_uninterrupted_weights(tmp_path):
    """A training subprocess is SIGKILLed while writing checkpoints (which the test keeps reading
    meanwhile): every read succeeds, the surviving checkpoint is intact, and resuming reaches the
    uninterrupted run's weights bit for bit."""
    steps, ckpt = 400, tmp_path / "run" / "ckpt.pt"
    script = KILL_SCRIPT.format(tests=os.path.dirname(__file__), steps=steps, ckpt=str(ckpt))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], env=env)
    try:
        seen, deadline = 0, time.monotonic() + 60
        while seen < 120 and time.monotonic() < deadline and proc.poll() is None:
            if ckpt.exists():
                seen = train.load_checkpoint(ckpt)["step"]  # never a torn file
            time.sleep(0.02)
        assert proc.poll() is None, "the training finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    killed_at = train.load_checkpoint(ckpt)["step"]
    assert 120 <= killed_at < steps and killed_at % 10 == 0
    loss = train.dsm_loss("vp")
    kw = dict(steps=steps, batch_size=32, checkpoint_every=10, progress=False)
    resumed = train.fit(_tiny(), loss, _tiny_data(), checkpoint=ckpt, **kw)
    assert resumed.resumed_from == killed_at and resumed.step == steps
    _assert_same_weights(resumed, train.fit(_tiny(), loss, _tiny_data(), **kw))


def test_checkpoint_from_another_config_is_refused(tmp_path):
    ck = tmp_path / "ckpt.pt"
    train.fit(_tiny(), train.dsm_loss("vp"), _tiny_data(), steps=3, checkpoint=ck, progress=False)
    with pytest.raises(train.ConfigMismatchError, match=r"optimizer\.lr"):
        train.fit(_tiny(), train.dsm_loss("vp"), _tiny_data(), steps=6, lr=5e-3, checkpoint=ck, progress=False)
    with pytest.raises(train.ConfigMismatchError, match=r"loss\.weighting"):
        train.fit(_tiny(), train.dsm_loss("vp", weighting="likelihood"), _tiny_data(), steps=6, checkpoint=ck,
                  progress=False)
    with pytest.raises(train.ConfigMismatchError, match=r"model\.hidden"):
        train.fit(train.ScoreMLP(2, hidden=8, depth=1, embed_dim=8), train.dsm_loss("vp"), _tiny_data(), steps=6,
                  checkpoint=ck, progress=False)


# ---------------------------------------------------------------- bad input
def test_bad_input_errors_name_the_argument():
    d = _tiny_data()
    bad = d.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        train.fit(_tiny(), train.dsm_loss("vp"), bad, steps=1, progress=False)
    with pytest.raises(ValueError, match=r"data items have shape \(3,\).*expects items of shape \(2\)"):
        train.fit(_tiny(), train.dsm_loss("vp"), torch.randn(10, 3), steps=1, progress=False)
    with pytest.raises(ValueError, match="first batch"):
        train.fit(_tiny(), train.dsm_loss("vp"), lambda n, g: torch.full((n, 2), float("nan")), steps=1,
                  progress=False)
    for kw, name in [(dict(weighting="perceptive"), "weighting"), (dict(t_sampling="stratified"), "t_sampling"),
                     (dict(parameterization="v"), "parameterization"), (dict(reduction="max"), "reduction"),
                     (dict(eps=0.0), "eps"), (dict(eps=-1e-3), "eps"), (dict(eps=1.5), "eps")]:
        with pytest.raises(ValueError, match=name):
            train.dsm_loss("vp", **kw)
    with pytest.raises(ValueError, match="unknown sde 'foo'; valid choices: vp, subvp, ve"):
        train.dsm_loss("foo")
    with pytest.raises(ValueError, match="scale_by_sigma"):
        train.dsm_loss("vp", parameterization="epsilon", scale_by_sigma=True)
    with pytest.raises(ValueError, match="VE"):
        train.ncsn_loss("vp")
    with pytest.raises(ValueError, match="ema"):
        train.fit(_tiny(), train.dsm_loss("vp"), d, steps=1, ema=1.0, progress=False)


# ---------------------------------------------------------------- data sets
def test_datasets_are_scaled_deterministic_and_invertible():
    x, y = tdata.load_dataset("digits", "train", return_labels=True)
    xt = tdata.load_dataset("digits", "test")
    assert x.shape == (1500, 1, 8, 8) and xt.shape == (297, 1, 8, 8) and y.shape == (1500,)
    assert x.min() == -1 and x.max() == 1
    raw = tdata.to_raw("digits", xt)
    assert torch.equal(raw, raw.round()) and raw.min() == 0 and raw.max() == 16
    for name in ("ring8", "moons", "swiss_roll", "checkerboard"):
        a = tdata.load_dataset(name)
        assert a.shape == (20_000, 2) and torch.equal(a, tdata.load_dataset(name))
        assert not torch.equal(a[:5000], tdata.load_dataset(name, "test"))
        assert float(a.abs().quantile(0.999)) <= 1.05, name
        torch.testing.assert_close(tdata.from_raw(name, tdata.to_raw(name, a)), a)
    ring = tdata.exact_target("ring8")  # the scaled ring: exact log-density of the data set
    lp_data = float(ring.log_prob(tdata.load_dataset("ring8", "test").double()).mean())
    lp_exact = float(ring.log_prob(ring.sample(5000, generator=gen(0), dtype=F64)).mean())
    assert abs(lp_data - lp_exact) < 0.1
    with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
        tdata.load_dataset("mnist")


# ---------------------------------------------------------------- CLI and load_run
def test_cli_train_resume_sample_and_load_run(tmp_path, capsys):
    out = tmp_path / "moons"
    common = ["--out", str(out), "--no-progress", "--checkpoint-every", "10"]
    assert train_main(["--data", "moons", "--steps", "20", "--width", "16", "--batch-size", "64", *common]) == 0
    assert train_main(["--steps", "30", *common]) == 0  # settings come from the run directory
    assert "resumed at step 20" in capsys.readouterr().out
    assert train_main(["--steps", "40", "--lr", "0.5", *common]) == 2
    assert "optimizer.lr" in capsys.readouterr().err
    run = train.load_run(out)
    assert run.step == 30 and run.data_shape == (2,) and run.sde == ss.VPSDE() and run.dataset == "moons"
    assert json.loads((out / "config.json").read_text())["settings"]["data"] == "moons"
    png = tmp_path / "m.png"
    assert sample_main(["--run", str(out), "--method", "ode_euler", "--steps", "5", "--n", "200",
                        "--out", str(png)]) == 0
    assert png.stat().st_size > 1000
    capsys.readouterr()
    assert sample_main(["--run", str(out), "--method", "dpmpp_2m", "--nfe", "6", "--grid", "scale", "--n", "64",
                        "--out", str(png)]) == 0
    assert "NFE 10" in capsys.readouterr().out  # 6 + the pilot's 256 rows / 64
    centred = tmp_path / "centred.pt"  # --data-mean: sample(data_mean="estimate"), its pilot shared with --grid scale
    assert sample_main(["--run", str(out), "--method", "dpmpp_2m", "--nfe", "6", "--grid", "scale", "--n", "64",
                        "--data-mean", "estimate", "--save", str(centred)]) == 0
    assert "NFE 10" in capsys.readouterr().out
    ref = ss.sample(run.score_fn, run.sde, (64, 2), "dpmpp_2m", nfe=6, grid="scale", data_mean="estimate",
                    generator=gen(0))
    assert torch.equal(torch.load(centred, weights_only=True), run.to_raw(ref.samples))
    for bad, msg in ((["--steps", "5", "--nfe", "6"], "--steps or --nfe, not both"),
                     (["--grid", "cubic"], "--grid 'cubic' is unknown; valid choices: uniform, .*, scale"),
                     (["--data-mean", "mean"], "--data-mean 'mean' is unknown; valid choices: estimate"),
                     (["--nfe", "0"], "--nfe")):
        assert sample_main(["--run", str(out), "--method", "dpmpp_2m", *bad]) == 2
        assert re.search(msg, capsys.readouterr().err), bad
    # a method with sampler options: the same samples as sample(..., solver_order=4), not those of the default order
    raw = tmp_path / "o4.pt"
    assert sample_main(["--run", str(out), "--method", "unipc:solver_order=4", "--nfe", "8", "--grid", "scale",
                        "--n", "64", "--save", str(raw)]) == 0
    assert (out / "samples_unipc_solver_order=4.png").stat().st_size > 1000  # the default path, ':' replaced
    got = torch.load(raw, weights_only=True)
    for order, same in ((4, True), (3, False)):
        ref = ss.sample(run.score_fn, run.sde, (64, 2), "unipc", nfe=8, grid="scale", solver_order=order,
                        generator=gen(0))
        assert torch.equal(got, run.to_raw(ref.samples)) is same, order
    for spec, msg in (("unipc:bogus=1", "--method: unknown option.*'bogus' for UniPC; valid options: solver_order"),
                      ("unipc:solver_order=7", "--method: solver_order must be one of 1, 2, 3, 4; got 7"),
                      ("unipc:solver_order", "--method: .*key=value pairs")):
        assert sample_main(["--run", str(out), "--method", spec]) == 2
        assert re.search(msg, capsys.readouterr().err), spec
    shards, sharded = tmp_path / "shards", ["--run", str(out), "--method", "dpmpp_2m", "--n", "8", "--chunk", "4"]
    assert sample_main([*sharded, "--nfe", "6", "--grid", "scale", "--shard-dir", str(shards)]) == 0
    merged = torch.load(shards / "samples.pt", weights_only=True)
    assert merged["samples"].shape == (8, 2) and torch.all(merged["nfe"] == 6 + 256 / 4)  # a pilot per chunk
    assert sample_main([*sharded, "--nfe", "6", "--shard-dir", str(shards)]) == 2  # another grid: another job
    assert "manifest differs in: options" in capsys.readouterr().err
    spec = ["--run", str(out), "--n", "8", "--chunk", "4", "--nfe", "6", "--shard-dir", str(tmp_path / "o4")]
    assert sample_main([*spec, "--method", "unipc:solver_order=4"]) == 0
    assert sample_main([*spec, "--method", "unipc:solver_order=3"]) == 2  # other options: another job
    assert "manifest differs in: method" in capsys.readouterr().err

    img = tmp_path / "digits"
    assert train_main(["--data", "digits", "--steps", "2", "--width", "8", "--batch-size", "8", "--out", str(img),
                       "--no-progress"]) == 0
    assert sample_main(["--run", str(img), "--method", "ode_euler", "--steps", "2", "--n", "16"]) == 0
    assert (img / "samples_ode_euler.png").stat().st_size > 1000
    run = train.load_run(img)
    assert run.data_shape == (1, 8, 8)
    assert sample_main(["--run", str(tmp_path / "nothing")]) == 2


def test_load_run_of_a_fit_checkpoint_gives_the_state_score(tmp_path):
    ck = tmp_path / "ckpt.pt"
    loss = train.dsm_loss(SDES["ve"], parameterization="x0")
    state = train.fit(_tiny(), loss, _tiny_data(), steps=5, checkpoint=ck, progress=False)
    run = train.load_run(ck)
    x, t = torch.randn(7, 2, generator=gen(0)), torch.rand(7, generator=gen(1))
    assert run.sde == SDES["ve"] and run.data_shape == (2,)
    assert torch.equal(run.score_fn(x, t), state.score_fn(ema=True)(x, t))


def test_resume_is_not_refused_for_another_thread_count(tmp_path):
    # torch's float64 sum of squares of 10^5 numbers changes in its last digits with the thread count; the
    # data fingerprint must not, or a run resumed on another machine (or OMP setting) is refused
    data = torch.randn(50_000, 2, generator=torch.Generator().manual_seed(0)) + 3.0
    ck, kw = tmp_path / "ckpt.pt", dict(batch_size=32, progress=False)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        train.fit(_tiny(), train.dsm_loss("vp"), data, steps=2, checkpoint=ck, **kw)
        torch.set_num_threads(max(2, threads))
        assert train.fit(_tiny(), train.dsm_loss("vp"), data, steps=3, checkpoint=ck, **kw).resumed_from == 2
    finally:
        torch.set_num_threads(threads)
    with pytest.raises(train.ConfigMismatchError, match=r"data\.sum"):
        train.fit(_tiny(), train.dsm_loss("vp"), data * 1.0001, steps=4, checkpoint=ck, **kw)
