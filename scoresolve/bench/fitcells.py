"""Fitted grids of ``--fit-grid`` cells: fitted once per (problem, sde, method, budget), kept on disk;
and the grids of ``--scale-grid`` cells (``scoresolve.scale_grid``: one evaluation of a pilot).

A cell ``fitted nfe=N`` runs its method on the grid ``scoresolve.fit_grid`` fits to a pilot of
``--fit-pilot`` prior draws (a generator seeded ``PILOT_SEED``, which no cell's batches use: they are
seeded seed * 1_000_003 + batch), so the cell's samples are fresh draws the grid was not fitted on; the pilot's
draws and the cell's are centred at m(T) μ̂, μ̂ read off the pilot at T (``fit_grid``'s ``data_mean="estimate"``,
recorded in the fit and passed to ``sample`` by its ``sample_options``; so are a scale-grid cell's).
The fit is written atomically to ``OUT/fits/<problem|sde|method|N|...>.json`` (times in full float64,
its statistics and its cost) and read back by every seed and on resume: an interrupted run fits no
grid twice.  Its cost is a one-off outside the cell's timings; rows carry it (``fit``: score
evaluations per pilot sample, pilot solves, seconds).  A ``scale-grid nfe=N`` cell's grid costs one
evaluation of ``SCALE_PILOT`` prior draws (the same ``PILOT_SEED``): made again for every seed, the
same grid; rows carry the scale.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..gridfit import FittedGrid, fit_grid, fit_nfe
from ..scalegrid import PILOT_SEED, SCALE_PILOT, scale_grid
from .plan import BenchConfig, Cell, Group
from .store import safe_name as _safe

__all__ = ["fitted_options", "scaled_options", "PILOT_SEED", "SCALE_PILOT", "FIT_OBJECTIVE"]

FIT_OBJECTIVE = "auto"  # fit_grid's objective for the fitted cells (in the fit file's name: no stale fit reused)
FIT_PRIOR = "centred"  # fit_grid's data_mean="estimate": pilot and draws centred at m(T) μ̂ (in the name too)


def _fit_file(out: Path, cell: Cell, cfg: BenchConfig, eps: float) -> Path:
    key = (f"{cell.problem}|{cell.sde}|{cell.method}|nfe={int(cell.budget.value)}|denoise={cfg.denoise}"
           f"|eps={eps:g}|pilot={cfg.fit_pilot}|evals={cfg.fit_evals}|{str(cfg.dtype).replace('torch.', '')}"
           f"|{FIT_OBJECTIVE}|{FIT_PRIOR}")
    return out / "fits" / f"{_safe(key)}.json"


def fitted_options(cell: Cell, group: Group, cfg: BenchConfig, eps: float, out: Path) -> tuple[dict, dict]:
    """(``sample`` options: ``grid`` and ``eps``; the fit's record) of a ``fitted`` cell, fitting the
    grid if no earlier run has."""
    path = _fit_file(out, cell, cfg, eps)
    if path.exists():
        fit = FittedGrid.load(path)
    else:
        device = torch.device(cfg.device)
        # the spec itself (fit_grid and scale_grid take one): the record names the options, so a saved fit rebuilds
        fit = fit_grid(group.problem.score_for(group.sde), group.sde, (cfg.fit_pilot, *group.problem.shape),
                       cell.method, fit_nfe(cell.method, int(cell.budget.value), cfg.denoise),
                       eps=eps, objective=FIT_OBJECTIVE,
                       max_evals=cfg.fit_evals, generator=torch.Generator(device=device).manual_seed(PILOT_SEED),
                       device=device, dtype=cfg.dtype, progress=False)
        fit.save(path)
    record = {k: v for k, v in fit.to_dict().items() if k not in ("ts", "data_mean")}  # a mean image would bloat rows
    return fit.sample_options, {**record, **_mean_record(fit.data_mean), "pilot": cfg.fit_pilot,
                                "max_evals": cfg.fit_evals, "pilot_seed": PILOT_SEED}


def _mean_record(mu) -> dict:
    """The row's note of the data mean the draws were centred by: its norm (None: not centred)."""
    return {"data_mean_norm": None if mu is None else float(mu.norm())}


def scaled_options(cell: Cell, group: Group, cfg: BenchConfig, eps: float) -> tuple[dict, dict]:
    """(``sample`` options, the grid's record) of a ``scale-grid`` cell."""
    device = torch.device(cfg.device)
    g = scale_grid(group.problem.score_for(group.sde), group.sde, (SCALE_PILOT, *group.problem.shape), cell.method,
                   fit_nfe(cell.method, int(cell.budget.value), cfg.denoise), eps=eps,
                   generator=torch.Generator(device=device).manual_seed(PILOT_SEED), device=device, dtype=cfg.dtype)
    return g.sample_options, {"method": g.method, "nfe": g.nfe, "scale": g.scale, "first_sigma": g.first_sigma,
                              "pilot_nfe": g.pilot_nfe, "pilot": SCALE_PILOT, "pilot_seed": PILOT_SEED,
                              **_mean_record(g.data_mean)}
