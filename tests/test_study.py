"""Studies: several scenarios run together, and their results collected per recommendation."""

import numpy as np
import pytest

from phantomdce.dro.config import ConfigError
from phantomdce.dro.scenario import parse_scenario
from phantomdce.dro.simulate import case_aif
from phantomdce.engine.study import load_study, run_study
from phantomdce.report.results import collect_results

BASE = """
name = "{name}"
seed = {seed}
replicates = 6

[protocol]
snr = 30.0

[tissue]
model = "extended_tofts"
Ktrans = [0.1, 0.3]
ve = [0.2, 0.4]
vp = 0.03

[sweep]
{sweep}

[fit]
fitters = ["nlls_extended_tofts", "llsq_extended_tofts"]
{pipeline}

[recommendation]
id = "{rec_id}"
title = "T"
text = "dt <= 5 s"
knob = "{knob}"
kind = "{kind}"
{extra}
"""


def write(
    tmp_path,
    name,
    *,
    seed=1,
    sweep="dt = [2.0, 5.0, 10.0]\nbat_phase = [0.0, 0.5]",
    pipeline="",
    rec_id=None,
    knob="dt",
    kind="max",
    extra="threshold = 5.0\n",
):
    path = tmp_path / f"{name}.toml"
    path.write_text(
        BASE.format(
            name=name,
            seed=seed,
            sweep=sweep,
            pipeline=pipeline,
            rec_id=rec_id or name,
            knob=knob,
            kind=kind,
            extra=extra,
        )
    )
    return path


@pytest.mark.slow  # an engine run: the default pytest must stay under 4 minutes
def test_study_runs_every_scenario_and_pools_nuisance_axes(tmp_path):
    write(tmp_path, "tres")
    for name, aif, value in [("a_true", "true", "true AIF"), ("a_pop", "population", "pop")]:
        write(
            tmp_path,
            name,
            seed=2,
            sweep="aif_scale = [0.8, 1.2]",
            pipeline=f'[fit.pipeline]\naif = "{aif}"',
            rec_id="aif",
            knob="pipeline.aif",
            kind="category",
            extra=f'knob_value = "{value}"\nrecommended = ["true AIF"]\n',
        )
    study = tmp_path / "study.toml"
    study.write_text(
        'name = "s"\nreplicates = 4\ninclude = ["tres.toml", "a_true.toml", "a_pop.toml"]\n'
    )
    rows = run_study(study, tmp_path / "out")
    assert set(rows) == {"tres", "a_true", "a_pop"}
    assert (tmp_path / "out" / "tres" / "metrics.csv").exists()
    results = {r.recommendation.id: r for r in collect_results(tmp_path / "out")}
    tres = results["tres"]
    assert tres.knob_values == [2.0, 5.0, 10.0]
    row = next(
        r
        for r in tres.rows
        if r.knob_value == 5.0 and r.fitter == "nlls_extended_tofts" and r.parameter == "Ktrans"
    )
    # pooled over the two phases: 4 tissues x 4 replicates (study override) x 2 cases
    assert row.metrics["n_voxels"] == 32
    # pooled CV covers noise and phase; the noise-only CV and the per-phase range are kept
    assert row.metrics["cv_noise_pct"] <= row.metrics["cv_pct"] + 1e-9
    assert row.metrics["rel_bias_case_min"] <= row.metrics["rel_bias_pct"]
    assert row.metrics["rel_bias_pct"] <= row.metrics["rel_bias_case_max"]
    assert row.metrics["rel_bias_ci_low"] <= row.metrics["rel_bias_pct"]
    assert row.metrics["rel_bias_pct"] <= row.metrics["rel_bias_ci_high"]
    aif = results["aif"]
    assert sorted(aif.knob_values) == ["pop", "true AIF"]
    assert {t.truth["Ktrans"] for t in aif.tissues} == {0.1, 0.3}


def test_bad_scenario_in_a_study_fails_before_anything_is_written(tmp_path):
    write(tmp_path, "good")
    bad = write(tmp_path, "bad")
    bad.write_text(bad.read_text().replace("snr = 30.0", "snr = -1.0"))
    study = tmp_path / "study.toml"
    study.write_text('include = ["good.toml", "bad.toml"]\n')
    with pytest.raises(ConfigError, match="bad.toml: protocol.snr = -1.0"):
        run_study(study, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    study.write_text('include = ["good.toml", "missing.toml"]\n')
    with pytest.raises(ConfigError, match="include\\[1\\] = 'missing.toml': no such scenario"):
        load_study(study)


def test_zip_links_sweep_axes():
    sc = parse_scenario(
        {
            "tissue": {"model": "tofts", "Ktrans": 0.1, "ve": 0.2},
            "sweep": {"field_strength": [1.5, 3.0], "snr": [15.0, 30.0], "dt": [2.0, 5.0]},
            "zip": [["field_strength", "snr"]],
        }
    )
    values = [c.values for c in sc.cases()]
    assert len(values) == 4
    assert all((v["field_strength"], v["snr"]) in {(1.5, 15.0), (3.0, 30.0)} for v in values)
    for bad, msg in [
        ([["field_strength"]], "expected a list of lists of at least two"),
        ([["field_strength", "tr"]], "zip\\[0\\] names 'tr': expected a key of \\[sweep\\]"),
    ]:
        with pytest.raises(ConfigError, match=msg):
            parse_scenario(
                {
                    "tissue": {"model": "tofts", "Ktrans": 0.1, "ve": 0.2},
                    "sweep": {"field_strength": [1.5, 3.0], "snr": [15.0, 30.0]},
                    "zip": bad,
                }
            )
    with pytest.raises(ConfigError, match="same length"):
        parse_scenario(
            {
                "tissue": {"model": "tofts", "Ktrans": 0.1, "ve": 0.2},
                "sweep": {"field_strength": [1.5, 3.0], "snr": [15.0]},
                "zip": [["field_strength", "snr"]],
            }
        )


def test_bat_phase_and_aif_scale():
    sc = parse_scenario(
        {
            "tissue": {"model": "tofts", "Ktrans": 0.1, "ve": 0.2},
            "protocol": {"dt": 4.0, "bat_phase": 0.25, "aif_scale": 1.3},
        }
    )
    p = sc.cases()[0].protocol
    assert p.bolus_arrival == pytest.approx((5 + 0.25) * 4.0)
    ref = (
        parse_scenario(
            {
                "tissue": {"model": "tofts", "Ktrans": 0.1, "ve": 0.2},
                "protocol": {"dt": 4.0, "bat_phase": 0.25},
            }
        )
        .cases()[0]
        .protocol
    )
    t = np.linspace(0, 300, 301)
    np.testing.assert_allclose(case_aif(p)(t), 1.3 * case_aif(ref)(t))


@pytest.mark.slow  # an engine run: the default pytest must stay under 4 minutes
def test_report_uses_only_the_study_members_and_refuses_ambiguous_pools(tmp_path):
    write(tmp_path, "tres")
    study = tmp_path / "study.toml"
    study.write_text('include = ["tres.toml"]\n')
    run_study(study, tmp_path / "out")
    # a stray run of another scenario for the same recommendation, left in the directory
    from phantomdce.engine.run import run as run_one

    stray = write(tmp_path, "stray", seed=9, rec_id="tres")
    run_one(stray, tmp_path / "out" / "stray")
    (result,) = collect_results(tmp_path / "out")
    assert result.scenario == "tres"
    # without the study's manifest both runs claim the recommendation: refused
    (tmp_path / "out" / "study.json").unlink()
    with pytest.raises(ValueError, match="needs its own fixed knob_value"):
        collect_results(tmp_path / "out")
