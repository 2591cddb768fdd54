"""Every method by name, in one place.  ``method=`` anywhere accepts a name from these dicts
or an object of the same kind; ``resolve`` gives an error listing the valid choices.
A method may carry sampler options, "unipc:solver_order=4;lower_order_final=true" (``parse_spec``,
``method_from_spec``), on the command line and wherever ``resolve`` reads a method.

``PREDICTORS`` and ``CORRECTORS`` (pure step functions) are defined beside their functions in
``predictors.py`` / ``correctors.py`` and collected here; ``SAMPLERS`` maps names to sampler
objects (frozen dataclasses implementing ``protocol.Sampler``)."""

from __future__ import annotations

import dataclasses

from ._compat import translate
from .correctors import CORRECTORS
from .predictors import PREDICTORS
from .protocol import Sampler
from .samplers import (
    DDIM,
    DPM2,
    LMS,
    PC,
    AdaptiveMultistep,
    AdaptiveODE,
    AnnealedLangevin,
    DPMSolver2S,
    DPMSolverMultistep,
    DPMSolverSDE,
    EDMHeun,
    EulerAncestral,
    FixedStepODE,
    GottaGoFast,
    ProbabilityFlowODE,
    TorchSDE,
    UniPC,
    UniPCBh,
)

__all__ = ["PREDICTORS", "CORRECTORS", "SAMPLERS", "resolve", "with_options", "parse_spec", "format_spec",
           "method_from_spec", "method_arg"]

SAMPLERS: dict[str, Sampler] = {
    # classical (Song et al. 2021)
    "pc": PC(t_eval="shifted_vp", coefficients="auto", default_grid="classical_pc"),
    # em / ancestral defaults measured against score_sde's own samplers (benchmarks/classical_results.md)
    # end="mean": on VE their last step's mean (keeping σ_min); x̂_0 shrinks the data by its posterior
    # mean and measured behind the reference at 1000 steps (finding 17)
    "em": PC(predictor="euler_maruyama", corrector="none", t_eval="ramped", end="mean", default_grid="classical"),
    "reverse_diffusion": PC(predictor="reverse_diffusion", corrector="none", t_eval="shifted", coefficients="stable",
                            end="mean", default_grid="classical"),
    "ancestral": PC(predictor="ancestral", corrector="none", variance="analytic", default_grid="classical"),
    "ald": AnnealedLangevin(),
    "ode": ProbabilityFlowODE(),
    "ode_euler": FixedStepODE("euler"),
    "ode_heun": FixedStepODE("heun"),
    # exponential integrators, EDM, adaptive and torchsde samplers
    "ddim": DDIM(),
    "ddim_eta": DDIM(eta=1.0),
    "heun_edm": EDMHeun(),
    "edm_churn": EDMHeun(s_churn=2.0, s_tmin=0.05, s_tmax=50.0),
    "dpmpp_2s": DPMSolver2S(),
    "dpmpp_2m": DPMSolverMultistep(solver_order=2),
    "dpmpp_3m": DPMSolverMultistep(solver_order=3, variant="exact"),
    "dpmpp_2m_sde": DPMSolverSDE(),
    "unipc": UniPC(),
    "gotta_go_fast": GottaGoFast(),
    "ode_adaptive_ps": AdaptiveMultistep(),
    "ode_adaptive_rk23": AdaptiveODE(),
    "sde_srk": TorchSDE("srk"),
    # the names k-diffusion and diffusers users look for (steps in σ̃ = σ/m, x̃ = x/m; Karras grid; their
    # grids to the end, without our tail below σ̃ = 0.01):
    # k-diffusion sample_euler = DDIM: x̃' = x̃ + (σ̃' − σ̃)(x̃ − x̂_0)/σ̃
    "euler": DDIM(default_grid="karras", tail_sigma=None),
    "heun": EDMHeun(),  # k-diffusion sample_heun = EDM Algorithm 1 (= heun_edm)
    "lms": LMS(),  # k-diffusion sample_lms: linear multistep in σ̃, order 4
    "euler_ancestral": EulerAncestral(),  # k-diffusion sample_euler_ancestral (≈ ddim_eta, noise on every step)
    "dpm_2": DPM2(),  # k-diffusion sample_dpm_2: midpoint at √(σ̃_i σ̃_{i+1})
    "unipc_bh2": UniPCBh(),  # diffusers' UniPCMultistepScheduler default (bh2, solver_order 2)
    "unipc_bh1": UniPCBh(solver_type="bh1"),
    # TorchSDE("reversible_heun") is not registered: on the 8-ring its per-component W2 grows
    # with NFE (2951x the floor at 20 NFE, 13118x at 50); usable as an object, not yet trusted.
}


def resolve(kind: str, name_or_obj):
    """Look up ``name_or_obj`` in the registry of ``kind`` ("predictor", "corrector" or
    "method"); objects (callables, sampler instances) are returned as they are.  A method may be a
    spec with options, ``"unipc:solver_order=4"`` (``method_from_spec``)."""
    table = {"predictor": PREDICTORS, "corrector": CORRECTORS}.get(kind, SAMPLERS)
    if kind == "method" and isinstance(name_or_obj, str) and ":" in name_or_obj:
        return method_from_spec(name_or_obj)
    if isinstance(name_or_obj, str):
        try:
            return table[name_or_obj]
        except KeyError:
            raise ValueError(f"unknown {kind} {name_or_obj!r}; valid choices: {', '.join(table)}") from None
    if kind == "method":
        if isinstance(name_or_obj, Sampler):
            return name_or_obj
        raise TypeError(
            f"method must be a name ({', '.join(table)}) or an object implementing "
            f"scoresolve.protocol.Sampler (e.g. scoresolve.PC(...)); got {type(name_or_obj).__name__}"
        )
    if callable(name_or_obj):
        return name_or_obj
    raise TypeError(f"{kind} must be a name ({', '.join(table)}) or a callable, got {type(name_or_obj).__name__}")


def with_options(sampler: Sampler, options: dict, stacklevel: int = 4) -> Sampler:
    """``sampler`` with some of its fields replaced (old option names translated); TypeError naming
    the unknown options and listing the valid ones."""
    if not options:
        return sampler
    options = translate(type(sampler), options, stacklevel=stacklevel)
    valid = [f.name for f in dataclasses.fields(sampler)]
    bad = [k for k in options if k not in valid]
    if bad:
        raise TypeError(
            f"unknown option(s) {', '.join(map(repr, bad))} for {type(sampler).__name__}; "
            f"valid options: {', '.join(valid)}"
        )
    return dataclasses.replace(sampler, **options)


def _value(text: str):
    """A spec's value: an int, a float, true / false, none, or else the string itself."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "none":
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            continue
    return text


def parse_spec(spec: str) -> tuple[str, dict]:
    """``"unipc:solver_order=4;lower_order_final=true"`` -> ("unipc", {"solver_order": 4,
    "lower_order_final": True}): values int, float, true/false, none or a string."""
    name, _, rest = spec.partition(":")
    options = {}
    for item in filter(None, (kv.strip() for kv in rest.split(";"))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"method {spec!r}: options are key=value pairs separated by ';', got {item!r}")
        options[key.strip()] = _value(value.strip())
    return name.strip(), options


def format_spec(name: str, options: dict) -> str:
    """The inverse of ``parse_spec``: ("unipc", {"solver_order": 4}) -> "unipc:solver_order=4"."""
    def text(v) -> str:
        return "none" if v is None else str(v).lower() if isinstance(v, bool) else repr(v) if isinstance(v, float) \
            else str(v)
    return name if not options else f"{name}:" + ";".join(f"{k}={text(v)}" for k, v in options.items())


def method_from_spec(spec: str) -> Sampler:
    """The registered method of a spec with its sampler options: ``"unipc:solver_order=4"`` ->
    ``UniPC(solver_order=4)``; errors name the unknown method or option and the valid choices."""
    name, options = parse_spec(spec)
    return with_options(resolve("method", name), options, stacklevel=3)


def method_arg(spec: str) -> str | Sampler:
    """What a spec passes as ``method=``: the bare name when it carries no options (messages and records
    name it), else the sampler its options make."""
    name, options = parse_spec(spec)
    return method_from_spec(spec) if options else name
