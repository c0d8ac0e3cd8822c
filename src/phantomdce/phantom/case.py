"""Turn acquisitions of the phantom into a DRO-style case that the pipeline and fitters use.

The truth side of a phantom case: the first and last of three steps (the middle one is the
analyst's):

1. :func:`acquire_repeats`: the phantom acquired ``replicates`` times with independent
   noise (repeat ``r`` with the seed :func:`repeat_seed` ``(seed, r)``);
2. the analyst places a tumour ROI and a carotid ROI on the first acquisition's
   measurements (:func:`phantomdce.fit.roi.place_rois`, the estimation side; this module
   neither imports nor calls it);
3. :func:`roi_voxels`: the ROI voxels as a case. Their measurements are the acquired
   signals, the arterial voxels are those of the carotid ROI (so
   ``Pipeline(aif="measured")`` measures the AIF on the images), and their truth is the
   volume-weighted truth of the tissue each acquired voxel contains (``Ktrans``, ``ve``,
   ``vp``), with the true plasma AIF as ``ca``. Noise replicates are the repeated
   acquisitions, so ``tissue`` indexes the ROI voxel and ``replicate`` the acquisition.

:func:`phantomdce.fit.roi.phantom_case` composes the three.
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral

import numpy as np
import xarray as xr

from phantomdce.dro.protocol import Protocol
from phantomdce.params import PARAMETERS
from phantomdce.phantom.acquire import LANDMARK_ATTRS, Acquisition, acquire
from phantomdce.phantom.anatomy import Phantom

__all__ = ["acquire_repeats", "roi_voxels", "acquisition_seed", "repeat_seed"]


def acquisition_seed(*key: int) -> int:
    """A noise seed for one acquisition, from a key such as ``(seed, case, subject, repeat)``.

    Distinct keys give unrelated seeds (hashed by :class:`numpy.random.SeedSequence`), so
    no two subjects, repeats or cases share a noise field, whatever their counts.
    """
    state = np.random.SeedSequence([int(k) for k in key]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


def repeat_seed(seed: int, repeat: int) -> int:
    """The noise seed of repeat ``repeat`` of a case whose seed is ``seed``."""
    return acquisition_seed(seed, repeat)


def acquire_repeats(
    phantom: Phantom,
    protocol: Protocol,
    acquisition: Acquisition,
    *,
    replicates: int = 1,
    seed: int = 0,
) -> list[xr.Dataset]:
    """The phantom acquired ``replicates`` times with independent noise.

    Parameters
    ----------
    phantom, protocol, acquisition
        What to acquire and how (:func:`phantomdce.phantom.acquire.acquire`).
    replicates : int
        Repeated acquisitions (>= 1).
    seed : int
        Noise seed of the case: repeat ``r`` is acquired with ``repeat_seed(seed, r)``.

    Returns
    -------
    list of xarray.Dataset
        The acquisitions, repeat by repeat (all held in memory: ``replicates`` times one
        acquisition).
    """
    if isinstance(replicates, bool) or not isinstance(replicates, Integral) or replicates < 1:
        raise ValueError(f"replicates = {replicates!r}: expected an integer >= 1")
    return [
        acquire(phantom, protocol, acquisition, seed=repeat_seed(seed, r))
        for r in range(replicates)
    ]


def roi_voxels(
    acquisitions: Sequence[xr.Dataset], roi_mask: np.ndarray, carotid_mask: np.ndarray
) -> xr.Dataset:
    """A DRO-style case (see :func:`phantomdce.dro.simulate.simulate_case`) of ROI voxels.

    Parameters
    ----------
    acquisitions : sequence of xarray.Dataset
        Repeated acquisitions of one phantom (:func:`acquire_repeats`); the first gives the
        truth, the time and flip-angle axes and the attributes.
    roi_mask : ndarray (slice, y, x) bool
        The tumour ROI on the acquired grid (e.g. :func:`phantomdce.fit.roi.place_rois`).
    carotid_mask : ndarray (slice, y, x) bool
        The carotid ROI, whose voxels become ``arterial_signal``.

    Returns
    -------
    xarray.Dataset
        ``signal``, ``vfa_signal``, ``arterial_signal``, truth ``Ktrans``/``ve``/``vp`` per
        voxel, ``ca`` and the protocol and acquisition attributes (truth among them: see
        :mod:`phantomdce.dro.boundary`; the estimation pipeline keeps only what a site
        knows) with ``replicates``, ``roi_voxels`` and ``carotid_voxels``. Voxel ``v`` is
        ROI voxel ``v // replicates`` (coordinate ``tissue``) of acquisition
        ``v % replicates`` (``replicate``).

    Raises
    ------
    ValueError
        No acquisition, masks not on the acquired grid, or an empty tumour ROI.
    """
    if len(acquisitions) == 0:
        raise ValueError("acquisitions: expected at least one acquisition")
    first = acquisitions[0]
    grid = first["signal"].shape[:3]
    roi = np.asarray(roi_mask, dtype=bool)
    carotid = np.asarray(carotid_mask, dtype=bool)
    for name, mask in (("roi_mask", roi), ("carotid_mask", carotid)):
        if mask.shape != grid:
            raise ValueError(
                f"{name} has shape {mask.shape}: expected the acquired grid (slice, y, x) {grid}"
            )
    if not roi.any():
        raise ValueError("the tumour ROI holds no voxel at this resolution")
    replicates = len(acquisitions)
    n_roi = int(roi.sum())
    signals, vfas, arts = [], [], []
    for acq in acquisitions:
        signals.append(acq["signal"].values[roi].astype(np.float64))
        vfas.append(acq["vfa_signal"].values[roi].astype(np.float64))
        arts.append(acq["signal"].values[carotid])
    # voxel v: ROI voxel v // replicates, acquisition v % replicates (as DRO cases)
    order = lambda arrs: np.stack(arrs, axis=1).reshape(n_roi * replicates, -1)  # noqa: E731
    signal, vfa = order(signals), order(vfas)
    tissue = np.repeat(np.arange(n_roi), replicates)
    truth = {k: np.repeat(first[k].values[roi], replicates) for k in ("Ktrans", "ve", "vp")}
    t = first["time"].values
    data = {
        "signal": (("voxel", "time"), signal, {"units": "a.u.", "role": "measurement"}),
        "vfa_signal": (("voxel", "flip_angle"), vfa, {"units": "a.u.", "role": "measurement"}),
        "arterial_signal": (
            ("arterial_voxel", "time"),
            np.concatenate(arts).astype(np.float64),
            {"units": "a.u.", "role": "measurement"},
        ),
        "ca": ("time", first["ca"].values, {"units": "mM", "role": "truth"}),
    }
    units = {k: PARAMETERS[k].units for k in ("Ktrans", "ve", "vp")}
    for k, v in truth.items():
        data[k] = (
            "voxel",
            v,
            {
                "units": units[k],
                "role": "truth",
                "long_name": f"volume-weighted true {k} of the voxel",
            },
        )
    coords = {
        "time": ("time", t, {"units": "s"}),
        "flip_angle": ("flip_angle", first["flip_angle"].values, {"units": "deg"}),
        "voxel": ("voxel", np.arange(signal.shape[0])),
        "tissue": ("voxel", tissue),
        "replicate": ("voxel", np.tile(np.arange(replicates), n_roi)),
    }
    # the landmarks locate points of the acquired grid, which a list of voxels has not
    landmarks = set(LANDMARK_ATTRS.values())
    attrs = {
        **{k: v for k, v in first.attrs.items() if k not in landmarks},
        "replicates": replicates,
        "roi_voxels": n_roi,
        "carotid_voxels": int(carotid.sum()),
    }
    return xr.Dataset(data, coords=coords, attrs=attrs)
