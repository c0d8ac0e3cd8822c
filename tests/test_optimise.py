"""Protocol scores and the protocol optimiser (issue 12, part 5)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from phantomdce.design.score import noise_free_bias, score_protocols
from phantomdce.dro.protocol import Protocol
from phantomdce.dro.scenario import TissueGrid
from phantomdce.precision import crlb

GRID = TissueGrid("extended_tofts", {"Ktrans": (0.05, 0.4), "ve": (0.1, 0.4), "vp": (0.01, 0.08)})


def _protocols() -> list[Protocol]:
    out = []
    for dt, duration, fa, va, sampling, field in [
        (2.0, 300.0, 15.0, 1, "instant", 3.0),
        (2.0, 240.0, 25.0, 4, "instant", 3.0),  # a prefix of the frames above
        (5.0, 300.0, 10.0, 2, "average", 1.5),
        (5.0, 420.0, 20.0, 1, "average", 1.5),
        (3.3, 360.0, 12.0, 1, "instant", 3.0),
    ]:
        out.append(
            Protocol.from_mapping(
                {
                    "dt": dt,
                    "duration": duration,
                    "fa": fa,
                    "vfa_averages": va,
                    "sampling": sampling,
                    "field_strength": field,
                    "snr": 25.0,
                    "flip_angles": [3.0, 12.0, 25.0] if va == 2 else [5.0, 15.0, 30.0],
                }
            )
        )
    return out


@pytest.mark.parametrize("kind", ["two_step", "joint", "known"])
def test_score_crlb_equals_precision_crlb(kind: str) -> None:
    protocols = _protocols()
    ds = score_protocols(protocols, GRID, kind=kind, bias=False)
    params = list(ds.parameter.values)
    assert params == ["Ktrans", "ve", "vp", "kep"]
    for i, pr in enumerate(protocols):
        table = GRID.table(pr)
        sd = crlb(pr, "extended_tofts", {k: table[k] for k in ("Ktrans", "ve", "vp")},
                  t10=table["T10"], kind=kind)
        for j, name in enumerate(params):
            np.testing.assert_allclose(ds.crlb_sd.values[i, :, j], sd[name], rtol=1e-9)
            np.testing.assert_allclose(
                ds.crlb_cv_pct.values[i, :, j],
                100 * sd[name] / np.abs(ds.truth.values[:, j]),
                rtol=1e-9,
            )
    np.testing.assert_allclose(
        ds.worst_cv_pct.values, ds.crlb_cv_pct.max("tissue").values, rtol=0
    )
    assert np.isnan(ds.bias_pct.values).all()


def test_score_vfa_sigma_ratio_sets_the_vfa_noise() -> None:
    pr = _protocols()[0]
    if not hasattr(pr, "vfa_sigma_ratio"):
        pytest.skip("this Protocol has no vfa_sigma_ratio")
    noisy_vfa = dataclasses.replace(pr, vfa_sigma_ratio=3.0)
    ds = score_protocols([pr, noisy_vfa], GRID, bias=False)
    table = GRID.table(pr)
    sd = crlb(noisy_vfa, "extended_tofts", {k: table[k] for k in ("Ktrans", "ve", "vp")})
    np.testing.assert_allclose(ds.crlb_sd.values[1, :, 0], sd["Ktrans"], rtol=1e-9)
    assert (ds.crlb_sd.values[1, :, 0] > ds.crlb_sd.values[0, :, 0]).all()


def test_score_bias_is_the_noise_free_fit_and_grows_with_dt() -> None:
    fast = Protocol.from_mapping({"dt": 1.0, "snr": 20.0})
    slow = Protocol.from_mapping({"dt": 8.0, "snr": 20.0})
    same_but_noisier = dataclasses.replace(slow, snr=5.0, vfa_averages=4)
    ds = score_protocols([fast, slow, same_but_noisier], GRID)
    k = list(ds.parameter.values).index("Ktrans")
    worst = ds.worst_abs_bias_pct.values[:, k]
    assert worst[0] < 1.0 < 10.0 < worst[1]  # sampling bias of 8 s frames
    assert worst[2] == worst[1]  # the noise does not enter a noise-free fit
    direct, ok = noise_free_bias(slow, GRID)
    assert ok.all()
    np.testing.assert_array_equal(ds.bias_pct.values[1, :, k], direct["Ktrans"])
    assert ds.bias_fit_success.values.all()


def test_score_scan_time_and_errors() -> None:
    protocols = _protocols()[:2]
    ds = score_protocols(protocols, GRID, bias=False, vfa_time_s=[30.0, np.nan])
    np.testing.assert_array_equal(ds.scan_time_s.values, [330.0, 240.0])
    with pytest.raises(ValueError, match="vfa_time_s has 1 values"):
        score_protocols(protocols, GRID, bias=False, vfa_time_s=[1.0])
    with pytest.raises(ValueError, match="model='tofts'"):
        score_protocols(protocols, GRID, model="tofts", bias=False)
    with pytest.raises(ValueError, match="protocols = \\[\\]"):
        score_protocols([], GRID)
