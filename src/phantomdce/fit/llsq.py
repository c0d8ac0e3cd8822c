"""Linear least-squares fitters (Murase 2004) for Tofts, extended Tofts and Patlak.

Integrating the model's differential equation gives a linear system in the samples:

- extended Tofts: ``Ct = (Ktrans + kep vp) int(ca) - kep int(Ct) + vp ca``
- Tofts: ``Ct = Ktrans int(ca) - kep int(Ct)``
- Patlak: ``Ct = Ktrans int(ca) + vp ca``

with trapezoidal integrals, solved per voxel by least squares (Murase K, MRM 51:858,
2004, doi:10.1002/mrm.20022). The numba kernel accumulates the normal equations of every
voxel in one pass; :func:`llsq_numpy` is the same method written with plain vectorised
numpy, kept as the benchmark's baseline and as a cross-check.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xarray as xr
from numba import njit, prange
from scipy.special import fdtrc

import phantomdce
from phantomdce.fit._common import (
    COND_MAX,
    F_ALPHA,
    beats_no_contrast,
    check_inputs,
    condition_numbers,
    result_dataset,
    screen_voxels,
)
from phantomdce.fit.base import AT_LIMIT_VALUES

__all__ = ["LLSQFitter", "llsq", "llsq_numpy", "plasma_limit", "LLSQ_MODELS"]

LLSQ_MODELS = ("tofts", "extended_tofts", "patlak")
_CODE = {"tofts": 0, "extended_tofts": 1, "patlak": 2}


def _cumtrapz(t: np.ndarray, y: np.ndarray) -> np.ndarray:
    seg = 0.5 * (y[..., 1:] + y[..., :-1]) * np.diff(t)
    return np.concatenate([np.zeros(y.shape[:-1] + (1,)), np.cumsum(seg, axis=-1)], axis=-1)


@njit(cache=True, inline="always")
def _solve3(a, b, p):
    """Solve the p x p (p <= 3) system a x = b by Gaussian elimination with pivoting."""
    m = a.copy()
    x = b.copy()
    for c in range(p):
        piv = c
        for r in range(c + 1, p):
            if abs(m[r, c]) > abs(m[piv, c]):
                piv = r
        if m[piv, c] == 0.0:
            return x, False
        if piv != c:
            for k in range(p):
                m[c, k], m[piv, k] = m[piv, k], m[c, k]
            x[c], x[piv] = x[piv], x[c]
        for r in range(c + 1, p):
            f = m[r, c] / m[c, c]
            for k in range(c, p):
                m[r, k] -= f * m[c, k]
            x[r] -= f * x[c]
    for c in range(p - 1, -1, -1):
        s = x[c]
        for k in range(c + 1, p):
            s -= m[c, k] * x[k]
        x[c] = s / m[c, c]
    return x, True


@njit(cache=True)
def _llsq_voxel(code, t, ca, ica, y, out):
    n = t.shape[0]
    p = 3 if code == 1 else 2
    a = np.zeros((3, 3))
    b = np.zeros(3)
    col = np.zeros(3)
    ict = 0.0
    for i in range(n):
        if i > 0:
            ict += 0.5 * (y[i] + y[i - 1]) * (t[i] - t[i - 1])
        if code == 0:
            col[0] = ica[i]
            col[1] = -ict
        elif code == 1:
            col[0] = ica[i]
            col[1] = -ict
            col[2] = ca[i]
        else:
            col[0] = ica[i]
            col[1] = ca[i]
        for r in range(p):
            b[r] += col[r] * y[i]
            for c in range(p):
                a[r, c] += col[r] * col[c]
    x, ok = _solve3(a[:p, :p], b[:p], p)
    if not ok:
        out[0] = np.nan
        return
    if code == 0:
        out[0] = x[0]  # Ktrans /s
        out[1] = x[1]  # kep /s
    elif code == 1:
        out[2] = x[2]  # vp
        out[1] = x[1]
        out[0] = x[0] - x[1] * x[2]
    else:
        out[0] = x[0]
        out[1] = x[1]  # vp


@njit(cache=True)
def _llsq_serial(code, t, ca, ica, ys, out):
    for v in range(ys.shape[0]):
        _llsq_voxel(code, t, ca, ica, ys[v], out[v])


@njit(cache=True, parallel=True)
def _llsq_parallel(code, t, ca, ica, ys, out):
    for v in prange(ys.shape[0]):
        _llsq_voxel(code, t, ca, ica, ys[v], out[v])


def _finish(model: str, raw: np.ndarray) -> dict[str, np.ndarray]:
    """Package units from the raw solutions (Ktrans, kep in /s)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        if model == "patlak":
            return {"Ktrans": raw[:, 0] * 60.0, "vp": raw[:, 1]}
        ktrans = raw[:, 0] * 60.0
        kep = raw[:, 1] * 60.0
        est = {"Ktrans": ktrans, "ve": np.where(kep > 0, ktrans / kep, np.nan)}
        if model == "extended_tofts":
            est["vp"] = raw[:, 2]
        return est


def llsq(
    t: np.ndarray, ct: np.ndarray, ca: np.ndarray, *, model: str, parallel: bool = False
) -> dict[str, np.ndarray]:
    """Linear least-squares estimates for every voxel (numba).

    Parameters
    ----------
    t : ndarray (n_t,)
        Frame times in s, strictly increasing.
    ct : ndarray (n_vox, n_t)
        Tissue concentration in mM.
    ca : ndarray (n_t,)
        Plasma AIF in mM.
    model : {"tofts", "extended_tofts", "patlak"}
        Model.
    parallel : bool, optional
        Spread voxels over numba's threads.

    Returns
    -------
    dict of str to ndarray (n_vox,)
        ``Ktrans`` (/min) and ``ve``, ``vp`` as the model has them. ``ve`` is NaN where
        the fitted kep is not positive.
    """
    if model not in _CODE:
        raise ValueError(f"model={model!r}: expected one of {list(LLSQ_MODELS)}")
    t = np.ascontiguousarray(t, dtype=np.float64)
    ca = np.ascontiguousarray(ca, dtype=np.float64)
    ct = np.ascontiguousarray(ct, dtype=np.float64)
    ica = _cumtrapz(t, ca)
    raw = np.zeros((ct.shape[0], 3))
    (_llsq_parallel if parallel else _llsq_serial)(_CODE[model], t, ca, ica, ct, raw)
    return _finish(model, raw)


def _system(t: np.ndarray, ct: np.ndarray, ca: np.ndarray, model: str):
    """Design matrices (n_vox, n_t, p), normal matrices and right-hand sides."""
    ica = _cumtrapz(t, ca)
    ict = _cumtrapz(t, ct)
    if model == "tofts":
        cols = [np.broadcast_to(ica, ct.shape), -ict]
    elif model == "extended_tofts":
        cols = [np.broadcast_to(ica, ct.shape), -ict, np.broadcast_to(ca, ct.shape)]
    else:
        cols = [np.broadcast_to(ica, ct.shape), np.broadcast_to(ca, ct.shape)]
    a = np.stack(cols, axis=-1)  # (n_vox, n_t, p)
    ata = np.einsum("vtp,vtq->vpq", a, a)
    atb = np.einsum("vtp,vt->vp", a, ct)
    return a, ata, atb


def llsq_numpy(
    t: np.ndarray, ct: np.ndarray, ca: np.ndarray, *, model: str
) -> dict[str, np.ndarray]:
    """The same method as :func:`llsq` in plain vectorised numpy (batched lstsq)."""
    if model not in _CODE:
        raise ValueError(f"model={model!r}: expected one of {list(LLSQ_MODELS)}")
    n_vox = ct.shape[0]
    _, ata, atb = _system(t, ct, ca, model)
    x = np.linalg.solve(ata, atb[..., None])[..., 0]
    raw = np.zeros((n_vox, 3))
    if model == "extended_tofts":
        raw[:, 0] = x[:, 0] - x[:, 1] * x[:, 2]
        raw[:, 1] = x[:, 1]
        raw[:, 2] = x[:, 2]
    else:
        raw[:, :2] = x
    return _finish(model, raw)


def determined(
    t: np.ndarray, ct: np.ndarray, ca: np.ndarray, model: str, block: int = 4096
) -> np.ndarray:
    """Voxels whose linear system determines the solution (see :mod:`phantomdce.fit._common`).

    The normal matrix of the linear system, columns scaled to unit norm, has a condition
    number of at most :data:`~phantomdce.fit._common.COND_MAX`, and the linear model
    explains the curve better than no contrast (:func:`~phantomdce.fit._common.beats_no_contrast`
    on the residual of the linear system). Evaluated in blocks of ``block`` voxels.
    """
    out = np.zeros(ct.shape[0], dtype=bool)
    for a0 in range(0, ct.shape[0], block):
        c = ct[a0 : a0 + block]
        a, ata, atb = _system(t, c, ca, model)
        cond = condition_numbers(ata)
        ok = cond <= COND_MAX
        x = np.zeros(atb.shape)
        if ok.any():
            x[ok] = np.linalg.solve(ata[ok], atb[ok][..., None])[..., 0]
        sse = np.sum((c - np.einsum("vtp,vp->vt", a, x)) ** 2, axis=1)
        out[a0 : a0 + block] = ok & beats_no_contrast(c, sse, a.shape[-1])
    return out


def plasma_limit(t: np.ndarray, ct: np.ndarray, ca: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Extended Tofts voxels at the limit Ktrans -> 0 (plasma only), and their vp.

    A plasma-only curve ``ct = vp ca`` makes the extended Tofts linear system singular
    (``int(ct)`` is proportional to ``int(ca)``), or, with noise, leaves kep arbitrary. A
    voxel is at the limit when the plasma-only model ``ct = vp ca`` explains the curve
    better than no contrast (:func:`~phantomdce.fit._common.beats_no_contrast`) and the full
    linear system does not explain it significantly better (nested F-test, 2 extra
    parameters, p-value at least :data:`~phantomdce.fit._common.F_ALPHA`).

    Parameters
    ----------
    t : ndarray (n_t,)
        Frame times in s.
    ct : ndarray (n_vox, n_t)
        Tissue concentration in mM (finite).
    ca : ndarray (n_t,)
        Plasma AIF in mM.

    Returns
    -------
    at_limit : ndarray of bool (n_vox,)
        Voxels at Ktrans -> 0.
    vp : ndarray (n_vox,)
        The plasma-only estimate of vp (NaN where ``ca`` is all zero).
    """
    caa = float(ca @ ca)
    if ct.shape[0] == 0 or caa <= 0.0:
        return np.zeros(ct.shape[0], dtype=bool), np.full(ct.shape[0], np.nan)
    vp = (ct @ ca) / caa
    s_r = np.sum((ct - vp[:, None] * ca) ** 2, axis=1)
    a, ata, atb = _system(t, ct, ca, "extended_tofts")
    x = np.einsum("vpq,vq->vp", np.linalg.pinv(ata), atb)
    s_f = np.sum((ct - np.einsum("vtp,vp->vt", a, x)) ** 2, axis=1)
    dof = ct.shape[1] - 3
    gain = s_r - s_f
    with np.errstate(divide="ignore", invalid="ignore"):
        f = (gain / 2.0) / (s_f / dof)
        pval = fdtrc(2, dof, np.where(np.isfinite(f), np.maximum(f, 0.0), np.inf))
    # a gain at the level of round-off is no gain (noise-free plasma-only curves)
    tiny = gain <= 1e-12 * np.sum(ct**2, axis=1)
    better = ~tiny & (pval < F_ALPHA)
    return ~better & beats_no_contrast(ct, s_r, 1), vp


@dataclass(frozen=True)
class LLSQFitter:
    """Linear least-squares (Murase) fitter, a built-in plug-in.

    ``success`` is False for a voxel that cannot be fitted (non-finite, no positive value,
    flat), whose linear system does not determine the solution (:func:`determined`:
    near-singular normal matrix, or a curve not distinguishable from no contrast), or
    whose solution is not a valid parameter set (kep <= 0). For the extended Tofts model,
    such a voxel that a plasma-only curve explains (:func:`plasma_limit`) is at the limit
    Ktrans -> 0: a success with ``Ktrans = 0`` and ``vp`` from ``ct = vp ca``, ``ve`` NaN
    (undetermined at this limit), ``at_limit_Ktrans`` and ``at_limit_ve`` True (see
    :mod:`phantomdce.fit.base`).

    Parameters
    ----------
    model : {"tofts", "extended_tofts", "patlak"}
        Kinetic model.
    parallel : bool, optional
        Spread voxels over all of numba's threads (default one thread).
    """

    model: str
    parallel: bool = False
    input: str = "concentration"
    method: str = "llsq"

    def __post_init__(self) -> None:
        if self.model not in _CODE:
            raise ValueError(f"model={self.model!r}: expected one of {list(LLSQ_MODELS)}")

    @property
    def name(self) -> str:
        """Registry name, ``llsq_<model>``."""
        return f"llsq_{self.model}"

    @property
    def version(self) -> str:
        """The phantomdce version."""
        return phantomdce.__version__

    def fit(self, data: xr.Dataset) -> xr.Dataset:
        """Fit every voxel of one case (see :mod:`phantomdce.fit.base`)."""
        t, ct, ca = check_inputs(data)
        bad = screen_voxels(ct)
        est = llsq(t, np.where(bad[:, None], 0.0, ct), ca, model=self.model, parallel=self.parallel)
        success = ~bad & np.all([np.isfinite(v) for v in est.values()], axis=0)
        success &= determined(t, np.where(bad[:, None], 0.0, ct), ca, self.model)
        attrs = {"fitter": self.name, "method": self.method}
        if self.model != "extended_tofts":
            return result_dataset(data, est, success, attrs)
        rows = np.flatnonzero(~bad & ~success)
        at0, vp0 = plasma_limit(t, ct[rows], ca)
        use = rows[at0]
        limit = np.zeros(ct.shape[0], dtype=bool)
        limit[use] = True
        est["Ktrans"][use] = AT_LIMIT_VALUES["Ktrans"]
        est["ve"][use] = np.nan
        est["vp"][use] = vp0[at0]
        success[use] = True
        return result_dataset(data, est, success, attrs, at_limit={"Ktrans": limit, "ve": limit})
