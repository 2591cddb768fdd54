"""``fit``: train a score network with any loss here, with EMA, warm-up, clipping and exact resume.

One optimisation step: draw a batch (data generator), evaluate the loss (loss generator: times
and noise), back-propagate, clip the gradient norm, set the warm-up learning rate
lr · min(1, (k+1)/warmup), take an Adam step, update the EMA of the weights.  Everything that
step k+1 depends on — weights, EMA, Adam moments, both generators, torch's global RNG, the step
counter — is in the checkpoint, so a resumed run is bit-for-bit the uninterrupted one on CPU
(and the learning-rate schedule does not depend on ``steps``, so a run can also be extended).

Reference: Song et al. 2021, Appendix H (Adam, lr 2e-4, warm-up 5000, clip 1, EMA 0.999/0.9999);
Kingma & Ba 2015 (Adam).
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..score import ScoreFn
from .checkpoint import ConfigMismatchError, config_diff, load_latest_checkpoint, previous_path, save_checkpoint
from .nets import net_config

__all__ = ["fit", "TrainState", "ConfigMismatchError"]

Data = Tensor | Callable[[int, torch.Generator], Tensor]


@dataclass(frozen=True)
class TrainState:
    """What ``fit`` returns.

    Attributes:
        model: the trained network (in training mode).
        ema: the exponential moving average of its weights (eval mode, no grad).
        optimizer: the Adam optimizer (with its moments).
        loss: the loss it was trained with (it knows the parameterization).
        step: optimisation steps taken in total (across resumes).
        config: everything that defines the run (compared on resume).
        history: [(step, mean loss since the previous entry)], one entry every ``log_every`` steps
            and one where a call reaches ``steps`` (a resumed run continues the same windows).
        resumed_from: the checkpoint step this call started from (None for a fresh run).
    """

    model: nn.Module
    ema: nn.Module
    optimizer: torch.optim.Optimizer
    loss: Callable
    step: int
    config: dict
    history: list = field(default_factory=list)
    resumed_from: int | None = None

    def score_fn(self, ema: bool = True) -> ScoreFn:
        """score_fn(x, t) for ``scoresolve.sample``, from the EMA weights (default) or the raw ones."""
        return self.loss.score_fn(self.ema if ema else self.model)


def _jsonable(d: dict) -> dict:
    return json.loads(json.dumps(d))


def _fmt_shape(shape) -> str:
    return "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"


def _check_batch(x, model: nn.Module, what: str) -> None:
    if not isinstance(x, Tensor) or not x.is_floating_point():
        got = x.dtype if isinstance(x, Tensor) else type(x).__name__
        raise TypeError(f"data must be a floating-point tensor (N, ...) or a callable (n, generator) -> "
                        f"tensor; {what} is {got}")
    if x.ndim < 2 or x.shape[0] < 1:
        raise ValueError(f"data must have shape (N, *item_shape) with N >= 1; {what} has shape {tuple(x.shape)}")
    want = getattr(model, "data_shape", None)
    got = tuple(x.shape[1:])
    if want is not None and (len(want) != len(got) or any(w not in (None, g) for w, g in zip(want, got))):
        raise ValueError(f"data items have shape {got} but the model {type(model).__name__} expects items of "
                         f"shape {_fmt_shape(want)} (wrong dimension: check data= and the model's size)")
    bad = int((~torch.isfinite(x)).sum())
    if bad:
        raise ValueError(f"data contains {bad} non-finite values (NaN/Inf) in {what}; clean or drop those rows")


class _Batches:
    """Mini-batches drawn with replacement from a tensor, or from a sampler callable, using one
    generator whose state goes into the checkpoint."""

    def __init__(self, data: Data, model: nn.Module, batch_size: int, seed: int, device, dtype):
        self.data, self.batch_size, self.device, self.dtype = data, batch_size, device, dtype
        if isinstance(data, Tensor):
            _check_batch(data, model, "data")
            self.gen = torch.Generator(data.device).manual_seed(seed + 1)
            # numpy's pairwise sums: torch's depend on the thread count, and a resumed run may have another
            d64 = data.detach().to("cpu", torch.float64).numpy()
            self.fingerprint = {"kind": "tensor", "shape": list(data.shape), "dtype": str(data.dtype),
                                "sum": float(d64.sum()), "sum_sq": float((d64 * d64).sum())}
        elif callable(data):
            self.gen = torch.Generator(device).manual_seed(seed + 1)
            self.fingerprint = {"kind": "callable",
                                "name": getattr(data, "__qualname__", type(data).__qualname__)}
        else:
            raise TypeError(f"data must be a tensor (N, ...) or a callable (n, generator) -> tensor, "
                            f"got {type(data).__name__}")
        self.model, self.checked = model, isinstance(data, Tensor)

    def __call__(self) -> Tensor:
        if isinstance(self.data, Tensor):
            idx = torch.randint(self.data.shape[0], (self.batch_size,), generator=self.gen, device=self.data.device)
            x = self.data[idx]
        else:
            x = self.data(self.batch_size, self.gen)
            if not self.checked:  # a sampler's first batch stands for the rest
                _check_batch(x, self.model, "the first batch drawn from data")
                self.checked = True
        return x.to(device=self.device, dtype=self.dtype)


@torch.no_grad()
def _ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p, 1.0 - decay)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)


def _rng_state(loss_gen, data_gen) -> dict:
    out = {"loss": loss_gen.get_state(), "data": data_gen.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def _set_rng_state(state: dict, loss_gen, data_gen) -> None:
    loss_gen.set_state(state["loss"])
    data_gen.set_state(state["data"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _check_options(steps, batch_size, lr, warmup, grad_clip, ema, checkpoint_every, log_every, time_limit) -> None:
    ints = dict(steps=(steps, 0), batch_size=(batch_size, 1), warmup=(warmup, 0),
                checkpoint_every=(checkpoint_every, 1), log_every=(log_every, 1))
    for name, (v, lo) in ints.items():
        if not isinstance(v, int) or isinstance(v, bool) or v < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    if grad_clip is not None and not grad_clip > 0:
        raise ValueError(f"grad_clip must be > 0 or None, got {grad_clip!r}")
    if not 0 <= ema < 1:
        raise ValueError(f"ema (the EMA decay) must lie in [0, 1), got {ema!r}")
    if time_limit is not None and not time_limit > 0:
        raise ValueError(f"time_limit must be > 0 seconds or None, got {time_limit!r}")


def fit(
    model: nn.Module, loss_fn: Callable, data: Data, *, steps: int, batch_size: int = 256,
    lr: float = 1e-3, warmup: int = 100, grad_clip: float | None = 1.0, ema: float = 0.999,
    seed: int = 0, checkpoint: str | os.PathLike | None = None, checkpoint_every: int = 1000,
    resume: bool = True, progress: bool = True, log_every: int = 100,
    callback: Callable[[int, float], None] | None = None, meta: dict | None = None,
    time_limit: float | None = None,
) -> TrainState:
    """Train ``model`` on ``data`` by minimising ``loss_fn`` for ``steps`` optimisation steps in total.

    Args:
        model: network (x, t) -> tensor like x, e.g. ``ScoreMLP(dim=2)`` or ``UNet()``; trained in place.
        loss_fn: ``loss(model, x0, generator) -> scalar`` with ``.score_fn(model)``, e.g. ``dsm_loss(sde)``.
        data: a tensor (N, *item_shape) (batches drawn uniformly with replacement), or a callable
            (n, generator) -> tensor of n fresh samples.  Used as given: no rescaling.
        steps: total optimisation steps (a resumed run continues up to this count).
        batch_size, lr: Adam's batch and peak learning rate.
        warmup: steps of linear learning-rate warm-up (0: none).
        grad_clip: max global gradient norm (None: no clipping).
        ema: EMA decay of the weights; the effective decay at update k is min(ema, (1+k)/(10+k)).
        seed: seeds the loss generator (times, noise) and the data generator (seed + 1).
        checkpoint: file path; written every ``checkpoint_every`` steps and at the end, atomically
            and verified; the one before is kept as ``NAME.prev.EXT``.
        resume: continue from ``checkpoint`` if it exists (its config must match this call's); if it
            is corrupt, from the previous one (with a warning naming the corrupt file, which is
            renamed to ``NAME.EXT.corrupt``).
        progress: tqdm bar with the running loss.
        log_every: steps per ``history`` entry.
        callback: called as callback(step, loss) after every step.
        meta: extra JSON-able facts stored in (and compared with) the config, e.g. the data set name.
        time_limit: stop after this many seconds of wall time (this call's), writing the checkpoint;
            ``state.step`` says where, and a later call resumes exactly.

    Returns:
        TrainState(model, ema, optimizer, loss, step, config, history, resumed_from).

    Raises:
        ValueError naming the argument (bad data: NaN, wrong shape; bad options);
        ConfigMismatchError listing the differing keys when the checkpoint is from another config;
        FloatingPointError when the loss becomes NaN/Inf (with the step).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not callable(loss_fn) or not hasattr(loss_fn, "score_fn"):
        raise TypeError("loss_fn must be a loss from scoresolve.train (dsm_loss, ncsn_loss, ddpm_loss, ssm_loss) "
                        f"or a callable with a score_fn(model) method; got {type(loss_fn).__name__}")
    _check_options(steps, batch_size, lr, warmup, grad_clip, ema, checkpoint_every, log_every, time_limit)
    param = next(model.parameters(), None)
    if param is None:
        raise ValueError("model has no parameters to train")
    device, dtype = param.device, param.dtype
    batches = _Batches(data, model, batch_size, seed, device, dtype)
    loss_cfg = loss_fn.config() if hasattr(loss_fn, "config") else {"name": type(loss_fn).__qualname__}
    config = _jsonable({
        "model": net_config(model), "loss": loss_cfg, "data": batches.fingerprint,
        "optimizer": {"name": "adam", "lr": lr, "betas": [0.9, 0.999], "warmup": warmup, "grad_clip": grad_clip},
        "batch_size": batch_size, "ema": ema, "seed": seed, "meta": meta or {},
    })

    model.train()
    ema_model = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.999))
    loss_gen = torch.Generator(device).manual_seed(seed)
    step, history, window, resumed_from = 0, [], [], None
    path = Path(checkpoint) if checkpoint is not None else None
    if path is not None and resume and (path.exists() or previous_path(path).exists()):
        ckpt, _ = load_latest_checkpoint(path, map_location=device, set_aside=True)
        diff = config_diff(ckpt["config"], config)
        if diff:
            raise ConfigMismatchError(
                f"checkpoint {path} was written by a run with a different config; differing keys:\n  "
                + "\n  ".join(diff) + "\n(use another checkpoint path, or resume=False to start over)")
        model.load_state_dict(ckpt["model"])
        ema_model.load_state_dict(ckpt["ema"])
        opt.load_state_dict(ckpt["optimizer"])
        _set_rng_state(ckpt["rng"], loss_gen, batches.gen)
        step = resumed_from = int(ckpt["step"])
        history = [tuple(h) for h in ckpt["history"]]
        window = list(ckpt["window"])

    def save() -> None:
        save_checkpoint(path, {"step": step, "model": model.state_dict(), "ema": ema_model.state_dict(),
                               "optimizer": opt.state_dict(), "rng": _rng_state(loss_gen, batches.gen),
                               "config": config, "history": [list(h) for h in history], "window": window})

    deadline = None if time_limit is None else time.monotonic() + time_limit
    bar = tqdm(total=steps, initial=min(step, steps), desc="train", disable=not progress, dynamic_ncols=True)
    while step < steps:
        x0 = batches()
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / warmup) if warmup else lr
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model, x0, loss_gen)
        loss.backward()
        if grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        _ema_update(ema_model, model, min(ema, (1 + step) / (10 + step)))
        step += 1
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"the loss became {value} at step {step}; lower lr (={lr}) or check the data")
        window.append(value)
        if step % log_every == 0 or step == steps:
            history.append((step, sum(window) / len(window)))
            bar.set_postfix(loss=f"{history[-1][1]:.4g}")
            window = []
        out_of_time = deadline is not None and time.monotonic() >= deadline
        if path is not None and (step % checkpoint_every == 0 or step == steps or out_of_time):
            save()
        bar.update(1)
        if callback is not None:
            callback(step, value)
        if out_of_time:
            break
    bar.close()
    return TrainState(model, ema_model, opt, loss_fn, step, config, history, resumed_from)
