"""The Cramér-Rao bound (phantomdce.precision): forward model, derivatives, figures, Monte Carlo.

The Monte-Carlo checks compute the bound and the estimator's spread independently: the
spread comes from simulated cases fitted by the built-in pipeline and NLLS fitter, which
never see the bound.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from phantomdce.dro.protocol import Protocol
from phantomdce.dro.scenario import parse_scenario
from phantomdce.dro.simulate import case_aif, simulate_case
from phantomdce.dro.truth import aif_on_grid, tissue_truth, truth_grid
from phantomdce.fit.pipeline import Pipeline
from phantomdce.fit.registry import get_fitter
from phantomdce.kinetics import irf_terms
from phantomdce.params import MODELS
from phantomdce.precision import (
    KINDS,
    SignalModel,
    crlb,
    crlb_case,
    protocol_from_attrs,
)
from phantomdce.signal import r1_from_concentration, spgr

#: One interior tissue per model (package units).
TISSUES = {
    "tofts": {"Ktrans": 0.2, "ve": 0.25},
    "extended_tofts": {"Ktrans": 0.2, "ve": 0.25, "vp": 0.05},
    "patlak": {"Ktrans": 0.2, "vp": 0.05},
    "2cxm": {"fp": 30.0, "ps": 0.15, "ve": 0.25, "vp": 0.05},
    "2cum": {"fp": 30.0, "ps": 0.15, "vp": 0.05},
}
#: The issue's case: extended Tofts, T10 1.5 s, dt 5 s, 300 s, SNR 20, VFA [5, 15, 30] deg.
ISSUE_TISSUE = {"Ktrans": 0.2, "ve": 0.25, "vp": 0.05}


def _scenario(model: str, tissue: dict, *, replicates: int, snr: float, seed: int = 7, **proto):
    table = {"model": model, **{k: [v] for k, v in tissue.items()}, "T10": [1.5]}
    return parse_scenario(
        {
            "name": "precision",
            "seed": seed,
            "replicates": replicates,
            "protocol": {"preset": "esnr2022", "snr": snr, **proto},
            "tissue": table,
        }
    )


# -- the forward model is the simulator's ------------------------------------------------------


@pytest.mark.parametrize("sampling", ["instant", "average"])
@pytest.mark.parametrize("model", list(MODELS))
def test_signal_model_reproduces_the_simulators_noise_free_signals(model, sampling):
    sc = _scenario(model, TISSUES[model], replicates=1, snr=float("inf"), sampling=sampling)
    case = sc.cases()[0]
    ds = simulate_case(sc, case)
    sm = SignalModel(case.protocol)
    dyn = sm.dynamic(model, TISSUES[model], t10=1.5, m0=1000.0)
    np.testing.assert_allclose(dyn.real[0], ds["signal"].values[0], rtol=1e-11)
    assert np.all(dyn.imag == 0.0)
    vfa = sm.vfa(t10=1.5, m0=1000.0)
    np.testing.assert_allclose(vfa.real[0], ds["vfa_signal"].values[0], rtol=1e-12)
    np.testing.assert_allclose(
        sm.pre_contrast(t10=1.5, m0=1000.0), ds["signal_pre"].values[0], rtol=1e-12
    )


def _truth_signal(protocol: Protocol, model: str, params: dict, t10: float, m0: float):
    """The dynamic signal made by the truth side's own functions (instant sampling)."""
    grid = truth_grid(protocol.frame_times, bat=protocol.bolus_arrival)
    ca = aif_on_grid(grid, case_aif(protocol))
    c = tissue_truth(model, {k: np.array([v]) for k, v in params.items()}, grid=grid, ca_grid=ca)
    r1 = r1_from_concentration(
        c[0, grid.frame_idx], r10=1.0 / t10, r1_relaxivity=protocol.relaxivity
    )
    return spgr(r1, fa=protocol.fa, tr=protocol.tr, m0=m0, b1=protocol.b1)


@pytest.mark.parametrize("model", list(MODELS))
def test_complex_step_jacobian_matches_central_differences_of_the_truth(model):
    pr = Protocol(b1=0.9)
    sm = SignalModel(pr)
    base = dict(TISSUES[model])
    jd, jv, names = sm.jacobians(model, base, t10=1.5, m0=1000.0)
    assert names == [*MODELS[model].parameters, "m0", "T10"]
    full = {**base, "m0": 1000.0, "T10": 1.5}
    for i, name in enumerate(names):
        h = 1e-6 * full[name]
        up, down = dict(full), dict(full)
        up[name] += h
        down[name] -= h
        f = lambda v: _truth_signal(  # noqa: E731
            pr, model, {k: v[k] for k in base}, v["T10"], v["m0"]
        )
        fd = (f(up) - f(down)) / (2 * h)
        scale = np.abs(fd).max()
        assert scale > 0
        np.testing.assert_allclose(jd[0, :, i], fd, rtol=0, atol=1e-6 * scale, err_msg=name)
    # the VFA columns (M0 and T10 of the VFA series)
    for i, name in enumerate(["m0", "T10"]):
        h = 1e-6 * full[name]
        v = {"m0": 1000.0, "T10": 1.5}
        up, down = dict(v), dict(v)
        up[name] += h
        down[name] -= h
        g = lambda w: spgr(  # noqa: E731
            1.0 / w["T10"], fa=np.array(pr.flip_angles), tr=pr.tr, m0=w["m0"], b1=pr.b1
        )
        fd = (g(up) - g(down)) / (2 * h)
        np.testing.assert_allclose(jv[0, :, i], fd, rtol=1e-7, err_msg=name)


@pytest.mark.parametrize("model", ["extended_tofts", "2cxm"])
def test_jacobian_of_window_averaged_frames_matches_central_differences(model):
    # the signal model itself is checked against the simulator above, for both samplings
    sm = SignalModel(Protocol(sampling="average", dt=4.0))
    base = dict(TISSUES[model])
    jd, _, names = sm.jacobians(model, base, t10=1.5, m0=1000.0)
    full = {**base, "m0": 1000.0, "T10": 1.5}
    for i, name in enumerate(names):
        # a larger step than above: the window means (cumulative sums over 3e4 nodes) carry
        # rounding that a 1e-6 step amplifies beyond the tolerance; complex steps do not
        h = 1e-4 * full[name]
        up, down = dict(full), dict(full)
        up[name] += h
        down[name] -= h
        f = lambda v: sm.dynamic(  # noqa: E731
            model, {k: v[k] for k in base}, t10=v["T10"], m0=v["m0"]
        ).real[0]
        fd = (f(up) - f(down)) / (2 * h)
        scale = np.abs(fd).max()
        np.testing.assert_allclose(jd[0, :, i], fd, rtol=0, atol=1e-6 * scale, err_msg=name)


@pytest.mark.parametrize("model", list(MODELS))
def test_complex_irf_is_the_kinetics_irf(model):
    from phantomdce import precision

    p = {k: np.array([v], dtype=np.complex128) for k, v in TISSUES[model].items()}
    vp, amps, rates = precision._irf_complex(model, p)
    ref = irf_terms(model, **{k: v for k, v in TISSUES[model].items()})
    np.testing.assert_allclose(vp.real, ref[0], rtol=1e-14, atol=0)
    np.testing.assert_allclose(amps.real[0], ref[1], rtol=1e-12)
    np.testing.assert_allclose(rates.real[0], ref[2], rtol=1e-12)


# -- the issue's figures ---------------------------------------------------------------------

#: The independent check's Ktrans CV bounds (issue 12), %, by kind.
ISSUE_CV = {
    "known": 1.66,
    "baseline_m0": 3.72,
    "two_step": 19.8,
    "joint": 16.3,
    "joint_shared_m0": 9.8,
}
#: Relative tolerance on the issue's figures. They are given to 3 significant digits and
#: the independent check's AIF, TR, flip angle, relaxivity, field and sampling are not
#: stated; with the project's Protocol defaults (Parker AIF reshaped by a 2 mL/s injection
#: with flush, fa 15 deg, TR 4 ms, 3 T gadobutrol r1 4.97 /mM/s, instant sampling) every
#: figure is within 1 %. 2 % still rejects other plausible assumptions: the published
#: Parker AIF without the injection gives a joint bound of 14.95 % (8 % off).
ISSUE_RTOL = 0.02


@pytest.mark.parametrize("kind", KINDS)
def test_the_issue_figures_are_reproduced_with_the_protocol_defaults(kind):
    sd = crlb(Protocol(), "extended_tofts", ISSUE_TISSUE, t10=1.5, snr=20.0, kind=kind)
    cv = 100.0 * sd["Ktrans"] / ISSUE_TISSUE["Ktrans"]
    assert cv == pytest.approx(ISSUE_CV[kind], rel=ISSUE_RTOL)


def test_the_figures_pin_the_aif_assumption():
    published = Protocol().replace(injection_rate=None)
    sd = crlb(published, "extended_tofts", ISSUE_TISSUE, t10=1.5, snr=20.0, kind="joint")
    cv = 100.0 * sd["Ktrans"] / 0.2
    assert abs(cv / ISSUE_CV["joint"] - 1.0) > ISSUE_RTOL


def test_bounds_are_ordered_by_what_is_known():
    sd = {
        k: crlb(Protocol(), "extended_tofts", ISSUE_TISSUE, t10=1.5, snr=20.0, kind=k)["Ktrans"]
        for k in KINDS
    }
    assert sd["known"] < sd["baseline_m0"] < sd["joint_shared_m0"] < sd["joint"] < sd["two_step"]


def test_bound_scales_inversely_with_snr_and_vanishes_without_noise():
    a = crlb(Protocol(), "tofts", TISSUES["tofts"], snr=10.0, kind="joint")
    b = crlb(Protocol(), "tofts", TISSUES["tofts"], snr=40.0, kind="joint")
    for k in a:
        assert a[k] == pytest.approx(4.0 * b[k], rel=1e-9)
    z = crlb(Protocol(), "tofts", TISSUES["tofts"], snr=float("inf"), kind="joint")
    assert all(v == 0.0 for v in z.values())


def test_vfa_averages_tighten_the_two_step_bound():
    one = crlb(Protocol(), "extended_tofts", ISSUE_TISSUE, t10=1.5, kind="two_step")
    four = crlb(Protocol(vfa_averages=4), "extended_tofts", ISSUE_TISSUE, t10=1.5)
    assert four["T10"] == pytest.approx(one["T10"] / 2.0, rel=1e-9)
    assert four["Ktrans"] < one["Ktrans"]


def test_derived_parameters_follow_the_delta_method():
    sd = crlb(Protocol(), "2cum", TISSUES["2cum"], kind="known")
    assert set(sd) == {"fp", "ps", "vp", "Ktrans"}
    assert np.isfinite(sd["Ktrans"]) and sd["Ktrans"] > 0
    sd = crlb(Protocol(), "extended_tofts", ISSUE_TISSUE, kind="known")
    # kep = Ktrans / ve: at most the sum of the relative SDs (perfect anti-correlation)
    kep = 0.2 / 0.25
    assert sd["kep"] / kep <= sd["Ktrans"] / 0.2 + sd["ve"] / 0.25 + 1e-12


def test_arrays_broadcast_one_tissue_per_element():
    sd = crlb(
        Protocol(),
        "extended_tofts",
        {"Ktrans": [0.1, 0.2], "ve": 0.25, "vp": 0.05},
        t10=1.5,
        kind="two_step",
    )
    one = crlb(Protocol(), "extended_tofts", ISSUE_TISSUE, t10=1.5, kind="two_step")
    assert sd["Ktrans"].shape == (2,)
    assert sd["Ktrans"][1] == pytest.approx(one["Ktrans"], rel=1e-12)


def test_a_parameter_the_data_do_not_determine_has_an_infinite_bound():
    sd = crlb(Protocol(), "tofts", {"Ktrans": 0.0, "ve": 0.25}, kind="known")
    assert sd["ve"] == np.inf


# -- errors name the field ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "two-step"}, "kind='two-step'"),
        ({"snr": 0.0}, "snr=0.0"),
        ({"t10": -1.0}, "t10=-1.0"),
        ({"m0": 0.0}, "m0=0.0"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        crlb(Protocol(), "tofts", TISSUES["tofts"], **kwargs)


def test_bad_parameters_are_named():
    with pytest.raises(ValueError, match="missing \\['ve'\\]"):
        crlb(Protocol(), "tofts", {"Ktrans": 0.2})
    with pytest.raises(ValueError, match="ve=-0.1"):
        crlb(Protocol(), "tofts", {"Ktrans": 0.2, "ve": -0.1})
    with pytest.raises(ValueError, match="model='toft'"):
        crlb(Protocol(), "toft", {"Ktrans": 0.2})


# -- per case ---------------------------------------------------------------------------------


def test_crlb_case_gives_every_voxel_its_tissues_bound():
    sc = parse_scenario(
        {
            "name": "grid",
            "seed": 1,
            "replicates": 3,
            "protocol": {"preset": "esnr2022", "snr": 25.0, "dt": 4.0},
            "tissue": {"model": "extended_tofts", "Ktrans": [0.1, 0.3], "ve": [0.2], "vp": [0.05]},
        }
    )
    case = sc.cases()[0]
    ds = simulate_case(sc, case)
    assert protocol_from_attrs(ds.attrs).as_attrs() == case.protocol.as_attrs()
    out = crlb_case(ds, kind="joint")
    assert set(out.data_vars) == {"Ktrans", "ve", "vp", "kep", "T10"}
    assert out["Ktrans"].dims == ("voxel",) and out["Ktrans"].attrs["units"] == "/min"
    assert out.attrs["kind"] == "joint" and out.attrs["snr"] == 25.0
    for v in range(ds.sizes["voxel"]):
        tissue = {k: float(ds[k].values[v]) for k in ("Ktrans", "ve", "vp")}
        ref = crlb(
            case.protocol, "extended_tofts", tissue, t10=float(ds["T10"].values[v]), kind="joint"
        )
        assert float(out["Ktrans"].values[v]) == pytest.approx(ref["Ktrans"], rel=1e-12)
    assert np.unique(out["Ktrans"].values).size == 2


def test_crlb_case_reads_a_case_from_the_dro_store(tmp_path):
    from phantomdce.dro.store import open_dro, write_dro

    sc = parse_scenario(
        {
            "name": "stored",
            "seed": 1,
            "replicates": 2,
            "protocol": {"preset": "esnr2022"},
            "sweep": {"snr": [20.0, float("inf")]},
            "tissue": {"model": "tofts", "Ktrans": [0.1], "ve": [0.3]},
        }
    )
    tree = open_dro(write_dro(sc, tmp_path / "dro.zarr"))
    for case in sc.cases():
        stored = crlb_case(tree[case.name].to_dataset())
        fresh = crlb_case(simulate_case(sc, case))
        np.testing.assert_array_equal(stored["Ktrans"].values, fresh["Ktrans"].values)
    assert np.all(stored["Ktrans"].values == 0.0)  # the SNR = inf case has no noise


def test_the_truth_side_does_not_load_the_bound_and_the_bound_loads_no_estimator():
    code = (
        "import sys\nimport phantomdce.dro.simulate, phantomdce.dro.store\n"
        "print('phantomdce.precision' in sys.modules)\n"
        "import phantomdce.precision\n"
        "print(','.join(sorted(m for m in sys.modules if m.startswith(("
        "'phantomdce.fit', 'phantomdce.engine', 'phantomdce.report')))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[:2] == ["False", ""]


# -- Monte Carlo: the bound against the built-in estimator -------------------------------------

#: Pipeline settings whose estimator the bound of each kind describes.
PIPELINES = {
    "known": Pipeline(t1="true", baseline="true"),
    "baseline_m0": Pipeline(t1="true"),
    "two_step": Pipeline(),
}


def _monte_carlo(model, tissue, *, snr, kind, replicates, seed=7):
    """(bias, SD) of each parameter of the NLLS fits of simulated replicates, and the bound."""
    sc = _scenario(model, tissue, replicates=replicates, snr=snr, seed=seed)
    ds = simulate_case(sc, sc.cases()[0])
    res = get_fitter(f"nlls_{model}").fit(PIPELINES[kind](ds))
    ok = res["success"].values
    assert ok.mean() > 0.99
    stats = {}
    for name, true in tissue.items():
        est = res[name].values[ok]
        stats[name] = (est.mean() / true - 1.0, est.std(ddof=1))
    bound = crlb(sc.cases()[0].protocol, model, tissue, t10=1.5, snr=snr, kind=kind)
    return stats, bound


def _assert_matches(stats, bound, *, tol=0.10, max_bias=0.02):
    compared = 0
    for name, (bias, sd) in stats.items():
        if abs(bias) < max_bias:
            assert sd / bound[name] == pytest.approx(1.0, abs=tol), name
            compared += 1
    assert compared > 0, "no parameter met the comparison's conditions"


def test_bound_matches_the_monte_carlo_sd_of_the_nlls_fit_known_t10_and_m0():
    stats, bound = _monte_carlo(
        "extended_tofts", ISSUE_TISSUE, snr=20.0, kind="known", replicates=2000
    )
    _assert_matches(stats, bound)
    assert len(stats) == 3


#: Tissues of the every-model Monte Carlo. The 2CUM tissue of TISSUES (fp 30, ps 0.15,
#: vp 0.05) is fitted with a bias above 2 % in every parameter at dt 5 s even at SNR 50
#: (fp +5.5 %, ps -2.6 %, vp -3.2 %: the fitter's AIF is sampled at the frames), so the
#: comparison, which the issue limits to bias < 2 %, would compare nothing; this one is
#: fitted with |bias| < 2 % in ps and vp.
MC_TISSUES = {**TISSUES, "2cum": {"fp": 20.0, "ps": 0.1, "vp": 0.1}}


@pytest.mark.slow
@pytest.mark.parametrize("snr", [20.0, 50.0])
@pytest.mark.parametrize("model", list(MODELS))
def test_bound_matches_the_monte_carlo_sd_every_model(model, snr):
    stats, bound = _monte_carlo(model, MC_TISSUES[model], snr=snr, kind="known", replicates=3000)
    _assert_matches(stats, bound)


@pytest.mark.slow
@pytest.mark.parametrize("snr", [20.0, 30.0, 50.0])
def test_two_step_bound_matches_the_vfa_pipeline(snr):
    stats, bound = _monte_carlo(
        "extended_tofts", ISSUE_TISSUE, snr=snr, kind="two_step", replicates=4000, seed=11
    )
    for name, (_, sd) in stats.items():
        assert sd > 0.95 * bound[name], name  # a bound: no estimator beats it
    _assert_matches(stats, bound)


@pytest.mark.slow
def test_baseline_mean_estimator_is_above_the_baseline_m0_bound():
    """The pipeline's M0 is the mean of the baseline frames, not a joint fit: less efficient.

    The bound (M0 fitted with the kinetics, all frames) is below its SD by ~11 % (the
    delta-method SD of that estimator agrees with the Monte Carlo), so this checks the
    bound property, not a match.
    """
    stats, bound = _monte_carlo(
        "extended_tofts", ISSUE_TISSUE, snr=20.0, kind="baseline_m0", replicates=4000
    )
    for name, (_, sd) in stats.items():
        assert 1.0 < sd / bound[name] < 1.2, name


# -- the joint fitter (issue 12, part 2) ------------------------------------------------------

JOINT_SPEC = "phantomdce.fit.joint:joint_fitters"


def _joint_data(*, replicates, snr, seed=13, tissue=ISSUE_TISSUE, **proto):
    sc = _scenario("extended_tofts", tissue, replicates=replicates, snr=snr, seed=seed, **proto)
    case = sc.cases()[0]
    return case, Pipeline()(simulate_case(sc, case))


def test_the_joint_fitters_load_by_spec_as_signal_fitters():
    from phantomdce.fit.base import check_fitter
    from phantomdce.fit.registry import resolve_fitters

    infos = resolve_fitters([JOINT_SPEC])
    assert [i.name for i in infos] == [
        f"nlls_{m}_joint{s}"
        for m in ("tofts", "extended_tofts", "patlak")
        for s in ("", "_shared_m0")
    ]
    for info in infos:
        check_fitter(info.fitter)
        assert info.input == "signal"


@pytest.mark.parametrize("shared_m0", [False, True])
@pytest.mark.parametrize("model", ["tofts", "extended_tofts", "patlak"])
def test_the_joint_fit_recovers_noise_free_truth(model, shared_m0):
    from phantomdce.fit.joint import JointFitter

    # dt 1 s: the fitter's AIF, linear between frames, is then close to the continuous one
    sc = _scenario(model, TISSUES[model], replicates=2, snr=float("inf"), dt=1.0)
    data = Pipeline()(simulate_case(sc, sc.cases()[0]))
    data["signal"][1, 3] = np.nan  # a voxel that cannot be fitted
    before = data.copy(deep=True)
    out = JointFitter(model, shared_m0=shared_m0).fit(data)
    assert data.identical(before)
    assert out["success"].values.tolist() == [True, False]
    for name, true in TISSUES[model].items():
        assert float(out[name].values[0]) == pytest.approx(true, rel=0.01), name
        assert np.isnan(out[name].values[1])
    assert float(out["T10"].values[0]) == pytest.approx(1.5, rel=0.01)


def test_a_joint_fit_of_a_curve_without_contrast_is_not_a_success():
    from phantomdce.fit.joint import JointFitter

    flat = {"Ktrans": 0.0, "ve": 0.25, "vp": 0.0}
    _, data = _joint_data(replicates=50, snr=20.0, tissue=flat)
    out = JointFitter().fit(data)
    assert out["success"].values.mean() <= 0.02
    assert np.isnan(out["Ktrans"].values[~out["success"].values]).all()


def test_the_joint_fitter_names_what_its_input_lacks():
    from phantomdce.fit.joint import JointFitter

    _, data = _joint_data(replicates=1, snr=20.0)
    with pytest.raises(ValueError, match="'vfa_signal'"):
        JointFitter().fit(data.drop_vars("vfa_signal"))


@pytest.mark.slow
@pytest.mark.parametrize("snr", [20.0, 50.0])
@pytest.mark.parametrize("shared_m0", [False, True])
def test_the_joint_fit_reaches_its_bound(shared_m0, snr):
    """dt 2 s: the fit's bias is below 2 % (at dt 5 s it is not, see the next test)."""
    from phantomdce.fit.joint import JointFitter

    case, data = _joint_data(replicates=2000, snr=snr, dt=2.0)
    out = JointFitter(shared_m0=shared_m0).fit(data)
    ok = out["success"].values
    assert ok.mean() > 0.99
    kind = "joint_shared_m0" if shared_m0 else "joint"
    bound = crlb(case.protocol, "extended_tofts", ISSUE_TISSUE, t10=1.5, snr=snr, kind=kind)
    stats = {
        k: (out[k].values[ok].mean() / v - 1.0, out[k].values[ok].std(ddof=1))
        for k, v in ISSUE_TISSUE.items()
    }
    _assert_matches(stats, bound)


@pytest.mark.slow
def test_the_joint_fit_with_a_shared_m0_halves_the_two_step_cv_on_the_esnr_protocol():
    """The issue's case at dt 5 s, SNR 20: measured Ktrans CV of the three routes."""
    from phantomdce.fit.joint import JointFitter

    _, data = _joint_data(replicates=2000, snr=20.0)
    cv = {}
    fitters = {
        "two_step": get_fitter("nlls_extended_tofts"),
        "joint": JointFitter(),
        "joint_shared_m0": JointFitter(shared_m0=True),
    }
    for kind, fitter in fitters.items():
        out = fitter.fit(data)
        ok = out["success"].values
        assert ok.mean() > 0.99
        cv[kind] = out["Ktrans"].values[ok].std(ddof=1) / ISSUE_TISSUE["Ktrans"]
    assert cv["joint_shared_m0"] < 0.6 * cv["two_step"]
    assert cv["joint"] < cv["two_step"]
