"""The fitter registry: built-in fitters plus third-party plug-ins, looked up by name.

Fitters come from three places:

- the built-in fitters, :func:`phantomdce.fit.builtin.builtin_fitters` (source
  ``"builtin"``);
- the entry-point group ``phantomdce.fitters`` of any installed distribution (source
  ``"<distribution> <version>"``);
- a ``"module:attribute"`` spec passed to :func:`get_fitter` or :func:`resolve_fitters`
  (source ``"spec module:attribute"``), for a fitter that is not packaged. The module is
  looked up on ``sys.path`` and then in the current folder (as ``python -m`` does; the
  folder is appended to ``sys.path``, so an installed module of the same name wins). A module
  that raises while it is imported gives an :class:`ImportError` naming the spec and the
  exception's type.

An entry point or spec may name a fitter instance, a fitter class (instantiated with no
arguments), or a callable returning a fitter or a list of fitters. Every fitter must pass
:func:`phantomdce.fit.base.check_fitter`.

A plug-in that fails to load (import error, exception, object that is not a fitter) emits a
:class:`PluginWarning` and is skipped; the other fitters still load. Two fitters with the same
name are an error (:class:`DuplicateFitterError`). Discovery runs once and is cached; call
:func:`refresh` after installing or removing a plug-in in a running process.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import os
import sys
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from phantomdce.dro.config import did_you_mean
from phantomdce.fit.base import check_fitter

__all__ = [
    "ENTRY_POINT_GROUP",
    "FitterInfo",
    "PluginWarning",
    "DuplicateFitterError",
    "UnknownFitterError",
    "list_fitters",
    "get_fitter",
    "resolve_fitters",
    "refresh",
]

ENTRY_POINT_GROUP = "phantomdce.fitters"
BUILTIN_MODULE = "phantomdce.fit.builtin"


class PluginWarning(UserWarning):
    """A fitter plug-in failed to load and was skipped."""


class DuplicateFitterError(ValueError):
    """Two fitters claim the same registry name."""


class UnknownFitterError(LookupError):
    """No fitter is registered under the requested name."""

    def __str__(self) -> str:  # LookupError would show the repr of a single argument
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class FitterInfo:
    """One registered fitter and where it came from.

    Attributes
    ----------
    name : str
        Registry name of the fitter.
    version : str
        The fitter's own version.
    model : str
        Kinetic model it estimates (a key of :data:`phantomdce.params.MODELS`).
    input : str
        ``"concentration"`` or ``"signal"``.
    method : str
        Estimator family, e.g. ``"nlls"``.
    source : str
        ``"builtin"``, ``"<distribution> <version>"`` for an entry point, or
        ``"spec module:attribute"``.
    fitter : object
        The fitter instance itself.
    """

    name: str
    version: str
    model: str
    input: str
    method: str
    source: str
    fitter: Any

    @classmethod
    def from_fitter(cls, fitter: Any, source: str) -> FitterInfo:
        """Record a checked fitter instance with its source."""
        return cls(
            name=fitter.name,
            version=fitter.version,
            model=fitter.model,
            input=fitter.input,
            method=fitter.method,
            source=source,
            fitter=fitter,
        )


def _as_fitters(obj: Any) -> list[Any]:
    """Turn a loaded object (instance, class or factory) into a list of fitter candidates."""
    if isinstance(obj, type):
        return [obj()]
    if callable(getattr(obj, "fit", None)):
        return [obj]
    if callable(obj):
        made = obj()
        if isinstance(made, list | tuple):
            return list(made)
        return [made]
    return [obj]  # check_fitter will say what is wrong with it


def _checked(obj: Any, *, source: str) -> list[Any]:
    """Load candidates from ``obj`` and check each one; raise on the first bad one."""
    fitters = _as_fitters(obj)
    if not fitters:
        raise TypeError(f"{source} provided no fitters")
    for fitter in fitters:
        check_fitter(fitter, source=source)
        if ":" in fitter.name:
            raise TypeError(
                f"fitter name {fitter.name!r} (from {source}): expected a name without ':'"
                " (that form is reserved for 'module:attribute' specs)"
            )
    return fitters


def _builtin_fitters() -> list[Any]:
    """The built-in fitters, or none if :mod:`phantomdce.fit.builtin` does not exist yet."""
    try:
        from phantomdce.fit.builtin import builtin_fitters
    except ModuleNotFoundError as exc:
        if exc.name != BUILTIN_MODULE:
            raise
        return []
    return list(builtin_fitters())


def _entry_points() -> Iterable[Any]:
    return importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)


def _dist_source(ep: Any) -> str:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "unknown distribution"
    return f"{dist.name} {dist.version}"


def _add(
    registry: dict[str, FitterInfo], info: FitterInfo, where: dict[str, str], how: str
) -> None:
    if info.name in registry:
        raise DuplicateFitterError(
            f"fitter name {info.name!r} is registered twice: by {where[info.name]} and by {how};"
            " uninstall one of them or give one fitter another name"
        )
    registry[info.name] = info
    where[info.name] = how


@functools.cache
def _registry() -> dict[str, FitterInfo]:
    """Discover every fitter once (cleared by :func:`refresh`)."""
    registry: dict[str, FitterInfo] = {}
    where: dict[str, str] = {}
    for fitter in _builtin_fitters():
        check_fitter(fitter, source="builtin")  # a broken built-in is our bug: fail loudly
        _add(registry, FitterInfo.from_fitter(fitter, "builtin"), where, "builtin")
    for ep in _entry_points():
        source = _dist_source(ep)
        how = f"{source} (entry point {ep.name!r} = {ep.value!r})"
        try:
            fitters = _checked(ep.load(), source=how)
        except Exception as exc:  # any failure of a plug-in only skips it
            warnings.warn(
                f"{ENTRY_POINT_GROUP} entry point {ep.name!r} = {ep.value!r} from distribution"
                f" {source} failed to load and is skipped: {type(exc).__name__}: {exc}",
                PluginWarning,
                stacklevel=2,
            )
            continue
        for fitter in fitters:
            _add(registry, FitterInfo.from_fitter(fitter, source), where, how)
    return registry


def refresh() -> None:
    """Forget the discovered fitters; the next lookup discovers them again."""
    _registry.cache_clear()


def list_fitters() -> list[FitterInfo]:
    """Every registered fitter (built-in and entry-point plug-ins), sorted by name.

    Returns
    -------
    list of FitterInfo
        One record per fitter, with its metadata, source and instance.

    Raises
    ------
    DuplicateFitterError
        If two fitters have the same name.

    Warns
    -----
    PluginWarning
        For each plug-in that fails to load (it is skipped).

    Examples
    --------
    >>> from phantomdce.fit.registry import list_fitters
    >>> names = [info.name for info in list_fitters()]
    >>> names == sorted(names)
    True

    """
    return [info for _, info in sorted(_registry().items())]


def _top_missing(exc: ModuleNotFoundError, module_name: str) -> bool:
    """True if the spec's module (or a parent package) itself is missing."""
    return bool(exc.name) and (module_name == exc.name or module_name.startswith(exc.name + "."))


def _import_spec_module(spec: str, module_name: str) -> Any:
    """Import a spec's module; the current folder is searched too, as ``python -m`` does.

    Raises ModuleNotFoundError (the module is nowhere on the path, searched folders named)
    or ImportError naming the spec and the type of the exception the module raised.
    """
    cwd = os.getcwd()
    for attempt in (0, 1):
        try:
            return importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if not _top_missing(exc, module_name):
                raise ImportError(
                    f"fitter spec {spec!r}: importing module {module_name!r} failed with"
                    f" ModuleNotFoundError: {exc}"
                ) from None
            if attempt == 0 and cwd not in sys.path and "" not in sys.path:
                # the console script does not search the current folder; python -m does
                sys.path.append(cwd)
                importlib.invalidate_caches()
                continue
            raise ModuleNotFoundError(
                f"fitter spec {spec!r}: cannot import module {module_name!r}: it is not in"
                f" the current folder ({cwd}) nor on sys.path or PYTHONPATH; is the package"
                " installed?",
                name=exc.name,
            ) from None
        except Exception as exc:  # noqa: BLE001 - a plug-in's import may raise anything
            raise ImportError(
                f"fitter spec {spec!r}: importing module {module_name!r} failed with"
                f" {type(exc).__name__}: {exc}"
            ) from exc
    raise AssertionError("unreachable")  # pragma: no cover


def _load_spec(spec: str) -> list[FitterInfo]:
    module_name, _, attr = spec.partition(":")
    module_name, attr = module_name.strip(), attr.strip()
    if not module_name or not attr:
        raise ValueError(f"fitter spec {spec!r}: expected 'module:attribute'")
    module = _import_spec_module(spec, module_name)
    obj: Any = module
    try:
        for part in attr.split("."):
            obj = getattr(obj, part)
    except AttributeError:
        raise AttributeError(
            f"fitter spec {spec!r}: module {module_name!r} has no attribute {attr!r}"
        ) from None
    source = f"spec {module_name}:{attr}"
    infos = [FitterInfo.from_fitter(f, source) for f in _checked(obj, source=source)]
    registry = _registry()
    for info in infos:
        if info.name in registry:
            other = registry[info.name]
            if type(other.fitter) is type(info.fitter) and other.version == info.version:
                continue  # an installed plug-in named by its spec: the same fitter, not two
            raise DuplicateFitterError(
                f"duplicate fitter name {info.name!r}: from {source} and from {other.source}"
            )
    return infos


def _resolve_one(name_or_spec: str) -> list[FitterInfo]:
    if not isinstance(name_or_spec, str):
        raise TypeError(f"fitter name {name_or_spec!r}: expected a str (name or 'module:attr')")
    if ":" in name_or_spec:
        return _load_spec(name_or_spec)
    registry = _registry()
    if name_or_spec in registry:
        return [registry[name_or_spec]]
    available = sorted(registry)
    hint = did_you_mean(name_or_spec, available, n=3)
    listed = ", ".join(available) if available else "none installed"
    raise UnknownFitterError(
        f"unknown fitter {name_or_spec!r}{hint}; available fitters: {listed}"
        " (or give a 'module:attribute' spec)"
    )


def get_fitter(name_or_spec: str) -> Any:
    """The fitter registered under a name, or loaded from a ``"module:attribute"`` spec.

    Parameters
    ----------
    name_or_spec : str
        A registry name (see :func:`list_fitters` or ``phantomdce fitters``), or
        ``"module:attribute"`` naming a fitter instance, a fitter class (instantiated with
        no arguments) or a callable returning one fitter.

    Returns
    -------
    object
        The fitter instance.

    Raises
    ------
    UnknownFitterError
        If no fitter has that name; the message lists close matches and all names.
    ValueError
        If a spec provides more than one fitter (use :func:`resolve_fitters`).
    ImportError, AttributeError, TypeError
        If a spec cannot be imported or does not give a valid fitter.

    """
    infos = _resolve_one(name_or_spec)
    if len(infos) != 1:
        names = [i.name for i in infos]
        raise ValueError(
            f"fitter spec {name_or_spec!r} provides {len(infos)} fitters {names}: expected one"
            " (use resolve_fitters for a spec that provides several)"
        )
    return infos[0].fitter


def resolve_fitters(names: Sequence[str]) -> list[FitterInfo]:
    """Look up several fitters by name or spec, in the given order.

    Parameters
    ----------
    names : sequence of str
        Registry names and/or ``"module:attribute"`` specs; a spec may provide several
        fitters.

    Returns
    -------
    list of FitterInfo
        One record per fitter, in the order requested.

    Raises
    ------
    UnknownFitterError
        If a name is not registered.
    DuplicateFitterError
        If two of the requested fitters have the same name.

    """
    if isinstance(names, str):
        raise TypeError(f"names={names!r}: expected a list of fitter names, not one str")
    resolved: list[FitterInfo] = []
    seen: dict[str, FitterInfo] = {}
    for requested in names:
        for info in _resolve_one(requested):
            if info.name in seen:
                raise DuplicateFitterError(
                    f"fitter name {info.name!r} requested twice: from {seen[info.name].source}"
                    f" and from {info.source}"
                )
            seen[info.name] = info
            resolved.append(info)
    return resolved
