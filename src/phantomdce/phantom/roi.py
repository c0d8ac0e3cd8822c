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

The first pass, which the recommended rule and the automatic carotid search use, is timed on
the images (:func:`bolus_arrival_from_images`), never from the simulated arrival: an analyst
knows when the contrast was injected, not when it reached the neck.

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

from phantomdce.aif import DEFAULT_HCT
from phantomdce.phantom.anatomy import CLASSES, Phantom
from phantomdce.signal import concentration_from_signal, native_t1

__all__ = [
    "tumour_rois",
    "carotid_roi",
    "carotid_roi_manual",
    "carotid_roi_auto",
    "roi_aif",
    "class_fractions",
    "bolus_arrival_from_images",
]

TUMOUR = ("tumour_rim", "tumour_hypoxic", "necrosis", "haemorrhage")
#: Percentile of the voxels' signal rises that times the bolus arrival (the arteries).
ARRIVAL_PERCENTILE = 99.9
#: Fraction of its peak rise (above the baseline frames' noise) that marks the first pass.
ARRIVAL_LEVEL = 0.1


def class_fractions(phantom: Phantom, acquired: xr.Dataset, names) -> xr.DataArray:
    """Summed volume fraction of the given classes in each acquired voxel (slice, y, x)."""
    idx = [i for i, p in enumerate(phantom.type_params) if p["class"] in set(names)]
    return acquired["fraction"].sel(type=idx).sum("type")


def bolus_arrival_from_images(
    acquired: xr.Dataset,
    *,
    percentile: float = ARRIVAL_PERCENTILE,
    level: float = ARRIVAL_LEVEL,
) -> float:
    """The bolus arrival (s) as an analyst finds it on the images, without the truth.

    Each voxel's rise is its signal minus its baseline (the mean of the first
    ``n_baseline`` frames), among voxels with a real baseline signal (at least a quarter of
    the image's 90th percentile, so that noise in air cannot count). At each frame the
    image's largest rise is the ``percentile`` of the voxels' rises (the arteries, robust to
    a few noisy voxels); the arrival is the last frame before that curve first rises above
    its baseline-frame maximum (the noise) by ``level`` of its peak rise above it, so the
    first pass starts at or shortly after it. Without any rise the nominal arrival of the
    protocol, ``n_baseline * dt``, is returned.

    Parameters
    ----------
    acquired : xarray.Dataset
        An acquisition (:func:`phantomdce.phantom.acquire.acquire`): ``signal`` (..., time)
        and the protocol's ``n_baseline`` and ``dt`` attributes; nothing of the truth is read.
    percentile : float
        Percentile (0-100) of the voxels' rises taken as the image's largest rise.
    level : float
        Fraction of the peak rise (above the noise) that marks the first pass.

    Returns
    -------
    float
        Estimated bolus arrival, s from the start of the series.
    """
    t = np.asarray(acquired["time"].values, dtype=np.float64)
    s = acquired["signal"].values.astype(np.float64).reshape(-1, t.size)
    nb = int(acquired.attrs["n_baseline"])
    nominal = float(nb * float(acquired.attrs["dt"]))
    base = s[:, :nb].mean(axis=1)
    ok = np.isfinite(base) & (base >= 0.25 * np.nanpercentile(base, 90))
    if not ok.any():
        return nominal
    largest = np.percentile(s[ok] - base[ok, None], percentile, axis=0)
    floor, peak = largest[:nb].max(), largest.max()
    if not np.isfinite(peak) or peak <= floor:
        return nominal
    first = int(np.argmax(largest > floor + level * (peak - floor)))
    return float(t[max(first - 1, 0)])


def _enhancement(acquired: xr.Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Late relative enhancement, first-pass signal rise (a.u.) and baseline per voxel."""
    s = acquired["signal"].values.astype(np.float64)
    t = acquired["time"].values
    nb = int(acquired.attrs["n_baseline"])
    base = s[..., :nb].mean(axis=-1)
    bat = bolus_arrival_from_images(acquired)
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


def roi_aif(acquired: xr.Dataset, mask: np.ndarray, *, hct: float = DEFAULT_HCT) -> np.ndarray:
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
