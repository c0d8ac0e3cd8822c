"""Scenario files: a base protocol, a tissue grid and sweep axes, in TOML.

Example::

    name = "quick"
    seed = 20221
    replicates = 50

    [protocol]
    preset = "esnr2022"
    snr = 20.0

    [tissue]
    model = "extended_tofts"
    Ktrans = [0.05, 0.1, 0.2, 0.4]   # /min
    ve = [0.1, 0.3, 0.5]
    vp = [0.02, 0.05]

    [sweep]
    dt = [2.0, 5.0, 10.0]            # s

The simulator expands the Cartesian product of the sweep axes into cases (in the order the
axes are written); each case has every combination of tissue values times ``replicates``
noise replicates as its voxels.

A ``[scanner]`` table (:mod:`phantomdce.scanner`) describes the acquisition instead: matrix,
field of view, slab, TR, flip angle, parallel imaging, partial Fourier, averages, bandwidth
and the SNR the site measured on a reference protocol. It sets the protocol keys of
:data:`phantomdce.scanner.PROTOCOL_KEYS_SET` (frame time, SNR, ...), which ``[protocol]`` and
``[sweep]`` may then not give; ``[sweep]`` may name scanner keys as ``"scanner.<key>"``, so
that frame time, voxel size and SNR move together::

    [scanner]
    matrix = [192, 192]
    fov_mm = [240.0, 240.0]
    slices = 40
    slice_thickness_mm = 3.0
    tr = 0.004                       # s
    fa = 15.0                        # deg
    partial_fourier = 0.75
    reference_snr = 25.0             # measured at this protocol with parallel_factor = 2
    reference = { parallel_factor = 2.0 }

    [sweep]
    "scanner.parallel_factor" = [2.0, 3.0, 4.0]

Each case then records its derived frame time, voxel size, SNR, VFA noise ratio and scan time
(:attr:`Case.derived`, and columns of the store's ``cases`` table).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from phantomdce.dro.config import (
    ConfigError,
    as_floats,
    as_int,
    as_str,
    read_toml,
    unknown_key,
)
from phantomdce.dro.protocol import PROTOCOL_FIELDS, Protocol, preset
from phantomdce.params import MODELS, PARAMETERS
from phantomdce.scanner import (
    DERIVED_UNITS,
    PROTOCOL_KEYS_SET,
    SCANNER_FIELDS,
    Derived,
    Scanner,
)

__all__ = [
    "Scenario",
    "Case",
    "TissueGrid",
    "load_scenario",
    "parse_scenario",
    "scanner_columns",
]

TOP_KEYS = (
    "name",
    "description",
    "seed",
    "replicates",
    "protocol",
    "scanner",
    "tissue",
    "sweep",
    "zip",
    "fit",
    "recommendation",
)
TISSUE_EXTRA = ("T10", "m0")
#: Prefix of the sweep keys that change the ``[scanner]`` table.
SCANNER_PREFIX = "scanner."
#: Scanner keys a sweep may not change: the site's measurement is fixed.
UNSWEPT_SCANNER_KEYS = ("reference",)


@dataclass(frozen=True)
class TissueGrid:
    """Tissue values: each key maps to one or more values; voxels take every combination.

    Attributes
    ----------
    model : str
        Kinetic model of the tissue (see :data:`phantomdce.params.MODELS`).
    axes : dict of str to tuple of float
        Parameter values in package units (Ktrans and ps in /min, fp in mL/100mL/min,
        ve and vp 0-1, T10 in s, m0 arbitrary units). ``T10`` absent means "the native T1
        of tumour at the case's field strength".

    """

    model: str
    axes: dict[str, tuple[float, ...]]

    @property
    def size(self) -> int:
        """Number of distinct tissues (product of the axis lengths)."""
        return int(np.prod([len(v) for v in self.axes.values()], dtype=np.int64))

    def table(self, protocol: Protocol) -> dict[str, np.ndarray]:
        """Every combination of values, one array per key, length :attr:`size`.

        ``T10`` defaults to the tumour native T1 at the protocol's field strength and
        ``m0`` to 1000 (arbitrary units).
        """
        axes = dict(self.axes)
        if "T10" not in axes:
            from phantomdce.signal import native_t1

            axes["T10"] = (float(native_t1("tumour", protocol.field_strength)),)
        axes.setdefault("m0", (1000.0,))
        keys = list(axes)
        grids = np.meshgrid(*[np.asarray(axes[k], dtype=np.float64) for k in keys], indexing="ij")
        return {k: g.ravel() for k, g in zip(keys, grids, strict=True)}


@dataclass(frozen=True)
class Case:
    """One point of the sweep: its index, the swept values and the full protocol.

    ``scanner`` is the case's scanner when the scenario has a ``[scanner]`` table (its swept
    ``"scanner.<key>"`` values applied), else None.
    """

    index: int
    values: dict[str, Any]
    protocol: Protocol
    scanner: Scanner | None = field(default=None, kw_only=True)

    @property
    def name(self) -> str:
        """Node name in the DRO store, ``case_0000``."""
        return f"case_{self.index:04d}"

    @property
    def derived(self) -> Derived | None:
        """Frame time, voxel, SNR, VFA noise and time the case's scanner implies (or None)."""
        return None if self.scanner is None else self.scanner.derive()

    def scanner_attrs(self) -> dict[str, Any]:
        """What the scanner implies for this case, for storage (empty without a scanner).

        Keys carry their units: :meth:`phantomdce.scanner.Derived.as_attrs` plus
        ``scan_time_s``, the dynamic series' duration plus the VFA acquisition time, s.
        """
        d = self.derived
        if d is None:
            return {}
        return {**d.as_attrs(), "scan_time_s": self.protocol.duration + d.vfa_time_s}


@dataclass(frozen=True)
class Scenario:
    """A validated scenario. Build it with :func:`load_scenario` or :func:`parse_scenario`."""

    name: str
    description: str
    seed: int
    replicates: int
    protocol: Protocol
    tissue: TissueGrid
    sweep: dict[str, tuple[Any, ...]]
    source: dict[str, Any]
    fit: dict[str, Any] = field(default_factory=dict)
    zip: tuple[tuple[str, ...], ...] = ()
    recommendation: dict[str, Any] = field(default_factory=dict)
    scanner: Scanner | None = None

    @property
    def hash(self) -> str:
        """SHA-256 (first 16 hex digits) of the canonical DRO content.

        The ``[fit]`` table does not change the DRO and is not part of it.
        """
        blob = json.dumps(self.source, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def sweep_units(self) -> dict[str, str]:
        """Units of each sweep key (protocol keys, and ``"scanner.<key>"``)."""
        units = {**self.protocol.units()}
        units.update({SCANNER_PREFIX + k: u for k, u in Scanner.units().items()})
        return {k: units[k] for k in self.sweep}

    @property
    def n_voxels(self) -> int:
        """Voxels per case: distinct tissues times replicates."""
        return self.tissue.size * self.replicates

    def axes(self) -> list[tuple[str, ...]]:
        """Sweep axes in order: a linked ``zip`` group is one axis of several keys."""
        linked = {k: g for g in self.zip for k in g}
        axes: list[tuple[str, ...]] = []
        for key in self.sweep:
            group = linked.get(key, (key,))
            if group not in axes:
                axes.append(group)
        return axes

    def cases(self) -> list[Case]:
        """Expand the Cartesian product of the sweep axes into checked cases.

        Keys linked by ``zip`` advance together (their lists have the same length). Every
        case must leave a window after the bolus arrival that a fit can use (see
        :meth:`Protocol.check_post_bolus_window`); the error names the case.
        """
        axes = self.axes()
        columns = [list(zip(*[self.sweep[k] for k in group], strict=True)) for group in axes]
        out = []
        for i, combo in enumerate(itertools.product(*columns)):
            values = {
                k: v
                for group, vals in zip(axes, combo, strict=True)
                for k, v in zip(group, vals, strict=True)
            }
            label = ", ".join(f"{k}={v!r}" for k, v in values.items()) or "base protocol"
            try:
                scanner, plain = self._case_scanner(values)
                if scanner is not None:
                    plain = {**plain, **scanner.protocol_changes()}
                proto = Protocol.from_mapping(plain, base=self.protocol)
                proto.check_post_bolus_window()
            except ConfigError as exc:
                raise ConfigError(f"sweep case {i} ({label}): {exc}") from None
            out.append(Case(i, values, proto, scanner=scanner))
        return out

    def _case_scanner(self, values: Mapping[str, Any]) -> tuple[Scanner | None, dict[str, Any]]:
        """The case's scanner (swept scanner keys applied) and its plain protocol values."""
        plain = {k: v for k, v in values.items() if not k.startswith(SCANNER_PREFIX)}
        changes = {
            k[len(SCANNER_PREFIX) :]: v for k, v in values.items() if k.startswith(SCANNER_PREFIX)
        }
        if self.scanner is None:
            return None, plain
        scanner = self.scanner.replace(path="sweep.scanner", **changes) if changes else self.scanner
        return scanner, plain


def _check_table(path: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{path} = {value!r}: expected a table")
    return value


def _parse_tissue(raw: Mapping[str, Any]) -> TissueGrid:
    model = as_str("tissue.model", raw.get("model", "extended_tofts"), choices=MODELS)
    spec = MODELS[model]
    allowed = set(spec.parameters) | set(TISSUE_EXTRA) | {"model"}
    other = set(PARAMETERS) - allowed
    axes: dict[str, tuple[float, ...]] = {}
    for key, value in raw.items():
        if key == "model":
            continue
        if key in other:
            raise ConfigError(
                f"tissue.{key} = {value!r}: {key!r} is not a parameter of the {model!r} model;"
                f" expected only {list(spec.parameters) + list(TISSUE_EXTRA)}"
            )
        if key not in allowed:
            raise unknown_key("tissue", key, sorted(allowed))
        units = PARAMETERS[key].units if key in PARAMETERS else "a.u."
        lo, hi = (PARAMETERS[key].lower, PARAMETERS[key].upper) if key in PARAMETERS else (0, None)
        strict = key in ("T10", "m0") or (key == "ve" and model in ("tofts", "extended_tofts"))
        strict = strict or (key in ("vp", "ve") and model in ("2cxm", "2cum"))
        values = value if isinstance(value, list) else [value]
        axes[key] = as_floats(f"tissue.{key}", values, units=units, lo=lo, hi=hi, lo_open=strict)
    missing = [p for p in spec.parameters if p not in axes]
    if missing:
        raise ConfigError(
            f"tissue: the {model!r} model needs {list(spec.parameters)}; missing {missing}"
        )
    if "ve" in axes and "vp" in axes and max(axes["ve"]) + max(axes["vp"]) > 1.0:
        raise ConfigError(
            f"tissue.ve = {list(axes['ve'])}, tissue.vp = {list(axes['vp'])}: expected"
            f" ve + vp <= 1 for every combination (largest is {max(axes['ve']) + max(axes['vp'])})"
        )
    return TissueGrid(model, axes)


def _set_by_scanner(path: str, value: Any) -> ConfigError:
    key = path.rsplit(".", 1)[-1].strip('"')
    return ConfigError(
        f"{path} = {value!r} with a [scanner] table: the scanner sets {key!r} (scanner keys"
        f" {list(SCANNER_FIELDS)} give {list(PROTOCOL_KEYS_SET)}); expected {key!r} only from"
        " [scanner], or no [scanner] table"
    )


def _parse_sweep(raw: Mapping[str, Any], scanner: Scanner | None) -> dict[str, tuple[Any, ...]]:
    """Check the sweep axes: protocol keys, or ``"scanner.<key>"`` with a [scanner] table."""
    sweep: dict[str, tuple[Any, ...]] = {}
    for key, values in raw.items():
        if key.startswith(SCANNER_PREFIX):
            sub = key[len(SCANNER_PREFIX) :]
            if scanner is None:
                raise ConfigError(
                    f"sweep.{key} = {values!r}: expected a [scanner] table to sweep a scanner"
                    " key (or a protocol key without the 'scanner.' prefix)"
                )
            if sub not in SCANNER_FIELDS or sub in UNSWEPT_SCANNER_KEYS:
                allowed = [SCANNER_PREFIX + k for k in SCANNER_FIELDS]
                raise unknown_key("sweep", key, set(allowed) - {"scanner.reference"})
            check = SCANNER_FIELDS[sub].check
        elif key not in PROTOCOL_FIELDS:
            if scanner is None:
                raise unknown_key("sweep", key, PROTOCOL_FIELDS)
            allowed = set(PROTOCOL_FIELDS) - set(PROTOCOL_KEYS_SET)
            allowed |= {SCANNER_PREFIX + k for k in SCANNER_FIELDS} - {"scanner.reference"}
            raise unknown_key("sweep", key, allowed)
        elif scanner is not None and key in PROTOCOL_KEYS_SET:
            raise _set_by_scanner(f"sweep.{key}", values)
        else:
            check = PROTOCOL_FIELDS[key].check
        if not isinstance(values, list) or not values:
            raise ConfigError(
                f"sweep.{key} = {values!r}: expected a non-empty list of {key} values"
            )
        sweep[key] = tuple(check(f"sweep.{key}[{i}]", v) for i, v in enumerate(values))
    return sweep


#: A scenario name is a folder name under the output folder: no separators, no "..".
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_name(path: str, name: str) -> str:
    """Return ``name`` if it can name a folder inside an output folder, else refuse it.

    Parameters
    ----------
    path : str
        The key, for the message (e.g. ``"name"``).
    name : str
        The scenario (or study) name.

    Raises
    ------
    ConfigError
        If the name is empty, absolute, holds a path separator or ``..``, or starts with a
        character other than a letter or digit (so results cannot escape ``-o``).

    Examples
    --------
    >>> check_name("name", "temporal_resolution")
    'temporal_resolution'
    """
    if not NAME_PATTERN.fullmatch(name) or ".." in name:
        raise ConfigError(
            f"{path} = {name!r}: expected a plain name of up to 128 letters, digits, '.', '_'"
            " or '-', starting with a letter or digit (no path separators, no '..'): it"
            " names the scenario's folder inside the output folder"
        )
    return name


def parse_scenario(data: Mapping[str, Any], *, default_name: str = "scenario") -> Scenario:
    """Validate a scenario given as a mapping (the parsed TOML).

    Parameters
    ----------
    data : mapping
        Top-level keys ``name``, ``description``, ``seed``, ``replicates`` and the tables
        ``protocol``, ``tissue``, ``sweep`` and ``fit`` (kept as given here; the benchmark
        engine checks it, see :mod:`phantomdce.engine.config`).
    default_name : str, optional
        Name used when ``name`` is absent.

    Returns
    -------
    Scenario

    Raises
    ------
    ConfigError
        The first invalid key, naming its path, value and what was expected. Every case
        of the sweep is checked too, so nothing is simulated from an invalid scenario.

    """
    for key in data:
        if key not in TOP_KEYS:
            raise unknown_key("", key, TOP_KEYS)
    name = check_name("name", as_str("name", data.get("name", default_name)))
    description = data.get("description", "")
    if not isinstance(description, str):
        raise ConfigError(f"description = {description!r}: expected a string")
    seed = as_int("seed", data.get("seed", 0), lo=0)
    replicates = as_int("replicates", data.get("replicates", 1), lo=1)

    raw_proto = dict(_check_table("protocol", data.get("protocol", {})))
    base_name = as_str("protocol.preset", raw_proto.pop("preset", "esnr2022"))
    base = preset(base_name)  # an unknown name: ConfigError listing the presets
    scanner = None
    if "scanner" in data:
        scanner = Scanner.from_mapping(_check_table("scanner", data["scanner"]), path="scanner")
        for key, value in raw_proto.items():
            if key in PROTOCOL_KEYS_SET:
                raise _set_by_scanner(f"protocol.{key}", value)
        protocol = Protocol.from_mapping({**raw_proto, **scanner.protocol_changes()}, base=base)
    else:
        protocol = Protocol.from_mapping(raw_proto, base=base)

    tissue = _parse_tissue(_check_table("tissue", data.get("tissue", {})))
    sweep = _parse_sweep(_check_table("sweep", data.get("sweep", {})), scanner)

    proto_attrs = protocol.as_attrs()
    for key in ("vfa_sigma_ratio", "snr_t1_s"):  # None: as before the key existed, same hash
        if getattr(protocol, key) is None:
            del proto_attrs[key]
    source = {
        "name": name,
        "description": description,
        "seed": seed,
        "replicates": replicates,
        "protocol": proto_attrs,
        "tissue": {"model": tissue.model, **{k: list(v) for k, v in tissue.axes.items()}},
        "sweep": {k: list(v) for k, v in sweep.items()},
        # the hash is taken with sorted keys; the axis order decides the case order
        "sweep_order": list(sweep),
    }
    groups = data.get("zip", [])
    if not isinstance(groups, list) or not all(
        isinstance(g, list) and len(g) >= 2 and all(isinstance(k, str) for k in g) for g in groups
    ):
        raise ConfigError(
            f"zip = {groups!r}: expected a list of lists of at least two sweep keys,"
            ' e.g. zip = [["field_strength", "snr"]]'
        )
    seen: set[str] = set()
    for gi, group in enumerate(groups):
        for key in group:
            if key not in sweep:
                raise ConfigError(f"zip[{gi}] names {key!r}: expected a key of [sweep]")
            if key in seen:
                raise ConfigError(f"zip[{gi}] names {key!r} again: a key can be in one group")
            seen.add(key)
        lengths = {len(sweep[k]) for k in group}
        if len(lengths) > 1:
            detail = ", ".join(f"{k}: {len(sweep[k])}" for k in group)
            raise ConfigError(
                f"zip[{gi}] = {group!r}: expected sweep lists of the same length ({detail})"
            )
    if groups:
        source["zip"] = groups
    if scanner is not None:
        source["scanner"] = scanner.as_mapping()
    fit = dict(_check_table("fit", data.get("fit", {})))
    recommendation = dict(_check_table("recommendation", data.get("recommendation", {})))
    scenario = Scenario(
        name,
        description,
        seed,
        replicates,
        protocol,
        tissue,
        sweep,
        source,
        fit,
        tuple(tuple(g) for g in groups),
        recommendation,
        scanner,
    )
    scenario.cases()  # check every combination before any work
    return scenario


def scanner_columns(cases: Sequence[Case]) -> dict[str, tuple[str, np.ndarray, dict[str, str]]]:
    """What each case's scanner implies, as columns of a cases table (dim ``case``).

    One float column per key of :meth:`Case.scanner_attrs` (frame time, voxel, SNR, VFA
    noise ratio, scan time), with its units (:data:`phantomdce.scanner.DERIVED_UNITS`).
    """
    derived = [c.scanner_attrs() for c in cases]
    return {
        key: (
            "case",
            np.asarray([d[key] for d in derived], dtype=np.float64),
            {"units": DERIVED_UNITS[key], "long_name": "derived by the scanner model"},
        )
        for key in derived[0]
    }


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario TOML file.

    Parameters
    ----------
    path : str or Path
        The ``.toml`` file.

    Returns
    -------
    Scenario

    Raises
    ------
    ConfigError
        Invalid TOML or an invalid value (the message names the key path).
    FileNotFoundError
        The file does not exist.

    """
    path = Path(path)
    return parse_scenario(read_toml(path), default_name=path.stem)
