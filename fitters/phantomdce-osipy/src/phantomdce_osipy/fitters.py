"""Adapter: osipy (the OSIPI perfusion library) as phantomdce plug-in fitters.

Every voxel is fitted by osipy's own high-level entry point, :func:`osipy.dce.fit_model`
(its registered model, its bounds and initial guesses, its vectorised Levenberg-Marquardt
fitter :class:`osipy.common.fitting.least_squares.LevenbergMarquardtFitter`); no osipy code is
copied. osipy requires Python >= 3.12: on an older Python this package installs without it
(an environment marker), its module imports, and :func:`all_fitters` raises a clear error, so
phantomdce's registry skips the plug-in with a warning.

Models (phantomdce -> osipy registry name, osipy parameters)
------------------------------------------------------------
==================  ==================  ===========================
phantomdce          osipy               osipy parameters
==================  ==================  ===========================
``tofts``           ``tofts``           ``Ktrans``, ``ve``
``extended_tofts``  ``extended_tofts``  ``Ktrans``, ``ve``, ``vp``
``patlak``          ``patlak``          ``Ktrans``, ``vp``
``2cxm``            ``2cxm``            ``Fp``, ``PS``, ``ve``, ``vp``
``2cum``            ``2cum``            ``Fp``, ``PS``, ``vp``
==================  ==================  ===========================

Units and conversions
---------------------
* Time: osipy takes seconds (its models convert to minutes inside); its convolution assumes
  uniform sampling (``dt = t[1] - t[0]``), so the adapter refuses a non-uniform time axis.
* ``Ktrans``: osipy 1/min, unchanged.
* ``Fp``: osipy mL/min/100mL = phantomdce ``fp`` (mL/100mL/min), unchanged.
* ``PS``: osipy mL/min/100mL; phantomdce ``ps`` (/min) ``= PS / 100`` (osipy's models divide by
  100 themselves).
* ``ve``, ``vp``: osipy's ``parameter_units`` say mL/100mL, but its models use them as
  fractions (``ct = vp * aif + ...``, bounds 0.001-1): fractions, unchanged.
* The AIF: osipy's models use the array as the plasma input (``vp * aif``); phantomdce's
  plasma ``ca`` (mM) is passed unchanged. Concentrations mM in and out.

Success, limits and failures
----------------------------
``success`` is osipy's own quality mask (the fit converged and its R^2 >= 0.5, the fitter's
``r2_threshold``), with finite estimates. Following the phantomdce contract, an estimate on
one of osipy's bounds where the model degenerates is a success flagged ``at_limit_<param>``
and stored as the limit: Ktrans = 0 (``ve`` then undetermined: NaN), vp on its lower bound
(vp -> 0, stored 0), ve on its upper bound 1 (stored 1), PS = 0 (2CXM ``ve`` undetermined).
Any other bound (Ktrans 5 /min, ve 0.001, vp's upper bound, Fp 0.1 or 200 mL/100mL/min,
PS 50 mL/min/100mL) is a limit of the search only: the voxel fails. A voxel with a
non-finite value, no positive value, a non-positive mean or a flat curve is not given to
osipy (NaN, ``success`` False).
"""

from __future__ import annotations

import importlib.metadata
import sys
from typing import Any

import numpy as np
import xarray as xr
from numpy.typing import NDArray
from phantomdce.fit.base import (
    AT_LIMIT_VALUES,
    concentration_inputs,
    undetermined_at_limit,
    unfittable,
)

__all__ = [
    "VERSION",
    "OSIPY_MODELS",
    "OsipyFitter",
    "OsipyUnavailableError",
    "all_fitters",
    "osipy_version",
    "to_phantomdce",
    "limit_flags",
]

VERSION = "0.1.0"
PS_TO_PER_MIN = 0.01  # osipy's PS in mL/min/100mL -> /min
BOUND_TOL = 1e-6  # relative distance (of the bound interval) that counts as on a bound
UNIFORM_RTOL = 1e-6  # relative spread of frame intervals accepted as uniform sampling

OSIPY_MODELS: dict[str, tuple[str, tuple[str, ...]]] = {
    "tofts": ("tofts", ("Ktrans", "ve")),
    "extended_tofts": ("extended_tofts", ("Ktrans", "ve", "vp")),
    "patlak": ("patlak", ("Ktrans", "vp")),
    "2cxm": ("2cxm", ("Fp", "PS", "ve", "vp")),
    "2cum": ("2cum", ("Fp", "PS", "vp")),
}
"""phantomdce model -> (osipy registry name, osipy parameter names)."""

_NAME = {"Ktrans": "Ktrans", "ve": "ve", "vp": "vp", "Fp": "fp", "PS": "ps"}
_SCALE = {"PS": PS_TO_PER_MIN}
# which end of osipy's bound is the model's limit (a success) rather than the search's
_LIMIT_AT = {"Ktrans": "lo", "vp": "lo", "ps": "lo", "ve": "hi"}


class OsipyUnavailableError(RuntimeError):
    """osipy cannot be imported (it needs Python >= 3.12, or it is not installed)."""


def osipy_version() -> str | None:
    """The installed osipy's version, or None when it is not installed."""
    try:
        return importlib.metadata.version("osipy")
    except importlib.metadata.PackageNotFoundError:
        return None


def _import_osipy() -> Any:
    """Osipy's ``dce`` package, or :class:`OsipyUnavailableError` with the reason."""
    if sys.version_info < (3, 12):
        raise OsipyUnavailableError(
            f"osipy requires Python >= 3.12; this is Python {sys.version.split()[0]}"
        )
    try:
        import osipy.dce as osipy_dce
    except ImportError as exc:
        raise OsipyUnavailableError(
            f"osipy is not importable ({exc}): pip install 'osipy>=0.1.4,<0.2'"
        ) from exc
    return osipy_dce


def to_phantomdce(model: str, maps: dict[str, NDArray]) -> dict[str, NDArray[np.float64]]:
    """Convert osipy's parameter arrays to phantomdce names and units.

    Parameters
    ----------
    model : str
        phantomdce model (a key of :data:`OSIPY_MODELS`).
    maps : dict of str to ndarray
        osipy values by osipy name (``Ktrans`` 1/min, ``Fp`` and ``PS`` mL/min/100mL,
        ``ve``/``vp`` fractions).

    Returns
    -------
    dict of str to ndarray
        ``Ktrans``/``ps`` in /min, ``fp`` in mL/100mL/min, ``ve``/``vp`` fractions.

    Examples
    --------
    >>> out = to_phantomdce("2cum", {"Fp": np.array([40.0]), "PS": np.array([5.0]),
    ...                              "vp": np.array([0.05])})
    >>> {k: float(v[0]) for k, v in out.items()}
    {'fp': 40.0, 'ps': 0.05, 'vp': 0.05}

    """
    return {
        _NAME[p]: np.asarray(maps[p], dtype=np.float64) * _SCALE.get(p, 1.0)
        for p in OSIPY_MODELS[model][1]
    }


def limit_flags(
    model: str, est: dict[str, NDArray[np.float64]], bounds: dict[str, tuple[float, float]]
) -> tuple[dict[str, NDArray[np.bool_]], NDArray[np.bool_]]:
    """``at_limit`` flags per parameter, and voxels on a bound of the search only.

    Parameters
    ----------
    model : str
        phantomdce model.
    est : dict of str to ndarray
        Estimates in phantomdce units (NaN where not fitted).
    bounds : dict of str to (float, float)
        osipy's bounds by osipy name, in osipy's units (``get_bounds()`` of its model).

    Returns
    -------
    limits : dict of str to ndarray of bool
        Ktrans = 0, vp on its lower bound, ps = 0, ve on its upper bound.
    search : ndarray of bool
        True where an estimate sits on any other bound.

    Examples
    --------
    >>> est = {"Ktrans": np.array([0.0, 5.0]), "ve": np.array([0.3, 1.0])}
    >>> lim, search = limit_flags("tofts", est, {"Ktrans": (0.0, 5.0), "ve": (0.001, 1.0)})
    >>> lim["Ktrans"].tolist(), lim["ve"].tolist(), search.tolist()
    ([True, False], [False, True], [False, True])

    """
    n = next(iter(est.values())).shape[0]
    limits: dict[str, NDArray[np.bool_]] = {}
    search = np.zeros(n, dtype=bool)
    with np.errstate(invalid="ignore"):
        for p in OSIPY_MODELS[model][1]:
            name, scale = _NAME[p], _SCALE.get(p, 1.0)
            lo, hi = (b * scale for b in bounds[p])
            tol = BOUND_TOL * (hi - lo)
            at = {"lo": est[name] <= lo + tol, "hi": est[name] >= hi - tol}
            side = _LIMIT_AT.get(name)
            limits[name] = at[side] if side else np.zeros(n, dtype=bool)
            for end, flags in at.items():
                if end != side:
                    search |= flags
    return limits, search


def _check_case(data: xr.Dataset) -> tuple[NDArray, NDArray, NDArray]:
    """``time`` (s), ``ca`` (mM) and ``ct`` (voxel, time) of a case, checked and copied."""
    t, ca, ct = concentration_inputs(data, min_frames=3)
    dt = np.diff(t)
    if np.ptp(dt) > UNIFORM_RTOL * dt.mean():
        raise ValueError(
            f"time: frame intervals {dt.min():g}-{dt.max():g} s: osipy's models assume"
            " uniform sampling"
        )
    return t, ca, ct


class OsipyFitter:
    """A phantomdce fitter backed by :func:`osipy.dce.fit_model`.

    Parameters
    ----------
    model : {"tofts", "extended_tofts", "patlak", "2cxm", "2cum"}
        phantomdce model; see :data:`OSIPY_MODELS`.

    Attributes
    ----------
    name : str
        ``"osipy_<model>"``.
    version : str
        ``"<adapter version>+osipy<osipy version>"`` (``+osipy-missing`` without osipy).
    model, input, method : str
        ``input="concentration"``, ``method="nlls"`` (osipy's Levenberg-Marquardt).

    Examples
    --------
    >>> f = OsipyFitter("2cum")
    >>> f.name, f.method, OSIPY_MODELS[f.model][0]
    ('osipy_2cum', 'nlls', '2cum')

    """

    input = "concentration"
    method = "nlls"

    def __init__(self, model: str) -> None:
        if model not in OSIPY_MODELS:
            raise ValueError(f"model={model!r}: expected one of {sorted(OSIPY_MODELS)}")
        self.model = model
        self.name = f"osipy_{model}"
        self.version = f"{VERSION}+osipy{osipy_version() or '-missing'}"

    def __repr__(self) -> str:
        return f"OsipyFitter(model={self.model!r})"

    def fit(self, data: xr.Dataset) -> xr.Dataset:
        """Fit every voxel of one case with osipy.

        Parameters
        ----------
        data : xarray.Dataset
            Coordinate ``time`` (s, uniform), ``ct`` (voxel, time) mM, ``ca`` (time) plasma
            mM. Not modified.

        Returns
        -------
        xarray.Dataset
            Dimension ``voxel``: the model's parameters in phantomdce units, ``success`` and
            ``at_limit_<param>``.

        Raises
        ------
        ValueError
            If ``data`` lacks ``time``, ``ct`` or ``ca``, or the AIF or time axis is invalid.
        OsipyUnavailableError
            If osipy cannot be imported.

        """
        t, ca, cts = _check_case(data)
        osipy_dce = _import_osipy()
        osipy_name, params = OSIPY_MODELS[self.model]
        names = [_NAME[p] for p in params]
        n = cts.shape[0]
        est = {k: np.full(n, np.nan) for k in names}
        ok = np.zeros(n, dtype=bool)
        rows = np.flatnonzero(~unfittable(cts))
        bounds = osipy_dce.get_model(osipy_name).get_bounds()
        if rows.size:
            # (x, y, z, t): osipy 0.1.4 cannot return maps for (n_voxels, t) input
            conc = cts[rows][:, None, None, :]
            with np.errstate(all="ignore"):
                res = osipy_dce.fit_model(osipy_name, conc, ca, t)
            maps = {p: np.asarray(res.parameter_maps[p].values).reshape(-1) for p in params}
            got = to_phantomdce(self.model, maps)
            quality = np.asarray(res.parameter_maps[params[0]].quality_mask).reshape(-1)
            for k in names:
                est[k][rows] = got[k]
            ok[rows] = quality.astype(bool)
        ok &= np.all([np.isfinite(est[k]) for k in names], axis=0)

        limits, search = limit_flags(self.model, est, bounds)
        ok &= ~search
        for name, flags in limits.items():
            est[name][flags & ok] = AT_LIMIT_VALUES[name]
        for name, flags in undetermined_at_limit(limits, names).items():
            est[name][flags] = np.nan
            limits[name] = limits[name] | flags
        for k in names:
            est[k][~ok] = np.nan
        coords = {"voxel": data["voxel"].values.copy()} if "voxel" in data.coords else {}
        out = xr.Dataset({k: ("voxel", est[k]) for k in names}, coords=coords)
        out["success"] = ("voxel", ok)
        for name, flags in limits.items():
            out[f"at_limit_{name}"] = ("voxel", flags & ok)
        out.attrs.update(
            fitter=self.name,
            fitter_version=self.version,
            model=self.model,
            method=self.method,
            osipy_model=osipy_name,
        )
        return out


def all_fitters() -> list[OsipyFitter]:
    """One osipy fitter per phantomdce model (the ``phantomdce.fitters`` entry point).

    Returns
    -------
    list of OsipyFitter
        ``osipy_tofts``, ``osipy_extended_tofts``, ``osipy_patlak``, ``osipy_2cxm``,
        ``osipy_2cum``.

    Raises
    ------
    OsipyUnavailableError
        If osipy cannot be imported (Python < 3.12 or not installed): phantomdce's registry
        then skips this plug-in with a warning that gives the reason.

    """
    _import_osipy()
    return [OsipyFitter(m) for m in OSIPY_MODELS]
