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


# -- run: refusals before any work, Ctrl-C, fitters that fail ---------------------------

PLUGINS = str(Path(__file__).parent / "engine_plugins")


@pytest.fixture
def small(tmp_path) -> Path:
    path = tmp_path / "small.toml"
    path.write_text(SMALL + '\n[sweep]\ndt = [2.0, 5.0]\n')
    return path


def test_an_output_path_that_is_a_file_is_refused_in_one_line(small, tmp_path, capsys):
    target = tmp_path / "a_file"
    target.write_text("x")
    for command in (["run", str(small)], ["simulate", str(small)]):
        assert main([*command, "-o", str(target), "-q"]) == 2
        err = capsys.readouterr().err
        assert "is a file" in err and "Traceback" not in err and str(target) in err
    assert main(["run", str(small), "-o", str(target / "sub"), "-q"]) == 2
    assert "is a file" in capsys.readouterr().err


def test_a_scheduler_without_dask_is_refused_before_the_output_folder_is_made(
    small, tmp_path, capsys, monkeypatch
):
    import sys

    monkeypatch.setitem(sys.modules, "dask", None)
    monkeypatch.setitem(sys.modules, "distributed", None)
    for scheduler in ("processes", "tcp://127.0.0.1:8786"):
        out = tmp_path / "out"
        assert main(["run", str(small), "-o", str(out), "--scheduler", scheduler, "-q"]) == 2
        err = capsys.readouterr().err
        assert f"--scheduler {scheduler}" in err and "phantomdce[dask]" in err
        assert not out.exists()


def test_ctrl_c_says_how_to_resume(small, tmp_path, capsys, monkeypatch):
    import phantomdce.engine.run as engine

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "execute", interrupted)
    assert main(["run", str(small), "-o", str(tmp_path / "out"), "-q"]) == 130
    err = capsys.readouterr().err
    assert "interrupted: run the same command again to resume" in err
    assert "Traceback" not in err


def test_a_fitter_module_that_fails_on_import_is_named_with_the_exception_type(
    small, tmp_path, capsys, monkeypatch
):
    (tmp_path / "h5_boom_fitter.py").write_text("x = 1 / 0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "out"
    assert main(["run", str(small), "-o", str(out), "--fitters", "h5_boom_fitter:F", "-q"]) == 2
    err = capsys.readouterr().err
    assert "'h5_boom_fitter:F'" in err and "ZeroDivisionError" in err
    assert "Traceback" not in err and not out.exists()


LOCAL_FITTER = '''
from phantomdce.fit.registry import get_fitter


class Local:
    name = "h5_local"
    version = "1.0"
    model = "extended_tofts"
    input = "concentration"
    method = "llsq"

    def fit(self, data):
        return get_fitter("llsq_extended_tofts").fit(data)
'''


@pytest.mark.slow  # an engine or phantom run: the default pytest stays under 4 minutes
def test_a_fitter_module_in_the_current_folder_is_found(small, tmp_path, capsys, monkeypatch):
    import os
    import sys

    here = tmp_path / "work"
    here.mkdir()
    (here / "h5_local_fitter.py").write_text(LOCAL_FITTER)
    monkeypatch.chdir(here)
    # as the console script starts: the current folder is not on sys.path
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", os.getcwd())])
    out = tmp_path / "out"
    code = main(
        ["run", str(small), "-o", str(out), "--fitters", "h5_local_fitter:Local", "-q"]
    )
    assert code == 0, capsys.readouterr().err
    assert "h5_local" in (out / "metrics.csv").read_text()
    # a module that is nowhere: the error says where it looked
    assert main(["run", str(small), "-o", str(tmp_path / "o2"), "--fitters", "h5_nowhere:F"]) == 2
    err = capsys.readouterr().err
    assert "'h5_nowhere:F'" in err and "current folder" in err


@pytest.mark.slow  # child processes or an engine run: the default pytest stays under 4 minutes
def test_a_fitter_that_failed_on_every_chunk_makes_the_run_exit_3(
    small, tmp_path, capsys, monkeypatch
):
    monkeypatch.syspath_prepend(PLUGINS)
    out = tmp_path / "out"
    args = ["run", str(small), "-o", str(out), "-q"]
    code = main([*args, "--fitters", "llsq_extended_tofts,acme_faulty:Raises"])
    assert code == 3
    err = capsys.readouterr().err
    assert "'acme_raises' failed on every chunk (2 of 2)" in err
    assert "acme solver exploded" in err
    # a run whose fitters all produced estimates exits 0
    assert main([*args[:3], str(tmp_path / "ok"), "-q"]) == 0


# -- reports of scenarios without a recommendation ----------------------------------------


def test_run_report_of_a_scenario_without_recommendation_is_a_plain_report(
    small, tmp_path, capsys
):
    report = tmp_path / "report"
    assert main(["run", str(small), "-o", str(tmp_path / "out"), "--report", str(report)]) == 0
    captured = capsys.readouterr()
    assert "no [recommendation]" in captured.err  # said before the run
    html = (report / "index.html").read_text()
    assert "dt=2.0" in html and "llsq_extended_tofts" in html
    assert "without a verdict" in html
    assert (report / "figures" / "out_metrics.png").stat().st_size > 1000
    md = (report / "summary.md").read_text()
    assert "| dt=5.0 | llsq_extended_tofts | Ktrans |" in md
    # `phantomdce report` of the same results writes the same plain report
    assert main(["report", str(tmp_path / "out"), "-o", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "index.html").exists()


def test_run_report_problems_are_refused_before_the_sweep(small, tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text(
        small.read_text()
        + '\n[recommendation]\nid = "x"\ntitle = "X"\ntext = "x"\nknob = "dt"\nkind = "sideways"\n'
    )
    out = tmp_path / "out"
    assert main(["run", str(bad), "-o", str(out), "--report", str(tmp_path / "r")]) == 2
    assert "recommendation.kind" in capsys.readouterr().err and not out.exists()
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert main(["run", str(small), "-o", str(out), "--report", str(a_file)]) == 2
    assert "--report" in capsys.readouterr().err and not out.exists()


# -- the regression gate ------------------------------------------------------------------


@pytest.mark.slow  # an engine or phantom run: the default pytest stays under 4 minutes
def test_check_names_a_baseline_fitter_the_run_lacks_and_refuses_junk(
    small, tmp_path, capsys, monkeypatch
):
    base, new = tmp_path / "base", tmp_path / "new"
    fitters = "llsq_extended_tofts,nlls_extended_tofts"
    assert main(["run", str(small), "-o", str(base), "-q", "--fitters", fitters]) == 0
    assert main(["baseline", str(base), "-o", str(tmp_path / "b.json")]) == 0
    assert main(["run", str(small), "-o", str(new), "-q", "--fitters", "llsq_extended_tofts"]) == 0
    capsys.readouterr()
    assert main(["check", str(new), "--baseline", str(tmp_path / "b.json")]) == 1
    out = capsys.readouterr().out
    assert "nan" not in out
    assert "fitter 'nlls_extended_tofts' of the baseline" in out
    assert "missing from the run, which has llsq_extended_tofts" in out
    assert out.count("nlls_extended_tofts") == 1  # once, not once per row
    junk = {
        "junk1.json": "[1, 2]",
        "junk2.json": '{"hello": "world"}',
        "junk3.json": json.dumps(
            {"scenario_name": "small", "scenario_hash": "x", "metrics": [{"case": "c"}]}
        ),
        "junk4.json": "not json",
    }
    expected = {
        "junk1.json": "expected a JSON object",
        "junk2.json": "scenario_name = None, expected text",
        "junk3.json": "metrics[0].fitter = None: expected text",
        "junk4.json": "not JSON",
    }
    for name, text in junk.items():
        (tmp_path / name).write_text(text)
        assert main(["check", str(new), "--baseline", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err
        assert "is not a phantomdce baseline" in err or f"{name}: metrics" in err
        assert expected[name] in err and "None (hash None)" not in err


# -- reading results ----------------------------------------------------------------------


@pytest.mark.slow  # an engine run: the default pytest must stay under 4 minutes
def test_open_results_is_public_ordered_integer_indexed_and_quiet(tmp_path):
    import warnings

    import phantomdce
    from phantomdce.engine.run import run

    many = tmp_path / "many.toml"
    dts = ", ".join(str(1.0 + 0.5 * i) for i in range(12))
    text = SMALL.replace("replicates = 4", "replicates = 1")
    many.write_text(text + f"\n[sweep]\ndt = [{dts}]\n")
    out = tmp_path / "out"
    run(many, out)
    # a resume: the units of two cases are redone
    for case in ("case_0003", "case_0010"):
        for marker in (out / "progress").glob(f"{case}_*"):
            marker.unlink()
    run(many, out)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "Failed to open Zarr store with consolidated metadata"
        tree = phantomdce.open_results(out)
    names = [f"case_{i:04d}" for i in range(12)]
    assert list(tree.children) == names  # the scenario's order, not the file system's
    case = tree["case_0005"].to_dataset()
    assert case["tissue"].dtype == np.int64 and case["replicate"].dtype == np.int64
    assert case["tissue"].values.tolist() == [0, 1] and case["replicate"].values.tolist() == [0, 0]
    assert case.attrs["case_values"] == {"dt": 3.5}
    assert "open_results" in phantomdce.__all__ and phantomdce.open_results.__doc__


@pytest.mark.slow  # an engine or phantom run: the default pytest stays under 4 minutes
def test_failures_csv_names_the_type_once_and_keeps_the_last_frames(tmp_path, monkeypatch):
    import csv

    from phantomdce.engine.run import run

    monkeypatch.syspath_prepend(PLUGINS)
    path = tmp_path / "s.toml"
    path.write_text(SMALL.replace('["llsq_extended_tofts"]', '["acme_faulty:Raises"]'))
    for isolate in ("plugins", "none"):  # in a child process, and in this one
        text = path.read_text().replace("[fit]\n", f'[fit]\nisolate = "{isolate}"\n')
        (tmp_path / f"{isolate}.toml").write_text(text)
        out = tmp_path / isolate
        run(tmp_path / f"{isolate}.toml", out)
        with open(out / "failures.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert len(rows) == 1, rows
        row = rows[0]
        assert row["error"] == "RuntimeError: acme solver exploded"  # the type once
        assert row["fitter"] == "acme_raises" and row["voxel_stop"] == "8"
        trace = row["traceback"]
        assert trace.startswith("Traceback (most recent call last):")
        assert "acme_faulty.py" in trace and "in fit" in trace
        assert trace.splitlines()[-1].strip() == 'raise RuntimeError("acme solver exploded")'
        assert trace.count("RuntimeError") == 1  # the error is in `error`, not repeated
        assert trace.count('  File "') <= 4


@pytest.mark.slow
def test_sigint_during_a_real_run_prints_one_line_and_the_run_resumes(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    path = tmp_path / "long.toml"
    path.write_text(
        SMALL.replace("replicates = 4", "replicates = 200")
        .replace('["llsq_extended_tofts"]', '["nlls_extended_tofts"]\nchunk_voxels = 40')
        + "\n[sweep]\ndt = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]\n"
    )
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "phantomdce.cli", "run", str(path), "-o", str(out), "-q"]
    # Ctrl-C as at a terminal: a job started in the background of a non-interactive shell
    # (as a CI script may start pytest) inherits SIGINT ignored, and Python keeps it ignored
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not list((out / "progress").glob("*.json")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted: run the same command again to resume" in err
    assert "Traceback" not in err
    done = len(list((out / "progress").glob("*.json")))
    assert 0 < done < 60
    assert subprocess.run(cmd, capture_output=True, text=True, timeout=600).returncode == 0
    assert len(list((out / "progress").glob("*.json"))) == 60


def test_an_export_folder_has_ordinary_permissions(phantom_store, tmp_path):
    import os
    import stat

    from phantomdce.dro.nifti import export_nifti

    umask = os.umask(0o022)
    try:
        export_nifti(phantom_store, tmp_path / "nii")
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "nii").stat().st_mode) == 0o755
