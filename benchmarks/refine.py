"""Which samples does UniPC's ``refine`` solve again, and is that where the error is?  (issue 17)

    python benchmarks/refine.py run      # results/refine.jsonl (resumable: finished cases are skipped)
    python benchmarks/refine.py report   # benchmarks/refine.md

For each held-out case (benchmarks/suites/heldout.args; VP, VE and sub-VP), ``unipc:solver_order=4;refine=1`` on the
grid ``fit_grid`` fitted for it at 15 NFE (14 steps: the fit files of benchmarks/results/heldout_*), 10k samples,
3 seeds (the bench's draws, centred as its cells are); and on eight fresh mixtures (``mix<d>s<seed>``, seeds
201-208, drawn after refine was built on the held-out ones), VP and VE, 4 seeds, grids fitted here alike (kept in
results/refine_fits/).  Judged like the bench (per-component W2 and the exact log-density gap over their noise
floors, samples at eps without denoising):
  base     the 14-step solve alone (14 NFE), with refine's estimate e per sample (max_i ‖x − x̃‖_rms / σ_i);
  exact    the same starts solved by ode_adaptive_ps at rtol = atol = 1e-6;
  top q    the base with its top q of rows replaced by their exact endpoints, ranked by e ("by e") or by the
           true endpoint error ("oracle"): how much of the oracle's gain the free estimate finds;
  refine   ``refine=1`` itself: the rows in decreasing e solved again at rtol = atol = 0.01 within 1 NFE per
           sample (≤ 15 NFE in all).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

import scoresolve as ss
from scoresolve.bench.problems import analytic_problem, make_sde
from scoresolve.bench.quality import Judge
from scoresolve.gridfit import FittedGrid, fit_grid
from scoresolve.samplers import AdaptiveMultistep, UniPC
from scoresolve.scalegrid import PILOT_SEED

ROOT = Path(__file__).resolve().parent
OUT = ROOT / "results" / "refine.jsonl"
HELDOUT = ["mix2s101", "mix4s102", "mix8s103", "mix16s104", "mix32s105", "mix128s106"]
FRESH = ["mix2s201", "mix3s202", "mix6s203", "mix12s204", "mix24s205", "mix48s206", "mix2s207", "mix4s208"]
CASES = [(p, s, 3) for p in HELDOUT for s in ("vp", "ve", "subvp")] + [(p, s, 4) for p in FRESH for s in ("vp", "ve")]
N, QS = 10_000, (0.01, 0.03)
METHOD = "unipc:solver_order=4;refine=1"
METRICS = ("component_w2", "logp_gap")


def _fit(problem: str, sde_name: str, score, sde) -> FittedGrid:
    """The held-out suite's fit (benchmarks/heldout_bench.py run makes them), else one made here and kept."""
    if problem in HELDOUT:
        d = ROOT / "results" / (f"heldout_subvp_{problem}" if sde_name == "subvp" else f"heldout_{problem}") / "fits"
        found = sorted(d.glob(f"{problem}_{sde_name}_unipc_solver_order=4_refine=1_nfe=15_*.json"))
        if not found:
            raise FileNotFoundError(f"no fit for {METHOD} at 15 NFE in {d}: run benchmarks/heldout_bench.py run first")
        return FittedGrid.load(found[0])
    path = ROOT / "results" / "refine_fits" / f"{problem}_{sde_name}.json"
    if path.exists():
        return FittedGrid.load(path)
    fit = fit_grid(score, sde, (256, analytic_problem(problem).dim), METHOD, 15,
                   generator=torch.Generator().manual_seed(PILOT_SEED), progress=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    fit.save(path)
    return fit


def case(problem: str, sde_name: str, seeds: int) -> dict:
    prob, sde = analytic_problem(problem), make_sde(sde_name)
    score = prob.target.score_fn(sde)
    fit = _fit(problem, sde_name, score, sde)
    opts = fit.sample_options
    judge = Judge(prob, sde, N, METRICS, denoise=False, eps=sde.default_eps)
    floor = judge.floor(repeats=5)

    def ratios(x: torch.Tensor, seed: int) -> dict:
        q = judge.evaluate(x, seed)
        return {m: q[m] / floor[m][0] for m in METRICS}

    rows = []
    for seed in range(seeds):
        gen = torch.Generator().manual_seed(seed * 1_000_003)  # the bench's first batch
        # refine > 0 keeps the estimate; this budget (< one re-solve's cap) makes no re-solve: the 14-step base
        base = ss.sample(score, sde, (N, prob.dim), UniPC(solver_order=4, refine=1e-9), generator=gen,
                         denoise=False, **opts)
        assert base.stats["refined"] == 0
        x_T = ss.start(score, sde, (N, prob.dim), UniPC(solver_order=4), generator=torch.Generator().manual_seed(
            seed * 1_000_003), **{k: v for k, v in opts.items() if k == "data_mean"}).x
        exact = ss.sample(score, sde, (N, prob.dim), AdaptiveMultistep(rtol=1e-6, atol=1e-6), x_init=x_T,
                          eps=sde.default_eps, denoise=False)
        err = (base.samples - exact.samples).flatten(1).norm(dim=1)
        row = {"seed": seed, "base": ratios(base.samples, seed), "exact": ratios(exact.samples, seed),
               "exact_nfe": exact.nfe}
        for name, rank in (("by_e", base.stats["row_error"]), ("oracle", err)):
            order = torch.sort(rank, descending=True, stable=True).indices
            for q in QS:
                x = base.samples.clone()
                top = order[: int(q * N)]
                x[top] = exact.samples[top]
                row[f"{name}_{q:g}"] = ratios(x, seed)
        ref = ss.sample(score, sde, (N, prob.dim), METHOD, generator=torch.Generator().manual_seed(seed * 1_000_003),
                        denoise=False, **opts)
        row["refine"] = {**ratios(ref.samples, seed), "nfe": ref.nfe, "refined": ref.stats["refined"]}
        rows.append(row)
        print(problem, sde_name, json.dumps(row), flush=True)
    return {"problem": problem, "sde": sde_name, "dim": prob.dim, "rows": rows}


def run() -> None:
    torch.set_num_threads(1)
    done = {(r["problem"], r["sde"]) for r in _read()}
    for p, s, seeds in CASES:
        if (p, s) in done:
            continue
        rec = case(p, s, seeds)
        tmp = OUT.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in [*_read(), rec]))
        os.replace(tmp, OUT)


def _read() -> list[dict]:
    return [json.loads(line) for line in OUT.read_text().splitlines()] if OUT.exists() else []


def report() -> None:
    def mean(rows, key, m):
        return sum(r[key][m] for r in rows) / len(rows)

    def cell(rows, key):
        return " / ".join(f"{mean(rows, key, m):.2f}" for m in METRICS)

    def within(recs, key):
        return sum(all(mean(r["rows"], key, m) <= 2 for m in METRICS) for r in recs)

    recs = _read()
    lines = ["# UniPC's refine: which samples it solves again (issue 17)", "",
             "Generated by `python benchmarks/refine.py report` from `results/refine.jsonl` (`python "
             "benchmarks/refine.py run`; see its docstring).  `unipc:solver_order=4` on the grid fitted for `refine=1` "
             "at 15 NFE (14 steps), 10k samples, mean of 3 seeds (held-out mixtures) or 4 (fresh ones, seeds 201-208); "
             "entries: per-component W2 / log-density gap over their noise floors (≤ 2 is the bar).  *top q by e*: "
             "the base with the q of its samples that refine's estimate ranks worst replaced by their exact endpoints "
             "(rtol = atol = 1e-6, same starts); *oracle*: the q with the largest true endpoint error replaced; "
             "*refine=1*: the sampler itself (the rows in decreasing e solved again by ode_adaptive_ps at rtol = atol "
             "= 0.01 within 1 NFE per sample).", ""]
    for title, names in (("Held-out mixtures", HELDOUT), ("Fresh mixtures", FRESH)):
        part = [r for r in recs if r["problem"] in names]
        if not part:
            continue
        lines += [f"## {title}: both metrics within 2x in {within(part, 'refine')} of {len(part)} cases with "
                  f"refine=1, {within(part, 'base')} for the base alone, {within(part, 'exact')} for the exact "
                  "solve of the same starts", "",
                  "| problem | sde | base (14 NFE) | top 1 % by e | top 3 % by e | oracle 1 % | oracle 3 % | exact | "
                  "refine=1 | NFE | re-solved |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for rec in part:
            rs = rec["rows"]
            nfe = sum(r["refine"]["nfe"] for r in rs) / len(rs)
            share = sum(r["refine"]["refined"] for r in rs) / len(rs) / N
            cells = " | ".join(cell(rs, k) for k in ("base", "by_e_0.01", "by_e_0.03", "oracle_0.01", "oracle_0.03",
                                                      "exact", "refine"))
            lines.append(f"| {rec['problem']} | {rec['sde']} | {cells} | {nfe:.2f} | {100 * share:.1f} % |")
        lines.append("")
    (ROOT / "refine.md").write_text("\n".join(lines))
    print("wrote", ROOT / "refine.md")


if __name__ == "__main__":
    {"run": run, "report": report}[sys.argv[1] if len(sys.argv) > 1 else "report"]()
