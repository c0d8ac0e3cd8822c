"""Tests for phantomdce.fit.t1: VFA T1 mapping (DESPOT1 linear and nonlinear VarPro)."""

import csv
from pathlib import Path

import numpy as np
import pytest

from phantomdce.fit.t1 import vfa_t1_linear, vfa_t1_nonlinear
from phantomdce.noise import add_rician_noise, rng_for
from phantomdce.signal import vfa_signal

DATA = Path(__file__).parent / "data" / "osipi"
FAS = np.array([3.0, 6.0, 9.0, 15.0, 24.0, 35.0])  # QIBA T1 DRO angles
FITTERS = [vfa_t1_linear, vfa_t1_nonlinear]


def _read_osipi(path):
    with open(path, encoding="utf-8-sig", newline="") as fh:
        return [{k.strip(): v.strip() for k, v in row.items()} for row in csv.DictReader(fh)]


def _arr(cell):
    return np.array(cell.split(), dtype=float)


@pytest.fixture(scope="module")
def qiba():
    rows = _read_osipi(DATA / "T1_mapping" / "t1_quiba_data.csv")
    fa = np.array([_arr(r["FA"]) for r in rows])  # degrees
    tr = np.array([_arr(r["TR"]) for r in rows])  # s
    s = np.array([_arr(r["s"]) for r in rows])
    r1 = np.array([float(r["R1"]) for r in rows]) * 1000.0  # /ms -> /s
    assert np.all(tr == tr[0, 0])
    return s, fa, float(tr[0, 0]), r1


@pytest.mark.parametrize("fit", FITTERS)
@pytest.mark.parametrize("b1", [1.0, 0.85, 1.2])
def test_noise_free_exact(fit, b1):
    t1 = np.geomspace(0.05, 5.0, 40).reshape(4, 10)  # s, batch shape (4, 10)
    m0 = np.linspace(100, 1e4, 40).reshape(4, 10)
    s = vfa_signal(1.0 / t1, flip_angles=FAS, tr=0.005, m0=m0, b1=b1)
    t1_hat, m0_hat = fit(s, FAS, tr=0.005, b1=b1)
    assert t1_hat.shape == (4, 10)
    np.testing.assert_allclose(t1_hat, t1, rtol=1e-8)
    np.testing.assert_allclose(m0_hat, m0, rtol=1e-8)


@pytest.mark.parametrize("fit", FITTERS)
def test_per_voxel_b1_and_angles(fit):
    t1 = np.array([0.3, 1.0, 2.5])
    b1 = np.array([0.8, 1.0, 1.25])
    s = vfa_signal(1.0 / t1, flip_angles=[2.0, 15.0], tr=0.004, m0=50.0, b1=b1)
    t1_hat, _ = fit(s, [2.0, 15.0], tr=0.004, b1=b1)  # dual flip angle
    np.testing.assert_allclose(t1_hat, t1, rtol=1e-8)
    fa_full = np.tile([2.0, 15.0], (3, 1))
    t1_hat2, _ = fit(s, fa_full, tr=0.004, b1=b1[:, None])
    np.testing.assert_allclose(t1_hat2, t1, rtol=1e-8)


def test_qiba_t1_nonlinear_all_rows(qiba):
    """OSIPI QIBA T1 DRO v3 rows, tolerance atol 0.05 /s + rtol 0.05 on R1."""
    s, fa, tr, r1 = qiba
    t1, m0 = vfa_t1_nonlinear(s, fa, tr=tr)
    err = np.abs(1.0 / t1 - r1)
    ok = err <= 0.05 + 0.05 * r1
    assert ok.all(), f"nonlinear fit fails rows {np.flatnonzero(~ok)}"
    assert len(r1) == 45


def test_qiba_t1_linear(qiba):
    s, fa, tr, r1 = qiba
    t1, _ = vfa_t1_linear(s, fa, tr=tr)
    ok = np.abs(1.0 / t1 - r1) <= 0.05 + 0.05 * r1
    # Measured: the linear fit passes all 45 rows too (report; keep as a regression check).
    print(f"QIBA T1 linear fit: {ok.sum()}/{ok.size} rows within tolerance")
    assert ok.sum() == ok.size


def test_nonlinear_not_worse_than_linear_on_noisy_data():
    t1_true = 1.2
    s0 = vfa_signal(np.full(20000, 1 / t1_true), flip_angles=FAS, tr=0.005, m0=1000.0)
    s = add_rician_noise(s0, 1.0, rng=rng_for(11, 0))
    t1_lin, _ = vfa_t1_linear(s, FAS, tr=0.005)
    t1_nl, _ = vfa_t1_nonlinear(s, FAS, tr=0.005)
    rmse = lambda x: np.sqrt(np.nanmean((x - t1_true) ** 2))  # noqa: E731
    assert np.all(np.isfinite(t1_nl))
    assert rmse(t1_nl) <= rmse(t1_lin) * 1.01
    assert np.median(t1_nl) == pytest.approx(t1_true, rel=0.02)


@pytest.mark.parametrize("fit", FITTERS)
def test_bad_voxels_are_nan_only_for_themselves(fit):
    t1 = np.full(6, 1.0)
    s = vfa_signal(1.0 / t1, flip_angles=FAS, tr=0.005, m0=1000.0)
    s[1] = np.nan  # all NaN
    s[2] = 0.0  # all zeros
    s[3, 1:] = np.nan  # only one usable angle
    s[4, 2] = np.nan  # one missing angle: still fitted from the remaining five
    s[5, 0] = 0.0  # one zero angle: excluded, still fitted
    t1_hat, m0_hat = fit(s, FAS, tr=0.005)
    assert np.all(np.isnan(t1_hat[1:4])) and np.all(np.isnan(m0_hat[1:4]))
    np.testing.assert_allclose(t1_hat[[0, 4, 5]], 1.0, rtol=1e-8)
    np.testing.assert_allclose(m0_hat[[0, 4, 5]], 1000.0, rtol=1e-8)


def test_nonlinear_respects_bounds():
    s = vfa_signal(np.array([1 / 50.0]), flip_angles=FAS, tr=0.005, m0=1000.0)  # T1 = 50 s
    t1_hat, _ = vfa_t1_nonlinear(s, FAS, tr=0.005, t1_bounds=(0.01, 5.0))
    assert t1_hat[0] == pytest.approx(5.0)
    # the linear fit returns NaN when the slope leaves (0, 1); the nonlinear still answers
    s_bad = np.array([[100.0, 50.0, 20.0, 10.0, 40.0, 90.0]])
    t1_nl, _ = vfa_t1_nonlinear(s_bad, FAS, tr=0.005)
    assert np.isfinite(t1_nl[0]) and 1e-3 <= t1_nl[0] <= 10.0


def test_argument_errors():
    s = np.ones((2, 6))
    with pytest.raises(ValueError, match=r"flip_angles=95\.0 deg"):
        vfa_t1_linear(s, [3, 6, 9, 15, 24, 95], tr=0.005)
    with pytest.raises(ValueError, match=r"tr=0\.0 s"):
        vfa_t1_nonlinear(s, FAS, tr=0.0)
    with pytest.raises(ValueError, match=r"flip_angles with shape \(5,\)"):
        vfa_t1_linear(s, FAS[:5], tr=0.005)
    with pytest.raises(ValueError, match=r"t1_bounds=\(2\.0, 1\.0\)"):
        vfa_t1_nonlinear(s, FAS, tr=0.005, t1_bounds=(2.0, 1.0))
