"""Sampler options with their valid range declared beside the default, checked in one place.

``option(0.0, within="[0, 1]")`` is a dataclass field; ``check_options(obj)`` (called by
``SamplerBase.__post_init__``) raises a ValueError naming the option and its valid range or
choices for every declared option that is out of bounds.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

__all__ = ["option", "check_options"]


def option(default: Any, *, within: str | None = None, choices: tuple | None = None, integer: bool = False,
           allow_none: bool = False):
    """A dataclass field with a declared valid range (``within``: an interval such as "[0, 1]",
    "(0, inf)"), a set of ``choices``, or an ``integer`` requirement."""
    return dataclasses.field(default=default, metadata={"within": within, "choices": choices, "integer": integer,
                                                        "allow_none": allow_none})


def _describe(within: str, integer: bool) -> str:
    lo, hi = (s.strip() for s in within[1:-1].split(","))
    kind = "an integer " if integer else ""
    if hi == "inf":
        return f"{kind}{'>=' if within[0] == '[' else '>'} {lo}"
    return f"{kind}in {within}" if integer else f"in {within}"


def _inside(v: float, within: str) -> bool:
    lo, hi = (float(s.strip()) for s in within[1:-1].split(","))
    above = v >= lo if within[0] == "[" else v > lo
    below = v <= hi if within[-1] == "]" else v < hi
    return above and below


def check_options(obj: Any) -> None:
    """Raise ValueError for the first option of the dataclass ``obj`` outside its declared range."""
    for f in dataclasses.fields(obj):
        meta, v = f.metadata, getattr(obj, f.name)
        if not meta or (v is None and meta.get("allow_none")):
            continue
        if meta.get("choices") is not None and v not in meta["choices"]:
            valid = ", ".join(map(repr, meta["choices"]))
            raise ValueError(f"{f.name} must be one of {valid}; got {v!r}")
        within, integer = meta.get("within"), meta.get("integer")
        if within is None and not integer:
            continue
        is_int = isinstance(v, int) and not isinstance(v, bool)
        is_real = is_int or isinstance(v, float)
        ok = (is_int if integer else is_real) and (within is None or (math.isfinite(v) or "inf" in within)
                                                   and _inside(float(v), within))
        if not ok:
            what = _describe(within, integer) if within else "an integer"
            verb = "be" if what.startswith(("an", ">", "<")) else "lie"
            raise ValueError(f"{f.name} must {verb} {what}; got {v!r}")
