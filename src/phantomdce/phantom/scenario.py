"""Phantom scenarios: the spatial recommendations, on the anthropomorphic neck phantom.

A phantom scenario is a scenario file with a ``[phantom]`` table and an ``[acquisition]``
table; its ``[sweep]`` may name acquisition keys (``slice_mm``, ``in_plane_mm``,
``gap_mm``, ``fat_suppression``, ...) and ``roi`` as well as protocol keys::

    [phantom]
    shape = [40, 160, 160]   # truth grid (slices, y, x), 1 mm voxels
    subjects = 2             # phantoms drawn with seeds seed, seed + 1, ...
    roi = "recommended"      # tumour ROI rule: "recommended" or "whole_lesion" (sweepable)
    carotid = "auto"         # carotid ROI: "auto" or "manual"
    summary = "voxel"        # or "roi_mean", "map_mean", "map_median", "mean_curve" (SUMMARIES)
    subject_aif = "same"     # or "varied": each subject its own AIF (see subject_protocol)
    tumour_diameter_mm = 28.0  # the primary tumour's mean diameter, mm (sweepable)
    sessions = 1             # test-retest: each subject scanned in this many sessions

    [phantom.session_variation]   # what changes between two sessions (with sessions > 1)
    bolus_arrival_s = 2.0    # SD of the bolus arrival time per session, s
    aif_scale = 0.10         # SD of the AIF amplitude factor per session (relative, 1)
    shift_mm = 2.0           # repositioning: uniform in +-shift_mm along each axis, mm

    [acquisition]
    in_plane_mm = 2.0
    slice_mm = 3.0

A ``[scanner]`` table (:mod:`phantomdce.scanner`) may describe the acquisition instead: its
voxel sets ``in_plane_mm`` (square in-plane voxels only) and ``slice_mm``, which
``[acquisition]`` and ``[sweep]`` may then not give, and its SNR sets the noise, the site's
``reference_snr`` being that of muscle (``reference_t1_s`` defaults to muscle's native T1);
each case's ``snr`` is that SNR converted to the phantom's definition (muscle at the
2 x 2 x 3 mm reference voxel, scaled by the voxel volume in the acquisition).

This module is the truth side of a phantom scenario: it checks the file
(:func:`parse_phantom_scenario`, every error a :class:`~phantomdce.dro.config.ConfigError`
naming its key), expands its cases (protocol sweep x acquisition sweep), and gives each
case's subjects, their protocols and noise seeds. The engine (:mod:`phantomdce.engine.run`)
runs a phantom scenario like any other: one unit of work per case and subject, in which the
subject is acquired ``replicates`` times, the ROIs are placed on the images
(:mod:`phantomdce.fit.roi`) and the ROI voxels go through the pipeline and the fitters.

Test-retest (``sessions = S > 1``): every case of the sweep is expanded into ``S`` session
cases (case value ``session`` 0..S-1, the last sweep key), so the engine fits each session
like a case: its own noise seeds (the case index enters them), its own injection
(:func:`session_protocol`: the subject's bolus arrival moved by a normal draw of SD
``session_variation.bolus_arrival_s`` s and the AIF amplitude multiplied by ``1 + N(0,
aif_scale)``), its own positioning (:func:`session_shift_mm`: the phantom moved against the
acquisition grid by a uniform draw in +-``shift_mm`` mm per axis, whole truth voxels) and,
because the engine places the ROIs on each unit's first acquisition, the ROIs redrawn by the
same rule on that session's images. The truth (the phantom's tissues and kinetics) is the
same in every session. :func:`phantomdce.report.repeatability.repeatability` pairs the
sessions of a subject.

``tumour_diameter_mm`` sets the primary tumour's mean diameter
(:class:`~phantomdce.phantom.anatomy.NeckGeometry` ``tumour_radius`` = diameter / 2; the
haemorrhage focus scales with it, 4 mm radius at the default 28 mm); it may be swept.
:func:`simulate_phantom_scenario` writes the acquisitions as a DRO store
(``phantomdce simulate``) without fitting anything.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

import phantomdce
from phantomdce.dro.config import (
    ConfigError,
    as_bool,
    as_float,
    as_int,
    as_str,
    read_toml,
    unknown_key,
)
from phantomdce.dro.protocol import Protocol
from phantomdce.dro.scenario import Case, Scenario, parse_scenario, scanner_columns
from phantomdce.phantom.acquire import FLOW_PROFILES, IN_PLANE_PSFS, SLICE_PROFILES, Acquisition
from phantomdce.phantom.anatomy import NeckGeometry, Phantom, make_neck
from phantomdce.phantom.case import acquisition_seed, repeat_seed

__all__ = [
    "PhantomScenario",
    "PhantomCase",
    "is_phantom_scenario",
    "parse_phantom_scenario",
    "load_phantom_scenario",
    "cap_subjects",
    "subject_protocol",
    "replicate_codes",
    "subject_of",
    "session_protocol",
    "session_shift_mm",
    "shift_phantom",
    "neck_geometry",
    "simulate_phantom_scenario",
    "SESSION_VARIATION",
    "ACQ_KEYS",
    "PHANTOM_KEYS",
    "ROI_RULES",
    "SUMMARIES",
    "SUBJECT_AIFS",
    "ENHANCING",
]

ACQ_FLOATS = (
    "in_plane_mm",
    "slice_mm",
    "gap_mm",
    "fat_suppression",
    "artery_velocity_cm_s",
    "vein_velocity_cm_s",
    "inflow_offset_mm",
)
ACQ_CHOICES = {
    "in_plane_psf": IN_PLANE_PSFS,
    "slice_profile": SLICE_PROFILES,
    "flow_profile": FLOW_PROFILES,
}
#: Keys of the ``[acquisition]`` table (also sweepable).
ACQ_KEYS = (*ACQ_FLOATS, *ACQ_CHOICES, "inflow")
#: Sweepable ``[phantom]`` keys that are not acquisition settings.
CASE_KEYS = ("roi", "tumour_diameter_mm")
#: Keys of the ``[phantom]`` table.
PHANTOM_KEYS = (
    "shape",
    "subjects",
    "roi",
    "carotid",
    "summary",
    "subject_aif",
    "tumour_diameter_mm",
    "sessions",
    "session_variation",
)
#: Keys of ``[phantom.session_variation]`` with their units and defaults: the SD of the bolus
#: arrival (s) and of the AIF amplitude factor (relative, 1) per session, and the largest
#: repositioning along each axis (mm, uniform in +-shift_mm).
SESSION_VARIATION = {"bolus_arrival_s": 2.0, "aif_scale": 0.10, "shift_mm": 2.0}
SESSION_VARIATION_UNITS = {"bolus_arrival_s": "s (SD)", "aif_scale": "1 (SD)", "shift_mm": "mm"}
#: The primary tumour's default mean diameter, mm (2 x NeckGeometry.tumour_radius).
DEFAULT_TUMOUR_DIAMETER_MM = 28.0
#: Radius of the haemorrhage focus at the default diameter, mm (scaled with the diameter).
_HAEMORRHAGE_RADIUS_MM = 4.0
#: Population AIF shapes the subjects cycle through with ``subject_aif = "varied"``.
SUBJECT_AIFS = ("parker", "georgiou", "head_and_neck")
#: ``phantom.summary`` values: every ROI voxel (``"voxel"``); one value per subject and
#: acquisition, the ROI mean of the map against the enhancing tumour's truth (``"roi_mean"``);
#: or the ROI value extracted as a site would, against the mean truth of the ROI's voxels
#: (``"map_mean"``, ``"map_median"``: mean or median of the fitted map over the ROI;
#: ``"mean_curve"``: the ROI's mean curve fitted once; see :mod:`phantomdce.engine.phantom`).
SUMMARIES = ("voxel", "roi_mean", "map_mean", "map_median", "mean_curve")
#: Tumour ROI rules (see :func:`phantomdce.fit.roi.tumour_rois`).
ROI_RULES = ("recommended", "whole_lesion")
#: The enhancing tumour classes: what a tumour ROI is meant to measure (the truth of a ROI
#: value with ``summary = "roi_mean"``).
ENHANCING = ("tumour_rim", "tumour_hypoxic")
#: Acquisition keys that only matter with inflow on.
INFLOW_KEYS = ("artery_velocity_cm_s", "vein_velocity_cm_s", "inflow_offset_mm", "flow_profile")
#: Units of the acquisition keys (the cases table's attributes).
ACQ_UNITS = {
    "in_plane_mm": "mm",
    "slice_mm": "mm",
    "gap_mm": "mm",
    "fat_suppression": "1 (fraction of fat signal removed)",
    "artery_velocity_cm_s": "cm/s",
    "vein_velocity_cm_s": "cm/s",
    "inflow_offset_mm": "mm",
    "in_plane_psf": "1",
    "slice_profile": "1",
    "flow_profile": "1",
    "inflow": "1",
    "roi": "1",
    "tumour_diameter_mm": "mm",
    "session": "1 (test-retest session index)",
}


def is_phantom_scenario(raw: dict[str, Any]) -> bool:
    """Whether a parsed scenario TOML mapping is a phantom scenario (has ``[phantom]``)."""
    return "phantom" in raw


def cap_subjects(raw: dict[str, Any], max_subjects: int | None) -> dict[str, Any]:
    """A phantom scenario with at most ``max_subjects`` subjects (a study's smaller size).

    The first subjects are kept (subject ``s`` has phantom seed ``seed + s`` and its own
    AIF, whatever the count), so a capped run is the start of the full one. ``None``
    returns ``raw`` unchanged.
    """
    if max_subjects is None or "phantom" not in raw:
        return raw
    ph = dict(raw["phantom"])
    own = ph.get("subjects", 1)
    if isinstance(own, int) and not isinstance(own, bool) and own > max_subjects:
        ph["subjects"] = max_subjects
    return {**raw, "phantom": ph}


def replicate_codes(subject_replicates: list[np.ndarray], replicates: int) -> np.ndarray:
    """Replicate codes of a case pooled over subjects, unique for any number of replicates.

    Parameters
    ----------
    subject_replicates : list of ndarray of int
        For each subject (in order), the replicate index (0 to ``replicates - 1``) of each of
        its voxels.
    replicates : int
        Acquisitions per subject (the scenario's ``replicates``).

    Returns
    -------
    ndarray of int64
        ``subject * replicates + replicate`` per voxel, concatenated over subjects; the
        subject of a code is ``code // replicates`` (see :func:`subject_of`).

    Examples
    --------
    >>> replicate_codes([np.array([0, 999]), np.array([0, 999])], 1000)
    array([   0,  999, 1000, 1999])
    """
    if replicates < 1:
        raise ValueError(f"replicates = {replicates!r}: expected an integer >= 1")
    parts = []
    for s, r in enumerate(subject_replicates):
        r = np.asarray(r, dtype=np.int64)
        if r.size and (r.min() < 0 or r.max() >= replicates):
            raise ValueError(
                f"subject {s}: replicate indices {int(r.min())}..{int(r.max())}:"
                f" expected 0..{replicates - 1}"
            )
        parts.append(s * replicates + r)
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def subject_of(codes: np.ndarray, replicates: int) -> np.ndarray:
    """The subject index of each replicate code of :func:`replicate_codes`."""
    return np.asarray(codes, dtype=np.int64) // replicates


def subject_protocol(protocol: Protocol, seed: int, subject: int, how: str = "same") -> Protocol:
    """The protocol of one phantom subject: its own AIF when ``how = "varied"``.

    Subjects differ as the DRO scenario ``aif_population`` makes them differ: the AIF
    shape cycles through :data:`SUBJECT_AIFS` (subject 0 gets Parker; the scenario's
    ``protocol.aif`` is replaced, and :func:`parse_phantom_scenario` refuses a scenario that
    sets it), the scenario's amplitude scale is multiplied by a factor drawn uniformly in
    0.7-1.3 and its bolus arrival is moved by -4 to +8 s (not before 0 s), both drawn from a
    generator seeded by ``(seed, subject)``, so scenarios with the same seed have the same
    subjects.
    """
    if how == "same":
        return protocol
    rng = np.random.default_rng([seed, subject, 6])
    scale, shift = rng.uniform(0.7, 1.3), rng.uniform(-4.0, 8.0)
    path = f"subject {subject} (phantom.subject_aif = 'varied')"
    out = protocol.replace(
        path,
        aif=SUBJECT_AIFS[subject % len(SUBJECT_AIFS)],
        aif_scale=float(protocol.aif_scale * scale),
        bat=float(max(0.0, protocol.bolus_arrival + shift)),
    )
    out.check_post_bolus_window(path)  # a late arrival must still leave a window to fit
    return out


def session_protocol(
    protocol: Protocol, seed: int, subject: int, session: int, variation: dict[str, float]
) -> Protocol:
    """The protocol of one test-retest session of a subject: its own injection.

    The bolus arrival (s) moves by a normal draw of SD ``variation["bolus_arrival_s"]`` (not
    before 0 s) and the AIF amplitude scale is multiplied by ``1 + N(0,
    variation["aif_scale"])`` (kept >= 0.5), both drawn from a generator seeded by
    ``(seed, subject, session)``: every session of a subject varies around the subject's
    own protocol (:func:`subject_protocol`), independently of the others.

    Parameters
    ----------
    protocol : Protocol
        The subject's protocol.
    seed, subject, session : int
        The scenario's seed, the subject and the session (0, 1, ...).
    variation : dict
        ``bolus_arrival_s`` (SD, s) and ``aif_scale`` (SD, relative) of
        :data:`SESSION_VARIATION`.
    """
    rng = np.random.default_rng([seed, subject, session, 7])
    d_bat = rng.normal(0.0, variation["bolus_arrival_s"])
    scale = max(0.5, 1.0 + rng.normal(0.0, variation["aif_scale"]))
    path = f"subject {subject}, session {session} (phantom.session_variation)"
    out = protocol.replace(
        path,
        aif_scale=float(protocol.aif_scale * scale),
        bat=float(max(0.0, protocol.bolus_arrival + d_bat)),
    )
    out.check_post_bolus_window(path)
    return out


def session_shift_mm(
    seed: int, subject: int, session: int, shift_mm: float, voxel_mm: float = 1.0
) -> tuple[float, float, float]:
    """The repositioning of one session: the phantom's shift (slice, y, x) in mm.

    Each axis moves by a whole number of truth voxels (``voxel_mm``, 1 mm in a phantom
    scenario) drawn uniformly in ``-floor(shift_mm / voxel_mm) .. +floor(shift_mm /
    voxel_mm)`` from a generator seeded by ``(seed, subject, session)``: against an acquired
    voxel of 2 x 2 x 3 mm, a shift of up to a voxel, mostly a fraction of one.
    """
    steps = int(np.floor(shift_mm / voxel_mm + 1e-9))
    rng = np.random.default_rng([seed, subject, session, 8])
    k = rng.integers(-steps, steps + 1, size=3) if steps > 0 else np.zeros(3, dtype=int)
    return tuple(float(v) * voxel_mm for v in k)


def shift_phantom(phantom: Phantom, shift_mm: tuple[float, float, float]) -> Phantom:
    """The phantom moved by ``shift_mm`` (slice, y, x; whole truth voxels) on its grid.

    Voxels that enter at an edge repeat the edge (the slab continues beyond the grid); the
    landmarks move with the anatomy. The tissues and their kinetics are unchanged.
    """
    k = [int(round(v / phantom.voxel_mm)) for v in shift_mm]
    for v, kk in zip(shift_mm, k, strict=True):
        if not np.isclose(v, kk * phantom.voxel_mm):
            raise ValueError(
                f"shift_mm = {shift_mm!r}: expected whole truth voxels of {phantom.voxel_mm} mm"
            )
    if not any(k):
        return phantom
    shape = phantom.labels.shape
    index = np.ix_(*[np.clip(np.arange(n) - kk, 0, n - 1) for n, kk in zip(shape, k, strict=True)])

    def move(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else a[index]

    landmarks = {
        name: tuple(float(c + d) for c, d in zip(point, shift_mm, strict=True))
        for name, point in phantom.landmarks.items()
    }
    return Phantom(
        move(phantom.labels),
        move(phantom.types),
        phantom.type_params,
        phantom.voxel_mm,
        phantom.field_strength,
        phantom.seed,
        phantom.geometry,
        landmarks,
        move(phantom.vessel_rho2),
    )


def neck_geometry(tumour_diameter_mm: float) -> NeckGeometry:
    """The neck geometry with a primary tumour of mean diameter ``tumour_diameter_mm`` (mm).

    ``tumour_radius`` is half the diameter (the drawn tumour is lobulated, its radius
    varying by up to +-25 % around it); the haemorrhage focus scales with the tumour (4 mm
    radius at the default 28 mm diameter); the other sizes are the defaults.
    """
    scale = tumour_diameter_mm / DEFAULT_TUMOUR_DIAMETER_MM
    return NeckGeometry(
        tumour_radius=tumour_diameter_mm / 2.0,
        haemorrhage_radius=_HAEMORRHAGE_RADIUS_MM * min(1.0, scale),
    )


def _tumour_diameter(path: str, value: Any, shape: Any) -> float:
    """A checked tumour diameter (mm): positive, and inside the slab with its lobulation."""
    d = as_float(path, value, units="mm", lo=0.0, lo_open=True)
    try:
        slab = float(shape[0])  # 1 mm truth voxels
    except (TypeError, IndexError, ValueError):
        return d  # phantom.shape's own check names it
    if 1.25 * d > slab:
        raise ConfigError(
            f"{path} = {value!r} mm: the lobulated tumour (up to 1.25 x the diameter,"
            f" {1.25 * d:g} mm) does not fit in the {slab:g} mm slab (phantom.shape[0]);"
            f" expected <= {slab / 1.25:g} mm"
        )
    return d


def _session_variation(table: Any) -> dict[str, float]:
    """The checked ``[phantom.session_variation]`` table (defaults filled in)."""
    if not isinstance(table, dict):
        raise ConfigError(f"phantom.session_variation = {table!r}: expected a table")
    for key in table:
        if key not in SESSION_VARIATION:
            raise unknown_key("phantom.session_variation", key, tuple(SESSION_VARIATION))
    units = {"bolus_arrival_s": "s", "aif_scale": "relative SD", "shift_mm": "mm"}
    out = {}
    for key, default in SESSION_VARIATION.items():
        hi = 0.5 if key == "aif_scale" else None
        out[key] = as_float(
            f"phantom.session_variation.{key}", table.get(key, default),
            units=units[key], lo=0.0, hi=hi,
        )
    return out


def _acq_value(path: str, key: str, value: Any) -> Any:
    """A checked acquisition setting (float, choice or bool), the error naming ``path``."""
    if key in ACQ_CHOICES:
        return as_str(path, value, choices=ACQ_CHOICES[key])
    if key == "inflow":
        return as_bool(path, value)
    if key == "fat_suppression":
        return as_float(path, value, units="fraction removed", lo=0.0, hi=1.0)
    units = "cm/s" if key.endswith("_cm_s") else "mm"
    positive = key in ("in_plane_mm", "slice_mm", "artery_velocity_cm_s", "vein_velocity_cm_s")
    return as_float(path, value, units=units, lo=0.0, lo_open=positive)


#: Acquisition keys a ``[scanner]`` table sets (from its voxel).
SCANNER_ACQ_KEYS = ("in_plane_mm", "slice_mm")


def _phantom_scanner_table(
    table: Any, acq: dict[str, Any], sweep: dict[str, Any]
) -> dict[str, Any]:
    """The ``[scanner]`` table of a phantom scenario, checked against ``[acquisition]``.

    The scanner's voxel sets ``in_plane_mm`` and ``slice_mm``, so neither may be given in
    ``[acquisition]`` or ``[sweep]``. The site's ``reference_snr`` is that of muscle (the
    tissue in which a phantom's SNR is defined): ``reference_t1_s`` defaults to the native T1
    of muscle at ``scanner.field_strength``.
    """
    if not isinstance(table, dict):
        raise ConfigError(f"scanner = {table!r}: expected a table")
    for where, given in (("acquisition", acq), ("sweep", sweep)):
        for key in SCANNER_ACQ_KEYS:
            if key in given:
                raise ConfigError(
                    f"{where}.{key} = {given[key]!r} with a [scanner] table: the scanner's voxel"
                    " (scanner.fov_mm / scanner.matrix in-plane, scanner.slice_thickness_mm)"
                    f" sets {key!r}; expected {key!r} only from [scanner]"
                )
    if "reference_t1_s" in table:
        return table
    from phantomdce.signal import native_t1

    field_strength = table.get("field_strength", 3.0)
    try:
        t1 = float(native_t1("muscle", field_strength))
    except (TypeError, ValueError):
        return table  # the scanner's own check names the bad field strength
    return {**table, "reference_t1_s": t1}


def _scanner_voxel(case: Case) -> tuple[dict[str, float], Protocol]:
    """A phantom case's voxel and protocol from its scanner.

    The phantom's ``snr`` is muscle's at the reference voxel of
    :data:`phantomdce.phantom.acquire.REFERENCE_VOXEL_MM3` (scaled by the voxel volume in the
    acquisition), so the scanner's SNR in muscle at its own voxel is converted to it.
    """
    from phantomdce.phantom.acquire import REFERENCE_VOXEL_MM3

    d = case.derived
    read, phase, slab = d.voxel_mm
    if not np.isclose(read, phase, rtol=1e-9):
        raise ConfigError(
            f"scanner voxel {read:g} x {phase:g} mm in-plane (fov_mm / matrix): expected a"
            " square in-plane voxel in a phantom scenario (acquisition.in_plane_mm is one size)"
        )
    snr = d.snr * REFERENCE_VOXEL_MM3 / d.voxel_mm3
    return {"in_plane_mm": read, "slice_mm": slab}, case.protocol.replace(snr=snr)


def _acquisition(path: str, values: dict[str, Any]) -> Acquisition:
    try:
        return Acquisition(**values)
    except ValueError as err:  # cross-field rules (e.g. a gap with a 3D profile)
        msg = str(err)
        raise ConfigError(msg if msg.startswith(path) else f"{path}: {msg}") from None


@dataclass(frozen=True)
class PhantomCase(Case):
    """One case of a phantom scenario: a case with its acquisition and ROI rule.

    A :class:`~phantomdce.dro.scenario.Case` (index, swept values, protocol; node name
    ``case_0000``) with the acquisition settings and the tumour ROI rule.
    """

    acquisition: Acquisition
    roi: str
    tumour_diameter_mm: float = DEFAULT_TUMOUR_DIAMETER_MM
    session: int = 0


@dataclass(frozen=True)
class PhantomScenario:
    """A checked phantom scenario (see the module docstring).

    Build it with :func:`parse_phantom_scenario` or :func:`load_phantom_scenario`.

    Attributes
    ----------
    raw : dict
        The scenario mapping as checked (after :func:`cap_subjects`): its identity.
    scenario : Scenario
        The protocol part, checked as a DRO scenario (its tissue table is a placeholder: the
        phantom's tissues replace it).
    acquisition : Acquisition
        The ``[acquisition]`` table.
    acq_sweep : dict
        Swept acquisition keys (and ``roi``) with their values.
    shape : tuple of int
        Truth grid (slices, y, x) at 1 mm.
    subjects : int
        Phantoms per case (seeds ``seed``, ``seed + 1``, ...).
    roi, carotid, summary, subject_aif : str
        The ``[phantom]`` settings.
    tumour_diameter_mm : float
        The primary tumour's mean diameter, mm (a case's own when swept).
    sessions : int
        Test-retest sessions per subject (1: no test-retest).
    session_variation : dict
        What changes between sessions (:data:`SESSION_VARIATION`, units in
        :data:`SESSION_VARIATION_UNITS`).
    """

    raw: dict[str, Any]
    scenario: Scenario
    acquisition: Acquisition
    acq_sweep: dict[str, list] = field(default_factory=dict)
    shape: tuple[int, int, int] = (40, 160, 160)
    subjects: int = 1
    roi: str = "recommended"
    carotid: str = "auto"
    summary: str = "voxel"
    subject_aif: str = "same"
    tumour_diameter_mm: float = DEFAULT_TUMOUR_DIAMETER_MM
    sessions: int = 1
    session_variation: dict[str, float] = field(default_factory=lambda: dict(SESSION_VARIATION))

    @property
    def name(self) -> str:
        """The scenario's name."""
        return self.scenario.name

    @property
    def seed(self) -> int:
        """The scenario's seed (phantom ``s`` has seed ``seed + s``)."""
        return self.scenario.seed

    @property
    def replicates(self) -> int:
        """Acquisitions of each subject per case (independent noise)."""
        return self.scenario.replicates

    @property
    def hash(self) -> str:
        """SHA-256 (first 16 hex digits) of the checked mapping without ``[fit]``."""
        content = {k: v for k, v in self.raw.items() if k != "fit"}
        blob = json.dumps(content, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    @property
    def source(self) -> dict[str, Any]:
        """What run.json records as the scenario (the protocol part and the phantom)."""
        return {
            **self.scenario.source,
            "tissue": {"phantom": list(self.shape)},
            "phantom": self.settings(),
            "acquisition": dict(self.acquisition.__dict__),
        }

    def settings(self) -> dict[str, Any]:
        """The ``[phantom]`` settings as stored in run.json."""
        return {
            "shape": list(self.shape),
            "subjects": self.subjects,
            "roi": self.roi,
            "carotid": self.carotid,
            "summary": self.summary,
            "subject_aif": self.subject_aif,
            "tumour_diameter_mm": self.tumour_diameter_mm,
            "sessions": self.sessions,
            "session_variation": dict(self.session_variation),
        }

    @functools.cached_property
    def _cases(self) -> tuple[PhantomCase, ...]:
        acq_keys = list(self.acq_sweep)
        out = []
        for proto_case in self.scenario.cases():
            protocol, voxel = proto_case.protocol, {}
            if proto_case.scanner is not None:
                try:
                    voxel, protocol = _scanner_voxel(proto_case)
                except ConfigError as exc:
                    raise ConfigError(f"sweep case {proto_case.values}: {exc}") from None
            sessions = range(self.sessions)
            for combo in itertools.product(*[self.acq_sweep[k] for k in acq_keys]):
                swept = dict(zip(acq_keys, combo, strict=True))
                changes = {k: v for k, v in swept.items() if k not in CASE_KEYS}
                changes.update(voxel)
                acq = _acquisition(f"sweep {changes}", {**self.acquisition.__dict__, **changes})
                for session in sessions:
                    values = {**proto_case.values, **swept}
                    if self.sessions > 1:
                        values["session"] = session
                    out.append(
                        PhantomCase(
                            len(out),
                            values,
                            protocol,
                            acq,
                            values.get("roi", self.roi),
                            scanner=proto_case.scanner,
                            tumour_diameter_mm=float(
                                swept.get("tumour_diameter_mm", self.tumour_diameter_mm)
                            ),
                            session=session,
                        )
                    )
        return tuple(out)

    @property
    def sweep_keys(self) -> list[str]:
        """The case values' keys: protocol sweep, acquisition sweep, then ``session``."""
        return [*self.scenario.sweep, *self.acq_sweep, *(["session"] if self.sessions > 1 else [])]

    def cases(self) -> list[PhantomCase]:
        """Cases in order: the protocol sweep's cases x the acquisition sweep."""
        return list(self._cases)

    def phantom(
        self, subject: int, case: PhantomCase | None = None, *, moved: bool = True
    ) -> Phantom:
        """Subject ``subject``'s phantom (seed ``seed + subject``), built once per process.

        With ``case``: the phantom as that case scans it (its tumour diameter and, in a
        test-retest session with ``moved``, shifted by :func:`session_shift_mm`); without,
        the scenario's tumour diameter, unmoved. ``moved = False`` gives the subject as drawn
        (its truth, the same in every session, even where a shift pushes tissue off the grid).
        """
        diameter = self.tumour_diameter_mm if case is None else case.tumour_diameter_mm
        shift = (0.0, 0.0, 0.0)
        if case is not None and moved and self.sessions > 1:
            shift = session_shift_mm(
                self.seed, subject, case.session, self.session_variation["shift_mm"]
            )
        fs = self.scenario.protocol.field_strength
        return _neck(self.shape, self.seed + subject, fs, float(diameter), shift)

    def subject_protocol(self, case: PhantomCase, subject: int) -> Protocol:
        """The protocol subject ``subject`` is scanned with in ``case`` (and its session)."""
        out = subject_protocol(case.protocol, self.seed, subject, self.subject_aif)
        if self.sessions > 1:
            out = session_protocol(out, self.seed, subject, case.session, self.session_variation)
        return out

    def case_seed(self, case: PhantomCase, subject: int) -> int:
        """The noise seed of a case and subject (repeat ``r`` uses ``repeat_seed(it, r)``)."""
        return acquisition_seed(self.seed, case.index, subject)

    def cases_table(self) -> xr.Dataset:
        """The result store's root: one row per case (``case_name``, the swept values)."""
        cases = self.cases()
        units = {**self.scenario.sweep_units(), **ACQ_UNITS}
        data = {}
        for key in self.sweep_keys:
            values = [c.values[key] for c in cases]
            if any(v is None or isinstance(v, tuple | list | bool) for v in values):
                values = [
                    "none"
                    if v is None
                    else (str(list(v)) if isinstance(v, tuple | list) else str(v))
                    for v in values
                ]
            data[key] = ("case", np.asarray(values), {"units": units.get(key, "1")})
        if self.scenario.scanner is not None:  # what each case's scanner implies
            data.update(scanner_columns(cases))
        data["case_name"] = (
            "case",
            np.array([c.name for c in cases]),
            {"long_name": "node name of the case"},
        )
        attrs = {
            "scenario": self.name,
            "description": self.scenario.description,
            "scenario_hash": self.hash,
            "scenario_source": json.dumps(self.raw, sort_keys=True, default=str),
            "seed": self.seed,
            "replicates": self.replicates,
            "model": "phantom",
            "phantom": json.dumps(self.settings()),
            "phantomdce_version": phantomdce.__version__,
            "sweep_keys": self.sweep_keys,
        }
        return xr.Dataset(data, attrs=attrs)


@functools.lru_cache(maxsize=8)
def _neck(
    shape: tuple[int, int, int],
    seed: int,
    field_strength: float,
    tumour_diameter_mm: float = DEFAULT_TUMOUR_DIAMETER_MM,
    shift_mm: tuple[float, float, float] = (0.0, 0.0, 0.0),
) -> Phantom:
    if any(shift_mm):
        return shift_phantom(_neck(shape, seed, field_strength, tumour_diameter_mm), shift_mm)
    geometry = None
    if tumour_diameter_mm != DEFAULT_TUMOUR_DIAMETER_MM:
        geometry = neck_geometry(tumour_diameter_mm)
    return make_neck(shape, seed=seed, field_strength=field_strength, geometry=geometry)


def _refuse_protocol_key(raw: dict[str, Any], sweep: dict[str, Any], key: str, why: str) -> None:
    """Raise ConfigError naming ``key`` where the scenario sets it (protocol or sweep)."""
    for where, table in (("protocol", raw.get("protocol", {})), ("sweep", sweep)):
        if key in table:
            raise ConfigError(f"{where}.{key} = {table[key]!r} {why}")


def parse_phantom_scenario(raw: dict[str, Any]) -> PhantomScenario:
    """Check a phantom scenario's TOML mapping.

    Every bad value raises :class:`~phantomdce.dro.config.ConfigError` naming its key; so
    does a scenario whose cases cannot be expanded.
    """
    raw = dict(raw)
    if "name" not in raw:
        raw["name"] = "scenario"
    original = json.loads(json.dumps(raw, default=str))
    ph = dict(raw.pop("phantom"))
    acq = dict(raw.pop("acquisition", {}))
    sweep = dict(raw.get("sweep", {}))
    if "scanner" in raw:
        raw["scanner"] = _phantom_scanner_table(raw["scanner"], acq, sweep)
    for key in ph:
        if key not in PHANTOM_KEYS:
            raise unknown_key("phantom", key, PHANTOM_KEYS)
    for key in acq:
        if key not in ACQ_KEYS:
            raise unknown_key("acquisition", key, ACQ_KEYS)
    shape = ph.get("shape", [40, 160, 160])
    if not (isinstance(shape, list) and len(shape) == 3):
        raise ConfigError(f"phantom.shape = {shape!r}: expected [slices, y, x]")
    shape = tuple(as_int(f"phantom.shape[{i}]", v, lo=8) for i, v in enumerate(shape))
    subjects = as_int("phantom.subjects", ph.get("subjects", 1), lo=1)
    roi = as_str("phantom.roi", ph.get("roi", "recommended"), choices=ROI_RULES)
    summary = as_str("phantom.summary", ph.get("summary", "voxel"), choices=SUMMARIES)
    carotid = as_str("phantom.carotid", ph.get("carotid", "auto"), choices=("auto", "manual"))
    subject_aif = as_str(
        "phantom.subject_aif", ph.get("subject_aif", "same"), choices=("same", "varied")
    )
    diameter = DEFAULT_TUMOUR_DIAMETER_MM  # the default is not checked against the slab
    if "tumour_diameter_mm" in ph:
        diameter = _tumour_diameter(
            "phantom.tumour_diameter_mm", ph["tumour_diameter_mm"], list(shape)
        )
    sessions = as_int("phantom.sessions", ph.get("sessions", 1), lo=1)
    variation = _session_variation(ph.get("session_variation", {}))
    if "session_variation" in ph and sessions == 1:
        raise ConfigError(
            f"phantom.session_variation = {ph['session_variation']!r} with phantom.sessions = 1:"
            " nothing varies between sessions of one; expected sessions >= 2, or no table"
        )
    if sessions > 1 and summary == "voxel":
        raise ConfigError(
            f"phantom.sessions = {sessions} with phantom.summary = 'voxel': the ROI is redrawn"
            " in each session, so voxels do not pair across sessions; expected a ROI summary"
            f" ({', '.join(repr(v) for v in SUMMARIES if v != 'voxel')})"
        )
    if subject_aif == "varied":
        _refuse_protocol_key(
            raw, sweep, "aif",
            "with phantom.subject_aif = 'varied': each subject gets its own AIF shape;"
            " expected no aif, or subject_aif = 'same'",
        )  # fmt: skip
    _refuse_protocol_key(
        raw, sweep, "snr_t1_s",
        "in a phantom scenario: the neck phantom's noise is always one receiver SD, with snr"
        " stated in muscle at its reference voxel (phantomdce.phantom.acquire); expected no"
        " snr_t1_s (a DRO scenario's key)",
    )  # fmt: skip
    shape_l = ph.get("shape", [40, 160, 160])
    acq_sweep = {k: list(sweep.pop(k)) if isinstance(sweep[k], list) else sweep.pop(k)
                 for k in list(sweep) if k in (*ACQ_KEYS, *CASE_KEYS)}
    for k, values in acq_sweep.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"sweep.{k} = {values!r}: expected a non-empty list")
        for i, v in enumerate(values):
            if k == "roi":
                as_str(f"sweep.roi[{i}]", v, choices=ROI_RULES)
            elif k == "tumour_diameter_mm":
                acq_sweep[k][i] = _tumour_diameter(f"sweep.{k}[{i}]", v, shape_l)
            else:
                _acq_value(f"sweep.{k}[{i}]", k, v)
    raw["sweep"] = sweep
    if "tissue" in raw:
        raise ConfigError("tissue: a phantom scenario takes its tissues from the phantom")
    # the DRO parser needs a tissue table; the phantom's tissues replace it
    raw["tissue"] = {"model": "extended_tofts", "Ktrans": 0.1, "ve": 0.2, "vp": 0.02}
    scenario = parse_scenario(raw)
    base = _acquisition(
        "acquisition", {k: _acq_value(f"acquisition.{k}", k, v) for k, v in acq.items()}
    )
    if not base.inflow and "inflow" not in acq_sweep:
        for k in INFLOW_KEYS:
            if k in acq_sweep:
                raise ConfigError(
                    f"sweep.{k} = {acq_sweep[k]!r} has no effect with acquisition.inflow ="
                    " false: expected inflow = true, or no sweep of it"
                )
    shape_mm = [n * 1.0 for n in shape]  # the truth grid is 1 mm
    sizes = {"slice_mm": shape_mm[0], "in_plane_mm": min(shape_mm[1:])}
    for k, extent in sizes.items():
        for v in [getattr(base, k), *acq_sweep.get(k, [])]:
            if float(v) > extent:
                raise ConfigError(
                    f"acquisition.{k} = {v!r} mm: larger than the phantom ({extent:g} mm"
                    f" across at 1 mm per truth voxel, phantom.shape = {list(shape)});"
                    f" expected <= {extent:g} mm"
                )
    out = PhantomScenario(
        raw=original,
        scenario=scenario,
        acquisition=base,
        acq_sweep=acq_sweep,
        shape=shape,
        subjects=subjects,
        roi=roi,
        carotid=carotid,
        summary=summary,
        subject_aif=subject_aif,
        tumour_diameter_mm=diameter,
        sessions=sessions,
        session_variation=variation,
    )
    out.cases()  # every case's acquisition is checked now, not in a worker
    return out


def load_phantom_scenario(path: str | Path, max_subjects: int | None = None) -> PhantomScenario:
    """Read and check a phantom scenario file (its name defaults to the file's stem)."""
    path = Path(path)
    raw = read_toml(path)
    raw.setdefault("name", path.stem)
    return parse_phantom_scenario(cap_subjects(raw, max_subjects))


def simulate_phantom_scenario(
    path: str | Path,
    out: str | Path,
    *,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write a phantom scenario's acquisitions as a DRO store (no fitting).

    One case per acquisition setting and subject (``case_NNNN``, the first acquisition of
    each, with the noise of the first repeat that ``phantomdce run`` fits), in the layout of
    :mod:`phantomdce.phantom.store`.
    """
    from phantomdce.phantom.store import write_phantom_dro

    ps = load_phantom_scenario(path)
    todo = []
    for case in ps.cases():
        for s in range(ps.subjects):
            todo.append(
                (
                    f"case_{len(todo):04d}",
                    ps.phantom(s, case),
                    ps.subject_protocol(case, s),
                    case.acquisition,
                    repeat_seed(ps.case_seed(case, s), 0),
                    {**{k: v for k, v in case.values.items() if k != "roi"}, "subject": s},
                )
            )
    attrs = {
        "scenario": ps.name,
        "scenario_source": json.dumps(ps.raw, sort_keys=True, default=str),
        "seed": ps.seed,
    }
    return write_phantom_dro(
        todo, out, carotid=ps.carotid, attrs=attrs, overwrite=overwrite, progress=progress
    )
