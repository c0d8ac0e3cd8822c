"""Export one case of a DRO store as NIfTI-1 images with BIDS-style JSON sidecars.

DCE analysis tools expect images, so the voxels of a case are laid out on a 3-D grid:

* ``x`` (first axis, ``i``) = noise replicate, ``0 .. replicates - 1``;
* ``y`` (second axis, ``j``) = tissue index (the row of the scenario's tissue grid);
* ``z`` (third axis, ``k``) = a single slice.

Store voxel ``v`` (tissue ``v // replicates``, replicate ``v % replicates``) is image voxel
``[v % replicates, v // replicates, 0]``, and the image shape is
``(replicates, n_tissue, 1)`` (plus the time or flip-angle axis for 4-D series). Every
voxel of one image column ``y`` therefore shares the same true parameters. The grid has
no spatial meaning: voxels are 1 mm isotropic with an identity affine.

An export writes, into one directory:

* ``dynamic.nii.gz``: 4-D (x, y, z, time) dynamic SPGR signal (a.u., float32),
  ``pixdim[4]`` = frame interval ``dt`` in s, ``xyzt_units`` = mm and s;
* ``vfa.nii.gz``: 4-D (x, y, z, flip angle) variable-flip-angle signal (a.u., float32);
* one 3-D truth map per truth variable of the case (``Ktrans``, ``ve``, ``vp``, ``kep``,
  ``fp``, ``ps``, ``T10``, ``m0``: whichever the model has; ``signal_pre``, the noise-free
  pre-contrast signal in a.u.) and ``ct.nii.gz``, the 4-D
  noise-free tissue concentration (mM); truth is float64 so it equals the store exactly;
* ``aif.tsv``: the true plasma AIF at the frame times, columns ``time_s`` and ``ca_mM``;
* a JSON sidecar next to every image (``dynamic.json``, ``vfa.json``, ``Ktrans.json``, ...)
  with BIDS keys where BIDS has one (``RepetitionTime`` in s, ``FlipAngle`` in deg,
  ``MagneticFieldStrength`` in T, ``ContrastBolusIngredient``, ``FrameTimesStart`` and
  ``FrameDuration`` in s, ``Units``) and a ``phantomdce`` object with the full protocol,
  its units, the model, scenario name and hash, seed, case name, package version and the
  voxel layout.

The measured series are float32: their relative rounding (6e-8) is far below any noise
level or fitting tolerance of interest. Truth maps and ``ct`` are float64 because they
are what fitted values are compared against.

A case of a *phantom* store (``phantomdce simulate`` of a phantom scenario; its root has
``kind = "phantom"`` and each case an ``acquired`` and a ``truth`` node) is an image and is
exported as one, with its geometry (see :data:`IMAGE_LAYOUT`): ``dynamic`` (x, y, z, time),
``vfa`` (x, y, z, flip angle), the volume-weighted truth ``Ktrans``, ``ve``, ``vp`` at the
acquired grid, ``labels_truth``, ``Ktrans_truth``, ``ve_truth``, ``vp_truth`` at the 1 mm
truth grid (each grid with its own affine) and ``aif.tsv``.

An export is written into a temporary sibling directory and moved into place when every
file is written: a failed export leaves nothing behind (no empty or partial directory).
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import xarray as xr

import phantomdce
from phantomdce.dro.boundary import PROVENANCE_ATTRS
from phantomdce.dro.config import ConfigError
from phantomdce.params import PARAMETERS

__all__ = ["export_nifti", "LAYOUT", "IMAGE_LAYOUT", "MEASUREMENT_DTYPE", "TRUTH_DTYPE"]

#: Data type of the measured series (dynamic and VFA signal).
MEASUREMENT_DTYPE = np.float32
#: Data type of the truth maps and of ``ct``.
TRUTH_DTYPE = np.float64

#: Human-readable description of the voxel layout (also written to every sidecar).
LAYOUT = (
    "x (i, first axis) = noise replicate 0..replicates-1; y (j, second axis) = tissue index"
    " (row of the scenario's tissue grid); z (k, third axis) = single slice. Store voxel v"
    " (tissue v // replicates, replicate v % replicates) is image voxel"
    " [v % replicates, v // replicates, 0]. The 4th axis of dynamic/ct is time, of vfa the"
    " flip angle."
)
SPATIAL_NOTE = (
    "No spatial meaning: voxels are nominally 1 mm isotropic with an identity affine"
    " (qform and sform)."
)
#: Voxel layout of a phantom store's export (written to every sidecar).
IMAGE_LAYOUT = (
    "arrays (x, y, z[, t or flip angle]), i.e. the store's (slice, y, x[, ...]) transposed;"
    " the affine (qform = sform) maps voxel indices (i, j, k) to the centres' x_mm, y_mm and"
    " slice_mm coordinates of the store (mm), with the acquired voxel size in plane and the"
    " slice spacing (thickness plus gap) along z"
)
#: Active ingredient (BIDS ``ContrastBolusIngredient``) of each supported agent.
_INGREDIENT = {"gadobutrol": "GADOLINIUM", "gadoterate": "GADOLINIUM", "gadoteridol": "GADOLINIUM"}
#: Non-truth-map outputs; with the truth-variable names, every file name an export may write.
_FIXED_STEMS = ("dynamic", "vfa", "ct")
_POSSIBLE_TRUTH = (*PARAMETERS, "m0", "signal_pre")
#: Files of a phantom export beyond those (``<name>_truth`` maps on the truth grid).
_IMAGE_STEMS = ("labels_truth", "Ktrans_truth", "ve_truth", "vp_truth")
#: Case attributes that are provenance rather than protocol values.
_NOT_PROTOCOL = PROVENANCE_ATTRS


def _jsonable(value: Any) -> Any:
    """Plain JSON types; non-finite floats become the strings ``"inf"``, ``"-inf"``, ``"nan"``."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [_jsonable(v) for v in (value.tolist() if isinstance(value, np.ndarray) else value)]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _case_names(tree: xr.DataTree) -> list[str]:
    root = tree.to_dataset(inherit=False)
    if "case_name" in root:
        return [str(c) for c in root["case_name"].values]
    return sorted(tree.children)


def _grid(ds: xr.Dataset) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """Image indices (x = replicate, y = tissue) of every voxel, and the (nx, ny) shape."""
    rep = np.asarray(ds["replicate"].values, dtype=np.int64)
    tis = np.asarray(ds["tissue"].values, dtype=np.int64)
    nx = int(ds.attrs.get("replicates", rep.max() + 1))
    ny = int(tis.max()) + 1
    if nx * ny != rep.size or len(set(zip(rep.tolist(), tis.tolist(), strict=True))) != rep.size:
        raise ValueError(
            f"case has {rep.size} voxels, expected every (replicate, tissue) pair of a"
            f" {nx} x {ny} grid exactly once; was the store written for a subset of voxels?"
        )
    return rep, tis, (nx, ny)


def _image(
    values: np.ndarray,
    rep: np.ndarray,
    tis: np.ndarray,
    shape: tuple[int, int],
    dtype: type[np.floating],
) -> np.ndarray:
    """Scatter per-voxel values (voxel, ...) onto the (x, y, 1, ...) grid."""
    values = np.asarray(values)
    out = np.full((*shape, 1, *values.shape[1:]), np.nan, dtype=dtype)
    out[rep, tis, 0] = values
    return out


def _save(data: np.ndarray, path: Path, *, tr_s: float | None = None, t0_s: float = 0.0) -> None:
    """Write a gzip'd NIfTI-1 with identity affine, 1 mm voxels, units mm (and s)."""
    affine = np.eye(4)
    img = nib.Nifti1Image(data, affine)
    hdr = img.header
    hdr.set_data_dtype(data.dtype)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    zooms = (1.0, 1.0, 1.0) + ((float(tr_s) if tr_s is not None else 1.0),) * (data.ndim - 3)
    hdr.set_zooms(zooms)
    hdr.set_xyzt_units(xyz="mm", t="sec")
    if data.ndim == 4 and tr_s is not None:
        hdr["toffset"] = t0_s
    nib.save(img, str(path))


def write_json(obj: Mapping[str, Any], path: Path) -> None:
    path.write_text(json.dumps(_jsonable(obj), indent=2, allow_nan=False) + "\n")


def _open(store: str | Path | xr.DataTree) -> tuple[xr.DataTree, bool]:
    if isinstance(store, xr.DataTree):
        return store, False
    from phantomdce.dro.store import open_dro

    return open_dro(store), True


def export_nifti(
    store: str | Path | xr.DataTree,
    outdir: str | Path,
    *,
    case: str | None = None,
    overwrite: bool = False,
) -> list[Path]:
    """Export one case of a DRO store as NIfTI-1 images, JSON sidecars and an AIF table.

    See the module docstring for the voxel layout and the files written.

    Parameters
    ----------
    store : str, Path or xarray.DataTree
        A DRO ``.zarr`` store (written by :func:`phantomdce.dro.store.write_dro` /
        ``phantomdce simulate``) or the already-open tree from
        :func:`phantomdce.dro.store.open_dro`.
    outdir : str or Path
        Output directory (created if needed).
    case : str, optional
        Case node name, e.g. ``"case_0001"`` (default: the first case of the store).
    overwrite : bool, optional
        Write into an existing non-empty directory, first deleting any file an export
        could have written there (other files are left alone). Default: refuse.

    Returns
    -------
    list of Path
        The files written, images first (each followed by its sidecar), then ``aif.tsv``.

    Raises
    ------
    ValueError
        ``case`` is not a case of the store (a :class:`~phantomdce.dro.config.ConfigError`,
        listing the available names), or the case does not hold a complete replicate x
        tissue grid of voxels.
    FileExistsError
        ``outdir`` exists and is not empty, and ``overwrite`` is False.
    FileNotFoundError
        ``store`` is a path that does not exist.

    """
    outdir = Path(outdir)
    if outdir.exists() and not outdir.is_dir():
        raise FileExistsError(f"{outdir} exists and is not a directory")
    if outdir.is_dir() and any(outdir.iterdir()) and not overwrite:
        raise FileExistsError(
            f"{outdir} exists and is not empty: choose a new directory or pass overwrite=True"
        )
    tree, opened = _open(store)
    try:
        names = _case_names(tree)
        if not names:
            raise ValueError("the DRO store has no cases")
        name = names[0] if case is None else str(case)
        if name not in names or name not in tree.children:
            # ConfigError is a ValueError that the CLI reports as a one-line error (status 2)
            raise ConfigError(f"case {name!r} is not in the store; available cases: {names}")
        node = tree[name]
        ds = node.to_dataset(inherit=False).load()
        root_attrs = dict(tree.attrs)
        image = None
        if root_attrs.get("kind") == "phantom" or "acquired" in node.children:
            if "acquired" not in node.children or "truth" not in node.children:
                raise ConfigError(
                    f"case {name!r} of the phantom store has no 'acquired' and 'truth' nodes:"
                    " was it written by `phantomdce simulate`?"
                )
            image = (
                node["acquired"].to_dataset(inherit=False).load(),
                node["truth"].to_dataset(inherit=False).load(),
            )
    finally:
        if opened:
            tree.close()
    if image is not None:
        return _write_atomically(
            outdir,
            overwrite,
            lambda tmp: _export_image_case(ds, *image, name, root_attrs, tmp),
        )
    return _write_atomically(
        outdir, overwrite, lambda tmp: _export_case(ds, name, root_attrs, tmp, overwrite=False)
    )


def _write_aif_tsv(path: Path, time: np.ndarray, ca: np.ndarray) -> Path:
    """Write ``aif.tsv`` (columns ``time_s``, ``ca_mM``; round-trip floats) with :mod:`csv`."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, delimiter="\t", lineterminator="\n")
        writer.writerow(("time_s", "ca_mM"))
        writer.writerows((repr(float(t)), repr(float(c))) for t, c in zip(time, ca, strict=True))
    return path


def _write_atomically(outdir: Path, overwrite: bool, write) -> list[Path]:
    """Run ``write(tmp)`` in a temporary sibling of ``outdir``, then move its files in.

    On any failure the temporary directory is removed and ``outdir`` is left as it was
    (not created if it did not exist). With ``overwrite``, files an export could have
    written are deleted from ``outdir`` first; other files are left alone.
    """
    outdir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=outdir.parent, prefix=f".{outdir.name}.partial-"))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the export is an ordinary folder
    try:
        written = write(tmp)
        if not outdir.exists():
            tmp.rename(outdir)
        else:
            if overwrite:
                names = {p.name for p in written}
                stems = (*_FIXED_STEMS, *_POSSIBLE_TRUTH, *_IMAGE_STEMS)
                names |= {f"{s}{x}" for s in stems for x in (".nii.gz", ".json")}
                names.add("aif.tsv")
                for n in names:
                    (outdir / n).unlink(missing_ok=True)
            for p in written:
                (tmp / p.name).replace(outdir / p.name)
            shutil.rmtree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return [outdir / p.name for p in written]


def _export_case(
    ds: xr.Dataset, name: str, root_attrs: Mapping[str, Any], outdir: Path, *, overwrite: bool
) -> list[Path]:
    rep, tis, shape = _grid(ds)
    attrs = dict(ds.attrs)
    units = dict(attrs.get("protocol_units", {}))
    units.setdefault("n_frames", "1")  # derived values stored without a unit entry
    units.setdefault("injection_volume", "mL")
    protocol = {k: v for k, v in attrs.items() if k not in _NOT_PROTOCOL}
    time = np.asarray(ds["time"].values, dtype=np.float64)
    dt = float(attrs["dt"])
    window = dt if attrs.get("sampling") == "average" else 0.0
    truth = [
        k
        for k, v in ds.data_vars.items()
        if v.attrs.get("role") == "truth" and v.dims == ("voxel",)
    ]

    outdir.mkdir(parents=True, exist_ok=True)
    if overwrite:
        for stem in (*_FIXED_STEMS, *_POSSIBLE_TRUTH, *truth):
            for suffix in (".nii.gz", ".json"):
                (outdir / f"{stem}{suffix}").unlink(missing_ok=True)
        (outdir / "aif.tsv").unlink(missing_ok=True)

    provenance = {
        "case": name,
        "case_index": attrs.get("case_index"),
        "case_values": attrs.get("case_values", {}),
        "scenario": attrs.get("scenario", root_attrs.get("scenario")),
        "scenario_hash": attrs.get("scenario_hash", root_attrs.get("scenario_hash")),
        "seed": attrs.get("seed", root_attrs.get("seed")),
        "model": attrs.get("model", root_attrs.get("model")),
        "phantomdce_version": attrs.get("phantomdce_version", phantomdce.__version__),
        "exported_by_phantomdce_version": phantomdce.__version__,
        "protocol": protocol,
        "protocol_units": units,
        "replicates": shape[0],
        "n_tissue": shape[1],
        "voxel_layout": LAYOUT,
        "image_shape_xyz": [shape[0], shape[1], 1],
        "spatial": SPATIAL_NOTE,
        "voxel_size_mm": [1.0, 1.0, 1.0],
        "snr_definition": attrs.get("snr_definition"),
        "noise_block_voxels": attrs.get("noise_block_voxels"),
        "truth_grid_step_s": attrs.get("truth_grid_step_s"),
    }
    bids_common = {
        "MagneticFieldStrength": attrs.get("field_strength"),
        "ContrastBolusIngredient": _INGREDIENT.get(str(attrs.get("agent")), "GADOLINIUM"),
        "RepetitionTimeExcitation": attrs.get("tr"),
    }
    written: list[Path] = []

    def emit(stem: str, data: np.ndarray, sidecar: dict[str, Any], **kw: Any) -> None:
        img_path, json_path = outdir / f"{stem}.nii.gz", outdir / f"{stem}.json"
        _save(data, img_path, **kw)
        write_json(sidecar, json_path)
        written.extend([img_path, json_path])

    frames = {
        "FrameTimesStart": (time - window / 2).tolist(),
        "FrameDuration": [window] * time.size,
    }
    frame_info = {
        "frame_times_s": time.tolist(),
        "frame_time_definition": (
            "frame k is acquired at time[k] = k * dt (s); sampling 'instant': the value at"
            " time[k] (FrameDuration 0); 'average': the mean over [time[k] - dt/2,"
            " time[k] + dt/2] (FrameTimesStart = time[k] - dt/2, FrameDuration = dt)"
        ),
        "dt_s": dt,
    }

    sig = ds["signal"]
    emit(
        "dynamic",
        _image(sig.values, rep, tis, shape, MEASUREMENT_DTYPE),
        {
            **bids_common,
            "RepetitionTime": attrs.get("tr"),
            "FlipAngle": attrs.get("fa"),
            **frames,
            "Units": sig.attrs.get("units", "a.u."),
            "phantomdce": {
                **provenance,
                "image": "dynamic SPGR magnitude signal (x, y, z, time), Rician noise",
                "dtype": np.dtype(MEASUREMENT_DTYPE).name,
                "RepetitionTime_note": (
                    "RepetitionTime is the excitation TR of the SPGR sequence (s); the"
                    " frame interval is dt (NIfTI pixdim[4])"
                ),
                **frame_info,
            },
        },
        tr_s=dt,
        t0_s=float(time[0]),
    )

    vfa = ds["vfa_signal"]
    angles = np.asarray(ds["flip_angle"].values, dtype=np.float64).tolist()
    emit(
        "vfa",
        _image(vfa.values, rep, tis, shape, MEASUREMENT_DTYPE),
        {
            **bids_common,
            "RepetitionTime": attrs.get("tr"),
            "FlipAngle": angles,
            "Units": vfa.attrs.get("units", "a.u."),
            "phantomdce": {
                **provenance,
                "image": (
                    "variable flip angle SPGR signal (x, y, z, flip angle), Rician noise;"
                    " volume n was acquired at FlipAngle[n] (deg)"
                ),
                "dtype": np.dtype(MEASUREMENT_DTYPE).name,
                "flip_angles_deg": angles,
                "tr_s": attrs.get("tr"),
            },
        },
    )

    for key in truth:
        var = ds[key]
        var_units = var.attrs.get("units", PARAMETERS[key].units if key in PARAMETERS else "")
        emit(
            key,
            _image(var.values, rep, tis, shape, TRUTH_DTYPE),
            {
                **bids_common,
                "Units": var_units,
                "phantomdce": {
                    **provenance,
                    "image": f"ground truth {key} map (x, y, z)",
                    "parameter": key,
                    "long_name": var.attrs.get("long_name", key),
                    "units": var_units,
                    "dtype": np.dtype(TRUTH_DTYPE).name,
                },
            },
        )

    ct = ds["ct"]
    emit(
        "ct",
        _image(ct.values, rep, tis, shape, TRUTH_DTYPE),
        {
            **bids_common,
            **frames,
            "Units": ct.attrs.get("units", "mM"),
            "phantomdce": {
                **provenance,
                "image": "ground truth tissue concentration (x, y, z, time), noise-free",
                "parameter": "ct",
                "units": ct.attrs.get("units", "mM"),
                "dtype": np.dtype(TRUTH_DTYPE).name,
                **frame_info,
            },
        },
        tr_s=dt,
        t0_s=float(time[0]),
    )

    ca = np.asarray(ds["ca"].values, dtype=np.float64)
    aif_path = _write_aif_tsv(outdir / "aif.tsv", time, ca)
    written.append(aif_path)
    return written


def _axis(coord: np.ndarray, fallback_mm: float, what: str) -> tuple[float, float]:
    """Origin and spacing (mm) of an evenly spaced axis of voxel centres."""
    c = np.asarray(coord, dtype=np.float64)
    if c.size > 1:
        steps = np.diff(c)
        if not np.allclose(steps, steps[0], rtol=1e-6, atol=1e-9):
            raise ValueError(f"the {what} coordinates are not evenly spaced: {c.tolist()}")
        return float(c[0]), float(steps[0])
    return float(c[0]), float(fallback_mm)


def _image_affine(x: tuple[float, float], y: tuple[float, float], z: tuple[float, float]):
    """Voxel index (i, j, k) -> mm, from (origin, spacing) per axis."""
    affine = np.diag([x[1], y[1], z[1], 1.0])
    affine[:3, 3] = [x[0], y[0], z[0]]
    return affine


def _save_image(data: np.ndarray, path: Path, affine: np.ndarray, dt_s: float | None) -> None:
    """Write a gzip'd NIfTI-1 with its affine (qform and sform), units mm and s."""
    img = nib.Nifti1Image(data, affine)
    img.header.set_data_dtype(data.dtype)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    zooms = tuple(float(z) for z in np.abs(np.diag(affine)[:3]))
    img.header.set_zooms(zooms + ((dt_s if dt_s is not None else 1.0),) * (data.ndim - 3))
    img.header.set_xyzt_units(xyz="mm", t="sec")
    nib.save(img, str(path))


def _xyz(a: np.ndarray) -> np.ndarray:
    """(slice, y, x[, ...]) -> (x, y, slice[, ...])."""
    return np.swapaxes(np.asarray(a), 0, 2)


def _export_image_case(
    ds: xr.Dataset,
    acquired: xr.Dataset,
    truth: xr.Dataset,
    name: str,
    root_attrs: Mapping[str, Any],
    outdir: Path,
) -> list[Path]:
    """Export one case of a phantom store as images with their geometry."""
    a = dict(acquired.attrs)
    in_plane = float(a.get("in_plane_mm", 1.0))
    spacing = float(a.get("slice_mm", 1.0)) + float(a.get("gap_mm", 0.0))
    acq_affine = _image_affine(
        _axis(acquired["x"].values, in_plane, "acquired x"),
        _axis(acquired["y"].values, in_plane, "acquired y"),
        _axis(acquired["slice"].values, spacing, "acquired slice"),
    )
    vox = float(truth.attrs.get("voxel_mm", 1.0))
    truth_affine = _image_affine(
        _axis(truth["x"].values, vox, "truth x"),
        _axis(truth["y"].values, vox, "truth y"),
        _axis(truth["z"].values, vox, "truth z"),
    )
    time = np.asarray(acquired["time"].values, dtype=np.float64)
    dt = float(a["dt"])
    window = dt if a.get("sampling") == "average" else 0.0
    units = dict(a.get("protocol_units", {}))
    provenance = {
        "case": name,
        "case_values": ds.attrs.get("case_values", {}),
        "scenario": root_attrs.get("scenario"),
        "seed": root_attrs.get("seed"),
        "phantomdce_version": root_attrs.get("phantomdce_version", phantomdce.__version__),
        "exported_by_phantomdce_version": phantomdce.__version__,
        "protocol": {k: v for k, v in a.items() if k != "protocol_units"},
        "protocol_units": units,
        "voxel_layout": IMAGE_LAYOUT,
    }
    acq_meta = {
        "MagneticFieldStrength": a.get("field_strength"),
        "ContrastBolusIngredient": _INGREDIENT.get(str(a.get("agent")), "GADOLINIUM"),
        "SliceThickness": a.get("slice_mm"),
        "SpacingBetweenSlices": spacing,
    }
    written: list[Path] = []

    def emit(stem, data, affine, sidecar, dt_s=None):
        img_path, json_path = outdir / f"{stem}.nii.gz", outdir / f"{stem}.json"
        _save_image(data, img_path, affine, dt_s)
        write_json(sidecar, json_path)
        written.extend([img_path, json_path])

    emit(
        "dynamic",
        _xyz(acquired["signal"].values).astype(MEASUREMENT_DTYPE),
        acq_affine,
        {
            **acq_meta,
            "RepetitionTime": a.get("tr"),
            "FlipAngle": a.get("fa"),
            "FrameTimesStart": (time - window / 2).tolist(),
            "FrameDuration": [window] * time.size,
            "Units": "a.u.",
            "phantomdce": {
                **provenance,
                "image": "dynamic SPGR magnitude signal (x, y, z, time), Rician noise",
                "frame_times_s": time.tolist(),
                "dt_s": dt,
                "affine_mm": acq_affine.tolist(),
            },
        },
        dt_s=dt,
    )
    angles = np.asarray(acquired["flip_angle"].values, dtype=np.float64).tolist()
    emit(
        "vfa",
        _xyz(acquired["vfa_signal"].values).astype(MEASUREMENT_DTYPE),
        acq_affine,
        {
            **acq_meta,
            "RepetitionTime": a.get("tr"),
            "FlipAngle": angles,
            "Units": "a.u.",
            "phantomdce": {
                **provenance,
                "image": "variable flip angle SPGR signal (x, y, z, flip angle); volume n at"
                " FlipAngle[n] (deg)",
                "affine_mm": acq_affine.tolist(),
            },
        },
    )
    for key in ("Ktrans", "ve", "vp"):
        unit = acquired[key].attrs.get("units", PARAMETERS[key].units)
        emit(
            key,
            _xyz(acquired[key].values).astype(TRUTH_DTYPE),
            acq_affine,
            {
                **acq_meta,
                "Units": unit,
                "phantomdce": {
                    **provenance,
                    "image": f"ground truth {key} at the acquired grid (volume-weighted)",
                    "affine_mm": acq_affine.tolist(),
                },
            },
        )
    for key in ("labels", "Ktrans", "ve", "vp"):
        var = truth[key]
        emit(
            f"{key}_truth",
            _xyz(var.values),
            truth_affine,
            {
                "Units": var.attrs.get("units", "1"),
                "phantomdce": {
                    **provenance,
                    "image": f"{key} on the truth grid ({vox:g} mm)",
                    "affine_mm": truth_affine.tolist(),
                },
            },
        )
    ca = np.asarray(ds["ca"].values, dtype=np.float64)
    aif_path = _write_aif_tsv(outdir / "aif.tsv", time, ca)
    written.append(aif_path)
    return written

