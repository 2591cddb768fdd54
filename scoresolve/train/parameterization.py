"""What the network predicts, and how its output becomes the score.

With x_t = m x_0 + σ z (z ~ N(0, I)) and network output o = net(c_in x_t, t):
    "score"    s = o              (``scale_by_sigma``: s = o / σ, the NCSNv2 trick)
    "epsilon"  s = −o / σ         (o estimates z)
    "x0"       s = (m o − x_t)/σ² (o estimates x_0; Tweedie)
The input scale c_in = 1/√(m² + σ²) (``scale_input``) keeps the network's input O(1) for
data of unit scale under every SDE (it is 1 for VP, and matters for VE, whose σ reaches σ_max).
The losses use ``residual`` = σ s + z, the same map written so nothing cancels at small σ, so a
loss and the ``score_fn`` it returns always agree.

Reference: Song et al. 2021 (score-SDE), eq. 7; Ho et al. 2020 (ε-prediction); Song & Ermon 2020
(NCSNv2), Technique 3; Karras et al. 2022 (EDM), input scaling c_in.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..score import ScoreFn
from ..sde import SDE, SDES, append_dims

__all__ = ["Parameterization", "PARAMETERIZATIONS", "resolve_sde", "sde_config", "sde_from_config"]

PARAMETERIZATIONS = ("score", "epsilon", "x0")


def resolve_sde(sde: SDE | str) -> SDE:
    """An SDE object, or a name from ``scoresolve.SDES`` built with its default parameters."""
    if isinstance(sde, str):
        if sde not in SDES:
            raise ValueError(f"unknown sde {sde!r}; valid choices: {', '.join(SDES)}")
        return SDES[sde]()
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be a scoresolve SDE or one of {', '.join(SDES)}, got {type(sde).__name__}")
    return sde


def sde_config(sde: SDE) -> dict:
    """{"name": ..., **parameters}: enough to rebuild the SDE with ``sde_from_config``."""
    return {"name": sde.name, **vars(sde)}


def sde_from_config(cfg: dict) -> SDE:
    cfg = dict(cfg)
    return resolve_sde(cfg.pop("name")).__class__(**cfg)


@dataclass(frozen=True)
class Parameterization:
    """Maps a network's output to the score (and back), for one SDE.

    Args:
        sde: the forward SDE; None only for noise-free sliced score matching (then the output is
            the score itself).
        output: "score", "epsilon" or "x0".
        scale_by_sigma: divide a "score" output by σ(t) (NCSNv2).
        scale_input: feed the network x_t / √(m² + σ²) instead of x_t.
    """

    sde: SDE | None
    output: str = "epsilon"
    scale_by_sigma: bool = False
    scale_input: bool = True

    def __post_init__(self):
        if self.output not in PARAMETERIZATIONS:
            raise ValueError(
                f"unknown parameterization {self.output!r}; valid choices: {', '.join(PARAMETERIZATIONS)}"
            )
        if self.scale_by_sigma and self.output != "score":
            raise ValueError("scale_by_sigma (NCSNv2) applies to parameterization='score' only, "
                             f"got parameterization={self.output!r}")
        if self.sde is None and (self.output != "score" or self.scale_by_sigma):
            raise ValueError("without an sde (noise-free score matching) the parameterization must be "
                             "'score' with scale_by_sigma=False")

    # ------------------------------------------------------------------ coefficients
    def coeffs(self, t: Tensor, ndim: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """(m(t), σ(t)) shaped to broadcast against an ndim-dim state, computed in float64."""
        if self.sde is None:
            one = torch.ones(t.shape, device=t.device, dtype=dtype)
            return append_dims(one, ndim), append_dims(one, ndim)
        m, s = self.sde.marginal(t.to(torch.float64))
        return append_dims(m, ndim).to(dtype), append_dims(s, ndim).to(dtype)

    def net_output(self, model: nn.Module, x: Tensor, t: Tensor, m: Tensor, s: Tensor) -> Tensor:
        """o = model(c_in x, t), checked to have the shape of x."""
        xin = x * torch.rsqrt(m * m + s * s) if (self.scale_input and self.sde is not None) else x
        out = model(xin, t.to(x.dtype))
        if not isinstance(out, Tensor) or out.shape != x.shape:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"model returned shape {got} for x of shape {tuple(x.shape)}; "
                             "it must return a tensor shaped like its input")
        return out

    # ------------------------------------------------------------------ output <-> score
    def score(self, out: Tensor, x: Tensor, m: Tensor, s: Tensor) -> Tensor:
        """The score at (x, t) given the network output."""
        if self.output == "score":
            return out / s if self.scale_by_sigma else out
        if self.output == "epsilon":
            return -out / s
        return (m * out - x) / (s * s)

    def residual(self, out: Tensor, x0: Tensor, z: Tensor, m: Tensor, s: Tensor) -> Tensor:
        """σ s(x_t) + z = σ (s(x_t) − ∇ log p(x_t | x_0)) for x_t = m x_0 + σ z."""
        if self.output == "score":
            return (out if self.scale_by_sigma else s * out) + z
        if self.output == "epsilon":
            return z - out
        return m * (out - x0) / s

    def output_from_score(self, score: Tensor, x: Tensor, m: Tensor, s: Tensor) -> Tensor:
        """The network output that represents ``score`` (the inverse of ``score``)."""
        if self.output == "score":
            return score * s if self.scale_by_sigma else score
        if self.output == "epsilon":
            return -s * score
        return (x + s * s * score) / m

    def score_fn(self, model: nn.Module) -> ScoreFn:
        """score_fn(x, t) for the samplers, evaluated in the model's dtype and returned in x's dtype
        (so float64 callers can compare with exact scores).  It records autograd only when x
        requires grad (e.g. for the likelihood's divergence), so sampling builds no graph."""
        param = next(model.parameters(), None)
        dtype = param.dtype if param is not None else torch.get_default_dtype()

        def score_fn(x: Tensor, t: Tensor) -> Tensor:
            with torch.set_grad_enabled(torch.is_grad_enabled() and x.requires_grad):
                xm = x.to(dtype)
                m, s = self.coeffs(t, x.ndim, dtype)
                out = self.net_output(model, xm, t, m, s)
                return self.score(out, xm, m, s).to(x.dtype)

        score_fn.__qualname__ = f"score_fn[{type(model).__name__}, {self.output}]"
        return score_fn

    def config(self) -> dict:
        return {"parameterization": self.output, "scale_by_sigma": self.scale_by_sigma,
                "scale_input": self.scale_input}
