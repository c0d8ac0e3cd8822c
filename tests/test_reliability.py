"""Fault injection: a run killed at any moment, or two runs into one folder, never gives a
wrong or blocked result (issue 14)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from phantomdce.engine.run import run

from test_engine import assert_same, estimates, metrics_without_timing, scenario

#: Where a subprocess run dies (``os._exit``, as abrupt as SIGKILL for the folder) while
#: the output folder is being created.
KILL_POINTS = {
    # the lock file exists, nothing else
    "before_store": "phantomdce.engine.run._create_store",
    # estimates.zarr.partial is complete, about to be renamed
    "before_rename": "pathlib.Path.rename",
    # estimates.zarr and progress/ exist, run.json not yet
    "before_run_json": "phantomdce.engine.run.write_atomic",
}

DIE = textwrap.dedent(
    """
    import os, pathlib, sys
    import phantomdce.engine.run as engine_run
    where = sys.argv[1]
    if where == "before_store":
        engine_run._create_store = lambda *a, **k: os._exit(9)
    elif where == "before_rename":
        real = pathlib.Path.rename
        def rename(self, target):
            if str(target).endswith("estimates.zarr"):
                os._exit(9)
            return real(self, target)
        pathlib.Path.rename = rename
    else:
        real = engine_run.write_atomic
        def write(path, data):
            if str(path).endswith("run.json"):
                os._exit(9)
            return real(path, data)
        engine_run.write_atomic = write
    from phantomdce.cli import main
    main(["run", sys.argv[2], "-o", sys.argv[3], "-q"])
    """
)


@pytest.mark.parametrize(
    "where",
    [p if p == "before_run_json" else pytest.param(p, marks=pytest.mark.slow) for p in KILL_POINTS],
)
def test_a_run_killed_while_its_folder_is_created_resumes_with_the_same_command(
    tmp_path, where
):
    path = scenario(tmp_path, replicates=4, chunk=40)
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-c", DIE, where, str(path), str(out)])
    assert done.returncode == 9 and out.is_dir() and not (out / "run.json").exists()
    run(path, out)  # the same run again: no "is not empty and holds no phantomdce run"
    run(path, tmp_path / "clean")
    assert_same(estimates(out), estimates(tmp_path / "clean"))
    assert metrics_without_timing(out) == metrics_without_timing(tmp_path / "clean")
    assert not [p for p in out.rglob("*") if p.name.endswith((".part", ".partial"))]


def test_a_folder_with_foreign_content_is_still_refused(tmp_path):
    from phantomdce.engine.run import ResultDirError

    path = scenario(tmp_path, replicates=2)
    out = tmp_path / "out"
    (out / "progress").mkdir(parents=True)
    (out / "progress" / "case_0000_chunk_00000.json").write_text("{}")  # not a creation
    with pytest.raises(ResultDirError, match="is not empty and holds no phantomdce run"):
        run(path, out)
    (out / "mine.txt").write_text("a user's file")
    with pytest.raises(ResultDirError, match="is not empty and holds no phantomdce run"):
        run(path, tmp_path / "out")
    assert (out / "mine.txt").exists()


HOLD = textwrap.dedent(
    """
    import sys, time
    from phantomdce.engine.run import plan_run
    plan = plan_run(sys.argv[1], sys.argv[2])
    print("HOLDING", flush=True)
    time.sleep(120)
    """
)


@pytest.mark.slow  # child processes or an engine run: the default pytest stays under 4 minutes
def test_a_second_run_into_a_running_folder_exits_at_once_naming_the_first(tmp_path, capsys):
    import os
    import socket

    from phantomdce.cli import main

    path = scenario(tmp_path, replicates=2)
    out = tmp_path / "out"
    first = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path), str(out)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert first.stdout.readline().strip() == "HOLDING"
        assert main(["run", str(path), "-o", str(out), "-q"]) != 0
        err = capsys.readouterr().err
        assert str(first.pid) in err and socket.gethostname() in err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert not (out / "metrics.csv").exists()
    finally:
        first.kill()
        first.wait()
    # the holder was SIGKILLed: no stale lock, the same command now runs and finishes
    assert main(["run", str(path), "-o", str(out), "-q"]) == 0
    assert (out / "metrics.csv").exists() and os.path.exists(out / "run.json")


@pytest.mark.parametrize("replicates", [10**8, 10**11])
def test_an_absurd_plan_is_refused_at_once_before_anything_is_written(tmp_path, replicates):
    from phantomdce.dro.config import ConfigError
    from phantomdce.engine.run import UnitGrid, plan_run

    path = scenario(tmp_path, replicates=replicates, chunk=1000)
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=r"voxel curves need up to .* GB of estimates, but"):
        plan_run(path, out)
    assert not out.exists()
    # the plan's units are lazy: 1e12 voxels cost nothing until they run
    grid = UnitGrid(2, 8 * replicates, 1000)
    assert len(grid) == 2 * -(-8 * replicates // 1000)
    assert grid[-1] == (1, len(grid) // 2 - 1, (len(grid) // 2 - 1) * 1000, 8 * replicates)


@pytest.mark.slow  # an engine run: the default pytest must stay under 4 minutes
def test_a_plugins_impossible_successes_are_listed_in_suspect_csv(tmp_path, monkeypatch):
    import csv

    from test_metrics import ABSURD_PLUGIN

    (tmp_path / "acme_absurd.py").write_text(ABSURD_PLUGIN)
    (tmp_path / "acme_nanok.py").write_text(
        "from phantomdce.fit.nlls import NLLSFitter\n\n\n"
        "class NanOk:\n"
        '    name, version, model = "acme_nanok", "1.0", "extended_tofts"\n'
        '    input, method = "concentration", "nlls"\n\n'
        "    def fit(self, data):\n"
        '        out = NLLSFitter("extended_tofts").fit(data)\n'
        '        out["ve"][1::4] = float("nan")  # flagged success, no estimate\n'
        '        out["success"][:] = True\n'
        "        return out\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    path = scenario(tmp_path, replicates=2, fitters=["acme_absurd:Absurd", "acme_nanok:NanOk"])
    run(path, tmp_path / "run")
    with open(tmp_path / "run" / "suspect.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    absurd = [r for r in rows if r["fitter"] == "acme_absurd"]
    # every other voxel: Ktrans < 0, ve > 1 and so kep < 0, per case (16 voxels each)
    for name in ("Ktrans", "ve", "kep"):
        listed = [r for r in absurd if r["parameter"] == name and r["case"] == "case_0000"]
        assert [int(r["voxel"]) for r in listed] == list(range(0, 16, 2))
        assert all("outside the physical range" in r["problem"] for r in listed)
    assert all(float(r["estimate"]) < 0 for r in absurd if r["parameter"] == "Ktrans")
    nan = [r for r in rows if r["fitter"] == "acme_nanok"]
    assert sorted({int(r["voxel"]) for r in nan if r["case"] == "case_0001"}) == [1, 5, 9, 13]
    assert all(r["problem"].startswith("flagged success") for r in nan)


def test_the_bias_bootstrap_of_a_large_case_draws_the_same_numbers_in_bounded_memory():
    # 2e5 replicates: one (1000, R) draw held 1.6 GB of indices; blocks keep it ~ 10 MB
    import tracemalloc

    import numpy as np

    from phantomdce.engine.metrics import block_bootstrap_bias_ci

    rng = np.random.default_rng(3)
    n_rep = 200_000
    rep = np.repeat(np.arange(n_rep), 2)
    err = rng.normal(0.01, 0.1, rep.size)
    tracemalloc.start()
    low, high = block_bootstrap_bias_ci(err, rep, n_boot=200, seed=7)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 40e6, f"{peak / 1e6:.0f} MB"
    # the one-shot draw, computed independently
    sums = np.bincount(rep, weights=err)
    draw = np.random.default_rng(7).integers(0, n_rep, size=(200, n_rep))
    boot = sums[draw].sum(axis=1) / (2.0 * n_rep)
    assert (low, high) == tuple(np.percentile(boot, [2.5, 97.5]))


def test_a_damaged_run_json_is_named_not_dumped(tmp_path, capsys):
    from phantomdce.cli import main

    path = scenario(tmp_path, replicates=2)
    out = tmp_path / "out"
    assert main(["run", str(path), "-o", str(out), "-q"]) == 0
    (out / "run.json").write_text('{"scenario_hash": ')
    capsys.readouterr()
    assert main(["run", str(path), "-o", str(out), "-q"]) == 2
    err = capsys.readouterr().err
    assert "run.json is damaged" in err and "Traceback" not in err


FINALIZE_DIE = textwrap.dedent(
    """
    import os, sys
    import phantomdce.engine.run as engine_run
    where = sys.argv[1]
    if where == "metrics":  # the metrics written, failures.csv not yet
        real = engine_run._write_failures
        engine_run._write_failures = lambda *a, **k: os._exit(9)
    elif where == "assemble":  # a phantom case node half written
        import phantomdce.engine.phantom as ph
        real = ph.assemble_case
        calls = []
        def assemble(*a, **k):
            calls.append(1)
            if len(calls) == 2:
                os._exit(9)
            return real(*a, **k)
        ph.assemble_case = assemble
    else:  # the report: after its first figure file
        import phantomdce.report.plain as plain
        import phantomdce.report.render as render
        real = render.write_atomic
        def write(path, data):
            real(path, data)
            if str(path).endswith(".png"):
                os._exit(9)
        render.write_atomic = plain.write_atomic = write
    from phantomdce.cli import main
    args = ["run", sys.argv[2], "-o", sys.argv[3], "-q"]
    if where == "report":
        args += ["--report", sys.argv[4]]
    main(args)
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("where", ["metrics", "assemble", "report"])
def test_a_run_killed_while_writing_its_metrics_or_report_ends_right_when_rerun(
    tmp_path, where
):
    from phantomdce.cli import main
    from test_engine_phantom import estimates as phantom_estimates
    from test_engine_phantom import phantom

    if where == "assemble":
        path = phantom(tmp_path, subjects=1, sweep="slice_mm = [3.0, 4.0]")
        read = phantom_estimates
    else:
        path, read = scenario(tmp_path, replicates=4, chunk=40), estimates
    out, rep = tmp_path / "out", tmp_path / "rep"
    argv = [sys.executable, "-c", FINALIZE_DIE, where, str(path), str(out), str(rep)]
    done = subprocess.run(argv)
    assert done.returncode == 9
    assert main(["run", str(path), "-o", str(out), "-q"]) == 0
    run(path, tmp_path / "clean")
    assert_same(read(out), read(tmp_path / "clean"))
    assert metrics_without_timing(out) == metrics_without_timing(tmp_path / "clean")
    from phantomdce.engine.verify import verify_run

    assert verify_run(out).ok
    if where == "report":
        assert main(["report", str(out), "-o", str(rep)]) == 0
        assert (rep / "index.html").exists() and (rep / "summary.md").exists()
        assert not [p for p in rep.rglob("*") if p.name.endswith((".part", ".partial"))]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_a_worker_killed_mid_run_on_a_dask_cluster_changes_nothing(tmp_path):
    import os
    import signal
    import threading
    import time

    from dask import distributed

    path = scenario(tmp_path, replicates=60, chunk=16)
    out = tmp_path / "cluster"
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster, distributed.Client(cluster) as client:
        pids = list(client.run(os.getpid).values())
        errors = []

        def go():
            try:
                run(path, out, scheduler=cluster.scheduler_address)
            except Exception as exc:  # noqa: BLE001 - reported by the assert below
                errors.append(exc)

        worker = threading.Thread(target=go)
        worker.start()
        deadline = time.time() + 120
        while time.time() < deadline and len(list((out / "progress").glob("*.json"))) < 3:
            time.sleep(0.05)
        os.kill(pids[0], signal.SIGKILL)  # one worker dies mid-run; the nanny restarts it
        worker.join(timeout=600)
        assert not worker.is_alive() and errors == []
    run(path, tmp_path / "local")
    assert_same(estimates(out), estimates(tmp_path / "local"))
    assert metrics_without_timing(out) == metrics_without_timing(tmp_path / "local")


@pytest.mark.slow  # an engine or phantom run: the default pytest stays under 4 minutes
def test_the_plan_prints_its_size_and_an_estimated_time_before_work_starts(tmp_path, capsys):
    from phantomdce.cli import main
    from phantomdce.engine.run import estimate_seconds, plan_run

    path = scenario(tmp_path, replicates=10, chunk=40)
    assert main(["run", str(path), "-o", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    head = err.split("estimated time on this machine: about ")
    assert "2 cases x 80 voxels (estimates up to" in head[0] and len(head) == 2
    # the estimate scales with the pending voxels: none left once the run is done
    plan = plan_run(path, tmp_path / "out")
    assert estimate_seconds(plan) is None
    import math

    fresh = plan_run(path, tmp_path / "fresh")
    assert 0 < estimate_seconds(fresh) < math.inf  # a measurement: its value is not asserted


def test_the_metrics_of_a_million_voxel_case_stay_within_a_few_copies_of_it():
    # 1e6 voxels: each float64 array is 8 MB; the metrics may hold a few, never dozens
    import tracemalloc

    import numpy as np

    from phantomdce.engine.metrics import case_metrics

    rng = np.random.default_rng(5)
    n = 1_000_000
    tissue = np.repeat(np.arange(8), n // 8)
    replicate = np.tile(np.arange(n // 8), 8)
    truth = (tissue + 1) * 0.05
    estimate = truth + rng.normal(0, 0.01, n)
    ok = rng.random(n) > 0.02
    tracemalloc.start()
    row = case_metrics(estimate, truth, ok, tissue, replicate, parameter="Ktrans", n_boot=200)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert row["n_voxels"] == n and abs(row["rel_bias_pct"]) < 1
    assert peak < 64e6, f"{peak / 1e6:.0f} MB"  # was 93 MB (78 MB after the bootstrap fix)
