"""The benchmark engine: runs, resume, scale-out, fault isolation, the gate, bad input."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import xarray as xr

from phantomdce.cli import main
from phantomdce.dro.config import ConfigError
from phantomdce.engine.gate import check_run, make_baseline
from phantomdce.engine.isolate import fit_isolated
from phantomdce.engine.run import execute, finalize, open_results, plan_run, run
from phantomdce.testing import assert_fitter_accuracy

PLUGINS = str(Path(__file__).parent / "engine_plugins")

SCENARIO = """
name = "engine"
seed = 11
replicates = {replicates}

[protocol]
snr = 25.0
dt = 4.0
duration = 240.0

[tissue]
model = "extended_tofts"
Ktrans = [0.1, 0.3]
ve = [0.2, 0.4]
vp = [0.02, 0.06]

[sweep]
dt = [2.0, 6.0]

[fit]
fitters = {fitters}
chunk_voxels = {chunk}
timeout_s = {timeout}
"""


def scenario(tmp_path, name="s.toml", *, replicates=20, fitters=None, chunk=64, timeout=600):
    fitters = fitters or ["nlls_extended_tofts", "llsq_extended_tofts"]
    path = tmp_path / name
    path.write_text(
        SCENARIO.format(
            replicates=replicates, fitters=json.dumps(fitters), chunk=chunk, timeout=timeout
        )
    )
    return path


def estimates(out):
    tree = open_results(out)
    return {
        case: {k: tree[case].ds[k].values for k in ("Ktrans", "ve", "vp", "success")}
        for case in ("case_0000", "case_0001")
    }


def metrics_without_timing(out):
    """metrics.csv rows without the wall-clock column (the only one that may differ)."""
    lines = (Path(out) / "metrics.csv").read_text().splitlines()
    col = lines[0].split(",").index("fit_time_per_voxel_s")
    return [",".join(v for i, v in enumerate(line.split(",")) if i != col) for line in lines]


def kill_after_units(path, out, units, *, wait_s=300):
    """``phantomdce run path -o out`` in a child, SIGKILLed once ``units`` units are done."""
    code = (
        f"from phantomdce.cli import main; main(['run', {str(path)!r}, '-o', {str(out)!r}, '-q'])"
    )
    proc = subprocess.Popen([sys.executable, "-c", code])
    progress = out / "progress"
    deadline = time.time() + wait_s
    while time.time() < deadline:
        if progress.exists() and len(list(progress.glob("*.json"))) >= units:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def assert_a_killed_run_resumes(path, tmp_path, units, read):
    """SIGKILL a run after ``units`` units, resume it: equal to an uninterrupted run."""
    out = tmp_path / "killed"
    kill_after_units(path, out, units)
    plan = plan_run(path, out)
    n_done = len(plan.units) - len(plan.pending())
    assert units <= n_done < len(plan.units), "the run should have been killed midway"
    assert not (out / "metrics.csv").exists()
    execute(plan)
    finalize(plan)
    run(path, tmp_path / "clean")
    assert_same(read(out), read(tmp_path / "clean"))
    assert metrics_without_timing(out) == metrics_without_timing(tmp_path / "clean")
    assert not [p for p in out.rglob("*") if p.name.endswith(".partial")]


def assert_same(a, b):
    for case in a:
        for k in a[case]:
            np.testing.assert_array_equal(a[case][k], b[case][k])


def test_run_stores_estimates_truth_and_metrics(tmp_path):
    rows = run(scenario(tmp_path), tmp_path / "out")
    out = tmp_path / "out"
    tree = open_results(out)
    case = tree["case_0000"].ds
    assert list(case["fitter"].values) == ["nlls_extended_tofts", "llsq_extended_tofts"]
    assert case["Ktrans"].dims == ("fitter", "voxel") and case.sizes["voxel"] == 160
    assert case["Ktrans"].attrs["units"] == "/min"
    np.testing.assert_array_equal(case["true_Ktrans"].values[:20], 0.1)
    assert case["success"].values.all()
    err = case["Ktrans"].sel(fitter="nlls_extended_tofts") - case["true_Ktrans"]
    assert abs(float(err.mean())) < 0.02
    text = (out / "metrics.csv").read_text().splitlines()
    assert text[0].startswith("case,fitter,parameter,n_voxels,n_success,failure_rate,bias")
    assert len(text) - 1 == len(rows) == 2 * 2 * 4  # cases x fitters x (Ktrans, ve, vp, kep)
    meta = json.loads((out / "run.json").read_text())
    assert meta["fitters"][0]["source"] == "builtin" and meta["scenario_name"] == "engine"


def test_results_do_not_depend_on_chunking(tmp_path):
    run(scenario(tmp_path, "a.toml", chunk=1000), tmp_path / "a")
    run(scenario(tmp_path, "b.toml", chunk=37), tmp_path / "b")
    assert_same(estimates(tmp_path / "a"), estimates(tmp_path / "b"))
    assert metrics_without_timing(tmp_path / "a") == metrics_without_timing(tmp_path / "b")


@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.slow
def test_one_and_two_distributed_workers_give_identical_estimates(tmp_path):
    from dask import distributed

    path = scenario(tmp_path, chunk=40)
    stores = {}
    for n in (1, 2):
        with distributed.LocalCluster(
            n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster:
            run(path, tmp_path / f"w{n}", scheduler=cluster.scheduler_address)
        stores[n] = estimates(tmp_path / f"w{n}")
    run(path, tmp_path / "local")
    assert_same(stores[1], stores[2])
    assert_same(stores[1], estimates(tmp_path / "local"))


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_result(tmp_path):
    path = scenario(tmp_path, replicates=60, chunk=16, fitters=["nlls_extended_tofts", "nlls_2cxm"])
    assert_a_killed_run_resumes(path, tmp_path, 4, estimates)


@pytest.mark.slow  # five isolated plug-ins that crash, hang and lie (about 8 s)
def test_faulty_plugins_are_recorded_and_the_run_goes_on(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(PLUGINS)
    fitters = [
        "nlls_extended_tofts",
        "acme_faulty:Raises",
        "acme_faulty:ReturnsNaN",
        "acme_faulty:WrongShape",
        "acme_faulty:NotADataset",
        "acme_faulty:Hangs",
    ]
    # the hanging plug-in meets a 2 s limit; the others fit within the same limit on an idle
    # machine, but their limit must not depend on the machine's load (a loaded CI runner
    # can take seconds to load the NLLS kernels in a child), so they run with a wide one
    wide = scenario(tmp_path, "wide.toml", replicates=4, chunk=32, fitters=fitters[:-1])
    tight = scenario(
        tmp_path, "tight.toml", replicates=4, chunk=32, fitters=fitters[-1:], timeout=2
    )
    for path in (wide, tight):
        path.write_text(path.read_text().replace("[sweep]\ndt = [2.0, 6.0]\n", ""))  # 1 chunk
    run(wide, tmp_path / "out")
    run(tight, tmp_path / "hang")
    assert list(open_results(tmp_path / "out").children) == ["case_0000"]
    case = open_results(tmp_path / "out")["case_0000"].ds
    ok = case["success"].values
    assert ok[0].all()  # the built-in is untouched by its neighbours
    assert not ok[1:].any()
    assert np.isnan(case["Ktrans"].values[1:]).all()
    failures = (tmp_path / "out" / "failures.csv").read_text()
    assert "acme_raises" in failures and "acme solver exploded" in failures
    assert "acme_shape" in failures and "returned 3 values of 'Ktrans' for 32 voxels" in failures
    assert "acme_int" in failures and "returned int, expected an xarray.Dataset" in failures
    assert "acme_nan" not in failures  # NaN estimates are failed voxels, not a failed chunk
    with open(tmp_path / "out" / "failures.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    failed = sorted(r["fitter"] for r in rows)
    assert failed == ["acme_int", "acme_raises", "acme_shape"]  # one chunk each
    with open(tmp_path / "hang" / "failures.csv", newline="") as fh:
        (hang,) = list(csv.DictReader(fh))
    assert hang["fitter"] == "acme_hangs"
    assert "ran past the time limit of 2 s per chunk" in hang["error"]


@pytest.mark.slow  # child processes or an engine run: the default pytest stays under 4 minutes
def test_the_time_limit_counts_the_fit_not_the_child_start_up(monkeypatch):
    # a plug-in whose import takes 2 s (a heavy library, or a loaded machine) and whose fit
    # is instant: a 1 s limit per chunk must not stop it, since the fit itself is quick
    monkeypatch.syspath_prepend(PLUGINS)
    monkeypatch.setenv("ACME_IMPORT_DELAY_S", "2")
    data = xr.Dataset({"ct": (("voxel", "time"), np.zeros((5, 8)))})
    info = SimpleNamespace(name="acme_slow_start")
    result = fit_isolated("acme_slow_start:QuickFit", info, data, timeout=1.0)
    np.testing.assert_array_equal(result["Ktrans"].values, np.full(5, 0.1))
    assert result["success"].values.all()


@pytest.mark.slow
def test_gate_fails_a_degraded_fitter_and_passes_an_unchanged_one(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(PLUGINS)
    monkeypatch.delenv("ACME_DEGRADE", raising=False)
    path = scenario(tmp_path, fitters=["acme_faulty:Degradable"], chunk=256)
    assert main(["run", str(path), "-o", str(tmp_path / "base"), "-q"]) == 0
    assert main(["baseline", str(tmp_path / "base"), "-o", str(tmp_path / "b.json")]) == 0
    assert main(["run", str(path), "-o", str(tmp_path / "same"), "-q"]) == 0
    assert main(["check", str(tmp_path / "same"), "--baseline", str(tmp_path / "b.json")]) == 0
    monkeypatch.setenv("ACME_DEGRADE", "1")
    assert main(["run", str(path), "-o", str(tmp_path / "worse"), "-q"]) == 0
    capsys.readouterr()
    assert main(["check", str(tmp_path / "worse"), "--baseline", str(tmp_path / "b.json")]) == 1
    report = capsys.readouterr().out
    assert "check FAILED" in report
    assert "case_0000 acme_et Ktrans: |bias|" in report and "case_0001 acme_et Ktrans" in report
    assert "acme_et ve" not in report  # ve was not degraded


@pytest.mark.slow  # an engine or phantom run: the default pytest stays under 4 minutes
def test_baseline_of_another_scenario_is_refused(tmp_path):
    run(scenario(tmp_path), tmp_path / "a")
    baseline = make_baseline(tmp_path / "a")
    other = scenario(tmp_path, "o.toml", replicates=21)
    run(other, tmp_path / "b")
    with pytest.raises(ConfigError, match="a baseline only applies to a run of the same scenario"):
        check_run(tmp_path / "b", baseline)


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        (("snr = 25.0", "snr = 'high'"), "protocol.snr = 'high'"),
        (("dt = 4.0", "dtt = 4.0"), "unknown key 'protocol.dtt'"),
        (("dt = [2.0, 6.0]", "dt = []"), "sweep.dt = []: expected a non-empty list"),
        (('"llsq_extended_tofts"', '"llsq_extended_toft"'), "fit.fitters: unknown fitter"),
        (("chunk_voxels = 64", "chunk_voxel = 64"), "unknown key 'fit.chunk_voxel'"),
        (("[fit]", "[fit]\npipeline = {aif = 'carotid'}"), "fit.pipeline.aif = 'carotid'"),
    ],
)
def test_bad_scenarios_fail_before_any_work(tmp_path, capsys, patch, message):
    path = scenario(tmp_path)
    path.write_text(path.read_text().replace(*patch))
    out = tmp_path / "out"
    assert main(["run", str(path), "-o", str(out), "-q"]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_a_directory_with_other_content_is_refused(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.tex").write_text("...")
    assert main(["run", str(scenario(tmp_path)), "-o", str(out), "-q"]) == 2
    assert "holds no phantomdce run" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["thesis.tex"]


def test_assert_fitter_accuracy(tmp_path):
    path = scenario(tmp_path, replicates=10)
    from phantomdce.fit.nlls import NLLSFitter

    rows = assert_fitter_accuracy(
        NLLSFitter("extended_tofts"), path, max_abs_rel_bias_pct={"Ktrans": 10}
    )
    assert {r["parameter"] for r in rows} >= {"Ktrans", "ve", "vp"}
    with pytest.raises(AssertionError, match=r"dt=2 s: Ktrans \|relative bias\|"):
        assert_fitter_accuracy("nlls_tofts", path)  # Tofts on data with a plasma volume


@pytest.mark.slow  # an engine or phantom run: the default pytest stays under 4 minutes
def test_cases_keep_the_written_axis_order(tmp_path):
    """Sweep axes written in non-alphabetical order: every stored case is that case."""
    from phantomdce.dro.scenario import load_scenario
    from phantomdce.dro.simulate import simulate_case

    path = scenario(tmp_path, chunk=1000)
    path.write_text(
        path.read_text().replace("dt = [2.0, 6.0]", "snr = [10.0, 40.0]\ndt = [2.0, 6.0]")
    )
    run(path, tmp_path / "out")
    tree = open_results(tmp_path / "out")
    sc = load_scenario(path)
    for case in sc.cases():
        stored = tree[case.name].ds
        assert stored.attrs["case_values"] == case.values
        fresh = simulate_case(sc, case)
        from phantomdce.engine.config import FitConfig

        fit = FitConfig.from_mapping(sc.fit, model=sc.tissue.model)
        est = fit.resolve()[0].fitter.fit(fit.pipeline(fresh))
        np.testing.assert_array_equal(stored["Ktrans"].values[0], est["Ktrans"].values)


@pytest.mark.slow
def test_dask_local_processes_scheduler_gives_identical_estimates(tmp_path):
    path = scenario(tmp_path, chunk=50)
    run(path, tmp_path / "procs", scheduler="processes", workers=2)
    run(path, tmp_path / "local")
    assert_same(estimates(tmp_path / "procs"), estimates(tmp_path / "local"))


@pytest.mark.slow  # an engine or phantom run: the default pytest stays under 4 minutes
def test_a_unit_marked_done_without_its_data_is_redone(tmp_path):
    import shutil

    path = scenario(tmp_path, chunk=40)
    out = tmp_path / "out"
    run(path, out)
    before = estimates(out)
    # lose the stored data of one chunk behind its marker (as a machine crash could)
    g = out / "estimates.zarr" / "case_0001"
    shutil.rmtree(g / "tissue" / "1", ignore_errors=True)
    (g / "tissue" / "1").unlink(missing_ok=True)
    plan = plan_run(path, out)  # the resumed run finds the unit by its digest
    assert [(c, k) for c, k, _ in plan.repaired] == [("case_0001", 1)]
    assert len(plan.pending()) == 1
    execute(plan)
    finalize(plan)
    assert_same(estimates(out), before)
