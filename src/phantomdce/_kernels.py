"""Numba kernels behind :mod:`phantomdce.kinetics` (private).

The core operation is the convolution of a piecewise-linear input with a sum of
decaying exponentials, evaluated exactly by recursion over the input's segments.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

_SERIES_X = 1e-3


@njit(cache=True, inline="always")
def _segment_weights(x: float) -> tuple[float, float, float]:
    """Return ``(exp(-x), h(x), g(x))`` for a segment with ``x = k * dt``.

    For an input linear from ``c0`` to ``c1`` over a segment of length ``dt``::

        F1 = exp(-x) * F0 + dt * (c0 * (h - g) + c1 * g)

    with ``h = (1 - exp(-x)) / x`` and ``g = (x - 1 + exp(-x)) / x**2``.
    """
    if x < _SERIES_X:
        e = math.exp(-x)
        h = 1.0 - x / 2.0 + x * x / 6.0 - x * x * x / 24.0
        g = 0.5 - x / 6.0 + x * x / 24.0 - x * x * x / 120.0
        return e, h, g
    em1 = math.expm1(-x)
    return em1 + 1.0, -em1 / x, (x + em1) / (x * x)


@njit(cache=True)
def expconv_sum(t, ca, vp, amps, rates, out):
    """Exact response of ``vp*ca + sum_m amps[m] * (exp(-rates[m] t) * ca)``.

    Parameters
    ----------
    t : (n_t,) float64, s, non-decreasing (a zero-length segment is a jump).
    ca : (n_ca, n_t) float64, mM; ``n_ca`` is 1 (shared input) or ``n``.
    vp : (n,) float64, dimensionless coefficient of the direct term.
    amps : (n, m) float64, /s.
    rates : (n, m) float64, /s, >= 0 (0 gives the running integral).
    out : (n, n_t) float64, written in place, mM.

    """
    n = out.shape[0]
    n_t = t.shape[0]
    m = amps.shape[1]
    shared = ca.shape[0] == 1
    f = np.zeros(m)
    e = np.empty(m)
    hh = np.empty(m)
    gg = np.empty(m)
    for j in range(n):
        row = 0 if shared else j
        for q in range(m):
            f[q] = 0.0
        out[j, 0] = vp[j] * ca[row, 0]
        last_d = -1.0
        for i in range(n_t - 1):
            d = t[i + 1] - t[i]
            if d != last_d:
                for q in range(m):
                    e[q], hh[q], gg[q] = _segment_weights(rates[j, q] * d)
                last_d = d
            c0 = ca[row, i]
            c1 = ca[row, i + 1]
            acc = vp[j] * c1
            for q in range(m):
                f[q] = e[q] * f[q] + d * (c0 * (hh[q] - gg[q]) + c1 * gg[q])
                acc += amps[j, q] * f[q]
            out[j, i + 1] = acc
    return out
