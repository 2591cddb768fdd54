"""Exact log-likelihoods through the probability-flow ODE, and bits/dim of discrete data.

Along the probability-flow ODE dx/dt = F(x, t) = f(t) x − ½ g(t)² s(x, t) the log-density
obeys d/dt log p_t(x(t)) = −div F(x(t), t), so for data x = x(eps)

    log p_eps(x) = log π(x(T)) + ∫_eps^T div F(x(t), t) dt,   div F = d f(t) − ½ g(t)² tr ∇s,

where π = N(0, σ_prior² I) stands in for p_T.  We integrate the augmented state (x, Δ) from eps
to T with an adaptive torchdiffeq solver; one score forward pass per right-hand side serves the
drift and the divergence (exact trace: d VJPs of that forward graph; Hutchinson: K VJPs with
probes fixed over the whole solve, each integrated separately so every point gets a standard
error).  Rows are independent: the divergence of row b uses only row b's Jacobian block, so
the score may be evaluated batched but must not mix rows (no batch statistics).

Reference: Song et al. 2021, "Score-Based Generative Modeling through SDEs", §4.3 and
Appendix D.2; Chen et al. 2018 (neural ODE instantaneous change of variables); Grathwohl et
al. 2019 (FFJORD, Hutchinson trace); Hutchinson 1989.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from ._compat import translate_kwargs
from ._torchdiffeq import weightless_stages
from .noise import Noise
from .ode import DEFAULT_MAX_STEPS, check_max_steps, score_in_dtype, step_limit_error, working_dtype
from .results import LikelihoodResult
from .score import CountingScore, NonFiniteScoreError, ScoreFn, all_finite
from .sde import SDE

__all__ = ["likelihood", "bits_per_dim", "LikelihoodResult", "TRACES", "PROBES", "METHODS",
           "ERROR_NORMS", "DEQUANTIZE", "SCALINGS"]

TRACES = ("exact", "hutchinson")
PROBES = ("rademacher", "gaussian")
# torchdiffeq's adaptive Runge-Kutta solvers: all honour step_t (the pinned end) and the
# accept/reject callbacks we count steps with
METHODS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
ERROR_NORMS = ("point", "batch")
FSAL = ("dopri5", "bosh3")  # tableaus whose last stage is F at the step's end (for quadrature)
VJPS = ("loop", "vmap")
DEQUANTIZE = ("uniform", "none")
SCALINGS = ("bins", "levels")


def _x_norm(x: Tensor) -> Tensor:
    """The worst point's RMS scaled error of x (``quadrature``: Δ is not in the solver's state)."""
    return x.flatten(1).pow(2).mean(1).amax().sqrt()


def _point_norm(state: tuple[Tensor, Tensor]) -> Tensor:
    """Error norm that holds every point to the tolerance: max over points of the larger of
    the RMS scaled error of its x and the largest scaled error of its Δ's."""
    x, delta = state
    ex = x.flatten(1).pow(2).mean(1)
    ed = delta.pow(2).amax(1)
    return torch.maximum(ex, ed).amax().sqrt()


class _AugmentedFlow:
    """Right-hand side (dx/dt, dΔ/dt) handed to torchdiffeq, with its own counters.

    Steps are counted with torchdiffeq's accept/reject callbacks, which its adaptive RK solvers
    call once per attempted step."""

    def __init__(self, sde: SDE, score: CountingScore, probes: Tensor | None, check: bool,
                 skip: frozenset[int] = frozenset(), vmap: bool = False, max_steps: int = DEFAULT_MAX_STEPS,
                 span: tuple[float, float] = (0.0, 1.0), method: str = "dopri5", bar=None):
        self.sde, self.score, self.probes, self.check, self.skip = sde, score, probes, check, skip
        self.max_steps, self.span, self.method, self.bar = max_steps, span, method, bar
        self.vmap = vmap
        self._basis: Tensor | None = None  # the (d, B, ...) one-hot cotangents of vjp="vmap"
        self.rhs_evals = 0
        self.div_evals = 0
        self.vjps = 0
        self.accepted: list[float] = []
        self.rejected = 0
        self._stage: int | None = None  # evaluations since the current step began

    def callback_step(self, t0: Tensor, y0, dt: Tensor) -> None:
        self._stage = 0
        if len(self.accepted) + self.rejected >= self.max_steps:
            t = self.accepted[-1] if self.accepted else self.span[0]
            raise step_limit_error(self.method, self.max_steps, t, *self.span,
                                   "likelihood(max_steps=...) (--max-steps on the command line)")

    def callback_accept_step(self, t0: Tensor, y0, dt: Tensor) -> None:
        self.accepted.append(float(t0 + dt))
        self.score.step = len(self.accepted)
        if self.bar is not None:  # progress as the time reached
            self.bar.update(round(self.accepted[-1] - self.span[0] - self.bar.n, 6))

    def callback_reject_step(self, t0: Tensor, y0, dt: Tensor) -> None:
        self.rejected += 1

    def __call__(self, t: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        x, delta = state
        tf = float(t)  # coefficients in exact float64 arithmetic (torchdiffeq syncs per step anyway)
        self.rhs_evals += 1
        if self._stage is not None:
            self._stage += 1
        f, g2 = self.sde.drift_coef(tf), self.sde.diffusion(tf) ** 2
        if self._stage in self.skip:  # this stage's dΔ/dt has weight 0 in the solution, error, interpolant
            return f * x - (0.5 * g2) * self.score(x, tf), torch.zeros_like(delta)
        s, div = self._traced_divergence(x, tf)  # the one forward pass of this evaluation
        d = x[0].numel()
        dx = f * x - (0.5 * g2) * s.detach()
        ddelta = (d * f) - (0.5 * g2) * div
        self._check_finite(ddelta, tf, len(self.accepted))
        return dx, ddelta

    def _traced_divergence(self, x: Tensor, t: float) -> tuple[Tensor, Tensor]:
        """(s, tr∇s): one score forward pass under autograd and the divergence taken from it."""
        self.div_evals += 1
        with torch.enable_grad():
            xr = x.detach().requires_grad_(True)
            s = self.score(xr, t)
            if not s.requires_grad:
                raise RuntimeError(
                    "score_fn output does not depend on x through autograd (did it run under "
                    "torch.no_grad() or detach its input?); likelihood differentiates the score")
            return s, self._divergence(s, xr)

    def _check_finite(self, value: Tensor, t: float, step: int) -> None:
        if self.check and not all_finite(value):
            bad = int((~torch.isfinite(value)).any(1).sum())
            raise NonFiniteScoreError(
                f"the divergence of score_fn is NaN/Inf at t={t:.6g} (step "
                f"{step}, {bad} of {value.shape[0]} points affected)")

    def _vjp(self, s: Tensor, xr: Tensor, v: Tensor, retain: bool) -> Tensor:
        (g,) = torch.autograd.grad(s, xr, v, retain_graph=retain, allow_unused=True)
        self.vjps += 1
        return torch.zeros_like(xr) if g is None else g

    def _divergence(self, s: Tensor, xr: Tensor) -> Tensor:
        """tr ∇s per row, shape (B, K): exact (K = 1) by d VJPs with one-hot cotangents, or
        Hutchinson v_kᵀ ∇s v_k for the K fixed probes.  By default a Python loop of VJPs on the
        one forward graph (measured faster on CPU than one vmapped batched VJP for autograd-traced
        networks, see benchmarks/likelihood_results.md); with ``vmap`` all of them in one batched
        backward (``is_grads_batched``), for scores whose backward vmap supports."""
        if self.vmap:
            return self._divergence_vmap(s, xr)
        if self.probes is None:
            b, d = s.shape[0], s[0].numel()
            onehot = torch.zeros(b, d, dtype=s.dtype, device=s.device)
            out = torch.zeros(b, dtype=s.dtype, device=s.device)
            for i in range(d):
                onehot[:, i] = 1.0
                g = self._vjp(s, xr, onehot.view_as(s), retain=i < d - 1)
                onehot[:, i] = 0.0
                out = out + g.flatten(1)[:, i]
            return out.unsqueeze(1)
        k = self.probes.shape[0]
        return torch.stack([
            (self._vjp(s, xr, v, retain=j < k - 1) * v).flatten(1).sum(1)
            for j, v in enumerate(self.probes)], 1)


    def _divergence_vmap(self, s: Tensor, xr: Tensor) -> Tensor:
        b, d = s.shape[0], s[0].numel()
        if self.probes is None:  # cotangent i is the i-th basis vector in every row, built once per solve
            if self._basis is None or self._basis.shape[1:] != s.shape:
                eye = torch.eye(d, dtype=s.dtype, device=s.device)
                self._basis = eye.unsqueeze(1).expand(d, b, d).reshape(d, *s.shape)
            cot = self._basis
        else:
            cot = self.probes
        try:  # the graph is kept so that the loop can still run on it if vmap fails
            (g,) = torch.autograd.grad(s, xr, cot, is_grads_batched=True, retain_graph=True)
        except RuntimeError as err:  # e.g. diffusers' UNets: "NYI: querying is_contiguous inside of vmap"
            msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            warnings.warn(f"vjp='vmap': torch could not batch this score's backward ({msg}); "
                          "falling back to vjp='loop' for the rest of the solve", RuntimeWarning, stacklevel=2)
            self.vmap = False
            return self._divergence(s, xr)
        self.vjps += cot.shape[0]
        g = g.flatten(2)  # (K, B, d)
        if self.probes is None:
            return torch.diagonal(g, dim1=0, dim2=2).sum(-1, keepdim=True)
        return (g * cot.flatten(2)).sum(-1).T


# n-point Gauss-Legendre on [0, 1]: nodes u_j and weights w_j (sum 1)
def _gauss_legendre(n: int) -> tuple[list[float], list[float]]:
    import numpy as np

    u, w = np.polynomial.legendre.leggauss(n)
    return [float(v) for v in (u + 1) / 2], [float(v) for v in w / 2]


class _QuadratureFlow(_AugmentedFlow):
    """The x-flow alone for the solver; the divergence integral by quadrature on its steps.

    On every accepted step [t0, t1] the Δ-integral ∫ −½ g² tr∇s dt is taken by n-point
    Gauss-Legendre, x at the nodes from the cubic Hermite interpolant of the step's ends
    (x0, F0, x1, F1), all four known without extra evaluations on an FSAL tableau (the last
    stage of a step is F at its end).  The d·f part of div F integrates in closed form,
    d (log m(T) − log m(eps)).  Cost: one score forward per stage for x, and n divergences
    (forward + d VJPs, or K probes) per accepted step instead of one per stage: the rejected
    steps and the stages cost no VJPs at all."""

    def __init__(self, *args, nodes: int, k: int, **kw):
        super().__init__(*args, **kw)
        # (u, w, cubic Hermite basis at u) for each node
        self.nodes = [(u, w, (2 * u**3 - 3 * u**2 + 1, u**3 - 2 * u**2 + u, 3 * u**2 - 2 * u**3, u**3 - u**2))
                      for u, w in zip(*_gauss_legendre(nodes))]
        self.delta: Tensor | None = None
        self.k = k
        self._last: tuple[float, Tensor, Tensor] | None = None  # (t, x, F) of the latest evaluation
        self._start: tuple[float, Tensor, Tensor] | None = None  # (t0, x0, F0) of the step in progress

    def __call__(self, t: Tensor, x: Tensor) -> Tensor:
        tf = float(t)
        self.rhs_evals += 1
        dx = self.sde.drift_coef(tf) * x - (0.5 * self.sde.diffusion(tf) ** 2) * self.score(x, tf)
        if self._start is None:  # the solver's first evaluation is F(eps, x(eps))
            self._start = (tf, x, dx)
        self._last = (tf, x, dx)
        return dx

    def callback_accept_step(self, t0: Tensor, y0, dt: Tensor) -> None:
        t1, x1, f1 = self._last
        ta, x0, f0 = self._start
        close = (math.isclose(t, float(u), rel_tol=1e-5, abs_tol=1e-9) for t, u in ((ta, t0), (t1, t0 + dt)))
        if not all(close):  # the times as the tableau's stages computed them, to rounding
            raise RuntimeError(f"quadrature needs an FSAL solver (dopri5, bosh3); {self.method} "
                               "did not end its step with an evaluation at the step's end")
        h = t1 - ta
        if self.delta is None:
            self.delta = torch.zeros(x0.shape[0], self.k, dtype=x0.dtype, device=x0.device)
        for u, w, (h00, h10, h01, h11) in self.nodes:
            xu = h00 * x0 + (h10 * h) * f0 + h01 * x1 + (h11 * h) * f1
            tn = ta + u * h
            term = (-0.5 * self.sde.diffusion(tn) ** 2 * h * w) * self._traced_divergence(xu, tn)[1]
            self._check_finite(term, tn, len(self.accepted) + 1)
            self.delta = self.delta + term
        self._start = (t1, x1, f1)
        super().callback_accept_step(t0, y0, dt)


def _weightless_stages(method: str) -> frozenset[int]:
    """Stages j (j-th evaluation of a step, j >= 1) whose derivative has weight 0 in the
    solution, the error estimate and the dense-output interpolant of torchdiffeq's tableau for
    ``method`` (dopri5: the c = 1/5 stage; dopri8: 4 of 12).  Δ never feeds back into the
    dynamics, so its derivative there is not needed: skipping those divergences changes no
    result (a test checks this bitwise) and saves their VJPs."""
    return weightless_stages(method)


def _draw_probes(kind: str, k: int, x: Tensor, generator, seeds) -> Tensor:
    """K probes shaped like x with E[v vᵀ] = I: Rademacher ±1 or standard normal."""
    if seeds is not None:
        noise = Noise(seeds=seeds, device=x.device, dtype=x.dtype)
        z = torch.stack([noise(x.shape) for _ in range(k)])
        return torch.where(z >= 0, 1.0, -1.0).to(x.dtype) if kind == "rademacher" else z
    shape = (k, *x.shape)
    if kind == "gaussian":
        return torch.randn(shape, generator=generator, device=x.device, dtype=x.dtype)
    bits = torch.randint(0, 2, shape, generator=generator, device=x.device)
    return (2 * bits - 1).to(x.dtype)


def _choice(name: str, value, valid: Sequence[str]) -> None:
    if value not in valid:
        raise ValueError(f"unknown {name} {value!r}; valid choices: {', '.join(valid)}")


def _check_args(sde, x, trace, probes, probe_dist, rtol, atol, eps, solver, error_norm, generator, seeds):
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be a scoresolve SDE (VPSDE, SubVPSDE, VESDE), got {type(sde).__name__}")
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a tensor of shape (B, ...), got {type(x).__name__}")
    if not x.dtype.is_floating_point:
        raise ValueError(f"x must be a floating-point tensor, got {x.dtype}; for integer images use "
                         "bits_per_dim(), which dequantizes them")
    if x.ndim < 2 or x.shape[0] < 1 or x[0].numel() < 1:
        raise ValueError(f"x must have shape (B, *data_dims) with B >= 1, got {tuple(x.shape)} "
                         "(a single point needs a batch dim: x[None])")
    if not all_finite(x):
        raise ValueError("x contains NaN/Inf")
    _choice("trace", trace, TRACES)
    _choice("probe_dist", probe_dist, PROBES)
    _choice("solver", solver, METHODS)
    _choice("error_norm", error_norm, ERROR_NORMS)
    if isinstance(probes, bool) or not isinstance(probes, int) or probes < 1:
        raise ValueError(f"probes must be an integer >= 1, got {probes!r}")
    if trace == "exact" and probes != 1:
        raise ValueError(f"probes={probes} applies only to trace='hutchinson'")
    if not (isinstance(rtol, (int, float)) and isinstance(atol, (int, float)) and rtol > 0 and atol > 0):
        raise ValueError(f"rtol and atol must be numbers > 0, got rtol={rtol!r}, atol={atol!r}")
    if not (isinstance(eps, (int, float)) and 0 < eps < sde.T):
        raise ValueError(f"eps must lie in (0, T={sde.T}), got {eps!r}")
    if generator is not None and seeds is not None:
        raise ValueError("pass either generator= or seeds=, not both")
    if seeds is not None and len(seeds) != x.shape[0]:
        raise ValueError(f"seeds must have one entry per point: {len(seeds)} given, batch {x.shape[0]}")
    if generator is not None and generator.device.type != x.device.type:
        raise ValueError(f"generator is on {generator.device} but x is on {x.device}")
    if torch.is_inference_mode_enabled():
        raise RuntimeError("likelihood differentiates the score: call it outside torch.inference_mode()")


def likelihood(
    score_fn: ScoreFn,
    sde: SDE,
    x: Tensor,
    *,
    trace: Literal["exact", "hutchinson"] = "exact",
    probes: int = 1,
    probe_dist: Literal["rademacher", "gaussian"] = "rademacher",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    eps: float | None = None,
    solver: str = "dopri5",
    error_norm: Literal["point", "batch"] = "point",
    generator: torch.Generator | None = None,
    seeds: Sequence[int] | Tensor | None = None,
    prior_logp: Callable[[Tensor], Tensor] | None = None,
    return_latent: bool = True,
    check: bool = True,
    skip_stages: bool = True,
    vjp: Literal["loop", "vmap"] = "loop",
    quadrature: int = 0,
    max_steps: int = DEFAULT_MAX_STEPS,
    progress: bool = False,
    **renamed,
) -> LikelihoodResult:
    """log p_eps(x) by integrating the probability-flow ODE and its divergence from eps to T.

    log p_eps(x) = log π(x(T)) + ∫_eps^T [d f(t) − ½ g(t)² tr ∇_x s(x(t), t)] dt.

    The result is the density of the model's marginal at t = eps, not at t = 0: for VP and
    sub-VP that is the data smoothed by σ(eps) ≈ √(β_min eps); the VE marginal keeps σ_min of
    noise even at t = 0 (``VESDE`` convention), so for VE log p_eps is the density of the data
    smoothed by N(0, σ(eps)² I), σ(eps) = σ_min (σ_max/σ_min)^eps ≈ σ_min.  The prior π
    replaces p_T; its mismatch is a modelling error that no tolerance removes (pass the exact
    p_T as ``prior_logp`` to separate it: ``stats["prior_mismatch"]`` = log π − that).

    Args:
        score_fn: (x, t) -> ∇_x log p_t(x), differentiable by autograd in x; rows independent.
        sde: the forward SDE the score belongs to.
        x: (B, ...) floating-point data points (the integration runs on x's device and dtype).
        trace: "exact" (d VJPs per evaluation) or "hutchinson" (``probes`` VJPs).
        probes: number K of Hutchinson probes, fixed over the whole solve.
        probe_dist: distribution of the probes, "rademacher" (±1) or "gaussian".
        rtol, atol: solver tolerances, applied per point (``error_norm="point"``: the shared
            step is accepted when every point's x and Δ meet them) or to the RMS over the
            batch (``"batch"``, torchdiffeq's default mixed norm).
        eps: start time (default ``sde.default_eps``: 1e-3 VP/sub-VP, 1e-5 VE).
        solver: torchdiffeq adaptive solver, one of ``METHODS`` (dopri5 = RK45).
        error_norm: "point" or "batch", see rtol.
        generator: torch.Generator for the probes; ``seeds`` (one int per point) instead makes
            each point's probes, hence its estimate, independent of the batch it is in.
        prior_logp: z -> (B,) log-density closing the bound (default ``sde.prior_logp``).
        return_latent: keep x(T) in the result.
        check: validate score outputs and the divergence (NaN/Inf reported with the time).
        skip_stages: do not compute the divergence at Runge-Kutta stages whose weight is zero
            for Δ (dopri5: 1 of 6 evaluations per step, dopri8: 4 of 12); same result, fewer VJPs.
        vjp: "loop" (one VJP at a time on the one forward graph) or "vmap" (all d or K of them in
            one batched backward, ``torch.autograd.grad(..., is_grads_batched=True)``): the same
            numbers, fewer backward calls; for scores whose backward vmap supports (the analytic
            targets; most networks), worth it where per-call overhead dominates (small models,
            GPUs).  The exact trace then holds d one-hot cotangents of the batch's size (d²·B
            numbers).  If torch cannot batch the score's backward (diffusers' UNets: "NYI: querying
            is_contiguous inside of vmap"), a RuntimeWarning says so and the solve goes on with "loop".
        quadrature: 0 integrates Δ with the solver, a divergence at every stage that carries
            weight.  n >= 1 lets the solver integrate x alone (its steps controlled by x) and takes
            ∫ tr∇s dt by n-point Gauss-Legendre on each accepted step, x at the nodes from the
            step's cubic Hermite interpolant: n divergences per accepted step instead of ~5 per
            attempted one.  Δ is then not under error control: on the mixture scores n = 3 (order 6)
            leaves the error to rtol and ran 3.1-3.4× faster than score_sde's RK45 at 1e-5 at a lower
            per-point error (16-d and 64-d, VP), but a trained MLP's divergence varies faster along
            the path than x does, and there it needed rtol 1e-6 for the reference's accuracy and was
            then slower than it (0.87-0.91×, 16-d and 64-d; the default: 1.22× on the 16-d one,
            benchmarks/likelihood_speed.md): check it against the default on your network.  Needs an
            FSAL solver (dopri5, bosh3).
        max_steps: budget of attempted (accepted + rejected) solver steps; when it runs out the
            solve stops with a ``StepLimitError`` naming the time reached.
        progress: a tqdm bar of the time reached, eps → T.

    float16 / bfloat16 data are integrated in float32 (their step-size arithmetic would underflow
    to t = NaN); the score still sees x in the data's dtype, and the results are cast back to it.

    Returns:
        LikelihoodResult(logp, logp_stderr, bpd, nfe, latent, prior_logp, delta_logp, stats);
        nfe = forward passes + VJPs per point, stats counts them separately.

    Raises:
        ValueError naming the argument (and the valid choices); NonFiniteScoreError with the time
        where NaN/Inf appeared; StepLimitError (a RuntimeError) when ``max_steps`` runs out, and
        RuntimeError if the solver fails otherwise (both with the last accepted time).

    Reference: Song et al. 2021, eq. 39 (Appendix D.2); Grathwohl et al. 2019 (FFJORD).
    """
    import torchdiffeq

    eps = sde.default_eps if eps is None and isinstance(sde, SDE) else eps
    if renamed:  # probe= and method= were renamed probe_dist= and solver= (one release of grace)
        old = translate_kwargs("likelihood", renamed, {"probe": "probe_dist", "method": "solver"})
        probe_dist, solver = old.get("probe_dist", probe_dist), old.get("solver", solver)
    _check_args(sde, x, trace, probes, probe_dist, rtol, atol, eps, solver, error_norm, generator, seeds)
    check_max_steps(max_steps)
    _choice("vjp", vjp, VJPS)
    if isinstance(quadrature, bool) or not isinstance(quadrature, int) or quadrature < 0:
        raise ValueError(f"quadrature must be an integer >= 0 (0: Δ integrated by the solver; n: n-point "
                         f"Gauss-Legendre per step), got {quadrature!r}")
    if quadrature and solver not in FSAL:
        raise ValueError(f"quadrature={quadrature} needs an FSAL solver: {', '.join(FSAL)}; got solver={solver!r}")
    start = time.perf_counter()
    b, out_dtype = x.shape[0], x.dtype
    work = working_dtype(x.dtype)
    score = CountingScore(score_in_dtype(score_fn, x.dtype, work), b, check=check)
    x = x.detach().to(work)
    v = _draw_probes(probe_dist, probes, x, generator, seeds) if trace == "hutchinson" else None
    k = 1 if v is None else probes
    y0 = x if quadrature else (x, torch.zeros(b, k, dtype=x.dtype, device=x.device))
    ts = torch.tensor([float(eps), sde.T], dtype=torch.promote_types(x.dtype, torch.float32),
                      device=x.device)
    options: dict[str, Any] = {"step_t": ts[-1:].clone()}  # land on T exactly, never step past
    if error_norm == "point":
        options["norm"] = _x_norm if quadrature else _point_norm
    from tqdm.auto import tqdm

    with tqdm(total=round(sde.T - float(eps), 6), desc="likelihood: t", disable=not progress,
              bar_format="{l_bar}{bar}| t - eps = {n:.4g}/{total:.4g} [{elapsed}]") as bar:
        common = dict(vmap=vjp == "vmap", max_steps=max_steps, span=(float(eps), sde.T), method=solver,
                      bar=bar if progress else None)
        if quadrature:
            flow = _QuadratureFlow(sde, score, v, check, nodes=quadrature, k=k, **common)
        else:
            flow = _AugmentedFlow(sde, score, v, check, _weightless_stages(solver) if skip_stages else frozenset(),
                                  **common)
        try:
            out = torchdiffeq.odeint(flow, y0, ts, rtol=rtol, atol=atol, method=solver, options=options)
        except AssertionError as err:  # torchdiffeq signals step underflow / step limits by assert
            last = flow.accepted[-1] if flow.accepted else float(eps)
            raise RuntimeError(f"the {solver} solve failed after t={last:.6g} "
                               f"({len(flow.accepted)} accepted steps): {err}") from err
    if quadrature:
        drift = x[0].numel() * float(sde.log_mean_scale(sde.T) - sde.log_mean_scale(float(eps)))
        z, delta = out[-1], flow.delta + drift
    else:
        z, delta = out[0][-1], out[1][-1]
    prior = sde.prior_logp(z) if prior_logp is None else prior_logp(z)
    if tuple(prior.shape) != (b,):
        raise ValueError(f"prior_logp must return shape ({b},), got {tuple(prior.shape)}")
    prior = prior.to(x.dtype)
    dmean = delta.mean(1)
    logp = prior + dmean
    if v is None:
        stderr = torch.zeros_like(logp)
    elif k == 1:
        stderr = torch.full_like(logp, float("nan"))
    else:
        stderr = delta.std(1) / math.sqrt(k)
    d = x[0].numel()
    forwards, vjps = score.nfe, flow.vjps  # the full batch is evaluated at every call
    stats: dict[str, Any] = {
        "trace": trace, "probes": k if v is not None else 0, "probe_dist": probe_dist if v is not None else None,
        "solver": solver, "quadrature": quadrature, "rtol": rtol, "atol": atol, "eps": float(eps),
        "error_norm": error_norm,
        "forwards": forwards, "vjps": vjps, "vjp": "vmap" if flow.vmap else "loop",  # "loop" after a fallback
        "rhs_evals": flow.rhs_evals, "divergence_evals": flow.div_evals,
        "steps_accepted": len(flow.accepted), "steps_rejected": flow.rejected,
        "ts": torch.tensor(flow.accepted, dtype=torch.float64),
        "wall_time": time.perf_counter() - start, "dim": d,
    }
    if prior_logp is not None:
        stats["prior_mismatch"] = sde.prior_logp(z).to(x.dtype) - prior
    back = {"logp": logp, "logp_stderr": stderr, "bpd": -logp / (d * math.log(2.0)), "prior_logp": prior,
            "delta_logp": dmean, "latent": z if return_latent else None}
    back = {key: None if val is None else val.to(out_dtype) for key, val in back.items()}
    return LikelihoodResult(nfe=forwards + vjps, stats=stats, **back)


def bits_per_dim(
    score_fn: ScoreFn,
    sde: SDE,
    images: Tensor,
    *,
    bits: int = 8,
    levels: int | None = None,
    scaling: Literal["bins", "levels"] = "bins",
    dequantize: Literal["uniform", "none"] = "uniform",
    repeats: int = 5,
    data_range: tuple[float, float] = (-1.0, 1.0),
    dtype: torch.dtype = torch.float32,
    generator: torch.Generator | None = None,
    **likelihood_options,
) -> LikelihoodResult:
    """Bits/dim of integer data (e.g. uint8 images) under the model, via uniform dequantization.

    log P(k) ≥ E_U[log p_y(b + c (k + U))] + d log c,   U ~ U[0, 1)^d,

    because P(k) = ∫_{[0,1)^d} p_y(b + c (k + u)) c^d du is the model's mass on the bin of side
    c that level k owns in data space, and Jensen's inequality moves the log inside.  With L
    levels (2^bits) and data_range (lo, hi) the bins are, for ``scaling``:

    - "bins" (default; 8-bit images as in the reference code): [0, L) → [lo, hi), c = (hi − lo)/L,
      b = lo, i.e. u = (k + U)/L then y = lo + (hi − lo) u;
    - "levels": level k sits at lo + (hi − lo) k/(L − 1) (how ``load_dataset`` scales digits, 17
      levels to [−1, 1]) and owns the bin of side c = (hi − lo)/(L − 1) centred on it, b = lo − c/2.

    In bits/dim: bpd(k) ≤ −E[log p_y(y)]/(d log 2) − log2 c; the offset −log2 c is 7 for 8-bit
    "bins" data on [−1, 1) and 8 on [0, 1).  p_y is the model's p_eps (see ``likelihood``); the
    expectation over U is estimated with ``repeats`` independent draws (each a full ODE solve),
    and ``logp_stderr`` is their standard error.  ``dequantize="none"`` evaluates the bin
    centres (U = ½) instead: a midpoint approximation to log P(k), not a bound.

    Args:
        score_fn, sde: as for ``likelihood``.
        images: (B, ...) integer-valued tensor with values in [0, L − 1].
        bits: bit depth of the data (L = 2^bits) unless ``levels`` is given.
        levels: number of discrete values L (e.g. 17 for digits); overrides ``bits``.
        scaling: "bins" or "levels", how integer data map onto data_range (above).
        dequantize: "uniform" (the bound) or "none" (bin centres, one solve).
        repeats: dequantization draws per image (>= 1).
        data_range: (lo, hi) of the model's data coordinates.
        dtype: floating dtype of the dequantized data (and of the solve).
        generator: for the dequantization noise and the Hutchinson probes.
        **likelihood_options: passed on to ``likelihood`` (trace, probes, rtol, atol, eps, ...).

    Returns:
        LikelihoodResult with logp the per-image bound on log P(k) in nats (mean over repeats),
        bpd = −logp/(d log 2), stats["per_repeat_logp"] (repeats, B) and stats["offset_bpd"].

    Reference: Theis et al. 2016, "A note on the evaluation of generative models", §3.1;
    Ho et al. 2019 (Flow++), §3.1; Song et al. 2021, Appendix D.2.
    """
    if not isinstance(images, Tensor):
        raise TypeError(f"images must be a tensor of shape (B, ...), got {type(images).__name__}")
    if isinstance(bits, bool) or not isinstance(bits, int) or bits < 1:
        raise ValueError(f"bits must be an integer >= 1, got {bits!r}")
    if levels is not None and (isinstance(levels, bool) or not isinstance(levels, int) or levels < 2):
        raise ValueError(f"levels must be an integer >= 2, got {levels!r}")
    _choice("scaling", scaling, SCALINGS)
    _choice("dequantize", dequantize, DEQUANTIZE)
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an integer >= 1, got {repeats!r}")
    lo, hi = (float(v) for v in data_range)
    if not hi > lo:
        raise ValueError(f"data_range must be (lo, hi) with hi > lo, got {data_range!r}")
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating type, got {dtype}")
    if images.ndim < 2 or images.shape[0] < 1 or images[0].numel() < 1:
        raise ValueError(f"images must have shape (B, *data_dims) with B >= 1, got {tuple(images.shape)}")
    n_levels = 2**bits if levels is None else levels
    what = f"bits={bits}" if levels is None else f"levels={levels}"
    vals = images.to(torch.float64)
    if images.dtype.is_floating_point and not bool((vals == vals.round()).all()):
        raise ValueError("images must hold integer pixel levels (e.g. uint8); got non-integer values "
                         "(for data already scaled to a continuous range use likelihood())")
    vmin, vmax = float(vals.min()), float(vals.max())
    if vmin < 0 or vmax > n_levels - 1:
        raise ValueError(f"images must lie in [0, {n_levels - 1}] for {what}; got values in "
                         f"[{vmin:g}, {vmax:g}]")
    if scaling == "bins":
        c, b = (hi - lo) / n_levels, lo
    else:
        c = (hi - lo) / (n_levels - 1)
        b = lo - 0.5 * c
    d = images[0].numel()
    n_rep = repeats if dequantize == "uniform" else 1
    runs = []
    for _ in range(n_rep):
        if dequantize == "uniform":
            u = torch.rand(vals.shape, generator=generator, device=vals.device, dtype=torch.float64)
        else:
            u = torch.full_like(vals, 0.5)
        y = (b + c * (vals + u)).to(dtype)
        runs.append(likelihood(score_fn, sde, y, generator=generator, return_latent=False,
                               **likelihood_options))
    offset = d * math.log(c)
    per_rep = torch.stack([r.logp for r in runs]) + offset  # (repeats, B)
    logp = per_rep.mean(0)
    if n_rep > 1:
        stderr = per_rep.std(0) / math.sqrt(n_rep)
    elif dequantize == "none":
        stderr = runs[0].logp_stderr
    else:  # one draw: the spread over U is unknown
        stderr = torch.full_like(logp, float("nan"))
    stats = {
        "levels": n_levels, "scaling": scaling, "dequantize": dequantize, "repeats": n_rep,
        "data_range": (lo, hi), "bin_width": c, "offset_nats": offset, "offset_bpd": -math.log2(c),
        "per_repeat_logp": per_rep, "solves": [r.stats for r in runs],
        "forwards": sum(r.stats["forwards"] for r in runs), "vjps": sum(r.stats["vjps"] for r in runs),
        "wall_time": sum(r.stats["wall_time"] for r in runs),
    }
    return LikelihoodResult(
        logp=logp, logp_stderr=stderr, bpd=-logp / (d * math.log(2.0)),
        nfe=sum(r.nfe for r in runs), latent=None,
        prior_logp=torch.stack([r.prior_logp for r in runs]).mean(0),
        delta_logp=torch.stack([r.delta_logp for r in runs]).mean(0), stats=stats)
