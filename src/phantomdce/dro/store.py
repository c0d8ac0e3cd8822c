"""The DRO store: an :class:`xarray.DataTree` in zarr, one child node per case.

The root holds the ``cases`` table (one row per case: the swept values) and the
scenario's provenance; each ``case_NNNN`` node is the :class:`xarray.Dataset` made by
:func:`phantomdce.dro.simulate.simulate_case`. A store is written into a temporary
sibling directory and renamed into place only when complete, so an interrupted or failed
run never leaves a half-written store under the requested name.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import xarray as xr

import phantomdce
from phantomdce.dro.scenario import Scenario, scanner_columns
from phantomdce.dro.simulate import simulate_case

__all__ = ["write_dro", "open_dro", "cases_table", "atomic_store"]

_VOXEL_CHUNK = 4096
#: Zarr format of the store: version 2 is read by every zarr implementation in use today.
ZARR_FORMAT = 2


def cases_table(scenario: Scenario) -> xr.Dataset:
    """The root dataset: one row per case (``case_name`` and the swept values) plus provenance.

    With a ``[scanner]`` table, each case's derived values are columns too (frame time, voxel,
    SNR, VFA noise ratio and time, scan time: :meth:`phantomdce.dro.scenario.Case.scanner_attrs`,
    units in the names and in the ``units`` attribute).
    """
    cases = scenario.cases()
    names = np.array([c.name for c in cases])
    data = {}
    units = scenario.sweep_units()
    for key in scenario.sweep:
        values = [c.values[key] for c in cases]
        if any(v is None or isinstance(v, tuple | list) for v in values):
            # list-valued keys (flip_angles) and "none" are stored as text, e.g. "[5.0, 15.0]"
            values = [
                "none" if v is None else (str(list(v)) if isinstance(v, tuple | list) else str(v))
                for v in values
            ]
        data[key] = ("case", np.asarray(values), {"units": units[key]})
    if scenario.scanner is not None:
        data.update(scanner_columns(cases))
    attrs = {
        "scenario": scenario.name,
        "description": scenario.description,
        "scenario_hash": scenario.hash,
        "scenario_source": json.dumps(scenario.source, sort_keys=True),
        "seed": scenario.seed,
        "replicates": scenario.replicates,
        "model": scenario.tissue.model,
        "n_voxels_per_case": scenario.n_voxels,
        "phantomdce_version": phantomdce.__version__,
        "sweep_keys": list(scenario.sweep),
    }
    # case names are a variable, not an index: an indexed coordinate on the root would be
    # inherited by every case node of the DataTree
    data["case_name"] = ("case", names, {"long_name": "node name of the case"})
    return xr.Dataset(data, attrs=attrs)


def _encoding(ds: xr.Dataset) -> dict[str, dict]:
    enc = {}
    for name, var in ds.data_vars.items():
        if "voxel" in var.dims:
            enc[name] = {
                "chunks": tuple(
                    min(_VOXEL_CHUNK, ds.sizes[d]) if d == "voxel" else ds.sizes[d]
                    for d in var.dims
                )
            }
    return enc


def write_dro(
    scenario: Scenario,
    path: str | Path,
    *,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Simulate every case of a scenario and write the DRO store.

    Parameters
    ----------
    scenario : Scenario
        A validated scenario.
    path : str or Path
        Output ``.zarr`` directory.
    overwrite : bool, optional
        Replace an existing store at ``path`` (default: refuse).
    progress : callable, optional
        Called as ``progress(done, total)`` after each case.

    Returns
    -------
    Path
        The store's path.

    """
    with atomic_store(path, overwrite=overwrite) as tmp:
        cases_table(scenario).to_zarr(tmp, mode="w", consolidated=False, zarr_format=ZARR_FORMAT)
        cases = scenario.cases()
        for i, case in enumerate(cases):
            ds = simulate_case(scenario, case)
            ds.to_zarr(
                tmp,
                group=case.name,
                mode="a",
                encoding=_encoding(ds),
                consolidated=False,
                zarr_format=ZARR_FORMAT,
            )
            if progress is not None:
                progress(i + 1, len(cases))
    return Path(path)


@contextmanager
def atomic_store(path: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Write a zarr store into a temporary sibling and rename it into place when complete.

    Yields the temporary directory; on success its metadata is consolidated and it
    replaces ``path``; on any error (or interruption) it is removed, so an unfinished store
    never appears under ``path``. Refuses an existing ``path`` unless ``overwrite``, and
    never replaces a directory that is not a phantomdce store.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists: pass overwrite=True (--overwrite) to replace it")
    if path.exists() and not _is_dro(path):
        raise FileExistsError(
            f"{path} exists and is not a phantomdce DRO store: refusing to replace it"
        )
    tmp = path.with_name(path.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        yield tmp
        import zarr

        zarr.consolidate_metadata(str(tmp), zarr_format=ZARR_FORMAT)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)


def _is_dro(path: Path) -> bool:
    """Whether ``path`` is a DRO store written by :func:`write_dro`."""
    attrs = path / ".zattrs"
    if not path.is_dir() or not attrs.exists():
        return False
    try:
        return "phantomdce_version" in json.loads(attrs.read_text())
    except (OSError, ValueError):
        return False


def open_dro(path: str | Path) -> xr.DataTree:
    """Open a DRO store (lazily; arrays load on access).

    Parameters
    ----------
    path : str or Path
        A ``.zarr`` store written by :func:`write_dro` / ``phantomdce simulate``.

    Returns
    -------
    xarray.DataTree
        The root's dataset is the ``cases`` table (dimension ``case``: ``case_name`` and
        one variable per swept protocol key); children are the cases, by name.

    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such DRO store")
    if not _is_dro(path):
        raise FileNotFoundError(f"{path}: not a phantomdce DRO store (no DRO metadata found)")
    return xr.open_datatree(path, engine="zarr")
