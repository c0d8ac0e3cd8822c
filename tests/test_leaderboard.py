"""phantomdce leaderboard: the panel through the engine, the OSIPI cases, the timing pass.

OSIPI data: OSIPI/DCE-DSC-MRI_CodeCollection (Apache-2.0), shipped in
src/phantomdce/data/osipi/ (the same files as tests/data/osipi/).
"""

import csv
import math
import textwrap

import numpy as np
import pytest
import xarray as xr

from phantomdce import leaderboard as L
from phantomdce.data import OSIPI_MODEL_FILES, osipi_path, osipi_rows
from phantomdce.dro.config import ConfigError
from phantomdce.engine.run import parse_any
from phantomdce.fit.registry import FitterInfo

from osipi import OSIPI, read_rows

TINY = """\
name = "leaderboard_tiny"
description = "two tissues, three replicates"
seed = 7
replicates = 3

[protocol]
preset = "esnr2022"
snr = 30.0

[tissue]
model = "extended_tofts"
Ktrans = [0.1, 0.3]
ve = [0.2]
vp = [0.02]

[fit]
fitters = ["nlls_extended_tofts"]

[fit.pipeline]
t1 = "vfa_nonlinear"
aif = "true"
"""

PLUGIN = '''\
import numpy as np
import xarray as xr
from phantomdce.fit.llsq import llsq_numpy


class GoodET:
    name = "lbtest_et"
    version = "1"
    model = "extended_tofts"
    input = "concentration"
    method = "llsq"

    def fit(self, data):
        t, ct, ca = data["time"].values, data["ct"].values, data["ca"].values
        est = llsq_numpy(t, ct, ca, model="extended_tofts")
        out = {p: ("voxel", np.asarray(est[p], float)) for p in ("Ktrans", "ve", "vp")}
        ok = np.all([np.isfinite(v[1]) for v in out.values()], axis=0)
        return xr.Dataset(out | {"success": ("voxel", ok)})


class Crash(GoodET):
    name = "lbtest_crash"

    def fit(self, data):
        raise RuntimeError("lbtest crashed on purpose")
'''


def _read_csv(path):
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def _f(cell):
    return float(cell) if cell not in ("", "nan") else math.nan


# ---------------------------------------------------------------- package data


@pytest.mark.parametrize("model", sorted(OSIPI_MODEL_FILES))
def test_shipped_osipi_files_are_the_tested_copies(model):
    rel = OSIPI_MODEL_FILES[model]
    assert osipi_path(rel).read_bytes() == (OSIPI / rel).read_bytes()
    ours, theirs = osipi_rows(rel), read_rows(rel)
    assert len(ours) == len(theirs) > 0
    for a, b in zip(ours, theirs, strict=True):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


def test_shipped_osipi_licence_and_missing_file():
    assert osipi_path("LICENSE").read_bytes() == (OSIPI / "LICENSE").read_bytes()
    with pytest.raises(FileNotFoundError, match="nosuch.csv.*shipped"):
        osipi_path("DCEmodels/nosuch.csv")


# ---------------------------------------------------------------- pieces


def _entrant(fitter, source="builtin"):
    return L.Entrant(fitter.name, fitter.name, FitterInfo.from_fitter(fitter, source))


class _NaNFitter:
    name = "lbtest_nan"
    version = "1"
    model = "extended_tofts"
    input = "concentration"
    method = "none"

    def fit(self, data):
        n = data.sizes["voxel"]
        nan = ("voxel", np.full(n, np.nan))
        return xr.Dataset({"Ktrans": nan, "ve": nan, "vp": nan,
                           "success": ("voxel", np.zeros(n, bool))})  # fmt: skip


class _Raises(_NaNFitter):
    name = "lbtest_raises"

    def fit(self, data):
        raise ValueError("no")


class _Oracle(_NaNFitter):
    """Returns OSIPI's reference values of each curve it is given; ``off`` moves row 3's Ktrans
    by ``off`` times its tolerance (OSIPI's: 0.005 /min + 10 %)."""

    name = "lbtest_oracle"

    def __init__(self, off=0.0):
        self.rows = osipi_rows(OSIPI_MODEL_FILES["extended_tofts"])
        self.off = off

    def fit(self, data):
        by_curve = {r["C"].tobytes(): (i, r) for i, r in enumerate(self.rows)}
        out = {p: np.full(data.sizes["voxel"], np.nan) for p in ("Ktrans", "ve", "vp")}
        for v, curve in enumerate(data["ct"].values):
            i, row = by_curve[curve.tobytes()]
            for p in out:
                out[p][v] = row[p]
            if i == 3:
                out["Ktrans"][v] += self.off * (0.005 + 0.1 * row["Ktrans"])
        n = data.sizes["voxel"]
        return xr.Dataset({p: ("voxel", a) for p, a in out.items()}
                          | {"success": ("voxel", np.ones(n, bool))})  # fmt: skip


def test_osipi_score_counts_passes_with_osipi_tolerances():
    good = L.osipi_score(_entrant(_Oracle()))
    assert (good["osipi_passed"], good["osipi_cases"], good["osipi_error"]) == (15, 15, "")
    assert good["osipi_file"] == OSIPI_MODEL_FILES["extended_tofts"]
    assert L.osipi_score(_entrant(_Oracle(off=0.99)))["osipi_passed"] == 15
    assert L.osipi_score(_entrant(_Oracle(off=1.01)))["osipi_passed"] == 14
    assert L.osipi_score(_entrant(_Oracle(off=-1.01)))["osipi_passed"] == 14
    none = L.osipi_score(_entrant(_NaNFitter()))
    assert (none["osipi_passed"], none["osipi_cases"]) == (0, 15)
    bad = L.osipi_score(_entrant(_Raises()))
    assert bad["osipi_passed"] == "" and bad["osipi_error"] == "ValueError: no"
    signal = L.osipi_score(_entrant(type("S", (_NaNFitter,), {"input": "signal"})()))
    assert signal["osipi_passed"] == "" and "signal input" in signal["osipi_error"]


def test_fits_rule():
    assert L.fits("extended_tofts", "extended_tofts") and L.fits("extended_tofts", "2cxm")
    assert L.fits("2cxm", "2cxm") and not L.fits("2cxm", "extended_tofts")
    assert not L.fits("tofts", "2cxm") and not L.fits("patlak", "extended_tofts")


def test_timing_uses_the_same_data_for_fitter_and_baseline(monkeypatch, tmp_path):
    import tomllib

    scenario = parse_any(tomllib.loads(TINY))
    case = scenario.cases()[0]
    item = L.PanelItem("tiny", tmp_path / "tiny.toml", scenario, case, tmp_path)
    seen = {"fitter": [], "baseline": []}

    class Recorder(_NaNFitter):
        name = "lbtest_recorder"

        def fit(self, data):
            seen["fitter"].append(data["ct"].values.copy())
            return super().fit(data)

    real = L.llsq_numpy

    def baseline(t, ct, ca, *, model):
        seen["baseline"].append(ct.copy())
        return real(t, ct, ca, model=model)

    monkeypatch.setattr(L, "llsq_numpy", baseline)
    rec = L.time_fitters([_entrant(Recorder())], [item], rounds=2)
    row = rec["lbtest_recorder"]
    # warm-up on 4 voxels, then 2 rounds of the whole case, for the fitter and the baseline
    assert [c.shape[0] for c in seen["fitter"]] == [L.WARMUP_VOXELS] + [scenario.n_voxels] * 2
    assert [c.shape[0] for c in seen["baseline"]] == [L.WARMUP_VOXELS] + [scenario.n_voxels] * 2
    np.testing.assert_array_equal(seen["fitter"][-1], seen["baseline"][-1])
    assert row["timing_item"] == "tiny" and row["timing_error"] == ""
    assert row["baseline_time_per_voxel_s"] > 0 and row["time_per_voxel_s"] > 0
    assert row["time_ratio"] == row["time_per_voxel_s"] / row["baseline_time_per_voxel_s"]
    assert row["timing_fits"] == 2
    # a fitter slower than the budget is fitted once
    seen["fitter"].clear()
    monkeypatch.setattr(L, "TIMING_BUDGET_S", 0.0)
    once = L.time_fitters([_entrant(Recorder())], [item], rounds=3)["lbtest_recorder"]
    assert [c.shape[0] for c in seen["fitter"]] == [L.WARMUP_VOXELS, scenario.n_voxels]
    assert once["timing_fits"] == 1


def test_bad_panel_and_replicates(tmp_path):
    with pytest.raises(ConfigError, match="panel = .*nosuch"):
        L.leaderboard(tmp_path / "out", panel=tmp_path / "nosuch")
    (tmp_path / "p").mkdir()
    with pytest.raises(ConfigError, match="no scenario files"):
        L.leaderboard(tmp_path / "out", panel=tmp_path / "p", installed=False, specs=[])
    with pytest.raises(ConfigError, match="replicates = 1: expected an integer >= 2"):
        L.leaderboard(tmp_path / "out", panel=tmp_path / "p", replicates=1)


# ---------------------------------------------------------------- end to end


@pytest.mark.slow
def test_tiny_leaderboard_end_to_end(tmp_path, monkeypatch):
    panel = tmp_path / "panel"
    panel.mkdir()
    (panel / "tiny.toml").write_text(TINY, encoding="utf-8")
    (tmp_path / "lbtest_plugin.py").write_text(textwrap.dedent(PLUGIN), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    specs = ["llsq_extended_tofts", "lbtest_plugin:GoodET", "lbtest_plugin:Crash",
             "lbtest_nosuch:Fitter"]  # fmt: skip
    out = tmp_path / "out"
    res = L.leaderboard(out, specs=specs, installed=False, panel=panel, work=tmp_path / "work",
                        command="phantomdce leaderboard -o out (test)")  # fmt: skip
    for name in ("index.html", "summary.md", "leaderboard.csv", "fitters.csv", "tissues.csv"):
        assert (out / name).is_file(), name
    assert "phantomdce leaderboard -o out (test)" in (out / "index.html").read_text()
    lines = (out / "summary.md").read_text().splitlines()
    assert lines[3] == "phantomdce leaderboard -o out (test)"

    # the table's bias, CV, failure rate and efficiency are the run's metrics.csv
    metrics = {(r["fitter"], r["parameter"]): r
               for r in _read_csv(tmp_path / "work" / "tiny" / "metrics.csv")}  # fmt: skip
    table = _read_csv(out / "leaderboard.csv")
    fitted = {"llsq_extended_tofts", "lbtest_et", "lbtest_crash"}
    assert {r["fitter"] for r in table} == fitted
    assert {(r["fitter"], r["parameter"]) for r in table} == {
        (f, p) for f in fitted for p in ("Ktrans", "ve", "vp")
    }
    for r in table:
        m = metrics[r["fitter"], r["parameter"]]
        for col in ("bias", "cv_pct", "failure_rate", "efficiency", "rel_bias_pct"):
            a, b = _f(r[col]), _f(m[col])
            assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-12), col
    good = [r for r in table if r["fitter"] == "lbtest_et"]
    assert all(_f(r["failure_rate"]) == 0.0 and np.isfinite(_f(r["bias"])) for r in good)

    # the plug-in that crashes is a failure row, the others ran; the spec that does not
    # load is a row with its error
    crash = [r for r in table if r["fitter"] == "lbtest_crash"]
    assert all(_f(r["failure_rate"]) == 1.0 for r in crash)
    fitters = {r["fitter"]: r for r in _read_csv(out / "fitters.csv")}
    assert fitters["lbtest_crash"]["status"].startswith("failed")
    assert "lbtest crashed on purpose" in fitters["lbtest_crash"]["osipi_error"]
    assert "lbtest crashed on purpose" in fitters["lbtest_crash"]["timing_error"]
    assert any("lbtest crashed on purpose" in f["error"] for f in res["failures"])
    assert fitters["lbtest_nosuch:Fitter"]["status"] == L.LOAD_FAILURE
    assert "lbtest_nosuch" in fitters["lbtest_nosuch:Fitter"]["osipi_error"]
    assert "did not load" in (out / "summary.md").read_text()
    for name in ("llsq_extended_tofts", "lbtest_et"):
        f = fitters[name]
        assert f["status"] == "ran" and f["osipi_passed"] == "15" and f["osipi_cases"] == "15"
        assert _f(f["time_ratio"]) == _f(f["time_per_voxel_s"]) / _f(
            f["baseline_time_per_voxel_s"]
        )
    assert fitters["llsq_extended_tofts"]["package"] == "phantomdce"
    assert fitters["lbtest_et"]["source"] == "spec lbtest_plugin:GoodET"
    # both fitters were timed against the same baseline measurement
    assert (fitters["llsq_extended_tofts"]["baseline_time_per_voxel_s"]
            == fitters["lbtest_et"]["baseline_time_per_voxel_s"])  # fmt: skip

    # per tissue: two tissues per (fitter, parameter); the summary columns are theirs
    tissues = _read_csv(out / "tissues.csv")
    rows = [t for t in tissues if (t["fitter"], t["parameter"]) == ("lbtest_et", "Ktrans")]
    assert sorted(_f(t["truth"]) for t in rows) == [0.1, 0.3]
    worst = max(abs(_f(t["rel_bias_pct"])) for t in rows)
    line = next(r for r in good if r["parameter"] == "Ktrans")
    assert _f(line["worst_tissue_abs_rel_bias_pct"]) == pytest.approx(worst, rel=1e-12)


def test_cli_parser_has_leaderboard():
    from phantomdce.cli import build_parser

    args = build_parser().parse_args(
        ["leaderboard", "-o", "x", "--fitters", "a,b", "c:d", "--only", "--replicates", "4"]
    )
    assert args.output == "x" and args.fitters == ["a,b", "c:d"] and args.only
    assert args.replicates == 4 and args.func.__module__ == "phantomdce.leaderboard_cli"
