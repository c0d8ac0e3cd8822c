"""The report's figures of a phantom run, drawn from the run folder alone.

For a run of a phantom scenario (its ``run.json`` has a ``"phantom"`` key) the report shows,
for a few cases (:func:`figure_cases`: the setting the verdict judges, else the first case,
and the last case), two figures of subject 0's first acquisition:

- ``<case>_maps.png``: truth labels and Ktrans on the 1 mm truth grid, the acquired image
  (last frame) with the tumour ROI outlined, true and fitted Ktrans (/min) on the acquired
  grid (:func:`phantomdce.report.phantom_figures.maps_figure`);
- ``<case>_aif.png``: the plasma AIF (mM) the run's pipeline used against the subject's
  true AIF (:func:`phantomdce.report.phantom_figures.aif_figure`).

Everything is rebuilt from ``run.json`` (the checked scenario mapping
``scenario_mapping`` and the pipeline ``fit.pipeline``) and the run's unit stores
``units/case_NNNN_chunk_SSSSS.zarr`` (chunk ``S`` is subject ``S``): the acquisition is
repeated with its noise seed, the tumour ROI placed with the same rule on the same images
(:func:`phantomdce.fit.roi.place_rois`), and the fitted Ktrans read from the store, so the
figures show exactly what the run fitted. The PNGs are written atomically to
``run_dir/figures/`` and reused when already there (a partly written PNG never exists).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from phantomdce.files import write_atomic
from phantomdce.fit.pipeline import Pipeline
from phantomdce.phantom.anatomy import Phantom
from phantomdce.phantom.scenario import PhantomCase, PhantomScenario, parse_phantom_scenario

__all__ = [
    "AifCurves",
    "MapsData",
    "SubjectImages",
    "aif_curves",
    "aif_reads_every_acquisition",
    "case_label",
    "figure_cases",
    "maps_data",
    "phantom_run_figures",
    "stored_figure_data",
    "subject_images",
]

#: Subject and acquisition (replicate) the figures show.
SUBJECT = 0
REPLICATE = 0


def figure_cases(raw: dict[str, Any], cases: list[PhantomCase]) -> list[int]:
    """Indices of the cases to draw: the judged setting (or the first case) and the last.

    The judged setting is, as the verdict has it, the ``threshold`` of a max/min
    ``[recommendation]``, else its first ``recommended`` value found among the cases' values
    of the ``knob``.

    Parameters
    ----------
    raw : dict
        The scenario mapping (its ``recommendation`` table, if any).
    cases : list of PhantomCase
        The scenario's cases, in order.

    Returns
    -------
    list of int
        Sorted case indices (one or two).
    """
    rec = raw.get("recommendation", {})
    knob = rec.get("knob")
    targets = [rec["threshold"]] if "threshold" in rec else list(rec.get("recommended", []))
    first = 0
    for target in targets:
        hit = [i for i, c in enumerate(cases) if knob in c.values and c.values[knob] == target]
        if hit:
            first = hit[0]
            break
    return sorted({first, len(cases) - 1})


def case_label(case: PhantomCase) -> str:
    """A case's swept values as text (``slice_mm = 4.0``), or its name without a sweep."""
    return ", ".join(f"{k} = {v}" for k, v in case.values.items()) or case.name


@dataclass(frozen=True)
class MapsData:
    """What the maps figure of one case shows (subject 0, first acquisition).

    Attributes
    ----------
    phantom : Phantom
        Subject 0's phantom.
    acquired : xarray.Dataset
        Its first acquisition in the case (the run's noise seed).
    roi : ndarray (slice, y, x) bool
        The tumour ROI the run placed on it (the case's rule).
    fitted : ndarray (slice, y, x) float
        Fitted Ktrans (/min) of the run's first fitter on the acquired grid, as stored in
        the unit store; NaN outside the ROI and where the fit failed.
    fitter : str
        That fitter's name.
    """

    phantom: Phantom
    acquired: xr.Dataset
    roi: np.ndarray
    fitted: np.ndarray
    fitter: str


def _unit_store(run_dir: Path, case: PhantomCase) -> Path:
    """Subject 0's unit store of a case; FileNotFoundError if the run has none."""
    store = run_dir / "units" / f"case_{case.index:04d}_chunk_{SUBJECT:05d}.zarr"
    if not store.exists():
        raise FileNotFoundError(
            f"{store} is missing: the run has no results of {case.name} subject {SUBJECT}"
            " (finish the run first)"
        )
    return store


@dataclass(frozen=True)
class SubjectImages:
    """Subject 0's acquisitions in a case and the ROIs the run placed on the first.

    Attributes
    ----------
    phantom : Phantom
        Subject 0's phantom.
    acquisitions : list of xarray.Dataset
        Its acquisitions in the case, repeat by repeat (the run's noise seeds).
    tumour, carotid : ndarray (slice, y, x) bool
        The tumour ROI (the case's rule) and the carotid ROI (the scenario's placement),
        placed on the first acquisition's measurements.
    """

    phantom: Phantom
    acquisitions: list[xr.Dataset]
    tumour: np.ndarray
    carotid: np.ndarray


def subject_images(
    ps: PhantomScenario, case: PhantomCase, *, replicates: int | None = None
) -> SubjectImages:
    """Acquire subject 0 as the run did and place its ROIs as the run did.

    The same steps as :func:`phantomdce.engine.phantom.unit_case` (the case's noise seeds,
    :func:`phantomdce.fit.roi.place_rois` on the first acquisition's measurements).

    Parameters
    ----------
    ps : PhantomScenario
        The run's scenario (from ``run.json``'s ``scenario_mapping``).
    case : PhantomCase
        One of its cases.
    replicates : int, optional
        Acquire only the first ``replicates`` repeats (default: all ``ps.replicates``, which
        the AIF needs; the maps need the first only).

    Raises
    ------
    ValueError
        The tumour ROI holds no voxel at this resolution.
    """
    from phantomdce.fit.pipeline import measurements_only
    from phantomdce.fit.roi import place_rois
    from phantomdce.phantom.case import acquire_repeats

    phantom = ps.phantom(SUBJECT, case)  # its tumour diameter and session position
    acquisitions = acquire_repeats(
        phantom,
        ps.subject_protocol(case, SUBJECT),
        case.acquisition,
        replicates=ps.replicates if replicates is None else replicates,
        seed=ps.case_seed(case, SUBJECT),
    )
    tumour, carotid = place_rois(measurements_only(acquisitions[0]), case.roi, ps.carotid)
    return SubjectImages(phantom, acquisitions, tumour, carotid)


def maps_data(
    run_dir: str | Path,
    ps: PhantomScenario,
    case: PhantomCase,
    images: SubjectImages | None = None,
) -> MapsData:
    """Subject 0's first acquisition of a case, its tumour ROI and the fitted Ktrans.

    Parameters
    ----------
    run_dir : path
        The run folder (its ``units/`` stores).
    ps : PhantomScenario
        The run's scenario (from ``run.json``'s ``scenario_mapping``).
    case : PhantomCase
        One of its cases.
    images : SubjectImages, optional
        :func:`subject_images` of the case, if already made (default: made here, the first
        acquisition only).

    Returns
    -------
    MapsData

    Raises
    ------
    FileNotFoundError
        The case's unit store of subject 0 is missing (the run is not complete).
    ValueError
        The store's ROI voxels do not match the rebuilt ROI (the run was made with another
        ROI rule or acquisition), or the ROI holds no voxel.
    """
    store = _unit_store(Path(run_dir), case)
    if images is None:
        images = subject_images(ps, case, replicates=1)
    roi = images.tumour
    with xr.open_zarr(store, consolidated=True, mask_and_scale=False) as unit:
        sel = unit["replicate"].values == REPLICATE
        tissue = unit["tissue"].values[sel]
        ktrans = unit["Ktrans"].values[0, sel].astype(np.float64)
        ok = unit["success"].values[0, sel].astype(bool)
        fitter = str(unit["fitter"].values[0])
        n_stored = int(unit.attrs.get("roi_voxels", tissue.size))
    n_roi = int(roi.sum())
    if n_stored != n_roi or tissue.size != n_roi or np.unique(tissue).size != n_roi:
        raise ValueError(
            f"{store}: holds {n_stored} ROI voxels ({tissue.size} in acquisition"
            f" {REPLICATE}), but the {case.roi!r} rule places {n_roi} on the rebuilt"
            " acquisition: the run was made with another ROI rule or acquisition"
        )
    values = np.full(n_roi, np.nan)
    values[tissue] = np.where(ok, ktrans, np.nan)  # tissue v: the v-th ROI voxel (np.where)
    fitted = np.full(roi.shape, np.nan)
    fitted[roi] = values
    return MapsData(images.phantom, images.acquisitions[0], roi, fitted, fitter)


def aif_reads_every_acquisition(pipeline: Pipeline) -> bool:
    """Whether the pipeline's AIF is read from the images of every acquisition of a subject.

    A measured AIF (``aif = "measured"``) averages the carotid ROI over all the repeated
    acquisitions the run pooled; the true and the population AIF read only the truth, the
    frame times and the protocol, which the first acquisition holds.
    """
    return pipeline.aif == "measured"


def _replicates_for(pipeline: Pipeline, ps: PhantomScenario) -> int:
    return ps.replicates if aif_reads_every_acquisition(pipeline) else 1


@dataclass(frozen=True)
class AifCurves:
    """The plasma AIF a run's pipeline used for subject 0 in a case, and the true one.

    Attributes
    ----------
    time_s : ndarray
        Frame times (s).
    used : ndarray
        The pipeline's plasma AIF (mM) at the frames.
    true : ndarray
        The subject's true plasma AIF (mM) at the frames.
    source : str
        The pipeline's ``aif`` setting (``"true"``, ``"population"`` or ``"measured"``).
    """

    time_s: np.ndarray
    used: np.ndarray
    true: np.ndarray
    source: str


def aif_curves(
    pipeline: Pipeline, ps: PhantomScenario, case: PhantomCase, images: SubjectImages | None = None
) -> AifCurves:
    """The AIF ``pipeline`` computes from subject 0's ROI voxels in a case, and the truth.

    Parameters
    ----------
    pipeline : Pipeline
        The run's pipeline (``run.json``'s ``fit.pipeline``).
    ps, case
        The run's scenario and one of its cases.
    images : SubjectImages, optional
        :func:`subject_images` of the case (default: made here), with every repeat when
        :func:`aif_reads_every_acquisition`, else at least the first.

    Raises
    ------
    ValueError
        A measured AIF, and ``images`` holds fewer acquisitions than the scenario's
        ``replicates`` (the pipeline averages the carotid ROI over all of them).
    """
    from phantomdce.phantom.case import roi_voxels

    if images is None:
        images = subject_images(ps, case, replicates=_replicates_for(pipeline, ps))
    if aif_reads_every_acquisition(pipeline) and len(images.acquisitions) != ps.replicates:
        raise ValueError(
            f"images hold {len(images.acquisitions)} acquisitions: the AIF needs all"
            f" replicates = {ps.replicates}"
        )
    part = roi_voxels(images.acquisitions, images.tumour, images.carotid)
    return AifCurves(
        part["time"].values, pipeline.plasma_aif(part), part["ca"].values, pipeline.aif
    )


def stored_figure_data(
    run_dir: str | Path, ps: PhantomScenario, case: PhantomCase
) -> tuple[MapsData, AifCurves] | None:
    """The figures' data as the run stored them with subject 0's unit, or None.

    The engine keeps, in subject 0's unit store, the first acquisition's last frame, the
    true Ktrans on the acquired grid, the tumour ROI it placed, and the AIF its pipeline
    used with the true one (:func:`phantomdce.engine.phantom.figure_images`): the figures
    are then drawn without acquiring the subject again.
    """
    store = _unit_store(Path(run_dir), case)
    with xr.open_zarr(store, consolidated=True, mask_and_scale=False) as unit:
        if "figure_signal" not in unit:
            return None
        unit = unit.load()
    dims = ("slice", "y", "x")
    roi = unit["figure_roi"].values.astype(bool)
    acquired = xr.Dataset(
        {
            "signal": (dims + ("frame",), unit["figure_signal"].values[..., None]),
            "Ktrans": (dims, unit["figure_true_Ktrans"].values),
        },
        coords={d: unit[d].values for d in dims},
        attrs={k: unit.attrs[f"figure_{k}"] for k in ("in_plane_mm", "slice_mm")},
    )
    sel = unit["replicate"].values == REPLICATE
    fitted_roi = np.full(int(roi.sum()), np.nan)
    ok = unit["success"].values[0, sel].astype(bool)
    fitted_roi[unit["tissue"].values[sel]] = np.where(ok, unit["Ktrans"].values[0, sel], np.nan)
    fitted = np.full(roi.shape, np.nan)
    fitted[roi] = fitted_roi
    phantom = ps.phantom(SUBJECT, case)  # the case's tumour diameter and session position
    maps = MapsData(phantom, acquired, roi, fitted, str(unit["fitter"].values[0]))
    aif = AifCurves(
        unit["time"].values,
        unit["aif_used"].values,
        unit["aif_true"].values,
        str(unit.attrs.get("aif_source", "")),
    )
    return maps, aif


def _draw_maps(data: MapsData) -> bytes:
    from phantomdce.report.figures import figure_to_png
    from phantomdce.report.phantom_figures import maps_figure

    fig = maps_figure(data.phantom, data.acquired, fitted=data.fitted, roi=data.roi)
    return figure_to_png(fig)


def _draw_aif(aif: AifCurves) -> bytes:
    from phantomdce.report.figures import figure_to_png
    from phantomdce.report.phantom_figures import aif_figure

    fig = aif_figure(
        aif.time_s,
        aif.true,
        {f"used by the pipeline (aif = {aif.source})": aif.used},
        title=f"AIF used by the pipeline ({aif.source}) vs the subject's true AIF",
    )
    return figure_to_png(fig)


def phantom_run_figures(run_dir: str | Path) -> list[tuple[Path, str]]:
    """The maps and AIF figures of a phantom run's figure cases, with their captions.

    Draws, for each case of :func:`figure_cases`, ``run_dir/figures/<case>_maps.png`` and
    ``<case>_aif.png`` (see the module docstring); a PNG already there is reused (each is
    written atomically, so one that exists is complete).

    Parameters
    ----------
    run_dir : path
        A run folder (``run.json``). A run that is not of a phantom scenario has no such
        figures.

    Returns
    -------
    list of (Path, str)
        Each PNG and its caption, case by case (maps, then AIF); empty for a run without a
        ``"phantom"`` key in its ``run.json``. A case whose subject 0 has no tumour ROI
        voxel (its unit failed, as ``failures.csv`` records) has no figures.

    Raises
    ------
    FileNotFoundError
        A figure case's unit store of subject 0 is missing (the run is not complete).
    """
    run_dir = Path(run_dir)
    meta = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    if "phantom" not in meta:
        return []
    ps = parse_phantom_scenario(meta["scenario_mapping"])
    cases = ps.cases()
    rule = {c.index: c.roi.replace("_", " ") for c in cases}
    fitter = _first_fitter(meta)
    pipeline = Pipeline.from_mapping(meta["fit"]["pipeline"], path="run.json fit.pipeline")
    figdir = run_dir / "figures"
    out: list[tuple[Path, str]] = []
    for i in figure_cases(ps.raw, cases):
        case = cases[i]
        label = case_label(case)
        maps = figdir / f"{case.name}_maps.png"
        aif = figdir / f"{case.name}_aif.png"
        if not (maps.exists() and aif.exists()):
            if _stored_roi_voxels(run_dir, case) == 0:
                continue  # subject 0's tumour ROI held no voxel: failures.csv says so
            # what the run stored with subject 0; else one set of acquisitions for both
            # figures (the maps need the first only)
            stored = stored_figure_data(run_dir, ps, case)
            if stored is None:
                n = _replicates_for(pipeline, ps) if not aif.exists() else 1
                images = subject_images(ps, case, replicates=n)
                stored = (
                    None if maps.exists() else maps_data(run_dir, ps, case, images),
                    None if aif.exists() else aif_curves(pipeline, ps, case, images),
                )
            figdir.mkdir(exist_ok=True)
            if not maps.exists():
                write_atomic(maps, _draw_maps(stored[0]))
            if not aif.exists():
                write_atomic(aif, _draw_aif(stored[1]))
        out.append(
            (
                maps,
                f"Phantom at {label}: truth labels and Ktrans on the 1 mm truth grid, the"
                f" acquired image (last frame; red: the {rule[i]} tumour ROI), true and fitted"
                f" ({fitter}, first acquisition) Ktrans on the acquired grid.",
            )
        )
        out.append(
            (
                aif,
                f"Phantom at {label}: the plasma AIF the pipeline used for the first"
                " subject's first acquisition against that subject's true AIF.",
            )
        )
    return out


def _stored_roi_voxels(run_dir: Path, case: PhantomCase) -> int:
    """Subject 0's tumour ROI voxels in a case as its unit store records them."""
    with xr.open_zarr(_unit_store(run_dir, case), consolidated=True) as unit:
        return int(unit.attrs.get("roi_voxels", 0))


def _first_fitter(meta: dict[str, Any]) -> str:
    """The run's first fitter as its stores name it (``run.json``'s ``fitters``)."""
    fitters = meta.get("fitters") or [{}]
    return str(fitters[0].get("name", "first fitter"))
