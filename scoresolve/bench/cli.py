"""``scoresolve bench ...`` (run cells) and ``scoresolve bench report DIR`` (tables + plots).

Options may also come from a file: ``scoresolve bench @suite.args`` reads whitespace-separated
arguments from it (``#`` starts a comment).  ``torchrun --nproc-per-node N -m scoresolve bench ...``
spreads the cells over N processes and gathers them into the same results.jsonl and report.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import torch

from ..cliargs import Parser, UsageError, check_int, check_out_dir, report
from ..registry import SAMPLERS
from .plan import BenchConfig
from .problems import PROBLEMS, analytic_problem, load_reference, make_sde, run_dir_problem, user_problem

__all__ = ["main", "build_parser", "config_from_args"]

DEFAULT_NFE = (10, 20, 50, 100, 200, 500, 1000)


class _Parser(Parser):
    def convert_arg_line_to_args(self, arg_line: str) -> list[str]:
        return shlex.split(arg_line, comments=True)


def _list(kind):
    def parse(s: str):
        try:
            return [kind(v) for v in s.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {kind.__name__}, "
                                             f"got {s!r}") from None
    return parse


def _per_method(kind):
    def parse(s: str):
        if ":" not in s:
            raise argparse.ArgumentTypeError(f"expected METHODS:VALUES such as em,pc:500,1000, got {s!r}")
        names, values = s.rsplit(":", 1)  # a method may carry options: unipc:solver_order=4:15
        return tuple(n for n in names.split(",") if n), tuple(_list(kind)(values))
    return parse


def _batch(s: str):
    if s == "auto":
        return None
    try:
        return int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--batch-size must be 'auto' or an integer, got {s!r}") from None


def _kv(s: str):
    if "=" not in s:
        raise argparse.ArgumentTypeError(f"--sde-opt must be key=value, got {s!r}")
    k, v = s.split("=", 1)
    try:
        return k, float(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--sde-opt {k}: expected a number, got {v!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="scoresolve bench", fromfile_prefix_chars="@",
                description="Benchmark samplers: quality against counted NFE, with noise floors and "
                            "timings.  `scoresolve bench report DIR` writes the tables and plots.")
    g = p.add_argument_group("problem")
    g.add_argument("--problem", type=_list(str), default=[],
                   help=f"analytic problem(s): {', '.join(PROBLEMS)}, gmm<d>, gauss<d>")
    g.add_argument("--score", help="user score 'module:function' (a score (x, t) -> s, or a factory "
                                   "taking no arguments or sde=/device= that returns one)")
    g.add_argument("--run", "--run-dir", dest="run", help="a `scoresolve train` run directory (under torchrun "
                   "write --run-dir: torchrun's own parser rejects --run)")
    g.add_argument("--shape", type=_list(int), help="data shape of --score, e.g. 3,32,32")
    g.add_argument("--reference", help="reference samples (.pt or .npy, shape (N, *shape))")
    g.add_argument("--name", help="problem name for --score / --run (default: function / directory)")
    g.add_argument("--sde", type=_list(str), default=None, help="vp, subvp, ve (comma list; default vp)")
    g.add_argument("--sde-opt", type=_kv, action="append", default=[],
                   help="SDE constructor option, e.g. sigma_max=20 (repeatable)")
    g = p.add_argument_group("methods and budgets")
    g.add_argument("--methods", type=_list(str), default=["all"],
                   help=f"comma list of {', '.join(SAMPLERS)} or all (default); a method may carry sampler "
                        "options: unipc:solver_order=4;lower_order_final=false")
    g.add_argument("--nfe", type=_list(int), default=None,
                   help="NFE budgets of fixed-step methods (default 10,20,50,100,200,500,1000; a "
                        "method's default budgets below its minimum NFE are left out)")
    g.add_argument("--tols", type=_list(float), default=[1e-2, 1e-3, 1e-4, 1e-5],
                   help="rtol = atol sweep of adaptive methods")
    g.add_argument("--extra-nfe", type=_per_method(int), action="append", default=[],
                   metavar="METHODS:BUDGETS", help="more NFE budgets for some fixed-step methods, "
                   "e.g. em,pc:500,1000 or order<=1:500,1000 (declared order; repeatable), and fixed "
                   "budgets for ode_adaptive_ps (every sample within N), e.g. ode_adaptive_ps:15")
    g.add_argument("--tols-for", type=_per_method(float), action="append", default=[],
                   metavar="METHODS:TOLS", help="tolerance sweep replacing --tols for some adaptive "
                   "methods, e.g. gotta_go_fast:0.1,0.05,0.02 (repeatable)")
    g.add_argument("--fit-grid", type=_per_method(int), action="append", default=[],
                   metavar="METHODS:BUDGETS", help="also run these deterministic fixed-step methods at these "
                   "NFE budgets on a grid fitted once to a pilot batch (scoresolve.fit_grid; cells 'fitted "
                   "nfe=N', the fit cached in OUT/fits), e.g. unipc:15 (repeatable)")
    g.add_argument("--scale-grid", type=_per_method(int), action="append", default=[],
                   metavar="METHODS:BUDGETS", help="also run these deterministic fixed-step methods at these "
                   "NFE budgets on a grid from the data's scale (scoresolve.scale_grid: one evaluation of 256 "
                   "prior draws; cells 'scale-grid nfe=N'), e.g. unipc:15 (repeatable)")
    g.add_argument("--fit-pilot", type=int, default=256, help="pilot draws per fitted grid (default 256)")
    g.add_argument("--fit-evals", type=int, default=400,
                   help="at most this many pilot solves per fitted grid (default 400)")
    g.add_argument("--max-nfe", type=int, help="stop an adaptive cell whose counted NFE passes this "
                   "(default: 2x the largest budget, at least 1000)")
    g.add_argument("--skip-infeasible", action="store_true",
                   help="leave out (method, budget) cells below the method's minimum NFE instead of failing")
    g = p.add_argument_group("run")
    g.add_argument("--samples", type=int, default=10_000)
    g.add_argument("--seeds", type=int, default=1, help="number of seeds (0 .. seeds-1)")
    g.add_argument("--device", default="cpu")
    g.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    g.add_argument("--batch-size", type=_batch, default=None,
                   help="'auto' (default: sized to the device) or N")
    g.add_argument("--threads", type=int, help="torch.set_num_threads")
    g.add_argument("--metrics", type=_list(str), help="subset of metrics (default: all available)")
    g.add_argument("--no-denoise", action="store_true", help="skip the final Tweedie step")
    g.add_argument("--eps", type=float, help="end time (default: the SDE's)")
    g.add_argument("--grid", help="time grid kind (default: each method's)")
    g.add_argument("--floor-repeats", type=int, default=8)
    g.add_argument("--mmd-samples", type=int, default=2000, help="MMD² uses this many of each set")
    g.add_argument("--save-samples", type=int, help="samples kept per cell for plots (default 1000 in 2-D)")
    g.add_argument("--bare-max-calls", type=int,
                   help="also time this many bare score calls per batch (extra bare_s column; the overhead "
                        "is always wall / time inside the score in the run; default: none)")
    g.add_argument("--check", action="store_true", help="validate every score output (one sync per call)")
    g.add_argument("--retry-failed", action="store_true", help="re-run cells recorded as failed")
    g.add_argument("--no-progress", action="store_true")
    g.add_argument("--no-report", action="store_true", help="do not write the report after the run")
    g.add_argument("--out", required=True, help="results directory (resumed if it exists)")
    return p


def config_from_args(a: argparse.Namespace) -> BenchConfig:
    """Turn parsed arguments into a validated-shape config (problems loaded, SDEs built)."""
    sde_opts = dict(a.sde_opt)
    sde_names = a.sde or ["vp"]
    sdes = []
    for name in sde_names:
        sde = make_sde(name, sde_opts)
        opts = ",".join(f"{k}={v:g}" for k, v in sde_opts.items())
        label = f"{name}({opts})" if opts else name
        sdes.append((label, sde))
    problems = [analytic_problem(n) for n in a.problem]
    if a.score and a.run:
        raise ValueError("pass --score or --run, not both")
    if (a.shape or a.reference or a.name) and not (a.score or a.run):
        raise ValueError("--shape/--reference/--name describe a user problem: pass --score module:function "
                         "or --run DIR too")
    if a.score:
        if a.reference is None:
            raise ValueError("--score needs --reference FILE (exact samples to compare against)")
        if a.sde is None or len(sdes) != 1:
            raise ValueError("--score needs exactly one --sde: the SDE the score was trained for")
        ref = load_reference(a.reference, tuple(a.shape) if a.shape else None)
        problems.append(user_problem(a.score, sdes[0][1], ref, a.shape, name=a.name, device=a.device))
    if a.run:
        ref = load_reference(a.reference, None) if a.reference else None
        prob = run_dir_problem(a.run, ref, name=a.name)
        if a.sde is not None and a.sde != [prob.sde.name]:
            raise ValueError(f"--sde {','.join(a.sde)} conflicts with the run's SDE {prob.sde.name!r}")
        problems.append(prob)
    return BenchConfig(
        problems=tuple(problems), sdes=tuple(sdes), methods=tuple(a.methods),
        nfes=tuple(a.nfe if a.nfe is not None else DEFAULT_NFE),
        tols=tuple(a.tols), out=Path(a.out), samples=a.samples, seeds=a.seeds, device=a.device,
        dtype=getattr(torch, a.dtype), batch_size=a.batch_size,
        metrics=tuple(a.metrics) if a.metrics else None, denoise=not a.no_denoise, eps=a.eps,
        grid=a.grid, floor_repeats=a.floor_repeats, mmd_samples=a.mmd_samples,
        extra_nfe=tuple(a.extra_nfe), method_tols=tuple(a.tols_for), max_nfe=a.max_nfe,
        fit_grid=tuple(a.fit_grid), scale_grid=tuple(a.scale_grid), fit_pilot=a.fit_pilot, fit_evals=a.fit_evals,
        save_samples=a.save_samples,
        bare_max_calls=a.bare_max_calls, retry_failed=a.retry_failed,
        skip_infeasible=a.skip_infeasible or a.nfe is None, check=a.check, progress=not a.no_progress)


def _report_main(argv: list[str]) -> int:
    p = Parser(prog="scoresolve bench report",
                                description="Write DIR/report.md and DIR/plots/*.png from DIR/results.jsonl.")
    p.add_argument("dir")
    a = p.parse_args(argv)
    from .report import write_report

    try:
        path = write_report(a.dir)
    except (ValueError, FileNotFoundError) as e:
        return report("scoresolve bench report", e)
    print(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the command.  Under torchrun the cells are spread over the ranks and rank 0 writes
    the merged results.jsonl and the report (see ``run_bench``)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["report"]:
        return _report_main(argv[1:])
    a = build_parser().parse_args(argv)
    try:
        check_int("--threads", a.threads, 1)
        check_out_dir("--out", a.out)
    except UsageError as e:
        return report("scoresolve bench", e)
    if a.threads:
        torch.set_num_threads(a.threads)
    from ..distributed import process_group

    with process_group() as (rank, world):
        return _run(a, rank, world)


def _run(a: argparse.Namespace, rank: int, world: int) -> int:
    from .runner import run_bench

    start = time.perf_counter()
    try:
        summary = run_bench(config_from_args(a))
    except (ValueError, FileNotFoundError) as e:
        return report("scoresolve bench", e)
    if rank != 0:
        return 130 if summary["interrupted"] else 0
    elapsed = time.perf_counter() - start
    ranks = f" on {world} ranks" if world > 1 else ""
    print(f"bench: {summary['ran']} cells run{ranks} ({summary['failed']} failed), {summary['skipped']} already "
          f"done, in {elapsed:.1f} s -> {a.out}", file=sys.stderr)
    if summary["interrupted"]:
        return 130
    if not a.no_report and (Path(a.out) / "results.jsonl").exists():
        from .report import write_report

        print(write_report(a.out))
    return 0
