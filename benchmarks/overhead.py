"""Solver overhead measured inside the run: wall time of ``sample`` ÷ time spent inside the score
(``SampleResult.stats["overhead"]``; CountingScore times every call), for every registered
sampler at batch 10k.  A ratio of 1.00 means the sampler costs nothing outside the score.

    python benchmarks/overhead.py [--problem gmm64] [--sde vp] [--nfe 25] [--batch 10000] [--repeats 3]
                                  [--out benchmarks/overhead_results.md]

Each method runs ``--repeats`` times after one warm-up; the table gives the median ratio and
the range.  Run with one thread on a quiet machine for the absolute times; the ratio is the
same run's two clocks, so load on the machine moves it far less than it moves either clock.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import scoresolve as ss
from scoresolve.bench.problems import PROBLEMS
from scoresolve.bench.store import atomic_write_bytes
from scoresolve.noise import Noise


class _NoiseClock:
    """Times every Noise draw as the sampler sees it (torch's CPU normal_ fills a (10000, 64) tensor
    in ~2 ms; ``Noise`` draws the next one on a worker thread while the score runs, so what is left
    in line is the wait for it, the scaling by std and the thread's start)."""

    def __init__(self):
        self.seconds = 0.0

    def __enter__(self):
        self._call = call = Noise.__call__

        def timed(noise, *args, **kwargs):
            t0 = time.perf_counter()
            try:
                return call(noise, *args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t0

        Noise.__call__ = timed
        return self

    def __exit__(self, *exc):
        Noise.__call__ = self._call


def measure(method: str, score_fn, sde, shape, nfe: int, repeats: int) -> dict:
    kw = {"nfe": nfe} if ss.SAMPLERS[method].nfe_per_step is not None else {}
    if method == "ald":
        kw = {"steps": max(1, nfe // 10)}
    runs, noise_ratios = [], []
    for r in range(repeats + 1):
        with _NoiseClock() as clock:
            res = ss.sample(score_fn, sde, shape, method, generator=torch.Generator().manual_seed(r), **kw)
        if r:  # the first run warms caches and allocator
            runs.append(res.stats)
            noise_ratios.append(res.stats["overhead"] - clock.seconds / res.stats["score_time"])
    ratios = [s["overhead"] for s in runs]
    return {"method": method, "nfe": float(res.nfe), "median": statistics.median(ratios), "min": min(ratios),
            "max": max(ratios), "no_rng": statistics.median(noise_ratios),
            "score_ms": 1e3 * statistics.median(s["score_time"] / s["calls"] for s in runs)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--problem", default="gmm64", choices=sorted(PROBLEMS))
    p.add_argument("--sde", default="vp", choices=["vp", "subvp", "ve"])
    p.add_argument("--nfe", type=int, default=25)
    p.add_argument("--batch", type=int, default=10_000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--methods", default="all")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    target = PROBLEMS[a.problem][0]()
    sde = {"vp": ss.VPSDE(), "subvp": ss.SubVPSDE(), "ve": ss.VESDE(sigma_max=50.0)}[a.sde]
    methods = list(ss.SAMPLERS) if a.methods == "all" else a.methods.split(",")
    shape = (a.batch, target.dim)
    rows = []
    for m in methods:
        t0 = time.perf_counter()
        rows.append(measure(m, target.score_fn(sde), sde, shape, a.nfe, a.repeats))
        print(f"{m:20s} NFE {rows[-1]['nfe']:7.1f}  overhead {rows[-1]['median']:.3f} "
              f"[{rows[-1]['min']:.3f}, {rows[-1]['max']:.3f}]  without RNG {rows[-1]['no_rng']:.3f}  "
              f"score {rows[-1]['score_ms']:.1f} ms/call  "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
    if a.out:
        lines = [f"# Solver overhead inside the run ({a.problem}, {a.sde}, batch {a.batch}, {a.nfe} NFE, "
                 f"{a.threads} thread(s))", "",
                 f"Command: `python benchmarks/overhead.py --problem {a.problem} --sde {a.sde} --nfe {a.nfe} "
                 f"--batch {a.batch} --repeats {a.repeats} --out {a.out}`", "",
                 "overhead = wall time of `sample` ÷ time inside the score (same run; median of the repeats, "
                 "range in brackets).  'without RNG' subtracts the time the sampler waited for its Gaussian draws "
                 "(`Noise` draws the next one on a worker thread while the score runs; torch's CPU `normal_` takes "
                 "~2 ms per (10000, 64) draw).",
                 "", "| method | NFE | overhead | range | without RNG | score ms/call |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['method']} | {r['nfe']:.1f} | {r['median']:.3f} | {r['min']:.3f}–{r['max']:.3f} | "
                  f"{r['no_rng']:.3f} | {r['score_ms']:.1f} |" for r in rows]
        atomic_write_bytes(a.out, ("\n".join(lines) + "\n").encode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
