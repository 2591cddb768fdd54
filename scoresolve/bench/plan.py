"""What a benchmark run consists of: budgets, cells and their keys, all validated up front.

A *cell* is one (problem, sde, method, budget, seed, samples).  Fixed-step methods get an NFE
budget and the largest step count that fits it (``steps_for_nfe``; their NFE per step is a
declared property); adaptive methods (``nfe_per_step is None``) are swept over tolerances, and
those with a budget mode (``nfe_budget``: ode_adaptive_ps) also take ``--extra-nfe`` budgets, run as
``sample(..., nfe=N)`` (every sample within N).  ``--fit-grid`` budgets run a deterministic
fixed-step method on a grid fitted once per (problem, sde, method, budget) to a pilot batch
(``scoresolve.fit_grid``, see ``bench.fitcells``).  Either way a row records the NFE the score
wrapper *counted*.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ..gridfit import fit_nfe, fittable_methods
from ..registry import SAMPLERS, method_from_spec
from ..sampling import _fixed_step_ode, steps_for_nfe
from ..sde import SDE
from .problems import Problem
from .quality import check_metrics

__all__ = ["Budget", "Cell", "Group", "BenchConfig", "resolve_methods", "budgets_for", "plan_cells",
           "method_info", "max_nfe"]


@dataclass(frozen=True)
class Budget:
    """An NFE budget (fixed-step methods), the same on a fitted grid or on a grid from the data's
    scale, or a tolerance rtol = atol (adaptive methods)."""

    kind: str  # "nfe" | "fit" | "scale" | "tol"
    value: float

    @property
    def label(self) -> str:
        return {"nfe": f"nfe={int(self.value)}", "fit": f"fitted nfe={int(self.value)}",
                "scale": f"scale-grid nfe={int(self.value)}"}.get(self.kind, f"tol={self.value:g}")


@dataclass(frozen=True)
class Cell:
    problem: str
    sde: str
    method: str
    budget: Budget
    seed: int
    samples: int

    @property
    def key(self) -> str:
        return (f"{self.problem}|{self.sde}|{self.method}|{self.budget.label}|seed={self.seed}"
                f"|n={self.samples}")


@dataclass(frozen=True, eq=False)
class Group:
    """The cells of one (problem, sde): they share a score, a truth and a noise floor."""

    problem: Problem
    sde_label: str
    sde: SDE
    metrics: tuple[str, ...]
    cells: tuple[Cell, ...]


@dataclass(frozen=True)
class BenchConfig:
    """Everything a run needs.  ``sdes`` maps a label to an SDE (ignored by problems that fix
    their own SDE); ``methods`` are names from ``SAMPLERS``; ``batch_size=None`` sizes batches
    to the device; ``metrics=None`` computes every available metric.  ``extra_nfe`` adds
    budgets for some methods ((methods, budgets) pairs), ``method_tols`` replaces the
    tolerance sweep for some adaptive methods; ``fit_grid`` ((methods, budgets) pairs) adds cells
    on grids fitted to a pilot of ``fit_pilot`` draws by at most ``fit_evals`` pilot solves;
    ``max_nfe`` stops an adaptive cell whose counted
    NFE passes it (default: twice the largest NFE budget, at least 1000)."""

    problems: tuple[Problem, ...]
    sdes: tuple[tuple[str, SDE], ...]
    methods: tuple[str, ...]
    nfes: tuple[int, ...]
    out: Path
    tols: tuple[float, ...] = (1e-2, 1e-3, 1e-4, 1e-5)
    samples: int = 10_000
    seeds: int = 1
    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    batch_size: int | None = None
    metrics: tuple[str, ...] | None = None
    denoise: bool = True
    eps: float | None = None
    grid: str | None = None
    floor_repeats: int = 8
    mmd_samples: int = 2000
    extra_nfe: tuple[tuple[tuple[str, ...], tuple[int, ...]], ...] = ()
    method_tols: tuple[tuple[tuple[str, ...], tuple[float, ...]], ...] = ()
    fit_grid: tuple[tuple[tuple[str, ...], tuple[int, ...]], ...] = ()
    scale_grid: tuple[tuple[tuple[str, ...], tuple[int, ...]], ...] = ()
    fit_pilot: int = 256
    fit_evals: int = 400
    max_nfe: int | None = None
    save_samples: int | None = None
    bare_max_calls: int | None = None
    retry_failed: bool = False
    skip_infeasible: bool = False
    check: bool = False
    progress: bool = True


def resolve_methods(names) -> tuple[str, ...]:
    """Registered method names, each optionally with sampler options ("unipc:solver_order=4", see
    ``registry.parse_spec``; "all" = every entry of ``SAMPLERS``, in registry order, also beside others)."""
    names = [m for n in names for m in (SAMPLERS if n == "all" else (n,))]  # "all" beside others: them too
    bad = [m for m in names if m.partition(":")[0].strip() not in SAMPLERS]
    if bad:
        raise ValueError(f"unknown method(s) {', '.join(map(repr, bad))}; valid choices: "
                         f"{', '.join(SAMPLERS)} (or all)")
    for m in names:
        try:
            method_from_spec(m)
        except (ValueError, TypeError) as e:  # a bad option
            raise ValueError(f"--methods {m!r}: {e}") from None
    return tuple(dict.fromkeys(names))


def method_info(name: str, denoise: bool) -> dict:
    s = method_from_spec(name)
    return {"class": type(s).__name__, "nfe_per_step": s.nfe_per_step, "order": float(s.order),
            "extra_nfe": s.extra_nfe(denoise), "adaptive": s.nfe_per_step is None}


def tol_options(name: str, tol: float) -> dict:
    """Sampler options setting the tolerance of an adaptive method."""
    fields = {f.name for f in dataclasses.fields(method_from_spec(name))}
    if {"rtol", "atol"} <= fields:
        return {"rtol": tol, "atol": tol}
    if "tol" in fields:
        return {"tol": tol}
    raise ValueError(f"adaptive method {name!r} has no rtol/atol or tol option to sweep")


def has_budget_mode(name: str) -> bool:
    """An adaptive method that can run within a fixed NFE budget (``nfe_budget``)."""
    sampler = method_from_spec(name)
    return sampler.nfe_per_step is None and hasattr(sampler, "nfe_budget")


def budgets_for(name: str, nfes, tols, denoise: bool) -> tuple[list[Budget], list[str]]:
    """(feasible budgets, messages for NFE budgets below the method's minimum).  An adaptive
    method gets its tolerances, and ``nfes`` as budgets if it has a budget mode."""
    sampler = method_from_spec(name)
    ok, bad = [], []
    if sampler.nfe_per_step is None:
        tol_options(name, 1e-3)
        ok = [Budget("tol", float(t)) for t in tols]
    for n in nfes:
        try:
            if sampler.nfe_per_step is None:
                dataclasses.replace(sampler, nfe_budget=int(n))  # its option's bounds
            else:
                steps_for_nfe(sampler, int(n), denoise)
            ok.append(Budget("nfe", int(n)))
        except ValueError as e:
            bad.append(f"{name} at --nfe {n}: {e}")
    return ok, bad


def _check_numbers(cfg: BenchConfig) -> None:
    if not cfg.problems:
        raise ValueError("no problem given: pass --problem NAME, --score module:function or --run DIR")
    if cfg.samples < 2:
        raise ValueError(f"--samples must be >= 2, got {cfg.samples}")
    if cfg.seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {cfg.seeds}")
    if not cfg.nfes and not cfg.tols and not cfg.extra_nfe and not cfg.fit_grid and not cfg.scale_grid:
        raise ValueError("no budgets: pass --nfe, --tols, --extra-nfe, --fit-grid and/or --scale-grid")
    extra = _listed_budgets(cfg)
    if any((not isinstance(n, int)) or n < 1 for n in [*cfg.nfes, *extra]):
        raise ValueError(f"--nfe budgets must be positive integers, got {list(cfg.nfes) + extra}")
    if cfg.fit_grid and (cfg.fit_pilot < 2 or cfg.fit_evals < 2):
        raise ValueError(f"--fit-pilot and --fit-evals must be >= 2, got {cfg.fit_pilot} and {cfg.fit_evals}")
    if cfg.mmd_samples < 10:
        raise ValueError(f"--mmd-samples must be >= 10, got {cfg.mmd_samples}")
    if cfg.max_nfe is not None and cfg.max_nfe < 1:
        raise ValueError(f"--max-nfe must be >= 1, got {cfg.max_nfe}")
    if any(not 0 < t < 1 for t in cfg.tols):
        raise ValueError(f"--tols must lie in (0, 1), got {list(cfg.tols)}")
    if cfg.batch_size is not None and cfg.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1 or auto, got {cfg.batch_size}")
    if cfg.floor_repeats < 2:
        raise ValueError(f"--floor-repeats must be >= 2, got {cfg.floor_repeats}")
    _check_more(cfg)


def _check_more(cfg: BenchConfig) -> None:
    """The options a typo would otherwise let through to every cell (each failing) or the report."""
    from ..timegrid import GRIDS

    if cfg.grid is not None and cfg.grid not in GRIDS:
        raise ValueError(f"unknown --grid {cfg.grid!r}; valid choices: {', '.join(GRIDS)}")
    if cfg.eps is not None and not math.isfinite(cfg.eps):
        raise ValueError(f"--eps must be a finite number in (0, T), got {cfg.eps}")
    if any(not math.isfinite(t) for t in cfg.tols):
        raise ValueError(f"--tols must be finite numbers in (0, 1), got {list(cfg.tols)}")
    for flag, value in (("--save-samples", cfg.save_samples), ("--bare-max-calls", cfg.bare_max_calls)):
        if value is not None and value < (0 if flag == "--save-samples" else 1):
            raise ValueError(f"{flag} must be an integer >= {0 if flag == '--save-samples' else 1}, got {value}")


def _select(token: str, methods: tuple[str, ...], flag: str) -> list[str]:
    """A method name, or ``order<=K``: every method run whose declared order is at most K."""
    if token.startswith("order<="):
        try:
            k = float(token[len("order<="):])
        except ValueError:
            raise ValueError(f"{flag}: bad selector {token!r} (use e.g. order<=1)") from None
        return [m for m in methods if float(method_from_spec(m).order) <= k]
    if token not in methods:
        raise ValueError(f"{flag} names {token!r}, which is not among the methods run "
                         f"({', '.join(methods)})")
    return [token]


def _per_method(pairs, methods: tuple[str, ...], flag: str) -> dict[str, tuple]:
    out: dict[str, tuple] = {}
    for names, values in pairs:
        for token in names:
            for m in _select(token, methods, flag):
                out[m] = tuple(out.get(m, ())) + tuple(values)
    return out


def _listed_budgets(cfg: BenchConfig) -> list[int]:
    """The NFE budgets given per method (--extra-nfe, --fit-grid, --scale-grid)."""
    return [b for _, bs in (*cfg.extra_nfe, *cfg.fit_grid, *cfg.scale_grid) for b in bs]


def max_nfe(cfg: BenchConfig) -> int:
    """The counted-NFE cap of adaptive cells."""
    if cfg.max_nfe is not None:
        return cfg.max_nfe
    top = max([*cfg.nfes, *_listed_budgets(cfg)], default=0)
    return max(1000, 2 * top)


def plan_cells(cfg: BenchConfig) -> list[Group]:
    """Validate ``cfg`` completely and list its cells; raises ValueError before anything runs."""
    _check_numbers(cfg)
    methods = resolve_methods(cfg.methods)
    extra = _per_method(cfg.extra_nfe, methods, "--extra-nfe")
    tols = _per_method(cfg.method_tols, methods, "--tols-for")
    fittable = fittable_methods()

    def can_fit(m: str) -> bool:  # a registered name or one with options
        return _fixed_step_ode(method_from_spec(m))
    grids = {}  # budget kind -> {method: budgets} of the fitted and the scale grids
    for kind, flag, given in (("fit", "--fit-grid", cfg.fit_grid), ("scale", "--scale-grid", cfg.scale_grid)):
        no_grid = sorted({t for names, _ in given for t in names if not t.startswith("order<=") and not can_fit(t)})
        if no_grid:
            raise ValueError(f"{flag} names {', '.join(no_grid)}, which has no fixed deterministic grid to fit; "
                             f"valid choices: {', '.join(fittable)}")
        # (an order<= selector passes the others by)
        grids[kind] = {m: v for m, v in _per_method(given, methods, flag).items() if can_fit(m)}
    named = {t for names, _ in cfg.extra_nfe for t in names if not t.startswith("order<=")}
    no_budget = [m for m in extra if method_from_spec(m).nfe_per_step is None and not has_budget_mode(m)]
    if named & set(no_budget):
        raise ValueError(f"--extra-nfe names adaptive method(s) {', '.join(sorted(named & set(no_budget)))} "
                         "without a fixed-budget mode; sweep their tolerances with --tols-for (fixed budgets: "
                         f"{', '.join(m for m in SAMPLERS if has_budget_mode(m))})")
    extra = {m: v for m, v in extra.items() if m not in no_budget}  # an order<= selector passes them by
    bad_tols = [m for m in tols if method_from_spec(m).nfe_per_step is not None]
    if bad_tols:
        raise ValueError(f"--tols-for names fixed-step method(s) {', '.join(bad_tols)}; use --extra-nfe")
    if any(not 0 < t < 1 for ts in tols.values() for t in ts):
        raise ValueError(f"--tols-for tolerances must lie in (0, 1), got {tols}")
    budgets: dict[str, list[Budget]] = {}
    infeasible: list[str] = []
    for m in methods:
        fixed = method_from_spec(m).nfe_per_step is not None  # --nfe is for fixed-step methods only
        nfes = sorted((set(cfg.nfes) if fixed else set()) | set(extra.get(m, ())))
        ok, bad = budgets_for(m, nfes, sorted(set(tols.get(m, cfg.tols)), reverse=True), cfg.denoise)
        for kind, flag in (("fit", "--fit-grid"), ("scale", "--scale-grid")):
            for n in sorted(set(grids[kind].get(m, ()))):
                try:
                    fit_nfe(m, n, cfg.denoise)
                    ok.append(Budget(kind, n))
                except ValueError as e:
                    bad.append(f"{m} at {flag} {n}: {e}")
        budgets[m] = ok
        infeasible += bad
    if infeasible and not cfg.skip_infeasible:
        raise ValueError("budget below a method's minimum NFE:\n  " + "\n  ".join(infeasible)
                         + "\n(raise --nfe, drop the method, or pass --skip-infeasible to leave "
                         "these cells out)")
    groups = []
    for prob in cfg.problems:
        metrics = check_metrics(prob, cfg.metrics)
        if prob.reference is not None and prob.reference.shape[0] < 2 * cfg.samples:
            raise ValueError(
                f"problem {prob.name!r}: the reference has {prob.reference.shape[0]} samples, but the "
                f"noise floor at --samples {cfg.samples} needs two disjoint sets, i.e. at least "
                f"{2 * cfg.samples}; lower --samples or give more reference samples")
        sdes = [(prob.sde.name, prob.sde)] if prob.sde is not None else list(cfg.sdes)
        for label, sde in sdes:
            eps = sde.default_eps if cfg.eps is None else cfg.eps
            if not 0 < eps < sde.T:
                raise ValueError(f"--eps must lie in (0, T={sde.T}), got {eps}")
            cells = tuple(Cell(prob.name, label, m, b, s, cfg.samples)
                          for m in methods for b in budgets[m] for s in range(cfg.seeds))
            groups.append(Group(prob, label, sde, metrics, cells))
    keys = [c.key for g in groups for c in g.cells]
    if len(set(keys)) != len(keys):
        raise ValueError("two problems share a name; give user problems distinct --name values")
    return groups


def settings(cfg: BenchConfig) -> dict:
    """The options that change the numbers but are not in a cell key (checked on resume)."""
    out = {"denoise": cfg.denoise, "eps": cfg.eps, "dtype": str(cfg.dtype).replace("torch.", ""),
           "grid": cfg.grid, "floor_repeats": cfg.floor_repeats, "mmd_samples": cfg.mmd_samples}
    if cfg.fit_grid:  # (only then: a directory of earlier runs may gain fitted cells)
        out["fit"] = {"pilot": cfg.fit_pilot, "evals": cfg.fit_evals}
    return out


def check_settings(out: Path, cfg: BenchConfig, stored: dict | None) -> None:
    if stored is None:
        return
    new = settings(cfg)
    diff = {k: (stored.get(k), v) for k, v in new.items() if stored.get(k) != v and (k != "fit" or k in stored)}
    if diff:
        what = ", ".join(f"{k}={a!r} (now {b!r})" for k, (a, b) in diff.items())
        raise ValueError(f"{out} holds results made with {what}; resume with the same options or "
                         "choose another --out")
