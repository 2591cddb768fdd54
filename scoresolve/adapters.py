"""Real models in one line: diffusers UNets, k-diffusion/EDM denoisers and v-prediction
callables as score functions (x, t) -> ∇_x log p_t(x) for ``sample``.

With p_t(x | x_0) = N(m x_0, σ² I) and σ̃ = σ/m (k-diffusion's σ):
    ε-prediction  s = −ε̂ / σ
    v-prediction  ε̂ = (m v̂ + σ x)/(m² + σ²)       (v = m ε − σ x_0; Salimans & Ho 2022)
    x_0 ("sample") s = (m x̂_0 − x) / σ²
    denoiser D(x̃, σ̃) on x̃ = x/m:  s = (m D(x/m, σ̃) − x) / σ²
Classifier-free guidance runs cond and uncond in one batched forward: out = out_u + w (out_c − out_u)
(diffusers' ``guidance_scale`` w), counted as 2 evaluations per sample.
Reference: diffusers ``UNet2DModel`` / schedulers; Karras et al. 2022 (EDM), Table 1 and
k-diffusion ``external.py``; Ho & Salimans 2022 (classifier-free guidance).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .sde import SDE, append_dims

__all__ = ["from_diffusers", "from_karras", "from_v_prediction", "edm_precond", "DiffusersScore",
           "KarrasScore", "PREDICTION_TYPES"]

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def _coeffs(sde: SDE, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    m, s = sde.marginal(t)
    return append_dims(m, x.ndim).to(x.dtype), append_dims(s, x.ndim).to(x.dtype)


def check_dtype(model, x: Tensor) -> None:
    """Raise a TypeError naming ``dtype=`` when a module's floating parameters differ from x's dtype."""
    params = getattr(model, "parameters", None)
    if not callable(params):
        return
    p = next((p for p in params() if p.is_floating_point()), None)
    if p is not None and p.dtype != x.dtype:
        raise TypeError(f"the model's parameters are {p.dtype} but the samples are {x.dtype}: pass "
                        f"dtype={p.dtype} to sample() (or convert the model with model.to({x.dtype}))")


def output_to_score(out: Tensor, x: Tensor, m: Tensor, s: Tensor, prediction_type: str) -> Tensor:
    """The score from a model output of the given prediction type at marginal (m, σ)."""
    if prediction_type == "epsilon":
        return -out / s
    if prediction_type == "v_prediction":
        return -(m * out + s * x) / ((m * m + s * s) * s)
    if prediction_type == "sample":
        return (m * out - x) / (s * s)
    raise ValueError(f"prediction_type must be one of {', '.join(PREDICTION_TYPES)}, got {prediction_type!r}")


def _unwrap(out):
    """diffusers returns an output object (``UNet2DOutput.sample``) or, with return_dict=False, a tuple."""
    if isinstance(out, Tensor):
        return out
    if hasattr(out, "sample"):
        return out.sample
    if isinstance(out, (tuple, list)):
        return out[0]
    raise TypeError(f"model returned {type(out).__name__}; expected a Tensor, an object with .sample, or a tuple")


def _rows(v, n: int, name: str):
    """A model kwarg for n rows: tensors with one row are expanded; others must have n rows."""
    if not isinstance(v, Tensor) or v.ndim == 0:
        return v
    if v.shape[0] == n:
        return v
    if v.shape[0] == 1:
        return v.expand(n, *v.shape[1:])
    raise ValueError(f"model kwarg {name!r} has {v.shape[0]} rows but the model is called on {n}; give one row "
                     "(shared by every sample) or one per sample (then use a fixed-step sampler: per-sample "
                     "adaptive samplers call the model on subsets of rows)")


@dataclass(frozen=True, eq=False)
class DiffusersScore:
    """A diffusers-style model ``model(x, timestep, **kwargs)`` as a score; see ``from_diffusers``."""

    model: Callable
    sde: SDE
    prediction_type: str = "epsilon"
    model_kwargs: Mapping = field(default_factory=dict)
    guidance_scale: float | None = None
    uncond_kwargs: Mapping = field(default_factory=dict)
    timestep: Callable[[Tensor], Tensor] | None = None

    @property
    def evaluations_per_call(self) -> int:
        """Model evaluations per sample per call: 2 with classifier-free guidance (one batched forward)."""
        return 1 if self.guidance_scale is None else 2

    def _timesteps(self, t: Tensor) -> Tensor:
        if self.timestep is not None:
            return self.timestep(t)
        return self.sde.t_to_timestep(t)

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        check_dtype(self.model, x)
        n = x.shape[0]
        tau = self._timesteps(t)
        kw = {k: _rows(v, n, k) for k, v in self.model_kwargs.items()}
        if self.guidance_scale is None:
            out = _unwrap(self.model(x, tau, **kw))
        else:
            unc = {k: _rows(v, n, k) for k, v in self.uncond_kwargs.items()}
            both = {}
            for k in set(kw) | set(unc):  # a kwarg given on one side only is shared by both halves
                c, u = kw.get(k, unc.get(k)), unc.get(k, kw.get(k))
                if isinstance(c, Tensor) and c.ndim > 0:
                    both[k] = torch.cat([c, u])
                elif c is u or c == u:
                    both[k] = c
                else:
                    raise ValueError(f"model kwarg {k!r} differs between cond and uncond but is not a batched tensor")
            out = _unwrap(self.model(torch.cat([x, x]), torch.cat([tau, tau]), **both))
            oc, ou = out[:n], out[n:]
            out = ou + self.guidance_scale * (oc - ou)
        m, s = _coeffs(self.sde, x, t)
        return output_to_score(out.to(x.dtype), x, m, s, self.prediction_type)


def from_diffusers(model: Callable, sde: SDE, prediction_type: str | None = None, *,
                   guidance_scale: float | None = None, uncond: Mapping | None = None,
                   timestep: Callable[[Tensor], Tensor] | None = None, **model_kwargs) -> DiffusersScore:
    """A diffusers UNet (or any ``model(x, timestep, **kwargs)`` returning a tensor, an object
    with ``.sample`` or a tuple) as a score on ``sde``.

    The continuous t is mapped to the model's timestep by ``sde.t_to_timestep`` (``DiscreteVPSDE``:
    τ = N t − 1, the scale the UNet was trained on), or by ``timestep``.

    Args:
        model: e.g. ``diffusers.UNet2DModel`` / ``UNet2DConditionModel``.
        sde: usually ``DiscreteVPSDE.from_diffusers(scheduler)``.
        prediction_type: "epsilon", "v_prediction" or "sample" (default: ``sde.prediction_type``,
            i.e. the scheduler config's, else "epsilon").
        guidance_scale: classifier-free guidance weight w (diffusers' convention: out_u + w (out_c − out_u));
            cond and uncond run in one forward of 2B rows, counted as 2 NFE per sample.
        uncond: the unconditional model kwargs (e.g. ``{"class_labels": null_labels}``).
        timestep: t (B,) -> model timesteps, overriding the SDE's map.
        **model_kwargs: passed to every call (``class_labels``, ``encoder_hidden_states``, ...);
            tensors with one row are shared by all samples.

    Raises:
        ValueError: unknown prediction_type, guidance without ``uncond``; TypeError: an SDE
        without a timestep map (use ``DiscreteVPSDE``) and no ``timestep``.
    Reference: diffusers DDIMScheduler.step (the ε / v / sample conversions).
    """
    if not callable(model):
        raise TypeError(f"model must be callable model(x, timestep, **kwargs), got {type(model).__name__}")
    pt = prediction_type or getattr(sde, "prediction_type", "epsilon")
    if pt not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {', '.join(PREDICTION_TYPES)}, got {pt!r}")
    if timestep is None and not hasattr(sde, "t_to_timestep"):
        raise TypeError(f"{type(sde).__name__} has no t -> timestep map; use DiscreteVPSDE.from_diffusers(scheduler) "
                        "or pass timestep=callable")
    if (guidance_scale is None) != (uncond is None):
        raise ValueError("guidance_scale= and uncond= (the unconditional model kwargs) go together")
    return DiffusersScore(model, sde, pt, dict(model_kwargs), guidance_scale, dict(uncond or {}), timestep)


@dataclass(frozen=True, eq=False)
class KarrasScore:
    """A denoiser D(x̃, σ̃) in k-diffusion's variables as a score on any SDE; see ``from_karras``."""

    denoiser: Callable
    sde: SDE
    model_kwargs: Mapping = field(default_factory=dict)

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        check_dtype(self.denoiser, x)
        m, s = _coeffs(self.sde, x, t)
        sig = (s / m).reshape(x.shape[0])
        kw = {k: _rows(v, x.shape[0], k) for k, v in self.model_kwargs.items()}
        d = self.denoiser(x / m, sig, **kw)
        return (m * _unwrap(d).to(x.dtype) - x) / (s * s)


def from_karras(denoiser: Callable, sde: SDE, **model_kwargs) -> KarrasScore:
    """A k-diffusion / EDM denoiser D(x, σ) (x = x_0 + σ z, σ of shape (B,)) as a score.

    On ``KarrasSDE`` t is σ and s = (D(x, σ) − x)/σ²; on a VP SDE the state is rescaled,
    s = (m D(x/m, σ/m) − x)/σ² (k-diffusion's VP wrappers in reverse).  Use ``edm_precond`` to
    build D from a raw network with EDM's c_skip, c_out, c_in, c_noise.
    Reference: Karras et al. 2022, eq. 3 (D) and Table 1.
    """
    if not callable(denoiser):
        raise TypeError(f"denoiser must be callable D(x, sigma), got {type(denoiser).__name__}")
    return KarrasScore(denoiser, sde, dict(model_kwargs))


def edm_precond(net: Callable, sigma_data: float = 0.5,
                c_noise: Callable[[Tensor], Tensor] | None = None) -> Callable:
    """EDM's preconditioned denoiser D(x, σ) = c_skip x + c_out F(c_in x, c_noise(σ)).

    c_skip = σ_d²/(σ² + σ_d²), c_out = σ σ_d/√(σ² + σ_d²), c_in = 1/√(σ² + σ_d²), c_noise = ¼ ln σ
    (k-diffusion's ``Denoiser`` passes σ itself: ``c_noise=lambda s: s``).
    Reference: Karras et al. 2022, Table 1 (EDM column).
    """
    if not sigma_data > 0:
        raise ValueError(f"sigma_data must be > 0, got {sigma_data}")
    noise_cond = c_noise or (lambda s: 0.25 * s.log())
    sd2 = sigma_data * sigma_data

    def denoiser(x: Tensor, sigma: Tensor, **kwargs) -> Tensor:
        s = append_dims(sigma, x.ndim).to(x.dtype)
        c_skip = sd2 / (s * s + sd2)
        c_out = s * sigma_data / (s * s + sd2).sqrt()
        c_in = 1.0 / (s * s + sd2).sqrt()
        return c_skip * x + c_out * _unwrap(net(c_in * x, noise_cond(sigma), **kwargs))

    denoiser.parameters = getattr(net, "parameters", None) or (lambda: iter(()))  # for the dtype check
    return denoiser


def from_v_prediction(model: Callable, sde: SDE) -> Callable:
    """Score from a plain v-prediction callable v̂(x, t): ε̂ = (m v̂ + σ x)/(m² + σ²), s = −ε̂/σ.

    Reference: Salimans & Ho 2022, "Progressive Distillation", Appendix D (v = α ε − σ x).
    """

    def score_fn(x: Tensor, t: Tensor) -> Tensor:
        m, s = _coeffs(sde, x, t)
        return output_to_score(model(x, t), x, m, s, "v_prediction")

    return score_fn
