"""Scale-out over processes with torch.distributed (torchrun; Gloo on CPU, NCCL on GPU).

Work is cut into *chunks* of a fixed global size, independent of the number of processes:
chunk k covers items [k·C, (k+1)·C) and is done by rank k mod world.  Every chunk is written
atomically (temp file + rename) into the output directory beside a manifest of the job's
configuration, so

* a re-run skips finished chunks (a killed rank loses only the chunk it was working on),
* the merged result does not depend on the world size: each chunk is computed with the same
  inputs and the same batch whatever the number of ranks, and sample i always uses the seed
  ``sample_seeds(base, [i])`` — so N ranks reproduce a single-process run bit for bit on CPU,
* the merge checks that every chunk is there, in order, before writing the result.

Nothing here calls a collective inside a solve: ranks only meet at a barrier after their chunks.
Without torchrun (no process group) everything runs in the one process.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import Tensor

from .noise import _GOLDEN, _mix, _uniform

__all__ = [
    "dist_info", "sample_seeds", "derive_seeds", "seeded_uniform", "chunk_ranges", "run_chunks", "map_chunks",
    "merge_chunks", "sample_to_dir", "likelihood_to_dir", "barrier", "broadcast", "gather", "process_group",
]


def dist_info() -> tuple[int, int]:
    """(rank, world size) of the current process group, or (0, 1) without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    """``torch.distributed.barrier()`` inside a process group; nothing without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def broadcast(obj):
    """Rank 0's ``obj`` on every rank (``broadcast_object_list``); ``obj`` itself without a group."""
    import torch.distributed as dist

    if dist_info()[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj) -> list:
    """Every rank's ``obj`` in rank order (``all_gather_object``); ``[obj]`` without a group."""
    import torch.distributed as dist

    world = dist_info()[1]
    if world == 1:
        return [obj]
    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


@contextlib.contextmanager
def process_group() -> Iterator[tuple[int, int]]:
    """Join torchrun's process group for the duration of a command; yields (rank, world size).

    Started by torchrun (``RANK`` in the environment) with no group yet, this initialises one
    (NCCL when CUDA is available, each rank on GPU ``LOCAL_RANK``; Gloo otherwise) and destroys it
    on exit.  A group the caller already initialised is used as it is and left alone; without
    torchrun nothing is initialised and the command runs in this one process.
    """
    import torch.distributed as dist

    mine = "RANK" in os.environ and dist.is_available() and not dist.is_initialized()
    if mine:
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group("nccl" if cuda else "gloo")
    try:
        yield dist_info()
    finally:
        if mine and dist.is_initialized():
            dist.destroy_process_group()


def sample_seeds(base: int, indices) -> Tensor:
    """Per-sample seeds for samples ``indices`` of a job with base seed ``base``: a hash of
    (base, i), so sample i has the same noise in any shard, batch or world size."""
    idx = torch.as_tensor(list(indices) if not isinstance(indices, Tensor) else indices, dtype=torch.int64)
    b = torch.full((), int(base), dtype=torch.int64) * _GOLDEN
    return _mix(_mix(b + _GOLDEN) + idx)


def derive_seeds(seeds: Tensor, stream: int) -> Tensor:
    """Independent per-sample seeds for random stream ``stream`` (e.g. one per repeat), derived
    from each sample's own seed, so they too do not depend on the batch or the world size."""
    s = torch.as_tensor(seeds, dtype=torch.int64)
    return _mix(s + (int(stream) + 1) * torch.full((), _GOLDEN, dtype=torch.int64))


def seeded_uniform(seeds: Tensor, numel: int) -> Tensor:
    """float64 uniforms in (0, 1) of shape (len(seeds), numel), a pure function of (seed, element):
    the counter-based generator of ``scoresolve.noise``, for dequantization noise."""
    s = torch.as_tensor(seeds, dtype=torch.int64)
    idx = torch.arange(numel, dtype=torch.int64, device=s.device)
    return _uniform(_mix(_mix(s.unsqueeze(1)) + (2 * idx + 1) * _GOLDEN))


def chunk_ranges(n: int, chunk: int) -> list[tuple[int, int]]:
    """The global chunks [start, stop) of [0, n), ``chunk`` items each (the last may be shorter)."""
    if n < 1 or chunk < 1:
        raise ValueError(f"need n >= 1 and chunk >= 1, got n={n}, chunk={chunk}")
    return [(s, min(s + chunk, n)) for s in range(0, n, chunk)]


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _atomic_write_text(text: str, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _chunk_path(out: Path, start: int, stop: int) -> Path:
    return out / f"chunk-{start:09d}-{stop:09d}.pt"


def _check_manifest(out: Path, config: dict) -> None:
    """Write the manifest on first use; afterwards refuse a directory of another job."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "manifest.json"
    config = json.loads(json.dumps(config, default=str))
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except ValueError as err:
            raise ValueError(f"{path} is unreadable ({err}): not this job's directory") from None
        if not isinstance(old, dict):
            raise ValueError(f"{path} is not a job manifest: not this job's directory")
        if old != config:
            diff = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
            raise ValueError(
                f"{out} holds chunks of another job (manifest differs in: {', '.join(diff)}); "
                "use a new output directory or the original settings"
            )
        return
    stray = sorted(p.name for p in out.glob("chunk-*.pt"))
    if stray:
        raise ValueError(f"{out} holds chunk files without a manifest ({stray[0]}, ...): not this job's")
    rank, _ = dist_info()
    if rank == 0:
        _atomic_write_text(json.dumps(config, indent=1, sort_keys=True), path)


def _check_world(n: int, chunk: int, world: int, unit: str) -> None:
    """More ranks than items is an error; more ranks than chunks only leaves some idle."""
    if world > n:
        raise ValueError(f"world size {world} is larger than the number of {unit} ({n}): "
                         f"start at most {n} processes")
    chunks = math.ceil(n / chunk)
    if world > chunks and dist_info()[0] == 0:
        print(f"scoresolve.distributed: {world - chunks} of {world} ranks have no work: {n} {unit} make only "
              f"{chunks} chunk(s) of {chunk}; a chunk size of at most {math.ceil(n / world)} uses every rank",
              file=sys.stderr)


def run_chunks(
    fn: Callable[[int, int], dict], n: int, out: str | os.PathLike, *, chunk: int, config: dict,
    progress: bool = False, unit: str = "items",
) -> list[tuple[int, int]]:
    """Compute ``fn(start, stop) -> {name: tensor or list}`` for this rank's unfinished chunks of
    [0, n) (chunk k belongs to rank k mod world) and save each atomically.  Returns the chunks
    this rank computed.

    Raises:
        ValueError: more ranks than items, or ``out`` holds another job's chunks (its manifest
            differs from ``config``, or chunk files without a manifest).
    """
    rank, world = dist_info()
    ranges = chunk_ranges(n, chunk)
    _check_world(n, chunk, world, unit)
    out = Path(out)
    _check_manifest(out, {**config, "n": n, "chunk": chunk})
    barrier()
    mine = [c for k, c in enumerate(ranges) if k % world == rank]
    todo = [c for c in mine if not _chunk_path(out, *c).exists()]
    from tqdm.auto import tqdm

    for start, stop in tqdm(todo, desc=f"rank {rank}", disable=not progress):
        result = fn(start, stop)
        _atomic_save({"start": start, "stop": stop, **result}, _chunk_path(out, start, stop))
    return todo


def _concat(parts: list[dict]) -> dict:
    """Join chunk results in order: tensors are concatenated, lists chained."""
    keys = [k for k in parts[0] if k not in ("start", "stop")]
    return {k: torch.cat([p[k] for p in parts]) if isinstance(parts[0][k], Tensor) else
            [v for p in parts for v in p[k]] for k in keys}


def map_chunks(fn: Callable[[int, int], dict], n: int, *, chunk: int) -> dict:
    """``fn`` over the chunks of [0, n) in this process, joined as ``merge_chunks`` joins the
    files: the same numbers as a sharded run with the same chunk size, with nothing written."""
    return _concat([fn(start, stop) for start, stop in chunk_ranges(n, chunk)])


def merge_chunks(out: str | os.PathLike, n: int, chunk: int) -> dict:
    """Join the chunk files of [0, n) in order (tensors concatenated, lists chained), checking
    that none is missing and each holds the range its name says."""
    out = Path(out)
    parts = []
    for start, stop in chunk_ranges(n, chunk):
        p = _chunk_path(out, start, stop)
        if not p.exists():
            raise FileNotFoundError(f"chunk [{start}, {stop}) is missing in {out}: re-run the job to finish it")
        d = torch.load(p, map_location="cpu", weights_only=True)
        if (d["start"], d["stop"]) != (start, stop):
            raise ValueError(f"{p} holds [{d['start']}, {d['stop']}), expected [{start}, {stop})")
        parts.append(d)
    return _concat(parts)


def sample_to_dir(
    score_fn, sde, data_shape: tuple[int, ...], num: int, out: str | os.PathLike, *,
    method="pc", seed: int = 0, chunk: int = 1000, device=None, dtype=None, progress: bool = False,
    config: dict | None = None, **sample_kwargs,
) -> Path | None:
    """Draw ``num`` samples into ``out`` across the ranks of the process group (or alone).

    Sample i uses the per-sample seed ``sample_seeds(seed, [i])``; chunks are written atomically
    and skipped on a re-run; rank 0 merges them into ``out/samples.pt`` (a dict with ``samples``
    and ``nfe``) and ``out/samples.npz`` and returns that path (other ranks return None).
    ``config`` adds job settings (e.g. the model run directory) to the manifest.
    """
    from .sampling import sample

    if num < 1:
        raise ValueError(f"num must be >= 1, got {num}")
    name = method if isinstance(method, str) else repr(method)
    job = {"kind": "sample", "method": name, "seed": seed, "shape": list(data_shape), "sde": repr(sde),
           "dtype": str(dtype), "options": {k: repr(v) for k, v in sorted(sample_kwargs.items())},
           **(config or {})}

    def draw(start: int, stop: int) -> dict:
        res = sample(score_fn, sde, (stop - start, *data_shape), method, seeds=sample_seeds(seed, range(start, stop)),
                     device=device, dtype=dtype, **sample_kwargs)
        return {"samples": res.samples.cpu(), "nfe": torch.full((stop - start,), float(res.nfe))}

    run_chunks(draw, num, out, chunk=chunk, config=job, progress=progress, unit="samples")
    barrier()
    rank, _ = dist_info()
    if rank != 0:
        return None
    merged = merge_chunks(out, num, chunk)
    path = Path(out) / "samples.pt"
    _atomic_save(merged, path)
    import numpy as np

    tmp = Path(out) / f".samples.tmp{os.getpid()}.npz"
    np.savez(tmp, samples=merged["samples"].numpy(), nfe=merged["nfe"].numpy())
    os.replace(tmp, Path(out) / "samples.npz")
    return path


def likelihood_to_dir(
    score_fn, sde, data: Tensor, out: str | os.PathLike, *, seed: int = 0, chunk: int = 256,
    progress: bool = False, config: dict | None = None, **likelihood_kwargs,
) -> dict[str, Tensor] | None:
    """``scoresolve.likelihood`` over a data set, its points cut into chunks across the ranks.

    Point i uses the probe seed ``sample_seeds(seed, [i])`` (Hutchinson), so the gathered
    result is in the data's order and equal to a single-process run.  Each rank's adaptive
    solves run without collectives.  Rank 0 writes ``out/likelihood.pt`` and returns the
    gathered {logp, logp_stderr, bpd, nfe}; other ranks return None.
    """
    from .likelihood import likelihood

    n = data.shape[0]
    job = {"kind": "likelihood", "seed": seed, "shape": list(data.shape), "sde": repr(sde),
           "data_sum": float(data.double().sum()),
           "options": {k: repr(v) for k, v in sorted(likelihood_kwargs.items())}, **(config or {})}

    def solve(start: int, stop: int) -> dict:
        res = likelihood(score_fn, sde, data[start:stop], seeds=sample_seeds(seed, range(start, stop)),
                         **likelihood_kwargs)
        return {"logp": res.logp.cpu(), "logp_stderr": res.logp_stderr.cpu(), "bpd": res.bpd.cpu(),
                "nfe": torch.full((stop - start,), float(res.nfe))}

    run_chunks(solve, n, out, chunk=chunk, config=job, progress=progress, unit="points")
    barrier()
    if dist_info()[0] != 0:
        return None
    merged = merge_chunks(out, n, chunk)
    _atomic_save(merged, Path(out) / "likelihood.pt")
    return merged
