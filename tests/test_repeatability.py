"""Test-retest on the neck phantom (issue 15 part 4): sessions, tumour size, RC and SDC.

The sessions of a subject must differ by the noise, the injection (bolus arrival, AIF
amplitude), the positioning and the ROI redrawn on their images, and by nothing else (the
truth is the same); the tumour diameter key must change the tumour's size as the geometry
says; the repeatability coefficient and the smallest detectable change must equal a direct
computation from the run's stored ROI estimates.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from phantomdce.dro.config import ConfigError
from phantomdce.phantom.anatomy import CLASSES, LESION_CLASSES
from phantomdce.phantom.scenario import parse_phantom_scenario, session_shift_mm

BASE = {
    "name": "trt",
    "seed": 11,
    "replicates": 1,
    "protocol": {"dt": 5.0, "duration": 120.0, "snr": 30.0},
    "phantom": {
        "shape": [16, 96, 96],
        "subjects": 2,
        "summary": "roi_mean",
        "sessions": 2,
        "session_variation": {"bolus_arrival_s": 2.0, "aif_scale": 0.1, "shift_mm": 2.0},
    },
    "acquisition": {"in_plane_mm": 2.0, "slice_mm": 4.0},
    "fit": {"fitters": ["llsq_extended_tofts"]},
}


def scenario(**phantom):
    raw = {**BASE, "phantom": {**BASE["phantom"], **phantom}}
    return parse_phantom_scenario(raw)


def lesion_voxels(ph):
    return int(np.isin(ph.labels, [CLASSES[c].label for c in LESION_CLASSES]).sum())


def test_sessions_are_cases_that_differ_only_by_injection_noise_and_position():
    from phantomdce.engine.phantom import enhancing_truth

    ps = scenario()
    cases = ps.cases()
    assert [c.values["session"] for c in cases] == [0, 1]
    assert ps.cases_table()["session"].values.tolist() == [0, 1]
    a, b = cases
    assert a.acquisition == b.acquisition and a.roi == b.roi and a.protocol == b.protocol
    for s in range(ps.subjects):
        pa, pb = ps.subject_protocol(a, s), ps.subject_protocol(b, s)
        changed = {
            f.name
            for f in dataclasses.fields(pa)
            if getattr(pa, f.name) != getattr(pb, f.name)
        }
        assert changed and changed <= {"bat", "aif_scale"}, changed
        assert ps.case_seed(a, s) != ps.case_seed(b, s)  # new noise
        pha, phb = ps.phantom(s, a), ps.phantom(s, b)
        assert pha.type_params == phb.type_params  # the same tissues and kinetics
        # the same anatomy, moved by the session's shift (whole 1 mm voxels, <= 2 mm)
        base = ps.phantom(s)
        for case, moved in ((a, pha), (b, phb)):
            k = session_shift_mm(ps.seed, s, case.session, 2.0)
            assert all(abs(v) <= 2.0 and v == int(v) for v in k)
            inside = tuple(slice(max(0, int(v)), n + min(0, int(v))) for v, n in
                           zip(k, base.labels.shape, strict=True))
            source = tuple(slice(max(0, -int(v)), n - max(0, int(v))) for v, n in
                           zip(k, base.labels.shape, strict=True))
            np.testing.assert_array_equal(moved.labels[inside], base.labels[source])
            np.testing.assert_array_equal(moved.types[inside], base.types[source])
            np.testing.assert_allclose(
                np.array(moved.landmarks["tumour"]) - base.landmarks["tumour"], k
            )
        assert enhancing_truth(ps, s, a) == enhancing_truth(ps, s, b)
    shifts = [session_shift_mm(ps.seed, s, c.session, 2.0) for s in (0, 1) for c in cases]
    assert len(set(shifts)) > 1


def test_without_variation_the_sessions_differ_by_the_noise_only():
    ps = scenario(session_variation={"bolus_arrival_s": 0.0, "aif_scale": 0.0, "shift_mm": 0.0})
    a, b = ps.cases()
    for s in range(ps.subjects):
        assert ps.subject_protocol(a, s) == ps.subject_protocol(b, s)
        assert np.array_equal(ps.phantom(s, a).labels, ps.phantom(s, b).labels)
        assert ps.case_seed(a, s) != ps.case_seed(b, s)


def test_the_tumour_diameter_sets_the_tumour_size():
    raw = {
        **BASE,
        "phantom": {"shape": [40, 96, 96], "subjects": 1},
        "sweep": {"tumour_diameter_mm": [10.0, 20.0, 30.0]},
    }
    ps = parse_phantom_scenario(raw)
    cases = ps.cases()
    assert [c.tumour_diameter_mm for c in cases] == [10.0, 20.0, 30.0]
    counts = np.array([lesion_voxels(ps.phantom(0, c)) for c in cases], dtype=float)
    # a lobulated sphere of the stated mean diameter at 1 mm voxels: volume ~ d^3
    expected = 4 / 3 * np.pi * (np.array([10.0, 20.0, 30.0]) / 2) ** 3
    np.testing.assert_allclose(counts, expected, rtol=0.3)
    np.testing.assert_allclose(counts[1:] / counts[0], [8.0, 27.0], rtol=0.3)
    # the default is the geometry's 28 mm tumour
    assert lesion_voxels(ps.phantom(0)) == pytest.approx(4 / 3 * np.pi * 14.0**3, rel=0.3)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"sessions": 1}, "phantom.session_variation"),
        ({"summary": "voxel"}, "phantom.sessions = 2 with phantom.summary = 'voxel'"),
        ({"session_variation": {"shift": 1.0}}, "phantom.session_variation"),
        ({"session_variation": {"shift_mm": -1.0}}, "phantom.session_variation.shift_mm"),
        ({"session_variation": {"aif_scale": 0.9}}, "phantom.session_variation.aif_scale"),
        ({"tumour_diameter_mm": 30.0}, "phantom.tumour_diameter_mm = 30.0"),
        ({"tumour_diameter_mm": 0.0}, "phantom.tumour_diameter_mm"),
        ({"sessions": 0}, "phantom.sessions"),
    ],
)
def test_bad_test_retest_keys_are_refused_with_their_name(change, match):
    with pytest.raises(ConfigError, match=match):
        scenario(**change)


def test_within_subject_sd_and_cv_by_hand():
    from phantomdce.report.repeatability import within_subject

    x = np.array([[0.20, 0.26], [0.30, 0.27], [np.nan, 0.3], [0.10, 0.10]])
    wsd, wcv, n = within_subject(x)
    d = np.array([0.06, 0.03, 0.0])
    m = np.array([0.23, 0.285, 0.10])
    assert n == 3
    assert wsd == pytest.approx(np.sqrt(np.mean(d**2 / 2)))
    assert wcv == pytest.approx(np.sqrt(np.mean(d**2 / 2 / m**2)))


@pytest.fixture(scope="module")
def trt_run(tmp_path_factory):
    import tomllib  # noqa: F401 - the scenario is written as TOML text below

    from phantomdce.engine.run import run

    tmp = tmp_path_factory.mktemp("trt")
    text = """
name = "trt"
seed = 11
replicates = 2
[protocol]
dt = 5.0
duration = 120.0
snr = 30.0
[phantom]
shape = [16, 96, 96]
subjects = 2
summary = "roi_mean"
sessions = 2
[phantom.session_variation]
bolus_arrival_s = 2.0
aif_scale = 0.1
shift_mm = 2.0
[acquisition]
in_plane_mm = 2.0
slice_mm = 4.0
[fit]
fitters = ["llsq_extended_tofts"]
"""
    path = tmp / "trt.toml"
    path.write_text(text)
    run(path, tmp / "out")
    return tmp / "out"


@pytest.mark.slow  # an engine or phantom run: the default pytest stays under 4 minutes
def test_rc_and_sdc_equal_a_direct_computation_from_the_stored_estimates(trt_run):
    from phantomdce.engine.run import open_results
    from phantomdce.report.repeatability import repeatability

    tree = open_results(trt_run)
    names = tree.ds["case_name"].values
    assert tree.ds["session"].values.tolist() == [0, 1]
    k = [tree[str(n)].ds["Ktrans"].values[0] for n in names]  # fitter 0, one value per ROI
    ok = [tree[str(n)].ds["success"].values[0] for n in names]
    codes = [tree[str(n)].ds["replicate"].values for n in names]
    np.testing.assert_array_equal(codes[0], codes[1])  # subject x acquisition, paired
    x0 = np.where(ok[0], k[0], np.nan)
    x1 = np.where(ok[1], k[1], np.nan)
    keep = np.isfinite(x0) & np.isfinite(x1)
    assert keep.sum() >= 3
    d, m = (x0 - x1)[keep], ((x0 + x1) / 2)[keep]
    wsd = np.sqrt(np.mean(d**2 / 2))
    wcv = np.sqrt(np.mean((d**2 / 2) / m**2))
    table = repeatability(trt_run, n_bootstrap=200, seed=1)
    assert len(table) == 1
    row = table.iloc[0]
    assert row["n_pairs"] == keep.sum() and row["n_subjects"] == 2
    assert row["wsd"] == pytest.approx(wsd, rel=1e-12)
    assert row["rc"] == pytest.approx(1.96 * np.sqrt(2) * wsd, rel=1e-12)
    assert row["rc"] == pytest.approx(2.77 * wsd, rel=1e-3)
    assert row["sdc_percent"] == pytest.approx(100 * 1.96 * np.sqrt(2) * wcv, rel=1e-12)
    assert row["sdc_percent_lo"] <= row["sdc_percent"] * 1.0001
    assert row["detectable"] == (row["sdc_percent"] < 30.0)
    # the ROI was redrawn in each session: the ROIs of a moved subject differ
    voxels = [tree[str(n)].ds.attrs["roi_voxels"] for n in names]
    assert voxels[0] != voxels[1]


def test_repeatability_refuses_a_run_without_sessions(tmp_path):
    import tomllib

    from phantomdce.engine.run import run
    from phantomdce.report.repeatability import repeatability

    from test_phantom import PHANTOM_SCENARIO

    text = PHANTOM_SCENARIO.format(name="one")
    text = text.replace("slice_mm = [2.0, 4.0]", "slice_mm = [4.0]")
    assert tomllib.loads(text)["phantom"].get("sessions") is None
    path = tmp_path / "one.toml"
    path.write_text(text)
    run(path, tmp_path / "out")
    with pytest.raises(ValueError, match="session"):
        repeatability(tmp_path / "out")


@pytest.mark.slow  # an engine or phantom run: the default pytest stays under 4 minutes
def test_the_report_shows_the_test_retest_table_and_figure(trt_run, tmp_path):
    from phantomdce.report.render import write_report
    from phantomdce.report.repeatability import repeatability, repeatability_blocks

    blocks = repeatability_blocks([trt_run, tmp_path / "not_a_run"], tmp_path / "figures")
    assert len(blocks) == 1
    html, md = blocks[0]
    row = repeatability(trt_run).iloc[0]
    assert f"{row['rc']:.3g}" in md and f"{row['sdc_percent']:.0f}" in md
    verdict = "detectable" if row["sdc_percent"] < 30 else "not detectable"
    assert f"a 30% change of the ROI Ktrans: all: SDC {row['sdc_percent']:.0f}%, {verdict}" in md
    assert (tmp_path / "figures" / f"repeatability_{trt_run.name}.png").stat().st_size > 1000
    # the comparison with published test-retest values, with its source
    for text in (html, md):
        assert "8.9% in liver and 17.9% in lung tumours" in text
        assert "doi:10.2214/AJR.09.3116" in text
    paths = write_report(
        [], tmp_path / "report", command="test", version="0", extra_sections=blocks
    )
    assert "Test-retest repeatability" in paths["html"].read_text()
    assert md.strip() in paths["markdown"].read_text()
