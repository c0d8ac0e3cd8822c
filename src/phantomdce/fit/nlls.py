"""Batched nonlinear least-squares fitters for all five kinetic models.

Bounded Levenberg-Marquardt on every voxel at once in numba (:mod:`phantomdce.fit._lm`),
with analytic Jacobians of models that are exact for a piecewise-linear AIF, starting
values from the linear least-squares solution where one exists plus fixed fallbacks
(the best of the starts is kept), and an optional arterial delay.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xarray as xr

import phantomdce
from phantomdce.fit import _lm
from phantomdce.fit._common import check_inputs, result_dataset, screen_voxels
from phantomdce.fit.llsq import llsq
from phantomdce.kinetics import FP_UNIT, PER_MIN
from phantomdce.params import MODELS

__all__ = ["NLLSFitter", "nlls", "BOUNDS"]

#: Bounds in package units (Ktrans, ps /min; fp mL/100mL/min; delay s).
BOUNDS = {
    "Ktrans": (0.0, 5.0),
    "ve": (1e-3, 1.0),
    "vp": (0.0, 1.0),
    "fp": (1e-2, 2000.0),
    "ps": (0.0, 10.0),
    "delay": (-10.0, 30.0),
}
#: Lower bounds where the model divides by the parameter.
_STRICT = {("2cxm", "vp"): 1e-4, ("2cum", "vp"): 1e-4}
_SCALE = {"Ktrans": PER_MIN, "ps": PER_MIN, "fp": FP_UNIT, "ve": 1.0, "vp": 1.0, "delay": 1.0}
#: Delay values (s) every voxel is started from when the delay is fitted.
DELAY_STARTS = (0.0, 4.0, 8.0, 14.0)
#: Bounds that are physical values, not limits of the search: an estimate there is valid.
PHYSICAL_BOUNDS = {("Ktrans", "lower"), ("vp", "lower"), ("ps", "lower")}


def _names(model: str, fit_delay: bool) -> list[str]:
    return list(MODELS[model].parameters) + (["delay"] if fit_delay else [])


def _bounds(model: str, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    lo = np.array([max(BOUNDS[n][0], _STRICT.get((model, n), -np.inf)) for n in names])
    hi = np.array([BOUNDS[n][1] for n in names])
    scale = np.array([_SCALE[n] for n in names])
    return lo * scale, hi * scale


def _starts(model: str, t, ct, ca, n_vox: int) -> list[dict[str, np.ndarray]]:
    """Starting values in package units: the linear solution (if any) and fallbacks."""
    full = lambda v: np.full(n_vox, v, dtype=np.float64)  # noqa: E731
    lin_model = "patlak" if model == "patlak" else "extended_tofts"
    lin = llsq(t, ct, ca, model=lin_model)
    kt = np.clip(np.nan_to_num(lin["Ktrans"], nan=0.1), 1e-3, 4.0)
    vp = np.clip(np.nan_to_num(lin["vp"], nan=0.02), 1e-3, 0.9)
    if model == "patlak":
        return [{"Ktrans": kt, "vp": vp}, {"Ktrans": full(0.05), "vp": full(0.05)}]
    ve = np.clip(np.nan_to_num(lin["ve"], nan=0.2), 0.02, 0.95)
    if model == "tofts":
        lin_t = llsq(t, ct, ca, model="tofts")
        kt_t = np.clip(np.nan_to_num(lin_t["Ktrans"], nan=0.1), 1e-3, 4.0)
        ve_t = np.clip(np.nan_to_num(lin_t["ve"], nan=0.2), 0.02, 0.95)
        return [{"Ktrans": kt_t, "ve": ve_t}, {"Ktrans": full(0.1), "ve": full(0.2)}]
    if model == "extended_tofts":
        return [
            {"Ktrans": kt, "ve": ve, "vp": vp},
            {"Ktrans": full(0.1), "ve": full(0.2), "vp": full(0.01)},
        ]
    ps = np.clip(kt, 1e-3, 5.0)
    vp2 = np.clip(vp, 1e-3, 0.5)
    starts = []
    for fp in (20.0, 100.0):
        s = {"fp": full(fp), "ps": ps, "vp": vp2}
        if model == "2cxm":
            s["ve"] = ve
        starts.append(s)
    generic = {"fp": full(50.0), "ps": full(0.1), "vp": full(0.05)}
    if model == "2cxm":
        generic["ve"] = full(0.2)
    starts.append(generic)
    return starts


def nlls(
    t: np.ndarray,
    ct: np.ndarray,
    ca: np.ndarray,
    *,
    model: str,
    fit_delay: bool = False,
    parallel: bool = False,
    max_iter: int = 100,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Fit every voxel by bounded Levenberg-Marquardt.

    Parameters
    ----------
    t : ndarray (n_t,)
        Frame times in s, strictly increasing.
    ct : ndarray (n_vox, n_t)
        Tissue concentration in mM. Rows must be finite (screen them first).
    ca : ndarray (n_t,)
        Plasma AIF in mM.
    model : str
        One of ``tofts``, ``extended_tofts``, ``patlak``, ``2cxm``, ``2cum``.
    fit_delay : bool, optional
        Also fit an arterial delay (s), shifting the AIF.
    parallel : bool, optional
        Spread voxels over numba's threads.
    max_iter : int, optional
        Iterations per start.

    Returns
    -------
    estimates : dict of str to ndarray (n_vox,)
        Parameters in package units (Ktrans, ps /min; fp mL/100mL/min; delay s); NaN for
        a voxel that cannot be fitted (see :func:`phantomdce.fit._common.screen_voxels`).
    sse : ndarray (n_vox,)
        Residual sum of squares, mM^2 (NaN where not fitted).

    Raises
    ------
    ValueError
        Fewer frames than parameters + 1: the fit would be undetermined.
    """
    if model not in MODELS:
        raise ValueError(f"model={model!r}: expected one of {sorted(MODELS)}")
    t = np.ascontiguousarray(t, dtype=np.float64)
    ca = np.ascontiguousarray(ca, dtype=np.float64)
    ct = np.ascontiguousarray(ct, dtype=np.float64)
    n_vox = ct.shape[0]
    names = _names(model, fit_delay)
    if t.size <= len(names):
        raise ValueError(
            f"time has {t.size} frames: the {model} model"
            f"{' with delay' if fit_delay else ''} has {len(names)} parameters and needs at"
            f" least {len(names) + 1} frames"
        )
    bad = screen_voxels(ct)
    ct = np.where(bad[:, None], 0.0, ct)
    lo, hi = _bounds(model, names)
    scale = np.array([_SCALE[n] for n in names])
    base = _starts(model, t, ct, ca, n_vox)
    delays = DELAY_STARTS if fit_delay else (None,)
    starts = np.empty((n_vox, len(base) * len(delays), len(names)))
    k = 0
    for d in delays:
        for s in base:
            for q, n in enumerate(names):
                starts[:, k, q] = (d if n == "delay" else s[n]) * scale[q]
            k += 1
    out = np.zeros((n_vox, len(names) + 1))
    out[bad, 0] = np.nan  # the kernel skips voxels marked NaN
    kernel = _lm.fit_parallel if parallel else _lm.fit_serial
    kernel(_lm.MODEL_CODES[model], t, ca, ct, starts, lo, hi, fit_delay, max_iter, out)
    out[bad] = np.nan
    est = {n: out[:, q] / scale[q] for q, n in enumerate(names)}
    return est, out[:, -1]


def at_search_bound(model: str, estimates: dict[str, np.ndarray]) -> np.ndarray:
    """Voxels with a parameter at a limit of the search (not a physical zero).

    Such a fit did not find a minimum inside the admissible region (typically a curve
    with no information on that parameter, such as pure noise), so it is not a success.
    """
    out = np.zeros(next(iter(estimates.values())).shape, dtype=bool)
    for name, values in estimates.items():
        lo, hi = BOUNDS[name]
        if name in ("ve", "vp") and model in ("2cxm", "2cum"):
            lo = max(lo, _STRICT.get((model, name), lo))
        tol = 1e-6 * (hi - lo)
        with np.errstate(invalid="ignore"):
            if (name, "lower") not in PHYSICAL_BOUNDS:
                out |= values <= lo + tol
            out |= values >= hi - tol
    return out


@dataclass(frozen=True)
class NLLSFitter:
    """Nonlinear least-squares fitter (batched Levenberg-Marquardt), a built-in plug-in.

    ``success`` is False for a voxel that cannot be fitted (non-finite, no positive value,
    flat) and for a fit that ends with a parameter at a limit of the search (see
    :data:`BOUNDS`; the physical zeros of Ktrans, vp and ps are valid estimates), which is
    what pure-noise curves do.

    Parameters
    ----------
    model : str
        One of ``tofts``, ``extended_tofts``, ``patlak``, ``2cxm``, ``2cum``.
    fit_delay : bool, optional
        Also estimate an arterial delay (output variable ``delay``, s).
    parallel : bool, optional
        Spread voxels over all of numba's threads (default one thread).
    max_iter : int, optional
        Levenberg-Marquardt iterations per start.
    """

    model: str
    fit_delay: bool = False
    parallel: bool = False
    max_iter: int = 100
    input: str = "concentration"
    method: str = "nlls"

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"model={self.model!r}: expected one of {sorted(MODELS)}")

    @property
    def name(self) -> str:
        """Registry name, ``nlls_<model>`` (``_delay`` when the delay is fitted)."""
        return f"nlls_{self.model}" + ("_delay" if self.fit_delay else "")

    @property
    def version(self) -> str:
        """The phantomdce version."""
        return phantomdce.__version__

    def fit(self, data: xr.Dataset) -> xr.Dataset:
        """Fit every voxel of one case (see :mod:`phantomdce.fit.base`)."""
        t, ct, ca = check_inputs(data)
        est, sse = nlls(
            t,
            ct,
            ca,
            model=self.model,
            fit_delay=self.fit_delay,
            parallel=self.parallel,
            max_iter=self.max_iter,
        )
        finite = np.isfinite(sse) & np.all([np.isfinite(v) for v in est.values()], axis=0)
        success = finite & ~at_search_bound(self.model, est)
        return result_dataset(data, est, success, {"fitter": self.name, "method": self.method})
