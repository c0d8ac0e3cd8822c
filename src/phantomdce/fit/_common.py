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

import numpy as np
import xarray as xr
from scipy.special import fdtrc

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


def condition_numbers(jtj: np.ndarray, include: np.ndarray | None = None) -> np.ndarray:
    """Condition number of each column-scaled normal matrix, over the included parameters.

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
    n, p, _ = jtj.shape
    if include is None:
        include = np.ones((n, p), dtype=bool)
    out = np.full(n, np.nan)
    finite = np.all(np.isfinite(jtj.reshape(n, -1)), axis=1)
    # the distinct include patterns, via one integer code per row (np.unique(axis=0) is slow)
    codes = np.unique(include.astype(np.int64) @ (1 << np.arange(p, dtype=np.int64)))
    patterns = ((codes[:, None] >> np.arange(p)) & 1).astype(bool)
    for pattern in patterns:
        rows = finite & np.all(include == pattern, axis=1)
        if not rows.any():
            continue
        idx = np.flatnonzero(pattern)
        if idx.size == 0:
            out[rows] = 1.0
            continue
        sub = jtj[rows][:, idx][:, :, idx]
        d = np.sqrt(np.clip(np.einsum("vii->vi", sub), 0.0, None))
        zero = np.any(d <= 0.0, axis=1)
        d = np.where(d > 0.0, d, 1.0)
        corr = sub / (d[:, :, None] * d[:, None, :])
        ev = np.linalg.eigvalsh(corr)
        with np.errstate(divide="ignore", invalid="ignore"):
            cond = np.where(ev[:, 0] > 0.0, ev[:, -1] / ev[:, 0], np.inf)
        out[rows] = np.where(zero, np.inf, cond)
    return out


def beats_no_contrast(ct: np.ndarray, sse: np.ndarray, n_params: int) -> np.ndarray:
    """True where the fit explains ``ct`` better than ``ct = 0`` (F-test, :data:`F_ALPHA`).

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
    s0 = np.sum(np.where(np.isfinite(ct), ct, 0.0) ** 2, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        f = ((s0 - sse) / n_params) / (sse / dof)
        f = np.where(sse <= 0.0, np.where(s0 > 0.0, np.inf, 0.0), f)
        pval = fdtrc(n_params, dof, np.maximum(f, 0.0))
    return np.isfinite(sse) & (dof > 0) & (pval < F_ALPHA)


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


def screen_voxels(ct: np.ndarray) -> np.ndarray:
    """Voxels that cannot be fitted: any non-finite value, no positive value, or flat."""
    with np.errstate(invalid="ignore"):
        finite = np.all(np.isfinite(ct), axis=1)
        positive = np.nanmax(np.where(np.isfinite(ct), ct, -np.inf), axis=1) > 0
        flat = np.ptp(np.where(np.isfinite(ct), ct, 0.0), axis=1) == 0
    return ~finite | ~positive | flat


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
