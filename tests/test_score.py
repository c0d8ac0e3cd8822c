"""`phantomdce score`: another program's maps of an export, judged like a run's fitter.

Round trip: a scenario is exported, a built-in fitter fits the exported files only (series
read with nibabel or pydicom, concentration by the pipeline's own public functions, the AIF
from the exported ``aif.csv``, the protocol from the manifest), its maps are written as
NIfTI and scored: the metrics equal a direct ``phantomdce run`` of the same scenario and
fitter. From float64 NIfTI the input is the simulated signal exactly, so every metric is
equal to the last bits; from DICOM the signals are within half a quantisation step (< 1% of
the noise SD), and the estimates move by less than 0.1% of their noise spread; maps made
from dcm2niix's conversion of the DICOM score the same way, in dcm2niix's orientation.
"""

import csv
import json
import warnings

import nibabel as nib
import numpy as np
import pytest
import xarray as xr

from phantomdce.cli import main
from phantomdce.dro.config import ConfigError
from phantomdce.dro.export import export, nifti_affine
from phantomdce.engine.run import open_results, run
from phantomdce.engine.score import (
    UnitWarning,
    check_units,
    load_manifest,
    model_of,
    parse_maps,
    score,
)
from phantomdce.fit.pipeline import Pipeline
from phantomdce.fit.registry import get_fitter

FITTER = "llsq_extended_tofts"
PARAMS = ("Ktrans", "ve", "vp")

SCENARIO = """
name = "score-test"
seed = 5
replicates = 6

[protocol]
snr = 25.0
duration = 150.0
n_baseline = 4
dt = 5.0

[tissue]
model = "extended_tofts"
Ktrans = [0.1, 0.25]
ve = [0.2, 0.4]
vp = [0.03]

[sweep]
snr = [25.0, 50.0]
"""

#: metrics that depend on the wall clock, not on the estimates
TIMED = ("fit_time_per_voxel_s",)


def _pixels(manifest):
    index = np.asarray(manifest["layout"]["voxel_index"])
    rows, cols = np.nonzero(index >= 0)
    v = index[rows, cols]
    row, col = np.empty(v.size, int), np.empty(v.size, int)
    row[v], col[v] = rows, cols
    return row, col


def read_case(export_dir, case, manifest):
    """What a site's software reads: the exported series, the AIF file and the protocol."""
    row, col = _pixels(manifest)
    folder = export_dir / case["folder"]
    if manifest["format"] == "nifti":
        dyn = nib.load(folder / case["series"]["dynamic"]).get_fdata()[col, row, 0]
        vfa = nib.load(folder / case["series"]["vfa"]).get_fdata()[col, row, 0]
    else:
        import pydicom
        from pydicom.pixels import apply_modality_lut

        def series(sub):
            items = []
            for f in sorted((folder / sub).glob("*.dcm")):
                ds = pydicom.dcmread(f)
                k = int(getattr(ds, "TemporalPositionIdentifier", 1))
                items.append((k, apply_modality_lut(ds.pixel_array, ds)))
            items.sort(key=lambda x: x[0])
            return np.stack([im[row, col] for _, im in items], axis=1)

        dyn = series(case["series"]["dynamic"])
        vfa = np.concatenate([series(s) for s in case["series"]["vfa"].values()], axis=1)
    aif = np.loadtxt(folder / case["aif"]["csv"], delimiter=",", skiprows=1)
    return xr.Dataset(
        {
            "signal": (("voxel", "time"), dyn),
            "vfa_signal": (("voxel", "flip_angle"), vfa),
            "ca": ("time", aif[:, 1]),
        },
        coords={
            "time": aif[:, 0],
            "flip_angle": case["flip_angles_deg"],
            "voxel": np.arange(dyn.shape[0]),
        },
        attrs=case["protocol"],
    )


def fit_files(export_dir, maps_dir, fitter=FITTER):
    """Fit every exported case from its files; write NIfTI maps maps_dir/<case>/<p>.nii.gz."""
    manifest = load_manifest(export_dir)
    row, col = _pixels(manifest)
    f = get_fitter(fitter)
    for case in manifest["cases"]:
        est = f.fit(Pipeline()(read_case(export_dir, case, manifest)))
        (maps_dir / case["folder"]).mkdir(parents=True)
        for p in PARAMS:
            img = np.full((manifest["image"]["cols"], manifest["image"]["rows"], 1), np.nan)
            img[col, row, 0] = np.where(est["success"].values, est[p].values, np.nan)
            path = maps_dir / case["folder"] / f"{p}.nii.gz"
            nib.save(nib.Nifti1Image(img, nifti_affine()), path)
    return {p: str(maps_dir / "{case}" / f"{p}.nii.gz") for p in PARAMS}


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("score")
    toml = d / "score-test.toml"
    toml.write_text(SCENARIO)
    run(toml, d / "direct", fitters=[FITTER])
    export(toml, d / "export", fmt="nifti")
    maps = fit_files(d / "export", d / "maps")
    return {"dir": d, "toml": toml, "export": d / "export", "maps": maps}


@pytest.fixture(scope="module")
def scored(work):
    out = work["dir"] / "scored"
    rows = score(work["export"], work["maps"], out, name="vendorX")
    return out, rows


def test_round_trip_through_nifti_files_equals_a_direct_run(work, scored):
    out, rows = scored
    direct = _rows(work["dir"] / "direct" / "metrics.csv")
    mine = _rows(out / "metrics.csv")
    assert len(mine) == len(direct) == 2 * 4  # 2 cases x Ktrans, ve, vp, kep
    for a, b in zip(direct, mine, strict=True):
        assert (a["fitter"], b["fitter"]) == (FITTER, "vendorX")
        for key in a:
            if key in ("fitter", *TIMED):
                continue
            if a[key] in ("", b[key]):
                assert a[key] == b[key], key
                continue
            assert float(b[key]) == pytest.approx(float(a[key]), rel=1e-12, abs=1e-15), key
    # the stored estimates and truths are the direct run's
    t1, t2 = open_results(work["dir"] / "direct"), open_results(out)
    for case in ("case_0000", "case_0001"):
        for p in (*PARAMS, "true_Ktrans", "tissue", "replicate", "success"):
            a, b = t1[case][p].values, t2[case][p].values
            np.testing.assert_array_equal(a, b)
    assert [str(f) for f in t2["case_0000"]["fitter"].values] == ["vendorX"]
    meta = json.loads((out / "run.json").read_text())
    assert meta["fitters"][0]["name"] == "vendorX"
    assert meta["fitters"][0]["model"] == "extended_tofts"
    assert meta["scenario_hash"] == json.loads((work["dir"] / "direct" / "run.json").read_text())[
        "scenario_hash"
    ]


def test_the_gate_and_the_report_work_on_a_scored_folder(work, scored, tmp_path, capsys):
    out, _ = scored
    base = tmp_path / "baseline.json"
    assert main(["baseline", str(out), "-o", str(base)]) == 0
    assert main(["check", str(out), "--baseline", str(base)]) == 0
    assert main(["report", str(out), "-o", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "index.html").is_file()
    assert "vendorX" in (tmp_path / "report" / "index.html").read_text()


def test_scoring_again_resumes_and_other_maps_are_refused(work, scored, tmp_path):
    out, rows = scored
    again = score(work["export"], work["maps"], out, name="vendorX")
    assert [r["bias"] for r in again] == [r["bias"] for r in rows]
    m = load_manifest(work["export"])
    row, col = _pixels(m)
    other = {}
    for p, path in work["maps"].items():
        for case in m["cases"]:
            src = path.replace("{case}", case["folder"])
            img = nib.load(src)
            data = img.get_fdata() * (1.01 if p == "Ktrans" else 1.0)
            dest = tmp_path / case["folder"] / f"{p}.nii.gz"
            dest.parent.mkdir(exist_ok=True)
            nib.save(nib.Nifti1Image(data, img.affine), dest)
        other[p] = str(tmp_path / "{case}" / f"{p}.nii.gz")
    with pytest.raises(ConfigError, match="other fit settings or fitter versions"):
        score(work["export"], other, out, name="vendorX")


@pytest.mark.slow
def test_csv_dicom_and_flipped_nifti_maps_score_as_the_nifti_maps(work, scored, tmp_path):
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    out, rows = scored
    m = load_manifest(work["export"])
    row, col = _pixels(m)
    values = {}
    for case in m["cases"]:
        for p, path in work["maps"].items():
            img = nib.load(path.replace("{case}", case["folder"]))
            values[case["name"], p] = img.get_fdata()[col, row, 0]
    # one CSV per parameter, keyed by case and voxel
    csv_maps = {}
    for p in PARAMS:
        path = tmp_path / f"{p}.csv"
        with open(path, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(("case", "voxel", p))
            for case in m["cases"]:
                for v, x in enumerate(values[case["name"], p]):
                    w.writerow((case["name"], v, repr(float(x)) if np.isfinite(x) else ""))
        csv_maps[p] = str(path)
    # Ktrans as a flipped NIfTI (as dcm2niix orients: rows reversed, the affine says so)
    flipped = dict(csv_maps)
    for case in m["cases"]:
        img = nib.load(work["maps"]["Ktrans"].replace("{case}", case["folder"]))
        data = img.get_fdata()[:, ::-1]
        aff = img.affine.copy()
        aff[:, 3] = img.affine @ [0, data.shape[1] - 1, 0, 1]
        aff[:, 1] = -img.affine[:, 1]
        (tmp_path / "flip" / case["folder"]).mkdir(parents=True)
        nib.save(nib.Nifti1Image(data, aff), tmp_path / "flip" / case["folder"] / "K.nii.gz")
    flipped["Ktrans"] = str(tmp_path / "flip" / "{case}" / "K.nii.gz")
    # ve as DICOM: 16-bit with a fine slope would not be exact; a float-exact map needs
    # RescaleSlope 1, so the map is written scaled by 1e4 and rounded, and compared so
    dicom = dict(csv_maps)
    for case in m["cases"]:
        img = np.zeros((m["image"]["rows"], m["image"]["cols"]), dtype=np.uint16)
        img[row, col] = np.rint(values[case["name"], "ve"] * 1e4).astype(np.uint16)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.Rows, ds.Columns = img.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = "1e-4", 0
        ds.PixelData = img.tobytes()
        folder = tmp_path / "dcm" / case["folder"]
        folder.mkdir(parents=True)
        ds.save_as(folder / "ve.dcm", enforce_file_format=True)
    dicom["ve"] = str(tmp_path / "dcm" / "{case}")
    assert pydicom is not None
    a = score(work["export"], csv_maps, tmp_path / "csv", name="vendorCSV")
    b = score(work["export"], flipped, tmp_path / "flip-out", name="vendorFlip")
    c = score(work["export"], dicom, tmp_path / "dcm-out", name="vendorDICOM")
    for r, x, y in zip(rows, a, b, strict=True):
        assert x["bias"] == r["bias"] and y["bias"] == r["bias"] and x["cv_pct"] == r["cv_pct"]
    t = open_results(tmp_path / "dcm-out")
    for case in m["cases"]:
        np.testing.assert_allclose(
            t[case["name"]]["ve"].values[0], values[case["name"], "ve"], rtol=0, atol=0.5e-4
        )
    assert len(c) == len(rows)


@pytest.fixture(scope="module")
def dicom_export(work, tmp_path_factory):
    d = tmp_path_factory.mktemp("dicom") / "export"
    export(work["toml"], d, fmt="dicom")
    return d


def test_round_trip_through_dicom_is_within_the_quantisation(work, dicom_export, tmp_path):
    maps = fit_files(dicom_export, tmp_path / "maps")
    score(dicom_export, maps, tmp_path / "scored", name="vendorDICOM")
    direct = open_results(work["dir"] / "direct")
    mine = open_results(tmp_path / "scored")
    for case in ("case_0000", "case_0001"):
        for p in PARAMS:
            a, b = direct[case][p].values[0], mine[case][p].values[0]
            # the signals are within half a step (< 1% of the noise SD) of the simulated
            # ones: the estimates move by far less than their noise spread (measured: at
            # most 8.4e-4 of it, and 1e-4 of the estimate)
            assert np.nanmax(np.abs(a - b)) < 2e-3 * np.nanstd(a), (case, p)
    d1 = _rows(work["dir"] / "direct" / "metrics.csv")
    d2 = _rows(tmp_path / "scored" / "metrics.csv")
    for x, y in zip(d1, d2, strict=True):
        assert abs(float(x["rel_bias_pct"]) - float(y["rel_bias_pct"])) < 0.01  # % points
        assert float(y["cv_pct"]) == pytest.approx(float(x["cv_pct"]), rel=1e-3)


def test_maps_made_from_dcm2niix_volumes_score_in_their_own_orientation(
    work, dicom_export, tmp_path
):
    """A site converts the DICOM with dcm2niix, fits its NIfTI and returns maps on its grid."""
    import shutil
    import subprocess

    binary = shutil.which("dcm2niix")
    if binary is None:
        pytest.skip("the dcm2niix binary is not installed (pip install dcm2niix)")
    manifest = load_manifest(dicom_export)
    f = get_fitter(FITTER)
    for case in manifest["cases"]:
        conv = tmp_path / "nii" / case["folder"]
        conv.mkdir(parents=True)
        try:
            subprocess.run([binary, "-z", "y", "-f", "%s", "-o", str(conv),
                            str(dicom_export / case["folder"])],
                           capture_output=True, timeout=120, check=True)  # fmt: skip
        except OSError as exc:
            pytest.skip(f"the dcm2niix binary cannot run here: {exc}")
        dyn = nib.load(conv / "1.nii.gz")
        shape = dyn.shape[:3]
        sig = dyn.get_fdata().reshape(-1, dyn.shape[3])
        n_angles = len(case["flip_angles_deg"])
        vfa = np.stack(
            [nib.load(conv / f"{100 + j}.nii.gz").get_fdata().reshape(-1) for j in range(n_angles)],
            axis=1,
        )
        aif = np.loadtxt(dicom_export / case["folder"] / "aif.csv", delimiter=",", skiprows=1)
        ds = xr.Dataset(
            {"signal": (("voxel", "time"), sig), "vfa_signal": (("voxel", "flip_angle"), vfa),
             "ca": ("time", aif[:, 1])},
            coords={"time": aif[:, 0], "flip_angle": case["flip_angles_deg"]},
            attrs=case["protocol"],
        )  # fmt: skip
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            est = f.fit(Pipeline()(ds))
        out = tmp_path / "maps" / case["folder"]
        out.mkdir(parents=True)
        for p in PARAMS:
            v = np.where(est["success"].values, est[p].values, np.nan).reshape(shape)
            nib.save(nib.Nifti1Image(v, dyn.affine), out / f"{p}.nii.gz")
    maps = {p: str(tmp_path / "maps" / "{case}" / f"{p}.nii.gz") for p in PARAMS}
    score(dicom_export, maps, tmp_path / "scored", name="vendorD2N")
    direct = open_results(work["dir"] / "direct")
    mine = open_results(tmp_path / "scored")
    for case in ("case_0000", "case_0001"):
        for p in PARAMS:
            a, b = direct[case][p].values[0], mine[case][p].values[0]
            assert np.nanmax(np.abs(a - b)) < 2e-3 * np.nanstd(a), (case, p)


def test_errors_name_the_map_the_value_and_the_expectation(work, tmp_path):
    e, maps = work["export"], work["maps"]
    with pytest.raises(ConfigError, match=r"unknown parameter 'ktrans' \(did you mean 'Ktrans'"):
        parse_maps("ktrans=a.nii.gz")
    with pytest.raises(ConfigError, match="expected PARAM=PATH"):
        parse_maps("Ktrans")
    with pytest.raises(ConfigError, match="given twice"):
        parse_maps("ve=a.nii,ve=b.nii")
    missing = r"\[.ve.\]: no model has exactly .*missing map for Ktrans of the tofts"
    with pytest.raises(ConfigError, match=missing):
        model_of(["ve"])
    assert model_of(["Ktrans", "ve"]) == "tofts"
    gone = r"map vp \(case_0000\): .*case_0000/nope.nii does not exist"
    with pytest.raises(ConfigError, match=gone):
        score(e, {**maps, "vp": str(tmp_path / "{case}" / "nope.nii")}, tmp_path / "o1")
    bad = tmp_path / "{case}"
    for case in ("case_0000", "case_0001"):
        (tmp_path / case).mkdir()
        nib.save(nib.Nifti1Image(np.zeros((3, 5, 1)), nifti_affine()), tmp_path / case / "v.nii")
    with pytest.raises(ConfigError, match=r"map ve \(case_0000\): .* has shape \(3, 5, 1\): "
                       r"expected the export's grid \(6, 6, 1\)"):  # fmt: skip
        score(e, {**maps, "ve": str(bad / "v.nii")}, tmp_path / "o2")
    with pytest.raises(ConfigError, match=r"map Ktrans: .* is one image, and the export has 2"):
        score(e, {**maps, "Ktrans": str(tmp_path / "k.nii.gz")}, tmp_path / "o3")
    with pytest.raises(ConfigError, match="--name nlls_extended_tofts: an installed fitter"):
        score(e, maps, tmp_path / "o4", name="nlls_extended_tofts")
    with pytest.raises(ConfigError, match="no manifest.json"):
        score(tmp_path, maps, tmp_path / "o5")
    for k in range(1, 6):
        assert not (tmp_path / f"o{k}" / "metrics.csv").exists()


def test_unit_mistakes_are_refused_or_warned():
    truth = np.full(20, 0.2)
    with pytest.raises(ConfigError, match=r"map Ktrans: median 0\.003333, 60 times smaller .*"
                       r"expected /min; was it written in /s\? \(multiply by 60\)"):  # fmt: skip
        check_units("Ktrans", truth / 60, truth)
    with pytest.raises(ConfigError, match=r"map ve: median 30, 100% of the values > 1: expected"
                       r" a fraction 0-1 \(a percentage\? divide by 100\)"):  # fmt: skip
        check_units("ve", np.full(20, 30.0), np.full(20, 0.3))
    with pytest.raises(ConfigError, match="map fp: .* was it written in mL/mL/min"):
        check_units("fp", np.full(5, 0.5), np.full(5, 50.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_units("Ktrans", truth * 1.3, truth)  # a biased map is not a unit mistake
        check_units("vp", np.full(20, 0.9), np.full(20, 0.5))
    with pytest.warns(UnitWarning, match=r"map Ktrans: median 4 is 20 x the truth's median"):
        check_units("Ktrans", truth * 20, truth)


def test_a_ktrans_map_in_per_second_is_refused_before_anything_is_written(work, tmp_path):
    m = load_manifest(work["export"])
    maps = dict(work["maps"])
    for case in m["cases"]:
        img = nib.load(maps["Ktrans"].replace("{case}", case["folder"]))
        (tmp_path / case["folder"]).mkdir()
        per_s = nib.Nifti1Image(img.get_fdata() / 60, img.affine)
        nib.save(per_s, tmp_path / case["folder"] / "K.nii.gz")
    maps["Ktrans"] = str(tmp_path / "{case}" / "K.nii.gz")
    out = tmp_path / "out"
    assert main(["score", str(work["export"]), "--maps",
                 ",".join(f"{k}={v}" for k, v in maps.items()), "-o", str(out)]) == 2  # fmt: skip
    assert not out.exists()


def test_the_cli_scores_and_writes_a_report(work, tmp_path, capsys):
    maps = ",".join(f"{k}={v}" for k, v in work["maps"].items())
    out = tmp_path / "cli"
    status = main(["score", str(work["export"]), "--maps", maps, "--name", "vendorY", "-o",
                   str(out), "--report", str(tmp_path / "rep")])  # fmt: skip
    assert status == 0
    text = capsys.readouterr().out
    assert "case_0000 vendorY Ktrans: bias" in text and (out / "metrics.csv").is_file()
    assert (tmp_path / "rep" / "index.html").is_file()
