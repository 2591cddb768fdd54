"""Command-line checks shared by the ``scoresolve`` commands: one-line user errors, exit status 2.

Every command validates all its settings and its output paths *before* it writes or computes
anything, raising ``UsageError`` with one line that names the option and its valid range;
``report`` prints that line and returns 2.  Argument-parser errors (``Parser``) are one line too.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import NoReturn

__all__ = ["UsageError", "Parser", "check_int", "check_float", "check_out_dir", "check_out_file", "report"]


class UsageError(ValueError):
    """A bad command-line setting; its message is one line naming the option and the valid range."""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (no usage block) and exit with status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} -h)\n")


def report(prog: str, err: BaseException, status: int = 2) -> int:
    """Print ``err`` as one line on stderr, prefixed by ``prog``; return ``status``."""
    text = " ".join(str(err).split()) or type(err).__name__
    print(f"{prog}: error: {text}", file=sys.stderr)
    return status


def check_int(option: str, value, lo: int = 1, hi: int | None = None) -> None:
    """Raise UsageError unless ``value`` is None or an int in [lo, hi]."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise UsageError(f"{option} must be an integer {rng}, got {value!r}")


def check_float(option: str, value, lo: float = 0.0, hi: float = math.inf, *, lo_open: bool = True,
                hi_open: bool = True) -> None:
    """Raise UsageError unless ``value`` is None or a finite number in the interval (lo, hi)
    (brackets closed where ``lo_open``/``hi_open`` are False)."""
    if value is None:
        return
    ok = isinstance(value, (int, float)) and math.isfinite(value)
    ok = ok and (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)
    if not ok:
        rng = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        raise UsageError(f"{option} must be a finite number in {rng}, got {value!r}")


def _probe_dir(option: str, path: Path, folder: Path) -> None:
    """``folder`` (the nearest existing ancestor of ``path``) must be a directory we can write in."""
    if not folder.is_dir():
        raise UsageError(f"{option} {path}: {folder} is a file, not a directory")
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".scoresolve-write-probe-")
    except OSError as err:
        raise UsageError(f"{option} {path}: cannot write in {folder} ({err.strerror or err})") from None
    os.close(fd)
    os.unlink(tmp)


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_out_dir(option: str, path: str | os.PathLike | None) -> None:
    """``path`` must be a directory, or creatable as one, that we can write in (nothing is created)."""
    if path is None:
        return
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{option} {path} is an existing file; give a directory")
    _probe_dir(option, path, _nearest_existing(path))


def check_out_file(option: str, path: str | os.PathLike | None) -> None:
    """``path`` must be a file we can create or replace (its directory may not exist yet)."""
    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{option} {path} is a directory; give a file name")
    if path.exists() and not os.access(path, os.W_OK):
        raise UsageError(f"{option} {path} is not writable")
    _probe_dir(option, path, _nearest_existing(path.parent))
