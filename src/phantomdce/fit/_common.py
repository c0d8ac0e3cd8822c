"""Input checks and output assembly shared by the built-in fitters (private)."""

from __future__ import annotations

import numpy as np
import xarray as xr

from phantomdce.params import PARAMETERS

__all__ = ["check_inputs", "screen_voxels", "result_dataset"]


def check_inputs(data: xr.Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (t (n_t,), ct (n_vox, n_t), ca (n_t,)) as float64, or raise ValueError.

    Errors name the problem: a missing variable, a time axis that is not strictly
    increasing, an AIF whose length differs from the time axis, non-finite AIF values.
    """
    for name in ("ct", "ca"):
        if name not in data:
            raise ValueError(f"input dataset has no {name!r} variable: expected ct and ca (mM)")
    if "time" not in data.coords and "time" not in data:
        raise ValueError("input dataset has no 'time' coordinate (s)")
    t = np.asarray(data["time"].values, dtype=np.float64)
    ct_da = data["ct"]
    if ct_da.dims != ("voxel", "time"):
        if set(ct_da.dims) == {"voxel", "time"}:
            ct_da = ct_da.transpose("voxel", "time")
        else:
            raise ValueError(f"ct has dims {ct_da.dims}: expected ('voxel', 'time')")
    ct = np.ascontiguousarray(ct_da.values, dtype=np.float64)
    ca = np.asarray(data["ca"].values, dtype=np.float64)
    if t.ndim != 1 or t.size < 3:
        raise ValueError(f"time has shape {t.shape}: expected a 1-D axis of at least 3 frames")
    if not np.all(np.isfinite(t)):
        raise ValueError("time contains non-finite values: expected finite times in s")
    bad = np.flatnonzero(np.diff(t) <= 0)
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"time is not increasing at index {i + 1} ({t[i]!r} s then {t[i + 1]!r} s):"
            " expected a strictly increasing time axis in s"
        )
    if ca.ndim != 1 or ca.size != t.size:
        raise ValueError(
            f"ca has shape {ca.shape} but time has {t.size} frames: expected one plasma"
            " concentration (mM) per frame"
        )
    if not np.all(np.isfinite(ca)):
        raise ValueError("ca contains non-finite values: expected a finite plasma AIF in mM")
    return t, ct, ca


def screen_voxels(ct: np.ndarray) -> np.ndarray:
    """Voxels that cannot be fitted: any non-finite value, no positive value, or flat."""
    with np.errstate(invalid="ignore"):
        finite = np.all(np.isfinite(ct), axis=1)
        positive = np.nanmax(np.where(np.isfinite(ct), ct, -np.inf), axis=1) > 0
        flat = np.ptp(np.where(np.isfinite(ct), ct, 0.0), axis=1) == 0
    return ~finite | ~positive | flat


def result_dataset(
    data: xr.Dataset, estimates: dict[str, np.ndarray], success: np.ndarray, attrs: dict
) -> xr.Dataset:
    """Assemble the output: one variable per parameter (package units) and ``success``."""
    coords = {"voxel": data["voxel"].values} if "voxel" in data.coords else {}
    out = {}
    for name, values in estimates.items():
        p = PARAMETERS[name]
        vals = np.where(success, values, np.nan)
        out[name] = ("voxel", vals, {"units": p.units, "long_name": p.long_name})
    out["success"] = ("voxel", np.asarray(success, dtype=bool), {"long_name": "fit succeeded"})
    return xr.Dataset(out, coords=coords, attrs=attrs)
