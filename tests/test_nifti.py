"""NIfTI export of a DRO case: images, sidecars and AIF table round-trip the store.

Dtypes: the truth maps and ``ct`` are written as float64, so they must equal the store
exactly. The measured series (``dynamic`` and ``vfa``) are written as float32 (their
noise is many orders of magnitude above float32 rounding), so they are compared with the
store's float64 values cast to float32, which must also match exactly, i.e. to float32
precision (relative 6e-8) of the originals.
"""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from phantomdce.cli import main
from phantomdce.dro.nifti import export_nifti
from phantomdce.dro.scenario import parse_scenario
from phantomdce.dro.store import open_dro, write_dro

REPLICATES = 3
N_TISSUE = 4  # 2 Ktrans x 2 ve x 1 vp
TRUTH = ("Ktrans", "ve", "vp", "kep", "T10", "m0", "signal_pre")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    scenario = parse_scenario(
        {
            "name": "nifti-test",
            "seed": 7,
            "replicates": REPLICATES,
            "protocol": {"snr": 20.0, "duration": 60.0, "n_baseline": 3},
            "tissue": {
                "model": "extended_tofts",
                "Ktrans": [0.1, 0.3],
                "ve": [0.2, 0.4],
                "vp": [0.05],
            },
            "sweep": {"dt": [2.0, 5.0]},
        }
    )
    return write_dro(scenario, tmp_path_factory.mktemp("dro") / "s.zarr")


@pytest.fixture(scope="module")
def case1(store, tmp_path_factory) -> tuple[Path, list[Path]]:
    out = tmp_path_factory.mktemp("nii") / "case1"
    return out, export_nifti(store, out, case="case_0001")


def _grid(values: np.ndarray) -> np.ndarray:
    """Store voxel order (tissue-major) to the documented (x=replicate, y=tissue, z, ...)."""
    v = np.asarray(values)
    return np.moveaxis(v.reshape(N_TISSUE, REPLICATES, *v.shape[1:]), 0, 1)[:, :, None]


def _load(path: Path) -> tuple[np.ndarray, nib.Nifti1Image]:
    img = nib.load(path)
    return np.asanyarray(img.dataobj), img


def test_files_written(case1):
    out, written = case1
    names = {p.name for p in written}
    stems = ("dynamic", "vfa", "ct", *TRUTH)
    expected = {f"{s}{e}" for s in stems for e in (".nii.gz", ".json")} | {"aif.tsv"}
    assert names == expected
    assert {p.name for p in out.iterdir()} == expected
    assert all(p.parent == out and p.is_file() for p in written)
    assert not (out / "fp.nii.gz").exists()  # not a parameter of the extended Tofts model


def test_dynamic_and_vfa_round_trip(store, case1):
    out, _ = case1
    tree = open_dro(store)
    ds = tree["case_0001"].to_dataset(inherit=False)
    dyn, img = _load(out / "dynamic.nii.gz")
    assert img.shape == (REPLICATES, N_TISSUE, 1, ds.sizes["time"])
    assert dyn.dtype == np.float32
    np.testing.assert_array_equal(dyn, _grid(ds["signal"].values).astype(np.float32))
    np.testing.assert_allclose(dyn, _grid(ds["signal"].values), rtol=1e-7)
    # time step: pixdim[4] = dt (s), units mm and s, identity affine
    assert img.header.get_zooms() == pytest.approx((1.0, 1.0, 1.0, 5.0))
    assert float(img.header["pixdim"][4]) == ds.attrs["dt"] == 5.0
    assert img.header.get_xyzt_units() == ("mm", "sec")
    np.testing.assert_array_equal(img.affine, np.eye(4))

    vfa, vimg = _load(out / "vfa.nii.gz")
    assert vimg.shape == (REPLICATES, N_TISSUE, 1, ds.sizes["flip_angle"])
    assert vfa.dtype == np.float32
    np.testing.assert_array_equal(vfa, _grid(ds["vfa_signal"].values).astype(np.float32))
    # the layout: image voxel [r, t, 0] is store voxel t * replicates + r
    assert dyn[2, 1, 0, 7] == np.float32(ds["signal"].values[1 * REPLICATES + 2, 7])
    tree.close()


def test_truth_maps_and_ct_exact(store, case1):
    out, _ = case1
    ds = open_dro(store)["case_0001"].to_dataset(inherit=False)
    for name in TRUTH:
        data, img = _load(out / f"{name}.nii.gz")
        assert img.shape == (REPLICATES, N_TISSUE, 1)
        assert data.dtype == np.float64
        np.testing.assert_array_equal(data, _grid(ds[name].values))
        side = json.loads((out / f"{name}.json").read_text())
        assert side["Units"] == ds[name].attrs["units"] == side["phantomdce"]["units"]
    # each y column is one tissue: truth constant along x (replicates)
    ktrans, _ = _load(out / "Ktrans.nii.gz")
    assert np.all(ktrans == ktrans[:1])
    ct, img = _load(out / "ct.nii.gz")
    assert ct.dtype == np.float64
    np.testing.assert_array_equal(ct, _grid(ds["ct"].values))
    assert float(img.header["pixdim"][4]) == 5.0


def test_sidecars_match_store(store, case1):
    out, _ = case1
    tree = open_dro(store)
    attrs = tree["case_0001"].attrs
    dyn = json.loads((out / "dynamic.json").read_text())
    assert dyn["RepetitionTime"] == attrs["tr"]
    assert dyn["FlipAngle"] == attrs["fa"]
    assert dyn["MagneticFieldStrength"] == attrs["field_strength"]
    assert dyn["ContrastBolusIngredient"] == "GADOLINIUM"
    np.testing.assert_array_equal(dyn["FrameTimesStart"], tree["case_0001"]["time"].values)
    meta = dyn["phantomdce"]
    assert meta["case"] == "case_0001"
    assert meta["scenario"] == "nifti-test"
    assert meta["scenario_hash"] == attrs["scenario_hash"] == tree.attrs["scenario_hash"]
    assert meta["seed"] == 7
    assert meta["model"] == "extended_tofts"
    assert meta["phantomdce_version"] == attrs["phantomdce_version"]
    assert meta["protocol"]["dt"] == 5.0
    assert meta["protocol"]["flip_angles"] == list(attrs["flip_angles"])
    assert meta["protocol_units"]["tr"] == "s"
    assert meta["image_shape_xyz"] == [REPLICATES, N_TISSUE, 1]
    assert "replicate" in meta["voxel_layout"] and "identity affine" in meta["spatial"]
    vfa = json.loads((out / "vfa.json").read_text())
    assert vfa["FlipAngle"] == list(attrs["flip_angles"]) == [5.0, 15.0, 30.0]
    assert vfa["RepetitionTime"] == attrs["tr"]
    tree.close()


def test_aif_tsv_equals_ca(store, case1):
    out, _ = case1
    ds = open_dro(store)["case_0001"].to_dataset(inherit=False)
    lines = (out / "aif.tsv").read_text().splitlines()
    assert lines[0].split("\t") == ["time_s", "ca_mM"]
    table = np.array([[float(x) for x in line.split("\t")] for line in lines[1:]])
    np.testing.assert_array_equal(table[:, 0], ds["time"].values)
    np.testing.assert_array_equal(table[:, 1], ds["ca"].values)  # repr round-trips exactly


def test_default_case_and_cases_differ(store, case1, tmp_path):
    out1, _ = case1
    tree = open_dro(store)  # an open tree works as well as a path
    export_nifti(tree, tmp_path / "first")
    export_nifti(tree, tmp_path / "c2", case="case_0000")
    tree.close()
    first, _ = _load(tmp_path / "first" / "dynamic.nii.gz")
    c2, img2 = _load(tmp_path / "c2" / "dynamic.nii.gz")
    c1, img1 = _load(out1 / "dynamic.nii.gz")
    np.testing.assert_array_equal(first, c2)  # default = first case
    assert c2.shape[-1] == 30 and c1.shape[-1] == 12  # 60 s at dt 2 s vs 5 s
    assert float(img2.header["pixdim"][4]) == 2.0 != float(img1.header["pixdim"][4])
    assert json.loads((tmp_path / "c2" / "dynamic.json").read_text())["phantomdce"]["case"] == (
        "case_0000"
    )


def test_unknown_case(store, tmp_path):
    with pytest.raises(ValueError, match=r"case_0009.*case_0000.*case_0001"):
        export_nifti(store, tmp_path / "x", case="case_0009")
    assert not (tmp_path / "x").exists()
    assert main(["export-nifti", str(store), "-o", str(tmp_path / "y"), "--case", "nope"]) == 2


def test_other_model_average_sampling_noise_free(tmp_path):
    scenario = parse_scenario(
        {
            "replicates": 2,
            "protocol": {
                "snr": float("inf"),
                "duration": 40.0,  # 30 s after the arrival: the least a case may have
                "n_baseline": 2,
                "sampling": "average",
            },
            "tissue": {"model": "2cxm", "fp": [20.0, 60.0], "ps": [0.1], "ve": [0.2], "vp": [0.05]},
        }
    )
    store = write_dro(scenario, tmp_path / "s.zarr")
    names = {p.name for p in export_nifti(store, tmp_path / "out")}
    for stem in ("fp", "ps", "ve", "vp", "Ktrans", "kep", "T10", "m0"):
        assert f"{stem}.nii.gz" in names and f"{stem}.json" in names
    assert json.loads((tmp_path / "out" / "fp.json").read_text())["Units"] == "mL/100mL/min"
    dyn = json.loads((tmp_path / "out" / "dynamic.json").read_text())  # strict JSON
    assert dyn["phantomdce"]["protocol"]["snr"] == "inf"
    ds = open_dro(store)["case_0000"].to_dataset(inherit=False)
    dt = ds.attrs["dt"]
    np.testing.assert_array_equal(dyn["FrameTimesStart"], ds["time"].values - dt / 2)
    assert dyn["FrameDuration"] == [dt] * ds.sizes["time"]


def test_refuses_non_empty_outdir(store, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    export_nifti(store, out)  # empty existing directory is fine
    with pytest.raises(FileExistsError, match="not empty"):
        export_nifti(store, out, case="case_0001")
    (out / "notes.txt").write_text("keep me")
    written = export_nifti(store, out, case="case_0001", overwrite=True)
    assert (out / "notes.txt").read_text() == "keep me"
    assert json.loads((out / "dynamic.json").read_text())["phantomdce"]["case"] == "case_0001"
    assert {p.name for p in out.iterdir()} == {p.name for p in written} | {"notes.txt"}


def test_cli(store, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["export-nifti", str(store), "-o", str(out), "--case", "case_0001"]) == 0
    printed = capsys.readouterr().out.split()
    assert len(printed) == 21  # 3 images, 7 truth maps, their sidecars and aif.tsv
    assert all(Path(p).is_file() for p in printed)
    assert (out / "dynamic.nii.gz").is_file() and (out / "aif.tsv").is_file()
    dyn = json.loads((out / "dynamic.json").read_text())
    assert dyn["phantomdce"]["case"] == "case_0001"
    # a second run into the now non-empty directory is refused with exit status 2
    assert main(["export-nifti", str(store), "-o", str(out)]) == 2
