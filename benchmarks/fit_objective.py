"""Which loss should ``fit_grid`` minimise (issue 17, item 1)?  The endpoint error's against the log-density
change's, over three pilot draws per case.

Objectives (``fit_grid(objective=...)``), Δ_i = x_i − x_ref,i the pilot's endpoint errors against the tight
reference flow and δ_i = ½ Δ_i · (s(x_i) + s(x_ref,i)) at eps (the trapezoid rule for log p(x_i) − log p(x_ref,i),
exact where log p is quadratic; one more evaluation per pilot solve):
  endpoint   mean_i log(1 + ‖Δ_i‖²/c), c the median on the start grid (Cauchy);
  logp       mean_i |δ_i|, the mean log-density change in nats;
  auto       both, then the grid with the smaller mean |δ| on 256 fresh draws (their own reference solve);
  auto, centred   the same with the pilot, the fresh draws and the samples from the prior centred at m(T) μ̂
             (``data_mean="estimate"``, ``fit_grid``'s default since; the others from the plain prior).
A sample that crosses into another mode of the same density changes log p little, one stranded between
modes a lot, and a coherent error of every component's width (high dimensions) moves every δ_i the same way:
what the log-density gap measures.

Per case (problem, SDE): ``unipc`` with ``solver_order=4`` at 15 NFE, 256-draw pilots from three seeds, 400
pilot solves; 10k fresh draws (evaluation seed 0) at eps without final denoising against the exact p_eps
(bias_common.py).  The pilot seeds are fitted_grid_cost.py's.

    python benchmarks/fit_objective.py run [CASE ...]   # appends to results/fit_objective.jsonl (resumes)
    python benchmarks/fit_objective.py report           # writes benchmarks/fit_objective.md
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bias_common import append, config_table, done, gap_summary, ground, line, measure, problem, rows, write_report  # noqa: E402

import scoresolve as ss  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "fit_objective.jsonl"
HELD_OUT = ["mix2s101", "mix4s102", "mix8s103", "mix16s104", "mix32s105", "mix128s106"]
CASES = [f"{p}:{s}" for p in HELD_OUT for s in ("vp", "ve")] + ["ring8:vp", "gmm64:vp"]
# column: (fit_grid's objective, its data_mean); the first three fitted from the plain prior, as when they were chosen
FITS = {"endpoint": ("endpoint", None), "logp": ("logp", None), "auto": ("auto", None),
        "auto, centred": ("auto", "estimate")}
OBJECTIVES = tuple(FITS)
PILOT_SEEDS = (12345, 777, 2024)
METHOD, NFE = "unipc:solver_order=4", 15


READING = [
    "", "Reading:",
    "- `endpoint` and `logp` each bring 24 of the 42 fits within 2× on both metrics.  `logp` reads a lower "
    "geometric mean (0.90 against 1.07), nearly all of it from the 128-d mixture, where a coherent error of the "
    "components' width moves every sample's log-density the same way (benchmarks/gauss_amplification.md): "
    "4.95 → 0.09 (VP), 3.53 → 1.24 (VE).  It loses where the endpoint error was small: mix32s105 VP 0.40 → 3.05, "
    "gmm64 0.71 → 2.69.",
    "- `auto` keeps whichever of the two grids changes the log-density of 256 fresh draws least: 28 of 42, geometric "
    "mean 0.76 (held-out mixtures 25 of 36, 0.65).  It is `fit_grid`'s default since this table; it costs both "
    "searches and one more reference solve (about 2.2× one objective's evaluations).",
    "- Still beyond 2× (14 fits): all six of mix2s101 (4 components in 2-d, gap 2.7-4.3), the three of mix4s102 VE "
    "by their W2 (2.06-2.10), two of three pilots on gmm64 (2.3, 3.6), one each on mix32s105 VP (3.2) and VE (2.05) "
    "and on the 8-ring (3.8).",
    "- The held-out suite run with `logp` as the bench's objective (the bench's own pilot, three evaluation seeds, "
    "VP, VE and sub-VP; not kept) read the same way as `logp` here: order 4 at 15 NFE 1.92 → 1.78, 10 → 11 of 18 "
    "cases within 2×, mix128s106 4.67 → 1.29 (VP) but mix2s101 2.57 → 4.32 (VP).",
    "- `auto, centred` (the default since benchmarks/prior_centring.md): 26 of 42, geometric mean 1.26 against 28 and "
    "0.76 from the plain prior.  The W2 falls in every VE case of 4-16-d (mix4s102 2.06-2.10 → 1.08-1.17, its only "
    "failures), but the gaps move both ways far beyond the centring's own effect: a fit's outcome depends on its "
    "pilot draws more than 256 draws show (mix128s106 VP, pilot 12345: the log-density fit reads 0.15 from the plain "
    "draws and 12.95 from the same draws shifted by 0.006 sd; its grid leaves 2 samples in 4000 thousands of nats "
    "low, none of them among the pilot's).  On the held-out suite's own pilot the centred fits read 13 of 18 against "
    "10 of 18 (benchmarks/heldout_results.md).",
    "- The log-density change with a Cauchy loss, mean log(1 + |δ|/c'), measured too (scratch): 24 of 42, "
    "geometric mean 1.00.  Choosing by other validation statistics (scratch, the same fits): the signed mean δ "
    "26 of 42, the median endpoint error 26 of 42; the better grid in hindsight would give 32 of 42.",
]


def run(cases=CASES) -> None:
    torch.set_num_threads(1)
    finished = done(OUT, ("problem", "sde", "objective", "pilot_seed"))
    for case in cases:
        name, sde_name = case.split(":")
        todo = [(o, ps) for ps in PILOT_SEEDS for o in OBJECTIVES if (name, sde_name, o, ps) not in finished]
        if not todo:
            continue
        target, sde = problem(name), ss.SDES[sde_name]()
        gr, score = ground(target, sde, sde.default_eps), target.score_fn(sde)
        for objective, pilot_seed in todo:
            start = time.perf_counter()
            fit = ss.fit_grid(score, sde, (256, target.dim), METHOD, NFE, objective=FITS[objective][0],
                              data_mean=FITS[objective][1],
                              generator=torch.Generator().manual_seed(pilot_seed), progress=False)
            res = ss.sample(score, sde, (10_000, target.dim), METHOD, denoise=False,
                            generator=torch.Generator().manual_seed(0), **fit.sample_options)
            row = dict(problem=name, sde=sde_name, objective=objective, pilot_seed=pilot_seed, nfe=float(res.nfe),
                       pilot_nfe=fit.pilot_nfe, seconds=time.perf_counter() - start, **measure(res.samples, gr, 0))
            append(OUT, row)
            print(f"[{case}] {objective} pilot {pilot_seed}: {line(row)}", flush=True)


def report() -> None:
    header = ["problem", "SDE", *(f"{o}: W2 / gap (gap range)" for o in OBJECTIVES)]

    def spread(rs: list[dict]) -> str:
        return f" ({min(r['gap'] for r in rs):.2f}–{max(r['gap'] for r in rs):.2f})"
    body, per = config_table(rows(OUT), [tuple(c.split(":")) for c in CASES], OBJECTIVES, lambda r: r["objective"],
                             extra=spread, per_row=True)
    body.append("| **gap, geometric mean over fits (both ≤ 2)** | | "
                + " | ".join(gap_summary(per[o]) for o in OBJECTIVES) + " |")
    held = [gap_summary([x for x in per[o] if x[0] in HELD_OUT]) for o in OBJECTIVES]
    body.append("| held-out mixtures only | | " + " | ".join(held) + " |")
    body += READING
    write_report("fit_objective", "fit_grid's objective: endpoint error or log-density change (issue 17)",
                 f", `{METHOD}` at {NFE} NFE on grids fitted to three 256-draw pilots per case (one row per pilot, "
                 "evaluation seed 0)", header, body)


def main() -> None:
    what = sys.argv[1] if len(sys.argv) > 1 else "report"
    run(sys.argv[2:] or CASES) if what == "run" else report()


if __name__ == "__main__":
    main()
