"""Numba kernels of the batched Levenberg-Marquardt fitter (private).

Each voxel is fitted independently by active-set projected Levenberg-Marquardt with
analytic Jacobians (see :func:`_fit_one`): parameters on a bound that the gradient pushes
against are held, the damped step is solved for the others and projected onto the box.
The models are evaluated exactly for a piecewise-linear AIF by recursion over its segments;
the recursion also gives ``G(k) = int (t-u) ca(u) exp(-k (t-u)) du``, the derivative of
``F(k) = int ca(u) exp(-k (t-u)) du`` with respect to the rate (dF/dk = -G).

Internal units: time in s, rates and flows in /s. Parameter vectors per model:

=====  ================  =============================
code   model             theta
=====  ================  =============================
0      tofts             Ktrans (/s), ve
1      extended_tofts    Ktrans (/s), ve, vp
2      patlak            Ktrans (/s), vp
3      2cxm              Fp (/s), PS (/s), ve, vp
4      2cum              Fp (/s), PS (/s), vp
=====  ================  =============================

With ``fit_delay`` a last parameter, the arterial delay in s, shifts the AIF:
``ca(t - delay)`` by linear interpolation.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

MODEL_CODES = {"tofts": 0, "extended_tofts": 1, "patlak": 2, "2cxm": 3, "2cum": 4}
N_PARAMS = {0: 2, 1: 3, 2: 2, 3: 4, 4: 3}

_SERIES = 0.1
#: Projected-gradient tolerance: stop when every free column of J is this close to
#: orthogonal to the residual (cosine).
GTOL = 1e-6
#: Relative cost reduction below which a Gauss-Newton-like step (lam < 1) ends the fit.
FTOL = 1e-10
#: Damping beyond which no step lowers the cost: the point is numerically stationary.
LAM_MAX = 1e16


@njit(cache=True, inline="always")
def _weights(x):
    """Return ``(exp(-x), h, p1, p2)`` for ``x = k D`` on a segment of length ``D``.

    ``h = I0 / D``, ``p1 = I1 / D**2``, ``p2 = I2 / D**3`` with
    ``Im = int_0^D u**m exp(-k u) du``; a power series below ``x = 0.1`` avoids cancellation.
    """
    e = math.exp(-x)
    if x < _SERIES:
        h = 0.0
        p1 = 0.0
        p2 = 0.0
        term = 1.0  # (-x)^n / n!
        for n in range(12):
            h += term / (n + 1)
            p1 += term / (n + 2)
            p2 += term / (n + 3)
            term *= -x / (n + 1)
        return e, h, p1, p2
    h = -math.expm1(-x) / x
    p1 = (1.0 - e * (1.0 + x)) / (x * x)
    p2 = (2.0 - e * (x * x + 2.0 * x + 2.0)) / (x * x * x)
    return e, h, p1, p2


@njit(cache=True, fastmath={"contract"})
def _conv_fg(t, ca, k, f, g):
    """F and G of a piecewise-linear input for one rate k (/s), written into f, g.

    Over a segment of length ``d`` from ``c0`` to ``c1``::

        F1 = e F0 + d (c1 h + (c0 - c1) p1)
        G1 = e (G0 + d F0) + d**2 (c1 p1 + (c0 - c1) p2)

    (weights of :func:`_weights`), arranged so that each recursion is one multiply-add
    deep per frame.
    """
    n = t.shape[0]
    f[0] = 0.0
    g[0] = 0.0
    last = -1.0
    e = ed = dh = dp1 = d2p1 = d2p2 = 0.0
    fi = 0.0
    gi = 0.0
    for i in range(n - 1):
        d = t[i + 1] - t[i]
        if d != last:
            e, h, p1, p2 = _weights(k * d)
            ed = e * d
            dh = d * h
            dp1 = d * p1
            d2p1 = d * d * p1
            d2p2 = d * d * p2
            last = d
        c1 = ca[i + 1]
        dc = ca[i] - c1
        gi = e * gi + (ed * fi + (c1 * d2p1 + dc * d2p2))
        fi = e * fi + (c1 * dh + dc * dp1)
        f[i + 1] = fi
        g[i + 1] = gi


@njit(cache=True, fastmath={"contract"})
def _conv_f(t, ca, k, f):
    """F of :func:`_conv_fg` alone (the same recursion and weights), written into f."""
    n = t.shape[0]
    f[0] = 0.0
    last = -1.0
    e = dh = dp1 = 0.0
    fi = 0.0
    for i in range(n - 1):
        d = t[i + 1] - t[i]
        if d != last:
            e, h, p1, _ = _weights(k * d)
            dh = d * h
            dp1 = d * p1
            last = d
        c1 = ca[i + 1]
        dc = ca[i] - c1
        fi = e * fi + (c1 * dh + dc * dp1)
        f[i + 1] = fi


@njit(cache=True, fastmath={"contract"})
def _conv_f_pair(t, ca1, k1, f1, ca2, k2, f2):
    """:func:`_conv_f` of two inputs at two rates in one loop (each as :func:`_conv_f`)."""
    n = t.shape[0]
    f1[0] = 0.0
    f2[0] = 0.0
    last = -1.0
    e1 = dh1 = dp11 = e2 = dh2 = dp12 = 0.0
    x1 = 0.0
    x2 = 0.0
    for i in range(n - 1):
        d = t[i + 1] - t[i]
        if d != last:
            e1, h1, p11, _ = _weights(k1 * d)
            e2, h2, p12, _ = _weights(k2 * d)
            dh1 = d * h1
            dp11 = d * p11
            dh2 = d * h2
            dp12 = d * p12
            last = d
        c1 = ca1[i + 1]
        dc1 = ca1[i] - c1
        c2 = ca2[i + 1]
        dc2 = ca2[i] - c2
        x1 = e1 * x1 + (c1 * dh1 + dc1 * dp11)
        x2 = e2 * x2 + (c2 * dh2 + dc2 * dp12)
        f1[i + 1] = x1
        f2[i + 1] = x2


@njit(cache=True, fastmath={"contract"})
def _conv_fg_f(t, ca, sl, k, f, g, fs):
    """:func:`_conv_fg` of ``ca`` and :func:`_conv_f` of ``sl`` in one pass (same weights).

    The three recursions are independent, so one loop runs them side by side.
    """
    n = t.shape[0]
    f[0] = 0.0
    g[0] = 0.0
    fs[0] = 0.0
    last = -1.0
    e = ed = dh = dp1 = d2p1 = d2p2 = 0.0
    fi = 0.0
    gi = 0.0
    si = 0.0
    for i in range(n - 1):
        d = t[i + 1] - t[i]
        if d != last:
            e, h, p1, p2 = _weights(k * d)
            ed = e * d
            dh = d * h
            dp1 = d * p1
            d2p1 = d * d * p1
            d2p2 = d * d * p2
            last = d
        c1 = ca[i + 1]
        dc = ca[i] - c1
        s1 = sl[i + 1]
        ds = sl[i] - s1
        gi = e * gi + (ed * fi + (c1 * d2p1 + dc * d2p2))
        fi = e * fi + (c1 * dh + dc * dp1)
        si = e * si + (s1 * dh + ds * dp1)
        f[i + 1] = fi
        g[i + 1] = gi
        fs[i + 1] = si


@njit(cache=True)
def _shift(t, ca, delay, out, slope):
    """AIF delayed by ``delay`` s (linear interpolation, zero before t[0]) and its slope.

    At a delay where a delayed frame meets an AIF sample (a kink) the slope is the one of
    the AIF's segment before that sample (that of delays just above the kink).
    """
    n = t.shape[0]
    t0 = t[0]
    tn = t[n - 1]
    j = 0
    last = -1.0
    inv = 0.0
    for i in range(n):
        ts = t[i] - delay
        if ts <= t0:  # delayed to before the first sample
            out[i] = ca[0] if ts == t0 else 0.0
            slope[i] = 0.0
            continue
        if ts >= tn:  # delayed to after the last sample
            out[i] = ca[n - 1]
            slope[i] = 0.0
            continue
        while t[j + 1] < ts:
            j += 1
        dtj = t[j + 1] - t[j]
        if dtj != last:  # one division per distinct frame interval (evenly spaced: one)
            inv = 1.0 / dtj
            last = dtj
        sl = (ca[j + 1] - ca[j]) * inv
        out[i] = ca[j] + (ts - t[j]) * sl
        slope[i] = sl


@njit(cache=True)
def _model_jac(code, theta, t, ca, fit_delay, w, model, jac):
    """Model curve and Jacobian, transposed (n_params, n_t), at theta; w (9, n_t) scratch."""
    if fit_delay:
        _shift(t, ca, theta[theta.shape[0] - 1], w[4], w[5])
        _model_jac_at(code, theta, t, w[4], w[5], True, w, model, jac)
    else:
        _model_jac_at(code, theta, t, ca, w[5], False, w, model, jac)


@njit(cache=True)
def _model_jac_seg(code, theta, t, ca, fit_delay, vec, seg, model, jac):
    """:func:`_model_jac` (``w = vec[:9]``), with the delayed AIF from a segment's basis.

    Between two kinks the delayed AIF is linear in the delay: with ``seg[0]`` set
    (:func:`use_segment`) and a delay other than the segment's lower end ``seg[1]`` it is
    ``vec[11] - (delay - seg[1]) vec[12]`` (its value at the lower end and its slope, which
    is constant there), one multiply-add a frame instead of :func:`_shift`'s search.
    """
    if fit_delay and seg[0] != 0.0:
        delay = theta[theta.shape[0] - 1]
        if delay != seg[1]:  # on the lower kink itself _shift's conventions apply
            cad = vec[4]
            base = vec[11]
            sl = vec[12]
            dd = delay - seg[1]
            for i in range(t.shape[0]):
                cad[i] = base[i] - dd * sl[i]
            _model_jac_at(code, theta, t, cad, sl, True, vec[:9], model, jac)
            return
    _model_jac(code, theta, t, ca, fit_delay, vec[:9], model, jac)


@njit(cache=True)
def segment_basis(t, ca, s_lo, s_hi, base, sl):
    """The delayed AIF at ``s_lo`` and its slope over the segment ``(s_lo, s_hi]``.

    ``s_lo`` and ``s_hi`` are neighbouring kinks (or a bound of the delay): the delayed
    AIF is linear in the delay between them, ``base - (delay - s_lo) sl``. Written into
    ``base`` and ``sl``.
    """
    mid = 0.5 * (s_lo + s_hi)
    _shift(t, ca, mid, base, sl)  # inside the segment: its slopes
    h = mid - s_lo
    for i in range(t.shape[0]):
        base[i] += h * sl[i]


@njit(cache=True)
def use_segment(base, sl, s_lo, ws):
    """Let :func:`_fit_one` take the delayed AIF for delays in ``(s_lo, s_hi]`` from a basis.

    ``base``, ``sl`` are the segment's :func:`segment_basis` (computed once, used by every
    polish in the segment; :func:`_model_jac_seg`). Undone by :func:`clear_segment`.
    """
    b = ws[0][11]
    s = ws[0][12]
    for i in range(b.shape[0]):
        b[i] = base[i]
        s[i] = sl[i]
    ws[6][0] = 1.0
    ws[6][1] = s_lo


@njit(cache=True)
def clear_segment(ws):
    """Undo :func:`use_segment`: every delay by :func:`_shift` again."""
    ws[6][0] = 0.0


@njit(cache=True)
def _model_jac_at(code, theta, t, cad, slope, fit_delay, w, model, jac):
    """:func:`_model_jac` from the (delayed) AIF ``cad`` and its slope (used with a delay)."""
    n = t.shape[0]
    f1 = w[0]
    g1 = w[1]
    f2 = w[2]
    g2 = w[3]
    s1 = w[6]  # convolutions of the AIF's slope: exact delay derivative of the sampled model
    s2 = w[7]
    di = theta.shape[0] - 1  # delay column when fitted
    if code <= 1:
        kt = theta[0]
        ve = theta[1]
        kep = kt / ve
        if fit_delay:
            _conv_fg_f(t, cad, slope, kep, f1, g1, s1)
        else:
            _conv_fg(t, cad, kep, f1, g1)
        vp = theta[2] if code == 1 else 0.0
        kt_ve = kt / ve
        kt_ve2 = kt_ve * kt_ve
        for i in range(n):
            model[i] = vp * cad[i] + kt * f1[i]
            jac[0, i] = f1[i] - kt_ve * g1[i]
            jac[1, i] = kt_ve2 * g1[i]
            if code == 1:
                jac[2, i] = cad[i]
            if fit_delay:
                jac[di, i] = -(kt * s1[i] + vp * slope[i])
    elif code == 2:
        kt = theta[0]
        vp = theta[1]
        _conv_fg(t, cad, 0.0, f1, g1)
        if fit_delay:
            _conv_f(t, slope, 0.0, s1)
        for i in range(n):
            model[i] = vp * cad[i] + kt * f1[i]
            jac[0, i] = f1[i]
            jac[1, i] = cad[i]
            if fit_delay:
                jac[di, i] = -(kt * s1[i] + vp * slope[i])
    elif code == 3:
        fp = theta[0]
        ps = theta[1]
        ve = theta[2]
        vp = theta[3]
        kp = (fp + ps) / vp
        ke = ps / ve
        s = kp + ke
        p = ke * fp / vp
        root = math.sqrt(max(s * s - 4.0 * p, 0.0))
        kplus = 0.5 * (s + root)
        kminus = p / kplus if kplus > 0 else 0.0
        dd = kplus - kminus
        vv = ve + vp
        nn = kplus * vv - fp
        am = kminus * nn / dd if dd > 0 else 0.0
        ap = fp - am
        _conv_fg(t, cad, kplus, f1, g1)
        _conv_fg(t, cad, kminus, f2, g2)
        if fit_delay:
            _conv_f(t, slope, kplus, s1)
            _conv_f(t, slope, kminus, s2)
        # partial derivatives of s and p with respect to (fp, ps, ve, vp)
        ds0 = 1.0 / vp
        ds1 = 1.0 / vp + 1.0 / ve
        ds2 = -ps / (ve * ve)
        ds3 = -(fp + ps) / (vp * vp)
        dp0 = ps / (ve * vp)
        dp1 = fp / (ve * vp)
        dp2 = -p / ve
        dp3 = -p / vp
        dkp = np.empty(4)
        dkm = np.empty(4)
        dam = np.empty(4)
        dsv = (ds0, ds1, ds2, ds3)
        dpv = (dp0, dp1, dp2, dp3)
        for q in range(4):
            droot = (s * dsv[q] - 2.0 * dpv[q]) / root if root > 0 else 0.0
            dkp[q] = 0.5 * (dsv[q] + droot)
            dkm[q] = (dpv[q] * kplus - p * dkp[q]) / (kplus * kplus) if kplus > 0 else 0.0
            dfp = 1.0 if q == 0 else 0.0
            dvv = 1.0 if q >= 2 else 0.0
            dnn = dkp[q] * vv + kplus * dvv - dfp
            ddd = dkp[q] - dkm[q]
            if dd > 0:
                dam[q] = (dkm[q] * nn + kminus * dnn) / dd - kminus * nn * ddd / (dd * dd)
            else:
                dam[q] = 0.0
        for i in range(n):
            model[i] = ap * f1[i] + am * f2[i]
            for q in range(4):
                dfp = 1.0 if q == 0 else 0.0
                jac[q, i] = (
                    (dfp - dam[q]) * f1[i]
                    - ap * g1[i] * dkp[q]
                    + dam[q] * f2[i]
                    - am * g2[i] * dkm[q]
                )
            if fit_delay:
                jac[di, i] = -(ap * s1[i] + am * s2[i])
    else:
        fp = theta[0]
        ps = theta[1]
        vp = theta[2]
        tot = fp + ps
        kp = tot / vp
        a1 = fp * fp / tot if tot > 0 else 0.0
        a2 = fp * ps / tot if tot > 0 else 0.0
        _conv_fg(t, cad, kp, f1, g1)
        _conv_fg(t, cad, 0.0, f2, g2)
        if fit_delay:
            _conv_f(t, slope, kp, s1)
            _conv_f(t, slope, 0.0, s2)
        t2 = tot * tot if tot > 0 else 1.0
        da1_fp = fp * (fp + 2.0 * ps) / t2
        da1_ps = -fp * fp / t2
        da2_fp = ps * ps / t2
        da2_ps = fp * fp / t2
        a1_vp = a1 / vp
        a1_vp_kp = a1_vp * kp
        for i in range(n):
            model[i] = a1 * f1[i] + a2 * f2[i]
            jac[0, i] = da1_fp * f1[i] - a1_vp * g1[i] + da2_fp * f2[i]
            jac[1, i] = da1_ps * f1[i] - a1_vp * g1[i] + da2_ps * f2[i]
            jac[2, i] = a1_vp_kp * g1[i]
            if fit_delay:
                jac[di, i] = -(a1 * s1[i] + a2 * s2[i])


@njit(cache=True)
def _solve_spd(a, b, out, lo, y):
    """Solve a small symmetric positive definite system by Cholesky; False if not SPD.

    ``lo`` (n, n) and ``y`` (n,) are scratch.
    """
    n = a.shape[0]
    for i in range(n):
        for j in range(i + 1):
            s = a[i, j]
            for k in range(j):
                s -= lo[i, k] * lo[j, k]
            if i == j:
                if s <= 0.0:
                    return False
                lo[i, i] = math.sqrt(s)
            else:
                lo[i, j] = s / lo[j, j]
    for i in range(n):
        s = b[i]
        for k in range(i):
            s -= lo[i, k] * y[k]
        y[i] = s / lo[i, i]
    for i in range(n - 1, -1, -1):
        s = y[i]
        for k in range(i + 1, n):
            s -= lo[k, i] * out[k]
        out[i] = s / lo[i, i]
    return True


@njit(cache=True, fastmath={"contract", "reassoc"})
def _sumsq(y, model):
    """Residual sum of squares ``sum (y - model)**2`` (summed in any order)."""
    s = 0.0
    for i in range(y.shape[0]):
        r = y[i] - model[i]
        s += r * r
    return s


@njit(cache=True, fastmath={"contract", "reassoc"})
def _normal(jac, model, y, jtj, jtr):
    """Normal matrix ``J^T J`` and gradient ``J^T r`` (r = y - model) of the current point.

    Summed in any order (vectorised).
    """
    p = jac.shape[0]
    n = jac.shape[1]
    for q in range(p):
        s = 0.0
        for i in range(n):
            s += jac[q, i] * (y[i] - model[i])
        jtr[q] = s
        for q2 in range(q + 1):
            s = 0.0
            for i in range(n):
                s += jac[q, i] * jac[q2, i]
            jtj[q, q2] = s
            jtj[q2, q] = s


@njit(cache=True)
def _free_set(theta, lo, hi, jtr, free):
    """Mark the parameters that may move: not at a bound the gradient pushes against.

    ``jtr`` is ``J^T r``, the direction in which the cost decreases. Returns the number free.
    """
    nf = 0
    for q in range(theta.shape[0]):
        pinned = (theta[q] <= lo[q] and jtr[q] <= 0.0) or (theta[q] >= hi[q] and jtr[q] >= 0.0)
        free[q] = not pinned
        if free[q]:
            nf += 1
    return nf


@njit(cache=True)
def _stationary(jtj, jtr, free, sse):
    """True where the projected gradient vanishes: every free column is orthogonal to r.

    Scale-free test ``|J_q . r| <= GTOL ||J_q|| ||r||`` for every free parameter q.
    """
    rnorm = math.sqrt(max(sse, 0.0))
    for q in range(jtr.shape[0]):
        if free[q] and abs(jtr[q]) > GTOL * math.sqrt(max(jtj[q, q], 0.0)) * rnorm:
            return False
    return True


@njit(cache=True)
def workspace(n, p):
    """Scratch arrays of :func:`_fit_one` for ``n`` frames and ``p`` parameters.

    Allocated once and reused for every voxel a thread fits (an allocation costs about
    as much as one model evaluation).
    """
    vec = np.empty((13, n))  # 0-8 model scratch, 9 model, 10 trial model, 11-12 segment
    jacs = np.empty((2, p, n))  # Jacobian (transposed) at the point, at the trial
    mats = np.empty((3, p, p))  # J^T J, damped system, Cholesky factor
    vecs = np.empty((6, p))  # J^T r, right-hand side, step, trial, point, solve scratch
    free = np.empty(p, dtype=np.bool_)
    idx = np.empty(p, dtype=np.int64)
    seg = np.zeros(2)  # segment basis in use (:func:`use_segment`), its lower delay
    return vec, jacs, mats, vecs, free, idx, seg


@njit(cache=True)
def _fit_one(code, t, ca, y, theta0, lo, hi, fit_delay, max_iter, theta_out, ws):
    """Fit one voxel from one start by active-set projected Levenberg-Marquardt.

    Each iteration pins the parameters that sit on a bound the gradient pushes against,
    solves the damped Gauss-Newton system ``(A + lam diag(A)) s = g`` on the free ones
    only (A, g the free block of ``J^T J``, ``J^T r``) and projects the trial point onto
    the box. The step on the free parameters is therefore not distorted by a bound that
    is active (the defect of clipping a full step), and for a large ``lam`` the projected
    step is a scaled projected-gradient step, which always descends. The fit stops at a
    point whose projected gradient vanishes (:data:`GTOL`), after a Gauss-Newton-like step
    (``lam < 1``) that lowered the cost by less than :data:`FTOL` relative, or when no
    step of any damping lowers the cost.

    ``ws`` is a :func:`workspace`; on return its ``jacs[0]`` and ``vec[9]`` hold the
    Jacobian and the model curve at the returned point.

    Returns ``(sse, n_accepted, converged)``: the residual sum of squares, the number of
    accepted steps and whether the fit ended at a stationary point (projected gradient or
    relative-reduction test), not by running out of damping or iterations.
    """
    p = theta0.shape[0]
    vec, jacs, mats, vecs, free, idx, seg = ws
    model = vec[9]
    model_n = vec[10]
    jac = jacs[0]
    jac_n = jacs[1]
    jtj = mats[0]
    a = mats[1]
    chol = mats[2]
    jtr = vecs[0]
    b = vecs[1]
    step = vecs[2]
    trial = vecs[3]
    theta = vecs[4]
    scratch = vecs[5]
    for q in range(p):
        theta[q] = min(max(theta0[q], lo[q]), hi[q])
    _model_jac_seg(code, theta, t, ca, fit_delay, vec, seg, model, jac)
    sse = _sumsq(y, model)
    lam = 1e-3
    nu = 2.0
    rho = 0.0
    accepted = 0
    converged = False
    if not math.isfinite(sse):
        for q in range(p):
            theta_out[q] = theta[q]
        return sse, 0, False
    for _ in range(max_iter):
        _normal(jac, model, y, jtj, jtr)
        nf = _free_set(theta, lo, hi, jtr, free)
        if nf == 0 or sse == 0.0 or _stationary(jtj, jtr, free, sse):
            converged = True
            break
        improved = False
        rel = 0.0
        # attempt 1 holds a fitted delay: the model has a kink in the delay wherever a
        # shifted frame meets an AIF sample (delay 0 among them), and there the one-sided
        # derivative can block every step of the others
        for attempt in range(2):
            if attempt == 1:
                if improved or not fit_delay or not free[p - 1] or nf < 2:
                    break
                free[p - 1] = False
                nf -= 1
                lam = 1e-3
                nu = 2.0
            k = 0
            dmax = 0.0
            for q in range(p):
                if free[q]:
                    idx[k] = q
                    k += 1
                    dmax = max(dmax, jtj[q, q])
            while lam < LAM_MAX:
                for r1 in range(nf):
                    qa = idx[r1]
                    for r2 in range(nf):
                        a[r1, r2] = jtj[qa, idx[r2]]
                    a[r1, r1] = jtj[qa, qa] + lam * max(jtj[qa, qa], 1e-12 * dmax) + 1e-300
                    b[r1] = jtr[qa]
                if not _solve_spd(a[:nf, :nf], b[:nf], step[:nf], chol, scratch):
                    lam *= 10.0
                    continue
                for q in range(p):
                    trial[q] = theta[q]
                for r1 in range(nf):
                    qa = idx[r1]
                    trial[qa] = min(max(theta[qa] + step[r1], lo[qa]), hi[qa])
                _model_jac_seg(code, trial, t, ca, fit_delay, vec, seg, model_n, jac_n)
                sse_n = _sumsq(y, model_n)
                if sse_n < sse and math.isfinite(sse_n):
                    rel = (sse - sse_n) / sse
                    # gain ratio: actual over predicted reduction 2 d.g - d.A d of the step d
                    pred = 0.0
                    for q in range(p):
                        dq = trial[q] - theta[q]
                        pred += 2.0 * dq * jtr[q]
                        for q2 in range(p):
                            pred -= dq * jtj[q, q2] * (trial[q2] - theta[q2])
                    rho = (sse - sse_n) / pred if pred > 0.0 else 0.0
                    for q in range(p):
                        theta[q] = trial[q]
                    _copy_point(model_n, jac_n, model, jac)
                    sse = sse_n
                    improved = True
                    accepted += 1
                    break
                lam *= nu
                nu *= 2.0
        if not improved:
            break
        small = lam < 1.0 and rel < FTOL
        # Nielsen's update: shrink the damping by up to 3x as the model predicts the gain
        c = 2.0 * min(max(rho, 0.0), 1.0) - 1.0
        lam = max(lam * max(1.0 / 3.0, 1.0 - c * c * c), 1e-12)
        nu = 2.0
        if small:
            converged = True
            break
    for q in range(p):
        theta_out[q] = theta[q]
    return sse, accepted, converged


@njit(cache=True, inline="always")
def _copy_point(model_src, jac_src, model, jac):
    """Copy a model curve and Jacobian (explicit loops: a slice copy costs 4x as much)."""
    for i in range(model.shape[0]):
        model[i] = model_src[i]
    for q in range(jac.shape[0]):
        for i in range(jac.shape[1]):
            jac[q, i] = jac_src[q, i]


@njit(cache=True)
def final_normal(ws, y, jtj_out):
    """``J^T J`` at the point :func:`_fit_one` returned (from its workspace) into jtj_out."""
    vec, jacs, mats, vecs, _, _, _ = ws
    _normal(jacs[0], vec[9], y, jtj_out, vecs[5])


@njit(cache=True)
def _fit_voxel(code, t, ca, y, starts, lo, hi, fit_delay, max_iter, out, jtj, ws, theta):
    """Fit one voxel from every start; keep the best.

    out: params..., sse, n_accepted, converged (1.0 or 0.0) of the best start; jtj: the
    normal matrix ``J^T J`` at the best start's solution.
    """
    p = lo.shape[0]
    best = np.inf
    out[p + 1] = 0.0
    out[p + 2] = 0.0
    for s in range(starts.shape[0]):
        sse, acc, conv = _fit_one(
            code, t, ca, y, starts[s], lo, hi, fit_delay, max_iter, theta, ws
        )
        if sse < best:
            best = sse
            for q in range(p):
                out[q] = theta[q]
            out[p + 1] = acc
            out[p + 2] = 1.0 if conv else 0.0
            final_normal(ws, y, jtj)
    out[p] = best


@njit(cache=True, nogil=True)
def fit_serial(code, t, ca, ys, starts, lo, hi, fit_delay, max_iter, out, jtj):
    """Fit every voxel (rows of ys; starts (n_vox, n_starts, p)) one after another.

    ``out`` is (n_vox, p + 3): the parameters, the residual sum of squares, the number of
    accepted steps and the converged flag of the best start; ``jtj`` (n_vox, p, p) the
    normal matrix at the solution. A row whose first value is NaN is skipped.
    """
    p = lo.shape[0]
    ws = workspace(t.shape[0], p)
    theta = np.empty(p)
    for v in range(ys.shape[0]):
        if out[v, 0] == out[v, 0]:  # NaN marks a voxel screened out as unfittable
            _fit_voxel(
                code, t, ca, ys[v], starts[v], lo, hi, fit_delay, max_iter, out[v], jtj[v],
                ws, theta,
            )  # fmt: skip


@njit(cache=True, parallel=True)
def fit_parallel(code, t, ca, ys, starts, lo, hi, fit_delay, max_iter, out, jtj, n_chunks):
    """As :func:`fit_serial`, voxels shared across numba's threads in ``n_chunks`` chunks."""
    p = lo.shape[0]
    n_vox = ys.shape[0]
    n_chunks = max(min(n_chunks, n_vox), 1)
    for c in prange(n_chunks):
        ws = workspace(t.shape[0], p)
        theta = np.empty(p)
        for v in range(c * n_vox // n_chunks, (c + 1) * n_vox // n_chunks):
            if out[v, 0] == out[v, 0]:
                _fit_voxel(
                    code, t, ca, ys[v], starts[v], lo, hi, fit_delay, max_iter, out[v],
                    jtj[v], ws, theta,
                )  # fmt: skip


@njit(cache=True)
def normal_matrices(code, t, ca, thetas, fit_delay, out):
    """``J^T J`` (n_vox, p, p) at each row of thetas (NaN rows are left untouched).

    One thread: one Jacobian per voxel costs little beside the fit itself.
    """
    n = t.shape[0]
    p = thetas.shape[1]
    w = np.empty((9, n))
    model = np.empty(n)
    jac = np.empty((p, n))
    for v in range(thetas.shape[0]):
        if thetas[v, 0] != thetas[v, 0]:
            continue
        _model_jac(code, thetas[v], t, ca, fit_delay, w, model, jac)
        for q in range(p):
            for q2 in range(q + 1):
                s = 0.0
                for i in range(n):
                    s += jac[q, i] * jac[q2, i]
                out[v, q, q2] = s
                out[v, q2, q] = s


@njit(cache=True)
def model_and_jacobian(code, theta, t, ca, fit_delay):
    """Model curve and Jacobian (n_t, n_params) at theta (tests of the derivatives)."""
    n = t.shape[0]
    p = theta.shape[0]
    w = np.empty((9, n))
    model = np.empty(n)
    jac = np.empty((p, n))
    _model_jac(code, theta, t, ca, fit_delay, w, model, jac)
    return model, jac.T.copy()
