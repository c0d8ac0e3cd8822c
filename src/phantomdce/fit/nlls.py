"""Batched nonlinear least-squares fitters for all five kinetic models.

Active-set projected Levenberg-Marquardt on every voxel at once in numba
(:mod:`phantomdce.fit._lm`), with analytic Jacobians of models that are exact for a
piecewise-linear AIF, starting values from the linear least-squares solution where one
exists plus fixed fallbacks (the best of the starts is kept), and an optional arterial
delay.

What ``success`` means (the fitter contract, :mod:`phantomdce.fit.base`):

- A bound in :data:`LIMITS` is a limit where the model degenerates to a simpler one or a
  physical limit: ``fp`` at its upper search bound is Fp -> infinity (2CXM -> extended
  Tofts, 2CUM -> Patlak, :data:`FP_LIMIT_MODELS`), ``ps`` at 0 is no exchange, ``vp`` at
  its lower bound is no plasma volume, ``Ktrans`` at 0 is no leakage, ``ve`` at 1 is a
  tissue that is all extravascular extracellular space. An estimate there is stored as the
  limit itself (``inf``, ``0.0``, ``1.0``), flagged by ``at_limit_<param>``, and left out
  of the identifiability test; the fit can succeed. For Fp -> infinity the limit model is
  fitted to the voxel and, where it fits at least as well, gives the other estimates
  (PS = its Ktrans, ve, vp) and the verdict.
- A limit can leave another parameter undetermined
  (:data:`phantomdce.fit.base.UNDETERMINED_AT_LIMIT`: ``ve`` when ``Ktrans = 0``, ``ve`` of
  the 2CXM when ``ps = 0``): its Jacobian column vanishes, so it is left out of the
  identifiability test and of the search-bound test, stored as NaN and flagged
  ``at_limit_<param>`` ("undetermined at this limit"); the fit succeeds on the parameters
  that are still determined.
- Any other bound (:func:`at_search_bound`) is a limit of the search, not of the model:
  the fit found no minimum inside the admissible region and fails.
- The data must determine the parameters (:mod:`phantomdce.fit._common`: condition
  number of the scaled normal matrix at the solution, F-test against no contrast), and
  the best start must have accepted a step or started at a stationary point.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numba
import numpy as np
import xarray as xr

import phantomdce
from phantomdce.fit import _lm, _varpro
from phantomdce.fit._common import (
    COND_MAX,
    beats_no_contrast,
    check_inputs,
    condition_numbers,
    result_dataset,
    screen_voxels,
)
from phantomdce.fit.base import AT_LIMIT_VALUES, undetermined_at_limit
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
#: Delay nodes (s) searched, with the linear parameters solved exactly at each, by the
#: variable-projection fit of the Tofts-family models (:mod:`phantomdce.fit._varpro`):
#: every DELAY_STEP s (searched coarse to fine: :data:`phantomdce.fit._varpro.DELAY_COARSE`),
#: offset so that no node is a whole or half second: the delayed model has a kink wherever
#: a delayed frame meets an AIF sample, with a local minimum of the cost on either side at
#: times, and a start on a kink can only leave it to one side.
DELAY_STEP = 0.25
DELAY_GRID = np.arange(BOUNDS["delay"][0] + 0.1, BOUNDS["delay"][1], DELAY_STEP)
#: Bounds where the model degenerates or that are physical limits: (parameter, side) -> the
#: value stored for an estimate there (package units), flagged by ``at_limit_<param>``.
LIMITS = {
    ("fp", "upper"): AT_LIMIT_VALUES["fp"],
    ("ps", "lower"): AT_LIMIT_VALUES["ps"],
    ("vp", "lower"): AT_LIMIT_VALUES["vp"],
    ("Ktrans", "lower"): AT_LIMIT_VALUES["Ktrans"],
    ("ve", "upper"): AT_LIMIT_VALUES["ve"],
}
#: Relative distance (of the bound interval) within which an estimate is at a bound.
BOUND_TOL = 1e-6


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


def _fit(
    t: np.ndarray,
    ct: np.ndarray,
    ca: np.ndarray,
    model: str,
    fit_delay: bool,
    parallel: bool,
    max_iter: int,
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """The fit: estimates (package units), sse, stuck, ``J^T J`` at the solution, names.

    Tofts, extended Tofts and Patlak are fitted by variable projection
    (:mod:`phantomdce.fit._varpro`: a grid over kep, and the delay if fitted, with the
    linear parameters solved exactly, then the Levenberg-Marquardt polish), the
    two-compartment models by Levenberg-Marquardt from :func:`_starts`. ``J^T J``
    (n_vox, p, p) is in internal units (/s, s), NaN for a voxel that was not fitted.

    ``stuck`` marks voxels whose best start accepted no step and did not start at a
    stationary point: no iteration was accepted.
    """
    if model not in MODELS:
        raise ValueError(f"model={model!r}: expected one of {sorted(MODELS)}")
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
    p = len(names)
    code = _lm.MODEL_CODES[model]
    out = np.zeros((n_vox, p + 3))
    out[bad, 0] = np.nan  # the kernels skip voxels marked NaN
    jtj = np.full((n_vox, p, p), np.nan)
    if code in _varpro.VARPRO_CODES:
        per_decade = _varpro.KEP_PER_DECADE_DELAY if fit_delay else _varpro.KEP_PER_DECADE
        keps = _varpro.kep_grid(code, lo, hi, per_decade)
        delays = DELAY_GRID if fit_delay else np.zeros(1)
        kinks = _varpro.kinks(t, *BOUNDS["delay"]) if fit_delay else np.zeros(0)
        args = (code, t, ca, ct, keps, delays, kinks, lo, hi, fit_delay, max_iter, out, jtj)
        if parallel:
            _varpro.fit_parallel(*args, 8 * numba.get_num_threads())
        else:
            _varpro.fit_serial(*args)
    else:
        base = _starts(model, t, ct, ca, n_vox)
        delay_starts = DELAY_STARTS if fit_delay else (None,)
        starts = np.empty((n_vox, len(base) * len(delay_starts), p))
        k = 0
        for d in delay_starts:
            for s in base:
                for q, n in enumerate(names):
                    starts[:, k, q] = (d if n == "delay" else s[n]) * scale[q]
                k += 1
        args = (code, t, ca, ct, starts, lo, hi, fit_delay, max_iter, out, jtj)
        if parallel:
            _lm.fit_parallel(*args, 8 * numba.get_num_threads())
        else:
            _lm.fit_serial(*args)
    out[bad] = np.nan
    est = {n: out[:, q] / scale[q] for q, n in enumerate(names)}
    # a fit that moved from no start and ended anywhere but a stationary point
    stuck = (out[:, p + 1] == 0) & (out[:, p + 2] == 0)
    return est, out[:, p], stuck, jtj, names


def nlls(
    t: np.ndarray,
    ct: np.ndarray,
    ca: np.ndarray,
    *,
    model: str,
    fit_delay: bool = False,
    parallel: bool = False,
    max_iter: int = 300,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Fit every voxel by active-set projected Levenberg-Marquardt.

    The estimates are the raw minimisers within :data:`BOUNDS`; :class:`NLLSFitter`
    judges which of them are determined and maps degenerate limits (:data:`LIMITS`).

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
    t = np.ascontiguousarray(t, dtype=np.float64)
    ca = np.ascontiguousarray(ca, dtype=np.float64)
    ct = np.ascontiguousarray(ct, dtype=np.float64)
    est, sse, _, _, _ = _fit(t, ct, ca, model, fit_delay, parallel, max_iter)
    return est, sse


def _bound_interval(model: str, name: str) -> tuple[float, float]:
    lo, hi = BOUNDS[name]
    return max(lo, _STRICT.get((model, name), lo)), hi


def at_limits(model: str, estimates: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Voxels whose estimate sits at a limit where the model degenerates (:data:`LIMITS`).

    Returns
    -------
    dict of str to ndarray of bool (n_vox,)
        One entry per estimated parameter that has a limit.
    """
    out = {}
    for name, values in estimates.items():
        lo, hi = _bound_interval(model, name)
        tol = BOUND_TOL * (hi - lo)
        flags = np.zeros(values.shape, dtype=bool)
        with np.errstate(invalid="ignore"):
            if (name, "lower") in LIMITS:
                flags |= values <= lo + tol
            if (name, "upper") in LIMITS:
                flags |= values >= hi - tol
        if (name, "lower") in LIMITS or (name, "upper") in LIMITS:
            out[name] = flags
    return out


def at_search_bound(model: str, estimates: dict[str, np.ndarray]) -> np.ndarray:
    """Voxels with a parameter at a limit of the search (not a limit in :data:`LIMITS`).

    Such a fit did not find a minimum inside the admissible region (typically a curve
    with no information on that parameter, such as pure noise), so it is not a success.
    A parameter left undetermined by a limit
    (:func:`~phantomdce.fit.base.undetermined_at_limit`) is not judged: its value is
    arbitrary.
    """
    out = np.zeros(next(iter(estimates.values())).shape, dtype=bool)
    free = undetermined_at_limit(at_limits(model, estimates), list(estimates))
    for name, values in estimates.items():
        lo, hi = _bound_interval(model, name)
        tol = BOUND_TOL * (hi - lo)
        hit = np.zeros(values.shape, dtype=bool)
        with np.errstate(invalid="ignore"):
            if (name, "lower") not in LIMITS:
                hit |= values <= lo + tol
            if (name, "upper") not in LIMITS:
                hit |= values >= hi - tol
        if name in free:
            hit &= ~free[name]
        out |= hit
    return out


@dataclass(frozen=True)
class NLLSFitter:
    """Nonlinear least-squares fitter (active-set Levenberg-Marquardt), a built-in plug-in.

    ``success`` follows the estimator's meaning (see the module docstring): False for a
    voxel that cannot be fitted (non-finite, no positive value, flat), whose data do not
    determine the parameters (:data:`phantomdce.fit._common.COND_MAX`,
    :data:`phantomdce.fit._common.F_ALPHA`), whose best start accepted no step (and was
    not already stationary), or whose
    fit ends at a limit of the search; True, with ``at_limit_<param>`` set and the limit
    value stored, for an estimate at a limit where the model degenerates (:data:`LIMITS`).

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
    max_iter: int = 300
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
        opts = (self.fit_delay, self.parallel, self.max_iter)
        est, sse, success, limits = _judged_fit(t, ct, ca, self.model, *opts)
        if self.model in FP_LIMIT_MODELS and limits["fp"].any():
            # Fp -> infinity: the estimates are those of the limit model, not of the fit
            # at the numeric bound of fp (which biases PS, ve and vp by up to ~10 %)
            rows = np.flatnonzero(limits["fp"])
            lim_model = FP_LIMIT_MODELS[self.model]
            l_est, l_sse, l_success, l_limits = _judged_fit(t, ct[rows], ca, lim_model, *opts)
            better = l_sse <= sse[rows] * (1.0 + 1e-9)
            use = rows[better]
            for name in est:
                if name == "fp":
                    continue
                est[name][use] = l_est["Ktrans" if name == "ps" else name][better]
            sse[use] = l_sse[better]
            success[use] = l_success[better]
            for name in limits:
                if name in ("vp", "ve"):
                    limits[name][use] = l_limits[name][better]
            limits["ps"][use] = l_limits["Ktrans"][better]
        attrs = {"fitter": self.name, "method": self.method}
        return result_dataset(data, est, success, attrs, at_limit=limits)


#: The model each two-compartment model becomes as Fp -> infinity (its PS is their Ktrans).
FP_LIMIT_MODELS = {"2cxm": "extended_tofts", "2cum": "patlak"}


#: Fewest voxels per thread for which :func:`_judged_fit` splits a fit across threads.
MIN_VOXELS_PER_THREAD = 256

_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def _pool(n_workers: int) -> ThreadPoolExecutor:
    """A thread pool of ``n_workers`` threads, started on first use and kept for reuse."""
    with _POOLS_LOCK:
        pool = _POOLS.get(n_workers)
        if pool is None:
            pool = _POOLS[n_workers] = ThreadPoolExecutor(n_workers, "phantomdce-nlls")
        return pool


def _judged_fit(
    t: np.ndarray,
    ct: np.ndarray,
    ca: np.ndarray,
    model: str,
    fit_delay: bool,
    parallel: bool,
    max_iter: int,
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Fit and judge: estimates, sse, success, and the at-limit flags per parameter.

    An estimate at a limit is stored as the limit (:data:`LIMITS`); a parameter that a
    limit leaves undetermined (:func:`~phantomdce.fit.base.undetermined_at_limit`) is
    stored as NaN, and both are flagged. With ``parallel``, contiguous blocks of voxels
    are fitted and judged on numba's number of threads at once, the first on the calling
    thread and the others on a pool kept between calls (:func:`_pool`); the kernels,
    including the judgement's (:mod:`phantomdce.fit._common`), release the GIL, so the
    judgement runs in parallel too; the result is the same.
    """
    n_threads = numba.get_num_threads() if parallel else 1
    n_threads = min(n_threads, ct.shape[0] // MIN_VOXELS_PER_THREAD)
    if n_threads < 2:
        return _judged_block(t, ct, ca, model, fit_delay, max_iter)
    edges = np.linspace(0, ct.shape[0], n_threads + 1).astype(int)
    block = lambda a, b: _judged_block(t, ct[a:b], ca, model, fit_delay, max_iter)  # noqa: E731
    # the first block on this thread, the others on the pool's (started once: a new thread
    # per call costs about a millisecond, several percent of a fit of a few thousand voxels)
    pool = _pool(n_threads - 1)
    others = [pool.submit(block, a, b) for a, b in zip(edges[1:-1], edges[2:], strict=True)]
    parts = [block(edges[0], edges[1])] + [f.result() for f in others]
    join = lambda dicts: {k: np.concatenate([d[k] for d in dicts]) for k in dicts[0]}  # noqa: E731
    est = join([p[0] for p in parts])
    sse = np.concatenate([p[1] for p in parts])
    success = np.concatenate([p[2] for p in parts])
    return est, sse, success, join([p[3] for p in parts])


def _judged_block(
    t: np.ndarray, ct: np.ndarray, ca: np.ndarray, model: str, fit_delay: bool, max_iter: int
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """:func:`_judged_fit` of one block of voxels on one thread."""
    est, sse, stuck, jtj, names = _fit(t, ct, ca, model, fit_delay, False, max_iter)
    limits = at_limits(model, est)
    free = undetermined_at_limit(limits, names)
    include = np.ones((sse.shape[0], len(names)), dtype=bool)
    for q, name in enumerate(names):
        if name in limits:
            include[:, q] &= ~limits[name]
        if name in free:
            include[:, q] &= ~free[name]
    cond = condition_numbers(jtj, include)
    finite = np.isfinite(sse) & np.all([np.isfinite(v) for v in est.values()], axis=0)
    success = (
        finite
        & ~at_search_bound(model, est)
        & ~stuck
        & (cond <= COND_MAX)
        & beats_no_contrast(ct, sse, len(names))
    )
    for name, flags in limits.items():
        side = "upper" if (name, "upper") in LIMITS else "lower"
        est[name] = np.where(flags, LIMITS[(name, side)], est[name])
    for name, flags in free.items():
        est[name] = np.where(flags, np.nan, est[name])
        limits[name] = limits.get(name, np.zeros_like(flags)) | flags
    return est, sse, success, limits
