"""The physical limit of precision: the Cramér-Rao bound of a case (issue 12, part 1).

The Fisher information of a tissue's kinetic parameters is computed from the **signal-level
forward model the simulator uses** (:func:`phantomdce.dro.simulate.simulate_case`): the
tissue curve of the model's impulse response convolved exactly with the case's true plasma
AIF on the ground-truth grid (:mod:`phantomdce.dro.truth`), turned into R1 by fast exchange
(``R1 = 1/T10 + r1 C``), into the SPGR signal of the dynamic frames (instant or
window-averaged, as the protocol says) and into the variable-flip-angle (VFA) images.

Noise: the Gaussian approximation of the Rician magnitude, with the case's SD in every
sample, as :mod:`phantomdce.noise` defines it: ``sigma = S_pre / snr`` for the dynamic
frames (``S_pre`` the noise-free pre-contrast dynamic signal, :data:`SNR_DEFINITION
<phantomdce.dro.simulate.SNR_DEFINITION>`; the receiver's one SD in every voxel when the
protocol states ``snr_t1_s``: :meth:`phantomdce.dro.protocol.Protocol.noise_sigma`) and
``sigma / sqrt(vfa_averages)`` for the VFA images (``sigma * vfa_sigma_ratio`` when a
scanner model sets that ratio). Samples are
independent, so the Fisher information is ``J^T J / sigma^2`` summed over series, ``J``
the Jacobian of the noise-free signals.

Nuisance parameters: the equilibrium signal M0 (one per series, or shared) and the native
T1 ``T10``. What the estimator is assumed to know exactly: the AIF (the true one, as a fit
with ``pipeline.aif = "true"``), the bolus arrival (no delay is fitted), the flip-angle scale
B1 (the protocol's, true, value), the relaxivity, TR and the flip angles. The bounds
(:data:`KINDS`):

``known``
    T10 and M0 known; the kinetic parameters from the dynamic series:
    ``Cov = I_kk^-1`` with ``I = J_k^T J_k / sigma^2``.
``baseline_m0``
    T10 known; the kinetic parameters and the dynamic M0 from the dynamic series (the
    baseline frames inform M0).
``two_step``
    T10 from the VFA images (with their own M0), then the dynamic fit of the kinetic
    parameters and M0 with T10 fixed at its estimate. With ``theta`` = (kinetic, M0), the
    dynamic Jacobian ``J_theta`` (n x p) and its T10 column ``j_T``, the linearised
    second-stage estimate is ``theta_hat - theta = (J_theta^T J_theta)^-1 J_theta^T
    (eps - j_T (T10_hat - T10))``; the VFA and dynamic noise are independent, so::

        Cov(theta_hat) = I_theta^-1 + g g^T Var(T10_hat),
        I_theta = J_theta^T J_theta / sigma^2,
        g = (J_theta^T J_theta)^-1 J_theta^T j_T   (d theta_hat / d T10, a sensitivity),
        Var(T10_hat) = [I_vfa^-1]_(T10,T10),  I_vfa = J_vfa^T J_vfa / sigma_vfa^2

    (``J_vfa`` with columns M0_vfa, T10). This is the asymptotic covariance of the two-step
    estimator whose stages are each efficient (maximum likelihood), not a bound on every
    estimator of the data: ``joint`` is that bound.
``joint``
    VFA and dynamic data together: kinetic parameters, T10, M0 of the dynamic series and a
    separate M0 of the VFA series; ``Cov = I^-1`` of the stacked Jacobian.
``joint_shared_m0``
    As ``joint`` with one M0 for both series: an assumption that holds only when the two
    series share coil, receiver gain, TR and voxel (the simulator makes them so).

Derivatives are by complex step (exact to rounding): the forward model of this module
(:class:`SignalModel`) runs in complex arithmetic with its own numba kernel, a copy of the
truth's exact piecewise-linear convolution (:mod:`phantomdce.kinetics`) that accepts
complex rates and amplitudes. A test checks the model against the simulator's noise-free
signal and the derivatives against central finite differences of the truth's own functions.

Derived parameters (``kep = Ktrans / ve``; the 2CXM/2CUM ``Ktrans = Fp PS / (Fp + PS)``,
Fp in /min) get their bound by the delta method from the covariance.

Units: every SD is in its parameter's package units (Ktrans, kep, ps in /min; fp in
mL/100mL/min; ve, vp 0-1; T10 in s).
"""

from __future__ import annotations

import cmath
import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numba
import numpy as np
import xarray as xr
from numpy.typing import ArrayLike, NDArray

from phantomdce.dro.config import ConfigError
from phantomdce.dro.protocol import PROTOCOL_FIELDS, Protocol
from phantomdce.dro.simulate import case_aif
from phantomdce.dro.truth import TRUTH_STEP_S, aif_on_grid, truth_grid, window_mean
from phantomdce.kinetics import FP_UNIT, PER_MIN, irf_terms
from phantomdce.params import MODELS, PARAMETERS
from phantomdce.signal import native_t1

__all__ = [
    "KINDS",
    "SignalModel",
    "covariance",
    "crlb",
    "crlb_case",
    "derived_parameters",
    "derived_sd",
    "protocol_from_attrs",
]

#: The bounds this module computes (see the module docstring).
KINDS = ("known", "baseline_m0", "two_step", "joint", "joint_shared_m0")
#: Default equilibrium signal of a tissue (a.u.), as in :meth:`TissueGrid.table
#: <phantomdce.dro.scenario.TissueGrid.table>`; the bounds do not depend on it (the noise SD
#: scales with M0).
DEFAULT_M0 = 1000.0
#: Imaginary step of the complex-step derivative, relative to ``max(|x|, 1)``.
COMPLEX_STEP = 1e-20
#: A Fisher matrix (scaled to unit diagonal) whose smallest eigenvalue is below this
#: fraction of its largest is singular: the data do not determine every parameter and the
#: bound is infinite.
SINGULAR_RCOND = 1e-13
#: Largest number of complex grid values held at once (rows x grid nodes).
_BATCH_ELEMENTS = 2_000_000
_SERIES_X = 1e-3  # the truth kernel's switch to the series form (phantomdce._kernels)


# ---------------------------------------------------------------------------------------------
# Complex forward model
# ---------------------------------------------------------------------------------------------


@numba.njit(cache=True, inline="always")
def _segment_weights(x):  # pragma: no cover - compiled
    """``(exp(-x), h, g)`` of a segment, ``x = k dt`` complex (the truth's formula)."""
    if x.real < _SERIES_X:
        e = cmath.exp(-x)
        h = 1.0 - x / 2.0 + x * x / 6.0 - x * x * x / 24.0
        g = 0.5 - x / 6.0 + x * x / 24.0 - x * x * x / 120.0
        return e, h, g
    c = math.cos(x.imag)
    s = math.sin(x.imag)
    # exp(-x) - 1 without cancellation in either part
    em1 = complex(math.expm1(-x.real) * c + (c - 1.0), -math.exp(-x.real) * s)
    return em1 + 1.0, -em1 / x, (x + em1) / (x * x)


@numba.njit(cache=True)
def _expconv_complex(t, ca, vp, amps, rates, idx, out):  # pragma: no cover - compiled
    """``vp ca + sum_q amps[q] (exp(-rates[q] t) * ca)`` at the nodes ``idx`` (sorted).

    The exact recursion of :func:`phantomdce._kernels.expconv_sum` for a piecewise-linear
    ``ca`` (real) with complex ``vp`` (n,), ``amps`` and ``rates`` (n, m) in /s; a
    zero-length segment is a jump. ``out`` (n, len(idx)) complex, written in place.
    """
    n = out.shape[0]
    n_t = t.shape[0]
    m = amps.shape[1]
    n_idx = idx.shape[0]
    f = np.zeros(m, dtype=np.complex128)
    e = np.empty(m, dtype=np.complex128)
    hh = np.empty(m, dtype=np.complex128)
    gg = np.empty(m, dtype=np.complex128)
    for j in range(n):
        for q in range(m):
            f[q] = 0.0
        k = 0
        while k < n_idx and idx[k] == 0:
            out[j, k] = vp[j] * ca[0]
            k += 1
        last_d = -1.0
        for i in range(n_t - 1):
            if k >= n_idx:
                break
            d = t[i + 1] - t[i]
            if d != last_d:
                for q in range(m):
                    e[q], hh[q], gg[q] = _segment_weights(rates[j, q] * d)
                last_d = d
            c0 = ca[i]
            c1 = ca[i + 1]
            acc = vp[j] * c1
            for q in range(m):
                f[q] = e[q] * f[q] + d * (c0 * (hh[q] - gg[q]) + c1 * gg[q])
                acc += amps[j, q] * f[q]
            while k < n_idx and idx[k] == i + 1:
                out[j, k] = acc
                k += 1
    return out


def _irf_complex(model: str, p: Mapping[str, NDArray]) -> tuple[NDArray, NDArray, NDArray]:
    """:func:`phantomdce.kinetics.irf_terms` in complex arithmetic (interior of the domain).

    ``p`` maps the model's parameters (package units) to complex arrays (n,). Returns the
    direct term (n,), amplitudes and rates (n, m) in /s.
    """
    zero = np.zeros_like(next(iter(p.values())))
    if model in ("tofts", "extended_tofts"):
        kt = p["Ktrans"] * PER_MIN
        vp = p["vp"] if model == "extended_tofts" else zero
        return vp, kt[:, None], (kt / p["ve"])[:, None]
    if model == "patlak":
        return p["vp"], (p["Ktrans"] * PER_MIN)[:, None], zero[:, None]
    fp = p["fp"] * FP_UNIT
    ps = p["ps"] * PER_MIN
    vp = p["vp"]
    kp = (fp + ps) / vp
    if model == "2cum":
        extraction = ps / (fp + ps)
        amps = np.stack([fp * (1.0 - extraction), fp * extraction], axis=-1)
        return zero, amps, np.stack([kp, zero], axis=-1)
    ve = p["ve"]
    ke = ps / ve
    kb = fp / vp
    s = kp + ke
    k_plus = 0.5 * (s + np.sqrt(s * s - 4.0 * ke * kb))
    k_minus = ke * kb / k_plus
    w_minus = k_minus * (k_plus * (vp + ve) / fp - 1.0) / (k_plus - k_minus)
    amps = np.stack([fp * (1.0 - w_minus), fp * w_minus], axis=-1)
    return zero, amps, np.stack([k_plus, k_minus], axis=-1)


def _spgr(r1: NDArray, m0: NDArray, fa_deg: ArrayLike, tr: float, b1: float) -> NDArray:
    """:func:`phantomdce.signal.spgr` for complex ``r1`` and ``m0`` (checked inputs)."""
    a = np.deg2rad(b1 * np.asarray(fa_deg, dtype=np.float64))
    e1 = np.exp(-tr * r1)
    return m0 * np.sin(a) * (1.0 - e1) / (1.0 - np.cos(a) * e1)


class SignalModel:
    """The simulator's noise-free signals of one protocol, in complex arithmetic.

    Parameters
    ----------
    protocol : Protocol
        The acquisition (its AIF, timing, sampling, flip angles, TR, B1, relaxivity).
    step : float, optional
        Grid spacing in s (default: the simulator's,
        :data:`phantomdce.dro.truth.TRUTH_STEP_S`).

    Notes
    -----
    The grid and the AIF are those of :func:`phantomdce.dro.simulate.simulate_case`
    (:func:`phantomdce.dro.truth.truth_grid` with the frame windows for ``"average"``
    sampling, :func:`phantomdce.dro.simulate.case_aif`), so for real parameters
    :meth:`dynamic` reproduces the simulator's noise-free ``signal`` to rounding.
    """

    def __init__(self, protocol: Protocol, *, step: float = TRUTH_STEP_S) -> None:
        if not isinstance(protocol, Protocol):
            raise TypeError(f"protocol={protocol!r}: expected a phantomdce Protocol")
        if not (math.isfinite(step) and step > 0):
            raise ValueError(f"step={step!r} s: expected a grid spacing > 0 s")
        self.protocol = protocol
        self.average = protocol.sampling == "average"
        self.grid = truth_grid(
            protocol.frame_times,
            bat=protocol.bolus_arrival,
            window=protocol.dt if self.average else 0.0,
            step=step,
        )
        self.ca_grid = np.ascontiguousarray(aif_on_grid(self.grid, case_aif(protocol)))
        if self.average:
            self._idx = np.arange(self.grid.t.size, dtype=np.int64)
        else:
            self._idx = np.ascontiguousarray(self.grid.frame_idx, dtype=np.int64)

    def concentration(self, model: str, params: Mapping[str, ArrayLike]) -> NDArray:
        """Tissue concentration (mM) at the nodes the signal needs, complex (n, n_nodes).

        The frame nodes for ``"instant"`` sampling, every grid node for ``"average"``.
        """
        names = MODELS[model].parameters
        p = {k: np.atleast_1d(np.asarray(params[k], dtype=np.complex128)) for k in names}
        p = dict(zip(names, np.broadcast_arrays(*p.values()), strict=True))
        vp, amps, rates = _irf_complex(model, p)
        out = np.empty((vp.size, self._idx.size), dtype=np.complex128)
        _expconv_complex(
            self.grid.t,
            self.ca_grid,
            np.ascontiguousarray(vp),
            np.ascontiguousarray(amps),
            np.ascontiguousarray(rates),
            self._idx,
            out,
        )
        return out

    def dynamic(
        self, model: str, params: Mapping[str, ArrayLike], *, t10: ArrayLike, m0: ArrayLike
    ) -> NDArray:
        """Noise-free dynamic signal at the frames, complex (n, n_frames), a.u.

        Parameters
        ----------
        model : str
            A key of :data:`phantomdce.params.MODELS`.
        params : mapping of str to array_like (n,) or scalar
            The model's parameters in package units (may be complex).
        t10 : array_like (n,) or scalar
            Native T1, s (may be complex).
        m0 : array_like (n,) or scalar
            Equilibrium signal, a.u. (may be complex).
        """
        pr = self.protocol
        n = np.broadcast_shapes(
            *(np.shape(params[k]) for k in MODELS[model].parameters), np.shape(t10), np.shape(m0)
        )
        n_rows = int(np.prod(n)) if n else 1
        t10_ = np.broadcast_to(np.asarray(t10, dtype=np.complex128), n).reshape(n_rows)
        m0_ = np.broadcast_to(np.asarray(m0, dtype=np.complex128), n).reshape(n_rows)
        full = {
            k: np.broadcast_to(np.asarray(params[k], dtype=np.complex128), n).reshape(n_rows)
            for k in MODELS[model].parameters
        }
        out = np.empty((n_rows, pr.n_frames), dtype=np.complex128)
        batch = max(1, _BATCH_ELEMENTS // self._idx.size)
        for a in range(0, n_rows, batch):
            b = min(n_rows, a + batch)
            c = self.concentration(model, {k: v[a:b] for k, v in full.items()})
            out[a:b] = self._frames(c, t10_[a:b, None], m0_[a:b, None])
        return out

    def _frames(self, c: NDArray, t10: NDArray, m0: NDArray, *, step: bool = False) -> NDArray:
        """Frame signals from the concentration at :meth:`concentration`'s nodes.

        ``step``: the imaginary parts are complex steps (below rounding of the real
        parts), so the signal is evaluated to first order in them in real arithmetic
        (``S(x + ih) = S(x) + i h S'(x)``, what complex arithmetic gives to rounding).
        """
        pr = self.protocol
        r1 = 1.0 / t10 + pr.relaxivity * c
        if step:
            a = np.deg2rad(pr.b1 * pr.fa)
            e1 = np.exp(-pr.tr * r1.real)
            den = 1.0 - np.cos(a) * e1
            f = np.sin(a) * (1.0 - e1) / den
            df = np.sin(a) * (1.0 - np.cos(a)) * pr.tr * e1 / den**2
            s = m0.real * f + 1j * (m0.real * df * r1.imag + f * m0.imag)
        else:
            s = _spgr(r1, m0, pr.fa, pr.tr, pr.b1)
        if self.average:
            s = window_mean(self.grid, s.real) + 1j * window_mean(self.grid, s.imag)
        return s

    def vfa(self, *, t10: ArrayLike, m0: ArrayLike) -> NDArray:
        """Noise-free VFA signals, complex (n, n_angles), a.u. (``t10`` in s)."""
        pr = self.protocol
        t10_ = np.atleast_1d(np.asarray(t10, dtype=np.complex128))[:, None]
        m0_ = np.atleast_1d(np.asarray(m0, dtype=np.complex128))[:, None]
        return _spgr(1.0 / t10_, m0_, np.asarray(pr.flip_angles), pr.tr, pr.b1)

    def pre_contrast(self, *, t10: ArrayLike, m0: ArrayLike) -> NDArray[np.float64]:
        """Noise-free pre-contrast dynamic signal (a.u.), the numerator of the SNR."""
        pr = self.protocol
        t10_ = np.asarray(t10, dtype=np.float64)
        return np.real(_spgr(1.0 / t10_, np.asarray(m0, dtype=np.float64), pr.fa, pr.tr, pr.b1))

    def jacobians(
        self, model: str, params: Mapping[str, ArrayLike], *, t10: ArrayLike, m0: ArrayLike
    ) -> tuple[NDArray[np.float64], NDArray[np.float64], list[str]]:
        """Complex-step Jacobians of the dynamic and VFA signals.

        Parameters
        ----------
        model, params, t10, m0
            As for :meth:`dynamic`, real; arrays of one tissue per element (n,).

        Returns
        -------
        jd : ndarray (n, n_frames, p + 2)
            d(dynamic signal)/d(parameter), a.u. per package unit, columns ``names``.
        jv : ndarray (n, n_angles, 2)
            d(VFA signal)/d(M0, T10) (the VFA series' own M0).
        names : list of str
            The model's parameters, then ``"m0"`` and ``"T10"``.
        """
        kin = list(MODELS[model].parameters)
        base = {k: np.atleast_1d(np.asarray(params[k], dtype=np.float64)) for k in kin}
        base["m0"] = np.atleast_1d(np.asarray(m0, dtype=np.float64))
        base["T10"] = np.atleast_1d(np.asarray(t10, dtype=np.float64))
        arrays = np.broadcast_arrays(*base.values())
        base = dict(zip(base, arrays, strict=True))
        n = arrays[0].size
        names = kin + ["m0", "T10"]
        q = len(names)
        steps = COMPLEX_STEP * np.maximum(np.abs(np.stack([base[k] for k in names], -1)), 1.0)
        p = len(kin)
        jd = np.empty((n, self.protocol.n_frames, q))
        batch = max(1, _BATCH_ELEMENTS // (q * self._idx.size))
        for a in range(0, n, batch):
            b = min(n, a + batch)
            m = b - a
            # one convolution per (tissue, perturbed kinetic parameter), tissue-major; its
            # real part is the unperturbed curve (the step is below rounding), which the
            # rows of the M0 and T10 steps reuse
            pert = {k: np.repeat(base[k][a:b].astype(np.complex128), p) for k in kin}
            for j, name in enumerate(kin):
                pert[name][j::p] += 1j * steps[a:b, j]
            c = self.concentration(model, pert).reshape(m, p, -1)
            c_all = np.concatenate([c, np.repeat(c[:, :1].real + 0j, 2, axis=1)], axis=1)
            m0_ = np.repeat(base["m0"][a:b, None].astype(np.complex128), q, axis=1)
            t10_ = np.repeat(base["T10"][a:b, None].astype(np.complex128), q, axis=1)
            m0_[:, p] += 1j * steps[a:b, p]
            t10_[:, p + 1] += 1j * steps[a:b, p + 1]
            s = self._frames(
                c_all.reshape(m * q, -1), t10_.reshape(-1, 1), m0_.reshape(-1, 1), step=True
            ).reshape(m, q, -1)
            jd[a:b] = np.transpose(s.imag, (0, 2, 1)) / steps[a:b, None, :]
        vq = np.repeat(base["m0"].astype(np.complex128), 2)
        tq = np.repeat(base["T10"].astype(np.complex128), 2)
        vq[0::2] += 1j * COMPLEX_STEP * np.maximum(np.abs(base["m0"]), 1.0)
        tq[1::2] += 1j * COMPLEX_STEP * np.maximum(np.abs(base["T10"]), 1.0)
        sv = self.vfa(t10=tq, m0=vq).reshape(n, 2, -1)
        jv = np.transpose(sv.imag, (0, 2, 1)) / steps[:, None, [q - 2, q - 1]]
        return jd, jv, names


# ---------------------------------------------------------------------------------------------
# Covariances and bounds
# ---------------------------------------------------------------------------------------------


def _inverse(info: NDArray[np.float64]) -> NDArray[np.float64]:
    """Inverse of each Fisher matrix (n, q, q); ``inf`` everywhere for a singular one."""
    d = np.sqrt(np.clip(np.einsum("nii->ni", info), 0.0, None))
    ok = np.all(d > 0.0, axis=1)
    d = np.where(d > 0.0, d, 1.0)
    corr = info / (d[:, :, None] * d[:, None, :])
    ev = np.linalg.eigvalsh(corr)
    ok &= ev[:, 0] > SINGULAR_RCOND * ev[:, -1]
    out = np.full(info.shape, np.inf)
    if ok.any():
        inv = np.linalg.inv(corr[ok])
        out[ok] = inv / (d[ok][:, :, None] * d[ok][:, None, :])
    return out


def covariance(
    jd: NDArray[np.float64],
    jv: NDArray[np.float64],
    *,
    sigma: ArrayLike,
    sigma_vfa: ArrayLike,
    kind: str,
) -> tuple[NDArray[np.float64], list[int]]:
    """Covariance bound of the parameters from the Jacobians (see the module docstring).

    Parameters
    ----------
    jd : ndarray (n, n_frames, p + 2)
        Dynamic Jacobian, columns (kinetic..., m0, T10) as :meth:`SignalModel.jacobians`.
    jv : ndarray (n, n_angles, 2)
        VFA Jacobian, columns (m0 of the VFA series, T10).
    sigma, sigma_vfa : array_like (n,) or scalar
        Noise SD of one dynamic sample and of one VFA sample, a.u. (> 0).
    kind : str
        One of :data:`KINDS`.

    Returns
    -------
    cov : ndarray (n, r, r)
        Covariance of the estimated columns of ``jd`` listed in ``columns`` (package
        units squared); ``inf`` where the Fisher matrix is singular.
    columns : list of int
        Indices into ``jd``'s columns of the rows of ``cov`` (kinetic, and T10 where it is
        estimated; the M0 nuisances are left out).
    """
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}: expected one of {list(KINDS)}")
    n, _, q = jd.shape
    p = q - 2
    w = 1.0 / np.broadcast_to(np.asarray(sigma, dtype=np.float64), (n,)) ** 2
    wv = 1.0 / np.broadcast_to(np.asarray(sigma_vfa, dtype=np.float64), (n,)) ** 2
    fish = lambda j, wt: np.einsum("nki,nkj->nij", j, j) * wt[:, None, None]  # noqa: E731
    kin = list(range(p))
    if kind == "known":
        return _inverse(fish(jd[:, :, :p], w)), kin
    if kind == "baseline_m0":
        return _inverse(fish(jd[:, :, : p + 1], w))[:, :p, :p], kin
    if kind == "two_step":
        a = jd[:, :, : p + 1]
        cov_a = _inverse(fish(a, w))
        var_t = _inverse(fish(jv, wv))[:, 1, 1]
        g = np.einsum("nij,nj->ni", cov_a, np.einsum("nki,nk->ni", a, jd[:, :, p + 1]) * w[:, None])
        cov = cov_a + var_t[:, None, None] * g[:, :, None] * g[:, None, :]
        out = np.empty((n, p + 1, p + 1))
        out[:, :p, :p] = cov[:, :p, :p]
        out[:, :p, p] = out[:, p, :p] = -var_t[:, None] * g[:, :p]
        out[:, p, p] = var_t
        return out, kin + [p + 1]
    n_f, n_a = jd.shape[1], jv.shape[1]
    if kind == "joint":  # columns: kinetic, m0 (dynamic), T10, m0 (VFA)
        j = np.zeros((n, n_f + n_a, q + 1))
        j[:, :n_f, :q] = jd * np.sqrt(w)[:, None, None]
        j[:, n_f:, q - 1] = jv[:, :, 1] * np.sqrt(wv)[:, None]
        j[:, n_f:, q] = jv[:, :, 0] * np.sqrt(wv)[:, None]
    else:  # joint_shared_m0: columns kinetic, m0 (both series), T10
        j = np.zeros((n, n_f + n_a, q))
        j[:, :n_f, :] = jd * np.sqrt(w)[:, None, None]
        j[:, n_f:, q - 2 :] = jv * np.sqrt(wv)[:, None, None]
    cov = _inverse(fish(j, np.ones(n)))
    keep = kin + [q - 1]
    return cov[:, keep][:, :, keep], keep


def derived_parameters(model: str) -> dict[str, Any]:
    """Parameters implied by a model's own, as functions of them (package units).

    ``kep = Ktrans / ve`` (/min) for the Tofts models and the 2CXM; ``Ktrans = Fp PS /
    (Fp + PS)`` (/min, Fp converted to /min) for the 2CXM and 2CUM, as the simulator
    stores them. Each function takes a mapping of (complex-capable) arrays.
    """
    out: dict[str, Any] = {}

    def kt_2c(p: Mapping[str, Any]) -> Any:
        fp = p["fp"] / 100.0
        return fp * p["ps"] / (fp + p["ps"])

    if model in ("tofts", "extended_tofts"):
        out["kep"] = lambda p: p["Ktrans"] / p["ve"]
    elif model in ("2cxm", "2cum"):
        out["Ktrans"] = kt_2c
        if model == "2cxm":
            out["kep"] = lambda p: kt_2c(p) / p["ve"]
    return out


def derived_sd(
    model: str, base: Mapping[str, NDArray], cov_kin: NDArray[np.float64]
) -> dict[str, NDArray[np.float64]]:
    """SD of each derived parameter (kep, ...) by the delta method.

    Parameters
    ----------
    model : str
        Model name (:data:`phantomdce.params.MODELS`).
    base : mapping
        The model's parameters (arrays of n tissues, package units).
    cov_kin : ndarray (n, p, p)
        Covariance of the model's parameters, in their order in ``MODELS[model]``.

    Returns
    -------
    dict
        Derived parameter name (:func:`derived_parameters`) -> SD (n,), in its units; the
        gradients are complex-step derivatives; inf where the variance is not finite.
    """
    names = list(MODELS[model].parameters)
    out = {}
    for dname, func in derived_parameters(model).items():
        grad = np.empty((cov_kin.shape[0], len(names)))
        for i, name in enumerate(names):
            pert = {k: np.asarray(v, dtype=np.complex128) for k, v in base.items()}
            step = COMPLEX_STEP * np.maximum(np.abs(base[name]), 1.0)
            pert[name] = pert[name] + 1j * step
            grad[:, i] = np.imag(func(pert)) / step
        with np.errstate(invalid="ignore"):
            var = np.einsum("ni,nij,nj->n", grad, cov_kin, grad)
        out[dname] = np.sqrt(np.where(np.isnan(var), np.inf, var))
    return out


def protocol_from_attrs(attrs: Mapping[str, Any]) -> Protocol:
    """The protocol of a simulated case from its attributes (``Protocol.as_attrs`` form).

    Keys that are not protocol keys are ignored; ``"none"`` is None; the stored ``bat`` and
    ``duration`` are the resolved ones, so ``post_bolus_s`` is not re-applied.

    Raises
    ------
    phantomdce.dro.config.ConfigError
        A missing or invalid protocol value, naming ``case.attrs.<key>``.
    """
    values = {}
    for key in PROTOCOL_FIELDS:
        if key == "post_bolus_s" or key not in attrs:
            continue
        v = attrs[key]
        if isinstance(v, str) and v == "none":
            v = None
        if key == "flip_angles":
            v = tuple(float(a) for a in np.atleast_1d(v))
        elif isinstance(v, np.generic):
            v = v.item()
        values[key] = v
    missing = [k for k in ("dt", "duration", "fa", "tr", "flip_angles") if k not in values]
    if missing:
        raise ConfigError(
            f"case.attrs has no {missing}: expected the protocol attributes of a simulated"
            " case (Protocol.as_attrs)"
        )
    return Protocol.from_mapping(values, base=Protocol(), path="case.attrs")


def _as_protocol(protocol: Protocol | Mapping[str, Any]) -> Protocol:
    if isinstance(protocol, Protocol):
        return protocol
    if isinstance(protocol, Mapping):
        return protocol_from_attrs(protocol)
    raise TypeError(f"protocol={protocol!r}: expected a Protocol or a mapping of case attributes")


def _bound_arrays(
    sm: SignalModel,
    model: str,
    params: Mapping[str, NDArray],
    *,
    t10: NDArray,
    m0: NDArray,
    snr: float,
    kinds: tuple[str, ...],
) -> dict[str, dict[str, NDArray[np.float64]]]:
    """SD bound per kind and parameter for tissues given as 1-D arrays (n,).

    The Jacobians are computed once for all ``kinds``.
    """
    jac = sm.jacobians(model, params, t10=t10, m0=m0) if np.isfinite(snr) else None
    return {
        kind: _bound_one(sm, model, params, t10=t10, m0=m0, snr=snr, kind=kind, jac=jac)
        for kind in kinds
    }


def _bound_one(
    sm: SignalModel,
    model: str,
    params: Mapping[str, NDArray],
    *,
    t10: NDArray,
    m0: NDArray,
    snr: float,
    kind: str,
    jac: tuple[NDArray, NDArray, list[str]] | None,
) -> dict[str, NDArray[np.float64]]:
    """SD bound per parameter of one kind, from the Jacobians (None: noise free)."""
    names = list(MODELS[model].parameters)
    n = t10.size
    if jac is None:
        zero = np.zeros(n)
        out = {k: zero.copy() for k in names}
        out.update({k: zero.copy() for k in derived_parameters(model)})
        if kind not in ("known", "baseline_m0"):
            out["T10"] = zero.copy()
        return out
    jd, jv, _ = jac
    sigma = dataclasses.replace(sm.protocol, snr=snr).noise_sigma(t10, m0)
    sigma_vfa = sm.protocol.vfa_noise_sigma(sigma)
    cov, columns = covariance(jd, jv, sigma=sigma, sigma_vfa=sigma_vfa, kind=kind)
    p = len(names)
    with np.errstate(invalid="ignore"):
        sd = np.sqrt(np.einsum("nii->ni", cov))
    sd = np.where(np.isnan(sd), np.inf, sd)  # a singular matrix: not determined
    out = {name: sd[:, i] for i, name in enumerate(names)}
    if p + 1 in columns:  # T10 is estimated
        out["T10"] = sd[:, columns.index(p + 1)]
    out.update(derived_sd(model, params, cov[:, :p, :p]))
    return out


def _check_params(model: str, params: Mapping[str, ArrayLike]) -> dict[str, NDArray]:
    if model not in MODELS:
        raise ValueError(f"model={model!r}: expected one of {sorted(MODELS)}")
    needed = list(MODELS[model].parameters)
    missing = sorted(set(needed) - set(params))
    extra = sorted(set(params) - set(needed))
    if missing or extra:
        raise ValueError(
            f"params for model {model!r}: expected {needed}; missing {missing}, unexpected {extra}"
        )
    out = {}
    for k in needed:
        try:
            out[k] = np.asarray(params[k], dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(
                f"params[{k!r}] = {params[k]!r}: expected a number in {PARAMETERS[k].units}"
            ) from None
    irf_terms(model, **out)  # the truth's own checks of range (names the parameter)
    if model in ("2cxm", "2cum") and np.any(out["fp"] <= 0):
        bad = float(out["fp"][out["fp"] <= 0].flat[0])
        raise ValueError(f"params['fp'] = {bad!r}: expected fp > 0 mL/100mL/min for a bound")
    return out


def crlb(
    protocol: Protocol | Mapping[str, Any],
    model: str,
    params: Mapping[str, ArrayLike],
    *,
    t10: ArrayLike | None = None,
    m0: ArrayLike = DEFAULT_M0,
    snr: float | None = None,
    kind: str | Sequence[str] = "two_step",
    grid_step: float = TRUTH_STEP_S,
) -> dict[str, Any]:
    """The Cramér-Rao bound on the SD of each parameter of a tissue under a protocol.

    Parameters
    ----------
    protocol : Protocol or mapping
        The acquisition, or a simulated case's attributes (:func:`protocol_from_attrs`).
    model : str
        A key of :data:`phantomdce.params.MODELS`.
    params : mapping of str to array_like
        The model's true parameters in package units (``Ktrans``, ``ps`` /min; ``fp``
        mL/100mL/min; ``ve``, ``vp`` 0-1); arrays broadcast (one tissue per element).
    t10 : array_like, optional
        True native T1, s (default: tumour at the protocol's field, as the scenarios use).
    m0 : array_like, optional
        Equilibrium signal, a.u. (the bound does not depend on it).
    snr : float, optional
        SNR as :mod:`phantomdce.noise` defines it (default: the protocol's ``snr``).
    kind : str or sequence of str, optional
        One of :data:`KINDS` (default ``"two_step"``, the route of the recommendations), or
        several: the Jacobians are then computed once for all of them.
    grid_step : float, optional
        Spacing (s) of the grid of the signal model's convolution (:class:`SignalModel`);
        the default is the simulator's own grid. A coarser grid is faster (0.1 s: ten
        times) and changes the bound by little (0.1 s: below 1e-4 relative over the
        head-and-neck tissue grid, every kind, dt 1-15 s, instant and averaged sampling).

    Returns
    -------
    dict of str to float or ndarray
        SD bound in package units for each model parameter, each derived parameter
        (:func:`derived_parameters`) and ``T10`` (s) where the kind estimates it. Floats
        for scalar inputs, arrays of the broadcast shape otherwise; ``inf`` where the data
        do not determine the parameters. For a sequence of kinds, one such mapping per kind
        (keyed by the kind).

    Raises
    ------
    ValueError
        An unknown model or kind, missing/unexpected or out-of-range parameters, a
        non-positive SNR, T10 or M0.

    Examples
    --------
    >>> sd = crlb(Protocol(), "extended_tofts", {"Ktrans": 0.2, "ve": 0.25, "vp": 0.05},
    ...           t10=1.5, snr=20.0, kind="known")
    >>> round(100 * sd["Ktrans"] / 0.2, 2)  # CV bound, %
    1.65
    """
    pr = _as_protocol(protocol)
    kinds = (kind,) if isinstance(kind, str) else tuple(kind)
    for k in kinds:
        if k not in KINDS:
            raise ValueError(f"kind={k!r}: expected one of {list(KINDS)}")
    p = _check_params(model, params)
    snr_ = float(pr.snr if snr is None else snr)
    if not snr_ > 0:
        raise ValueError(f"snr={snr!r}: expected an SNR > 0 (or inf)")
    t10_ = np.asarray(native_t1("tumour", pr.field_strength) if t10 is None else t10, float)
    m0_ = np.asarray(m0, dtype=np.float64)
    for name, arr, unit in (("t10", t10_, " s"), ("m0", m0_, " a.u.")):
        bad = ~(np.isfinite(arr) & (arr > 0))
        if np.any(bad):
            raise ValueError(f"{name}={float(arr[bad].flat[0])!r}{unit}: expected a value > 0")
    shape = np.broadcast_shapes(*(v.shape for v in p.values()), t10_.shape, m0_.shape)
    flat = lambda a: np.broadcast_to(a, shape).reshape(-1)  # noqa: E731
    out = _bound_arrays(
        SignalModel(pr, step=grid_step),
        model,
        {k: flat(v) for k, v in p.items()},
        t10=flat(t10_),
        m0=flat(m0_),
        snr=snr_,
        kinds=kinds,
    )
    if shape == ():
        out = {c: {k: float(v[0]) for k, v in sd.items()} for c, sd in out.items()}
    else:
        out = {c: {k: v.reshape(shape) for k, v in sd.items()} for c, sd in out.items()}
    return out[kind] if isinstance(kind, str) else out


def crlb_case(case: xr.Dataset, *, kind: str = "two_step", snr: float | None = None) -> xr.Dataset:
    """The bound of every voxel of a simulated case, at its true parameters.

    Parameters
    ----------
    case : xarray.Dataset
        What :func:`phantomdce.dro.simulate.simulate_case` returns (truth variables of the
        model's parameters, ``T10``, ``m0`` per voxel; protocol and ``model`` in attrs).
    kind : str, optional
        One of :data:`KINDS`.
    snr : float, optional
        Override the case's SNR.

    Returns
    -------
    xarray.Dataset
        Dimension ``voxel``: one variable per parameter (the model's, the derived ones and
        ``T10`` where estimated) holding the SD bound in its units; the bound is computed
        once per distinct tissue. Attributes ``kind``, ``snr`` and ``model``.
    """
    if "model" not in case.attrs:
        raise ValueError("case.attrs has no 'model': expected a case made by simulate_case")
    model = str(case.attrs["model"])
    if model not in MODELS:
        raise ValueError(f"case.attrs.model = {model!r}: expected one of {sorted(MODELS)}")
    names = list(MODELS[model].parameters)
    for name in (*names, "T10", "m0"):
        if name not in case:
            raise ValueError(f"case has no truth variable {name!r}: expected a simulated case")
    pr = protocol_from_attrs(case.attrs)
    rows = np.stack(
        [np.asarray(case[k].values, dtype=np.float64) for k in (*names, "T10", "m0")], axis=1
    )
    uniq, inverse = np.unique(rows, axis=0, return_inverse=True)
    inverse = np.asarray(inverse).reshape(-1)
    sd = crlb(
        pr,
        model,
        {k: uniq[:, i] for i, k in enumerate(names)},
        t10=uniq[:, -2],
        m0=uniq[:, -1],
        snr=snr,
        kind=kind,
    )
    units = {**{k: PARAMETERS[k].units for k in PARAMETERS}}
    data = {
        k: (
            "voxel",
            np.asarray(v)[inverse],
            {
                "units": units[k],
                "long_name": f"Cramer-Rao bound on the SD of {k} ({kind})",
            },
        )
        for k, v in sd.items()
    }
    coords = {"voxel": case["voxel"].values} if "voxel" in case.coords else {}
    snr_used = float(pr.snr if snr is None else snr)
    return xr.Dataset(data, coords=coords, attrs={"kind": kind, "snr": snr_used, "model": model})
