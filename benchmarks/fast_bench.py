"""Fast-sampler benchmark (issue 5): quality at ≤ 25 NFE, per-sample adaptivity, overhead.

    python benchmarks/fast_bench.py quality     # `scoresolve bench` on ring8/gmm64 × VP/VE
    python benchmarks/fast_bench.py general     # default ode_adaptive_ps on held-out gmm16/gmm32
    python benchmarks/fast_bench.py easyhard    # per-sample vs shared step size, equal error
    python benchmarks/fast_bench.py overhead    # wall / time inside the score, batch 10 000
    python benchmarks/fast_bench.py report      # -> benchmarks/fast_results.md
    python benchmarks/fast_bench.py all

Quality cells run through the benchmark CLI (results in benchmarks/results/fast_<problem>_<sde>/,
resumable); the truth is p_eps (``--no-denoise``: samples at eps against target.diffused(eps,
sde), for VP and VE alike), and every metric is divided by its noise floor (the same metric for
exact samples of the same size, mean over 8 sets).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

import scoresolve as ss
from scoresolve.bench.cli import main as bench_main
from scoresolve.bench.problems import analytic_problem
from scoresolve.noise import Noise
from scoresolve.samplers import AdaptiveMultistep, GottaGoFast
from scoresolve.targets import GaussianMixture

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
FIXED = ["ddim", "ddim_eta", "heun_edm", "edm_churn", "dpmpp_2s", "dpmpp_2m", "dpmpp_3m", "dpmpp_2m_sde",
         "unipc"]
ADAPTIVE_TOLS = {"ode_adaptive_ps": "0.02,0.015,0.01,0.007,0.005",
                 "ode_adaptive_rk23": "0.01,0.003,0.001", "gotta_go_fast": "0.08,0.04,0.02"}
NFES = "10,15,20,25,35,50"
CASES = [("ring8", "vp"), ("ring8", "ve"), ("gmm64", "vp"), ("gmm64", "ve")]
BAR_NFE = 25
GENERAL = [(p, s) for p in ("gmm16", "gmm32", "grid", "gmm8", "gmm128") for s in ("vp", "ve")]  # held-out check
OVERHEAD_OTHER = ["gmm16", "gmm8", "gauss"]  # cheaper scores: how the fixed-step ratios move with the score's cost
GENERAL_METHODS = {"ode_adaptive_ps": "0.01,0.015"}  # the default tolerance (and the previous one)


def quality(samples: int, seeds: int) -> None:
    for problem, sde in CASES:
        argv = ["--problem", problem, "--sde", sde, "--methods", ",".join(FIXED + list(ADAPTIVE_TOLS)),
                "--nfe", NFES, "--no-denoise", "--samples", str(samples), "--seeds", str(seeds),
                "--threads", "1", "--bare-max-calls", "8", "--no-progress", "--metrics",
                "logp_gap,component_w2,mode_tv,sliced_w2",
                "--out", str(RESULTS / f"fast_{problem}_{sde}")]
        for m, tols in ADAPTIVE_TOLS.items():
            argv += ["--tols-for", f"{m}:{tols}"]
        print(f"[quality] {problem} {sde}", flush=True)
        bench_main(argv)


def general(samples: int, seeds: int) -> None:
    """The default adaptive solver on mixtures it was not tuned on (other d, means, weights)."""
    for problem, sde in GENERAL:
        argv = ["--problem", problem, "--sde", sde, "--methods", ",".join(GENERAL_METHODS), "--no-denoise",
                "--samples", str(samples), "--seeds", str(seeds), "--threads", "1", "--bare-max-calls", "8",
                "--no-progress", "--metrics", "logp_gap,component_w2", "--out", str(RESULTS / f"fast_{problem}_{sde}")]
        for m, tols in GENERAL_METHODS.items():
            argv += ["--tols-for", f"{m}:{tols}"]
        print(f"[general] {problem} {sde}", flush=True)
        bench_main(argv)


# ------------------------------------------------------------------ per-sample vs shared
EASY_HARD = GaussianMixture(torch.tensor([0.5, 0.5]), torch.tensor([[-3.0, 0.0], [3.0, 0.0]]),
                            torch.tensor([1.0, 0.02**2]))  # a broad and a very narrow component


def _interp_nfe(points: list[tuple[float, float]], err: float) -> float:
    """NFE at which a (nfe, err) curve reaches ``err`` (log-log interpolation)."""
    pts = sorted(points)
    for (n0, e0), (n1, e1) in zip(pts, pts[1:]):
        if (e0 - err) * (e1 - err) <= 0 and e0 != e1:
            w = math.log(err / e0) / math.log(e1 / e0)
            return math.exp(math.log(n0) + w * (math.log(n1) - math.log(n0)))
    return math.nan


def easyhard(n: int = 4000, n_sde: int = 16000) -> dict:
    """Mean NFE per sample at equal error, per-sample vs shared step, on a batch mixing samples
    of a broad component (easy) and a very narrow one (hard)."""
    out: dict = {"n": n, "problem": "2-D mixture: N((-3,0), I) and N((3,0), 0.02² I), weights ½, VP; "
                                    "x_T from the prior"}
    sde = ss.VPSDE()
    score = EASY_HARD.score_fn(sde)
    x_T = torch.randn(n, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = ss.sample(score, sde, x_T.shape, AdaptiveMultistep(rtol=1e-8, atol=1e-8), x_init=x_T,
                    denoise=False).samples
    # ODE: error = mean ‖x − exact flow‖ (deterministic, paired on the same x_T)
    curves = {}
    for per_sample in (True, False):
        pts = []
        for tol in (3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4):
            res = ss.sample(score, sde, x_T.shape, AdaptiveMultistep(rtol=tol, atol=tol, per_sample=per_sample),
                            x_init=x_T, denoise=False)
            pts.append((float(res.nfe), float((res.samples - ref).norm(dim=1).mean())))
        curves["per_sample" if per_sample else "shared"] = pts
    out["ode"] = {"curves": curves, "at_equal_error": _equal_error(curves)}
    # SDE (Gotta Go Fast): error = |mean log p_eps(x) − E log p_eps| (exact), MC error ± se
    tgt = EASY_HARD.diffused(sde.default_eps, sde)
    big = tgt.log_prob(tgt.sample(200_000, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    curves = {}
    for per_sample in (True, False):
        pts = []
        for tol in (0.8, 0.4, 0.2, 0.1, 0.05):  # the noise norm: errors above the Monte-Carlo noise need loose ones
            res = ss.sample(score, sde, (n_sde, 2), GottaGoFast(rtol=tol, atol=tol, per_sample=per_sample),
                            generator=torch.Generator().manual_seed(2), denoise=False, dtype=torch.float64)
            lp = tgt.log_prob(res.samples)
            pts.append((float(res.nfe), abs(float(lp.mean() - big.mean()))))
        curves["per_sample" if per_sample else "shared"] = pts
    out["sde"] = {"curves": curves, "at_equal_error": _equal_error(curves), "n": n_sde,
                  "mc_se": float(big.std()) / math.sqrt(n_sde)}
    return out


def _equal_error(curves: dict) -> list[dict]:
    """At every measured error of either curve, the NFE of both (the other one interpolated)."""
    rows = [{"error": e, "nfe_per_sample": n, "nfe_shared": _interp_nfe(curves["shared"], e)}
            for n, e in curves["per_sample"]]
    rows += [{"error": e, "nfe_per_sample": _interp_nfe(curves["per_sample"], e), "nfe_shared": n}
             for n, e in curves["shared"]]
    return sorted(rows, key=lambda r: -r["error"])


# ------------------------------------------------------------------ overhead
class _Timed:
    def __init__(self, fn):
        self.fn, self.seconds = fn, 0.0

    def __call__(self, x, t):
        start = time.perf_counter()
        out = self.fn(x, t)
        self.seconds += time.perf_counter() - start
        return out


class _TimedDraws:
    """Times every Gaussian draw a sampler makes (``Noise.__call__``) while active."""

    def __enter__(self):
        self.seconds, self._orig = 0.0, Noise.__call__
        timer = self

        def timed(noise, shape, std=1.0):
            start = time.perf_counter()
            out = timer._orig(noise, shape, std)
            timer.seconds += time.perf_counter() - start
            return out

        Noise.__call__ = timed
        return self

    def __exit__(self, *exc):
        Noise.__call__ = self._orig


def overhead(batch: int = 10_000, repeats: int = 5) -> dict:
    """Wall time of ``sample`` over the time spent inside the (bare) score in the same run:
    median of ``repeats`` runs, no output validation (``check=False``), 25 NFE budgets.
    ``draws`` is the part of the ratio spent drawing Gaussian noise (prior included)."""
    out = {}
    problems = {"ring8": GaussianMixture.ring(8, 2.0, 0.1),
                "gmm64": GaussianMixture.random(64, 10, seed=0, anisotropic=True),
                **{p: analytic_problem(p).target for p in OVERHEAD_OTHER}}
    for pname, gm in problems.items():
        sde = ss.VPSDE()
        for name in FIXED + ([] if pname in OVERHEAD_OTHER else list(ADAPTIVE_TOLS)):
            kw = {} if ss.SAMPLERS[name].nfe_per_step is None else {"nfe": BAR_NFE}
            ratios, draws, nfe = [], [], None
            for r in range(repeats if pname == "ring8" else 2):
                timed = _Timed(gm.score_fn(sde))
                with _TimedDraws() as drawn:
                    start = time.perf_counter()
                    res = ss.sample(timed, sde, (batch, gm.dim), name, generator=torch.Generator().manual_seed(r),
                                    check=False, denoise=False, **kw)
                    ratios.append((time.perf_counter() - start) / timed.seconds)
                draws.append(drawn.seconds / timed.seconds)
                nfe = res.nfe
            out[f"{pname}|{name}"] = {"median": statistics.median(ratios), "min": min(ratios), "nfe": nfe,
                                      "draws": statistics.median(draws),
                                      "score_ms_per_call": 1e3 * timed.seconds / res.stats["calls"]}
            print(f"[overhead] {pname} {name}: {out[f'{pname}|{name}']}", flush=True)
    return out


# ------------------------------------------------------------------ report
def _rows(problem: str, sde: str) -> list[dict]:
    path = RESULTS / f"fast_{problem}_{sde}" / "results.jsonl"
    if not path.exists():
        return []
    return [r for r in map(json.loads, path.read_text().splitlines()) if r.get("status") == "ok"]


def _agg(rows: list[dict]) -> dict:
    """(method, budget label) -> mean NFE, mean ratio to floor per metric over seeds."""
    acc: dict = {}
    for r in rows:
        acc.setdefault((r["method"], r["budget_label"]), []).append(r)
    out = {}
    for key, rs in acc.items():
        out[key] = {"nfe": statistics.mean(r["nfe"] for r in rs), "seeds": len(rs),
                    "logp": statistics.mean(r["ratio"]["logp_gap"] for r in rs),
                    "w2": statistics.mean(r["ratio"]["component_w2"] for r in rs),
                    "logp_abs": statistics.mean(r["metrics"]["logp_gap"] for r in rs),
                    "floor_logp": rs[0]["floor"]["logp_gap"][0], "floor_w2": rs[0]["floor"]["component_w2"][0],
                    "overhead": statistics.median(r["overhead"] for r in rs if r.get("overhead"))}
    return out


def _budget_order(label: str) -> tuple[str, float]:
    kind, value = label.split("=")
    return kind, -float(value) if kind == "tol" else float(value)


def report() -> None:
    aggs = {c: _agg(_rows(*c)) for c in CASES}
    lines = ["# Fast samplers: measured results (issue 5)", "",
             "Generated by `python benchmarks/fast_bench.py report` from the `scoresolve bench` runs in",
             "`benchmarks/results/fast_*` (reproduce: `python benchmarks/fast_bench.py all`).", "",
             "Truth: p_eps, i.e. samples at eps (no final denoising) against `target.diffused(eps, sde)` "
             "(VP eps = 1e-3, VE σ ∈ [0.01, 50], eps = 1e-5). Entries are **ratio to the noise floor** "
             "(metric / mean metric of exact samples of the same size), averaged over seeds, as "
             "`logp-gap ratio / component-W2 ratio`; the bar is ≤ 2 for both at ≤ 25 NFE. "
             "Adaptive methods are listed per tolerance at their counted (mean per-sample) NFE.", ""]
    any_rows = next((r for c in CASES for r in _rows(*c)), None)
    if any_rows:
        lines.append(f"Samples per cell: {any_rows['samples']}; floors over 8 exact sets (the log-density "
                     f"gap's in closed form, `metrics.logp_gap_floor`); CPU, 1 thread, {any_rows['torch']}.")
        lines.append("")
        lines.append("| case | floor logp_gap | floor component_w2 | seeds |")
        lines.append("|---|---|---|---|")
        for c in CASES:
            a = aggs[c]
            if a:
                v = next(iter(a.values()))
                lines.append(f"| {c[0]} {c[1].upper()} | {v['floor_logp']:.4f} | {v['floor_w2']:.4f} | {v['seeds']} |")
        lines.append("")
    methods = FIXED + list(ADAPTIVE_TOLS)
    head = "| method | budget | " + " | ".join(f"{p} {s.upper()} (NFE: logp/W2)" for p, s in CASES) + " |"
    lines += ["## Quality vs NFE", "", head, "|---|---|" + "---|" * len(CASES)]
    for m in methods:
        labels = sorted({k[1] for a in aggs.values() for k in a if k[0] == m}, key=_budget_order)
        for lab in labels:
            cells = []
            for c in CASES:
                v = aggs[c].get((m, lab))
                if v is None:
                    cells.append("–")
                    continue
                ok = v["logp"] <= 2 and v["w2"] <= 2 and v["nfe"] <= BAR_NFE + 1e-9
                mark = " ✅" if ok else ""
                cells.append(f"{v['nfe']:.1f}: {v['logp']:.2f} / {v['w2']:.2f}{mark}")
            lines.append(f"| {m} | {lab} | " + " | ".join(cells) + " |")
    lines += ["", "✅ = both ratios ≤ 2 at ≤ 25 counted NFE. The log-density gap is |bias + noise|: an isolated",
              "small value at a low budget that is not followed by small values at larger budgets is the",
              "bias changing sign (e.g. dpmpp_2m at 10 NFE on gmm64 VP, unipc at 10 NFE on ring8 VP), not",
              "an accurate sampler.", "",
              "`ode_adaptive_ps` uses the noise-relative error norm and predictive step control (its defaults,",
              "tol = rtol = atol = 0.01). Its bias measured paired against the exact flow from the same x_T",
              "(a rtol = 1e-7 solve), in floor units, at tol = 0.01: ring8 VP −0.66, VE −0.70, gmm64 VP +0.46,",
              "VE +0.39. The exact flow itself scores 0.85 / 0.86 / 1.58 / 1.25 on these seeds (the three",
              "reference sets all fall on the same side on gmm64), so on gmm64 a positive bias reads smaller",
              "than it is: the looser tol = 0.02 passes here with a larger bias. Before this change (δ relative",
              "to |x|, plain controller) it needed 25.3 NFE on gmm64 VP (tol 0.003) and 28.8 on gmm64 VE.", "",
              "## Best at ≤ 25 NFE and NFE needed for the bar", "",
              "| case | best ≤ 25 NFE (by max of the two ratios) | smallest NFE with both ratios ≤ 2 |",
              "|---|---|---|"]
    for c in CASES:
        a = aggs[c]
        fits = [(max(v["logp"], v["w2"]), k, v) for k, v in a.items() if v["nfe"] <= BAR_NFE + 1e-9]
        meets = [(v["nfe"], k, v) for k, v in a.items() if v["logp"] <= 2 and v["w2"] <= 2]
        best = min(fits, key=lambda z: z[0], default=None)
        first = min(meets, key=lambda z: z[0], default=None)
        b = (f"{best[1][0]} {best[1][1]} @ {best[2]['nfe']:.1f} NFE: {best[2]['logp']:.2f} / {best[2]['w2']:.2f}"
             if best else "–")
        f = (f"{first[1][0]} {first[1][1]} @ {first[2]['nfe']:.1f} NFE: {first[2]['logp']:.2f} / {first[2]['w2']:.2f}"
             if first else "none measured")
        lines.append(f"| {c[0]} {c[1].upper()} | {b} | {f} |")
    gen = {c: _agg(_rows(*c)) for c in GENERAL}
    if any(gen.values()):
        lines += ["", "## Held-out mixtures (default tolerance 0.01, and 0.015)", "",
                  "`GaussianMixture.random(d, 10, seed=0)` for d = 8, 16, 32, 128 (other means, covariances and "
                  "weights) and `grid` (25 isotropic components on a 5×5 grid in 2-D), none used to choose the "
                  "defaults; same protocol.  At the default the log-density and W2 ratios stay ≤ 1.87 "
                  "everywhere, but the 2-D grid (25 modes) and gmm8 VP take 25.8–26.3 NFE; at tol 0.015 every "
                  "case is ≤ 24.6 NFE with ratios ≤ 1.90 but gmm128 VE's log-density gap (2.12).  Paired against "
                  "the exact flow from the same x_T "
                  "(10k samples, dopri5 at 1e-6), the default's log-density bias is −0.36 … −0.87 floors on "
                  "grid/gmm8/gmm16 (−1.19 … −1.63 at 0.015), so 0.015 trades margin for NFE.  Sweeping the "
                  "controller (safety 0.75/0.9, predictive 0.5/1, h_init 0.5/1, max_factor 2/3, predictor "
                  "order 2/3) on ring8/gmm64 found no setting that lowers NFE at equal paired bias.", "",
                  "| method | budget | " + " | ".join(f"{p} {s.upper()} (NFE: logp/W2)" for p, s in GENERAL) + " |",
                  "|---|---|" + "---|" * len(GENERAL)]
        for m, tols in GENERAL_METHODS.items():
            for tol in tols.split(","):
                cells = []
                for c in GENERAL:
                    v = gen[c].get((m, f"tol={tol}"))
                    ok = v is not None and v["logp"] <= 2 and v["w2"] <= 2 and v["nfe"] <= BAR_NFE + 1e-9
                    cells.append("–" if v is None else
                                 f"{v['nfe']:.1f}: {v['logp']:.2f} / {v['w2']:.2f}" + (" ✅" if ok else ""))
                lines.append(f"| {m} | tol={tol} | " + " | ".join(cells) + " |")
    eh = RESULTS / "fast_easyhard.json"
    if eh.exists():
        d = json.loads(eh.read_text())
        lines += ["", "## Per-sample vs shared step size (equal error)", "", d["problem"] + ".",
                  "(Current defaults: the noise-relative error norm.  It gives every sample the same δ at a",
                  "given λ, so the per-sample gain comes only from where each sample's error estimate is",
                  "large; with the state norm (δ relative to |x|, `norm=\"state\"`) the gain is larger,",
                  "≤ 0.85× the shared NFE at rtol = atol = 1e-3 in tests/test_fast.py.  Gotta Go Fast, too, now",
                  "measures against the noise level: above the Monte-Carlo noise its per-sample and shared",
                  "steps cost about the same NFE here; errors below ~3 s.e. are noise, not ranks.)", ""]
        for kind, label in (("ode", f"ode_adaptive_ps, {d['n']} samples (error: mean ‖x − exact flow‖, paired "
                                    "with a rtol = 1e-8 solve from the same x_T)"),
                            ("sde", f"gotta_go_fast, {d['sde']['n']} samples (error: |mean log p_eps − E log p_eps|, "
                                    f"Monte-Carlo s.e. {d['sde']['mc_se']:.3f})")):
            lines += [f"**{label}**", "", "| error | mean NFE per sample (per-sample) | shared step, same error |",
                      "|---|---|---|"]
            for r in _equal_error(d[kind]["curves"]):
                lines.append(f"| {r['error']:.2e} | {r['nfe_per_sample']:.1f} | {r['nfe_shared']:.1f} |")
            lines.append("")
            lines.append("Raw curves (NFE, error): " + "; ".join(
                f"{k}: " + ", ".join(f"({n:.1f}, {e:.2e})" for n, e in v) for k, v in d[kind]["curves"].items()))
            lines.append("")
    oh = RESULTS / "fast_overhead.json"
    if oh.exists():
        d = json.loads(oh.read_text())
        lines += ["## Solver overhead at batch 10 000 (wall / time inside the score, same run; median)", "",
                  "Every row at the current defaults, on a quiet machine (gotta_go_fast re-measured on 2026-12-06, "
                  "when its defaults changed, on a machine of the same kind).  *draws* is the part of the ratio "
                  "spent in Gaussian draws (torch's CPU Mersenne Twister: one (10 000, 64) draw ≈ 2.5 ms "
                  "inside the loop, ≈ 3.9 ns per float, 1.8 ms when hot in cache; ≈ 0.08 of a gmm64 score "
                  "call), which a stochastic method pays once per step whatever its bookkeeping; *solver* "
                  "is the rest.", "",
                  "| method | ring8 (2-D) | ring8 draws / solver | gmm64 (64-d) | gmm64 draws / solver | NFE |",
                  "|---|---|---|---|---|---|"]
        for m in methods:
            r8, g64 = d.get(f"ring8|{m}"), d.get(f"gmm64|{m}")
            if r8 and g64:
                parts = [f"{r['median']:.3f} | {r.get('draws', 0):.3f} / {r['median'] - 1 - r.get('draws', 0):.3f}"
                         for r in (r8, g64)]
                lines.append(f"| {m} | {parts[0]} | {parts[1]} | {r8['nfe']:.1f} / {g64['nfe']:.1f} |")
        lines.append("")
        ms = {p: d.get(f"{p}|ddim", {}).get("score_ms_per_call", 0.0) for p in ["ring8", "gmm64"] + OVERHEAD_OTHER}
        lines.append(f"Score time per call (full batch): ring8 ≈ {ms['ring8']:.1f} ms, gmm64 ≈ {ms['gmm64']:.0f} ms.")
        if all(f"{p}|ddim" in d for p in OVERHEAD_OTHER):
            lines += ["", "The ratio is relative to the score's cost, so it grows as the score gets cheaper.  "
                      "Fixed-step methods on cheaper scores (ratio, of which draws):", "",
                      "| method | " + " | ".join(f"{p} ({ms[p]:.1f} ms/call)" for p in OVERHEAD_OTHER) + " |",
                      "|---|" + "---|" * len(OVERHEAD_OTHER)]
            for m in FIXED:
                lines.append(f"| {m} | " + " | ".join(f"{d[f'{p}|{m}']['median']:.3f} ({d[f'{p}|{m}']['draws']:.3f})"
                                                     for p in OVERHEAD_OTHER) + " |")
            lines += ["", "`gauss` is one 16-d Gaussian: its score is a single affine map, as cheap as two of the "
                      "solver's own passes over the state, so no sampler can stay near 1 there; the mixtures "
                      "(gmm8/gmm16, 6–10 ms per call) keep every fixed-step method ≤ 1.10."]
    (HERE / "fast_results.md").write_text("\n".join(lines) + "\n")
    print(HERE / "fast_results.md")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["quality", "general", "easyhard", "overhead", "report", "all"])
    p.add_argument("--samples", type=int, default=10_000)
    p.add_argument("--seeds", type=int, default=3)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    RESULTS.mkdir(exist_ok=True)
    if a.what in ("quality", "all"):
        quality(a.samples, a.seeds)
    if a.what in ("general", "all"):
        general(a.samples, a.seeds)
    if a.what in ("easyhard", "all"):
        (RESULTS / "fast_easyhard.json").write_text(json.dumps(easyhard(), indent=1))
    if a.what in ("overhead", "all"):
        (RESULTS / "fast_overhead.json").write_text(json.dumps(overhead(), indent=1))
    if a.what in ("report", "all"):
        report()
    return 0


if __name__ == "__main__":
    sys.exit(main())
