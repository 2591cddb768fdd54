"""The benchmark harness: counted NFE, floors, resume after SIGKILL, user scores, bad input, report."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import scoresolve as ss
from scoresolve.bench import BenchConfig, Judge, ResultStore, analytic_problem, run_bench
from scoresolve.bench.cli import main
from scoresolve.bench.quality import gaussian_kl
from scoresolve.bench.report import nfe_to_reach

ROOT = Path(__file__).resolve().parents[1]

# A user score module: exact score of N(mu, s² I) on data of shape (1, 2, 2) under any SDE,
# given both as a factory (make_score(sde=...)) and as a plain score for the VP SDE; `slow`
# sleeps per call (so a subprocess run lasts long enough to be killed mid-way); `broken`
# returns NaN below t = 0.5.
USER_MODULE = """
import time
import torch
import scoresolve as ss

MU, S = 0.5, 0.3

def _score(sde, x, t):
    m, sig = sde.marginal(t)
    m = m.reshape(-1, 1, 1, 1).to(x.dtype)
    sig = sig.reshape(-1, 1, 1, 1).to(x.dtype)
    return -(x - m * MU) / (m * m * S * S + sig * sig)

def make_score(sde):
    return lambda x, t: _score(sde, x, t)

def score(x, t):
    return _score(ss.VPSDE(), x, t)

def slow(x, t):
    time.sleep(0.003)
    return _score(ss.VPSDE(), x, t)

def broken(x, t):
    out = _score(ss.VPSDE(), x, t)
    return torch.where((t < 0.5).reshape(-1, 1, 1, 1), torch.nan, out)
"""


@pytest.fixture
def user_mod(tmp_path, monkeypatch):
    """Writes the module and a reference file of exact samples (N, 1, 2, 2)."""
    name = f"bench_user_{os.getpid()}_{tmp_path.name}".replace("-", "_")
    (tmp_path / f"{name}.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    g = torch.Generator().manual_seed(0)
    ref = 0.5 + 0.3 * torch.randn(1200, 1, 2, 2, generator=g)
    np.save(tmp_path / "ref.npy", ref.numpy())
    return name, tmp_path


def _cfg(out, **kw):
    base = dict(problems=(analytic_problem("ring8"),), sdes=(("vp", ss.VPSDE()),), methods=("em",),
                nfes=(10,), tols=(), out=Path(out), samples=400, seeds=1, floor_repeats=2,
                metrics=("component_w2", "mode_tv", "logp_gap"), progress=False)
    base.update(kw)
    return BenchConfig(**base)


def _rows(out) -> list[dict]:
    return ResultStore(Path(out) / "results.jsonl").rows()


def test_rows_record_counted_nfe_floor_ratio_and_timing(tmp_path):
    out = tmp_path / "r"
    cfg = _cfg(out, methods=("em", "ode_heun", "ald", "ode"), nfes=(10, 20), tols=(1e-2,), seeds=2,
               skip_infeasible=True)
    summary = run_bench(cfg)
    rows = {r["key"]: r for r in _rows(out)}
    # em 2 budgets, ode_heun 2, ald only 20 (its minimum is 11), ode one tolerance; 2 seeds each
    assert summary == {"cells": 12, "skipped": 0, "ran": 12, "failed": 0, "interrupted": False}
    assert len(rows) == 12 and all(r["status"] == "ok" for r in rows.values())
    # counted, not nominal: heun at budget 10 fits 4 steps + the denoising call; ald 1 level of 10 + 1
    assert rows["ring8|vp|ode_heun|nfe=10|seed=0|n=400"]["nfe"] == 9
    assert rows["ring8|vp|ald|nfe=20|seed=1|n=400"]["nfe"] == 11
    assert rows["ring8|vp|em|nfe=20|seed=0|n=400"]["nfe"] == 20
    ode = rows["ring8|vp|ode|tol=0.01|seed=0|n=400"]
    assert ode["budget_kind"] == "tol" and ode["nfe"] == ode["calls"] > 2
    for r in rows.values():
        assert set(r["metrics"]) == {"component_w2", "mode_tv", "logp_gap"}
        for m, v in r["metrics"].items():
            mean, sd = r["floor"][m]
            want = v / mean if r["ratio_basis"][m] == "mean" else (v - mean) / sd
            assert sd > 0 and math.isclose(r["ratio"][m], want)
        assert r["ratio_basis"]["component_w2"] == "mean"
        # the score is timed inside the run: overhead = wall / score time >= 1 by construction
        assert 0 < r["score_s"] <= r["wall_s"] and math.isclose(r["overhead"], r["wall_s"] / r["score_s"])
        assert r["overhead"] >= 1 and r["bare_s"] is None and r["peak_mem_mb"] > 0
        assert r["samples_per_s"] == pytest.approx(400 / r["wall_s"])
    # seeds give different samples, the same seed the same ones (a generator per seed)
    a, b = (np.load(out / rows[f"ring8|vp|em|nfe=10|seed={s}|n=400"]["samples_file"]) for s in (0, 1))
    assert not np.allclose(a, b)
    res = ss.sample(ss.targets.GaussianMixture.ring(8, 2.0, 0.1).score_fn(ss.VPSDE()), ss.VPSDE(),
                    (400, 2), "em", nfe=10, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(a, res.samples.numpy(), rtol=1e-5, atol=1e-6)

    # re-running the same configuration does nothing and leaves the file byte-identical
    before = (out / "results.jsonl").read_bytes()
    assert run_bench(cfg)["skipped"] == 12
    assert (out / "results.jsonl").read_bytes() == before


def test_batches_sized_to_the_device_and_split_runs(tmp_path):
    from scoresolve.bench.timing import auto_batch_size

    score = ss.targets.GaussianMixture.ring(8, 2.0, 0.1).score_fn(ss.VPSDE())
    cpu = torch.device("cpu")
    assert auto_batch_size(score, (2,), 10_000, cpu, torch.float32, 0.5) == 10_000
    assert auto_batch_size(score, (2,), 10_000, cpu, torch.float32, 0.5, fraction=1e-9) == 1
    out = tmp_path / "b"
    run_bench(_cfg(out, methods=("ode_heun",), nfes=(21,), batch_size=150))
    (row,) = _rows(out)
    assert row["n_batches"] == 3 and row["batch_size"] == 150 and row["nfe"] == 21 and row["calls"] == 63
    assert row["bare_calls_timed"] == 0 and row["overhead"] >= 1


def test_exact_samples_sit_on_the_floor_and_gaussian_kl_is_closed_form():
    prob = analytic_problem("gauss4")
    judge = Judge(prob, ss.VPSDE(), 3000, ("gauss_w2", "gauss_kl", "component_w2", "logp_gap"))
    floor = judge.floor(repeats=6)
    x = prob.target.sample(3000, generator=torch.Generator().manual_seed(99))
    vals = judge.evaluate(x, seed=3)
    for m, v in vals.items():  # exact samples: within 5 floor sds of the floor mean
        assert abs(v - floor[m][0]) < 5 * floor[m][1] + 1e-12, (m, v, floor[m])
    # against torch's closed form
    g = torch.Generator().manual_seed(1)
    a = torch.randn(4, 4, generator=g, dtype=torch.float64)
    c1, c2 = a @ a.T + torch.eye(4, dtype=torch.float64), torch.diag(torch.rand(4, generator=g) + 0.5).double()
    mu1, mu2 = torch.randn(4, dtype=torch.float64), torch.zeros(4, dtype=torch.float64)
    d = torch.distributions
    want = d.kl_divergence(d.MultivariateNormal(mu1, c1), d.MultivariateNormal(mu2, c2))
    assert gaussian_kl(mu1, c1, mu2, c2) == pytest.approx(float(want), rel=1e-10)


def test_sigkill_mid_run_then_resume_completes_without_redoing_cells(user_mod, tmp_path):
    name, mod_dir = user_mod
    out = tmp_path / "killed"
    args = ["--score", f"{name}:slow", "--sde", "vp", "--reference", str(mod_dir / "ref.npy"),
            "--methods", "em", "--nfe", "10,20,30,40", "--seeds", "3", "--samples", "300",
            "--floor-repeats", "2", "--metrics", "mean_err,gauss_w2", "--out", str(out), "--no-progress"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(mod_dir), str(ROOT)]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "scoresolve", "bench", *args, "--no-report"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    results = out / "results.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if results.exists() and len(results.read_text().splitlines()) >= 2:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    first = results.read_text().splitlines()
    rows = [json.loads(line) for line in first]  # every line parses: never a torn write
    assert 2 <= len(rows) < 12, "the run must have been killed mid-way"
    assert len({r["key"] for r in rows}) == len(rows)

    assert main([*args, "--no-report"]) == 0  # resume in-process
    final = results.read_text().splitlines()
    assert final[: len(first)] == first  # finished cells untouched (same run id, times, numbers)
    keys = [json.loads(line)["key"] for line in final]
    assert len(final) == 12 and len(set(keys)) == 12
    assert len({json.loads(line)["run_id"] for line in final}) == 2
    assert not list(out.glob(".results.jsonl.tmp-*"))


def test_user_score_module_function_and_reference_file_end_to_end(user_mod, tmp_path, capsys):
    name, mod_dir = user_mod
    out = tmp_path / "user"
    for spec in ("score", "make_score"):  # a score, and a factory taking sde=
        rc = main(["--score", f"{name}:{spec}", "--shape", "1,2,2", "--sde", "vp", "--reference",
                   str(mod_dir / "ref.npy"), "--name", spec, "--methods", "ode_heun", "--nfe", "41",
                   "--samples", "500", "--floor-repeats", "3", "--out", str(out), "--no-progress",
                   *(["--no-report"] if spec == "score" else [])])
        assert rc == 0
    rows = _rows(out)
    assert [r["problem"] for r in rows] == ["score", "make_score"]
    for r in rows:
        assert r["status"] == "ok" and r["nfe"] == 41 and r["dim"] == 4
        assert set(r["metrics"]) == {"sliced_w2", "mmd", "mean_err", "cov_err", "gauss_w2"}
        # exact score, 20 Heun steps: indistinguishable from exact samples at this size
        for m in ("sliced_w2", "mean_err", "gauss_w2"):
            assert r["ratio"][m] < 3, (m, r["ratio"][m])
    report = (out / "report.md").read_text()
    assert "## score · vp" in report and "## make_score · vp" in report


def test_failing_cells_are_recorded_and_the_run_goes_on(user_mod, tmp_path):
    name, mod_dir = user_mod
    out = tmp_path / "fail"
    rc = main(["--score", f"{name}:broken", "--sde", "vp", "--reference", str(mod_dir / "ref.npy"),
               "--methods", "em,ode_euler", "--nfe", "5", "--samples", "200", "--floor-repeats", "2",
               "--metrics", "mean_err", "--out", str(out), "--no-progress", "--no-report"])
    assert rc == 0
    rows = _rows(out)
    assert len(rows) == 2 and all(r["status"] == "error" for r in rows)
    assert all("non-finite" in r["error"] for r in rows)


@pytest.mark.parametrize("argv, message", [
    (["--problem", "ring9"], "unknown problem 'ring9'; valid choices: ring8"),
    (["--problem", "ring8", "--methods", "em,rk99"], "unknown method(s) 'rk99'; valid choices: pc"),
    (["--problem", "ring8", "--methods", "em", "--metrics", "fid"], "unknown metric(s) 'fid'"),
    (["--problem", "ring8", "--methods", "ald", "--nfe", "10"], "ald at --nfe 10: nfe=10 is below the minimum"),
    (["--problem", "ring8", "--methods", "pc,ode_heun", "--nfe", "2,50"], "ode_heun at --nfe 2"),
    (["--problem", "ring8", "--sde", "vpp"], "unknown sde 'vpp'; valid choices: vp, subvp, ve"),
    (["--problem", "ring8", "--methods", "em", "--device", "gpu0"], "unknown --device 'gpu0'"),
    pytest.param(["--problem", "ring8", "--methods", "em", "--device", "cuda"], "CUDA is not available",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA present")),
])
def test_bad_input_gives_a_clear_error_and_writes_nothing(tmp_path, capsys, argv, message):
    out = tmp_path / "bad"
    assert main([*argv, "--out", str(out), "--no-progress"]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_bad_user_input_gives_a_clear_error_and_writes_nothing(user_mod, tmp_path, capsys):
    name, mod_dir = user_mod
    out = tmp_path / "bad"
    common = ["--sde", "vp", "--methods", "em", "--nfe", "10", "--out", str(out), "--no-progress"]
    ref = str(mod_dir / "ref.npy")
    cases = [
        (["--score", f"{name}:score", "--shape", "3,2", "--reference", ref, "--samples", "100"],
         "has samples of shape (1, 2, 2), but --shape is (3, 2)"),
        (["--score", f"{name}:nope", "--reference", ref], "has no attribute 'nope'"),
        (["--score", f"{name}:score", "--reference", ref, "--samples", "1000"], "at least 2000"),
        (["--score", f"{name}:score", "--reference", str(mod_dir / "missing.npy")], "no such file"),
        (["--score", f"{name}:score"], "--score needs --reference"),
    ]
    for argv, message in cases:
        assert main([*argv, *common]) == 2
        assert message in capsys.readouterr().err, message
        assert not out.exists()


def test_default_budgets_leave_out_infeasible_cells_explicit_ones_fail():
    from scoresolve.bench.cli import build_parser, config_from_args

    cfg = config_from_args(build_parser().parse_args(["--problem", "ring8", "--out", "x"]))
    assert cfg.skip_infeasible and cfg.nfes[0] == 10 and cfg.methods == ("all",)
    cfg = config_from_args(build_parser().parse_args(["--problem", "ring8", "--nfe", "10", "--out", "x"]))
    assert not cfg.skip_infeasible


def test_per_method_budgets_tolerances_and_the_adaptive_nfe_cap(tmp_path):
    from scoresolve.bench.plan import plan_cells

    cfg = _cfg(tmp_path / "p", methods=("em", "ode_heun", "ode"), nfes=(10,), tols=(1e-2,),
               extra_nfe=((("order<=1",), (30,)), (("ode_heun",), (41,))), method_tols=((("ode",), (1e-3,)),))
    labels = {(c.method, c.budget.label) for g in plan_cells(cfg) for c in g.cells}
    assert labels == {("em", "nfe=10"), ("em", "nfe=30"), ("ode_heun", "nfe=10"), ("ode_heun", "nfe=41"),
                      ("ode", "tol=0.001")}
    with pytest.raises(ValueError, match="--tols-for names fixed-step"):
        plan_cells(_cfg(tmp_path / "p", method_tols=((("em",), (1e-3,)),)))
    # a runaway tolerance is stopped at --max-nfe and recorded; the run goes on
    out = tmp_path / "cap"
    run_bench(_cfg(out, methods=("ode", "em"), tols=(1e-6,), max_nfe=20))
    rows = {r["method"]: r for r in _rows(out)}
    assert rows["ode"]["status"] == "error" and "passed --max-nfe 20" in rows["ode"]["error"]
    assert rows["em"]["status"] == "ok"


def test_fixed_budgets_for_the_adaptive_method_that_has_a_budget_mode(tmp_path):
    """--extra-nfe gives ode_adaptive_ps nfe=N cells (sample(nfe=N): every sample within N) beside its
    tolerances; --nfe stays with the fixed-step methods; an adaptive method without a budget mode
    named there is an error, and an order<= selector passes it by."""
    from scoresolve.bench.plan import plan_cells

    cfg = _cfg(tmp_path / "p", methods=("em", "ode_adaptive_ps", "gotta_go_fast"), nfes=(10,), tols=(1e-2,),
               extra_nfe=((("ode_adaptive_ps",), (12,)), (("order<=2",), (30,))))
    labels = {(c.method, c.budget.label) for g in plan_cells(cfg) for c in g.cells}
    assert labels == {("em", "nfe=10"), ("em", "nfe=30"), ("ode_adaptive_ps", "tol=0.01"),
                      ("ode_adaptive_ps", "nfe=12"), ("gotta_go_fast", "tol=0.01")}
    with pytest.raises(ValueError, match="names adaptive method.*gotta_go_fast.*fixed budgets: ode_adaptive_ps"):
        plan_cells(_cfg(tmp_path / "p", methods=("gotta_go_fast",), extra_nfe=((("gotta_go_fast",), (12,)),)))
    out = tmp_path / "ps"
    run_bench(_cfg(out, methods=("ode_adaptive_ps",), nfes=(), tols=(),
                   extra_nfe=((("ode_adaptive_ps",), (9,)),)))
    (row,) = _rows(out)
    assert row["status"] == "ok" and row["budget_label"] == "nfe=9"
    assert 8 < row["nfe"] <= 9 and not row["over_budget"]  # counted, within the budget (the tol run takes ~25)


def test_fitted_grid_cells_fit_once_count_their_nfe_and_beat_the_default_grid(tmp_path, capsys):
    """--fit-grid: a 'fitted nfe=N' cell runs the method on a grid fitted once (cached in OUT/fits,
    reused by every seed and on resume), makes exactly N counted evaluations with the final
    denoising, and on the 8-ring at 8 NFE lands much nearer the truth than the default grid
    (measured: component W2 8.3x -> 2.1x floor at 400 samples, seeds 0-1, a pilot of 32)."""
    from scoresolve.bench.cli import build_parser, config_from_args
    from scoresolve.bench.plan import plan_cells

    cfg = config_from_args(build_parser().parse_args(
        ["--problem", "ring8", "--methods", "unipc,em", "--nfe", "8", "--fit-grid", "unipc:8,12",
         "--fit-pilot", "32", "--fit-evals", "30", "--out", "x"]))
    assert (cfg.fit_grid, cfg.fit_pilot, cfg.fit_evals) == (((("unipc",), (8, 12)),), 32, 30)
    labels = {(c.method, c.budget.label) for g in plan_cells(cfg) for c in g.cells}
    assert labels == {("unipc", "nfe=8"), ("unipc", "fitted nfe=8"), ("unipc", "fitted nfe=12"), ("em", "nfe=8")}
    with pytest.raises(ValueError, match="--fit-grid names em, which has no fixed deterministic grid to fit; "
                                         "valid choices: .*unipc"):
        plan_cells(_cfg(tmp_path / "p", methods=("em",), fit_grid=((("em",), (8,)),)))
    with pytest.raises(ValueError, match="unipc at --fit-grid 2: nfe=2 leaves unipc fewer than two steps"):
        plan_cells(_cfg(tmp_path / "p", methods=("unipc",), fit_grid=((("unipc",), (2,)),)))
    only = plan_cells(_cfg(tmp_path / "p", methods=("unipc",), nfes=(), fit_grid=((("unipc",), (8,)),)))
    assert [c.budget.label for g in only for c in g.cells] == ["fitted nfe=8"]  # fitted budgets alone suffice
    with pytest.raises(ValueError, match="--fit-pilot and --fit-evals must be >= 2"):
        plan_cells(_cfg(tmp_path / "p", methods=("unipc",), fit_grid=((("unipc",), (8,)),), fit_pilot=1))

    out = tmp_path / "fit"
    cfg = _cfg(out, methods=("unipc",), nfes=(8,), seeds=2, fit_grid=((("unipc",), (8,)),), fit_pilot=32,
               fit_evals=30)
    run_bench(cfg)
    rows = _rows(out)
    fitted = [r for r in rows if r["budget_kind"] == "fit"]
    plain = [r for r in rows if r["budget_kind"] == "nfe"]
    assert len(fitted) == len(plain) == 2 and all(r["status"] == "ok" for r in rows)
    assert all(r["nfe"] == 8 and not r["over_budget"] for r in rows)  # counted, denoising included
    (fit_file,) = (out / "fits").glob("*.json")
    assert fitted[0]["fit"] == fitted[1]["fit"]  # one fit for both seeds
    fit = fitted[0]["fit"]
    assert fit["nfe"] == 7 and fit["method"] == "unipc" and fit["objective"].startswith("auto:")
    assert fit["evaluations"] <= 2 * 30 + 2  # "auto": both objectives' searches, then both grids on fresh draws
    assert fit["pilot_nfe"] > 7 and fit["loss"] < fit["loss_start"] and fit["pilot"] == 32
    assert "data_mean" not in fit and fit["data_mean_norm"] < 0.5  # centred draws (the ring's mean is 0), noted by norm
    w2 = {r["budget_kind"]: sum(q["ratio"]["component_w2"] for q in rows if q["budget_kind"] == r["budget_kind"])
          for r in rows}
    assert w2["fit"] < 0.5 * w2["nfe"], w2
    before = (fit_file.read_bytes(), fit_file.stat().st_mtime_ns)
    (out / "results.jsonl").unlink()  # re-run every cell: the fit is read back, not made again
    run_bench(cfg)
    assert (fit_file.read_bytes(), fit_file.stat().st_mtime_ns) == before
    again = [r for r in _rows(out) if r["budget_kind"] == "fit"]
    assert [r["metrics"] for r in again] == [r["metrics"] for r in fitted]
    assert main(["report", str(out)]) == 0
    assert "| unipc (fitted grid) | fitted nfe=8 | 8 |" in (out / "report.md").read_text()


def test_scale_grid_cells_count_their_nfe_and_beat_the_default_grid(tmp_path):
    """--scale-grid: a 'scale-grid nfe=N' cell runs the method on scoresolve.scale_grid's grid (one
    evaluation of 256 prior draws at T, seeded apart from the cells), makes exactly N counted
    evaluations (the final denoising included when on), records the scale, and on the 8-ring at 15 NFE
    at p_eps (400 samples, seeds 0-1) lands nearer p_eps than the default grid (measured: log-density
    gap 4.0 / 4.2 -> 2.0 / 2.0 x floor, W2 1.48 / 1.32 -> 1.25 / 1.10)."""
    from scoresolve.bench.cli import build_parser, config_from_args
    from scoresolve.bench.plan import plan_cells

    cfg = config_from_args(build_parser().parse_args(
        ["--problem", "ring8", "--methods", "unipc,em", "--nfe", "10", "--scale-grid", "unipc:10", "--out", "x"]))
    assert cfg.scale_grid == ((("unipc",), (10,)),)
    labels = {(c.method, c.budget.label) for g in plan_cells(cfg) for c in g.cells}
    assert labels == {("unipc", "nfe=10"), ("unipc", "scale-grid nfe=10"), ("em", "nfe=10")}
    with pytest.raises(ValueError, match="--scale-grid names em, which has no fixed deterministic grid to fit; "
                                         "valid choices: .*unipc"):
        plan_cells(_cfg(tmp_path / "p", methods=("em",), scale_grid=((("em",), (8,)),)))
    with pytest.raises(ValueError, match="unipc at --scale-grid 2: nfe=2 leaves unipc fewer than two steps"):
        plan_cells(_cfg(tmp_path / "p", methods=("unipc",), scale_grid=((("unipc",), (2,)),)))
    only = plan_cells(_cfg(tmp_path / "p", methods=("unipc",), nfes=(), scale_grid=((("unipc",), (8,)),)))
    assert [c.budget.label for g in only for c in g.cells] == ["scale-grid nfe=8"]
    out = tmp_path / "denoised"
    run_bench(_cfg(out, methods=("unipc",), nfes=(), scale_grid=((("unipc",), (10,)),)))
    (row,) = _rows(out)
    assert row["nfe"] == 10 and row["fit"]["nfe"] == 9 and not row["over_budget"]  # the denoising counted

    out = tmp_path / "scale"
    run_bench(_cfg(out, methods=("unipc",), nfes=(15,), seeds=2, denoise=False, scale_grid=((("unipc",), (15,)),)))
    rows = _rows(out)
    scaled = [r for r in rows if r["budget_kind"] == "scale"]
    plain = [r for r in rows if r["budget_kind"] == "nfe"]
    assert len(scaled) == len(plain) == 2 and all(r["status"] == "ok" for r in rows)
    assert all(r["nfe"] == 15 and not r["over_budget"] for r in rows)
    assert scaled[0]["fit"] == scaled[1]["fit"]  # the same grid for both seeds
    fit = scaled[0]["fit"]
    assert fit["nfe"] == 15 and fit["pilot"] == 256 and fit["pilot_nfe"] == 1.0
    assert fit["first_sigma"] == pytest.approx(4 * fit["scale"]) and 1.0 < fit["scale"] < 2.5  # the ring: ~1.4
    assert fit["data_mean_norm"] < 0.5  # the ring's mean is 0
    total = {k: {m: sum(r["ratio"][m] for r in rows if r["budget_kind"] == k) for m in ("component_w2", "logp_gap")}
             for k in ("scale", "nfe")}
    assert total["scale"]["logp_gap"] < 0.75 * total["nfe"]["logp_gap"], total
    assert total["scale"]["component_w2"] < total["nfe"]["component_w2"], total
    assert main(["report", str(out)]) == 0
    assert "| unipc (scale grid) | scale-grid nfe=15 | 15 |" in (out / "report.md").read_text()


def test_a_method_with_sampler_options_is_a_method_of_its_own(tmp_path, capsys):
    """--methods unipc:solver_order=4: its own cells (key, label, fitted/scale grids via METHODS:BUDGETS
    split at the last ':'), run with those options: the samples are those of sample(..., solver_order=4)
    and not of the default order; a bad option is a one-line error naming it."""
    from scoresolve.bench.cli import build_parser, config_from_args
    from scoresolve.bench.plan import plan_cells, resolve_methods
    from scoresolve.registry import method_from_spec

    spec = "unipc:solver_order=4"
    cfg = config_from_args(build_parser().parse_args(
        ["--problem", "ring8", "--methods", f"unipc,{spec}", "--nfe", "10", "--scale-grid", f"{spec},unipc:12",
         "--out", "x"]))
    assert cfg.scale_grid == (((spec, "unipc"), (12,)),)
    labels = {(c.method, c.budget.label) for g in plan_cells(cfg) for c in g.cells}
    assert labels == {(m, b) for m in ("unipc", spec) for b in ("nfe=10", "scale-grid nfe=12")}
    assert method_from_spec(spec) == ss.UniPC(solver_order=4) and method_from_spec("unipc") is ss.SAMPLERS["unipc"]
    assert resolve_methods(["all", spec, "unipc"]) == (*ss.SAMPLERS, spec)  # every registered one, then the spec
    out = tmp_path / "o4"
    run_bench(_cfg(out, methods=(spec, "unipc"), nfes=(10,), save_samples=400))
    rows = {r["method"]: r for r in _rows(out)}
    assert rows[spec]["status"] == rows["unipc"]["status"] == "ok" and rows[spec]["nfe"] == 10
    got = {m: torch.from_numpy(np.load(out / r["samples_file"])) for m, r in rows.items()}
    seed0 = torch.Generator().manual_seed(0)  # the runner's first batch of seed 0
    ref = ss.sample(analytic_problem("ring8").score_for(ss.VPSDE()), ss.VPSDE(), (400, 2), "unipc", nfe=10,
                    solver_order=4, generator=seed0)
    torch.testing.assert_close(got[spec], ref.samples, rtol=0, atol=0)
    assert not torch.equal(got[spec], got["unipc"])
    # a fitted and a scale-grid cell of the spec record it, so the saved fit rebuilds its sampler
    out = tmp_path / "o4fit"
    run_bench(_cfg(out, methods=(spec,), nfes=(), fit_grid=(((spec,), (8,)),), scale_grid=(((spec,), (8,)),),
                   fit_pilot=16, fit_evals=4))
    recs = {r["budget_kind"]: r for r in _rows(out)}
    assert recs["fit"]["fit"]["method"] == recs["scale"]["fit"]["method"] == spec
    (fit_file,) = (out / "fits").glob("*.json")
    assert method_from_spec(ss.FittedGrid.load(fit_file).method) == ss.UniPC(solver_order=4)
    for bad, message in (("unipc:bogus=1", "--methods 'unipc:bogus=1': unknown option(s) 'bogus' for UniPC"),
                         ("unipc:solver_order=9", "solver_order must be one of 1, 2, 3, 4; got 9")):
        assert main(["--problem", "ring8", "--methods", bad, "--out", str(tmp_path / "bad"), "--no-progress"]) == 2
        assert message in capsys.readouterr().err


def test_resume_with_different_settings_is_refused(tmp_path, capsys):
    out = tmp_path / "r"
    run_bench(_cfg(out))
    assert main(["--problem", "ring8", "--methods", "em", "--nfe", "10", "--samples", "400",
                 "--no-denoise", "--out", str(out), "--no-progress"]) == 2
    assert "denoise=True (now False)" in capsys.readouterr().err


def test_report_tables_and_plots(tmp_path, capsys):
    out = tmp_path / "rep"
    run_bench(_cfg(out, methods=("em", "ode_euler"), nfes=(10, 40), metrics=None))
    bad = {**_rows(out)[0], "key": "ring8|vp|em|nfe=99|seed=0|n=400", "budget": 99, "budget_label": "nfe=99",
           "status": "error", "error": "FloatingPointError: boom", "metrics": {}, "ratio": {}}
    ResultStore(out / "results.jsonl").append(bad)
    assert main(["report", str(out)]) == 0
    text = (out / "report.md").read_text()
    for col in ("NFE to ≤2× component_w2", "NFE to ≤2× logp_gap", "overhead (median)", "samples/s",
                "**Best method within each NFE budget**", "| budget | component_w2 |", "floor mean"):
        assert col in text, col
    assert "Failed cells" in text and "FloatingPointError: boom" in text
    assert (out / "plots" / "ring8_vp_metrics.png").stat().st_size > 10_000
    assert (out / "plots" / "ring8_vp_samples.png").stat().st_size > 10_000
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "no results.jsonl" in capsys.readouterr().err


def test_nfe_to_reach_and_store_robustness(tmp_path):
    aggs = [{"nfe": n, "ratio": {"w": r}} for n, r in [(10, 9.0), (20, 1.5), (50, 2.5), (100, 1.2), (200, 1.1)]]
    assert nfe_to_reach(aggs, "w") == 100  # must *stay* within 2× at every larger budget
    assert nfe_to_reach(aggs[:2], "w") == 20 and nfe_to_reach(aggs[:1], "w") is None
    store = ResultStore(tmp_path / "x.jsonl")
    store.append({"key": "a", "v": float("nan")})
    store.append({"key": "b", "status": "error"})
    with open(store.path, "a") as f:
        f.write('{"key": "c", "trunc')  # a line torn by hand
    with pytest.warns(UserWarning, match="unreadable line"):
        assert [r["key"] for r in store.rows()] == ["a", "b"]
    store.append({"key": "b", "status": "ok"}, replace=True)
    with pytest.warns(UserWarning):
        rows = store.rows()
    assert rows[0]["v"] is None and rows[-1] == {"key": "b", "status": "ok"}


def test_overhead_is_timed_inside_the_run_and_never_below_one(tmp_path):
    """Fixed-step and per-sample adaptive methods alike: overhead = wall / time inside the score."""
    from scoresolve.bench.report import aggregate, write_report

    out = tmp_path / "o"
    run_bench(_cfg(out, methods=("ddim_eta", "dpmpp_2m", "ode_adaptive_ps"), nfes=(10,),
                   tols=(0.02,), metrics=("component_w2",)))
    rows = _rows(out)
    assert {r["method"] for r in rows} == {"ddim_eta", "dpmpp_2m", "ode_adaptive_ps"}
    for r in rows:
        assert r["status"] == "ok" and r["overhead"] >= 1 and 0 < r["score_s"] <= r["wall_s"]
    assert all(a["overhead"] >= 1 for a in aggregate(rows))
    write_report(out)


def test_committed_bench_tables_have_no_overhead_below_one():
    from scoresolve.bench.report import aggregate

    root = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
    for f in sorted(root.glob("*/results.jsonl")):
        for a in aggregate(ResultStore(f).rows()):
            assert a["overhead"] is None or a["overhead"] >= 1, (f, a["method"], a["budget_label"])


def test_the_demo_default_methods_are_valid_specs():
    """The README's main command runs DEFAULT_METHODS: every entry a registered method whose sampler options
    are valid (the rest are sample()'s nfe / grid / steps and the demo's fit)."""
    from scoresolve.demo import DEFAULT_METHODS
    from scoresolve.registry import SAMPLERS, parse_spec, with_options

    specs = [parse_spec(m) for m in DEFAULT_METHODS.split(",")]
    assert [n for n, _ in specs if n not in SAMPLERS] == []
    for name, opts in specs:
        with_options(SAMPLERS[name], {k: v for k, v in opts.items() if k not in ("nfe", "grid", "steps", "fit")})
    assert ("unipc", {"nfe": 15, "grid": "scale", "solver_order": 4}) in specs


def test_demo_shows_a_fast_sampler_beside_the_classical_ones(tmp_path, capsys):
    from scoresolve.demo import main

    out = tmp_path / "d.png"
    assert main(["--samples", "300", "--steps", "20", "--methods",
                 "em,ode_adaptive_ps,unipc:nfe=12,unipc:fit=8,unipc:fit=9;refine=1",
                 "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert out.stat().st_size > 0 and "ode_adaptive_ps" in text and "unipc (nfe=12)" in text
    row = next(line for line in text.splitlines() if "unipc (nfe=12)" in line).split()
    assert row[2] == "12"  # counted NFE of the fixed budget
    row = next(line for line in text.splitlines() if "unipc (fitted grid, nfe=8)" in line).split()
    assert row[4] == "8" and "(the fit, once per score:" in text  # counted with the denoising; its cost shown
    # the grid is fitted for the method with its options: refine's evaluation left out of the steps, within 9
    row = next(line for line in text.splitlines() if "unipc (fitted grid, nfe=9, refine=1)" in line).split()
    assert float(row[5]) <= 9
    with pytest.raises(SystemExit):
        main(["--methods", "ode_adaptive_ps:fit=10", "--out", str(out), "--no-progress"])
    assert "ode_adaptive_ps' has no fixed deterministic grid to fit; valid choices: " in capsys.readouterr().err
