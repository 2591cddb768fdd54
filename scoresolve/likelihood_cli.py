"""``scoresolve likelihood``: negative log-likelihood of a data set under a trained run.

    scoresolve likelihood --run DIR --data digits --out nll.json [--split test]
        [--trace hutchinson --probes 4] [--limit N] [--rtol 1e-5] [--batch-size 500]

Loads the run with ``scoresolve.train.load_run`` and the data (scaled to [-1, 1]) with
``scoresolve.train.data.load_dataset`` and writes a JSON summary (mean NLL in nats and bits/dim
with standard errors over the points, counted evaluations, solver statistics, per-point log p)
atomically.  Continuous data get log p_eps(x) (``scoresolve.likelihood``); quantized data
(digits: 17 levels, or ``--levels L``) get the uniform-dequantization bound on the discrete
log-likelihood (``scoresolve.bits_per_dim`` with scaling="levels"), whose bits/dim is the number
to compare with published ones.  ``--levels 0`` treats quantized data as continuous.

The points are solved in batches of ``--batch-size``, point i with its own seeds
(``scoresolve.distributed.sample_seeds(seed, [i])``), so each batch's numbers depend on the batch
alone.  Under torchrun the batches are spread over the ranks (batch k on rank k mod world), each
written atomically into ``--shard-dir`` (default OUT.shards) beside a manifest; a re-run skips
finished batches, and rank 0 writes OUT with the points in their original order, equal bit for
bit to a run in one process with the same --batch-size::

    torchrun --nproc-per-node 8 -m scoresolve likelihood --run-dir runs/digits --data digits \
        --out nll.json --batch-size 40
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch

from .cliargs import Parser, UsageError, check_float, check_int, check_out_dir, check_out_file, report
from .distributed import (
    barrier,
    derive_seeds,
    dist_info,
    merge_chunks,
    process_group,
    run_chunks,
    sample_seeds,
    seeded_uniform,
)
from .likelihood import METHODS, PROBES, TRACES, likelihood
from .ode import DEFAULT_MAX_STEPS

DTYPES = {"float32": torch.float32, "float64": torch.float64}
QUANTIZED = {"digits": 17}  # data sets stored as integer levels, scaled level k -> -1 + 2k/(L-1)


def _parser() -> argparse.ArgumentParser:
    p = Parser(prog="scoresolve likelihood",
                                description="NLL (nats, bits/dim) of a data set under a trained run.")
    p.add_argument("--run", "--run-dir", dest="run", required=True,
                   help="run directory written by `scoresolve train` (under torchrun write --run-dir: "
                        "torchrun's own parser rejects --run as an abbreviation of its --run-path)")
    p.add_argument("--data", required=True, help="data set name (e.g. digits, moons, ring8)")
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--split", default="test", choices=("train", "test"))
    p.add_argument("--trace", default="exact", choices=TRACES)
    p.add_argument("--probes", type=int, default=1, help="Hutchinson probes per point")
    p.add_argument("--probe-dist", "--probe", dest="probe_dist", default="rademacher", choices=PROBES,
                   help="distribution of the Hutchinson probes (--probe: the old name)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N points")
    p.add_argument("--rtol", type=float, default=1e-5)
    p.add_argument("--atol", type=float, default=1e-5)
    p.add_argument("--eps", type=float, default=None, help="start time (default: the SDE's)")
    p.add_argument("--solver", "--method", dest="solver", default="dopri5", choices=METHODS,
                   help="torchdiffeq adaptive solver (--method: the old name)")
    p.add_argument("--levels", type=int, default=None,
                   help="quantized data: number of levels (default 17 for digits; 0 = continuous)")
    p.add_argument("--repeats", type=int, default=1, help="dequantization draws per image")
    p.add_argument("--batch-size", type=int, default=500,
                   help="points solved together (one adaptive solve); also the chunk of work a rank "
                        "takes under torchrun.  Results depend on it, never on the number of ranks")
    p.add_argument("--seed", type=int, default=0,
                   help="base seed of the per-point Hutchinson probes and dequantization noise")
    p.add_argument("--max-steps", type=int, default=DEFAULT_MAX_STEPS,
                   help=f"attempted solver steps allowed per batch (default {DEFAULT_MAX_STEPS}); a batch that "
                        "needs more stops with an error naming the time it reached")
    p.add_argument("--progress", action="store_true", help="show the batches done and each solve's time reached")
    p.add_argument("--shard-dir", default=None,
                   help="write each batch atomically into this directory (with a manifest) and resume "
                        "from it; default OUT.shards, removed after OUT is written unless under torchrun")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=tuple(DTYPES))
    return p


def write_json_atomic(path: str, obj) -> None:
    """Write JSON to a temporary file beside ``path``, then rename it over ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(obj, fh, indent=2)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class SolveError(RuntimeError):
    """A likelihood solve failed (non-finite or non-differentiable score, step underflow)."""


@dataclass(frozen=True)
class _Job:
    """What one chunk of points needs: the model, the data (levels if quantized) and options."""

    score_fn: Callable
    sde: object
    data: torch.Tensor
    levels: int | None
    repeats: int
    seed: int
    dtype: torch.dtype
    opts: dict


def _solve_chunk(job: _Job, start: int, stop: int) -> dict:
    """log p of points [start, stop): one batch, per-point seeds, so the numbers depend on the
    chunk alone (not on the process that solves it).

    Point i's Hutchinson probes use ``sample_seeds(seed, [i])`` for continuous data; for
    quantized data, draw r of its dequantization noise and of its probes use streams 2r + 2 and
    2r + 1 derived from that seed.  The bound is ``bits_per_dim``'s (scaling="levels"): bins of
    side c = 2/(L − 1) centred on the levels, log P(k) ≥ mean_r log p(b + c (k + U_r)) + d log c.
    """
    try:
        return _solve_points(job, start, stop)
    except (RuntimeError, FloatingPointError, ValueError) as err:  # e.g. a non-differentiable score
        raise SolveError(f"points {start}..{stop - 1}: {err}") from err


def _solve_points(job: _Job, start: int, stop: int) -> dict:
    seeds = sample_seeds(job.seed, range(start, stop))
    hutch = job.opts["trace"] == "hutchinson"
    x = job.data[start:stop]
    if job.levels is None:
        res = likelihood(job.score_fn, job.sde, x, seeds=seeds if hutch else None, return_latent=False, **job.opts)
        return {"logp": res.logp.double().cpu(), "logp_stderr": res.logp_stderr.double().cpu(),
                "solves": [_stats(res)]}
    c = 2.0 / (job.levels - 1)
    d = math.prod(x.shape[1:])
    per_rep, solves = [], []
    for r in range(job.repeats):
        u = seeded_uniform(derive_seeds(seeds, 2 * r + 2), d).reshape(x.shape).to(x.device)
        y = (-1.0 - 0.5 * c + c * (x.double() + u)).to(job.dtype)
        res = likelihood(job.score_fn, job.sde, y, seeds=derive_seeds(seeds, 2 * r + 1) if hutch else None,
                         return_latent=False, **job.opts)
        per_rep.append(res.logp.double().cpu() + d * math.log(c))
        solves.append(_stats(res))
    reps = torch.stack(per_rep)
    stderr = reps.std(0) / math.sqrt(job.repeats) if job.repeats > 1 else torch.full_like(reps[0], float("nan"))
    return {"logp": reps.mean(0), "logp_stderr": stderr, "solves": solves}


def _stats(res) -> dict:
    return {k: v for k, v in res.stats.items() if k != "ts"}


def _load(args, device: torch.device, dtype: torch.dtype):
    """(run, data, levels) after every check, or an error message."""
    try:  # provided by the training package; imported here so the library does not need it
        from .train import load_run
        from .train.data import load_dataset
    except ImportError as err:
        return f"needs the training package (scoresolve.train): {err}"
    try:
        run = load_run(args.run, device=device)
        data = load_dataset(args.data, split=args.split)
    except (FileNotFoundError, ValueError) as err:
        return str(err)
    if args.limit is not None:
        data = data[: args.limit]
    data = data.to(device=device, dtype=dtype)
    if tuple(data.shape[1:]) != tuple(run.data_shape):
        return f"data {args.data!r} has shape {tuple(data.shape[1:])} but the run models {tuple(run.data_shape)}"
    levels = QUANTIZED.get(args.data) if args.levels is None else (args.levels or None)
    if levels is not None:
        k = (data.double() + 1) * (0.5 * (levels - 1))
        if levels < 2 or not bool(((k - k.round()).abs() < 1e-3).all()):
            return (f"{args.data!r} is not on a {levels}-level grid over [-1, 1]; pass --levels L for quantized "
                    "data or --levels 0")
        data = k.round().long()
    return run, data, levels


def _check_args(args) -> None:
    """Every option in its valid range and the outputs writable, before any work (UsageError)."""
    check_int("--probes", args.probes, 1)
    if args.trace == "exact" and args.probes != 1:
        raise UsageError("--probes is only used with --trace hutchinson (the exact trace takes no probes)")
    check_int("--limit", args.limit, 1)
    check_int("--batch-size", args.batch_size, 1)
    check_int("--repeats", args.repeats, 1)
    check_int("--max-steps", args.max_steps, 1)
    check_int("--seed", args.seed, 0, 2**63 - 1)
    if args.levels is not None and args.levels != 0 and args.levels < 2:
        raise UsageError(f"--levels must be an integer >= 2 (or 0 for continuous data), got {args.levels}")
    check_float("--rtol", args.rtol, 0.0)
    check_float("--atol", args.atol, 0.0)
    check_float("--eps", args.eps, 0.0, 1.0)
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise UsageError(f"--device {args.device!r} is not a device; use cpu, cuda, cuda:N, ...") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda requested but CUDA is not available")
    check_out_file("--out", args.out)
    check_out_dir("--shard-dir", _shard_dir(args))


def _shard_dir(args) -> str:
    return args.shard_dir or f"{args.out}.shards"


def _solve_all(job: _Job, args, n: int, world: int) -> dict | None:
    """Every chunk, each written atomically into the shard directory as soon as it is solved (so
    a failed or interrupted run loses nothing), spread over the ranks under torchrun; the joined
    results on rank 0."""
    shards = _shard_dir(args)
    config = {"kind": "likelihood_cli", "run": os.path.abspath(args.run), "data": args.data, "split": args.split,
              "data_sum": float(job.data.double().sum()), "levels": job.levels, "repeats": job.repeats,
              "seed": job.seed, "dtype": args.dtype, "device": args.device,
              "options": {k: repr(v) for k, v in sorted(job.opts.items()) if k != "progress"}}
    run_chunks(partial(_solve_chunk, job), n, shards, chunk=args.batch_size, config=config, unit="points",
               progress=args.progress)
    barrier()
    return merge_chunks(shards, n, args.batch_size) if dist_info()[0] == 0 else None


def _summary(args, parts: dict, sde: str, levels: int | None, n: int, d: int, seconds: float, world: int) -> dict:
    logp, solves = parts["logp"], parts["solves"]
    hutch = args.trace == "hutchinson"
    nll, sd = float(-logp.mean()), float(logp.std()) if n > 1 else float("nan")
    se = sd / math.sqrt(n) if n > 1 else float("nan")
    evals = [s["forwards"] + s["vjps"] for s in solves]
    kind = ("continuous log p_eps of the data as scaled by load_dataset" if levels is None else
            f"uniform-dequantization bound on the discrete log-likelihood ({levels} levels, "
            f"{args.repeats} draw(s) per image); NLL and bits/dim are upper bounds")
    return {
        "run": os.path.abspath(args.run), "data": args.data, "split": args.split, "n": n, "dim": d,
        "sde": sde, "eps": solves[0]["eps"], "trace": args.trace,
        "probes": args.probes if hutch else 0, "probe": args.probe_dist if hutch else None,
        "method": args.solver, "rtol": args.rtol, "atol": args.atol, "dtype": args.dtype,
        "levels": levels, "repeats": args.repeats if levels else None, "kind": kind, "seed": args.seed,
        "batch_size": args.batch_size, "world_size": world,
        "nll_nats": nll, "nll_nats_stderr": se, "nll_nats_per_dim": nll / d,
        "bits_per_dim": nll / (d * math.log(2)), "bits_per_dim_stderr": se / (d * math.log(2)),
        "per_point_stderr_rms": float(parts["logp_stderr"].pow(2).mean().sqrt()),
        "nfe_per_point_mean": sum(evals) / len(evals), "seconds": seconds,
        "solves": solves, "logp": logp.tolist(),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the command; under torchrun the points are spread over the ranks and rank 0 writes --out."""
    args = _parser().parse_args(argv)
    try:
        _check_args(args)
    except UsageError as err:
        return report("scoresolve likelihood", err)
    with process_group() as (rank, world):
        return _run(args, rank, world)


def _run(args, rank: int, world: int) -> int:
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    loaded = _load(args, device, dtype)
    if isinstance(loaded, str):
        return report("scoresolve likelihood", ValueError(loaded))
    run, data, levels = loaded
    hutch = args.trace == "hutchinson"
    opts = dict(trace=args.trace, rtol=args.rtol, atol=args.atol, eps=args.eps, solver=args.solver,
                max_steps=args.max_steps, progress=args.progress,
                **(dict(probes=args.probes, probe_dist=args.probe_dist) if hutch else {}))
    job = _Job(run.score_fn, run.sde, data, levels, args.repeats, args.seed, dtype, opts)
    start = time.perf_counter()
    try:
        parts = _solve_all(job, args, data.shape[0], world)
    except SolveError as err:
        return report("scoresolve likelihood", err, status=1)
    except (ValueError, FileNotFoundError) as err:  # another job's shards, too many ranks, ...
        return report("scoresolve likelihood", err)
    if parts is None:  # not rank 0
        return 0
    n, d = data.shape[0], math.prod(data.shape[1:])
    out = _summary(args, parts, run.sde.name, levels, n, d, time.perf_counter() - start, world)
    try:
        write_json_atomic(args.out, out)
    except OSError as err:
        return report("scoresolve likelihood", OSError(f"could not write --out {args.out} ({err}); every batch "
                                                       f"is kept in {_shard_dir(args)}: re-run to write it"), 1)
    if world == 1 and not args.shard_dir:  # the default shards are only a safety net
        shutil.rmtree(_shard_dir(args), ignore_errors=True)
    print(f"{args.data}/{args.split}: n={n}  NLL {out['nll_nats']:.4f} ± {out['nll_nats_stderr']:.4f} nats  "
          f"{out['bits_per_dim']:.4f} bits/dim  ({out['seconds']:.1f} s, {world} process(es)) -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
