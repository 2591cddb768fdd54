"""``fit_grid``: a time grid for a fixed-step ODE sampler fitted on a pilot batch (training-free).

At ~15 evaluations the grid decides most of a solver's error, and the grid that is best depends
on the data (where along log-SNR the probability-flow paths bend: mode selection, each
component's contraction).  ``fit_grid`` chooses it for the score at hand: draw a pilot batch
x_T from the prior, solve its probability-flow ODE tightly once (the reference x_ref), then
minimise over the grid the pilot's mean Cauchy (Lorentzian) loss of the endpoint errors

    L(λ_1 … λ_{N−1}) = mean_i log(1 + ‖Φ_grid(x_T,i) − x_ref,i‖² / c),  c = the median ‖·‖² on the start grid,

of the sampler itself (``method`` with ``nfe`` evaluations), with the ends λ(T) and λ(eps) fixed
and the log-SNR increments parameterised by a softmax (any θ ∈ R^N is an increasing grid),
by Powell's derivative-free search (scipy).  The loss is quadratic for typical errors and
logarithmic for the few samples that end in another mode than their reference (near a boundary
between modes the endpoint is a discrete choice, and the distribution does not mind which
samples cross): with the plain mean squared error those crossings drove the search on a 64-d
mixture to a grid worse than the start on both quality metrics.  The search costs ``max_evals``
solves of the pilot: ``pilot_nfe`` in the result counts every score evaluation per pilot sample, the
reference's included.  Pilot size against solves (benchmarks/fitted_grid_cost.md, seven mixtures,
three pilot draws each): 256 draws and the default 400 solves (~6,400 evaluations per pilot sample,
1.6M in all at 15 NFE) reached the same mean log-density gap as 1024 × 1500 (23M; 2.27× against
2.26× the floor), with a wider spread over pilot draws (8-ring 1.49–2.45× against 1.46–1.69×): a
larger pilot buys consistency more than quality. Where the run ends below σ/m = ``tail_sigma``
(sub-VP's default end), the grid ends there and the sampler's tail step carries the samples to eps,
as on its generated grids.  A grid fitted once serves every later batch: ``sample(...,
**fit.sample_options, denoise=False)`` makes exactly ``nfe`` evaluations per sample (the final
denoising adds one).

Two objectives, and the default that chooses between them (``objective``):
  "endpoint"  the Cauchy loss above;
  "logp"      the pilot's mean absolute log-density change in nats, mean_i |δ_i| with
              δ_i = ½ (x_i − x_ref,i)·(s(x_i) + s(x_ref,i)) at the end time (the trapezoid rule for
              log p(x_i) − log p(x_ref,i), exact where log p is quadratic; one more evaluation per solve):
              what the log-density gap measures, blind to samples that end in another mode of the same
              density, and sensitive to a coherent error of the components' widths in many dimensions;
  "auto"      (the default) both grids, then the one with the smaller mean |δ| on fresh prior draws of the
              pilot's size (their own reference solve): about 2.2× the cost of one objective.
Measured (benchmarks/fit_objective.md, 14 mixtures 2-128-d × 3 pilots, ``unipc`` order 4 at 15 NFE): both
metrics within 2× of their floors in 24 of 42 fits for "endpoint" and for "logp" (whose 128-d mixture
reads 0.09× against 4.95×, but whose 32-d and 64-d ones read worse, 3.05× against 0.40×, 2.69× against
0.71×), 28 of 42 for "auto"; geometric-mean gap 1.07× / 0.90× / 0.76×.

The same idea, with other objectives and searches: Sabour et al. 2024, "Align Your Steps"
(a KL bound, per model); Chen et al. 2024, "On the Trajectory Regularity of ODE-based Diffusion
Sampling" (GITS: dynamic programming against a teacher trajectory); Xue et al. 2024,
"Accelerating Diffusion Sampling with Optimized Time Steps".
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, fields, replace

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from .checks import check_count, check_eps, check_generator
from .registry import SAMPLERS, format_spec, parse_spec, resolve, with_options
from .sampling import _fixed_step_ode, _tail_start, check_data_mean, sample, steps_for_nfe
from .sde import SDE
from .timegrid import GRIDS, make_grid

__all__ = ["FittedGrid", "fit_grid", "fit_nfe", "fittable_methods", "OBJECTIVES"]

OBJECTIVES = ("endpoint", "logp", "auto")  # fit_grid's losses (module docstring)


@dataclass(frozen=True)
class FittedGrid:
    """A fitted grid and what fitting it cost.

    ts: the grid T → eps, or T → t_c where the run ends below σ/m = ``tail_sigma`` (sub-VP's default
    end; then ``eps`` is set and the tail step carries the samples from t_c to it, as on generated
    grids): pass ``**sample_options`` (``grid=ts``, and ``eps``) to ``sample`` with the method and
    its options; loss / loss_start: the search's loss (module docstring) on this grid and on the
    starting one; median_error / median_error_start: the pilot's median
    squared endpoint error against the reference flow on each;
    method: the method with the options it was fitted for, as a spec ("unipc:solver_order=4";
    ``registry.method_from_spec`` rebuilds the sampler); objective: the loss searched ("endpoint",
    "logp", or "auto:endpoint" / "auto:logp", the one "auto" kept; module docstring; records written
    before it existed load as "endpoint");
    pilot_nfe: score evaluations per pilot sample spent (reference solve and search);
    evaluations: pilot solves made by the search; seconds: the fit's wall time; data_mean: the data's mean μ̂
    the pilot's prior draws were centred by (at m(T) μ̂; ``sample``'s ``data_mean``), None if they were not.  ``save`` /
    ``FittedGrid.load`` keep it in a JSON file (the times as float64, exactly), to fit once per
    score and reuse it in later sessions."""

    ts: Tensor
    eps: float | None
    method: str
    nfe: int
    loss: float
    loss_start: float
    median_error: float
    median_error_start: float
    pilot_nfe: float
    evaluations: int
    seconds: float = math.nan
    objective: str = "endpoint"
    data_mean: Tensor | None = None

    def to_dict(self) -> dict:
        """Its fields as JSON-ready values (``ts`` a list of float64 numbers)."""
        def plain(v):
            return v.tolist() if isinstance(v, Tensor) else v
        return {f.name: plain(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_dict(cls, record: dict) -> FittedGrid:
        """The inverse of ``to_dict``; keys that are not fields (a caller's own notes) are ignored."""
        names = {f.name for f in fields(cls)}
        missing = sorted(names - set(record) - {"seconds", "objective", "data_mean"})  # older records lack these
        if missing:
            raise ValueError(f"not a FittedGrid record: missing {', '.join(missing)}")
        kept = {k: v for k, v in record.items() if k in names}
        mean = record.get("data_mean")
        return cls(**{**kept, "ts": torch.tensor(record["ts"], dtype=torch.float64),
                      "data_mean": None if mean is None else torch.tensor(mean, dtype=torch.float64)})

    def save(self, path) -> None:
        """Write ``to_dict()`` as JSON to ``path``, atomically (a temporary file renamed over it)."""
        from .bench.store import atomic_write_json

        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path) -> FittedGrid:
        """A fit written by ``save``."""
        import json
        from pathlib import Path

        return cls.from_dict(json.loads(Path(path).read_text()))

    @property
    def sample_options(self) -> dict:
        """``grid`` (and ``eps``, with a tail; ``data_mean``, if the pilot was centred) for ``sample``."""
        return grid_options(self.ts, self.eps, self.data_mean)


def grid_options(ts: Tensor, eps: float | None, data_mean: Tensor | None = None) -> dict:
    """``sample``'s options for a grid ``ts`` that ends at eps (``eps`` None) or at the tail's start, from prior
    draws centred by ``data_mean`` (None: not centred)."""
    out = {"grid": ts} if eps is None else {"grid": ts, "eps": eps}
    return out if data_mean is None else {**out, "data_mean": data_mean}


def centred_pilot(score_fn, sde: SDE, shape, data_mean, x_init: Tensor | None, generator, device,
                  dtype: torch.dtype) -> tuple[Tensor, Tensor | None, int]:
    """(the pilot's draws at T, the data mean μ̂ they are centred by or None, evaluations per pilot sample spent):
    ``x_init`` as given (a tensor ``data_mean`` recorded with them, "estimate" read as None), else prior draws,
    centred at m(T) μ̂ with ``data_mean="estimate"`` read off their own x̂_0 (one evaluation each)."""
    from .scalegrid import centre, pilot_x0

    check_data_mean(data_mean, tuple(x_init.shape if x_init is not None else shape), None)  # sample's own check
    if data_mean is not None and not isinstance(data_mean, (str, Tensor)):
        data_mean = torch.as_tensor(data_mean, dtype=torch.float64)
    if x_init is not None:
        return x_init, None if isinstance(data_mean, str) else data_mean, 0
    x = prior_draws(sde, shape, generator, device, dtype)
    if data_mean is None:
        return x, None, 0
    mu = pilot_x0(score_fn, sde, x).mean(0) if isinstance(data_mean, str) else data_mean.double()
    return centre(x, sde, mu), mu, int(isinstance(data_mean, str))


def grid_plan(method, sampler, sde: SDE, nfe: int, eps: float | None) -> tuple[int, float, float | None]:
    """(steps, eps, t_c) of a grid for ``sampler`` at ``nfe`` evaluations without the final denoising:
    ValueError if that leaves fewer than two steps; t_c where the grid ends for the tail step, or None."""
    steps = steps_for_nfe(sampler, check_count("nfe", nfe), denoise=False)
    if steps < 2:
        need = 2 * sampler.nfe_per_step + sampler.extra_nfe(False)
        raise ValueError(f"nfe={nfe} leaves {method} one step: no grid to place (nfe >= {need} needed)")
    eps = check_eps(sde.default_eps if eps is None else eps, sde)
    return steps, eps, _tail_start(sampler, sde, eps)


def prior_draws(sde: SDE, shape, generator: torch.Generator | None, device, dtype: torch.dtype) -> Tensor:
    """Draws of the prior N(0, prior_std² I) of ``shape`` (on ``device``, else the generator's, else CPU)."""
    check_generator(generator)
    dev = torch.device(device) if device is not None else (generator.device if generator is not None
                                                             else torch.device("cpu"))
    return torch.randn(tuple(shape), generator=generator, device=dev, dtype=dtype) * sde.prior_std()


def fittable_methods() -> list[str]:
    """The registered deterministic fixed-step samplers: those with a grid to fit."""
    return [n for n, s in SAMPLERS.items() if _fixed_step_ode(s)]


def _check_fittable(method, sampler):
    """``sampler`` if it is a deterministic fixed-step one (a grid to fit), else ValueError naming the choices."""
    if not _fixed_step_ode(sampler):
        raise ValueError(f"method={method!r} has no fixed deterministic grid to fit; valid choices: "
                         f"{', '.join(fittable_methods())}")
    return sampler


def fit_nfe(method: str, nfe: int, denoise: bool) -> int:
    """The ``nfe`` to fit ``method``'s grid for (``fit_grid`` fits without the final denoising) so
    that sampling on it with ``denoise`` counts exactly ``nfe``; ValueError if that leaves fewer
    than two steps."""
    sampler = _check_fittable(method, resolve("method", method))
    fit = nfe - sampler.extra_nfe(denoise) + sampler.extra_nfe(False)
    if (fit - sampler.extra_nfe(False)) // sampler.nfe_per_step < 2:
        raise ValueError(f"nfe={nfe} leaves {method} fewer than two steps: no grid to fit "
                         f"(nfe >= {2 * sampler.nfe_per_step + sampler.extra_nfe(denoise)} needed)")
    return fit


def _grid(theta: np.ndarray, lam0: float, lam1: float, sde: SDE, t0: float, t1: float) -> Tensor:
    """Times whose log-SNR increments are (1 − nδ) softmax(θ) + δ of λ1 − λ0 (δ = 1e-4: no two
    times coincide), the ends exactly t0 and t1."""
    w = torch.softmax(torch.as_tensor(theta, dtype=torch.float64), 0).mul(1 - 1e-4 * len(theta)).add(1e-4)
    lam = lam0 + (lam1 - lam0) * torch.cat([w.new_zeros(1), torch.cumsum(w, 0)])
    ts = sde.t_from_log_snr(2.0 * lam).to(torch.float64)
    ts[0], ts[-1] = t0, t1
    return ts


def fit_grid(score_fn, sde: SDE, shape, method: str = "unipc", nfe: int = 15, *, eps: float | None = None,
             objective: str = "auto", start: str = "log_snr", max_evals: int = 400, reference_tol: float = 1e-7,
             x_init: Tensor | None = None, data_mean: str | float | Tensor | None = "estimate",
             generator: torch.Generator | None = None,
             device: torch.device | str | None = None, dtype: torch.dtype = torch.float32, progress: bool = True,
             **options) -> FittedGrid:
    """Fit the grid of ``method`` (a deterministic fixed-step sampler) at ``nfe`` evaluations to the
    probability-flow paths of a pilot batch of ``shape`` (its first dimension is the pilot's size,
    256 a sound start, see the module docstring;
    or ``x_init``, prior draws at T): Powell's search over the log-SNR increments, from the
    ``start`` grid, for the least loss of the endpoint errors against ``ode_adaptive_ps`` at
    rtol = atol = ``reference_tol``; at most ``max_evals`` pilot solves.  ``objective``: "endpoint" (the
    Cauchy loss of the endpoint errors), "logp" (their mean absolute log-density change, one more
    evaluation per solve) or "auto" (both, ``max_evals`` each, then the grid whose log-density change is
    the smaller on fresh draws: the generator's next ones, the global RNG's without one).  ``data_mean``:
    "estimate" (default) centres the pilot's prior draws at m(T) μ̂, μ̂ the mean of x̂_0 at them (one more
    evaluation per pilot sample; ``sample``'s ``data_mean``), and the fit records μ̂ so that ``sample_options``
    centres the samples' draws alike; a tensor or number: that μ; None: the plain prior.  With ``x_init`` the
    draws are used as given (a tensor ``data_mean`` is recorded with them).  ``options`` go to the method.
    See the module docstring for the objectives and the references."""
    from scipy.optimize import minimize

    from .samplers import AdaptiveMultistep

    sampler = _check_fittable(method, with_options(resolve("method", method), options))
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective={objective!r}; valid choices: {', '.join(OBJECTIVES)}")
    if objective == "auto":
        return _fit_auto(score_fn, sde, shape, method, nfe, sampler, eps=eps, start=start, max_evals=max_evals,
                         reference_tol=reference_tol, x_init=x_init, data_mean=data_mean, generator=generator,
                         device=device, dtype=dtype, progress=progress, **options)
    if start not in GRIDS:
        raise ValueError(f"unknown start={start!r}; valid choices: {', '.join(GRIDS)}")
    max_evals = check_count("max_evals", max_evals, lo=2)
    steps, eps, t_c = grid_plan(method, sampler, sde, nfe, eps)  # t_c: the grid ends there, the tail step goes on
    tail = {} if t_c is None else {"eps": eps}
    check_generator(generator)
    began = time.perf_counter()
    x_init, mu, mean_nfe = centred_pilot(score_fn, sde, shape, data_mean, x_init, generator, device, dtype)
    ref = sample(score_fn, sde, x_init.shape, AdaptiveMultistep(rtol=reference_tol, atol=reference_tol,
                 tail_sigma=None), x_init=x_init, eps=eps, denoise=False, progress=False)
    x_ref = ref.samples.double()
    spent = [float(ref.nfe) + mean_nfe, 0]  # score evaluations per pilot sample, pilot solves
    if objective == "logp":  # the score at the reference endpoints, for the trapezoid rule below
        s_ref = _score_at_end(score_fn, ref.samples, eps)
        spent[0] += 1
    t0, t1 = float(sde.T), eps if t_c is None else t_c
    first = make_grid(start, sde, steps, t1).to(torch.float64)
    lam = 0.5 * sde.log_snr(first)
    lam0, lam1 = float(lam[0]), float(lam[-1])
    dl = torch.diff(lam)
    theta0 = torch.log(dl / dl.sum()).numpy()
    bar = tqdm(total=max_evals, desc=f"fit_grid {method}@{nfe} ({objective})", disable=not progress, leave=False)

    def errors(theta: np.ndarray) -> tuple[Tensor, Tensor | None]:
        """The pilot's squared endpoint errors on the grid of θ, and (objective "logp") the log-density
        changes log p(x) − log p(x_ref) by the trapezoid rule."""
        bar.update(1)
        spent[1] += 1
        res = sample(score_fn, sde, x_init.shape, _unrefined(sampler), grid=_grid(theta, lam0, lam1, sde, t0, t1),
                     x_init=x_init, denoise=False, progress=False, **tail)
        spent[0] += res.nfe
        diff = (res.samples.double() - x_ref).flatten(1)
        if objective == "endpoint":
            return diff.square().sum(1), None
        spent[0] += 1
        return diff.square().sum(1), _logp_change(diff, _score_at_end(score_fn, res.samples, eps), s_ref)

    e_start, d_start = errors(theta0)  # (a bad option fails here, not as an infinite loss)
    scale = float(e_start.median()) or 1e-300

    def objective_of(err: Tensor, dlogp: Tensor | None) -> float:
        return float(torch.log1p(err / scale).mean()) if dlogp is None else float(dlogp.abs().mean())

    def loss(theta: np.ndarray) -> float:
        try:
            value = objective_of(*errors(theta))
        except FloatingPointError:  # a grid on which the method blows up
            spent[0] += nfe
            return math.inf
        return value if math.isfinite(value) else math.inf

    loss_start = objective_of(e_start, d_start)
    found = minimize(loss, theta0, method="Powell", options={"maxfev": max_evals - 2, "xtol": 1e-3, "ftol": 1e-6})
    best = found.x if found.fun < loss_start else theta0
    e_best = errors(best)[0]
    bar.close()
    if isinstance(method, str):  # the options by their current names, those that differ from the registered method's
        bare = parse_spec(method)[0]
        base = resolve("method", bare)
        name = format_spec(bare, {f.name: getattr(sampler, f.name) for f in fields(sampler)
                                  if getattr(sampler, f.name) != getattr(base, f.name)})
    else:
        name = type(sampler).__name__
    return FittedGrid(ts=_grid(best, lam0, lam1, sde, t0, t1), eps=None if t_c is None else eps, method=name,
                      nfe=int(nfe), loss=min(float(found.fun), loss_start),
                      loss_start=loss_start, median_error=float(e_best.median()),
                      median_error_start=float(e_start.median()), pilot_nfe=spent[0], evaluations=spent[1],
                      seconds=time.perf_counter() - began, objective=objective, data_mean=mu)


def _fit_auto(score_fn, sde: SDE, shape, method, nfe: int, sampler, *, eps: float | None, x_init: Tensor | None,
              data_mean, generator: torch.Generator | None, device, dtype: torch.dtype, reference_tol: float,
              **kw) -> FittedGrid:
    """``fit_grid(objective="auto")``: both objectives' grids fitted on the same pilot, then the one whose mean
    absolute log-density change is the smaller on fresh prior draws of the pilot's size (from ``generator``
    after the pilot's), against their own reference solve."""
    from .samplers import AdaptiveMultistep
    from .scalegrid import centre

    began = time.perf_counter()
    check_generator(generator)
    x_init, mu, mean_nfe = centred_pilot(score_fn, sde, shape, data_mean, x_init, generator, device, dtype)
    fits = [fit_grid(score_fn, sde, x_init.shape, method, nfe, objective=o, eps=eps, x_init=x_init, data_mean=mu,
                     dtype=dtype, reference_tol=reference_tol, **kw) for o in ("endpoint", "logp")]
    end = grid_plan(method, sampler, sde, nfe, eps)[1]
    x_val = centre(prior_draws(sde, x_init.shape, generator, x_init.device, x_init.dtype), sde, mu)  # as the pilot
    ref = sample(score_fn, sde, x_val.shape, AdaptiveMultistep(rtol=reference_tol, atol=reference_tol,
                 tail_sigma=None), x_init=x_val, eps=end, denoise=False, progress=False)
    s_ref = _score_at_end(score_fn, ref.samples, end)
    spent, change = ref.nfe + 1.0, []
    for f in fits:
        res = sample(score_fn, sde, x_val.shape, _unrefined(sampler), x_init=x_val, denoise=False, progress=False,
                     **grid_options(f.ts, f.eps))
        diff = (res.samples.double() - ref.samples.double()).flatten(1)
        change.append(float(_logp_change(diff, _score_at_end(score_fn, res.samples, end), s_ref).abs().mean()))
        spent += res.nfe + 1
    best = fits[int(change[1] < change[0])]
    spent += mean_nfe + sum(f.pilot_nfe for f in fits)
    return replace(best, objective=f"auto:{best.objective}", pilot_nfe=spent,
                   evaluations=sum(f.evaluations for f in fits) + 2, seconds=time.perf_counter() - began)


def _unrefined(sampler):
    """The sampler the pilot solves run: without ``refine`` (which re-solves the worst-ranked rows: the loss
    would jump as the ranking changes); the grid keeps the steps that leave room for it."""
    return replace(sampler, refine=0.0) if getattr(sampler, "refine", 0) else sampler


def _logp_change(diff: Tensor, s_end: Tensor, s_ref: Tensor) -> Tensor:
    """log p(x) − log p(x_ref) per row by the trapezoid rule, ½ (x − x_ref)·(s(x) + s(x_ref)) (``diff``
    flattened rows x − x_ref, float64)."""
    return 0.5 * (diff * (s_end + s_ref).flatten(1)).sum(1)


def _score_at_end(score_fn, x: Tensor, eps: float) -> Tensor:
    """s(x, eps) in float64 (one evaluation of the pilot, rows of x at once, as ``sample`` does)."""
    t = torch.full((x.shape[0],), eps, dtype=torch.promote_types(x.dtype, torch.float32), device=x.device)
    with torch.no_grad():
        out = score_fn(x, t)
    return out.double()
