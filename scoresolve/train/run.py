"""Run directories: what ``scoresolve train --out DIR`` writes and ``load_run`` reads back.

    DIR/ckpt.pt      the training checkpoint (weights, EMA, optimizer, RNG states, config)
    DIR/ckpt.prev.pt the one before it (used, with a warning, when ckpt.pt is corrupt)
    DIR/config.json  the same config, human-readable, plus the command-line arguments

``load_run`` also accepts a checkpoint file written by ``fit(..., checkpoint=PATH)`` directly,
as long as the network is a reference one (``ScoreMLP``, ``UNet``) and the loss one of ours.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from ..score import ScoreFn
from ..sde import SDE
from .checkpoint import load_latest_checkpoint, previous_path
from .data import to_raw
from .losses import loss_from_config
from .nets import net_from_config

__all__ = ["Run", "load_run", "CHECKPOINT", "CONFIG"]

CHECKPOINT, CONFIG = "ckpt.pt", "config.json"


@dataclass(frozen=True)
class Run:
    """A trained model ready for the samplers.

    Attributes:
        score_fn: (x, t) -> ∇ log p_t(x), in the run's (scaled) data coordinates.
        sde: the forward SDE it was trained for.
        config: the training config (``fit``'s, with ``meta`` holding the CLI's dataset name).
        data_shape: the shape of one data item, e.g. (2,) or (1, 8, 8).
        model: the network (EMA weights unless ``load_run(ema=False)``), eval mode.
        step: training steps taken.
        path: the checkpoint file.
    """

    score_fn: ScoreFn
    sde: SDE
    config: dict
    data_shape: tuple[int, ...]
    model: nn.Module = field(repr=False, default=None)
    step: int = 0
    path: Path | None = None

    @property
    def dataset(self) -> str | None:
        """The data set name for runs made by ``scoresolve train`` (None otherwise)."""
        return self.config.get("meta", {}).get("dataset")

    def to_raw(self, x: Tensor) -> Tensor:
        """Samples back to the data set's raw coordinates (identity when the data set is unknown)."""
        return to_raw(self.dataset, x) if self.dataset else x


def _data_shape(config: dict, model: nn.Module) -> tuple[int, ...]:
    data = config.get("data", {})
    if "shape" in data:
        return tuple(data["shape"][1:])
    if "data_shape" in config.get("meta", {}):
        return tuple(config["meta"]["data_shape"])
    shape = getattr(model, "data_shape", None)
    if shape is None or None in shape:
        raise ValueError("the run does not record its data shape; pass meta={'data_shape': ...} to fit")
    return tuple(shape)


def load_run(path: str | os.PathLike, *, ema: bool = True, device: str | torch.device = "cpu") -> Run:
    """Load a run directory (or checkpoint file) for sampling.

    Args:
        path: a directory written by ``scoresolve train`` or a checkpoint file from ``fit``.
        ema: use the EMA weights (default) or the raw ones.
        device: where to put the network.

    Returns:
        Run(score_fn, sde, config, data_shape, model, step, path).  If the latest checkpoint is
        corrupt, the previous one (``ckpt.prev.pt``) is used with a warning naming the corrupt file.

    Raises:
        FileNotFoundError: no checkpoint at ``path`` (the message names it).
        ValueError: the checkpoint is empty, truncated, not a checkpoint, or not of a reference
            network (the message names the file and what is wrong).
    """
    path = Path(path)
    file = path / CHECKPOINT if path.is_dir() else path
    if not file.exists() and not previous_path(file).exists():
        what = "run directory" if path.is_dir() else "checkpoint"
        raise FileNotFoundError(f"no {what} at {path}" + (f" (no {CHECKPOINT} in it)" if path.is_dir() else ""))
    ckpt, file = load_latest_checkpoint(file, map_location=device)
    try:
        config = ckpt["config"]
        model = net_from_config(config["model"]).to(device)
        model.load_state_dict(ckpt["ema" if ema else "model"])
    except (KeyError, TypeError, RuntimeError) as err:
        raise ValueError(f"{file} is not a checkpoint of a reference network ({type(err).__name__}: {err})") from None
    model.eval().requires_grad_(False)
    loss = loss_from_config(config["loss"])
    if loss.sde is None:
        raise ValueError(f"{file} was trained without an SDE (noise-free score matching): "
                         "it has no diffusion to sample with")
    return Run(loss.score_fn(model), loss.sde, config, _data_shape(config, model), model, int(ckpt["step"]), file)
