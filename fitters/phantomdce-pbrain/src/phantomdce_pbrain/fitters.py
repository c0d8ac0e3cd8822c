"""Adapter: p-brain's kinetic models as phantomdce plug-in fitters.

p-brain (Tireli et al., MIT licence) is a DCE-MRI pipeline for the brain; its kinetic models
are plug-ins with a public contract (:class:`pbrain.models.base.KineticModel`: ``fit`` takes
:class:`pbrain.models.base.CurveInputs` with tissue curves ``(T, V)``, the input function
``(T,)`` and the time axis in s, and returns a :class:`pbrain.models.base.ModelResult` whose
``maps`` and ``units`` name the estimates). This adapter calls those plug-ins, and nothing
private of p-brain:

=============================  ==============  ==============================================
name                           model           p-brain code
=============================  ==============  ==============================================
``pbrain_extended_tofts``      extended Tofts  ``ExtendedToftsModel().fit`` (p-brain's default
                                               ``method="varpro"``: a grid of 400 kep values
                                               1e-4-2 /s, Ktrans and vp solved exactly at each)
``pbrain_extended_tofts_trf``  extended Tofts  ``extended_tofts.fit_voxel`` per voxel (bounded
                                               ``scipy.optimize.least_squares``, TRF; p-brain's
                                               reference path)
``pbrain_patlak``              Patlak          ``PatlakModel().fit`` (p-brain's default: Huber
                                               regression on the late Patlak plot, x >= x_max/3)
=============================  ==============  ==============================================

p-brain has no Tofts, 2CXM or 2CUM model; its Tikhonov model is model-free (CBF, MTT).

Units and conversions
---------------------
* p-brain reports ``ktrans`` and ``ki`` in **mL/100g/min** and Patlak's ``vb`` in
  **mL/100g**; ``ve``, ``vp`` of the extended Tofts model are fractions; ``kep`` is /min.
  p-brain computes its mL/100g/min from its fitted rate in /s as ``6000 x`` (and mL/100g from
  a fraction as ``100 x``), i.e. with a tissue density of 1 g/mL (``fit_voxel`` returns both
  ``ktrans_per_min`` and ``ktrans_ml_100g``, exactly 100 apart). The adapter inverts that:
  ``Ktrans (/min) = ktrans x TISSUE_DENSITY_G_PER_ML / 100`` with
  :data:`TISSUE_DENSITY_G_PER_ML` = 1.0, and ``vp = vb / 100``. A true brain density
  (1.04 g/mL) would be wrong here: p-brain never applies one.
* p-brain's input function is whatever curve it is given (it uses a venous-sinus *blood*
  curve in its brain pipeline, then ``vb`` is a blood volume). The adapter passes
  phantomdce's plasma ``ca``, so the intercept is the plasma volume ``vp``.
* Time is in s in both; concentrations are mM in and out (every model is linear in them).

Bounds, limits and success (the phantomdce fitter contract)
-----------------------------------------------------------
Extended Tofts (both paths): p-brain bounds Ktrans to 0-0.25 /s (0-15 /min), ve and vp to
0-1 (the varpro path clips to them); "on a bound" is within 1e-6 (/min or fraction), since
TRF stays strictly inside its bounds. Ktrans = 0 is the limit "no leakage" (success,
``at_limit_Ktrans``; ``ve`` then undetermined: NaN, ``at_limit_ve``), vp = 0 the limit vp -> 0
(``at_limit_vp``) and ve = 1 the physical limit ve -> 1 (``at_limit_ve``, stored 1). Ktrans on
15 /min, vp = 1, ve = 0 with Ktrans > 0 and (varpro) kep on an end of p-brain's grid are limits
of the search only: the voxel fails. The TRF path also fails a voxel whose
``least_squares`` reports no success.

Patlak: a linear estimator without bounds; p-brain's estimates are reported as they are and a
voxel fails only where they are not finite (too few usable points of the Patlak plot).

Unfittable voxels (NaN, ``success`` False) in every fitter: a non-finite value, no positive
value, a non-positive mean or a flat curve.
"""

from __future__ import annotations

import importlib.metadata
import warnings

import numpy as np
import xarray as xr
from numpy.typing import NDArray
from pbrain.models import extended_tofts as pb_etofts
from pbrain.models.base import CurveInputs
from pbrain.models.extended_tofts import ExtendedToftsModel
from pbrain.models.patlak import PatlakModel
from phantomdce.fit.base import (
    AT_LIMIT_VALUES,
    concentration_inputs,
    undetermined_at_limit,
    unfittable,
)

__all__ = [
    "VERSION",
    "PBRAIN_VERSION",
    "TISSUE_DENSITY_G_PER_ML",
    "KEP_GRID_PER_S",
    "PBrainFitter",
    "all_fitters",
    "per_100g_to_per_min",
]

VERSION = "0.1.0"
PBRAIN_VERSION = importlib.metadata.version("p-brain")

#: Tissue density (g/mL) that turns p-brain's mL/100g into phantomdce's per-volume units:
#: 1.0, the density p-brain itself assumes (it converts /s to mL/100g/min as x 6000).
TISSUE_DENSITY_G_PER_ML = 1.0
#: The varpro kep grid the adapter asks p-brain for (p-brain's own defaults): number of
#: values, lowest and highest kep, /s (log-spaced).
KEP_GRID_PER_S = (400, 1e-4, 2.0)
KTRANS_MAX_PER_MIN = 0.25 * 60.0  # p-brain's upper bound of Ktrans, 0.25 /s
BOUND_TOL = 1e-6  # absolute distance (fractions, /min) that counts as on a bound (TRF stays
# strictly inside its bounds: a vp -> 0 fit ends near 1e-7)
KEP_REL_TOL = 1e-6  # relative distance from a kep grid end that counts as on it

MODELS = {
    "extended_tofts": ("extended_tofts", "varpro"),
    "extended_tofts_trf": ("extended_tofts", "trf"),
    "patlak": ("patlak", "huber"),
}
"""Fitter suffix -> (phantomdce model, p-brain method)."""


def per_100g_to_per_min(value: NDArray | float) -> NDArray | float:
    """p-brain's mL/100g/min (or mL/100g) to phantomdce's /min (or fraction).

    Parameters
    ----------
    value : float or ndarray
        p-brain ``ktrans``/``ki`` (mL/100g/min) or ``vb`` (mL/100g).

    Returns
    -------
    float or ndarray
        ``value x TISSUE_DENSITY_G_PER_ML / 100``: /min (or a volume fraction).

    Examples
    --------
    >>> per_100g_to_per_min(12.0)
    0.12

    """
    return value * TISSUE_DENSITY_G_PER_ML / 100.0


class PBrainFitter:
    """A phantomdce fitter backed by one of p-brain's kinetic models.

    Parameters
    ----------
    variant : {"extended_tofts", "extended_tofts_trf", "patlak"}
        Which p-brain model and method (see the module docstring).

    Attributes
    ----------
    name : str
        ``"pbrain_<variant>"``.
    version : str
        ``"<adapter version>+pbrain<p-brain version>"``.
    model, input, method : str
        phantomdce model, ``"concentration"``, and ``"varpro"`` / ``"nlls"`` / ``"patlak plot"``.

    Examples
    --------
    >>> f = PBrainFitter("patlak")
    >>> f.name, f.model, f.method
    ('pbrain_patlak', 'patlak', 'patlak plot')

    """

    input = "concentration"

    def __init__(self, variant: str) -> None:
        if variant not in MODELS:
            raise ValueError(f"variant={variant!r}: expected one of {sorted(MODELS)}")
        self.variant = variant
        self.model, self._pb_method = MODELS[variant]
        self.method = {"varpro": "varpro", "trf": "nlls", "huber": "patlak plot"}[self._pb_method]
        self.name = f"pbrain_{variant}"
        self.version = f"{VERSION}+pbrain{PBRAIN_VERSION}"
        et = self.model == "extended_tofts"
        self.outputs = ("Ktrans", "ve", "vp") if et else ("Ktrans", "vp")

    def __repr__(self) -> str:
        return f"PBrainFitter({self.variant!r})"

    def _run(self, t: NDArray, ca: NDArray, ct: NDArray) -> tuple[dict[str, NDArray], NDArray]:
        """p-brain on curves ``ct`` (n, T): estimates in phantomdce units and a success mask."""
        n = ct.shape[0]
        ok = np.ones(n, dtype=bool)
        if self._pb_method == "trf":
            est = {k: np.full(n, np.nan) for k in self.outputs}
            for i in range(n):
                f = pb_etofts.fit_voxel(ca, ct[i], t)
                est["Ktrans"][i], est["ve"][i], est["vp"][i] = f.ktrans_per_min, f.ve, f.vp
                ok[i] = f.success
            return est, ok
        inputs = CurveInputs(c_tissue=ct.T.copy(), c_input=ca.copy(), t_s=t.copy())
        if self.model == "patlak":
            res = PatlakModel().fit(inputs)
            _check_units(res.units, {"ki": "mL/100g/min", "vb": "mL/100g"})
            return {
                "Ktrans": per_100g_to_per_min(np.asarray(res.maps["ki"], dtype=np.float64)),
                "vp": per_100g_to_per_min(np.asarray(res.maps["vb"], dtype=np.float64)),
            }, ok
        n_kep, kep_lo, kep_hi = KEP_GRID_PER_S
        res = ExtendedToftsModel().fit(
            inputs, method="varpro", n_kep=n_kep, kep_lo=kep_lo, kep_hi=kep_hi
        )
        _check_units(res.units, {"ktrans": "mL/100g/min", "ve": "(fraction)", "vp": "(fraction)"})
        kep_s = np.asarray(res.maps["kep"], dtype=np.float64) / 60.0
        with np.errstate(invalid="ignore"):
            ok &= np.abs(kep_s - kep_lo) > KEP_REL_TOL * kep_lo
            ok &= np.abs(kep_s - kep_hi) > KEP_REL_TOL * kep_hi
        return {
            "Ktrans": per_100g_to_per_min(np.asarray(res.maps["ktrans"], dtype=np.float64)),
            "ve": np.asarray(res.maps["ve"], dtype=np.float64),
            "vp": np.asarray(res.maps["vp"], dtype=np.float64),
        }, ok

    def fit(self, data: xr.Dataset) -> xr.Dataset:
        """Fit every voxel of one case with p-brain.

        Parameters
        ----------
        data : xarray.Dataset
            Coordinate ``time`` (s), ``ct`` (voxel, time) mM, ``ca`` (time) plasma mM. Not
            modified.

        Returns
        -------
        xarray.Dataset
            Dimension ``voxel``: the model's parameters in phantomdce units, ``success`` and
            (extended Tofts) ``at_limit_Ktrans``, ``at_limit_ve``, ``at_limit_vp``.

        Raises
        ------
        ValueError
            If ``data`` lacks ``time``, ``ct`` or ``ca``, or the AIF or time axis is invalid.

        """
        t, ca, cts = concentration_inputs(data)
        names = list(self.outputs)
        n = cts.shape[0]
        est = {k: np.full(n, np.nan) for k in names}
        ok = np.zeros(n, dtype=bool)
        rows = np.flatnonzero(~unfittable(cts))
        if rows.size:
            with warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore", RuntimeWarning)
                got, good = self._run(t, ca, cts[rows])
            for k in names:
                est[k][rows] = got[k]
            ok[rows] = good
        ok &= np.all([np.isfinite(est[k]) for k in names], axis=0)

        limits: dict[str, NDArray[np.bool_]] = {}
        if self.model == "extended_tofts":
            kt, ve, vp = est["Ktrans"], est["ve"], est["vp"]
            with np.errstate(invalid="ignore"):
                limits["Ktrans"] = kt <= BOUND_TOL
                limits["vp"] = vp <= BOUND_TOL
                limits["ve"] = (ve >= 1.0 - BOUND_TOL) & ~limits["Ktrans"]
                search = (kt >= KTRANS_MAX_PER_MIN - BOUND_TOL) | (vp >= 1.0 - BOUND_TOL)
                search |= (ve <= BOUND_TOL) & ~limits["Ktrans"]
            ok &= ~search
            for name in ("Ktrans", "vp", "ve"):
                est[name][limits[name] & ok] = AT_LIMIT_VALUES[name]
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
            pbrain_tissue_density_g_per_ml=TISSUE_DENSITY_G_PER_ML,
        )
        return out


def _check_units(got: dict[str, str], expected: dict[str, str]) -> None:
    """Refuse a p-brain whose reported units differ from those the conversion assumes."""
    for key, unit in expected.items():
        if got.get(key) != unit:
            raise RuntimeError(
                f"p-brain reports {key!r} in {got.get(key)!r}: this adapter converts from"
                f" {unit!r} (p-brain {PBRAIN_VERSION})"
            )


def all_fitters() -> list[PBrainFitter]:
    """The p-brain fitters (the ``phantomdce.fitters`` entry point).

    Returns
    -------
    list of PBrainFitter
        ``pbrain_extended_tofts``, ``pbrain_extended_tofts_trf``, ``pbrain_patlak``.

    Examples
    --------
    >>> [f.name for f in all_fitters()]
    ['pbrain_extended_tofts', 'pbrain_extended_tofts_trf', 'pbrain_patlak']

    """
    return [PBrainFitter(v) for v in MODELS]
