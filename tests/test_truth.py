"""The ground-truth path: continuous-time model, sampled only at the frames."""

import numpy as np
import pytest
from scipy.integrate import quad

from phantomdce.aif import Injection, plasma_aif
from phantomdce.dro.truth import TRUTH_STEP_S, aif_on_grid, tissue_truth, truth_grid, window_mean
from phantomdce.kinetics import irf_terms

BAT = 17.3  # s, deliberately not on the 0.01 s grid


def _aif(injection=None):
    return lambda t: plasma_aif("parker", t, bat=BAT, hct=0.42, injection=injection)


def _continuous(model, params, aif, t):
    """Adaptive quadrature of vp*ca(t) + int_bat^t ca(u) R(t-u) du, R from the model's IRF."""
    vp, amps, rates = (np.asarray(x, dtype=float) for x in irf_terms(model, **params))
    out = []
    for ti in t:
        if ti <= BAT:
            out.append(0.0 if ti < BAT else float(vp * aif(np.array([ti]))[0]))
            continue
        val = float(vp * aif(np.array([ti]))[0])
        for a, k in zip(amps, rates, strict=True):
            f = lambda u, k=k, ti=ti: float(aif(np.array([u]))[0]) * np.exp(-k * (ti - u))  # noqa: E731
            pts = [p for p in (BAT + 5, BAT + 10, BAT + 15, BAT + 25, BAT + 40) if p < ti]
            val += (
                a * quad(f, BAT, ti, points=pts or None, limit=400, epsabs=1e-13, epsrel=1e-12)[0]
            )
        out.append(val)
    return np.array(out)


CASES = [
    ("tofts", {"ktrans": 0.25, "ve": 0.3}),
    ("extended_tofts", {"ktrans": 0.6, "ve": 0.2, "vp": 0.08}),
    ("patlak", {"ktrans": 0.1, "vp": 0.05}),
    ("2cxm", {"fp": 60.0, "ps": 0.3, "ve": 0.25, "vp": 0.06}),
    ("2cum", {"fp": 30.0, "ps": 0.2, "vp": 0.04}),
]


@pytest.mark.parametrize(("model", "params"), CASES)
@pytest.mark.parametrize("injection", [None, Injection(rate_ml_s=1.0, volume_ml=15.0)])
def test_ground_truth_within_1e6_of_the_continuous_model(model, params, injection):
    dt = 3.7  # frames fall between grid nodes
    frames = dt * np.arange(30)
    grid = truth_grid(frames, bat=BAT)
    aif = _aif(injection)
    ca = aif_on_grid(grid, aif)
    ct = tissue_truth(model, {k: np.array([v]) for k, v in params.items()}, grid=grid, ca_grid=ca)
    got = ct[0, grid.frame_idx]
    want = _continuous(model, params, aif, frames)
    assert np.abs(got - want).max() < 1e-6


def test_grid_does_not_depend_on_dt_and_contains_the_frames():
    a = truth_grid(2.0 * np.arange(50), bat=BAT)
    b = truth_grid(5.0 * np.arange(20), bat=BAT)
    # same base spacing, frames exactly on nodes
    assert np.median(np.diff(a.t)) == pytest.approx(TRUTH_STEP_S)
    assert np.median(np.diff(b.t)) == pytest.approx(TRUTH_STEP_S)
    np.testing.assert_array_equal(a.t[a.frame_idx], 2.0 * np.arange(50))
    # bolus arrival is a jump: two nodes, left limit forced to zero
    assert a.t[a.jump] == a.t[a.jump + 1] == BAT
    ca = aif_on_grid(a, lambda t: plasma_aif("weinmann", t, bat=BAT))
    assert ca[a.jump] == 0.0 and ca[a.jump + 1] > 0.8


def test_same_truth_at_shared_frame_times_whatever_dt():
    params = {"ktrans": np.array([0.3]), "ve": np.array([0.3]), "vp": np.array([0.05])}
    vals = {}
    for dt in (1.0, 2.5, 10.0):
        frames = dt * np.arange(int(100 / dt) + 1)
        grid = truth_grid(frames, bat=BAT)
        ct = tissue_truth("extended_tofts", params, grid=grid, ca_grid=aif_on_grid(grid, _aif()))
        vals[dt] = dict(zip(frames.tolist(), ct[0, grid.frame_idx], strict=True))
    for t in (0.0, 20.0, 30.0, 50.0, 100.0):
        assert vals[1.0][t] == pytest.approx(vals[2.5][t], abs=1e-9)
        assert vals[1.0][t] == pytest.approx(vals[10.0][t], abs=1e-9)


def test_window_average_is_the_mean_over_the_frame():
    frames = 4.0 * np.arange(20)
    grid = truth_grid(frames, bat=BAT, window=4.0)
    aif = _aif()
    ca = aif_on_grid(grid, aif)
    avg = window_mean(grid, ca)
    for k in (5, 6, 10):
        lo, hi = frames[k] - 2.0, frames[k] + 2.0
        want = quad(lambda u: float(aif(np.array([u]))[0]), lo, hi, points=[BAT], limit=200)[0]
        assert avg[k] == pytest.approx(want / 4.0, abs=2e-5)
    # a linear function's window mean is its midpoint value, exactly
    np.testing.assert_allclose(window_mean(grid, 3.0 * grid.t + 1.0), 3.0 * frames + 1.0)
