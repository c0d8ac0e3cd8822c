"""The scanner model: one 3D SPGR acquisition couples frame time, voxel size and SNR.

A :class:`Scanner` holds what a site sets on its console for the dynamic series (matrix,
field of view, slices of the 3D slab, TR, flip angle, parallel imaging, partial Fourier,
averages, readout bandwidth) and for the variable-flip-angle (VFA) series, plus one
measurement the site made: *"SNR ``reference_snr`` at this protocol"* (``reference``, in
tissue of T1 ``reference_t1_s``). :meth:`Scanner.derive` gives the frame time, the voxel size
and the SNR of every series, and :meth:`Scanner.protocol_changes` the
:class:`phantomdce.dro.protocol.Protocol` keys they set. This module is on the truth side: it
imports only :mod:`phantomdce.dro.config`, :mod:`phantomdce.dro.protocol` and
:mod:`phantomdce.signal`.

Frame time (s)
    ``dt = N_phase * N_slices * partial_fourier * averages * TR / R``: every phase encode of
    the 3D slab (``N_phase`` in-plane lines times ``N_slices`` partitions), of which the
    fraction ``partial_fourier`` is sampled, once per average, one per TR, with ``R``
    (``parallel_factor``) times fewer lines under parallel imaging. No rounding of the line
    count, no dummy pulses, fat saturation, keyhole or view sharing.

SNR
    The SNR of an image is proportional to the voxel volume times the square root of the
    time the receiver samples the signal for that image (Parker DL, Gullberg GT.
    Signal-to-noise efficiency in magnetic resonance imaging. Med Phys 1990;17:250-257:
    "the object signal-to-noise ratio scales directly with the voxel volume and the square
    root of the number of voxels"; at a fixed voxel the readout matrix has no effect, and
    averages act like phase encodes), times the transverse magnetisation the sequence leaves
    (the SPGR steady state), and divided by the g-factor of the parallel-imaging
    reconstruction (Pruessmann KP, Weiger M, Scheidegger MB, Boesiger P. SENSE: sensitivity
    encoding for fast MRI. Magn Reson Med 1999;42:952-962: ``SNR_R = SNR_full / (g sqrt(R))``,
    the ``sqrt(R)`` being the shorter sampling time). The sampling time per image is
    ``T_s = N_phase * N_slices * partial_fourier * averages / (R * BW)``, one readout of
    ``1 / BW`` s per sampled line (``BW`` = ``bandwidth_hz_px``, Hz per pixel: a line of
    ``N_read`` samples at ``N_read * BW`` Hz lasts ``1 / BW`` s). So, relative to the reference
    protocol (all constants cancel)::

        snr = reference_snr * (V / V_ref) * sqrt(T_s / T_s,ref) * (g_ref / g)
              * (S(fa, TR, T1) / S(fa_ref, TR_ref, T1_ref)) [* (B0 / B0_ref)]

    with ``V`` the voxel volume (mm3) and ``S(fa, TR, T1) = sin(fa) (1 - E1) / (1 - cos(fa) E1)``,
    ``E1 = exp(-TR / T1)``, the SPGR signal per unit M0 (:func:`phantomdce.signal.spgr`): at the
    same receiver, a lower flip angle gives less signal over the same noise. ``snr`` has the
    meaning of :attr:`Protocol.snr <phantomdce.dro.protocol.Protocol>`: the noise-free
    pre-contrast signal of tissue of T1 ``T1`` over the noise SD per channel. The last factor
    applies only when the reference was measured at another field strength and
    ``b0_scaling = "linear"`` (an assumption, flagged: SNR proportional to B0 in the
    body-noise-dominated regime; by default a reference at another field is refused).

VFA series
    Same voxel, slab, receiver, acceleration and TR as the dynamic series (``vfa_tr`` may only
    repeat ``tr``: the simulator models one TR), ``vfa_averages`` averages per image. Its noise
    SD over the dynamic frames' is ``vfa_sigma_ratio = sqrt(averages / vfa_averages)`` (the
    sampling time per image is the only difference); the acquisition time of all VFA images
    is ``len(vfa_flip_angles) * N_phase * N_slices * partial_fourier * vfa_averages * TR / R``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from phantomdce.dro.config import ConfigError, as_float, as_int, as_str, unknown_key
from phantomdce.dro.protocol import MAX_VFA_AVERAGES, PROTOCOL_FIELDS, FieldSpec

__all__ = [
    "SCANNER_FIELDS",
    "ACQUISITION_KEYS",
    "REQUIRED_KEYS",
    "PROTOCOL_KEYS_SET",
    "DERIVED_UNITS",
    "Scanner",
    "Derived",
]

#: Readout bandwidth per pixel when not given, Hz: a common value of a 3D SPGR at 3 T (an
#: assumption; the SNR is relative to the reference, so it matters only when the two differ).
DEFAULT_BANDWIDTH_HZ_PX = 400.0
#: Largest in-plane matrix or slice count accepted.
MAX_MATRIX = 1024
#: Largest acceleration accepted (parallel imaging times any other undersampling).
MAX_PARALLEL_FACTOR = 16.0
B0_SCALING = ("none", "linear")


def _pos(units: str, hi: float | None = None) -> Callable[[str, Any], float]:
    return lambda p, v: as_float(p, v, units=units, lo=0.0, lo_open=True, hi=hi)


def _pair(kind: Callable[..., Any], what: str, **kw: Any) -> Callable[[str, Any], tuple]:
    def check(path: str, value: Any) -> tuple:
        if not isinstance(value, list | tuple) or len(value) != 2:
            raise ConfigError(f"{path} = {value!r}: expected a list of two {what} (read, phase)")
        return tuple(kind(f"{path}[{i}]", v, **kw) for i, v in enumerate(value))

    return check


def _reference(path: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(
            f"{path} = {value!r}: expected a table of the acquisition keys of the protocol on"
            f" which the site measured reference_snr (any of {list(ACQUISITION_KEYS)})"
        )
    out = {}
    for key, v in value.items():
        if key not in ACQUISITION_KEYS:
            raise unknown_key(path, key, ACQUISITION_KEYS)
        out[key] = SCANNER_FIELDS[key].check(f"{path}.{key}", v)
    return out


SCANNER_FIELDS: dict[str, FieldSpec] = {
    "matrix": FieldSpec(
        "1",
        "(read, phase) samples in-plane of the dynamic 3D SPGR series",
        _pair(as_int, "integers", lo=1, hi=MAX_MATRIX),
    ),
    "fov_mm": FieldSpec(
        "mm",
        "(read, phase) field of view",
        _pair(as_float, "numbers > 0 (mm)", lo=0.0, lo_open=True, units="mm"),
    ),
    "slices": FieldSpec(
        "1",
        "partitions (slice encodes) of the 3D slab",
        lambda p, v: as_int(p, v, lo=1, hi=MAX_MATRIX),
    ),
    "slice_thickness_mm": FieldSpec("mm", "partition (slice) thickness", _pos("mm")),
    "tr": FieldSpec("s", "repetition time of the dynamic (and VFA) series", _pos("s", hi=1.0)),
    "fa": PROTOCOL_FIELDS["fa"],
    "parallel_factor": FieldSpec(
        "1",
        "R, total acceleration of parallel imaging (lines sampled = full / R)",
        lambda p, v: as_float(p, v, lo=1.0, hi=MAX_PARALLEL_FACTOR),
    ),
    "g_factor": FieldSpec(
        "1",
        "g-factor of the parallel-imaging reconstruction (noise amplification, 1 without)",
        lambda p, v: as_float(p, v, lo=1.0, hi=10.0),
    ),
    "partial_fourier": FieldSpec(
        "1",
        "fraction of the phase-encode lines sampled (partial Fourier)",
        lambda p, v: as_float(p, v, lo=0.5, lo_open=True, hi=1.0),
    ),
    "averages": FieldSpec(
        "1", "averages (NSA) of each dynamic frame", lambda p, v: as_int(p, v, lo=1, hi=64)
    ),
    "bandwidth_hz_px": FieldSpec(
        "Hz/px", "readout bandwidth per pixel (a line's readout lasts 1 / bandwidth)", _pos("Hz/px")
    ),
    "field_strength": PROTOCOL_FIELDS["field_strength"],
    "vfa_flip_angles": FieldSpec(
        "deg", "flip angles of the VFA T1 map", PROTOCOL_FIELDS["flip_angles"].check
    ),
    "vfa_tr": FieldSpec(
        "s",
        "repetition time of the VFA series (none: tr; only tr is accepted, the simulator"
        " models one TR for both series)",
        lambda p, v: None if v is None else as_float(p, v, units="s", lo=0.0, lo_open=True),
    ),
    "vfa_averages": FieldSpec(
        "1",
        "averages (NSA) of each VFA image",
        lambda p, v: as_int(p, v, lo=1, hi=MAX_VFA_AVERAGES),
    ),
    "reference": FieldSpec(
        "",
        "the protocol on which the site measured reference_snr: acquisition keys that differ"
        " from this scanner's (the rest are this scanner's values when first given)",
        _reference,
    ),
    "reference_snr": FieldSpec(
        "1",
        "pre-contrast SNR the site measured on the reference protocol (signal / noise SD per"
        " channel) in tissue of T1 reference_t1_s",
        lambda p, v: as_float(p, v, lo=0.0, lo_open=True),
    ),
    "reference_t1_s": FieldSpec(
        "s",
        "T1 of the tissue in which reference_snr was measured, and at which snr is given"
        " (none: native tumour T1 at each field strength)",
        lambda p, v: None if v is None else as_float(p, v, units="s", lo=0.0, lo_open=True),
    ),
    "b0_scaling": FieldSpec(
        "",
        "how SNR scales with field strength when the reference was measured at another field:"
        " 'none' (refused) or 'linear' (SNR proportional to B0, an assumption)",
        lambda p, v: as_str(p, v, choices=B0_SCALING),
    ),
}

#: Keys of one acquisition (the ones a ``reference`` table may give).
ACQUISITION_KEYS = (
    "matrix",
    "fov_mm",
    "slices",
    "slice_thickness_mm",
    "tr",
    "fa",
    "parallel_factor",
    "g_factor",
    "partial_fourier",
    "averages",
    "bandwidth_hz_px",
    "field_strength",
)
#: Keys a scanner needs when it is not built on another one.
REQUIRED_KEYS = ("matrix", "fov_mm", "slices", "slice_thickness_mm", "tr", "fa", "reference_snr")
#: Protocol keys a scanner sets (:meth:`Scanner.protocol_changes`); a scenario with a
#: ``[scanner]`` table refuses them in ``[protocol]`` and ``[sweep]``.
PROTOCOL_KEYS_SET = (
    "dt",
    "tr",
    "fa",
    "flip_angles",
    "field_strength",
    "snr",
    "vfa_averages",
    "vfa_sigma_ratio",
    "snr_t1_s",
)


#: Units of :meth:`Derived.as_attrs` (and of a case's ``scan_time_s``).
DERIVED_UNITS = {
    "dt_s": "s",
    "voxel_read_mm": "mm",
    "voxel_phase_mm": "mm",
    "voxel_slice_mm": "mm",
    "voxel_mm3": "mm3",
    "snr": "1",
    "vfa_sigma_ratio": "1",
    "vfa_time_s": "s",
    "acquisition_time_per_image_s": "s",
    "snr_t1_s": "s",
    "scan_time_s": "s",
}


def _spgr_per_m0(fa_deg: float, tr: float, t1: float) -> float:
    from phantomdce.signal import spgr

    return float(spgr(1.0 / t1, fa=fa_deg, tr=tr))


def _t1(explicit: float | None, field_strength: float) -> float:
    if explicit is not None:
        return explicit
    from phantomdce.signal import native_t1

    return float(native_t1("tumour", field_strength))


@dataclass(frozen=True)
class Derived:
    """What a scanner's settings imply. Build it with :meth:`Scanner.derive`.

    Attributes
    ----------
    dt : float
        Frame time of the dynamic series, s.
    voxel_mm : tuple of float
        Acquired voxel (read, phase, slice), mm.
    voxel_mm3 : float
        Voxel volume, mm3.
    snr : float
        Pre-contrast SNR of one dynamic frame in tissue of T1 :attr:`t1_s` (the meaning of
        :attr:`phantomdce.dro.protocol.Protocol.snr`).
    vfa_sigma_ratio : float
        Noise SD of one VFA image / noise SD of one dynamic frame.
    vfa_time_s : float
        Acquisition time of all VFA images, s.
    acquisition_time_per_image_s : float
        Time the receiver samples one dynamic frame (ADC on), s: the ``T_s`` of the SNR law.
    t1_s : float
        T1 at which :attr:`snr` is given, s.
    """

    dt: float
    voxel_mm: tuple[float, float, float]
    voxel_mm3: float
    snr: float
    vfa_sigma_ratio: float
    vfa_time_s: float
    acquisition_time_per_image_s: float
    t1_s: float

    def as_attrs(self) -> dict[str, Any]:
        """Plain values for storing per case, units in the key names (``1``: unitless)."""
        return {
            "dt_s": self.dt,
            "voxel_read_mm": self.voxel_mm[0],
            "voxel_phase_mm": self.voxel_mm[1],
            "voxel_slice_mm": self.voxel_mm[2],
            "voxel_mm3": self.voxel_mm3,
            "snr": self.snr,
            "vfa_sigma_ratio": self.vfa_sigma_ratio,
            "vfa_time_s": self.vfa_time_s,
            "acquisition_time_per_image_s": self.acquisition_time_per_image_s,
            "snr_t1_s": self.t1_s,
        }


@dataclass(frozen=True)
class Scanner:
    """A site's 3D SPGR acquisition and its SNR measurement. Build with :meth:`from_mapping`.

    Attributes are in package units (see :data:`SCANNER_FIELDS`); the laws that couple them
    are in the module docstring.
    """

    matrix: tuple[int, int]
    fov_mm: tuple[float, float]
    slices: int
    slice_thickness_mm: float
    tr: float
    fa: float
    reference_snr: float
    reference: Mapping[str, Any]
    parallel_factor: float = 1.0
    g_factor: float = 1.0
    partial_fourier: float = 1.0
    averages: int = 1
    bandwidth_hz_px: float = DEFAULT_BANDWIDTH_HZ_PX
    field_strength: float = 3.0
    vfa_flip_angles: tuple[float, ...] = (5.0, 15.0, 30.0)
    vfa_tr: float | None = None
    vfa_averages: int = 1
    reference_t1_s: float | None = None
    b0_scaling: str = "none"

    @classmethod
    def from_mapping(
        cls, data: Mapping[str, Any], path: str = "scanner", base: Scanner | None = None
    ) -> Scanner:
        """Build a scanner from a mapping (a ``[scanner]`` table), checking every value.

        Parameters
        ----------
        data : mapping
            Keys of :data:`SCANNER_FIELDS` in package units. Without ``base``, the keys of
            :data:`REQUIRED_KEYS` are needed.
        path : str, optional
            Key path for error messages.
        base : Scanner, optional
            Values not given are taken from here, its ``reference`` included (so a sweep
            that changes this scanner keeps the site's measurement fixed).

        Returns
        -------
        Scanner

        Raises
        ------
        ConfigError
            An unknown or missing key, a bad value, or an inconsistent scanner (readout
            longer than TR, ``vfa_tr`` other than ``tr``, a reference at another field
            without ``b0_scaling``); the message names the key path, value and expectation.

        Notes
        -----
        Without ``base``, ``reference`` gives only the acquisition keys in which the
        measured protocol differs from this one; the others are copied from this scanner
        and the stored ``reference`` is then complete.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"{path} = {data!r}: expected a table of scanner keys")
        for key in data:
            if key not in SCANNER_FIELDS:
                raise unknown_key(path, key, SCANNER_FIELDS)
        if base is None:
            missing = [k for k in REQUIRED_KEYS if k not in data]
            if missing:
                raise ConfigError(
                    f"{path}: missing {missing}; expected every one of {list(REQUIRED_KEYS)}"
                    " (the acquisition's geometry, TR, flip angle and the SNR the site measured)"
                )
            out: dict[str, Any] = {
                f.name: f.default
                for f in dataclasses.fields(cls)
                if f.default is not dataclasses.MISSING
            }
        else:
            out = {f.name: getattr(base, f.name) for f in dataclasses.fields(cls)}
        given_reference = None
        for key, value in data.items():
            if key == "reference":
                given_reference = SCANNER_FIELDS[key].check(f"{path}.{key}", value)
            else:
                out[key] = SCANNER_FIELDS[key].check(f"{path}.{key}", value)
        if base is None or given_reference is not None:
            own = {k: out[k] for k in ACQUISITION_KEYS}
            ref = {**(own if base is None else dict(base.reference)), **(given_reference or {})}
            out["reference"] = ref
        out["reference"] = dict(sorted(dict(out["reference"]).items()))
        scanner = cls(**out)
        scanner._consistency(path)
        return scanner

    def _consistency(self, path: str) -> None:
        for where, acq in ((path, self._acquisition()), (f"{path}.reference", self.reference)):
            readout = 1.0 / acq["bandwidth_hz_px"]
            if readout >= acq["tr"]:
                raise ConfigError(
                    f"{where}.bandwidth_hz_px = {acq['bandwidth_hz_px']!r}: a line's readout"
                    f" lasts 1 / bandwidth = {readout * 1e3:g} ms; expected it shorter than"
                    f" {where}.tr = {acq['tr'] * 1e3:g} ms (bandwidth > {1.0 / acq['tr']:g} Hz/px)"
                )
        if self.vfa_tr is not None and self.vfa_tr != self.tr:
            raise ConfigError(
                f"{path}.vfa_tr = {self.vfa_tr!r}: expected none or {path}.tr = {self.tr!r}"
                " (the simulator models one TR for the dynamic and VFA series)"
            )
        ref_field = self.reference["field_strength"]
        if ref_field != self.field_strength and self.b0_scaling == "none":
            raise ConfigError(
                f"{path}.reference.field_strength = {ref_field!r} with {path}.field_strength ="
                f" {self.field_strength!r}: expected the reference measured at the same field,"
                f' or {path}.b0_scaling = "linear" (SNR proportional to B0, an assumption)'
            )

    def _acquisition(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ACQUISITION_KEYS}

    def replace(self, path: str = "scanner", **changes: Any) -> Scanner:
        """Return a checked copy with some values changed (the reference is kept)."""
        return Scanner.from_mapping(changes, path=path, base=self)

    def as_mapping(self) -> dict[str, Any]:
        """Every value as plain types (lists, ``"none"`` for None), e.g. for provenance."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Mapping):
                v = {k: list(x) if isinstance(x, tuple) else x for k, x in v.items()}
            elif isinstance(v, tuple):
                v = list(v)
            out[f.name] = "none" if v is None else v
        return out

    @staticmethod
    def units() -> dict[str, str]:
        """Units of every scanner key."""
        return {k: f.units for k, f in SCANNER_FIELDS.items()}

    @staticmethod
    def _lines(acq: Mapping[str, Any]) -> float:
        """Phase-encode lines sampled per average: N_phase * N_slices * partial_fourier / R."""
        return (
            acq["matrix"][1] * acq["slices"] * acq["partial_fourier"] / acq["parallel_factor"]
        )

    @staticmethod
    def _voxel(acq: Mapping[str, Any]) -> tuple[float, float, float]:
        return (
            acq["fov_mm"][0] / acq["matrix"][0],
            acq["fov_mm"][1] / acq["matrix"][1],
            float(acq["slice_thickness_mm"]),
        )

    @classmethod
    def _sampling_time(cls, acq: Mapping[str, Any]) -> float:
        return cls._lines(acq) * acq["averages"] / acq["bandwidth_hz_px"]

    def derive(self) -> Derived:
        """Frame time, voxel, SNR and VFA noise and time of this scanner.

        Returns
        -------
        Derived
            See the module docstring for the laws.
        """
        acq, ref = self._acquisition(), self.reference
        lines = self._lines(acq)
        voxel = self._voxel(acq)
        volume = voxel[0] * voxel[1] * voxel[2]
        ref_voxel = self._voxel(ref)
        ref_volume = ref_voxel[0] * ref_voxel[1] * ref_voxel[2]
        t_s = self._sampling_time(acq)
        t1 = _t1(self.reference_t1_s, self.field_strength)
        t1_ref = _t1(self.reference_t1_s, ref["field_strength"])
        snr = (
            self.reference_snr
            * (volume / ref_volume)
            * math.sqrt(t_s / self._sampling_time(ref))
            * (ref["g_factor"] / self.g_factor)
            * (_spgr_per_m0(self.fa, self.tr, t1) / _spgr_per_m0(ref["fa"], ref["tr"], t1_ref))
        )
        if self.b0_scaling == "linear":
            snr *= self.field_strength / ref["field_strength"]
        return Derived(
            dt=lines * self.averages * self.tr,
            voxel_mm=voxel,
            voxel_mm3=volume,
            snr=snr,
            vfa_sigma_ratio=math.sqrt(self.averages / self.vfa_averages),
            vfa_time_s=len(self.vfa_flip_angles) * lines * self.vfa_averages * self.tr,
            acquisition_time_per_image_s=t_s,
            t1_s=t1,
        )

    def protocol_changes(self) -> dict[str, Any]:
        """The :class:`phantomdce.dro.protocol.Protocol` values this scanner sets.

        Returns
        -------
        dict
            Exactly the keys of :data:`PROTOCOL_KEYS_SET`: ``dt`` (s), ``tr`` (s), ``fa``
            (deg), ``flip_angles`` (deg), ``field_strength`` (T), ``snr``, ``vfa_averages``,
            ``vfa_sigma_ratio`` and ``snr_t1_s`` (s: the T1 at which ``snr`` is given, so
            that the simulated noise SD is the receiver's, the same in every voxel).
        """
        d = self.derive()
        return {
            "dt": d.dt,
            "tr": self.tr,
            "fa": self.fa,
            "flip_angles": self.vfa_flip_angles,
            "field_strength": self.field_strength,
            "snr": d.snr,
            "vfa_averages": self.vfa_averages,
            "vfa_sigma_ratio": d.vfa_sigma_ratio,
            "snr_t1_s": d.t1_s,
        }
