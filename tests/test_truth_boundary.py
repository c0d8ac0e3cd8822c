"""The truth never reaches the estimator (issue 11, item 10).

Every scenario in ``scenarios/`` (shrunk: one replicate, the first and last case, one or two
phantom subjects) runs through the real engine (:mod:`phantomdce.engine.run`, phantom
scenarios included) with a fitter that records its input. The input must hold no truth
variable, no truth index, no attribute other than the acquisition settings a site knows (the
list below is this test's own, not the package's), the analyst's assumptions and the
pipeline's settings, and no value only the truth holds: the true B1, haematocrit or bolus
arrival where they differ from what the analyst assumes, the AIF's amplitude and the noise
level.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr

import truth_recorder
from phantomdce.dro.boundary import (
    ACQUISITION_ATTRS,
    PROVENANCE_ATTRS,
    SUBJECT_TRUTH_ATTRS,
    acquisition_attrs,
)
from phantomdce.dro.protocol import PROTOCOL_FIELDS
from phantomdce.dro.scenario import parse_scenario
from phantomdce.dro.simulate import simulate_case
from phantomdce.fit.pipeline import Pipeline
from phantomdce.signal import native_t1

ROOT = Path(__file__).resolve().parents[1]
SCENARIO_FILES = sorted(
    p
    for p in (ROOT / "scenarios").rglob("*.toml")
    if "include" not in tomllib.loads(p.read_text(encoding="utf-8"))
    # scenarios/sites/ holds site descriptions for `phantomdce assess`/`optimise`, not
    # scenarios: assess runs its scenarios through the engine, whose tests cover them
    and "sites" not in p.relative_to(ROOT / "scenarios").parts
)
RECORDER = "truth_recorder:Recorder"

#: What a site knows (protocol sheet, console, injector, voxel geometry): this test's list.
KNOWN = {
    "dt",
    "n_baseline",
    "duration",
    "n_frames",
    "fa",
    "tr",
    "flip_angles",
    "field_strength",
    "agent",
    "r1",
    "dose",
    "weight",
    "injection_rate",
    "injection_volume",
    "saline_flush",
    "arterial_voxels",
    "vfa_averages",
    "vfa_sigma_ratio",  # from the averages of both series and the receiver (scanner model)
    "in_plane_mm",
    "slice_mm",
    "gap_mm",
}
#: Variables and coordinates that only the truth holds.
TRUTH_NAMES = {
    "Ktrans",
    "ve",
    "vp",
    "kep",
    "fp",
    "ps",
    "m0",
    "signal_pre",
    "arterial_signal_pre",
    "tissue",
    "replicate",
}


def _is_phantom(raw: dict[str, Any]) -> bool:
    return "phantom" in raw


def _raw(path: Path) -> dict[str, Any]:
    raw = tomllib.loads(path.read_text(encoding="utf-8"))
    raw.setdefault("name", path.stem)
    return raw


def _leaves(value: Any, key: tuple = ()) -> Iterator[tuple[tuple, Any]]:
    """Every (key path, scalar) in a nested attribute value."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _leaves(v, (*key, k))
    elif isinstance(value, list | tuple | np.ndarray):
        for i, v in enumerate(value):
            yield from _leaves(v, (*key, i))
    else:
        yield key, value


def _same(a: Any, b: Any) -> bool:
    try:
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    except (TypeError, ValueError):
        return a == b


def _truth_values(protocols, pipe: Pipeline) -> list[tuple[str, float]]:
    """Values only the truth holds, for these protocols and this pipeline."""
    out = []
    for p in protocols:
        assumed_bat = pipe.population_bat if pipe.population_bat is not None else (
            p.n_baseline * p.dt
        )
        if not _same(p.b1, pipe.b1):
            out.append(("b1", p.b1))
        if not _same(p.hct, pipe.hct):
            out.append(("hct", p.hct))
        if not _same(p.bolus_arrival, assumed_bat):
            out.append(("bat", p.bolus_arrival))
        if math.isfinite(p.snr):
            out.append(("snr", p.snr))
        if not _same(p.aif_scale, 1.0):
            out.append(("aif_scale", p.aif_scale))
        if not _same(p.blood_fraction, 1.0):
            out.append(("blood_fraction", p.blood_fraction))
    return out


def check_input(data: xr.Dataset, protocols, acquisitions, pipe: Pipeline, where: str) -> None:
    """Fail if any truth reached a fitter's input ``data``."""
    names = set(data.variables)
    assert not names & TRUTH_NAMES, f"{where}: truth variables {names & TRUTH_NAMES}"
    roles = {n for n, v in data.variables.items() if v.attrs.get("role") == "truth"}
    assert not roles, f"{where}: variables marked truth {roles}"
    attrs = dict(data.attrs)
    extra = {
        k
        for k in attrs
        if k not in KNOWN
        and not k.startswith(("pipeline_", "assumed_"))
        and k != "acquisition_units"
    }
    assert not extra, f"{where}: attributes a site does not know: {sorted(extra)}"
    # each known setting holds a value the protocol or the acquisition has
    legit: dict[str, list] = {}
    for p in protocols:
        for k, v in p.as_attrs().items():
            legit.setdefault(k, []).append(v)
    for a in acquisitions:
        for k, v in dataclasses.asdict(a).items():
            legit.setdefault(k, []).append(v)
    for k in KNOWN & set(attrs):
        assert any(
            len(a := list(_leaves(attrs[k]))) == len(b := list(_leaves(v)))
            and all(_same(x, y) for (_, x), (_, y) in zip(a, b, strict=True))
            for v in legit[k]
        ), f"{where}: {k} = {attrs[k]!r} is none of the acquisition's values {legit[k]}"
    # the assumptions are the pipeline's own
    bat = {pipe.assumed_bat(xr.Dataset(attrs={"n_baseline": p.n_baseline, "dt": p.dt}))
           for p in protocols}
    assert _same(attrs["assumed_b1"], pipe.b1), where
    assert _same(attrs["assumed_hct"], pipe.hct), where
    assert any(_same(attrs["assumed_bat"], b) for b in bat), where
    assert _same(attrs["assumed_t1_blood"], native_t1("blood", attrs["field_strength"])), where
    # no value only the truth holds, except where a known setting holds its own equal value
    verified = KNOWN | {k for k in attrs if k.startswith(("pipeline_", "assumed_"))}
    for name, value in _truth_values(protocols, pipe):
        for key, leaf in _leaves(attrs):
            if key[0] in verified or isinstance(leaf, str | bool):
                continue
            assert not _same(leaf, value), f"{where}: the true {name} = {value} at {key}"


def _made_by(data: xr.Dataset, pipe: Pipeline) -> bool:
    return all(_same(data.attrs.get(k), v) for k, v in pipe.as_attrs().items())


def _shrunk_sweep(raw: dict[str, Any]) -> dict[str, Any]:
    """The first and last value of each swept key (zip groups keep their pairing)."""
    out = {}
    for k, v in raw.get("sweep", {}).items():
        out[k] = [v[0], v[-1]] if len(v) > 1 else list(v)
    return out


def _run_dro(path: Path, tmp: Path) -> list[tuple[xr.Dataset, Any, Any, Pipeline]]:
    from phantomdce.engine.run import execute, plan_run

    raw = _raw(path)
    fit = {**raw.get("fit", {}), "isolate": "none"}
    plan = plan_run(
        path, tmp / raw["name"], fitters=[RECORDER], overrides={"replicates": 1, "fit": fit}
    )
    units = [plan.units[0], plan.units[-1]] if len(plan.units) > 1 else plan.units
    plan = dataclasses.replace(plan, units=units)
    truth_recorder.RECORDS.clear()
    execute(plan)
    assert truth_recorder.RECORDS, f"{path.name}: the recorder saw nothing"
    protocols = [c.protocol for c in plan.scenario.cases()]
    pipes = {e.pipeline for e in plan.fit.entries(plan.fitters)}
    out = []
    for data in truth_recorder.RECORDS:
        # the pipeline that made this input: the one whose settings it names
        made = [p for p in pipes if _made_by(data, p)]
        assert made, f"{path.name}: an input no pipeline of the plan made"
        out.append((data, protocols, [], made[0]))
    return out


def _run_phantom(path: Path, tmp: Path) -> list[tuple[xr.Dataset, Any, Any, Pipeline]]:
    from phantomdce.engine.run import execute, plan_run

    raw = _raw(path)
    overrides = {
        "replicates": 1,
        "phantom": {**raw["phantom"], "subjects": min(2, raw["phantom"].get("subjects", 1))},
        "sweep": _shrunk_sweep(raw),
        "fit": {**raw.get("fit", {}), "isolate": "none"},
    }
    truth_recorder.RECORDS.clear()
    plan = plan_run(path, tmp / raw["name"], fitters=[RECORDER], overrides=overrides)
    execute(plan)
    assert truth_recorder.RECORDS, f"{path.name}: the recorder saw nothing"
    ps = plan.scenario
    cases = ps.cases()
    protocols = [ps.subject_protocol(c, s) for c in cases for s in range(ps.subjects)]
    pipe = plan.fit.pipeline
    return [(d, protocols, [c.acquisition for c in cases], pipe) for d in truth_recorder.RECORDS]


def _run(path: Path, tmp: Path):
    raw = _raw(path)
    return (_run_phantom if _is_phantom(raw) else _run_dro)(path, tmp)


FAST = {"vfa_b1_error.toml"}  # the example, in the default suite; the rest are slow


def test_every_study_scenario_is_covered():
    studies = [
        p for p in (ROOT / "scenarios").rglob("*.toml")
        if "include" in tomllib.loads(p.read_text(encoding="utf-8"))
    ]
    files = {p.resolve() for p in SCENARIO_FILES}
    for study in studies:
        for inc in tomllib.loads(study.read_text(encoding="utf-8"))["include"]:
            assert (study.parent / inc).resolve() in files
    assert any(_is_phantom(_raw(p)) for p in SCENARIO_FILES)
    assert FAST <= {p.name for p in SCENARIO_FILES}


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(p, id=p.stem, marks=() if p.name in FAST else pytest.mark.slow)
        for p in SCENARIO_FILES
    ],
)
def test_no_truth_reaches_the_fitter(path, tmp_path):
    for k, (data, protocols, acquisitions, pipe) in enumerate(_run(path, tmp_path)):
        check_input(data, protocols, acquisitions, pipe, f"{path.name} input {k}")


def b1_case():
    sc = parse_scenario(
        {
            "name": "b1",
            "seed": 3,
            "replicates": 2,
            "protocol": {"snr": 30.0, "b1": 0.9, "hct": 0.38, "bat": 31.0, "aif_scale": 1.2},
            "tissue": {"model": "extended_tofts", "Ktrans": 0.2, "ve": 0.3, "vp": 0.05},
        }
    )
    return simulate_case(sc, sc.cases()[0])


def test_the_b1_error_case_gives_the_fitter_no_truth():
    ds = b1_case()
    for pipe in (
        Pipeline(),
        Pipeline(aif="measured", baseline="true"),
        Pipeline(t1="true", concentration="true", aif="population"),
    ):
        data = pipe(ds)
        check_input(data, [b1_case_protocol()], [], pipe, f"{pipe}")
        assert data.attrs["assumed_hct"] == 0.42 and data.attrs["assumed_b1"] == 1.0
        assert data.attrs["assumed_bat"] == 25.0  # nominal n_baseline * dt, not the true 31 s


def b1_case_protocol():
    from phantomdce.dro.protocol import Protocol

    return Protocol.from_mapping(
        {"snr": 30.0, "b1": 0.9, "hct": 0.38, "bat": 31.0, "aif_scale": 1.2}
    )


def test_stages_read_no_truth_attribute():
    """A stage's result does not move when the truth attributes are changed."""
    ds = b1_case()
    poisoned = ds.copy()
    poisoned.attrs = {
        **ds.attrs,
        "b1": 0.5,
        "hct": 0.1,
        "bat": 70.0,
        "aif": "weinmann",
        "aif_scale": 3.0,
        "snr": 2.0,
        "blood_fraction": 0.2,
        "case_values": {"b1": 0.5},
    }
    for pipe in (Pipeline(aif="population"), Pipeline(aif="measured", t1="vfa_linear")):
        a, b = pipe(ds), pipe(poisoned)
        xr.testing.assert_identical(a, b)


def test_every_protocol_key_is_acquisition_or_truth():
    assert not ACQUISITION_ATTRS & SUBJECT_TRUTH_ATTRS
    assert not ACQUISITION_ATTRS & PROVENANCE_ATTRS
    assert set(PROTOCOL_FIELDS) <= ACQUISITION_ATTRS | SUBJECT_TRUTH_ATTRS
    ds = b1_case()
    assert set(ds.attrs) <= ACQUISITION_ATTRS | SUBJECT_TRUTH_ATTRS | PROVENANCE_ATTRS
    known = acquisition_attrs(ds.attrs)
    assert "b1" not in known and "hct" not in known and known["dt"] == 5.0
    assert known["acquisition_units"]["dt"] == "s"


def test_dcmri_adapter_reads_the_assumed_haematocrit(monkeypatch):
    # the reference plug-in is part of this repository: import it from its source folder
    plugin = Path(__file__).parents[1] / "fitters" / "phantomdce-dcmri" / "src"
    monkeypatch.syspath_prepend(str(plugin))
    from phantomdce_dcmri.fitters import DcmriFitter

    ds = b1_case()
    data = Pipeline(t1="true", concentration="true")(ds).isel(voxel=slice(0, 1))
    fitter = DcmriFitter("extended_tofts")
    assert fitter.fit(data).attrs["dcmri_H"] == 0.42
    data.attrs["assumed_hct"] = 0.3
    data.attrs["hct"] = 0.38  # a true value, were it given, is not read
    assert fitter.fit(data).attrs["dcmri_H"] == 0.3


def test_roi_rules_find_the_arrival_on_the_images():
    from phantomdce.dro.protocol import Protocol
    from phantomdce.fit.roi import bolus_arrival_from_images, carotid_roi_auto, tumour_rois
    from phantomdce.phantom.acquire import Acquisition, acquire
    from phantomdce.phantom.anatomy import make_neck

    ph = make_neck((16, 96, 96), seed=6)
    for bat in (17.0, 31.0):  # before and after the nominal n_baseline * dt = 20 s
        proto = Protocol.from_mapping({"dt": 4.0, "duration": 120.0, "snr": 30.0, "bat": bat})
        acquired = acquire(ph, proto, Acquisition(2.0, 3.0), seed=1)
        found = bolus_arrival_from_images(acquired)
        assert set(acquired.attrs) <= ACQUISITION_ATTRS | SUBJECT_TRUTH_ATTRS | PROVENANCE_ATTRS
        assert bat - proto.dt <= found <= bat + proto.dt
        rois, carotid = tumour_rois(acquired), carotid_roi_auto(acquired, n=6)
        # the rules read no truth: a wrong simulated arrival in the attributes changes nothing
        for wrong in (0.0, 80.0):
            lied = acquired.assign_attrs(bat=wrong)
            xr.testing.assert_equal(tumour_rois(lied), rois)
            np.testing.assert_array_equal(carotid_roi_auto(lied, n=6), carotid)
