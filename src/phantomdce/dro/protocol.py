"""Acquisition protocols: every knob of a DCE-MRI acquisition, with units and checks.

A :class:`Protocol` is immutable and always valid: it is built through
:meth:`Protocol.from_mapping` (or :func:`preset`) which checks every value and names the
offending key. Times are in s, angles in degrees, TR in s, dose in mmol/kg, injection
rate in mL/s, field strength in T.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from phantomdce.aif import DEFAULT_HCT
from phantomdce.dro.config import (
    ConfigError,
    as_bool,
    as_float,
    as_floats,
    as_int,
    as_str,
    unknown_key,
)

__all__ = [
    "Protocol",
    "PRESETS",
    "preset",
    "PROTOCOL_FIELDS",
    "AGENT_CONCENTRATION_M",
    "MIN_POST_BOLUS_FRAMES",
    "MIN_POST_BOLUS_S",
    "DEFAULT_VFA_AVERAGES",
]

#: Molar concentration of commercial formulations, mol/L (product labels).
AGENT_CONCENTRATION_M = {"gadobutrol": 1.0, "gadoterate": 0.5, "gadoteridol": 0.5}

AIF_NAMES = ("parker", "weinmann", "georgiou", "orton", "head_and_neck")
SAMPLING = ("instant", "average")


@dataclass(frozen=True)
class FieldSpec:
    """How one protocol key is checked, with its units and meaning."""

    units: str
    description: str
    check: Callable[[str, Any], Any]


def _pos(units: str) -> Callable[[str, Any], float]:
    return lambda p, v: as_float(p, v, units=units, lo=0.0, lo_open=True)


#: Equilibrium signal (a.u.) of the tissue in which a receiver's SNR is stated
#: (:attr:`Protocol.snr_t1_s`); the scenarios' default tissue M0.
RECEIVER_REFERENCE_M0 = 1000.0
#: Field strengths (T) at which relaxivities and native T1 values are tabulated.
FIELD_STRENGTHS = (1.5, 3.0)
#: Longest dynamic series simulated, s (the truth grid has 100 nodes per second).
MAX_DURATION_S = 3600.0
#: Fewest frames a study case must acquire after the bolus arrival: the extended Tofts
#: model has three parameters, and a window with fewer post-arrival frames holds no
#: information on them (issue 11: a 52 s series at dt 10 s with the bolus at 50 s was fitted
#: "successfully" to its starting values).
MIN_POST_BOLUS_FRAMES = 3
#: Shortest acquisition after the bolus arrival a study case may have, s: about the
#: duration of the first pass of the Parker AIF (its two Gaussians peak 10 and 22 s after
#: arrival), the least a fit needs to see the arterial peak and the start of the washout.
MIN_POST_BOLUS_S = 30.0
#: Default number of averages of each VFA image: the VFA images are acquired with the same
#: 3D SPGR sequence, voxel and receiver as the dynamic series, one average each, "a
#: convenient and common approach" for prostate DCE (Elsevier 2012, PubMed 22898681, a
#: study of VFA T1 mapping with B1 correction); so each VFA image has the noise SD of one
#: dynamic frame. The number of averages in practice is not from a source (an assumption).
#: Sites that average the VFA images set ``vfa_averages`` (the ``vfa_noise`` scenario sweeps
#: it).
DEFAULT_VFA_AVERAGES = 1
#: Most averages of a VFA image accepted (beyond this the acquisition time is unrealistic).
MAX_VFA_AVERAGES = 64


def _field(path: str, value: Any) -> float:
    v = as_float(path, value, units="T", lo=0.0, lo_open=True)
    if v not in FIELD_STRENGTHS:
        raise ConfigError(
            f"{path} = {value!r}: expected one of {list(FIELD_STRENGTHS)} T (the field"
            " strengths with tabulated relaxivity and native T1)"
        )
    return v


def _optional(check: Callable[[str, Any], Any]) -> Callable[[str, Any], Any]:
    return lambda p, v: None if v is None else check(p, v)


PROTOCOL_FIELDS: dict[str, FieldSpec] = {
    "dt": FieldSpec("s", "temporal resolution (frame interval)", _pos("s")),
    "n_baseline": FieldSpec("1", "number of pre-contrast frames", lambda p, v: as_int(p, v, lo=1)),
    "duration": FieldSpec(
        "s",
        "total acquisition time of the dynamic series (set by post_bolus_s when that is set)",
        lambda p, v: as_float(p, v, units="s", lo=0.0, lo_open=True, hi=MAX_DURATION_S),
    ),
    "post_bolus_s": FieldSpec(
        "s",
        "acquisition time after the bolus arrival (none: duration is given instead); when"
        " set, duration = bolus arrival + post_bolus_s, so that a sweep of dt, n_baseline or"
        " the arrival keeps the post-contrast window fixed",
        _optional(lambda p, v: as_float(p, v, units="s", lo=0.0, lo_open=True, hi=MAX_DURATION_S)),
    ),
    "bat": FieldSpec(
        "s",
        "bolus arrival time from the start of the series (default n_baseline * dt)",
        _optional(lambda p, v: as_float(p, v, units="s", lo=0.0)),
    ),
    "bat_phase": FieldSpec(
        "1",
        "bolus arrival after the baseline, as a fraction of dt (when bat is not set):"
        " bat = (n_baseline + bat_phase) * dt; sweep it to randomise the sampling phase",
        lambda p, v: as_float(p, v, lo=0.0, hi=1.0, hi_open=True),
    ),
    "aif_scale": FieldSpec(
        "1",
        "amplitude factor of the subject's true AIF (inter-subject variation)",
        lambda p, v: as_float(p, v, lo=0.0, lo_open=True, hi=10.0),
    ),
    "fa": FieldSpec(
        "deg",
        "flip angle of the dynamic series",
        lambda p, v: as_float(p, v, units="deg", lo=0.0, hi=90.0, lo_open=True, hi_open=True),
    ),
    "tr": FieldSpec("s", "repetition time", _pos("s")),
    "flip_angles": FieldSpec(
        "deg",
        "flip angles of the variable-flip-angle T1 map",
        lambda p, v: as_floats(
            p, v, min_len=2, units="deg", lo=0.0, hi=90.0, lo_open=True, hi_open=True
        ),
    ),
    "b1": FieldSpec(
        "1", "transmit field scale (actual / nominal flip angle)", _pos("(actual/nominal)")
    ),
    "field_strength": FieldSpec(
        "T",
        "main field strength (relaxivities and native T1 are tabulated at 1.5 and 3 T)",
        lambda p, v: _field(p, v),
    ),
    "agent": FieldSpec(
        "", "contrast agent", lambda p, v: as_str(p, v, choices=AGENT_CONCENTRATION_M)
    ),
    "r1": FieldSpec(
        "/mM/s",
        "relaxivity (default: the agent's plasma value at the field strength)",
        _optional(_pos("/mM/s")),
    ),
    "dose": FieldSpec("mmol/kg", "contrast agent dose", _pos("mmol/kg")),
    "weight": FieldSpec("kg", "body weight (sets the injected volume)", _pos("kg")),
    "injection_rate": FieldSpec(
        "mL/s",
        "injection rate (none: the population AIF as published)",
        _optional(_pos("mL/s")),
    ),
    "saline_flush": FieldSpec(
        "", "saline flush after the contrast injection", lambda p, v: as_bool(p, v)
    ),
    "hct": FieldSpec(
        "1",
        "haematocrit",
        lambda p, v: as_float(p, v, lo=0.0, hi=1.0, hi_open=True),
    ),
    "snr": FieldSpec(
        "1",
        "mean pre-contrast signal / noise SD per channel (inf: no noise)",
        lambda p, v: as_float(p, v, lo=0.0, lo_open=True, allow_inf=True),
    ),
    "vfa_averages": FieldSpec(
        "1",
        "averages (NSA) of each VFA image, acquired with the dynamic series' voxel and"
        " receiver: its noise SD per channel is the dynamic frames' SD / sqrt(vfa_averages)"
        " unless vfa_sigma_ratio is set",
        lambda p, v: as_int(p, v, lo=1, hi=MAX_VFA_AVERAGES),
    ),
    "vfa_sigma_ratio": FieldSpec(
        "1",
        "noise SD per channel of each VFA image / the dynamic frames' SD (none:"
        " 1 / sqrt(vfa_averages)); set by a [scanner] table from its averages and receiver",
        _optional(lambda p, v: as_float(p, v, lo=0.0, lo_open=True)),
    ),
    "snr_t1_s": FieldSpec(
        "s",
        "native T1 of the tissue (M0 = RECEIVER_REFERENCE_M0) in which snr is stated: when set"
        " (a [scanner] table sets it), the noise SD is the receiver's, the same in every voxel"
        " (the noise-free pre-contrast signal of that tissue / snr), so a tissue of another T1"
        " or M0 has another SNR; none: every voxel's SNR is snr (its own pre-contrast signal /"
        " snr)",
        _optional(_pos("s")),
    ),
    "sampling": FieldSpec(
        "",
        "frame value: instantaneous or window-averaged",
        lambda p, v: as_str(p, v, choices=SAMPLING),
    ),
    "aif": FieldSpec("", "population AIF", lambda p, v: as_str(p, v, choices=AIF_NAMES)),
    "arterial_voxels": FieldSpec(
        "1",
        "simulated arterial (carotid) voxels for AIF measurement (0: none)",
        lambda p, v: as_int(p, v, lo=0, hi=100_000),
    ),
    "blood_fraction": FieldSpec(
        "1",
        "blood volume fraction of each arterial voxel (partial volume; rest is muscle)",
        lambda p, v: as_float(p, v, lo=0.0, hi=1.0, lo_open=True),
    ),
}


@dataclass(frozen=True)
class Protocol:
    """An acquisition protocol. Build it with :meth:`from_mapping` or :func:`preset`.

    Attributes are in package units: see :data:`PROTOCOL_FIELDS` for units and meaning.
    The defaults are the ESNR 2022 head-and-neck recommendations (preset ``esnr2022``).
    """

    dt: float = 5.0
    n_baseline: int = 5
    duration: float = 300.0
    post_bolus_s: float | None = None
    bat: float | None = None
    bat_phase: float = 0.0
    aif_scale: float = 1.0
    fa: float = 15.0
    tr: float = 0.004
    flip_angles: tuple[float, ...] = (5.0, 15.0, 30.0)
    b1: float = 1.0
    field_strength: float = 3.0
    agent: str = "gadobutrol"
    r1: float | None = None
    dose: float = 0.1
    weight: float = 75.0
    injection_rate: float | None = 2.0
    saline_flush: bool = True
    hct: float = DEFAULT_HCT
    snr: float = 20.0
    vfa_averages: int = DEFAULT_VFA_AVERAGES
    vfa_sigma_ratio: float | None = None
    snr_t1_s: float | None = None
    sampling: str = "instant"
    aif: str = "parker"
    arterial_voxels: int = 20
    blood_fraction: float = 1.0

    @classmethod
    def from_mapping(
        cls, values: Mapping[str, Any], *, base: Protocol | None = None, path: str = "protocol"
    ) -> Protocol:
        """Build a protocol from a mapping of keys to values, checking each one.

        Parameters
        ----------
        values : mapping
            Protocol keys (see :data:`PROTOCOL_FIELDS`) to values in package units.
        base : Protocol, optional
            Values not given are taken from here (default: the ``esnr2022`` preset).
        path : str, optional
            Key path used in error messages.

        Returns
        -------
        Protocol

        Raises
        ------
        ConfigError
            An unknown key, a value of the wrong type or out of range, or an inconsistent
            combination (e.g. a duration shorter than the baseline).

        """
        base = base if base is not None else cls()
        out = dataclasses.asdict(base)
        for key, value in values.items():
            if key not in PROTOCOL_FIELDS:
                raise unknown_key(path, key, PROTOCOL_FIELDS)
            out[key] = PROTOCOL_FIELDS[key].check(f"{path}.{key}", value)
        proto = cls(**out)
        if proto.post_bolus_s is not None:
            if "duration" in values:
                raise ConfigError(
                    f"{path}.duration = {values['duration']!r} with {path}.post_bolus_s ="
                    f" {proto.post_bolus_s!r}: post_bolus_s sets the duration (bolus arrival +"
                    " post_bolus_s); expected only one of them"
                )
            out["duration"] = proto.bolus_arrival + proto.post_bolus_s
            if out["duration"] > MAX_DURATION_S:
                raise ConfigError(
                    f"{path}.post_bolus_s = {proto.post_bolus_s!r}: bolus arrival"
                    f" {proto.bolus_arrival:g} s + post_bolus_s = {out['duration']:g} s;"
                    f" expected a duration <= {MAX_DURATION_S:g} s"
                )
            proto = cls(**out)
        proto._consistency(path)
        return proto

    def _consistency(self, path: str) -> None:
        if self.n_frames <= self.n_baseline:
            raise ConfigError(
                f"{path}.duration = {self.duration!r}: expected a duration (s) longer than the"
                f" baseline, n_baseline * dt = {self.n_baseline} * {self.dt} ="
                f" {self.n_baseline * self.dt} s, so that post-contrast frames exist"
            )
        largest = max(self.fa, *self.flip_angles)
        if self.b1 * largest >= 180.0:
            raise ConfigError(
                f"{path}.b1 = {self.b1!r}: the actual flip angle b1 * {largest} deg ="
                f" {self.b1 * largest:g} deg; expected b1 * flip angle < 180 deg"
            )
        if self.bat is not None and self.bat >= self.duration:
            raise ConfigError(
                f"{path}.bat = {self.bat!r}: expected a bolus arrival (s) before the end of the"
                f" acquisition ({self.duration} s)"
            )

    @property
    def post_bolus_window(self) -> tuple[int, float]:
        """Frames acquired after the bolus arrival, and the time from the arrival to the end.

        Returns
        -------
        n_frames : int
            Frames at times strictly later than :attr:`bolus_arrival`.
        seconds : float
            ``duration - bolus_arrival``, s.
        """
        bat = self.bolus_arrival
        n = int(np.count_nonzero(self.frame_times > bat + 1e-9))
        return n, float(self.duration - bat)

    def check_post_bolus_window(self, path: str = "protocol") -> None:
        """Refuse a series that acquires too little after the bolus arrival to be fitted.

        A study case needs at least :data:`MIN_POST_BOLUS_FRAMES` frames and
        :data:`MIN_POST_BOLUS_S` s after the bolus arrival: with less, the curve holds no
        information on the kinetic parameters and a fitter returns its starting values.
        (A :class:`Protocol` on its own may be shorter, e.g. to draw a phantom's first pass;
        scenarios call this for every case.)

        Raises
        ------
        ConfigError
            Naming ``path.duration``, dt, the frames and seconds left and the arrival.
        """
        n, seconds = self.post_bolus_window
        if n < MIN_POST_BOLUS_FRAMES or seconds < MIN_POST_BOLUS_S:
            set_by = (
                f" (= bolus arrival + {path}.post_bolus_s = {self.post_bolus_s:g} s)"
                if self.post_bolus_s is not None
                else ""
            )
            raise ConfigError(
                f"{path}.duration = {self.duration:g} s{set_by} with dt = {self.dt:g} s leaves"
                f" {n} frames ({seconds:g} s) after the bolus arrival at"
                f" {self.bolus_arrival:g} s; expected >= {MIN_POST_BOLUS_FRAMES} frames and"
                f" >= {MIN_POST_BOLUS_S:g} s after the arrival"
            )

    def replace(self, path: str = "protocol", **changes: Any) -> Protocol:
        """Return a checked copy with some values changed."""
        return Protocol.from_mapping(changes, base=self, path=path)

    @property
    def n_frames(self) -> int:
        """Number of dynamic frames: frames at ``k * dt`` for ``k * dt < duration``."""
        return int(np.floor(self.duration / self.dt - 1e-9)) + 1

    @property
    def frame_times(self) -> np.ndarray:
        """Frame acquisition times ``k * dt`` in s."""
        return self.dt * np.arange(self.n_frames, dtype=np.float64)

    @property
    def bolus_arrival(self) -> float:
        """Bolus arrival in s: ``bat``, or ``(n_baseline + bat_phase) * dt`` when not set."""
        if self.bat is None:
            return float((self.n_baseline + self.bat_phase) * self.dt)
        return float(self.bat)

    @property
    def vfa_noise_ratio(self) -> float:
        """Noise SD of each VFA image / the dynamic frames' SD.

        ``vfa_sigma_ratio`` when set (by a scanner model), else ``1 / sqrt(vfa_averages)``.
        """
        if self.vfa_sigma_ratio is not None:
            return self.vfa_sigma_ratio
        return float(1.0 / np.sqrt(self.vfa_averages))

    def vfa_noise_sigma(self, sigma: ArrayLike) -> np.ndarray:
        """Noise SD per channel (a.u.) of each VFA image, from the dynamic frames' ``sigma``.

        ``sigma * vfa_sigma_ratio`` when a scanner model set that ratio, else
        ``sigma / sqrt(vfa_averages)`` (:attr:`vfa_noise_ratio` as a division: the
        simulator, the phantom and the bound draw the same numbers).
        """
        if self.vfa_sigma_ratio is None:
            return np.asarray(sigma) / np.sqrt(self.vfa_averages)
        return np.asarray(sigma) * self.vfa_sigma_ratio

    def noise_sigma(self, t10: ArrayLike, m0: ArrayLike = RECEIVER_REFERENCE_M0) -> np.ndarray:
        """Noise SD per channel (a.u.) of the dynamic frames in tissues of native T1 ``t10``.

        Parameters
        ----------
        t10 : array_like
            Native T1 of each tissue, s.
        m0 : array_like, optional
            Equilibrium signal of each tissue, a.u.

        Returns
        -------
        ndarray
            The broadcast shape of ``t10`` and ``m0``: ``spgr(1/t10, fa, tr, m0, b1) / snr``
            (every voxel at SNR ``snr``) when ``snr_t1_s`` is None; the receiver's one SD
            ``spgr(1/snr_t1_s, fa, tr, RECEIVER_REFERENCE_M0) / snr`` in every voxel when it
            is set (a scanner model; at the nominal angle: the receiver's noise does not
            depend on the transmit field ``b1``). Zero when ``snr`` is inf (no noise).
        """
        from phantomdce.signal import spgr

        t10_ = np.asarray(t10, dtype=np.float64)
        m0_ = np.asarray(m0, dtype=np.float64)
        shape = np.broadcast_shapes(t10_.shape, m0_.shape)
        if not np.isfinite(self.snr):
            return np.zeros(shape)
        if self.snr_t1_s is None:
            pre = spgr(1.0 / t10_, fa=self.fa, tr=self.tr, m0=m0_, b1=self.b1)
        else:
            # the receiver's SD: independent of the transmit field, so at the nominal angle
            ref = spgr(1.0 / self.snr_t1_s, fa=self.fa, tr=self.tr, m0=RECEIVER_REFERENCE_M0)
            pre = np.full(shape, float(ref))
        return np.broadcast_to(pre / self.snr, shape).copy()

    @property
    def relaxivity(self) -> float:
        """Relaxivity r1 in /mM/s (explicit ``r1`` or the agent's value at this field)."""
        if self.r1 is not None:
            return self.r1
        from phantomdce.signal import relaxivity

        return float(relaxivity(self.agent, self.field_strength))

    @property
    def injection_volume(self) -> float:
        """Injected contrast volume in mL: dose * weight / formulation concentration."""
        return self.dose * self.weight / AGENT_CONCENTRATION_M[self.agent]

    def as_attrs(self) -> dict[str, Any]:
        """All values (with derived ones) as plain types for storage in attributes."""
        d = dataclasses.asdict(self)
        d["flip_angles"] = list(self.flip_angles)
        d["bat"] = self.bolus_arrival
        d["r1"] = self.relaxivity
        d["n_frames"] = self.n_frames
        d["injection_volume"] = self.injection_volume
        return {k: ("none" if v is None else v) for k, v in d.items()}

    @staticmethod
    def units() -> dict[str, str]:
        """Units of every protocol key."""
        return {k: f.units for k, f in PROTOCOL_FIELDS.items()}


#: Named protocols (``[protocol] preset``), each the values it sets in package units on top
#: of the :class:`Protocol` defaults. Read-only; the one place presets are defined.
PRESETS: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {
        # ESNR 2022 (Table 2): temporal resolution <= 5 s, 5 pre-contrast frames, >= 5 min,
        # VFA with >= 3 angles in 5-30 deg, injection >= 2 mL/s with a saline flush, 1.5 or
        # 3 T.
        "esnr2022": MappingProxyType(
            {
                "dt": 5.0,
                "n_baseline": 5,
                "duration": 300.0,
                "flip_angles": (5.0, 15.0, 30.0),
                "injection_rate": 2.0,
                "saline_flush": True,
                "field_strength": 3.0,
            }
        ),
    }
)


def preset(name: str) -> Protocol:
    """Return a named protocol preset (``"esnr2022"``: the recommended values).

    Raises
    ------
    phantomdce.dro.config.ConfigError
        For a name that is not a key of :data:`PRESETS` (the message lists them).
    """
    if name not in PRESETS:
        raise ConfigError(f"protocol.preset = {name!r}: expected one of {sorted(PRESETS)}")
    return Protocol.from_mapping(PRESETS[name], base=Protocol())
