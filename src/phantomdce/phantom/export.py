"""Export an acquired phantom as NIfTI-1 images with JSON sidecars.

Files (arrays are stored ``(x, y, z[, t])``; the phantom's ``(slice, y, x[, t])`` order is
transposed, and the affine maps voxel indices to mm with the acquired voxel size and the
slice spacing, thickness plus gap):

- ``dynamic.nii.gz`` (float32, ``pixdim[4]`` = dt in s), ``vfa.nii.gz`` (float32);
- ``Ktrans.nii.gz``, ``ve.nii.gz``, ``vp.nii.gz``: volume-weighted truth at the acquired
  grid (float64), and ``labels_truth.nii.gz`` (uint8) with ``Ktrans_truth.nii.gz``,
  ``ve_truth.nii.gz``, ``vp_truth.nii.gz`` on the fine truth grid;
- ``roi_whole_lesion.nii.gz`` and ``roi_recommended.nii.gz`` (uint8) when ROIs are given;
- a JSON sidecar per image: ``RepetitionTime`` (s), ``FlipAngle`` (deg),
  ``MagneticFieldStrength`` (T), ``SliceThickness`` and ``SpacingBetweenSlices`` (mm),
  ``Units``, and a ``phantomdce`` object with the protocol, acquisition and class table.

Everything is written at its stored precision, so a re-import returns the same arrays.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict
from pathlib import Path

import nibabel as nib
import numpy as np
import xarray as xr

from phantomdce.dro.nifti import write_json
from phantomdce.phantom.anatomy import CLASSES, Phantom

__all__ = ["export_phantom_nifti", "read_nifti"]


def _affine(dx: float, dy: float, dz: float) -> np.ndarray:
    return np.diag([dx, dy, dz, 1.0])


def _save(data: np.ndarray, path: Path, zooms: tuple[float, float, float], dt: float | None):
    img = nib.Nifti1Image(data, _affine(*zooms))
    img.header.set_data_dtype(data.dtype)
    img.set_qform(_affine(*zooms), code=1)
    img.set_sform(_affine(*zooms), code=1)
    img.header.set_zooms(zooms + ((dt if dt is not None else 1.0),) * (data.ndim - 3))
    img.header.set_xyzt_units(xyz="mm", t="sec")
    nib.save(img, str(path))


def _xyz(a: np.ndarray) -> np.ndarray:
    """(slice, y, x[, ...]) -> (x, y, slice[, ...])."""
    return np.swapaxes(a, 0, 2)


def export_phantom_nifti(
    phantom: Phantom,
    acquired: xr.Dataset,
    outdir: str | Path,
    *,
    rois: xr.Dataset | None = None,
    overwrite: bool = False,
) -> list[Path]:
    """Write the acquired phantom, its truth and labels as NIfTI with sidecars.

    Parameters
    ----------
    phantom : Phantom
        The phantom (for the truth-grid labels and maps).
    acquired : xarray.Dataset
        Its acquisition (:func:`phantomdce.phantom.acquire.acquire`).
    outdir : str or Path
        Output directory (refused if it exists and is not empty, unless ``overwrite``).
    rois : xarray.Dataset, optional
        ROIs from :func:`phantomdce.fit.roi.tumour_rois`.

    Returns
    -------
    list of Path
        The files written.
    """
    out = Path(outdir)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} exists and is not empty: use overwrite=True")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    a = acquired.attrs
    acq_zooms = (
        float(a["in_plane_mm"]),
        float(a["in_plane_mm"]),
        float(a["slice_mm"]) + float(a["gap_mm"]),
    )
    truth_zooms = (phantom.voxel_mm,) * 3
    common = {
        "MagneticFieldStrength": a["field_strength"],
        "phantomdce": {
            "protocol": {k: a[k] for k in a if k not in ("protocol_units",)},
            "geometry": asdict(phantom.geometry),
            "classes": {
                n: {
                    "label": c.label,
                    "T10_s": c.t10,
                    "pd": c.pd,
                    "fat_fraction": c.fat_fraction,
                    "kinetics": c.kinetics,
                    "source": c.source,
                }
                for n, c in CLASSES.items()
            },
            "seed": phantom.seed,
            "layout": "arrays (x, y, z[, t]); affine in mm",
        },
    }
    acq_meta = {
        "SliceThickness": a["slice_mm"],
        "SpacingBetweenSlices": a["slice_mm"] + a["gap_mm"],
    }
    written: list[Path] = []

    def put(name, data, zooms, meta, dt=None):
        path = out / f"{name}.nii.gz"
        _save(data, path, zooms, dt)
        write_json({**common, **meta}, out / f"{name}.json")
        written.extend([path, out / f"{name}.json"])

    put(
        "dynamic",
        _xyz(acquired["signal"].values),
        acq_zooms,
        {
            **acq_meta,
            "RepetitionTime": a["tr"],
            "FlipAngle": a["fa"],
            "Units": "a.u.",
            "FrameTimesStart": acquired["time"].values.tolist(),
        },
        dt=float(a["dt"]),
    )
    put(
        "vfa",
        _xyz(acquired["vfa_signal"].values),
        acq_zooms,
        {
            **acq_meta,
            "RepetitionTime": a["tr"],
            "Units": "a.u.",
            "FlipAngle": acquired["flip_angle"].values.tolist(),
        },
    )
    for name in ("Ktrans", "ve", "vp"):
        put(
            name,
            _xyz(acquired[name].values.astype(np.float64)),
            acq_zooms,
            {**acq_meta, "Units": acquired[name].attrs["units"]},
        )
        put(
            f"{name}_truth",
            _xyz(phantom.truth_map(name)),
            truth_zooms,
            {"Units": acquired[name].attrs["units"], "grid": "truth"},
        )
    put(
        "labels_truth",
        _xyz(phantom.labels),
        truth_zooms,
        {"grid": "truth", "labels": {c.label: n for n, c in CLASSES.items()}},
    )
    if rois is not None:
        for name in rois.data_vars:
            put(f"roi_{name}", _xyz(rois[name].values.astype(np.uint8)), acq_zooms, acq_meta)
    return written


def read_nifti(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read an exported image back as ``(slice, y, x[, ...])`` and its affine."""
    img = nib.load(str(path))
    return _xyz(np.asarray(img.dataobj)), img.affine
