"""Train a U-Net score model on scikit-learn's 8×8 digits and save a grid of 64 sampled digits.

    python examples/train_digits.py                       # 10 minutes on 2 threads, then sampling
    python examples/train_digits.py --minutes 2           # a rough first look
    python examples/train_digits.py --checkpoint runs/digits/ckpt.pt   # resumable across calls

Needs scikit-learn (pip install 'scoresolve[images]').  The same from the shell:
    scoresolve train --data digits --sde vp --steps 20000 --out runs/digits
    scoresolve sample --run runs/digits --method ode
"""

import argparse
import time

import torch

import scoresolve as ss
from scoresolve import train
from scoresolve.train import data
from scoresolve.train.plots import image_grid


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=10.0, help="training wall-clock limit")
    p.add_argument("--steps", type=int, default=20_000, help="upper bound on training steps")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--method", default="ode")
    p.add_argument("--out", default="digits.png")
    p.add_argument("--checkpoint", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    x = data.load_dataset("digits", "train")  # (1500, 1, 8, 8) in [-1, 1]; raw pixels = 8 (x + 1)
    sde = ss.VPSDE()
    torch.manual_seed(0)
    model = train.UNet(in_channels=1, channels=32, channel_mults=(1, 2))
    loss = train.dsm_loss(sde, eps=1e-5)
    start = time.perf_counter()
    state = train.fit(model, loss, x, steps=args.steps, batch_size=128, lr=1e-3, ema=0.999,
                      time_limit=60 * args.minutes, checkpoint=args.checkpoint)
    print(f"trained to step {state.step} in {(time.perf_counter() - start) / 60:.1f} min")

    res = ss.sample(state.score_fn(), sde, (64, 1, 8, 8), args.method, generator=torch.Generator().manual_seed(0))
    pixels = data.to_raw("digits", res.samples).clamp(0, 16)
    print("wrote", image_grid(pixels, args.out, vmin=0, vmax=16, ncol=8,
                              title=f"{state.step} steps, {args.method} (NFE {res.nfe:g})"))


if __name__ == "__main__":
    main()
