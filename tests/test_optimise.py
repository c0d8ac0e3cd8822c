"""Protocol scores and the protocol optimiser (issue 12, part 5)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from phantomdce.design.score import noise_free_bias, score_protocols
from phantomdce.dro.protocol import Protocol
from phantomdce.dro.scenario import TissueGrid
from phantomdce.precision import crlb

GRID = TissueGrid("extended_tofts", {"Ktrans": (0.05, 0.4), "ve": (0.1, 0.4), "vp": (0.01, 0.08)})


def _protocols() -> list[Protocol]:
    out = []
    for dt, duration, fa, va, sampling, field in [
        (2.0, 300.0, 15.0, 1, "instant", 3.0),
        (2.0, 240.0, 25.0, 4, "instant", 3.0),  # a prefix of the frames above
        (5.0, 300.0, 10.0, 2, "average", 1.5),
        (5.0, 420.0, 20.0, 1, "average", 1.5),
        (3.3, 360.0, 12.0, 1, "instant", 3.0),
    ]:
        out.append(
            Protocol.from_mapping(
                {
                    "dt": dt,
                    "duration": duration,
                    "fa": fa,
                    "vfa_averages": va,
                    "sampling": sampling,
                    "field_strength": field,
                    "snr": 25.0,
                    "flip_angles": [3.0, 12.0, 25.0] if va == 2 else [5.0, 15.0, 30.0],
                }
            )
        )
    return out


@pytest.mark.parametrize("kind", ["two_step", "joint", "known"])
def test_score_crlb_equals_precision_crlb(kind: str) -> None:
    protocols = _protocols()
    ds = score_protocols(protocols, GRID, kind=kind, bias=False)
    params = list(ds.parameter.values)
    assert params == ["Ktrans", "ve", "vp", "kep"]
    for i, pr in enumerate(protocols):
        table = GRID.table(pr)
        sd = crlb(pr, "extended_tofts", {k: table[k] for k in ("Ktrans", "ve", "vp")},
                  t10=table["T10"], kind=kind)
        for j, name in enumerate(params):
            np.testing.assert_allclose(ds.crlb_sd.values[i, :, j], sd[name], rtol=1e-9)
            np.testing.assert_allclose(
                ds.crlb_cv_pct.values[i, :, j],
                100 * sd[name] / np.abs(ds.truth.values[:, j]),
                rtol=1e-9,
            )
    np.testing.assert_allclose(
        ds.worst_cv_pct.values, ds.crlb_cv_pct.max("tissue").values, rtol=0
    )
    assert np.isnan(ds.bias_pct.values).all()


def test_score_on_a_coarser_grid_equals_crlb_on_it_and_is_close() -> None:
    protocols = _protocols()
    fine = score_protocols(protocols, GRID, bias=False)
    coarse = score_protocols(protocols, GRID, bias=False, grid_step=0.1)
    for i, pr in enumerate(protocols):
        table = GRID.table(pr)
        sd = crlb(pr, "extended_tofts", {k: table[k] for k in ("Ktrans", "ve", "vp")},
                  t10=table["T10"], grid_step=0.1)
        np.testing.assert_allclose(coarse.crlb_sd.values[i, :, 0], sd["Ktrans"], rtol=1e-9)
    np.testing.assert_allclose(coarse.crlb_sd.values, fine.crlb_sd.values, rtol=1e-3)
    assert not np.array_equal(coarse.crlb_sd.values, fine.crlb_sd.values)


def test_score_vfa_sigma_ratio_sets_the_vfa_noise() -> None:
    pr = _protocols()[0]
    noisy_vfa = dataclasses.replace(pr, vfa_sigma_ratio=3.0)
    ds = score_protocols([pr, noisy_vfa], GRID, bias=False)
    table = GRID.table(pr)
    sd = crlb(noisy_vfa, "extended_tofts", {k: table[k] for k in ("Ktrans", "ve", "vp")})
    np.testing.assert_allclose(ds.crlb_sd.values[1, :, 0], sd["Ktrans"], rtol=1e-9)
    assert (ds.crlb_sd.values[1, :, 0] > ds.crlb_sd.values[0, :, 0]).all()


def test_score_bias_is_the_noise_free_fit_and_grows_with_dt() -> None:
    fast = Protocol.from_mapping({"dt": 1.0, "snr": 20.0})
    slow = Protocol.from_mapping({"dt": 8.0, "snr": 20.0})
    same_but_noisier = dataclasses.replace(slow, snr=5.0, vfa_averages=4)
    ds = score_protocols([fast, slow, same_but_noisier], GRID)
    k = list(ds.parameter.values).index("Ktrans")
    worst = ds.worst_abs_bias_pct.values[:, k]
    assert worst[0] < 1.0 < 10.0 < worst[1]  # sampling bias of 8 s frames
    assert worst[2] == worst[1]  # the noise does not enter a noise-free fit
    direct, ok = noise_free_bias(slow, GRID)
    assert ok.all()
    np.testing.assert_array_equal(ds.bias_pct.values[1, :, k], direct["Ktrans"])
    assert ds.bias_fit_success.values.all()


def test_score_scan_time_and_errors() -> None:
    protocols = _protocols()[:2]
    ds = score_protocols(protocols, GRID, bias=False, vfa_time_s=[30.0, np.nan])
    np.testing.assert_array_equal(ds.scan_time_s.values, [330.0, 240.0])
    with pytest.raises(ValueError, match="vfa_time_s has 1 values"):
        score_protocols(protocols, GRID, bias=False, vfa_time_s=[1.0])
    with pytest.raises(ValueError, match="model='tofts'"):
        score_protocols(protocols, GRID, model="tofts", bias=False)
    with pytest.raises(ValueError, match="protocols = \\[\\]"):
        score_protocols([], GRID)


# -- the space, the target, the front ---------------------------------------------------------

SITE = {
    "name": "tiny_site",
    "protocol": {"preset": "esnr2022", "duration": 300.0},
    "scanner": {
        "matrix": [192, 144],
        "fov_mm": [240.0, 180.0],
        "slices": 30,
        "slice_thickness_mm": 3.0,
        "tr": 0.0035,
        "fa": 15.0,
        "parallel_factor": 2.0,
        "g_factor": 1.1,
        "partial_fourier": 0.75,
        "bandwidth_hz_px": 450.0,
        "vfa_flip_angles": [2.0, 15.0],
        "reference_snr": 25.0,
    },
    "tissue": {"model": "extended_tofts", "Ktrans": [0.05, 0.3], "ve": [0.2], "vp": [0.02]},
}


def _site():
    from phantomdce.design.site import parse_site

    return parse_site(SITE)


def _small_space(site):
    from phantomdce.design.space import Space

    return Space(
        matrix_read=(128, 192),
        slices=(30,),
        parallel_factor=(1.0, 2.0, 4.0),
        fa=(10.0, 20.0),
        vfa_flip_angles=((2.0, 15.0), (5.0, 15.0, 30.0)),
        vfa_averages=(1, 2),
        duration=(240.0, 300.0),
    )


def test_candidates_scan_time_is_the_scanners_derived_durations() -> None:
    from phantomdce.design.space import enumerate_space
    from phantomdce.scanner import Scanner

    site = _site()
    cands, refused = enumerate_space(site.scanner, site.protocol, _small_space(site))
    assert len(cands) + len(refused) == 2 * 1 * 3 * 2 * 2 * 2 * 2
    assert cands
    for c in cands[::7]:
        s = c.settings
        # the same acquisition written out by hand, from the site's table
        raw = {
            **SITE["scanner"],
            "matrix": list(s["matrix"]),
            "slices": s["slices"],
            "slice_thickness_mm": 90.0 / s["slices"],
            "parallel_factor": s["parallel_factor"],
            "g_factor": s["g_factor"],
            "fa": s["fa"],
            "vfa_flip_angles": list(s["vfa_flip_angles"]),
            "vfa_averages": s["vfa_averages"],
            "reference": {k: SITE["scanner"][k] for k in (
                "matrix", "fov_mm", "slices", "slice_thickness_mm", "tr", "fa",
                "parallel_factor", "g_factor", "partial_fourier", "bandwidth_hz_px")},
        }
        raw["reference"]["matrix"] = list(raw["reference"]["matrix"])
        d = Scanner.from_mapping(raw).derive()
        assert s["matrix"][1] == round(s["matrix"][0] * 144 / 192)
        assert c.protocol.dt == pytest.approx(d.dt, rel=1e-12)
        assert c.protocol.snr == pytest.approx(d.snr, rel=1e-12)
        assert c.scan_time_s == pytest.approx(s["duration"] + d.vfa_time_s, rel=1e-12)
        # frame time: phase x slices x partial Fourier x TR / R, by hand
        assert d.dt == pytest.approx(
            s["matrix"][1] * s["slices"] * 0.75 * 0.0035 / s["parallel_factor"], rel=1e-12
        )
    ds = score_protocols([c.protocol for c in cands], site.tissue, bias=False,
                         vfa_time_s=[c.derived.vfa_time_s for c in cands])
    np.testing.assert_allclose(ds.scan_time_s.values, [c.scan_time_s for c in cands])


def test_g_factor_model_matches_the_site_and_grows() -> None:
    from phantomdce.design.space import DEFAULT_G_FACTORS, g_factor_model, parse_g_factors

    g = g_factor_model(DEFAULT_G_FACTORS, 2.0, 1.3)["g"]
    assert g(1.0) == 1.0 and g(2.0) == 1.3
    assert g(3.0) == pytest.approx(1.3 * 1.3 / 1.1)
    assert g(4.0) > g(3.0) > g(2.0)
    assert parse_g_factors("1:1, 2:1.2") == {1.0: 1.0, 2.0: 1.2}
    from phantomdce.dro.config import ConfigError

    with pytest.raises(ConfigError, match="part 2 = '2-1.2'"):
        parse_g_factors("1:1,2-1.2")
    with pytest.raises(ConfigError, match="R = 1"):
        parse_g_factors("2:1.2")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "expected e.g."),
        ("Ktrans", "expected <parameter>:<limits>"),
        ("Ktrns:cv<=10", "unknown parameter 'Ktrns' \\(did you mean 'Ktrans'\\?\\)"),
        ("Ktrans:sd<=10", "part 'sd<=10' \\(of Ktrans\\): unknown metric 'sd'"),
        ("Ktrans:cv>=10", "part 'cv>=10' \\(of Ktrans\\): expected the operator '<='"),
        ("Ktrans:cv<=ten", "part 'cv<=ten' \\(of Ktrans\\): expected a limit that is a number"),
        ("Ktrans:cv<=0", "expected a limit > 0"),
        ("Ktrans:cv<=5,cv<=6", "Ktrans cv is given twice"),
        ("Ktrans:", "expected limits after Ktrans:"),
    ],
)
def test_target_parsing_errors_name_the_bad_part(text: str, message: str) -> None:
    from phantomdce.design.optimise import parse_target
    from phantomdce.dro.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        parse_target(text)


def test_target_parsing() -> None:
    from phantomdce.design.optimise import Constraint, parse_target

    t = parse_target("Ktrans:bias<=5,cv<=10%; ve: cv <= 20")
    assert t.constraints == (
        Constraint("Ktrans", "bias", 5.0),
        Constraint("Ktrans", "cv", 10.0),
        Constraint("ve", "cv", 20.0),
    )
    assert str(t) == "Ktrans |bias| <= 5%, Ktrans CV <= 10%, ve CV <= 20%"


_BIAS: dict = {}


def _worst_bias(protocol, tissue) -> float:
    """Worst-tissue |Ktrans bias| of the noise-free fit, computed directly (shared cache)."""
    key = dataclasses.replace(protocol, snr=np.inf, vfa_averages=1, vfa_sigma_ratio=None)
    if key not in _BIAS:
        _BIAS[key] = float(np.nanmax(np.abs(noise_free_bias(protocol, tissue)[0]["Ktrans"])))
    return _BIAS[key]


def _brute_front(t, c, adm) -> list[int]:
    out = []
    for i in range(len(t)):
        if not adm[i] or not np.isfinite(c[i]):
            continue
        dominated = any(
            adm[j] and t[j] <= t[i] and c[j] <= c[i] and (t[j] < t[i] or c[j] < c[i])
            for j in range(len(t))
        )
        if not dominated:
            out.append(i)
    return out


def test_pareto_front_equals_brute_force_with_ties_and_asks_less() -> None:
    from phantomdce.design.optimise import pareto_front

    rng = np.random.default_rng(7)
    for _ in range(30):
        n = 60
        t = rng.integers(0, 12, n).astype(float)  # ties in time
        c = rng.integers(0, 12, n).astype(float)  # and in CV
        c[rng.integers(0, n, 3)] = np.inf
        adm = rng.random(n) < 0.6
        asked: list[int] = []

        def admissible(i: int, asked: list[int] = asked, adm: np.ndarray = adm) -> bool:
            asked.append(i)
            return bool(adm[i])

        front = pareto_front(t, c, admissible)
        assert sorted(front) == _brute_front(t, c, adm)
        assert len(set(asked)) == len(asked) < n  # each asked once, not all


def test_search_front_is_complete_and_non_dominated_on_a_small_space() -> None:
    from phantomdce.design.optimise import parse_target, search

    site = _site()
    target = parse_target("Ktrans:bias<=4,cv<=12")
    found = search(site, target, 330.0, space=_small_space(site))
    t, c = found.scan_time(), found.worst_cv("Ktrans")
    # brute force: the bias of every candidate, computed directly
    worst = np.array([_worst_bias(x.protocol, site.tissue) for x in found.candidates])
    adm = worst <= 4.0
    assert 0 < adm.sum() < len(adm)  # the bias limit matters in this space
    assert sorted(found.front) == _brute_front(t, c, adm)
    assert len(found.bias) < len(found.candidates)  # fewer fits than brute force
    # the chosen: admissible, within budget, CV met; front points first, lowest CV first
    ok = adm & (t <= 330.0) & (c <= 12.0)
    on_front = sorted((i for i in found.front if ok[i]), key=lambda i: (c[i], t[i]))
    rest = sorted((i for i in np.flatnonzero(ok) if i not in found.front),
                  key=lambda i: (c[i], t[i]))
    assert found.meets
    assert found.chosen == (on_front + rest)[:3]
    # the site's own protocol is a candidate, marked
    site_c = found.candidates[found.site_index]
    assert site_c.protocol.dt == pytest.approx(site.protocol.dt)
    assert site_c.settings["vfa_flip_angles"] == (2.0, 15.0)


def test_search_says_when_nothing_meets_and_shows_the_closest() -> None:
    from phantomdce.design.optimise import parse_target, search

    site = _site()
    found = search(site, parse_target("Ktrans:bias<=4,cv<=0.5"), 330.0,
                   space=_small_space(site))
    assert not found.meets
    assert len(found.chosen) == 3
    short = [found.shortfall(i) for i in found.chosen]
    assert min(short) > 1.0
    # brute force over every candidate: no other one is closer than the chosen three
    every = []
    for i, x in enumerate(found.candidates):
        b = _worst_bias(x.protocol, site.tissue)
        every.append(max(found.scan_time()[i] / 330.0, found.worst_cv()[i] / 0.5, b / 4.0))
    assert sorted(short) == pytest.approx(sorted(every)[:3], rel=1e-9)


def test_search_refuses_a_site_without_scanner() -> None:
    from phantomdce.design.optimise import parse_target, search
    from phantomdce.design.site import parse_site
    from phantomdce.dro.config import ConfigError

    site = parse_site({"name": "plain", "protocol": {"dt": 4.0}})
    with pytest.raises(ConfigError, match="has no \\[scanner\\] table"):
        search(site, parse_target("Ktrans:cv<=10"), 400.0)


@pytest.mark.slow  # an engine or phantom run: the default pytest stays under 4 minutes
def test_optimise_cli_end_to_end(tmp_path, capsys) -> None:
    """A tiny space (8 protocols, 2 tissues, 4 replicates): about 5 s."""
    from phantomdce.cli import main

    lines = []
    for key, table in SITE.items():
        if not isinstance(table, dict):
            lines.append(f"{key} = {json.dumps(table)}")
    for key, table in SITE.items():
        if isinstance(table, dict):
            lines.append(f"[{key}]")
            lines += [f"{k} = {json.dumps(v)}" for k, v in table.items()]
    site = tmp_path / "site.toml"
    site.write_text("\n".join(lines) + "\n")
    space = tmp_path / "space.toml"
    space.write_text(
        "matrix_read = [192]\nslices = [30]\nparallel_factor = [2.0, 4.0]\nfa = [15.0]\n"
        "vfa_flip_angles = [[2.0, 15.0]]\nvfa_averages = [1, 2]\nduration = [240.0, 300.0]\n"
    )
    out = tmp_path / "out"
    args = ["optimise", str(site), "--target", "Ktrans:bias<=5,cv<=30", "--scan-time", "400",
            "--space", str(space), "--replicates", "4", "-o", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "meets the target" in printed
    for name in ("pareto.png", "front.csv", "front.md", "best.csv", "summary.md",
                 "index.html", "optimise.json", "candidates.csv.gz"):
        assert (out / name).is_file(), name
    rec = json.loads((out / "optimise.json").read_text())
    assert rec["meets"] and rec["chosen"]
    assert all("Ktrans_cv_mc_pct" in row for row in rec["chosen"])
    assert "bound beside Monte Carlo" in (out / "summary.md").read_text()
    # written again into its own output: allowed; a bad target: exit 2 naming the part
    assert main(args[:3] + ["Ktrans:cv=>5"] + args[4:]) == 2
    assert "part 'cv=>5' (of Ktrans)" in capsys.readouterr().err


def test_search_uses_the_bound_of_the_sites_estimator() -> None:
    from phantomdce.design.optimise import estimator_bound, parse_target, search
    from phantomdce.design.site import parse_site

    assert estimator_bound(_site()) == ("two_step", "")
    joint = parse_site({**SITE, "fit": {"fitter": "nlls_extended_tofts_joint"}})
    assert estimator_bound(joint) == ("joint", "")
    measured = parse_site({**SITE, "fit": {"pipeline": {"t1": "vfa_nonlinear",
                                                        "aif": "measured"}}})
    kind, note = estimator_bound(measured)
    assert kind == "two_step" and "the bound assumes the true AIF" in note
    space = dataclasses.replace(_small_space(joint), parallel_factor=(2.0,), fa=(15.0,),
                                vfa_averages=(1,), duration=(300.0,))
    a = search(joint, parse_target("Ktrans:cv<=50"), 400.0, space=space)
    b = search(_site(), parse_target("Ktrans:cv<=50"), 400.0, space=space)
    assert a.bound == "joint" and b.bound == "two_step"
    assert (a.worst_cv() < b.worst_cv()).all()  # the joint fit uses all the data at once
