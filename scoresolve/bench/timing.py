"""Wall time with device synchronisation, bare score time, peak memory, batch sizing.

Solver overhead = wall time of a sampler run / wall time spent inside the score during that
same run (``CountingScore.seconds``, ``SampleResult.stats["score_time"]``), so it is ≥ 1 by
construction for every method, fixed-step or per-sample adaptive.  ``bare_score_time`` (bare
calls on the final batch, ``--bare-max-calls``) is kept as an optional extra column only: its
inputs differ from the run's (e.g. the samples instead of the states), so a ratio against it
can fall below 1.  On CUDA every clock read is preceded by ``torch.cuda.synchronize`` (kernels
are asynchronous); peak memory is ``torch.cuda.max_memory_allocated`` there and the process's
peak resident set size (polled from /proc while the cell runs) on CPU.
"""

from __future__ import annotations

import math
import os
import resource
import sys
import threading
import time

import torch

__all__ = ["sync", "PeakMemory", "bare_score_time", "auto_batch_size", "rss_mb"]


def sync(device: torch.device) -> None:
    """Wait for queued kernels on ``device`` (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":  # pragma: no cover - no MPS here
        torch.mps.synchronize()


def rss_mb() -> float | None:
    """Current resident set size of this process in MB (Linux /proc), else None."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return None


def _maxrss_mb() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 2**20 if sys.platform == "darwin" else r / 2**10


class PeakMemory:
    """Context manager measuring peak memory while it is open: ``.peak_mb`` (CUDA max allocated
    on a CUDA device; peak RSS on CPU, polled every ``interval`` s) and ``.base_mb`` (at entry)."""

    def __init__(self, device: torch.device, interval: float = 0.005):
        self.device = device
        self.interval = interval
        self.peak_mb: float | None = None
        self.base_mb: float | None = None
        self.kind = "cuda_max_allocated" if device.type == "cuda" else "cpu_rss"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            r = rss_mb()
            if r is not None and (self.peak_mb is None or r > self.peak_mb):
                self.peak_mb = r

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base_mb = torch.cuda.memory_allocated(self.device) / 2**20
        else:
            self.base_mb = rss_mb()
            self.peak_mb = self.base_mb
            if self.base_mb is not None:
                self._thread = threading.Thread(target=self._poll, daemon=True)
                self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            r = rss_mb()
            self.peak_mb = max(self.peak_mb or 0.0, r or 0.0)
        else:  # no /proc: the lifetime peak is the best available bound
            self.peak_mb = _maxrss_mb()


def bare_score_time(score_fn, x: torch.Tensor, calls: float, t_max: float, t_min: float,
                    *, max_calls: int | None = None) -> tuple[float, int]:
    """Seconds for ``calls`` bare score evaluations on the batch ``x`` at times spread over
    [t_min, t_max] (synchronised), and the number of calls actually timed.

    ``calls`` is the counted NFE (rows / batch), so it may be fractional: ⌈calls⌉ calls are
    timed and the time scaled by calls/⌈calls⌉.  With ``max_calls`` below that only
    ``max_calls`` are timed and the time is scaled linearly (the row records both counts).
    """
    if not calls > 0:
        return 0.0, 0
    timed = math.ceil(calls)
    if max_calls is not None:
        timed = max(1, min(timed, int(max_calls)))
    dtype = torch.promote_types(x.dtype, torch.float32)
    n_t = min(timed, 16)
    ts = [torch.full((x.shape[0],), t_max + (t_min - t_max) * i / max(n_t - 1, 1), device=x.device,
                     dtype=dtype) for i in range(n_t)]
    sync(x.device)
    start = time.perf_counter()
    for i in range(timed):
        score_fn(x, ts[i % n_t])
    sync(x.device)
    elapsed = time.perf_counter() - start
    return elapsed * calls / timed, timed


def _mem_available_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 4 * 2**30


def auto_batch_size(score_fn, shape: tuple[int, ...], n: int, device: torch.device,
                    dtype: torch.dtype, t: float, *, fraction: float = 0.25, probe: int = 64) -> int:
    """The largest batch (≤ n) whose sampler state and score call fit ``fraction`` of the free
    device memory.

    Per-sample cost is measured with a ``probe``-sized score call on CUDA (max allocated), and
    estimated as 16 copies of the state (solver buffers) plus the probe's RSS growth on CPU.
    """
    numel = 1
    for s in shape:
        numel *= s
    itemsize = torch.empty((), dtype=dtype).element_size()
    state = 16 * numel * itemsize
    probe = max(1, min(probe, n))
    x = torch.randn((probe, *shape), device=device, dtype=dtype)
    tt = torch.full((probe,), t, device=device, dtype=torch.promote_types(dtype, torch.float32))
    with torch.no_grad():
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            score_fn(x, tt)
            sync(device)
            per = (torch.cuda.max_memory_allocated(device) - base) / probe + state
            free = torch.cuda.mem_get_info(device)[0]
        else:
            before = rss_mb() or 0.0
            score_fn(x, tt)
            per = max(0.0, ((rss_mb() or 0.0) - before) * 2**20) / probe + state
            free = _mem_available_bytes()
    return int(max(1, min(n, fraction * free // max(per, 1.0))))
