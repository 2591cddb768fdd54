"""Does ``torch.compile`` pay for the per-sample solvers' step arithmetic on this CPU?  (issue 18)

Times, at batch ``--batch`` (one thread, float64 per-row coefficients as the solvers use them),
the eager and the compiled (inductor, static shapes, warm) versions of:
  - the part of a full-order ``ode_adaptive_ps`` step before the score (the new point's t, m, σ, the
    weights, the predictor and the history's extrapolation), as the solver does it and written as one
    function inductor can fuse (``_step_fused``; the same values to float32 rounding);
  - ``VPSDE.at_log_snr``: (t, m, σ) at each row's new log-SNR (exp, rsqrt, log1p, sqrt, a division);
  - ``exp_pc_weights``: the per-row predictor/corrector weights of ``ode_adaptive_ps`` at order 3
    (steps h ≥ 0.02, so its series branch, a host sync, is not taken);
  - two primitives: one elementwise product, one exp.
The compiled call has a fixed cost (guards, the wrapper), and the arithmetic itself (float64
transcendentals and divisions on every row) does not shrink by fusion; the per-sample solvers'
steps are made of such pieces.

    python benchmarks/compile_probe.py [--batch 10000] [--repeats 300]   # writes benchmarks/compile_probe.md
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch

import scoresolve as ss
from scoresolve.samplers._common import exp_pc_weights


def _time(fn, args, repeats: int, blocks: int = 10) -> float:
    """Seconds per call: the median over ``blocks`` blocks of the mean of repeats/blocks calls (warm)."""
    fn(*args)
    fn(*args)
    per = max(repeats // blocks, 1)
    means = []
    for _ in range(blocks):
        t0 = time.perf_counter()
        for _ in range(per):
            fn(*args)
        means.append((time.perf_counter() - t0) / per)
    return sorted(means)[blocks // 2]


_SDE = ss.VPSDE()
_STOP = 4.0  # λ where the solve stops (no row reaches it: no last-step branch)


def _step_eager(x, h, lam, sig, d0, d1, d2, l1, l2, m0, m1, m2):
    """The predictor and the history's extrapolation of a full-order ``ode_adaptive_ps`` step, with the solver's
    own pieces (``exp_pc_weights``, ``_combine`` on lanes views)."""
    from scoresolve.samplers._common import lanes, unlane
    from scoresolve.samplers.adaptive_ms import _combine

    ha = torch.minimum(h, _STOP - lam)
    t_n, m_n, s_n = _SDE.at_log_snr(2 * (lam + ha))
    w, ell, omega = exp_pc_weights(ha, [(lj - lam) / ha for lj in (l1, l2)])
    xp, xe = _combine(lanes(x), [lanes(d) for d in (d0, d1, d2)], s_n / sig, w, ell, [m_n / m for m in (m0, m1, m2)])
    return unlane(xp, x.shape[1:]), unlane(xe, x.shape[1:]), omega, t_n


def _step_fused(x, h, lam, sig, d0, d1, d2, l1, l2, m0, m1, m2):
    """``_step_eager`` written for inductor: the same formulas (the moments by their recursion, Newton's
    weights for two past nodes) on plain broadcasting tensors."""
    ha = torch.minimum(h, _STOP - lam)
    e = torch.exp(-2 * (lam + ha))
    m_n = (1.0 + e).rsqrt()
    s_n, t_n = e.sqrt() * m_n, _SDE._t_from_int_beta(torch.log1p(e))
    v1, v2 = (l1 - lam) / ha, (l2 - lam) / ha
    mom = [-torch.expm1(-ha)]
    for k in (1, 2, 3):
        mom.append(1.0 - k * mom[-1] / ha)
    r0, r1 = v1 * v2, -(v1 + v2)
    r_one = 1.0 + r0 + r1
    d1n, d2n = v1 * (v1 - v2), v2 * (v2 - v1)
    w = [(mom[2] + r0 * mom[0] + r1 * mom[1]) / r0, (mom[2] + (v1 + r1) * mom[1]) / d1n,
         (mom[2] + (v2 + r1) * mom[1]) / d2n]
    ell = [r_one / r0, r_one / ((1 - v1) * d1n), r_one / ((1 - v2) * d2n)]
    scale = [m_n / m for m in (m0, m1, m2)]

    def col(c):
        return c.to(x.dtype).unsqueeze(1)
    xp = x * col(s_n / sig) + sum(col(wj * c) * d for wj, c, d in zip(w, scale, (d0, d1, d2)))
    xe = sum(col(lj * c) * d for lj, c, d in zip(ell, scale, (d0, d1, d2)))
    return xp, xe, (mom[3] + r0 * mom[1] + r1 * mom[2]) / r_one, t_n


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=300)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "compile_probe.md"))
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch._logging.set_logs(dynamo=logging.ERROR)  # exp_pc_weights' host sync is a known graph break
    g = torch.Generator().manual_seed(0)
    f64 = dict(dtype=torch.float64)
    h = 0.02 + 0.5 * torch.rand(a.batch, generator=g, **f64)
    v1 = -1.0 - torch.rand(a.batch, generator=g, **f64)
    v2 = v1 - 1.0 - torch.rand(a.batch, generator=g, **f64)
    lam = 4.0 * torch.rand(a.batch, generator=g, **f64) - 2.0
    sde = ss.VPSDE()

    def weights(h, v1, v2):
        w, ell, omega = exp_pc_weights(h, [v1, v2])
        return (*w, *ell, omega)

    x = torch.randn(a.batch, 2, generator=g)
    hist = [torch.randn(a.batch, 2, generator=g) for _ in range(3)]
    hm = [sde.at_log_snr(2 * (lam - c))[1] for c in (0.0, 0.3, 0.7)]
    step_args = (x, h, lam, sde.at_log_snr(2 * lam)[2], *hist, lam - 0.3, lam - 0.7, *hm)
    cases = [("`ode_adaptive_ps` step before the score, as the solver does it (order 3, every row)", _step_eager,
              step_args),
             ("the same step as one fusable function (`_step_fused`)", _step_fused, step_args),
             ("VPSDE.at_log_snr", sde.at_log_snr, (lam,)),
             ("exp_pc_weights (order 3)", weights, (h, v1, v2)),
             ("x * y", torch.mul, (h, v1)),
             ("exp(x)", torch.exp, (v1,))]
    lines = ["# torch.compile on the per-sample solvers' step arithmetic (issue 18)", "",
             f"`python benchmarks/compile_probe.py` (see its docstring): batch {a.batch}, 1 thread, torch "
             f"{torch.__version__}, 2-core CPU; µs per call, median of 10 blocks of {a.repeats // 10} warm calls' "
             "mean.", "",
             "| function | eager (µs) | compiled (µs) | compile time (s) |", "|---|---|---|---|"]
    timed = []
    for name, fn, args in cases:
        eager = _time(fn, args, a.repeats)
        comp = torch.compile(fn, dynamic=False)
        t0 = time.perf_counter()
        comp(*args)
        cold = time.perf_counter() - t0
        compiled = _time(comp, args, a.repeats)
        lines.append(f"| {name} | {eager * 1e6:.0f} | {compiled * 1e6:.0f} | {cold:.1f} |")
        timed.append((eager, compiled))
        print(lines[-1], flush=True)
    (step, _), (_, fused) = timed[0], timed[1]
    lines += ["", "Compile times are with inductor's on-disk cache as the run found it (cold: 3-5 s per function "
              "on this machine).  A compiled call costs tens of µs even for one product; fused, the per-row "
              "float64 arithmetic (transcendentals and divisions on every row) stays.  The whole part of a "
              f"full-order `ode_adaptive_ps` step before the score, fused into one compiled function, takes "
              f"{fused * 1e6:.0f} µs against the solver's {step * 1e6:.0f} µs: it saves "
              f"{(step - fused) * 1e3:.1f} ms of the ~3 ms that a full-batch step spends outside the score on the "
              "8-ring at 10k rows, where a score call takes ~3-4 ms (benchmarks/adaptive_overhead.md).  An estimate "
              "for the whole step compiled: this part, ~0.3 ms for the corrector, error and step factor (about half "
              "as many row operations), and ~0.5 ms that stays eager (acceptance and the history's rows, which "
              "depend on the data, and Python) make ~1.3 ms against 3-4 ms in the score, an overhead of about "
              "1.35-1.45 on the full-batch steps; the steps on the few rows still running at the end (a third of "
              "the calls) stay dispatch-bound.  So not the 1.3 asked there either, at the price of a second, "
              "compiled implementation of the step (C++ toolchain at run time, rounding unlike the eager one's)."]
    Path(a.out).write_text("\n".join(lines) + "\n")
    print("wrote", a.out)


if __name__ == "__main__":
    main()
