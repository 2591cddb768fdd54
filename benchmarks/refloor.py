"""Rewrite the log-density-gap floor of benchmark result directories in closed form.

``scoresolve bench`` took every floor as the mean of its metric over a few exact sample sets (8 by
default).  For ``logp_gap`` that mean is off by 0.76 / √repeats (27 % at 8; on the held-out mixtures
the cached floors were 11–30 % low), which moves every logp-gap ratio with it; the bench now takes that
floor in closed form (``scoresolve.metrics.logp_gap_floor``).  This script brings directories written
before up to date without re-sampling: per (problem, sde) it computes the closed-form floor, rewrites
each row's ``floor["logp_gap"]`` and ``ratio["logp_gap"]`` (= the stored raw metric / the new floor),
replaces ``floors.json`` by the current key and regenerates ``report.md``.  Idempotent.

The JSON-lines files of the scripts built on benchmarks/bias_common.py (fitted_grid, fitted_grid_cost,
subvp_tail, ggf_norm) hold ratios only (``gap``, ``bias`` in floor units, divided by the mean of 4 exact
repeats); their rows without ``logp_floor`` are rescaled by old floor / closed-form floor, the old floor
recomputed exactly as it was (same seed, same draws), and marked.

    python benchmarks/refloor.py benchmarks/results/heldout_* benchmarks/results/ring8_vp ...
    python benchmarks/refloor.py benchmarks/results/fitted_grid.jsonl ...   # then each script's report
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import torch

from scoresolve.bench.problems import analytic_problem, make_sde
from scoresolve.bench.report import write_report
from scoresolve.bench.store import ResultStore, atomic_write_json, read_json
from scoresolve.metrics import logp_gap, logp_gap_floor


def _sde(label: str):
    m = re.fullmatch(r"(\w+)(?:\((.*)\))?", label)
    opts = dict((k, float(v)) for k, v in (kv.split("=") for kv in m.group(2).split(","))) if m.group(2) else {}
    return make_sde(m.group(1), opts)


def refloor(out: Path) -> int:
    store = ResultStore(out / "results.jsonl")
    rows, floors, changed = store.rows(), {}, 0
    for r in rows:
        if "logp_gap" not in r.get("floor", {}):
            continue
        key = (r["problem"], r["sde"], r["samples"], r["denoise"], r["eps"])
        if key not in floors:
            target = analytic_problem(r["problem"]).target
            truth = target if r["denoise"] else target.diffused(r["eps"], _sde(r["sde"]))
            floors[key] = logp_gap_floor(truth, r["samples"])
        mean, sd = floors[key]
        r["floor"]["logp_gap"] = [mean, sd]
        if r.get("metrics", {}).get("logp_gap") is not None:
            r["ratio"]["logp_gap"] = r["metrics"]["logp_gap"] / mean
        changed += 1
    store.path.write_text("".join(json.dumps(r) + "\n" for r in rows))  # (a plain rewrite: a one-off tool)
    cached = read_json(out / "floors.json", {})
    fresh = {}
    for k, v in cached.items():
        prob, sde, n, denoise, eps = k.split("|")[:5]
        match = [f for (p, s, nn, d, e), f in floors.items()
                 if (p, s, f"n={nn}", f"denoise={d}", f"eps={e:g}") == (prob, sde, n, denoise, eps)]
        if "logp_gap" in v and match:
            v = {**v, "logp_gap": list(match[0])}
        fresh[k if k.endswith("|logp_gap=closed-form") else k + "|logp_gap=closed-form"] = v
    atomic_write_json(out / "floors.json", fresh)
    write_report(out)
    return changed


def _old_floor(truth, n: int) -> float:
    """bias_common's floor before: the mean gap over 4 exact repeats of noise_floor's draws (seed 12345)."""
    g = torch.Generator().manual_seed(12345)
    gaps = []
    for _ in range(4):
        x = truth.sample(n, generator=g, dtype=torch.float64)  # then the reference, as evaluate() drew it
        gaps.append(logp_gap(x, truth, truth.sample(n, generator=g, dtype=torch.float64)))
    return sum(gaps) / len(gaps)


def rescale(path: Path) -> int:
    """Rescale the bias_common rows of ``path`` that still hold the old floor; returns how many."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bias_common import SAMPLES, problem

    rows, factors, changed = [json.loads(ln) for ln in path.read_text().splitlines()], {}, 0
    for r in rows:
        if "gap" not in r or r.get("logp_floor") == "closed-form":
            continue
        sde = make_sde(r["sde"])
        key = (r["problem"], r["sde"], r.get("eps", sde.default_eps))
        if key not in factors:
            truth = problem(r["problem"]).diffused(key[2], sde)
            factors[key] = _old_floor(truth, SAMPLES) / logp_gap_floor(truth, SAMPLES)[0]
        r["gap"], r["bias"], r["logp_floor"] = r["gap"] * factors[key], r["bias"] * factors[key], "closed-form"
        changed += 1
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"{path}: old/new floor " + ", ".join(f"{'/'.join(map(str, k))} {v:.3f}" for k, v in factors.items()))
    return changed


if __name__ == "__main__":
    for d in map(Path, sys.argv[1:]):
        print(f"{d}: {rescale(d) if d.suffix == '.jsonl' else refloor(d)} rows")
