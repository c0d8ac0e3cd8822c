"""Adapter: the independent package dcmri as phantomdce plug-in fitters.

Each voxel is fitted through dcmri's own forward model, :func:`dcmri.conc_tissue` (the tissue
concentration of dcmri's two-site exchange tissue, i.e. what :class:`dcmri.Tissue` uses
before its signal model), and dcmri's own optimiser, :meth:`dcmri.Model.train` (bounded
``scipy.optimize.curve_fit`` from dcmri's default initial values and bounds, the ``"NLLS"``
method of :meth:`dcmri.Tissue.train`). :class:`dcmri.Tissue` itself only trains on *signal*
curves, so a minimal :class:`dcmri.Model` subclass, :class:`DcmriConcentrationTissue`, returns
``conc_tissue`` as its prediction; nothing of phantomdce's kinetics is used.

Kinetic models (phantomdce -> dcmri ``kinetics``, water exchange ``'FF'``)
-------------------------------------------------------------------------
==================  ======  ==============================  ==================================
phantomdce          dcmri   dcmri free parameters           phantomdce estimates
==================  ======  ==============================  ==================================
``tofts``           ``WV``  ``vi``, ``Ktrans``               Ktrans = 60 Ktrans_dcmri, ve = vi
``extended_tofts``  ``HF``  ``vb``, ``vi``, ``PS``           Ktrans = 60 PS, ve = vi,
                                                            vp = (1 - H) vb
``patlak``          ``HFU`` ``vb``, ``PS``                   Ktrans = 60 PS, vp = (1 - H) vb
``2cxm``            ``2CX`` ``vb``, ``vi``, ``Fb``, ``PS``   fp = 6000 (1 - H) Fb, ps = 60 PS,
                                                            ve = vi, vp = (1 - H) vb
``2cum``            ``2CU`` ``vb``, ``Fb``, ``PS``           fp = 6000 (1 - H) Fb, ps = 60 PS,
                                                            vp = (1 - H) vb
==================  ======  ==============================  ==================================

Units and naming
----------------
* dcmri flows (``Fb``, ``PS``, ``Ktrans``) are in mL/sec/cm3 = /s: ``/min = 60 x /s``;
  ``mL/100mL/min = 6000 x mL/sec/cm3``. dcmri's ``Fb`` is *blood* flow; plasma flow
  ``Fp = (1 - H) Fb``.
* dcmri volumes are mL/cm3 (= phantomdce's fractions). dcmri's ``vb`` is *blood* volume;
  ``vp = (1 - H) vb``. ``vi`` (interstitial volume) is phantomdce's ``ve``. In the HF regime
  dcmri's ``PS`` is the extravasation rate constant, i.e. Ktrans in the high-flow limit, and
  in HFU the Patlak uptake rate; in WV dcmri names it ``Ktrans`` itself.
* dcmri's input ``ca`` is the arterial *blood* concentration and every model divides it by
  ``1 - H``. phantomdce gives *plasma* concentration, so the adapter passes
  ``ca_blood = (1 - H) ca_plasma``. ``H`` cancels in every concentration curve; it only sets
  the admissible range of vp through dcmri's bound ``vb <= 0.999``. ``H`` is the
  haematocrit the analyst assumes, the pipeline's ``assumed_hct`` attribute if the dataset
  has one, else dcmri's default 0.45 (never the subject's true haematocrit, which a fitter
  does not see).
* dcmri concentrations are in M by convention; every model is linear in concentration, so
  curves in mM give estimates in the same units.
* dcmri's time axis is in s, as phantomdce's.

Initial values and bounds are dcmri's defaults (``dcmri.ui_tissue.PARAMS``): ``vb`` 0.1,
``vi`` 0.3 (bounds 0.001-0.999), ``PS`` 0.003 /s, ``Fb`` 0.02 mL/sec/cm3, WV ``Ktrans``
0.0023 /s (bounds 0-inf).

Not provided: delay fitting (dcmri's ``Tissue`` has a plug-flow arterial delay ``Ta``, but
not as a per-voxel free parameter of ``TissueArray``; this adapter does not fit it).

Limits (the phantomdce fitter contract): an estimate where the model degenerates is a
success, flagged ``at_limit_<param>`` and stored as the limit: ``vb`` at dcmri's lower bound
is vp -> 0 (stored 0.0), ``PS`` at 0 in the 2CX/2CU models is PS -> 0 (stored 0.0), and
``fp`` at or above :data:`FP_LIMIT` (dcmri does not bound ``Fb`` above) is Fp -> infinity
(stored ``inf``; the other parameters are those of the fit), ``Ktrans`` at 0 is no leakage
(stored 0.0) and ``vi`` at dcmri's upper bound is the physical limit ve -> 1 (stored 1.0).
``Ktrans = 0`` (and ``PS = 0`` in the 2CX model) leaves ``ve`` undetermined: it is stored
NaN with ``at_limit_ve`` True and does not fail the voxel. ``vi`` or ``vb`` at any other
dcmri bound is a limit of the search only: the voxel fails.

Unfittable voxels (NaN, success False): non-finite values, no positive value (all zeros or a
negative curve), non-positive mean, flat curve, or dcmri's ``train`` reporting a curve_fit
error (it then warns and returns the initial values, which this adapter treats as failure).
"""

from __future__ import annotations

import importlib.metadata
import warnings
from dataclasses import dataclass

import dcmri
import numpy as np
import xarray as xr
from dcmri.ui_tissue import PARAMS as DCMRI_TISSUE_PARAMS
from numpy.typing import NDArray
from phantomdce.fit.base import concentration_inputs, unfittable

__all__ = [
    "ModelMapping",
    "MODEL_MAP",
    "DcmriConcentrationTissue",
    "DcmriFitter",
    "all_fitters",
    "to_phantomdce",
    "limit_flags",
    "FP_LIMIT",
]

VERSION = "0.1.0"
DCMRI_VERSION = importlib.metadata.version("dcmri")
DEFAULT_H = float(DCMRI_TISSUE_PARAMS["H"]["init"])  # dcmri's default tissue haematocrit

PER_S_TO_PER_MIN = 60.0  # /s -> /min
FLOW_TO_ML_100ML_MIN = 6000.0  # mL/sec/cm3 -> mL/100mL/min
#: Plasma flow (mL/100mL/min) from which a fit is at the limit Fp -> infinity (the upper
#: search bound of phantomdce's built-in fitter; no tissue comes near it).
FP_LIMIT = 2000.0
BOUND_TOL = 1e-6  # relative distance (of the bound interval) that counts as on a bound


@dataclass(frozen=True)
class ModelMapping:
    """How one phantomdce model maps to a dcmri kinetic regime.

    Attributes
    ----------
    kinetics : str
        dcmri ``kinetics`` code.
    free : tuple of str
        dcmri parameters fitted (in dcmri's units).
    outputs : tuple of str
        phantomdce result variables, in order.

    """

    kinetics: str
    free: tuple[str, ...]
    outputs: tuple[str, ...]


MODEL_MAP: dict[str, ModelMapping] = {
    "tofts": ModelMapping("WV", ("vi", "Ktrans"), ("Ktrans", "ve")),
    "extended_tofts": ModelMapping("HF", ("vb", "vi", "PS"), ("Ktrans", "ve", "vp")),
    "patlak": ModelMapping("HFU", ("vb", "PS"), ("Ktrans", "vp")),
    "2cxm": ModelMapping("2CX", ("vb", "vi", "Fb", "PS"), ("fp", "ps", "ve", "vp")),
    "2cum": ModelMapping("2CU", ("vb", "Fb", "PS"), ("fp", "ps", "vp")),
}
"""phantomdce model -> dcmri kinetics, free dcmri parameters and phantomdce outputs."""


def to_phantomdce(model: str, p: dict[str, float], H: float) -> dict[str, float]:
    """Convert fitted dcmri parameters to phantomdce's names and units.

    Parameters
    ----------
    model : str
        phantomdce model name (a key of :data:`MODEL_MAP`).
    p : dict
        dcmri parameter values (``vb``, ``vi`` mL/cm3; ``Fb``, ``PS``, ``Ktrans``
        mL/sec/cm3).
    H : float
        Tissue haematocrit used in the fit.

    Returns
    -------
    dict
        ``Ktrans``/``ps`` in /min, ``fp`` in mL/100mL/min, ``ve``/``vp`` fractions.

    Examples
    --------
    >>> to_phantomdce("extended_tofts", {"vb": 0.1, "vi": 0.3, "PS": 0.002}, 0.5)
    {'Ktrans': 0.12, 've': 0.3, 'vp': 0.05}

    """
    out: dict[str, float] = {}
    if "Ktrans" in p:  # WV
        out["Ktrans"] = p["Ktrans"] * PER_S_TO_PER_MIN
    if "Fb" in p:
        out["fp"] = p["Fb"] * (1.0 - H) * FLOW_TO_ML_100ML_MIN
    if "PS" in p:
        key = "ps" if model in ("2cxm", "2cum") else "Ktrans"
        out[key] = p["PS"] * PER_S_TO_PER_MIN
    if "vi" in p:
        out["ve"] = p["vi"]
    if "vb" in p:
        out["vp"] = p["vb"] * (1.0 - H)
    return {k: float(out[k]) for k in MODEL_MAP[model].outputs}


class DcmriConcentrationTissue(dcmri.Model):
    """A dcmri model whose prediction is dcmri's tissue concentration ``conc_tissue``.

    :class:`dcmri.Tissue` predicts signals; this subclass of the public :class:`dcmri.Model`
    predicts the concentration so that dcmri's ``train`` fits concentration curves.

    Parameters
    ----------
    kinetics : str
        dcmri kinetic regime (``'WV'``, ``'HF'``, ``'HFU'``, ``'2CX'``, ``'2CU'``).
    free : sequence of str
        dcmri parameters to fit; they start at dcmri's defaults within dcmri's bounds.
    t : ndarray
        Time points of the AIF and the data, s.
    ca : ndarray
        Arterial *blood* concentration at ``t``.
    H : float
        Tissue haematocrit (fixed).

    """

    def __init__(
        self,
        kinetics: str,
        free: tuple[str, ...],
        t: NDArray[np.float64],
        ca: NDArray[np.float64],
        H: float,
    ) -> None:
        super().__init__()
        self.kinetics = kinetics
        self.t = t
        self.ca = ca
        self.H = H
        self._free_names = tuple(free)
        for p in free:
            setattr(self, p, float(DCMRI_TISSUE_PARAMS[p]["init"]))
        self.free = {p: list(DCMRI_TISSUE_PARAMS[p]["bounds"]) for p in free}

    def kinetic_params(self) -> dict[str, float]:
        """The current values of the fitted dcmri parameters."""
        return {p: float(getattr(self, p)) for p in self._free_names}

    def predict(self, xdata: NDArray[np.float64]) -> NDArray[np.float64]:
        """Tissue concentration from :func:`dcmri.conc_tissue` at the AIF's time points.

        Parameters
        ----------
        xdata : ndarray
            Time points, s; must be the AIF's time points.

        Returns
        -------
        ndarray
            Tissue concentration, same units as ``ca``.

        """
        c = dcmri.conc_tissue(
            self.ca, t=self.t, kinetics=self.kinetics, H=self.H, **self.kinetic_params()
        )
        return np.asarray(c, dtype=np.float64)


def limit_flags(
    model: str, est: dict[str, NDArray[np.float64]], H: float
) -> tuple[dict[str, NDArray[np.bool_]], NDArray[np.bool_]]:
    """``at_limit`` flags per parameter, and voxels on a bound of the search only.

    Parameters
    ----------
    model : str
        phantomdce model name.
    est : dict of str to ndarray
        Estimates in phantomdce units (NaN where not fitted).
    H : float
        Tissue haematocrit used in the fit (vp = vb (1 - H)).

    Returns
    -------
    limits : dict of str to ndarray of bool
        ``vp`` (vb at its lower bound), ``ps`` (2CX/2CU: PS = 0), ``fp`` (>= FP_LIMIT),
        ``Ktrans`` (Ktrans = 0), ``ve`` (vi at its upper bound, or undetermined because
        Ktrans or the 2CX PS is 0: see :func:`undetermined_ve`).
    search : ndarray of bool
        True where vi or vb sits on another of dcmri's bounds (vi not judged where it is
        undetermined).

    Examples
    --------
    >>> import numpy as np
    >>> lim, search = limit_flags("2cum", {"fp": np.array([3e3]), "ps": np.array([0.0]),
    ...                                    "vp": np.array([0.05])}, 0.45)
    >>> {k: bool(v[0]) for k, v in lim.items()}, bool(search[0])
    ({'fp': True, 'ps': True, 'vp': False}, False)

    """
    n = next(iter(est.values())).shape[0]
    limits: dict[str, NDArray[np.bool_]] = {}
    search = np.zeros(n, dtype=bool)
    with np.errstate(invalid="ignore"):
        if "fp" in est:
            limits["fp"] = est["fp"] >= FP_LIMIT
        if "ps" in est:
            limits["ps"] = est["ps"] <= 0.0
        if "Ktrans" in est:
            limits["Ktrans"] = est["Ktrans"] <= 0.0
        free = undetermined_ve(limits)
        for name, dname, scale in (("vp", "vb", 1.0 - H), ("ve", "vi", 1.0)):
            if name not in est:
                continue
            lo, hi = (b * scale for b in DCMRI_TISSUE_PARAMS[dname]["bounds"])
            tol = BOUND_TOL * (hi - lo)
            if name == "vp":
                limits["vp"] = est[name] <= lo + tol
                search |= est[name] >= hi - tol
            else:
                limits["ve"] = (est[name] >= hi - tol) | free
                search |= (est[name] <= lo + tol) & ~free
    return limits, search


def undetermined_ve(limits: dict[str, NDArray[np.bool_]]) -> NDArray[np.bool_]:
    """Voxels whose ``ve`` is undetermined: ``Ktrans`` or ``ps`` at its limit 0.

    Parameters
    ----------
    limits : dict of str to ndarray of bool
        ``at_limit`` flags with (some of) ``Ktrans`` and ``ps``.

    Returns
    -------
    ndarray of bool
        True where ve has no effect on the curve (its value is arbitrary).

    """
    n = next(iter(limits.values())).shape[0] if limits else 0
    out = np.zeros(n, dtype=bool)
    for cause in ("Ktrans", "ps"):
        if cause in limits:
            out |= limits[cause]
    return out


class DcmriFitter:
    """A phantomdce fitter backed by dcmri's tissue model and optimiser.

    Parameters
    ----------
    model : {"tofts", "extended_tofts", "patlak", "2cxm", "2cum"}
        phantomdce model; see :data:`MODEL_MAP` for the dcmri regime used.
    **train_options
        Extra keyword arguments for dcmri's ``train`` (passed on to ``curve_fit``, e.g.
        ``xtol``); by default dcmri's own settings are used.

    Attributes
    ----------
    name : str
        ``"dcmri_<model>"``.
    version : str
        ``"<adapter version>+dcmri<dcmri version>"``.
    model, input, method : str
        ``input="concentration"``, ``method="nlls"`` (dcmri's ``train(method='NLLS')``).

    Examples
    --------
    >>> f = DcmriFitter("extended_tofts")
    >>> f.name, f.method, MODEL_MAP[f.model].kinetics
    ('dcmri_extended_tofts', 'nlls', 'HF')

    """

    input = "concentration"
    method = "nlls"

    def __init__(self, model: str, **train_options: float) -> None:
        if model not in MODEL_MAP:
            raise ValueError(f"model={model!r}: expected one of {sorted(MODEL_MAP)}")
        self.model = model
        self.name = f"dcmri_{model}"
        self.version = f"{VERSION}+dcmri{DCMRI_VERSION}"
        self._options = dict(train_options)

    def __repr__(self) -> str:
        return f"DcmriFitter(model={self.model!r})"

    def _fit_one(
        self, t: NDArray, ca_blood: NDArray, y: NDArray, H: float
    ) -> dict[str, float] | None:
        m = MODEL_MAP[self.model]
        tissue = DcmriConcentrationTissue(m.kinetics, m.free, t, ca_blood, H)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with np.errstate(all="ignore"):
                tissue.train(t, y, **self._options)
        if any("error in curve_fit" in str(w.message) for w in caught):
            return None  # dcmri returned its initial values after a curve_fit failure
        est = to_phantomdce(self.model, tissue.kinetic_params(), H)
        if not all(np.isfinite(v) for v in est.values()):
            return None
        return est

    def fit(self, data: xr.Dataset) -> xr.Dataset:
        """Fit every voxel of one case with dcmri.

        Parameters
        ----------
        data : xarray.Dataset
            Coordinate ``time`` (s), ``ct`` (voxel, time) mM, ``ca`` (time) plasma mM;
            optional attribute ``assumed_hct``. Not modified.

        Returns
        -------
        xarray.Dataset
            Dimension ``voxel``: the model's parameters in phantomdce units and ``success``.

        Raises
        ------
        ValueError
            If ``data`` lacks ``time``, ``ct`` or ``ca``, or the AIF or time axis is invalid.

        """
        t, ca, cts = concentration_inputs(data, min_frames=2)
        H = float(data.attrs.get("assumed_hct", DEFAULT_H))
        if not 0.0 < H < 1.0:
            H = DEFAULT_H
        ca_blood = (1.0 - H) * ca  # dcmri wants blood concentration; it divides by 1 - H

        names = list(MODEL_MAP[self.model].outputs)
        n = cts.shape[0]
        est = np.full((n, len(names)), np.nan)
        ok = np.zeros(n, dtype=bool)
        for i in np.flatnonzero(~unfittable(cts)):
            try:
                got = self._fit_one(t, ca_blood, cts[i], H)
            except (RuntimeError, ValueError, FloatingPointError, ZeroDivisionError):
                got = None
            if got is not None:
                est[i] = [got[k] for k in names]
                ok[i] = True

        limits, search = limit_flags(self.model, {k: est[:, j] for j, k in enumerate(names)}, H)
        ok &= ~search
        for name, flags in limits.items():
            est[flags, names.index(name)] = {"fp": np.inf, "ve": 1.0}.get(name, 0.0)
        if "ve" in names:
            free = undetermined_ve(limits)
            est[free, names.index("ve")] = np.nan
        est[~ok] = np.nan
        coords = {"voxel": data["voxel"].values.copy()} if "voxel" in data.coords else {}
        out = xr.Dataset({k: ("voxel", est[:, j]) for j, k in enumerate(names)}, coords=coords)
        out["success"] = ("voxel", ok)
        for name, flags in limits.items():
            out[f"at_limit_{name}"] = ("voxel", flags & ok)
        out.attrs.update(
            fitter=self.name,
            fitter_version=self.version,
            model=self.model,
            method=self.method,
            dcmri_kinetics=MODEL_MAP[self.model].kinetics,
            dcmri_H=H,
        )
        return out


def all_fitters() -> list[DcmriFitter]:
    """One dcmri fitter per phantomdce model (the ``phantomdce.fitters`` entry point).

    Returns
    -------
    list of DcmriFitter
        ``dcmri_tofts``, ``dcmri_extended_tofts``, ``dcmri_patlak``, ``dcmri_2cxm``,
        ``dcmri_2cum``.

    Examples
    --------
    >>> [f.name for f in all_fitters()]  # doctest: +NORMALIZE_WHITESPACE
    ['dcmri_tofts', 'dcmri_extended_tofts', 'dcmri_patlak', 'dcmri_2cxm', 'dcmri_2cum']

    """
    return [DcmriFitter(m) for m in MODEL_MAP]
