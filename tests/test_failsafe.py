"""Fail safe: every bad input a one-line named error, no work or data lost, adaptive solves bounded.

One test per defect of issue 16 (float16 ODE/likelihood, invalid train settings written to disk,
corrupt checkpoints, bench overwriting a shard job's manifest, likelihood losing its work on a
failed write), the CLI options parametrised, the minor API items, and a fuzz test of sample().
"""

import contextlib
import io
import json
import math
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import scoresolve as ss
from scoresolve import train
from scoresolve.bench import ResultStore
from scoresolve.cli import main
from scoresolve.distributed import sample_to_dir
from scoresolve.ode import StepLimitError
from scoresolve.targets import GaussianMixture

RING = GaussianMixture.ring()


def _call(argv: list[str]) -> tuple[int, str]:
    """``scoresolve ARGV`` in this process: (exit status, stderr)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse errors
            code = e.code
    return code, err.getvalue()


def _tree(*roots: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for r in roots for p in sorted(r.rglob("*"))}


@pytest.fixture(scope="module")
def ring_run(tmp_path_factory) -> Path:
    """A 10-step ring8 run (checkpoints at 5 and 10): untrained, but real."""
    run = tmp_path_factory.mktemp("ring") / "run"
    code, err = _call(["train", "--data", "ring8", "--out", str(run), "--steps", "10", "--width", "16",
                       "--depth", "1", "--no-progress", "--checkpoint-every", "5"])
    assert code == 0, err
    return run


# ---------------------------------------------------------------- CLI: every option, one line, nothing written

FILE = "{tmp}/afile"  # an existing regular file
CLI_CASES = {
    "train": ([], [
        ("--steps", "-5"), ("--width", "0"), ("--depth", "0"), ("--eps", "0"), ("--eps", "1.5"),
        ("--sigma-max", "1", "--sigma-min", "5", "--sde", "ve"), ("--sigma-max", "inf", "--sde", "ve"),
        ("--lr", "nan"), ("--lr", "-1"), ("--batch-size", "0"), ("--ema", "2"), ("--checkpoint-every", "0"),
        ("--warmup", "-1"), ("--grad-clip", "0"), ("--n-levels", "1", "--loss", "ncsn", "--sde", "ve"),
        ("--n-steps", "0", "--loss", "ddpm"), ("--seed", "-1"), ("--threads", "0"), ("--beta-min", "0"),
        ("--beta-max", "0.05"), ("--net", "unet"), ("--sde", "nope"), ("--steps", "abc"), ("--data", "nope"),
        ("--out", FILE), ("--out", FILE + "/sub"),
    ]),
    "sample": ([], [
        ("--n", "0"), ("--n", "-3"), ("--steps", "0"), ("--seed", "-1"), ("--chunk", "0"), ("--threads", "0"),
        ("--method", "nope"), ("--out", "{tmp}"), ("--out", FILE + "/x.png"), ("--shard-dir", FILE),
        ("--save", FILE + "/x.pt"), ("--run", "{tmp}/nothing"),
    ]),
    "likelihood": ([], [
        ("--probes", "0", "--trace", "hutchinson"), ("--probes", "2"), ("--limit", "0"), ("--batch-size", "0"),
        ("--repeats", "0"), ("--max-steps", "0"), ("--levels", "1"), ("--levels", "-1"), ("--rtol", "0"),
        ("--atol", "nan"), ("--eps", "0"), ("--eps", "2"), ("--seed", "-1"), ("--device", "nope"),
        ("--trace", "nope"), ("--data", "nope"), ("--dtype", "int8"), ("--method", "rk4"), ("--out", "{tmp}"),
        ("--out", FILE + "/nll.json"), ("--shard-dir", FILE), ("--run", "{tmp}/nothing"),
    ]),
    "bench": ([], [
        ("--samples", "1"), ("--seeds", "0"), ("--nfe", "0"), ("--tols", "2"), ("--tols", "nan"), ("--max-nfe", "0"),
        ("--batch-size", "0"), ("--floor-repeats", "1"), ("--mmd-samples", "5"), ("--threads", "0"), ("--eps", "0"),
        ("--eps", "nan"), ("--grid", "nope"), ("--methods", "nope"), ("--problem", "nope"), ("--metrics", "nope"),
        ("--sde", "nope"), ("--device", "nope"), ("--save-samples", "-1"), ("--bare-max-calls", "0"),
        ("--sde-opt", "sigma_max=-1", "--sde", "ve"), ("--out", FILE), ("--out", FILE + "/sub"),
    ]),
}
CASES = [(cmd, case) for cmd, (_, cases) in CLI_CASES.items() for case in cases]


def _base(cmd: str, run: Path, tmp: Path) -> list[str]:
    out = str(tmp / "new" / "out")
    return {
        "train": ["train", "--data", "ring8", "--out", out, "--steps", "1", "--no-progress"],
        "sample": ["sample", "--run", str(run), "--method", "em", "--steps", "2", "--n", "4", "--out", out + ".png"],
        "likelihood": ["likelihood", "--run", str(run), "--data", "ring8", "--limit", "4", "--rtol", "0.1",
                       "--atol", "0.1", "--out", out + ".json"],
        "bench": ["bench", "--problem", "ring8", "--methods", "em", "--nfe", "5", "--samples", "50",
                  "--floor-repeats", "2", "--no-progress", "--out", out],
    }[cmd]


@pytest.mark.parametrize("cmd,case", CASES, ids=[f"{c}{' '.join(a)}" for c, a in CASES])
def test_invalid_option_exits_2_with_one_line_naming_it_and_writes_nothing(ring_run, tmp_path, cmd, case):
    (tmp_path / "afile").write_text("x")
    case = [a.format(tmp=tmp_path) for a in case]
    before = _tree(tmp_path, ring_run)
    code, err = _call(_base(cmd, ring_run, tmp_path) + case)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    named = case[0].lstrip("-")
    assert named in lines[0] or (named == "run" and "nothing" in lines[0]) or case[1] in lines[0], lines[0]
    assert "Traceback" not in err
    assert _tree(tmp_path, ring_run) == before  # no file written, created or touched


# ---------------------------------------------------------------- defect 1: float16

@pytest.mark.parametrize("sde", [ss.VPSDE(), ss.VESDE(sigma_max=20.0)], ids=["vp", "ve"])
def test_defect1_float16_ode_integrates_in_float32_and_never_blames_the_score(sde):
    for seed in range(3):
        res = ss.sample(RING.score_fn(sde), sde, (8, 2), "ode", dtype=torch.float16,
                        generator=torch.Generator().manual_seed(seed))
        assert res.samples.dtype == torch.float16 and bool(res.samples.isfinite().all())


def test_defect1_float16_likelihood_matches_float32():
    sde = ss.VPSDE()
    x = RING.sample(8, generator=torch.Generator().manual_seed(0))
    half = ss.likelihood(RING.score_fn(sde), sde, x.half(), rtol=1e-3, atol=1e-3)
    full = ss.likelihood(RING.score_fn(sde), sde, x.half().float(), rtol=1e-3, atol=1e-3)
    assert half.logp.dtype == torch.float16 and bool(half.logp.isfinite().all())
    assert float((half.logp.float() - full.logp).abs().max()) < 0.05


# ---------------------------------------------------------------- defect 2: invalid settings never reach disk

def test_defect2_invalid_train_settings_never_reach_config_json(ring_run, tmp_path):
    for flag, bad in [("--lr", "-1"), ("--batch-size", "0"), ("--ema", "2"), ("--checkpoint-every", "0")]:
        fresh = tmp_path / f"fresh{flag}"
        code, err = _call(["train", "--data", "moons", "--out", str(fresh), "--steps", "2", flag, bad])
        assert code == 2 and flag in err and not fresh.exists()
    run = tmp_path / "run"
    shutil.copytree(ring_run, run)
    config = (run / "config.json").read_bytes()
    code, err = _call(["train", "--out", str(run), "--steps", "12", "--ema", "2", "--no-progress"])
    assert code == 2 and "--ema" in err and (run / "config.json").read_bytes() == config
    code, err = _call(["train", "--out", str(run), "--steps", "12", "--no-progress"])  # the run is intact
    assert code == 0, err
    (run / "config.json").write_text('{"settings": {"data": "ring8", "lr"')  # torn by hand
    before = _tree(run)
    code, err = _call(["train", "--out", str(run), "--steps", "14", "--no-progress"])
    assert code == 2 and "config.json is unreadable" in err and _tree(run) == before


# ---------------------------------------------------------------- defect 3: corrupt checkpoints

CORRUPTIONS = {"truncated": lambda b: b[: len(b) // 2], "empty": lambda b: b"",
               "garbage": lambda b: b"\x80not a zip" * 50}


def _tiny_fit(ck: Path, steps: int, **kw) -> train.TrainState:
    torch.manual_seed(0)
    model = train.ScoreMLP(2, hidden=8, depth=1, embed_dim=8)
    data = torch.randn(64, 2, generator=torch.Generator().manual_seed(1))
    return train.fit(model, train.dsm_loss("vp"), data, steps=steps, batch_size=16, checkpoint=ck,
                     checkpoint_every=5, progress=False, **kw)


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_defect3_corrupt_latest_checkpoint_is_named_and_training_resumes_from_the_previous(tmp_path, kind):
    ck = tmp_path / "ckpt.pt"
    _tiny_fit(ck, 10)
    assert train.load_checkpoint(ck)["step"] == 10 and train.load_checkpoint(tmp_path / "ckpt.prev.pt")["step"] == 5
    ck.write_bytes(CORRUPTIONS[kind](ck.read_bytes()))
    with pytest.raises(train.CorruptCheckpointError, match=str(ck)):
        train.load_checkpoint(ck)
    with pytest.warns(UserWarning, match=f"{ck}.*previous checkpoint .*ckpt.prev.pt"):
        resumed = _tiny_fit(ck, 15)
    assert resumed.resumed_from == 5 and resumed.step == 15
    assert (tmp_path / "ckpt.pt.corrupt").exists() and train.load_checkpoint(ck)["step"] == 15
    full = _tiny_fit(tmp_path / "full.pt", 15)  # resuming from step 5 loses nothing but the interval
    for p, q in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_defect3_load_run_and_the_commands_name_the_corrupt_file(ring_run, tmp_path, kind):
    run = tmp_path / "run"
    shutil.copytree(ring_run, run)
    ck = run / "ckpt.pt"
    ck.write_bytes(CORRUPTIONS[kind](ck.read_bytes()))
    with pytest.warns(UserWarning, match="previous checkpoint"):
        assert train.load_run(run).step == 5
    (run / "ckpt.prev.pt").write_bytes(b"")
    with pytest.raises(ValueError, match=f"{ck}.*previous one is unreadable too.*ckpt.prev.pt.*empty"):
        train.load_run(run)
    nll = str(tmp_path / "o.json")
    for cmd in (["sample", "--run", str(run), "--n", "4", "--method", "em", "--steps", "2"],
                ["likelihood", "--run", str(run), "--data", "ring8", "--limit", "2", "--out", nll]):
        code, err = _call(cmd)
        assert code == 2 and str(ck) in err and len(err.strip().splitlines()) == 1, err


def test_checkpoint_that_does_not_read_back_is_not_installed(tmp_path, monkeypatch):
    from scoresolve.train import checkpoint as cp

    ck = tmp_path / "ckpt.pt"
    cp.save_checkpoint(ck, {"step": 1})
    real = cp._read

    def fail(path, map_location):
        raise cp.CorruptCheckpointError(f"checkpoint {path} is corrupt or truncated (simulated)")

    monkeypatch.setattr(cp, "_read", fail)
    with pytest.raises(OSError, match="did not read back"):
        cp.save_checkpoint(ck, {"step": 2})
    monkeypatch.setattr(cp, "_read", real)
    assert cp.load_checkpoint(ck)["step"] == 1 and sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]


# ---------------------------------------------------------------- defect 4: foreign manifests

def test_defect4_bench_refuses_a_sample_shard_directory_and_leaves_its_manifest(tmp_path):
    sde = ss.VPSDE()
    shards = tmp_path / "shards"
    sample_to_dir(RING.score_fn(sde), sde, (2,), 4, shards, method="em", chunk=2, steps=3)
    manifest = (shards / "manifest.json").read_bytes()
    code, err = _call(["bench", "--problem", "ring8", "--methods", "em", "--nfe", "5", "--samples", "50",
                       "--floor-repeats", "2", "--no-progress", "--out", str(shards)])
    assert code == 2 and "another job's manifest.json (kind 'sample')" in err
    assert (shards / "manifest.json").read_bytes() == manifest and not (shards / "results.jsonl").exists()
    sample_to_dir(RING.score_fn(sde), sde, (2,), 4, shards, method="em", chunk=2, steps=3)  # still resumable


# ---------------------------------------------------------------- defect 5: likelihood keeps its work

def test_defect5_likelihood_unwritable_out_fails_before_the_work(ring_run, tmp_path, monkeypatch):
    import scoresolve.likelihood_cli as lc

    (tmp_path / "afile").write_text("x")
    calls = []
    monkeypatch.setattr(lc, "_solve_points", lambda *a: calls.append(a))
    code, err = _call(["likelihood", "--run", str(ring_run), "--data", "ring8", "--limit", "4",
                       "--out", str(tmp_path / "afile" / "nll.json")])
    assert code == 2 and "afile is a file" in err and not calls


def test_defect5_a_failed_final_write_loses_no_batch(ring_run, tmp_path, monkeypatch):
    import scoresolve.likelihood_cli as lc

    out = tmp_path / "nll.json"
    args = ["likelihood", "--run", str(ring_run), "--data", "ring8", "--limit", "6", "--batch-size", "2",
            "--rtol", "1e-2", "--atol", "1e-2", "--out", str(out)]
    real = lc.write_json_atomic

    def disk_full(path, obj):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(lc, "write_json_atomic", disk_full)
    code, err = _call(args)
    shards = Path(f"{out}.shards")
    assert code == 1 and "No space left" in err and str(shards) in err and not out.exists()
    chunks = {p.name: p.stat().st_mtime_ns for p in shards.glob("chunk-*.pt")}
    assert len(chunks) == 3
    monkeypatch.setattr(lc, "write_json_atomic", real)
    monkeypatch.setattr(lc, "_solve_points", lambda *a: pytest.fail("a finished batch was recomputed"))
    assert _call(args)[0] == 0
    assert len(json.loads(out.read_text())["logp"]) == 6 and not shards.exists()  # the safety net is cleared


# ---------------------------------------------------------------- adaptive solves are bounded

def test_adaptive_solves_stop_at_their_step_budget_naming_the_time():
    sde = ss.VPSDE()
    with pytest.raises(StepLimitError, match=r"stopped at t=0\.9\d*: its step budget of 30"):
        ss.sample(RING.score_fn(sde), sde, (4, 2), "ode", rtol=1e-12, atol=1e-12, max_steps=30)
    x = 1e6 * RING.sample(4, generator=torch.Generator().manual_seed(0))
    with pytest.raises(StepLimitError, match=r"from t=0\.001 to t=1 stopped at t=.*max_steps"):
        ss.likelihood(RING.score_fn(sde), sde, x, max_steps=20)
    with pytest.raises(ValueError, match="max_steps must be an integer >= 1"):
        ss.likelihood(RING.score_fn(sde), sde, x, max_steps=0)


def test_likelihood_cli_max_steps_fails_with_the_time_reached(ring_run, tmp_path):
    code, err = _call(["likelihood", "--run", str(ring_run), "--data", "ring8", "--limit", "2", "--max-steps", "2",
                       "--out", str(tmp_path / "o.json")])
    assert code == 1 and "stopped at t=" in err and "--max-steps" in err and len(err.strip().splitlines()) == 1


def test_likelihood_progress_shows_the_time_reached(capsys):
    sde = ss.VPSDE()
    x = RING.sample(4, generator=torch.Generator().manual_seed(0))
    ss.likelihood(RING.score_fn(sde), sde, x, rtol=1e-2, atol=1e-2, progress=True)
    err = capsys.readouterr().err
    assert "t - eps = 0.999/0.999" in err
    assert re.search(r"(^|\r)likelihood: t: 100%\|", err), err[-200:]


# ---------------------------------------------------------------- torn JSONL line

def test_a_torn_results_line_is_moved_aside_on_the_next_bench_run(tmp_path):
    out = tmp_path / "bench"
    args = ["bench", "--problem", "ring8", "--methods", "em", "--nfe", "5", "--samples", "50", "--floor-repeats",
            "2", "--metrics", "mode_tv", "--no-progress", "--no-report", "--out", str(out)]
    assert _call(args)[0] == 0
    results = out / "results.jsonl"
    good = results.read_text()
    with open(results, "a") as f:
        f.write('{"key": "torn-by-hand", "trun')
    with pytest.warns(UserWarning, match="1 unreadable line.*moved to .*results.jsonl.unreadable"):
        assert _call(args)[0] == 0
    assert results.read_text() == good
    assert (out / "results.jsonl.unreadable").read_text() == '{"key": "torn-by-hand", "trun\n'
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ResultStore(results).repair() == 0 and len(ResultStore(results).rows()) == 1
    sde = ss.VPSDE()  # and a shard job refuses the benchmark's directory
    with pytest.raises(ValueError, match="holds chunks of another job"):
        sample_to_dir(RING.score_fn(sde), sde, (2,), 4, out, method="em", chunk=2, steps=3)


# ---------------------------------------------------------------- minor items of the API

def _s(x, t):
    return -x


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(shape=(2.5, 2)), TypeError, "shape"),
    (dict(shape="abc"), TypeError, "shape"),
    (dict(steps=True), ValueError, "steps must be an integer"),
    (dict(nfe=2.0, steps=None), ValueError, "nfe must be an integer"),
    (dict(x_init=np.zeros((4, 2), np.float32)), TypeError, "x_init must be a torch.Tensor"),
    (dict(x_init=torch.full((4, 2), float("nan"))), ValueError, "x_init contains NaN"),
    (dict(seeds=[2**64, 1, 2, 3]), ValueError, r"seeds must lie in the int64 range"),
    (dict(seeds=torch.zeros(4)), TypeError, "seeds must hold integers"),
    (dict(dtype="float32"), TypeError, "dtype must be a floating torch.dtype"),
    (dict(dtype=torch.int32), ValueError, "dtype must be a floating type"),
    (dict(device="nope"), ValueError, "device must be"),
    (dict(generator=42), TypeError, "generator must be a torch.Generator"),
    (dict(eps=float("nan")), ValueError, "eps must lie in"),
    (dict(score_fn=lambda x, t: torch.zeros(x.shape, dtype=torch.int64)), TypeError, "score_fn returned a torch.int64"),
    (dict(score_fn=RING.score_fn(ss.VPSDE()), shape=(4, 3)), ValueError, r"shape \(B, 2\) for this 2-d mixture"),
])
def test_minor_bad_arguments_are_named(kwargs, exc, match):
    kw = dict(score_fn=_s, shape=(4, 2), steps=3)
    kw.update(kwargs)
    with pytest.raises(exc, match=match):
        ss.sample(kw.pop("score_fn"), ss.VPSDE(), kw.pop("shape"), "em", **kw)


def test_minor_integer_types_and_empty_batches():
    res = ss.sample(_s, ss.VPSDE(), (np.int64(3), 2), "em", steps=np.int64(5), seeds=np.arange(3))
    assert res.samples.shape == (3, 2) and res.stats["steps"] == 5
    with pytest.raises(ValueError, match=r"images must have shape \(B, \*data_dims\) with B >= 1"):
        ss.bits_per_dim(RING.score_fn(ss.VPSDE()), ss.VPSDE(), torch.zeros(0, 2, dtype=torch.uint8))


def test_seeds_with_a_batch_normalised_langevin_corrector_warn_once():
    sde = ss.VPSDE()
    with pytest.warns(UserWarning, match="snr_norm=.batch..*depends on its batch mates") as rec:
        ss.sample(_s, sde, (3, 2), "pc", steps=2, seeds=[1, 2, 3])
    assert len([w for w in rec if "batch mates" in str(w.message)]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a = ss.sample(RING.score_fn(sde), sde, (5, 2), "pc", steps=4, seeds=range(5), snr_norm="sample").samples
        b = ss.sample(RING.score_fn(sde), sde, (2, 2), "pc", steps=4, seeds=range(2), snr_norm="sample").samples
        ss.sample(_s, sde, (3, 2), "em", steps=2, seeds=[1, 2, 3])
    assert torch.equal(a[:2], b)  # the docstring's promise, where it holds


# ---------------------------------------------------------------- fuzz: sample() never answers badly

SDES = {"vp": ss.VPSDE(), "subvp": ss.SubVPSDE(), "ve": ss.VESDE(sigma_max=20.0)}
ADAPTIVE = {"ode", "gotta_go_fast", "ode_adaptive_ps", "ode_adaptive_rk23"}
DTYPE16 = torch.float16
OK, BAD = True, False


def _choices(b: int) -> tuple[dict, dict]:
    """Valid and invalid values of each argument, for a batch of b."""
    valid = {
        "shape": [(b, 2), [b, 2], (b, np.int64(2))],
        "steps": [None, 1, 3, np.int64(4)],
        "nfe": [None] * 4 + [30],
        "grid": [None, "uniform", "log_snr", "karras", "quadratic", torch.tensor([1.0, 0.5, 0.01])],
        "eps": [None, 1e-3, 0.05],
        "seeds": [None, list(range(10, 10 + b)), torch.arange(b)],
        "dtype": [None, torch.float32, torch.float64, DTYPE16],
        "x_init": [None, "ok"],
        "options": [{}],
    }
    invalid = {
        "shape": [(2.5, 2), "abc", (0, 2), (b,), b, (b, -1), (True, 2)],
        "steps": [0, -2, True, 2.5, "3"],
        "nfe": [0.5, False, "x"],
        "grid": ["nope", torch.tensor([0.01, 0.5, 1.0]), torch.tensor([1.0, float("nan"), 0.1]),
                 torch.tensor([2.0, 0.1])],
        "eps": [0.0, 1.5, float("nan"), True, "x"],
        "seeds": [[2**64] * b, ["a"] * b, list(range(b + 1)), torch.zeros(b)],
        "dtype": [torch.int32, "float32"],
        "x_init": [np.zeros((b, 2), np.float32), torch.zeros(b + 1, 2), "nan"],
        "options": [{"nope": 1}],
    }
    return valid, invalid


@st.composite
def sample_calls(draw):
    """(method, batch, {argument: (value, is_valid)}): at most one argument invalid (a third of
    the calls are fully valid, though valid arguments may still conflict, e.g. steps with nfe)."""
    method = draw(st.sampled_from(sorted(ss.SAMPLERS)))
    b = draw(st.integers(1, 3))
    valid, invalid = _choices(b)
    bad = draw(st.sampled_from([None] * 5 + list(invalid)))
    args = {k: (draw(st.sampled_from(invalid[k] if k == bad else valid[k])), k != bad) for k in valid}
    args["sde"] = (draw(st.sampled_from(sorted(SDES))), OK)
    return method, b, args


def _suspects(method: str, args: dict) -> set[str]:
    """The argument names an error may blame: the invalid ones, and the members of a conflict."""
    bad = {k for k, (_, ok) in args.items() if k != "sde" and not ok}
    val = {k: v for k, (v, _) in args.items()}
    if val["steps"] is not None and val["nfe"] is not None:
        bad |= {"steps", "nfe"}
    if isinstance(val["grid"], torch.Tensor) and (val["steps"] is not None or val["nfe"] is not None
                                                   or val["eps"] is not None):
        bad |= {"grid"}
    if val["nfe"] is not None:
        bad |= {"nfe"}  # adaptive methods take no nfe; others may need more than 30
    if bad & {"options"}:
        bad |= {"option"}
    return bad


def _materialise(args: dict, b: int) -> dict:
    val = {k: v for k, (v, _) in args.items()}
    dtype = val["dtype"] if isinstance(val["dtype"], torch.dtype) and val["dtype"].is_floating_point else None
    if isinstance(val["x_init"], str):
        x = 0.5 * torch.randn(b, 2, generator=torch.Generator().manual_seed(0), dtype=dtype or torch.float32)
        val["x_init"] = x if val["x_init"] == "ok" else torch.full_like(x, float("nan"))
    return val


@settings(max_examples=120)
@given(sample_calls())
def test_fuzz_sample_returns_finite_samples_or_names_the_argument(call):
    method, b, args = call
    val = _materialise(args, b)
    sde, opts = SDES[val.pop("sde")], val.pop("options")
    shape = val.pop("shape")
    if method in ADAPTIVE and "nope" not in opts:  # bounded: loose tolerances
        opts = {"rtol": 1e-2, "atol": 1e-2}
    if val["steps"] is None and val["nfe"] is None and not isinstance(val["grid"], torch.Tensor):
        val["steps"] = 3  # the defaults (up to 1000 steps) are slow, not wrong
    suspects = _suspects(method, args)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the batch-norm Langevin warning
        try:
            res = ss.sample(RING.score_fn(sde), sde, shape, method, **val, **opts)
        except (ValueError, TypeError) as err:
            assert suspects, f"valid call refused: {err}"
            assert any(name in str(err) for name in suspects), (suspects, str(err))
            return
        except ss.NonFiniteScoreError as err:  # a float16 score overflowing ±65504 (sde_srk on VE) says so
            assert val["dtype"] == DTYPE16 and "sample in float32" in str(err), str(err)
            return
    assert not suspects - {"nfe"}, f"accepted {suspects}"
    want = torch.Size((b, 2))
    assert res.samples.shape == want and bool(res.samples.isfinite().all())
    expected_dtype = val["dtype"] or (val["x_init"].dtype if val["x_init"] is not None else torch.float32)
    assert res.samples.dtype == expected_dtype and math.isfinite(float(res.nfe))
