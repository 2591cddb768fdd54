"""The tail below σ̃ = σ/m = 0.01 (issue 17): samplers with and without it, where a run ends below it.

Sub-VP's default end (eps = 1e-3) has σ̃ ≈ 1e-4 (VP's and VE's ≈ 0.01).  With ``tail_sigma=0.01``
(the default of ode_adaptive_ps and of the deterministic exponential samplers) the solve stops at
σ̃ = 0.01 and one score-form step ends it (``scoresolve.protocol.tail_step``, which holds the last
evaluation's m·s: no NFE; ode_adaptive_ps holds each sample's newest one the same way); ``tail_sigma=None``
integrates to eps.  Each configuration on each case: 10k samples at eps (no final denoising) against the exact
p_eps, per seed (both variants on the same seeds); reported are the counted NFE, W2 and log-density
gap as multiples of their noise floors and the signed log-density bias ± its standard error
(benchmarks/bias_common.py).  Cases: sub-VP on the 8-ring, the 64-d mixture and the held-out 16-,
32- and 128-d mixtures of the heldout suite; VP with eps = 1e-5 (σ̃ ≈ 1e-3) on the 16-d one.

    python benchmarks/subvp_tail.py run       # appends to benchmarks/results/subvp_tail.jsonl (resumes)
    python benchmarks/subvp_tail.py report    # writes benchmarks/subvp_tail.md
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bias_common import SAMPLES, append, done, ground, line, measure, problem, rows, summary, write_report  # noqa: E402

import scoresolve as ss  # noqa: E402

ROOT = Path(__file__).resolve().parent
OUT = ROOT / "results" / "subvp_tail.jsonl"
CONFIGS = {  # label: (method, options)
    "ode_adaptive_ps (defaults)": ("ode_adaptive_ps", {}),
    "ode_adaptive_ps, nfe=15": ("ode_adaptive_ps", {"nfe": 15}),
    "unipc, nfe=15": ("unipc", {"nfe": 15}),
    "unipc, nfe=20": ("unipc", {"nfe": 20}),
    "unipc, nfe=25": ("unipc", {"nfe": 25}),
    "dpmpp_2m, nfe=20": ("dpmpp_2m", {"nfe": 20}),
    "dpmpp_3m, nfe=20": ("dpmpp_3m", {"nfe": 20}),
}
TAILS = {"tail 0.01": 0.01, "no tail": None}
# (problem, SDE, eps, seeds, configurations)
CASES = [("ring8", "subvp", 1e-3, 4, list(CONFIGS)), ("gmm64", "subvp", 1e-3, 2, list(CONFIGS)),
         ("mix16s104", "subvp", 1e-3, 3, list(CONFIGS)), ("mix32s105", "subvp", 1e-3, 3, list(CONFIGS)),
         ("mix128s106", "subvp", 1e-3, 2, ["ode_adaptive_ps (defaults)", "ode_adaptive_ps, nfe=15", "unipc, nfe=20"]),
         ("mix16s104", "vp", 1e-5, 3, ["ode_adaptive_ps (defaults)", "unipc, nfe=20"])]
KEYS = ("problem", "sde", "eps", "config", "tail", "seed")


def run() -> None:
    torch.set_num_threads(1)
    finished = done(OUT, KEYS)
    for prob, sde_name, eps, seeds, configs in CASES:
        todo = [(c, tl, s) for c in configs for tl in TAILS for s in range(seeds)
                if (prob, sde_name, eps, c, tl, s) not in finished]
        if not todo:
            continue
        tgt, sde = problem(prob), ss.SDES[sde_name]()
        gr, score = ground(tgt, sde, eps), tgt.score_fn(sde)
        for config, tail, seed in todo:
            method, opts = CONFIGS[config]
            res = ss.sample(score, sde, (SAMPLES, tgt.dim), method, eps=eps, denoise=False, tail_sigma=TAILS[tail],
                            generator=torch.Generator().manual_seed(seed), **opts)
            row = dict(problem=prob, sde=sde_name, eps=eps, config=config, tail=tail, seed=seed, nfe=res.nfe,
                       **measure(res.samples, gr, seed))
            append(OUT, row)
            print(f"{prob} {sde_name} eps={eps:g} {config} {tail} seed {seed}: {line(row)}", flush=True)


def report() -> None:
    found, body = rows(OUT), []
    for prob, sde_name, eps, seeds, configs in CASES:
        for config in configs:
            cells = [[r for r in found if tuple(r[k] for k in KEYS[:-1]) == (prob, sde_name, eps, config, tail)]
                     for tail in TAILS]
            if any(cells):
                cells = " | ".join(summary(rs) if rs else "—" for rs in cells)
                body.append(f"| {prob} | {sde_name.upper()}, {eps:g} | {config} | {seeds} | {cells} |")
    write_report("subvp_tail", "The tail below σ̃ = 0.01: with and without (issue 17)",
                 ", both variants on the same seeds",
                 ["problem", "SDE, eps", "configuration", "seeds", "tail 0.01: NFE, W2, gap, bias",
                  "no tail: NFE, W2, gap, bias"], body)


if __name__ == "__main__":
    {"run": run, "report": report}[sys.argv[1] if len(sys.argv) > 1 else "run"]()
