"""One way to do each thing: one configuration error type, one haematocrit default, one
atomic writer, units from one table, collision-free replicate codes (issue 10, part 1)."""

import dataclasses
import inspect
import os
import re
import tomllib
from pathlib import Path

import numpy as np
import pytest

from phantomdce import files
from phantomdce.aif import DEFAULT_HCT, cumulative_plasma_aif, plasma_aif
from phantomdce.dro import protocol as protocol_module
from phantomdce.dro.config import ConfigError, did_you_mean
from phantomdce.dro.protocol import PRESETS, Protocol
from phantomdce.dro.scenario import parse_scenario
from phantomdce.files import write_atomic
from phantomdce.fit.pipeline import Pipeline
from phantomdce.fit.roi import roi_aif
from phantomdce.params import PARAMETERS
from phantomdce.phantom.scenario import replicate_codes, subject_of

SRC = Path(__file__).resolve().parents[1] / "src" / "phantomdce"


@pytest.mark.parametrize(
    "values, message",
    [
        ({"hctt": 0.3}, r"unknown key 'fit\.pipeline\.hctt' \(did you mean 'hct'\?\)"),
        ({"hct": 1.2}, r"fit\.pipeline\.hct = 1\.2: expected a fraction in \[0, 1\)"),
        ({"hct": "0.3"}, r"fit\.pipeline\.hct = '0\.3': expected a finite number"),
        ({"aif": "carotid"}, r"fit\.pipeline\.aif = 'carotid': expected one of"),
        ({"b1": True}, r"fit\.pipeline\.b1 = True: expected a finite number"),
        ({"population_injection": "yes"}, r"fit\.pipeline\.population_injection = 'yes'"),
    ],
)
def test_pipeline_settings_raise_the_configuration_error_with_the_key_path(values, message):
    with pytest.raises(ConfigError, match=message):
        Pipeline.from_mapping(values, path="fit.pipeline")


def test_haematocrit_has_one_default():
    assert DEFAULT_HCT == 0.42
    assert Protocol().hct == DEFAULT_HCT
    assert {f.name: f.default for f in dataclasses.fields(Pipeline)}["hct"] == DEFAULT_HCT
    for func in (plasma_aif, cumulative_plasma_aif, roi_aif):
        assert inspect.signature(func).parameters["hct"].default == DEFAULT_HCT, func
    # no module restates a haematocrit as a default (``hct: float = 0.42``, ``hct=0.42``);
    # 0.0 (the blood curve of a population AIF) is not a haematocrit
    restated = re.compile(r"\bhct\b\s*(?::\s*[\w |]+)?=\s*0?\.\d*[1-9]")
    offenders = [
        f"{p.relative_to(SRC)}:{i}"
        for p in sorted(SRC.rglob("*.py"))
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if restated.search(line) and ">>>" not in line and not line.lstrip().startswith("#")
    ]
    assert offenders == []


def test_one_atomic_writer_that_syncs_and_leaves_nothing_behind(tmp_path, monkeypatch):
    target = tmp_path / "run.json"
    write_atomic(target, "old")
    synced = []
    monkeypatch.setattr(files.os, "fsync", lambda fd: synced.append(fd))
    write_atomic(target, b"new")
    assert target.read_text() == "new" and len(synced) == 1
    assert (target.stat().st_mode & 0o777) == (0o666 & ~_umask())  # not mkstemp's 0600

    def crash(fd):
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "fsync", crash)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, "half")
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]
    # every other module writes through it: no second rename-into-place helper
    others = [
        str(p.relative_to(SRC))
        for p in sorted(SRC.rglob("*.py"))
        if p.name != "files.py" and re.search(r"os\.replace\(|\.part\b|mkstemp\(", p.read_text())
    ]
    assert others == []


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_phantom_replicate_codes_cannot_collide():
    # 3 subjects x 1001 acquisitions: the old code (replicate + 1000 * subject) gave subject
    # 0's replicate 999 + 1 the code of subject 1's replicate 0 once replicates > 1000
    reps = 1001
    per_subject = [np.arange(reps)] * 3
    codes = replicate_codes(per_subject, reps)
    assert np.unique(codes).size == 3 * reps
    np.testing.assert_array_equal(subject_of(codes, reps), np.repeat([0, 1, 2], reps))
    with pytest.raises(ValueError, match="subject 1: replicate indices 0..5: expected 0..4"):
        replicate_codes([np.arange(5), np.arange(6)], 5)


def test_presets_are_real_and_packaged_data_exists(monkeypatch):
    # the preset states the recommended values itself (not "whatever the defaults are")
    assert dict(PRESETS["esnr2022"]) == {
        "dt": 5.0,
        "n_baseline": 5,
        "duration": 300.0,
        "flip_angles": (5.0, 15.0, 30.0),
        "injection_rate": 2.0,
        "saline_flush": True,
        "field_strength": 3.0,
    }
    with pytest.raises(TypeError):
        PRESETS["esnr2022"]["dt"] = 1.0  # read-only
    # a scenario's unknown preset is refused with the list read from PRESETS
    extra = {**PRESETS, "qiba": {"dt": 2.0}}
    monkeypatch.setattr(protocol_module, "PRESETS", extra)
    tissue = {"model": "tofts", "Ktrans": [0.1], "ve": [0.2]}
    assert parse_scenario({"protocol": {"preset": "qiba"}, "tissue": tissue}).protocol.dt == 2.0
    with pytest.raises(ConfigError, match=r"protocol.preset = 'nope': .*\['esnr2022', 'qiba'\]"):
        parse_scenario({"protocol": {"preset": "nope"}, "tissue": tissue})
    # every package-data pattern of pyproject.toml matches a file
    setup = tomllib.loads((SRC.parents[1] / "pyproject.toml").read_text())["tool"]["setuptools"]
    for package, patterns in setup.get("package-data", {}).items():
        for pattern in patterns:
            assert list((SRC.parent / package).glob(pattern)), f"{package}: {pattern}"


def test_units_of_parameters_are_read_from_the_parameter_table():
    # a literal {"Ktrans": "/min", ...} beside params.PARAMETERS is a second source of truth
    names = "|".join(PARAMETERS)
    literal = re.compile(rf"[\"'](?:{names})[\"']\s*:\s*[\"']")
    offenders = [
        f"{p.relative_to(SRC)}:{i}"
        for p in sorted(SRC.rglob("*.py"))
        if p.name != "params.py"
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if literal.search(line)
    ]
    assert offenders == []


def test_csv_is_written_with_the_csv_module():
    # a CSV header or row joined by hand ("case,chunk,...\n", f"{t}\t{c}") breaks on a
    # delimiter in a value; TSV (aif.tsv) too
    by_hand = re.compile(
        r"[\"'][\w ]+(?:,[\w ]+){2,}\\n[\"']|[\"'](?:,|\\t)[\"']\.join\("
        r"|[\"'][\w ]+(?:\\t[\w ]+)+[\"']|\}\\t\{"
    )
    offenders = [
        f"{p.relative_to(SRC)}:{i}"
        for p in sorted(SRC.rglob("*.py"))
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if by_hand.search(line)
    ]
    assert offenders == []


def test_one_did_you_mean_helper():
    users = sorted(
        str(p.relative_to(SRC)) for p in SRC.rglob("*.py") if "get_close_matches" in p.read_text()
    )
    assert users == ["dro/config.py"]
    assert did_you_mean("dtt", ["dt", "snr"]) == " (did you mean 'dt'?)"
    assert did_you_mean("xyz", ["dt", "snr"]) == ""
