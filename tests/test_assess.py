"""``phantomdce assess``: the site file, the site's run and the page's numbers.

The page's numbers are checked against independent computations: the per-tissue bias and
noise-only CV from the stored estimates, the bound from :func:`phantomdce.precision.crlb`
called directly on the site's protocol, the error budget from the run's metrics.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from pathlib import Path

import numpy as np
import pytest

from phantomdce.design.site import HEAD_AND_NECK_TISSUE, load_site, parse_site
from phantomdce.dro.config import ConfigError
from phantomdce.dro.scenario import parse_scenario

ROOT = Path(__file__).resolve().parents[1]

TINY_SITE = """
name = "tiny_site"
description = "a small site for the tests"

[protocol]
preset = "esnr2022"
dt = 5.8
snr = 25.0
flip_angles = [2.0, 15.0]
duration = 200.0

[tissue]
model = "extended_tofts"
Ktrans = [0.1, 0.3]
ve = [0.25]
vp = [0.03]

[fit]
fitter = "nlls_extended_tofts"
"""


# --------------------------------------------------------------------------- the site file


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({"sight": "x"}, ["unknown key 'sight'"]),
        ({"protocol": {"dtt": 3.0}}, ["protocol.dtt", "did you mean 'dt'"]),
        ({"protocol": {"dt": -1.0}}, ["protocol.dt = -1.0", "expected a finite number > 0"]),
        ({"protocol": {"preset": "nope"}}, ["protocol.preset = 'nope'", "esnr2022"]),
        ({"tissue": {"Ktrans": [-0.1], "ve": 0.2, "vp": 0.01}}, ["tissue.Ktrans[0] = -0.1"]),
        ({"fit": {"fitter": "nlls_nope"}}, ["fit.fitter", "nlls_nope"]),
        ({"fit": {"pipeline": {"aif": "guess"}}}, ["fit.pipeline.aif = 'guess'", "measured"]),
        ({"fit": {"fitters": ["x"]}}, ["unknown key 'fit.fitters'", "fitter"]),
        ({"name": "../up"}, ["name = '../up'", "plain name"]),
        ({"protocol": 3}, ["protocol = 3", "expected a table"]),
    ],
)
def test_a_bad_site_value_is_refused_with_its_key_path_value_and_expectation(data, words):
    with pytest.raises(ConfigError) as err:
        parse_site(data)
    for w in words:
        assert w in str(err.value)


def test_a_protocol_key_the_scanner_sets_is_refused_naming_both():
    scanner = pytest.importorskip("phantomdce.scanner")
    table = {
        "matrix": [192, 192],
        "fov_mm": [240.0, 240.0],
        "slices": 40,
        "slice_thickness_mm": 3.0,
        "tr": 0.004,
        "fa": 15.0,
        "parallel_factor": 4.0,
        "reference_snr": 25.0,
    }
    site = parse_site({"scanner": table})
    assert site.scanner == scanner.Scanner.from_mapping(table, path="scanner")
    assert site.protocol.dt == pytest.approx(site.scanner.derive().dt)
    with pytest.raises(ConfigError, match=r"protocol\.dt = 4\.0.*\[scanner\].*dt"):
        parse_site({"protocol": {"dt": 4.0}, "scanner": table})


def test_defaults_are_the_study_grid_the_first_fitter_and_the_vfa_pipeline():
    site = parse_site({})
    study = tomllib.loads((ROOT / "scenarios" / "esnr2022" / "noise.toml").read_text())
    assert {k: list(v) for k, v in site.tissue.axes.items()} == {
        k: v for k, v in study["tissue"].items() if k != "model"
    }
    assert site.tissue.model == study["tissue"]["model"] == HEAD_AND_NECK_TISSUE["model"]
    assert site.fitter == "nlls_extended_tofts"
    assert site.pipeline == {"t1": "vfa_nonlinear", "aif": "true"}
    assert site.name == "site"


def test_the_committed_example_site_loads():
    site = load_site(ROOT / "scenarios" / "sites" / "example_site.toml")
    assert site.name == "example_site"
    assert site.protocol.field_strength == 3.0


# --------------------------------------------------------------------------- the site's run


@pytest.mark.parametrize(
    "protocol",
    [{"dt": 3.0}, {"post_bolus_s": 250.0}, {"bat": 31.0, "snr": math.inf}, {"dt": 7.5, "fa": 12}],
)
def test_the_site_scenario_simulates_the_site_protocol(protocol):
    from phantomdce.design.assess import site_scenario

    site = parse_site({"protocol": protocol})
    scenario = parse_scenario(site_scenario(site, replicates=2, phases=4))
    first = scenario.cases()[0].protocol
    assert dataclasses.replace(first, bat_phase=site.protocol.bat_phase) == site.protocol
    snrs = sorted({c.protocol.snr for c in scenario.cases()})
    finite = math.isfinite(site.protocol.snr)
    assert snrs == ([site.protocol.snr, math.inf] if finite else [math.inf])
    phases = {c.protocol.bat_phase for c in scenario.cases()}
    assert phases == ({0.0} if site.protocol.bat is not None else {0.0, 0.25, 0.5, 0.75})


def test_the_site_scenario_refuses_a_bad_size():
    from phantomdce.design.assess import site_scenario

    with pytest.raises(ConfigError, match="--replicates = 0"):
        site_scenario(parse_site({}), replicates=0)
    with pytest.raises(ConfigError, match="--phases = 0"):
        site_scenario(parse_site({}), phases=0)


@pytest.fixture(scope="module")
def assessed(tmp_path_factory):
    """The CLI on the tiny site: 2 tissues, 8 replicates, 2 arrival phases."""
    from phantomdce.cli import main

    tmp = tmp_path_factory.mktemp("assess")
    site_file = tmp / "tiny_site.toml"
    site_file.write_text(TINY_SITE)
    out = tmp / "report"
    argv = ["assess", str(site_file), "-o", str(out), "--replicates", "8", "--phases", "2"]
    argv += ["--seed", "3", "-q", "--repeatability-subjects", "0"]  # the slow test runs it
    assert main(argv) == 0
    return site_file, out


@pytest.mark.slow  # an assess run (about 30 s cold): the CI's slow pass
def test_the_cli_writes_the_page_the_summary_and_the_site_scenario(assessed):
    site_file, out = assessed
    html = (out / "index.html").read_text()
    md = (out / "summary.md").read_text()
    assert html.startswith("<!DOCTYPE html>") and "data:image/png;base64," in html
    for text in (html, md):
        assert "phantomdce assessment of tiny_site" in text
        assert "Temporal resolution" in text  # a recommendation of the study
        assert "Error budget" in text and "Repeatability" in text
    assert (out / "figures" / "assess.png").stat().st_size > 1000
    written = tomllib.loads((out / "site_scenario.toml").read_text())
    from phantomdce.design.assess import site_scenario

    assert written == site_scenario(load_site(site_file), replicates=8, phases=2, seed=3)
    assert (out / "run" / "metrics.csv").exists()


@pytest.fixture(scope="module")
def assessment(assessed):
    """The same run gathered again (the engine reuses the finished run)."""
    from phantomdce.design.assess import assess

    site_file, out = assessed
    return assess(load_site(site_file), out, replicates=8, phases=2, seed=3, changes=False)


def _stored(run_dir: Path, fitter: str):
    """Per noisy case: (protocol attrs, tissue index, truth and estimate per parameter)."""
    from phantomdce.engine.run import open_results

    tree = open_results(run_dir)
    for name in sorted(tree.children):
        ds = tree[name].to_dataset()
        if not math.isfinite(float(ds.attrs["snr"])):
            continue
        f = ds["fitter"].values.tolist().index(fitter)
        ok = ds["success"].values[f].astype(bool)
        yield ds.attrs, ds["tissue"].values, ok, {
            p: (ds[f"true_{p}"].values, ds[p].values[f]) for p in ("Ktrans", "ve", "vp")
        }


@pytest.mark.slow  # an assess run (about 30 s cold): the CI's slow pass
def test_the_cv_and_bias_columns_equal_the_stored_estimates(assessment):
    a = assessment
    cases = list(_stored(a.run_dir, a.site.fitter))
    assert len(cases) == 2  # the two arrival phases at the site's SNR
    for line in a.tissues:
        cvs, rel = [], []
        for _, tissue, ok, values in cases:
            truth, est = values[line.parameter]
            sel = (tissue == line.tissue) & ok & np.isfinite(est)
            cvs.append(100 * np.std(est[sel], ddof=1) / abs(np.mean(est[sel])))
            rel.append(100 * (est[sel] - truth[sel]) / truth[sel])
        assert line.cv_noise_pct == pytest.approx(np.sqrt(np.mean(np.square(cvs))), rel=1e-12)
        assert line.bias_pct == pytest.approx(np.mean(np.concatenate(rel)), rel=1e-9, abs=1e-12)
        pooled = np.concatenate(
            [values[line.parameter][1][(t == line.tissue) & ok] for _, t, ok, values in cases]
        )
        assert line.cv_pct == pytest.approx(100 * np.std(pooled, ddof=1) / np.mean(pooled))
    assert {(t.tissue, t.parameter) for t in a.tissues} == {
        (i, p) for i in range(2) for p in ("Ktrans", "ve", "vp")
    }


@pytest.mark.slow  # an assess run (about 30 s cold): the CI's slow pass
def test_the_bound_column_equals_crlb_called_directly(assessment):
    from phantomdce.precision import crlb

    a = assessment
    protocols = [a.site.protocol.replace(bat_phase=ph) for ph in (0.0, 0.5)]
    truth = {"Ktrans": np.array([0.1, 0.3]), "ve": np.array([0.25] * 2), "vp": np.array([0.03] * 2)}
    bounds = [crlb(p, "extended_tofts", truth, kind="two_step") for p in protocols]
    for line in a.tissues:
        true = truth[line.parameter][line.tissue]
        cv = [100 * b[line.parameter][line.tissue] / true for b in bounds]
        assert line.crlb_cv_pct == pytest.approx(np.sqrt(np.mean(np.square(cv))), rel=1e-9)
        assert line.bound_agrees in (True, False)


@pytest.mark.slow  # an assess run (about 30 s cold): the CI's slow pass
def test_the_budget_reads_the_oracle_entries_and_the_noise_free_cases(assessment):
    import csv

    a = assessment
    rows = list(csv.DictReader((a.run_dir / "metrics.csv").open()))
    budget = {(b.source, b.parameter): b for b in a.budget}
    assert {s for s, _ in budget} == {"T1 mapping", "sampling", "noise", "total"}
    # the T1 line is verdict.error_budget's share of the oracle entry "[true t1]"
    def bias(fitter):  # pooled over the two arrival phases at the site's SNR
        return np.mean([float(r["rel_bias_pct"]) for r in rows if r["fitter"] == fitter
                        and r["parameter"] == "Ktrans" and r["case"] in ("case_0000", "case_0001")])

    full, t1_bias = bias(a.site.fitter), bias(f"{a.site.fitter} [true t1]")
    assert budget[("T1 mapping", "Ktrans")].bias_pct == pytest.approx(full - t1_bias)
    # the noise-free cases of the run: the fitter's metrics at snr = inf, pooled over phases
    # (both phases have the same number of voxels, so the pooled bias is their mean)
    free = [r for r in rows if r["fitter"] == a.site.fitter and r["parameter"] == "Ktrans"]
    cases = tomllib.loads((a.run_dir.parent / "site_scenario.toml").read_text())
    assert cases["sweep"]["snr"] == [25.0, math.inf]
    noise_free = [r for r in free if r["case"] in ("case_0002", "case_0003")]
    mean_bias = np.mean([float(r["rel_bias_pct"]) for r in noise_free])
    assert budget[("sampling", "Ktrans")].bias_pct == pytest.approx(mean_bias, rel=1e-9)
    total = budget[("total", "Ktrans")]
    assert budget[("noise", "Ktrans")].bias_pct == pytest.approx(total.bias_pct - mean_bias)
    site_rows = [r for r in free if r["case"] in ("case_0000", "case_0001")]
    assert total.bias_pct == pytest.approx(np.mean([float(r["rel_bias_pct"]) for r in site_rows]))


# --------------------------------------------------------------------------- the study's verdicts


def test_the_study_settings_are_read_from_the_committed_report():
    from phantomdce.design.assess import study_settings

    settings = study_settings((ROOT / "reports" / "esnr2022" / "summary.md").read_text())
    rows = dict(settings["Temporal resolution"]["nlls_extended_tofts"])
    assert rows["5 s"] == "meets" and rows["10 s"] == "fails"
    assert len(rows) == 11  # dt 1-15 s
    assert set(settings["Injection rate"]) >= {
        "nlls_extended_tofts (carotid ROI)",
        "nlls_extended_tofts (population AIF)",
    }


def test_where_the_site_stands_and_the_study_verdict_at_its_value():
    from phantomdce.design.assess import recommendation_lines

    summary = """## Temporal resolution

### nlls_extended_tofts: 5 s: meets

| temporal resolution (s) | class | why |
|---|---|---|
| 4 s | meets |  |
| 5 s | meets |  |
| 6 s | fails | Ktrans CV 23% > 20% |
"""
    scen = ROOT / "scenarios" / "esnr2022"
    lines = {r.id: r for r in recommendation_lines(parse_site({"protocol": {"dt": 5.5}}), scen,
                                                   summary)}  # fmt: skip
    dt = lines["temporal_resolution"]
    assert dt.site_value == "5.5 s" and dt.stands.startswith("deviates")
    assert "between 5 s (meets) and 6 s (fails)" in dt.study and dt.status == "fails"
    exact = {r.id: r for r in recommendation_lines(parse_site({"protocol": {"dt": 4.0}}), scen,
                                                   summary)}["temporal_resolution"]  # fmt: skip
    assert exact.stands.startswith("follows") and exact.study == "meets"
    assert lines["baseline_frames"].status == "no data"  # not in this summary
    assert lines["phantom_slice_thickness"].site_value == "not described by the site"


# --------------------------------------------------------------------------- single changes


@pytest.mark.slow  # compiles the bound's kernels and fits noise-free data (29 s cold)
def test_the_changes_are_scored_like_score_protocols_at_no_more_scan_time():
    from phantomdce.design.assess import best_changes
    from phantomdce.design.score import score_protocols

    site = parse_site(tomllib.loads(TINY_SITE))
    changes, mine, note = best_changes(site, phases=1)
    direct = score_protocols([site.protocol], site.tissue, model="extended_tofts")
    for p, cv, bias in (("Ktrans", mine.ktrans_cv_pct, mine.ktrans_bias_pct),
                        ("ve", mine.ve_cv_pct, mine.ve_bias_pct)):  # fmt: skip
        assert cv == pytest.approx(float(direct["crlb_cv_pct"].sel(parameter=p).mean()))
        assert bias == pytest.approx(float(abs(direct["bias_pct"].sel(parameter=p)).mean()))
    assert len(changes) <= 3 and len({c.key for c in changes}) == len(changes)
    for c in changes:
        assert c.gain_pct > 0 and c.scan_time_s <= mine.scan_time_s * 1.01
        assert c.gain_pct == pytest.approx(mine.error_pct - c.error_pct)
    assert "single changes scored" in note


def test_a_site_measuring_its_aif_is_read_against_the_carotid_option_of_the_study():
    from phantomdce.design.assess import recommendation_lines, study_settings

    summary = (ROOT / "reports" / "esnr2022" / "summary.md").read_text()
    scen = ROOT / "scenarios" / "esnr2022"
    site = parse_site({"fit": {"pipeline": {"aif": "measured"}}})
    inj = {r.id: r for r in recommendation_lines(site, scen, summary)}["injection_rate"]
    rows = dict(study_settings(summary)["Injection rate"]["nlls_extended_tofts (carotid ROI)"])
    assert inj.study == f"(carotid ROI): {rows['2 mL/s']}"
    assert inj.status == rows["2 mL/s"]
    known = {r.id: r for r in recommendation_lines(parse_site({}), scen, summary)}
    assert known["aif_source"].stands.startswith("not judged")
    assert "each option shown" in known["injection_rate"].study
    assert "(carotid ROI, population AIF) is the site's" in known["injection_rate"].study


def test_the_dynamic_flip_angle_is_read_from_the_scanner_at_the_site_s_field_strength():
    """The flip-angle recommendation's knob is "scanner.fa"; its study rows are options by
    field strength: a 3 T site is read against the 3 T row, a 1.5 T site against 1.5 T."""
    from phantomdce.design.assess import recommendation_lines, study_settings

    summary = (ROOT / "reports" / "esnr2022" / "summary.md").read_text()
    scen = ROOT / "scenarios" / "esnr2022"
    rows = study_settings(summary)["Dynamic flip angle"]
    site = load_site(ROOT / "scenarios" / "sites" / "example_site.toml")  # 3 T, 15 deg
    fa = {r.id: r for r in recommendation_lines(site, scen, summary)}["flip_angle"]
    assert fa.site_value == "15 deg" and fa.stands.startswith("deviates")
    want = dict(rows["nlls_extended_tofts (3 T)"])["15 deg"]
    assert fa.study == f"(3 T): {want}" and fa.status == want
    plain = parse_site({"protocol": {"fa": 12.0, "field_strength": 1.5}})  # no scanner
    fa = {r.id: r for r in recommendation_lines(plain, scen, summary)}["flip_angle"]
    want = dict(rows["nlls_extended_tofts (1.5 T)"])["12 deg"]
    assert fa.site_value == "12 deg" and fa.study == f"(1.5 T): {want}" and fa.status == want
    low = parse_site({"protocol": {"fa": 3.0}})  # below the lowest swept: as low as possible
    fa = {r.id: r for r in recommendation_lines(low, scen, summary)}["flip_angle"]
    assert fa.stands.startswith("follows (3 deg <= 5 deg")
    assert fa.study.startswith("(3 T): outside the simulated range")


def test_a_tissue_with_too_many_failed_fits_is_not_estimable_whatever_its_numbers():
    from phantomdce.design.assess import bound_agrees, tissue_class
    from phantomdce.report.model import TissueRow
    from phantomdce.report.verdict import MAX_FAILURE_RATE, TissueCheck

    def row(rate):
        return TissueRow(12.0, "f", "Ktrans", {"Ktrans": 0.1}, 1.0, 5.0, 40, failure_rate=rate)

    check = TissueCheck(0, {"Ktrans": 0.1}, {"Ktrans": 1.0}, {"Ktrans": 5.0}, {"Ktrans": 0.0},
                        True, 0.1, "Ktrans")  # fmt: skip
    assert tissue_class(row(MAX_FAILURE_RATE), check) == "meets"
    assert tissue_class(row(MAX_FAILURE_RATE + 0.001), check) == "not estimable"
    assert tissue_class(row(math.nan), check) == "not estimable"
    assert tissue_class(row(0.0), dataclasses.replace(check, meets=False)) == "fails"
    assert tissue_class(row(0.0), None) == ""
    # 10% of the bound plus 1.96 standard errors of the Monte-Carlo CV (dof 50: SE = cv/10)
    assert bound_agrees(10.0, 10.0, 50) is True
    assert bound_agrees(13.0, 10.0, 50) is True  # 3 <= 1 + 1.96 * 1.3
    assert bound_agrees(14.0, 10.0, 50) is False  # 4 > 1 + 1.96 * 1.4
    assert bound_agrees(math.nan, 10.0, 50) is None


STUDY_SCENARIOS = Path(__file__).resolve().parents[1] / "scenarios" / "esnr2022"


def _repeat_template():
    return tomllib.loads((STUDY_SCENARIOS / "phantom_repeatability.toml").read_text())


def test_the_test_retest_scenario_is_the_study_s_at_the_site_protocol_and_voxel():
    from phantomdce.design.assess import repeatability_scenario
    from phantomdce.phantom.scenario import parse_phantom_scenario

    site = load_site(Path(__file__).resolve().parents[1] / "scenarios/sites/example_site.toml")
    raw = repeatability_scenario(site, _repeat_template(), subjects=3, seed=1)
    ps = parse_phantom_scenario(raw)
    cases = ps.cases()
    template = _repeat_template()
    # every tumour size of the study's scenario, each in two sessions
    assert sorted({c.tumour_diameter_mm for c in cases}) == template["sweep"]["tumour_diameter_mm"]
    assert sorted({c.session for c in cases}) == [0, 1]
    derived = site.scanner.derive()
    for c in cases:
        # the site's frame time, flip angles and duration; the scanner's voxel
        assert c.protocol.dt == pytest.approx(site.protocol.dt, rel=1e-12)
        assert c.protocol.flip_angles == site.protocol.flip_angles
        assert c.protocol.duration == site.protocol.duration
        assert c.acquisition.in_plane_mm == pytest.approx(derived.voxel_mm[0])
        assert c.acquisition.slice_mm == pytest.approx(derived.voxel_mm[2])
    assert raw["phantom"]["subjects"] == 3
    assert raw["phantom"]["session_variation"] == template["phantom"]["session_variation"]
    assert raw["fit"] == {"fitters": [site.fitter], "pipeline": dict(site.pipeline)}
    with pytest.raises(ConfigError, match=r"--repeatability-subjects = 1: expected an integer"):
        repeatability_scenario(site, template, subjects=1)


@pytest.mark.slow
def test_the_repeatability_section_shows_the_test_retest_run_s_numbers(tmp_path):
    from phantomdce.cli import main
    from phantomdce.report.repeatability import repeatability

    site_file = Path(__file__).resolve().parents[1] / "scenarios/sites/example_site.toml"
    out = tmp_path / "report"
    argv = ["assess", str(site_file), "-o", str(out), "--replicates", "2", "--phases", "1"]
    argv += ["-q", "--repeatability-subjects", "2"]
    assert main(argv) == 0
    md = (out / "summary.md").read_text()
    table = repeatability(out / "repeatability", "Ktrans", seed=0)
    assert len(table) == 3  # one row per tumour size
    for _, r in table.iterrows():
        # the row as the page prints it, computed from the stored estimates
        cells = (
            f"| {r['tumour_diameter_mm']:g} | {r['n_subjects']} ({r['n_pairs']}) |"
            f" {r['mean']:.3g} | {r['wsd']:.3g} | {100 * r['wcv']:.1f} | {r['rc']:.3g} |"
            f" {r['sdc_percent']:.1f} ({r['sdc_percent_lo']:.1f}-{r['sdc_percent_hi']:.1f}) |"
        )
        assert cells in md
    assert (out / "figures" / "repeatability.png").stat().st_size > 1000
    assert "17.9% in lung tumours" in md and "doi:10.2214/AJR.09.3116" in md
