"""Adapter: QbiPy (the Python port of Madym's DCE tools) as phantomdce plug-in fitters.

Every curve goes through QbiPy's own code: its AIF object (:class:`QbiPy.dce_models.dce_aif.Aif`,
type ``ARRAY``), its forward models (:func:`QbiPy.dce_models.tofts_model.concentration_from_model`
and :func:`QbiPy.dce_models.two_cxm_model.concentration_from_model`) and its linear solvers
(:func:`QbiPy.dce_models.tofts_model.solve_LLS`, :func:`QbiPy.dce_models.two_cxm_model.solve_LLS`).
QbiPy itself has no non-linear optimiser (Madym's C++ tools fit by NLLS); the ``nlls`` fitters
here minimise the sum of squared residuals of QbiPy's forward model with
:func:`scipy.optimize.least_squares` (trust-region reflective, bounded), from QbiPy's own LLS
solution where that is a valid start, else from fixed defaults.

Fitters
-------
================================  ================  ======  ======================================
name                              phantomdce model  method  QbiPy code
================================  ================  ======  ======================================
``qbipy_tofts``                   Tofts             nlls    ``tofts_model`` forward, ``v_p = 0``
``qbipy_extended_tofts``          extended Tofts    nlls    ``tofts_model`` forward
``qbipy_extended_tofts_llsq``     extended Tofts    llsq    ``tofts_model.solve_LLS``
``qbipy_2cxm``                    2CXM              nlls    ``two_cxm_model`` forward
``qbipy_2cxm_llsq``               2CXM              llsq    ``two_cxm_model.solve_LLS``
================================  ================  ======  ======================================

Not provided: Patlak (QbiPy has no Patlak module) and 2CUM (QbiPy's ``two_cfm_model`` is the
two-compartment *filtration* model, with a fourth parameter, not the uptake model).

Units and conversions
---------------------
* QbiPy works in **minutes**: the adapter passes ``t_min = time / 60``. Ktrans, PS and Fp come
  out per minute: ``Ktrans`` and ``ps`` are phantomdce's /min unchanged; QbiPy's ``F_p`` is
  mL/min/mL, so ``fp`` (mL/100mL/min) ``= 100 F_p``. ``v_e`` and ``v_p`` are fractions.
* QbiPy's ``base_aif`` of an ``ARRAY`` AIF is used as the plasma concentration (its haematocrit
  only enters its population AIF), so phantomdce's plasma ``ca`` (mM) is passed unchanged.
  Concentrations are in mM in and out; every model is linear in concentration.
* QbiPy prints a line per model evaluation (its parameter-size check): the adapter discards
  stdout while it fits (``contextlib.redirect_stdout``, process-wide for that time).

Bounds, limits and success (the phantomdce fitter contract)
-----------------------------------------------------------
NLLS bounds, in phantomdce units: Ktrans 0-5 /min, ve 0.001-1, vp 0-1 (2CXM: 0.0001-1),
fp 0.01-2000 mL/100mL/min, ps 0-10 /min; ``v_e`` must stay above 0 (QbiPy divides by it).
An estimate on a bound where the model degenerates is a success, flagged ``at_limit_<param>``
and stored as the limit: Ktrans = 0 (``ve`` then undetermined: NaN, ``at_limit_ve``), vp on its
lower bound (vp -> 0, stored 0), ve = 1 (stored 1), ps = 0 (2CXM ``ve`` undetermined), and fp
on its upper bound (Fp -> infinity, stored ``inf``). Any other bound (ve's lower, Ktrans's and
ps's upper, fp's lower) is a limit of the search only: the voxel fails.

The LLS fitters report QbiPy's solution as it is; a voxel fails (NaN) when the solution is not
a valid parameter set: non-finite, ``k_ep <= 0`` or ``v_e <= 0`` (extended Tofts), or any of
Fp, PS, ve, vp not positive (2CXM).

Unfittable voxels (NaN, ``success`` False) in every fitter: a non-finite value, no positive
value, a non-positive mean or a flat curve; an optimiser exception.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import warnings
from dataclasses import dataclass

import numpy as np
import xarray as xr
from numpy.typing import NDArray
from phantomdce.fit.base import (
    AT_LIMIT_VALUES,
    concentration_inputs,
    undetermined_at_limit,
    unfittable,
)
from QbiPy.dce_models import dce_aif, tofts_model, two_cxm_model
from scipy.optimize import least_squares

__all__ = [
    "VERSION",
    "QBIPY_VERSION",
    "ParamSpec",
    "NLLS_SPECS",
    "QbiPyFitter",
    "all_fitters",
    "qbipy_aif",
    "to_phantomdce",
]

VERSION = "0.1.0"
QBIPY_VERSION = importlib.metadata.version("QbiPy")

S_PER_MIN = 60.0  # s -> min: QbiPy's time axis is in minutes
FP_TO_ML_100ML_MIN = 100.0  # QbiPy's F_p in mL/min/mL -> mL/100mL/min
BOUND_TOL = 1e-6  # relative distance (of the bound interval) that counts as on a bound


class _Discard(io.TextIOBase):
    """A text sink: QbiPy's parameter-size check prints a line on every model evaluation."""

    def write(self, s: str) -> int:
        return len(s)


@dataclass(frozen=True)
class ParamSpec:
    """One fitted parameter of an NLLS fitter, in phantomdce units.

    Attributes
    ----------
    name : str
        phantomdce name (``Ktrans``, ``ve``, ``vp``, ``fp``, ``ps``).
    lo, hi : float
        Search bounds (phantomdce units).
    lo_limit, hi_limit : bool
        Whether an estimate on that bound is the model's limit (a success, flagged
        ``at_limit_<name>``) rather than a limit of the search (a failure).
    start : float
        Default initial value (used where QbiPy's LLS gives no valid start).
    """

    name: str
    lo: float
    hi: float
    lo_limit: bool
    hi_limit: bool
    start: float


_KTRANS = ParamSpec("Ktrans", 0.0, 5.0, True, False, 0.2)
_VE = ParamSpec("ve", 1e-3, 1.0, False, True, 0.2)
NLLS_SPECS: dict[str, tuple[ParamSpec, ...]] = {
    "tofts": (_KTRANS, _VE),
    "extended_tofts": (_KTRANS, _VE, ParamSpec("vp", 0.0, 1.0, True, False, 0.02)),
    "2cxm": (
        ParamSpec("fp", 0.01, 2000.0, False, True, 50.0),
        ParamSpec("ps", 0.0, 10.0, True, False, 0.1),
        _VE,
        ParamSpec("vp", 1e-4, 1.0, True, False, 0.05),
    ),
}
"""phantomdce model -> the NLLS fitter's parameters, bounds and limits (phantomdce units)."""

LLS_OUTPUTS = {"extended_tofts": ("Ktrans", "ve", "vp"), "2cxm": ("fp", "ps", "ve", "vp")}


def qbipy_aif(time_s: NDArray[np.float64], ca: NDArray[np.float64]) -> dce_aif.Aif:
    """QbiPy's AIF object for a plasma curve: type ``ARRAY``, times in minutes.

    Parameters
    ----------
    time_s : ndarray
        Frame times, s.
    ca : ndarray
        Plasma concentration, mM.

    Returns
    -------
    QbiPy.dce_models.dce_aif.Aif
    """
    return dce_aif.Aif(
        aif_type=dce_aif.AifType.ARRAY,
        times=np.asarray(time_s, dtype=np.float64) / S_PER_MIN,
        base_aif=np.asarray(ca, dtype=np.float64),
    )


def to_phantomdce(model: str, qbipy: dict[str, float]) -> dict[str, float]:
    """Convert QbiPy's parameters (per-minute rates) to phantomdce names and units.

    Parameters
    ----------
    model : str
        ``"tofts"``, ``"extended_tofts"`` or ``"2cxm"``.
    qbipy : dict
        ``Ktrans`` (/min), ``v_e``, ``v_p`` or ``F_p`` (mL/min/mL), ``PS`` (/min), ``v_e``,
        ``v_p``.

    Returns
    -------
    dict
        ``Ktrans``/``ps`` in /min, ``fp`` in mL/100mL/min, ``ve``/``vp`` fractions.

    Examples
    --------
    >>> to_phantomdce("2cxm", {"F_p": 0.4, "PS": 0.1, "v_e": 0.2, "v_p": 0.05})
    {'fp': 40.0, 'ps': 0.1, 've': 0.2, 'vp': 0.05}

    """
    if model == "2cxm":
        return {
            "fp": float(qbipy["F_p"]) * FP_TO_ML_100ML_MIN,
            "ps": float(qbipy["PS"]),
            "ve": float(qbipy["v_e"]),
            "vp": float(qbipy["v_p"]),
        }
    out = {"Ktrans": float(qbipy["Ktrans"]), "ve": float(qbipy["v_e"])}
    if model == "extended_tofts":
        out["vp"] = float(qbipy["v_p"])
    return out


def _forward(model: str, aif: dce_aif.Aif, theta: NDArray[np.float64]) -> NDArray[np.float64]:
    """QbiPy's model curves for parameter rows ``theta`` (k, n_par), phantomdce units."""
    zeros = np.zeros(theta.shape[0])
    if model == "2cxm":
        fp, ps, ve, vp = theta.T
        return two_cxm_model.concentration_from_model(
            aif, fp / FP_TO_ML_100ML_MIN, ps, ve, vp, zeros
        )
    vp = theta[:, 2] if model == "extended_tofts" else zeros
    return tofts_model.concentration_from_model(aif, theta[:, 0], theta[:, 1], vp, zeros)


def _lls_start(model: str, y: NDArray, aif: dce_aif.Aif) -> NDArray[np.float64] | None:
    """QbiPy's LLS solution as an NLLS start (phantomdce units), or None if not valid."""
    lls_model = "extended_tofts" if model == "tofts" else model
    est = _lls(lls_model, y, aif)
    if est is None:
        return None
    specs = NLLS_SPECS[model]
    x0 = np.array([est[s.name] for s in specs])
    lo = np.array([s.lo for s in specs])
    hi = np.array([s.hi for s in specs])
    if not np.all((x0 > lo) & (x0 < hi)):
        return None
    return x0


def _lls(model: str, y: NDArray, aif: dce_aif.Aif) -> dict[str, float] | None:
    """QbiPy's linear least-squares solution (phantomdce units), or None if not valid."""
    with np.errstate(all="ignore"):
        if model == "extended_tofts":
            ktrans, ve, vp = tofts_model.solve_LLS(y, aif, 0.0)
            est = to_phantomdce(model, {"Ktrans": ktrans, "v_e": ve, "v_p": vp})
            valid = est["ve"] > 0 and est["Ktrans"] / est["ve"] > 0
        else:
            fp, ps, ve, vp = two_cxm_model.solve_LLS(y, aif, 0.0)
            est = to_phantomdce(model, {"F_p": fp, "PS": ps, "v_e": ve, "v_p": vp})
            valid = all(v > 0 for v in est.values())
    if not (valid and all(np.isfinite(v) for v in est.values())):
        return None
    return est


class QbiPyFitter:
    """A phantomdce fitter backed by QbiPy's models (NLLS) or QbiPy's LLS solvers.

    Parameters
    ----------
    model : {"tofts", "extended_tofts", "2cxm"}
        phantomdce model.
    method : {"nlls", "llsq"}
        ``"nlls"``: least squares on QbiPy's forward model; ``"llsq"``: QbiPy's ``solve_LLS``
        (extended Tofts and 2CXM only).

    Attributes
    ----------
    name : str
        ``"qbipy_<model>"`` (NLLS) or ``"qbipy_<model>_llsq"``.
    version : str
        ``"<adapter version>+qbipy<QbiPy version>"``.
    input : str
        ``"concentration"``.

    Examples
    --------
    >>> f = QbiPyFitter("2cxm", method="llsq")
    >>> f.name, f.model, f.method
    ('qbipy_2cxm_llsq', '2cxm', 'llsq')

    """

    input = "concentration"

    def __init__(self, model: str, method: str = "nlls") -> None:
        if method not in ("nlls", "llsq"):
            raise ValueError(f"method={method!r}: expected 'nlls' or 'llsq'")
        models = NLLS_SPECS if method == "nlls" else LLS_OUTPUTS
        if model not in models:
            raise ValueError(
                f"model={model!r} with method={method!r}: expected one of {sorted(models)}"
            )
        self.model = model
        self.method = method
        self.name = f"qbipy_{model}" + ("_llsq" if method == "llsq" else "")
        self.version = f"{VERSION}+qbipy{QBIPY_VERSION}"
        self.outputs = (
            tuple(s.name for s in NLLS_SPECS[model]) if method == "nlls" else LLS_OUTPUTS[model]
        )

    def __repr__(self) -> str:
        return f"QbiPyFitter(model={self.model!r}, method={self.method!r})"

    def _fit_nlls(self, y: NDArray, aif: dce_aif.Aif) -> NDArray[np.float64] | None:
        """One voxel by bounded least squares on QbiPy's forward model (phantomdce units)."""
        specs = NLLS_SPECS[self.model]
        lo = np.array([s.lo for s in specs])
        hi = np.array([s.hi for s in specs])
        x0 = _lls_start(self.model, y, aif)
        if x0 is None:
            x0 = np.array([s.start for s in specs])
        cache: dict[bytes, tuple[NDArray, NDArray]] = {}

        def evaluate(x: NDArray) -> tuple[NDArray, NDArray]:
            key = x.tobytes()
            if key not in cache:  # the curve and its forward-difference Jacobian in one call
                step = 1e-6 * np.maximum(np.abs(x), 1e-3)
                step = np.where(x + step > hi, -step, step)
                rows = np.vstack([x, x + np.diag(step)])
                with np.errstate(all="ignore"):
                    curves = _forward(self.model, aif, rows)
                r = curves[0] - y
                jac = (curves[1:] - curves[0]).T / step
                cache.clear()
                cache[key] = (r, jac)
            return cache[key]

        with np.errstate(all="ignore"):
            sol = least_squares(
                lambda x: evaluate(x)[0],
                x0,
                jac=lambda x: evaluate(x)[1],
                bounds=(lo, hi),
                method="trf",
                x_scale="jac",
            )
        if sol.status <= 0 or not np.all(np.isfinite(sol.x)) or not np.isfinite(sol.cost):
            return None
        return sol.x

    def _limits(self, est: NDArray) -> tuple[dict[str, NDArray[np.bool_]], NDArray[np.bool_]]:
        """``at_limit`` flags and search-bound failures of NLLS estimates (n, n_par)."""
        limits: dict[str, NDArray[np.bool_]] = {}
        search = np.zeros(est.shape[0], dtype=bool)
        with np.errstate(invalid="ignore"):
            for j, s in enumerate(NLLS_SPECS[self.model]):
                tol = BOUND_TOL * (s.hi - s.lo)
                at_lo, at_hi = est[:, j] <= s.lo + tol, est[:, j] >= s.hi - tol
                flags = np.zeros(est.shape[0], dtype=bool)
                for at, is_limit in ((at_lo, s.lo_limit), (at_hi, s.hi_limit)):
                    if is_limit:
                        flags |= at
                    else:
                        search |= at
                limits[s.name] = flags
        return limits, search

    def fit(self, data: xr.Dataset) -> xr.Dataset:
        """Fit every voxel of one case with QbiPy.

        Parameters
        ----------
        data : xarray.Dataset
            Coordinate ``time`` (s), ``ct`` (voxel, time) mM, ``ca`` (time) plasma mM. Not
            modified.

        Returns
        -------
        xarray.Dataset
            Dimension ``voxel``: the model's parameters in phantomdce units, ``success`` and
            (NLLS) ``at_limit_<param>``.

        Raises
        ------
        ValueError
            If ``data`` lacks ``time``, ``ct`` or ``ca``, or the AIF or time axis is invalid.

        """
        t, ca, cts = concentration_inputs(data)
        aif = qbipy_aif(t, ca)
        names = list(self.outputs)
        n = cts.shape[0]
        est = np.full((n, len(names)), np.nan)
        ok = np.zeros(n, dtype=bool)
        with warnings.catch_warnings(), contextlib.redirect_stdout(_Discard()):
            warnings.simplefilter("ignore", RuntimeWarning)
            for i in np.flatnonzero(~unfittable(cts)):
                try:
                    if self.method == "llsq":
                        got = _lls(self.model, cts[i], aif)
                        x = None if got is None else np.array([got[k] for k in names])
                    else:
                        x = self._fit_nlls(cts[i], aif)
                except (RuntimeError, ValueError, FloatingPointError, ZeroDivisionError,
                        np.linalg.LinAlgError):  # fmt: skip
                    x = None
                if x is not None:
                    est[i] = x
                    ok[i] = True

        limits: dict[str, NDArray[np.bool_]] = {}
        if self.method == "nlls":
            limits, search = self._limits(est)
            ok &= ~search
            for name, flags in limits.items():
                est[flags, names.index(name)] = AT_LIMIT_VALUES[name]
            for name, flags in undetermined_at_limit(limits, names).items():
                est[flags, names.index(name)] = np.nan
                limits[name] = limits.get(name, np.zeros(n, dtype=bool)) | flags
        est[~ok] = np.nan
        coords = {"voxel": data["voxel"].values.copy()} if "voxel" in data.coords else {}
        out = xr.Dataset({k: ("voxel", est[:, j]) for j, k in enumerate(names)}, coords=coords)
        out["success"] = ("voxel", ok)
        for name, flags in limits.items():
            out[f"at_limit_{name}"] = ("voxel", flags & ok)
        out.attrs.update(
            fitter=self.name, fitter_version=self.version, model=self.model, method=self.method
        )
        return out


def all_fitters() -> list[QbiPyFitter]:
    """The QbiPy fitters (the ``phantomdce.fitters`` entry point).

    Returns
    -------
    list of QbiPyFitter
        ``qbipy_tofts``, ``qbipy_extended_tofts``, ``qbipy_2cxm`` (NLLS) and
        ``qbipy_extended_tofts_llsq``, ``qbipy_2cxm_llsq`` (QbiPy's LLS).

    Examples
    --------
    >>> [f.name for f in all_fitters()]  # doctest: +NORMALIZE_WHITESPACE
    ['qbipy_tofts', 'qbipy_extended_tofts', 'qbipy_2cxm', 'qbipy_extended_tofts_llsq',
     'qbipy_2cxm_llsq']

    """
    return [QbiPyFitter(m) for m in NLLS_SPECS] + [
        QbiPyFitter(m, method="llsq") for m in LLS_OUTPUTS
    ]
