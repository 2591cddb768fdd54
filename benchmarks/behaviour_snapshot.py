"""Samples of every registered method on fixed seeds, to check that a refactor keeps behaviour.

    python benchmarks/behaviour_snapshot.py write tests/data/behaviour_0.1.0.pt   # the release's set
    python benchmarks/behaviour_snapshot.py check tests/data/behaviour_0.1.0.pt   # compare this tree

Each case is (method, SDE, dtype, options): samples from a fixed generator and from per-sample
seeds on an 8-mode ring (float64 and float32), plus inpainting with the classical samplers.
``check`` prints, per case, whether the samples are bit-identical, else their max relative
difference (max |a − b| / max |b|), and exits 1 if any case exceeds 1e-6; the deliberate
changes since the release (``CHANGED``, each with its reason) are skipped.
"""

from __future__ import annotations

import sys

import torch

import scoresolve as ss
from scoresolve.targets import GaussianMixture

RING = GaussianMixture.ring(8, 2.0, 0.2)
SDES = {"vp": ss.VPSDE(), "ve": ss.VESDE(sigma_max=20.0), "subvp": ss.SubVPSDE()}
TOL = 1e-6
# float32 cases: the CPU's kernels (vector width, reduction order) round float32 differently from
# machine to machine, and adaptive step control amplifies that through its accept/reject decisions
# (measured up to 5.2e-5 relative on one machine of this kind for ode_adaptive_ps, 1.1e-5 for ode,
# against 0 on another); a behaviour change moves samples by far more than 1e-3
TOL_FLOAT32 = 1e-3


def tolerance(name: str) -> float:
    return TOL_FLOAT32 if "/float32/" in name else TOL

# Deliberate changes since the release, each with its reason:
CHANGED = {
    # 0.1.0's inpainting re-implemented the ALD loop without the m(t)/m(t_prev) rescale between
    # levels that sample(method="ald") has (issue 13); it now runs ALD's own step
    "inpaint/ald/vp", "inpaint/ald/subvp",
    # issue 18: em and reverse_diffusion now step on the interval shifted to its end (t_eval=1) on
    # the "classical" grid, and ancestral uses the variance ½(β̃ + β) on that grid (since: Analytic-DPM's
    # variance; reverse_diffusion on VE the transition step where the frozen one amplifies variance errors):
    # measured closer to the noise floor than score_sde's own samplers (benchmarks/classical_results.md)
    *(f"{m}/{s}/{c}" for m in ("em", "ancestral", "reverse_diffusion") for s in ("vp", "ve", "subvp")
      for c in ("float64/generator", "float32/generator", "float64/seeds/no-denoise")),
    *(f"inpaint/{m}/{s}" for m in ("em", "ancestral") for s in ("vp", "ve", "subvp")),
    # issue 18: Gotta Go Fast's step exponent ½, and its error measured against the noise level
    # (error_norm="noise", rtol = atol = 0.04; the paper's norm, relative to |x|, misses the
    # log-density floor on VE and on data away from the origin: benchmarks/ggf_norm.md)
    *(f"gotta_go_fast/{s}/{c}" for s in ("vp", "ve", "subvp")
      for c in ("float64/generator", "float32/generator", "float64/seeds/no-denoise")),
    # issue 18: on VE (σ(0) = σ_min > 0) the PC samplers' final denoising returns x̂_0 of the last
    # evaluation (PC(end="auto")), no longer the last step's mean, which keeps σ_min of noise
    "pc/ve/float64/generator", "pc/ve/float32/generator", "inpaint/pc/ve",
    # issue 18: on sub-VP the reverse-diffusion predictor is the Euler-Maruyama step (as score_sde's),
    # and pc steps on the quadratic grid there ("classical_pc")
    *(f"pc/subvp/{c}" for c in ("float64/generator", "float32/generator", "float64/seeds/no-denoise")),
    "inpaint/pc/subvp",
    # issue 18: on VP pc's reverse-diffusion predictor takes the frozen-coefficient step on the interval
    # shifted by one step (t_eval="shifted_vp", coefficients="auto") on the quadratic grid
    *(f"pc/vp/{c}" for c in ("float64/generator", "float32/generator", "float64/seeds/no-denoise")),
    "inpaint/pc/vp",
    # issue 18: ode's initial-step probe stays inside [eps, T] (torchdiffeq's probed the score far beyond
    # eps) and its default solver "rk45" estimates the error as scipy's RK45 does
    *(f"ode/{s}/{c}" for s in ("vp", "ve", "subvp")
      for c in ("float64/generator", "float32/generator", "float64/seeds/no-denoise")),
    *(f"inpaint/ode/{s}" for s in ("vp", "ve", "subvp")),
    # issue 18: ald's default step is α_i = 2 σ_i² (step_ratio=2; NCSNv2's Technique 4, the old
    # default, takes steps 4-30x smaller and mixes too slowly: components 7-14% too wide at 1600 NFE)
    *(f"ald/{s}/{c}" for s in ("vp", "ve", "subvp")
      for c in ("float64/generator", "float32/generator", "float64/seeds/no-denoise")),
    "inpaint/ald/ve",
    # issue 17: below σ̃ = σ/m = 0.01 (sub-VP's default end; VP's and VE's end above it) ode_adaptive_ps
    # ends with one score-form step in σ̃² (tail_sigma): its multistep in λ narrowed the samples there
    # (log-density bias +1.6 to +5.8 floors on held-out 16-128-d mixtures, now as under VP), holding m·s
    # from the sample's newest evaluation (no NFE; it evaluated at σ̃ = 0.01, 1 NFE, before)
    *(f"ode_adaptive_ps/subvp/{c}" for c in ("float64/generator", "float32/generator", "float64/seeds/no-denoise")),
    # issue 17: so do the deterministic exponential samplers' generated grids (protocol.tail_step, holding
    # the last evaluation's m·s: no NFE): on sub-VP a grid to eps spent a third of its steps below 0.01
    # (paired log-density bias of unipc at 20 NFE on a 16-d mixture −15.1 floors, now −4.1)
    *(f"{m}/subvp/{c}" for m in ("ddim", "dpmpp_2s", "dpmpp_2m", "dpmpp_3m", "unipc")
      for c in ("float64/generator", "float32/generator", "float64/seeds/no-denoise")),
}


def _budget(method: str) -> dict:
    s = ss.SAMPLERS[method]
    if s.nfe_per_step is None:
        return {}
    return {"nfe": 24} if method != "ald" else {"steps": 6}


def cases():
    """name -> a function drawing the samples of that case."""
    out = {}
    for sde_name in ("vp", "ve", "subvp"):
        sde = SDES[sde_name]
        for method in ss.SAMPLERS:
            for dtype in (torch.float64, torch.float32):
                def run(method=method, sde=sde, dtype=dtype):
                    g = torch.Generator().manual_seed(1234)
                    return ss.sample(RING.score_fn(sde), sde, (64, 2), method, generator=g, dtype=dtype,
                                     **_budget(method)).samples
                out[f"{method}/{sde_name}/{str(dtype)[6:]}/generator"] = run
            def run_seeds(method=method, sde=sde):
                return ss.sample(RING.score_fn(sde), sde, (16, 2), method, seeds=list(range(100, 116)),
                                 dtype=torch.float64, denoise=False, **_budget(method)).samples
            out[f"{method}/{sde_name}/float64/seeds/no-denoise"] = run_seeds
        for method in ("pc", "em", "ancestral", "ald", "ode", "ode_euler", "ode_heun"):
            def run_inpaint(method=method, sde=sde):
                g = torch.Generator().manual_seed(99)
                known = torch.tensor([[2.0, 0.0]], dtype=torch.float64).expand(32, 2).clone()
                mask = torch.tensor([1.0, 0.0], dtype=torch.float64)
                return ss.inpaint(RING.score_fn(sde), sde, known, mask, method=method, generator=g,
                                  **_budget(method)).samples
            out[f"inpaint/{method}/{sde_name}"] = run_inpaint
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("write", "check"):
        print(__doc__)
        return 2
    mode, path = argv
    todo = cases()
    if mode == "write":
        torch.save({k: f() for k, f in todo.items()}, path)
        print(f"wrote {len(todo)} cases to {path}")
        return 0
    ref = torch.load(path, weights_only=True)
    worst, bad, same = 0.0, [], 0
    for name, f in todo.items():
        if name not in ref:
            print(f"{name}: new case (no reference)")
            continue
        if name in CHANGED:
            continue
        a, b = f(), ref[name]
        if a.shape == b.shape and torch.equal(a, b):
            same += 1
            continue
        rel = float((a - b).abs().max() / b.abs().max()) if a.shape == b.shape else float("inf")
        worst = max(worst, rel)
        print(f"{name}: max rel diff {rel:.3g}")
        if not rel <= tolerance(name):
            bad.append(name)
    print(f"{len(CHANGED & set(ref))} deliberately changed cases skipped; "
          f"{same} of {len(todo)} cases bit-identical; worst relative difference {worst:.3g}; "
          f"{len(bad)} above {TOL:g} (float32: {TOL_FLOAT32:g})")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
