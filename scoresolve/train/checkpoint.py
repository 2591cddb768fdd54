"""Checkpoint files: written atomically, verified, kept two deep, read safely, compared by config.

A checkpoint is written to a temporary file in the same directory, flushed to disk, read back
(so a short write or a full disk is caught before anything is replaced), and renamed over the
old one (``os.replace`` is atomic on POSIX and Windows); the old one is kept first as
``NAME.prev.EXT`` (a hard link, so ``NAME.EXT`` exists at every instant).  A run killed at any
moment leaves the previous checkpoint or the new one, never a torn file; a file torn by other
means (a copy, a disk fault) is reported by name, and ``load_latest_checkpoint`` then falls
back to the previous one, losing at most one checkpoint interval.
"""

from __future__ import annotations

import math
import os
import pickle
import shutil
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["save_checkpoint", "load_checkpoint", "load_latest_checkpoint", "previous_path", "config_diff",
           "ConfigMismatchError", "CorruptCheckpointError", "FORMAT"]

FORMAT = "scoresolve.train/1"


class ConfigMismatchError(ValueError):
    """A checkpoint was written by a run with a different configuration."""


class CorruptCheckpointError(ValueError):
    """A checkpoint file is empty, truncated or not a checkpoint at all."""


def previous_path(path: str | os.PathLike) -> Path:
    """Where the checkpoint before ``path`` is kept: ``ckpt.pt`` -> ``ckpt.prev.pt``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def _fsync_dir(folder: Path) -> None:
    if hasattr(os, "O_DIRECTORY"):  # make a rename itself durable
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _keep_previous(path: Path) -> None:
    """Make ``previous_path(path)`` a copy of ``path`` (a hard link where possible), atomically."""
    prev = previous_path(path)
    tmp = prev.with_name(f".{prev.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        os.link(path, tmp)
    except OSError:  # no hard links on this file system
        shutil.copyfile(path, tmp)
    os.replace(tmp, prev)


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """torch.save ``payload`` to ``path`` atomically, verified, keeping the previous file.

    Args:
        path: the checkpoint file; its current content (if any) moves to ``previous_path(path)``.
        payload: tensors and plain Python (read back with ``weights_only=True``).

    Returns:
        ``path``.

    Raises:
        OSError: the written file did not read back (the old checkpoints are left as they were).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save({"format": FORMAT, **payload}, f)
            f.flush()
            os.fsync(f.fileno())
        try:
            _read(tmp, "cpu")
        except CorruptCheckpointError as err:
            raise OSError(f"checkpoint {path} did not read back after writing ({err}); "
                          "the previous checkpoints were kept") from None
        if path.exists():
            _keep_previous(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)
    return path


def _read(path: Path, map_location: Any) -> dict[str, Any]:
    """torch.load with every way a file can be damaged reported as CorruptCheckpointError."""
    size = path.stat().st_size
    if size == 0:
        raise CorruptCheckpointError(f"checkpoint {path} is empty (0 bytes)")
    try:
        with warnings.catch_warnings():  # garbage bytes may look like an unknown pickle protocol
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, KeyError,
            IndexError, AttributeError, UnicodeDecodeError) as err:  # torn zips raise OSError(EINVAL) too
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CorruptCheckpointError(f"checkpoint {path} is corrupt or truncated ({size} bytes): {msg}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CorruptCheckpointError(f"{path} is not a scoresolve training checkpoint (format {FORMAT!r})")
    return ckpt


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by ``save_checkpoint`` (tensors and plain Python only).

    Raises:
        FileNotFoundError: nothing at ``path``.
        CorruptCheckpointError: (a ValueError) the file is empty, truncated or not a checkpoint;
            the message names the file.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "ckpt.pt"
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    return _read(path, map_location)


def load_latest_checkpoint(path: str | os.PathLike, map_location: Any = "cpu", *,
                           set_aside: bool = False) -> tuple[dict[str, Any], Path]:
    """The newest readable checkpoint of ``path`` and its file: ``path`` itself, or, if that is
    missing or corrupt, ``previous_path(path)`` (with a warning naming the corrupt file).

    Args:
        path: the checkpoint file (or a run directory holding ``ckpt.pt``).
        map_location: as for ``torch.load``.
        set_aside: rename a corrupt ``path`` to ``NAME.corrupt`` so the next save keeps the good
            previous checkpoint (a resuming trainer does this; readers leave files alone).

    Raises:
        FileNotFoundError: neither file exists.
        CorruptCheckpointError: no readable checkpoint (every file tried is named).
    """
    path = Path(path)
    if path.is_dir():
        path = path / "ckpt.pt"
    prev = previous_path(path)
    try:
        return load_checkpoint(path, map_location), path
    except (CorruptCheckpointError, FileNotFoundError) as err:
        if not prev.exists():
            raise
        first = err
    try:
        ckpt = _read(prev, map_location)
    except CorruptCheckpointError as err:
        raise CorruptCheckpointError(f"{first}; the previous one is unreadable too: {err}") from None
    if set_aside and path.exists():
        os.replace(path, path.with_name(path.name + ".corrupt"))
    warnings.warn(f"{first}; using the previous checkpoint {prev} (step {ckpt.get('step')})", stacklevel=2)
    return ckpt, prev


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _same(a: Any, b: Any) -> bool:
    """Equal, floats within 1e-9 relative (a data fingerprint's sum moves in its last digits with
    the summation order, e.g. across machines)."""
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9)
    return a == b


def config_diff(saved: dict, current: dict) -> list[str]:
    """Lines "key: saved -> current" for every (dotted) key whose value differs."""
    a, b = _flatten(saved), _flatten(current)
    return [f"{k}: {a.get(k, '<missing>')!r} (checkpoint) vs {b.get(k, '<missing>')!r} (now)"
            for k in sorted(set(a) | set(b)) if not _same(a.get(k, "<missing>"), b.get(k, "<missing>"))]
