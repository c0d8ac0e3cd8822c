"""Protocols and scenario files: expansion and one clear error per bad value."""

import math
from pathlib import Path

import pytest

from phantomdce.cli import main
from phantomdce.dro.config import ConfigError
from phantomdce.dro.protocol import (
    DEFAULT_VFA_AVERAGES,
    MIN_POST_BOLUS_FRAMES,
    MIN_POST_BOLUS_S,
    Protocol,
    preset,
)
from phantomdce.dro.scenario import load_scenario, parse_scenario

BASE = {
    "name": "t",
    "seed": 1,
    "replicates": 2,
    "tissue": {"model": "extended_tofts", "Ktrans": [0.1, 0.2], "ve": 0.3, "vp": [0.02, 0.05]},
}


def scenario(**changes):
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in BASE.items()}
    for key, value in changes.items():
        if "." in key:
            table, sub = key.split(".")
            data.setdefault(table, {})[sub] = value
        else:
            data[key] = value
    return data


def test_esnr2022_preset_has_the_recommended_values():
    p = preset("esnr2022")
    assert p.dt <= 5.0 and p.n_baseline == 5 and p.duration >= 300.0
    assert len(p.flip_angles) >= 3 and min(p.flip_angles) >= 5 and max(p.flip_angles) <= 30
    assert p.injection_rate >= 2.0 and p.saline_flush
    assert p.field_strength in (1.5, 3.0)
    assert p.n_frames == 60 and p.bolus_arrival == 25.0


def test_cartesian_product_of_sweep_axes_in_written_order():
    sc = parse_scenario(scenario(**{"sweep.dt": [2.0, 5.0], "sweep.snr": [10.0, 20.0, 40.0]}))
    cases = sc.cases()
    assert len(cases) == 6
    assert [c.values for c in cases[:3]] == [
        {"dt": 2.0, "snr": 10.0},
        {"dt": 2.0, "snr": 20.0},
        {"dt": 2.0, "snr": 40.0},
    ]
    assert cases[4].protocol.dt == 5.0 and cases[4].protocol.snr == 20.0
    assert cases[4].name == "case_0004"
    assert sc.tissue.size == 4 and sc.n_voxels == 8


def test_no_sweep_gives_one_case_and_hash_tracks_content():
    a = parse_scenario(scenario())
    b = parse_scenario(scenario(seed=2))
    assert len(a.cases()) == 1
    assert a.hash != b.hash
    assert a.hash == parse_scenario(scenario()).hash


def test_a_new_protocol_key_left_unset_keeps_every_stored_hash():
    """Stored runs are refused when their scenario's hash changes: a protocol key added to the
    package (vfa_sigma_ratio, snr_t1_s) must not change the hash of a scenario that does not
    set it. The value was computed with the package before snr_t1_s existed (77e1d06)."""
    data = {
        "name": "hash_pin", "seed": 11, "replicates": 2,
        "protocol": {"preset": "esnr2022", "snr": 25.0},
        "tissue": {"model": "extended_tofts", "Ktrans": [0.1, 0.2], "ve": 0.3, "vp": 0.02},
        "sweep": {"dt": [3.0, 5.0]},
    }
    assert parse_scenario(data).hash == "e58b109d3553b102"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"protocol.dt": -1.0}, "protocol.dt = -1.0: expected a finite number > 0.0 (s)"),
        ({"protocol.dt": 0}, "protocol.dt = 0: expected a finite number > 0.0"),
        ({"protocol.duration": 20.0}, "protocol.duration = 20.0: expected a duration (s) longer"),
        ({"protocol.fa": 90.0}, "protocol.fa = 90.0: expected a finite number > 0.0 and < 90.0"),
        ({"protocol.flip_angles": [5, 0, 30]}, "protocol.flip_angles[1] = 0"),
        ({"protocol.flip_angles": [5, 95]}, "protocol.flip_angles[1] = 95"),
        ({"protocol.aif": "parkr"}, "protocol.aif = 'parkr': expected one of"),
        ({"protocol.dtt": 3.0}, "unknown key 'protocol.dtt' (did you mean 'dt'?)"),
        ({"protocol.snr": math.nan}, "protocol.snr = nan"),
        ({"protocol.b1": math.inf}, "protocol.b1 = inf"),
        ({"protocol.n_baseline": 2.5}, "protocol.n_baseline = 2.5: expected an integer"),
        ({"protocol.dt": "5"}, "protocol.dt = '5'"),
        ({"protocol.preset": "qiba"}, "protocol.preset = 'qiba'"),
        ({"tissue.model": "toft"}, "tissue.model = 'toft': expected one of"),
        ({"tissue.Ktrans": [0.1, math.inf]}, "tissue.Ktrans[1] = inf"),
        ({"tissue.ve": -0.1}, "tissue.ve[0] = -0.1"),
        ({"tissue.fp": 50.0}, "tissue.fp = 50.0: 'fp' is not a parameter of the 'extended_tofts'"),
        ({"tissue.ktrans": 0.1}, "unknown key 'tissue.ktrans' (did you mean 'Ktrans'?)"),
        ({"tissue.ve": 0.99}, "expected ve + vp <= 1"),
        ({"sweep.dt": []}, "sweep.dt = []: expected a non-empty list"),
        ({"sweep.dt": [2.0, -3.0]}, "sweep.dt[1] = -3.0: expected a finite number > 0.0"),
        ({"sweep.colour": [1]}, "unknown key 'sweep.colour'"),
        ({"sweep.dt": [5.0, 100.0]}, "sweep case 1 (dt=100.0): protocol.duration = 300.0"),
        ({"replicates": 0}, "replicates = 0: expected an integer >= 1"),
        ({"protocol.field_strength": 7.0}, "protocol.field_strength = 7.0: expected one of [1.5"),
        ({"sweep.field_strength": [1.5, 2.0]}, "sweep.field_strength[1] = 2.0: expected one of"),
        ({"protocol.b1": 2.5, "protocol.fa": 80.0}, "protocol.b1 = 2.5: the actual flip angle"),
        ({"protocol.duration": 1e7}, "protocol.duration = 10000000.0: expected a finite number"),
        ({"seed": -1}, "seed = -1: expected an integer >= 0"),
        ({"extra": 1}, "unknown key 'extra'"),
    ],
)
def test_each_bad_value_gets_one_clear_error(changes, message):
    with pytest.raises(ConfigError) as info:
        parse_scenario(scenario(**changes))
    assert message in str(info.value)


def test_missing_model_parameter():
    data = scenario()
    del data["tissue"]["vp"]
    with pytest.raises(ConfigError, match=r"needs \['Ktrans', 've', 'vp'\]; missing \['vp'\]"):
        parse_scenario(data)


def test_protocol_replace_is_checked():
    p = Protocol()
    assert p.replace(dt=2.0).n_frames == 150
    with pytest.raises(ConfigError, match="protocol.tr"):
        p.replace(tr=-0.004)


def test_bad_toml_and_bad_values_fail_before_anything_is_written(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text(
        'name = "x"\n[protocol]\ndt = -2.0\n[tissue]\nmodel="tofts"\nKtrans=0.1\nve=0.2\n'
    )
    out = tmp_path / "out.zarr"
    assert main(["simulate", str(bad), "-o", str(out), "-q"]) == 2
    assert "protocol.dt = -2.0" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "out.zarr.partial").exists()
    broken = tmp_path / "broken.toml"
    broken.write_text("name = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_scenario(broken)


# --- issue 11: a window after the bolus, sweeps that move only their knob, VFA noise ------

ESNR = Path(__file__).resolve().parents[1] / "scenarios" / "esnr2022"


def test_case_with_no_window_after_the_bolus_is_refused():
    # six frames at dt 10 s, bolus at 50 s: nothing after the arrival (issue 11, item 1a)
    with pytest.raises(ConfigError) as info:
        parse_scenario(scenario(**{"protocol.duration": 52.0, "protocol.dt": 10.0}))
    msg = str(info.value)
    assert "sweep case 0 (base protocol): protocol.duration = 52 s with dt = 10 s" in msg
    assert "leaves 0 frames (2 s) after the bolus arrival at 50 s" in msg
    assert f">= {MIN_POST_BOLUS_FRAMES} frames and >= {MIN_POST_BOLUS_S:g} s" in msg
    # frames enough but too short a time, and the case of a sweep is named
    short = r"sweep case 1 \(duration=40.0\).* leaves 4 frames \(20 s\)"
    with pytest.raises(ConfigError, match=short):
        parse_scenario(scenario(**{"protocol.dt": 4.0, "sweep.duration": [300.0, 40.0]}))
    # exactly the minimum is accepted
    n, seconds = Protocol.from_mapping({"duration": 55.0}).post_bolus_window
    assert (n, seconds) == (5, 30.0)
    parse_scenario(scenario(**{"protocol.duration": 55.0}))


def test_post_bolus_s_keeps_the_window_after_the_arrival():
    proto = Protocol.from_mapping({"post_bolus_s": 275.0, "dt": 15.0, "bat_phase": 0.5})
    assert proto.bolus_arrival == 82.5 and proto.duration == 82.5 + 275.0
    assert proto.post_bolus_window[1] == 275.0
    with pytest.raises(ConfigError, match=r"protocol.duration = 300.0 with protocol.post_bolus_s"):
        Protocol.from_mapping({"post_bolus_s": 275.0, "duration": 300.0})
    with pytest.raises(ConfigError, match=r"protocol.post_bolus_s = -1.0: expected"):
        Protocol.from_mapping({"post_bolus_s": -1.0})


def test_temporal_resolution_sweep_moves_only_dt():
    sc = load_scenario(ESNR / "temporal_resolution.toml")
    windows = {c.protocol.duration - c.protocol.bolus_arrival for c in sc.cases()}
    assert windows == {275.0}  # was 295 s at dt 1 s down to 225 s at dt 15 s
    assert {c.protocol.n_baseline for c in sc.cases()} == {5}


def _dro_scenarios():
    import tomllib

    out = []
    for path in sorted(ESNR.glob("*.toml")):
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
        if "phantom" not in raw:
            out.append(pytest.param(path, raw, id=path.stem))
    return out


@pytest.mark.parametrize(("path", "raw"), _dro_scenarios())
def test_every_study_sweep_keeps_the_window_after_the_bolus_or_says_so(path, raw):
    sc = load_scenario(path)
    windows = {round(c.protocol.duration - c.protocol.bolus_arrival, 6) for c in sc.cases()}
    knob = raw["recommendation"]["knob"]
    if len(windows) > 1 and knob != "duration":
        lo, hi = min(windows), max(windows)
        assert f"{lo:g}-{hi:g} s are acquired after the arrival" in raw["recommendation"]["notes"]


@pytest.mark.parametrize("stem", ["injection_rate", "saline_flush"])
def test_injection_and_flush_scenarios_are_pairs_of_aif_sources(stem):
    import tomllib

    runs = {}
    for name in (stem, f"{stem}_population"):
        raw = tomllib.loads((ESNR / f"{name}.toml").read_text(encoding="utf-8"))
        runs[raw["recommendation"]["option"]] = (raw, load_scenario(ESNR / f"{name}.toml"))
    assert set(runs) == {"carotid ROI", "population AIF"}
    (car, car_sc), (pop, pop_sc) = runs["carotid ROI"], runs["population AIF"]
    assert car["recommendation"]["id"] == pop["recommendation"]["id"]
    assert car["fit"]["pipeline"]["aif"] == "measured"
    assert pop["fit"]["pipeline"]["aif"] == "population"
    assert pop["fit"]["pipeline"].get("population_injection", False) is False
    # the same subjects and noise: the DROs differ only in their names
    assert car_sc.seed == pop_sc.seed and car_sc.protocol == pop_sc.protocol
    assert car_sc.sweep == pop_sc.sweep and car_sc.protocol.arterial_voxels > 0
    for study in ("esnr2022.toml", "quick.toml"):
        text = (ESNR.parent / study).read_text(encoding="utf-8")
        assert f'"esnr2022/{stem}_population.toml"' in text and '"esnr2022/vfa_noise.toml"' in text


def test_vfa_averages_is_a_checked_protocol_key_swept_by_vfa_noise():
    assert Protocol().vfa_averages == DEFAULT_VFA_AVERAGES == 1
    assert Protocol().as_attrs()["vfa_averages"] == 1
    for bad in (0, 2.0, True, 1000):
        with pytest.raises(ConfigError, match=rf"protocol.vfa_averages = {bad!r}: expected an"):
            Protocol.from_mapping({"vfa_averages": bad})
    sc = load_scenario(ESNR / "vfa_noise.toml")
    assert [c.protocol.vfa_averages for c in sc.cases()] == [1, 2, 4, 8, 16]
    assert sc.recommendation["kind"] == "min" and sc.recommendation["knob"] == "vfa_averages"


def test_phantom_aif_source_scenarios_have_enough_subjects_and_quick_caps_them():
    import tomllib

    from phantomdce.engine.study import load_study
    from phantomdce.phantom.scenario import cap_subjects

    for name in ("phantom_aif_carotid", "phantom_aif_population"):
        raw = tomllib.loads((ESNR / f"{name}.toml").read_text(encoding="utf-8"))
        assert raw["phantom"]["subjects"] >= 20
        assert cap_subjects(raw, 5)["phantom"]["subjects"] == 5
        assert raw["phantom"]["subjects"] >= 20  # not changed in place
        assert cap_subjects(raw, None) is raw
    assert cap_subjects({"phantom": {"subjects": 2}}, 5)["phantom"]["subjects"] == 2
    assert load_study(ESNR.parent / "quick.toml").phantom_subjects == 3
    assert load_study(ESNR.parent / "esnr2022.toml").phantom_subjects is None


def test_a_phantom_subject_whose_bolus_arrives_late_must_keep_a_window():
    from phantomdce.phantom.scenario import subject_protocol

    # arrival 20 s, 36 s after it; a subject arriving more than 6 s late keeps < 30 s
    short = Protocol.from_mapping({"dt": 4.0, "duration": 56.0})
    short.check_post_bolus_window()  # the scenario itself is long enough
    with pytest.raises(ConfigError, match=r"subject \d+ \(phantom.subject_aif = 'varied'\)"):
        for s in range(12):
            subject_protocol(short, 7, s, "varied")


@pytest.mark.slow  # an engine or phantom run: the default pytest stays under 4 minutes
def test_a_study_caps_the_subjects_of_its_phantom_scenarios(tmp_path):
    import json

    from phantomdce.engine.study import run_study
    from phantomdce.phantom.scenario import parse_phantom_scenario

    scenario = """
name = "capped"
seed = 5
replicates = 1

[protocol]
dt = 5.0
duration = 120.0
snr = 30.0

[phantom]
shape = [8, 64, 64]
subjects = 3
subject_aif = "varied"

[acquisition]
in_plane_mm = 4.0
slice_mm = 4.0

[fit]
fitters = ["llsq_extended_tofts"]
"""
    (tmp_path / "p.toml").write_text(scenario)
    (tmp_path / "study.toml").write_text('include = ["p.toml"]\nphantom_subjects = 2\n')
    run_study(tmp_path / "study.toml", tmp_path / "out")
    run = json.loads((tmp_path / "out" / "capped" / "run.json").read_text())
    assert run["phantom"]["subjects"] == 2
    assert "phantom_subjects" not in run["scenario"]  # a study key, not the scenario's
    # the cap is part of the run's identity: the study's resume check accepts its own run
    manifest = json.loads((tmp_path / "out" / "study.json").read_text())
    assert manifest["scenarios"]["capped"] == run["scenario_hash"]
    full = parse_phantom_scenario({"name": "capped", **_toml(scenario)})
    assert run["scenario_hash"] != full.hash
    run_study(tmp_path / "study.toml", tmp_path / "out")  # resumes: the same capped run
    with pytest.raises(ConfigError, match="phantom_subjects = 0: expected an integer >= 1"):
        (tmp_path / "bad.toml").write_text('include = ["p.toml"]\nphantom_subjects = 0\n')
        run_study(tmp_path / "bad.toml", tmp_path / "out2")


def _toml(text):
    import tomllib

    return tomllib.loads(text)


def test_toml_text_round_trips_with_bare_keys_where_toml_allows_them():
    import tomllib

    import numpy as np

    from phantomdce.dro.config import toml_text

    data = {
        "name": "a b",
        "seed": np.int64(3),
        "protocol": {"dt": np.float64(2.5), "flip_angles": [5.0, 15.0], "saline_flush": True},
        "sweep": {"scanner.fa": [5.0, 10.0], "snr": [10.0, float("inf")]},
        "phantom": {"session_variation": {"bolus_arrival_sd_s": 2.0}},
    }
    text = toml_text(data)
    assert tomllib.loads(text) == data
    assert 'name = "a b"' in text.splitlines() and "[protocol]" in text.splitlines()
    assert '"scanner.fa" = [5.0, 10.0]' in text.splitlines()
    assert "[phantom.session_variation]" in text.splitlines()
