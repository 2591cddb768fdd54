"""Scale-out: merged shards equal a single-process run bit for bit; resume after a kill."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import scoresolve as ss
from scoresolve.distributed import merge_chunks, sample_seeds, sample_to_dir

JOB = str(Path(__file__).parent / "dist" / "sample_job.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}


def torchrun(nproc: int, *args, timeout=180, **kw):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", JOB,
           *map(str, args)]
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout, **kw)


def single_process(out, num, chunk, method="em"):
    """The job script's work in this process (no process group; one thread, as under torchrun)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("sample_job", JOB)
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    job.run_job(str(out), num, chunk, method)


@pytest.mark.parametrize("nproc", [2, 3])
@pytest.mark.parametrize("method,file,key", [("ode", "samples.pt", "samples"), ("likelihood", "likelihood.pt", "logp")])
def test_two_and_three_gloo_ranks_equal_one_process_bit_for_bit(tmp_path, method, file, key, nproc):
    single_process(tmp_path / "one", 30, 6, method)
    one = torch.load(tmp_path / "one" / file)
    r = torchrun(nproc, tmp_path / "many", 30, 6, method)
    assert r.returncode == 0, r.stderr[-2000:]
    assert torch.equal(torch.load(tmp_path / "many" / file)[key], one[key])
    assert one[key].shape[0] == 30 and torch.isfinite(one[key]).all()


def test_killed_rank_redoes_only_its_unfinished_chunk(tmp_path):
    out = tmp_path / "job"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", JOB,
           str(out), "40", "4", "em", "0.01"]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.glob("chunk-*.pt"))) < 3:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = {p.name: p.stat().st_mtime_ns for p in out.glob("chunk-*.pt")}
    assert 3 <= len(done) < 10, done
    r = torchrun(2, out, 40, 4)
    assert r.returncode == 0, r.stderr[-2000:]
    after = {p.name: p.stat().st_mtime_ns for p in out.glob("chunk-*.pt")}
    assert len(after) == 10 and all(after[k] == v for k, v in done.items())  # finished chunks untouched
    single_process(tmp_path / "one", 40, 4)
    one = torch.load(tmp_path / "one" / "samples.pt")["samples"]
    assert torch.equal(torch.load(out / "samples.pt")["samples"], one)


def test_in_process_sharding_errors(tmp_path):
    sde = ss.VPSDE()
    score = ss.targets.GaussianMixture.ring().score_fn(sde)
    sample_to_dir(score, sde, (2,), 10, tmp_path / "a", method="em", seed=1, chunk=5, steps=5)
    with pytest.raises(ValueError, match="another job.*seed"):
        sample_to_dir(score, sde, (2,), 10, tmp_path / "a", method="em", seed=2, chunk=5, steps=5)
    with pytest.raises(ValueError, match="num must be >= 1"):
        sample_to_dir(score, sde, (2,), 0, tmp_path / "b", method="em")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "chunk-000000000-000000005.pt").write_bytes(b"x")
    with pytest.raises(ValueError, match="without a manifest"):
        sample_to_dir(score, sde, (2,), 10, tmp_path / "c", method="em", chunk=5, steps=5)
    (tmp_path / "a" / "chunk-000000005-000000010.pt").unlink()
    with pytest.raises(FileNotFoundError, match=r"chunk \[5, 10\) is missing"):
        merge_chunks(tmp_path / "a", 10, 5)


def test_world_larger_than_the_samples_is_refused_and_idle_ranks_are_reported(tmp_path, monkeypatch, capsys):
    import scoresolve.distributed as d

    monkeypatch.setattr(d, "dist_info", lambda: (0, 3))
    sde = ss.VPSDE()
    score = ss.targets.GaussianMixture.ring().score_fn(sde)
    with pytest.raises(ValueError, match=r"world size 3 is larger than the number of samples \(2\)"):
        sample_to_dir(score, sde, (2,), 2, tmp_path / "a", chunk=1)
    assert not (tmp_path / "a").exists()  # refused before anything is written
    done = d.run_chunks(lambda a, b: {"x": torch.zeros(b - a)}, 4, tmp_path / "b", chunk=2, config={})
    assert done == [(0, 2)] and "1 of 3 ranks have no work" in capsys.readouterr().err


def test_seeded_uniforms_are_uniform_and_per_sample():
    from scoresolve.distributed import derive_seeds, seeded_uniform

    seeds = sample_seeds(0, range(2000))
    u = seeded_uniform(seeds, 8)
    assert u.dtype == torch.float64 and u.shape == (2000, 8) and 0 < float(u.min()) and float(u.max()) < 1
    assert abs(float(u.mean()) - 0.5) < 0.01 and abs(float(u.var()) - 1 / 12) < 0.005
    assert torch.equal(seeded_uniform(seeds[5:9], 8), u[5:9])  # the same rows in any batch
    a, b = derive_seeds(seeds, 0), derive_seeds(seeds, 1)
    assert torch.equal(a[3:5], derive_seeds(seeds[3:5], 0)) and not (a == b).any() and not (a == seeds).any()


def test_sample_seeds_are_a_function_of_base_and_index():
    a = sample_seeds(3, range(10))
    assert torch.equal(a[4:6], sample_seeds(3, [4, 5]))
    assert not torch.equal(a, sample_seeds(4, range(10)))
    assert len(set(a.tolist())) == 10


def test_sample_cli_shards_a_trained_run_across_two_ranks(tmp_path):
    train_cli = pytest.importorskip("scoresolve.train.cli")
    rund = tmp_path / "run"
    assert train_cli.train_main(["--data", "ring8", "--out", str(rund), "--steps", "10", "--width", "16",
                                 "--depth", "1", "--no-progress", "--checkpoint-every", "10"]) == 0
    args = ["sample", "--run-dir", str(rund), "--method", "em", "--steps", "5", "--samples", "12", "--chunk", "4"]
    one = subprocess.run([sys.executable, "-m", "scoresolve", *args, "--shard-dir", str(tmp_path / "a")],
                         env=ENV, capture_output=True, text=True, timeout=120)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                          "-m", "scoresolve", *args, "--shard-dir", str(tmp_path / "b")],
                         env=ENV, capture_output=True, text=True, timeout=180)
    assert two.returncode == 0, two.stderr[-2000:]
    a, b = (torch.load(tmp_path / d / "samples.pt")["samples"] for d in "ab")
    assert a.shape == (12, 2) and torch.equal(a, b)


# ---------------------------------------------------------------- likelihood and bench commands

CLI_JOB = str(Path(__file__).parent / "dist" / "cli_job.py")
NLL_ARGS = ["--data", "digits", "--limit", "12", "--batch-size", "4", "--trace", "hutchinson", "--probes", "2",
            "--repeats", "2", "--rtol", "1e-2", "--atol", "1e-2"]


def _run_torchrun(nproc: int, *args, timeout=120):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *args]
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A 5-step digits U-Net (width 8): untrained, but a real run directory the CLI can load."""
    train_cli = pytest.importorskip("scoresolve.train.cli")
    rund = tmp_path_factory.mktemp("digits") / "run"
    assert train_cli.train_main(["--data", "digits", "--out", str(rund), "--steps", "5", "--width", "8",
                                 "--no-progress", "--checkpoint-every", "5"]) == 0
    return rund


@pytest.fixture(scope="module")
def one_process_nll(digits_run):
    """The likelihood command in this process, no process group, nothing written but the JSON."""
    import json

    from scoresolve.cli import main

    out = digits_run.parent / "one.json"
    assert main(["likelihood", "--run", str(digits_run), *NLL_ARGS, "--out", str(out)]) == 0
    assert not Path(f"{out}.shards").exists()
    return json.loads(out.read_text())


def _same_points(a: dict, b: dict) -> None:
    assert a["logp"] == b["logp"] and a["nll_nats"] == b["nll_nats"] and a["n"] == b["n"] == 12
    assert [{**s, "wall_time": 0} for s in a["solves"]] == [{**s, "wall_time": 0} for s in b["solves"]]


@pytest.mark.parametrize("nproc", [2, 3])
def test_likelihood_command_under_torchrun_equals_one_process_bit_for_bit(digits_run, one_process_nll, tmp_path,
                                                                          nproc):
    """3 ranks: `-m scoresolve likelihood` as a user types it; 2 ranks: the same command called from
    a program that initialised its own Gloo group (which the command must leave alone)."""
    import json

    from scoresolve.cli import main

    out = tmp_path / "nll.json"
    args = ["likelihood", "--run-dir", str(digits_run), *NLL_ARGS, "--out", str(out)]
    r = _run_torchrun(nproc, "-m", "scoresolve", *args) if nproc == 3 else _run_torchrun(nproc, CLI_JOB, *args)
    assert r.returncode == 0, r.stderr[-2000:]
    rep = json.loads(out.read_text())
    _same_points(rep, one_process_nll)
    assert rep["world_size"] == nproc and one_process_nll["levels"] == 17 and one_process_nll["repeats"] == 2
    shards = Path(f"{out}.shards")
    before = {p.name: p.stat().st_mtime_ns for p in shards.glob("chunk-*.pt")}
    assert len(before) == 3 and (shards / "manifest.json").exists()
    # a re-run (here in one process, on the same shards) recomputes nothing and gives the same JSON
    out.unlink()
    assert main([*args, "--shard-dir", str(shards)]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in shards.glob("chunk-*.pt")} == before
    _same_points(json.loads(out.read_text()), one_process_nll)


def test_likelihood_command_refuses_other_jobs_shards_and_too_many_ranks(digits_run, tmp_path, monkeypatch, capsys):
    import scoresolve.distributed as d
    from scoresolve.cli import main

    base = ["likelihood", "--run", str(digits_run), "--data", "digits", "--limit", "4", "--batch-size", "2",
            "--rtol", "1e-2", "--atol", "1e-2", "--trace", "hutchinson", "--out", str(tmp_path / "nll.json")]
    shards = tmp_path / "shards"
    assert main([*base, "--shard-dir", str(shards)]) == 0
    assert main([*base, "--shard-dir", str(shards), "--seed", "1"]) == 2  # seeds differ from the manifest
    assert "another job (manifest differs in: seed)" in capsys.readouterr().err
    assert main([*base, "--shard-dir", str(shards), "--limit", "3"]) == 2  # other points
    assert "manifest differs in: data_sum, n" in capsys.readouterr().err
    sde = ss.VPSDE()
    sample_to_dir(ss.targets.GaussianMixture.ring().score_fn(sde), sde, (2,), 4, tmp_path / "samples", method="em",
                  chunk=2, steps=3)
    assert main([*base, "--shard-dir", str(tmp_path / "samples")]) == 2  # a sampling job's directory
    assert "holds chunks of another job" in capsys.readouterr().err
    monkeypatch.setattr(d, "dist_info", lambda: (0, 5))
    assert main([*base, "--shard-dir", str(tmp_path / "five")]) == 2
    assert "world size 5 is larger than the number of points (4)" in capsys.readouterr().err


BENCH_ARGS = ["bench", "--problem", "ring8", "--sde", "vp", "--methods", "em,ode_heun,ode", "--nfe", "10,20",
              "--tols", "1e-2", "--samples", "200", "--floor-repeats", "2", "--metrics",
              "component_w2,mode_tv,logp_gap", "--no-progress"]
TIMING = {"time", "run_id", "wall_s", "wall_per_batch_s", "score_s", "bare_s", "overhead", "samples_per_s",
          "peak_mem_mb", "base_mem_mb", "threads"}


def _bench_rows(out: Path) -> list[dict]:
    from scoresolve.bench import ResultStore

    return [{k: v for k, v in r.items() if k not in TIMING} for r in ResultStore(out / "results.jsonl").rows()]


def test_bench_under_two_ranks_gives_the_rows_of_one_process(tmp_path):
    from scoresolve.cli import main

    assert main([*BENCH_ARGS, "--out", str(tmp_path / "one")]) == 0
    r = _run_torchrun(2, "-m", "scoresolve", *BENCH_ARGS, "--out", str(tmp_path / "two"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "5 cells run on 2 ranks" in r.stderr
    one, two = _bench_rows(tmp_path / "one"), _bench_rows(tmp_path / "two")
    assert len(one) == 5 and all(row["status"] == "ok" for row in one)
    assert two == one  # same cells, same order, same numbers (timings apart)
    assert (tmp_path / "two" / "report.md").exists() and not (tmp_path / "two" / "ranks").exists()
    assert (tmp_path / "one" / "floors.json").read_text() == (tmp_path / "two" / "floors.json").read_text()


def test_bench_resume_takes_the_rows_of_killed_ranks(tmp_path):
    """Rows a killed distributed run left in its per-rank files count as done on the re-run."""
    from scoresolve.bench import ResultStore
    from scoresolve.cli import main

    assert main([*BENCH_ARGS, "--no-report", "--out", str(tmp_path / "one")]) == 0
    rows = ResultStore(tmp_path / "one" / "results.jsonl").rows()
    out = tmp_path / "killed"
    ResultStore(out / "ranks" / "results.rank1.jsonl").append(rows[3])
    ResultStore(out / "ranks" / "results.rank0.jsonl").append(rows[0])
    assert main([*BENCH_ARGS, "--no-report", "--out", str(out)]) == 0
    resumed = ResultStore(out / "results.jsonl").rows()
    assert [r["key"] for r in resumed] == [rows[i]["key"] for i in (0, 3, 1, 2, 4)]
    assert resumed[:2] == [rows[0], rows[3]] and not (out / "ranks").exists()
    assert _bench_rows(out)[2:] == [_bench_rows(tmp_path / "one")[i] for i in (1, 2, 4)]


def test_bench_refuses_more_ranks_than_cells(tmp_path, monkeypatch, capsys):
    import scoresolve.bench.runner as runner
    from scoresolve.cli import main

    monkeypatch.setattr(runner, "dist_info", lambda: (0, 6))
    assert main([*BENCH_ARGS, "--out", str(tmp_path / "b")]) == 2
    assert "world size 6 is larger than the number of cells (5)" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
