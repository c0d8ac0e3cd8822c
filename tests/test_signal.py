"""Tests for phantomdce.signal: SPGR forward model, exact inversion, literature defaults."""

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from phantomdce.signal import (
    NATIVE_T1,
    RELAXIVITY,
    concentration_from_signal,
    native_t1,
    r1_from_concentration,
    r1_from_signal,
    relaxivity,
    spgr,
    vfa_signal,
)

DATA = Path(__file__).parent / "data" / "osipi"


def _read_osipi(path):
    """Read an OSIPI CSV (BOM, leading spaces in headers, arrays as space-separated cells)."""
    with open(path, encoding="utf-8-sig", newline="") as fh:
        return [{k.strip(): v.strip() for k, v in row.items()} for row in csv.DictReader(fh)]


def _arr(cell):
    return np.array(cell.split(), dtype=float)


# --- forward model -----------------------------------------------------------------------


def test_spgr_hand_computed():
    # R1 = 1/s, TR = 5 ms, FA = 30 deg, M0 = 1:
    # E1 = exp(-0.005) = 0.9950124791926823
    # S = 0.5 * (1 - E1) / (1 - cos(30 deg) * E1) = 0.5 * 0.0049875208 / 0.1382943297
    e1 = math.exp(-0.005)
    expected = 0.5 * (1 - e1) / (1 - math.sqrt(3) / 2 * e1)
    assert spgr(1.0, fa=30.0, tr=0.005) == pytest.approx(expected, rel=1e-14)
    assert spgr(1.0, fa=30.0, tr=0.005) == pytest.approx(0.0180323219, abs=1e-10)
    # M0 scales linearly; r1 -> infinity gives M0 sin(a)
    assert spgr(1.0, fa=30.0, tr=0.005, m0=1000.0) == pytest.approx(1000 * expected, rel=1e-14)
    assert spgr(1e6, fa=30.0, tr=0.005) == pytest.approx(0.5, rel=1e-12)


def test_spgr_broadcasts():
    r1 = np.array([0.5, 1.0, 2.0])[:, None]
    fa = np.array([5.0, 15.0, 30.0, 45.0])
    out = spgr(r1, fa=fa, tr=0.004, m0=np.array([1.0, 2.0, 3.0])[:, None])
    assert out.shape == (3, 4)
    assert out[2, 1] == pytest.approx(3 * float(spgr(2.0, fa=15.0, tr=0.004)), rel=1e-14)


def test_spgr_b1_is_flip_angle_scale():
    r1 = np.linspace(0.2, 20, 7)
    np.testing.assert_allclose(
        spgr(r1, fa=20.0, tr=0.005, b1=0.9), spgr(r1, fa=18.0, tr=0.005), rtol=1e-14
    )
    b1 = np.array([0.8, 1.0, 1.2])
    np.testing.assert_allclose(
        spgr(1.0, fa=25.0, tr=0.005, b1=b1), spgr(1.0, fa=25.0 * b1, tr=0.005), rtol=1e-14
    )


@pytest.mark.parametrize("fa", [95.0, 0.0, -5.0, 90.0, np.nan])
def test_invalid_flip_angle_names_value(fa):
    with pytest.raises(ValueError, match=r"fa=.*deg: expected a flip angle in \(0, 90\)") as e:
        spgr(1.0, fa=fa, tr=0.005)
    assert repr(float(fa)) in str(e.value)


def test_invalid_flip_angle_in_array_names_offending_value():
    with pytest.raises(ValueError, match=r"fa=95\.0 deg"):
        spgr(1.0, fa=[10.0, 95.0], tr=0.005)
    with pytest.raises(ValueError, match=r"flip_angles=120\.0 deg"):
        vfa_signal(1.0, flip_angles=[3, 120], tr=0.005)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"tr": 0.0}, r"tr=0\.0 s: expected a repetition time"),
        ({"tr": -1.0}, r"tr=-1\.0 s"),
        ({"tr": 0.005, "b1": -0.1}, r"b1=-0\.1: expected a flip-angle scale factor"),
        ({"tr": 0.005, "b1": 7.0}, r"b1\*fa=.*expected an actual flip angle below 180"),
    ],
)
def test_invalid_tr_and_b1(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        spgr(1.0, fa=30.0, **kwargs)


def test_r1_from_concentration():
    np.testing.assert_allclose(
        r1_from_concentration([0.0, 1.0, 2.0], r10=0.5, r1_relaxivity=4.0), [0.5, 4.5, 8.5]
    )


# --- exact inversion -----------------------------------------------------------------------


@pytest.mark.parametrize("b1", [1.0, 0.8, 1.15])
@pytest.mark.parametrize("fa", [10.0, 25.0, 40.0])
def test_concentration_round_trip(fa, b1):
    rng = np.random.default_rng(1)
    n_vox, n_t = 200, 60
    c = np.concatenate(
        [np.zeros((n_vox, 1)), rng.uniform(0.0, 10.0, (n_vox, n_t - 1))], axis=1
    )  # mM, includes exact zeros
    r10 = rng.uniform(1 / 3.0, 1 / 0.3, n_vox)  # T10 0.3-3 s
    rel = 4.5
    tr = 0.004
    m0 = rng.uniform(100, 5000, n_vox)
    s = spgr(
        r1_from_concentration(c, r10=r10[:, None], r1_relaxivity=rel),
        fa=fa,
        tr=tr,
        m0=m0[:, None],
        b1=b1,
    )
    s_pre = spgr(r10, fa=fa, tr=tr, m0=m0, b1=b1)  # shape (n_vox,): per-voxel rule
    c_hat = concentration_from_signal(s, s_pre, r10=r10, fa=fa, tr=tr, r1_relaxivity=rel, b1=b1)
    assert c_hat.shape == c.shape
    np.testing.assert_allclose(c_hat, c, rtol=1e-10, atol=1e-10)
    # (..., 1) baseline gives the same result
    c_hat2 = concentration_from_signal(
        s, s_pre[:, None], r10=r10[:, None], fa=fa, tr=tr, r1_relaxivity=rel, b1=b1
    )
    np.testing.assert_array_equal(c_hat, c_hat2)


def test_r1_from_signal_per_voxel_b1():
    b1 = np.array([0.7, 1.0, 1.3])
    r1 = np.array([[1.0, 2.0, 5.0], [0.5, 4.0, 20.0], [3.0, 3.5, 9.0]])
    r10 = r1[:, 0]
    s = spgr(r1, fa=20.0, tr=0.005, b1=b1[:, None])
    out = r1_from_signal(s, s[:, 0], r10=r10, fa=20.0, tr=0.005, b1=b1)
    np.testing.assert_allclose(out, r1, rtol=1e-10)


def test_wrong_b1_biases_concentration():
    # Analysing with the nominal angle when the true B1 is 0.9 must not return the truth.
    c = np.array([0.0, 1.0])
    s = spgr(r1_from_concentration(c, r10=1.0, r1_relaxivity=4.5), fa=30.0, tr=0.005, b1=0.9)
    c_nominal = concentration_from_signal(s, s[0], r10=1.0, fa=30.0, tr=0.005, r1_relaxivity=4.5)
    c_true = concentration_from_signal(
        s, s[0], r10=1.0, fa=30.0, tr=0.005, r1_relaxivity=4.5, b1=0.9
    )
    assert c_true[1] == pytest.approx(1.0, rel=1e-10)
    assert abs(c_nominal[1] - 1.0) > 0.01


def test_undefined_inversion_gives_nan_without_warning():
    s_pre = float(spgr(1.0, fa=30.0, tr=0.005))
    s = np.array([s_pre, 1e6 * s_pre, np.nan, np.inf, 0.0, -1.0])
    with np.errstate(all="raise"):  # any floating-point warning would raise here
        c = concentration_from_signal(s, s_pre, r10=1.0, fa=30.0, tr=0.005, r1_relaxivity=4.5)
    assert c[0] == pytest.approx(0.0, abs=1e-12)
    assert np.all(np.isnan(c[1:]))  # too large, non-finite, zero, negative
    # zero baseline: everything undefined, still no exception
    with np.errstate(all="raise"):
        c0 = concentration_from_signal(s[:2], 0.0, r10=1.0, fa=30.0, tr=0.005, r1_relaxivity=4.5)
    assert np.all(np.isnan(c0))


def test_osipi_si_to_conc():
    """OSIPI DCE-DSC-MRI_CodeCollection SI_to_Conc reference, atol = rtol = 1e-5 mM."""
    rows = _read_osipi(DATA / "SI_to_Conc" / "SI2Conc_data.csv")
    assert len(rows) == 5
    max_err = 0.0
    for row in rows:
        s = _arr(row["s"])
        conc = _arr(row["conc"])
        n_bl = int(row["numbaselinepts"])
        s_pre = s[1:n_bl].mean()  # first point excluded, per the OSIPI README
        c = concentration_from_signal(
            s,
            s_pre,
            r10=1.0 / float(row["T1base"]),
            fa=float(row["FA"]),
            tr=float(row["TR"]),
            r1_relaxivity=float(row["r1"]),
        )
        np.testing.assert_allclose(c, conc, atol=1e-5, rtol=1e-5, err_msg=row["label"])
        max_err = max(max_err, float(np.max(np.abs(c - conc))))
    assert max_err < 1e-9  # measured about 1e-11 mM


# --- VFA -------------------------------------------------------------------------------------


def test_vfa_signal_shape_and_values():
    fas = np.array([3.0, 6.0, 9.0, 15.0, 24.0, 35.0])
    r10 = np.array([[1.0, 0.5], [2.0, 0.7]])
    m0 = np.array([[10.0, 20.0], [30.0, 40.0]])
    b1 = np.array([[1.0, 0.9], [1.1, 1.0]])
    s = vfa_signal(r10, flip_angles=fas, tr=0.005, m0=m0, b1=b1)
    assert s.shape == (2, 2, 6)
    np.testing.assert_allclose(s[0, 1], spgr(0.5, fa=0.9 * fas, tr=0.005, m0=20.0), rtol=1e-14)


# --- literature tables -------------------------------------------------------------------


def test_relaxivity_lookup():
    assert relaxivity("gadobutrol", 1.5) == 4.78
    assert relaxivity("Gadobutrol", 3) == 4.97
    assert relaxivity("dotarem", 3.0) == 3.00
    assert relaxivity("gadoteridol", 1.5) == 3.80
    assert len(RELAXIVITY) == 6
    with pytest.raises(TypeError):
        RELAXIVITY[("gadobutrol", 7.0)] = 1.0  # read-only


def test_relaxivity_errors():
    with pytest.raises(ValueError, match=r"agent='gadoxetate': expected one of"):
        relaxivity("gadoxetate", 3.0)
    with pytest.raises(ValueError, match=r"field_strength=7\.0 T: expected one of \[1\.5, 3\.0\]"):
        relaxivity("gadobutrol", 7.0)
    with pytest.raises(ValueError, match="field_strength="):
        relaxivity("gadobutrol", "high")


def test_native_t1_lookup_and_errors():
    assert native_t1("blood", 1.5) == 1.58
    assert native_t1("Blood", 3.0) == 1.66
    assert native_t1("tumor", 1.5) == native_t1("tumour", 1.5)
    for (tissue, b0), t1 in NATIVE_T1.items():
        assert 0.1 < t1 < 3.0, (tissue, b0)
        assert native_t1(tissue, b0) == t1
    # T1 lengthens with field strength for every tissue
    for tissue in {k[0] for k in NATIVE_T1}:
        assert native_t1(tissue, 3.0) > native_t1(tissue, 1.5)
    with pytest.raises(ValueError, match=r"tissue='liver': expected one of"):
        native_t1("liver", 3.0)
    with pytest.raises(ValueError, match=r"field_strength=2\.0 T"):
        native_t1("muscle", 2.0)
