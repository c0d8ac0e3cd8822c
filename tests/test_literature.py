"""Literature directions are computed from results, not typed in."""

from phantomdce.report.literature import check_claims

from test_verdict import make_result, metrics


def tres(ktrans_at_15, vp_at_15):
    def table(fitter, parameter, value):
        bias = {"Ktrans": ktrans_at_15, "vp": vp_at_15}.get(parameter, 0.0) * (value == 15.0)
        return metrics(bias, 10.0)

    return make_result(table, [1.0, 5.0, 15.0], fitters=("nlls",))


def by_claim(rows):
    return {r["claim"]: r for r in rows}


def test_directions_follow_the_numbers():
    rows = by_claim(check_claims([tres(-20.0, 30.0)]))
    k = rows["A longer sampling interval underestimates Ktrans"]
    v = rows["A longer sampling interval overestimates vp"]
    assert k["status"] == "reproduced" and k["explanation"] == ""
    assert "-20.0 points" in k["measured"]
    assert v["status"] == "reproduced"
    rows = by_claim(check_claims([tres(+20.0, -30.0)]))
    k = rows["A longer sampling interval underestimates Ktrans"]
    assert k["status"] == "not reproduced" and "AIF" in k["explanation"]
    assert rows["A longer sampling interval overestimates vp"]["status"] == "not reproduced"


def test_changes_below_the_threshold_are_not_directions():
    rows = by_claim(check_claims([tres(-1.0, 1.5)]))
    assert rows["A longer sampling interval underestimates Ktrans"]["status"] == "not reproduced"


def test_level_claims_need_a_ci_clear_of_zero_and_a_real_effect():
    def table(fitter, parameter, value):
        bias = 25.0 if (parameter == "Ktrans" and value == "[2, 7]") else 0.0
        return metrics(bias, 10.0, half_ci=2.0)

    res = make_result(
        table,
        ["[2, 7]", "[7, 15]", "[5, 15, 30]"],
        kind="category",
        threshold=None,
        recommended=["[5, 15, 30]"],
        fitters=("nlls",),
        rec_id="vfa_flip_angles",
        knob="flip_angles",
    )
    rows = by_claim(check_claims([res]))
    assert rows["Dual-angle T1 mapping with [2, 7] deg overestimates Ktrans"]["status"] == (
        "reproduced"
    )
    assert rows["Dual-angle T1 mapping with [7, 15] deg underestimates Ktrans"]["status"] == (
        "not reproduced"
    )


def test_claims_of_absent_recommendations_are_skipped():
    assert check_claims([]) == []


def test_report_shows_the_literature_table(tmp_path):
    from phantomdce.report.render import write_report

    results = [tres(+20.0, 30.0)]
    lit = check_claims(results)
    paths = write_report(
        results, tmp_path, command="phantomdce report x", version="1", literature=lit
    )
    page = paths["html"].read_text()
    assert "What the literature reports" in page and 'href="#literature"' in page
    assert ">not reproduced</span>" in page and ">reproduced</span>" in page
    md = paths["markdown"].read_text()
    assert "## What the literature reports" in md and "Larsson 2013" in md
