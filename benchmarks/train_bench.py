"""Training benchmarks: the 8-ring mixture (60 s of CPU) and the 8×8 digits (10 minutes, 2 cores).

    python benchmarks/train_bench.py ring      # ~1 min training + ~4 min sampling/metrics, 1 thread
    python benchmarks/train_bench.py digits    # <= 10 min training on 2 threads + sampling/classifier

Each part rewrites its own section of benchmarks/train_results.md; digits also writes
benchmarks/digits_samples.png.

ring: ScoreMLP on exact samples of GaussianMixture.ring(8, radius=2, std=0.1) in raw coordinates
(so the learned score is directly comparable with the mixture's exact score), VP SDE, ε-prediction
DSM.  Reported: training CPU time; relative L2 error of the EMA score against the exact score at
several t; for PC (1000 steps, reverse diffusion + Langevin) and the adaptive probability-flow ODE,
10,000 samples' sliced-W2 and mode-weight TV against the noise floor (exact samples of the same
size, 5 repeats).

digits: UNet on load_dataset("digits") (first 1,500 images), VP SDE, ε-prediction DSM, stopped by
a wall-clock limit.  A logistic regression on the real training pixels labels 1,000 ODE samples
(mapped back to [0, 16]); "confident" means max class probability ≥ 0.9.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
from pathlib import Path

import torch

import scoresolve as ss
from scoresolve import train
from scoresolve.train import data as tdata
from scoresolve.train.plots import image_grid

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "train_results.md"
CONFIDENT = 0.9


def _write_section(name: str, body: str) -> None:
    text = RESULTS.read_text() if RESULTS.exists() else "# Training benchmarks (benchmarks/train_bench.py)\n"
    block = f"<!-- {name} -->\n{body.strip()}\n<!-- /{name} -->"
    pat = re.compile(rf"<!-- {name} -->.*?<!-- /{name} -->", re.S)
    text = pat.sub(lambda _: block, text) if pat.search(text) else text.rstrip() + "\n\n" + block + "\n"
    RESULTS.write_text(text)


def ring(args) -> dict:
    torch.set_num_threads(1)
    target = ss.targets.GaussianMixture.ring(k=8, radius=2.0, std=0.1)
    sde = ss.VPSDE()
    torch.manual_seed(0)
    model = train.ScoreMLP(dim=2, hidden=128, depth=3)
    loss = train.dsm_loss(sde, eps=1e-5)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    state = train.fit(model, loss, lambda n, g: target.sample(n, generator=g), steps=args.steps, batch_size=1024,
                      lr=2e-3, warmup=100, ema=0.999, progress=False)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    rel = {}
    for t in (0.5, 0.2, 0.1, 0.01):
        x = target.sample(10_000, t=t, sde=sde, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        tt = torch.full((10_000,), t, dtype=torch.float64)
        exact = target.score(x, tt, sde)
        rel[t] = float((state.score_fn()(x, tt) - exact).norm() / exact.norm())
    n, metrics = 10_000, ("sliced_w2", "mode_tv", "component_w2")
    floor = ss.metrics.noise_floor(target, n, repeats=5, metrics=metrics)
    rows = {}
    for method in ("pc", "ode"):
        s0 = time.perf_counter()
        res = ss.sample(state.score_fn(), sde, (n, 2), method, generator=torch.Generator().manual_seed(2))
        ev = ss.metrics.evaluate(res.samples, target, metrics=metrics, generator=torch.Generator().manual_seed(3))
        rows[method] = {**ev, "nfe": res.nfe, "time": time.perf_counter() - s0}
    out = {"steps": state.step, "cpu": cpu, "wall": wall, "rel_l2": rel, "floor": floor, "samplers": rows,
           "loss": state.history[-1][1]}
    lines = [
        "## 8-ring mixture (VP, ScoreMLP 128×3, batch 1024, lr 2e-3, EMA 0.999, ε-prediction DSM)",
        "",
        f"Trained {state.step} steps in **{cpu:.1f} s of CPU** (1 thread; {wall:.1f} s wall on a shared machine), "
        f"final loss {out['loss']:.4f}.",
        "",
        "Relative L2 error of the EMA score against the exact mixture score, on exact samples of p_t:",
        "",
        "| t | " + " | ".join(f"{t:g}" for t in rel) + " |",
        "|---|" + "---|" * len(rel),
        "| rel. L2 | " + " | ".join(f"{v:.3f}" for v in rel.values()) + " |",
        "",
        f"Samples: {n:,} per sampler; noise floor = exact samples of the same size (mean ± sd over 5 draws).",
        "",
        "| sampler | NFE | sliced-W2 | × floor | mode-weight TV | component W2 | × floor | time (s) |",
        "|---|---|---|---|---|---|---|---|",
        f"| exact (floor) | – | {floor['sliced_w2'][0]:.4f} ± {floor['sliced_w2'][1]:.4f} | 1 | "
        f"{floor['mode_tv'][0]:.4f} ± {floor['mode_tv'][1]:.4f} | "
        f"{floor['component_w2'][0]:.4f} ± {floor['component_w2'][1]:.4f} | 1 | – |",
    ]
    for m, r in rows.items():
        lines.append(f"| {m} | {r['nfe']:g} | {r['sliced_w2']:.4f} | {r['sliced_w2'] / floor['sliced_w2'][0]:.2f} | "
                     f"{r['mode_tv']:.4f} | {r['component_w2']:.4f} | "
                     f"{r['component_w2'] / floor['component_w2'][0]:.1f} | {r['time']:.0f} |")
    lines += ["", "Bar: sliced-W2 within 2× the floor and mode TV ≤ 0.05 for PC and ODE after ≤ 60 s of CPU; "
              "score rel. L2 at t = 0.5 below 0.2.  Sliced-W2 and mode TV are weak at this size (a ring "
              "whose modes are not yet separated passes them); the per-component Gaussian-fit W2 "
              "(metrics.component_w2) is the stricter check of the component widths, reported beside."]
    _write_section("ring", "\n".join(lines))
    return out


def _classifier():
    from sklearn.linear_model import LogisticRegression

    x, y = tdata.load_dataset("digits", "train", return_labels=True)
    xt, yt = tdata.load_dataset("digits", "test", return_labels=True)
    clf = LogisticRegression(max_iter=5000).fit(tdata.to_raw("digits", x).flatten(1).numpy(), y.numpy())
    p = clf.predict_proba(tdata.to_raw("digits", xt).flatten(1).numpy())
    acc = float((p.argmax(1) == yt.numpy()).mean())
    return clf, acc, float((p.max(1) >= CONFIDENT).mean())


def _train_labels() -> torch.Tensor:
    return tdata.load_dataset("digits", "train", return_labels=True)[1]


def digits(args) -> dict:
    torch.set_num_threads(args.threads)
    x = tdata.load_dataset("digits", "train")
    sde = ss.VPSDE()
    torch.manual_seed(0)
    model = train.UNet(in_channels=1, channels=32, channel_mults=(1, 2), num_res_blocks=1)
    loss = train.dsm_loss(sde, eps=1e-5)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    state = train.fit(model, loss, x, steps=args.steps, batch_size=128, lr=args.lr, warmup=100, ema=0.999,
                      time_limit=args.time_limit, progress=args.progress, checkpoint=args.checkpoint)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    n = args.samples
    s0 = time.perf_counter()
    res = ss.sample(state.score_fn(), sde, (n, 1, 8, 8), args.method, generator=torch.Generator().manual_seed(1))
    sample_time = time.perf_counter() - s0
    raw = tdata.to_raw("digits", res.samples).clamp(0, 16)
    image_grid(raw[:64], HERE / "digits_samples.png", vmin=0, vmax=16, ncol=8,
               title=f"VP + UNet, {state.step} steps ({wall / 60:.1f} min), {args.method} NFE {res.nfe:g}")
    clf, acc, real_conf = _classifier()
    p = torch.as_tensor(clf.predict_proba(raw.flatten(1).numpy()))
    conf = p.max(1).values >= CONFIDENT
    hist = torch.bincount(p.argmax(1), minlength=10)
    hist_conf = torch.bincount(p.argmax(1)[conf], minlength=10)
    tv = float(0.5 * (hist / n - 0.1).abs().sum())
    from scipy.stats import chisquare

    chi = chisquare(hist.numpy())
    out = {"steps": state.step, "cpu": cpu, "wall": wall, "threads": args.threads, "nfe": res.nfe,
           "sample_time": sample_time, "confident": float(conf.float().mean()), "hist": hist.tolist(),
           "hist_confident": hist_conf.tolist(), "tv_uniform": tv, "chi2_p": float(chi.pvalue),
           "clf_acc": acc, "real_confident": real_conf, "loss": state.history[-1][1]}
    # sampling noise of a histogram of n draws from the uniform: E TV ≈ Σ_k sd_k / 2
    tv_noise = 10 * math.sqrt(0.1 * 0.9 / n) * math.sqrt(2 / math.pi) / 2
    lines = [
        "## 8×8 digits (VP, UNet 32 ch × (1, 2), batch 128, ε-prediction DSM, EMA 0.999)",
        "",
        f"Trained **{state.step} steps in {wall / 60:.1f} min wall** on {args.threads} threads "
        f"({cpu:.0f} s CPU), lr {args.lr:g}, final loss {out['loss']:.4f}; sampled {n} digits with "
        f"`{args.method}` (NFE {res.nfe:g}, {sample_time:.0f} s).",
        "",
        f"Classifier: logistic regression on the 1,500 real training images' pixels; accuracy {acc:.3f} on the "
        f"297 held-out real digits, of which {real_conf:.1%} get max probability ≥ {CONFIDENT}.",
        "",
        f"- confident samples (max probability ≥ {CONFIDENT}): **{out['confident']:.1%}** (bar ≥ 80%)",
        f"- class histogram of all {n} samples (0–9): {hist.tolist()}",
        f"- of the confident ones: {hist_conf.tolist()}",
        f"- real training set, for reference: {torch.bincount(_train_labels(), minlength=10).tolist()} "
        "(1,500 images, near uniform)",
        f"- total variation from uniform: {tv:.3f} (pure sampling noise at n = {n}: ≈ {tv_noise:.3f}); "
        f"χ² test against uniform p = {chi.pvalue:.3g}",
        "",
        "Sample grid (first 64 samples): `benchmarks/digits_samples.png`.  Step counts depend on the "
        "machine's load: the training is stopped by wall-clock time.",
    ]
    _write_section("digits", "\n".join(lines))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="part", required=True)
    r = sub.add_parser("ring")
    r.add_argument("--steps", type=int, default=2000)
    d = sub.add_parser("digits")
    d.add_argument("--steps", type=int, default=100_000, help="upper bound; the time limit stops the run")
    d.add_argument("--time-limit", type=float, default=570.0, help="training wall-clock seconds")
    d.add_argument("--threads", type=int, default=2)
    d.add_argument("--lr", type=float, default=1e-3)
    d.add_argument("--samples", type=int, default=1000)
    d.add_argument("--method", default="ode")
    d.add_argument("--checkpoint", default=None)
    d.add_argument("--progress", action="store_true")
    args = p.parse_args()
    out = ring(args) if args.part == "ring" else digits(args)
    print(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
