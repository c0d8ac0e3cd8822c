"""Joint signal-level fitter: VFA images and dynamic series fitted together (issue 12, part 2).

``nlls_<model>_joint`` (input ``"signal"``) estimates, per voxel, the kinetic parameters, the
native T1 ``T10`` and the equilibrium signal of each series by nonlinear least squares on
the magnitudes themselves::

    dynamic frames  S_k = spgr(1/T10 + r1 C(t_k; kinetics), fa, TR, M0_dyn, b1)
    VFA images      V_j = spgr(1/T10, flip_angles[j], TR, M0_vfa, b1)

with ``C`` the model's tissue curve for the fitter's AIF ``ca`` (linear between frames,
exact convolution: :mod:`phantomdce.kinetics`) and ``b1`` the analyst's ``assumed_b1``. The
VFA residuals are weighted by ``sqrt(vfa_averages)`` (their noise SD is the dynamic frames'
SD / sqrt(vfa_averages), :data:`phantomdce.dro.simulate.SNR_DEFINITION`), so the fit is
the maximum-likelihood estimate under Gaussian noise. This is the estimator the ``joint``
bound of :mod:`phantomdce.precision` describes; the two-step route (T1 map first, then the
concentration fit with T1 fixed) is the ``two_step`` bound.

``nlls_<model>_joint_shared_m0`` uses one M0 for both series. **Assumption**: the VFA
images and the dynamic frames are acquired with the same coil, receiver gain, TR and voxel,
so that their equilibrium signal is the same (``M0_vfa = M0_dyn``); it holds for the
simulator's DROs and for a site that acquires both series in one session without
re-tuning the receiver, and it biases every parameter where it does not hold.

Starting values are the two-step estimates (nonlinear VFA T1 and M0, concentration from the
mean baseline signal, :func:`phantomdce.fit.nlls.nlls` of the concentration), with fixed
fallbacks where those are undefined. The fit is a batched, bound-projected
Levenberg-Marquardt over every voxel at once, with central-difference derivatives of the
tissue curve and analytic derivatives of the SPGR equation.

``success`` follows :mod:`phantomdce.fit.base`: a voxel fails where it cannot be fitted
(non-finite or non-positive signals), where the column-scaled normal matrix at the solution
has a condition number above :data:`~phantomdce.fit._common.COND_MAX`, where the dynamic
series is not explained better than a constant signal (F-test,
:data:`~phantomdce.fit._common.F_ALPHA`), where T10 or a kinetic parameter ends on a bound
of the search, or where no step was accepted from a start that was not already stationary;
an estimate at a limit where the model degenerates is flagged ``at_limit_<param>``
(:data:`phantomdce.fit.nlls.LIMITS`). The result also holds the joint ``T10`` estimate (s).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

import phantomdce
from phantomdce.fit._common import (
    COND_MAX,
    beats_no_contrast,
    condition_numbers,
    result_dataset,
)
from phantomdce.fit.base import undetermined_at_limit
from phantomdce.fit.nlls import BOUNDS, LIMITS, at_limits, at_search_bound, nlls
from phantomdce.fit.t1 import vfa_t1_nonlinear
from phantomdce.kinetics import MODEL_FUNCTIONS
from phantomdce.params import MODELS
from phantomdce.signal import concentration_from_signal

__all__ = ["JointFitter", "JOINT_MODELS", "T10_BOUNDS", "joint_fitters"]

#: Models the joint fitter is offered for (one-compartment-exchange family).
JOINT_MODELS = ("tofts", "extended_tofts", "patlak")
#: Search bounds of the joint T10, s.
T10_BOUNDS = (0.05, 10.0)
#: Fallback kinetic starts (package units).
_FALLBACK = {"Ktrans": 0.1, "ve": 0.2, "vp": 0.02}
#: Relative central-difference step of the tissue-curve derivatives.
_FD_STEP = 1e-6
#: Relative cost change below which a voxel has converged.
_FTOL = 1e-12


def _spgr_parts(r1: np.ndarray, fa_rad: np.ndarray, tr: float) -> tuple[np.ndarray, np.ndarray]:
    """SPGR signal per unit M0 and its derivative with respect to R1 (per /s)."""
    e = np.exp(-tr * r1)
    c = np.cos(fa_rad)
    den = 1.0 - c * e
    f = np.sin(fa_rad) * (1.0 - e) / den
    df = np.sin(fa_rad) * (1.0 - c) * tr * e / den**2
    return f, df


def _vfa_weight(attrs: Mapping[str, Any]) -> float:
    """Weight of the VFA residuals: dynamic noise SD / VFA noise SD.

    ``1 / vfa_sigma_ratio`` when the case states the ratio (a scanner model sets it), else
    ``sqrt(vfa_averages)``.
    """
    ratio = attrs.get("vfa_sigma_ratio")
    if ratio is None or ratio == "none":
        return float(np.sqrt(float(attrs.get("vfa_averages", 1))))
    return 1.0 / float(ratio)


@dataclass(frozen=True)
class JointFitter:
    """Joint VFA + dynamic signal fitter (see the module docstring).

    Parameters
    ----------
    model : str
        One of :data:`JOINT_MODELS`.
    shared_m0 : bool, optional
        One M0 for both series (an assumption on the acquisition; see the module docstring).
    max_iter : int, optional
        Levenberg-Marquardt iterations.
    """

    model: str = "extended_tofts"
    shared_m0: bool = False
    max_iter: int = 200
    input: str = "signal"
    method: str = "nlls"

    def __post_init__(self) -> None:
        if self.model not in JOINT_MODELS:
            raise ValueError(f"model={self.model!r}: expected one of {list(JOINT_MODELS)}")

    @property
    def name(self) -> str:
        """Registry name, ``nlls_<model>_joint`` (``_joint_shared_m0`` with one M0)."""
        return f"nlls_{self.model}_joint" + ("_shared_m0" if self.shared_m0 else "")

    @property
    def version(self) -> str:
        """The phantomdce version."""
        return phantomdce.__version__

    # -- model ----------------------------------------------------------------------------

    def _curves(self, t, ca, kin: np.ndarray) -> np.ndarray:
        names = [n.lower() if n == "Ktrans" else n for n in MODELS[self.model].parameters]
        return MODEL_FUNCTIONS[self.model](t, ca, **{n: kin[:, i] for i, n in enumerate(names)})

    def _residuals(self, x, t, ca, y, v, const):
        """Weighted residuals (n, F + A) of the parameter rows ``x`` (package units)."""
        p = len(MODELS[self.model].parameters)
        c = self._curves(t, ca, x[:, :p])
        r10 = 1.0 / x[:, p]
        f, _ = _spgr_parts(r10[:, None] + const["r1"] * c, const["fa"], const["tr"])
        fv, _ = _spgr_parts(r10[:, None], const["fas"], const["tr"])
        m_d = x[:, p + 1] * const["m0_scale"]
        m_v = (x[:, p + 1] if self.shared_m0 else x[:, p + 2]) * const["m0_scale"]
        rd = m_d[:, None] * f - y
        rv = (m_v[:, None] * fv - v) * const["w_vfa"]
        return np.concatenate([rd, rv], axis=1)

    def _jacobian(self, x, t, ca, const):
        """Jacobian (n, F + A, q) of the weighted residuals."""
        p = len(MODELS[self.model].parameters)
        n = x.shape[0]
        c = self._curves(t, ca, x[:, :p])
        r10 = 1.0 / x[:, p]
        r1 = r10[:, None] + const["r1"] * c
        f, df = _spgr_parts(r1, const["fa"], const["tr"])
        fv, dfv = _spgr_parts(r10[:, None], const["fas"], const["tr"])
        m_d = x[:, p + 1] * const["m0_scale"]
        m_v = (x[:, p + 1] if self.shared_m0 else x[:, p + 2]) * const["m0_scale"]
        n_f, n_a = f.shape[1], fv.shape[1]
        q = x.shape[1]
        jac = np.zeros((n, n_f + n_a, q))
        for i in range(p):
            h = _FD_STEP * np.maximum(np.abs(x[:, i]), 1e-3)
            up, down = x[:, :p].copy(), x[:, :p].copy()
            up[:, i] += h
            down[:, i] = np.maximum(down[:, i] - h, 0.0)  # the models refuse < 0
            dc = (self._curves(t, ca, up) - self._curves(t, ca, down)) / (up[:, i] - down[:, i])[
                :, None
            ]
            jac[:, :n_f, i] = m_d[:, None] * df * const["r1"] * dc
        dr10 = -(r10**2)  # d(1/T10)/dT10
        jac[:, :n_f, p] = m_d[:, None] * df * dr10[:, None]
        jac[:, n_f:, p] = m_v[:, None] * dfv * dr10[:, None] * const["w_vfa"]
        jac[:, :n_f, p + 1] = f * const["m0_scale"][:, None]
        vfa_col = p + 1 if self.shared_m0 else p + 2
        jac[:, n_f:, vfa_col] = fv * const["m0_scale"][:, None] * const["w_vfa"]
        return jac

    # -- fit --------------------------------------------------------------------------------

    def _starts(self, t, ca, y, v, flip_angles, attrs, b1) -> np.ndarray:
        """Two-step starting values (package units; M0 relative to its scale)."""
        names = MODELS[self.model].parameters
        t10, m0v = vfa_t1_nonlinear(v, flip_angles, tr=float(attrs["tr"]), b1=b1)
        t10 = np.clip(np.nan_to_num(t10, nan=1.0), *T10_BOUNDS)
        nb = int(attrs["n_baseline"])
        s_pre = y[:, :nb].mean(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            ct = concentration_from_signal(
                y,
                s_pre[:, None],
                r10=(1.0 / t10)[:, None],
                fa=float(attrs["fa"]),
                tr=float(attrs["tr"]),
                r1_relaxivity=float(attrs["r1"]),
                b1=b1,
            )
        ct = np.where(np.isfinite(ct), ct, 0.0)
        est, _ = nlls(t, ct, ca, model=self.model)
        kin = np.empty((y.shape[0], len(names)))
        for i, name in enumerate(names):
            lo, hi = BOUNDS[name]
            kin[:, i] = np.clip(np.nan_to_num(est[name], nan=_FALLBACK[name]), lo, hi)
        return kin, t10, s_pre, m0v

    def fit(self, data: xr.Dataset) -> xr.Dataset:
        """Fit every voxel of one case (see :mod:`phantomdce.fit.base`)."""
        for name in ("signal", "vfa_signal", "ca"):
            if name not in data:
                raise ValueError(
                    f"input dataset has no {name!r} variable: the joint fitter needs the"
                    " dynamic signal, the VFA signals (with flip_angle) and the plasma AIF ca"
                )
        attrs = data.attrs
        for key in ("fa", "tr", "r1", "n_baseline"):
            if key not in attrs:
                raise ValueError(f"input dataset has no attribute {key!r} (acquisition setting)")
        t = np.asarray(data["time"].values, dtype=np.float64)
        ca = np.asarray(data["ca"].values, dtype=np.float64)
        y = np.asarray(data["signal"].transpose("voxel", "time").values, dtype=np.float64)
        v = np.asarray(data["vfa_signal"].transpose("voxel", "flip_angle").values, dtype=np.float64)
        flip_angles = np.asarray(data["flip_angle"].values, dtype=np.float64)
        b1 = float(attrs.get("assumed_b1", 1.0))
        names = list(MODELS[self.model].parameters)
        p = len(names)
        n = y.shape[0]
        bad = ~(
            np.all(np.isfinite(y), axis=1)
            & np.all(np.isfinite(v), axis=1)
            & np.all(v > 0, axis=1)
            & (y[:, : int(attrs["n_baseline"])].mean(axis=1) > 0)
        )
        y_ok = np.where(bad[:, None], 1.0, y)
        v_ok = np.where(bad[:, None], 1.0, v)
        kin, t10, s_pre, m0v = self._starts(t, ca, y_ok, v_ok, flip_angles, attrs, b1)
        fa_rad = np.deg2rad(b1 * float(attrs["fa"]))
        f_pre, _ = _spgr_parts(1.0 / t10, fa_rad, float(attrs["tr"]))
        m0d = s_pre / f_pre
        scale = np.where(np.isfinite(m0d) & (m0d > 0), m0d, 1.0)
        const = {
            "r1": float(attrs["r1"]),
            "fa": fa_rad,
            "fas": np.deg2rad(b1 * flip_angles),
            "tr": float(attrs["tr"]),
            "w_vfa": _vfa_weight(attrs),
            "m0_scale": scale,
        }
        cols = [kin, t10[:, None], np.ones((n, 1))]
        if not self.shared_m0:
            cols.append(np.nan_to_num(m0v / scale, nan=1.0)[:, None])
        x = np.concatenate(cols, axis=1)
        lo = np.array([BOUNDS[k][0] for k in names] + [T10_BOUNDS[0], 1e-6, 1e-6])[: x.shape[1]]
        hi = np.array([BOUNDS[k][1] for k in names] + [T10_BOUNDS[1], 1e6, 1e6])[: x.shape[1]]
        x, sse_dyn, moved, jtj = self._levenberg_marquardt(x, lo, hi, t, ca, y_ok, v_ok, const)
        est = {k: x[:, i] for i, k in enumerate(names)}
        limits = at_limits(self.model, est)
        free = undetermined_at_limit(limits, names)
        include = np.ones(x.shape, dtype=bool)
        for i, k in enumerate(names):
            if k in limits:
                include[:, i] &= ~limits[k]
            if k in free:
                include[:, i] &= ~free[k]
        cond = condition_numbers(jtj, include)
        tol = 1e-6 * (T10_BOUNDS[1] - T10_BOUNDS[0])
        t10_bound = (x[:, p] <= T10_BOUNDS[0] + tol) | (x[:, p] >= T10_BOUNDS[1] - tol)
        flat = y_ok - y_ok.mean(axis=1, keepdims=True)
        success = (
            ~bad
            & np.all(np.isfinite(x), axis=1)
            & ~at_search_bound(self.model, est)
            & ~t10_bound
            & moved
            & (cond <= COND_MAX)
            & beats_no_contrast(flat, sse_dyn, p)
        )
        for k, flags in limits.items():
            side = "upper" if (k, "upper") in LIMITS else "lower"
            est[k] = np.where(flags, LIMITS[(k, side)], est[k])
        for k, flags in free.items():
            est[k] = np.where(flags, np.nan, est[k])
            limits[k] = limits.get(k, np.zeros_like(flags)) | flags
        out = result_dataset(
            data, est, success, {"fitter": self.name, "method": self.method}, at_limit=limits
        )
        out["T10"] = (
            "voxel",
            np.where(success, x[:, p], np.nan),
            {"units": "s", "long_name": "native T1 (joint estimate)"},
        )
        return out

    def _levenberg_marquardt(self, x, lo, hi, t, ca, y, v, const):
        """Bound-projected LM on every voxel at once.

        Returns the solution, the dynamic residual sum of squares, whether a step was
        accepted (or the start was stationary) and the normal matrices at the solution.
        """
        n, q = x.shape
        r = self._residuals(x, t, ca, y, v, const)
        cost = np.sum(r * r, axis=1)
        lam = np.full(n, 1e-3)
        active = np.ones(n, dtype=bool)
        moved = np.zeros(n, dtype=bool)
        for _ in range(self.max_iter):
            idx = np.flatnonzero(active)
            if idx.size == 0:
                break
            sub_c = {**const, "m0_scale": const["m0_scale"][idx]}
            jac = self._jacobian(x[idx], t, ca, sub_c)
            res = r[idx]
            jtj = np.einsum("nki,nkj->nij", jac, jac)
            jtr = np.einsum("nki,nk->ni", jac, res)
            grad_small = np.all(np.abs(jtr) <= 1e-12 * (1.0 + cost[idx, None]), axis=1)
            moved[idx[grad_small]] = True
            diag = np.einsum("nii->ni", jtj)
            damp = (
                jtj + lam[idx, None, None] * np.eye(q)[None] * np.maximum(diag, 1e-30)[:, :, None]
            )
            try:
                step = -np.linalg.solve(damp, jtr[:, :, None])[:, :, 0]
            except np.linalg.LinAlgError:
                step = -np.einsum("nij,nj->ni", np.linalg.pinv(damp), jtr)
            trial = np.clip(x[idx] + step, lo, hi)
            r_new = self._residuals(trial, t, ca, y[idx], v[idx], sub_c)
            cost_new = np.sum(r_new * r_new, axis=1)
            better = np.isfinite(cost_new) & (cost_new < cost[idx])
            gain = np.where(better, cost[idx] - cost_new, 0.0)
            acc = idx[better]
            x[acc] = trial[better]
            r[acc] = r_new[better]
            cost[acc] = cost_new[better]
            moved[acc] = True
            lam[acc] = np.maximum(lam[acc] / 3.0, 1e-12)
            rej = idx[~better]
            lam[rej] = lam[rej] * 4.0
            done = (better & (gain <= _FTOL * cost_new)) | (~better & (lam[idx] > 1e10))
            done |= grad_small
            active[idx[done]] = False
        jac = self._jacobian(x, t, ca, const)
        jtj = np.einsum("nki,nkj->nij", jac, jac)
        n_f = y.shape[1]
        sse_dyn = np.sum(r[:, :n_f] ** 2, axis=1)
        return x, sse_dyn, moved, jtj


def joint_fitters() -> list[JointFitter]:
    """Every joint fitter: each model of :data:`JOINT_MODELS`, separate and shared M0.

    They are built-in fitters (:func:`phantomdce.fit.builtin.builtin_fitters`); the spec
    ``"phantomdce.fit.joint:joint_fitters"`` names the same fitters.
    """
    return [JointFitter(m, shared_m0=shared) for m in JOINT_MODELS for shared in (False, True)]
