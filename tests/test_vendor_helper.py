"""The vendor's accuracy helper (phantomdce.testing): case selection and failure naming."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from phantomdce.testing import assert_fitter_accuracy, select_cases

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = ROOT / "scenarios" / "esnr2022" / "acquisition_time.toml"


def _readme_vendor_example() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    head = text.index("**In a vendor's own test suite**")
    match = re.search(r"```python\n(.*?)```", text[head:], flags=re.S)
    assert match, "README: no python block after 'In a vendor's own test suite'"
    return match.group(1)


def test_the_readme_vendor_example_passes_as_written():
    code = _readme_vendor_example()
    assert "assert_fitter_accuracy(" in code
    namespace: dict = {}
    cwd = os.getcwd()
    os.chdir(ROOT)  # the example's scenario path is relative to the repository
    try:
        exec(compile(code, "README.md (vendor example)", "exec"), namespace)
        tests = [f for name, f in namespace.items() if name.startswith("test_")]
        assert tests, "the README example defines no test function"
        for test in tests:
            test()
    finally:
        os.chdir(cwd)


def test_failures_are_named_by_their_swept_values():
    with pytest.raises(AssertionError) as info:
        assert_fitter_accuracy(
            "nlls_extended_tofts", SCENARIO, where={"duration": [60, 300]}
        )
    message = str(info.value)
    assert "duration=60 s: Ktrans" in message
    assert "case_0000" not in message
    assert "duration=300 s" not in message  # the recommended setting passes


def test_case_selection():
    from phantomdce.dro.scenario import load_scenario

    sc = load_scenario(SCENARIO)
    assert [c.values["duration"] for c in select_cases(sc, "recommended")] == [300.0]
    assert [c.values["duration"] for c in select_cases(sc, {"duration": [420, 60.0]})] == [
        60.0,
        420.0,
    ]
    assert len(select_cases(sc)) == len(sc.cases())
    with pytest.raises(ValueError, match=r"where\['snr'\].*not swept.*duration"):
        select_cases(sc, {"snr": 20})
    with pytest.raises(ValueError, match=r"keeps no case.*duration: 60, 120"):
        select_cases(sc, {"duration": 301})
    with pytest.raises(ValueError, match="expected a mapping"):
        select_cases(sc, "best")
