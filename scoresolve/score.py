"""Score callables: the protocol, adapters from other parameterisations, and NFE counting.

A score function maps (x, t) -> ∇_x log p_t(x) with x of shape (B, ...) and t of shape (B,)
holding continuous times.  Adapters (with p_t(x | x_0) = N(m x_0, σ² I)):
    ε-predictor   s = −ε̂ / σ
    denoiser      s = (m x̂_0 − x) / σ²
    σ-conditioned s(x, t) = model(x, σ(t))      (NCSN / VE models that take the noise level)
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from .sde import SDE, append_dims

__all__ = [
    "ScoreFn",
    "from_epsilon",
    "from_denoiser",
    "from_sigma_model",
    "CountingScore",
    "ScoreWrapper",
    "NonFiniteScoreError",
    "NonFiniteStateError",
]


def all_finite(x: Tensor) -> bool:
    """Whether every entry is finite, in one reduction: the sum is finite iff every entry is,
    barring overflow of the sum itself, which the exact check then rules out
    (``isfinite().all()`` alone costs ~25x more)."""
    return math.isfinite(float(x.detach().sum())) or bool(torch.isfinite(x).all())


def _shares_memory(a: Tensor, b: Tensor) -> bool:
    try:
        return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # tensors without storage (functorch wrappers, ...)
        return a is b


@runtime_checkable
class ScoreFn(Protocol):
    def __call__(self, x: Tensor, t: Tensor) -> Tensor: ...


def _coeffs(sde: SDE, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    m, s = sde.marginal(t)
    return append_dims(m, x.ndim).to(x.dtype), append_dims(s, x.ndim).to(x.dtype)


def from_epsilon(eps_model, sde: SDE) -> ScoreFn:
    """Score from a noise predictor ε̂(x, t): s = −ε̂ / σ(t)."""

    def score_fn(x: Tensor, t: Tensor) -> Tensor:
        _, s = _coeffs(sde, x, t)
        return -eps_model(x, t) / s

    return score_fn


def from_denoiser(denoiser, sde: SDE) -> ScoreFn:
    """Score from a data predictor x̂_0(x, t) (Tweedie): s = (m x̂_0 − x) / σ².

    The predictor is called with the SDE's time t.  A k-diffusion / EDM denoiser D(x, σ) takes
    the noise level instead: use ``scoresolve.from_karras(D, sde)`` (and ``KarrasSDE``)."""

    def score_fn(x: Tensor, t: Tensor) -> Tensor:
        m, s = _coeffs(sde, x, t)
        return (m * denoiser(x, t) - x) / (s * s)

    return score_fn


def from_sigma_model(model, sde: SDE) -> ScoreFn:
    """Score from a model conditioned on the noise level, model(x, σ) with σ of shape (B,)."""

    def score_fn(x: Tensor, t: Tensor) -> Tensor:
        return model(x, sde.std(t))

    return score_fn


class ScoreWrapper:
    """Base of the wrappers a run puts around its ``CountingScore`` (x̂_0 hooks, pinned scores):
    ``nfe``, ``calls``, ``step`` and the rest read and write through to the wrapped score."""

    def __init__(self, score):
        object.__setattr__(self, "score", score)

    def __getattr__(self, name):
        return getattr(self.score, name)

    def __setattr__(self, name, value):
        if name == "step":
            self.score.step = value
        else:
            object.__setattr__(self, name, value)


class LastEvaluation(ScoreWrapper):
    """Keeps the latest call's (t, s(x, t)) as ``last``: the tail step (``protocol.tail_step``)
    reuses it instead of evaluating the score again."""

    def __init__(self, score):
        super().__init__(score)
        self.last = None

    def __call__(self, x: Tensor, t) -> Tensor:
        out = self.score(x, t)
        self.last = (t, out)
        return out


class NonFiniteScoreError(FloatingPointError):
    """The score returned NaN or Inf."""


class NonFiniteStateError(FloatingPointError):
    """A sampler or solver handed the score a NaN/Inf state or time (its own overflow)."""


class CountingScore:
    """Wraps a score, counts what was actually evaluated, and checks what comes back.

    ``nfe`` = rows evaluated / batch size, so a call on half the batch counts ½; ``calls`` is
    the number of invocations; ``seconds`` the wall time spent inside the score (synchronised
    on CUDA, so work queued by the solver is not charged to the score).  With ``check=True``
    every output is checked for shape and finiteness, and a failure names the sampler step and
    the time (one host sync per call).
    An output that shares memory with its input is copied, so samplers may reuse their own
    buffers once a call has returned.
    """

    def __init__(self, fn: ScoreFn, batch_size: int, check: bool = True):
        if not callable(fn):
            raise TypeError(f"score_fn must be callable (x, t) -> score, got {type(fn).__name__}")
        self.fn = fn
        self.batch_size = batch_size
        self.check = check
        # a composite score (e.g. classifier-free guidance) that runs a model k times per call
        # declares evaluations_per_call = k, and each call counts k evaluations
        self.per_call = int(getattr(fn, "evaluations_per_call", 1))
        self.rows = 0
        self.calls = 0
        self.seconds = 0.0  # wall time inside fn (synchronised on CUDA): overhead = run time / this
        self.step: int | None = None
        # (T, σ(T)) when the run starts from prior draws: the first call at T is then checked for
        # the magnitude of a score (a denoiser or ε-model passed as the score is warned about)
        self.prior_check: tuple[float, float] | None = None

    @property
    def nfe(self) -> float:
        n = self.rows / self.batch_size
        return int(n) if n == int(n) else n

    def __call__(self, x: Tensor, t: Tensor | float) -> Tensor:
        if not isinstance(t, Tensor):
            dtype = torch.promote_types(x.dtype, torch.float32)
            t = torch.full((x.shape[0],), t, device=x.device, dtype=dtype)
        elif t.ndim == 0:
            t = t.expand(x.shape[0])
        cuda = x.is_cuda
        if cuda:
            torch.cuda.synchronize(x.device)
        start = time.perf_counter()
        out = self.fn(x, t)
        if cuda:
            torch.cuda.synchronize(x.device)
        self.seconds += time.perf_counter() - start
        self.rows += x.shape[0] * self.per_call
        self.calls += 1
        if self.check:
            self._validate(x, t, out)
            if self.calls == 1 and self.prior_check is not None:
                self._check_magnitude(x, t, out)
        if out.dtype != x.dtype:  # a half-precision score: keep the solver state's precision
            out = out.to(x.dtype)
        elif _shares_memory(out, x):
            out = out.clone()  # samplers may reuse their own input buffers once the call returns
        return out

    def _check_magnitude(self, x: Tensor, t: Tensor, out: Tensor) -> None:
        """At t = T on prior draws every score is ≈ −x/σ(T)² (the data are small against the
        noise), so ‖σ(T)² s + x‖/‖x‖ ≪ 1; a denoiser's x̂_0 or an ε-prediction gives ≳ 1."""
        big_t, sig = self.prior_check
        if abs(float(t[0]) - big_t) > 1e-9 * big_t:
            return
        r = (out.detach().to(x.dtype) * (sig * sig) + x).flatten(1).norm(dim=1) / x.flatten(1).norm(dim=1)
        if float(r.median()) > 0.5:
            warnings.warn(
                f"score_fn's first output at t = T does not look like a score: a score there is ≈ −x/σ(T)² "
                f"(σ(T) = {sig:.4g}), but ‖σ(T)² s + x‖/‖x‖ = {float(r.median()):.3g}.  If the callable is a "
                "denoiser D(x, σ), an ε- or v-prediction or a diffusers UNet, wrap it: from_karras(D, sde), "
                "from_epsilon(model, sde), from_v_prediction(model, sde), from_diffusers(unet, sde).  (Data far "
                "larger than σ(T) also trigger this; pass check=False to silence it.)", UserWarning, stacklevel=4)

    def _validate(self, x: Tensor, t: Tensor, out: Tensor) -> None:
        if isinstance(out, Tensor) and out.device != x.device:
            raise ValueError(
                f"score_fn returned a tensor on {out.device} for x on {x.device}; "
                "the score must run on the sampling device (pass device= to match)"
            )
        if not isinstance(out, Tensor) or out.shape != x.shape:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(
                f"score_fn returned shape {got} for x of shape {tuple(x.shape)}; "
                "it must return a tensor shaped like x"
            )
        if not out.dtype.is_floating_point:
            raise TypeError(f"score_fn returned a {out.dtype} tensor for x of dtype {x.dtype}; it must return "
                            "a floating-point tensor (with check=False it is cast silently)")
        if not all_finite(out):
            where = "" if self.step is None else f" at step {self.step}"
            if not (all_finite(x) and all_finite(t)):  # the solver's own NaN, not the score's
                raise NonFiniteStateError(
                    f"the sampler passed NaN/Inf {'x' if all_finite(t) else 't'} to score_fn{where} (call "
                    f"{self.calls}, x of dtype {x.dtype}): its own arithmetic overflowed, not the score; in "
                    "float16/bfloat16 sample in float32, else take more steps")
            bad = (~torch.isfinite(out.flatten(1))).any(1).sum().item()
            raise NonFiniteScoreError(
                f"score_fn returned NaN/Inf{where}, t={float(t[0]):.6g} "
                f"(call {self.calls}, {bad} of {x.shape[0]} samples affected)"
                + (f"; in {out.dtype} a score beyond ±{torch.finfo(out.dtype).max:.5g} is Inf: sample in float32"
                   if out.dtype in (torch.float16, torch.bfloat16) else "")
            )
