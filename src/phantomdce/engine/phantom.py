"""Phantom cases in the engine: one unit per case and subject, assembled when the run ends.

A unit of a phantom scenario (:mod:`phantomdce.phantom.scenario`) acquires one subject
``replicates`` times (the truth side), places the tumour and carotid ROIs on the first
acquisition's images (:mod:`phantomdce.fit.roi`, the analyst), and hands the ROI voxels to the
pipeline and the fitters like any simulated chunk (:func:`phantomdce.engine.run.run_unit`).
How many voxels a ROI holds is known only then, so a unit writes its results to its own
store, ``OUT/units/case_NNNN_chunk_SSSSS.zarr`` (chunk ``S`` is subject ``S``), renamed into
place when complete and before its progress marker; :func:`assemble_case` joins a case's
subjects into the case node of ``estimates.zarr`` in the engine's layout when the run is
finalized (voxels subject by subject; ``tissue`` is the ROI voxel, offset so that tissues of
different subjects differ; ``replicate`` the code of
:func:`phantomdce.phantom.scenario.replicate_codes`).

With ``summary = "roi_mean"`` the case node holds one value per subject and acquisition
instead (:func:`roi_means`) and a variable ``roi_failed_fraction`` (fitter, ROI value; 0-1).

The other ROI summaries (:data:`ROI_VALUES`) extract the ROI value as sites do, and compare
it with the *true ROI value*: the mean, over the ROI's voxels, of each voxel's
volume-weighted truth (Ktrans in /min, ve and vp 0-1; kep = mean Ktrans / mean ve), the
value a perfect map would give:

- ``"map_mean"``: every voxel fitted, the mean of the map over the ROI;
- ``"map_median"``: every voxel fitted, the median of the map over the ROI;
- ``"mean_curve"``: the ROI's mean signal curve (and mean VFA signals) per acquisition,
  fitted once (:func:`mean_curve_case`).

Both map values follow :func:`roi_means`' rule on failed voxels.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from phantomdce.params import PARAMETERS
from phantomdce.phantom.anatomy import CLASSES
from phantomdce.phantom.scenario import ENHANCING, PhantomCase, PhantomScenario, replicate_codes
from phantomdce.report.verdict import MAX_FAILURE_RATE

__all__ = [
    "ROI_MAX_FAILED_FRACTION",
    "ROI_VALUES",
    "TRUTH",
    "unit_case",
    "enhancing_truth",
    "write_unit",
    "assemble_case",
    "roi_means",
    "roi_truth",
    "mean_curve_case",
]

#: With ``summary = "roi_mean"``, a ROI value counts as a failed fit (``success`` False, its
#: estimates NaN) when more than this fraction (0-1) of the ROI's voxels failed: the 5 % a
#: setting may lose before the verdict calls it not estimable
#: (:data:`phantomdce.report.verdict.MAX_FAILURE_RATE`). A site averages the parameter map
#: over the ROI, where failed voxels are NaN; a mean over the survivors of a ROI that lost
#: more than this would silently drop a part of the tissue (e.g. the necrosis of a
#: whole-lesion ROI) instead of measuring it. The stored ``roi_failed_fraction`` gives the
#: fraction itself.
ROI_MAX_FAILED_FRACTION: float = MAX_FAILURE_RATE
#: Truth a phantom voxel carries (the volume-weighted truth of the tissue it holds).
TRUTH = ("Ktrans", "ve", "vp", "kep")
#: ``phantom.summary`` values that extract one ROI value per subject and acquisition and
#: compare it with the mean truth of the ROI's voxels, with the statistic of the map
#: (None: the mean curve is fitted, one value per acquisition).
ROI_VALUES: dict[str, str | None] = {"map_mean": "mean", "map_median": "median", "mean_curve": None}


def unit_case(
    ps: PhantomScenario, case: PhantomCase, subject: int, *, with_images: bool = False
) -> xr.Dataset | tuple[xr.Dataset, dict[str, Any]]:
    """The ROI voxels of one subject in one case, as a DRO-style case.

    The subject is acquired ``ps.replicates`` times with the case's noise seeds; the
    tumour ROI (rule ``case.roi``) and the carotid ROI (``ps.carotid``) are placed on the
    first acquisition's images without its truth.

    With ``with_images``, also returns what the report's figures of the case show
    (:func:`figure_images`), so that the report need not acquire the subject again.

    Raises
    ------
    ValueError
        The tumour ROI holds no voxel at this resolution.
    """
    from phantomdce.fit.pipeline import measurements_only
    from phantomdce.fit.roi import place_rois
    from phantomdce.phantom.acquire import acquire
    from phantomdce.phantom.case import repeat_seed, roi_voxels

    phantom = ps.phantom(subject, case)
    protocol = ps.subject_protocol(case, subject)
    seed = ps.case_seed(case, subject)

    def acquisition(r: int) -> xr.Dataset:  # as phantom.case.acquire_repeats draws repeat r
        return acquire(phantom, protocol, case.acquisition, seed=repeat_seed(seed, r))

    first = acquisition(0)
    # the analyst places the ROIs on the first acquisition's images, without its truth
    tumour, carotid = place_rois(measurements_only(first), case.roi, ps.carotid)
    part = roi_voxels(_Repeats(first, acquisition, ps.replicates), tumour, carotid)
    if ps.summary == "mean_curve":
        part = mean_curve_case(part)
    return (part, figure_images(first, tumour)) if with_images else part


def mean_curve_case(part: xr.Dataset) -> xr.Dataset:
    """The ROI's mean curve of each acquisition: one voxel per acquisition, fitted once.

    What a site does when it fits the ROI rather than its voxels: the dynamic signal and
    the VFA signals are averaged over the ROI's voxels (magnitude images, a.u.), then go
    through the same pipeline (T1, conversion, fit) as one voxel. Its truth is the mean of
    the ROI voxels' volume-weighted truth (Ktrans /min, ve and vp 0-1).

    Parameters
    ----------
    part : xarray.Dataset
        A case of ROI voxels (:func:`phantomdce.phantom.case.roi_voxels`): voxel ``v`` is ROI
        voxel ``tissue[v]`` of acquisition ``replicate[v]``.

    Returns
    -------
    xarray.Dataset
        The same layout with one voxel per acquisition (``tissue`` 0, ``replicate`` the
        acquisition) and the same attributes (``roi_voxels`` still counts the ROI's voxels).
    """
    rep = part["replicate"].values
    acquisitions = np.unique(rep)
    per_voxel = [str(v) for v in part.data_vars if part[v].dims[:1] == ("voxel",)]
    data = {}
    for name in per_voxel:
        var = part[name]
        stacked = np.stack([var.values[rep == r].mean(axis=0) for r in acquisitions])
        data[name] = (var.dims, stacked, dict(var.attrs))
    for name in part.data_vars:
        if name not in data:
            data[name] = part[name]
    coords = {
        k: part[k] for k in part.coords if "voxel" not in part[k].dims
    }
    coords.update(
        {
            "voxel": ("voxel", np.arange(acquisitions.size)),
            "tissue": ("voxel", np.zeros(acquisitions.size, dtype=np.int64)),
            "replicate": ("voxel", acquisitions.astype(np.int64)),
        }
    )
    return xr.Dataset(data, coords=coords, attrs=dict(part.attrs))


def figure_images(first: xr.Dataset, tumour: np.ndarray) -> dict[str, Any]:
    """The unit-store variables of subject 0 that the report's phantom figures draw.

    ``figure_signal`` (slice, y, x; a.u.): the first acquisition's last frame;
    ``figure_true_Ktrans`` (slice, y, x; /min): the volume-weighted true Ktrans on the
    acquired grid; ``figure_roi`` (slice, y, x; bool): the tumour ROI the run placed; with
    the acquired grid's coordinates (mm) and its voxel size in the attributes.
    """
    dims = ("slice", "y", "x")
    return {
        "figure_signal": (dims, first["signal"].values[..., -1], {"units": "a.u."}),
        "figure_true_Ktrans": (
            dims,
            first["Ktrans"].values,
            {"units": PARAMETERS["Ktrans"].units, "role": "truth"},
        ),
        "figure_roi": (dims, np.asarray(tumour, dtype=bool)),
        "coords": {d: (d, first[d].values, {"units": "mm"}) for d in dims},
        "attrs": {k: float(first.attrs[k]) for k in ("in_plane_mm", "slice_mm")},
    }


class _Repeats(Sequence):
    """The repeated acquisitions of a subject, made one at a time (the first is kept).

    A subject's acquisitions at 1 mm in-plane take ~0.2-0.5 GB each; holding one at a time
    keeps a unit's memory independent of ``replicates``.
    """

    def __init__(self, first: xr.Dataset, make: Callable[[int], xr.Dataset], n: int) -> None:
        self.first, self.make, self.n = first, make, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, r):  # noqa: ANN001 - an index, as a list's
        if isinstance(r, slice):
            return [self[i] for i in range(*r.indices(self.n))]
        if r < 0:
            r += self.n
        if not 0 <= r < self.n:
            raise IndexError(r)
        return self.first if r == 0 else self.make(r)


def enhancing_truth(
    ps: PhantomScenario, subject: int, case: PhantomCase | None = None
) -> dict[str, float]:
    """Mean truth of a subject's enhancing tumour (rim and hypoxic zone), per parameter.

    What a tumour ROI is meant to measure: the truth of a ROI value with
    ``summary = "roi_mean"``. Ktrans and kep in /min, ve and vp 0-1. With ``case``, the
    subject's phantom in that case (its tumour diameter; see
    :meth:`~phantomdce.phantom.scenario.PhantomScenario.phantom`), not moved by a
    test-retest session's repositioning: the subject's truth is the same in every session.
    """
    ph = ps.phantom(subject, case, moved=False)
    enh = np.isin(ph.labels, [CLASSES[c].label for c in ENHANCING])
    out = {k: float(ph.truth_map(k)[enh].mean()) for k in ("Ktrans", "ve", "vp")}
    out["kep"] = out["Ktrans"] / out["ve"]
    return out


def write_unit(path: Path, ds: xr.Dataset) -> None:
    """Write a unit's results to ``path`` (a zarr store), atomically by rename."""
    tmp = path.with_name(path.name + ".partial")
    for stale in (tmp, path):
        if stale.exists():  # a unit killed before its marker: redo it whole
            shutil.rmtree(stale)
    ds.to_zarr(tmp, mode="w", zarr_format=2, consolidated=True)
    tmp.rename(path)


def _attrs(ds: xr.Dataset) -> dict[str, Any]:
    return {k: v for k, v in ds.attrs.items()}


def assemble_case(
    ps: PhantomScenario, case: PhantomCase, fitters: list[str], units: list[Path]
) -> tuple[xr.Dataset, list[int]]:
    """One case node from its subjects' unit stores (in subject order).

    Returns
    -------
    tuple
        The case dataset (the engine's layout, see :mod:`phantomdce.engine.run`) and the
        first voxel of each subject in it (for ``failures.csv``).
    """
    parts = [xr.open_zarr(u, consolidated=True, mask_and_scale=False).load() for u in units]
    offsets, starts = 0, []
    tissue, reps = [], []
    n = 0
    for p in parts:
        starts.append(n)
        tissue.append(p["tissue"].values + offsets)
        reps.append(p["replicate"].values)
        offsets += int(p.attrs.get("roi_voxels", 0))
        n += p.sizes["voxel"]
    tissue = np.concatenate(tissue).astype(np.int64)
    replicate = replicate_codes(reps, ps.replicates)

    def cat(name: str) -> np.ndarray:
        return np.concatenate([p[name].values for p in parts], axis=-1)

    est_names = [str(v) for v in parts[0].data_vars if parts[0][v].dims == ("fitter", "voxel")]
    est_names = [v for v in est_names if v != "success" and not v.startswith("at_limit_")]
    limit_names = [str(v) for v in parts[0].data_vars if str(v).startswith("at_limit_")]
    est = {k: cat(k) for k in est_names}
    success = cat("success").astype(bool)
    limits = {k[len("at_limit_") :]: cat(k).astype(bool) for k in limit_names}
    truth = {k: cat(f"true_{k}") for k in TRUTH}
    times = np.stack([p["fit_time_s"].values for p in parts], axis=1)
    roi_failed = None
    if ps.summary == "roi_mean" or ps.summary in ROI_VALUES:
        if ps.summary == "roi_mean":
            per_subject, per_value, statistic = (
                [{k: p.attrs[f"enhancing_true_{k}"] for k in TRUTH} for p in parts], None, "mean"
            )
        else:
            per_subject, per_value = [], roi_truth(truth, replicate)
            statistic = ROI_VALUES[ps.summary] or "mean"  # mean curve: one voxel per value
        est, success, limits, roi_failed, truth, tissue, replicate = roi_means(
            est,
            success,
            limits,
            replicate,
            per_subject,
            replicates=ps.replicates,
            statistic=statistic,
            truth_per_value=per_value,
        )
        starts = [int(np.searchsorted(tissue, s)) for s in range(len(parts))]
    node: dict[str, Any] = {
        "success": (("fitter", "voxel"), success),
        "fit_time_s": (
            ("fitter", "chunk"),
            times,
            {"units": "s", "long_name": "wall time of each fitter on each subject"},
        ),
        "tissue": ("voxel", tissue),
        "replicate": ("voxel", replicate),
    }
    for k, v in est.items():
        node[k] = (
            ("fitter", "voxel"),
            v,
            {"units": PARAMETERS[k].units, "long_name": f"estimated {PARAMETERS[k].long_name}"},
        )
    for k in TRUTH:
        node[f"true_{k}"] = (
            "voxel",
            truth[k],
            {"units": PARAMETERS[k].units, "long_name": f"true {k}"},
        )
    for k, flags in limits.items():
        node[f"at_limit_{k}"] = (
            ("fitter", "voxel"),
            flags,
            {"long_name": f"estimated {k} at the limit where the model degenerates"},
        )
    if roi_failed is not None:
        node["roi_failed_fraction"] = (
            ("fitter", "voxel"),
            roi_failed,
            {
                "units": "1",
                "long_name": "fraction of the ROI's voxels whose fit failed",
                "max_failed_fraction": ROI_MAX_FAILED_FRACTION,
            },
        )
    attrs = {
        **case.protocol.as_attrs(),
        "acquisition": dict(case.acquisition.__dict__),
        "case_index": case.index,
        "case_values": case.values,
        "model": "extended_tofts",
        "roi_voxels": [int(p.attrs.get("roi_voxels", 0)) for p in parts],
    }
    ds = xr.Dataset(
        node,
        coords={"fitter": list(fitters), "voxel": np.arange(tissue.size)},
        attrs=attrs,
    )
    return ds, starts


def roi_means(
    est: dict[str, np.ndarray],
    success: np.ndarray,
    at_limit: dict[str, np.ndarray],
    replicate: np.ndarray,
    truth_per_subject: list[dict[str, float]],
    *,
    replicates: int,
    max_failed: float = ROI_MAX_FAILED_FRACTION,
    statistic: str = "mean",
    truth_per_value: dict[str, np.ndarray] | None = None,
):
    """One value per subject and acquisition: the ROI mean against the enhancing truth.

    The estimate is the mean (``statistic = "median"``: the median) of the finite
    estimates of the ROI's successfully fitted voxels
    (failed voxels are NaN on the map a site averages); the value counts as failed
    (``success`` False, every estimate NaN) when more than ``max_failed`` (0-1, default
    :data:`ROI_MAX_FAILED_FRACTION`) of the ROI's voxels failed. A ROI value is at a
    parameter's limit (``at_limit``) when it did not fail and every successful voxel of the
    ROI is flagged at that limit. The truth is ``truth_per_subject`` (the mean truth of the
    subject's enhancing tumour, :func:`enhancing_truth`), unless ``truth_per_value`` gives
    it per ROI value (e.g. :func:`roi_truth`, in the order of ``np.unique(replicate)``).
    ``replicate`` holds the codes of :func:`~phantomdce.phantom.scenario.replicate_codes`.

    Returns
    -------
    tuple
        ROI estimates, success, at-limit flags (dicts of (fitter, ROI value) arrays), the
        fraction (0-1) of each ROI's voxels whose fit failed (fitter, ROI value), the truth
        per ROI value, the subject index (the ``tissue`` of a ROI value) and the replicate
        code of each ROI value.
    """
    if statistic not in ("mean", "median"):
        raise ValueError(f"statistic = {statistic!r}: expected 'mean' or 'median'")
    reduce = np.mean if statistic == "mean" else np.median
    n_fitters = success.shape[0]
    groups = np.unique(replicate)
    subject = groups // replicates
    out_est = {k: np.full((n_fitters, groups.size), np.nan) for k in est}
    out_ok = np.zeros((n_fitters, groups.size), dtype=bool)
    out_limit = {k: np.zeros((n_fitters, groups.size), dtype=bool) for k in at_limit}
    failed_fraction = np.full((n_fitters, groups.size), np.nan)
    for g, key in enumerate(groups):
        sel = replicate == key
        for f in range(n_fitters):
            ok = sel & success[f]
            failed_fraction[f, g] = (sel & ~success[f]).sum() / sel.sum()
            out_ok[f, g] = ok.any() and failed_fraction[f, g] <= max_failed
            if not out_ok[f, g]:
                continue
            for k in est:
                vals = est[k][f, ok]
                vals = vals[np.isfinite(vals)]
                out_est[k][f, g] = reduce(vals) if vals.size else np.nan
            for k in at_limit:
                out_limit[k][f, g] = bool(at_limit[k][f, ok].all())
    if truth_per_value is not None:
        truth = {k: np.asarray(v, dtype=np.float64) for k, v in truth_per_value.items()}
    else:
        truth = {
            k: np.asarray([t[k] for t in truth_per_subject], dtype=np.float64)[subject]
            for k in truth_per_subject[0]
        } if truth_per_subject else {}
    return out_est, out_ok, out_limit, failed_fraction, truth, subject, groups


def roi_truth(truth: dict[str, np.ndarray], replicate: np.ndarray) -> dict[str, np.ndarray]:
    """The true ROI value of each ROI value: the mean truth of its voxels.

    Parameters
    ----------
    truth : dict of str to ndarray
        Per-voxel truth ``Ktrans`` (/min), ``ve``, ``vp`` (0-1) (the volume-weighted truth
        of each acquired voxel; other keys are ignored).
    replicate : ndarray of int
        The ROI value of each voxel (the codes of
        :func:`~phantomdce.phantom.scenario.replicate_codes`).

    Returns
    -------
    dict of str to ndarray
        Per ROI value (in the order of ``np.unique(replicate)``): the mean ``Ktrans``,
        ``ve`` and ``vp`` of its voxels and ``kep`` = mean Ktrans / mean ve (/min).
    """
    groups, index = np.unique(replicate, return_inverse=True)
    counts = np.bincount(index, minlength=groups.size)
    out = {
        k: np.bincount(index, weights=truth[k], minlength=groups.size) / counts
        for k in ("Ktrans", "ve", "vp")
    }
    with np.errstate(invalid="ignore", divide="ignore"):
        out["kep"] = out["Ktrans"] / out["ve"]
    return out
