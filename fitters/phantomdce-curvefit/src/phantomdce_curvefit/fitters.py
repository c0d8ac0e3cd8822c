"""Per-voxel ``scipy.optimize.curve_fit`` fitters on the phantomdce forward models.

Every fitter here is the textbook baseline: for each voxel, bounded nonlinear least
squares (``curve_fit`` with ``method="trf"``) of a model curve from
:mod:`phantomdce.kinetics` to the tissue concentration ``ct``, with the plasma AIF ``ca``
as input. One start point per parameter; no multi-start, no regularisation.

Starting values and bounds (package units)
------------------------------------------
============  ==========  ==================  ==============================================
parameter     start       bounds              source
============  ==========  ==================  ==============================================
``Ktrans``    0.6 /min    (0, 5) /min         OSIPI DCE-DSC-MRI Code Collection test fits
``ve``        0.2         (1e-4, 1)           OSIPI start; ve > 0 is required by the models
``vp``        0.01        (0, 1)              OSIPI (Tofts/Patlak); (1e-4, 1) for 2CXM/2CUM,
                                              which need vp > 0
``fp``        50          (0, 1000)           our choice: mid grey-matter/tumour plasma
              mL/100mL/   mL/100mL/min        flow; upper bound = phantomdce's admissible
              min                             range
``ps``        0.1 /min    (0, 5) /min         our choice: typical PS; same bound as Ktrans
``delay``     0 s         (-10, 30) s         arterial delay of the tissue after the AIF
============  ==========  ==================  ==============================================

Delay
-----
With ``fit_delay=True`` the AIF is shifted later by ``delay`` seconds by linear
interpolation, ``ca(t - delay)``, taking ``ca = 0`` before the first sample and
``ca = ca[-1]`` after the last. The cost is multimodal and only piecewise smooth in
``delay`` (delay trades off against dispersion, e.g. a low ``fp``), so a delay fit first
fits the kinetic parameters at each fixed delay of :data:`DELAY_GRID` (every 2.5 s over the
bounds, loose tolerances) and then refines all parameters jointly from the best node. Delay
fits are therefore about 10-20 times slower than the plain fits.

Limits and bounds (the phantomdce fitter contract)
--------------------------------------------------
An estimate at a bound where the model degenerates is a success, flagged by the boolean
output ``at_limit_<param>`` and stored as the limit itself (:data:`LIMITS`): ``fp`` at its
upper bound is Fp -> infinity (stored ``inf``; the other parameters are those of the fit at
the bound), ``ps`` at 0, ``vp`` at its lower bound and ``Ktrans`` at 0 are stored ``0.0``,
``ve`` at 1 (a physical limit: all tissue is extravascular extracellular space) is stored
``1.0``. A parameter that a limit leaves undetermined (:data:`UNDETERMINED_AT_LIMIT`: ``ve``
when ``Ktrans = 0`` or, in the 2CXM, ``ps = 0``) is stored NaN with its ``at_limit_<param>``
True ("undetermined at this limit") and does not fail the voxel. An estimate at any other
bound is at a limit of the search only: the voxel fails (NaN, ``success=False``).

Unfittable voxels
-----------------
A voxel is not fitted (NaN estimates, ``success=False``) if its curve has any non-finite
value, has no positive value (all zeros, or a negative curve), has a non-positive mean (no
net enhancement), or is flat (peak-to-peak zero). Small negative values, as noise produces at
baseline, are accepted. If ``curve_fit`` raises, returns non-finite values or a non-finite
residual, the voxel is also marked failed. Only that voxel is affected.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import xarray as xr
from numpy.typing import NDArray
from phantomdce import kinetics
from phantomdce.fit import base
from phantomdce.fit.base import undetermined_at_limit, unfittable
from scipy.optimize import OptimizeWarning, curve_fit

__all__ = [
    "ParameterSetup",
    "MODEL_SETUP",
    "DELAY_SETUP",
    "DELAY_GRID",
    "CurveFitFitter",
    "CurveFitTofts",
    "CurveFitExtendedTofts",
    "CurveFitPatlak",
    "CurveFit2CXM",
    "CurveFit2CUM",
    "all_fitters",
    "shift_aif",
    "LIMITS",
    "limit_flags",
    "undetermined_flags",
    "UNDETERMINED_AT_LIMIT",
]

VERSION = "0.1.0"


@dataclass(frozen=True)
class ParameterSetup:
    """Start value and bounds of one fitted parameter.

    Attributes
    ----------
    name : str
        Name of the result variable (phantomdce spelling, e.g. ``"Ktrans"``).
    keyword : str
        Keyword of the :mod:`phantomdce.kinetics` forward model (e.g. ``"ktrans"``).
    start : float
        Starting value, package units.
    lower, upper : float
        Bounds, package units.

    """

    name: str
    keyword: str
    start: float
    lower: float
    upper: float


_KTRANS = ParameterSetup("Ktrans", "ktrans", 0.6, 0.0, 5.0)
_VE = ParameterSetup("ve", "ve", 0.2, 1e-4, 1.0)
_VP = ParameterSetup("vp", "vp", 0.01, 0.0, 1.0)
_VP_POSITIVE = ParameterSetup("vp", "vp", 0.01, 1e-4, 1.0)
_FP = ParameterSetup("fp", "fp", 50.0, 0.0, 1000.0)
_PS = ParameterSetup("ps", "ps", 0.1, 0.0, 5.0)

MODEL_SETUP: dict[str, tuple[ParameterSetup, ...]] = {
    "tofts": (_KTRANS, _VE),
    "extended_tofts": (_KTRANS, _VE, _VP),
    "patlak": (_KTRANS, _VP),
    "2cxm": (_FP, _PS, _VE, _VP_POSITIVE),
    "2cum": (_FP, _PS, _VP_POSITIVE),
}
"""Fitted parameters of each model, in fit order, with starts and bounds."""

DELAY_SETUP = ParameterSetup("delay", "delay", 0.0, -10.0, 30.0)
"""Start and bounds of the arterial delay (s) when ``fit_delay=True``."""

DELAY_GRID = np.arange(DELAY_SETUP.lower, DELAY_SETUP.upper + 1e-9, 2.5)
"""Fixed delays (s) of the coarse search that picks the start of a delay fit."""

LIMITS: dict[tuple[str, str], float] = {
    ("fp", "upper"): float("inf"),
    ("ps", "lower"): 0.0,
    ("vp", "lower"): 0.0,
    ("Ktrans", "lower"): 0.0,
    ("ve", "upper"): 1.0,
}
"""Bounds where the model degenerates or that are physical limits: (parameter, side) -> the
value stored there."""

# the contract's own table: which parameters a limit leaves undetermined
UNDETERMINED_AT_LIMIT = base.UNDETERMINED_AT_LIMIT
"""Parameter at its limit -> the parameters it leaves undetermined (stored NaN, flagged)."""

BOUND_TOL = 1e-6
"""Relative distance (of the bound interval) within which an estimate is at a bound."""


def limit_flags(
    parameters: tuple[ParameterSetup, ...], est: NDArray[np.float64]
) -> tuple[dict[str, NDArray[np.bool_]], NDArray[np.bool_]]:
    """Estimates at a limit of the model, and voxels at a bound of the search only.

    Parameters
    ----------
    parameters : tuple of ParameterSetup
        The fitted parameters, in the column order of ``est``.
    est : ndarray, shape (n_voxel, n_parameters)
        Estimates, package units (NaN where not fitted).

    Returns
    -------
    limits : dict of str to ndarray of bool
        ``at_limit`` flags of every parameter that has a limit in :data:`LIMITS` (at the
        bound only; see :func:`undetermined_flags`).
    search : ndarray of bool
        True where some parameter sits on a bound that is not a limit (a parameter left
        undetermined by a limit is not judged).

    Examples
    --------
    >>> import numpy as np
    >>> lim, search = limit_flags(MODEL_SETUP["extended_tofts"], np.array([[0.2, 0.3, 0.0]]))
    >>> bool(lim["vp"][0]), bool(search[0])
    (True, False)

    """
    limits: dict[str, NDArray[np.bool_]] = {}
    hits: dict[str, NDArray[np.bool_]] = {}
    for j, p in enumerate(parameters):
        tol = BOUND_TOL * (p.upper - p.lower)
        with np.errstate(invalid="ignore"):
            at = {"lower": est[:, j] <= p.lower + tol, "upper": est[:, j] >= p.upper - tol}
        hits[p.name] = np.zeros(est.shape[0], dtype=bool)
        for side, hit in at.items():
            key = (p.name, side)
            if key in LIMITS:
                limits[p.name] = limits.get(p.name, np.zeros_like(hit)) | hit
            else:
                hits[p.name] |= hit
    free = undetermined_flags(parameters, limits)
    search = np.zeros(est.shape[0], dtype=bool)
    for name, hit in hits.items():
        search |= hit & ~free.get(name, np.zeros_like(hit))
    return limits, search


def undetermined_flags(
    parameters: tuple[ParameterSetup, ...], limits: dict[str, NDArray[np.bool_]]
) -> dict[str, NDArray[np.bool_]]:
    """Voxels whose parameter a limit leaves undetermined (:data:`UNDETERMINED_AT_LIMIT`).

    Parameters
    ----------
    parameters : tuple of ParameterSetup
        The fitted parameters.
    limits : dict of str to ndarray of bool
        The ``at_limit`` flags of :func:`limit_flags`.

    Returns
    -------
    dict of str to ndarray of bool
        One entry per fitted parameter that a limit of the model can leave undetermined.

    Examples
    --------
    >>> import numpy as np
    >>> lim, _ = limit_flags(MODEL_SETUP["extended_tofts"], np.array([[0.0, 0.3, 0.05]]))
    >>> bool(undetermined_flags(MODEL_SETUP["extended_tofts"], lim)["ve"][0])
    True

    """
    return undetermined_at_limit(limits, [p.name for p in parameters])


def shift_aif(t: NDArray[np.float64], ca: NDArray[np.float64], delay: float) -> NDArray:
    """Delay the AIF by ``delay`` seconds by linear interpolation.

    Parameters
    ----------
    t : ndarray, shape (n_t,)
        Sample times, s.
    ca : ndarray, shape (n_t,)
        Plasma concentration, mM.
    delay : float
        Delay, s (negative moves the AIF earlier).

    Returns
    -------
    ndarray, shape (n_t,)
        ``ca(t - delay)``, 0 before ``t[0]`` and ``ca[-1]`` after ``t[-1]``.

    Examples
    --------
    >>> import numpy as np
    >>> shift_aif(np.arange(4.0), np.array([0.0, 1.0, 2.0, 3.0]), 1.5).tolist()
    [0.0, 0.0, 0.5, 1.5]

    """
    if delay == 0.0:
        return ca
    return np.interp(t - delay, t, ca, left=0.0, right=ca[-1])


def _result(
    data: xr.Dataset,
    names: list[str],
    est: NDArray,
    ok: NDArray,
    fitter: object,
    limits: dict[str, NDArray] | None = None,
) -> xr.Dataset:
    """Assemble the result dataset in the contract's layout."""
    coords = {"voxel": data["voxel"].values.copy()} if "voxel" in data.coords else {}
    out = xr.Dataset(
        {n: ("voxel", est[:, i].astype(np.float64)) for i, n in enumerate(names)},
        coords=coords,
    )
    out["success"] = ("voxel", ok.astype(bool))
    for name, flags in (limits or {}).items():
        out[f"at_limit_{name}"] = ("voxel", flags & ok)
    out.attrs.update(
        fitter=getattr(fitter, "name", ""),
        fitter_version=getattr(fitter, "version", ""),
        model=getattr(fitter, "model", ""),
        method=getattr(fitter, "method", ""),
    )
    return out


class CurveFitFitter:
    """Per-voxel bounded NLLS fit of a phantomdce kinetic model with ``curve_fit``.

    Parameters
    ----------
    model : {"tofts", "extended_tofts", "patlak", "2cxm", "2cum"}
        Kinetic model.
    fit_delay : bool, optional
        Also fit an arterial delay (s) of the tissue curve after the AIF (default False).
    ftol, xtol, gtol : float, optional
        Convergence tolerances handed to ``scipy.optimize.least_squares`` (default 1e-10).
    max_nfev : int, optional
        Maximum number of model evaluations per voxel (default 2000).

    Attributes
    ----------
    name : str
        ``"curvefit_<model>"``, with ``"_delay"`` appended when ``fit_delay``.
    version, model, input, method : str
        Plug-in metadata (``input="concentration"``, ``method="nlls"``).
    parameters : tuple of ParameterSetup
        Fitted parameters, starts and bounds (``delay`` last when fitted).

    Examples
    --------
    >>> f = CurveFitFitter("extended_tofts")
    >>> f.name, f.method, [p.name for p in f.parameters]
    ('curvefit_extended_tofts', 'nlls', ['Ktrans', 've', 'vp'])
    >>> CurveFitFitter("tofts", fit_delay=True).name
    'curvefit_tofts_delay'

    """

    input = "concentration"
    method = "nlls"
    version = VERSION

    def __init__(
        self,
        model: str,
        *,
        fit_delay: bool = False,
        ftol: float = 1e-10,
        xtol: float = 1e-10,
        gtol: float = 1e-10,
        max_nfev: int = 2000,
    ) -> None:
        if model not in MODEL_SETUP:
            raise ValueError(f"model={model!r}: expected one of {sorted(MODEL_SETUP)}")
        self.model = model
        self.fit_delay = bool(fit_delay)
        self.name = f"curvefit_{model}" + ("_delay" if self.fit_delay else "")
        self.parameters = MODEL_SETUP[model] + ((DELAY_SETUP,) if self.fit_delay else ())
        self._forward: Callable[..., NDArray] = kinetics.MODEL_FUNCTIONS[model]
        self._options = {"ftol": ftol, "xtol": xtol, "gtol": gtol, "max_nfev": max_nfev}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model!r}, fit_delay={self.fit_delay})"

    def _curve(self, t: NDArray, ca: NDArray, p: tuple[float, ...]) -> NDArray:
        kin = MODEL_SETUP[self.model]
        if self.fit_delay:
            ca = shift_aif(t, ca, p[-1])
        kwargs = {s.keyword: p[i] for i, s in enumerate(kin)}
        return self._forward(t, ca, **kwargs)

    def _kinetic_fit(
        self, t: NDArray, ca: NDArray, y: NDArray, p0: list[float], **options: float
    ) -> tuple[NDArray, float]:
        """Fit the kinetic parameters only (AIF already shifted); return them and the cost."""
        kin = MODEL_SETUP[self.model]
        forward = self._forward

        def f(_t: NDArray, *p: float) -> NDArray:
            return forward(t, ca, **{s.keyword: p[i] for i, s in enumerate(kin)})

        popt, _ = curve_fit(
            f,
            t,
            y,
            p0=p0,
            bounds=([s.lower for s in kin], [s.upper for s in kin]),
            method="trf",
            **options,
        )
        res = f(t, *popt) - y
        return popt, float(res @ res)

    def _delay_start(self, t: NDArray, ca: NDArray, y: NDArray) -> tuple[list[float], float]:
        """Coarse search: kinetic fits at fixed delays on a grid; return the best start."""
        starts = [s.start for s in MODEL_SETUP[self.model]]
        best: tuple[list[float], float] = (starts, DELAY_SETUP.start)
        best_cost = np.inf
        for d in DELAY_GRID:
            try:
                popt, cost = self._kinetic_fit(
                    t, shift_aif(t, ca, float(d)), y, starts, ftol=1e-6, xtol=1e-6, max_nfev=200
                )
            except (RuntimeError, ValueError):
                continue
            if cost < best_cost:
                best, best_cost = (list(popt), float(d)), cost
        return best

    def _fit_one(self, t: NDArray, ca: NDArray, y: NDArray) -> NDArray | None:
        p0 = [s.start for s in self.parameters]
        if self.fit_delay:
            kin0, d0 = self._delay_start(t, ca, y)
            p0 = [*kin0, d0]
        lower = [s.lower for s in self.parameters]
        upper = [s.upper for s in self.parameters]

        def f(_t: NDArray, *p: float) -> NDArray:
            return self._curve(t, ca, p)

        popt, _ = curve_fit(f, t, y, p0=p0, bounds=(lower, upper), method="trf", **self._options)
        if not np.all(np.isfinite(popt)) or not np.all(np.isfinite(f(t, *popt))):
            return None
        return popt

    def fit(self, data: xr.Dataset) -> xr.Dataset:
        """Fit every voxel of one case.

        Parameters
        ----------
        data : xarray.Dataset
            Coordinate ``time`` (s), ``ct`` (voxel, time) in mM, ``ca`` (time) plasma
            concentration in mM. Not modified.

        Returns
        -------
        xarray.Dataset
            Dimension ``voxel``; one float variable per fitted parameter (``Ktrans`` /min,
            ``ve``, ``vp``, ``fp`` mL/100mL/min, ``ps`` /min, ``delay`` s), a boolean
            ``success`` and ``at_limit_<param>`` flags (see the module docstring).
            Unfittable voxels are NaN with ``success=False``.

        Raises
        ------
        ValueError
            If ``data`` lacks ``time``, ``ct`` or ``ca``, or the AIF or time axis is invalid.

        """
        t, ca, cts = base.concentration_inputs(data, min_frames=2)
        n = cts.shape[0]
        names = [s.name for s in self.parameters]
        est = np.full((n, len(names)), np.nan)
        ok = np.zeros(n, dtype=bool)
        skip = unfittable(cts)
        for i in np.flatnonzero(~skip):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", OptimizeWarning)
                    popt = self._fit_one(t, ca, cts[i])
            except (RuntimeError, ValueError, FloatingPointError):
                popt = None
            if popt is not None:
                est[i] = popt
                ok[i] = True
        limits, search = limit_flags(self.parameters, est)
        ok &= ~search
        for j, p in enumerate(self.parameters):
            if p.name in limits:
                side = "upper" if (p.name, "upper") in LIMITS else "lower"
                est[limits[p.name], j] = LIMITS[(p.name, side)]
        free = undetermined_flags(self.parameters, limits)
        for j, p in enumerate(self.parameters):
            if p.name in free:
                est[free[p.name], j] = np.nan
                limits[p.name] = limits.get(p.name, np.zeros_like(free[p.name])) | free[p.name]
        est[~ok] = np.nan
        return _result(data, names, est, ok, self, limits)


class CurveFitTofts(CurveFitFitter):
    """``curvefit_tofts``: standard Tofts (``Ktrans``, ``ve``); see :class:`CurveFitFitter`."""

    def __init__(self, *, fit_delay: bool = False, **options: float) -> None:
        super().__init__("tofts", fit_delay=fit_delay, **options)


class CurveFitExtendedTofts(CurveFitFitter):
    """``curvefit_extended_tofts``: extended Tofts (``Ktrans``, ``ve``, ``vp``)."""

    def __init__(self, *, fit_delay: bool = False, **options: float) -> None:
        super().__init__("extended_tofts", fit_delay=fit_delay, **options)


class CurveFitPatlak(CurveFitFitter):
    """``curvefit_patlak``: Patlak (``Ktrans``, ``vp``)."""

    def __init__(self, *, fit_delay: bool = False, **options: float) -> None:
        super().__init__("patlak", fit_delay=fit_delay, **options)


class CurveFit2CXM(CurveFitFitter):
    """``curvefit_2cxm``: two-compartment exchange (``fp``, ``ps``, ``ve``, ``vp``)."""

    def __init__(self, *, fit_delay: bool = False, **options: float) -> None:
        super().__init__("2cxm", fit_delay=fit_delay, **options)


class CurveFit2CUM(CurveFitFitter):
    """``curvefit_2cum``: two-compartment uptake (``fp``, ``ps``, ``vp``)."""

    def __init__(self, *, fit_delay: bool = False, **options: float) -> None:
        super().__init__("2cum", fit_delay=fit_delay, **options)


_CLASSES = (CurveFitTofts, CurveFitExtendedTofts, CurveFitPatlak, CurveFit2CXM, CurveFit2CUM)


def all_fitters() -> list[CurveFitFitter]:
    """Every fitter of this package: one per model, without and with delay fitting.

    This is the ``phantomdce.fitters`` entry point.

    Returns
    -------
    list of CurveFitFitter
        ``curvefit_<model>`` and ``curvefit_<model>_delay`` for the five models.

    Examples
    --------
    >>> [f.name for f in all_fitters()][:2]
    ['curvefit_tofts', 'curvefit_extended_tofts']
    >>> len(all_fitters())
    10

    """
    plain = [cls() for cls in _CLASSES]
    delayed = [cls(fit_delay=True) for cls in _CLASSES]
    return plain + delayed
