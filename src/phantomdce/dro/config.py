"""Validation helpers shared by protocols and scenarios.

Every error names the key path (``protocol.dt``), the value, and what was expected, and
is raised before anything is written.
"""

from __future__ import annotations

import difflib
import math
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = [
    "ConfigError",
    "did_you_mean",
    "unknown_key",
    "as_float",
    "as_int",
    "as_str",
    "as_bool",
    "as_floats",
    "read_toml",
]


class ConfigError(ValueError):
    """A scenario or protocol value is invalid; the message names its key path."""


def read_toml(path: str | Path) -> dict[str, Any]:
    """The parsed content of a TOML file.

    Raises
    ------
    ConfigError
        The file is not valid TOML (the message names the file and the parser's reason).
    FileNotFoundError
        The file does not exist.
    """
    path = Path(path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def did_you_mean(name: str, known: Iterable[str], *, n: int = 1) -> str:
    """The suggestion every "unknown name" message of the package appends.

    Parameters
    ----------
    name : str
        The name that was not recognised.
    known : iterable of str
        The names that would have been.
    n : int
        At most this many suggestions (close matches, best first).

    Returns
    -------
    str
        ``" (did you mean 'dt'?)"``, ``" (did you mean 'a', 'b'?)"`` or ``""`` if nothing is
        close.

    Examples
    --------
    >>> did_you_mean("dtt", ["dt", "snr"])
    " (did you mean 'dt'?)"
    """
    close = difflib.get_close_matches(name, sorted(known), n=n)
    return f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""


def unknown_key(path: str, key: str, allowed: Iterable[str]) -> ConfigError:
    """Error for a key that is not recognised, with a close-match suggestion."""
    allowed = sorted(allowed)
    did = did_you_mean(key, allowed)
    where = f"{path}.{key}" if path else key
    return ConfigError(f"unknown key {where!r}{did}: expected one of {allowed}")


def _fail(path: str, value: Any, expected: str) -> ConfigError:
    return ConfigError(f"{path} = {value!r}: expected {expected}")


def as_float(
    path: str,
    value: Any,
    *,
    units: str = "",
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
    allow_inf: bool = False,
) -> float:
    """Validate a real number in a range; bools and strings are refused."""
    u = f" ({units})" if units else ""
    lo_s = "" if lo is None else (f"> {lo}" if lo_open else f">= {lo}")
    hi_s = "" if hi is None else (f"< {hi}" if hi_open else f"<= {hi}")
    rng = " and ".join(s for s in (lo_s, hi_s) if s)
    kind = "a number (inf allowed)" if allow_inf else "a finite number"
    expected = kind + (f" {rng}" if rng else "") + u
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(path, value, expected)
    v = float(value)
    if math.isnan(v) or (math.isinf(v) and not allow_inf):
        raise _fail(path, value, expected)
    if lo is not None and (v <= lo if lo_open else v < lo):
        raise _fail(path, value, expected)
    if hi is not None and (v >= hi if hi_open else v > hi):
        raise _fail(path, value, expected)
    return v


def as_int(path: str, value: Any, *, lo: int | None = None, hi: int | None = None) -> int:
    """Validate an integer in a range (a float with an integral value is refused)."""
    rng = " and ".join(
        s for s in (f">= {lo}" if lo is not None else "", f"<= {hi}" if hi is not None else "") if s
    )
    expected = "an integer" + (f" {rng}" if rng else "")
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(path, value, expected)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise _fail(path, value, expected)
    return int(value)


def as_str(path: str, value: Any, *, choices: Iterable[str] | None = None) -> str:
    """Validate a string, optionally one of ``choices``."""
    if choices is not None:
        choices = sorted(choices)
        if not isinstance(value, str) or value not in choices:
            raise _fail(path, value, f"one of {choices}")
    elif not isinstance(value, str) or not value:
        raise _fail(path, value, "a non-empty string")
    return value


def as_bool(path: str, value: Any) -> bool:
    """Validate a boolean."""
    if not isinstance(value, bool):
        raise _fail(path, value, "true or false")
    return value


def as_floats(path: str, value: Any, *, min_len: int = 1, **kw: Any) -> tuple[float, ...]:
    """Validate a non-empty list of numbers, each checked like :func:`as_float`."""
    if not isinstance(value, list | tuple) or len(value) < min_len:
        raise _fail(path, value, f"a list of at least {min_len} numbers")
    return tuple(as_float(f"{path}[{i}]", v, **kw) for i, v in enumerate(value))
