"""The CI gate never passes vacuously: damaged metrics and uncovered fitters are refused."""

from __future__ import annotations

import shutil

import pytest

from phantomdce.cli import main
from phantomdce.dro.config import ConfigError
from phantomdce.engine.gate import check_run, make_baseline
from phantomdce.engine.run import run

from test_engine import scenario


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gate")
    run(scenario(tmp, replicates=4), tmp / "run")
    return tmp / "run"


def damaged(finished, tmp_path, edit):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    path = out / "metrics.csv"
    path.write_text(edit(path.read_text()))
    return out


def _cut_first_row(text: str, keep: float) -> str:
    header_end = text.index("\n") + 1
    row_end = text.index("\n", header_end)
    return text[: header_end + int((row_end - header_end) * keep)]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda text: "", "is empty or damaged"),  # a disk that filled: 0 bytes
        (lambda text: text.splitlines()[0] + "\n", "holds no metrics rows"),
        # the first row cut in its middle (fields lost), then a line break
        (lambda text: _cut_first_row(text, keep=0.5) + "\n", "cut short"),
        # cut inside the last field of a row, as a disk that filled mid-number: the row still
        # parses (``0.93`` of ``0.9345``), but the file has no final line break
        (lambda text: text.rstrip("\n")[:-2], "cut short"),
        (
            lambda text: "\n".join(
                line for line in text.splitlines() if ",llsq_extended_tofts," not in line
            ) + "\n",
            "has no rows for llsq_extended_tofts",
        ),
    ],
)
def test_a_baseline_and_a_check_refuse_damaged_metrics(finished, tmp_path, capsys, edit, message):
    good = make_baseline(finished)
    out = damaged(finished, tmp_path, edit)
    with pytest.raises(ConfigError, match=message):
        make_baseline(out)
    with pytest.raises(ConfigError, match=message):
        check_run(out, good)
    # the command line says so in one line and writes no baseline
    assert main(["baseline", str(out), "-o", str(tmp_path / "b.json")]) != 0
    assert not (tmp_path / "b.json").exists()
    assert message in capsys.readouterr().err


def test_the_check_fails_for_a_fitter_the_baseline_does_not_cover(finished):
    baseline = make_baseline(finished)
    assert check_run(finished, baseline) == []
    baseline["metrics"] = [r for r in baseline["metrics"] if r["fitter"] != "llsq_extended_tofts"]
    found = check_run(finished, baseline)
    assert [r.metric for r in found] == ["not in the baseline"]
    assert "llsq_extended_tofts" in str(found[0])
