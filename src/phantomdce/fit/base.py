"""The plug-in fitter contract.

A fitter is any object with these attributes and one method:

``name`` (str)
    Unique registry name, e.g. ``"nlls_extended_tofts"``.
``version`` (str)
    The fitter's own version (recorded with every result).
``model`` (str)
    One of ``"tofts"``, ``"extended_tofts"``, ``"patlak"``, ``"2cxm"``, ``"2cum"``.
``input`` (str)
    ``"concentration"`` (gets ``ct`` and ``ca``) or ``"signal"`` (also gets ``signal``,
    ``vfa_signal``, ``flip_angle`` and the protocol attributes).
``method`` (str)
    Free text naming the estimator family, e.g. ``"nlls"``, ``"llsq"``, ``"bayes"``.
``fit(data: xarray.Dataset) -> xarray.Dataset``
    ``data`` is one case in DRO naming: coordinate ``time`` (s), ``ct`` (voxel, time) in mM,
    ``ca`` (time) plasma concentration in mM, and in ``data.attrs`` the acquisition settings
    a site knows (:data:`phantomdce.dro.boundary.ACQUISITION_ATTRS`) with the analyst's
    assumptions (``assumed_hct``, ``assumed_b1``, ``assumed_bat`` in s, ``assumed_t1_blood``
    in s); never the subject's truth (true B1, haematocrit, bolus arrival, SNR). The result
    has dimension ``voxel`` (same length and order) with one variable per estimated
    parameter (``Ktrans`` in /min, ``ve``, ``vp``, ``fp`` in mL/100mL/min, ``ps`` in /min,
    ``delay`` in s, as the model has them) and a boolean ``success``. A fitter never
    modifies its input; a voxel it cannot fit gets NaN estimates and ``success=False``.

What ``success`` means (the same rule for built-in fitters and plug-ins):

- ``success`` is True when the parameters the data identify converged, whether or not a
  parameter sits on a bound of the search; it is False (estimates NaN) when the data cannot
  determine the parameters: a flat, pure-noise or no-contrast curve, a singular or
  near-singular normal matrix ``J^T J`` at the solution, a fit that accepted no iteration,
  or a fit that ended on a bound that is only a limit of the search (not of the model).
- A parameter at a limit where the model degenerates is not a failure. The result then
  holds a boolean variable ``at_limit_<param>`` (dim ``voxel``) that is True for that
  voxel, the value stored for the parameter is the limit itself, and the voxel's other
  parameters are finite estimates that count as successful fits. The limits are
  ``fp -> inf`` (stored ``inf``: the 2CXM becomes the extended Tofts model and the 2CUM the
  Patlak model, with PS their Ktrans), ``ps -> 0`` (stored ``0.0``: no exchange) and
  ``vp -> 0`` (stored ``0.0``: no plasma volume), ``Ktrans -> 0`` (stored ``0.0``: no
  leakage; extended Tofts becomes a plasma-only model, Tofts a curve with no contrast) and
  ``ve -> 1`` (stored ``1.0``: the whole tissue is extravascular extracellular space, a
  physical limit, not a bound of the search).
- A parameter that such a limit leaves undetermined (its Jacobian column vanishes:
  ``ve`` when ``Ktrans = 0`` in the Tofts models, ``ve`` of the 2CXM when ``ps = 0``,
  :data:`UNDETERMINED_AT_LIMIT`) is stored as NaN with its own ``at_limit_<param>`` True:
  a NaN flagged at a limit means "undetermined at this limit". It does not make the fit
  fail (the parameters that are still determined, e.g. ``vp``, are the estimate), it is
  left out of the identifiability test, and metrics count it as neither a valid estimate
  nor a failed fit (:mod:`phantomdce.engine.metrics`).
- ``at_limit_<param>`` may be given for any estimated parameter; an absent variable means
  all False; it is False wherever ``success`` is False. The engine stores the flags as
  ``at_limit_<param>`` (fitter, voxel) beside the estimates.

The built-in fitters' thresholds for "cannot determine" are in
:mod:`phantomdce.fit._common` (:data:`~phantomdce.fit._common.COND_MAX`,
:data:`~phantomdce.fit._common.F_ALPHA`).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np
import xarray as xr

from phantomdce.params import MODELS

__all__ = [
    "Fitter",
    "FITTER_ATTRIBUTES",
    "INPUTS",
    "AT_LIMIT_VALUES",
    "UNDETERMINED_AT_LIMIT",
    "check_fitter",
    "concentration_inputs",
    "undetermined_at_limit",
    "unfittable",
]

FITTER_ATTRIBUTES = ("name", "version", "model", "input", "method")
INPUTS = ("concentration", "signal")
#: The limits where a model degenerates: parameter -> the value stored for an estimate there
#: (package units), flagged ``at_limit_<param>`` (see the module docstring).
AT_LIMIT_VALUES = {"fp": float("inf"), "ps": 0.0, "vp": 0.0, "Ktrans": 0.0, "ve": 1.0}
#: Limits that leave other parameters undetermined: parameter at its limit -> the
#: parameters then stored as NaN and flagged ``at_limit_<param>`` (see the module docstring).
UNDETERMINED_AT_LIMIT = {"Ktrans": ("ve",), "ps": ("ve",)}


def undetermined_at_limit(limits: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """Voxels whose parameter a limit leaves undetermined (:data:`UNDETERMINED_AT_LIMIT`).

    Parameters
    ----------
    limits : dict of str to ndarray of bool (n_vox,)
        The ``at_limit_<param>`` flags of the parameters at a limit.
    names : list of str
        The model's estimated parameters.

    Returns
    -------
    dict of str to ndarray of bool (n_vox,)
        One entry per estimated parameter that some limit can leave undetermined (e.g.
        ``ve`` where ``Ktrans`` or the 2CXM's ``ps`` is at 0).

    Examples
    --------
    >>> import numpy as np
    >>> undetermined_at_limit({"Ktrans": np.array([True, False])}, ["Ktrans", "ve", "vp"])
    {'ve': array([ True, False])}
    """
    out: dict[str, Any] = {}
    for cause, params in UNDETERMINED_AT_LIMIT.items():
        if cause not in limits:
            continue
        for name in params:
            if name in names:
                out[name] = out.get(name, np.zeros_like(limits[cause])) | limits[cause]
    return out


def concentration_inputs(
    data: xr.Dataset, *, min_frames: int = 3
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The arrays of a concentration fitter's input, checked and copied.

    For plug-in authors: what a fitter with ``input = "concentration"`` receives (see the
    module docstring), as float64 arrays, with a clear error for a dataset that is not one.

    Parameters
    ----------
    data : xarray.Dataset
        ``ct`` (voxel, time) tissue concentration and ``ca`` (time) plasma AIF, mM, on the
        coordinate ``time`` (s).
    min_frames : int, optional
        Fewest time samples the fitter accepts.

    Returns
    -------
    t : ndarray (n_t,)
        Frame times, s.
    ca : ndarray (n_t,)
        Plasma AIF, mM.
    ct : ndarray (n_voxel, n_t)
        Tissue curves, mM (a copy, voxel-major).

    Raises
    ------
    ValueError
        A missing variable or coordinate, wrong dimensions, a non-finite AIF or time, fewer
        than ``min_frames`` samples or a time axis that is not strictly increasing (the
        message names the variable, the first bad index and its value).

    Examples
    --------
    >>> ds = xr.Dataset({"ct": (("voxel", "time"), np.zeros((2, 3))),
    ...                  "ca": ("time", np.ones(3))}, coords={"time": [0.0, 1.0, 2.0]})
    >>> [a.shape for a in concentration_inputs(ds)]
    [(3,), (3,), (2, 3)]
    """
    for var in ("ct", "ca"):
        if var not in data:
            raise ValueError(f"dataset has no variable {var!r}: expected 'ct' and 'ca' (mM)")
    if "time" not in data.coords:
        raise ValueError("dataset has no coordinate 'time' (s)")
    if set(data["ct"].dims) != {"voxel", "time"}:
        raise ValueError(f"ct has dims {data['ct'].dims}: expected ('voxel', 'time')")
    if data["ca"].dims != ("time",):
        raise ValueError(f"ca has dims {data['ca'].dims}: expected ('time',)")
    t = np.array(data["time"].values, dtype=np.float64)
    ca = np.array(data["ca"].values, dtype=np.float64)
    for name, arr, unit in (("time", t, "s"), ("ca", ca, "mM")):
        bad = np.flatnonzero(~np.isfinite(arr))
        if bad.size:
            raise ValueError(
                f"{name}[{bad[0]}] = {float(arr[bad[0]])!r} {unit}: expected finite values"
                f" ({bad.size} of {arr.size} are not)"
            )
    if t.size < min_frames:
        raise ValueError(f"time has {t.size} samples: expected >= {min_frames}")
    step = np.flatnonzero(np.diff(t) <= 0)
    if step.size:
        i = int(step[0])
        raise ValueError(
            f"time[{i + 1}] = {float(t[i + 1])!r} s after time[{i}] = {float(t[i])!r} s:"
            " expected strictly increasing frame times"
        )
    ct = np.array(data["ct"].transpose("voxel", "time").values, dtype=np.float64)
    return t, ca, ct


def unfittable(ct: np.ndarray) -> np.ndarray:
    """Flag tissue curves no kinetic model can be fitted to.

    Parameters
    ----------
    ct : array_like, shape (n_voxel, n_t)
        Tissue concentration curves, mM.

    Returns
    -------
    ndarray of bool, shape (n_voxel,)
        True where the curve has a non-finite value, no positive value, a non-positive mean
        or zero peak-to-peak range (a plug-in reports these as failed fits).

    Examples
    --------
    >>> unfittable(np.array([[0, 1, 2], [0, 0, 0], [np.nan, 1, 2], [-1, -2, 0], [3, 3, 3]]))
    array([False,  True,  True,  True,  True])
    """
    # the built-in fitters' screen (non-finite, no positive value, flat), and a mean <= 0
    from phantomdce.fit._common import screen_voxels

    ct = np.asarray(ct, dtype=np.float64)
    safe = np.where(np.isfinite(ct), ct, 0.0)
    return screen_voxels(ct) | (np.mean(safe, axis=-1) <= 0.0)


@runtime_checkable
class Fitter(Protocol):
    """Structural type of a plug-in fitter (see the module docstring)."""

    name: str
    version: str
    model: str
    input: str
    method: str

    def fit(self, data: xr.Dataset) -> xr.Dataset:
        """Estimate the model's parameters for every voxel of one case."""
        ...


def check_fitter(obj: object, *, source: str = "") -> None:
    """Raise ``TypeError`` naming what is missing or wrong if ``obj`` is not a fitter.

    Parameters
    ----------
    obj : object
        The candidate fitter.
    source : str, optional
        Where it came from, for the message.
    """
    where = f" (from {source})" if source else ""
    for attr in FITTER_ATTRIBUTES:
        value = getattr(obj, attr, None)
        if not isinstance(value, str) or not value:
            raise TypeError(
                f"fitter {obj!r}{where}: attribute {attr!r} = {value!r}: expected a non-empty str"
            )
    if obj.model not in MODELS:  # type: ignore[attr-defined]
        raise TypeError(
            f"fitter {obj.name!r}{where}: model = {obj.model!r}: expected one of {sorted(MODELS)}"  # type: ignore[attr-defined]
        )
    if obj.input not in INPUTS:  # type: ignore[attr-defined]
        raise TypeError(
            f"fitter {obj.name!r}{where}: input = {obj.input!r}: expected one of {list(INPUTS)}"  # type: ignore[attr-defined]
        )
    if not callable(getattr(obj, "fit", None)):
        raise TypeError(f"fitter {obj.name!r}{where}: expected a callable fit(data) method")  # type: ignore[attr-defined]
