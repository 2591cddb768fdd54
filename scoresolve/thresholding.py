"""x̂_0 hooks for ``sample(..., x0_hook=...)``: clipping and Imagen's dynamic thresholding.

The hook replaces every data prediction x̂_0 = (x + σ² s)/m a sampler makes (and so the score,
by that of the hooked prediction): with the data-prediction samplers (ddim, dpmpp_*, unipc, ...)
this is diffusers' ``clip_sample`` / ``thresholding`` (for DDIM: with ``use_clipped_model_output=True``,
i.e. ε̂ recomputed from the clipped x̂_0; ``DDIM(hooked_eps=False)`` gives diffusers' default).
Reference: Saharia et al. 2022 (Imagen), §2.3 "dynamic thresholding"; diffusers ``_threshold_sample``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["clip_x0", "dynamic_threshold"]


def clip_x0(limit: float = 1.0) -> Callable[[Tensor, object], Tensor]:
    """x̂_0 clipped to [−limit, limit] (diffusers' ``clip_sample=True``, ``clip_sample_range``)."""
    if not limit > 0:
        raise ValueError(f"limit must be > 0, got {limit}")

    def hook(x0: Tensor, t) -> Tensor:
        return x0.clamp(-limit, limit)

    return hook


def dynamic_threshold(ratio: float = 0.995, max_value: float = 1.0) -> Callable[[Tensor, object], Tensor]:
    """Imagen's dynamic thresholding: per sample s = clamp(quantile(|x̂_0|, ratio), 1, max_value),
    x̂_0 ← clamp(x̂_0, −s, s)/s (diffusers' ``thresholding=True``, ``dynamic_thresholding_ratio``,
    ``sample_max_value``)."""
    if not 0 < ratio <= 1:
        raise ValueError(f"ratio must lie in (0, 1], got {ratio}")
    if not max_value >= 1:
        raise ValueError(f"max_value must be >= 1, got {max_value}")

    def hook(x0: Tensor, t) -> Tensor:
        flat = x0.reshape(x0.shape[0], -1)
        q = flat.float() if flat.dtype not in (torch.float32, torch.float64) else flat
        s = torch.quantile(q.abs(), ratio, dim=1).clamp(1.0, max_value).to(x0.dtype).unsqueeze(1)
        return (torch.maximum(torch.minimum(flat, s), -s) / s).reshape(x0.shape)

    return hook
