"""``scoresolve demo``: sample a 2-D Gaussian mixture with classical and fast methods and plot
them beside exact samples, with counted NFE, quality against the noise floor and wall time."""

from __future__ import annotations

import argparse
import math
import os

import torch

from . import metrics
from .gridfit import fit_grid, fit_nfe
from .registry import format_spec
from .sampling import sample
from .sde import SDES
from .targets import GaussianMixture

# classical samplers at --steps, then the fast ones at their own budgets ("name:key=value;...")
DEFAULT_METHODS = "pc,em,ode,ode_heun,unipc:nfe=15;grid=scale;solver_order=4,unipc:fit=10,ode_adaptive_ps"
METRICS = ("component_w2", "logp_gap")
PILOT = 256  # prior draws a fit=N grid is fitted to


def _label(name: str, opts: dict) -> str:
    """"unipc (nfe=15, grid=scale)": the method and its options (none shown for the steps alone)."""
    if not opts or set(opts) == {"steps"}:
        return name
    return f"{name} ({', '.join(f'{k}={v}' for k, v in opts.items())})".replace("fit=", "fitted grid, nfe=")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scoresolve demo", description=__doc__)
    p.add_argument("--sde", default="vp", choices=list(SDES))
    p.add_argument("--methods", default=DEFAULT_METHODS,
                   help="comma-separated sampler names, each optionally with options, e.g. unipc:nfe=20 or "
                        "ode_adaptive_ps:rtol=0.005;atol=0.005 (a fixed-step method without steps/nfe runs "
                        "at --steps; an adaptive one at its default tolerance); fit=N runs a deterministic "
                        "fixed-step method at N evaluations on a grid fitted to this score first "
                        f"(scoresolve.fit_grid, a {PILOT}-draw pilot; its cost is printed)")
    p.add_argument("--steps", type=int, default=200, help="steps of the classical samplers")
    p.add_argument("--samples", type=int, default=5000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="demo.png", help="PNG path for the scatter plot")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .registry import SAMPLERS, parse_spec

    sde = SDES[a.sde]()
    target = GaussianMixture.ring(k=8, radius=2.0, std=0.1)
    try:
        specs = [parse_spec(m) for m in a.methods.split(",") if m.strip()]
    except ValueError as e:
        p.error(f"--methods: {e}")
    for name, _ in specs:
        if name not in SAMPLERS:
            p.error(f"unknown method {name!r}; choose from {', '.join(SAMPLERS)}")
    exact = target.sample(a.samples, generator=torch.Generator().manual_seed(10_000 + a.seed))
    floor = metrics.noise_floor(target, a.samples, repeats=3, metrics=METRICS)
    fw, fl = floor["component_w2"][0], floor["logp_gap"][0]
    print(f"8-ring, {a.sde.upper()} SDE, {a.samples} samples; noise floor: component W2 {fw:.4f}, "
          f"log-density gap {fl:.4f} (exact samples of the same size)")
    width = max(28, *(len(_label(name, opts)) for name, opts in specs))
    print(f"  {'method':>{width}}  {'NFE':>6}  {'W2/floor':>8}  {'logp-gap/floor':>14}  {'wall s':>7}")
    panels = [("exact", exact, "data distribution")]
    for name, opts in specs:
        run, fitted = dict(opts), None
        if "fit" in run:  # a grid fitted to the score at N evaluations, denoising included
            try:
                n_fit = int(run.pop("fit"))
                spec = format_spec(name, run)  # the grid of the method with its options (solver_order, refine, ...)
                fitted = fit_grid(target.score_fn(sde), sde, (PILOT, 2), spec, fit_nfe(spec, n_fit, True),
                                  generator=torch.Generator().manual_seed(a.seed + 1), progress=not a.no_progress)
            except ValueError as e:  # a method without a grid to fit, a budget too small for one
                p.error(f"--methods {name}:fit=...: {e}")
            run.update(fitted.sample_options)
        elif SAMPLERS[name].nfe_per_step is not None and not {"steps", "nfe"} & set(run):
            opts = run = {**run, "steps": a.steps}
        res = sample(target.score_fn(sde), sde, (a.samples, 2), name, generator=torch.Generator().manual_seed(a.seed),
                     progress=not a.no_progress, **run)
        ev = metrics.evaluate(res.samples, target, exact, metrics=METRICS)
        rw, rl = ev["component_w2"] / fw, ev["logp_gap"] / fl
        nfe = f"{res.nfe:.1f}" if isinstance(res.nfe, float) else str(res.nfe)
        label = _label(name, opts)
        print(f"  {label:>{width}}  {nfe:>6}  {rw:>8.2f}  {rl:>14.2f}  {res.stats['wall_time']:>7.2f}")
        if fitted is not None:
            print(f"  {'':>{width}}  (the fit, once per score: {fitted.pilot_nfe * PILOT / 1e6:.1f}M evaluations, "
                  f"{fitted.seconds:.1f} s)")
        cost = "" if fitted is None else f" (+ {fitted.seconds:.1f} s to fit, once)"
        panels.append((label, res.samples, f"NFE {nfe}, {res.stats['wall_time']:.2f} s{cost}\n"
                                           f"W2 {rw:.1f}× floor, logp gap {rl:.1f}× floor"))
    cols = min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.9 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (name, x, sub) in zip(axes.flat, panels):
        x = x.cpu().numpy()
        ax.scatter(x[:, 0], x[:, 1], s=1, alpha=0.4)
        ax.set_title(f"{name}\n{sub}", fontsize=8.5)
        ax.set_xlim(-3, 3), ax.set_ylim(-3, 3), ax.set_aspect("equal"), ax.set_xticks([]), ax.set_yticks([])
    fig.suptitle(f"8-ring mixture, {a.sde.upper()} SDE, {a.samples} samples: counted NFE, quality / noise floor "
                 "(≤ 2 = as good as exact samples), wall time", fontsize=9.5)
    fig.tight_layout(rect=(0, 0, 1, 0.96), h_pad=3.0)
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    tmp = a.out + ".tmp.png"
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    os.replace(tmp, a.out)
    print(f"wrote {a.out}")
    return 0
