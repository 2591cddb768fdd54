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
    return subprocess.run([sys.executable, JOB, str(out), str(num), str(chunk), method], env=ENV,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("method,file,key", [("ode", "samples.pt", "samples"), ("likelihood", "likelihood.pt", "logp")])
def test_two_and_three_gloo_ranks_equal_one_process_bit_for_bit(tmp_path, method, file, key):
    ref = single_process(tmp_path / "one", 30, 6, method)
    assert ref.returncode == 0, ref.stderr
    one = torch.load(tmp_path / "one" / file)
    for n in (2, 3):
        r = torchrun(n, tmp_path / f"r{n}", 30, 6, method)
        assert r.returncode == 0, r.stderr[-2000:]
        merged = torch.load(tmp_path / f"r{n}" / file)
        assert torch.equal(merged[key], one[key])
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
    ref = single_process(tmp_path / "one", 40, 4)
    assert ref.returncode == 0, ref.stderr
    assert torch.equal(torch.load(out / "samples.pt")["samples"], torch.load(tmp_path / "one" / "samples.pt")["samples"])


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


def test_world_larger_than_chunks_is_refused(tmp_path, monkeypatch):
    import scoresolve.distributed as d

    monkeypatch.setattr(d, "dist_info", lambda: (0, 3))
    sde = ss.VPSDE()
    with pytest.raises(ValueError, match="world size 3 is larger than the number of chunks"):
        sample_to_dir(ss.targets.GaussianMixture.ring().score_fn(sde), sde, (2,), 4, tmp_path, chunk=2)


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
