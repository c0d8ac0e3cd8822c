"""The fitter registry: built-ins, entry-point plug-ins, specs, the CLI and docs/plugins.md."""

import doctest
import importlib.metadata
import json
import re
import sys
import textwrap
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import xarray as xr

import phantomdce
from phantomdce.cli import main
from phantomdce.fit import registry
from phantomdce.fit.base import check_fitter
from phantomdce.fit.registry import (
    DuplicateFitterError,
    FitterInfo,
    PluginWarning,
    UnknownFitterError,
)
from phantomdce.kinetics import patlak

DOC = Path(__file__).parents[1] / "docs" / "plugins.md"


class FakeFitter:
    version = "1.0"
    model = "patlak"
    input = "concentration"
    method = "llsq"

    def __init__(self, name="fake"):
        self.name = name

    def fit(self, data):
        n = data.sizes["voxel"]
        return xr.Dataset({"success": ("voxel", np.zeros(n, bool))})


class FakeClassFitter(FakeFitter):
    def __init__(self):
        super().__init__("fake_class")


class FakeEntryPoint:
    """Duck-typed importlib.metadata.EntryPoint."""

    group = "phantomdce.fitters"

    def __init__(self, name, obj, *, dist="acme-dce", version="0.3.0", value=None):
        self.name = name
        self.value = value or f"acme_dce.fit:{name}"
        self.dist = SimpleNamespace(name=dist, version=version)
        self._obj = obj

    def load(self):
        if isinstance(self._obj, BaseException):
            raise self._obj
        return self._obj


@pytest.fixture
def plugins(monkeypatch):
    """Install fake entry points (and optionally built-ins); the registry is refreshed."""

    def install(*eps, builtins=()):
        def entry_points(**kwargs):
            assert kwargs == {"group": "phantomdce.fitters"}
            return list(eps)

        monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
        monkeypatch.setattr(registry, "_builtin_fitters", lambda: list(builtins))
        registry.refresh()

    yield install
    registry.refresh()


def test_entry_point_forms_and_sources(plugins):
    plugins(
        FakeEntryPoint("inst", FakeFitter("fake_instance")),
        FakeEntryPoint("cls", FakeClassFitter, dist="other", version="2.1"),
        FakeEntryPoint("factory", lambda: [FakeFitter("fake_a"), FakeFitter("fake_b")]),
        FakeEntryPoint("one", lambda: FakeFitter("fake_one")),
        builtins=[FakeFitter("builtin_one")],
    )
    infos = registry.list_fitters()
    assert [i.name for i in infos] == [
        "builtin_one",
        "fake_a",
        "fake_b",
        "fake_class",
        "fake_instance",
        "fake_one",
    ]
    by_name = {i.name: i for i in infos}
    assert by_name["builtin_one"].source == "builtin"
    assert by_name["fake_instance"].source == "acme-dce 0.3.0"
    assert by_name["fake_class"].source == "other 2.1"
    assert isinstance(by_name["fake_class"].fitter, FakeClassFitter)
    info = by_name["fake_a"]
    assert isinstance(info, FitterInfo)
    assert (info.version, info.model, info.input, info.method) == (
        "1.0",
        "patlak",
        "concentration",
        "llsq",
    )
    with pytest.raises(AttributeError):
        info.name = "x"  # frozen
    assert registry.get_fitter("fake_one") is by_name["fake_one"].fitter
    assert phantomdce.get_fitter("fake_one") is by_name["fake_one"].fitter
    assert [i.name for i in phantomdce.list_fitters()] == [i.name for i in infos]
    assert [i.name for i in registry.resolve_fitters(["fake_b", "fake_a"])] == [
        "fake_b",
        "fake_a",
    ]


def test_discovery_is_cached_until_refresh(plugins):
    calls = []

    def factory():
        calls.append(1)
        return FakeFitter()

    plugins(FakeEntryPoint("f", factory))
    registry.list_fitters()
    registry.get_fitter("fake")
    assert len(calls) == 1
    registry.refresh()
    registry.list_fitters()
    assert len(calls) == 2


class NoModel(FakeFitter):
    model = "nonsense"


@pytest.mark.parametrize(
    ("obj", "error"),
    [
        (ImportError("No module named 'acme_dce'"), "No module named 'acme_dce'"),
        (RuntimeError("boom at import"), "RuntimeError: boom at import"),
        (NoModel("bad_model"), "model = 'nonsense'"),
        (object(), "attribute 'name'"),
        (lambda: 1 / 0, "ZeroDivisionError"),
        (FakeFitter("a:b"), "without ':'"),
    ],
)
def test_broken_plugin_warns_and_is_skipped(plugins, obj, error):
    plugins(
        FakeEntryPoint("good", FakeFitter("good")),
        FakeEntryPoint("broken", obj, dist="brokenpkg", version="9.9"),
        builtins=[FakeFitter("builtin_one")],
    )
    with pytest.warns(PluginWarning) as record:
        names = [i.name for i in registry.list_fitters()]
    assert names == ["builtin_one", "good"]
    assert len(record) == 1
    message = str(record[0].message)
    assert "'broken'" in message and "acme_dce.fit:broken" in message
    assert "brokenpkg 9.9" in message
    assert error in message
    assert issubclass(PluginWarning, UserWarning)


def test_duplicate_name_names_both_sources(plugins):
    plugins(
        FakeEntryPoint("mine", FakeFitter("nlls_tofts"), dist="acme-dce", version="0.3.0"),
        builtins=[FakeFitter("nlls_tofts")],
    )
    with pytest.raises(DuplicateFitterError, match="'nlls_tofts'") as info:
        registry.list_fitters()
    assert "builtin" in str(info.value) and "acme-dce 0.3.0" in str(info.value)
    assert isinstance(info.value, ValueError)

    plugins(
        FakeEntryPoint("one", FakeFitter("same"), dist="pkg-one", version="1"),
        FakeEntryPoint("two", FakeFitter("same"), dist="pkg-two", version="2"),
    )
    with pytest.raises(DuplicateFitterError, match=r"pkg-one 1.*pkg-two 2"):
        registry.get_fitter("same")


def test_unknown_name_lists_close_matches(plugins):
    plugins(
        FakeEntryPoint("a", FakeFitter("nlls_tofts")),
        FakeEntryPoint("b", FakeFitter("nlls_extended_tofts")),
        FakeEntryPoint("c", FakeFitter("llsq_patlak")),
    )
    with pytest.raises(UnknownFitterError) as info:
        registry.get_fitter("nls_tofts")
    message = str(info.value)
    assert "did you mean 'nlls_tofts'" in message
    assert "llsq_patlak, nlls_extended_tofts, nlls_tofts" in message
    assert isinstance(info.value, LookupError)
    with pytest.raises(UnknownFitterError, match="nothing"):
        registry.resolve_fitters(["nlls_tofts", "nothing"])


SPEC_MODULE = """
    class SpecFitter:
        name = "spec_fitter"
        version = "0.1"
        model = "tofts"
        input = "concentration"
        method = "grid"

        def fit(self, data):
            raise NotImplementedError

    instance = SpecFitter()

    def several():
        a, b = SpecFitter(), SpecFitter()
        a.name, b.name = "spec_a", "spec_b"
        return [a, b]

    not_a_fitter = 42
"""


def test_spec_with_several_fitters_is_not_one_fitter(plugins, tmp_path, monkeypatch):
    plugins()
    (tmp_path / "spec_fitters_mod.py").write_text(textwrap.dedent(SPEC_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "spec_fitters_mod", raising=False)
    with pytest.raises(ValueError, match="provides 2 fitters"):
        registry.get_fitter("spec_fitters_mod:several")


def test_module_attribute_spec(plugins, tmp_path, monkeypatch):
    plugins(FakeEntryPoint("dup", FakeFitter("spec_a")))
    (tmp_path / "spec_fitters_mod.py").write_text(textwrap.dedent(SPEC_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "spec_fitters_mod", raising=False)

    from_class = registry.get_fitter("spec_fitters_mod:SpecFitter")
    assert type(from_class).__name__ == "SpecFitter" and from_class.name == "spec_fitter"
    from_instance = phantomdce.get_fitter("spec_fitters_mod:instance")
    assert from_instance is sys.modules["spec_fitters_mod"].instance

    (info,) = registry.resolve_fitters(["spec_fitters_mod:SpecFitter"])
    assert info.source == "spec spec_fitters_mod:SpecFitter"
    # a spec may not reuse a registered name: 'spec_a' comes from the acme-dce plug-in too
    with pytest.raises(DuplicateFitterError, match=r"spec spec_fitters_mod.*acme-dce 0.3.0"):
        registry.get_fitter("spec_fitters_mod:several")
    with pytest.raises(DuplicateFitterError, match=r"spec spec_fitters_mod.*acme-dce 0.3.0"):
        registry.resolve_fitters(["spec_a", "spec_fitters_mod:several"])
    with pytest.raises(ModuleNotFoundError, match="cannot import module 'no_such_module_xyz'"):
        registry.get_fitter("no_such_module_xyz:Fitter")
    with pytest.raises(TypeError, match="attribute 'name'"):
        registry.get_fitter("spec_fitters_mod:not_a_fitter")
    with pytest.raises(AttributeError, match="no attribute 'Missing'"):
        registry.get_fitter("spec_fitters_mod:Missing")
    with pytest.raises(ModuleNotFoundError):
        registry.get_fitter("no_such_module_xyz:Fitter")
    with pytest.raises(ValueError, match="module:attribute"):
        registry.get_fitter("spec_fitters_mod:")


def test_missing_builtin_module_means_no_builtins(monkeypatch):
    monkeypatch.setitem(sys.modules, "phantomdce.fit.builtin", None)
    assert registry._builtin_fitters() == []


def test_other_errors_from_builtin_module_propagate(monkeypatch):
    monkeypatch.setitem(
        sys.modules, "phantomdce.fit.builtin", SimpleNamespace(__name__="phantomdce.fit.builtin")
    )
    with pytest.raises(ImportError, match="builtin_fitters"):
        registry._builtin_fitters()


def test_cli_table_and_json(plugins, capsys):
    plugins(
        FakeEntryPoint("x", FakeFitter("zeta_fitter"), dist="acme-dce", version="0.3.0"),
        builtins=[FakeFitter("alpha_fitter")],
    )
    assert main(["fitters"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "model", "input", "method", "version", "source"]
    assert lines[1].split() == ["alpha_fitter", "patlak", "concentration", "llsq", "1.0", "builtin"]
    assert lines[2].split()[0] == "zeta_fitter" and lines[2].endswith("acme-dce 0.3.0")

    assert main(["fitters", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows == [
        {
            "name": "alpha_fitter",
            "model": "patlak",
            "input": "concentration",
            "method": "llsq",
            "version": "1.0",
            "source": "builtin",
        },
        {
            "name": "zeta_fitter",
            "model": "patlak",
            "input": "concentration",
            "method": "llsq",
            "version": "1.0",
            "source": "acme-dce 0.3.0",
        },
    ]


def test_cli_duplicate_is_an_error(plugins, capsys):
    plugins(FakeEntryPoint("x", FakeFitter("same")), builtins=[FakeFitter("same")])
    assert main(["fitters"]) == 2
    assert "'same'" in capsys.readouterr().err


def test_registry_doctests(plugins):
    plugins()
    result = doctest.testmod(registry, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


# --- docs/plugins.md ------------------------------------------------------------------------


def _doc_blocks(language):
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), flags=re.DOTALL)


@pytest.fixture
def doc_fitter_module(tmp_path, monkeypatch):
    """The example fitter of docs/plugins.md, installed as the doc's ``acme_dce.fit``."""
    (example,) = [b for b in _doc_blocks("python") if "class PatlakLLSQ" in b]
    package = tmp_path / "acme_dce"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "fit.py").write_text(example)
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("acme_dce", "acme_dce.fit"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    return example


def _patlak_case(ktrans, vp, *, dt=2.0):
    t = np.arange(0.0, 300.0, dt)
    ca = np.where(t >= 20.0, 6.0 * ((t - 20.0) / 30.0) * np.exp(-(t - 20.0) / 40.0), 0.0)
    ct = patlak(t, ca, ktrans=np.asarray(ktrans), vp=np.asarray(vp))
    return xr.Dataset(
        {"ct": (("voxel", "time"), ct), "ca": ("time", ca)},
        coords={"time": ("time", t, {"units": "s"})},
        attrs={"dt": dt},
    )


def test_doc_example_fitter_recovers_patlak(doc_fitter_module, rng):
    namespace = {}
    exec(compile(doc_fitter_module, str(DOC), "exec"), namespace)
    fitter = namespace["PatlakLLSQ"]()
    check_fitter(fitter, source="docs/plugins.md")

    ktrans = np.array([0.02, 0.1, 0.3, 0.05])
    vp = np.array([0.01, 0.05, 0.1, 0.0])
    data = _patlak_case(ktrans, vp)
    data["ct"][3, 10] = np.nan  # one voxel it cannot fit
    before = data.copy(deep=True)
    result = fitter.fit(data)
    xr.testing.assert_identical(data, before)  # input untouched
    assert result.sizes == {"voxel": 4}
    np.testing.assert_array_equal(result["success"], [True, True, True, False])
    np.testing.assert_allclose(result["Ktrans"][:3], ktrans[:3], rtol=1e-8)
    np.testing.assert_allclose(result["vp"][:3], vp[:3], rtol=1e-8, atol=1e-10)
    assert np.isnan(result["Ktrans"][3]) and np.isnan(result["vp"][3])

    noisy = _patlak_case(np.full(200, 0.1), np.full(200, 0.05))
    noisy["ct"] = noisy["ct"] + rng.normal(0.0, 0.002, noisy["ct"].shape)
    fitted = fitter.fit(noisy)
    assert abs(float(fitted["Ktrans"].mean()) - 0.1) < 0.002
    assert abs(float(fitted["vp"].mean()) - 0.05) < 0.002


def test_doc_usage_snippet_and_spec(doc_fitter_module, plugins, capsys):
    plugins()
    (usage,) = [b for b in _doc_blocks("python") if "from acme_dce.fit import" in b]
    exec(compile(usage, str(DOC), "exec"), {})
    assert "Ktrans" in capsys.readouterr().out

    fitter = phantomdce.get_fitter("acme_dce.fit:PatlakLLSQ")
    assert fitter.name == "acme_patlak_llsq"
    result = fitter.fit(_patlak_case([0.2], [0.03], dt=5.0))
    np.testing.assert_allclose([result["Ktrans"][0], result["vp"][0]], [0.2, 0.03], rtol=1e-8)

    (toml,) = [b for b in _doc_blocks("toml") if "phantomdce.fitters" in b]
    assert 'acme_patlak_llsq = "acme_dce.fit:PatlakLLSQ"' in toml

    plugins(FakeEntryPoint("acme_patlak_llsq", sys.modules["acme_dce.fit"].PatlakLLSQ))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert registry.list_fitters()[0].fitter.name == "acme_patlak_llsq"


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda ds: ds.drop_vars("ca"), "no variable 'ca'"),
        (lambda ds: ds.assign(ca=("voxel", np.ones(2))), r"ca has dims \('voxel',\)"),
        (lambda ds: ds.assign(ca=ds["ca"].where(ds["time"] < 2.0)),
         r"ca\[2\] = nan mM: expected finite values \(2 of 4 are not\)"),
        (lambda ds: ds.isel(time=[0, 1]), "time has 2 samples: expected >= 3"),
        (lambda ds: ds.assign_coords(time=[0.0, 2.0, 1.0, 3.0]),
         r"time\[2\] = 1.0 s after time\[1\] = 2.0 s: expected strictly increasing"),
    ],
)
def test_concentration_inputs_name_what_is_wrong(change, match):
    """The checks every concentration plug-in shares (phantomdce.fit.base)."""
    from phantomdce.fit.base import concentration_inputs

    ds = xr.Dataset(
        {"ct": (("time", "voxel"), np.ones((4, 2))), "ca": ("time", np.ones(4))},
        coords={"time": [0.0, 1.0, 2.0, 3.0]},
    )
    t, ca, ct = concentration_inputs(ds)
    assert ct.shape == (2, 4) and t.shape == ca.shape == (4,)  # voxel-major, whatever order
    with pytest.raises(ValueError, match=match):
        concentration_inputs(change(ds))
