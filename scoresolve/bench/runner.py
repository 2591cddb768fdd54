"""Run benchmark cells and append one row per cell to ``OUT/results.jsonl``.

For every (problem, sde) the noise floor is computed once (cached in ``floors.json``); then
each pending cell draws its samples in device-sized batches (a generator per seed and batch),
times them with synchronisation together with the time spent inside the score during that very
run (``CountingScore.seconds``, synchronised on CUDA), so the overhead wall ÷ score time is ≥ 1 by
construction, scores the samples, and appends its row atomically (``fitted`` cells first fit their
grid once, ``bench.fitcells``).  A cell that fails (non-finite samples,
an exception) is recorded with its error and the run goes on; a re-run skips every key
already in the file.  Under torchrun the cells are spread over the ranks (see ``run_bench``).
"""

from __future__ import annotations

import contextlib
import io
import sys
import time
import traceback
import uuid
from datetime import datetime, timezone
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..distributed import barrier, broadcast, dist_info, gather
from ..registry import method_arg
from ..sampling import sample
from . import timing
from .fitcells import fitted_options, scaled_options
from .plan import (
    BenchConfig,
    Cell,
    Group,
    check_settings,
    max_nfe,
    method_info,
    plan_cells,
    settings,
    tol_options,
)
from .quality import Judge, ratio
from .store import ResultStore, atomic_write_bytes, atomic_write_json, read_json
from .store import safe_name as _safe

__all__ = ["run_bench"]

SCHEMA = 1
RANK_DIR = "ranks"  # per-rank result files of a distributed run, merged by rank 0


def _save_npy(path: Path, x: torch.Tensor) -> None:
    import numpy as np

    buf = io.BytesIO()
    np.save(buf, x.detach().cpu().float().numpy())
    atomic_write_bytes(path, buf.getvalue())


class BudgetExceeded(RuntimeError):
    """An adaptive cell's counted NFE passed ``--max-nfe``."""


class _Guard:
    """Stops a run once rows / batch passes ``max_nfe`` (a runaway adaptive tolerance)."""

    def __init__(self, fn, batch: int, max_nfe: int):
        self.fn, self.max_rows, self.max_nfe, self.rows = fn, max_nfe * batch, max_nfe, 0

    def __call__(self, x, t):
        self.rows += x.shape[0]
        if self.rows > self.max_rows:
            raise BudgetExceeded(f"counted NFE passed --max-nfe {self.max_nfe}; the cell was stopped")
        return self.fn(x, t)


def _validate_score(group: Group, device: torch.device, dtype: torch.dtype) -> None:
    """One call on a tiny batch, so a broken score fails before anything is written."""
    score = group.problem.score_for(group.sde)
    x = torch.randn((2, *group.problem.shape), device=device, dtype=dtype)
    t = torch.full((2,), 0.5, device=device, dtype=torch.promote_types(dtype, torch.float32))
    with torch.no_grad():
        out = score(x, t)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != tuple(x.shape):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"problem {group.problem.name!r}: the score returned {got} for x of shape "
                         f"{tuple(x.shape)} (data shape {group.problem.shape}; check --shape)")


def _floor(out: Path, group: Group, judge: Judge, cfg: BenchConfig) -> dict:
    key = (f"{group.problem.name}|{group.sde_label}|n={cfg.samples}|denoise={cfg.denoise}"
           f"|eps={judge.eps:g}|repeats={cfg.floor_repeats}|mmd_samples={cfg.mmd_samples}|logp_gap=closed-form")
    floors = read_json(out / "floors.json", {})
    have = floors.get(key, {})
    if not all(m in have for m in judge.metrics):
        have = {**have, **judge.floor(cfg.floor_repeats)}
        floors[key] = have
        atomic_write_json(out / "floors.json", floors)
    return {m: tuple(have[m]) for m in judge.metrics}


def _bench_manifest(out: Path) -> dict:
    """``out/manifest.json`` if it is a benchmark's ({} if there is none); ValueError if the
    directory belongs to another kind of job (a sample or likelihood shard directory)."""
    try:
        manifest = read_json(out / "manifest.json", {})
    except ValueError as err:
        raise ValueError(f"--out {out}: its manifest.json is unreadable ({err}); not a benchmark directory") from None
    if not isinstance(manifest, dict) or (manifest and "settings" not in manifest) or "kind" in manifest:
        kind = manifest.get("kind", "unknown") if isinstance(manifest, dict) else "unknown"
        raise ValueError(f"--out {out} holds another job's manifest.json (kind {kind!r}), not a benchmark's; "
                         "choose another --out")
    if any(out.glob("chunk-*.pt")):
        raise ValueError(f"--out {out} holds chunk files of a sharded job; choose another --out")
    return manifest


def _run_cell(cell: Cell, group: Group, judge: Judge, floor: dict, cfg: BenchConfig, batch: int,
              out: Path) -> dict:
    device = torch.device(cfg.device)
    score = group.problem.score_for(group.sde)
    info = method_info(cell.method, cfg.denoise)
    eps, fit = judge.eps, None
    if cell.budget.kind == "fit":  # eps: the fitted grid's tail (None: the grid ends at eps)
        opts, fit = fitted_options(cell, group, cfg, eps, out)
    elif cell.budget.kind == "scale":
        opts, fit = scaled_options(cell, group, cfg, eps)
    else:
        opts = {"eps": eps, "grid": cfg.grid, **(tol_options(cell.method, cell.budget.value)
                                                if cell.budget.kind == "tol" else {"nfe": int(cell.budget.value)})}
    xs, wall, inside, bare, timed, rows, calls, steps, n_batches = [], 0.0, 0.0, 0.0, 0, 0.0, 0, 0, 0
    with timing.PeakMemory(device) as mem, torch.no_grad():
        done = 0
        while done < cell.samples:
            bs = min(batch, cell.samples - done)
            g = torch.Generator(device=device).manual_seed(cell.seed * 1_000_003 + n_batches)
            run_score = _Guard(score, bs, max_nfe(cfg)) if cell.budget.kind == "tol" else score
            timing.sync(device)
            start = time.perf_counter()
            res = sample(run_score, group.sde, (bs, *group.problem.shape), method_arg(cell.method), generator=g,
                         device=device, dtype=cfg.dtype, denoise=cfg.denoise, check=cfg.check, **opts)
            timing.sync(device)
            wall += time.perf_counter() - start
            inside += res.stats.get("score_time", 0.0)  # timed inside the run: overhead >= 1 by construction
            if cfg.bare_max_calls is not None:  # optional: bare calls on the final batch (informative only)
                b_time, b_timed = timing.bare_score_time(score, res.samples, res.nfe, group.sde.T, eps,
                                                         max_calls=cfg.bare_max_calls)
                bare, timed = bare + b_time, timed + b_timed
            rows += res.nfe * bs
            calls += res.stats.get("calls", 0)
            steps = res.stats.get("steps", steps)
            xs.append(res.samples.cpu())
            done += bs
            n_batches += 1
    x = torch.cat(xs)
    values = judge.evaluate(x, cell.seed)
    ratios = {m: ratio(v, floor[m], m) for m, v in values.items()}
    samples_file = None
    n_save = cfg.save_samples if cfg.save_samples is not None else (1000 if group.problem.dim == 2 else 0)
    if n_save > 0:
        samples_file = f"samples/{_safe(cell.key)}.npy"
        _save_npy(out / samples_file, x[:n_save])
    nfe = rows / cell.samples
    return {
        "status": "ok", "error": None, "nfe": nfe, "steps": steps, "calls": calls,
        "over_budget": cell.budget.kind in ("nfe", "fit", "scale") and nfe > cell.budget.value + 1e-9, "fit": fit,
        "method_info": info, "metrics": values, "floor": floor,
        "ratio": {m: r for m, (r, _) in ratios.items()},
        "ratio_basis": {m: b for m, (_, b) in ratios.items()},
        "wall_s": wall, "wall_per_batch_s": wall / n_batches, "score_s": inside,
        "bare_s": bare if timed else None, "bare_calls_timed": timed,
        "overhead": wall / inside if inside > 0 else None, "samples_per_s": cell.samples / wall,
        "batch_size": batch, "n_batches": n_batches, "peak_mem_mb": mem.peak_mb,
        "base_mem_mb": mem.base_mb, "mem_kind": mem.kind, "samples_file": samples_file,
    }


def _batch_size(group: Group, cfg: BenchConfig, eps: float) -> int:
    if cfg.batch_size is not None:
        return min(cfg.batch_size, cfg.samples)
    return timing.auto_batch_size(group.problem.score_for(group.sde), group.problem.shape, cfg.samples,
                                  torch.device(cfg.device), cfg.dtype, eps)


def _base_row(cell: Cell, group: Group, cfg: BenchConfig, run_id: str, eps: float) -> dict:
    return {
        "schema": SCHEMA, "key": cell.key, "run_id": run_id,
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "problem": cell.problem, "problem_desc": group.problem.description,
        "dim": group.problem.dim, "sde": cell.sde, "sde_repr": repr(group.sde),
        "method": cell.method, "budget_kind": cell.budget.kind, "budget": cell.budget.value,
        "budget_label": cell.budget.label, "seed": cell.seed, "samples": cell.samples,
        "eps": eps, "denoise": cfg.denoise, "grid": cfg.grid, "device": cfg.device,
        "dtype": str(cfg.dtype).replace("torch.", ""), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "method_info": method_info(cell.method, cfg.denoise),
    }


def _prepare(group: Group, cfg: BenchConfig, out: Path, *, batch: int | None = None) -> tuple:
    """(judge, floor, batch size) of a group; the floor is computed once and cached in floors.json."""
    eps = group.sde.default_eps if cfg.eps is None else cfg.eps
    judge = Judge(group.problem, group.sde, cfg.samples, group.metrics, cfg.denoise, eps, cfg.mmd_samples)
    floor = _floor(out, group, judge, cfg)
    return judge, floor, _batch_size(group, cfg, eps) if batch is None else batch


def _prepare_shared(groups: dict[int, Group], cfg: BenchConfig, out: Path, bar) -> dict[int, tuple]:
    """Rank 0's part before the cells: ``_prepare`` for every group of ``groups`` (by index) and
    the exact-sample files of 2-D problems.  Other ranks then use rank 0's batch sizes."""
    prepared = {}
    for gi, group in groups.items():
        bar.set_postfix_str(f"{group.problem.name}/{group.sde_label}: noise floor")
        prepared[gi] = _prepare(group, cfg, out)
        judge = prepared[gi][0]
        if group.problem.dim == 2 and judge.truth is not None:
            exact = judge.truth.sample(1000, generator=torch.Generator().manual_seed(7))
            _save_npy(out / f"samples/{_safe(group.problem.name)}_{_safe(group.sde_label)}__exact.npy", exact)
    return prepared


def _run_one(cell: Cell, group: Group, prepared: tuple, cfg: BenchConfig, run_id: str, out: Path, bar) -> dict:
    """The row of one cell; a failing cell gives an error row instead of an exception."""
    judge, floor, batch = prepared
    row = _base_row(cell, group, cfg, run_id, judge.eps)
    try:
        row.update(_run_cell(cell, group, judge, floor, cfg, batch, out))
    except Exception as e:  # noqa: BLE001 - a failing cell is a result, not a crash
        row.update({"status": "error", "error": f"{type(e).__name__}: {e}",
                    "traceback": traceback.format_exc(limit=4)[-2000:], "floor": floor,
                    "metrics": {}, "ratio": {}})
        bar.write(f"bench: {cell.key} failed: {row['error']}")
    return row


def _rank_store(out: Path, rank: int) -> ResultStore:
    return ResultStore(out / RANK_DIR / f"results.rank{rank}.jsonl")


def _merge_rank_files(out: Path, order: dict[str, int]) -> int:
    """Move the rows of the per-rank files into results.jsonl, in plan order after the rows
    already there (a row of the same key replaces the old one, as a retry does); returns the
    number of rows moved.  Run by rank 0 only, while the other ranks wait at a barrier."""
    files = sorted((out / RANK_DIR).glob("results.rank*.jsonl"))
    rows = [r for f in files for r in ResultStore(f).rows()]
    if rows:
        rows.sort(key=lambda r: order.get(r["key"], len(order)))
        ResultStore(out / "results.jsonl").extend(rows)
    for f in files:
        f.unlink()
    with contextlib.suppress(OSError):  # left in place if it holds anything else
        (out / RANK_DIR).rmdir()
    return len(rows)


def run_bench(cfg: BenchConfig, *, log=None) -> dict:
    """Run every pending cell of ``cfg``; returns counts {"cells", "skipped", "ran", "failed",
    "interrupted"}.  Invalid options raise ValueError before anything is written.

    Inside a torch.distributed process group (torchrun) the cells are spread over the ranks:
    cell j of the plan runs on rank j mod world and its row goes to the rank's own file
    ``OUT/ranks/results.rankR.jsonl`` (atomic appends, so a killed rank loses only its current
    cell).  Rank 0 computes the noise floors first and, after a barrier at the end, moves the
    rows into ``OUT/results.jsonl`` in plan order: the same rows, in the same order, as a run
    in one process (timings apart).  The returned counts are summed over the ranks.

    Raises:
        ValueError: unknown problem/method/metric, infeasible budget, bad reference, more ranks
            than cells, ...
    """
    log = log or (lambda msg: print(msg, file=sys.stderr))
    rank, world = dist_info()
    groups = plan_cells(cfg)
    try:
        device = torch.device(cfg.device)
    except RuntimeError:
        raise ValueError(f"unknown --device {cfg.device!r}; use cpu, cuda, cuda:N, ...") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but CUDA is not available")
    out = Path(cfg.out)
    check_settings(out, cfg, _bench_manifest(out).get("settings"))
    for g in groups:
        _validate_score(g, device, cfg.dtype)
    cells = [(gi, c) for gi, g in enumerate(groups) for c in g.cells]
    if world > len(cells):
        raise ValueError(f"world size {world} is larger than the number of cells ({len(cells)}): start at most "
                         f"{len(cells)} processes")
    order = {c.key: j for j, (_, c) in enumerate(cells)}
    barrier()
    if rank == 0 and (out / RANK_DIR).is_dir():  # rows of a killed distributed run
        _merge_rank_files(out, order)
    if rank == 0:  # a line torn by hand would otherwise stay (and warn) forever
        ResultStore(out / "results.jsonl").repair()
    barrier()
    done = ResultStore(out / "results.jsonl").keys(ok_only=cfg.retry_failed)
    pending = [(j, gi, c) for j, (gi, c) in enumerate(cells) if c.key not in done]
    summary = {"cells": len(cells), "skipped": len(cells) - len(pending), "ran": 0, "failed": 0,
               "interrupted": False}
    if summary["skipped"] and rank == 0:
        log(f"bench: {summary['skipped']} of {len(cells)} cells already in {out / 'results.jsonl'}; skipping them")
    if not pending:
        return summary
    mine = [(gi, c) for j, gi, c in pending if j % world == rank]
    bar = tqdm(total=len(mine), desc="bench" if world == 1 else f"bench rank {rank}", unit="cell",
               disable=not cfg.progress, file=sys.stderr)
    try:
        summary.update(_run_pending(cfg, groups, pending, mine, out, bar, rank, world))
    except KeyboardInterrupt:
        summary["interrupted"] = True
        log(f"\nbench: interrupted; results so far are in {out}; re-run the same command to resume")
    finally:
        bar.close()
    barrier()
    if rank == 0 and world > 1:
        _merge_rank_files(out, order)
    counts = gather((summary["ran"], summary["failed"]))
    summary["ran"], summary["failed"] = sum(r for r, _ in counts), sum(f for _, f in counts)
    return summary


def _run_pending(cfg: BenchConfig, groups: list[Group], pending: list, mine: list, out: Path, bar,
                 rank: int, world: int) -> dict:
    """Rank 0 prepares every pending group (floors, batch sizes), then each rank runs its cells."""
    prepared: dict[int, tuple] = {}
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "manifest.json", {"settings": settings(cfg), "argv": sys.argv[1:]})
        prepared = _prepare_shared({gi: groups[gi] for _, gi, _ in pending}, cfg, out, bar)
    batches = {gi: p[2] for gi, p in prepared.items()}
    batches, run_id = broadcast((batches, uuid.uuid4().hex[:12]))  # rank 0's, on every rank
    barrier()
    store = ResultStore(out / "results.jsonl") if world == 1 else _rank_store(out, rank)
    ran = failed = 0
    for gi, cell in mine:
        if gi not in prepared:
            prepared[gi] = _prepare(groups[gi], cfg, out, batch=batches[gi])
        bar.set_postfix_str(cell.key)
        row = _run_one(cell, groups[gi], prepared[gi], cfg, run_id, out, bar)
        store.append(row, replace=cfg.retry_failed)
        ran, failed = ran + 1, failed + (row["status"] != "ok")
        bar.update(1)
    return {"ran": ran, "failed": failed}
