"""One way to do each thing: one configuration error type, one haematocrit default, one
atomic writer, units from one table, collision-free replicate codes (issue 10, part 1)."""

import dataclasses
import inspect
import re
from pathlib import Path

import pytest

from phantomdce.aif import DEFAULT_HCT, cumulative_plasma_aif, plasma_aif
from phantomdce.dro.config import ConfigError
from phantomdce.dro.protocol import Protocol
from phantomdce.fit.pipeline import Pipeline
from phantomdce.phantom.roi import roi_aif

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
