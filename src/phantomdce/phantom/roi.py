"""ROIs on the acquired phantom, and the carotid AIF measured from the images.

Tumour ROIs, on the acquired grid:

- ``whole_lesion``: the naive rule, every voxel that is mostly tumour (any tumour class,
  necrosis and haemorrhage included) by the truth outline, as a lesion contour drawn on
  anatomy would be.
- ``recommended``: the ESNR 2022 rule, the enhancing tumour avoiding necrosis and vessels,
  decided from the images within that outline: voxels whose late relative enhancement is
  below ``min_enhancement`` (non-enhancing necrosis, haemorrhage, cysts) are dropped, and
  so are voxels whose enhancement is vessel-like (a first-pass signal rise above
  ``vessel_fraction`` of the image's largest that washes out, the late rise under 60% of
  it: neighbouring vessels or partial volume with them).

The carotid AIF is measured from an ROI on the acquired images: a manual sphere at given
coordinates (:attr:`Phantom.landmarks` gives the carotids), or an automatic selection:
the ``n`` voxels with the largest first-pass signal rise among voxels with a real baseline
signal, inside an optional search region. The signal is converted to whole-blood concentration
with the blood native T1 of the field, as if the voxels were pure blood (partial volume is
not corrected), and to plasma with the assumed haematocrit.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from phantomdce.phantom.anatomy import CLASSES, Phantom
from phantomdce.signal import concentration_from_signal, native_t1

__all__ = [
    "tumour_rois",
    "carotid_roi",
    "carotid_roi_manual",
    "carotid_roi_auto",
    "roi_aif",
    "class_fractions",
]

TUMOUR = ("tumour_rim", "tumour_hypoxic", "necrosis", "haemorrhage")


def class_fractions(phantom: Phantom, acquired: xr.Dataset, names) -> xr.DataArray:
    """Summed volume fraction of the given classes in each acquired voxel (slice, y, x)."""
    idx = [i for i, p in enumerate(phantom.type_params) if p["class"] in set(names)]
    return acquired["fraction"].sel(type=idx).sum("type")


def _enhancement(acquired: xr.Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Late relative enhancement, first-pass signal rise (a.u.) and baseline per voxel."""
    s = acquired["signal"].values.astype(np.float64)
    t = acquired["time"].values
    nb = int(acquired.attrs["n_baseline"])
    base = s[..., :nb].mean(axis=-1)
    bat = float(acquired.attrs["bat"])
    first = (t >= bat) & (t <= bat + 25.0)  # the first pass: about 25 s from arrival
    if not first.any():
        first = np.zeros_like(t, dtype=bool)
        first[min(nb, t.size - 1)] = True
    rise = s[..., first].mean(axis=-1) - base
    with np.errstate(invalid="ignore", divide="ignore"):
        late = s[..., -max(1, t.size // 5) :].mean(axis=-1) / base - 1.0
    return late, rise, base


def tumour_rois(
    phantom: Phantom,
    acquired: xr.Dataset,
    *,
    min_enhancement: float = 0.15,
    vessel_fraction: float = 0.5,
) -> xr.Dataset:
    """The naive and the recommended tumour ROI (boolean masks, slice x y x x).

    Parameters
    ----------
    phantom, acquired
        The phantom and its acquisition (:func:`phantomdce.phantom.acquire.acquire`).
    min_enhancement : float
        Late relative enhancement below which a voxel counts as non-enhancing.
    vessel_fraction : float
        First-pass signal rise, as a fraction of the largest in the image (an artery),
        above which a voxel counts as vessel-like.
    """
    outline = class_fractions(phantom, acquired, TUMOUR).values >= 0.5
    late, rise, base = _enhancement(acquired)
    enhancing = late >= min_enhancement
    top = np.nanpercentile(rise, 99.9)
    # vessels: a large first-pass rise that washes out (late rise well below it)
    with np.errstate(invalid="ignore", divide="ignore"):
        washout = late * base < 0.6 * rise
    vessel_like = (rise >= vessel_fraction * top) & washout
    dims = ("slice", "y", "x")
    return xr.Dataset(
        {
            "whole_lesion": (dims, outline),
            "recommended": (dims, outline & enhancing & ~vessel_like),
        },
        coords={k: acquired[k] for k in dims},
        attrs={"min_enhancement": min_enhancement, "vessel_fraction": vessel_fraction},
    )


def carotid_roi_manual(acquired: xr.Dataset, centre_mm, radius_mm: float = 3.0) -> np.ndarray:
    """A spherical ROI (slice, y, x mask) at ``centre_mm = (slice, y, x)`` in mm."""
    zz, yy, xx = np.meshgrid(
        acquired["slice"].values, acquired["y"].values, acquired["x"].values, indexing="ij"
    )
    cz, cy, cx = centre_mm
    mask = (zz - cz) ** 2 + (yy - cy) ** 2 + (xx - cx) ** 2 <= radius_mm**2
    if not mask.any():
        raise ValueError(f"carotid ROI at {centre_mm} mm with radius {radius_mm} mm holds no voxel")
    return mask


def carotid_roi_auto(
    acquired: xr.Dataset, *, n: int = 10, region: np.ndarray | None = None
) -> np.ndarray:
    """The ``n`` voxels with the largest first-pass signal rise (optionally in a region).

    Only voxels whose baseline signal is at least a quarter of the image's 90th percentile
    are candidates, so that noise in air or bone cannot be picked.
    """
    _, rise, base = _enhancement(acquired)
    ok = np.isfinite(rise) & (base >= 0.25 * np.nanpercentile(base, 90))
    if region is not None:
        ok &= region
    score = np.where(ok, rise, -np.inf)
    order = np.argsort(score, axis=None)[::-1][:n]
    mask = np.zeros(score.shape, dtype=bool)
    mask.flat[order] = True
    return mask


def carotid_roi(phantom: Phantom, acquired: xr.Dataset, how: np.ndarray | str) -> np.ndarray:
    """A carotid ROI mask: given, or placed ``"auto"`` (10 voxels) or ``"manual"``.

    ``"manual"`` is a 3 mm sphere at the right common carotid landmark.
    """
    if not isinstance(how, str):
        return np.asarray(how, dtype=bool)
    if how == "auto":
        return carotid_roi_auto(acquired, n=10)
    if how == "manual":
        return carotid_roi_manual(acquired, phantom.landmarks["carotid_right"], 3.0)
    raise ValueError(f"carotid={how!r}: expected 'auto', 'manual' or a mask")


def roi_aif(acquired: xr.Dataset, mask: np.ndarray, *, hct: float = 0.42) -> np.ndarray:
    """Plasma AIF (mM) at the frames from the mean signal of an ROI."""
    s = acquired["signal"].values[mask].astype(np.float64).mean(axis=0)
    nb = int(acquired.attrs["n_baseline"])
    t1_blood = native_t1("blood", float(acquired.attrs["field_strength"]))
    cb = concentration_from_signal(
        s,
        s[:nb].mean(),
        r10=1.0 / t1_blood,
        fa=float(acquired.attrs["fa"]),
        tr=float(acquired.attrs["tr"]),
        r1_relaxivity=float(acquired.attrs["r1"]),
    )
    return np.nan_to_num(cb, nan=0.0) / (1.0 - hct)


def artery_label() -> int:
    """Label of the artery class."""
    return CLASSES["artery"].label
