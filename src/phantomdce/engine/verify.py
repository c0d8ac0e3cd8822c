"""Tamper-evident results: the digest of every unit's output, checked before it is trusted.

Each unit of a run (:mod:`phantomdce.engine.run`) writes its data, reads them back, and
records their SHA-256 in its progress marker (``OUT/progress/*.json``, key ``digest``): for
a simulated chunk, the chunk's region of every array of its case node in
``estimates.zarr``; for a phantom subject, every array of its unit store
(``OUT/units/*.zarr``). When the run ends, ``OUT/digests.json`` records the SHA-256 of
``metrics.csv`` and ``failures.csv``.

:func:`damaged_units` recomputes the digests and names the units whose data no longer match
(a deleted, truncated or swapped chunk, a lost unit store); a resumed run recomputes those
units (:func:`phantomdce.engine.run.plan_run`). :func:`verify_run` checks a whole run
(``phantomdce verify OUT``, the report and the gate call it): every finished unit, the
store's metadata and the digests of the metrics files.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DIGESTS",
    "RunDamagedError",
    "VerifyReport",
    "region_digest",
    "store_digest",
    "file_digest",
    "damaged_units",
    "verify_run",
    "write_file_digests",
    "check_file_digest",
]

#: The file (in ``OUT``) holding the digests of ``metrics.csv`` and ``failures.csv``.
DIGESTS = "digests.json"
#: Arrays of a case node that hold no unit's data (written when the store is created).
_FIXED = ("fitter", "voxel")


class RunDamagedError(RuntimeError):
    """A run's stored results do not match their digests (or cannot be read)."""


def _feed(h: Any, name: str, values: np.ndarray) -> None:
    values = np.ascontiguousarray(values)
    h.update(f"{name}|{values.dtype.str}|{values.shape}|".encode())
    h.update(values.tobytes())


#: Where a unit's region lies in an array of a case node, by the array's dimensions.
_REGION = {
    ("voxel",): lambda a, b, k: np.s_[a:b],
    ("fitter", "voxel"): lambda a, b, k: np.s_[:, a:b],
    ("fitter", "chunk"): lambda a, b, k: np.s_[:, k],
}


def _unit_arrays(group: Any):
    """``(name, array, region)`` of every array of a case node that units write, by name."""
    for name in sorted(group.array_keys()):
        if name in _FIXED:
            continue
        arr = group[name]
        region = _REGION.get(tuple(arr.attrs.get("_ARRAY_DIMENSIONS", ())))
        if region is not None:
            yield name, arr, region


def region_digest(group: Any, start: int, stop: int, chunk: int) -> str:
    """SHA-256 of a simulated chunk's region of every array of its case node (zarr group).

    Arrays over ``voxel`` contribute ``[start:stop]``, over ``(fitter, voxel)``
    ``[:, start:stop]`` and over ``(fitter, chunk)`` column ``chunk``.
    """
    h = hashlib.sha256()
    for name, arr, region in _unit_arrays(group):
        _feed(h, name, np.asarray(arr[region(start, stop, chunk)]))
    return h.hexdigest()


def case_region_digests(group: Any, units: list[tuple[int, int, int]]) -> list[str]:
    """:func:`region_digest` of several chunks of one case node, reading each array once.

    ``units`` holds ``(start, stop, chunk)``; the digests are those of
    :func:`region_digest`, in the same order.
    """
    hashes = [hashlib.sha256() for _ in units]
    for name, arr, region in _unit_arrays(group):
        values = np.asarray(arr[...])
        for h, (a, b, k) in zip(hashes, units, strict=True):
            _feed(h, name, values[region(a, b, k)])
    return [h.hexdigest() for h in hashes]


def store_digest(path: str | Path) -> str:
    """SHA-256 of every array of a zarr store (a phantom unit store)."""
    import zarr

    group = zarr.open_group(str(path), mode="r", zarr_format=2)
    h = hashlib.sha256()
    for name in sorted(group.array_keys()):
        _feed(h, name, np.asarray(group[name][...]))
    return h.hexdigest()


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_file_digests(
    out: Path,
    names: tuple[str, ...] = ("metrics.csv", "failures.csv", "suspect.csv"),
    nodes: dict[str, str] | None = None,
) -> None:
    """Record the digests of a finished run's files in ``OUT/digests.json`` (atomically).

    ``nodes`` adds the digests of case nodes that no unit covers (a phantom run's case nodes,
    assembled when it is finalized), under the key ``"nodes"``.
    """
    from phantomdce.files import write_atomic

    digests: dict[str, Any] = {n: file_digest(out / n) for n in names if (out / n).exists()}
    if nodes:
        digests["nodes"] = dict(nodes)
    write_atomic(out / DIGESTS, json.dumps(digests, indent=1))


def check_file_digest(out: Path, name: str) -> str | None:
    """Why ``OUT/name`` cannot be trusted (changed since the run wrote it), or None."""
    record = out / DIGESTS
    if not record.exists():
        return None  # a run that has not finished, or one from before digests
    try:
        want = json.loads(record.read_text()).get(name)
    except (OSError, ValueError):
        return f"{record} is damaged (not JSON)"
    if want is None:
        return None
    if not (out / name).exists():
        return f"{out / name} is missing"
    if file_digest(out / name) != want:
        return f"{out / name} does not match the digest the run recorded (changed or damaged)"
    return None


def _unit_problem(out: Path, record: dict[str, Any], phantom: bool, got: str | None) -> str | None:
    """Why a finished unit's data cannot be trusted, or None; never raises.

    ``got`` is the digest of a simulated chunk's data as read now (None: it could not be
    read as a whole case, so it is read here on its own).
    """
    import zarr

    want = record.get("digest")
    if want is None:
        return "its progress marker has no digest"
    case, k = record["case"], int(record["chunk"])
    try:
        if phantom:
            index = int(case.split("_")[1])
            path = out / "units" / f"case_{index:04d}_chunk_{k:05d}.zarr"
            if not path.is_dir():
                return f"its unit store {path.name} is missing"
            got = store_digest(path)
        elif got is None:
            root = zarr.open_group(str(out / "estimates.zarr"), mode="r", zarr_format=2)
            a, b = record["voxels"]
            got = region_digest(root[case], int(a), int(b), k)
    except Exception as exc:  # noqa: BLE001 - a damaged chunk raises anything from a codec
        return f"its data cannot be read ({type(exc).__name__}: {exc})"
    if got != want:
        return "its data do not match the digest recorded when it ran (deleted or changed)"
    return None


def _case_digests(out: Path, records: list[dict[str, Any]]) -> dict[tuple[str, int], str]:
    """Digests of every simulated chunk, case by case (each array read once per case).

    A case whose data cannot be read as a whole is left out: its chunks are then read one
    by one, so that the damaged ones are named.
    """
    import zarr

    found: dict[tuple[str, int], str] = {}
    try:
        root = zarr.open_group(str(out / "estimates.zarr"), mode="r", zarr_format=2)
    except Exception:  # noqa: BLE001 - named unit by unit
        return found
    by_case: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_case.setdefault(r["case"], []).append(r)
    for case, recs in by_case.items():
        units = [(int(r["voxels"][0]), int(r["voxels"][1]), int(r["chunk"])) for r in recs]
        try:
            digests = case_region_digests(root[case], units)
        except Exception:  # noqa: BLE001 - a damaged chunk: read unit by unit
            continue
        for r, d in zip(recs, digests, strict=True):
            found[case, int(r["chunk"])] = d
    return found


@dataclass
class VerifyReport:
    """What :func:`verify_run` found.

    Attributes
    ----------
    out : Path
        The run folder.
    units : int
        Finished units checked.
    damaged : list of tuple
        ``(case, chunk, reason)`` of every damaged unit.
    problems : list of str
        Everything else wrong (metadata, metrics files).
    """

    out: Path
    units: int = 0
    damaged: list[tuple[str, int, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether nothing is damaged."""
        return not self.damaged and not self.problems

    def message(self) -> str:
        """One line per problem, with what to do."""
        lines = [f"{self.out}: case {c}, chunk {k}: {why}" for c, k, why in self.damaged]
        lines += [f"{self.out}: {p}" for p in self.problems]
        if lines:
            lines.append(
                "run the same `phantomdce run` command again: it recomputes the damaged units"
                " and rewrites the metrics (or delete the folder and run it afresh)"
            )
        return "\n".join(lines)


def _markers(out: Path) -> list[tuple[Path, dict[str, Any] | None]]:
    found = []
    for marker in sorted((out / "progress").glob("*.json")):
        try:
            found.append((marker, json.loads(marker.read_text())))
        except (OSError, ValueError):
            found.append((marker, None))
    return found


def damaged_units(out: str | Path, *, phantom: bool) -> list[tuple[Path, str, int, str]]:
    """Finished units whose data no longer match their digests.

    Returns
    -------
    list of tuple
        ``(marker path, case, chunk, reason)``; a marker that is not JSON is listed with
        case ``"?"`` and chunk -1.
    """
    out = Path(out)
    bad = []
    markers = _markers(out)
    good = [r for _, r in markers if r is not None and "digest" in r]
    now = {} if phantom else _case_digests(out, good)
    for marker, record in markers:
        if record is None:
            bad.append((marker, "?", -1, f"its progress marker {marker.name} is damaged"))
            continue
        got = now.get((record["case"], int(record["chunk"])))
        why = _unit_problem(out, record, phantom, got)
        if why is not None:
            bad.append((marker, record["case"], int(record["chunk"]), why))
    return bad


def verify_run(out: str | Path, *, metadata: bool = True) -> VerifyReport:
    """Check every finished unit of a run and the digests of its metrics files.

    Parameters
    ----------
    out : str or Path
        A run folder (``phantomdce run ... -o OUT``).
    metadata : bool
        Also open every case node (its metadata readable); a caller that opens the store
        itself next can skip it.

    Returns
    -------
    VerifyReport
    """
    out = Path(out)
    report = VerifyReport(out)
    try:
        meta = json.loads((out / "run.json").read_text())
    except FileNotFoundError:
        report.problems.append("no run.json: not a phantomdce run (or its creation was cut)")
        return report
    except (OSError, ValueError) as exc:
        report.problems.append(f"run.json cannot be read ({type(exc).__name__})")
        return report
    phantom = "phantom" in meta
    for _marker, case, k, why in damaged_units(out, phantom=phantom):
        report.damaged.append((case, k, why))
    report.units = len(list((out / "progress").glob("*.json")))
    if metadata:
        try:
            from phantomdce.engine.run import open_results

            tree = open_results(out)
            for name in tree.children:
                tree[name].to_dataset()  # metadata of every node readable
        except Exception as exc:  # noqa: BLE001 - damaged metadata raises anything
            report.problems.append(
                f"estimates.zarr's metadata cannot be read ({type(exc).__name__}: {exc})"
            )
    for name in ("metrics.csv", "failures.csv"):
        why = check_file_digest(out, name)
        if why is not None:
            report.problems.append(why)
    try:
        nodes = json.loads((out / DIGESTS).read_text()).get("nodes", {})
    except (OSError, ValueError):
        nodes = {}
    for name, want in nodes.items():
        try:
            got = store_digest(out / "estimates.zarr" / name)
        except Exception as exc:  # noqa: BLE001 - a damaged chunk raises anything
            got = f"unreadable ({type(exc).__name__}: {exc})"
        if got != want:
            report.problems.append(
                f"case node {name} of estimates.zarr does not match its digest"
                + (f": {got}" if got.startswith("unreadable") else " (deleted or changed)")
            )
    return report
