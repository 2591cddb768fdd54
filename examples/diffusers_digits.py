"""A diffusers model sampled by diffusers and by scoresolve: scikit-learn's 8×8 digits.

Trains a small ``UNet2DModel`` with diffusers' own recipe (``DDPMScheduler``, 1000 discrete
timesteps, linear β, ε-prediction, MSE on the noise), then samples it with diffusers' DDIM
(50 steps) and DPM-Solver++ (20 steps) and with scoresolve's samplers through the adapter:

    sde = ss.DiscreteVPSDE.from_diffusers(scheduler)
    score = ss.from_diffusers(unet, sde)
    res = ss.sample(score, sde, shape, "unipc", nfe=10, grid=..., x_init=noise)

For each method: counted NFE, wall time and a digit classifier's mean confidence (logistic
regression fitted on the real digits; real held-out digits score the ceiling), and one image
grid per method in --out.  Runs in a few CPU minutes (1500 training iterations):

    python examples/diffusers_digits.py --out digits_out            # --threads 1 on a shared machine
"""

from __future__ import annotations

import argparse
import os
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, UNet2DModel  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

import scoresolve as ss  # noqa: E402


def data(seed: int = 0):
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 8.0 - 1.0  # [0, 16] -> [-1, 1]
    return train_test_split(x, digits.target, test_size=0.2, random_state=seed)


def make_unet() -> UNet2DModel:
    return UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(32, 64),
                       layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=8)


def train(x: torch.Tensor, iters: int, batch: int, seed: int) -> tuple[UNet2DModel, DDPMScheduler]:
    """diffusers' training recipe: add_noise at uniform integer timesteps, MSE on ε."""
    torch.manual_seed(seed)
    unet, sched = make_unet(), DDPMScheduler(num_train_timesteps=1000)
    opt = torch.optim.AdamW(unet.parameters(), lr=2e-3, weight_decay=0.0)
    lr = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=iters, pct_start=0.05)
    ema = [p.detach().clone() for p in unet.parameters()]
    for it in range(iters):
        x0 = x[torch.randint(len(x), (batch,))]
        x0 = x0 + torch.randn_like(x0) / 16  # dequantise the 17 grey levels
        noise = torch.randn_like(x0)
        tau = torch.randint(0, sched.config.num_train_timesteps, (batch,))
        loss = torch.nn.functional.mse_loss(unet(sched.add_noise(x0, noise, tau), tau).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        lr.step()
        with torch.no_grad():
            for e, p in zip(ema, unet.parameters()):
                e.lerp_(p, 1 - min(0.999, (1 + it) / (10 + it)))
        if (it + 1) % max(1, iters // 10) == 0:
            print(f"  iter {it + 1}/{iters}  loss {loss.item():.4f}", flush=True)
    with torch.no_grad():
        for e, p in zip(ema, unet.parameters()):
            p.copy_(e)
    return unet.eval(), sched


def diffusers_loop(unet, sched, x_T: torch.Tensor, steps: int) -> tuple[torch.Tensor, int]:
    sched.set_timesteps(steps)
    x, calls = x_T * sched.init_noise_sigma, 0
    for tau in sched.timesteps:
        x = sched.step(unet(sched.scale_model_input(x, tau), tau).sample, tau, x).prev_sample
        calls += 1
    return x, calls


def save_grid(x: torch.Tensor, path: str, title: str) -> None:
    imgs = x[:100, 0].clamp(-1, 1).numpy()
    fig, axes = plt.subplots(10, 10, figsize=(5, 5.3))
    for ax, im in zip(axes.flat, imgs):
        ax.imshow(im, cmap="gray_r", vmin=-1, vmax=1)
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iters", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--samples", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="digits_out")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)

    x_tr, x_te, y_tr, y_te = data(args.seed)
    start = time.perf_counter()
    print(f"training UNet2DModel ({sum(p.numel() for p in make_unet().parameters())} parameters), "
          f"{args.iters} iterations of batch {args.batch}")
    unet, ddpm = train(x_tr, args.iters, args.batch, args.seed)
    print(f"trained in {time.perf_counter() - start:.0f} s")
    clf = LogisticRegression(max_iter=2000).fit(x_tr.flatten(1).numpy(), y_tr)

    def confidence(x: torch.Tensor) -> float:
        return float(clf.predict_proba(x.clamp(-1, 1).flatten(1).numpy()).max(1).mean())

    x_T = torch.randn(args.samples, 1, 8, 8, generator=torch.Generator().manual_seed(args.seed + 1))
    sde = ss.DiscreteVPSDE.from_diffusers(ddpm)  # the model's own table, continuous in t
    score = ss.from_diffusers(unet, sde)  # ε-prediction, t -> timestep 1000 t − 1
    rows = [("real digits (held out)", "-", "-", confidence(x_te))]

    def record(name: str, fn) -> None:
        t0 = time.perf_counter()
        with torch.no_grad():
            x, nfe = fn()
        wall = time.perf_counter() - t0
        rows.append((name, nfe, f"{wall:.2f}", confidence(x)))
        save_grid(x, os.path.join(args.out, name.split(" ")[0].replace("/", "_") + ".png"), name)
        print(f"  {name:52s} NFE {nfe:>3}  {wall:6.2f} s  confidence {rows[-1][3]:.3f}", flush=True)

    cfg = dict(ddpm.config)
    for name, cls, steps in (("diffusers_ddim_50 (DDIMScheduler, 50 steps)", DDIMScheduler, 50),
                             ("diffusers_dpmpp2m_20 (DPMSolverMultistep, 20 steps)", DPMSolverMultistepScheduler, 20),
                             ("diffusers_dpmpp2m_10 (DPMSolverMultistep, 10 steps)", DPMSolverMultistepScheduler, 10)):
        record(name, lambda cls=cls, steps=steps: diffusers_loop(unet, cls.from_config(cfg), x_T, steps))
    for method, nfe, conv in (("ddim", 50, "ddim"), ("dpmpp_2m", 20, "dpmsolver"), ("unipc", 20, "dpmsolver"),
                              ("dpmpp_2m", 10, "dpmsolver"), ("unipc", 10, "dpmsolver"), ("unipc_bh2", 10, "dpmsolver"),
                              ("dpmpp_3m", 10, "dpmsolver")):
        # the last grid point's x̂_0 is one NFE: nfe − 1 grid steps, "trailing" timesteps
        grid = ss.timestep_grid(sde, nfe, "trailing", convention=conv)
        record(f"scoresolve_{method}_{nfe} (trailing grid)",
               lambda m=method, g=grid: (lambda r: (r.samples, r.nfe))(
                   ss.sample(score, sde, x_T.shape, m, grid=g, x_init=x_T)))

    print("\n| method | NFE | wall time (s) | classifier confidence |\n|---|---|---|---|")
    for name, nfe, wall, conf in rows:
        print(f"| {name} | {nfe} | {wall} | {conf:.3f} |")
    print(f"\ntotal {time.perf_counter() - start:.0f} s; image grids in {args.out}/")


if __name__ == "__main__":
    main()
