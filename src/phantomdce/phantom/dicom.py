"""Export the acquired phantom as DICOM MR image series a DCE tool can import (pydicom).

One series for the dynamic acquisition (one MR Image Storage instance per slice and time
point, with ``TemporalPositionIdentifier``, ``NumberOfTemporalPositions``,
``TriggerTime`` and ``AcquisitionTime`` giving the frame time) and one per VFA flip
angle, in one study. Pixels are unsigned 16-bit with ``RescaleSlope`` 1: the acquisition
must be quantised (``Acquisition(quantise=True)``), as a scanner's images are, so that
export and re-import are lossless. Geometry: ``PixelSpacing``, ``SliceThickness``,
``SpacingBetweenSlices``, ``ImagePositionPatient`` and an axial
``ImageOrientationPatient``. Requires the optional dependency ``pydicom``
(``pip install "phantomdce[dicom]"``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import xarray as xr

__all__ = ["export_phantom_dicom", "read_dicom_series"]

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


def _pydicom():
    try:
        import pydicom
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("DICOM export needs pydicom: pip install 'phantomdce[dicom]'") from exc
    return pydicom


def _instance(pydicom, pixels, *, study, series, number, position, a, extra):
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = MR_IMAGE_STORAGE
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series["uid"]
    ds.FrameOfReferenceUID = series["frame"]
    ds.Modality = "MR"
    ds.PatientName, ds.PatientID = "phantomdce^neck", f"phantomdce-{a['phantom_seed']}"
    ds.SeriesNumber, ds.SeriesDescription = series["number"], series["description"]
    ds.InstanceNumber = number
    ds.ImageType = ["DERIVED", "PRIMARY", "PHANTOM"]
    ds.MagneticFieldStrength = float(a["field_strength"])
    ds.RepetitionTime = float(a["tr"]) * 1000.0  # DICOM: ms
    ds.ScanningSequence, ds.SequenceVariant = "GR", "SP"
    ds.PixelSpacing = [float(a["in_plane_mm"])] * 2
    ds.SliceThickness = float(a["slice_mm"])
    ds.SpacingBetweenSlices = float(a["slice_mm"]) + float(a["gap_mm"])
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [float(v) for v in position]
    ds.SliceLocation = float(position[2])
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    for key, value in extra.items():
        setattr(ds, key, value)
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint16).tobytes()
    return ds


def _pixels(values: np.ndarray, what: str) -> np.ndarray:
    if not np.array_equal(values, np.rint(values)) or values.min() < 0 or values.max() > 65535:
        raise ValueError(
            f"{what}: expected integer magnitudes in 0-65535 (acquire with"
            " Acquisition(quantise=True)) so that DICOM export is lossless"
        )
    return values.astype(np.uint16)


def export_phantom_dicom(acquired: xr.Dataset, outdir: str | Path, *, overwrite=False):
    """Write the dynamic series and the VFA images as DICOM files.

    Returns
    -------
    dict of str to Path
        ``"dynamic"`` and ``"vfa_<angle>"`` series folders.
    """
    pydicom = _pydicom()
    from pydicom.uid import generate_uid

    out = Path(outdir)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} exists and is not empty: use overwrite=True")
        shutil.rmtree(out)
    a = acquired.attrs
    sig = _pixels(acquired["signal"].values, "signal")
    vfa = _pixels(acquired["vfa_signal"].values, "vfa_signal")
    study, frame = generate_uid(), generate_uid()
    z = acquired["slice"].values
    y0, x0 = float(acquired["y"].values[0]), float(acquired["x"].values[0])
    folders = {}
    times = acquired["time"].values
    series = {
        "uid": generate_uid(),
        "frame": frame,
        "number": 1,
        "description": "phantomdce DCE dynamic SPGR",
    }
    folder = out / "dynamic"
    folder.mkdir(parents=True)
    n = 0
    for k, t in enumerate(times):
        for s_i, zz in enumerate(z):
            n += 1
            extra = {
                "FlipAngle": float(a["fa"]),
                "TemporalPositionIdentifier": k + 1,
                "NumberOfTemporalPositions": len(times),
                "TriggerTime": float(t) * 1000.0,  # ms
                "AcquisitionTime": f"{int(t // 3600):02d}{int(t % 3600 // 60):02d}{t % 60:09.6f}",
            }
            ds = _instance(
                pydicom,
                sig[s_i, :, :, k],
                study=study,
                series=series,
                number=n,
                position=(x0, y0, zz),
                a=a,
                extra=extra,
            )
            ds.save_as(folder / f"IM_{k:04d}_{s_i:03d}.dcm", enforce_file_format=True)
    folders["dynamic"] = folder
    for j, angle in enumerate(acquired["flip_angle"].values):
        series = {
            "uid": generate_uid(),
            "frame": frame,
            "number": 100 + j,
            "description": f"phantomdce VFA {angle:g} deg",
        }
        folder = out / f"vfa_{angle:g}"
        folder.mkdir()
        for s_i, zz in enumerate(z):
            ds = _instance(
                pydicom,
                vfa[s_i, :, :, j],
                study=study,
                series=series,
                number=s_i + 1,
                position=(x0, y0, zz),
                a=a,
                extra={"FlipAngle": float(angle)},
            )
            ds.save_as(folder / f"IM_{s_i:03d}.dcm", enforce_file_format=True)
        folders[f"vfa_{angle:g}"] = folder
    return folders


def read_dicom_series(folder: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a series written by :func:`export_phantom_dicom`.

    Returns
    -------
    pixels : ndarray (slice, y, x, time) (time of length 1 for a VFA series)
    times : ndarray (time,) in s (from ``TriggerTime``; 0 for VFA)
    """
    pydicom = _pydicom()
    items = []
    for path in sorted(Path(folder).glob("*.dcm")):
        ds = pydicom.dcmread(path)
        t = float(getattr(ds, "TriggerTime", 0.0)) / 1000.0
        items.append((t, float(ds.ImagePositionPatient[2]), ds.pixel_array))
    times = np.array(sorted({t for t, _, _ in items}))
    zs = np.array(sorted({z for _, z, _ in items}))
    rows, cols = items[0][2].shape
    out = np.zeros((zs.size, rows, cols, times.size), dtype=np.float64)
    for t, z, px in items:
        out[np.searchsorted(zs, z), :, :, np.searchsorted(times, t)] = px
    return out, times
