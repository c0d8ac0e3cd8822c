"""Input checks, the "data determine the parameters" rule and output assembly (private).

Shared by the built-in fitters. A voxel's fit is a success only if its data determine the
parameters (issue 11, item 1b). The thresholds of that rule live here, in one place:

:data:`COND_MAX`
    The normal matrix ``J^T J`` at the solution, with its columns scaled to unit norm
    (the correlation form, which does not depend on the parameters' units), must have a
    condition number of at most ``1e10``. Larger means a parameter combination that the
    curve does not constrain (a zero or near-zero column, or two columns that are nearly
    proportional): its estimate is arbitrary. Parameters at a limit, and those a limit
    leaves undetermined (``ve`` when ``Ktrans = 0``: its column vanishes; see
    :mod:`phantomdce.fit.base`), are left out of the test.
:data:`F_ALPHA`
    The model must explain the curve better than "no contrast" (``ct = 0``): the F
    statistic ``((S0 - S) / p) / (S / (n - p))`` (S0 = sum of ct^2, S = residual sum of
    squares, p parameters, n frames) must have a p-value below ``1e-3``. A flat curve, or
    one that is pure noise, fails; any curve with contrast well above the noise passes.

A flat, non-finite or never-positive curve is screened out before fitting
(:func:`screen_voxels`). The nonlinear fitter also fails a voxel whose best start accepted
no step (see :mod:`phantomdce.fit.nlls`).
"""

from __future__ import annotations

import math

import numpy as np
import xarray as xr
from numba import njit
from scipy.special import fdtrc, fdtri

from phantomdce.params import PARAMETERS

__all__ = [
    "check_inputs",
    "screen_voxels",
    "result_dataset",
    "COND_MAX",
    "F_ALPHA",
    "condition_numbers",
    "beats_no_contrast",
]

#: Largest condition number of the column-scaled normal matrix of a determined fit.
COND_MAX = 1e10
#: Largest p-value of the F-test against "no contrast" for a determined fit.
F_ALPHA = 1e-3


#: Relative off-diagonal size below which the Jacobi eigenvalue iteration of
#: :func:`condition_numbers` leaves an element alone (Demmel-Veselic criterion
#: ``|a_pq| <= JACOBI_TOL sqrt(a_pp a_qq)``: the eigenvalues to high relative accuracy).
JACOBI_TOL = 1e-17
#: Relative distance of the F statistic from the critical value within which
#: :func:`beats_no_contrast` computes the p-value itself instead of comparing with it.
F_CRIT_RTOL = 1e-6


@njit(cache=True, inline="always")
def _jacobi_extremes(a, m):
    """Smallest and largest eigenvalue of the symmetric ``a[:m, :m]`` (cyclic Jacobi, in place)."""
    for _ in range(60):
        rotated = False
        for p in range(m - 1):
            for q in range(p + 1, m):
                apq = a[p, q]
                if abs(apq) <= JACOBI_TOL * math.sqrt(abs(a[p, p] * a[q, q])) or apq == 0.0:
                    continue
                rotated = True
                theta = (a[q, q] - a[p, p]) / (2.0 * apq)
                if abs(theta) > 1e150:
                    t = 0.5 / theta
                else:
                    t = 1.0 / (abs(theta) + math.sqrt(theta * theta + 1.0))
                    if theta < 0.0:
                        t = -t
                c = 1.0 / math.sqrt(t * t + 1.0)
                s = t * c
                for k in range(m):
                    akp = a[k, p]
                    akq = a[k, q]
                    a[k, p] = c * akp - s * akq
                    a[k, q] = s * akp + c * akq
                for k in range(m):
                    apk = a[p, k]
                    aqk = a[q, k]
                    a[p, k] = c * apk - s * aqk
                    a[q, k] = s * apk + c * aqk
        if not rotated:
            break
    lo = a[0, 0]
    hi = a[0, 0]
    for k in range(1, m):
        lo = min(lo, a[k, k])
        hi = max(hi, a[k, k])
    return lo, hi


@njit(cache=True, nogil=True)
def _condition_kernel(jtj, include, out):
    """:func:`condition_numbers` of every row into ``out`` (n_vox,)."""
    n, p, _ = jtj.shape
    a = np.empty((p, p))
    idx = np.empty(p, dtype=np.int64)
    d = np.empty(p)
    for v in range(n):
        finite = True
        for i in range(p):
            for j in range(p):
                if not math.isfinite(jtj[v, i, j]):
                    finite = False
        if not finite:
            out[v] = np.nan
            continue
        m = 0
        for i in range(p):
            if include[v, i]:
                idx[m] = i
                m += 1
        if m == 0:
            out[v] = 1.0
            continue
        zero = False
        for i in range(m):
            d[i] = math.sqrt(max(jtj[v, idx[i], idx[i]], 0.0))
            zero = zero or d[i] <= 0.0
        if zero:
            out[v] = np.inf
            continue
        for i in range(m):
            for j in range(m):
                a[i, j] = jtj[v, idx[i], idx[j]] / (d[i] * d[j])
        lo, hi = _jacobi_extremes(a, m)
        out[v] = hi / lo if lo > 0.0 else np.inf


def condition_numbers(jtj: np.ndarray, include: np.ndarray | None = None) -> np.ndarray:
    """Condition number of each column-scaled normal matrix, over the included parameters.

    The eigenvalues of the scaled matrix come from a cyclic Jacobi iteration in numba
    (:data:`JACOBI_TOL`; no GIL held, so blocks of voxels are judged on several threads
    at once).

    Parameters
    ----------
    jtj : ndarray (n_vox, p, p)
        Normal matrices ``J^T J`` (any units); rows with a NaN give NaN.
    include : ndarray of bool (n_vox, p), optional
        Parameters to keep (default all); e.g. drop a parameter at a degenerate limit.

    Returns
    -------
    ndarray (n_vox,)
        ``inf`` where an included column is zero; 1 where no parameter is included.
    """
    jtj = np.ascontiguousarray(jtj, dtype=np.float64)
    n, p, _ = jtj.shape
    if include is None:
        include = np.ones((n, p), dtype=bool)
    out = np.empty(n)
    _condition_kernel(jtj, np.ascontiguousarray(include, dtype=np.bool_), out)
    return out


@njit(cache=True, nogil=True)
def _sum_squares(ct, out):
    """Sum of squares of each row of ct over its finite values, into ``out``."""
    for v in range(ct.shape[0]):
        s = 0.0
        for i in range(ct.shape[1]):
            x = ct[v, i]
            if math.isfinite(x):
                s += x * x
        out[v] = s


def beats_no_contrast(ct: np.ndarray, sse: np.ndarray, n_params: int) -> np.ndarray:
    """True where the fit explains ``ct`` better than ``ct = 0`` (F-test, :data:`F_ALPHA`).

    The F statistic is compared with the critical value of the test (the p-value falls
    as F grows); within :data:`F_CRIT_RTOL` of it the p-value itself is computed.

    Parameters
    ----------
    ct : ndarray (n_vox, n_t)
        The fitted curves, mM.
    sse : ndarray (n_vox,)
        Residual sum of squares of the fit, mM^2 (NaN gives False).
    n_params : int
        Number of fitted parameters.
    """
    n_t = ct.shape[1]
    dof = n_t - n_params
    s0 = np.empty(ct.shape[0])
    _sum_squares(np.ascontiguousarray(ct, dtype=np.float64), s0)
    if dof <= 0:
        return np.zeros(ct.shape[0], dtype=bool)
    with np.errstate(divide="ignore", invalid="ignore"):
        f = ((s0 - sse) / n_params) / (sse / dof)
        f = np.where(sse <= 0.0, np.where(s0 > 0.0, np.inf, 0.0), f)
        f = np.maximum(f, 0.0)
        f_crit = float(fdtri(n_params, dof, 1.0 - F_ALPHA))
        out = f > f_crit
        near = np.abs(f - f_crit) <= F_CRIT_RTOL * f_crit
    if near.any():
        out[near] = fdtrc(n_params, dof, f[near]) < F_ALPHA
    return np.isfinite(sse) & out


def check_inputs(data: xr.Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (t (n_t,), ct (n_vox, n_t), ca (n_t,)) as float64, or raise ValueError.

    Errors name the problem: a missing variable, a time axis that is not strictly
    increasing, an AIF whose length differs from the time axis, non-finite AIF values.
    """
    for name in ("ct", "ca"):
        if name not in data:
            raise ValueError(f"input dataset has no {name!r} variable: expected ct and ca (mM)")
    if "time" not in data.coords and "time" not in data:
        raise ValueError("input dataset has no 'time' coordinate (s)")
    t = np.asarray(data["time"].values, dtype=np.float64)
    ct_da = data["ct"]
    if ct_da.dims != ("voxel", "time"):
        if set(ct_da.dims) == {"voxel", "time"}:
            ct_da = ct_da.transpose("voxel", "time")
        else:
            raise ValueError(f"ct has dims {ct_da.dims}: expected ('voxel', 'time')")
    ct = np.ascontiguousarray(ct_da.values, dtype=np.float64)
    ca = np.asarray(data["ca"].values, dtype=np.float64)
    if t.ndim != 1 or t.size < 3:
        raise ValueError(f"time has shape {t.shape}: expected a 1-D axis of at least 3 frames")
    if not np.all(np.isfinite(t)):
        raise ValueError("time contains non-finite values: expected finite times in s")
    bad = np.flatnonzero(np.diff(t) <= 0)
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"time is not increasing at index {i + 1} ({t[i]!r} s then {t[i + 1]!r} s):"
            " expected a strictly increasing time axis in s"
        )
    if ca.ndim != 1 or ca.size != t.size:
        raise ValueError(
            f"ca has shape {ca.shape} but time has {t.size} frames: expected one plasma"
            " concentration (mM) per frame"
        )
    if not np.all(np.isfinite(ca)):
        raise ValueError("ca contains non-finite values: expected a finite plasma AIF in mM")
    return t, ct, ca


@njit(cache=True, nogil=True)
def _screen_kernel(ct, out):
    """:func:`screen_voxels` of every row into ``out`` (n_vox, bool)."""
    for v in range(ct.shape[0]):
        finite = True
        positive = False
        vmin = np.inf
        vmax = -np.inf
        for i in range(ct.shape[1]):
            x = ct[v, i]
            if math.isfinite(x):
                positive = positive or x > 0.0
            else:
                finite = False
                x = 0.0  # a non-finite value counts as 0 in the flatness test
            vmin = min(vmin, x)
            vmax = max(vmax, x)
        out[v] = not finite or not positive or vmax - vmin == 0.0


def screen_voxels(ct: np.ndarray) -> np.ndarray:
    """Voxels that cannot be fitted: any non-finite value, no positive value, or flat.

    Parameters
    ----------
    ct : ndarray (n_vox, n_t)
        Tissue curves, mM.

    Returns
    -------
    ndarray of bool (n_vox,)
        True for a voxel that cannot be fitted.
    """
    ct = np.ascontiguousarray(ct, dtype=np.float64)
    out = np.empty(ct.shape[0], dtype=np.bool_)
    _screen_kernel(ct, out)
    return out


def result_dataset(
    data: xr.Dataset,
    estimates: dict[str, np.ndarray],
    success: np.ndarray,
    attrs: dict,
    at_limit: dict[str, np.ndarray] | None = None,
) -> xr.Dataset:
    """Assemble the output: one variable per parameter (package units) and ``success``.

    ``at_limit`` maps a parameter to a boolean array (voxel): the estimate sits at a limit
    where the model degenerates and is stored as that limit. It becomes the variable
    ``at_limit_<param>`` (False wherever ``success`` is False).
    """
    coords = {"voxel": data["voxel"].values} if "voxel" in data.coords else {}
    out = {}
    for name, values in estimates.items():
        p = PARAMETERS[name]
        vals = np.where(success, values, np.nan)
        out[name] = ("voxel", vals, {"units": p.units, "long_name": p.long_name})
    out["success"] = ("voxel", np.asarray(success, dtype=bool), {"long_name": "fit succeeded"})
    for name, flags in (at_limit or {}).items():
        out[f"at_limit_{name}"] = (
            "voxel",
            np.asarray(flags, dtype=bool) & np.asarray(success, dtype=bool),
            {"long_name": f"{name} at the limit where the model degenerates"},
        )
    return xr.Dataset(out, coords=coords, attrs=attrs)
