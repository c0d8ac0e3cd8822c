"""Tracer-kinetic models of a sampled arterial input function.

Every model here is exact for an AIF that is linear between its samples: the tissue
curve is computed by exponential recursion over the AIF's segments, not by a Riemann sum
or an FFT. The tissue concentration at ``t[0]`` is taken to be ``vp * ca[0]`` (no contrast
has been delivered before the first sample), so ``ca`` should start at or before the bolus.

Parameters broadcast against each other; the result has shape
``broadcast(parameters).shape + (len(t),)``. ``ca`` is either one curve ``(n_t,)`` shared
by all parameter sets, or one curve per parameter set (``broadcast_shape + (n_t,)``).

Units: ``t`` in s; ``ca`` plasma concentration in mM; Ktrans and ps in /min; fp in
mL/100mL/min; ve and vp volume fractions 0-1. The result is tissue concentration in mM.

Every model is a direct vascular term plus a sum of exponentials convolved with the AIF
(its impulse response function); :func:`irf_terms` returns that representation, which
the ground-truth simulator also uses.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import ArrayLike, NDArray

from phantomdce import _kernels
from phantomdce.params import MODELS, PARAMETERS

__all__ = [
    "tofts",
    "extended_tofts",
    "patlak",
    "two_cxm",
    "two_cum",
    "irf_terms",
    "convolve_irf",
    "MODEL_FUNCTIONS",
]

PER_MIN = 1.0 / 60.0  # /min -> /s
FP_UNIT = 1.0 / 6000.0  # mL/100mL/min -> /s


def _as_param(name: str, value: ArrayLike) -> NDArray[np.float64]:
    arr = np.asarray(value, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        bad = float(arr[~np.isfinite(arr)].flat[0])
        raise ValueError(f"{name}={bad!r}: expected finite values")
    p = PARAMETERS["Ktrans" if name == "ktrans" else name]
    if np.any(arr < p.lower):
        bad = float(arr[arr < p.lower].flat[0])
        raise ValueError(f"{name}={bad!r}: expected a value >= {p.lower} ({p.units})")
    return arr


def irf_terms(model: str, **params: ArrayLike) -> tuple[NDArray, NDArray, NDArray]:
    """Impulse response of a model as a direct term plus a sum of exponentials.

    The tissue curve is ``vp_term * ca + sum_m amps[..., m] * (exp(-rates[..., m] t) * ca)``.

    Parameters
    ----------
    model : {"tofts", "extended_tofts", "patlak", "2cxm", "2cum"}
        Model name.
    **params : array_like
        The model's parameters in package units (``ktrans`` and ``ps`` in /min, ``fp`` in
        mL/100mL/min, ``ve`` and ``vp`` 0-1). ``ktrans`` may also be spelled ``Ktrans``.

    Returns
    -------
    vp_term : ndarray, shape ``S``
        Coefficient of the direct (intravascular) term, dimensionless.
    amps : ndarray, shape ``S + (m,)``
        Amplitudes in /s.
    rates : ndarray, shape ``S + (m,)``
        Decay rates in /s (0 for an irreversible uptake term).

    Examples
    --------
    >>> vp, amps, rates = irf_terms("tofts", ktrans=0.3, ve=0.5)
    >>> float(amps[0] * 60), float(rates[0] * 60)
    (0.3, 0.6)

    """
    if model not in MODELS:
        raise ValueError(f"model={model!r}: expected one of {sorted(MODELS)}")
    p = {k.lower() if k == "Ktrans" else k: v for k, v in params.items()}
    needed = [n.lower() if n == "Ktrans" else n for n in MODELS[model].parameters]
    missing = sorted(set(needed) - set(p))
    extra = sorted(set(p) - set(needed))
    if missing or extra:
        raise ValueError(
            f"model {model!r} takes parameters {needed}; missing {missing}, unexpected {extra}"
        )
    vals = np.broadcast_arrays(*[_as_param(n, p[n]) for n in needed])
    v = dict(zip(needed, vals, strict=True))
    zero = np.zeros_like(vals[0])
    if model in ("tofts", "extended_tofts"):
        ve = v["ve"]
        if np.any(ve <= 0):
            bad = float(ve[ve <= 0].flat[0])
            raise ValueError(f"ve={bad!r}: expected ve > 0 for the {model} model")
        ktrans = v["ktrans"] * PER_MIN
        vp_term = v["vp"] if model == "extended_tofts" else zero
        return vp_term, ktrans[..., None], (ktrans / ve)[..., None]
    if model == "patlak":
        return v["vp"], (v["ktrans"] * PER_MIN)[..., None], zero[..., None]
    fp = v["fp"] * FP_UNIT
    ps = v["ps"] * PER_MIN
    vp = v["vp"]
    if np.any(vp <= 0):
        bad = float(vp[vp <= 0].flat[0])
        raise ValueError(f"vp={bad!r}: expected vp > 0 for the {model} model")
    if model == "2cum":
        kp = (fp + ps) / vp
        with np.errstate(invalid="ignore", divide="ignore"):
            extraction = np.where(fp + ps > 0, ps / (fp + ps), 0.0)
        amps = np.stack([fp * (1.0 - extraction), fp * extraction], axis=-1)
        rates = np.stack([kp, zero], axis=-1)
        return zero, amps, rates
    # 2CXM: eigen-decomposition of the two-compartment system (Sourbron & Buckley 2013)
    ve = v["ve"]
    if np.any(ve <= 0):
        bad = float(ve[ve <= 0].flat[0])
        raise ValueError(f"ve={bad!r}: expected ve > 0 for the 2cxm model")
    kp = (fp + ps) / vp
    ke = ps / ve
    kb = fp / vp
    s = kp + ke
    k_plus = 0.5 * (s + np.sqrt(np.maximum(s * s - 4.0 * ke * kb, 0.0)))
    with np.errstate(invalid="ignore", divide="ignore"):
        k_minus = np.where(k_plus > 0, ke * kb / k_plus, 0.0)
        # weights from R(0) = fp and integral(R) = fp * (vp + ve) / fp
        w_minus = np.where(
            k_plus > k_minus,
            k_minus * (k_plus * (vp + ve) / np.where(fp > 0, fp, 1.0) - 1.0) / (k_plus - k_minus),
            0.0,
        )
    w_minus = np.where(fp > 0, w_minus, 0.0)
    amps = np.stack([fp * (1.0 - w_minus), fp * w_minus], axis=-1)
    rates = np.stack([k_plus, k_minus], axis=-1)
    return zero, amps, rates


def _check_time_axis(t: ArrayLike, *, strict: bool = True) -> NDArray[np.float64]:
    t = np.asarray(t, dtype=np.float64)
    if t.ndim != 1 or t.size < 2:
        raise ValueError(f"t has shape {t.shape}: expected a 1-D time axis (s) of >= 2 samples")
    if not np.all(np.isfinite(t)):
        raise ValueError("t contains non-finite values: expected finite times in s")
    dt = np.diff(t)
    if np.any(dt <= 0) if strict else np.any(dt < 0):
        i = int(np.argmax(dt <= 0 if strict else dt < 0))
        raise ValueError(
            f"t is not increasing at index {i + 1} (t[{i}]={t[i]!r} s, t[{i + 1}]={t[i + 1]!r} s):"
            " expected a strictly increasing time axis in s"
        )
    return t


def convolve_irf(
    t: ArrayLike,
    ca: ArrayLike,
    vp_term: ArrayLike,
    amps: ArrayLike,
    rates: ArrayLike,
    *,
    allow_jumps: bool = False,
) -> NDArray[np.float64]:
    """Convolve a piecewise-linear input with ``vp_term*delta + sum amps*exp(-rates t)``.

    Parameters
    ----------
    t : array_like, shape (n_t,)
        Sample times in s, strictly increasing (non-decreasing if ``allow_jumps``: a
        repeated time is a jump in ``ca``).
    ca : array_like, shape (n_t,) or ``S + (n_t,)``
        Input concentration in mM.
    vp_term : array_like, shape ``S``
        Direct-term coefficient (dimensionless).
    amps, rates : array_like, shape ``S + (m,)``
        Amplitudes and decay rates of the exponentials, in /s.
    allow_jumps : bool, optional
        Accept repeated times (zero-length segments).

    Returns
    -------
    ndarray, shape ``S + (n_t,)``
        Output concentration in mM.

    """
    t = _check_time_axis(t, strict=not allow_jumps)
    ca = np.asarray(ca, dtype=np.float64)
    if ca.shape[-1] != t.size:
        raise ValueError(
            f"ca has {ca.shape[-1]} samples but t has {t.size}: expected one AIF value per time"
        )
    vp_term = np.asarray(vp_term, dtype=np.float64)
    amps = np.asarray(amps, dtype=np.float64)
    rates = np.asarray(rates, dtype=np.float64)
    shape = np.broadcast_shapes(vp_term.shape, amps.shape[:-1], rates.shape[:-1], ca.shape[:-1])
    m = amps.shape[-1]
    n = int(np.prod(shape, dtype=np.int64))
    vp_f = np.ascontiguousarray(np.broadcast_to(vp_term, shape).reshape(n))
    amps_f = np.ascontiguousarray(np.broadcast_to(amps, shape + (m,)).reshape(n, m))
    rates_f = np.ascontiguousarray(np.broadcast_to(rates, shape + (m,)).reshape(n, m))
    if ca.ndim == 1:
        ca_f = ca.reshape(1, -1)
    else:
        ca_f = np.ascontiguousarray(np.broadcast_to(ca, shape + (t.size,)).reshape(n, t.size))
    out = np.empty((n, t.size))
    _kernels.expconv_sum(t, ca_f, vp_f, amps_f, rates_f, out)
    return out.reshape(shape + (t.size,))


def _model(name: str, t: ArrayLike, ca: ArrayLike, **params: ArrayLike) -> NDArray[np.float64]:
    vp_term, amps, rates = irf_terms(name, **params)
    return convolve_irf(t, ca, vp_term, amps, rates)


def tofts(t: ArrayLike, ca: ArrayLike, *, ktrans: ArrayLike, ve: ArrayLike) -> NDArray[np.float64]:
    """Standard Tofts model, ``Ct = Ktrans * (exp(-kep t) * ca)``, ``kep = Ktrans / ve``.

    Parameters
    ----------
    t : array_like, shape (n_t,)
        Sample times in s, strictly increasing.
    ca : array_like, shape (n_t,) or ``S + (n_t,)``
        Plasma concentration in mM, linear between samples.
    ktrans : array_like
        Volume transfer constant Ktrans in /min.
    ve : array_like
        Extravascular extracellular volume fraction (0-1, > 0).

    Returns
    -------
    ndarray, shape ``broadcast(ktrans, ve).shape + (n_t,)``
        Tissue concentration in mM.

    Examples
    --------
    >>> import numpy as np
    >>> t = np.arange(0.0, 301.0, 1.0)
    >>> ca = np.where(t >= 10, 5.0, 0.0)
    >>> ct = tofts(t, ca, ktrans=[0.1, 0.2], ve=0.3)
    >>> ct.shape
    (2, 301)

    """
    return _model("tofts", t, ca, ktrans=ktrans, ve=ve)


def extended_tofts(
    t: ArrayLike, ca: ArrayLike, *, ktrans: ArrayLike, ve: ArrayLike, vp: ArrayLike
) -> NDArray[np.float64]:
    """Extended Tofts model, ``Ct = vp ca + Ktrans * (exp(-kep t) * ca)``.

    Parameters
    ----------
    t : array_like, shape (n_t,)
        Sample times in s, strictly increasing.
    ca : array_like, shape (n_t,) or ``S + (n_t,)``
        Plasma concentration in mM, linear between samples.
    ktrans : array_like
        Ktrans in /min.
    ve : array_like
        Extravascular extracellular volume fraction (0-1, > 0).
    vp : array_like
        Plasma volume fraction (0-1).

    Returns
    -------
    ndarray
        Tissue concentration in mM, shape ``broadcast(...).shape + (n_t,)``.

    Examples
    --------
    >>> import numpy as np
    >>> t = np.linspace(0, 300, 101)
    >>> ca = np.exp(-t / 100.0)
    >>> float(extended_tofts(t, ca, ktrans=0.0, ve=0.2, vp=0.1)[0])
    0.1

    """
    return _model("extended_tofts", t, ca, ktrans=ktrans, ve=ve, vp=vp)


def patlak(t: ArrayLike, ca: ArrayLike, *, ktrans: ArrayLike, vp: ArrayLike) -> NDArray[np.float64]:
    """Patlak model, ``Ct = vp ca + Ktrans * integral(ca)``.

    Parameters
    ----------
    t : array_like, shape (n_t,)
        Sample times in s, strictly increasing.
    ca : array_like
        Plasma concentration in mM, linear between samples.
    ktrans : array_like
        Ktrans (unidirectional uptake rate) in /min.
    vp : array_like
        Plasma volume fraction (0-1).

    Returns
    -------
    ndarray
        Tissue concentration in mM.

    Examples
    --------
    >>> import numpy as np
    >>> t = np.array([0.0, 60.0])
    >>> float(patlak(t, np.ones(2), ktrans=0.1, vp=0.0)[-1])  # 0.1 /min * 1 mM * 1 min
    0.1

    """
    return _model("patlak", t, ca, ktrans=ktrans, vp=vp)


def two_cxm(
    t: ArrayLike, ca: ArrayLike, *, fp: ArrayLike, ps: ArrayLike, ve: ArrayLike, vp: ArrayLike
) -> NDArray[np.float64]:
    """Two-compartment exchange model (2CXM).

    Parameters
    ----------
    t : array_like, shape (n_t,)
        Sample times in s, strictly increasing.
    ca : array_like
        Plasma concentration in mM, linear between samples.
    fp : array_like
        Plasma flow in mL/100mL/min.
    ps : array_like
        Permeability-surface area product in /min.
    ve : array_like
        Extravascular extracellular volume fraction (0-1, > 0).
    vp : array_like
        Plasma volume fraction (0-1, > 0).

    Returns
    -------
    ndarray
        Tissue concentration in mM.

    Examples
    --------
    >>> import numpy as np
    >>> t = np.linspace(0, 3000, 3001)
    >>> ct = two_cxm(t, np.ones_like(t), fp=50.0, ps=0.1, ve=0.2, vp=0.05)
    >>> round(float(ct[-1]), 3)  # steady state vp + ve for a constant input of 1 mM
    0.25

    """
    return _model("2cxm", t, ca, fp=fp, ps=ps, ve=ve, vp=vp)


def two_cum(
    t: ArrayLike, ca: ArrayLike, *, fp: ArrayLike, ps: ArrayLike, vp: ArrayLike
) -> NDArray[np.float64]:
    """Two-compartment uptake model (2CUM).

    Parameters
    ----------
    t : array_like, shape (n_t,)
        Sample times in s, strictly increasing.
    ca : array_like
        Plasma concentration in mM, linear between samples.
    fp : array_like
        Plasma flow in mL/100mL/min.
    ps : array_like
        Permeability-surface area product in /min.
    vp : array_like
        Plasma volume fraction (0-1, > 0).

    Returns
    -------
    ndarray
        Tissue concentration in mM.

    Examples
    --------
    >>> import numpy as np
    >>> t = np.linspace(0, 600, 601)
    >>> ct = two_cum(t, np.ones_like(t), fp=60.0, ps=0.0, vp=0.1)
    >>> round(float(ct[-1]), 6)  # no uptake: plasma compartment fills to vp
    0.1

    """
    return _model("2cum", t, ca, fp=fp, ps=ps, vp=vp)


MODEL_FUNCTIONS: dict[str, Callable[..., NDArray[np.float64]]] = {
    "tofts": tofts,
    "extended_tofts": extended_tofts,
    "patlak": patlak,
    "2cxm": two_cxm,
    "2cum": two_cum,
}
