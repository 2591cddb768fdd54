"""Shared by the signed-bias benchmarks (ggf_norm.py, subvp_tail.py): problems, ground truth at eps,
the three numbers per run, and a resumable JSON-lines store.

Per run: the per-component W2 and the log-density gap as multiples of their noise floors (the bench
metrics), and the signed log-density bias mean log p(x) − E log p in floor units (E from 200k exact
samples): the gap is |bias + noise|, so the bias says what the gap will read on average, and its
standard error over seeds says whether two configurations differ.
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NamedTuple

import torch

from scoresolve.bench.problems import analytic_problem
from scoresolve.metrics import component_w2, logp_gap, noise_floor
from scoresolve.targets import GaussianMixture

SAMPLES = 10_000


def problem(name: str) -> GaussianMixture:
    """ring8, ring8_moved (the 8-ring moved by (5, 5)), gmm64, mix8s7 (6 anisotropic components in 8-d,
    seed 7), or a benchmark problem (``mix<d>s<seed>``: the held-out mixtures)."""
    if name == "ring8":
        return GaussianMixture.ring(8, 2.0, 0.1)
    if name == "ring8_moved":
        r = GaussianMixture.ring(8, 2.0, 0.1)
        return GaussianMixture(r.weights, r.means + 5.0, r.covs)
    if name == "gmm64":
        return GaussianMixture.random(64, 10, seed=0, anisotropic=True)
    if name == "mix8s7":
        return GaussianMixture.random(8, 6, seed=7, anisotropic=True)
    return analytic_problem(name).target


class Ground(NamedTuple):
    truth: GaussianMixture  # p_eps
    w2_floor: float
    gap_floor: float
    e_logp: float  # E log p_eps(x), x ~ p_eps


def ground(target: GaussianMixture, sde, eps: float) -> Ground:
    truth = target.diffused(eps, sde)
    floor = noise_floor(truth, SAMPLES, repeats=4, metrics=("component_w2", "logp_gap"))
    g = torch.Generator().manual_seed(777)
    chunks = 1 if target.dim <= 64 else 20  # 200k draws at once need d² memory per draw
    e_logp = sum(float(truth.log_prob(truth.sample(200_000 // chunks, generator=g, dtype=torch.float64)).mean())
                 for _ in range(chunks)) / chunks
    return Ground(truth, floor["component_w2"][0], floor["logp_gap"][0], e_logp)


def measure(x: torch.Tensor, gr: Ground, seed: int) -> dict:
    """w2, gap (× floor) and the signed bias (floor units) of samples x; the log-density gap's floor in
    closed form (``metrics.logp_gap_floor``, through ``noise_floor``; rows without ``logp_floor`` were
    divided by the mean of 4 exact repeats, benchmarks/refloor.py rescales them)."""
    x = x.double()
    ref = gr.truth.sample(SAMPLES, generator=torch.Generator().manual_seed(1000 + seed), dtype=torch.float64)
    return dict(w2=component_w2(x, gr.truth) / gr.w2_floor, gap=logp_gap(x, gr.truth, ref) / gr.gap_floor,
                bias=(float(gr.truth.log_prob(x).mean()) - gr.e_logp) / gr.gap_floor, logp_floor="closed-form")


def done(path: Path, keys: tuple[str, ...]) -> set[tuple]:
    if not path.exists():
        return set()
    return {tuple(r[k] for k in keys) for r in map(json.loads, path.read_text().splitlines())}


def append(path: Path, row: dict) -> None:
    """One JSON line, written whole and flushed to disk (an interrupted run loses at most the cell in flight)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def rows(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text().splitlines()]


def summary(rs: list[dict]) -> str:
    """"NFE, W2, gap, bias ± se" over the seeds' rows (means; se of the bias over seeds)."""
    n = len(rs)

    def mean(k):
        return sum(r[k] for r in rs) / n
    sd = math.sqrt(sum((r["bias"] - mean("bias")) ** 2 for r in rs) / max(n - 1, 1))
    return f"{mean('nfe'):.1f}, {mean('w2'):.2f}, {mean('gap'):.2f}, {mean('bias'):+.2f} ± {sd / math.sqrt(n):.2f}"


def line(row: dict) -> str:
    """One run's numbers, for the progress log."""
    return f"NFE {row['nfe']:.1f}, W2 {row['w2']:.2f}, gap {row['gap']:.2f}, bias {row['bias']:+.2f}"


def write_report(name: str, title: str, note: str, header: list[str], body: list[str]) -> None:
    """benchmarks/<name>.md: the title, the command that made it, the protocol (``note`` added to it)
    and the table (``header`` cells, ``body`` rows)."""
    root = Path(__file__).resolve().parent
    lines = [f"# {title}", "",
             f"`python benchmarks/{name}.py run && python benchmarks/{name}.py report` (protocol in its docstring).  "
             f"10k samples at eps against the exact p_eps, 1 thread{note}; W2 / gap: per-component W2 and log-density "
             "gap as multiples of their noise floors (the bar: ≤ 2), means over seeds; bias: signed log-density bias "
             "in floor units ± its standard error over seeds.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header), *body]
    (root / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("wrote", root / f"{name}.md")


def config_table(rs: list[dict], cases: Iterable[tuple[str, str]], configs: Iterable,
                 config_of: Callable[[dict], object], extra: Callable[[list[dict]], str] = lambda rows_: "",
                 per_row: bool = False) -> tuple[list[str], dict[object, list[tuple[str, float, float]]]]:
    """Markdown rows "| problem | SDE | cell | ... |", one per (problem, sde) of ``cases`` and a cell per
    configuration (``config_of(row)``): "W2 / gap" means over the case's rows (``extra(rows)`` appended), "—"
    without rows; and per configuration the (problem, w2, gap) of each case (``per_row``: of each row) for
    ``gap_summary``."""
    by = defaultdict(list)
    for r in rs:
        by[(config_of(r), r["problem"], r["sde"])].append(r)
    configs = list(configs)
    body, per = [], defaultdict(list)
    for name, sde_name in cases:
        cells = []
        for c in configs:
            got = by.get((c, name, sde_name))
            if not got:
                cells.append("—")
                continue
            w2, gap = (sum(r[k] for r in got) / len(got) for k in ("w2", "gap"))
            per[c] += [(name, r["w2"], r["gap"]) for r in got] if per_row else [(name, w2, gap)]
            cells.append(f"{w2:.2f} / {gap:.2f}{extra(got)}")
        body.append(f"| {name} | {sde_name} | " + " | ".join(cells) + " |")
    return body, per


def gap_summary(v: list[tuple[str, float, float]]) -> str:
    """"geometric-mean gap (k of n)", k the entries with both W2 and gap ≤ 2; "—" for none."""
    if not v:
        return "—"
    return (f"{math.exp(sum(math.log(g) for _, _, g in v) / len(v)):.2f} "
            f"({sum(w <= 2 and g <= 2 for _, w, g in v)} of {len(v)})")


def pending(out: Path, config_key: str, problems: Iterable[str], sdes: dict, configs: Iterable, seeds: Iterable[int]):
    """For each (problem, SDE) with runs left, (name, sde label, sde, eps, target, score, ``ground``, todo): todo the
    (config, seed) pairs without a row in ``out`` (rows keyed by problem, sde, ``config_key`` and seed); ``sdes``
    maps a label to (sde, eps)."""
    finished = done(out, ("problem", "sde", config_key, "seed"))
    configs, seeds = list(configs), list(seeds)
    for name in problems:
        for sde_name, (sde, eps) in sdes.items():
            todo = [(c, s) for c in configs for s in seeds if (name, sde_name, c, s) not in finished]
            if todo:
                target = problem(name)
                yield name, sde_name, sde, eps, target, target.score_fn(sde), ground(target, sde, eps), todo


def run_or_report(doc: str, run: Callable[[list[str]], None], report: Callable[[], None],
                  problems: Iterable[str]) -> None:
    """The command line of a run/report benchmark: ``run [--problems a,b]`` (default ``problems``) or ``report``."""
    import argparse

    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("what", choices=("run", "report"))
    ap.add_argument("--problems", default=",".join(problems))
    a = ap.parse_args()
    run(a.problems.split(",")) if a.what == "run" else report()
