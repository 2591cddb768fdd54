"""A 15-evaluation grid fitted to a pilot batch, and one from the data's scale (one evaluation of 256 prior
draws), against the log-SNR-uniform one; and UniPC of order 5 on a fitted grid with ``refine=1``, one of the 15
evaluations per sample spent re-solving the samples its corrector was least sure of (about forty seconds on CPU).

    python examples/fitted_grid.py        # writes examples/outputs/fitted_grid.png
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import scoresolve as ss  # noqa: E402

sde = ss.VPSDE()
target = ss.targets.GaussianMixture.ring(k=8, radius=2.0, std=0.1)
score_fn = target.score_fn(sde)
truth = target.diffused(sde.default_eps, sde)  # p_eps: the samples end at eps, no final denoising
metrics = ("component_w2", "logp_gap")
floor = ss.metrics.noise_floor(truth, 10_000, repeats=3, metrics=metrics)

# once per score: 256 prior draws, their flow solved tightly, the grid searched for two losses and the one that
# changes fresh draws' log-density least kept (its cost is reported)
fit = ss.fit_grid(score_fn, sde, (256, 2), "unipc", nfe=15, generator=torch.Generator().manual_seed(0))
print(f"fit ({fit.objective}): the pilot's median squared error {fit.median_error_start:.2e} -> "
      f"{fit.median_error:.2e}, {fit.pilot_nfe:.0f} score evaluations per pilot sample over {fit.evaluations} "
      "pilot solves")

# no search: one evaluation of 256 prior draws reads the data's scale off the score at T
scaled = ss.scale_grid(score_fn, sde, (256, 2), "unipc", nfe=15, generator=torch.Generator().manual_seed(0))
print(f"scale grid: data scale {scaled.scale:.2f}, first step to sigma/m = {scaled.first_sigma:.1f}")
# (in one call: ss.sample(score_fn, sde, shape, "unipc", nfe=15, grid="scale") makes the same pilot evaluation, with
# a seed of its own, inside the run and counts its 256 rows in the NFE; making the grid once pays off for many runs)

# four past nodes, 14 steps, and the last evaluation per sample on re-solving (ode_adaptive_ps) the samples whose
# corrector increment relative to the noise level was the largest: the grid is fitted for that method
refined = ss.fit_grid(score_fn, sde, (256, 2), "unipc:solver_order=4;refine=1", nfe=15,
                      generator=torch.Generator().manual_seed(0))

fig, axes = plt.subplots(1, 4, figsize=(17, 5), sharex=True, sharey=True, layout="constrained")
grids = [("unipc, log-SNR grid", "unipc", dict(nfe=15)), ("unipc, scale grid", "unipc", scaled.sample_options),
         ("unipc, fitted grid", "unipc", fit.sample_options),
         ("unipc order 5, fitted grid, refine=1", refined.method, refined.sample_options)]
for ax, (name, method, grid) in zip(axes, grids):
    ratios = {k: 0.0 for k in metrics}
    for seed in range(3):  # each metric's noise is its floor: the mean of three runs reads steadier than one
        res = ss.sample(score_fn, sde, (10_000, 2), method, denoise=False,
                        generator=torch.Generator().manual_seed(seed), **grid)
        q = ss.metrics.evaluate(res.samples, truth, metrics=metrics, generator=torch.Generator().manual_seed(10 + seed))
        ratios = {k: ratios[k] + q[k] / floor[k][0] / 3 for k in metrics}
    print(f"{name:>36}: NFE {res.nfe:.2f}, W2 {ratios['component_w2']:.2f}x floor, "
          f"log-density gap {ratios['logp_gap']:.2f}x floor (means of 3 runs)")
    ax.scatter(*res.samples[:3000].T, s=1, alpha=0.4)
    ax.set_title(f"{name}, {res.nfe:.2f} NFE\nW2 {ratios['component_w2']:.1f}x, "
                 f"log p gap {ratios['logp_gap']:.1f}x floor", fontsize=10)
    ax.set_aspect("equal")

out = Path(__file__).resolve().parent / "outputs" / "fitted_grid.png"
out.parent.mkdir(exist_ok=True)
fig.savefig(out, dpi=120, bbox_inches="tight")
print("wrote", out)
