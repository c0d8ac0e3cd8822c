"""The adapters of real open-source DCE fitters in fitters/: QbiPy, p-brain and osipy.

The adapter distributions are not installed in the test environment: their ``src`` folders
are put on ``sys.path``. Each adapter's tests are skipped, with the reason, when the package
it wraps cannot be imported (osipy needs Python >= 3.12). Each adapter is verified on the
OSIPI DCE model cases (undelayed files) with OSIPI's tolerances, on noise-free curves, on
bad voxels and on its unit conversions; a crash or a hang inside a wrapped package is
recorded by the engine (plug-ins run in a child process by default), not fatal.

OSIPI data: OSIPI/DCE-DSC-MRI_CodeCollection (Apache-2.0), see tests/data/osipi/README.md.
"""

import copy
import csv
import doctest
import importlib
import importlib.util
import json
import sys
import textwrap
import tomllib
import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from phantomdce import kinetics as K
from phantomdce.aif import plasma_aif
from phantomdce.engine.run import open_results, run
from phantomdce.fit import registry
from phantomdce.fit.base import check_fitter
from phantomdce.params import MODELS

from osipi import TOLERANCES, read_rows

FITTERS = Path(__file__).resolve().parents[1] / "fitters"
QBIPY_DIR = FITTERS / "phantomdce-qbipy"
PBRAIN_DIR = FITTERS / "phantomdce-pbrain"
OSIPY_DIR = FITTERS / "phantomdce-osipy"

HAS_QBIPY = importlib.util.find_spec("QbiPy") is not None
HAS_PBRAIN = importlib.util.find_spec("pbrain") is not None
if sys.version_info < (3, 12):
    OSIPY_SKIP = f"osipy requires Python >= 3.12; this is Python {sys.version.split()[0]}"
elif importlib.util.find_spec("osipy") is None:
    OSIPY_SKIP = "osipy is not installed (pip install 'osipy>=0.1.4,<0.2')"
else:
    OSIPY_SKIP = ""

needs_qbipy = pytest.mark.skipif(not HAS_QBIPY, reason="QbiPy is not installed")
needs_pbrain = pytest.mark.skipif(not HAS_PBRAIN, reason="p-brain is not installed")
needs_osipy = pytest.mark.skipif(bool(OSIPY_SKIP), reason=OSIPY_SKIP)


def _import_from(src: Path, module: str):
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(src))
        return importlib.import_module(module)


@pytest.fixture(scope="module")
def qbipy():
    pytest.importorskip("QbiPy", reason="QbiPy is not installed")
    return _import_from(QBIPY_DIR / "src", "phantomdce_qbipy")


@pytest.fixture(scope="module")
def pbrain():
    pytest.importorskip("pbrain", reason="p-brain is not installed")
    return _import_from(PBRAIN_DIR / "src", "phantomdce_pbrain")


@pytest.fixture(scope="module")
def osipy_adapter():
    """The osipy adapter module: it imports on any Python, with or without osipy."""
    return _import_from(OSIPY_DIR / "src", "phantomdce_osipy")


# noise-free truths per model, three voxels each (forward-model keyword -> values)
TRUTHS = {
    "tofts": {"ktrans": [0.05, 0.2, 0.5], "ve": [0.1, 0.3, 0.5]},
    "extended_tofts": {"ktrans": [0.05, 0.2, 0.5], "ve": [0.1, 0.3, 0.5], "vp": [0.01, 0.05, 0.1]},
    "patlak": {"ktrans": [0.01, 0.05, 0.2], "vp": [0.01, 0.05, 0.1]},
    "2cxm": {
        "fp": [10.0, 40.0, 100.0],
        "ps": [0.05, 0.15, 0.3],
        "ve": [0.1, 0.2, 0.4],
        "vp": [0.02, 0.05, 0.1],
    },
    "2cum": {"fp": [10.0, 40.0, 100.0], "ps": [0.01, 0.05, 0.1], "vp": [0.02, 0.05, 0.1]},
}


def _case(model, *, dt=2.0, ct=None):
    """Noise-free curves of ``model`` on a Parker plasma AIF (or the given ``ct``)."""
    t = np.arange(0.0, 300.0, dt)
    ca = plasma_aif("parker", t, bat=20.0, hct=0.42)
    truth = {k: np.asarray(v) for k, v in TRUTHS[model].items()}
    if ct is None:
        ct = K.MODEL_FUNCTIONS[model](t, ca, **truth)
    ds = xr.Dataset(
        {"ct": (("voxel", "time"), ct), "ca": ("time", ca)},
        coords={"time": t, "voxel": np.arange(100, 100 + ct.shape[0])},
        attrs={"dt": dt},
    )
    return ds, {("Ktrans" if k == "ktrans" else k): v for k, v in truth.items()}


def _assert_layout(res, data, fitter):
    expected = set(MODELS[fitter.model].parameters) | {"success"}
    limits = {v for v in res.data_vars if v.startswith("at_limit_")}
    assert set(res.data_vars) - limits == expected
    for name in limits:  # the contract: bool flags of estimated parameters, False on failure
        assert name[len("at_limit_") :] in expected and res[name].dtype == bool
        assert not (res[name].values & ~res["success"].values).any()
    assert res["success"].dtype == bool
    np.testing.assert_array_equal(res["voxel"].values, data["voxel"].values)
    for name in expected - {"success"}:
        assert res[name].dims == ("voxel",) and np.issubdtype(res[name].dtype, np.floating)


def _assert_recovered(res, truth, rtol=0.01):
    assert bool(res["success"].all())
    for name, values in truth.items():
        np.testing.assert_allclose(res[name].values, values, rtol=rtol, err_msg=name)


def _with_bad_voxels(ds):
    """Append a NaN row, an all-zero row, a negated curve and a flat curve (in that order)."""
    good = ds["ct"].values
    t = ds["time"].values
    nan_row = good[0].copy()
    nan_row[len(t) // 2] = np.nan
    ct = np.concatenate([good, np.stack([nan_row, 0 * t, -good[0], np.full_like(t, 0.5)])])
    out = xr.Dataset(
        {"ct": (("voxel", "time"), ct), "ca": ds["ca"]},
        coords={"time": t, "voxel": np.arange(ct.shape[0])},
        attrs=dict(ds.attrs),
    )
    return out, good.shape[0]


def _assert_bad_voxels_fail_alone(fitter):
    base, truth = _case("extended_tofts")
    data, n_good = _with_bad_voxels(base)
    before = copy.deepcopy(data)
    res = fitter.fit(data)
    xr.testing.assert_identical(data, before)
    np.testing.assert_array_equal(res["success"].values, np.arange(n_good + 4) < n_good)
    for name in ("Ktrans", "ve", "vp"):
        assert np.isnan(res[name].values[n_good:]).all(), name
    np.testing.assert_allclose(res["Ktrans"].values[:n_good], truth["Ktrans"], rtol=0.01)


# ---------------------------------------------------------------- OSIPI model cases

OSIPI_FILES = {
    "tofts": "dce_DRO_data_tofts.csv",
    "extended_tofts": "dce_DRO_data_extended_tofts.csv",
    "patlak": "patlak_sd_0.02_delay_0.csv",
    "2cxm": "2cxm_sd_0.001_delay_0.csv",
    "2cum": "2cum_sd_0.0025_delay_0.csv",
}


def _osipi_pass(fitter):
    """Fit every undelayed OSIPI case of the fitter's model; pass flags and labels."""
    rows = read_rows(f"DCEmodels/{OSIPI_FILES[fitter.model]}")
    names = list(MODELS[fitter.model].parameters)
    groups: dict[bytes, list[int]] = {}
    for i, row in enumerate(rows):
        ca = row.get("ca", row.get("cp_aif"))
        groups.setdefault(ca.tobytes() + row["t"].tobytes(), []).append(i)
    est = {p: np.full(len(rows), np.nan) for p in names}
    for idx in groups.values():
        first = rows[idx[0]]
        ct = np.stack([rows[i].get("C", rows[i].get("C_t")) for i in idx])
        data = xr.Dataset(
            {"ct": (("voxel", "time"), ct), "ca": ("time", first.get("ca", first.get("cp_aif")))},
            coords={"time": first["t"]},
        )
        res = fitter.fit(data)
        for p in names:
            est[p][idx] = res[p].values
    passed = np.ones(len(rows), dtype=bool)
    for i, row in enumerate(rows):
        for p in names:
            # OSIPI names the Patlak uptake rate "ps"
            truth = row["ps"] if (fitter.model, p) == ("patlak", "Ktrans") else row[p]
            atol, rtol = TOLERANCES[p]
            passed[i] &= bool(abs(est[p][i] - truth) <= atol + rtol * abs(truth))
    return passed, [r["label"] for r in rows]


def _check_osipi(fitter, expected, record_property):
    passed, labels = _osipi_pass(fitter)
    record_property(f"osipi_pass_{fitter.name}", f"{int(passed.sum())}/{passed.size}")
    failed = [lab for lab, ok in zip(labels, passed, strict=True) if not ok]
    assert passed.size == {"tofts": 25, "extended_tofts": 15, "patlak": 9, "2cxm": 24,
                           "2cum": 27}[fitter.model]  # fmt: skip
    assert int(passed.sum()) >= expected, failed


# ---------------------------------------------------------------- packaging metadata


@pytest.mark.parametrize(
    ("folder", "dist", "package", "ep_name", "wrapped"),
    [
        (QBIPY_DIR, "phantomdce-qbipy", "phantomdce_qbipy", "qbipy", "QbiPy>="),
        (PBRAIN_DIR, "phantomdce-pbrain", "phantomdce_pbrain", "pbrain", "p-brain>="),
        (OSIPY_DIR, "phantomdce-osipy", "phantomdce_osipy", "osipy", "osipy>="),
    ],
)
def test_adapter_is_packaged_as_a_third_party_plugin(folder, dist, package, ep_name, wrapped):
    meta = tomllib.loads((folder / "pyproject.toml").read_text(encoding="utf-8"))
    project = meta["project"]
    assert project["name"] == dist
    assert project["license"] == "Apache-2.0"
    assert project["requires-python"] == ">=3.11"
    assert "phantomdce" in project["dependencies"]
    assert any(dep.startswith(wrapped) for dep in project["dependencies"])  # pinned range
    assert project["entry-points"]["phantomdce.fitters"] == {ep_name: f"{package}:all_fitters"}
    readme = (folder / "README.md").read_text(encoding="utf-8")
    assert "## Units and conversions" in readme
    assert "Apache License" in (folder / "LICENSE").read_text(encoding="utf-8")
    assert (folder / "src" / package / "__init__.py").is_file()


@pytest.mark.parametrize(
    ("fixture", "needs"), [("qbipy", HAS_QBIPY), ("pbrain", HAS_PBRAIN), ("osipy_adapter", True)]
)
def test_adapter_docstring_examples_run(fixture, needs, request):
    if not needs:
        pytest.skip(f"the package wrapped by {fixture} is not installed")
    module = request.getfixturevalue(fixture).fitters
    flags = doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS
    result = doctest.testmod(module, optionflags=flags)
    assert result.attempted > 0 and result.failed == 0


def test_osipy_dependency_is_only_required_where_osipy_installs():
    meta = tomllib.loads((OSIPY_DIR / "pyproject.toml").read_text(encoding="utf-8"))
    (dep,) = [d for d in meta["project"]["dependencies"] if d.startswith("osipy")]
    assert dep.replace('"', "'").endswith("python_version >= '3.12'")


# ---------------------------------------------------------------- QbiPy


@needs_qbipy
def test_qbipy_fitters_satisfy_the_contract(qbipy):
    fitters = qbipy.all_fitters()
    assert [f.name for f in fitters] == [
        "qbipy_tofts",
        "qbipy_extended_tofts",
        "qbipy_2cxm",
        "qbipy_extended_tofts_llsq",
        "qbipy_2cxm_llsq",
    ]
    for f in fitters:
        check_fitter(f, source="phantomdce_qbipy:all_fitters")
        assert f.input == "concentration" and "+qbipy1.3" in f.version


@needs_qbipy
@pytest.mark.parametrize(
    ("model", "method"),
    [("tofts", "nlls"), ("extended_tofts", "nlls"), ("2cxm", "nlls"),
     ("extended_tofts", "llsq"), ("2cxm", "llsq")],
)  # fmt: skip
def test_qbipy_recovers_noise_free_parameters(qbipy, model, method):
    # QbiPy works in minutes and in Fp mL/min/mL: unconverted, every value would be off
    data, truth = _case(model)
    fitter = qbipy.QbiPyFitter(model, method=method)
    res = fitter.fit(data)
    _assert_layout(res, data, fitter)
    _assert_recovered(res, truth)


@needs_qbipy
def test_qbipy_bad_voxels_fail_alone_and_input_is_unchanged(qbipy):
    _assert_bad_voxels_fail_alone(qbipy.QbiPyFitter("extended_tofts"))


@needs_qbipy
def test_qbipy_reports_vp_at_its_limit_as_a_success(qbipy):
    t_case, _ = _case("tofts")
    res = qbipy.QbiPyFitter("extended_tofts").fit(t_case)  # Tofts curves: vp -> 0
    assert res["success"].all() and res["at_limit_vp"].all()
    assert (res["vp"].values == 0.0).all() and not res["at_limit_Ktrans"].any()
    np.testing.assert_allclose(res["Ktrans"].values, TRUTHS["tofts"]["ktrans"], rtol=1e-3)


@needs_qbipy
def test_qbipy_does_not_print(qbipy, capsys):
    data, _ = _case("extended_tofts")
    qbipy.QbiPyFitter("extended_tofts").fit(data)
    assert capsys.readouterr().out == ""  # QbiPy prints a line per model evaluation


@needs_qbipy
@pytest.mark.parametrize(
    ("model", "method", "expected"),
    [("tofts", "nlls", 25), ("extended_tofts", "nlls", 15), ("2cxm", "nlls", 24),
     ("extended_tofts", "llsq", 15), ("2cxm", "llsq", 24)],
)  # fmt: skip
def test_qbipy_passes_the_osipi_cases(qbipy, model, method, expected, record_property):
    # measured: every case within OSIPI's tolerances
    _check_osipi(qbipy.QbiPyFitter(model, method=method), expected, record_property)


# ---------------------------------------------------------------- p-brain


@needs_pbrain
def test_pbrain_fitters_satisfy_the_contract(pbrain):
    fitters = pbrain.all_fitters()
    assert [f.name for f in fitters] == [
        "pbrain_extended_tofts",
        "pbrain_extended_tofts_trf",
        "pbrain_patlak",
    ]
    for f in fitters:
        check_fitter(f, source="phantomdce_pbrain:all_fitters")
        assert f.input == "concentration" and "+pbrain3.1" in f.version


@needs_pbrain
@pytest.mark.parametrize("variant", ["extended_tofts", "extended_tofts_trf"])
def test_pbrain_recovers_noise_free_extended_tofts(pbrain, variant):
    # p-brain reports Ktrans in mL/100g/min: unconverted it would be 100 times too large
    data, truth = _case("extended_tofts")
    fitter = pbrain.PBrainFitter(variant)
    res = fitter.fit(data)
    _assert_layout(res, data, fitter)
    _assert_recovered(res, truth)
    assert res.attrs["pbrain_tissue_density_g_per_ml"] == 1.0


@needs_pbrain
def test_pbrain_patlak_has_the_half_frame_intercept_of_its_rectangle_rule(pbrain):
    # p-brain integrates the AIF with left rectangles: the Patlak plot's intercept takes
    # Ki * dt / 2 of uptake; Ki (mL/100g/min) and vb (mL/100g) are converted by / 100
    dt = 2.0
    data, truth = _case("patlak", dt=dt)
    fitter = pbrain.PBrainFitter("patlak")
    res = fitter.fit(data)
    _assert_layout(res, data, fitter)
    assert res["success"].all()
    np.testing.assert_allclose(res["Ktrans"].values, truth["Ktrans"], rtol=1e-3)
    expected_vp = truth["vp"] + truth["Ktrans"] / 60.0 * dt / 2
    np.testing.assert_allclose(res["vp"].values, expected_vp, rtol=2e-3)


@needs_pbrain
def test_pbrain_converts_with_its_own_density(pbrain):
    from pbrain.models.extended_tofts import fit_voxel

    data, _ = _case("extended_tofts")
    f = fit_voxel(data["ca"].values, data["ct"].values[1], data["time"].values)
    # p-brain's own two units of the same fit: mL/100g/min is 100 x /min (1 g/mL)
    assert f.ktrans_ml_100g == pytest.approx(100.0 * f.ktrans_per_min, rel=1e-12)
    assert pbrain.per_100g_to_per_min(f.ktrans_ml_100g) == pytest.approx(f.ktrans_per_min)


@needs_pbrain
def test_pbrain_refuses_units_it_does_not_convert(pbrain, monkeypatch):
    from pbrain.models.extended_tofts import ExtendedToftsModel

    units = dict(ExtendedToftsModel.units, ktrans="1/min")
    monkeypatch.setattr(ExtendedToftsModel, "units", units)
    data, _ = _case("extended_tofts")
    with pytest.raises(RuntimeError, match="'ktrans' in '1/min'"):
        pbrain.PBrainFitter("extended_tofts").fit(data)


@needs_pbrain
def test_pbrain_bad_voxels_fail_alone_and_input_is_unchanged(pbrain):
    _assert_bad_voxels_fail_alone(pbrain.PBrainFitter("extended_tofts"))
    _assert_bad_voxels_fail_alone(pbrain.PBrainFitter("extended_tofts_trf"))


@needs_pbrain
def test_pbrain_reports_limits_as_successes(pbrain):
    t_case, _ = _case("tofts")
    res = pbrain.PBrainFitter("extended_tofts_trf").fit(t_case)  # Tofts curves: vp -> 0
    assert res["success"].all() and res["at_limit_vp"].all() and (res["vp"] == 0.0).all()
    np.testing.assert_allclose(res["Ktrans"].values, TRUTHS["tofts"]["ktrans"], rtol=1e-3)
    # a curve of plasma only: Ktrans -> 0 and ve undetermined (NaN, flagged), vp estimated
    plasma = 0.05 * t_case["ca"].values[None]
    data = t_case.isel(voxel=[0]).assign(ct=(("voxel", "time"), plasma))
    res = pbrain.PBrainFitter("extended_tofts").fit(data)
    assert res["success"].values[0] and res["at_limit_Ktrans"].values[0]
    assert res["Ktrans"].values[0] == 0.0 and np.isnan(res["ve"].values[0])
    assert res["at_limit_ve"].values[0]
    assert res["vp"].values[0] == pytest.approx(0.05, rel=1e-3)


@needs_pbrain
@pytest.mark.parametrize(
    ("variant", "expected"), [("extended_tofts", 15), ("extended_tofts_trf", 15), ("patlak", 9)]
)
def test_pbrain_passes_the_osipi_cases(pbrain, variant, expected, record_property):
    # measured: every case within OSIPI's tolerances
    _check_osipi(pbrain.PBrainFitter(variant), expected, record_property)


# ---------------------------------------------------------------- osipy


def test_osipy_converts_ps_and_keeps_fractions(osipy_adapter):
    maps = {"Fp": np.array([40.0]), "PS": np.array([15.0]), "ve": np.array([0.2]),
            "vp": np.array([0.05])}  # fmt: skip
    out = osipy_adapter.to_phantomdce("2cxm", maps)
    assert {k: float(v[0]) for k, v in out.items()} == {
        "fp": 40.0, "ps": 0.15, "ve": 0.2, "vp": 0.05
    }  # fmt: skip


def test_osipy_limits_follow_the_contract(osipy_adapter):
    bounds = {"Fp": (0.1, 200.0), "PS": (0.0, 50.0), "ve": (0.001, 1.0), "vp": (0.001, 0.3)}
    est = {
        "fp": np.array([40.0, 200.0, 40.0, 40.0]),
        "ps": np.array([0.1, 0.1, 0.0, 0.1]),
        "ve": np.array([0.2, 0.2, 0.2, 1.0]),
        "vp": np.array([0.001, 0.05, 0.05, 0.05]),
    }
    limits, search = osipy_adapter.limit_flags("2cxm", est, bounds)
    np.testing.assert_array_equal(limits["vp"], [True, False, False, False])
    np.testing.assert_array_equal(limits["ps"], [False, False, True, False])
    np.testing.assert_array_equal(limits["ve"], [False, False, False, True])
    np.testing.assert_array_equal(search, [False, True, False, False])  # osipy's Fp cap


def test_osipy_refuses_a_non_uniform_time_axis(osipy_adapter):
    data, _ = _case("tofts")
    t = data["time"].values.copy()
    t[-1] += 1.0
    with pytest.raises(ValueError, match="uniform sampling"):
        osipy_adapter.OsipyFitter("tofts").fit(data.assign_coords(time=t))


@pytest.mark.skipif(not OSIPY_SKIP, reason="osipy is importable here")
def test_without_osipy_the_plugin_is_skipped_with_the_reason(osipy_adapter, monkeypatch):
    with pytest.raises(osipy_adapter.OsipyUnavailableError, match="osipy"):
        osipy_adapter.all_fitters()

    class EntryPoint:
        name, value, group = "osipy", "phantomdce_osipy:all_fitters", "phantomdce.fitters"
        dist = type("Dist", (), {"name": "phantomdce-osipy", "version": "0.1.0"})

        def load(self):
            return osipy_adapter.all_fitters

    monkeypatch.setattr(importlib.metadata, "entry_points", lambda **kw: [EntryPoint()])
    registry.refresh()
    try:
        with pytest.warns(registry.PluginWarning, match="phantomdce-osipy.*osipy"):
            names = [info.name for info in registry.list_fitters()]
    finally:
        monkeypatch.undo()
        registry.refresh()
    assert not any(n.startswith("osipy_") for n in names)


@needs_osipy
def test_osipy_fitters_satisfy_the_contract(osipy_adapter):
    fitters = osipy_adapter.all_fitters()
    assert sorted(f.name for f in fitters) == sorted(f"osipy_{m}" for m in MODELS)
    for f in fitters:
        check_fitter(f, source="phantomdce_osipy:all_fitters")
        assert (f.input, f.method) == ("concentration", "nlls") and "+osipy0." in f.version


@needs_osipy
def test_osipy_recovers_noise_free_extended_tofts(osipy_adapter):
    data, truth = _case("extended_tofts", dt=0.5)
    fitter = osipy_adapter.OsipyFitter("extended_tofts")
    res = fitter.fit(data)
    _assert_layout(res, data, fitter)
    _assert_recovered(res, {k: truth[k] for k in ("Ktrans", "ve")})
    # osipy's discrete convolution takes half a frame of leakage from vp
    expected_vp = truth["vp"] - truth["Ktrans"] / 60.0 * 0.5 / 2
    np.testing.assert_allclose(res["vp"].values, expected_vp, rtol=0.02)


@needs_osipy
def test_osipy_bad_voxels_fail_alone_and_input_is_unchanged(osipy_adapter):
    _assert_bad_voxels_fail_alone(osipy_adapter.OsipyFitter("extended_tofts"))


@needs_osipy
@pytest.mark.parametrize(
    ("model", "expected"),
    [("tofts", 25), ("extended_tofts", 15), ("patlak", 9), ("2cxm", 23), ("2cum", 27)],
)
def test_osipy_passes_the_osipi_cases(osipy_adapter, model, expected, record_property):
    # measured with osipy 0.1.4; the 2CXM miss is case_1 (Fp 5, PS 0.05: LM stops at PS 0)
    _check_osipi(osipy_adapter.OsipyFitter(model), expected, record_property)


# ---------------------------------------------------------------- isolation

SCENARIO = """
name = "adapters"
seed = 5
replicates = 4

[protocol]
snr = 25.0
dt = 4.0
duration = 240.0

[tissue]
model = "extended_tofts"
Ktrans = [0.1, 0.3]
ve = [0.2, 0.4]
vp = [0.02, 0.06]

[fit]
fitters = {fitters}
chunk_voxels = 64
timeout_s = {timeout}
"""

# wrapped functions replaced by a crash (the process exits) and a hang
MISBEHAVING = '''
import os
import time

import phantomdce_pbrain
import phantomdce_qbipy
from pbrain.models.extended_tofts import ExtendedToftsModel
from QbiPy.dce_models import tofts_model


def _crash(*args, **kwargs):
    os._exit(3)


def _hang(self, *args, **kwargs):
    time.sleep(3600)


tofts_model.solve_LLS = _crash
ExtendedToftsModel.fit = _hang


def crashing():
    return phantomdce_qbipy.QbiPyFitter("extended_tofts", method="llsq")


def hanging():
    return phantomdce_pbrain.PBrainFitter("extended_tofts")
'''


@pytest.mark.slow  # an engine run with isolated plug-ins that crash and hang
@needs_qbipy
@needs_pbrain
def test_a_crash_or_hang_in_a_wrapped_package_is_recorded_and_the_run_goes_on(
    tmp_path, monkeypatch
):
    (tmp_path / "misbehaving_adapters.py").write_text(textwrap.dedent(MISBEHAVING))
    for folder in (tmp_path, QBIPY_DIR / "src", PBRAIN_DIR / "src"):
        monkeypatch.syspath_prepend(str(folder))  # the isolated children get this sys.path
    fitters = [
        "llsq_extended_tofts",
        "misbehaving_adapters:crashing",
        "misbehaving_adapters:hanging",
    ]
    path = tmp_path / "s.toml"
    path.write_text(SCENARIO.format(fitters=json.dumps(fitters), timeout=2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run(path, tmp_path / "out")
    case = open_results(tmp_path / "out")["case_0000"].ds
    ok = case["success"].values
    assert ok[0].all()  # the built-in, in this process, is untouched
    assert not ok[1:].any() and np.isnan(case["Ktrans"].values[1:]).all()
    with open(tmp_path / "out" / "failures.csv", newline="") as fh:
        rows = {r["fitter"]: r["error"] for r in csv.DictReader(fh)}
    assert sorted(rows) == ["pbrain_extended_tofts", "qbipy_extended_tofts_llsq"]
    assert "ended without a result (exit code 3)" in rows["qbipy_extended_tofts_llsq"]
    assert "ran past the time limit of 2 s per chunk" in rows["pbrain_extended_tofts"]
