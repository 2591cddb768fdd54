"""Controllable generation on a 2-D ring of 8 Gaussians with its exact score.

    python examples/controllable.py            # writes examples/outputs/controllable.png

Panels: unconditional samples; classifier guidance towards one component (exact ∇ log p_t(y|x));
inpainting y given x on a two-Gaussian mixture with the replacement method and with particles
(SMC) against the exact conditional density (the replacement method keeps the prior mode
weights, the particles find the posterior ones); probability-flow encodings of exact samples (≈ N(0, I)); a
spherical interpolation between two points decoded through the flow.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import scoresolve as ss  # noqa: E402
from scoresolve.control import encode, guided, inpaint, interpolate  # noqa: E402
from scoresolve.targets import GaussianMixture  # noqa: E402

OUT = Path(__file__).with_name("outputs") / "controllable.png"


def main() -> None:
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    gm = GaussianMixture.ring(8, radius=2.0, std=0.3)
    sde = ss.VPSDE()
    score = gm.score_fn(sde)
    n = 2000

    uncond = ss.sample(score, sde, (n, 2), "pc", steps=300, generator=g, dtype=torch.float64)

    # classifier guidance with the exact label likelihood p_t(y = k | x) of the mixture
    k = 1
    comp = GaussianMixture(torch.ones(1), gm.means[k : k + 1], gm.covs[k : k + 1])
    grad = lambda x, t: comp.score(x, t, sde) - gm.score(x, t, sde)  # noqa: E731
    guided_res = ss.sample(guided(score, grad, scale=1.0), sde, (n, 2), "pc", steps=300, generator=g,
                           dtype=torch.float64)
    in_k = gm.responsibilities(guided_res.samples)[:, k].mean()
    print(f"guided to component {k}: mean responsibility {float(in_k):.4f} (exact 1 up to overlap), "
          f"NFE {guided_res.nfe}")

    # inpainting: x known, sample y | x, on two Gaussians (wide and narrow in x) where the
    # observation moves the mode weights from 0.5 / 0.5 to 0.15 / 0.85
    two = GaussianMixture(torch.ones(2), torch.tensor([[0.0, -1.5], [0.5, 1.5]]),
                          torch.tensor([[1.0, 0.09], [0.04, 0.09]]))
    x0 = 0.5
    known = torch.tensor([[x0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([1.0, 0.0])
    rep = inpaint(two.score_fn(sde), sde, known.expand(n, 2), mask, steps=500, generator=g)
    smc = inpaint(two.score_fn(sde), sde, known.expand(8, 2), mask, particles=256, steps=500, generator=g)
    ys = torch.linspace(-3, 3, 400, dtype=torch.float64)
    dens = two.log_prob(torch.stack([torch.full_like(ys, x0), ys], 1)).exp()
    dens = dens / (dens.sum() * float(ys[1] - ys[0]))
    dy = float(ys[1] - ys[0])
    exact_mean, exact_upper = float((ys * dens).sum() * dy), float((dens * (ys > 0)).sum() * dy)
    upper = {k: float((v.samples[:, 1] > 0).double().mean()) for k, v in (("replacement", rep), ("particles", smc))}
    print(f"inpainting y | x={x0}: exact mean {exact_mean:+.3f}, P(y > 0) = {exact_upper:.3f}; "
          f"replacement mean {float(rep.samples[:, 1].mean()):+.3f}, P {upper['replacement']:.3f}; particles mean "
          f"{float(smc.samples[:, 1].mean()):+.3f}, P {upper['particles']:.3f} (NFE {rep.nfe} vs {smc.nfe}, "
          f"min ESS {smc.stats['ess_min']:.2f})")

    # encodings of exact samples and a decoded slerp path
    x = gm.sample(n, sde.default_eps, sde, generator=g, dtype=torch.float64)
    enc = encode(score, sde, x)
    xa, xb = gm.means[[0]].clone(), gm.means[[3]].clone()
    path = interpolate(score, sde, xa, xb, n=12)
    print(f"encoding: latent mean {enc.latent.mean(0).tolist()}, std {enc.latent.std(0).tolist()}, NFE {enc.nfe}")

    fig, ax = plt.subplots(1, 5, figsize=(22, 4.4))
    kw = dict(s=2, alpha=0.4)
    ax[0].scatter(*uncond.samples.T, **kw)
    ax[0].set_title(f"unconditional (PC, {uncond.nfe} NFE)")
    ax[1].scatter(*guided_res.samples.T, color="C1", **kw)
    ax[1].scatter(*gm.means.T, color="k", marker="x")
    ax[1].set_title(f"guided to component {k}")
    ax[2].hist(rep.samples[:, 1], bins=60, range=(-3, 3), density=True, alpha=0.5, label="replacement")
    ax[2].hist(smc.samples[:, 1], bins=60, range=(-3, 3), density=True, alpha=0.5, label="particles (SMC)")
    ax[2].plot(ys, dens, "k", label="exact p(y | x)")
    ax[2].set_title(f"inpainting y given x = {x0} (two Gaussians)")
    ax[2].legend(fontsize=8)
    ax[3].scatter(*enc.latent.T, color="C2", **kw)
    th = torch.linspace(0, 2 * math.pi, 100)
    for r in (1, 2, 3):
        ax[3].plot(r * th.cos(), r * th.sin(), "k", lw=0.5)
    ax[3].set_title("latents of exact samples (≈ N(0, I))")
    ax[4].scatter(*uncond.samples.T, color="0.8", **kw)
    ax[4].plot(*path.samples[:, 0].T, "o-", color="C3")
    ax[4].set_title("slerp in latent space, decoded")
    for a in (ax[0], ax[1], ax[3], ax[4]):
        a.set_aspect("equal")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(OUT, dpi=90)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
