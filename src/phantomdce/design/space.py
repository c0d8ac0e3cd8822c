"""The coupled protocol space a site's scanner can reach (``phantomdce optimise``).

A :class:`Space` lists values of the knobs a site can turn on its console; every combination
is one :class:`Candidate`, made by changing the site's :class:`phantomdce.scanner.Scanner`
(so the site's measured SNR reference is kept) and deriving the frame time, voxel size, SNR,
VFA noise and VFA time through the scanner model. The knobs:

``matrix_read``
    In-plane readout matrix; the phase matrix follows the site's phase/read ratio
    (``round(matrix_read * phase_site / read_site)``) and the field of view is the site's:
    in-plane voxel size and frame time move together.
``slices``
    Partitions of the 3D slab at the site's slab coverage: ``slice_thickness_mm = slices_site
    * thickness_site / slices`` (thinner slices, longer frames, lower SNR).
``parallel_factor``
    Acceleration ``R``; its g-factor from :attr:`Space.g_factors` (see
    :func:`g_factor_model`).
``fa``
    Dynamic flip angle, deg.
``vfa_flip_angles``, ``vfa_averages``
    The VFA T1 map: its angle sets (deg) and averages per image.
``duration``
    Duration of the dynamic series, s (the baseline stays ``n_baseline`` frames).

Everything else (TR, bandwidth, partial Fourier, averages, field strength, and every protocol
key the scanner does not set) is the site's. The scan time of a candidate is the dynamic
duration plus the VFA acquisition time, both from the scanner model
(:meth:`phantomdce.scanner.Scanner.derive`). A combination that makes no valid protocol (too
few frames after the bolus arrival, ...) is listed with the reason, not dropped silently.

The g-factor is not a property of the acquisition alone but of the coil and the
reconstruction; a site knows it at its own ``R`` at best. :data:`DEFAULT_G_FACTORS` is an
assumption (not from a source): a mean g-factor that grows with R for a multi-channel
head-and-neck coil with 2D acceleration, scaled so that it equals the site's own g-factor at
the site's R (:func:`g_factor_model`). Sites with a measured g-factor map set their own
(``--g-factors``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from phantomdce.dro.config import ConfigError, as_float, as_floats, as_int
from phantomdce.dro.protocol import Protocol

__all__ = [
    "DEFAULT_G_FACTORS",
    "ESNR_RULES",
    "Candidate",
    "Space",
    "default_space",
    "enumerate_space",
    "esnr_compliant",
    "g_factor_model",
    "parse_g_factors",
]

#: Mean g-factor at each acceleration R (1), an assumption (see the module docstring);
#: linearly interpolated between the listed R and scaled to the site's own g-factor.
DEFAULT_G_FACTORS: Mapping[float, float] = {1.0: 1.0, 2.0: 1.1, 3.0: 1.3, 4.0: 1.6}
#: The ESNR 2022 recommendations a candidate is checked against (Table 2 of the consensus):
#: frame time <= 5 s, dynamic series >= 300 s, >= 5 baseline frames, VFA with >= 3 angles
#: within 5-30 deg.
ESNR_RULES: Mapping[str, Any] = {
    "max_dt_s": 5.0,
    "min_duration_s": 300.0,
    "min_baseline_frames": 5,
    "min_vfa_angles": 3,
    "vfa_range_deg": (5.0, 30.0),
}


def esnr_compliant(protocol: Protocol) -> bool:
    """Whether a protocol follows every ESNR 2022 rule of :data:`ESNR_RULES`."""
    lo, hi = ESNR_RULES["vfa_range_deg"]
    angles = protocol.flip_angles
    return bool(
        protocol.dt <= ESNR_RULES["max_dt_s"] + 1e-9
        and protocol.duration >= ESNR_RULES["min_duration_s"] - 1e-9
        and protocol.n_baseline >= ESNR_RULES["min_baseline_frames"]
        and len(angles) >= ESNR_RULES["min_vfa_angles"]
        and min(angles) >= lo - 1e-9
        and max(angles) <= hi + 1e-9
    )


def parse_g_factors(text: str, path: str = "--g-factors") -> dict[float, float]:
    """Parse ``"1:1,2:1.1,3:1.3"`` (R:g pairs) into a g-factor table.

    Raises
    ------
    ConfigError
        A malformed pair, R < 1, g < 1, or no pair with R = 1 (naming the bad part).
    """
    out: dict[float, float] = {}
    for i, part in enumerate(p.strip() for p in text.split(",")):
        if part.count(":") != 1:
            raise ConfigError(
                f"{path} part {i + 1} = {part!r}: expected R:g, e.g. '2:1.1' (acceleration R"
                " and its g-factor, both >= 1)"
            )
        r, g = part.split(":")
        r_ = as_float(f"{path} R of {part!r}", _number(r), lo=1.0)
        out[r_] = as_float(f"{path} g of {part!r}", _number(g), lo=1.0)
    if 1.0 not in out:
        raise ConfigError(f"{path} = {text!r}: expected a pair for R = 1 (g = 1 without it)")
    return dict(sorted(out.items()))


def _number(text: str) -> Any:
    try:
        return float(text)
    except ValueError:
        return text.strip()


def g_factor_model(
    table: Mapping[float, float], site_r: float, site_g: float
) -> dict[str, Any]:
    """The g-factor at any R: the table, scaled to equal the site's g at the site's R.

    Parameters
    ----------
    table : mapping of float to float
        g-factor at listed accelerations (linear interpolation between them, the last value
        beyond).
    site_r, site_g : float
        The site's own acceleration and g-factor.

    Returns
    -------
    dict
        ``"g"``: a function of R (g = 1 at R = 1, >= 1 elsewhere); ``"scale"``: the factor
        applied to the table (1 when the site uses no acceleration).
    """
    rs = np.array(sorted(table), dtype=float)
    gs = np.array([table[r] for r in sorted(table)], dtype=float)
    base = lambda r: float(np.interp(r, rs, gs))  # noqa: E731
    scale = site_g / base(site_r) if site_r > 1.0 else 1.0

    def g(r: float) -> float:
        if r <= 1.0:
            return 1.0
        if r == site_r:
            return float(site_g)
        return max(1.0, base(r) * scale)

    return {"g": g, "scale": scale}


@dataclass(frozen=True)
class Space:
    """The values of each knob (see the module docstring); every combination is searched."""

    matrix_read: tuple[int, ...]
    slices: tuple[int, ...]
    parallel_factor: tuple[float, ...]
    fa: tuple[float, ...]
    vfa_flip_angles: tuple[tuple[float, ...], ...]
    vfa_averages: tuple[int, ...]
    duration: tuple[float, ...]
    g_factors: Mapping[float, float] = dataclasses.field(
        default_factory=lambda: dict(DEFAULT_G_FACTORS)
    )

    @property
    def size(self) -> int:
        """Number of combinations."""
        return int(
            np.prod(
                [
                    len(self.matrix_read),
                    len(self.slices),
                    len(self.parallel_factor),
                    len(self.fa),
                    len(self.vfa_flip_angles),
                    len(self.vfa_averages),
                    len(self.duration),
                ]
            )
        )

    def describe(self) -> dict[str, Any]:
        """The knobs' values as plain lists (units in the key names)."""
        return {
            "matrix_read": list(self.matrix_read),
            "slices": list(self.slices),
            "parallel_factor": list(self.parallel_factor),
            "fa_deg": list(self.fa),
            "vfa_flip_angles_deg": [list(a) for a in self.vfa_flip_angles],
            "vfa_averages": list(self.vfa_averages),
            "duration_s": list(self.duration),
            "g_factors": {str(k): v for k, v in self.g_factors.items()},
        }

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], base: Space, path: str = "space") -> Space:
        """A space with some knobs' values replaced, each checked (ConfigError naming it)."""
        values = {f.name: getattr(base, f.name) for f in dataclasses.fields(cls)}
        checks = {
            "matrix_read": lambda p, v: tuple(
                as_int(f"{p}[{i}]", x, lo=8, hi=1024) for i, x in enumerate(_list(p, v))
            ),
            "slices": lambda p, v: tuple(
                as_int(f"{p}[{i}]", x, lo=1, hi=1024) for i, x in enumerate(_list(p, v))
            ),
            "parallel_factor": lambda p, v: as_floats(p, _list(p, v), lo=1.0, hi=16.0),
            "fa": lambda p, v: as_floats(
                p, _list(p, v), units="deg", lo=0.0, hi=90.0, lo_open=True, hi_open=True
            ),
            "vfa_flip_angles": lambda p, v: tuple(
                as_floats(f"{p}[{i}]", a, min_len=2, units="deg", lo=0.0, hi=90.0,
                          lo_open=True, hi_open=True)
                for i, a in enumerate(_list(p, v))
            ),
            "vfa_averages": lambda p, v: tuple(
                as_int(f"{p}[{i}]", x, lo=1, hi=64) for i, x in enumerate(_list(p, v))
            ),
            "duration": lambda p, v: as_floats(
                p, _list(p, v), units="s", lo=0.0, lo_open=True, hi=3600.0
            ),
        }
        for key, value in data.items():
            if key not in checks:
                from phantomdce.dro.config import unknown_key

                raise unknown_key(path, key, checks)
            values[key] = checks[key](f"{path}.{key}", value)
        return cls(**values)


def _list(path: str, value: Any) -> list:
    if not isinstance(value, list | tuple) or not value:
        raise ConfigError(f"{path} = {value!r}: expected a non-empty list of values")
    return list(value)


def _around(value: float, grid: Sequence[float]) -> tuple:
    return tuple(sorted(set(grid) | {value}))


def default_space(scanner: Any, protocol: Protocol) -> Space:
    """A space around a site's scanner: each knob over a clinical range plus the site's value.

    Readout matrix 128-256 (in-plane voxel), slices 0.5-1.33 x the site's at its slab, R 1-4,
    dynamic flip angle 10-25 deg, VFA sets [2, 15], [5, 15, 30] (the ESNR set) and
    [3, 8, 15, 25] deg with 1, 2 or 4 averages, duration 240-420 s.
    """
    read, _ = scanner.matrix
    s = scanner.slices
    slices = {max(1, round(s * f)) for f in (0.5, 0.75, 1.0, 4.0 / 3.0)}
    return Space(
        matrix_read=tuple(int(x) for x in _around(read, (128, 160, 192, 256))),
        slices=tuple(sorted(slices)),
        parallel_factor=_around(float(scanner.parallel_factor), (1.0, 2.0, 3.0, 4.0)),
        fa=_around(float(scanner.fa), (10.0, 15.0, 20.0, 25.0)),
        vfa_flip_angles=tuple(
            dict.fromkeys(
                [(2.0, 15.0), (5.0, 15.0, 30.0), (3.0, 8.0, 15.0, 25.0),
                 tuple(scanner.vfa_flip_angles)]
            )
        ),
        vfa_averages=tuple(sorted({1, 2, 4, int(scanner.vfa_averages)})),
        duration=_around(float(protocol.duration), (240.0, 300.0, 360.0, 420.0)),
    )


@dataclass(frozen=True)
class Candidate:
    """One protocol of the space.

    Attributes
    ----------
    label : str
        Short name of the settings (``m192x144 s30 R2 fa15 vfa2/15x1 300s``).
    settings : dict
        The knobs' values (keys of :class:`Space`, ``slice_thickness_mm`` and ``g_factor``).
    scanner : phantomdce.scanner.Scanner
        The site's scanner with these settings.
    derived : phantomdce.scanner.Derived
        Frame time, voxel, SNR, VFA noise ratio and VFA time.
    protocol : Protocol
        The site's protocol with the scanner's keys and the duration applied.
    esnr : bool
        Whether it follows every ESNR 2022 rule (:func:`esnr_compliant`).
    """

    label: str
    settings: dict[str, Any]
    scanner: Any
    derived: Any
    protocol: Protocol
    esnr: bool

    @property
    def scan_time_s(self) -> float:
        """Dynamic duration + VFA acquisition time, s."""
        return float(self.protocol.duration + self.derived.vfa_time_s)


def _label(settings: Mapping[str, Any]) -> str:
    vfa = "/".join(f"{a:g}" for a in settings["vfa_flip_angles"])
    return (
        f"m{settings['matrix'][0]}x{settings['matrix'][1]} s{settings['slices']}"
        f" R{settings['parallel_factor']:g} fa{settings['fa']:g}"
        f" vfa{vfa}x{settings['vfa_averages']} {settings['duration']:g}s"
    )


def make_candidate(
    scanner: Any, protocol: Protocol, settings: Mapping[str, Any], g: Any
) -> Candidate:
    """The candidate of one combination of knob values (ConfigError if it is not valid).

    Parameters
    ----------
    scanner : phantomdce.scanner.Scanner
        The site's scanner.
    protocol : Protocol
        The site's protocol (keys the scanner does not set are kept).
    settings : mapping
        ``matrix_read``, ``slices``, ``parallel_factor``, ``fa``, ``vfa_flip_angles``,
        ``vfa_averages``, ``duration``.
    g : callable
        g-factor of an acceleration R (:func:`g_factor_model`).
    """
    read, phase = scanner.matrix
    m_read = int(settings["matrix_read"])
    m_phase = max(1, int(round(m_read * phase / read)))
    slab = scanner.slices * scanner.slice_thickness_mm
    n_sl = int(settings["slices"])
    r = float(settings["parallel_factor"])
    full = {
        "matrix": (m_read, m_phase),
        "slices": n_sl,
        "slice_thickness_mm": slab / n_sl,
        "parallel_factor": r,
        "g_factor": g(r),
        "fa": float(settings["fa"]),
        "vfa_flip_angles": tuple(float(a) for a in settings["vfa_flip_angles"]),
        "vfa_averages": int(settings["vfa_averages"]),
    }
    sc = scanner.replace(path="space", **full)
    derived = sc.derive()
    changes = sc.protocol_changes()
    pr = protocol.replace(
        path="space", **changes, post_bolus_s=None, duration=float(settings["duration"])
    )
    pr.check_post_bolus_window(path="space")
    full["duration"] = float(settings["duration"])
    full["dt_s"] = derived.dt
    return Candidate(_label(full), full, sc, derived, pr, esnr_compliant(pr))


def enumerate_space(
    scanner: Any, protocol: Protocol, space: Space
) -> tuple[list[Candidate], list[tuple[dict[str, Any], str]]]:
    """Every combination of the space as a candidate, and the combinations refused.

    Returns
    -------
    candidates : list of Candidate
        In the order of the knobs (matrix slowest, duration fastest).
    refused : list of (settings, reason)
        Combinations that make no valid protocol, with the checker's message.
    """
    g = g_factor_model(space.g_factors, scanner.parallel_factor, scanner.g_factor)["g"]
    out: list[Candidate] = []
    refused: list[tuple[dict[str, Any], str]] = []
    import itertools

    keys = ("matrix_read", "slices", "parallel_factor", "fa", "vfa_flip_angles",
            "vfa_averages", "duration")
    # the scanner (and its derivation) does not depend on the duration: one per combination
    for combo in itertools.product(*(getattr(space, k) for k in keys[:-1])):
        settings = dict(zip(keys[:-1], combo, strict=True))
        try:
            base = make_candidate(scanner, protocol, {**settings, "duration": 600.0}, g)
        except ConfigError as exc:
            for d in space.duration:
                refused.append(({**settings, "duration": d}, str(exc)))
            continue
        for d in space.duration:
            s = {**settings, "duration": d}
            try:
                pr = base.protocol.replace(path="space", duration=float(d))
                pr.check_post_bolus_window(path="space")
            except ConfigError as exc:
                refused.append((s, str(exc)))
                continue
            full = {**base.settings, "duration": float(d)}
            out.append(Candidate(_label(full), full, base.scanner, base.derived, pr,
                                 esnr_compliant(pr)))
    return out, refused
