"""Issue 15 part 1: the dynamic flip angle swept at a fixed receiver noise.

The scenarios' SNR at each angle against the SPGR ratio written out here, dS/dC of the SPGR
at the AIF peak against finite differences of :func:`phantomdce.signal.spgr`, and the
``"range"`` verdict on synthetic metrics whose answer is known by construction.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from phantomdce.dro.config import ConfigError
from phantomdce.dro.scenario import load_scenario
from phantomdce.dro.simulate import arterial_truth
from phantomdce.report.figures import flip_angle_sensitivity, spgr_concentration_sensitivity
from phantomdce.report.model import (
    Criterion,
    KnobRow,
    Recommendation,
    RecommendationResult,
    TissueRow,
)
from phantomdce.report.results import parse_recommendation
from phantomdce.report.verdict import (
    FAILS,
    MEETS,
    MEETS_CI_CROSSES,
    NOT_ESTIMABLE,
    judge,
    meeting_runs,
    tissue_loosest,
)
from phantomdce.report.words import verdict_summary
from phantomdce.signal import native_t1, spgr

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = {
    "3t": (ROOT / "scenarios/esnr2022/flip_angle_3t.toml", 3.0, 30.0),
    "1p5t": (ROOT / "scenarios/esnr2022/flip_angle_1p5t.toml", 1.5, 15.0),
}


def spgr_by_hand(fa_deg: float, tr: float, t1: float) -> float:
    """sin(a) (1 - E1) / (1 - cos(a) E1), E1 = exp(-TR / T1): the SPGR signal per unit M0."""
    a = math.radians(fa_deg)
    e1 = math.exp(-tr / t1)
    return math.sin(a) * (1.0 - e1) / (1.0 - math.cos(a) * e1)


# --------------------------------------------------------------------------- scenarios


@pytest.mark.parametrize("which", sorted(SCENARIOS))
def test_snr_at_each_angle_is_the_spgr_ratio(which):
    path, field, reference_snr = SCENARIOS[which]
    scenario = load_scenario(path)
    cases = scenario.cases()
    angles = [c.values["scanner.fa"] for c in cases]
    assert min(angles) <= 5.0 and max(angles) >= 30.0 and 15.0 in angles
    t1 = {3.0: 1.5, 1.5: 1.2}[field]  # native tumour T1 (s) the scanner model refers to
    assert native_t1("tumour", field) == t1
    sigmas = []
    for case in cases:
        p = case.protocol
        fa = case.values["scanner.fa"]
        expected = reference_snr * spgr_by_hand(fa, 0.004, t1) / spgr_by_hand(15.0, 0.004, t1)
        assert p.snr == pytest.approx(expected, rel=1e-12)
        assert p.fa == fa and p.tr == 0.004 and p.field_strength == field
        # what must not move with the angle: frame time and the recommended VFA T1 map,
        # whose noise is the receiver's (same sigma as a dynamic frame)
        assert p.dt == pytest.approx(5.0, rel=1e-12)
        assert p.flip_angles == (5.0, 15.0, 30.0)
        assert p.vfa_sigma_ratio == 1.0
        sigmas.append(spgr_by_hand(fa, 0.004, t1) / p.snr)  # noise SD per unit M0
    # the receiver fixes the noise SD: the same at every angle
    np.testing.assert_allclose(sigmas, sigmas[0], rtol=1e-12)


def test_scenarios_are_one_recommendation_with_two_options():
    recs = []
    for path, _, _ in SCENARIOS.values():
        raw = tomllib.loads(path.read_text())
        rec, fixed, _ = parse_recommendation(raw["recommendation"], str(path))
        recs.append((rec, raw["recommendation"]["option"]))
        assert rec.kind == "range" and rec.knob == "scanner.fa"
    assert {r.id for r, _ in recs} == {"flip_angle"}
    assert sorted(o for _, o in recs) == ["1.5 T", "3 T"]
    for study in ("esnr2022.toml", "quick.toml"):
        text = (ROOT / "scenarios" / study).read_text()
        assert '"esnr2022/flip_angle_3t.toml"' in text
        assert '"esnr2022/flip_angle_1p5t.toml"' in text


# --------------------------------------------------------------------------- dS/dC


def finite_difference(fa, tr, r10, c, r1, h=1e-5):
    up = spgr(r10 + r1 * (c + h), fa=fa, tr=tr)
    down = spgr(r10 + r1 * (c - h), fa=fa, tr=tr)
    return (up - down) / (2 * h)


@pytest.mark.parametrize("fa", [2.0, 5.0, 10.0, 15.0, 25.0, 35.0, 60.0])
@pytest.mark.parametrize("c", [0.0, 1.0, 5.0, 12.0])
def test_dsdc_equals_finite_differences(fa, c):
    got = spgr_concentration_sensitivity(fa, 0.004, 1 / 1.66, c, 4.5, m0=1000.0)
    expected = 1000.0 * finite_difference(fa, 0.004, 1 / 1.66, c, 4.5)
    assert float(got) == pytest.approx(float(expected), rel=1e-6)


def test_dsdc_at_the_aif_peak_of_the_3t_scenario():
    scenario = load_scenario(SCENARIOS["3t"][0])
    protocols = [c.protocol for c in scenario.cases()]
    sens = flip_angle_sensitivity(protocols)
    for i, p in enumerate(protocols):
        _, cb, _ = arterial_truth(p)
        peak = float(np.max(cb))
        r10 = 1.0 / native_t1("blood", 3.0)
        assert sens["peak_blood_mM"][i] == pytest.approx(peak)
        fd = finite_difference(p.fa, p.tr, r10, peak, p.relaxivity)
        assert sens["dsdc_peak_per_m0"][i] == pytest.approx(float(fd), rel=1e-6)
        fd0 = finite_difference(p.fa, p.tr, r10, 0.0, p.relaxivity)
        assert sens["dsdc_baseline_per_m0"][i] == pytest.approx(float(fd0), rel=1e-6)
        sigma = spgr_by_hand(p.fa, p.tr, 1.5) / p.snr
        assert sens["sigma_per_m0"][i] == pytest.approx(sigma, rel=1e-9)
        # the scanner sets one receiver SD: the carotid voxels' noise is the tumour's
        assert p.snr_t1_s == 1.5 and sens["arterial_sigma_ratio"][i] == pytest.approx(1.0)
        assert sens["noise_equivalent_peak_mM"][i] == pytest.approx(sigma / float(fd), rel=1e-6)
    # blood at the peak (R1 ~ 22 /s at ~5 mM) saturates: the slope grows with the angle over
    # 5-35 deg, while before contrast the slope falls past ~8 deg
    order = np.argsort(sens["fa_deg"])
    assert np.all(np.diff(sens["dsdc_peak_per_m0"][order]) > 0)
    assert sens["dsdc_baseline_per_m0"][order][-1] < sens["dsdc_baseline_per_m0"][order][1]


# --------------------------------------------------------------------------- range verdict


GRID = [{"Ktrans": k, "ve": v} for k in (0.05, 0.1, 0.2, 0.4) for v in (0.1, 0.25, 0.4)]


def metrics(rel_bias: float, cv: float, half_ci: float = 1.0, failure: float = 0.0) -> dict:
    return {
        "n_voxels": 100.0,
        "n_success": 100.0 * (1 - failure),
        "failure_rate": failure,
        "rel_bias_pct": rel_bias,
        "cv_pct": cv,
        "rel_bias_ci_low": rel_bias - half_ci,
        "rel_bias_ci_high": rel_bias + half_ci,
    }


def range_result(table: dict[float, dict], *, kind: str = "range", bad_tissue_at=()) -> Any:
    rec = Recommendation(
        id="flip_angle",
        title="Dynamic flip angle",
        text="as low as possible",
        knob="scanner.fa",
        knob_label="dynamic flip angle (deg)",
        kind=kind,
        threshold=None,
        recommended=[5.0],
        parameters=["Ktrans", "ve"],
    )
    rows, tissues = [], []
    for value, m in table.items():
        for p in ("Ktrans", "ve"):
            rows.append(KnobRow(value, "f", p, m))
            for i, t in enumerate(GRID):
                err = 30.0 if (value in bad_tissue_at and i == 0) else m["rel_bias_pct"]
                row = TissueRow(value, "f", p, t, err, m["cv_pct"], 50, m["failure_rate"], i)
                tissues.append(dataclasses.replace(row, rel_bias_se_pct=0.5, cv_se_pct=0.5))
    # knob values in an unsorted order: the verdict sorts them
    return RecommendationResult(rec, "flip.toml", [35.0, 5.0, 20.0, 10.0, 15.0, 25.0], ["f"],
                                rows, tissues, {})  # fmt: skip


SYNTH = {
    5.0: metrics(3.0, 28.0),  # CV too large: fails
    10.0: metrics(2.0, 15.0),
    15.0: metrics(1.0, 12.0),
    20.0: metrics(-9.0, 11.0, half_ci=3.0),  # CI crosses -10%: meets, not with the whole CI
    25.0: metrics(-12.0, 11.0),  # bias outside: fails
    35.0: metrics(-4.0, 10.0),  # meets again
}


def test_range_verdict_lists_the_values_where_the_criterion_holds():
    v = judge(range_result(SYNTH), Criterion(), fitter="f")
    assert [s.knob_value for s in v.settings] == [5.0, 10.0, 15.0, 20.0, 25.0, 35.0]
    assert [s.status for s in v.settings] == [FAILS, MEETS, MEETS, MEETS_CI_CROSSES, FAILS, MEETS]
    assert v.recommended_values == (5.0,) and v.recommended_meets == FAILS
    assert v.loosest_meeting == [10.0, 15.0, 20.0, 35.0]
    assert v.loosest_meeting_ci == [10.0, 15.0, 35.0]
    assert v.breaks_at is None
    assert meeting_runs(v) == ((10.0, 20.0), (35.0, 35.0))
    assert meeting_runs(v, "ci") == ((10.0, 15.0), (35.0, 35.0))
    text = verdict_summary(v)
    assert "holds at 10-20 deg and 35 deg" in text
    assert "With the whole 95% CI required inside the limits: 10-15 deg and 35 deg" in text
    assert "does not hold at 5 deg (fails: Ktrans CV 28.0% > 20%); 25 deg (fails" in text


def test_range_verdict_not_estimable_and_tissues_break_runs():
    table = dict(SYNTH)
    table[15.0] = metrics(1.0, 12.0, failure=0.5)  # more failed fits than allowed
    v = judge(range_result(table, bad_tissue_at=(35.0,)), Criterion(), fitter="f")
    assert v.setting(15.0).status == NOT_ESTIMABLE
    assert meeting_runs(v) == ((10.0, 10.0), (20.0, 20.0), (35.0, 35.0))
    # one tissue of twelve outside at 35 deg: 11/12 = 92% of the tissues, so the setting meets
    assert v.setting(35.0).status in (MEETS, MEETS_CI_CROSSES)
    assert 35.0 not in v.loosest_worst_tissue
    assert meeting_runs(v, "every_tissue") == ((10.0, 10.0), (20.0, 20.0))
    per = tissue_loosest(v)
    assert per[0][1] == [10.0, 20.0] and per[1][1] == [10.0, 20.0, 35.0]
    assert "Not estimable" in verdict_summary(v)


def test_range_kind_is_parsed_and_checked():
    raw = {"id": "x", "title": "X", "text": "t", "knob": "scanner.fa", "kind": "range",
           "recommended": [5.0]}  # fmt: skip
    rec, _, _ = parse_recommendation(raw, "x.toml")
    assert rec.kind == "range"
    with pytest.raises(ConfigError, match="recommendation.kind = 'ranges'.*'range'"):
        parse_recommendation({**raw, "kind": "ranges"}, "x.toml")
    with pytest.raises(ValueError, match="not a number"):
        judge(range_result({"low": metrics(0.0, 1.0)}), Criterion(), fitter="f")
    cat = judge(range_result(SYNTH, kind="category"), Criterion(), fitter="f")
    with pytest.raises(ValueError, match="category"):
        meeting_runs(cat)
