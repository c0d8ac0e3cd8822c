"""What a new user hit on the command line (issue 10, part 2): each reproduced and fixed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from phantomdce.cli import main

PHANTOM = """
name = "userphantom"
seed = 5
replicates = 1

[protocol]
dt = 5.0
duration = 120.0
snr = 30.0

[phantom]
shape = [12, 64, 64]
subjects = 1

[acquisition]
in_plane_mm = 2.0
slice_mm = 3.0
gap_mm = 1.0
slice_profile = "rect"

[fit]
fitters = ["llsq_extended_tofts"]
"""


SMALL = """
name = "small"
seed = 1
replicates = 4

[protocol]
snr = 20.0

[tissue]
Ktrans = [0.1, 0.2]
ve = [0.2]
vp = [0.01]

[fit]
fitters = ["llsq_extended_tofts"]
"""


@pytest.fixture(scope="module")
def phantom_store(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("phantom")
    (d / "p.toml").write_text(PHANTOM)
    assert main(["simulate", str(d / "p.toml"), "-o", str(d / "s.zarr"), "-q"]) == 0
    return d / "s.zarr"


def test_export_nifti_of_a_phantom_store_writes_the_image_with_its_geometry(
    phantom_store, tmp_path, capsys
):
    import nibabel as nib

    import phantomdce

    out = tmp_path / "nii"
    assert main(["export-nifti", str(phantom_store), "-o", str(out)]) == 0
    tree = phantomdce.open_dro(phantom_store)
    acquired = tree["case_0000/acquired"].to_dataset()
    img = nib.load(str(out / "dynamic.nii.gz"))
    n_slice, ny, nx, nt = acquired["signal"].shape
    assert img.shape == (nx, ny, n_slice, nt)  # (x, y, z, time)
    np.testing.assert_array_equal(
        np.asarray(img.dataobj), np.swapaxes(acquired["signal"].values, 0, 2)
    )
    # affine: voxel centres in mm, 2 mm in plane, slice spacing = thickness + gap = 4 mm
    affine = img.affine
    np.testing.assert_allclose(np.diag(affine)[:3], [2.0, 2.0, 4.0])
    np.testing.assert_allclose(
        affine[:3, 3],
        [acquired["x"].values[0], acquired["y"].values[0], acquired["slice"].values[0]],
    )
    assert img.header.get_zooms()[3] == pytest.approx(5.0)  # dt in s
    ktrans = nib.load(str(out / "Ktrans.nii.gz"))
    np.testing.assert_array_equal(
        np.asarray(ktrans.dataobj), np.swapaxes(acquired["Ktrans"].values, 0, 2)
    )
    labels = nib.load(str(out / "labels_truth.nii.gz"))
    assert labels.shape == (64, 64, 12)
    np.testing.assert_allclose(np.diag(labels.affine)[:3], [1.0, 1.0, 1.0])
    side = json.loads((out / "dynamic.json").read_text())
    assert side["SpacingBetweenSlices"] == 4.0 and side["SliceThickness"] == 3.0
    assert "(x, y, z" in side["phantomdce"]["voxel_layout"]
    assert (out / "aif.tsv").read_text().startswith("time_s\tca_mM")


@pytest.mark.parametrize("phantom", [True, False])
def test_a_failed_export_leaves_no_folder_behind(phantom, phantom_store, tmp_path, monkeypatch):
    import phantomdce.dro.nifti as nifti

    if phantom:
        store = phantom_store
    else:
        scenario = tmp_path / "s.toml"
        scenario.write_text(SMALL)
        store = tmp_path / "dro.zarr"
        assert main(["simulate", str(scenario), "-o", str(store), "-q"]) == 0
    calls = []

    def failing(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:  # after one image was written
            raise OSError("disk full")
        return real(*args, **kwargs)

    name = "_save_image" if phantom else "_save"
    real = getattr(nifti, name)
    monkeypatch.setattr(nifti, name, failing)
    out = tmp_path / "export"
    with pytest.raises(OSError, match="disk full"):
        nifti.export_nifti(store, out)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".export")]
    # an existing folder keeps what it held
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    calls.clear()
    with pytest.raises(OSError, match="disk full"):
        nifti.export_nifti(store, out, overwrite=True)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
