"""Turn an acquired phantom into a DRO-style case that the pipeline and fitters use.

The voxels of the case are the voxels of a tumour ROI; their measurements are the acquired
signals, the arterial voxels are those of a carotid ROI (so ``Pipeline(aif="measured")``
measures the AIF on the images), and their truth is the volume-weighted truth of the
tissue each acquired voxel contains (``Ktrans``, ``ve``, ``vp``), with the true plasma AIF
as ``ca``. Noise replicates are repeated acquisitions (different noise seeds) of the same
phantom, so ``tissue`` indexes the ROI voxel and ``replicate`` the acquisition.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from phantomdce.dro.protocol import Protocol
from phantomdce.dro.simulate import case_aif
from phantomdce.params import PARAMETERS
from phantomdce.phantom.acquire import Acquisition, acquire
from phantomdce.phantom.anatomy import Phantom

__all__ = ["phantom_case", "acquisition_seed", "repeat_seed"]


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

    Parameters
    ----------
    phantom, protocol, acquisition
        What to acquire and how.
    roi : ndarray (slice, y, x) bool or {"recommended", "whole_lesion"}
        Tumour ROI on the acquired grid, or the rule that draws it
        (:func:`phantomdce.phantom.roi.tumour_rois`, on the first acquisition: the lesion
        outline from the anatomy, the rest from the images, the first pass timed on them).
    carotid : ndarray bool or {"auto", "manual"}
        Carotid ROI, or how to place it (automatic selection, or a 3 mm sphere at the
        right carotid landmark), on the images of the first acquisition, without its truth.
    replicates : int
        Repeated acquisitions with independent noise.
    seed : int
        Noise seed of the case: repeat ``r`` is acquired with
        ``repeat_seed(seed, r)``.

    Returns
    -------
    xarray.Dataset
        ``signal``, ``vfa_signal``, ``arterial_signal``, truth ``Ktrans``/``ve``/``vp`` per
        voxel, ``ca`` and the protocol and acquisition attributes (truth among them: see
        :mod:`phantomdce.dro.boundary`; the estimation pipeline keeps only what a site
        knows).
    """
    from phantomdce.fit.pipeline import measurements_only
    from phantomdce.phantom.roi import carotid_roi, tumour_rois

    first = acquire(phantom, protocol, acquisition, seed=repeat_seed(seed, 0))
    if isinstance(roi, str):
        roi = tumour_rois(phantom, first)[roi].values
    # the carotid ROI is placed on the images alone: no truth variable or attribute
    carotid = carotid_roi(phantom, measurements_only(first), carotid)
    if not roi.any():
        raise ValueError("the tumour ROI holds no voxel at this resolution")
    n_roi = int(roi.sum())
    signals, vfas, arts = [], [], []
    for r in range(replicates):
        acq = (
            first if r == 0 else acquire(phantom, protocol, acquisition, seed=repeat_seed(seed, r))
        )
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
        "ca": ("time", case_aif(protocol)(t), {"units": "mM", "role": "truth"}),
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
    attrs = {
        **first.attrs,
        "replicates": replicates,
        "roi_voxels": n_roi,
        "carotid_voxels": int(np.asarray(carotid).sum()),
    }
    return xr.Dataset(data, coords=coords, attrs=attrs)
