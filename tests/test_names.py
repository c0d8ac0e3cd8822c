"""Scenario names name folders inside the output folder: none may escape it."""

from __future__ import annotations

import pytest

from phantomdce.dro.config import ConfigError
from phantomdce.dro.scenario import check_name, parse_scenario
from phantomdce.engine.study import run_study

from test_engine import scenario
from test_phantom import PHANTOM_SCENARIO

ESCAPING = ["../../X", "/abs/path", "a/b", "a\\\\b", "..", ".hidden", "", "a..b"]


@pytest.mark.parametrize("name", ESCAPING)
def test_a_name_that_could_leave_the_output_folder_is_refused(name):
    with pytest.raises(ConfigError, match=r"^name = .*expected a plain name"):
        check_name("name", name)
    with pytest.raises(ConfigError, match="^name = "):
        parse_scenario({"name": name})


def test_a_study_member_named_to_escape_is_refused_before_anything_is_written(tmp_path):
    text = scenario(tmp_path).read_text()
    (tmp_path / "evil.toml").write_text(text.replace('name = "engine"', 'name = "../../escaped"'))
    (tmp_path / "study.toml").write_text('include = ["evil.toml"]\n')
    with pytest.raises(ConfigError, match="name = '../../escaped'"):
        run_study(tmp_path / "study.toml", tmp_path / "out" / "deep")
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "out").exists()


def test_a_phantom_scenario_name_is_checked_too(tmp_path):
    from phantomdce.engine.run import run

    (tmp_path / "p.toml").write_text(PHANTOM_SCENARIO.format(name="/tmp/abs"))
    with pytest.raises(ConfigError, match="name = '/tmp/abs'"):
        run(tmp_path / "p.toml", tmp_path / "out")
