"""The phantom as a DRO store: the same zarr layout as :mod:`phantomdce.dro.store`.

A phantom DRO is an :class:`xarray.DataTree` in zarr whose root holds the ``cases`` table
(``case_name`` and what each case varies) and whose ``case_NNNN`` children are DRO cases
that the pipeline and fitters take as they take a simulated case: one voxel per acquired
voxel (``signal``, ``vfa_signal``, the carotid ROI's ``arterial_signal``, the true plasma
AIF ``ca`` and the volume-weighted truth ``Ktrans``, ``ve``, ``vp``; NaN where a voxel
holds no tissue with kinetics), with each voxel's position (``slice_mm``, ``y_mm``,
``x_mm``) and grid index. Each case node has two children with the spatial truth:

- ``acquired``: the acquisition on its grid (:func:`phantomdce.phantom.acquire.acquire`:
  images, volume and PSF composition of each voxel, truth maps at the acquired grid);
- ``truth``: the truth grid (labels, voxel types, truth maps of Ktrans, ve, vp, T10,
  proton density and fat fraction, vessel radius coordinate), coordinates in mm.

:func:`phantomdce.open_dro` opens it; ``phantomdce simulate`` writes one from a phantom
scenario (one case per acquisition setting and subject). Stores are written into a
temporary sibling directory and renamed when complete.

The carotid ROI of a store (:func:`arterial_roi`) is placed on the truth side, from the
phantom's geometry, without the image analysis of :mod:`phantomdce.fit.roi` (this module
imports nothing of the estimation side): ``"manual"`` is the 3 mm sphere at the right carotid
landmark (as :func:`phantomdce.fit.roi.carotid_roi` places it); ``"auto"`` stands for an
automatic search that finds the artery: the 10 acquired voxels with the largest artery
volume fraction, the nearest to the right carotid landmark first among equals (not the
image-based search of :func:`phantomdce.fit.roi.carotid_roi_auto`, whose choice a user of
the store can make from the stored ``acquired`` images). Stores written before this rule
used that image-based search for ``"auto"``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

import phantomdce
from phantomdce.dro.protocol import Protocol
from phantomdce.dro.simulate import case_aif
from phantomdce.params import PARAMETERS
from phantomdce.phantom.acquire import Acquisition, acquire, class_fractions, sphere_mask
from phantomdce.phantom.anatomy import Phantom

__all__ = [
    "PhantomCase",
    "arterial_roi",
    "phantom_dro_case",
    "truth_grid_dataset",
    "write_phantom_dro",
]

ZARR_FORMAT = 2
#: Radius (mm) of the ``"manual"`` carotid ROI, a sphere at the right carotid landmark.
MANUAL_RADIUS_MM = 3.0
#: Voxels of the ``"auto"`` carotid ROI.
AUTO_VOXELS = 10
PhantomCase = tuple[str, Phantom, Protocol, Acquisition, int, dict[str, Any]]
"""(case name, phantom, protocol, acquisition, noise seed, the values the case varies)."""


def truth_grid_dataset(phantom: Phantom) -> xr.Dataset:
    """The truth grid as a dataset: labels, types, per-voxel truth maps, in mm."""
    nz, ny, nx = phantom.labels.shape
    v = phantom.voxel_mm
    dims = ("z", "y", "x")
    coords = {
        d: (d, (np.arange(n) + 0.5) * v, {"units": "mm"})
        for d, n in zip(dims, (nz, ny, nx), strict=True)
    }
    units = {
        **{k: PARAMETERS[k].units for k in ("Ktrans", "ve", "vp", "T10")},
        "pd": "1 (relative to muscle)",
        "fat_fraction": "1",
    }
    data: dict[str, Any] = {
        "labels": (dims, phantom.labels, {"long_name": "tissue class label", "role": "truth"}),
        "types": (dims, phantom.types, {"long_name": "voxel type (index into type_*)"}),
    }
    for name, unit in units.items():
        data[name] = (
            dims,
            phantom.truth_map(name).astype(np.float32),
            {"units": unit, "role": "truth"},
        )
    if phantom.vessel_rho2 is not None:
        data["vessel_rho2"] = (
            dims,
            phantom.vessel_rho2,
            {"long_name": "squared normalised radius in the vessel (0 axis, 1 wall)"},
        )
    data["type_class"] = ("type", [p["class"] for p in phantom.type_params])
    attrs = {
        "voxel_mm": phantom.voxel_mm,
        "field_strength": phantom.field_strength,
        "phantom_seed": phantom.seed,
        "geometry": json.dumps(asdict(phantom.geometry)),
        "landmarks_mm": json.dumps(phantom.landmarks),
        "type_params": json.dumps(phantom.type_params),
    }
    return xr.Dataset(data, coords=coords, attrs=attrs)


def arterial_roi(phantom: Phantom, acquired: xr.Dataset, how: np.ndarray | str) -> np.ndarray:
    """The carotid ROI of a store (slice, y, x mask), placed from the phantom's geometry.

    Parameters
    ----------
    phantom, acquired
        The phantom and one acquisition of it.
    how : ndarray (slice, y, x) bool or {"manual", "auto"}
        The ROI itself, or ``"manual"`` (a 3 mm sphere at the right carotid landmark) or
        ``"auto"`` (the 10 acquired voxels with the largest artery volume fraction, the
        nearest to the right carotid landmark first among equals); see the module
        docstring.

    Raises
    ------
    ValueError
        An unknown placement, a phantom without the right carotid landmark, or a sphere
        that holds no acquired voxel.
    """
    if not isinstance(how, str):
        return np.asarray(how, dtype=bool)
    if how not in ("manual", "auto"):
        raise ValueError(f"carotid={how!r}: expected 'auto', 'manual' or a mask")
    centre = phantom.landmarks.get("carotid_right")
    if how == "manual":
        if centre is None:
            raise ValueError(
                "carotid='manual' needs the phantom's landmark 'carotid_right', which this"
                " phantom lacks"
            )
        mask = sphere_mask(acquired, centre, MANUAL_RADIUS_MM)
        if not mask.any():
            raise ValueError(
                f"carotid ROI at {centre} mm with radius {MANUAL_RADIUS_MM} mm holds no voxel"
            )
        return mask
    artery = class_fractions(phantom, acquired, ["artery"]).values.astype(np.float64)
    if centre is None:
        distance = np.zeros(artery.shape)
    else:
        zz, yy, xx = np.meshgrid(
            acquired["slice"].values, acquired["y"].values, acquired["x"].values, indexing="ij"
        )
        distance = (zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2
    # largest fraction first, then the nearest, then the first in C order
    order = np.lexsort((np.arange(artery.size), distance.ravel(), -artery.ravel()))
    mask = np.zeros(artery.shape, dtype=bool)
    mask.flat[order[:AUTO_VOXELS]] = True
    return mask


def phantom_dro_case(
    phantom: Phantom, acquired: xr.Dataset, protocol: Protocol, *, carotid: np.ndarray | str
) -> xr.Dataset:
    """The whole acquired image as a DRO case (one voxel per acquired voxel).

    Parameters
    ----------
    phantom, acquired, protocol
        The phantom, one acquisition of it and the protocol it was acquired with.
    carotid : ndarray (slice, y, x) bool or {"auto", "manual"}
        The carotid ROI whose voxels become ``arterial_signal``, or how to place it
        (:func:`arterial_roi`).
    """
    carotid = arterial_roi(phantom, acquired, carotid)
    shape = acquired["signal"].shape[:3]
    n = int(np.prod(shape))
    idx = np.unravel_index(np.arange(n), shape)
    t = acquired["time"].values
    data: dict[str, Any] = {
        "signal": (
            ("voxel", "time"),
            acquired["signal"].values.reshape(n, -1),
            {"units": "a.u.", "role": "measurement"},
        ),
        "vfa_signal": (
            ("voxel", "flip_angle"),
            acquired["vfa_signal"].values.reshape(n, -1),
            {"units": "a.u.", "role": "measurement"},
        ),
        "arterial_signal": (
            ("arterial_voxel", "time"),
            acquired["signal"].values[carotid].astype(np.float64),
            {"units": "a.u.", "role": "measurement", "long_name": "carotid ROI voxels"},
        ),
        "ca": ("time", case_aif(protocol)(t), {"units": "mM", "role": "truth"}),
    }
    for name in ("Ktrans", "ve", "vp"):
        var = acquired[name]
        data[name] = ("voxel", var.values.reshape(n), dict(var.attrs))
    coords = {
        "time": ("time", t, {"units": "s"}),
        "flip_angle": ("flip_angle", acquired["flip_angle"].values, {"units": "deg"}),
        "voxel": ("voxel", np.arange(n)),
        "tissue": ("voxel", np.arange(n)),
        "replicate": ("voxel", np.zeros(n, dtype=np.int64)),
        "slice_index": ("voxel", idx[0]),
        "y_index": ("voxel", idx[1]),
        "x_index": ("voxel", idx[2]),
        "slice_mm": ("voxel", acquired["slice"].values[idx[0]], {"units": "mm"}),
        "y_mm": ("voxel", acquired["y"].values[idx[1]], {"units": "mm"}),
        "x_mm": ("voxel", acquired["x"].values[idx[2]], {"units": "mm"}),
    }
    attrs = {
        **acquired.attrs,
        "replicates": 1,
        "grid_shape": list(shape),
        "carotid_voxels": int(np.asarray(carotid).sum()),
    }
    return xr.Dataset(data, coords=coords, attrs=attrs)


def write_phantom_dro(
    cases: Sequence[PhantomCase],
    path: str | Path,
    *,
    carotid: str = "auto",
    attrs: dict[str, Any] | None = None,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Acquire each case and write the phantom DRO store.

    Parameters
    ----------
    cases : sequence of PhantomCase
        ``(name, phantom, protocol, acquisition, seed, values)`` per case.
    path : str or Path
        Output ``.zarr`` directory.
    carotid : {"auto", "manual"}
        How the carotid ROI of each case is placed (:func:`arterial_roi`).
    attrs : dict, optional
        Extra provenance for the root (e.g. the scenario's name and source).
    overwrite : bool
        Replace an existing store at ``path`` (default: refuse).
    progress : callable, optional
        Called as ``progress(done, total)`` after each case.

    Returns
    -------
    Path
    """
    from phantomdce.dro.store import atomic_store

    keys = sorted({k for c in cases for k in c[5]})
    table: dict[str, Any] = {
        k: ("case", np.asarray([str(c[5].get(k, "")) for c in cases])) for k in keys
    }
    table["case_name"] = ("case", np.asarray([c[0] for c in cases]))
    root = xr.Dataset(
        table,
        attrs={
            "kind": "phantom",
            "phantomdce_version": phantomdce.__version__,
            "sweep_keys": keys,
            **(attrs or {}),
        },
    )
    with atomic_store(path, overwrite=overwrite) as tmp:
        root.to_zarr(tmp, mode="w", consolidated=False, zarr_format=ZARR_FORMAT)
        for i, (name, phantom, protocol, acq, seed, _) in enumerate(cases):
            acquired = acquire(phantom, protocol, acq, seed=seed)
            parts = {
                name: phantom_dro_case(phantom, acquired, protocol, carotid=carotid),
                f"{name}/acquired": acquired,
                f"{name}/truth": truth_grid_dataset(phantom),
            }
            for group, ds in parts.items():  # one case at a time: memory holds one case
                ds.to_zarr(tmp, group=group, mode="a", consolidated=False, zarr_format=ZARR_FORMAT)
            if progress is not None:
                progress(i + 1, len(cases))
    return path
