"""Image-side measurement: ROIs on the acquired phantom, and the carotid AIF from the images.

The analyst's side of a phantom case, beside :mod:`phantomdce.fit.pipeline`: every function
here reads only what a site has, the measurements of an acquisition
(:func:`phantomdce.phantom.acquire.acquire`, or its
:func:`~phantomdce.fit.pipeline.measurements_only`): the images ``signal`` and
``vfa_signal``, the lesion contour ``lesion_outline`` drawn on the anatomical images, the
carotid landmarks (attributes ``carotid_right_mm``, ``carotid_left_mm``), the coordinates and
the protocol's attributes. None takes the phantom or reads a truth variable.

Tumour ROIs, on the acquired grid:

- ``whole_lesion``: the naive rule, every voxel of the lesion contour (any tumour class,
  necrosis and haemorrhage included, as a contour drawn on anatomy would be).
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
coordinates (the acquisition's carotid landmark), or an automatic selection: the ``n`` voxels
with the largest first-pass signal rise among voxels with a real baseline signal, inside an
optional search region. The signal is converted to whole-blood concentration with the blood
native T1 of the field, as if the voxels were pure blood (partial volume is not corrected),
and to plasma with the assumed haematocrit.

A phantom case for the pipeline is made in three steps, which the engine calls itself and
:func:`phantom_case` composes: :func:`phantomdce.phantom.case.acquire_repeats` (the truth
side acquires), :func:`place_rois` (the analyst places the ROIs on the first acquisition's
measurements) and :func:`phantomdce.phantom.case.roi_voxels` (the ROI voxels as a DRO case).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr

from phantomdce.aif import DEFAULT_HCT
from phantomdce.dro.protocol import Protocol
from phantomdce.fit.pipeline import measurements_only
from phantomdce.phantom.acquire import Acquisition, sphere_mask
from phantomdce.phantom.anatomy import Phantom
from phantomdce.phantom.case import acquire_repeats, roi_voxels
from phantomdce.signal import concentration_from_signal, native_t1

__all__ = [
    "ROI_RULES",
    "CAROTID_PLACEMENTS",
    "tumour_rois",
    "carotid_roi",
    "carotid_roi_manual",
    "carotid_roi_auto",
    "roi_aif",
    "bolus_arrival_from_images",
    "place_rois",
    "phantom_case",
]

#: Tumour ROI rules (:func:`tumour_rois`).
ROI_RULES = ("recommended", "whole_lesion")
#: How the carotid ROI is placed (:func:`carotid_roi`).
CAROTID_PLACEMENTS = ("auto", "manual")
#: Percentile of the voxels' signal rises that times the bolus arrival (the arteries).
ARRIVAL_PERCENTILE = 99.9
#: Fraction of its peak rise (above the baseline frames' noise) that marks the first pass.
ARRIVAL_LEVEL = 0.1
#: Radius (mm) of the manual carotid ROI, a sphere at the right carotid landmark.
MANUAL_RADIUS_MM = 3.0
#: Voxels of the automatic carotid ROI.
AUTO_VOXELS = 10


def _measurement(acquired: xr.Dataset, name: str, what: str) -> xr.DataArray:
    """A measurement variable, with a clear error when the dataset lacks it."""
    if name not in acquired:
        raise ValueError(
            f"the acquisition has no variable {name!r} ({what}); expected the output of"
            " phantomdce.phantom.acquire.acquire or its measurements_only"
        )
    return acquired[name]


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
        An acquisition (:func:`phantomdce.phantom.acquire.acquire`) or its measurements:
        ``signal`` (..., time) and the protocol's ``n_baseline`` and ``dt`` attributes;
        nothing of the truth is read.
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
    signal = _measurement(acquired, "signal", "the dynamic series")
    s = signal.values.astype(np.float64).reshape(-1, t.size)
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
    s = _measurement(acquired, "signal", "the dynamic series").values.astype(np.float64)
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
    acquired: xr.Dataset,
    *,
    min_enhancement: float = 0.15,
    vessel_fraction: float = 0.5,
) -> xr.Dataset:
    """The naive and the recommended tumour ROI (boolean masks, slice x y x x).

    Parameters
    ----------
    acquired : xarray.Dataset
        An acquisition (:func:`phantomdce.phantom.acquire.acquire`) or its measurements:
        ``lesion_outline`` (the lesion contour), ``signal`` and the protocol's attributes.
    min_enhancement : float
        Late relative enhancement (0-1 and above) below which a voxel counts as
        non-enhancing.
    vessel_fraction : float
        First-pass signal rise, as a fraction of the largest in the image (an artery),
        above which a voxel counts as vessel-like.

    Returns
    -------
    xarray.Dataset
        ``whole_lesion`` and ``recommended`` (slice, y, x) bool.
    """
    outline = np.asarray(
        _measurement(acquired, "lesion_outline", "the lesion contour").values, dtype=bool
    )
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


def carotid_roi_manual(
    acquired: xr.Dataset, centre_mm: Sequence[float], radius_mm: float = MANUAL_RADIUS_MM
) -> np.ndarray:
    """A spherical ROI (slice, y, x mask) at ``centre_mm = (slice, y, x)`` in mm.

    Raises
    ------
    ValueError
        The sphere holds no voxel of the acquired grid.
    """
    mask = sphere_mask(acquired, centre_mm, radius_mm)
    if not mask.any():
        raise ValueError(f"carotid ROI at {centre_mm} mm with radius {radius_mm} mm holds no voxel")
    return mask


def carotid_roi_auto(
    acquired: xr.Dataset, *, n: int = AUTO_VOXELS, region: np.ndarray | None = None
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


def carotid_roi(acquired: xr.Dataset, how: np.ndarray | str) -> np.ndarray:
    """A carotid ROI mask: given, or placed ``"auto"`` (10 voxels) or ``"manual"``.

    ``"manual"`` is a 3 mm sphere at the right carotid landmark, the acquisition's
    attribute ``carotid_right_mm`` (``[slice, y, x]`` mm).
    """
    if not isinstance(how, str):
        return np.asarray(how, dtype=bool)
    if how == "auto":
        return carotid_roi_auto(acquired, n=AUTO_VOXELS)
    if how == "manual":
        if "carotid_right_mm" not in acquired.attrs:
            raise ValueError(
                "carotid='manual' needs the right carotid landmark, the acquisition attribute"
                " 'carotid_right_mm' ([slice, y, x] mm), which this acquisition lacks"
            )
        return carotid_roi_manual(acquired, acquired.attrs["carotid_right_mm"], MANUAL_RADIUS_MM)
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


def place_rois(
    measurements: xr.Dataset, rule: np.ndarray | str, carotid: np.ndarray | str
) -> tuple[np.ndarray, np.ndarray]:
    """The tumour and carotid ROIs an analyst places on one acquisition.

    Parameters
    ----------
    measurements : xarray.Dataset
        What the analyst has of an acquisition
        (``measurements_only(acquire(...))``; a full acquisition works too, its truth is
        not read).
    rule : ndarray (slice, y, x) bool or {"recommended", "whole_lesion"}
        The tumour ROI, or the rule that draws it (:func:`tumour_rois`).
    carotid : ndarray (slice, y, x) bool or {"auto", "manual"}
        The carotid ROI, or how to place it (:func:`carotid_roi`).

    Returns
    -------
    tuple of ndarray
        ``(tumour_mask, carotid_mask)``, each (slice, y, x) bool.

    Raises
    ------
    ValueError
        An unknown rule or placement, or the tumour ROI holds no voxel at this resolution.
    """
    if isinstance(rule, str):
        if rule not in ROI_RULES:
            raise ValueError(f"roi={rule!r}: expected one of {', '.join(ROI_RULES)} or a mask")
        tumour = tumour_rois(measurements)[rule].values
    else:
        tumour = np.asarray(rule, dtype=bool)
    carotid_mask = carotid_roi(measurements, carotid)
    if not tumour.any():
        raise ValueError("the tumour ROI holds no voxel at this resolution")
    return tumour, carotid_mask


def phantom_case(
    phantom: Phantom,
    protocol: Protocol,
    acquisition: Acquisition,
    roi: np.ndarray | str,
    carotid: np.ndarray | str = "auto",
    *,
    replicates: int = 1,
    seed: int = 0,
) -> xr.Dataset:
    """A DRO-style case (see :func:`phantomdce.dro.simulate.simulate_case`) of ROI voxels.

    :func:`~phantomdce.phantom.case.acquire_repeats`, then :func:`place_rois` on the first
    acquisition's measurements (:func:`~phantomdce.fit.pipeline.measurements_only`), then
    :func:`~phantomdce.phantom.case.roi_voxels`.

    Parameters
    ----------
    phantom, protocol, acquisition
        What to acquire and how.
    roi : ndarray (slice, y, x) bool or {"recommended", "whole_lesion"}
        Tumour ROI on the acquired grid, or the rule that draws it (:func:`tumour_rois`).
    carotid : ndarray bool or {"auto", "manual"}
        Carotid ROI, or how to place it (automatic selection, or a 3 mm sphere at the
        right carotid landmark).
    replicates : int
        Repeated acquisitions with independent noise.
    seed : int
        Noise seed of the case: repeat ``r`` is acquired with ``repeat_seed(seed, r)``.

    Returns
    -------
    xarray.Dataset
        See :func:`phantomdce.phantom.case.roi_voxels`.
    """
    acquisitions = acquire_repeats(
        phantom, protocol, acquisition, replicates=replicates, seed=seed
    )
    tumour, carotid_mask = place_rois(measurements_only(acquisitions[0]), roi, carotid)
    return roi_voxels(acquisitions, tumour, carotid_mask)
