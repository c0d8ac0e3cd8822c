"""Issue 15, parts 2 and 3: two options compared along a knob, and how a ROI value is extracted.

The crossover rule (:func:`phantomdce.report.verdict.crossovers`) is checked on synthetic
rows whose intervals are computed here by hand; the phantom ROI values (map mean, map median,
mean curve) against a direct computation from the estimates a per-voxel run stores.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from phantomdce.report.model import KnobRow, Recommendation, RecommendationResult
from phantomdce.report.verdict import (
    ALL_UNDECIDED,
    CROSSES,
    FIRST_WINS,
    MIXED,
    NEVER,
    NEVER_FIRST_WINS,
    NO_DATA,
    SECOND_THROUGHOUT,
    SECOND_WINS,
    TIE_UNDECIDED,
    compare_options,
    crossovers,
    option_labels,
)

# --------------------------------------------------------------------------- crossover


def _row(value, label, bias, lo, hi, cv, n=20.0, failure=0.0, parameter="Ktrans"):
    return KnobRow(
        value,
        label,
        parameter,
        {
            "rel_bias_pct": bias,
            "rel_bias_ci_low": lo,
            "rel_bias_ci_high": hi,
            "cv_pct": cv,
            "n_blocks": n,
            "failure_rate": failure,
        },
    )


def _result(rows, kind="max", fitters=("nlls (carotid ROI)", "nlls (population AIF)")):
    rec = Recommendation(
        "aif_dt", "AIF over dt", "population AIF when dt is suboptimal", "dt",
        "temporal resolution (s)", kind, 5.0, [5.0],
    )  # fmt: skip
    values = sorted({r.knob_value for r in rows})
    return RecommendationResult(rec, "s", values, list(fitters), rows, [], {}, tissue_grid=False)


A, B = "nlls (carotid ROI)", "nlls (population AIF)"


def _cv_half(cv, n=20.0):
    # the CV interval the rule uses, written out: 1.96 standard errors, SE = CV / sqrt(2(n-1))
    return 1.96 * cv / math.sqrt(2 * (n - 1))


def test_option_labels_split_fitter_and_option():
    res = _result([], fitters=(A, B, "llsq (carotid ROI)", "plain"))
    assert option_labels(res) == {
        "nlls": {"carotid ROI": A, "population AIF": B},
        "llsq": {"carotid ROI": "llsq (carotid ROI)"},
    }


def test_crossover_found_by_hand():
    # by hand: at 2 s |bias| carotid in [0, 4], population in [12, 18]: carotid wins on bias;
    # CVs equal (overlap): carotid wins the setting. At 5 s both |bias| intervals contain
    # 3-4, CVs equal: undecided. At 10 s carotid |bias| in [15, 25], population in [0, 11]:
    # population wins. At 15 s the bias intervals overlap, but CV 30 +- 9.5 against
    # 10 +- 3.2 (n = 20): population wins on CV. So the population AIF wins from 10 s on.
    rows = [
        _row(2.0, A, 2.0, 0.0, 4.0, 5.0), _row(2.0, B, 15.0, 12.0, 18.0, 5.0),
        _row(5.0, A, 3.0, 1.0, 5.0, 5.0), _row(5.0, B, 3.5, 2.0, 6.0, 5.0),
        _row(10.0, A, -20.0, -25.0, -15.0, 8.0), _row(10.0, B, 5.0, -1.0, 11.0, 8.0),
        _row(15.0, A, -8.0, -12.0, -4.0, 30.0), _row(15.0, B, 6.0, 2.0, 10.0, 10.0),
    ]  # fmt: skip
    assert 30 - _cv_half(30) > 10 + _cv_half(10)  # the hand computation behind 15 s
    (c,) = crossovers(_result(rows))
    assert (c.fitter, c.first, c.second, c.parameter) == ("nlls", "carotid ROI",
                                                          "population AIF", "Ktrans")
    assert [x.knob_value for x in c.comparisons] == [2.0, 5.0, 10.0, 15.0]
    assert [x.status for x in c.comparisons] == [FIRST_WINS, TIE_UNDECIDED, SECOND_WINS,
                                                 SECOND_WINS]
    assert [x.bias_winner for x in c.comparisons] == ["first", "", "second", ""]
    assert [x.cv_winner for x in c.comparisons] == ["", "", "", "second"]
    assert c.crossover_at == 10.0 and c.statement == CROSSES
    from phantomdce.report.render import crossover_words

    assert crossover_words(c) == (
        "nlls, Ktrans: population AIF against carotid ROI: population AIF wins from 10 s on,"
        " not at stricter settings."
    )
    x = c.comparisons[2]
    assert x.abs_bias_interval == {"first": (15.0, 25.0), "second": (0.0, 11.0)}
    lo, hi = x.cv_ci["first"]
    assert lo == pytest.approx(8 - _cv_half(8)) and hi == pytest.approx(8 + _cv_half(8))


def test_crossover_statements_say_only_what_the_intervals_support():
    def one(rows, kind="max"):
        (c,) = crossovers(_result(rows, kind))
        return c

    same = [_row(v, f, 3.0, -2.0, 8.0, 10.0) for v in (2.0, 5.0) for f in (A, B)]
    c = one(same)
    assert c.statement == ALL_UNDECIDED and c.crossover_at is None
    first = [_row(v, A, 1.0, 0.5, 1.5, 5.0) for v in (2.0, 5.0)]
    first += [_row(v, B, 20.0, 18.0, 22.0, 5.0) for v in (2.0, 5.0)]
    assert one(first).statement == NEVER_FIRST_WINS
    second = [_row(v, B, 1.0, 0.5, 1.5, 5.0) for v in (2.0, 5.0)]
    second += [_row(v, A, 20.0, 18.0, 22.0, 5.0) for v in (2.0, 5.0)]
    c = one(second)
    assert c.statement == SECOND_THROUGHOUT and c.crossover_at == 2.0
    # the second wins at the finest setting only: it does not keep winning
    rows = [_row(2.0, A, 20.0, 18.0, 22.0, 5.0), _row(2.0, B, 1.0, 0.5, 1.5, 5.0),
            _row(5.0, A, 3.0, -2.0, 8.0, 5.0), _row(5.0, B, 3.0, -2.0, 8.0, 5.0)]  # fmt: skip
    assert one(rows).statement == NEVER
    # kind "min": the strictest value is the largest, the walk goes down
    c = one(rows, kind="min")
    assert [x.knob_value for x in c.comparisons] == [5.0, 2.0]
    assert c.statement == CROSSES and c.crossover_at == 2.0


def test_compare_options_mixed_no_blocks_and_failures():
    # the first less biased, the second more precise
    x = compare_options(_row(1, A, 1.0, 0.0, 2.0, 30.0), _row(1, B, 20.0, 18.0, 22.0, 5.0), 1)
    assert (x.bias_winner, x.cv_winner, x.status) == ("first", "second", MIXED)
    # one independent block: the CV decides nothing
    x = compare_options(
        _row(1, A, 1.0, 0.0, 2.0, 30.0, n=1.0), _row(1, B, 1.0, 0.0, 2.0, 5.0, n=1.0), 1
    )
    assert x.cv_ci["first"] == (0.0, math.inf) and x.status == TIE_UNDECIDED
    # a bias CI that is not available decides nothing either
    x = compare_options(_row(1, A, 1.0, math.nan, math.nan, 5.0), _row(1, B, 30.0, 28, 32, 5.0), 1)
    assert x.bias_winner == "" and x.status == TIE_UNDECIDED
    # more failures than the verdicts allow: no comparable numbers
    x = compare_options(_row(1, A, 1.0, 0.0, 2.0, 5.0, failure=0.5),
                        _row(1, B, 30.0, 28.0, 32.0, 5.0), 1)  # fmt: skip
    assert x.status == NO_DATA
    assert compare_options(None, _row(1, B, 1.0, 0.0, 2.0, 5.0), 1).status == NO_DATA


def test_category_recommendations_have_no_crossover():
    res = _result([_row("a", A, 1.0, 0, 2, 5.0), _row("a", B, 1.0, 0, 2, 5.0)], kind="category")
    assert crossovers(res) == []


# --------------------------------------------------------------------------- ROI values


def test_roi_means_median_and_value_truth_by_hand():
    from phantomdce.engine.phantom import roi_means, roi_truth

    replicate = np.array([0, 0, 0, 1, 1, 1, 1])
    ktrans = np.array([[0.1, 0.2, 0.9, 0.3, 0.1, np.nan, 0.2]])
    success = np.ones_like(ktrans, dtype=bool)
    success[0, 5] = False  # 1 of 4 failed: 25 % > 5 %: that ROI value fails
    est = {"Ktrans": ktrans}
    out, ok, _, failed, truth, _, _ = roi_means(
        est, success, {}, replicate, [], replicates=2, statistic="median",
        truth_per_value=roi_truth(
            {"Ktrans": np.arange(7.0), "ve": np.full(7, 0.5), "vp": np.ones(7)}, replicate
        ),
    )  # fmt: skip
    np.testing.assert_allclose(out["Ktrans"], [[0.2, np.nan]])
    np.testing.assert_allclose(failed, [[0.0, 0.25]])
    np.testing.assert_allclose(truth["Ktrans"], [1.0, 4.5])  # mean of voxels 0-2 and 3-6
    np.testing.assert_allclose(truth["kep"], [2.0, 9.0])  # mean Ktrans / mean ve
    mean, *_ = roi_means(est, np.ones_like(success), {}, replicate, [{"Ktrans": 1.0}],
                         replicates=2)  # fmt: skip
    np.testing.assert_allclose(mean["Ktrans"], [[0.4, 0.2]])
    with pytest.raises(ValueError, match="statistic = 'mode'"):
        roi_means(est, success, {}, replicate, [], replicates=2, statistic="mode")


TINY = """
name = "{name}"
seed = 11
replicates = 2

[protocol]
dt = 5.0
duration = 120.0
snr = 20.0

[phantom]
shape = [16, 96, 96]
subjects = 2
roi = "recommended"
summary = "{summary}"

[acquisition]
in_plane_mm = 2.0
slice_mm = 3.0

[fit]
fitters = ["llsq_extended_tofts"]

[fit.pipeline]
aif = "true"

[sweep]
snr = [20.0]

[recommendation]
id = "extraction"
title = "ROI value"
text = "ROI on maps"
knob = "snr"
kind = "min"
recommended = [20.0]
option = "{summary}"
"""


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """The same two subjects and noise summarised four ways (one run each)."""
    from phantomdce import open_results
    from phantomdce.engine.run import run

    root = tmp_path_factory.mktemp("claims")
    out = {}
    for summary in ("voxel", "map_mean", "map_median", "mean_curve"):
        (root / f"{summary}.toml").write_text(TINY.format(name=summary, summary=summary))
        run(root / f"{summary}.toml", root / summary)
        out[summary] = open_results(root / summary)["case_0000"].ds.load()
    return root, out


@pytest.mark.slow  # an engine run: the default pytest must stay under 4 minutes
def test_map_mean_and_median_equal_a_direct_computation_from_the_stored_map(tiny_runs):
    _, runs = tiny_runs
    vox = runs["voxel"]
    k = vox["Ktrans"].values[0]
    ok = vox["success"].values[0] & np.isfinite(k)
    codes = vox["replicate"].values
    assert np.unique(codes).size == 4  # 2 subjects x 2 acquisitions
    for summary, stat in (("map_mean", np.mean), ("map_median", np.median)):
        ds = runs[summary]
        assert ds.sizes["voxel"] == 4
        assert np.isfinite(ds["Ktrans"].values).sum() >= 3  # values, not only failed ROIs
        for i, code in enumerate(np.unique(codes)):
            sel = codes == code
            failed = (sel & ~vox["success"].values[0]).sum() / sel.sum()
            value = ds["Ktrans"].values[0, i]
            if failed > 0.05:
                assert np.isnan(value)
            else:
                assert value == pytest.approx(stat(k[sel & ok]), rel=1e-9)
            # the true ROI value: the mean volume-weighted truth of the ROI's voxels
            assert ds["true_Ktrans"].values[i] == pytest.approx(
                vox["true_Ktrans"].values[sel].mean(), rel=1e-12
            )
            assert ds["true_kep"].values[i] == pytest.approx(
                vox["true_Ktrans"].values[sel].mean() / vox["true_ve"].values[sel].mean()
            )
    # a heterogeneous ROI: its mean and median differ
    assert not np.allclose(runs["map_mean"]["Ktrans"].values, runs["map_median"]["Ktrans"].values)


@pytest.mark.slow  # an engine or phantom run: the default pytest stays under 4 minutes
def test_mean_curve_is_one_fit_of_the_rois_mean_signal(tiny_runs):
    from phantomdce.engine.phantom import mean_curve_case, unit_case
    from phantomdce.engine.run import fit_config
    from phantomdce.fit.registry import get_fitter
    from phantomdce.phantom.scenario import load_phantom_scenario

    root, runs = tiny_runs
    ps = load_phantom_scenario(root / "voxel.toml")
    case = ps.cases()[0]
    curve = runs["mean_curve"]
    for s in range(ps.subjects):
        part = unit_case(ps, case, s)  # the ROI's voxels, as the voxel run fitted them
        rep = part["replicate"].values
        mean = mean_curve_case(part)
        for r in range(ps.replicates):
            np.testing.assert_allclose(
                mean["signal"].values[r], part["signal"].values[rep == r].mean(axis=0)
            )
            np.testing.assert_allclose(
                mean["vfa_signal"].values[r], part["vfa_signal"].values[rep == r].mean(axis=0)
            )
        np.testing.assert_array_equal(mean["replicate"].values, np.arange(ps.replicates))
        np.testing.assert_array_equal(mean["arterial_signal"].values,
                                      part["arterial_signal"].values)  # fmt: skip
        # the stored ROI value: the fitter on the pipeline's input from the mean curve
        fitted = get_fitter("llsq_extended_tofts").fit(fit_config(ps, None).pipeline(mean))
        stored = curve["Ktrans"].values[0, s * ps.replicates : (s + 1) * ps.replicates]
        np.testing.assert_allclose(stored, fitted["Ktrans"].values, rtol=1e-9)
        # its truth is the map runs' truth: the mean truth of the ROI's voxels
        np.testing.assert_allclose(
            curve["true_Ktrans"].values[s * ps.replicates : (s + 1) * ps.replicates],
            runs["map_mean"]["true_Ktrans"].values[s * ps.replicates : (s + 1) * ps.replicates],
            rtol=1e-12,
        )


@pytest.mark.slow  # an engine or phantom run: the default pytest stays under 4 minutes
def test_extraction_runs_reach_the_report_with_a_crossover(tiny_runs, tmp_path):
    import shutil

    from phantomdce.report.results import collect_results

    root, _ = tiny_runs
    study = tmp_path / "study"
    study.mkdir()
    for summary in ("map_mean", "mean_curve"):
        shutil.copytree(root / summary, study / summary)
    (res,) = collect_results(study)
    assert res.fitters == ["llsq_extended_tofts (map_mean)", "llsq_extended_tofts (mean_curve)"]
    (c,) = crossovers(res)
    assert (c.first, c.second) == ("map_mean", "mean_curve")
    assert [x.knob_value for x in c.comparisons] == [20.0]
    for row in [r for r in res.rows if r.parameter == "Ktrans"]:
        assert row.metrics["n_blocks"] == 2.0  # two subjects: the CV's independent blocks
