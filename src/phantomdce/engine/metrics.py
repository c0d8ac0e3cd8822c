"""Accuracy and precision metrics of one benchmark case (one fitter, one parameter).

A *case* holds, for one fitter and one parameter, arrays over voxels:

``estimate``
    fitted value (float, NaN where the fitter failed), in the parameter's units
    (see :data:`phantomdce.params.PARAMETERS`);
``truth``
    the true value, same units (must be finite);
``success``
    the fitter's own success flag (bool);
``tissue``
    index of the tissue-grid point of the voxel (int);
``replicate``
    index of the noise replicate of the voxel (int, ``R`` distinct values).

Voxel order is free: tissues and replicates are read from the index arrays only.

Definitions
-----------
A voxel is *valid* when ``success`` is True and ``estimate`` is finite. A voxel whose
fitter flagged this parameter ``at_limit`` (``at_limit_<param>``: the fit converged but the
parameter sits at a limit where the model degenerates, e.g. 2CXM Fp -> infinity) and whose
estimate is not finite is *at its limit*: neither valid nor failed. The others are *failed*.
A finite estimate at a limit (vp = 0, PS = 0) is a valid estimate and counts as one.
A valid estimate outside the parameter's physical range (``lower`` to ``upper`` of
:data:`phantomdce.params.PARAMETERS`, inclusive: e.g. a negative Ktrans or a ve above 1) is
*out of range* (:func:`out_of_range`): a fitter that flags such a value a success has not
estimated the parameter, but the value is what it reported, so it stays valid and counts in
every metric (bias, CV, ...) as it is; ``out_of_range`` counts these voxels so that a reader
sees them, and the run lists them.
Errors are ``e = estimate - truth``, in the parameter's units. Unless said otherwise
a metric uses the valid voxels only. Per tissue ``t``, over its valid voxels: ``m_t`` is the
mean estimate and ``s_t`` the sample standard deviation (ddof=1) of the estimates; ``y_t`` is
the tissue's truth. "param" below means the parameter's units.

===================== ======================================================= =====
metric                formula                                                 unit
===================== ======================================================= =====
n_voxels              number of voxels, valid or not                          1
n_success             number of valid voxels                                  1
failure_rate          ``n_failed / n_voxels`` (failed: neither valid nor at   1
                      its limit)
bias                  ``mean(e)``                                             param
rel_bias_pct          ``100 mean(e / truth)``, valid voxels with truth != 0   %
median_error          ``median(e)``                                           param
sd                    ``sqrt(mean_t s_t^2)``: pooled SD over noise replicates param
                      (tissues with >= 2 valid replicates)
cv_pct                ``100 sqrt(mean_t (s_t / |m_t|)^2)`` (tissues with      %
                      >= 2 valid replicates and ``m_t != 0``)
rmse                  ``sqrt(mean(e^2))``                                     param
loa_low, loa_high     ``mean(e) -/+ 1.96 SD(e)``, ddof=1 (Bland-Altman 95 %   param
                      limits of agreement)
ccc                   Lin's concordance correlation of ``m_t`` vs ``y_t``,    1
                      one point per tissue with a valid voxel, population
                      moments: ``2 cov / (var_m + var_y + (mean_m-mean_y)^2)``
within_tol            fraction of ALL voxels with                             1
                      ``|e| <= atol + rtol |truth|``; failed voxels count as
                      outside; ``(atol, rtol)`` from :data:`TOLERANCES`
fit_time_per_voxel_s  ``fit_time_s / n_voxels``                               s
bias_ci_low/high      95 % percentile CI of ``bias``, block bootstrap over    param
                      noise replicates (below)
at_limit_rate         fraction of voxels at the parameter's limit             1
out_of_range          number of valid voxels whose estimate lies outside the  1
                      parameter's physical range (:func:`out_of_range`)
crlb_sd               ``sqrt(mean_v b_v)``: root mean over ALL voxels of the  param
                      Cramér-Rao variance bound ``b_v`` of the voxel's tissue
                      (:func:`case_bounds`); NaN where no bound applies
crlb_cv_pct           ``100 sqrt(mean_t (b_t / y_t^2))``, tissues with        %
                      ``y_t != 0`` (the bound on the scale of ``cv_pct``)
efficiency            ``mean_t b_t / mean_t s_t^2`` over the tissues with     1
                      >= 2 valid replicates (those of ``sd``): bound variance
                      over the measured within-tissue variance; 1 for an
                      efficient estimator, below 1 for a less precise one
===================== ======================================================= =====

``b_t`` is the mean of ``b_v`` over the voxels of tissue ``t`` (the bound of the tissue).
``efficiency`` compares like with like: both means run over the same tissues, and the
measured variance is within-tissue (over noise replicates), so the bias differences
between tissues are not counted as noise. It may exceed 1 by sampling error (the SD of
``s_t^2`` with ``R`` replicates is about ``sqrt(2 / (R - 1))`` of it) and for a biased
estimator (a bias that shrinks with the noise lowers the variance below the bound of an
unbiased one). The bound applies only when the fitter sees what the bound assumes; where it
does not the three columns are NaN (:func:`bound_kind` gives the reason): a model
mismatch (the tissue's model is not the fitted one, also a nested model fitted to its
parent's data), an AIF that is not the true one (measured or population: the bound assumes
the true AIF), a fitted arterial delay (the bound assumes the arrival known), an assumed B1
that is not the true one, an oracle concentration (noise free), an oracle baseline with T1
from VFA (no bound of that kind), noise-free cases and phantom cases (no tissue truth of
the bound's kind). ``delay`` has no bound.

``y_t`` is the mean truth over all voxels of tissue ``t`` (the truth is constant within a
tissue). ``ccc`` is NaN with fewer than two tissues or when both ``m_t`` and ``y_t`` are
constant. Every metric that cannot be computed (no valid voxel, too few tissues or
replicates, ...) is NaN; no function here emits a ``RuntimeWarning``.

Bootstrap of the bias
---------------------
The tissue grid is a fixed design; the noise replicates are independent. Each block is one
replicate ``r`` across every tissue: ``S_r = sum`` and ``N_r = count`` of the valid errors of
replicate ``r``. One bootstrap draw picks ``R`` replicate indices ``r_1..r_R`` with
replacement and gives ``sum_i S_{r_i} / sum_i N_{r_i}`` (draws with no valid voxel are
dropped). The interval is the 2.5 and 97.5 percentiles of ``n_boot`` draws, drawn from
``numpy.random.default_rng(seed)``: the global random state is never used. It measures the
noise uncertainty of the bias on this fixed tissue grid (tissue-to-tissue differences of the
error are part of the bias, not of its uncertainty). With one replicate it is NaN.

Tolerances
----------
``|estimate - truth| <= atol + rtol |truth|`` with ``(atol, rtol)`` from :data:`TOLERANCES`.
Those of Ktrans, ps, ve, vp, fp and delay are OSIPI's (DCE-DSC-MRI Code Collection tests);
those of kep (as Ktrans) and T10 (5 % relative, as OSIPI's R1 tolerance) are phantomdce's.
The comparison is inclusive and evaluated in floating point exactly as written.

Examples
--------
>>> import numpy as np
>>> est = np.array([11.0, 12.0, 13.0, 18.0, 22.0, np.nan])
>>> m = case_metrics(est, [10, 10, 10, 20, 20, 20], [True] * 6, [0, 0, 0, 1, 1, 1],
...                  [0, 1, 2, 0, 1, 2], parameter="fp", fit_time_s=3.0)
>>> m["n_success"], m["bias"], m["median_error"], m["fit_time_per_voxel_s"]
(5.0, 1.2, 2.0, 0.5)
>>> round(m["within_tol"], 4)
0.8333
>>> metric_units("fp")["bias"]
'mL/100mL/min'
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from phantomdce.params import PARAMETERS

__all__ = [
    "METRICS",
    "TOLERANCES",
    "block_bootstrap_bias_ci",
    "bound_kind",
    "case_bounds",
    "case_metrics",
    "metric_units",
    "metrics_table",
    "out_of_range",
]

#: Column order of the metrics table (and the keys :func:`case_metrics` returns).
METRICS: tuple[str, ...] = (
    "n_voxels",
    "n_success",
    "failure_rate",
    "bias",
    "rel_bias_pct",
    "median_error",
    "sd",
    "cv_pct",
    "rmse",
    "loa_low",
    "loa_high",
    "ccc",
    "within_tol",
    "fit_time_per_voxel_s",
    "bias_ci_low",
    "bias_ci_high",
    "at_limit_rate",
    "out_of_range",
    "crlb_sd",
    "crlb_cv_pct",
    "efficiency",
)

#: ``(atol, rtol)`` per parameter, in the parameter's units: a voxel is within tolerance when
#: ``|estimate - truth| <= atol + rtol * |truth|``. OSIPI's: Ktrans, ps, ve, vp, fp, delay.
#: phantomdce's: kep (as Ktrans) and T10 (5 % relative, as OSIPI's R1 tolerance).
TOLERANCES: Mapping[str, tuple[float, float]] = MappingProxyType(
    {
        "Ktrans": (0.005, 0.1),
        "ps": (0.005, 0.1),
        "ve": (0.05, 0.0),
        "vp": (0.025, 0.0),
        "fp": (5.0, 0.1),
        "delay": (1.0, 0.0),
        "kep": (0.005, 0.1),
        "T10": (0.0, 0.05),
    }
)

#: Grid spacing (s) of the signal model of the bounds in metrics.csv
#: (:func:`phantomdce.precision.crlb`'s ``grid_step``): ten times the simulator's, ten times
#: faster, the bound within 1e-4 relative of the simulator's grid (measured: 5e-5 at most
#: over the head-and-neck grid, every kind, dt 1-15 s, instant and averaged sampling).
BOUND_GRID_STEP_S = 0.1

#: Two-sided 95 % normal quantile used by the limits of agreement.
_Z95 = 1.96

_COUNT_METRICS = ("n_voxels", "n_success", "out_of_range")
_DIMENSIONLESS = ("failure_rate", "ccc", "within_tol", "at_limit_rate", "efficiency")
_PERCENT = ("rel_bias_pct", "cv_pct", "crlb_cv_pct")
_ERROR_TYPE = (
    "bias",
    "median_error",
    "sd",
    "crlb_sd",
    "rmse",
    "loa_low",
    "loa_high",
    "bias_ci_low",
    "bias_ci_high",
)


def _check_parameter(parameter: str) -> None:
    if parameter not in PARAMETERS or parameter not in TOLERANCES:
        known = ", ".join(p for p in PARAMETERS if p in TOLERANCES)
        raise ValueError(f"unknown parameter {parameter!r}; expected one of: {known}")


def metric_units(parameter: str) -> dict[str, str]:
    """Return the unit of every metric for ``parameter``.

    Parameters
    ----------
    parameter : str
        Parameter symbol, a key of :data:`phantomdce.params.PARAMETERS`.

    Returns
    -------
    dict of str to str
        Keys in :data:`METRICS` order. Error-type metrics (bias, median_error, sd, rmse,
        limits of agreement, bias CI, ``crlb_sd``) carry the parameter's units;
        ``rel_bias_pct``, ``cv_pct`` and ``crlb_cv_pct`` are ``"%"``; counts, rates,
        ``ccc``, ``within_tol`` and ``efficiency`` are ``"1"``; ``fit_time_per_voxel_s`` is
        ``"s"``.

    Raises
    ------
    ValueError
        If ``parameter`` is unknown.

    Examples
    --------
    >>> metric_units("Ktrans")["rmse"], metric_units("Ktrans")["cv_pct"]
    ('/min', '%')
    """
    _check_parameter(parameter)
    units = PARAMETERS[parameter].units
    out: dict[str, str] = {}
    for name in METRICS:
        if name in _ERROR_TYPE:
            out[name] = units
        elif name in _PERCENT:
            out[name] = "%"
        elif name == "fit_time_per_voxel_s":
            out[name] = "s"
        else:
            out[name] = "1"
    return out


def out_of_range(values: ArrayLike, parameter: str) -> NDArray[np.bool_]:
    """Where values lie outside the physical range of ``parameter``.

    Parameters
    ----------
    values : array_like of float
        Values in the parameter's units (``PARAMETERS[parameter].units``).
    parameter : str
        A key of :data:`phantomdce.params.PARAMETERS`, whose ``lower`` and ``upper`` bound
        the range (inclusive).

    Returns
    -------
    ndarray of bool
        Same shape as ``values``; True where a value is below ``lower`` or above ``upper``
        (an infinite value included); False inside the range and for NaN (no estimate).

    Raises
    ------
    ValueError
        If ``parameter`` is unknown.

    Examples
    --------
    >>> out_of_range([-0.1, 0.0, 0.25, 5.0, 6.0, float("nan")], "Ktrans").tolist()
    [True, False, False, False, True, False]
    """
    if parameter not in PARAMETERS:
        raise ValueError(
            f"unknown parameter {parameter!r}; expected one of: {', '.join(PARAMETERS)}"
        )
    spec = PARAMETERS[parameter]
    x = np.asarray(values, dtype=float)
    with np.errstate(invalid="ignore"):
        return (x < spec.lower) | (x > spec.upper)


def _mean(x: NDArray[np.float64]) -> float:
    """Mean of a 1-D array, NaN (without a warning) when empty."""
    return float(np.mean(x)) if x.size else math.nan


def _percentile_ci(draws: NDArray[np.float64], level: float) -> tuple[float, float]:
    draws = draws[np.isfinite(draws)]
    if draws.size == 0:
        return math.nan, math.nan
    tail = 50.0 * (1.0 - level)
    low, high = np.percentile(draws, [tail, 100.0 - tail])
    return float(low), float(high)


def block_bootstrap_bias_ci(
    error: ArrayLike,
    replicate: ArrayLike,
    *,
    n_boot: int = 1000,
    seed: int | np.random.Generator = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean error, resampling replicates.

    Parameters
    ----------
    error : array_like of float
        Error ``estimate - truth`` of each voxel, in the parameter's units; non-finite values
        mark excluded (failed) voxels.
    replicate : array_like of int
        Noise-replicate index of each voxel (same shape as ``error``); any distinct values.
    n_boot : int, optional
        Number of bootstrap draws; ``0`` returns NaN without drawing.
    seed : int or numpy.random.Generator, optional
        Seed of ``numpy.random.default_rng`` (or a generator, which is advanced).
    level : float, optional
        Confidence level, in (0, 1).

    Returns
    -------
    low, high : float
        Interval bounds, in the units of ``error``. NaN with fewer than two replicates, no
        finite error, or ``n_boot == 0``.

    Notes
    -----
    Each block is one replicate across all tissues (see the module docstring). Draws are
    vectorised through an ``(n_boot, R)`` index array, drawn in row blocks of about 2.6e5
    indices (the same numbers as one draw, in bounded memory).

    Examples
    --------
    >>> block_bootstrap_bias_ci([1.0, 3.0, 2.0, 4.0], [0, 0, 1, 1], seed=1)
    (2.0, 3.0)
    """
    err = np.asarray(error, dtype=float).ravel()
    rep = np.asarray(replicate).ravel()
    if err.shape != rep.shape:
        raise ValueError("error and replicate must have the same number of elements")
    if n_boot < 0:
        raise ValueError("n_boot must be >= 0")
    if not 0.0 < level < 1.0:
        raise ValueError("level must be in (0, 1)")
    rep_idx = _dense_index(rep)
    n_rep = int(rep_idx.max()) + 1 if rep_idx.size else 0
    valid = np.isfinite(err)
    return _bootstrap_ci(rep_idx[valid], err[valid], n_rep, n_boot=n_boot, seed=seed, level=level)


def _bootstrap_ci(
    rep_idx: NDArray[np.intp],
    err: NDArray[np.float64],
    n_rep: int,
    *,
    n_boot: int,
    seed: int | np.random.Generator,
    level: float = 0.95,
) -> tuple[float, float]:
    """:func:`block_bootstrap_bias_ci` from the valid voxels' errors and replicate ranks.

    ``n_rep`` counts every replicate, also those without a valid voxel (they are drawn and
    add nothing).
    """
    if n_rep < 2 or n_boot == 0 or not err.size:
        return math.nan, math.nan
    sums = np.bincount(rep_idx, weights=err, minlength=n_rep)
    counts = np.bincount(rep_idx, minlength=n_rep).astype(float)
    rng = np.random.default_rng(seed)
    # the (n_boot, R) draws in row blocks of about 2.6e5 indices: memory stays flat when R is
    # large (1e5 replicates would need 1.6 GB at once), the draws are the same numbers
    boot_sums, boot_counts = np.empty(n_boot), np.empty(n_boot)
    step = max(1, 2**18 // n_rep)
    for i in range(0, n_boot, step):
        draw = rng.integers(0, n_rep, size=(min(step, n_boot - i), n_rep))
        boot_sums[i : i + draw.shape[0]] = sums[draw].sum(axis=1)
        boot_counts[i : i + draw.shape[0]] = counts[draw].sum(axis=1)
    boot = np.full(n_boot, math.nan)
    np.divide(boot_sums, boot_counts, out=boot, where=boot_counts > 0)
    return _percentile_ci(boot, level)


#: Voxels per block of the metrics' temporaries (a fixed size: results never depend on how
#: a run was chunked).
_BLOCK = 2**16


def _blocks(values: NDArray) -> list[NDArray]:
    """Views of consecutive :data:`_BLOCK`-sized parts of a 1-D array."""
    return [values[i : i + _BLOCK] for i in range(0, values.size, _BLOCK)]


def _dense_index(values: NDArray) -> NDArray[np.intp]:
    """The rank of each value among the distinct values (``np.unique``'s inverse).

    Non-negative integer labels (the engine's tissue and replicate indices) are ranked with
    one counting pass instead of a sort: the same result in a fraction of the memory.
    """
    values = np.asarray(values).ravel()
    if (
        values.size
        and np.issubdtype(values.dtype, np.integer)
        and values.min() >= 0
        and values.max() <= 4 * values.size + 1024
    ):
        present = np.bincount(values) > 0
        ranks = np.cumsum(present) - 1
        return ranks.astype(np.int32 if ranks.size < 2**31 else np.intp)[values]
    return np.unique(values, return_inverse=True)[1].ravel()


def _ccc(x: NDArray[np.float64], y: NDArray[np.float64]) -> float:
    """Lin's concordance correlation coefficient with population (ddof=0) moments."""
    if x.size < 2:
        return math.nan
    mx, my = x.mean(), y.mean()
    vx = float(np.mean((x - mx) ** 2))
    vy = float(np.mean((y - my) ** 2))
    if vx == 0.0 and vy == 0.0:
        return math.nan
    cov = float(np.mean((x - mx) * (y - my)))
    return 2.0 * cov / (vx + vy + float(mx - my) ** 2)


def case_metrics(
    estimate: ArrayLike,
    truth: ArrayLike,
    success: ArrayLike,
    tissue: ArrayLike,
    replicate: ArrayLike,
    *,
    parameter: str,
    fit_time_s: float = math.nan,
    n_boot: int = 1000,
    seed: int | np.random.Generator = 0,
    at_limit: ArrayLike | None = None,
    crlb_var: ArrayLike | None = None,
) -> dict[str, float]:
    """Compute every metric of one case (one fitter, one parameter).

    Parameters
    ----------
    estimate : array_like of float
        Fitted values per voxel, in the parameter's units; NaN where the fit failed.
    truth : array_like of float
        True values per voxel, same units; must be finite.
    success : array_like of bool
        Fitter success flag per voxel.
    tissue : array_like of int
        Tissue-grid index per voxel.
    replicate : array_like of int
        Noise-replicate index per voxel.
    parameter : str
        Parameter symbol (a key of :data:`phantomdce.params.PARAMETERS`); selects the
        tolerance and the units.
    fit_time_s : float, optional
        Wall time of the fit of the whole case, in s (NaN if unknown).
    n_boot : int, optional
        Number of bootstrap draws for the bias CI (``0`` skips it: NaN).
    seed : int or numpy.random.Generator, optional
        Seed of the bootstrap generator; the same seed gives the same interval.
    at_limit : array_like of bool, optional
        The fitter's ``at_limit_<param>`` flag per voxel (default: all False).
    crlb_var : array_like of float, optional
        Cramér-Rao bound on the variance of the parameter per voxel (parameter's units
        squared; ``inf`` where the data do not determine it), as :func:`case_bounds` gives
        it. None, or any NaN in it, leaves ``crlb_sd``, ``crlb_cv_pct`` and ``efficiency``
        NaN (no bound applies).

    Returns
    -------
    dict of str to float
        One entry per name in :data:`METRICS` (in that order); definitions and units in the
        module docstring and :func:`metric_units`. NaN where a metric cannot be computed.

    Raises
    ------
    ValueError
        If the arrays differ in shape, ``truth`` is not finite, or ``parameter`` is unknown.
    """
    _check_parameter(parameter)
    est = np.asarray(estimate, dtype=float)
    shape = est.shape
    arrays = {
        "truth": np.asarray(truth, dtype=float),
        "success": np.asarray(success, dtype=bool),
        "tissue": np.asarray(tissue),
        "replicate": np.asarray(replicate),
        "at_limit": (
            np.zeros(shape, dtype=bool) if at_limit is None else np.asarray(at_limit, dtype=bool)
        ),
    }
    if crlb_var is not None:
        arrays["crlb_var"] = np.asarray(crlb_var, dtype=float)
    for name, arr in arrays.items():
        if arr.shape != shape:
            raise ValueError(f"{name} has shape {arr.shape}, estimate has shape {shape}")
    est = est.ravel()
    tru = arrays["truth"].ravel()
    ok = arrays["success"].ravel()
    tis = arrays["tissue"].ravel()
    rep = arrays["replicate"].ravel()
    lim = arrays["at_limit"].ravel()
    if not np.all(np.isfinite(tru)):
        raise ValueError("truth must be finite")
    bound = None
    if crlb_var is not None:
        bound = arrays["crlb_var"].ravel()
        if np.any(bound < 0):
            raise ValueError(f"crlb_var = {float(bound[bound < 0][0])!r}: expected a variance >= 0")
        if np.isnan(bound).any():
            bound = None

    # memory: a case may hold 1e6 voxels; every array here is of the valid voxels or freed
    # as soon as it has served (temporaries computed in place)
    n_voxels = est.size
    valid = ok & np.isfinite(est)
    n_success = int(np.count_nonzero(valid))
    n_limit = int(np.count_nonzero(lim & ok & ~valid))
    est_v = est[valid]
    tru_v = tru[valid]
    err = est_v - tru_v

    out: dict[str, float] = dict.fromkeys(METRICS, math.nan)
    out["n_voxels"] = float(n_voxels)
    out["n_success"] = float(n_success)
    out["out_of_range"] = float(np.count_nonzero(out_of_range(est_v, parameter)))
    tis_idx = n_tis = None
    if bound is not None and n_voxels:
        tis_idx = _dense_index(tis)
        n_tis = int(tis_idx.max()) + 1
        count_t = np.bincount(tis_idx, minlength=n_tis).astype(float)
        with np.errstate(invalid="ignore"):  # inf + inf is inf, never NaN
            bound_t = np.bincount(tis_idx, weights=bound, minlength=n_tis) / count_t
            out["crlb_sd"] = math.sqrt(float(np.mean(bound)))
        y_t = np.bincount(tis_idx, weights=tru, minlength=n_tis) / count_t
        nz = y_t != 0
        if nz.any():
            out["crlb_cv_pct"] = 100.0 * math.sqrt(float(np.mean(bound_t[nz] / y_t[nz] ** 2)))
    if n_voxels:
        out["failure_rate"] = (n_voxels - n_success - n_limit) / n_voxels
        out["at_limit_rate"] = n_limit / n_voxels
        out["fit_time_per_voxel_s"] = float(fit_time_s) / n_voxels
        atol, rtol = TOLERANCES[parameter]
        inside = sum(
            int(np.count_nonzero(np.abs(e) <= atol + rtol * np.abs(t)))
            for e, t in zip(_blocks(err), _blocks(tru_v), strict=True)
        )
        out["within_tol"] = float(inside) / n_voxels

    if n_success:
        bias = float(err.mean())
        out["bias"] = bias
        nonzero = tru_v != 0
        if nonzero.any():
            out["rel_bias_pct"] = 100.0 * float(np.mean(err[nonzero] / tru_v[nonzero]))
        del nonzero, tru_v
        out["median_error"] = float(np.median(err))
        # sums of squares block by block (no temporary the size of the case)
        out["rmse"] = math.sqrt(sum(float(np.dot(e, e)) for e in _blocks(err)) / n_success)
        if n_success >= 2:
            ss = sum(float(np.sum(np.square(e - bias))) for e in _blocks(err))
            half_width = _Z95 * math.sqrt(ss / (n_success - 1))
            out["loa_low"] = bias - half_width
            out["loa_high"] = bias + half_width

        # Per-tissue statistics (tissues indexed 0..T-1 in the order of their values).
        if tis_idx is None:
            tis_idx = _dense_index(tis)
            n_tis = int(tis_idx.max()) + 1
        truth_t = np.bincount(tis_idx, weights=tru, minlength=n_tis) / np.bincount(
            tis_idx, minlength=n_tis
        )
        t_valid = tis_idx[valid]
        del tis_idx
        n_t = np.bincount(t_valid, minlength=n_tis).astype(float)
        has = n_t > 0
        mean_t = np.zeros(n_tis)
        sum_t = np.bincount(t_valid, weights=est_v, minlength=n_tis)
        np.divide(sum_t, n_t, out=mean_t, where=has)
        dev = mean_t[t_valid]
        np.subtract(est_v, dev, out=dev)
        np.square(dev, out=dev)
        ss_t = np.bincount(t_valid, weights=dev, minlength=n_tis)
        del dev, t_valid, est_v
        two = n_t >= 2
        var_t = ss_t[two] / (n_t[two] - 1.0)
        out["sd"] = math.sqrt(_mean(var_t))
        if bound is not None and var_t.size:
            measured = float(np.mean(var_t))
            if measured > 0:
                out["efficiency"] = float(np.mean(bound_t[two])) / measured
        m2 = mean_t[two]
        cv_ok = m2 != 0
        out["cv_pct"] = 100.0 * math.sqrt(_mean(var_t[cv_ok] / m2[cv_ok] ** 2))
        out["ccc"] = _ccc(mean_t[has], truth_t[has])

        rep_idx = _dense_index(rep)
        low, high = _bootstrap_ci(
            rep_idx[valid], err, int(rep_idx.max()) + 1, n_boot=n_boot, seed=seed
        )
        out["bias_ci_low"] = low
        out["bias_ci_high"] = high
    return out


def bound_kind(
    *,
    tissue_model: str | None,
    fitter_model: str,
    fitter_input: str,
    pipeline: Any,
    case_attrs: Mapping[str, Any],
    shared_m0: bool = False,
    delay_fitted: bool = False,
    phantom: bool = False,
) -> tuple[str | None, str]:
    """The Cramér-Rao bound (:data:`phantomdce.precision.KINDS`) matching a fitter's information.

    Parameters
    ----------
    tissue_model : str or None
        The model the tissue was simulated with (the case's ``model`` attribute).
    fitter_model : str
        The model the fitter estimates.
    fitter_input : str
        ``"concentration"`` or ``"signal"`` (:class:`phantomdce.fit.registry.FitterInfo`).
    pipeline : phantomdce.fit.pipeline.Pipeline
        The pipeline the fitter's input came from (``t1``, ``baseline``, ``concentration``,
        ``aif``, ``b1``).
    case_attrs : mapping
        The case's attributes (its protocol, the true ``b1`` and ``snr``).
    shared_m0 : bool, optional
        A signal fitter that fits one M0 to the VFA and dynamic series.
    delay_fitted : bool, optional
        Whether the fitter estimated an arterial delay.
    phantom : bool, optional
        A neck-phantom case.

    Returns
    -------
    kind : str or None
        ``"two_step"`` for a concentration fitter with T1 from VFA (``t1 = vfa_*``) and the
        measured baseline; ``"baseline_m0"`` with the true T1 and the measured baseline (the
        pipeline's M0 comes from the baseline frames); ``"known"`` with the true T1 and the
        true baseline; ``"joint"`` for a signal fitter (``"joint_shared_m0"`` where it
        shares M0 between the series); None where no bound applies.
    reason : str
        Why there is no bound (empty when ``kind`` is not None).

    Examples
    --------
    >>> from phantomdce.fit.pipeline import Pipeline
    >>> attrs = {"snr": 20.0, "b1": 1.0}
    >>> bound_kind(tissue_model="tofts", fitter_model="tofts", fitter_input="concentration",
    ...            pipeline=Pipeline(), case_attrs=attrs)
    ('two_step', '')
    >>> bound_kind(tissue_model="2cxm", fitter_model="tofts", fitter_input="concentration",
    ...            pipeline=Pipeline(), case_attrs=attrs)[1]
    'model mismatch: tissue simulated with 2cxm, fitted with tofts'
    """
    if phantom:
        return None, "phantom case: no bound of the neck phantom's image pipeline"
    try:
        snr = float(case_attrs.get("snr", math.nan))
    except (TypeError, ValueError):
        snr = math.nan
    if not snr > 0:
        return None, f"case snr = {case_attrs.get('snr')!r}: no noise level for a bound"
    if math.isinf(snr):
        return None, "noise-free case (snr = inf): the bound is 0"
    if tissue_model != fitter_model:
        return None, (
            f"model mismatch: tissue simulated with {tissue_model}, fitted with {fitter_model}"
        )
    if pipeline.aif != "true":
        return None, f"pipeline.aif = {pipeline.aif!r}: the bound assumes the true AIF"
    if delay_fitted:
        return None, "a fitted arterial delay: the bound assumes the bolus arrival known"
    true_b1 = float(case_attrs.get("b1", 1.0))
    if not math.isclose(float(pipeline.b1), true_b1, rel_tol=1e-12):
        return None, (
            f"pipeline.b1 = {pipeline.b1!r} is not the true B1 {true_b1!r}: the bound assumes"
            " the flip angles known"
        )
    if fitter_input == "signal":
        return ("joint_shared_m0" if shared_m0 else "joint"), ""
    if fitter_input != "concentration":
        return None, f"fitter input {fitter_input!r}: no bound of that kind"
    if pipeline.concentration == "true":
        return None, "pipeline.concentration = 'true': a noise-free input, the bound is 0"
    if pipeline.t1 == "true":
        return ("known" if pipeline.baseline == "true" else "baseline_m0"), ""
    if pipeline.baseline == "true":
        return None, (
            f"pipeline.t1 = {pipeline.t1!r} with the true baseline: no bound of that kind"
        )
    return "two_step", ""


def case_bounds(
    case_attrs: Mapping[str, Any],
    truth: Mapping[str, ArrayLike],
    tissue: ArrayLike,
    *,
    kind: str | Sequence[str],
) -> dict[str, Any]:
    """Cramér-Rao variance bound of every voxel of a simulated case, once per tissue.

    Parameters
    ----------
    case_attrs : mapping
        The case's attributes: its protocol (:func:`phantomdce.precision.protocol_from_attrs`),
        ``snr`` and ``model`` (the tissue's).
    truth : mapping of str to array_like (n_voxels,)
        True values per voxel of the model's parameters (package units), ``T10`` (s) and
        ``m0`` (a.u.).
    tissue : array_like of int (n_voxels,)
        Tissue index per voxel; the bound is computed for the first voxel of each tissue
        and must not vary within one (a truth that does is an error). The signal model's
        grid is :data:`BOUND_GRID_STEP_S`.
    kind : str or sequence of str
        One of :data:`phantomdce.precision.KINDS` (see :func:`bound_kind`), or several
        (the signal model's Jacobians are then computed once for all).

    Returns
    -------
    dict of str to ndarray (n_voxels,)
        Variance bound (units squared) per voxel for each model parameter, each derived one
        (``kep``, the 2CXM/2CUM ``Ktrans``) and ``T10`` where the kind estimates it;
        ``inf`` where the data do not determine the parameter. For several kinds, one such
        mapping per kind, keyed by the kind.

    Raises
    ------
    ValueError
        A missing truth, or a truth that differs between voxels of one tissue.
    """
    from phantomdce.params import MODELS
    from phantomdce.precision import crlb, protocol_from_attrs

    model = str(case_attrs.get("model"))
    if model not in MODELS:
        raise ValueError(f"case.attrs.model = {model!r}: expected one of {sorted(MODELS)}")
    names = [*MODELS[model].parameters, "T10", "m0"]
    missing = [k for k in names if k not in truth]
    if missing:
        raise ValueError(f"truth lacks {missing}: expected {names} per voxel")
    tis_idx = _dense_index(np.asarray(tissue))
    n_tis = int(tis_idx.max()) + 1 if tis_idx.size else 0
    first = np.full(n_tis, tis_idx.size, dtype=np.intp)
    np.minimum.at(first, tis_idx, np.arange(tis_idx.size))
    rows = {}
    for k in names:
        values = np.asarray(truth[k], dtype=float).ravel()
        rows[k] = values[first]
        if not np.array_equal(values, rows[k][tis_idx]):
            raise ValueError(f"truth {k!r} differs between voxels of one tissue")
    sd = crlb(
        protocol_from_attrs(case_attrs),
        model,
        {k: rows[k] for k in MODELS[model].parameters},
        t10=rows["T10"],
        m0=rows["m0"],
        kind=kind if isinstance(kind, str) else tuple(kind),
        grid_step=BOUND_GRID_STEP_S,
    )
    if isinstance(kind, str):
        sd = {kind: sd}
    out = {
        c: {k: np.square(np.asarray(v, dtype=float))[tis_idx] for k, v in by.items()}
        for c, by in sd.items()
    }
    return out[kind] if isinstance(kind, str) else out


def _format_value(name: str, value: Any) -> str:
    number = float(value)
    if math.isnan(number):
        return ""
    if name in _COUNT_METRICS and number.is_integer():
        return str(int(number))
    return repr(number)


def metrics_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Format metric rows as CSV text in long format.

    Parameters
    ----------
    rows : sequence of mapping
        One mapping per (case, fitter, parameter) with keys ``case``, ``fitter``,
        ``parameter`` and every name in :data:`METRICS`; other keys are ignored.

    Returns
    -------
    str
        CSV with header ``case,fitter,parameter,<METRICS...>`` and LF line endings.
        Numbers are written with ``repr(float(value))`` (round-trip precision); the counts
        ``n_voxels``, ``n_success`` and ``out_of_range`` as integers; NaN as an empty field
        (read back as NaN by ``pandas.read_csv``); infinities as ``inf``/``-inf``.

    Raises
    ------
    KeyError
        If a row lacks one of the required keys.

    Examples
    --------
    >>> row = {"case": "c1", "fitter": "lsq", "parameter": "ve"}
    >>> row.update(dict.fromkeys(METRICS, float("nan")), n_voxels=6, bias=0.1)
    >>> print(metrics_table([row]).splitlines()[1])
    c1,lsq,ve,6,,,0.1,,,,,,,,,,,,,,,,,
    """
    header = ("case", "fitter", "parameter", *METRICS)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for i, row in enumerate(rows):
        missing = [key for key in header if key not in row]
        if missing:
            raise KeyError(f"row {i} lacks {', '.join(missing)}")
        writer.writerow(
            [str(row["case"]), str(row["fitter"]), str(row["parameter"])]
            + [_format_value(name, row[name]) for name in METRICS]
        )
    return buf.getvalue()
