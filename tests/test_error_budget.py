"""The error budget: each fitter again with one pipeline stage set to its truth (issue 11, 8)."""

import json
from pathlib import Path

import numpy as np
import pytest

from phantomdce.cli import main
from phantomdce.dro.config import ConfigError
from phantomdce.engine.config import FitConfig, oracle_name
from phantomdce.engine.run import (
    _jobs,
    execute,
    finalize,
    open_results,
    plan_run,
    run,
    run_unit,
)

PLUGINS = str(Path(__file__).parent / "engine_plugins")

SCENARIO = """
name = "budget"
seed = 7
replicates = {replicates}

[protocol]
snr = {snr}
dt = 4.0
duration = 200.0
arterial_voxels = 8

[tissue]
model = "extended_tofts"
Ktrans = [0.1, 0.3]
ve = [0.2, 0.4]
vp = [0.03]

[sweep]
dt = [3.0, 6.0]

[fit]
fitters = {fitters}
chunk_voxels = {chunk}
timeout_s = {timeout}
{budget}

[fit.pipeline]
{pipeline}
"""

NLLS = "nlls_extended_tofts"
BUDGET = ["t1", "baseline", "aif"]
MEASURED = 'aif = "measured"'


def scenario(
    tmp_path,
    name="s.toml",
    *,
    budget=BUDGET,
    pipeline=MEASURED,
    snr="25.0",
    replicates=6,
    fitters=(NLLS,),
    chunk=64,
    timeout=600,
):
    path = tmp_path / name
    path.write_text(
        SCENARIO.format(
            replicates=replicates,
            snr=snr,
            fitters=json.dumps(list(fitters)),
            chunk=chunk,
            timeout=timeout,
            budget="" if budget is None else f"error_budget = {json.dumps(budget)}",
            pipeline=pipeline,
        )
    )
    return path


def stored(out, names=("Ktrans", "ve", "vp", "success")):
    tree = open_results(out)
    return {
        case: {k: tree[case].ds[k].values for k in names} | {"fitter": tree[case].ds["fitter"]}
        for case in ("case_0000", "case_0001")
    }


def assert_same(a, b):
    for case in a:
        assert list(a[case]["fitter"].values) == list(b[case]["fitter"].values)
        for k in a[case]:
            if k != "fitter":
                np.testing.assert_array_equal(a[case][k], b[case][k], err_msg=f"{case} {k}")


def metrics_without_timing(out):
    lines = (Path(out) / "metrics.csv").read_text().splitlines()
    col = lines[0].split(",").index("fit_time_per_voxel_s")
    return [",".join(v for i, v in enumerate(line.split(",")) if i != col) for line in lines]


# -- the key ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"error_budget": "t1"}, "fit.error_budget = 't1': expected a list of pipeline stages"),
        ({"error_budget": ["t2"]}, "fit.error_budget[0] = 't2': expected one of ['aif',"),
        ({"error_budget": ["t1", 3]}, "fit.error_budget[1] = 3: expected one of"),
        ({"error_budget": ["t1", "t1"]}, "fit.error_budget = ['t1', 't1']: expected each stage"),
        # the default pipeline already hands the fitter the true AIF
        ({"error_budget": ["aif"]}, "fit.error_budget[0] = 'aif': the pipeline already uses"),
        (
            {"error_budget": ["aif", "t1"], "pipeline": {"aif": "measured", "t1": "true"}},
            "fit.error_budget[1] = 't1': the pipeline already uses the true native T1",
        ),
        (
            {"error_budget": ["baseline"], "pipeline": {"baseline": "true"}},
            "fit.pipeline.baseline = 'true'",
        ),
        (
            {"error_budget": ["t1"], "pipeline": {"concentration": "true"}},
            "fit.error_budget[0] = 't1': fit.pipeline.concentration = 'true' hands every fitter",
        ),
        (
            {"error_budget": ["baseline"], "pipeline": {"concentration": "true"}},
            "so the pre-contrast baseline signal is not used",
        ),
        ({"error_budgett": ["t1"]}, "unknown key 'fit.error_budgett'"),
    ],
)
def test_bad_error_budgets_are_refused(raw, message):
    with pytest.raises(ConfigError) as err:
        FitConfig.from_mapping(raw, model="extended_tofts")
    assert message in str(err.value)


def test_the_key_is_checked_before_anything_is_written(tmp_path, capsys):
    path = scenario(tmp_path, budget=["aif"], pipeline='aif = "true"')
    out = tmp_path / "out"
    assert main(["run", str(path), "-o", str(out), "-q"]) == 2
    assert "fit.error_budget[0] = 'aif': the pipeline already uses the true AIF" in (
        capsys.readouterr().err
    )
    assert not out.exists()


def test_entries_follow_the_fitters_then_each_fitter_its_stages():
    fit = FitConfig.from_mapping(
        {
            "fitters": [NLLS, "llsq_extended_tofts"],
            "error_budget": ["aif", "t1"],
            "pipeline": {"aif": "population"},
        },
        model="extended_tofts",
    )
    entries = fit.entries(fit.resolve())
    assert [e.name for e in entries] == [
        NLLS,
        "llsq_extended_tofts",
        "nlls_extended_tofts [true aif]",
        "nlls_extended_tofts [true t1]",
        "llsq_extended_tofts [true aif]",
        "llsq_extended_tofts [true t1]",
    ]
    assert [e.oracle_of for e in entries[:3]] == [None, None, NLLS]
    aif = entries[2].pipeline
    assert aif.aif == "true" and aif.t1 == fit.pipeline.t1 == "vfa_nonlinear"
    t1 = entries[3].pipeline
    assert t1.t1 == "true" and t1.aif == "population" and t1.baseline == "measured"
    assert oracle_name(NLLS, "t1") == "nlls_extended_tofts [true t1]"
    # the budget is part of the run identity, and an empty one leaves the identity alone
    plain = FitConfig.from_mapping({"pipeline": {"aif": "population"}}, model="extended_tofts")
    empty = FitConfig.from_mapping(
        {"pipeline": {"aif": "population"}, "error_budget": []}, model="extended_tofts"
    )
    assert "error_budget" not in json.dumps(plain.identity({}))
    assert plain.identity({}) == empty.identity({})
    budget = FitConfig.from_mapping(
        {"pipeline": {"aif": "population"}, "error_budget": ["t1"]}, model="extended_tofts"
    )
    assert budget.identity({}) != plain.identity({})


PHANTOM = """
name = "p"
seed = 5
replicates = 2

[protocol]
dt = 5.0
duration = 120.0

[phantom]
shape = [16, 96, 96]
subjects = 1

[fit]
fitters = ["llsq_extended_tofts"]
error_budget = ["t1"]
"""


def test_phantom_scenarios_refuse_the_key(tmp_path):
    """Phantom scenarios fit only the scenario's pipeline: the key is refused, not ignored."""
    from phantomdce.engine.run import run as run_engine
    from phantomdce.engine.study import run_study

    PHANTOM_RUNNER = "phantom scenarios"

    message = r"fit.error_budget = \['t1'\]: not supported by phantom scenarios"
    with pytest.raises(ConfigError, match=message):
        FitConfig.from_mapping(
            {"error_budget": ["t1"]}, model="extended_tofts", error_budget_runner=PHANTOM_RUNNER
        )
    FitConfig.from_mapping({}, model="extended_tofts", error_budget_runner=PHANTOM_RUNNER)
    (tmp_path / "p.toml").write_text(PHANTOM)
    with pytest.raises(ConfigError, match=message):
        run_engine(tmp_path / "p.toml", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    # a study refuses it while checking its scenarios, before any is run
    scenario(tmp_path, "d.toml", budget=["t1"])
    (tmp_path / "study.toml").write_text('include = ["d.toml", "p.toml"]\n')
    with pytest.raises(ConfigError, match="^p.toml: " + message):
        run_study(tmp_path / "study.toml", tmp_path / "study")
    assert not (tmp_path / "study").exists()


# -- runs ---------------------------------------------------------------------------------


def test_a_run_with_an_error_budget_stores_and_reports_the_oracle_entries(tmp_path):
    out = tmp_path / "out"
    rows = run(scenario(tmp_path, fitters=(NLLS, "llsq_extended_tofts")), out)
    names = [
        NLLS,
        "llsq_extended_tofts",
        *(f"{NLLS} [true {s}]" for s in BUDGET),
        *(f"llsq_extended_tofts [true {s}]" for s in BUDGET),
    ]
    case = open_results(out)["case_0000"].ds
    assert list(case["fitter"].values) == names
    assert case["Ktrans"].shape == (8, 24) and case["fit_time_s"].shape == (8, 1)
    assert case["success"].values.all()
    meta = json.loads((out / "run.json").read_text())
    assert [f["name"] for f in meta["fitters"]] == names
    assert meta["fit"]["error_budget"] == BUDGET
    for record in meta["fitters"][:2]:
        assert "oracle_of" not in record and "oracle_stage" not in record
    record = meta["fitters"][3]
    assert record["oracle_of"] == NLLS and record["oracle_stage"] == "baseline"
    assert record["model"] == "extended_tofts" and record["source"] == "builtin"
    assert meta["fitters"][7]["oracle_of"] == "llsq_extended_tofts"
    by_fitter = {r["fitter"] for r in rows}
    assert by_fitter == set(names)
    lines = (out / "metrics.csv").read_text().splitlines()[1:]
    assert {line.split(",")[1] for line in lines} == set(names)
    # each entry saw its own pipeline: the oracle estimates differ from the fitter's
    k = case["Ktrans"].values
    for f in range(2, 5):
        assert not np.array_equal(k[0], k[f])


@pytest.mark.slow  # an engine run: the default pytest must stay under 4 minutes
def test_true_t1_entry_reproduces_a_separate_run_with_the_true_t1(tmp_path):
    """Noise-free data: the [true t1] entry is the fitter run with t1 = "true" on its own."""
    for snr in ("inf", "25.0"):  # and with noise: same voxels, same noise
        budget = scenario(tmp_path, f"b{snr}.toml", budget=["t1", "aif"], snr=snr)
        alone = scenario(
            tmp_path,
            f"a{snr}.toml",
            budget=None,
            snr=snr,
            pipeline=MEASURED + '\nt1 = "true"',
        )
        run(budget, tmp_path / f"b{snr}")
        run(alone, tmp_path / f"a{snr}")
        b, a = open_results(tmp_path / f"b{snr}"), open_results(tmp_path / f"a{snr}")
        for case in ("case_0000", "case_0001"):
            for name in ("Ktrans", "ve", "vp", "success"):
                np.testing.assert_array_equal(
                    b[case].ds[name].sel(fitter=f"{NLLS} [true t1]").values,
                    a[case].ds[name].sel(fitter=NLLS).values,
                )
    # noise-free, the true T1 and the true AIF leave only the fitter: the truth comes back
    b = open_results(tmp_path / "binf")["case_0001"].ds
    est = b["Ktrans"].sel(fitter=f"{NLLS} [true aif]").values
    assert np.abs(est / b["true_Ktrans"].values - 1).max() < 0.15


@pytest.mark.slow  # an engine run: the default pytest must stay under 4 minutes
def test_results_with_an_error_budget_do_not_depend_on_chunking(tmp_path):
    run(scenario(tmp_path, "a.toml", chunk=1000, replicates=9), tmp_path / "a")
    run(scenario(tmp_path, "b.toml", chunk=7, replicates=9), tmp_path / "b")
    assert_same(stored(tmp_path / "a"), stored(tmp_path / "b"))
    assert metrics_without_timing(tmp_path / "a") == metrics_without_timing(tmp_path / "b")


@pytest.mark.slow  # an engine run: the default pytest must stay under 4 minutes
def test_an_interrupted_run_resumes_the_oracle_entries(tmp_path):
    path = scenario(tmp_path, chunk=8, replicates=8)
    out = tmp_path / "out"
    plan = plan_run(path, out)
    assert len(plan.units) == 8
    for job in _jobs(plan, plan.units[:3]):  # the run stops after three units
        run_unit(job)
    # a resumed run checks the budget is the same: another budget is another run
    other = scenario(tmp_path, "o.toml", chunk=8, replicates=8, budget=["t1"])
    other.rename(path)
    with pytest.raises(ConfigError, match="other fit settings"):
        plan_run(path, out)
    scenario(tmp_path, chunk=8, replicates=8)
    plan = plan_run(path, out)
    assert len(plan.pending()) == 5
    assert len(execute(plan)) == 5
    finalize(plan)
    run(path, tmp_path / "clean")
    assert_same(stored(out), stored(tmp_path / "clean"))
    assert metrics_without_timing(out) == metrics_without_timing(tmp_path / "clean")


@pytest.mark.slow  # an engine run: the default pytest must stay under 4 minutes
def test_schedulers_give_the_same_oracle_estimates(tmp_path):
    path = scenario(tmp_path, chunk=16, budget=["t1"])
    run(path, tmp_path / "threads", scheduler="threads", workers=2)
    run(path, tmp_path / "local")
    assert_same(stored(tmp_path / "threads"), stored(tmp_path / "local"))


@pytest.mark.parametrize(
    ("plugin", "name", "timeout", "message"),
    [
        ("acme_faulty:Raises", "acme_raises", 300, "acme solver exploded"),
        pytest.param(
            "acme_faulty:Hangs", "acme_hangs", 6, "time limit of 6 s", marks=pytest.mark.slow
        ),
    ],
)
def test_oracle_entries_of_a_faulty_plugin_fail_alone_and_are_isolated(
    tmp_path, monkeypatch, plugin, name, timeout, message
):
    monkeypatch.syspath_prepend(PLUGINS)
    path = scenario(
        tmp_path, fitters=(NLLS, plugin), budget=["t1"], replicates=2, chunk=8, timeout=timeout
    )
    path.write_text(path.read_text().replace("dt = [3.0, 6.0]", "dt = [3.0]"))  # one case
    run(path, tmp_path / "out")
    case = open_results(tmp_path / "out")["case_0000"].ds
    assert list(case["fitter"].values) == [NLLS, name, f"{NLLS} [true t1]", f"{name} [true t1]"]
    ok = case["success"].values
    assert ok[0].all() and ok[2].all() and not ok[[1, 3]].any()
    assert np.isnan(case["Ktrans"].values[[1, 3]]).all()
    failures = (tmp_path / "out" / "failures.csv").read_text().splitlines()
    # the plug-in's own entry and its error-budget entry fail, each in its own process
    assert sum(f",{name}," in f and message in f for f in failures) == 1
    assert sum(f",{name} [true t1]," in f and message in f for f in failures) == 1
    assert not any(NLLS in f for f in failures)


def test_a_stage_that_cannot_run_fails_its_entries_only(tmp_path, monkeypatch):
    """An oracle pipeline that fails in a unit is recorded for its entries; the rest is kept."""
    from phantomdce.fit.pipeline import Pipeline

    path = scenario(tmp_path, budget=["t1", "baseline"], replicates=2)
    plan = plan_run(path, tmp_path / "out")
    real = Pipeline.__call__

    def no_true_baseline(self, case):
        if self.baseline == "true":
            raise ValueError("no baseline today")
        return real(self, case)

    monkeypatch.setattr(Pipeline, "__call__", no_true_baseline)
    execute(plan)
    finalize(plan)
    case = open_results(tmp_path / "out")["case_0000"].ds
    ok = case["success"].values
    assert ok[0].all() and ok[1].all() and not ok[2].any()
    failures = (tmp_path / "out" / "failures.csv").read_text()
    assert "nlls_extended_tofts [true baseline]" in failures
    assert "the pipeline with baseline = 'true' failed: ValueError: no baseline today" in failures


def test_pipelines_the_scenario_cannot_feed_are_refused_at_planning(tmp_path, monkeypatch):
    from phantomdce.fit.pipeline import Pipeline

    # no arterial voxels: the measured AIF cannot run
    path = scenario(tmp_path, budget=["t1"])
    path.write_text(path.read_text().replace("arterial_voxels = 8", "arterial_voxels = 0"))
    with pytest.raises(ConfigError, match="^fit.pipeline cannot run on this scenario: pipeline"):
        plan_run(path, tmp_path / "bad")
    real = Pipeline.__call__

    def no_true_t1(self, case):
        if self.t1 == "true":
            raise ValueError("the case holds no T10")
        return real(self, case)

    monkeypatch.setattr(Pipeline, "__call__", no_true_t1)
    path = scenario(tmp_path, budget=["baseline", "t1"])
    message = r"^fit.error_budget\[1\] = 't1': the pipeline with t1 = 'true' cannot run on"
    with pytest.raises(ConfigError, match=message + ".*: the case holds no T10"):
        plan_run(path, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
