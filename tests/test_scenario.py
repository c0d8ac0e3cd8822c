"""Protocols and scenario files: expansion and one clear error per bad value."""

import math

import pytest

from phantomdce.cli import main
from phantomdce.dro.config import ConfigError
from phantomdce.dro.protocol import Protocol, preset
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
