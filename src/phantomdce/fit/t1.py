"""Variable-flip-angle (VFA) T1 mapping from spoiled gradient echo signals.

Estimation side of the package: it uses the forward model in :mod:`phantomdce.signal` and
never the simulator. Both estimators are vectorised over voxels: ``signals`` has shape
``(..., n_angles)`` and every output has shape ``(...)``.

Usable samples are those with a finite, strictly positive signal. A voxel with fewer than
two usable flip angles, or whose fit is undefined, gets NaN for that voxel only.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from phantomdce.signal import as_float_array, check_b1, check_flip_angle, check_tr

__all__ = ["vfa_t1_linear", "vfa_t1_nonlinear"]


def _prepare(
    signals: ArrayLike, flip_angles: ArrayLike, tr: float, b1: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.bool_], float]:
    """Validate inputs; return signals, actual angles (rad), usable mask, and TR."""
    s = as_float_array(signals, "signals")
    if s.ndim < 1:
        raise ValueError(f"signals with shape {s.shape}: expected shape (..., n_angles)")
    fa = check_flip_angle(flip_angles, "flip_angles")
    tr_ = check_tr(tr)
    if tr_.ndim != 0:
        raise ValueError(f"tr with shape {tr_.shape}: expected a scalar repetition time in s")
    b1_ = check_b1(b1, float(np.max(fa)))
    if b1_.ndim >= 1 and b1_.ndim == s.ndim - 1:
        b1_ = b1_[..., np.newaxis]
    try:
        shape = np.broadcast_shapes(s.shape, fa.shape, b1_.shape)
    except ValueError:
        raise ValueError(
            f"flip_angles with shape {fa.shape} and b1 with shape {b1_.shape}: expected shapes "
            f"broadcastable to signals {s.shape} (angles along the last axis)"
        ) from None
    if shape != s.shape:
        raise ValueError(
            f"flip_angles with shape {fa.shape}: expected {s.shape[-1]} angles to match "
            f"signals {s.shape}"
        )
    alpha = np.broadcast_to(np.deg2rad(b1_ * fa), s.shape)
    with np.errstate(invalid="ignore"):
        usable = np.isfinite(s) & (s > 0.0)
    return s, alpha, usable, float(tr_)


def vfa_t1_linear(
    signals: ArrayLike,
    flip_angles: ArrayLike,
    *,
    tr: float,
    b1: ArrayLike = 1.0,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Estimate T1 and M0 by the DESPOT1 linearisation of the SPGR equation.

    With ``a`` the actual flip angle (``b1 * fa``), the SPGR equation is linear in
    ``x = S / tan(a)``, ``y = S / sin(a)``: ``y = E1 x + M0 (1 - E1)`` with
    ``E1 = exp(-tr / T1)``. A straight line is fitted per voxel by ordinary least squares;
    the estimate is exact for noise-free data.

    Parameters
    ----------
    signals : array_like, shape (..., n_angles)
        SPGR signal per voxel and flip angle (any units).
    flip_angles : array_like, shape (n_angles,) or broadcastable to ``signals``
        Nominal flip angles in degrees, each in (0, 90).
    tr : float
        Repetition time in s.
    b1 : array_like, shape (...) or broadcastable to ``signals``, optional
        Flip-angle scale factor (actual / nominal), default 1.

    Returns
    -------
    t1 : ndarray of float64, shape (...)
        T1 in s; NaN where fewer than two angles are usable or the slope is not in (0, 1).
    m0 : ndarray of float64, shape (...)
        Equilibrium signal M0 (units of ``signals``); NaN where ``t1`` is NaN.

    Examples
    --------
    >>> from phantomdce.signal import vfa_signal
    >>> s = vfa_signal([1.0, 0.5], flip_angles=[3, 6, 9, 15, 24, 35], tr=0.005, m0=1e4)
    >>> t1, m0 = vfa_t1_linear(s, [3, 6, 9, 15, 24, 35], tr=0.005)
    >>> t1.round(8), m0.round(4)
    (array([1., 2.]), array([10000., 10000.]))

    """
    s, alpha, usable, tr_ = _prepare(signals, flip_angles, tr, b1)
    return _linear(s, alpha, usable, tr_)


def _linear(
    s: NDArray[np.float64], alpha: NDArray[np.float64], usable: NDArray[np.bool_], tr: float
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    w = usable.astype(np.float64)
    s0 = np.where(usable, s, 0.0)
    y = s0 / np.sin(alpha)
    x = s0 / np.tan(alpha)
    n = w.sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        mx = x.sum(axis=-1) / n
        my = y.sum(axis=-1) / n
        dx = (x - mx[..., None]) * w
        dy = (y - my[..., None]) * w
        sxx = np.sum(dx * dx, axis=-1)
        sxy = np.sum(dx * dy, axis=-1)
        slope = sxy / sxx
        intercept = my - slope * mx
        ok = (n >= 2) & (sxx > 0.0) & np.isfinite(slope) & (slope > 0.0) & (slope < 1.0)
        slope_ok = np.where(ok, slope, 0.5)
        t1 = np.where(ok, -tr / np.log(slope_ok), np.nan)
        m0 = np.where(ok, intercept / (1.0 - slope_ok), np.nan)
    return t1, m0


def _model_and_derivative(
    theta: NDArray[np.float64], sin_a: NDArray[np.float64], cos_a: NDArray[np.float64], tr: float
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Return SPGR basis f (M0 = 1) and df/dtheta, with theta = ln(T1), shape (..., n)."""
    r1 = np.exp(-theta)[..., None]
    e = np.exp(-tr * r1)
    den = 1.0 - cos_a * e
    f = sin_a * (1.0 - e) / den
    # df/dE = sin a (cos a - 1) / (1 - cos a E)^2 ; dE/dtheta = E tr R1
    d = sin_a * (cos_a - 1.0) / (den * den) * (e * tr * r1)
    return f, d


def _projected_cost(
    f: NDArray[np.float64], s: NDArray[np.float64], w: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Return the VarPro cost |S - M0* f|^2, M0* and f.f (weights w are 0/1)."""
    fw = f * w
    ff = np.sum(fw * f, axis=-1)
    fs = np.sum(fw * s, axis=-1)
    ss = np.sum(w * s * s, axis=-1)
    m0 = fs / ff
    cost = np.maximum(ss - fs * m0, 0.0)
    return cost, m0, ff


def vfa_t1_nonlinear(
    signals: ArrayLike,
    flip_angles: ArrayLike,
    *,
    tr: float,
    b1: ArrayLike = 1.0,
    t1_bounds: tuple[float, float] = (1e-3, 10.0),
    max_iter: int = 50,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Estimate T1 and M0 by nonlinear least squares on the SPGR equation.

    Minimises ``sum_k (S_k - M0 f_k(T1))^2`` over the usable angles, with
    ``f_k = sin(a_k) (1 - E1) / (1 - cos(a_k) E1)`` and ``a_k = b1 fa_k``. For a given T1
    the optimal M0 is linear and eliminated analytically (variable projection), so each
    voxel is a 1-D problem in ``ln T1``, solved for all voxels at once by a damped
    Gauss-Newton (Levenberg-Marquardt, Kaufman Jacobian) iteration that starts from the
    linear DESPOT1 estimate (or from a coarse grid search where that is undefined) and is
    kept within ``t1_bounds``.

    Parameters
    ----------
    signals : array_like, shape (..., n_angles)
        SPGR signal per voxel and flip angle (any units).
    flip_angles : array_like, shape (n_angles,) or broadcastable to ``signals``
        Nominal flip angles in degrees, each in (0, 90).
    tr : float
        Repetition time in s.
    b1 : array_like, shape (...) or broadcastable to ``signals``, optional
        Flip-angle scale factor (actual / nominal), default 1.
    t1_bounds : tuple of float, optional
        Lower and upper bound on T1 in s, default (1e-3, 10).
    max_iter : int, optional
        Maximum number of Levenberg-Marquardt iterations, default 50.

    Returns
    -------
    t1 : ndarray of float64, shape (...)
        T1 in s, within ``t1_bounds``; NaN where fewer than two angles are usable.
    m0 : ndarray of float64, shape (...)
        Equilibrium signal M0 (units of ``signals``); NaN where ``t1`` is NaN.

    Raises
    ------
    ValueError
        For invalid flip angles, TR, B1 or bounds.

    Examples
    --------
    >>> from phantomdce.signal import vfa_signal
    >>> fas = [3, 6, 9, 15, 24, 35]
    >>> s = vfa_signal([1.0, 0.5], flip_angles=fas, tr=0.005, m0=1e4, b1=0.9)
    >>> t1, m0 = vfa_t1_nonlinear(s, fas, tr=0.005, b1=0.9)
    >>> t1.round(8), m0.round(4)
    (array([1., 2.]), array([10000., 10000.]))

    """
    try:
        lo, hi = (float(v) for v in t1_bounds)
    except (TypeError, ValueError):
        raise ValueError(
            f"t1_bounds={t1_bounds!r}: expected a pair (lower, upper) of T1 in seconds"
        ) from None
    if not (np.isfinite(lo) and np.isfinite(hi) and 0.0 < lo < hi):
        raise ValueError(f"t1_bounds={t1_bounds!r}: expected 0 < lower < upper, in seconds")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int | np.integer) or max_iter < 0:
        raise ValueError(f"max_iter={max_iter!r}: expected a non-negative integer")
    s, alpha, usable, tr_ = _prepare(signals, flip_angles, tr, b1)
    batch = s.shape[:-1]
    s_f = np.where(usable, s, 0.0).reshape(-1, s.shape[-1])
    w = usable.reshape(-1, s.shape[-1]).astype(np.float64)
    alpha_f = alpha.reshape(-1, s.shape[-1])
    sin_a = np.sin(alpha_f)
    cos_a = np.cos(alpha_f)
    valid = w.sum(axis=-1) >= 2
    th_lo, th_hi = np.log(lo), np.log(hi)

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        t1_lin, _ = _linear(s_f, alpha_f, w.astype(bool), tr_)
        theta = np.log(np.clip(np.where(np.isfinite(t1_lin), t1_lin, 1.0), lo, hi))
        # Coarse grid start where the linear estimate is undefined or out of bounds.
        need = valid & ~(np.isfinite(t1_lin) & (t1_lin > lo) & (t1_lin < hi))
        if np.any(need):
            grid = np.linspace(th_lo, th_hi, 61)
            idx = np.flatnonzero(need)
            best = np.full(idx.size, np.inf)
            for g in grid:  # loop over grid points, vectorised over voxels
                th_g = np.full(idx.size, g)
                f, _ = _model_and_derivative(th_g, sin_a[idx], cos_a[idx], tr_)
                cost, _, _ = _projected_cost(f, s_f[idx], w[idx])
                better = cost < best
                best = np.where(better, cost, best)
                theta[idx] = np.where(better, g, theta[idx])

        f, d = _model_and_derivative(theta, sin_a, cos_a, tr_)
        cost, m0, ff = _projected_cost(f, s_f, w)
        lam = np.full(theta.shape, 1e-3)
        active = valid.copy()
        for _ in range(max_iter):
            if not np.any(active):
                break
            dw = d * w
            dd = np.sum(dw * d, axis=-1)
            df = np.sum(dw * f, axis=-1)
            r = s_f - m0[:, None] * f
            dr = np.sum(dw * r, axis=-1)
            h = dd - df * df / ff  # Kaufman Gauss-Newton curvature / M0*^2
            step = dr / (m0 * h * (1.0 + lam))
            step = np.where(np.isfinite(step), step, 0.0)
            th_new = np.clip(theta + np.clip(step, -2.0, 2.0), th_lo, th_hi)
            f_new, d_new = _model_and_derivative(th_new, sin_a, cos_a, tr_)
            cost_new, m0_new, ff_new = _projected_cost(f_new, s_f, w)
            accept = active & np.isfinite(cost_new) & (cost_new <= cost)
            moved = np.abs(th_new - theta)
            theta = np.where(accept, th_new, theta)
            f = np.where(accept[:, None], f_new, f)
            d = np.where(accept[:, None], d_new, d)
            cost = np.where(accept, cost_new, cost)
            m0 = np.where(accept, m0_new, m0)
            ff = np.where(accept, ff_new, ff)
            lam = np.where(accept, np.maximum(lam / 10.0, 1e-12), lam * 10.0)
            done = (accept & (moved < 1e-12)) | (lam > 1e12)
            active &= ~done

        t1 = np.where(valid & np.isfinite(m0), np.clip(np.exp(theta), lo, hi), np.nan)
        m0 = np.where(np.isfinite(t1), m0, np.nan)
    return t1.reshape(batch), m0.reshape(batch)
