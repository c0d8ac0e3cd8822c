import csv
import doctest
import io
import math
import warnings

import numpy as np
import pytest

from phantomdce.engine import metrics
from phantomdce.engine.metrics import (
    METRICS,
    TOLERANCES,
    block_bootstrap_bias_ci,
    case_metrics,
    metric_units,
    metrics_table,
    out_of_range,
)
from phantomdce.params import PARAMETERS

# ---------------------------------------------------------------------------------------------
# Hand-worked case: parameter fp (tolerance atol 5, rtol 0.1), 2 tissues x 3 replicates.
#
#   voxel  tissue  replicate  truth  estimate  success   error
#     0      0        0        10      11       True       1
#     1      0        1        10      12       True       2
#     2      0        2        10      13       True       3
#     3      1        0        20      18       True      -2
#     4      1        1        20      22       True       2
#     5      1        2        20     999       False   (failed: excluded)
#
# valid errors e = [1, 2, 3, -2, 2]  (n_success = 5, n_voxels = 6)
# failure_rate = 1/6
# bias         = 6/5 = 1.2
# rel_bias     = mean(1/10, 2/10, 3/10, -2/20, 2/20) = 0.6/5 = 0.12 -> 12 %
# median_error = median(-2, 1, 2, 2, 3) = 2
# sd           tissue 0: estimates 11,12,13 -> var 1; tissue 1: 18,22 -> mean 20, var 8/1 = 8
#              sqrt((1 + 8) / 2) = sqrt(4.5)
# cv_pct       tissue 0: 1/12; tissue 1: sqrt(8)/20  -> squares 1/144 and 8/400 = 1/50
#              100 sqrt((1/144 + 1/50) / 2) = 100 sqrt(97/7200)
# rmse         sqrt((1 + 4 + 9 + 4 + 4) / 5) = sqrt(4.4)
# loa          deviations from 1.2: -0.2, 0.8, 1.8, -3.2, 0.8 -> squares sum 14.8, /4 = 3.7
#              1.2 -/+ 1.96 sqrt(3.7)
# ccc          per-tissue mean estimates x = (12, 20), truths y = (10, 20)
#              mean_x 16, mean_y 15, var_x 16, var_y 25, cov ((-4)(-5) + 4*5)/2 = 20
#              2*20 / (16 + 25 + 1) = 40/42 = 20/21
# within_tol   tol tissue 0: 5 + 1 = 6, tissue 1: 5 + 2 = 7: the 5 valid errors are inside,
#              the failed voxel outside -> 5/6
# fit time 3 s -> 0.5 s per voxel
# bootstrap    replicate sums/counts: r0 (1-2 = -1, 2), r1 (2+2 = 4, 2), r2 (3, 1);
#              any draw lies between the smallest and largest replicate means: [-0.5, 3]
# ---------------------------------------------------------------------------------------------
HAND = {
    "tissue": np.array([0, 0, 0, 1, 1, 1]),
    "replicate": np.array([0, 1, 2, 0, 1, 2]),
    "truth": np.array([10.0, 10, 10, 20, 20, 20]),
    "estimate": np.array([11.0, 12, 13, 18, 22, 999]),
    "success": np.array([True, True, True, True, True, False]),
}

HAND_EXPECTED = {
    "n_voxels": 6.0,
    "n_success": 5.0,
    "failure_rate": 1 / 6,
    "bias": 1.2,
    "rel_bias_pct": 12.0,
    "median_error": 2.0,
    "sd": math.sqrt(4.5),
    "cv_pct": 100 * math.sqrt(97 / 7200),
    "rmse": math.sqrt(4.4),
    "loa_low": 1.2 - 1.96 * math.sqrt(3.7),
    "loa_high": 1.2 + 1.96 * math.sqrt(3.7),
    "ccc": 20 / 21,
    "within_tol": 5 / 6,
    "fit_time_per_voxel_s": 0.5,
}


def run(d, order=None, parameter="fp", **kw):
    order = np.arange(len(d["truth"])) if order is None else np.asarray(order)
    return case_metrics(
        d["estimate"][order],
        d["truth"][order],
        d["success"][order],
        d["tissue"][order],
        d["replicate"][order],
        parameter=parameter,
        **kw,
    )


def test_hand_worked_case():
    m = run(HAND, fit_time_s=3.0)
    assert tuple(m) == METRICS
    assert all(isinstance(v, float) for v in m.values())
    for key, value in HAND_EXPECTED.items():
        assert m[key] == pytest.approx(value, rel=1e-12), key
    assert -0.5 <= m["bias_ci_low"] <= m["bias"] <= m["bias_ci_high"] <= 3.0


def test_voxel_order_is_free():
    perm = np.array([4, 2, 5, 0, 3, 1])
    a = run(HAND, fit_time_s=3.0)
    b = run(HAND, order=perm, fit_time_s=3.0)
    for key in METRICS:
        assert b[key] == pytest.approx(a[key], rel=1e-12, nan_ok=True), key


def test_non_finite_estimate_with_success_counts_as_failure():
    d = {k: v.copy() for k, v in HAND.items()}
    d["estimate"][5] = np.nan
    d["success"][5] = True  # success flag but NaN estimate: still failed
    m = run(d)
    assert m["n_success"] == 5 and m["failure_rate"] == pytest.approx(1 / 6)
    assert m["bias"] == pytest.approx(1.2)
    assert m["within_tol"] == pytest.approx(5 / 6)
    d["estimate"][5] = np.inf
    assert run(d)["bias"] == pytest.approx(1.2)


def test_failures_excluded_from_bias_counted_in_rates():
    # 1 tissue, 4 replicates, truth 1 (delay, atol 1 s); two failures with wild estimates
    est = np.array([1.5, 2.5, 100.0, np.nan])
    m = case_metrics(
        est,
        np.ones(4),
        [True, True, False, True],
        np.zeros(4, int),
        np.arange(4),
        parameter="delay",
    )
    # valid errors 0.5, 1.5 -> bias 1.0; within tolerance: 0.5 and 1.5 > 1 -> 1 of 4 voxels
    assert m["bias"] == pytest.approx(1.0)
    assert m["failure_rate"] == pytest.approx(0.5)
    assert m["within_tol"] == pytest.approx(0.25)


def test_rel_bias_skips_zero_truth():
    # errors 1 (truth 0, skipped), 1 (truth 2 -> 0.5), -1 (truth 4 -> -0.25)
    # rel bias = 100 * (0.5 - 0.25) / 2 = 12.5 %; the absolute bias still uses all: 1/3
    m = case_metrics(
        [1.0, 3.0, 3.0], [0.0, 2.0, 4.0], [True] * 3, [0, 1, 2], [0, 0, 0], parameter="vp"
    )
    assert m["rel_bias_pct"] == pytest.approx(12.5)
    assert m["bias"] == pytest.approx(1 / 3)
    only_zero = case_metrics([1.0], [0.0], [True], [0], [0], parameter="vp")
    assert math.isnan(only_zero["rel_bias_pct"]) and only_zero["bias"] == 1.0


def test_sd_and_cv_pooled_over_tissues():
    # tissue 0: estimates 1, 3 -> mean 2, var 2, SD/mean = sqrt(2)/2
    # tissue 1: estimates 10, 14, 12 -> mean 12, var 4, SD/mean = 2/12
    # tissue 2: a single valid replicate (other failed) -> skipped for sd and cv
    # tissue 3: estimates -1, 1 -> var 2 but mean 0 -> counts in sd, skipped in cv
    # sd = sqrt((2 + 4 + 2)/3) = sqrt(8/3); cv = 100 sqrt((1/2 + 1/36)/2) = 100 sqrt(19/72)
    est = [1.0, 3.0, 10.0, 14.0, 12.0, 5.0, 7.0, -1.0, 1.0]
    tis = [0, 0, 1, 1, 1, 2, 2, 3, 3]
    rep = [0, 1, 0, 1, 2, 0, 1, 0, 1]
    ok = [True] * 6 + [False] + [True] * 2
    m = case_metrics(est, np.zeros(9), ok, tis, rep, parameter="delay")
    assert m["sd"] == pytest.approx(math.sqrt(8 / 3))
    assert m["cv_pct"] == pytest.approx(100 * math.sqrt(19 / 72))


def test_sd_nan_with_single_replicates():
    m = case_metrics([1.0, 2.0], [1.0, 1.0], [True, True], [0, 1], [0, 0], parameter="ve")
    assert math.isnan(m["sd"]) and math.isnan(m["cv_pct"])
    assert math.isnan(m["bias_ci_low"]) and math.isnan(m["bias_ci_high"])


def test_loa_hand():
    # errors -1, 0, 4: mean 1, deviations -2, -1, 3 -> SD sqrt(14/2) = sqrt(7)
    m = case_metrics(
        [0.0, 1.0, 5.0], [1.0] * 3, [True] * 3, [0, 1, 2], [0, 0, 0], parameter="delay"
    )
    assert m["loa_low"] == pytest.approx(1 - 1.96 * math.sqrt(7))
    assert m["loa_high"] == pytest.approx(1 + 1.96 * math.sqrt(7))
    one = case_metrics([2.0], [1.0], [True], [0], [0], parameter="delay")
    assert math.isnan(one["loa_low"]) and one["rmse"] == 1.0


def ccc_of(est, truth):
    n = len(truth)
    m = case_metrics(est, truth, [True] * n, np.arange(n), np.zeros(n, int), parameter="ve")
    return m["ccc"]


def test_ccc_perfect_offset_scaled():
    y = np.array([1.0, 2.0, 3.0])
    assert ccc_of(y, y) == pytest.approx(1.0)
    # offset 1: var_x = var_y = cov = 2/3 -> (4/3) / (4/3 + 1) = 4/7
    assert ccc_of(y + 1, y) == pytest.approx(4 / 7)
    # x = 2y: var_x 8/3, var_y 2/3, cov 4/3, (4 - 2)^2 = 4 -> (8/3) / (22/3) = 4/11
    assert ccc_of(2 * y, y) == pytest.approx(4 / 11)


def test_ccc_uses_tissue_means():
    # 2 tissues x 2 replicates, replicate noise cancels in the tissue means -> ccc 1
    est = [0.9, 1.1, 1.8, 2.2]
    m = case_metrics(est, [1.0, 1, 2, 2], [True] * 4, [0, 0, 1, 1], [0, 1, 0, 1], parameter="ve")
    assert m["ccc"] == pytest.approx(1.0)


def test_ccc_degenerate():
    assert math.isnan(ccc_of([1.0], [1.0]))
    assert math.isnan(ccc_of([2.0, 2.0], [1.0, 1.0]))
    # constant estimates, varying truth: cov 0 -> 0
    assert ccc_of([2.0, 2.0], [1.0, 3.0]) == 0.0


def test_within_tol_boundary():
    # delay: atol 1 s, rtol 0 (exact in binary): |e| = 1 inside, slightly more outside
    est = [3.0, 1.0, 3.0 + 1e-9, 1.0 - 1e-9]
    m = case_metrics(est, [2.0] * 4, [True] * 4, [0] * 4, [0, 1, 2, 3], parameter="delay")
    assert m["within_tol"] == 0.5
    # fp: atol 5 + rtol 0.1 * 40 = 9
    est = [49.0, 31.0, 49.001, 30.999]
    m = case_metrics(est, [40.0] * 4, [True] * 4, [0] * 4, [0, 1, 2, 3], parameter="fp")
    assert m["within_tol"] == 0.5


def test_tolerance_table():
    assert set(TOLERANCES) == set(PARAMETERS)
    assert TOLERANCES["Ktrans"] == (0.005, 0.1) and TOLERANCES["fp"] == (5.0, 0.1)
    assert TOLERANCES["kep"] == TOLERANCES["Ktrans"]
    assert TOLERANCES["T10"] == (0.0, 0.05)
    # the OSIPI entries, as tests/data/osipi/README.md states them
    osipi = {
        "Ktrans": (0.005, 0.1),
        "ps": (0.005, 0.1),
        "ve": (0.05, 0.0),
        "vp": (0.025, 0.0),
        "fp": (5.0, 0.1),
        "delay": (1.0, 0.0),
    }
    assert {k: TOLERANCES[k] for k in osipi} == osipi


def test_bootstrap_two_replicates_hand():
    # R = 2 with equal counts: draws (0,0), (0,1), (1,0), (1,1), each ~25 % of the time,
    # so the 2.5 / 97.5 percentiles are exactly the replicate means 2 and 3
    err = [1.0, 3.0, 2.0, 4.0]
    assert block_bootstrap_bias_ci(err, [0, 0, 1, 1], n_boot=1000, seed=3) == (2.0, 3.0)
    assert block_bootstrap_bias_ci(err, [7, 7, 9, 9], n_boot=1000, seed=3) == (2.0, 3.0)
    assert all(math.isnan(v) for v in block_bootstrap_bias_ci(err, [0] * 4))
    assert all(math.isnan(v) for v in block_bootstrap_bias_ci(err, [0, 0, 1, 1], n_boot=0))


def synthetic(rng, n_tissue, n_rep, sigma=1.0, offsets=None):
    tissue = np.repeat(np.arange(n_tissue), n_rep)
    replicate = np.tile(np.arange(n_rep), n_tissue)
    truth = 1.0 + tissue.astype(float)
    off = np.zeros(n_tissue) if offsets is None else np.asarray(offsets)
    est = truth + off[tissue] + sigma * rng.standard_normal(truth.size)
    return est, truth, np.ones(truth.size, bool), tissue, replicate


def test_bootstrap_contains_bias_and_is_reproducible(rng):
    args = synthetic(rng, 4, 20)
    a = case_metrics(*args, parameter="delay", seed=11)
    b = case_metrics(*args, parameter="delay", seed=11)
    c = case_metrics(*args, parameter="delay", seed=12)
    assert a["bias_ci_low"] < a["bias"] < a["bias_ci_high"]
    assert (a["bias_ci_low"], a["bias_ci_high"]) == (b["bias_ci_low"], b["bias_ci_high"])
    assert (a["bias_ci_low"], a["bias_ci_high"]) != (c["bias_ci_low"], c["bias_ci_high"])
    state = np.random.get_state()[1].copy()  # noqa: NPY002
    case_metrics(*args, parameter="delay")
    assert np.array_equal(np.random.get_state()[1], state)  # noqa: NPY002


def test_bootstrap_nan_for_one_replicate(rng):
    args = synthetic(rng, 5, 1)
    m = case_metrics(*args, parameter="delay")
    assert np.isfinite(m["bias"])
    assert math.isnan(m["bias_ci_low"]) and math.isnan(m["bias_ci_high"])


def test_bootstrap_blocks_keep_tissue_design(rng):
    # large fixed per-tissue offsets (+-10) are part of the bias, not of its uncertainty:
    # the CI width reflects only the replicate noise (sigma 0.1)
    args = synthetic(rng, 4, 30, sigma=0.1, offsets=[-10, 10, -10, 10])
    m = case_metrics(*args, parameter="delay")
    assert m["bias_ci_high"] - m["bias_ci_low"] < 0.1


def test_bootstrap_width_shrinks_as_inverse_sqrt_r():
    rng = np.random.default_rng(2024)
    n_tissue = 5

    def mean_width(n_rep):
        widths = []
        for k in range(20):
            m = case_metrics(*synthetic(rng, n_tissue, n_rep), parameter="delay", seed=k)
            widths.append(m["bias_ci_high"] - m["bias_ci_low"])
        return np.mean(widths)

    w16, w64 = mean_width(16), mean_width(64)
    assert 1.7 < w16 / w64 < 2.3
    # normal theory: 2 * 1.96 * sigma / sqrt(T R)
    assert w64 == pytest.approx(2 * 1.96 / math.sqrt(n_tissue * 64), rel=0.15)


def test_bootstrap_coverage():
    rng = np.random.default_rng(7)
    offsets = np.array([0.3, -0.1, 0.5])  # fixed design: true bias = mean offset = 0.7/3
    true_bias = offsets.mean()
    hits = 0
    n_sim = 200
    for k in range(n_sim):
        est, truth, ok, tissue, rep = synthetic(rng, 3, 80, offsets=offsets)
        low, high = block_bootstrap_bias_ci(est - truth, rep, n_boot=1000, seed=k)
        hits += low <= true_bias <= high
    assert 0.90 <= hits / n_sim <= 0.99


@pytest.mark.parametrize(
    "est, ok",
    [
        (np.full(6, np.nan), np.ones(6, bool)),
        (np.ones(6), np.zeros(6, bool)),
        (np.array([1.0, np.nan, np.nan, np.nan, np.nan, np.nan]), np.ones(6, bool)),
    ],
)
def test_no_warnings_when_nothing_valid(est, ok):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = case_metrics(
            est,
            np.arange(6.0),
            ok,
            HAND["tissue"],
            HAND["replicate"],
            parameter="Ktrans",
            fit_time_s=1.2,
        )
    assert m["n_voxels"] == 6 and m["fit_time_per_voxel_s"] == pytest.approx(0.2)
    if not ok.any() or np.isnan(est).all():
        assert m["n_success"] == 0 and m["failure_rate"] == 1.0 and m["within_tol"] == 0.0
        assert m["out_of_range"] == 0.0  # a count: none, not NaN
        for key in METRICS[3:]:
            if key not in ("within_tol", "fit_time_per_voxel_s", "at_limit_rate", "out_of_range"):
                assert math.isnan(m[key]), key


def test_no_warnings_on_empty_and_nan_time():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = case_metrics([], [], [], [], [], parameter="ve")
        m2 = case_metrics([0.5], [0.5], [True], [0], [0], parameter="ve")
    assert m["n_voxels"] == 0 and m["out_of_range"] == 0  # counts: 0, like n_success
    assert all(math.isnan(m[k]) for k in METRICS[2:] if k != "out_of_range")
    assert math.isnan(m2["fit_time_per_voxel_s"]) and m2["bias"] == 0.0


def test_accepts_xarray():
    import xarray as xr

    d = {k: xr.DataArray(v, dims="voxel") for k, v in HAND.items()}
    m = case_metrics(
        d["estimate"], d["truth"], d["success"], d["tissue"], d["replicate"], parameter="fp"
    )
    assert m["bias"] == pytest.approx(1.2)


def test_input_validation():
    with pytest.raises(ValueError, match="unknown parameter"):
        case_metrics([1.0], [1.0], [True], [0], [0], parameter="ktrans")
    with pytest.raises(ValueError, match="shape"):
        case_metrics([1.0, 2.0], [1.0], [True], [0], [0], parameter="ve")
    with pytest.raises(ValueError, match="finite"):
        case_metrics([1.0], [np.nan], [True], [0], [0], parameter="ve")
    with pytest.raises(ValueError, match="unknown parameter"):
        metric_units("R1")


def test_metric_units():
    u = metric_units("Ktrans")
    assert tuple(u) == METRICS
    assert u["bias"] == u["sd"] == u["loa_high"] == u["bias_ci_low"] == "/min"
    assert u["rel_bias_pct"] == u["cv_pct"] == "%"
    assert u["n_voxels"] == u["failure_rate"] == u["ccc"] == u["within_tol"] == "1"
    assert u["fit_time_per_voxel_s"] == "s"
    assert metric_units("fp")["rmse"] == "mL/100mL/min"
    assert (u["crlb_sd"], u["crlb_cv_pct"], u["efficiency"]) == ("/min", "%", "1")


def test_metrics_table_round_trip():
    m1 = run(HAND, fit_time_s=3.0)
    m2 = case_metrics([np.nan], [1.0], [False], [0], [0], parameter="ve")
    rows = [
        {"case": "snr20", "fitter": "lsq", "parameter": "fp", **m1},
        {"case": "snr20", "fitter": "lsq", "parameter": "ve", "extra": 1, **m2},
    ]
    text = metrics_table(rows)
    parsed = list(csv.reader(io.StringIO(text)))
    assert parsed[0] == ["case", "fitter", "parameter", *METRICS]
    assert len(parsed) == 3 and not text.endswith("\n\n")
    first = dict(zip(parsed[0], parsed[1], strict=True))
    assert first["n_voxels"] == "6" and first["n_success"] == "5"
    assert first["out_of_range"] == "0"  # a count, written as an integer
    for key in METRICS:
        if first[key] == "":  # NaN (e.g. no bound given): an empty field
            assert np.isnan(m1[key]), key
            continue
        assert float(first[key]) == m1[key]  # repr precision round-trips exactly
    second = dict(zip(parsed[0], parsed[2], strict=True))
    assert second["bias"] == "" and second["failure_rate"] == "1.0"
    with pytest.raises(KeyError, match="bias"):
        metrics_table([{"case": "c", "fitter": "f", "parameter": "ve"}])


def test_docstring_examples():
    result = doctest.testmod(metrics, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_a_parameter_at_its_degenerate_limit_is_neither_valid_nor_failed():
    # 2CXM on extended-Tofts tissue: Fp -> infinity (stored as inf, flagged at_limit_fp)
    est = np.array([np.inf, np.inf, 50.0, 60.0, np.nan, np.inf])
    at_limit = np.array([True, True, False, False, False, False])
    ok = np.array([True, True, True, True, False, True])
    m = case_metrics(
        est, np.full(6, 55.0), ok, [0, 0, 0, 1, 1, 1], [0, 1, 2, 0, 1, 2],
        parameter="fp", at_limit=at_limit,
    )  # fmt: skip
    assert m["at_limit_rate"] == pytest.approx(2 / 6)
    # failed: the NaN (success False) and the unflagged inf; not the two at the limit
    assert m["failure_rate"] == pytest.approx(2 / 6)
    assert m["n_success"] == 2 and m["bias"] == pytest.approx(0.0)
    plain = case_metrics(
        est, np.full(6, 55.0), ok, [0, 0, 0, 1, 1, 1], [0, 1, 2, 0, 1, 2], parameter="fp"
    )
    assert plain["failure_rate"] == pytest.approx(4 / 6) and plain["at_limit_rate"] == 0.0


def test_out_of_range_uses_the_physical_range_of_params():
    assert PARAMETERS["Ktrans"].lower == 0.0 and PARAMETERS["ve"].upper == 1.0
    values = [-1e-9, 0.0, 0.5, 1.0, 1.0 + 1e-9, np.inf, -np.inf, np.nan]
    assert out_of_range(values, "ve").tolist() == [
        True, False, False, False, True, True, True, False
    ]  # fmt: skip
    assert out_of_range(np.array([[-61.0, 60.0]]), "delay").tolist() == [[True, False]]
    with pytest.raises(ValueError, match="unknown parameter 'Kt'"):
        out_of_range([1.0], "Kt")


def test_a_plugin_that_returns_absurd_values_flagged_success_is_counted_out_of_range():
    # a plug-in that returns -Ktrans and ve x 1e6 on 3 of 8 voxels, all flagged success
    truth_k = np.array([0.1, 0.2, 0.3, 0.4, 0.1, 0.2, 0.3, 0.4])
    truth_ve = np.array([0.2, 0.3, 0.2, 0.3, 0.2, 0.3, 0.2, 0.3])
    bad = np.array([True, False, True, False, False, True, False, False])
    est_k = np.where(bad, -truth_k, truth_k)
    est_ve = np.where(bad, truth_ve * 1e6, truth_ve)
    tissue, rep = np.arange(8) % 4, np.arange(8) // 4
    ok = np.ones(8, bool)
    k = case_metrics(est_k, truth_k, ok, tissue, rep, parameter="Ktrans")
    ve = case_metrics(est_ve, truth_ve, ok, tissue, rep, parameter="ve")
    assert k["out_of_range"] == 3.0 and ve["out_of_range"] == 3.0
    # they count as fitted, and in the bias, as the plug-in reported them (flagged, not hidden)
    assert k["n_success"] == 8 and k["failure_rate"] == 0.0
    assert k["bias"] == pytest.approx(np.mean(est_k - truth_k))
    assert ve["bias"] == pytest.approx(np.mean(est_ve - truth_ve))
    kep = case_metrics(est_k / est_ve, truth_k / truth_ve, ok, tissue, rep, parameter="kep")
    assert kep["out_of_range"] == 3.0
    # a failed voxel (success False or NaN) is a failure, not out of range
    ok[0] = False
    est_k[1] = np.nan
    again = case_metrics(est_k, truth_k, ok, tissue, rep, parameter="Ktrans")
    assert again["out_of_range"] == 2.0 and again["failure_rate"] == pytest.approx(2 / 8)


ABSURD_PLUGIN = '''
from phantomdce.fit.nlls import NLLSFitter


class Absurd:
    """Returns -Ktrans and ve x 1e6 on every other voxel, all flagged success."""

    name = "acme_absurd"
    version = "1.0"
    model = "extended_tofts"
    input = "concentration"
    method = "nlls"

    def fit(self, data):
        out = NLLSFitter("extended_tofts").fit(data)
        out["Ktrans"][::2] = -out["Ktrans"][::2]
        out["ve"][::2] = out["ve"][::2] * 1e6
        return out
'''


@pytest.mark.slow  # child processes or an engine run: the default pytest stays under 4 minutes
def test_a_run_counts_a_plugins_absurd_successes_in_metrics_csv(tmp_path, monkeypatch):
    from phantomdce.engine.run import run as run_engine

    from test_engine import scenario

    (tmp_path / "acme_absurd.py").write_text(ABSURD_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    path = scenario(tmp_path, replicates=2, fitters=["acme_absurd:Absurd"])
    run_engine(path, tmp_path / "run")
    with open(tmp_path / "run" / "metrics.csv", newline="") as fh:
        rows = {(r["case"], r["parameter"]): r for r in csv.DictReader(fh)}
    for case in ("case_0000", "case_0001"):
        n = int(rows[case, "Ktrans"]["n_voxels"])
        for name in ("Ktrans", "ve", "kep"):  # kep = Ktrans / ve: negative where they are
            assert rows[case, name]["out_of_range"] == str(n // 2), (case, name)
            assert float(rows[case, name]["failure_rate"]) == 0.0  # "success", as flagged
        assert rows[case, "vp"]["out_of_range"] == "0"
