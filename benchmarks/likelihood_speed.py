"""Likelihood speed at equal accuracy on scores without a closed-form VJP (issue 17, item 2):
scoresolve's ``likelihood`` against a reference-style solve (score_sde's algorithm: scipy RK45 on
numpy, batch-RMS error norm, exact trace by d VJPs, two score forwards per right-hand side), same
score, same dtype (float64), same points, timed in one run on one thread.

    OMP_NUM_THREADS=1 python benchmarks/likelihood_speed.py [--n 500] [--n-mlp 200] [--cases ...]
        [--out benchmarks/likelihood_speed.md]

Cases: ``mixture``: GaussianMixture.random(d, 10, seed=0) differentiated by plain autograd
(``autograd_score``), error against its exact log p_eps (the ODE closed by the exact p_T);
``mlp``: a ScoreMLP (128 × 3) trained by DSM for 3000 steps on that mixture's samples (checkpoint
kept, so a re-run does not retrain), error against a dopri5 solve at rtol = atol = 1e-8 closed by the
SDE's prior like every other row.  Ours at several tolerances, Δ by the solver's stages (the
default) and by ``quadrature=3``; and "decoupled" rows (``decoupled``): N divergence evaluations
placed in advance, what better placement alone could buy.  Rows go to a JSON-lines file beside
the table as they finish; a re-run skips finished rows.  "rms" = √(sd² + bias²) of the per-point
error; the last column is the speed-up over the reference where our rms is ≤ the reference's
(equal or better accuracy).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from likelihood_bench import autograd_score, exact_trace, gl4_panels, pf_path, points, reference_style, timed  # noqa: E402

import scoresolve as ss  # noqa: E402
from scoresolve import train  # noqa: E402
from scoresolve.likelihood import likelihood  # noqa: E402
from scoresolve.targets import GaussianMixture  # noqa: E402

SDES = {"vp": ss.VPSDE, "ve": ss.VESDE}
# (tolerance, quadrature) of our rows per score kind: the trained network needs tighter tolerances
# for the reference's accuracy (its divergence varies faster along the path than the mixture's)
OURS = {"mixture": ((3e-5, 0), (1e-4, 0), (3e-5, 3), (1e-4, 3), (3e-4, 3)),
        "mlp": ((1e-5, 0), (3e-5, 0), (1e-6, 3), (3e-6, 3), (1e-5, 3))}
CASES = "mixture:16:vp,mixture:64:vp,mixture:16:ve,mlp:16:vp,mlp:64:vp"
# divergence evaluations N of the decoupled rows (x apart, Δ by N-node composite Gauss-Legendre)
DECOUPLED = {"mixture": (32, 64), "mlp": (128, 192, 256)}


def decoupled(score, sde, x, nodes: int, prior) -> torch.Tensor:
    """The divergence evaluations decoupled from the solver's steps, N known in advance: x(t) by
    dopri5 on the score alone (rtol = atol = 1e-6) with dense output at the nodes of composite
    4-point Gauss-Legendre on N/4 uniform panels of [eps, T]; Δ = d log(m(T)/m(eps)) +
    Σ_j w_j (−½ g(t_j)² tr∇s(x(t_j), t_j)).  Not a library mode: what placing N evaluations in
    advance costs and achieves, against the reference and the adaptive rows."""
    import numpy as np

    eps, T = sde.default_eps, sde.T
    tn, wn = gl4_panels(eps, T, nodes // 4)
    xs = pf_path(score, sde, x, torch.tensor(np.concatenate([[eps], tn, [T]]), dtype=x.dtype), 1e-6)
    delta = x.shape[1] * float(sde.log_mean_scale(T) - sde.log_mean_scale(eps))
    for xk, tk, wk in zip(xs[1:-1], tn.tolist(), wn.tolist()):
        tr = exact_trace(score, xk, torch.full((x.shape[0],), tk, dtype=x.dtype))
        delta = delta + (-0.5 * wk * sde.diffusion(tk) ** 2) * tr.detach()
    return prior(xs[-1]) + delta


def trained_mlp(gm: GaussianMixture, sde: ss.SDE, ckpt: str):
    """A ScoreMLP trained on exact samples of ``gm`` (resumes/reuses ``ckpt``), as a float64 score."""
    state = train.fit(train.ScoreMLP(dim=gm.dim, hidden=128, depth=3), train.dsm_loss(sde),
                      gm.sample(50_000, generator=torch.Generator().manual_seed(5)), steps=3000, batch_size=512,
                      lr=2e-3, progress=False, checkpoint=ckpt)
    state.ema.double()
    return state.score_fn(ema=True)


def run_case(kind: str, d: int, sde_name: str, n: int, done: dict, save) -> None:
    sde, gm = SDES[sde_name](), GaussianMixture.random(d, 10, seed=0)
    x = points(gm, sde, n)
    key = f"{kind}:{d}:{sde_name}"
    if kind == "mixture":
        score, truth = autograd_score(gm, sde), gm.log_prob(x, sde.default_eps, sde)
        prior = lambda z: gm.log_prob(z, sde.T, sde)  # noqa: E731
    else:
        os.makedirs("benchmarks/results/likelihood_speed", exist_ok=True)
        score = trained_mlp(gm, sde, f"benchmarks/results/likelihood_speed/mlp{d}_{sde_name}.pt")
        prior = sde.prior_logp
        truth = likelihood(score, sde, x, rtol=1e-8, atol=1e-8, vjp="vmap").logp

    def row(name, fn):
        if (key, name) in done:
            return
        out = fn()
        save({"case": key, "n": n, "row": name, **out})

    row("reference-style RK45 1e-05", lambda: {
        k: v for k, v in reference_style(gm, sde, x, 1e-5, 1e-5, score=score, truth=truth, prior_logp=prior).items()
        if k in ("cpu", "rhs", "sd", "bias")})
    for tol, q in OURS[kind]:
        def solve(tol=tol, q=q):
            res, _, cpu = timed(lambda: likelihood(score, sde, x, rtol=tol, atol=tol, quadrature=q,
                                                   prior_logp=prior))
            err = res.logp - truth
            return {"cpu": cpu, "rhs": res.stats["rhs_evals"], "sd": float(err.std()), "bias": float(err.mean())}

        row(f"ours dopri5{', quadrature=3' if q else ''} {tol:g}", solve)
    for nodes in DECOUPLED[kind]:
        def solve_decoupled(nodes=nodes):
            logp, _, cpu = timed(lambda: decoupled(score, sde, x, nodes, prior))
            err = logp - truth
            return {"cpu": cpu, "rhs": nodes, "sd": float(err.std()), "bias": float(err.mean())}

        row(f"decoupled, {nodes} divergences", solve_decoupled)


def table(rows: list[dict]) -> list[str]:
    out = ["| score | d | SDE | points | solver | CPU s | rhs | error sd | bias | rms | speed-up at ≤ ref. rms |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for case in dict.fromkeys(r["case"] for r in rows):
        rs = [r for r in rows if r["case"] == case]
        ref = next((r for r in rs if r["row"].startswith("reference")), None)
        for r in rs:
            rms = math.hypot(r["sd"], r["bias"])
            speed = ""
            if ref is not None and r is not ref:
                ok = rms <= math.hypot(ref["sd"], ref["bias"])
                speed = f"**{ref['cpu'] / r['cpu']:.2f}**" if ok else f"({ref['cpu'] / r['cpu']:.2f}, less accurate)"
            kind, d, sde = case.split(":")
            out.append(f"| {kind} | {d} | {sde.upper()} | {r['n']} | {r['row']} | {r['cpu']:.2f} | {r['rhs']} | "
                       f"{r['sd']:.2e} | {r['bias']:.2e} | {rms:.2e} | {speed} |")
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=500, help="points per mixture case")
    p.add_argument("--n-mlp", type=int, default=200, help="points per MLP case (its ground truth is a 1e-8 solve)")
    p.add_argument("--cases", default=CASES, help="comma-separated kind:d:sde")
    p.add_argument("--out", default="benchmarks/likelihood_speed.md")
    a = p.parse_args()
    torch.set_num_threads(1)
    jsonl = os.path.splitext(a.out)[0] + ".jsonl"
    rows = [json.loads(line) for line in open(jsonl)] if os.path.exists(jsonl) else []

    def save(r: dict) -> None:
        rows.append(r)
        with open(jsonl + ".tmp", "w") as f:
            f.writelines(json.dumps(x) + "\n" for x in rows)
        os.replace(jsonl + ".tmp", jsonl)
        print(table([r])[-1], flush=True)

    for case in a.cases.split(","):
        kind, d, sde = case.split(":")
        run_case(kind, int(d), sde, a.n if kind == "mixture" else a.n_mlp,
                 {(r["case"], r["row"]) for r in rows}, save)
    lines = ["# Likelihood speed at equal accuracy, autograd scores (issue 17)", "",
             f"`OMP_NUM_THREADS=1 python benchmarks/likelihood_speed.py` (rows in {os.path.basename(jsonl)}): "
             f"float64, exact trace, VJP loop, 1 thread, CPU seconds of this thread on a shared {os.cpu_count()}-core "
             "machine.  Error = estimate − truth per point: the exact log p_eps for the mixture (ODE closed by "
             "the exact p_T), a dopri5 solve at 1e-8 for the trained MLP (closed by the SDE's prior, as every row).",
             "", *table(rows), "",
             "quadrature=3: the solver integrates x alone; ∫ tr∇s dt by 3-point Gauss-Legendre on each accepted "
             "step (x at the nodes from the step's cubic Hermite interpolant): 3 divergences per accepted step "
             "instead of 5 per attempted one.  Its Δ is not under error control, so on the trained MLP (whose "
             "divergence varies faster along the path than x does) it needs a tighter rtol than the stage-"
             "integrated default for the same accuracy.", "",
             "decoupled (not a library mode, `decoupled()` above): N divergence evaluations placed in advance by "
             "composite 4-point Gauss-Legendre on uniform panels of [eps, T], x at the nodes from one score-only "
             "dopri5 solve (rtol 1e-6); rhs = N (the score-only solve's forwards are in the time, not the count)."]
    with open(a.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("wrote", a.out)


if __name__ == "__main__":
    main()
