"""PNG figures for training runs: image grids and 2-D scatter plots (matplotlib, Agg canvas,
no pyplot global state)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

import torch
from torch import Tensor

__all__ = ["image_grid", "scatter_panels"]


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def image_grid(x: Tensor, path: str | os.PathLike, *, vmin: float, vmax: float, ncol: int | None = None,
               title: str | None = None, pad: int = 1) -> str:
    """Save images (N, C, H, W) (C = 1 grey or 3 RGB, raw values in [vmin, vmax]) as one grid PNG."""
    x = x.detach().float().cpu().clamp(vmin, vmax)
    n, c, h, w = x.shape
    ncol = ncol or math.ceil(math.sqrt(n))
    nrow = math.ceil(n / ncol)
    canvas = torch.full((c, nrow * (h + pad) + pad, ncol * (w + pad) + pad), float(vmin))
    for i in range(n):
        r, q = divmod(i, ncol)
        canvas[:, pad + r * (h + pad): pad + r * (h + pad) + h, pad + q * (w + pad): pad + q * (w + pad) + w] = x[i]
    fig = _figure(0.6 * ncol + 0.4, 0.6 * nrow + (0.8 if title else 0.4))
    ax = fig.add_subplot()
    img = canvas[0] if c == 1 else ((canvas - vmin) / (vmax - vmin)).permute(1, 2, 0)
    ax.imshow(img.numpy(), cmap="gray_r" if c == 1 else None, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return str(path)


def scatter_panels(panels: Mapping[str, Tensor], path: str | os.PathLike, *, lim: float | None = None,
                   title: str | None = None, max_points: int = 5000) -> str:
    """Save one scatter plot per (name -> (N, 2) points) side by side, on shared square axes."""
    pts = {k: v.detach().double().cpu()[:max_points] for k, v in panels.items()}
    if lim is None:
        lim = 1.05 * max(float(v.abs().quantile(0.999)) for v in pts.values())
    fig = _figure(3.0 * len(pts), 3.3)
    for i, (name, v) in enumerate(pts.items()):
        ax = fig.add_subplot(1, len(pts), i + 1)
        ax.scatter(v[:, 0].numpy(), v[:, 1].numpy(), s=1, alpha=0.4, linewidths=0)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return str(path)
