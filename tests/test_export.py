"""`phantomdce export`: every case of a scenario as DICOM or NIfTI series, truth and manifest.

The NIfTI series are float64 and must equal the simulated signals exactly; the DICOM
series are 16-bit integers with a RescaleSlope and must be within half a step of them,
a step far below the noise SD (stated in the manifest and checked here). dcm2niix, an
independent converter, must read the DICOM series back to the same values and geometry.
"""

import json
import shutil
import subprocess

import nibabel as nib
import numpy as np
import pytest
from nibabel.orientations import apply_orientation, io_orientation, ornt_transform

from phantomdce.cli import main
from phantomdce.dro.config import ConfigError
from phantomdce.dro.export import export, nifti_affine, scenario_toml, tile_layout
from phantomdce.dro.scenario import load_scenario, parse_scenario
from phantomdce.dro.simulate import simulate_case
from phantomdce.dro.store import write_dro

pydicom = pytest.importorskip("pydicom")

SCENARIO = """
name = "export-test"
seed = 11
replicates = 4

[protocol]
snr = 20.0
duration = 90.0
n_baseline = 3
dt = 5.0
flip_angles = [5.0, 15.0, 30.0]

[tissue]
model = "extended_tofts"
Ktrans = [0.1, 0.2, 0.3]
ve = [0.3]
vp = [0.02]

[sweep]
snr = [20.0, 40.0]
"""


@pytest.fixture(scope="module")
def toml(tmp_path_factory):
    path = tmp_path_factory.mktemp("scenario") / "export-test.toml"
    path.write_text(SCENARIO)
    return path


@pytest.fixture(scope="module")
def simulated(toml):
    scenario = load_scenario(toml)
    return {c.name: simulate_case(scenario, c) for c in scenario.cases()}


@pytest.fixture(scope="module")
def dicom_dir(toml, tmp_path_factory):
    out = tmp_path_factory.mktemp("dicom") / "export"
    export(toml, out, fmt="dicom")
    return out


@pytest.fixture(scope="module")
def nifti_dir(toml, tmp_path_factory):
    out = tmp_path_factory.mktemp("nifti") / "export"
    export(toml, out, fmt="nifti")
    return out


def _manifest(d):
    return json.loads((d / "manifest.json").read_text())


def _pixels(manifest):
    index = np.asarray(manifest["layout"]["voxel_index"])
    rows, cols = np.nonzero(index >= 0)
    v = index[rows, cols]
    row, col = np.empty(v.size, int), np.empty(v.size, int)
    row[v], col[v] = rows, cols
    return row, col


def _series(folder):
    """A DICOM series as (rows, cols, frames) of rescaled values, in temporal order."""
    items = []
    for f in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(f)
        items.append((int(getattr(ds, "TemporalPositionIdentifier", 1)), ds))
    items.sort(key=lambda x: x[0])
    data = np.stack(
        [d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept) for _, d in items],
        axis=-1,
    )
    return data, [d for _, d in items]


def test_tile_layout_puts_each_tissue_in_its_own_square_block():
    lay = tile_layout(n_tissue=3, replicates=4)
    assert (lay["block"], lay["tiles_per_row"], lay["rows"], lay["cols"]) == (2, 2, 4, 4)
    pixels = set(zip(lay["row"].tolist(), lay["col"].tolist(), strict=True))
    assert len(pixels) == 12  # every voxel its own pixel
    for t in range(3):
        rows, cols = lay["row"][4 * t : 4 * t + 4], lay["col"][4 * t : 4 * t + 4]
        assert rows.max() - rows.min() == 1 and cols.max() - cols.min() == 1
        assert rows.min() % 2 == 0 and cols.min() % 2 == 0
    lay = tile_layout(n_tissue=5, replicates=10)  # replicates not a square: partial blocks
    assert lay["block"] == 4 and lay["tiles_per_row"] == 3
    assert len(set(zip(lay["row"].tolist(), lay["col"].tolist(), strict=True))) == 50


def test_nifti_export_equals_the_simulated_case_exactly(nifti_dir, simulated):
    m = _manifest(nifti_dir)
    row, col = _pixels(m)
    assert m["format"] == "nifti" and m["n_cases"] == 2 and m["n_voxels"] == 12
    for case in m["cases"]:
        ds = simulated[case["name"]]
        folder = nifti_dir / case["folder"]
        dyn = nib.load(folder / "dynamic.nii.gz")
        assert dyn.get_data_dtype() == np.float64
        np.testing.assert_array_equal(dyn.get_fdata()[col, row, 0], ds["signal"].values)
        assert dyn.header.get_zooms()[3] == 5.0
        np.testing.assert_array_equal(dyn.affine, nifti_affine())
        vfa = nib.load(folder / "vfa.nii.gz").get_fdata()[col, row, 0]
        np.testing.assert_array_equal(vfa, ds["vfa_signal"].values)
        for key in ("Ktrans", "ve", "vp", "kep", "T10"):
            truth = nib.load(folder / "truth" / f"{key}.nii.gz").get_fdata()
            np.testing.assert_array_equal(truth[col, row, 0], ds[key].values)
            assert np.isnan(truth[3, 3, 0])  # the empty fourth block holds no voxel
        aif = np.loadtxt(folder / "aif.csv", delimiter=",", skiprows=1)
        np.testing.assert_array_equal(aif[:, 0], ds["time"].values)
        np.testing.assert_array_equal(aif[:, 1], ds["ca"].values)
        j = json.loads((folder / "aif.json").read_text())
        assert j["units"] == {"time_s": "s", "ca_mM": "mM"} and j["ca_mM"] == aif[:, 1].tolist()
        assert case["truth_units"]["Ktrans"] == "/min" and case["protocol"]["tr"] == 0.004
    index = nib.load(nifti_dir / "voxel_index.nii.gz").get_fdata()
    np.testing.assert_array_equal(index[col, row, 0], np.arange(12))
    tissue = nib.load(nifti_dir / "tissue_index.nii.gz").get_fdata()
    np.testing.assert_array_equal(tissue[col, row, 0], np.arange(12) // 4)
    assert (index == -1).sum() == 4


def test_dicom_series_hold_the_signals_to_half_a_quantisation_step(dicom_dir, simulated):
    m = _manifest(dicom_dir)
    row, col = _pixels(m)
    for case in m["cases"]:
        ds = simulated[case["name"]]
        folder = dicom_dir / case["folder"]
        data, instances = _series(folder / case["series"]["dynamic"])
        q = case["quantisation"]["dynamic"]
        err = np.abs(data[row, col] - ds["signal"].values)
        assert err.max() <= q["rescale_slope"] / 2 * (1 + 1e-9)
        assert err.max() == pytest.approx(q["max_abs_error"], rel=1e-9)
        # the step is far below the noise: < 1% of the noise SD of the series
        assert q["step_over_noise_sd"] < 0.01
        assert len(instances) == ds.sizes["time"]
        first = instances[0]
        assert float(first.RepetitionTime) == pytest.approx(0.004 * 1000)  # ms
        assert float(first.FlipAngle) == 15.0
        assert float(first.MagneticFieldStrength) == 3.0
        assert [float(x) for x in first.PixelSpacing] == [1.0, 1.0]
        assert float(first.SliceThickness) == 1.0
        assert [float(x) for x in first.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        assert (first.Rows, first.Columns) == (4, 4)
        for k, inst in enumerate(instances):
            assert int(inst.NumberOfTemporalPositions) == ds.sizes["time"]
            t = str(inst.AcquisitionTime)
            seconds = int(t[:2]) * 3600 + int(t[2:4]) * 60 + float(t[4:])
            assert seconds == pytest.approx(float(ds["time"].values[k]), abs=1e-6)
        assert len({str(i.SeriesInstanceUID) for i in instances}) == 1
        for j, angle in enumerate(case["flip_angles_deg"]):
            sub = case["series"]["vfa"][f"{angle:g}"]
            vdata, vinst = _series(folder / sub)
            assert float(vinst[0].FlipAngle) == angle and len(vinst) == 1
            verr = np.abs(vdata[row, col, 0] - ds["vfa_signal"].values[:, j])
            assert verr.max() <= case["quantisation"][sub]["rescale_slope"] / 2 * (1 + 1e-9)
            assert case["quantisation"][sub]["step_over_noise_sd"] < 0.01


def test_dcm2niix_converts_the_dicom_export_to_the_simulated_signals(
    dicom_dir, simulated, tmp_path
):
    binary = shutil.which("dcm2niix")
    if binary is None:
        pytest.skip("the dcm2niix binary is not installed (pip install dcm2niix)")
    try:
        subprocess.run([binary, "-h"], capture_output=True, timeout=60, check=False)
    except OSError as exc:
        pytest.skip(f"the dcm2niix binary cannot run here: {exc}")
    m = _manifest(dicom_dir)
    row, col = _pixels(m)
    case = m["cases"][1]
    out = tmp_path / "converted"
    out.mkdir()
    subprocess.run(
        [binary, "-z", "y", "-f", "%s", "-o", str(out), str(dicom_dir / case["folder"])],
        capture_output=True,
        timeout=120,
        check=True,
    )
    ds = simulated[case["name"]]
    target = io_orientation(nifti_affine())

    def volume(series_number):
        img = nib.load(out / f"{series_number}.nii.gz")
        transform = ornt_transform(io_orientation(img.affine), target)
        data = apply_orientation(img.get_fdata(), transform)
        # the same geometry: after reorientation the voxel-to-mm map is the export's
        affine = img.affine @ nib.orientations.inv_ornt_aff(transform, img.shape)
        np.testing.assert_allclose(affine, nifti_affine(), atol=1e-4)
        return data

    dyn = volume(1)
    assert dyn.shape == (4, 4, 1, ds.sizes["time"])
    # half a step, plus the float32 rounding of the slope dcm2niix stores (scl_slope)
    step = case["quantisation"]["dynamic"]["rescale_slope"]
    sig = ds["signal"].values
    tol = step / 2 + 2.0**-23 * np.abs(sig).max()
    np.testing.assert_allclose(dyn[col, row, 0], sig, rtol=0, atol=tol)
    sidecar = json.loads((out / "1.json").read_text())
    assert sidecar["FlipAngle"] == 15 and sidecar["MagneticFieldStrength"] == 3
    for j, angle in enumerate(case["flip_angles_deg"]):
        vfa = volume(100 + j)
        sub = case["series"]["vfa"][f"{angle:g}"]
        step = case["quantisation"][sub]["rescale_slope"]
        want = ds["vfa_signal"].values[:, j]
        tol = step / 2 + 2.0**-23 * np.abs(want).max()
        np.testing.assert_allclose(vfa[col, row, 0].ravel(), want, rtol=0, atol=tol)


def test_a_store_exports_as_its_scenario_does(toml, nifti_dir, tmp_path):
    scenario = load_scenario(toml)
    store = tmp_path / "dro.zarr"
    write_dro(scenario, store)
    out = tmp_path / "from-store"
    main(["export", str(store), "-o", str(out), "--format", "nifti"])
    a, b = _manifest(nifti_dir), _manifest(out)
    assert a["scenario"] == b["scenario"] and a["layout"] == b["layout"]
    for case in a["cases"]:
        for rel in ("dynamic.nii.gz", "vfa.nii.gz", "truth/Ktrans.nii.gz"):
            np.testing.assert_array_equal(
                nib.load(nifti_dir / case["folder"] / rel).get_fdata(),
                nib.load(out / case["folder"] / rel).get_fdata(),
            )
    # the scenario written from the store's source hashes like the original
    again = parse_scenario(__import__("tomllib").loads((out / "scenario.toml").read_text()))
    assert again.hash == scenario.hash


def test_scenario_toml_round_trips_nested_tables():
    source = {
        "name": "x",
        "seed": 1,
        "protocol": {"snr": float("inf"), "flip_angles": [2.0, 15.0]},
        "tissue": {"model": "tofts", "Ktrans": [0.1]},
        "sweep": {"saline_flush": [True]},
    }
    import tomllib

    assert tomllib.loads(scenario_toml(source)) == source


def test_export_errors_name_the_problem(toml, tmp_path, capsys):
    expected = r"--format = 'png': expected one of \['dicom', 'nifti'\]"
    with pytest.raises(ConfigError, match=expected):
        export(toml, tmp_path / "a", fmt="png")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("mine")
    with pytest.raises(FileExistsError, match="exists and is not empty"):
        export(toml, busy)
    assert (busy / "x").read_text() == "mine"
    with pytest.raises(FileNotFoundError, match="no such scenario file or DRO store"):
        export(tmp_path / "missing.toml", tmp_path / "b")
    phantom = tmp_path / "phantom.toml"
    phantom.write_text('name = "p"\n[phantom]\nsubjects = 1\n')
    with pytest.raises(ConfigError, match=r"a phantom scenario \(\[phantom\]\)"):
        export(phantom, tmp_path / "c")
    assert not (tmp_path / "c").exists()
    assert main(["export", str(toml), "-o", str(busy)]) == 2
    assert "use --overwrite" in capsys.readouterr().err


def test_export_stays_on_the_truth_side(toml, tmp_path):
    """An export (simulating a scenario first) loads no estimation, engine or report module."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from phantomdce.dro.export import export\n"
        f"export({str(toml)!r}, {str(tmp_path / 'o')!r}, fmt='nifti')\n"
        "bad = sorted(m for m in sys.modules if m.startswith(("
        "'phantomdce.fit', 'phantomdce.engine', 'phantomdce.report')))\n"
        "print('LOADED', ','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "LOADED"


def test_a_scenario_without_a_name_keeps_its_file_name(tmp_path):
    path = tmp_path / "unnamed-scn.toml"
    path.write_text(SCENARIO.replace('name = "export-test"\n', ""))
    export(path, tmp_path / "o", fmt="nifti")
    import tomllib

    again = parse_scenario(tomllib.loads((tmp_path / "o" / "scenario.toml").read_text()))
    assert again.name == "unnamed-scn" and again.hash == load_scenario(path).hash


def test_the_cli_exports_a_noiseless_case_too(tmp_path, capsys):
    path = tmp_path / "noiseless.toml"
    path.write_text(SCENARIO.replace("snr = [20.0, 40.0]", "snr = [20.0, inf]"))
    assert main(["export", str(path), "-o", str(tmp_path / "o")]) == 0
    text = capsys.readouterr().out
    assert "exported 2 cases x 12 voxels (dicom)" in text
    assert "DICOM quantisation step <= 0.00" in text and "cases without noise" in text
    q = _manifest(tmp_path / "o")["cases"][1]["quantisation"]["dynamic"]
    assert q["noise_sd"] == 0.0 and q["step_over_noise_sd"] == "inf"
