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
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time

import torch

from .likelihood import METHODS, PROBES, TRACES, bits_per_dim, likelihood

DTYPES = {"float32": torch.float32, "float64": torch.float64}
QUANTIZED = {"digits": 17}  # data sets stored as integer levels, scaled level k -> -1 + 2k/(L-1)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scoresolve likelihood",
                                description="NLL (nats, bits/dim) of a data set under a trained run.")
    p.add_argument("--run", required=True, help="run directory written by `scoresolve train`")
    p.add_argument("--data", required=True, help="data set name (e.g. digits, moons, ring8)")
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--split", default="test", choices=("train", "test"))
    p.add_argument("--trace", default="exact", choices=TRACES)
    p.add_argument("--probes", type=int, default=1, help="Hutchinson probes per point")
    p.add_argument("--probe", default="rademacher", choices=PROBES)
    p.add_argument("--limit", type=int, default=None, help="use only the first N points")
    p.add_argument("--rtol", type=float, default=1e-5)
    p.add_argument("--atol", type=float, default=1e-5)
    p.add_argument("--eps", type=float, default=None, help="start time (default: the SDE's)")
    p.add_argument("--method", default="dopri5", choices=METHODS)
    p.add_argument("--levels", type=int, default=None,
                   help="quantized data: number of levels (default 17 for digits; 0 = continuous)")
    p.add_argument("--repeats", type=int, default=1, help="dequantization draws per image")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--seed", type=int, default=0, help="seed of the Hutchinson probes")
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


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.probes < 1 or (args.trace == "exact" and args.probes != 1):
        print("scoresolve likelihood: --probes must be >= 1 and is only used with --trace hutchinson",
              file=sys.stderr)
        return 2
    if (args.limit is not None and args.limit < 1) or args.batch_size < 1 or args.repeats < 1:
        print("scoresolve likelihood: --limit, --batch-size and --repeats must be >= 1", file=sys.stderr)
        return 2
    if args.levels is not None and args.levels < 0:
        print("scoresolve likelihood: --levels must be >= 2 (or 0 for continuous data)", file=sys.stderr)
        return 2
    try:  # provided by the training package; imported here so the library does not need it
        from .train import load_run
        from .train.data import load_dataset
    except ImportError as err:
        print(f"scoresolve likelihood needs the training package (scoresolve.train): {err}",
              file=sys.stderr)
        return 2

    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    try:
        run = load_run(args.run, device=device)
        data = load_dataset(args.data, split=args.split)
    except (FileNotFoundError, ValueError) as err:
        print(f"scoresolve likelihood: {err}", file=sys.stderr)
        return 2
    if args.limit is not None:
        data = data[: args.limit]
    data = data.to(device=device, dtype=dtype)
    if tuple(data.shape[1:]) != tuple(run.data_shape):
        print(f"scoresolve likelihood: data {args.data!r} has shape {tuple(data.shape[1:])} but the run "
              f"models {tuple(run.data_shape)}", file=sys.stderr)
        return 2
    levels = QUANTIZED.get(args.data) if args.levels is None else (args.levels or None)
    if levels is not None:
        k = (data.double() + 1) * (0.5 * (levels - 1))
        if levels < 2 or not bool(((k - k.round()).abs() < 1e-3).all()):
            print(f"scoresolve likelihood: {args.data!r} is not on a {levels}-level grid over [-1, 1]; "
                  "pass --levels L for quantized data or --levels 0", file=sys.stderr)
            return 2
        data = k.round().long()
    hutch = args.trace == "hutchinson"
    gen = torch.Generator(device=device).manual_seed(args.seed)
    opts = dict(trace=args.trace, rtol=args.rtol, atol=args.atol, eps=args.eps, method=args.method,
                generator=gen, **(dict(probes=args.probes, probe=args.probe) if hutch else {}))
    start = time.perf_counter()
    logps, stderrs, solves = [], [], []
    for lo in range(0, data.shape[0], args.batch_size):
        chunk = data[lo: lo + args.batch_size]
        try:
            if levels is None:
                res = likelihood(run.score_fn, run.sde, chunk, return_latent=False, **opts)
                solves.append({k: v for k, v in res.stats.items() if k != "ts"})
            else:
                res = bits_per_dim(run.score_fn, run.sde, chunk, levels=levels, scaling="levels",
                                   repeats=args.repeats, dtype=dtype, **opts)
                solves += [{k: v for k, v in st.items() if k != "ts"} for st in res.stats["solves"]]
        except (RuntimeError, FloatingPointError, ValueError) as err:  # e.g. a non-differentiable score
            print(f"scoresolve likelihood: points {lo}..{lo + chunk.shape[0] - 1}: {err}", file=sys.stderr)
            return 1
        logps.append(res.logp.double().cpu())
        stderrs.append(res.logp_stderr.double().cpu())
    logp = torch.cat(logps)
    n, d = logp.shape[0], math.prod(data.shape[1:])
    nll, sd = float(-logp.mean()), float(logp.std()) if n > 1 else float("nan")
    se = sd / math.sqrt(n) if n > 1 else float("nan")
    evals = [s["forwards"] + s["vjps"] for s in solves]
    kind = ("continuous log p_eps of the data as scaled by load_dataset" if levels is None else
            f"uniform-dequantization bound on the discrete log-likelihood ({levels} levels, "
            f"{args.repeats} draw(s) per image); NLL and bits/dim are upper bounds")
    out = {
        "run": os.path.abspath(args.run), "data": args.data, "split": args.split, "n": n, "dim": d,
        "sde": run.sde.name, "eps": solves[0]["eps"], "trace": args.trace,
        "probes": args.probes if hutch else 0, "probe": args.probe if hutch else None,
        "method": args.method, "rtol": args.rtol, "atol": args.atol, "dtype": args.dtype,
        "levels": levels, "kind": kind,
        "nll_nats": nll, "nll_nats_stderr": se, "nll_nats_per_dim": nll / d,
        "bits_per_dim": nll / (d * math.log(2)), "bits_per_dim_stderr": se / (d * math.log(2)),
        "per_point_stderr_rms": float(torch.cat(stderrs).pow(2).mean().sqrt()),
        "nfe_per_point_mean": sum(evals) / len(evals), "seconds": time.perf_counter() - start,
        "solves": solves, "logp": logp.tolist(),
    }
    write_json_atomic(args.out, out)
    print(f"{args.data}/{args.split}: n={n}  NLL {nll:.4f} ± {se:.4f} nats  "
          f"{out['bits_per_dim']:.4f} bits/dim  ({out['seconds']:.1f} s) -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
