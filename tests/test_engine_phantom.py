"""Phantom scenarios in the one engine: resume, fault isolation, schedulers, lost units.

The same guarantees as :mod:`test_engine` gives simulated scenarios, on the neck phantom,
whose units are (case, subject) and whose results are assembled from unit stores.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

from phantomdce.engine.run import execute, finalize, open_results, plan_run, run

from test_engine import assert_a_killed_run_resumes, metrics_without_timing
from test_phantom import PHANTOM_SCENARIO

PLUGINS = str(Path(__file__).parent / "engine_plugins")


def phantom(tmp_path, name="p.toml", *, subjects=2, sweep="slice_mm = [2.0, 4.0]", fit=None):
    text = PHANTOM_SCENARIO.format(name="eng").replace("subjects = 1", f"subjects = {subjects}")
    text = text.replace("slice_mm = [2.0, 4.0]", sweep)
    if fit is not None:
        text = text.replace('fitters = ["llsq_extended_tofts"]', fit)
    path = tmp_path / name
    path.write_text(text)
    return path


def estimates(out):
    tree = open_results(out)
    return {
        case: {k: tree[case].ds[k].values for k in ("Ktrans", "ve", "success", "tissue")}
        for case in tree.children
    }


def assert_same(a, b):
    assert list(a) == list(b)
    for case in a:
        for k in a[case]:
            np.testing.assert_array_equal(a[case][k], b[case][k])


@pytest.mark.slow  # an engine or phantom run: the default pytest stays under 4 minutes
def test_phantom_units_are_case_and_subject_and_failures_are_recorded(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(PLUGINS)
    fit = (
        'fitters = ["llsq_extended_tofts", "acme_faulty:Raises", "acme_faulty:WrongShape"]\n'
        'isolate = "none"'
    )
    path = phantom(tmp_path, sweep="slice_mm = [4.0]", fit=fit)
    plan = plan_run(path, tmp_path / "out")
    assert plan.phantom and [u[:2] for u in plan.units] == [(0, 0), (0, 1)]
    execute(plan)
    finalize(plan)
    ds = open_results(tmp_path / "out")["case_0000"].ds
    ok = ds["success"].values
    assert ok[0].mean() > 0.9 and not ok[1:].any()  # the built-in untouched by its neighbours
    with open(tmp_path / "out" / "failures.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    # one failure per faulty fitter and subject, with the subject's voxels in the case node
    assert sorted((r["fitter"], r["chunk"]) for r in rows) == [
        ("acme_raises", "0"),
        ("acme_raises", "1"),
        ("acme_shape", "0"),
        ("acme_shape", "1"),
    ]
    first = {r["chunk"]: (int(r["voxel_start"]), int(r["voxel_stop"])) for r in rows}
    tissue = ds["tissue"].values
    n0 = int(np.sum(tissue < ds.attrs["roi_voxels"][0]))
    assert first["0"] == (0, n0) and first["1"] == (n0, tissue.size)
    assert "acme solver exploded" in next(r["error"] for r in rows if r["fitter"] == "acme_raises")


@pytest.mark.slow  # an engine or phantom run: the default pytest stays under 4 minutes
def test_a_subject_without_a_tumour_roi_is_recorded_not_fatal(tmp_path):
    # 40 mm voxels on a 96 mm phantom: no voxel is mostly tumour
    path = phantom(tmp_path, subjects=1, sweep="in_plane_mm = [2.0, 40.0]")
    rows = run(path, tmp_path / "out")
    failures = (tmp_path / "out" / "failures.csv").read_text()
    assert "the tumour ROI holds no voxel at this resolution" in failures
    by_case = {r["case"]: r for r in rows if r["parameter"] == "Ktrans"}
    assert by_case["case_0000"]["n_voxels"] > 0
    assert by_case["case_0001"]["n_voxels"] == 0


@pytest.mark.slow  # child processes or an engine run: the default pytest stays under 4 minutes
def test_a_lost_unit_store_is_redone_and_the_result_is_unchanged(tmp_path):
    path = phantom(tmp_path)
    out = tmp_path / "out"
    run(path, out)
    before = estimates(out)
    shutil.rmtree(out / "units" / "case_0001_chunk_00001.zarr")
    plan = plan_run(path, out)  # the resumed run finds the unit by its digest
    assert [(c, k) for c, k, _ in plan.repaired] == [("case_0001", 1)]
    assert [u[:2] for u in plan.pending()] == [(1, 1)]
    execute(plan)
    finalize(plan)
    assert_same(estimates(out), before)


@pytest.mark.slow
def test_a_killed_phantom_run_resumes_to_the_same_result(tmp_path):
    path = phantom(tmp_path, subjects=3, sweep="slice_mm = [2.0, 3.0, 4.0]")
    assert_a_killed_run_resumes(path, tmp_path, 3, estimates)


@pytest.mark.slow
def test_a_phantom_run_gives_the_same_result_on_every_scheduler(tmp_path):
    path = phantom(tmp_path)
    run(path, tmp_path / "local")
    run(path, tmp_path / "procs", scheduler="processes", workers=2)
    run(path, tmp_path / "threads", scheduler="threads", workers=2)
    assert_same(estimates(tmp_path / "procs"), estimates(tmp_path / "local"))
    assert_same(estimates(tmp_path / "threads"), estimates(tmp_path / "local"))
    assert metrics_without_timing(tmp_path / "procs") == metrics_without_timing(tmp_path / "local")


@pytest.mark.slow  # child processes or an engine run: the default pytest stays under 4 minutes
def test_the_acquired_phantom_does_not_depend_on_the_blas_threads(tmp_path):
    # a dask worker runs BLAS on 1 thread, the run on all cores: the truth must not differ
    import os
    import subprocess
    import sys

    code = (
        "import hashlib, sys\n"
        "from phantomdce.dro.protocol import Protocol\n"
        "from phantomdce.phantom.acquire import Acquisition, acquire\n"
        "from phantomdce.phantom.anatomy import make_neck\n"
        "ph = make_neck((8, 64, 64), seed=3)\n"
        "a = acquire(ph, Protocol.from_mapping({'dt': 5.0, 'duration': 120.0, 'snr': 30.0}),"
        " Acquisition(in_plane_mm=2.0, slice_mm=2.0), seed=4)\n"
        "print(hashlib.sha256(a['signal'].values.tobytes()).hexdigest())\n"
    )
    digests = set()
    for threads in ("1", "2"):
        env = {**os.environ, "OPENBLAS_NUM_THREADS": threads, "OMP_NUM_THREADS": threads}
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        digests.add(out.stdout.strip())
    assert len(digests) == 1  # SHA-256 of the acquired signal, the same on 1 and 2 threads


def test_acquisitions_in_concurrent_threads_equal_serial_ones():
    # dask's threads scheduler acquires several subjects at once in one process: the
    # one-thread BLAS limit must hold until the last of them ends
    import hashlib
    from concurrent.futures import ThreadPoolExecutor

    from phantomdce.dro.protocol import Protocol
    from phantomdce.phantom.acquire import Acquisition, acquire
    from phantomdce.phantom.anatomy import make_neck

    ph = make_neck((8, 64, 64), seed=3)
    proto = Protocol.from_mapping({"dt": 5.0, "duration": 120.0, "snr": 30.0})
    acqs = [Acquisition(in_plane_mm=s, slice_mm=2.0) for s in (1.0, 1.5, 2.0, 2.5)] * 2

    def digest(acq):
        return hashlib.sha256(acquire(ph, proto, acq, seed=4)["signal"].values).hexdigest()

    serial = [digest(a) for a in acqs]
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(digest, acqs)) == serial
