"""The success judgement of the built-in fitters in numba (issue 13, item 5: speed).

The condition numbers, the screening of unfittable curves and the F-test against no
contrast run in numba without the GIL, so that ``parallel=True`` judges blocks of voxels
on several threads at once. Each is checked against the numpy computation it replaced.
"""

import numpy as np
import pytest
from scipy.special import fdtrc

from phantomdce.fit._common import (
    COND_MAX,
    F_ALPHA,
    beats_no_contrast,
    condition_numbers,
    screen_voxels,
)


def _cond_numpy(jtj, include):
    """The column-scaled condition number by numpy's eigvalsh, row by row."""
    out = np.full(jtj.shape[0], np.nan)
    for v in range(jtj.shape[0]):
        if not np.all(np.isfinite(jtj[v])):
            continue
        idx = np.flatnonzero(include[v])
        if idx.size == 0:
            out[v] = 1.0
            continue
        sub = jtj[v][np.ix_(idx, idx)]
        d = np.sqrt(np.clip(np.diag(sub), 0.0, None))
        if np.any(d <= 0.0):
            out[v] = np.inf
            continue
        ev = np.linalg.eigvalsh(sub / np.outer(d, d))
        out[v] = ev[-1] / ev[0] if ev[0] > 0 else np.inf
    return out


def _normal_matrices(n, p, rng):
    """Random normal matrices J^T J with condition numbers from 1 to about 1e16."""
    out = np.empty((n, p, p))
    for v in range(n):
        q, _ = np.linalg.qr(rng.normal(size=(p, p)))
        ev = np.geomspace(1.0, 10.0 ** rng.uniform(0, 16), p) * rng.uniform(0.1, 10)
        scale = 10.0 ** rng.uniform(-6, 6, p)  # parameters in very different units
        out[v] = (q * ev) @ q.T * np.outer(scale, scale)
    return out


@pytest.mark.parametrize("p", [2, 3, 4, 5])
def test_condition_numbers_equal_eigvalsh(p):
    rng = np.random.default_rng(p)
    jtj = _normal_matrices(400, p, rng)
    include = rng.random((400, p)) < 0.8
    jtj[3, 0, 1] = np.nan
    jtj[4, :, 0] = jtj[4, 0, :] = 0.0  # a zero column
    include[4, 0] = True
    got = condition_numbers(jtj, include)
    ref = _cond_numpy(jtj, include)
    assert np.isnan(got[3]) and np.isnan(ref[3]) and got[4] == np.inf
    ok = np.isfinite(ref) & (ref < 1e12)
    # both are exact to rounding: the smallest eigenvalue to about eps * (largest one)
    assert np.all(np.abs(got[ok] / ref[ok] - 1.0) <= 1e-10 + 4e-15 * ref[ok])
    # the verdict (at most COND_MAX) is the same wherever the numbers are not at the threshold
    clear = np.isfinite(ref) & (np.abs(np.log(ref / COND_MAX)) > 1e-3)
    np.testing.assert_array_equal((got <= COND_MAX)[clear], (ref <= COND_MAX)[clear])
    np.testing.assert_array_equal(condition_numbers(jtj[:, :1, :1])[5:], 1.0)


def test_screen_voxels_equals_the_numpy_rule():
    rng = np.random.default_rng(3)
    ct = rng.normal(size=(300, 20))
    ct[:50] = -np.abs(ct[:50])  # never positive
    ct[50:60] = 0.7  # flat
    ct[60:70, 5] = np.nan
    ct[70:75, 3] = np.inf
    ct[75, :] = 0.0
    with np.errstate(invalid="ignore"):
        finite = np.all(np.isfinite(ct), axis=1)
        positive = np.nanmax(np.where(np.isfinite(ct), ct, -np.inf), axis=1) > 0
        flat = np.ptp(np.where(np.isfinite(ct), ct, 0.0), axis=1) == 0
    np.testing.assert_array_equal(screen_voxels(ct), ~finite | ~positive | flat)
    assert screen_voxels(ct[:, :1].copy()).all()  # one frame is flat


def test_beats_no_contrast_equals_the_p_value_rule():
    """Compared with the critical F value, exactly the rule p < F_ALPHA, also next to it."""
    rng = np.random.default_rng(8)
    n_t, p = 40, 3
    ct = rng.normal(size=(2000, n_t)) + rng.uniform(0.0, 1.0, (2000, 1))
    s0 = np.sum(ct**2, axis=1)
    # residuals spread across the critical value, some exactly on either side of it
    sse = s0 / (1.0 + 10.0 ** rng.uniform(-2, 1, 2000))
    sse[:5] = [np.nan, 0.0, s0[2], 2 * s0[3], np.inf]
    got = beats_no_contrast(ct, sse, p)
    dof = n_t - p
    with np.errstate(divide="ignore", invalid="ignore"):
        f = ((s0 - sse) / p) / (sse / dof)
        f = np.where(sse <= 0.0, np.where(s0 > 0.0, np.inf, 0.0), f)
        ref = np.isfinite(sse) & (fdtrc(p, dof, np.maximum(f, 0.0)) < F_ALPHA)
    np.testing.assert_array_equal(got, ref)
    assert 100 < got.sum() < 1900
    assert not beats_no_contrast(ct[:, :3], sse, 3).any()  # no degrees of freedom left


def test_parallel_fit_judges_without_the_gil_on_a_kept_pool():
    """parallel=True fits and judges blocks of voxels on threads; the judgement's kernels
    hold no GIL (else the blocks' judgements run one after the other), the threads are
    started once and kept, and the result equals the serial fit's."""
    import threading

    import numba
    import xarray as xr

    from phantomdce import kinetics as K
    from phantomdce.aif import plasma_aif
    from phantomdce.fit import _common
    from phantomdce.fit import nlls as N
    from phantomdce.fit.nlls import NLLSFitter

    for kernel in (_common._condition_kernel, _common._screen_kernel, _common._sum_squares):
        assert kernel.targetoptions.get("nogil") is True
    rng = np.random.default_rng(6)
    t = np.arange(60) * 4.0
    ca = plasma_aif("parker", t, bat=12.0, hct=0.42)
    n = 2 * N.MIN_VOXELS_PER_THREAD + 9
    ct = K.extended_tofts(t, ca, ktrans=rng.uniform(0.0, 0.5, n), ve=0.3, vp=0.02)
    ct = ct + rng.normal(0.0, 0.02, ct.shape)
    ds = xr.Dataset(
        {"ct": (("voxel", "time"), ct), "ca": ("time", ca)},
        coords={"time": t, "voxel": np.arange(n)},
    )
    serial = NLLSFitter("extended_tofts").fit(ds)
    par = NLLSFitter("extended_tofts", parallel=True)
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba has one thread here")
    before = numba.get_num_threads()
    numba.set_num_threads(2)
    try:
        first = par.fit(ds)
        workers = {t.ident for t in threading.enumerate() if t.name.startswith("phantomdce-nlls")}
        second = par.fit(ds)
        again = {t.ident for t in threading.enumerate() if t.name.startswith("phantomdce-nlls")}
        # the pool outlives the call and the second call reuses its threads (a pool made and
        # joined per call leaves no worker alive after it)
        assert workers and again == workers
    finally:
        numba.set_num_threads(before)
    xr.testing.assert_identical(first, serial)
    xr.testing.assert_identical(second, serial)
