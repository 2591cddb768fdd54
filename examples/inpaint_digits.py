"""Inpaint the bottom half of real 8×8 digits with a trained score model.

    python examples/inpaint_digits.py                       # uses runs/digits if it exists
    python examples/inpaint_digits.py --run PATH            # any run from `scoresolve train --data digits`

Without a trained run it trains a short one first (``scoresolve train --data digits``, written to
examples/outputs/digits_run and resumed on the next call).  The top half of 8 test digits is
known; the bottom half is sampled with the replacement method (PC, Song et al. 2021 App. I.2)
and with the particle sampler (SMC).  Writes examples/outputs/inpaint_digits.png: rows are the
originals, the observed halves, two replacement samples and two particle samples per digit.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(__file__).with_name("outputs")


def find_or_train(run: str | None, train_steps: int):
    """A trained digits run: --run, runs/digits, or a short run trained here."""
    from scoresolve.train import load_run  # lazy: the training package is optional here

    for cand in ([Path(run)] if run else []) + [ROOT / "runs" / "digits", OUT / "digits_run"]:
        if (cand / "ckpt.pt").exists() or (cand.is_file() and cand.suffix == ".pt"):
            r = load_run(cand)
            if cand != OUT / "digits_run" or r.step >= train_steps:
                return r, cand
    if run:
        raise SystemExit(f"no trained run at {run}")
    from scoresolve.train.cli import train_main

    out = OUT / "digits_run"
    print(f"no trained digits run found: training {train_steps} steps into {out} (resumable)")
    start = time.perf_counter()
    rc = train_main(["--data", "digits", "--out", str(out), "--steps", str(train_steps), "--threads", "1",
                     "--no-progress"])
    if rc != 0:
        raise SystemExit(f"training failed (exit code {rc})")
    print(f"trained in {time.perf_counter() - start:.0f} s")
    return load_run(out), out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default=None, help="run directory or checkpoint (default: runs/digits)")
    p.add_argument("--train-steps", type=int, default=3000, help="steps of the fallback training run")
    p.add_argument("--steps", type=int, default=500, help="sampler steps")
    p.add_argument("--particles", type=int, default=32, help="particles per digit for SMC (0: skip)")
    p.add_argument("--n", type=int, default=8, help="digits to inpaint")
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from scoresolve.control import inpaint
    from scoresolve.train.data import load_dataset

    run, where = find_or_train(args.run, args.train_steps)
    print(f"run {where}: {run.sde!r}, trained {run.step} steps, data shape {run.data_shape}")
    x = load_dataset("digits", "test")[: args.n].to(torch.float32)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :4, :] = 1.0  # top half known, bottom half inpainted
    g = torch.Generator().manual_seed(0)
    rows, names = [x, x * mask + (-1.0) * (1 - mask)], ["original", "observed"]

    with torch.no_grad():
        start = time.perf_counter()
        rep = inpaint(run.score_fn, run.sde, x.repeat(2, 1, 1, 1), mask, method="pc", steps=args.steps, generator=g)
        print(f"replacement (PC): {rep.nfe} NFE per sample, {time.perf_counter() - start:.1f} s")
        rows += list(rep.samples.split(args.n))
        names += ["replacement 1", "replacement 2"]
        if args.particles:
            start = time.perf_counter()
            smc = inpaint(run.score_fn, run.sde, x, mask, particles=args.particles, steps=args.steps, generator=g)
            print(f"particles (SMC, K={args.particles}): {smc.nfe} NFE per particle, min ESS "
                  f"{smc.stats['ess_min']:.3f}, {time.perf_counter() - start:.1f} s")
            parts = smc.samples.reshape(args.n, args.particles, 1, 8, 8)
            rows += [parts[:, 0], parts[:, args.particles // 2]]
            names += ["particles 1", "particles 2"]

    bottom = (1 - mask).bool().expand_as(x)
    for name, r in zip(names[2:], rows[2:]):
        err = ((r - x)[bottom] ** 2).mean().sqrt()
        print(f"{name}: RMS error on the inpainted half {float(err):.3f} (data in [-1, 1])")

    fig, ax = plt.subplots(len(rows), args.n, figsize=(args.n * 0.9, len(rows) * 0.95))
    for i, (name, r) in enumerate(zip(names, rows)):
        for j in range(args.n):
            ax[i, j].imshow(r[j, 0].clamp(-1, 1), cmap="gray_r", vmin=-1, vmax=1)
            ax[i, j].set_xticks([])
            ax[i, j].set_yticks([])
        ax[i, 0].set_ylabel(name, fontsize=7, rotation=0, ha="right", va="center")
    fig.suptitle("inpainting the bottom half of test digits", fontsize=9)
    fig.tight_layout()
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "inpaint_digits.png"
    fig.savefig(path, dpi=100)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
