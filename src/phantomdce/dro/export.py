"""Export every case of a DRO scenario for other software, the way the QIBA DCE DROs did.

``phantomdce export SCENARIO_OR_STORE -o DIR --format dicom|nifti`` writes, for a scenario
TOML (simulated first, :func:`phantomdce.dro.simulate.simulate_case`) or a DRO store
(``phantomdce simulate``; read as stored):

- ``DIR/manifest.json``: how image pixels map to the store's voxels (tissue index,
  replicate, case), the image geometry, each case's protocol with its units, the series
  written and their quantisation (see :data:`MANIFEST_VERSION`);
- ``DIR/scenario.toml``: the scenario (its DRO content hashes to the same scenario hash);
- ``DIR/voxel_index.nii.gz``, ``tissue_index.nii.gz``, ``replicate_index.nii.gz``
  (int32, -1 where a pixel holds no voxel): the manifest's maps as images;
- one folder per case, ``DIR/case_0000/``:

  - DICOM (``--format dicom``): ``dynamic/`` one MR series, one instance per frame
    (``TemporalPositionIdentifier``, ``NumberOfTemporalPositions``, ``AcquisitionNumber``,
    ``AcquisitionTime`` = the frame time after midnight; no ``TriggerTime``: converters
    read a trigger time as cardiac gating and split the series), and ``vfa_<angle>deg/``
    one series per VFA flip angle; every
    instance with ``RepetitionTime`` (ms), ``FlipAngle`` (deg), ``MagneticFieldStrength``
    (T), ``ImagePositionPatient``, ``ImageOrientationPatient``, ``PixelSpacing``,
    ``SliceThickness``. Pixels are unsigned 16-bit integers with ``RescaleSlope`` (one per
    series: its largest signal / 65535) and ``RescaleIntercept`` 0: the stored value is
    ``slope * pixel``, within ``slope / 2`` of the simulated magnitude; the manifest gives
    the step against the noise SD of the series (``quantisation``);
  - NIfTI (``--format nifti``): ``dynamic.nii.gz`` (x, y, z, time) and ``vfa.nii.gz``
    (x, y, z, flip angle), float64 (the simulated values exactly);
  - ``truth/<name>.nii.gz``: the truth maps (float64, NaN where no voxel), e.g. ``Ktrans``
    (/min), ``ve``, ``vp``, ``kep`` (/min), ``T10`` (s), ``m0``, ``signal_pre`` (a.u.);
  - ``aif.csv`` (columns ``time_s``, ``ca_mM``) and ``aif.json``: the case's true plasma
    AIF at the frame times (mM), the AIF the default pipeline (``aif = "true"``) uses.

Image layout (one slice): tissue ``t`` is a square block of ``block`` x ``block`` pixels
(``block = ceil(sqrt(replicates))``), blocks in row-major order, ``tiles_per_row =
ceil(sqrt(n_tissue))`` per row; replicate ``r`` sits at row ``r // block``, column
``r % block`` of its block. Pixel ``(row, col)`` (DICOM order) is NIfTI voxel
``(i=col, j=row, k=0)``; the NIfTI affine maps to the same patient position as the DICOM
geometry (RAS = LPS with x and y negated). Pixels without a voxel hold signal 0 and index -1.

A scenario's arterial voxels (``protocol.arterial_voxels``) are not exported: the exported
AIF is the true plasma curve.

This module is on the truth side: it never imports the estimation side.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import tempfile
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import xarray as xr

import phantomdce
from phantomdce.dro.config import ConfigError, parse_toml, toml_text
from phantomdce.dro.nifti import write_json
from phantomdce.params import PARAMETERS

__all__ = [
    "export",
    "tile_layout",
    "nifti_affine",
    "scenario_toml",
    "MANIFEST_VERSION",
    "FORMATS",
    "PIXEL_SPACING_MM",
]

#: Version of the manifest's layout (``manifest["manifest_version"]``).
MANIFEST_VERSION = 1
#: Export formats of the measured series.
FORMATS = ("dicom", "nifti")
#: Nominal pixel spacing and slice thickness, mm (the grid has no spatial meaning).
PIXEL_SPACING_MM = 1.0
#: Largest stored integer of a 16-bit unsigned pixel.
_UINT16_MAX = 65535
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
#: Patient position (LPS, mm) of the first pixel's centre.
_ORIGIN_LPS = (0.0, 0.0, 0.0)


def tile_layout(n_tissue: int, replicates: int) -> dict[str, Any]:
    """Where each voxel sits in the exported image (see the module docstring).

    Parameters
    ----------
    n_tissue : int
        Tissues of the scenario's grid.
    replicates : int
        Noise replicates per tissue.

    Returns
    -------
    dict
        ``block`` (pixels per side of a tissue block), ``tiles_per_row``, ``rows``,
        ``cols`` (image size) and ``row``, ``col`` (int arrays: the pixel of store voxel
        ``v = tissue * replicates + replicate``).
    """
    if n_tissue < 1 or replicates < 1:
        raise ValueError(f"n_tissue={n_tissue}, replicates={replicates}: expected >= 1 each")
    block = math.isqrt(replicates - 1) + 1 if replicates > 1 else 1
    per_row = math.isqrt(n_tissue - 1) + 1 if n_tissue > 1 else 1
    n_rows = -(-n_tissue // per_row)
    v = np.arange(n_tissue * replicates)
    t, r = np.divmod(v, replicates)
    tr, tc = np.divmod(t, per_row)
    rr, rc = np.divmod(r, block)
    return {
        "block": block,
        "tiles_per_row": per_row,
        "rows": n_rows * block,
        "cols": per_row * block,
        "row": tr * block + rr,
        "col": tc * block + rc,
    }


def nifti_affine(spacing_mm: float = PIXEL_SPACING_MM) -> np.ndarray:
    """NIfTI affine (RAS, mm) of an exported image stored (i=col, j=row, k=slice)."""
    x0, y0, z0 = _ORIGIN_LPS
    return np.array(
        [
            [-spacing_mm, 0.0, 0.0, -x0],
            [0.0, -spacing_mm, 0.0, -y0],
            [0.0, 0.0, spacing_mm, z0],
            [0.0, 0.0, 0.0, 1.0],
        ]
    )


# -- scenario text ---------------------------------------------------------------------------


def _raw_from_source(source: Mapping[str, Any]) -> dict[str, Any]:
    """A scenario mapping that parses to a scenario with this (canonical) source.

    The source holds every protocol value with the derived ones (``n_frames``,
    ``injection_volume``), ``"none"`` for unset ones, and ``sweep_order``; these are left
    out (the duration too where ``post_bolus_s`` sets it).
    """
    raw = {k: v for k, v in source.items() if k != "sweep_order"}
    proto = {
        k: v
        for k, v in source.get("protocol", {}).items()
        if k not in ("n_frames", "injection_volume") and v != "none"
    }
    if "post_bolus_s" in proto:
        proto.pop("duration", None)
    raw["protocol"] = proto
    return raw


def scenario_toml(source: Mapping[str, Any]) -> str:
    """A mapping (a scenario's raw TOML content) as TOML text that parses back to it.

    Raises
    ------
    ConfigError
        A value TOML cannot hold, or text that does not parse back to ``source``.
    """
    header = "# written by phantomdce export: the scenario of the exported cases\n"
    text = header + toml_text(source)
    back = tomllib.loads(text)
    if json.dumps(back, sort_keys=True, default=str) != json.dumps(
        dict(source), sort_keys=True, default=str
    ):
        raise ConfigError("the scenario's source does not survive TOML: cannot write scenario.toml")
    return text


# -- the cases -------------------------------------------------------------------------------


def _cases_from_toml(
    path: Path,
) -> tuple[str, dict[str, Any], Iterator[tuple[str, xr.Dataset]], int]:
    from phantomdce.dro.scenario import load_scenario
    from phantomdce.dro.simulate import simulate_case

    text = path.read_text(encoding="utf-8")
    raw = parse_toml(text, source=str(path))
    if "phantom" in raw:
        raise ConfigError(
            f"{path}: a phantom scenario ([phantom]); `phantomdce export` exports DRO scenarios"
            " (tissue grids); export a phantom acquisition with `phantomdce export-nifti`"
        )
    scenario = load_scenario(path)
    if "name" not in raw:  # load_scenario names it after the file; scenario.toml must too
        text = f"name = {json.dumps(scenario.name)}\n" + text
    info = {
        "name": scenario.name,
        "hash": scenario.hash,
        "seed": scenario.seed,
        "replicates": scenario.replicates,
        "model": scenario.tissue.model,
        "n_tissue": scenario.tissue.size,
        "source": scenario.source,
    }
    cases = scenario.cases()
    gen = ((c.name, simulate_case(scenario, c)) for c in cases)
    return text, info, gen, len(cases)


def _cases_from_store(path: Path):
    from phantomdce.dro.store import open_dro

    tree = open_dro(path)
    attrs = dict(tree.attrs)
    if attrs.get("kind") == "phantom":
        tree.close()
        raise ConfigError(
            f"{path}: a phantom store; `phantomdce export` exports DRO stores (tissue grids);"
            " use `phantomdce export-nifti` for a phantom case"
        )
    root = tree.to_dataset(inherit=False)
    names = (
        [str(c) for c in root["case_name"].values]
        if "case_name" in root
        else sorted(tree.children)
    )
    source = json.loads(attrs["scenario_source"])
    from phantomdce.dro.scenario import parse_scenario

    raw = _raw_from_source(source)
    text = scenario_toml(raw)
    if parse_scenario(tomllib.loads(text)).hash != attrs.get("scenario_hash"):
        tree.close()
        raise ConfigError(
            f"{path}: the store's scenario cannot be written back as a scenario with its hash"
            f" {attrs.get('scenario_hash')}; export the scenario TOML instead"
        )
    first = tree[names[0]].to_dataset(inherit=False)
    info = {
        "name": attrs.get("scenario"),
        "hash": attrs.get("scenario_hash"),
        "seed": attrs.get("seed"),
        "replicates": int(attrs["replicates"]),
        "model": attrs.get("model"),
        "n_tissue": int(first["tissue"].values.max()) + 1,
        "source": source,
    }

    def gen():
        try:
            for n in names:
                yield n, tree[n].to_dataset(inherit=False).load()
        finally:
            tree.close()

    return text, info, gen(), len(names)


# -- writers ---------------------------------------------------------------------------------


def _save_nifti(data: np.ndarray, path: Path, *, dt_s: float | None = None) -> None:
    affine = nifti_affine()
    img = nib.Nifti1Image(data, affine)
    img.header.set_data_dtype(data.dtype)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    zooms = (PIXEL_SPACING_MM,) * 3 + ((dt_s if dt_s is not None else 1.0),) * (data.ndim - 3)
    img.header.set_zooms(zooms)
    img.header.set_xyzt_units(xyz="mm", t="sec")
    nib.save(img, str(path))


def _image(values: np.ndarray, layout: dict[str, Any], fill: float, dtype) -> np.ndarray:
    """Per-voxel values (voxel, ...) -> NIfTI array (x=col, y=row, z=1, ...)."""
    values = np.asarray(values)
    out = np.full((layout["cols"], layout["rows"], 1, *values.shape[1:]), fill, dtype=dtype)
    out[layout["col"], layout["row"], 0] = values
    return out


def _dicom_time(t: float) -> str:
    """Seconds after midnight -> DICOM TM ``HHMMSS.FFFFFF``."""
    us = round(t * 1e6)
    h, rest = divmod(us, 3600 * 10**6)
    m, rest = divmod(rest, 60 * 10**6)
    return f"{h:02d}{m:02d}{rest / 1e6:09.6f}"


def _uid(*parts: Any) -> str:
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=[str(p) for p in parts])


def _write_series(
    folder: Path,
    frames: np.ndarray,
    layout: dict[str, Any],
    *,
    attrs: Mapping[str, Any],
    study_uid: str,
    series_uid: str,
    frame_uid: str,
    number: int,
    description: str,
    fa: float,
    times: np.ndarray | None,
    patient: str,
) -> dict[str, float]:
    """One MR series, one instance per frame (``frames``: voxel, frame). Returns its scaling."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    folder.mkdir(parents=True)
    values = np.asarray(frames, dtype=np.float64)
    if not np.all(np.isfinite(values)) or values.min() < 0:
        raise ValueError(f"{description}: signals must be finite magnitudes >= 0 to store as DICOM")
    top = float(values.max())
    slope = top / _UINT16_MAX if top > 0 else 1.0
    ints = np.rint(values / slope)
    err = float(np.max(np.abs(ints * slope - values)))
    ints = ints.astype(np.uint16)
    n = values.shape[1]
    for k in range(n):
        img = np.zeros((layout["rows"], layout["cols"]), dtype=np.uint16)
        img[layout["row"], layout["col"]] = ints[:, k]
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = _uid(series_uid, k)
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = MR_IMAGE_STORAGE
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.Modality, ds.Manufacturer = "MR", "phantomdce"
        ds.PatientPosition = "HFS"
        ds.SoftwareVersions = phantomdce.__version__
        ds.PatientName, ds.PatientID = "phantomdce^DRO", patient
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = "20000101"
        ds.StudyTime = ds.SeriesTime = "000000"
        ds.StudyID = "1"
        ds.SeriesNumber, ds.SeriesDescription = number, description
        ds.ProtocolName = description
        ds.InstanceNumber = k + 1
        ds.ImageType = ["DERIVED", "PRIMARY", "DRO"]
        ds.MagneticFieldStrength = float(attrs["field_strength"])
        ds.RepetitionTime = float(attrs["tr"]) * 1000.0  # DICOM: ms
        ds.FlipAngle = float(fa)
        ds.ScanningSequence, ds.SequenceVariant = "GR", "SP"
        ds.MRAcquisitionType = "3D"
        ds.ContrastBolusAgent = str(attrs.get("agent", ""))
        ds.PixelSpacing = [PIXEL_SPACING_MM, PIXEL_SPACING_MM]
        ds.SliceThickness = PIXEL_SPACING_MM
        ds.SpacingBetweenSlices = PIXEL_SPACING_MM
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = list(_ORIGIN_LPS)
        ds.SliceLocation = _ORIGIN_LPS[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = img.shape
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = f"{slope:.10g}", 0, "US"
        if times is not None:
            t = float(times[k])
            ds.TemporalPositionIdentifier = k + 1
            ds.NumberOfTemporalPositions = n
            ds.AcquisitionNumber = k + 1
            ds.AcquisitionTime = ds.ContentTime = _dicom_time(t)
        else:
            ds.AcquisitionNumber = 1
            ds.AcquisitionTime = ds.ContentTime = "000000"
        ds.PixelData = np.ascontiguousarray(img).tobytes()
        ds.save_as(folder / f"IM_{k + 1:04d}.dcm", enforce_file_format=True)
    slope = float(f"{slope:.10g}")  # as stored in the DS tag
    err = float(np.max(np.abs(ints * slope - values)))
    return {"rescale_slope": slope, "rescale_intercept": 0.0, "max_abs_error": err}


def _write_csv_aif(path: Path, time: np.ndarray, ca: np.ndarray) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(("time_s", "ca_mM"))
        w.writerows((repr(float(t)), repr(float(c))) for t, c in zip(time, ca, strict=True))


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [_plain(v) for v in (value.tolist() if isinstance(value, np.ndarray) else value)]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _export_case(
    name: str,
    ds: xr.Dataset,
    folder: Path,
    layout: dict[str, Any],
    fmt: str,
    info: Mapping[str, Any],
) -> dict[str, Any]:
    """Write one case's series, truth maps and AIF; return its manifest entry."""
    n_vox = len(layout["row"])
    voxel = np.asarray(ds["voxel"].values, dtype=np.int64)
    if voxel.size != n_vox or not np.array_equal(voxel, np.arange(n_vox)):
        raise ValueError(f"case {name!r} holds {voxel.size} voxels, expected all {n_vox} in order")
    attrs = dict(ds.attrs)
    time = np.asarray(ds["time"].values, dtype=np.float64)
    angles = [float(a) for a in ds["flip_angle"].values]
    signal = ds["signal"].transpose("voxel", "time").values
    vfa = ds["vfa_signal"].transpose("voxel", "flip_angle").values
    folder.mkdir(parents=True)
    snr = float(attrs["snr"])
    s_pre = np.asarray(ds["signal_pre"].values, dtype=np.float64)
    sigma = float(np.min(s_pre) / snr) if math.isfinite(snr) else 0.0
    vfa_sigma = sigma / math.sqrt(float(attrs.get("vfa_averages", 1)))
    series: dict[str, Any] = {}
    quant: dict[str, Any] = {}
    if fmt == "dicom":
        study = _uid(info["hash"], name, "study")
        frame = _uid(info["hash"], name, "frame")
        patient = f"phantomdce-{info['name']}-{name}"
        common = {"attrs": attrs, "study_uid": study, "frame_uid": frame, "patient": patient}
        q = _write_series(
            folder / "dynamic",
            signal,
            layout,
            series_uid=_uid(info["hash"], name, "dynamic"),
            number=1,
            description="phantomdce DCE dynamic SPGR",
            fa=float(attrs["fa"]),
            times=time,
            **common,
        )
        quant["dynamic"] = {**q, "noise_sd": sigma}
        series["dynamic"] = "dynamic"
        series["vfa"] = {}
        for j, angle in enumerate(angles):
            sub = f"vfa_{angle:g}deg"
            q = _write_series(
                folder / sub,
                vfa[:, j : j + 1],
                layout,
                series_uid=_uid(info["hash"], name, sub),
                number=100 + j,
                description=f"phantomdce VFA {angle:g} deg",
                fa=angle,
                times=None,
                **common,
            )
            quant[sub] = {**q, "noise_sd": vfa_sigma}
            series["vfa"][f"{angle:g}"] = sub
        for q, s in ((quant[k], quant[k]["noise_sd"]) for k in quant):
            q["step_over_noise_sd"] = q["rescale_slope"] / s if s > 0 else math.inf
    else:
        _save_nifti(_image(signal, layout, 0.0, np.float64), folder / "dynamic.nii.gz",
                    dt_s=float(attrs["dt"]))  # fmt: skip
        _save_nifti(_image(vfa, layout, 0.0, np.float64), folder / "vfa.nii.gz")
        series = {"dynamic": "dynamic.nii.gz", "vfa": "vfa.nii.gz", "vfa_flip_angles_deg": angles}
    (folder / "truth").mkdir()
    truth_units = {}
    for key, var in ds.data_vars.items():
        if var.attrs.get("role") != "truth" or var.dims != ("voxel",):
            continue
        path = folder / "truth" / f"{key}.nii.gz"
        _save_nifti(_image(var.values, layout, np.nan, np.float64), path)
        default = PARAMETERS[key].units if key in PARAMETERS else ""
        truth_units[key] = var.attrs.get("units", default)
    ca = np.asarray(ds["ca"].values, dtype=np.float64)
    _write_csv_aif(folder / "aif.csv", time, ca)
    write_json(
        {
            "description": "true plasma AIF of the case at the frame times (the pipeline's"
            " aif = 'true'); plasma, not whole blood",
            "time_s": time.tolist(),
            "ca_mM": ca.tolist(),
            "units": {"time_s": "s", "ca_mM": "mM"},
        },
        folder / "aif.json",
    )
    protocol = {k: v for k, v in attrs.items() if k in attrs.get("protocol_units", {}) or k in
                ("flip_angles", "bat", "r1", "n_frames", "injection_volume")}  # fmt: skip
    return {
        "name": name,
        "folder": folder.name,
        "case_index": int(attrs.get("case_index", -1)),
        "case_values": _plain(attrs.get("case_values", {})),
        "protocol": _plain(protocol),
        "protocol_units": _plain(attrs.get("protocol_units", {})),
        "frame_times_s": time.tolist(),
        "flip_angles_deg": angles,
        "series": series,
        "quantisation": quant,
        "truth_maps": {k: f"truth/{k}.nii.gz" for k in truth_units},
        "truth_units": truth_units,
        "aif": {"csv": "aif.csv", "json": "aif.json", "units": {"time": "s", "ca": "mM"}},
    }


def export(
    source: str | Path,
    outdir: str | Path,
    *,
    fmt: str = "dicom",
    overwrite: bool = False,
) -> Path:
    """Export every case of a scenario TOML or DRO store (see the module docstring).

    Parameters
    ----------
    source : str or Path
        A DRO scenario TOML file (simulated here) or a DRO ``.zarr`` store.
    outdir : str or Path
        Output folder (must not exist or be empty, unless ``overwrite``).
    fmt : {"dicom", "nifti"}
        Format of the measured series (truth maps are NIfTI either way).
    overwrite : bool
        Replace an existing export folder.

    Returns
    -------
    Path
        The path of ``manifest.json``.

    Raises
    ------
    ConfigError
        Unknown ``fmt``, a phantom scenario or store, a scenario error.
    FileExistsError
        ``outdir`` exists and is not empty, and ``overwrite`` is False.
    FileNotFoundError
        ``source`` does not exist.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"--format = {fmt!r}: expected one of {list(FORMATS)}")
    if fmt == "dicom":
        try:
            import pydicom  # noqa: F401
        except ImportError:  # pragma: no cover - depends on the environment
            raise ImportError(
                "DICOM export needs pydicom: pip install 'phantomdce[dicom]'"
            ) from None
    src, out = Path(source), Path(outdir)
    if not src.exists():
        raise FileNotFoundError(f"{src}: no such scenario file or DRO store")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(
            f"{out} exists and is not empty: choose a new directory or use --overwrite"
        )
    text, info, cases, n_cases = _cases_from_store(src) if src.is_dir() else _cases_from_toml(src)
    layout = tile_layout(int(info["n_tissue"]), int(info["replicates"]))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
    try:
        entries = [
            _export_case(name, ds, tmp / name, layout, fmt, info) for name, ds in cases
        ]
        (tmp / "scenario.toml").write_text(text, encoding="utf-8")
        v = np.arange(len(layout["row"]))
        for stem, values in (
            ("voxel_index", v),
            ("tissue_index", v // int(info["replicates"])),
            ("replicate_index", v % int(info["replicates"])),
        ):
            _save_nifti(_image(values, layout, -1, np.int32), tmp / f"{stem}.nii.gz")
        index = np.full((layout["rows"], layout["cols"]), -1, dtype=np.int64)
        index[layout["row"], layout["col"]] = v
        manifest = {
            "manifest_version": MANIFEST_VERSION,
            "format": fmt,
            "exported_by": f"phantomdce {phantomdce.__version__}",
            "scenario": {
                "name": info["name"],
                "hash": info["hash"],
                "seed": info["seed"],
                "model": info["model"],
                "file": "scenario.toml",
            },
            "n_cases": n_cases,
            "replicates": int(info["replicates"]),
            "n_tissue": int(info["n_tissue"]),
            "n_voxels": int(v.size),
            "image": {
                "rows": layout["rows"],
                "cols": layout["cols"],
                "slices": 1,
                "pixel_spacing_mm": PIXEL_SPACING_MM,
                "slice_thickness_mm": PIXEL_SPACING_MM,
                "nifti_axes": "i = column, j = row, k = slice (array shape (cols, rows, 1))",
                "nifti_affine": nifti_affine().tolist(),
                "dicom_image_position_patient_mm": list(_ORIGIN_LPS),
                "dicom_image_orientation_patient": [1, 0, 0, 0, 1, 0],
            },
            "layout": {
                "block": layout["block"],
                "tiles_per_row": layout["tiles_per_row"],
                "rule": (
                    "store voxel v = tissue * replicates + replicate; tissue t is the block at"
                    " block row t // tiles_per_row, block column t % tiles_per_row; replicate r"
                    " is at row r // block, column r % block of its block; pixel (row, col)"
                    " is NIfTI voxel (col, row, 0); -1: no voxel"
                ),
                "voxel_index": index.tolist(),
                "images": {
                    "voxel_index": "voxel_index.nii.gz",
                    "tissue_index": "tissue_index.nii.gz",
                    "replicate_index": "replicate_index.nii.gz",
                },
            },
            "units": {
                **{k: p.units for k, p in PARAMETERS.items()},
                "time": "s",
                "concentration": "mM",
                "signal": "a.u.",
                "flip_angle": "deg",
                "dicom_RepetitionTime": "ms",
                "dicom_AcquisitionTime": "HHMMSS.FFFFFF, frame time after 00:00:00",
            },
            "quantisation_note": (
                "DICOM pixels are uint16 with one RescaleSlope per series (largest signal /"
                " 65535) and RescaleIntercept 0; stored value = slope * pixel, within"
                " slope / 2 of the simulated signal (max_abs_error); noise_sd is the"
                " noise SD of the series' lowest-signal tissue (signal_pre / snr)"
            )
            if fmt == "dicom"
            else "NIfTI series are float64: the simulated values exactly",
            "cases": entries,
        }
        write_json(manifest, tmp / "manifest.json")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out / "manifest.json"



# -- command line ----------------------------------------------------------------------------


def add_parser(sub: Any) -> None:
    """Add ``phantomdce export`` to the CLI's subparsers."""
    p = sub.add_parser(
        "export", help="export every case of a scenario or DRO store as DICOM or NIfTI"
    )
    p.add_argument("source", help="scenario TOML (simulated first) or DRO .zarr store")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--format", dest="fmt", default="dicom", help="dicom (default) or nifti")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export")
    p.set_defaults(func=_cmd_export)


def _cmd_export(args: Any) -> int:
    path = export(args.source, args.output, fmt=args.fmt, overwrite=args.overwrite)
    manifest = json.loads(path.read_text(encoding="utf-8"))
    print(f"exported {manifest['n_cases']} cases x {manifest['n_voxels']} voxels"
          f" ({args.fmt}) -> {path.parent}")  # fmt: skip
    steps = [q["step_over_noise_sd"] for c in manifest["cases"] for q in c["quantisation"].values()]
    finite = [s for s in steps if isinstance(s, int | float)]  # "inf": a case without noise
    if finite:
        print(f"  DICOM quantisation step <= {max(finite):.2g} x the noise SD"
              + (" (cases without noise: step > 0 x 0)" if len(finite) < len(steps) else ""))
    print(f"  manifest: {path}")
    return 0
