"""Forward models against the OSIPI DCEmodels reference curves, from their own AIF.

OSIPI data: OSIPI/DCE-DSC-MRI_CodeCollection (Apache-2.0), see tests/data/osipi/README.md.
Each file states the noise added to its curves; a forward model is right when the
residual (reference - model) is noise: zero mean and an RMS at the stated noise SD.
The delayed variants shift the tissue curve by ``arterial_delay`` s; the model is
evaluated with the AIF shifted by that delay.
"""

import numpy as np
import pytest

from phantomdce import kinetics as K

from osipi import read_rows

STATED_SD = {"patlak": 0.02, "2cxm": 0.001, "2cum": 0.0025}


def _forward(model, row, ve_2cum=None):
    t = row["t"]
    ca = row.get("ca", row.get("cp_aif"))
    delay = row.get("arterialdelay", row.get("arterial_delay", 0.0))
    if delay:
        ca = np.interp(t - delay, t, ca, left=0.0)
    if model == "tofts":
        return K.tofts(t, ca, ktrans=row["Ktrans"], ve=row["ve"])
    if model == "extended_tofts":
        return K.extended_tofts(t, ca, ktrans=row["Ktrans"], ve=row["ve"], vp=row["vp"])
    if model == "patlak":  # OSIPI names the Patlak uptake rate "ps" (/min)
        return K.patlak(t, ca, ktrans=row["ps"], vp=row["vp"])
    if model == "2cxm":
        return K.two_cxm(t, ca, fp=row["fp"], ps=row["ps"], ve=row["ve"], vp=row["vp"])
    if ve_2cum is not None:
        return K.two_cxm(t, ca, fp=row["fp"], ps=row["ps"], ve=ve_2cum, vp=row["vp"])
    return K.two_cum(t, ca, fp=row["fp"], ps=row["ps"], vp=row["vp"])


def _rows(pattern):
    files = {
        "patlak": ["patlak_sd_0.02_delay_0.csv", "patlak_sd_0.02_delay_5.csv"],
        "2cxm": ["2cxm_sd_0.001_delay_0.csv", "2cxm_sd_0.001_delay_5.csv"],
        "2cum": ["2cum_sd_0.0025_delay_0.csv", "2cum_sd_0.0025_delay_5.csv"],
    }[pattern]
    return [(f, r) for f in files for r in read_rows(f"DCEmodels/{f}")]


def _is_noise(residual, sd, *, rms_factor=1.15, unbiased=True):
    n = residual.size
    rms = np.sqrt(np.mean(residual**2))
    return rms < rms_factor * sd and (not unbiased or abs(residual.mean()) < 4 * sd / np.sqrt(n))


@pytest.mark.parametrize("model", ["patlak", "2cxm"])
def test_synthetic_models_reproduce_osipi_within_stated_noise(model):
    rows = _rows(model)
    assert len(rows) in (18, 48)
    for name, row in rows:
        res = row["C_t"] - _forward(model, row)
        assert _is_noise(res, STATED_SD[model]), (name, row["label"], res.mean(), res.std())


def test_2cum_reproduces_osipi_within_stated_noise():
    """OSIPI made its 2CUM curves as a 2CXM with a large ve (README); with ve = 1 mL/mL
    our 2CXM reproduces all 54 at the noise level (unbiased, RMS < 1.15 SD). Our exact
    2CUM (no backflux) is within the noise (RMS < 1.2 SD) wherever that approximation's
    backflux is small over 300 s (PS <= 0.01 /min), though slightly biased (mean residual
    up to -8e-4 mM, the backflux); at PS = 0.025 /min the backflux (mean up to -4e-3 mM)
    exceeds the noise, a difference of the reference, not of the model."""
    rows = _rows("2cum")
    assert len(rows) == 54
    sd = STATED_SD["2cum"]
    for name, row in rows:
        assert _is_noise(row["C_t"] - _forward("2cum", row, ve_2cum=1.0), sd), (name, row["label"])
        if row["ps"] <= 0.01:
            res = row["C_t"] - _forward("2cum", row)
            assert _is_noise(res, sd, rms_factor=1.2, unbiased=False), (name, row["label"])
            assert -1e-3 < res.mean() <= 4 * sd / np.sqrt(res.size), (name, row["label"])


@pytest.mark.parametrize(
    ("model", "fname", "n_rows"),
    [
        ("tofts", "dce_DRO_data_tofts.csv", 25),
        ("extended_tofts", "dce_DRO_data_extended_tofts.csv", 15),
    ],
)
def test_qiba_and_bosca_curves(model, fname, n_rows):
    """Tofts (QIBA v11) and extended Tofts (Bosca & Jackson) curves come at several SNRs
    without a stated SD. The high-SNR curves must match to 1e-3 mM (they were made by
    another discretisation of the same convolution), and at every SNR the residual must
    be unbiased noise (mean within 4 SE of zero, apart from the 1e-3 mM discretisation)."""
    rows = read_rows(f"DCEmodels/{fname}")
    assert len(rows) == n_rows
    for row in rows:
        res = row["C"] - _forward(model, row)
        if row["label"].endswith("highSNR"):
            assert np.abs(res).max() < 1e-3, row["label"]
        else:
            se = res.std() / np.sqrt(res.size)
            assert abs(res.mean()) < 4 * se + 1e-3, row["label"]
