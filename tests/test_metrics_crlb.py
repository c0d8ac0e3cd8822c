"""The Cramér-Rao bound in metrics.csv and the report (issue 12): crlb_sd, efficiency."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from phantomdce.dro.scenario import parse_scenario
from phantomdce.engine.metrics import (
    BOUND_GRID_STEP_S,
    METRICS,
    bound_kind,
    case_bounds,
    case_metrics,
)
from phantomdce.engine.run import open_results, run
from phantomdce.fit.pipeline import Pipeline
from phantomdce.precision import crlb

TISSUES = [(0.1, 0.25, 0.05), (0.3, 0.25, 0.05)]  # (Ktrans /min, ve, vp), grid order
REPLICATES = 6

SCENARIO = f"""
name = "crlb"
seed = 21
replicates = {REPLICATES}

[protocol]
snr = 20.0
dt = 5.0
duration = 240.0

[tissue]
model = "extended_tofts"
Ktrans = [0.1, 0.3]
ve = 0.25
vp = 0.05

[sweep]
snr = [20.0, inf]

[fit]
fitters = ["nlls_extended_tofts", "nlls_tofts", "nlls_extended_tofts_delay"]
error_budget = ["t1", "baseline"]
"""


@pytest.fixture(scope="module")
def crlb_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("crlb")
    path = tmp / "crlb.toml"
    path.write_text(SCENARIO)
    run(path, tmp / "out")
    with open(tmp / "out" / "metrics.csv", newline="") as fh:
        rows = {(r["case"], r["fitter"], r["parameter"]): r for r in csv.DictReader(fh)}
    return path, tmp / "out", rows


def _value(row, key):
    return float(row[key]) if row[key] != "" else math.nan


def _direct_bound(path, kind):
    """precision.crlb of each tissue of the first case, from the scenario, not the store."""
    import tomllib

    sc = parse_scenario(tomllib.loads(path.read_text()))
    case = sc.cases()[0]
    out = []
    for kt, ve, vp in TISSUES:
        sd = crlb(
            case.protocol,
            "extended_tofts",
            {"Ktrans": kt, "ve": ve, "vp": vp},
            t10=None,  # the tumour's T10 at the field, as the tissue grid's default
            snr=20.0,
            kind=kind,
        )
        out.append(sd)
    return out


def test_metrics_csv_has_the_bound_columns():
    assert METRICS[-3:] == ("crlb_sd", "crlb_cv_pct", "efficiency")


@pytest.mark.parametrize(
    ("fitter", "kind"),
    [("nlls_extended_tofts", "two_step"), ("nlls_extended_tofts [true t1]", "baseline_m0")],
)
def test_crlb_sd_of_a_case_is_the_bound_of_its_tissues(crlb_run, fitter, kind):
    path, out, rows = crlb_run
    tissues = _direct_bound(path, kind)
    truths = dict(zip(("Ktrans", "ve", "vp"), zip(*TISSUES, strict=True), strict=True))
    for name in ("Ktrans", "ve", "vp", "kep"):
        row = rows["case_0000", fitter, name]
        var = np.array([sd[name] ** 2 for sd in tissues])
        # the same number of voxels per tissue: the voxel mean is the tissue mean
        # the metrics' signal model runs on a 0.1 s grid (BOUND_GRID_STEP_S), the direct
        # bound on the simulator's 0.01 s grid: they agree to 1e-4
        assert _value(row, "crlb_sd") == pytest.approx(math.sqrt(var.mean()), rel=1e-4), name
        y = (
            np.array(truths["Ktrans"]) / np.array(truths["ve"])
            if name == "kep"
            else np.array(truths[name])
        )
        cv = 100 * math.sqrt(np.mean(var / y**2))
        assert _value(row, "crlb_cv_pct") == pytest.approx(cv, rel=1e-4), name


def test_efficiency_is_the_bound_over_the_measured_within_tissue_variance(crlb_run):
    path, out, rows = crlb_run
    tissues = _direct_bound(path, "two_step")
    ds = open_results(out)["case_0000"].to_dataset()
    f = list(ds["fitter"].values).index("nlls_extended_tofts")
    tissue = ds["tissue"].values
    for name in ("Ktrans", "ve", "vp"):
        est = ds[name].values[f]
        ok = ds["success"].values[f] & np.isfinite(est)
        var_t, bound_t = [], []
        for t in np.unique(tissue):
            x = est[(tissue == t) & ok]
            if x.size >= 2:
                var_t.append(np.var(x, ddof=1))
                bound_t.append(tissues[int(t)][name] ** 2)
        assert len(var_t) == 2
        expected = np.mean(bound_t) / np.mean(var_t)
        assert _value(rows["case_0000", "nlls_extended_tofts", name], "efficiency") == (
            pytest.approx(expected, rel=2e-4)
        ), name
        assert 0.2 < expected < 3.0  # six replicates: a loose check that it is a ratio of SDs^2


@pytest.mark.parametrize(
    ("case", "fitter"),
    [
        ("case_0001", "nlls_extended_tofts"),  # noise free
        ("case_0000", "nlls_tofts"),  # tofts fitted to extended Tofts data
        ("case_0000", "nlls_extended_tofts_delay"),  # a fitted delay
        ("case_0000", "nlls_extended_tofts [true baseline]"),  # no bound of that kind
    ],
)
def test_no_bound_where_it_does_not_apply(crlb_run, case, fitter):
    _, _, rows = crlb_run
    found = [r for (c, f, _), r in rows.items() if (c, f) == (case, fitter)]
    assert found
    for row in found:
        assert row["sd"] != "" or case == "case_0001"
        for key in ("crlb_sd", "crlb_cv_pct", "efficiency"):
            assert row[key] == "", (fitter, row["parameter"], key)


ATTRS = {"snr": 20.0, "b1": 1.0}


@pytest.mark.parametrize(
    ("kwargs", "kind", "reason"),
    [
        ({}, "two_step", ""),
        ({"pipeline": Pipeline(t1="vfa_linear")}, "two_step", ""),
        ({"pipeline": Pipeline(t1="true")}, "baseline_m0", ""),
        ({"pipeline": Pipeline(t1="true", baseline="true")}, "known", ""),
        ({"fitter_input": "signal"}, "joint", ""),
        ({"fitter_input": "signal", "shared_m0": True}, "joint_shared_m0", ""),
        ({"pipeline": Pipeline(aif="population")}, None, "true AIF"),
        ({"pipeline": Pipeline(aif="measured")}, None, "true AIF"),
        ({"fitter_input": "signal", "pipeline": Pipeline(aif="measured")}, None, "true AIF"),
        ({"pipeline": Pipeline(b1=0.9)}, None, "true B1"),
        ({"pipeline": Pipeline(concentration="true")}, None, "noise-free"),
        ({"pipeline": Pipeline(baseline="true")}, None, "no bound of that kind"),
        ({"delay_fitted": True}, None, "delay"),
        ({"phantom": True}, None, "phantom"),
        ({"tissue_model": "2cxm"}, None, "model mismatch"),
        ({"fitter_model": "tofts"}, None, "model mismatch"),
        ({"case_attrs": {"snr": math.inf, "b1": 1.0}}, None, "noise-free"),
    ],
)
def test_bound_kind(kwargs, kind, reason):
    args = {
        "tissue_model": "extended_tofts",
        "fitter_model": "extended_tofts",
        "fitter_input": "concentration",
        "pipeline": Pipeline(),
        "case_attrs": ATTRS,
        **kwargs,
    }
    got, why = bound_kind(**args)
    assert got == kind
    assert reason in why and (why == "") == (kind is not None)


def test_case_metrics_bound_columns_by_hand():
    # two tissues (truth 1 and 2), three replicates; tissue 1 has one failed fit
    est = [1.1, 0.9, 1.0, 2.4, 1.6, np.nan]
    truth = [1.0, 1.0, 1.0, 2.0, 2.0, 2.0]
    ok = [True] * 5 + [False]
    tissue = [0, 0, 0, 1, 1, 1]
    rep = [0, 1, 2, 0, 1, 2]
    bound = [0.01] * 3 + [0.04] * 3
    m = case_metrics(est, truth, ok, tissue, rep, parameter="ve", crlb_var=bound, n_boot=0)
    assert m["crlb_sd"] == pytest.approx(math.sqrt(0.025))
    assert m["crlb_cv_pct"] == pytest.approx(100 * math.sqrt((0.01 / 1 + 0.04 / 4) / 2))
    s2 = (np.var([1.1, 0.9, 1.0], ddof=1) + np.var([2.4, 1.6], ddof=1)) / 2
    assert m["efficiency"] == pytest.approx(0.025 / s2)
    # no bound, or a NaN in it: the three columns are NaN, the others unchanged
    for none in (None, [np.nan] + bound[1:]):
        n = case_metrics(est, truth, ok, tissue, rep, parameter="ve", crlb_var=none, n_boot=0)
        assert all(math.isnan(n[k]) for k in ("crlb_sd", "crlb_cv_pct", "efficiency"))
        assert n["sd"] == m["sd"]
    with pytest.raises(ValueError, match="crlb_var"):
        case_metrics(est, truth, ok, tissue, rep, parameter="ve", crlb_var=[-1.0] * 6)


def test_case_bounds_computes_once_per_tissue_and_refuses_a_varying_truth():
    import tomllib

    sc = parse_scenario(tomllib.loads(SCENARIO.replace('snr = [20.0, inf]', "snr = [20.0]")))
    attrs = {**sc.cases()[0].protocol.as_attrs(), "model": "extended_tofts"}
    truth = {
        "Ktrans": np.array([0.1, 0.3, 0.1]),
        "ve": np.array([0.2, 0.4, 0.2]),
        "vp": np.array([0.03, 0.06, 0.03]),
        "T10": np.full(3, 1.5),
        "m0": np.full(3, 1000.0),
    }
    out = case_bounds(attrs, truth, [4, 7, 4], kind="joint")
    direct = crlb(
        sc.cases()[0].protocol,
        "extended_tofts",
        {"Ktrans": 0.3, "ve": 0.4, "vp": 0.06},
        t10=1.5,
        kind="joint",
    )
    assert out["Ktrans"][1] == pytest.approx(direct["Ktrans"] ** 2, rel=2e-4)
    coarse = crlb(
        sc.cases()[0].protocol,
        "extended_tofts",
        {"Ktrans": 0.3, "ve": 0.4, "vp": 0.06},
        t10=1.5,
        kind="joint",
        grid_step=BOUND_GRID_STEP_S,
    )
    assert out["Ktrans"][1] == pytest.approx(coarse["Ktrans"] ** 2, rel=1e-12)
    assert out["Ktrans"][0] == out["Ktrans"][2] and set(out) >= {"Ktrans", "kep", "T10"}
    truth["T10"] = np.array([1.5, 1.5, 1.4])
    with pytest.raises(ValueError, match="'T10' differs"):
        case_bounds(attrs, truth, [4, 7, 4], kind="joint")


# -- the report: the bound beside the measured CV -----------------------------------------------


def _bounded_table(fitter, param, value):
    from test_verdict import metrics

    m = metrics(2.0, 10.0 + value)
    # lsq has a bound at every knob value but the last; llsq (a mismatched model) none
    finite = fitter == "lsq" and value != 15
    m["crlb_cv_pct"] = 5.0 + value if finite else math.nan
    m["efficiency"] = 0.8 if finite else math.nan
    return m


def test_the_knob_figure_draws_the_bound_beside_the_cv():
    from phantomdce.report.figures import knob_figure

    from test_verdict import DT, make_result

    fig = knob_figure(make_result(_bounded_table, DT))
    for r in range(3):  # Ktrans, ve, vp
        ax_bias, ax_cv = fig.axes[2 * r], fig.axes[2 * r + 1]
        lines = [ln for ln in ax_cv.lines if ln.get_label().startswith("CRLB")]
        assert [ln.get_label() for ln in lines] == ["CRLB lsq"]  # none for llsq
        (line,) = lines
        assert line.get_linestyle() == "--"
        x = np.asarray(line.get_xdata(), float)
        y = np.asarray(line.get_ydata(), float)
        assert y.tolist() == [5.0 + v for v in DT[:-1]]  # only where finite
        assert np.allclose(x - np.round(x), x[0] - round(x[0]))  # at the knob values
        assert not any(ln.get_label().startswith("CRLB") for ln in ax_bias.lines)
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "CRLB (fitter's colour)" in legend

    fig = knob_figure(make_result(lambda f, p, v: _bounded_table("llsq", p, v), DT))
    assert not any(ln.get_label().startswith("CRLB") for ax in fig.axes for ln in ax.lines)
    assert "CRLB (fitter's colour)" not in [t.get_text() for t in fig.legends[0].get_texts()]


def test_the_verdict_table_shows_the_efficiency_next_to_the_cv(tmp_path):
    from phantomdce.report.render import write_report

    from test_verdict import DT, make_result

    paths = write_report(
        [make_result(_bounded_table, DT)],
        tmp_path / "rep",
        command="phantomdce report x",
        version="0",
        scenario_info={},
        date="2024-01-02",
    )
    md = paths["markdown"].read_text(encoding="utf-8")
    assert "Ktrans CV % (noise only) [CRLB efficiency]" in md
    assert "[0.80]" in md
    assert "thin dashed in a fitter's colour: its Cramér-Rao bound on the CV" in md


def test_the_report_pools_the_stored_bound_like_the_noise_only_cv(crlb_run):
    """The knob value 20 of the run's two SNR cases: one case, its metrics.csv numbers."""
    import tomllib

    from phantomdce.report.results import collect_results

    path, out, rows = crlb_run
    text = path.read_text() + (
        '\n[recommendation]\nid = "noise"\ntitle = "Noise"\ntext = "none"\nknob = "snr"\n'
        'kind = "min"\n'
    )
    assert tomllib.loads(text)["recommendation"]["knob"] == "snr"
    path2 = path.parent / "crlb_rec.toml"
    path2.write_text(text)
    out2 = path.parent / "out_rec"
    run(path2, out2)
    (result,) = collect_results(out2)
    with open(out2 / "metrics.csv", newline="") as fh:
        stored = {(r["case"], r["fitter"], r["parameter"]): r for r in csv.DictReader(fh)}
    for row in result.rows:
        case = "case_0000" if row.knob_value == 20.0 else "case_0001"
        s = stored[case, row.fitter, row.parameter]
        for key in ("crlb_cv_pct", "efficiency"):
            if s[key] == "":
                assert math.isnan(row.metrics[key]), (row.fitter, key)
            else:
                assert row.metrics[key] == pytest.approx(float(s[key]), rel=1e-12)
    assert any(math.isfinite(r.metrics["efficiency"]) for r in result.rows)


def test_several_kinds_at_once_equal_each_kind_alone():
    from phantomdce.dro.protocol import Protocol

    tissue = {"Ktrans": [0.1, 0.3], "ve": [0.25, 0.4], "vp": [0.05, 0.02]}
    kinds = ("two_step", "baseline_m0", "joint_shared_m0")
    both = crlb(Protocol(), "extended_tofts", tissue, t10=1.5, snr=20.0, kind=kinds)
    assert tuple(both) == kinds
    for kind in kinds:
        alone = crlb(Protocol(), "extended_tofts", tissue, t10=1.5, snr=20.0, kind=kind)
        assert set(alone) == set(both[kind])
        for name, sd in alone.items():
            np.testing.assert_array_equal(both[kind][name], sd)
    with pytest.raises(ValueError, match="kind='nope'"):
        crlb(Protocol(), "extended_tofts", tissue, kind=("joint", "nope"))


def test_the_joint_fit_scenario_compares_the_three_routes_on_the_esnr_protocol():
    from pathlib import Path

    from phantomdce.dro.scenario import load_scenario
    from phantomdce.engine.study import load_study

    root = Path(__file__).parent.parent / "scenarios"
    sc = load_scenario(root / "esnr2022" / "joint_fit.toml")
    assert sc.fit["fitters"] == [
        "nlls_extended_tofts",
        "nlls_extended_tofts_joint",
        "nlls_extended_tofts_joint_shared_m0",
    ]
    assert sc.fit["pipeline"] == {"t1": "vfa_nonlinear", "aif": "true"}
    assert [c.protocol.snr for c in sc.cases()] == [10.0, 20.0, 30.0]
    pr = sc.cases()[0].protocol
    assert (pr.dt, pr.flip_angles, pr.vfa_averages) == (5.0, (5.0, 15.0, 30.0), 1)
    assert sc.recommendation["knob"] == "snr" and sc.recommendation["kind"] == "min"
    noise = load_scenario(root / "esnr2022" / "noise.toml")
    assert sc.tissue == noise.tissue  # the head-and-neck grid
    for name in ("esnr2022.toml", "quick.toml"):
        study = (root / name).read_text(encoding="utf-8")
        assert '"esnr2022/joint_fit.toml"' in study, name
    assert load_study(root / "esnr2022.toml")


@pytest.mark.parametrize("proto", [{}, {"dt": 1.0}, {"dt": 15.0}, {"sampling": "average"}])
def test_the_metrics_grid_changes_the_bound_by_less_than_1e4(proto):
    from phantomdce.dro.protocol import Protocol
    from phantomdce.precision import KINDS

    kt, ve, vp = np.meshgrid([0.05, 0.4], [0.1, 0.4], [0.01, 0.08], indexing="ij")
    tissue = {"Ktrans": kt.ravel(), "ve": ve.ravel(), "vp": vp.ravel()}
    pr = Protocol().replace(**proto) if proto else Protocol()
    exact = crlb(pr, "extended_tofts", tissue, t10=1.5, kind=KINDS)
    coarse = crlb(pr, "extended_tofts", tissue, t10=1.5, kind=KINDS, grid_step=BOUND_GRID_STEP_S)
    for kind in KINDS:
        for name, sd in exact[kind].items():
            np.testing.assert_allclose(coarse[kind][name], sd, rtol=1e-4, err_msg=f"{kind} {name}")
        assert not np.array_equal(coarse[kind]["Ktrans"], exact[kind]["Ktrans"])  # another grid
