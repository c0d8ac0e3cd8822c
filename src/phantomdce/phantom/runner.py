"""Run a phantom scenario: the spatial recommendations, on the anthropomorphic phantom.

A phantom scenario is a scenario file with a ``[phantom]`` table and an ``[acquisition]``
table; its ``[sweep]`` may name acquisition keys (``slice_mm``, ``in_plane_mm``,
``gap_mm``, ``fat_suppression``) as well as protocol keys::

    [phantom]
    shape = [40, 160, 160]   # truth grid (slices, y, x), 1 mm voxels
    subjects = 2             # phantoms drawn with seeds seed, seed + 1, ...
    roi = "recommended"      # tumour ROI rule: "recommended" or "whole_lesion" (sweepable)
    carotid = "auto"         # carotid ROI: "auto" or "manual"
    summary = "voxel"        # or "roi_mean": one ROI mean per subject and acquisition
    subject_aif = "same"     # or "varied": each subject its own AIF (see subject_protocol)

    [acquisition]
    in_plane_mm = 2.0
    slice_mm = 3.0

Each case acquires every subject ``replicates`` times (independent noise), takes the ROI
voxels through the estimation pipeline and the fitters, and stores the estimates, the
volume-weighted truth of each voxel and the metrics in the same layout as
:mod:`phantomdce.engine.run`, so the study report reads it like any other run: the fitters'
``at_limit_<param>`` flags (for Ktrans, ve and vp) are stored and counted by the metrics as
the engine does. With ``summary = "roi_mean"`` each case also stores
``roi_failed_fraction`` (fitter, ROI value; 0-1): the fraction of the ROI's voxels whose fit
failed; a ROI value counts as failed when it exceeds :data:`ROI_MAX_FAILED_FRACTION`. Cases
run whole, in this process (no chunking or resume: a phantom case is small).
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import time
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

import phantomdce
from phantomdce.dro.config import ConfigError, as_bool, as_float, as_int, as_str, unknown_key
from phantomdce.dro.scenario import parse_scenario
from phantomdce.engine.config import FitConfig
from phantomdce.engine.metrics import case_metrics, metrics_table
from phantomdce.engine.run import (
    AT_LIMIT,
    FAILURE_COLUMNS,
    collect_estimates,
    estimated_parameters,
    fitter_record,
)
from phantomdce.files import write_atomic
from phantomdce.params import PARAMETERS
from phantomdce.phantom.acquire import FLOW_PROFILES, IN_PLANE_PSFS, SLICE_PROFILES, Acquisition
from phantomdce.phantom.anatomy import CLASSES, make_neck
from phantomdce.phantom.case import acquisition_seed, phantom_case, repeat_seed
from phantomdce.report.verdict import MAX_FAILURE_RATE

__all__ = [
    "is_phantom_scenario",
    "run_phantom_scenario",
    "simulate_phantom_scenario",
    "phantom_digest",
    "subject_protocol",
    "replicate_codes",
    "subject_of",
    "cap_subjects",
    "ROI_MAX_FAILED_FRACTION",
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
ACQ_KEYS = (*ACQ_FLOATS, *ACQ_CHOICES, "inflow")
PHANTOM_KEYS = ("shape", "subjects", "roi", "carotid", "summary", "subject_aif")
#: Population AIF shapes the subjects cycle through with ``subject_aif = "varied"``.
SUBJECT_AIFS = ("parker", "georgiou", "head_and_neck")
ROI_RULES = ("recommended", "whole_lesion")
#: How this runner names itself when it refuses ``[fit] error_budget`` (DRO scenarios only).
PHANTOM_RUNNER = "phantom scenarios (phantomdce.phantom.runner)"
ENHANCING = ("tumour_rim", "tumour_hypoxic")
#: With ``summary = "roi_mean"``, a ROI value counts as a failed fit (``success`` False, its
#: estimates NaN) when more than this fraction (0-1) of the ROI's voxels failed: the 5 % a
#: setting may lose before the verdict calls it not estimable
#: (:data:`phantomdce.report.verdict.MAX_FAILURE_RATE`). A site averages the parameter map
#: over the ROI, where failed voxels are NaN; a mean over the survivors of a ROI that lost
#: more than this would silently drop a part of the tissue (e.g. the necrosis of a
#: whole-lesion ROI) instead of measuring it. The stored ``roi_failed_fraction`` gives the
#: fraction itself.
ROI_MAX_FAILED_FRACTION: float = MAX_FAILURE_RATE


def is_phantom_scenario(raw: dict[str, Any]) -> bool:
    """Whether a parsed scenario TOML is a phantom scenario."""
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


def _roi_means(
    est,
    success,
    at_limit,
    replicate,
    phantoms,
    *,
    n_fitters,
    replicates,
    max_failed=ROI_MAX_FAILED_FRACTION,
):
    """One value per subject and acquisition: the ROI mean against the enhancing truth.

    The estimate is the mean of the finite estimates of the ROI's successfully fitted voxels
    (failed voxels are NaN on the map a site averages); the value counts as failed
    (``success`` False, every estimate NaN) when more than ``max_failed`` (0-1, default
    :data:`ROI_MAX_FAILED_FRACTION`) of the ROI's voxels failed. A ROI value is at a
    parameter's limit (``at_limit``) when it did not fail and every successful voxel of the
    ROI is flagged at that limit. The truth is the mean over the truth-grid voxels of the
    enhancing tumour (rim and hypoxic zone) of that subject, what an ROI on the enhancing
    tumour is meant to measure. ``replicate`` holds the codes of :func:`replicate_codes`.

    Returns
    -------
    tuple
        ROI estimates, success, at-limit flags (dicts of (fitter, ROI value) arrays), the
        fraction (0-1) of each ROI's voxels whose fit failed (fitter, ROI value), the truth
        per ROI value, the subject index and the replicate code of each ROI value.
    """
    groups = np.unique(replicate)
    subject = subject_of(groups, replicates)
    out_est = {k: np.full((n_fitters, groups.size), np.nan) for k in est}
    out_ok = np.zeros((n_fitters, groups.size), dtype=bool)
    out_limit = {k: np.zeros((n_fitters, groups.size), dtype=bool) for k in at_limit}
    failed_fraction = np.full((n_fitters, groups.size), np.nan)
    for g, key in enumerate(groups):
        sel = replicate == key
        for f in range(n_fitters):
            ok = sel & success[f]
            failed_fraction[f, g] = (sel & ~success[f]).sum() / sel.sum()
            out_ok[f, g] = ok.any() and failed_fraction[f, g] <= max_failed
            if not out_ok[f, g]:
                continue
            for k in est:
                vals = est[k][f, ok]
                vals = vals[np.isfinite(vals)]
                out_est[k][f, g] = vals.mean() if vals.size else np.nan
            for k in at_limit:
                out_limit[k][f, g] = bool(at_limit[k][f, ok].all())
    truth = {}
    for k in ("Ktrans", "ve", "vp"):
        per_subject = []
        for ph in phantoms:
            enh = np.isin(ph.labels, [CLASSES[c].label for c in ENHANCING])
            per_subject.append(float(ph.truth_map(k)[enh].mean()))
        truth[k] = np.asarray(per_subject)[subject]
    truth["kep"] = truth["Ktrans"] / truth["ve"]
    return out_est, out_ok, out_limit, failed_fraction, truth, subject, groups


def subject_protocol(protocol, seed: int, subject: int, how: str = "same"):
    """The protocol of one phantom subject: its own AIF when ``how = "varied"``.

    Subjects differ as the DRO scenario ``aif_population`` makes them differ: the AIF
    shape cycles through :data:`SUBJECT_AIFS` (subject 0 gets Parker; the scenario's
    ``protocol.aif`` is replaced, and :func:`parse_phantom_scenario` refuses a scenario that
    sets it), the
    scenario's amplitude scale is multiplied by a factor drawn uniformly in 0.7-1.3 and its
    bolus arrival is moved by -4 to +8 s (not before 0 s), both drawn from a generator
    seeded by ``(seed, subject)``, so scenarios with the same seed have the same subjects.
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


def _figure_cases(raw: dict[str, Any], cases: list) -> list[int]:
    """Cases to draw: the setting the verdict judges (or the first case) and the last one."""
    rec = raw.get("recommendation", {})
    knob = rec.get("knob")
    # as the verdict: the threshold of a max/min recommendation, else the recommended values
    targets = [rec["threshold"]] if "threshold" in rec else list(rec.get("recommended", []))
    first = 0
    for target in targets:
        hit = [i for i, (v, _, _) in enumerate(cases) if knob in v and v[knob] == target]
        if hit:
            first = hit[0]
            break
    return sorted({first, len(cases) - 1})


def _draw_case(
    out: Path,
    name: str,
    label: str,
    phantom,
    protocol,
    acq: Acquisition,
    rule: str,
    seed: int,
    part: xr.Dataset,
    pipeline,
    fitted: np.ndarray,
    fitter: str,
) -> list[dict[str, str]]:
    """The maps and AIF figures of one case's first subject; their manifest entries."""
    from phantomdce.phantom.acquire import acquire
    from phantomdce.phantom.figures import aif_figure, maps_figure
    from phantomdce.phantom.roi import tumour_rois
    from phantomdce.report.figures import figure_to_png

    acquired = acquire(phantom, protocol, acq, seed=seed)  # the first acquisition again
    roi = tumour_rois(phantom, acquired)[rule].values
    fitted_map = np.full(roi.shape, np.nan)
    fitted_map[roi] = fitted
    figdir = out / "figures"
    figdir.mkdir(parents=True, exist_ok=True)
    entries = []
    fig = maps_figure(phantom, acquired, fitted=fitted_map, roi=roi)
    (figdir / f"{name}_maps.png").write_bytes(figure_to_png(fig))
    entries.append(
        {
            "file": f"figures/{name}_maps.png",
            "caption": f"Phantom at {label}: truth labels and Ktrans on the 1 mm truth grid,"
            f" the acquired image (last frame; red: the {rule.replace('_', ' ')} tumour ROI),"
            f" true and fitted ({fitter}, first acquisition) Ktrans on the acquired grid.",
        }
    )
    t = part["time"].values
    used = pipeline.plasma_aif(part)
    fig = aif_figure(
        t,
        part["ca"].values,
        {f"used by the pipeline (aif = {pipeline.aif})": used},
        title=f"AIF used by the pipeline ({pipeline.aif}) vs the subject's true AIF",
    )
    (figdir / f"{name}_aif.png").write_bytes(figure_to_png(fig))
    entries.append(
        {
            "file": f"figures/{name}_aif.png",
            "caption": f"Phantom at {label}: the plasma AIF the pipeline used for the first"
            " subject's first acquisition against that subject's true AIF.",
        }
    )
    return entries


def phantom_digest(raw: dict[str, Any], digits: int = 16) -> str:
    """Hash of a phantom scenario's content (its identity in run.json), hex digits."""
    blob = json.dumps(raw, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:digits]


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


def _acquisition(path: str, values: dict[str, Any]) -> Acquisition:
    try:
        return Acquisition(**values)
    except ValueError as err:  # cross-field rules (e.g. a gap with a 3D profile)
        msg = str(err)
        raise ConfigError(msg if msg.startswith(path) else f"{path}: {msg}") from None


#: Acquisition keys that only matter with inflow on.
INFLOW_KEYS = ("artery_velocity_cm_s", "vein_velocity_cm_s", "inflow_offset_mm", "flow_profile")


def parse_phantom_scenario(raw: dict[str, Any]):
    """Check a phantom scenario's TOML mapping; returns its parts.

    Returns ``(scenario, acquisition, acquisition sweep, shape, subjects, roi rule, carotid
    ROI, summary, subject_aif)``; every bad value raises ``ConfigError`` naming its key.
    """
    raw = dict(raw)
    ph = dict(raw.pop("phantom"))
    acq = dict(raw.pop("acquisition", {}))
    sweep = dict(raw.get("sweep", {}))
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
    summary = as_str("phantom.summary", ph.get("summary", "voxel"), choices=("voxel", "roi_mean"))
    carotid = as_str("phantom.carotid", ph.get("carotid", "auto"), choices=("auto", "manual"))
    subject_aif = as_str(
        "phantom.subject_aif", ph.get("subject_aif", "same"), choices=("same", "varied")
    )
    if subject_aif == "varied":
        for where, table in (("protocol", raw.get("protocol", {})), ("sweep", sweep)):
            if "aif" in table:
                raise ConfigError(
                    f"{where}.aif = {table['aif']!r} with phantom.subject_aif = 'varied':"
                    " each subject gets its own AIF shape; expected no aif, or"
                    " subject_aif = 'same'"
                )
    acq_sweep = {k: sweep.pop(k) for k in list(sweep) if k in (*ACQ_KEYS, "roi")}
    for k, values in acq_sweep.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"sweep.{k} = {values!r}: expected a non-empty list")
        for i, v in enumerate(values):
            if k == "roi":
                as_str(f"sweep.roi[{i}]", v, choices=ROI_RULES)
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
    return scenario, base, acq_sweep, shape, subjects, roi, carotid, summary, subject_aif


def _case_seed(seed: int, case: int, subject: int) -> int:
    """The noise seed :func:`phantom_case` gets for one case and subject."""
    return acquisition_seed(seed, case, subject)


def _cases(scenario, base: Acquisition, acq_sweep: dict[str, list]) -> list:
    """(values, protocol, acquisition) per case: protocol cases x acquisition sweep."""
    acq_keys = list(acq_sweep)
    cases = []
    for proto_case in scenario.cases():
        for combo in itertools.product(*[acq_sweep[k] for k in acq_keys]):
            values = {**proto_case.values, **dict(zip(acq_keys, combo, strict=True))}
            changes = {k: v for k, v in zip(acq_keys, combo, strict=True) if k != "roi"}
            acq = _acquisition(f"sweep {changes}", {**base.__dict__, **changes})
            cases.append((values, proto_case.protocol, acq))
    return cases


def simulate_phantom_scenario(
    path: str | Path,
    out: str | Path,
    *,
    overwrite: bool = False,
    progress=None,
) -> Path:
    """Write a phantom scenario's acquisitions as a DRO store (no fitting).

    One case per acquisition setting and subject (``case_NNNN``, the first acquisition of
    each, with the noise of the first repeat that :func:`run_phantom_scenario` fits), in
    the layout of :mod:`phantomdce.phantom.store`.
    """
    from phantomdce.phantom.store import write_phantom_dro

    path = Path(path)
    raw = tomllib.loads(path.read_text(encoding="utf-8"))
    raw.setdefault("name", path.stem)
    parsed = parse_phantom_scenario(raw)
    scenario, base, acq_sweep, shape, subjects, _, carotid, _, subject_aif = parsed
    phantoms = [
        make_neck(shape, seed=scenario.seed + s, field_strength=scenario.protocol.field_strength)
        for s in range(subjects)
    ]
    todo = []
    for ci, (values, protocol, acq) in enumerate(_cases(scenario, base, acq_sweep)):
        for s, ph in enumerate(phantoms):
            todo.append(
                (
                    f"case_{len(todo):04d}",
                    ph,
                    subject_protocol(protocol, scenario.seed, s, subject_aif),
                    acq,
                    repeat_seed(_case_seed(scenario.seed, ci, s), 0),
                    {**{k: v for k, v in values.items() if k != "roi"}, "subject": s},
                )
            )
    attrs = {
        "scenario": scenario.name,
        "scenario_source": json.dumps(raw, sort_keys=True, default=str),
        "seed": scenario.seed,
    }
    return write_phantom_dro(
        todo, out, carotid=carotid, attrs=attrs, overwrite=overwrite, progress=progress
    )


def run_phantom_scenario(
    path: str | Path,
    out: str | Path,
    *,
    fitters: list[str] | None = None,
    overrides: dict[str, Any] | None = None,
    max_subjects: int | None = None,
) -> list[dict[str, Any]]:
    """Run a phantom scenario into ``out`` (run.json, estimates.zarr, metrics.csv).

    ``max_subjects`` caps ``phantom.subjects`` (a study's ``phantom_subjects``, see
    :func:`cap_subjects`); the cap is part of the run's identity.
    """
    path, out = Path(path), Path(out)
    text = path.read_text(encoding="utf-8")
    raw = {**tomllib.loads(text), **(overrides or {})}
    raw.setdefault("name", path.stem)
    raw = cap_subjects(raw, max_subjects)
    parsed = parse_phantom_scenario(raw)
    scenario, base, acq_sweep, shape, subjects, roi, carotid, summary, subject_aif = parsed
    fit = FitConfig.from_mapping(
        scenario.fit, model="extended_tofts", fitters=fitters, error_budget_runner=PHANTOM_RUNNER
    )
    infos = fit.resolve()
    if (out / "run.json").exists() or (out.exists() and any(out.iterdir())):
        raise ConfigError(f"{out} is not empty: a phantom run needs a new directory")
    digest = phantom_digest(raw, digits=32)
    cases = _cases(scenario, base, acq_sweep)
    phantoms = [
        make_neck(shape, seed=scenario.seed + s, field_strength=scenario.protocol.field_strength)
        for s in range(subjects)
    ]
    nodes: dict[str, xr.Dataset] = {}
    rows: list[dict[str, Any]] = []
    figure_cases = _figure_cases(raw, cases)
    manifest: list[dict[str, str]] = []
    for ci, (values, protocol, acq) in enumerate(cases):
        name = f"case_{ci:04d}"
        parts = []
        offset = 0
        for s, ph in enumerate(phantoms):
            c = phantom_case(
                ph,
                subject_protocol(protocol, scenario.seed, s, subject_aif),
                acq,
                values.get("roi", roi),
                carotid,
                replicates=scenario.replicates,
                seed=_case_seed(scenario.seed, ci, s),
            )
            c = c.assign_coords(tissue=c["tissue"] + offset, replicate=c["replicate"])
            offset += int(c.attrs["roi_voxels"])
            parts.append(c)
        n_vox = sum(p.sizes["voxel"] for p in parts)
        est = {k: np.full((len(infos), n_vox), np.nan) for k in ("Ktrans", "ve", "vp", "kep")}
        success = np.zeros((len(infos), n_vox), dtype=bool)
        # the engine's at-limit flags, for the parameters this runner stores
        at_limit = {k: np.zeros((len(infos), n_vox), dtype=bool) for k in AT_LIMIT if k in est}
        times = np.zeros(len(infos))
        a = 0
        for part in parts:
            data = fit.pipeline(part)
            b = a + part.sizes["voxel"]
            for f, info in enumerate(infos):
                t0 = time.perf_counter()
                res = info.fitter.fit(data.copy(deep=True))
                times[f] += time.perf_counter() - t0
                fitted, ok, limits = collect_estimates(res, info, b - a)
                for k in est:
                    if k in fitted:
                        est[k][f, a:b] = np.where(ok, fitted[k], np.nan)
                success[f, a:b] = ok
                for k, flags in limits.items():
                    if k in at_limit:
                        at_limit[k][f, a:b] = flags
            a = b
        if ci in figure_cases:
            n_first = int(parts[0].attrs["roi_voxels"])
            manifest += _draw_case(
                out,
                name,
                ", ".join(f"{k} = {v}" for k, v in values.items()) or name,
                phantoms[0],
                subject_protocol(protocol, scenario.seed, 0, subject_aif),
                acq,
                values.get("roi", roi),
                repeat_seed(_case_seed(scenario.seed, ci, 0), 0),
                parts[0],
                fit.pipeline,
                est["Ktrans"][0, : n_first * scenario.replicates : scenario.replicates],
                infos[0].name,
            )
        tissue = np.concatenate([p["tissue"].values for p in parts])
        replicate = replicate_codes([p["replicate"].values for p in parts], scenario.replicates)
        truth = {k: np.concatenate([p[k].values for p in parts]) for k in ("Ktrans", "ve", "vp")}
        with np.errstate(invalid="ignore", divide="ignore"):
            truth["kep"] = truth["Ktrans"] / truth["ve"]
        roi_failed = None
        if summary == "roi_mean":
            est, success, at_limit, roi_failed, truth, tissue, replicate = _roi_means(
                est,
                success,
                at_limit,
                replicate,
                phantoms,
                n_fitters=len(infos),
                replicates=scenario.replicates,
            )
            n_vox = tissue.size
        node = {
            "success": (("fitter", "voxel"), success),
            "fit_time_s": (("fitter", "chunk"), times[:, None], {"units": "s"}),
            "tissue": ("voxel", tissue),
            "replicate": ("voxel", replicate),
        }
        for k in est:
            node[k] = (("fitter", "voxel"), est[k], {"units": PARAMETERS[k].units})
            node[f"true_{k}"] = ("voxel", truth[k], {"units": PARAMETERS[k].units})
        for k, flags in at_limit.items():
            node[f"at_limit_{k}"] = (
                ("fitter", "voxel"),
                flags,
                {"long_name": f"estimated {k} at the limit where the model degenerates"},
            )
        if roi_failed is not None:
            node["roi_failed_fraction"] = (
                ("fitter", "voxel"),
                roi_failed,
                {
                    "units": "1",
                    "long_name": "fraction of the ROI's voxels whose fit failed",
                    "max_failed_fraction": ROI_MAX_FAILED_FRACTION,
                },
            )
        nodes[name] = xr.Dataset(
            node,
            coords={"fitter": [i.name for i in infos], "voxel": np.arange(n_vox)},
            attrs={"case_values": {k: v for k, v in values.items()}, "case_index": ci},
        )
        for f, info in enumerate(infos):
            names = [p for p in estimated_parameters(info.model) if p in est]
            for p in names:
                row = {"case": name, "fitter": info.name, "parameter": p}
                row.update(
                    case_metrics(
                        est[p][f],
                        truth[p],
                        success[f],
                        tissue,
                        replicate,
                        parameter=p,
                        fit_time_s=times[f],
                        seed=scenario.seed,
                        at_limit=at_limit[p][f] if p in at_limit else None,
                    )
                )
                rows.append(row)
    out.mkdir(parents=True, exist_ok=True)
    root = xr.Dataset(
        {"case_name": ("case", list(nodes))},
        attrs={"scenario": scenario.name, "scenario_hash": digest[:16]},
    )
    tree = xr.DataTree.from_dict({"/": root, **{f"/{k}": v for k, v in nodes.items()}})
    tree.to_zarr(out / "estimates.zarr", zarr_format=2, consolidated=True)
    write_atomic(out / "metrics.csv", metrics_table(rows))
    failures = io.StringIO()
    csv.writer(failures, lineterminator="\n").writerow(FAILURE_COLUMNS)
    write_atomic(out / "failures.csv", failures.getvalue())
    meta = {
        "scenario_name": scenario.name,
        "scenario_hash": digest[:16],
        "run_identity": digest[16:32],
        "scenario_toml": text,
        "scenario": {**scenario.source, "tissue": {"phantom": list(shape)}},
        "fit": fit.as_dict(),
        "fitters": [fitter_record(i) for i in infos],
        "phantom": {
            "shape": list(shape),
            "subjects": subjects,
            "roi": roi,
            "carotid": carotid,
            "summary": summary,
            "subject_aif": subject_aif,
            "roi_max_failed_fraction": ROI_MAX_FAILED_FRACTION,
        },
        "phantomdce_version": phantomdce.__version__,
    }
    write_atomic(out / "figures.json", json.dumps(manifest, indent=1))
    write_atomic(out / "run.json", json.dumps(meta, indent=1, default=str))
    return rows
