"""Validation helpers shared by protocols and scenarios.

Every error names the key path (``protocol.dt``), the value, and what was expected, and
is raised before anything is written.
"""

from __future__ import annotations

import difflib
import json
import math
import numbers
import re
import tomllib
from collections.abc import Iterable, Mapping
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
    "parse_toml",
    "read_toml",
    "toml_text",
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
    return parse_toml(path.read_text(encoding="utf-8"), source=str(path))


def parse_toml(text: str, *, source: str) -> dict[str, Any]:
    """TOML text parsed, with a :class:`ConfigError` that names where it came from.

    Parameters
    ----------
    text : str
        The TOML text.
    source : str
        Where it came from, for the message (a path, or e.g. ``"--space FILE"``).

    Raises
    ------
    ConfigError
        The text is not valid TOML: ``"<source>: not valid TOML: <the parser's reason>"``.

    Examples
    --------
    >>> parse_toml("dt = 5.0", source="s.toml")
    {'dt': 5.0}
    """
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None


def _toml_value(path: str, v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, numbers.Integral):
        return str(int(v))
    if isinstance(v, numbers.Real):
        v = float(v)
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a TOML basic string (JSON escapes are TOML escapes)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(path, x) for x in v) + "]"
    raise ConfigError(
        f"{path} = {v!r}: cannot be written as TOML (expected a number, string or list)"
    )


def _toml_key(key: Any) -> str:
    """A bare key where TOML allows one (letters, digits, ``_``, ``-``), else a quoted one."""
    key = str(key)
    return key if _BARE_KEY.fullmatch(key) else json.dumps(key)


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _toml_table(prefix: str, table: Mapping[str, Any], lines: list[str]) -> None:
    subtables = []
    for key, value in table.items():
        if isinstance(value, Mapping):
            subtables.append((key, value))
        else:
            lines.append(f"{_toml_key(key)} = {_toml_value(prefix + key, value)}")
    for key, value in subtables:
        name = f"{prefix}{_toml_key(key)}"
        lines.append("")
        lines.append(f"[{name}]")
        _toml_table(name + ".", value, lines)


def toml_text(data: Mapping[str, Any]) -> str:
    """A mapping of numbers, strings, lists and (nested) tables as TOML text.

    Keys are bare where TOML allows it and quoted otherwise, so a key such as
    ``"scanner.fa"`` stays one key; numpy scalars are written as numbers.
    :func:`tomllib.loads` of the text gives ``data`` back.

    Raises
    ------
    ConfigError
        A value TOML cannot hold (the message names its key path).

    Examples
    --------
    >>> print(toml_text({"name": "a", "sweep": {"scanner.fa": [5.0, 10.0]}}), end="")
    name = "a"
    <BLANKLINE>
    [sweep]
    "scanner.fa" = [5.0, 10.0]
    """
    lines: list[str] = []
    _toml_table("", data, lines)
    return "\n".join(lines).strip("\n") + "\n"


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
