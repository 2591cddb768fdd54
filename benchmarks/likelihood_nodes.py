"""How many divergence evaluations the log-density integral needs (issue 17, item 2): the integrand
g(t) = −½ g(t)² tr ∇s(x(t), t) along the probability-flow path, sampled densely, and the per-point
error of quadratures with N nodes against that dense result.

    OMP_NUM_THREADS=1 python benchmarks/likelihood_nodes.py [--points 16] [--fine 4096]
        [--out benchmarks/likelihood_nodes.md]

Cases: the trained ScoreMLP of ``likelihood_speed.py`` (16-d and 64-d, VP; its checkpoint is reused or
trained there) and the 16-d mixture differentiated by autograd.  x(t) by dopri5 at rtol = atol = 1e-9
on a uniform grid of ``fine`` + 1 times in [eps, T]; g at every one of them (exact trace, d VJPs);
the dense integral by composite Simpson on that grid.  Quadratures on [eps, T] in t: composite
Simpson and composite 4-point Gauss-Legendre (x at its nodes from a second dense solve), for N
divergence evaluations.  Spectrum: the amplitude of g's oscillation per frequency band (cycles per
unit t) on t ∈ [0.1, 0.9] after a degree-12 polynomial trend is removed (Hann window).  The
reference-style solve (score_sde's RK45 at rtol = atol = 1e-5) evaluates the divergence at every
stage: ``likelihood_speed.md`` counts its right-hand sides.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from likelihood_bench import autograd_score, exact_trace, gl4_panels, pf_path, points  # noqa: E402
from likelihood_speed import trained_mlp  # noqa: E402

import scoresolve as ss  # noqa: E402
from scoresolve.targets import GaussianMixture  # noqa: E402

BANDS = ((0, 12), (12, 40), (40, 80), (80, 125), (125, 175), (175, 250), (250, 600))


def integrand(score, sde, x0: torch.Tensor, ts: torch.Tensor) -> np.ndarray:
    """g(t_k) for each point along its probability-flow path, shape (len(ts), B)."""
    xs = pf_path(score, sde, x0, ts, 1e-9)
    out = []
    for xk, tk in zip(xs, ts.tolist()):
        tr = exact_trace(score, xk, torch.full((xk.shape[0],), tk, dtype=xk.dtype))
        out.append((-0.5 * sde.diffusion(tk) ** 2 * tr).detach().numpy())
    return np.stack(out)


def simpson(g: np.ndarray, h: float) -> np.ndarray:
    return h / 3 * (g[0] + g[-1] + 4 * g[1:-1:2].sum(0) + 2 * g[2:-1:2].sum(0))


def gauss_legendre(score, sde, x0, eps, T, panels: int) -> np.ndarray:
    nodes, weights = gl4_panels(eps, T, panels)
    ts = torch.tensor(np.concatenate([[eps], nodes]), dtype=torch.float64)
    g = integrand(score, sde, x0, ts)[1:]
    return (weights[:, None] * g).sum(0)


def spectrum(g: np.ndarray, ts: np.ndarray) -> list[float]:
    m = (ts > 0.1) & (ts < 0.9)
    r = g[m] - np.polyval(np.polyfit(ts[m], g[m], 12), ts[m])
    amp = np.abs(np.fft.rfft(r * np.hanning(len(r)))) / len(r) * 4
    span = ts[m][-1] - ts[m][0]
    return [float(amp[int(lo * span):max(int(hi * span), int(lo * span) + 1)].max()) for lo, hi in BANDS]


def _rms(e: np.ndarray) -> str:
    """Per-point rms error, and its part common to every point (the mean) beside the spread (sd)."""
    return f"{np.sqrt((e**2).mean()):.1e} ({e.mean():+.1e} / {e.std():.1e})"


def cost(score, gm, sde, n: int = 200, reps: int = 5) -> str:
    """CPU ms of one score forward and of one divergence (forward + d VJPs) at n points: "F / D"."""
    x = points(gm, sde, n)
    t = torch.full((n,), 0.3, dtype=torch.float64)

    out = []
    for fn in (lambda: score(x, t), lambda: exact_trace(score, x, t)):
        fn()
        c = time.thread_time()
        for _ in range(reps):
            fn()
        out.append((time.thread_time() - c) / reps * 1e3)
    return f"{out[0]:.1f} / {out[1]:.1f}"


def case(kind: str, d: int, n: int, fine: int) -> list[str]:
    sde, gm = ss.VPSDE(), GaussianMixture.random(d, 10, seed=0)
    x0 = points(gm, sde, n)
    if kind == "mlp":
        os.makedirs("benchmarks/results/likelihood_speed", exist_ok=True)
        score = trained_mlp(gm, sde, f"benchmarks/results/likelihood_speed/mlp{d}_vp.pt")
    else:
        score = autograd_score(gm, sde)
    eps, T = sde.default_eps, sde.T
    ts = torch.linspace(eps, T, fine + 1, dtype=torch.float64)
    g = integrand(score, sde, x0, ts)
    h = (T - eps) / fine
    dense = simpson(g, h)
    amps = np.array([spectrum(g[:, b], ts.numpy()) for b in range(n)]).mean(0)
    rows = [f"| {kind} | {d} | " + " | ".join(f"{a:.1e}" for a in amps) + f" | {cost(score, gm, sde)} |"]
    errs = []
    for nodes in (32, 64, 128, 256, 512):
        s = fine // nodes
        e_simp = simpson(g[::s], h * s) - dense
        e_gl = gauss_legendre(score, sde, x0, eps, T, nodes // 4) - dense
        errs.append(f"| {kind} | {d} | {nodes} | {_rms(e_simp)} | {_rms(e_gl)} |")
    return rows, errs


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--points", type=int, default=16)
    p.add_argument("--fine", type=int, default=4096)
    p.add_argument("--cases", default="mlp:16,mlp:64,mixture:16")
    p.add_argument("--out", default="benchmarks/likelihood_nodes.md")
    a = p.parse_args()
    torch.set_num_threads(1)
    spec, err = [], []
    for c in a.cases.split(","):
        kind, d = c.split(":")
        r, e = case(kind, int(d), a.points, a.fine)
        spec += r
        err += e
        print(*r, *e, sep="\n", flush=True)
    lines = [
        "# Divergence evaluations the log-density integral needs (issue 17, item 2)", "",
        f"`OMP_NUM_THREADS=1 python benchmarks/likelihood_nodes.py` ({a.points} points of p_eps per case, VP, "
        f"float64, x(t) at rtol 1e-9, the integrand g(t) = −½ g(t)² tr∇s at {a.fine} + 1 uniform times).", "",
        "Oscillation of g along the path: mean amplitude per band of cycles per unit t (t ∈ [0.1, 0.9], trend "
        "removed).  The trained network's sinusoidal time embedding reaches 1000 rad = 159 cycles.", "",
        "| score | d | " + " | ".join(f"{lo}–{hi}" for lo, hi in BANDS)
        + " | CPU ms at 200 points: forward / divergence |",
        "|---|---|" + "---|" * (len(BANDS) + 1), *spec, "",
        "Per-point rms error of ∫ g dt with N divergence evaluations against the dense integral (in brackets: its "
        "mean over the points / its sd over the points):", "",
        "| score | d | N | composite Simpson | composite 4-point Gauss-Legendre |", "|---|---|---|---|---|", *err, "",
        "Reading: on the trained MLPs the integrand oscillates at 12–175 cycles per unit t with amplitudes "
        "0.05–0.4 below 125 (the mixture's falls below 1e-5 above 80), so the quadrature error falls only once "
        "the fastest band is resolved: 4-point Gauss-Legendre reaches 9.8e-3 / 3.1e-2 (16-d / 64-d) at 128 "
        "evaluations, 1.1e-3 / 5.3e-3 at 256.  Most of it is common to every point (the mean column: 8.8e-3 / "
        "3.0e-2 at 128): the time embedding's oscillation is integrated wrongly the same way along every path, "
        "while the per-point spread (4.2e-3 / 7.4e-3) is already below the reference's whole error.  The "
        "reference-style RK45 at 1e-5 reaches an rms of 6.6e-3 / 1.45e-2 with 422 / 314 right-hand sides, each "
        "a divergence and one forward more (likelihood_speed.md, same networks).  Measured there (the decoupled "
        "rows: N evaluations placed in advance, x from one score-only dopri5 solve at 1e-6): 128 evaluations give "
        "2.2× / 2.0× its speed at a larger rms (1.0e-2 / 1.5e-2), 192 give 1.9× / 1.4× at a smaller one "
        "(3.4e-3 / 1.3e-2).  The 64-d rows stop at 1.3e-2 (bias −1.15e-2 at both 192 and 256): the error of "
        "the score-only solve at rtol 1e-6 (with x at 1e-9, 32 points: mean error +5.5e-3 at 192 "
        "evaluations, −3.4e-4 at 384, −4e-6 at 768), and that solve feels the oscillation too (16-d: 314 / 788 "
        "/ 2474 score calls at rtol 1e-5 / 1e-6 / 1e-8).  Interpolated, the reference's rms takes ~150 "
        "evaluations on both networks, where 3× its time leaves ~150 (16-d) and ~100 (64-d) before the score-only "
        "solve's 1-8 s: placing the divergence evaluations better gives about 2-2.5× on the 16-d network and "
        "~2× on the 64-d one at best, so the ≥ 3× bar of issue 17 needs each divergence to be cheaper (the "
        "VJP loop "
        "is the cheapest exact trace measured on "
        "CPU, likelihood_crossover.md).  The mixture's integrand is smooth (64 evaluations: 4e-4).",
    ]
    with open(a.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("wrote", a.out)


if __name__ == "__main__":
    main()
