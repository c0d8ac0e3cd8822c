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
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import xarray as xr

from phantomdce.params import MODELS

__all__ = ["Fitter", "FITTER_ATTRIBUTES", "INPUTS", "check_fitter"]

FITTER_ATTRIBUTES = ("name", "version", "model", "input", "method")
INPUTS = ("concentration", "signal")


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
