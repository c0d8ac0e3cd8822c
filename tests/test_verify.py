"""A damaged store is detected, named and recomputed, never read as a result (issue 14,
item 1): every unit's output carries a digest, checked on resume, by the report, by the gate
and by ``phantomdce verify``."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from phantomdce.cli import main
from phantomdce.engine.verify import RunDamagedError, verify_run

from test_engine import assert_same, estimates, metrics_without_timing, scenario


@pytest.fixture
def finished(tmp_path):
    path = scenario(tmp_path, replicates=10, chunk=40)  # 80 voxels: chunks 0 and 1
    out = tmp_path / "out"
    assert main(["run", str(path), "-o", str(out), "-q"]) == 0
    return path, out


def _damage(out, how):
    chunk = out / "estimates.zarr" / "case_0001" / "Ktrans" / "0.1"
    if how == "deleted":
        chunk.unlink()
    elif how == "swapped":  # another case's chunk of the same array, valid data
        shutil.copy(out / "estimates.zarr" / "case_0000" / "Ktrans" / "0.1", chunk)
    else:  # truncated
        chunk.write_bytes(chunk.read_bytes()[:40])


@pytest.mark.parametrize("how", ["deleted", "swapped", "truncated"])
def test_a_damaged_chunk_is_named_and_the_same_command_recomputes_it(finished, how, capsys):
    path, out = finished
    before, metrics = estimates(out), metrics_without_timing(out)
    _damage(out, how)
    capsys.readouterr()
    assert main(["verify", str(out)]) == 1
    said = capsys.readouterr().out
    assert "case case_0001, chunk 1" in said and "run the same `phantomdce run` command" in said
    assert "Traceback" not in said
    from phantomdce.report.results import collect_results

    with pytest.raises(RunDamagedError, match="case_0001, chunk 1"):
        collect_results(out)
    # the same command: the damaged unit (and only it) runs again
    assert main(["run", str(path), "-o", str(out), "-q"]) == 0
    err = capsys.readouterr().err
    assert "case case_0001, chunk 1" in err and "recomputing it" in err
    assert err.count("recomputing it") == 1
    assert_same(estimates(out), before)
    assert metrics_without_timing(out) == metrics
    assert verify_run(out).ok
    assert main(["verify", str(out)]) == 0


def test_an_edited_metrics_file_is_refused_by_the_gate_and_rewritten_by_a_rerun(
    finished, tmp_path, capsys
):
    from phantomdce.dro.config import ConfigError
    from phantomdce.engine.gate import check_run, make_baseline

    path, out = finished
    baseline = make_baseline(out)
    text = (out / "metrics.csv").read_text()
    (out / "metrics.csv").write_text(text.replace(",0.", ",0.0", 3))  # looks fine, is not
    with pytest.raises(ConfigError, match="does not match the digest"):
        check_run(out, baseline)
    assert not verify_run(out).ok
    assert main(["run", str(path), "-o", str(out), "-q"]) == 0
    assert (out / "metrics.csv").read_text() == text
    assert check_run(out, baseline) == []


@pytest.mark.slow  # child processes or an engine run: the default pytest stays under 4 minutes
def test_a_damaged_phantom_unit_or_case_node_is_found_and_repaired(tmp_path, capsys):
    from test_engine_phantom import estimates as phantom_estimates
    from test_engine_phantom import phantom

    path = phantom(tmp_path, subjects=2, sweep="slice_mm = [4.0]")
    out = tmp_path / "out"
    assert main(["run", str(path), "-o", str(out), "-q"]) == 0
    before = phantom_estimates(out)
    unit = out / "units" / "case_0000_chunk_00001.zarr"
    (unit / "Ktrans" / "0.0").write_bytes(b"junk")
    node = out / "estimates.zarr" / "case_0000" / "ve" / "0.0"
    node.write_bytes(node.read_bytes()[:30])
    report = verify_run(out)
    assert [(c, k) for c, k, _ in report.damaged] == [("case_0000", 1)]
    assert any("case node case_0000" in p for p in report.problems)
    capsys.readouterr()
    assert main(["run", str(path), "-o", str(out), "-q"]) == 0
    assert "recomputing it" in capsys.readouterr().err
    after = phantom_estimates(out)
    for case in before:
        for k in before[case]:
            np.testing.assert_array_equal(after[case][k], before[case][k])
    assert verify_run(out).ok
