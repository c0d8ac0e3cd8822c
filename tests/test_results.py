"""What the report reads from stored runs: subject blocks, between-subject spread, tissue noise."""

from __future__ import annotations

import math

import numpy as np
import pytest

from phantomdce.report.model import Criterion, TissueRow
from phantomdce.report.results import collect_results
from phantomdce.report.verdict import FAILS, MEETS, judge

from test_phantom import PHANTOM_SCENARIO
from test_verdict import make_result, metrics


@pytest.mark.slow  # an engine or phantom run: the default pytest stays under 4 minutes
def test_phantom_subjects_are_the_bootstrap_blocks_and_their_spread_is_in_the_cv(tmp_path):
    from phantomdce.engine.run import run

    text = (
        PHANTOM_SCENARIO.format(name="subj")
        .replace("subjects = 1", 'subjects = 3\nsubject_aif = "varied"')
        .replace("slice_mm = [2.0, 4.0]", "slice_mm = [4.0]")
        .replace('["llsq_extended_tofts"]', '["llsq_extended_tofts"]\n\n[fit.pipeline]\n'
                 'aif = "population"')
    )  # fmt: skip
    (tmp_path / "s.toml").write_text(text)
    run(tmp_path / "s.toml", tmp_path / "out")
    (result,) = collect_results(tmp_path / "out")
    row = next(r for r in result.rows if r.parameter == "Ktrans")
    m = row.metrics
    # three subjects whose AIFs differ: their mean errors spread, and the CV covers it
    assert math.isfinite(m["cv_subject_pct"]) and m["cv_subject_pct"] > 1.0
    assert m["cv_pct"] >= m["cv_subject_pct"]
    # the CI resamples the 3 subjects, not the 6 acquisitions as if independent: with AIFs
    # that differ between subjects it is the wider one
    from phantomdce import open_results
    from phantomdce.engine.metrics import block_bootstrap_bias_ci

    ds = open_results(tmp_path / "out")["case_0000"].to_dataset()
    ok = ds["success"].values[0]
    rel = np.where(ok, 100 * (ds["Ktrans"].values[0] / ds["true_Ktrans"].values - 1), np.nan)
    lo, hi = block_bootstrap_bias_ci(rel, ds["replicate"].values, seed=0)
    assert m["rel_bias_ci_high"] - m["rel_bias_ci_low"] > hi - lo
    assert not result.tissue_grid


def test_a_tissue_fails_only_when_its_data_show_it():
    # 10 of 24 tissues at +12% bias: outside +-10% by 2 points, but with a standard error of
    # 3 points that is sampling noise; at +20% +- 3 it is not
    def tissue_error(bias):
        return lambda rb, t: bias if t["Ktrans"] >= 0.2 and t["vp"] == 0.05 else 1.0

    def with_se(result, se):
        result.tissues = [
            TissueRow(t.knob_value, t.fitter, t.parameter, t.truth, t.mean_rel_error_pct,
                      t.cv_pct, t.n, t.failure_rate, t.tissue, se, 1.0)
            for t in result.tissues
        ]  # fmt: skip
        return result

    table = lambda f, p, v: metrics(1.0, 5.0)  # noqa: E731
    noisy = with_se(make_result(table, [5], tissue_error=tissue_error(12.0)), 3.0)
    assert judge(noisy, fitter="lsq").setting(5).status == MEETS
    clear = with_se(make_result(table, [5], tissue_error=tissue_error(20.0)), 3.0)
    s = judge(clear, fitter="lsq").setting(5)
    assert s.status == FAILS and s.reasons[0].code == "tissues"
    assert "Ktrans bias 20.0 ± 3.0%" in str(s.reasons[0])
    # without a standard error (one replicate) the point estimate decides
    bare = make_result(table, [5], tissue_error=tissue_error(12.0))
    assert judge(bare, Criterion(), fitter="lsq").setting(5).status == FAILS
    with pytest.raises(ValueError):
        Criterion(min_tissue_fraction=1.5)
