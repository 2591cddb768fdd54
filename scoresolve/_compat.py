"""Old option names kept for one release: accepted with a DeprecationWarning and readable as
attributes.  Each renamed class lists its renames in ``RENAMED`` (old -> new)."""

from __future__ import annotations

import functools
import warnings

__all__ = ["renamed", "translate", "translate_kwargs"]


def translate(cls, kwargs: dict, stacklevel: int = 3) -> dict:
    """kwargs with the class's old option names replaced by the new ones (warning once per call)."""
    table = getattr(cls, "RENAMED", {})
    old = [k for k in kwargs if k in table]
    if not old:
        return kwargs
    warnings.warn(f"{cls.__name__}: option(s) {', '.join(old)} renamed to "
                  f"{', '.join(table[k] for k in old)}; the old names go away in the next release",
                  DeprecationWarning, stacklevel=stacklevel)
    out = dict(kwargs)
    for k in old:
        if table[k] in out:
            raise TypeError(f"{cls.__name__}: pass {table[k]}= only (got both {k}= and {table[k]}=)")
        out[table[k]] = out.pop(k)
    return out


def renamed(**old_to_new: str):
    """Class decorator for a dataclass whose options were renamed: the constructor takes the old
    keyword names (with a DeprecationWarning) and the old names read the new attributes."""

    def wrap(cls):
        cls.RENAMED = {**getattr(cls, "RENAMED", {}), **old_to_new}
        init = cls.__init__

        @functools.wraps(init)
        def __init__(self, *args, **kwargs):
            init(self, *args, **translate(cls, kwargs))

        cls.__init__ = __init__
        for old, new in old_to_new.items():
            if not hasattr(cls, old):
                setattr(cls, old, property(lambda self, new=new: getattr(self, new),
                                           doc=f"Deprecated alias of ``{new}``."))
        return cls

    return wrap


def translate_kwargs(fn_name: str, kwargs: dict, table: dict[str, str]) -> dict:
    """A function's old keyword names -> new ones with a DeprecationWarning; any other unknown
    keyword is a TypeError, as Python would raise."""
    unknown = [k for k in kwargs if k not in table]
    if unknown:
        raise TypeError(f"{fn_name}() got an unexpected keyword argument {unknown[0]!r}")
    warnings.warn(f"{fn_name}: argument(s) {', '.join(kwargs)} renamed to {', '.join(table[k] for k in kwargs)}; "
                  "the old names go away in the next release", DeprecationWarning, stacklevel=3)
    return {table[k]: v for k, v in kwargs.items()}
