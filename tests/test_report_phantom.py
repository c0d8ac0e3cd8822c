"""The report draws a phantom run's maps and AIF figures from the run folder alone."""

import dataclasses
import json

import numpy as np
import pytest

from phantomdce.engine.run import open_results, run
from phantomdce.phantom.scenario import parse_phantom_scenario
from phantomdce.report import phantom as report_phantom
from phantomdce.report.phantom import (
    aif_curves,
    aif_reads_every_acquisition,
    figure_cases,
    maps_data,
    phantom_run_figures,
    subject_images,
)

from test_phantom import PHANTOM_SCENARIO

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def phantom_run(tmp_path_factory):
    """A finished phantom run: slice_mm 2 and 4 mm, the threshold at 2 mm (so the figure
    cases are case 0, the judged one, and case 1, the last), 1 subject, 2 acquisitions."""
    tmp = tmp_path_factory.mktemp("phantom_run")
    text = PHANTOM_SCENARIO.format(name="figs").replace("threshold = 4.0", "threshold = 2.0")
    (tmp / "p.toml").write_text(text)
    run(tmp / "p.toml", tmp / "out")
    return tmp / "out"


@pytest.mark.slow  # an engine or phantom run: the default pytest stays under 4 minutes
def test_phantom_run_figures_are_drawn_once_then_reused(phantom_run, monkeypatch):
    figures = phantom_run_figures(phantom_run)
    assert [p.name for p, _ in figures] == [
        "case_0000_maps.png",
        "case_0000_aif.png",
        "case_0001_maps.png",
        "case_0001_aif.png",
    ]
    for path, _ in figures:
        assert path.parent == phantom_run / "figures"
        assert path.read_bytes()[:8] == PNG_SIGNATURE and path.stat().st_size > 1000
    # written atomically: no temporary file left beside them
    assert sorted(p.name for p in (phantom_run / "figures").iterdir()) == sorted(
        p.name for p, _ in figures
    )
    captions = [c for _, c in figures]
    assert captions[0].startswith("Phantom at slice_mm = 2.0: truth labels")
    assert "recommended tumour ROI" in captions[0] and "(llsq_extended_tofts," in captions[0]
    assert captions[3] == (
        "Phantom at slice_mm = 4.0: the plasma AIF the pipeline used for the first subject's"
        " first acquisition against that subject's true AIF."
    )
    # a second call reuses the PNGs: nothing is drawn, nothing rewritten
    mtimes = [p.stat().st_mtime_ns for p, _ in figures]

    def no_drawing(*args, **kwargs):
        raise AssertionError("a cached figure was drawn again")

    monkeypatch.setattr(report_phantom, "_draw_maps", no_drawing)
    monkeypatch.setattr(report_phantom, "_draw_aif", no_drawing)
    assert phantom_run_figures(phantom_run) == figures
    assert [p.stat().st_mtime_ns for p, _ in figures] == mtimes


def test_the_fitted_map_is_the_stored_estimates_of_subject_0_first_acquisition(phantom_run):
    meta = json.loads((phantom_run / "run.json").read_text())
    ps = parse_phantom_scenario(meta["scenario_mapping"])
    tree = open_results(phantom_run)
    for case in ps.cases():
        data = maps_data(phantom_run, ps, case)
        node = tree[case.name].to_dataset()
        n_first = int(node.attrs["roi_voxels"][0])
        assert data.roi.shape == data.acquired["signal"].shape[:3]
        assert int(data.roi.sum()) == n_first > 0
        # subject 0's voxels of its first acquisition (replicate code 0), in tissue order
        sel = (node["replicate"].values == 0) & (node["tissue"].values < n_first)
        order = np.argsort(node["tissue"].values[sel])
        ok = node["success"].values[0, sel][order]
        stored = np.where(ok, node["Ktrans"].values[0, sel][order], np.nan)
        assert stored.size == n_first and np.isfinite(stored).sum() > 0.5 * n_first
        np.testing.assert_array_equal(data.fitted[data.roi], stored)
        assert np.isnan(data.fitted[~data.roi]).all()
        assert data.fitter == "llsq_extended_tofts"
    # the ROI is the run's: another rule on the same images does not match the store
    other = dataclasses.replace(ps.cases()[0], roi="whole_lesion")
    with pytest.raises(ValueError, match="'whole_lesion' rule places"):
        maps_data(phantom_run, ps, other)


def test_the_aif_is_the_one_the_engine_gives_the_pipeline(phantom_run):
    from phantomdce.engine.phantom import unit_case
    from phantomdce.fit.pipeline import AIF_SOURCES, Pipeline
    from phantomdce.phantom.case import roi_voxels

    meta = json.loads((phantom_run / "run.json").read_text())
    ps = parse_phantom_scenario(meta["scenario_mapping"])
    case = ps.cases()[0]
    images = subject_images(ps, case)
    ref = unit_case(ps, case, 0)  # what the run handed the pipeline for subject 0
    assert int(images.tumour.sum()) == ref.attrs["roi_voxels"]
    assert int(images.carotid.sum()) == ref.attrs["carotid_voxels"]
    first_only = subject_images(ps, case, replicates=1)
    for source in AIF_SOURCES:
        pipeline = Pipeline(aif=source)
        curves = aif_curves(pipeline, ps, case, images)
        np.testing.assert_array_equal(curves.used, pipeline.plasma_aif(ref))
        np.testing.assert_array_equal(curves.true, ref["ca"].values)
        assert curves.source == source
        if not aif_reads_every_acquisition(pipeline):  # the report acquires the first only
            first = aif_curves(pipeline, ps, case, first_only)
            np.testing.assert_array_equal(first.used, curves.used)
    # the measured AIF differs between the first acquisition and all: the check is real
    measured = Pipeline(aif="measured")
    part = roi_voxels(first_only.acquisitions, first_only.tumour, first_only.carotid)
    assert not np.array_equal(measured.plasma_aif(part), measured.plasma_aif(ref))
    # a measured AIF averages every acquisition: the first alone is refused
    with pytest.raises(ValueError, match="the AIF needs all replicates = 2"):
        aif_curves(measured, ps, case, first_only)


def test_the_report_collects_the_phantom_figures(phantom_run):
    from phantomdce.report.results import collect_results

    (result,) = collect_results(phantom_run)
    assert [p.name for p, _ in result.figures] == [
        "case_0000_maps.png",
        "case_0000_aif.png",
        "case_0001_maps.png",
        "case_0001_aif.png",
    ]
    assert all(c.startswith("out: Phantom at slice_mm = ") for _, c in result.figures)


def test_figure_cases_follow_the_verdicts_setting():
    text = PHANTOM_SCENARIO.format(name="cases")
    import tomllib

    raw = tomllib.loads(text)
    cases = parse_phantom_scenario(raw).cases()
    assert figure_cases(raw, cases) == [1]  # threshold 4 mm is the last case
    raw["recommendation"]["threshold"] = 2.0
    assert figure_cases(raw, cases) == [0, 1]
    del raw["recommendation"]["threshold"]
    assert figure_cases(raw, cases) == [1]  # recommended = [4.0]
    del raw["recommendation"]
    assert figure_cases(raw, cases) == [0, 1]  # no recommendation: the first and the last


def test_a_run_without_phantom_has_no_phantom_figures(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"scenario_name": "dro", "scenario": {}}))
    assert phantom_run_figures(tmp_path) == []
    assert not (tmp_path / "figures").exists()


def test_a_case_whose_roi_held_no_voxel_has_no_figures(phantom_run, tmp_path, monkeypatch):
    """The engine records a unit whose tumour ROI is empty and goes on; so does the report."""
    import shutil

    import xarray as xr

    run_dir = tmp_path / "run"
    shutil.copytree(phantom_run, run_dir, ignore=shutil.ignore_patterns("figures"))
    store = run_dir / "units" / "case_0000_chunk_00000.zarr"
    with xr.open_zarr(store, consolidated=True) as unit:
        empty = unit.isel(voxel=slice(0, 0)).load()
    empty.attrs["roi_voxels"] = 0
    shutil.rmtree(store)
    empty.to_zarr(store, mode="w", zarr_format=2, consolidated=True)
    figures = phantom_run_figures(run_dir)
    assert [p.name for p, _ in figures] == ["case_0001_maps.png", "case_0001_aif.png"]
    # a missing unit store is a run that did not finish: said (before acquiring), not skipped
    shutil.rmtree(run_dir / "units" / "case_0001_chunk_00000.zarr")
    shutil.rmtree(run_dir / "figures")

    def no_acquiring(*args, **kwargs):
        raise AssertionError("acquired for a case without results")

    monkeypatch.setattr(report_phantom, "subject_images", no_acquiring)
    with pytest.raises(FileNotFoundError, match="case_0001 subject 0"):
        phantom_run_figures(run_dir)


def test_the_figures_data_the_run_stored_equal_the_rebuilt_ones(phantom_run):
    # the engine keeps subject 0's images, ROI and AIFs: the report draws without acquiring
    from phantomdce.fit.pipeline import Pipeline
    from phantomdce.report.phantom import stored_figure_data

    meta = json.loads((phantom_run / "run.json").read_text())
    ps = parse_phantom_scenario(meta["scenario_mapping"])
    pipeline = Pipeline.from_mapping(meta["fit"]["pipeline"])
    for case in ps.cases():
        maps, aif = stored_figure_data(phantom_run, ps, case)
        images = subject_images(ps, case)
        rebuilt = maps_data(phantom_run, ps, case, images)
        np.testing.assert_array_equal(maps.roi, rebuilt.roi)
        np.testing.assert_array_equal(maps.fitted, rebuilt.fitted)
        np.testing.assert_array_equal(
            maps.acquired["signal"].values[..., -1], rebuilt.acquired["signal"].values[..., -1]
        )
        np.testing.assert_array_equal(maps.acquired["Ktrans"], rebuilt.acquired["Ktrans"])
        np.testing.assert_array_equal(maps.phantom.labels, rebuilt.phantom.labels)
        assert maps.acquired.attrs["slice_mm"] == rebuilt.acquired.attrs["slice_mm"]
        again = aif_curves(pipeline, ps, case, images)
        np.testing.assert_array_equal(aif.used, again.used)
        np.testing.assert_array_equal(aif.true, again.true)
        np.testing.assert_array_equal(aif.time_s, again.time_s)
        assert aif.source == again.source == pipeline.aif


def test_the_figures_draw_the_phantom_each_case_scanned():
    """A swept tumour diameter: each case's figure shows its own tumour, not the default."""
    from phantomdce.phantom.anatomy import CLASSES

    raw = {
        "name": "diam", "seed": 3, "replicates": 1,
        "protocol": {"dt": 5.0, "duration": 60.0, "snr": 30.0},
        "phantom": {"shape": [48, 96, 96], "subjects": 1},
        "acquisition": {"in_plane_mm": 2.0, "slice_mm": 4.0},
        "sweep": {"tumour_diameter_mm": [10.0, 30.0]},
        "fit": {"fitters": ["llsq_extended_tofts"]},
    }
    ps = parse_phantom_scenario(raw)
    tumour = [CLASSES[c].label for c in ("tumour_rim", "tumour_hypoxic", "necrosis")]
    sizes = []
    for case in ps.cases():
        drawn = subject_images(ps, case, replicates=1).phantom
        np.testing.assert_array_equal(drawn.labels, ps.phantom(0, case).labels)
        sizes.append(int(np.isin(drawn.labels, tumour).sum()))
    assert sizes[1] > 5 * sizes[0] > 0  # (30/10)^3 = 27 times the volume
