"""Overhead of the per-sample adaptive samplers: wall time ÷ time spent inside the score, both
measured in the same run (a timing wrapper around the score), at batch 10k.

    python benchmarks/adaptive_overhead.py [--problems ring8,gmm64] [--samples 10000] [--threads 1]
        [--repeats 5] [--out benchmarks/adaptive_overhead.md]

Bars (issue 18): ≤ 1.3 on the 2-D ring, ≤ 1.1 on the 64-d mixture.  The ratio is less sensitive
to machine load than the absolute times (both parts slow down together), though not immune to it
(each row records the load average).  Rows are appended to a JSON-lines file beside the table; a
re-run skips finished rows.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

import scoresolve as ss

METHODS = ["gotta_go_fast", "ode_adaptive_rk23", "ode_adaptive_ps"]
PROBLEMS = {"ring8": lambda: ss.targets.GaussianMixture.ring(8, 2.0, 0.1),
            "gmm64": lambda: ss.targets.GaussianMixture.random(64, 10, seed=0, anisotropic=True)}


def measure(problem: str, method: str, n: int, repeats: int = 1) -> dict:
    target, sde = PROBLEMS[problem](), ss.VPSDE()
    fn, spent = target.score_fn(sde), [0.0]

    def score(x, t):
        start = time.perf_counter()
        out = fn(x, t)
        spent[0] += time.perf_counter() - start
        return out

    ss.sample(score, sde, (256, target.dim), method, generator=torch.Generator().manual_seed(1))  # warm-up
    runs = []
    for _ in range(repeats):  # the same solve again: the ratio's spread is the machine's, the median is reported
        spent[0] = 0.0
        res = ss.sample(score, sde, (n, target.dim), method, generator=torch.Generator().manual_seed(0))
        runs.append((res.stats["wall_time"] / spent[0], res.stats["wall_time"], spent[0]))
    ratio, wall, in_score = sorted(runs)[len(runs) // 2]
    metrics = ("component_w2", "logp_gap")
    floor = ss.metrics.noise_floor(target, n, repeats=5, metrics=metrics)
    ref = target.sample(n, generator=torch.Generator().manual_seed(99), dtype=torch.float64)
    ev = ss.metrics.evaluate(res.samples, target, ref, metrics=metrics)
    return {"problem": problem, "method": method, "batch": n, "nfe": res.nfe, "wall": wall, "score_time": in_score,
            "overhead": ratio, "overheads": [round(r[0], 4) for r in runs], "calls": res.stats["calls"],
            "load": os.getloadavg()[0],
            **{f"{k}_x_floor": ev[k] / floor[k][0] for k in metrics}}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--problems", default="ring8,gmm64")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--samples", type=int, default=10_000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="benchmarks/adaptive_overhead.md")
    p.add_argument("--label", default="", help="tag for the rows (e.g. the commit)")
    p.add_argument("--repeats", type=int, default=5, help="solves per row; the median ratio is reported")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    jsonl = os.path.splitext(a.out)[0] + ".jsonl"
    rows = [json.loads(line) for line in open(jsonl)] if os.path.exists(jsonl) else []
    done = {(r["problem"], r["method"], r.get("label", "")) for r in rows}
    for problem in a.problems.split(","):
        for method in a.methods.split(","):
            if (problem, method, a.label) in done:
                continue
            rows.append({**measure(problem, method, a.samples, a.repeats), "label": a.label})
            with open(jsonl + ".tmp", "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)
            os.replace(jsonl + ".tmp", jsonl)
            print(json.dumps(rows[-1]), flush=True)
    lines = ["# Per-sample adaptive samplers: overhead = wall ÷ time inside the score (same run)", "",
             f"`python benchmarks/adaptive_overhead.py --label <tag>`, VP SDE, default options, batch {a.samples}, "
             f"{a.threads} thread(s), on a 2-core CPU machine; the load column is the 1-minute load average when the",
             "row was measured (rows at load ≈ 8 shared the machine with other jobs: their absolute times are "
             "inflated, the ratio less so).  Bars (issue 18): ≤ 1.3 ring8, ≤ 1.1 gmm64.  Rows with a range were "
             "solved 5 times (`--repeats`): the overhead is the median, the range the spread of the five; older "
             "rows are one solve.", "",
             "Quality: per-component W2 / exact log-density gap as multiples of their noise floors (one seed).", "",
             "| label | problem | method | NFE | W2 / logp (×floor) | score calls | wall (s) | in score (s) "
             "| load | overhead | range |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        q = (f"{r['component_w2_x_floor']:.2f} / {r['logp_gap_x_floor']:.2f}" if "logp_gap_x_floor" in r else "—")
        lines.append(f"| {r.get('label', '')} | {r['problem']} | {r['method']} | {r['nfe']:.1f} | {q} | {r['calls']} | "
                     f"{r['wall']:.2f} | {r['score_time']:.2f} | {r.get('load', 8.0):.1f} | {r['overhead']:.2f} | "
                     + (f"{min(r['overheads']):.2f}–{max(r['overheads']):.2f} |" if "overheads" in r else "— |"))
    with open(a.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
