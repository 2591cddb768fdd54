"""Where ``ancestral`` reads behind the reference on the log-density gap (issue 18): what the samples
look like, component by component.

The log-density gap is |mean log p(samples) − mean log p(exact)|: a signed mean, so errors of
opposite sign cancel in it.  Samples that are too narrow raise log p; means pulled off their
component and mass moved to the wrong component lower it.  On VE at 10 NFE the reference's ancestral
sampler (β̃ variance) is both too narrow and off-centre, and its gap reads small; ours (Analytic-DPM's
variance) is closer on every component and reads larger.  This prints, for such cells, per component
(samples assigned to the component of least Mahalanobis distance): its weight, the offset of its
mean in units of its own std (‖Λ^{-1/2} Uᵀ (mean − μ)‖), and the range over its principal axes of
sample std ÷ true std; then the cell's W2 / gap as multiples of the floors.  10k samples, seed 0.

    python benchmarks/classical_dispersion.py   # writes benchmarks/classical_dispersion.md
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import classical_bench as cb  # noqa: E402

import scoresolve as ss  # noqa: E402
from scoresolve.bench.problems import analytic_problem  # noqa: E402

N = 10_000
CELLS = [("ring8", "ve", 10), ("mix2s201", "ve", 10), ("ring8", "ve", 20), ("mix2s201", "ve", 20)]


def components(x: torch.Tensor, target) -> list[tuple[float, float, float, float]]:
    """Per component: (weight, mean offset in its own stds, min and max std ratio over its axes)."""
    x = x.double()
    mu, cov = target.means.double(), target.covs.double()
    cov = torch.diag_embed(cov) if cov.ndim == 2 else cov
    ev, u = torch.linalg.eigh(cov)
    z = torch.einsum("kdj,nkd->nkj", u, x[:, None, :] - mu[None])  # coordinates on each component's axes
    k = (z.square() / ev[None]).sum(-1).argmin(1)
    out = []
    for j in range(mu.shape[0]):
        zj = z[k == j, j]
        ratio = zj.std(0) / ev[j].sqrt()
        out.append((float((k == j).double().mean()), float((zj.mean(0) / ev[j].sqrt()).norm()),
                    float(ratio.min()), float(ratio.max())))
    return out


def main() -> None:
    torch.set_num_threads(1)
    lines = ["# Ancestral cells behind on the log-density gap: per-component shape (issue 18)", "",
             "`python benchmarks/classical_dispersion.py` (see its docstring).  VE, 10k samples, seed 0; per "
             "component: weight (truth → sample), mean offset in the component's own stds, and the range of "
             "sample std ÷ true std over its principal axes; last column W2 / log-density gap × floor.", "",
             "| problem | NFE | sampler | components: weight, offset, std ratio | W2 / gap |", "|---|---|---|---|---|"]
    for prob, sde_name, budget in CELLS:
        target, sde = analytic_problem(prob).target, cb.SDES[sde_name]()
        floor = ss.metrics.noise_floor(target, N, repeats=5, metrics=cb.METRICS)
        ref_x = target.sample(N, generator=torch.Generator().manual_seed(99), dtype=torch.float64)
        w_true = target.weights.double() / target.weights.double().sum()
        for impl in ("ref", "ours", "truth"):
            if impl == "truth":
                x = target.sample(N, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
            else:
                x = (cb.reference if impl == "ref" else cb.ours)("ancestral", sde, target.score_fn(sde),
                                                                  (N, target.dim), budget, 0)[0]
            comps = "; ".join(f"{float(w_true[j]):.3f}→{w:.3f}, {off:.2f}, {lo:.2f}–{hi:.2f}"
                              for j, (w, off, lo, hi) in enumerate(components(x, target)))
            ev = ss.metrics.evaluate(x, target, ref_x, metrics=cb.METRICS)
            q = f"{ev['component_w2'] / floor['component_w2'][0]:.2f} / {ev['logp_gap'] / floor['logp_gap'][0]:.2f}"
            lines.append(f"| {prob} | {budget} | {impl} | {comps} | {q} |")
            print(lines[-1], flush=True)
    lines += ["", "Reading: at 10 NFE ours is closer than the reference on every component's mean offset (8-ring "
              "0.24-0.33 of a std against 0.44-0.54; 2-D four-component mixture 0.22-0.54 against 0.38-0.90) and on "
              "the smallest component's weight (0.045 against 0.017 for 0.050); its spread errs the other way (up "
              "to 21 % wide, the reference's up to 26 % narrow).  Yet its log-density gap can read larger (the "
              "2-D mixture: 18.0 against 5.4): narrow components raise log p as much as offsets and lost mass "
              "lower it, and the signed mean cancels.  At 20 NFE the ordering is the same and the gap agrees with "
              "it.  (One seed here; the cells of classical_results.md / classical_heldout.md average 2-3.)"]
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "classical_dispersion.md")
    with open(path + ".tmp", "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(path + ".tmp", path)
    print("wrote", path)


if __name__ == "__main__":
    main()
