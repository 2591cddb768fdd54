"""Results that are never lost: a JSON-lines file rewritten atomically after every cell.

Each append writes the whole file to a temporary sibling, fsyncs it and ``os.replace``-s it
over the old one, so at any instant (SIGKILL, power loss) the file on disk is either the old
complete file or the new complete file, never a torn line.  Rows carry a ``key``; a re-run
skips keys that are already present (resume).
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

__all__ = ["ResultStore", "atomic_write_bytes", "atomic_write_json", "read_json", "clean_json", "safe_name"]


def safe_name(s: str) -> str:
    """``s`` with every character outside [A-Za-z0-9_.=-] replaced by "_" (for file names)."""
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", s)


def clean_json(obj: Any) -> Any:
    """Make ``obj`` strict JSON: non-finite floats -> None, tuples -> lists."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): clean_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_json(v) for v in obj]
    return obj


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Replace ``path`` by ``data`` atomically (temp file in the same directory + os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(clean_json(obj), indent=1, sort_keys=True) + "\n").encode())


def read_json(path: str | Path, default: Any = None) -> Any:
    path = Path(path)
    if not path.exists():
        return default
    return json.loads(path.read_text())


class ResultStore:
    """Rows of one results file (``DIR/results.jsonl``).

    Args:
        path: the JSONL file (created on the first append).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._clean_temp_files()

    def _clean_temp_files(self) -> None:
        """Temp files left by a process killed mid-write hold nothing that is not in the file."""
        if self.path.parent.is_dir():
            for tmp in self.path.parent.glob(f".{self.path.name}.tmp-*"):
                tmp.unlink(missing_ok=True)

    def rows(self) -> list[dict]:
        """All rows; a line that does not parse (a file edited by hand) is skipped with a warning."""
        if not self.path.exists():
            return []
        out = []
        for i, line in enumerate(self.path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                warnings.warn(f"{self.path}:{i}: unreadable line skipped", stacklevel=2)
                continue
            if isinstance(row, dict) and "key" in row:
                out.append(row)
        return out

    def repair(self) -> int:
        """Move lines that do not parse as rows (a line torn by an editor or a copy) to
        ``NAME.unreadable`` beside the file, with a warning, and rewrite the file atomically
        without them; returns how many were moved (0: nothing is touched)."""
        if not self.path.exists():
            return 0
        lines = self.path.read_bytes().decode(errors="replace").splitlines()
        bad = [ln for ln in lines if ln.strip() and _key(ln) is None]
        if not bad:
            return 0
        aside = self.path.with_name(self.path.name + ".unreadable")
        old = aside.read_bytes() if aside.exists() else b""
        atomic_write_bytes(aside, old + "".join(f"{ln}\n" for ln in bad).encode())
        good = [ln for ln in lines if ln.strip() and _key(ln) is not None]
        atomic_write_bytes(self.path, "".join(f"{ln}\n" for ln in good).encode())
        warnings.warn(f"{self.path}: {len(bad)} unreadable line(s) moved to {aside}", stacklevel=2)
        return len(bad)

    def keys(self, *, ok_only: bool = False) -> set[str]:
        return {r["key"] for r in self.rows() if not ok_only or r.get("status") == "ok"}

    def append(self, row: dict, *, replace: bool = False) -> None:
        """Add ``row`` (strict JSON, one line); with ``replace`` an older row of the same key is
        dropped (used to retry failed cells)."""
        line = json.dumps(clean_json(row), sort_keys=True, allow_nan=False)
        old = self.path.read_bytes() if self.path.exists() else b""
        if replace:
            kept = [ln for ln in old.decode().splitlines() if ln.strip() and _key(ln) != row["key"]]
            old = ("\n".join(kept) + "\n").encode() if kept else b""
        elif old and not old.endswith(b"\n"):
            old += b"\n"
        atomic_write_bytes(self.path, old + line.encode() + b"\n")

    def extend(self, rows: list[dict]) -> None:
        """Add ``rows`` in one atomic rewrite; an older row of the same key is dropped (the
        lines kept are copied byte for byte)."""
        keys = {r["key"] for r in rows}
        old = self.path.read_text().splitlines() if self.path.exists() else []
        kept = [ln for ln in old if ln.strip() and _key(ln) not in keys]
        new = [json.dumps(clean_json(r), sort_keys=True, allow_nan=False) for r in rows]
        atomic_write_bytes(self.path, "".join(f"{ln}\n" for ln in kept + new).encode())


def _key(line: str) -> str | None:
    try:
        return json.loads(line).get("key")
    except (json.JSONDecodeError, AttributeError, UnicodeDecodeError):
        return None
