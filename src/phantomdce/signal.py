"""Forward signal physics: spoiled gradient echo (SPGR) signal, its exact inversion, defaults.

Units used throughout: time and TR in s, flip angles in degrees, R1 in /s, T1 in s,
concentration in mM and relaxivity r1 in /mM/s (= L/mmol/s).

The flip angle actually applied to the spins is ``b1 * fa`` where ``fa`` is the nominal flip
angle and ``b1`` is the transmit-field scale factor (actual / nominal).

This module is used both by the simulator (to make ground-truth signals) and by the
estimators (to invert them); it only holds physics and literature defaults.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "NATIVE_T1",
    "RELAXIVITY",
    "concentration_from_signal",
    "native_t1",
    "r1_from_concentration",
    "r1_from_signal",
    "relaxivity",
    "spgr",
    "spgr_inflow",
    "vfa_signal",
]

# ---------------------------------------------------------------------------------------------
# Literature defaults (read-only)
# ---------------------------------------------------------------------------------------------

#: Longitudinal relaxivity r1 in /mM/s (= L/mmol/s) in human plasma at 37 degC, keyed by
#: ``(agent, field_strength_T)``.
RELAXIVITY: Mapping[tuple[str, float], float] = MappingProxyType(
    {
        # Szomolanyi P et al. 2019, Invest Radiol 54:559, doi:10.1097/RLI.0000000000000577,
        # plasma at 37 degC (values as gathered in reference-data/LITERATURE.md).
        ("gadobutrol", 1.5): 4.78,
        ("gadobutrol", 3.0): 4.97,
        ("gadoterate", 1.5): 3.32,
        ("gadoterate", 3.0): 3.00,
        ("gadoteridol", 1.5): 3.80,
        ("gadoteridol", 3.0): 3.28,
    }
)

#: Trade names and common alternative spellings accepted by :func:`relaxivity`.
_AGENT_ALIASES: Mapping[str, str] = MappingProxyType(
    {
        "gadovist": "gadobutrol",
        "gadavist": "gadobutrol",
        "gd-bt-do3a": "gadobutrol",
        "dotarem": "gadoterate",
        "clariscan": "gadoterate",
        "gadoterate meglumine": "gadoterate",
        "gd-dota": "gadoterate",
        "prohance": "gadoteridol",
        "gd-hp-do3a": "gadoteridol",
    }
)

#: Native (pre-contrast) T1 in s, keyed by ``(tissue, field_strength_T)``.
NATIVE_T1: Mapping[tuple[str, float], float] = MappingProxyType(
    {
        # Blood: Sharma P et al. 2006, JMRI 23:323 (as quoted in LITERATURE.md).
        # QIBA and Bosca & Jackson DROs use 1.44 s instead.
        ("blood", 1.5): 1.58,
        ("blood", 3.0): 1.66,
        # Skeletal muscle: Stanisz GJ et al. 2005, MRM 54:507, 1.008 s (1.5 T) and 1.412 s
        # (3 T) (unverified against the paper; LITERATURE.md gives "about 1.0 s / 1.4 s").
        # Head-and-neck muscle at 1.5 T measured 0.958 s (Med Phys 2010 37:2683,
        # doi:10.1118/1.3427487, abstract), consistent with this value.
        ("muscle", 1.5): 1.008,
        ("muscle", 3.0): 1.412,
        # Tumour (head-and-neck SCC primary). UNVERIFIED: no primary value could be checked.
        # 1.5 T: about 1.2 s, from the HNSCC T10 study Med Phys 2010 37:2683
        # (doi:10.1118/1.3427487; its abstract excerpt only confirmed the muscle value).
        # 3 T: 1.5 s, an estimate scaling the 1.5 T value by the muscle 3 T / 1.5 T ratio
        # (~1.4) conservatively. Generic-tumour DROs (QIBA, Bosca & Jackson) use 1.0 s.
        ("tumour", 1.5): 1.2,
        ("tumour", 3.0): 1.5,
        # Subcutaneous fat: Gold GE et al. 2004, AJR 183:343, 0.343 s (1.5 T) and 0.382 s
        # (3 T) (unverified against the paper).
        ("fat", 1.5): 0.343,
        ("fat", 3.0): 0.382,
    }
)

_TISSUE_ALIASES: Mapping[str, str] = MappingProxyType(
    {"tumor": "tumour", "hnscc": "tumour", "scc": "tumour", "skeletal muscle": "muscle"}
)


def _field_key(field_strength: float, table: Mapping[tuple[str, float], float]) -> float:
    """Return the tabulated field strength equal to ``field_strength`` within 1e-6 T."""
    try:
        b0 = float(field_strength)
    except (TypeError, ValueError):
        raise ValueError(
            f"field_strength={field_strength!r}: expected a number in tesla (1.5 or 3.0)"
        ) from None
    known = sorted({k[1] for k in table})
    for f in known:
        if math.isclose(b0, f, abs_tol=1e-6):
            return f
    raise ValueError(f"field_strength={field_strength!r} T: expected one of {known} T")


def relaxivity(agent: str, field_strength: float) -> float:
    """Look up the plasma r1 relaxivity of a gadolinium agent at 37 degC.

    Parameters
    ----------
    agent : str
        Agent name (case-insensitive): ``"gadobutrol"``, ``"gadoterate"`` or
        ``"gadoteridol"``; trade names such as ``"Gadovist"``, ``"Dotarem"`` and
        ``"ProHance"`` are accepted.
    field_strength : float
        Main field strength in T (1.5 or 3.0).

    Returns
    -------
    float
        r1 in /mM/s (= L/mmol/s), from Szomolanyi et al. 2019 (see :data:`RELAXIVITY`).

    Raises
    ------
    ValueError
        For an unknown agent or a field strength that is not tabulated.

    Examples
    --------
    >>> relaxivity("gadoterate", 3.0)
    3.0
    >>> relaxivity("Gadovist", 1.5)
    4.78

    """
    if not isinstance(agent, str):
        raise ValueError(f"agent={agent!r}: expected a string agent name")
    name = agent.strip().lower()
    name = _AGENT_ALIASES.get(name, name)
    agents = sorted({k[0] for k in RELAXIVITY})
    if name not in agents:
        raise ValueError(f"agent={agent!r}: expected one of {agents} (or a trade name)")
    return RELAXIVITY[(name, _field_key(field_strength, RELAXIVITY))]


def native_t1(tissue: str, field_strength: float) -> float:
    """Look up a default native (pre-contrast) T1.

    Parameters
    ----------
    tissue : str
        ``"blood"``, ``"muscle"``, ``"tumour"`` (head-and-neck SCC; ``"tumor"`` accepted) or
        ``"fat"``, case-insensitive.
    field_strength : float
        Main field strength in T (1.5 or 3.0).

    Returns
    -------
    float
        T1 in s. See :data:`NATIVE_T1` for sources; some values are marked unverified.

    Raises
    ------
    ValueError
        For an unknown tissue or a field strength that is not tabulated.

    Examples
    --------
    >>> native_t1("blood", 3.0)
    1.66
    >>> round(1.0 / native_t1("muscle", 1.5), 4)  # R10 in /s
    0.9921

    """
    if not isinstance(tissue, str):
        raise ValueError(f"tissue={tissue!r}: expected a string tissue name")
    name = tissue.strip().lower()
    name = _TISSUE_ALIASES.get(name, name)
    tissues = sorted({k[0] for k in NATIVE_T1})
    if name not in tissues:
        raise ValueError(f"tissue={tissue!r}: expected one of {tissues}")
    return NATIVE_T1[(name, _field_key(field_strength, NATIVE_T1))]


# ---------------------------------------------------------------------------------------------
# Validation helpers
# ---------------------------------------------------------------------------------------------


def _first_bad(arr: NDArray[np.float64], ok: NDArray[np.bool_]) -> float:
    """Return the first element of ``arr`` where ``ok`` is False."""
    return float(arr[~ok].flat[0])


def as_float_array(value: ArrayLike, name: str) -> NDArray[np.float64]:
    """Convert ``value`` to a float64 array, naming ``name`` in the error if impossible."""
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={value!r}: expected a real number or array of numbers") from None


def check_flip_angle(fa: ArrayLike, name: str = "fa") -> NDArray[np.float64]:
    """Validate nominal flip angles in degrees: finite and in the open interval (0, 90)."""
    arr = as_float_array(fa, name)
    ok = np.isfinite(arr) & (arr > 0.0) & (arr < 90.0)
    if not np.all(ok):
        raise ValueError(
            f"{name}={_first_bad(arr, ok)!r} deg: expected a flip angle in (0, 90) degrees"
        )
    return arr


def _check_positive(value: ArrayLike, name: str, unit: str, what: str) -> NDArray[np.float64]:
    """Validate a finite, strictly positive quantity."""
    arr = as_float_array(value, name)
    ok = np.isfinite(arr) & (arr > 0.0)
    if not np.all(ok):
        raise ValueError(f"{name}={_first_bad(arr, ok)!r}{unit}: expected {what}")
    return arr


def check_tr(tr: ArrayLike) -> NDArray[np.float64]:
    """Validate a repetition time in s: finite and > 0; the error names ``tr``."""
    return _check_positive(tr, "tr", " s", "a repetition time > 0 in seconds")


def check_b1(b1: ArrayLike, fa: NDArray[np.float64] | None = None) -> NDArray[np.float64]:
    """Validate a B1 scale (actual / nominal flip angle) > 0, and the actual angles with ``fa``."""
    arr = _check_positive(b1, "b1", "", "a flip-angle scale factor (actual/nominal) > 0")
    if fa is not None:
        actual = arr * fa
        ok = actual < 180.0
        if not np.all(ok):
            raise ValueError(
                f"b1*fa={_first_bad(np.broadcast_to(actual, actual.shape), ok)!r} deg: "
                "expected an actual flip angle below 180 degrees"
            )
    return arr


def _check_finite(value: ArrayLike, name: str, unit: str, what: str) -> NDArray[np.float64]:
    arr = as_float_array(value, name)
    ok = np.isfinite(arr)
    if not np.all(ok):
        raise ValueError(f"{name}={_first_bad(arr, ok)!r}{unit}: expected {what}")
    return arr


def _per_voxel(arr: NDArray[np.float64], ndim: int) -> NDArray[np.float64]:
    """Give an array with one dimension fewer than the (..., time) data a trailing axis."""
    if arr.ndim >= 1 and arr.ndim == ndim - 1:
        return arr[..., np.newaxis]
    return arr


# ---------------------------------------------------------------------------------------------
# Forward model
# ---------------------------------------------------------------------------------------------


def spgr(
    r1: ArrayLike,
    *,
    fa: ArrayLike,
    tr: float,
    m0: ArrayLike = 1.0,
    b1: ArrayLike = 1.0,
) -> NDArray[np.float64]:
    """Steady-state spoiled gradient echo signal.

    ``S = m0 sin(a) (1 - E1) / (1 - cos(a) E1)`` with ``E1 = exp(-tr r1)`` and
    ``a = b1 fa`` converted to radians. T2* decay is not modelled (TE << T2*).

    Parameters
    ----------
    r1 : array_like
        Longitudinal relaxation rate R1 in /s.
    fa : array_like
        Nominal flip angle in degrees, in (0, 90).
    tr : float
        Repetition time in s, > 0.
    m0 : array_like, optional
        Equilibrium signal scale M0 (arbitrary signal units), default 1.
    b1 : array_like, optional
        Flip-angle scale factor (actual / nominal), > 0, default 1.

    Returns
    -------
    ndarray of float64
        Signal in the units of ``m0``; ``r1``, ``fa``, ``m0`` and ``b1`` broadcast together.

    Raises
    ------
    ValueError
        If ``fa``, ``tr`` or ``b1`` is out of range.

    Examples
    --------
    >>> round(float(spgr(1.0, fa=30.0, tr=0.005)), 10)
    0.0180323219
    >>> spgr([1.0, 2.0], fa=15.0, tr=0.005, m0=1000.0).round(3)
    array([33.191, 58.951])

    """
    fa_ = check_flip_angle(fa)
    tr_ = check_tr(tr)
    b1_ = check_b1(b1, fa_)
    r1_ = as_float_array(r1, "r1")
    m0_ = as_float_array(m0, "m0")
    a = np.deg2rad(b1_ * fa_)
    e1 = np.exp(-tr_ * r1_)
    return m0_ * np.sin(a) * (1.0 - e1) / (1.0 - np.cos(a) * e1)


def spgr_inflow(
    r1: ArrayLike,
    *,
    fa: ArrayLike,
    tr: float,
    pulses: ArrayLike,
    pulses_to: ArrayLike | None = None,
    m0: ArrayLike = 1.0,
    b1: ArrayLike = 1.0,
) -> NDArray[np.float64]:
    """SPGR signal of spins that entered the excited slab fully relaxed (inflow).

    Spins that have received ``n`` RF pulses since they flowed into the slab with
    magnetisation ``m0`` give ``S = sin(a) [Mss + (m0 - Mss) (E1 cos a)^n]`` with
    ``Mss = m0 (1 - E1) / (1 - cos(a) E1)`` the steady state (perfect spoiling;
    ``S -> spgr(...)`` as ``n -> inf`` and ``S = m0 sin(a)`` at ``n = 0``). With
    ``pulses_to``, the signal is averaged over ``n`` uniformly in ``[pulses, pulses_to]``
    (spins spread over a voxel's depth along the flow), exactly.

    Parameters
    ----------
    r1 : array_like
        Longitudinal relaxation rate R1 in /s.
    fa : array_like
        Nominal flip angle in degrees, in (0, 90).
    tr : float
        Repetition time in s, > 0.
    pulses : array_like
        Number of RF pulses received since entering the slab (>= 0; the depth along the
        flow divided by ``velocity * tr``), may be fractional.
    pulses_to : array_like, optional
        Upper end of a range of ``pulses`` to average over (> ``pulses``).
    m0, b1 : array_like, optional
        As for :func:`spgr`.

    Returns
    -------
    ndarray of float64
        Signal in the units of ``m0``; the arguments broadcast together.

    Examples
    --------
    >>> round(float(spgr_inflow(1.0, fa=30.0, tr=0.005, pulses=0.0)), 10)
    0.5
    >>> bool(np.isclose(spgr_inflow(1.0, fa=30.0, tr=0.005, pulses=1e6), spgr(1.0, fa=30.0,
    ...     tr=0.005)))
    True

    """
    fa_ = check_flip_angle(fa)
    tr_ = check_tr(tr)
    b1_ = check_b1(b1, fa_)
    r1_ = as_float_array(r1, "r1")
    if np.any(~(r1_ >= 0)):
        raise ValueError(f"r1={_first_bad(r1_, r1_ >= 0)!r} /s: expected a relaxation rate >= 0")
    m0_ = as_float_array(m0, "m0")
    n0 = as_float_array(pulses, "pulses")
    if np.any(~(n0 >= 0)):
        raise ValueError(f"pulses={_first_bad(n0, n0 >= 0)!r}: expected a number of RF pulses >= 0")
    a = np.deg2rad(b1_ * fa_)
    e1 = np.exp(-tr_ * r1_)
    q = np.cos(a) * e1
    mss = m0_ * (1.0 - e1) / (1.0 - q)
    if pulses_to is None:
        decay = q**n0
    else:
        n1 = as_float_array(pulses_to, "pulses_to")
        ok = np.broadcast_to(n1 > n0, np.broadcast_shapes(n0.shape, n1.shape))
        if not ok.all():
            i = np.unravel_index(np.argmin(ok), ok.shape)
            lo, hi = np.broadcast_to(n0, ok.shape)[i], np.broadcast_to(n1, ok.shape)[i]
            raise ValueError(
                f"pulses_to={float(hi)!r} with pulses={float(lo)!r}: expected pulses_to >"
                " pulses (a range of RF pulse counts)"
            )
        log_q = np.log(q)
        decay = (q**n0 - q**n1) / ((n0 - n1) * log_q)
    return np.sin(a) * (mss + (m0_ - mss) * decay)


def vfa_signal(
    r10: ArrayLike,
    *,
    flip_angles: ArrayLike,
    tr: float,
    m0: ArrayLike = 1.0,
    b1: ArrayLike = 1.0,
) -> NDArray[np.float64]:
    """Variable-flip-angle SPGR signals for T1 mapping.

    Parameters
    ----------
    r10 : array_like, shape (...)
        Native longitudinal relaxation rate R10 in /s, one per voxel.
    flip_angles : array_like, shape (n_angles,)
        Nominal flip angles in degrees, each in (0, 90).
    tr : float
        Repetition time in s.
    m0 : array_like, shape (...) or scalar, optional
        Equilibrium signal scale per voxel (arbitrary units), default 1.
    b1 : array_like, shape (...) or scalar, optional
        Flip-angle scale factor (actual / nominal) per voxel, default 1.

    Returns
    -------
    ndarray of float64, shape (..., n_angles)
        Signal of every voxel at every flip angle.

    Examples
    --------
    >>> vfa_signal([1.0, 0.5], flip_angles=[3, 15], tr=0.005, m0=100.0).round(4)
    array([[4.1099, 3.3191],
           [3.382 , 1.7712]])

    """
    fas = check_flip_angle(flip_angles, "flip_angles")
    if fas.ndim != 1:
        raise ValueError(
            f"flip_angles with shape {fas.shape}: expected a 1-D sequence of angles in degrees"
        )
    r10_ = as_float_array(r10, "r10")[..., np.newaxis]
    m0_ = as_float_array(m0, "m0")[..., np.newaxis]
    b1_ = check_b1(b1)[..., np.newaxis]
    return spgr(r10_, fa=fas, tr=tr, m0=m0_, b1=b1_)


def r1_from_concentration(
    c: ArrayLike, *, r10: ArrayLike, r1_relaxivity: ArrayLike
) -> NDArray[np.float64]:
    """Longitudinal relaxation rate under fast water exchange: ``R1 = R10 + r1 C``.

    Parameters
    ----------
    c : array_like
        Contrast-agent concentration in mM.
    r10 : array_like
        Native (pre-contrast) R1 in /s; broadcast against ``c``.
    r1_relaxivity : array_like
        Relaxivity r1 in /mM/s.

    Returns
    -------
    ndarray of float64
        R1 in /s.

    Examples
    --------
    >>> r1_from_concentration([0.0, 1.0], r10=1.0, r1_relaxivity=4.5)
    array([1. , 5.5])

    """
    c_ = as_float_array(c, "c")
    r10_ = as_float_array(r10, "r10")
    rel = _check_finite(r1_relaxivity, "r1_relaxivity", " /mM/s", "a finite relaxivity in /mM/s")
    return r10_ + rel * c_


def r1_from_signal(
    s: ArrayLike,
    s_pre: ArrayLike,
    *,
    r10: ArrayLike,
    fa: ArrayLike,
    tr: float,
    b1: ArrayLike = 1.0,
) -> NDArray[np.float64]:
    """Exact SPGR inversion from signal ratio to R1.

    With ``A = s / s_pre``, ``E0 = exp(-tr r10)`` and ``a = b1 fa`` (radians)::

        E  = (1 - A + A E0 - E0 cos a) / (1 - A cos a + A E0 cos a - E0 cos a)
        R1 = -ln(E) / tr

    M0 cancels in the ratio, so only the pre-contrast R10 is needed.

    Parameters
    ----------
    s : array_like, shape (..., n_time)
        Signal time course (any units).
    s_pre : array_like, shape (..., 1), (...) or scalar
        Pre-contrast (baseline) signal in the same units as ``s``. An array with one
        dimension fewer than ``s`` is treated as one value per voxel.
    r10 : array_like, shape (..., 1), (...) or scalar
        Pre-contrast R1 in /s (same per-voxel rule as ``s_pre``).
    fa : array_like
        Nominal flip angle in degrees, in (0, 90) (same per-voxel rule).
    tr : float
        Repetition time in s.
    b1 : array_like, optional
        Flip-angle scale factor (actual / nominal), default 1 (same per-voxel rule).

    Returns
    -------
    ndarray of float64, shape of the broadcast of ``s`` with the parameters
        R1 in /s. NaN where the inversion is undefined: an input is not finite, or no
        positive R1 reproduces the ratio (``E <= 0``, the argument of the logarithm, which
        happens when ``s`` exceeds ``M0 sin a``; or ``E >= 1``, i.e. ``R1 <= 0``, e.g. for a
        zero or negative ``s``). No warning is issued. R1 below ``r10`` (negative
        concentration, as noise can produce) is returned as is.

    Examples
    --------
    >>> s_pre = spgr(1.0, fa=20.0, tr=0.004)
    >>> s = spgr(np.array([1.0, 3.0, 9.0]), fa=20.0, tr=0.004)
    >>> r1_from_signal(s, s_pre, r10=1.0, fa=20.0, tr=0.004).round(12)
    array([1., 3., 9.])

    """
    s_ = as_float_array(s, "s")
    nd = max(s_.ndim, 1)
    fa_ = _per_voxel(check_flip_angle(fa), nd)
    tr_ = check_tr(tr)
    b1_ = _per_voxel(check_b1(b1, np.max(fa_) if fa_.size else None), nd)
    s_pre_ = _per_voxel(as_float_array(s_pre, "s_pre"), nd)
    r10_ = _per_voxel(as_float_array(r10, "r10"), nd)
    cos_a = np.cos(np.deg2rad(b1_ * fa_))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        ratio = s_ / s_pre_
        e0 = np.exp(-tr_ * r10_)
        e0c = e0 * cos_a
        num = 1.0 - ratio + ratio * e0 - e0c
        den = 1.0 - ratio * cos_a + ratio * e0c - e0c
        e = num / den
        # E in (0, 1) <=> R1 in (0, inf). E <= 0 (log undefined: the ratio exceeds the
        # largest possible signal, M0 sin a) or E >= 1 (R1 <= 0: zero or negative ratio, or
        # a ratio beyond the pole of the inversion) has no physical solution.
        ok = np.isfinite(e) & (e > 0.0) & (e < 1.0)
        r1 = np.where(ok, -np.log(np.where(ok, e, 1.0)) / tr_, np.nan)
    return r1


def concentration_from_signal(
    s: ArrayLike,
    s_pre: ArrayLike,
    *,
    r10: ArrayLike,
    fa: ArrayLike,
    tr: float,
    r1_relaxivity: ArrayLike,
    b1: ArrayLike = 1.0,
) -> NDArray[np.float64]:
    """Contrast-agent concentration from SPGR signal by exact inversion (fast exchange).

    ``C = (R1 - R10) / r1`` with R1 from :func:`r1_from_signal`.

    Parameters
    ----------
    s : array_like, shape (..., n_time)
        Signal time course (any units).
    s_pre : array_like, shape (..., 1), (...) or scalar
        Pre-contrast (baseline) signal, same units as ``s``; an array with one dimension
        fewer than ``s`` is one value per voxel.
    r10 : array_like, shape (..., 1), (...) or scalar
        Pre-contrast R1 in /s.
    fa : array_like
        Nominal flip angle in degrees, in (0, 90).
    tr : float
        Repetition time in s.
    r1_relaxivity : array_like
        Relaxivity r1 in /mM/s.
    b1 : array_like, optional
        Flip-angle scale factor (actual / nominal), default 1.

    Returns
    -------
    ndarray of float64
        Concentration in mM; NaN where the inversion is undefined (never raises or warns
        for such samples).

    Examples
    --------
    >>> c = np.array([0.0, 0.5, 2.0])
    >>> s = spgr(r1_from_concentration(c, r10=0.8, r1_relaxivity=4.5), fa=25.0, tr=0.005)
    >>> s_pre = spgr(0.8, fa=25.0, tr=0.005)
    >>> concentration_from_signal(
    ...     s, s_pre, r10=0.8, fa=25.0, tr=0.005, r1_relaxivity=4.5
    ... ).round(12)
    array([0. , 0.5, 2. ])

    """
    s_ = as_float_array(s, "s")
    nd = max(s_.ndim, 1)
    rel = _check_finite(r1_relaxivity, "r1_relaxivity", " /mM/s", "a finite relaxivity in /mM/s")
    if np.any(rel == 0.0):
        raise ValueError("r1_relaxivity=0.0 /mM/s: expected a non-zero relaxivity in /mM/s")
    r1 = r1_from_signal(s_, s_pre, r10=r10, fa=fa, tr=tr, b1=b1)
    r10_ = _per_voxel(as_float_array(r10, "r10"), nd)
    return (r1 - r10_) / _per_voxel(rel, nd)
