"""The simulator and the DRO store."""

import numpy as np
import pytest
import xarray as xr

import phantomdce
from phantomdce.cli import main
from phantomdce.dro.scenario import parse_scenario
from phantomdce.dro.simulate import case_aif, simulate_case
from phantomdce.dro.store import write_dro
from phantomdce.fit.t1 import vfa_t1_linear, vfa_t1_nonlinear
from phantomdce.signal import concentration_from_signal, spgr


def make(replicates=3, snr=20.0, sweep=None, model="extended_tofts", **protocol):
    tissue = {
        "extended_tofts": {"Ktrans": [0.05, 0.3], "ve": [0.1, 0.4], "vp": [0.02, 0.08]},
        "2cxm": {"fp": [20.0, 80.0], "ps": [0.05, 0.3], "ve": 0.3, "vp": 0.05},
    }[model]
    return parse_scenario(
        {
            "name": "sim",
            "seed": 7,
            "replicates": replicates,
            "protocol": {"snr": snr, **protocol},
            "tissue": {"model": model, "T10": [0.8, 1.4], **tissue},
            "sweep": sweep or {},
        }
    )


def test_case_contents_units_and_provenance():
    sc = make(sweep={"dt": [2.0, 5.0]})
    ds = simulate_case(sc, sc.cases()[1])
    assert ds.sizes == {"voxel": 16 * 3, "time": 60, "flip_angle": 3, "arterial_voxel": 20}
    assert ds["Ktrans"].attrs["units"] == "/min" and ds["T10"].attrs["units"] == "s"
    assert ds["ct"].attrs["units"] == "mM" and ds["time"].attrs["units"] == "s"
    assert ds["flip_angle"].attrs["units"] == "deg"
    assert ds.attrs["dt"] == 5.0 and ds.attrs["seed"] == 7
    assert ds.attrs["scenario_hash"] == sc.hash
    assert ds.attrs["phantomdce_version"] == phantomdce.__version__
    assert ds.attrs["protocol_units"]["dt"] == "s"
    np.testing.assert_allclose(ds["kep"], ds["Ktrans"] / ds["ve"])
    # voxel layout: tissue-major, replicates innermost
    np.testing.assert_array_equal(ds["tissue"].values[:6], [0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(ds["replicate"].values[:6], [0, 1, 2, 0, 1, 2])
    assert np.all(ds["ct"].values[:, ds.time.values < 25.0] == 0.0)  # nothing before arrival


def test_frames_and_aif_are_the_continuous_truth():
    sc = make(snr=float("inf"))
    case = sc.cases()[0]
    ds = simulate_case(sc, case)
    np.testing.assert_allclose(ds["ca"].values, case_aif(case.protocol)(ds.time.values), atol=1e-12)


def test_noise_free_signal_inverts_to_the_true_concentration():
    sc = make(snr=float("inf"), b1=0.9)
    ds = simulate_case(sc, sc.cases()[0])
    p = sc.cases()[0].protocol
    r10 = 1.0 / ds["T10"].values
    s_pre = spgr(r10, fa=p.fa, tr=p.tr, m0=ds["m0"].values, b1=p.b1)
    c = concentration_from_signal(
        ds["signal"].values,
        s_pre[:, None],
        r10=r10[:, None],
        fa=p.fa,
        tr=p.tr,
        r1_relaxivity=p.relaxivity,
        b1=p.b1,
    )
    np.testing.assert_allclose(c, ds["ct"].values, atol=1e-10)


def test_noise_free_vfa_returns_the_exact_t1():
    sc = make(snr=float("inf"))
    ds = simulate_case(sc, sc.cases()[0])
    fa = ds["flip_angle"].values
    for fit in (vfa_t1_linear, vfa_t1_nonlinear):
        t1, m0 = fit(ds["vfa_signal"].values, fa, tr=ds.attrs["tr"])
        np.testing.assert_allclose(t1, ds["T10"].values, rtol=1e-8)
        np.testing.assert_allclose(m0, ds["m0"].values, rtol=1e-8)


def test_noise_sd_matches_the_snr_definition():
    # 10^5 baseline samples at SNR 25: the magnitude SD equals sigma = S_pre / SNR
    # (Rician noise is Gaussian to within 0.1% at this SNR)
    sc = make(replicates=2500, snr=25.0, n_baseline=10, bat=60.0)
    ds = simulate_case(sc, sc.cases()[0])
    p = sc.cases()[0].protocol
    base = ds["signal"].values[:, :10]
    s_pre = spgr(1.0 / ds["T10"].values, fa=p.fa, tr=p.tr, m0=ds["m0"].values)
    sigma = s_pre / 25.0
    z = (base - s_pre[:, None]) / sigma[:, None]
    assert z.size >= 10**5
    assert z.std() == pytest.approx(1.0, rel=0.05)
    assert abs(z.mean()) < 0.05
    # VFA images share the same sigma
    vz = (
        ds["vfa_signal"].values
        - np.asarray(
            [spgr(1.0 / ds["T10"].values, fa=a, tr=p.tr, m0=ds["m0"].values) for a in p.flip_angles]
        ).T
    )
    assert (vz / sigma[:, None]).std() == pytest.approx(1.0, rel=0.05)


def test_results_do_not_depend_on_how_voxels_are_split():
    sc = make(replicates=700)  # 11200 voxels: several noise blocks
    case = sc.cases()[0]
    whole = simulate_case(sc, case)
    parts = [
        simulate_case(sc, case, voxels=range(a, b))
        for a, b in [(0, 1000), (1000, 5000), (5000, 5001), (5001, 11200)]
    ]
    joined = xr.concat(
        parts, dim="voxel", data_vars="all", coords="different", compat="equals", join="outer"
    )
    for name in ("signal", "vfa_signal", "ct", "Ktrans"):
        np.testing.assert_array_equal(joined[name].values, whole[name].values)


def test_seeded_and_independent_streams():
    sc = make(sweep={"snr": [20.0, 20.0]})
    a, b = (simulate_case(sc, c) for c in sc.cases())
    again = simulate_case(sc, sc.cases()[0])
    np.testing.assert_array_equal(a["signal"].values, again["signal"].values)
    assert not np.array_equal(a["signal"].values, b["signal"].values)  # per-case streams
    assert not np.array_equal(a["signal"].values[:, :5], a["signal"].values[:, 5:10])
    sc2 = parse_scenario(
        {
            **{k: v for k, v in sc.source.items() if k != "sweep_order"},
            "protocol": {"snr": 20.0},
            "sweep": {"snr": [20.0, 20.0]},
            "seed": 8,
        }
    )
    assert not np.array_equal(
        simulate_case(sc2, sc2.cases()[0])["signal"].values, a["signal"].values
    )


def test_average_sampling_converges_to_instant_for_short_frames():
    inst = simulate_case(s := make(snr=float("inf"), dt=0.5), s.cases()[0])
    avg = simulate_case(s2 := make(snr=float("inf"), dt=0.5, sampling="average"), s2.cases()[0])
    # window mean differs from the point value by dt^2/24 * curvature
    assert np.abs(avg["ct"].values - inst["ct"].values).max() < 2e-3
    # and the frame value is the window mean of the continuous truth (see test_truth)
    assert avg.attrs["sampling"] == "average"


def test_2cxm_truth_has_derived_ktrans():
    sc = make(model="2cxm")
    ds = simulate_case(sc, sc.cases()[0])
    fp = ds["fp"].values / 100
    np.testing.assert_allclose(ds["Ktrans"], fp * ds["ps"] / (fp + ds["ps"]))


def test_store_round_trip_and_refusals(tmp_path, capsys):
    sc = make(sweep={"dt": [2.0, 5.0], "injection_rate": [1.0, 4.0]})
    path = tmp_path / "dro.zarr"
    write_dro(sc, path)
    tree = phantomdce.open_dro(path)
    assert list(tree.ds["case_name"].values) == ["case_0000", "case_0001", "case_0002", "case_0003"]
    np.testing.assert_array_equal(tree.ds["dt"].values, [2.0, 2.0, 5.0, 5.0])
    assert tree.ds.attrs["scenario_hash"] == sc.hash
    for case in sc.cases():
        stored = tree[case.name].ds.load()
        fresh = simulate_case(sc, case)
        xr.testing.assert_identical(stored.drop_attrs(), fresh.drop_attrs())
        assert stored.attrs["injection_rate"] == case.protocol.injection_rate
    with pytest.raises(FileExistsError):
        write_dro(sc, path)
    with pytest.raises(FileNotFoundError):
        phantomdce.open_dro(tmp_path / "missing.zarr")


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    sc = make(sweep={"dt": [2.0, 5.0]})
    from phantomdce.dro import store

    calls = []

    def boom(scenario, case, **kw):
        calls.append(case.index)
        if case.index == 1:
            raise RuntimeError("interrupted")
        return simulate_case(scenario, case, **kw)

    monkeypatch.setattr(store, "simulate_case", boom)
    with pytest.raises(RuntimeError):
        store.write_dro(sc, tmp_path / "x.zarr")
    assert calls == [0, 1]
    assert list(tmp_path.iterdir()) == []


def test_cli_simulate_prints_a_summary(tmp_path, capsys):
    toml = tmp_path / "s.toml"
    toml.write_text(
        'name = "cli"\nseed = 3\nreplicates = 2\n[tissue]\nmodel = "tofts"\nKtrans = [0.1, 0.2]\n'
        "ve = 0.3\n[sweep]\ndt = [2.0, 4.0]\n"
    )
    out = tmp_path / "o.zarr"
    assert main(["simulate", str(toml), "-o", str(out), "-q"]) == 0
    text = capsys.readouterr().out
    assert "scenario 'cli'" in text and "2 cases x 4 voxels" in text and "case_0001" in text
    assert main(["simulate", str(toml), "-o", str(out), "-q"]) == 2
    assert "exists" in capsys.readouterr().err


def test_list_valued_sweep_is_stored_as_text(tmp_path):
    sc = make(sweep={"flip_angles": [[2.0, 10.0], [5.0, 15.0, 30.0]]})
    write_dro(sc, tmp_path / "fa.zarr")
    tree = phantomdce.open_dro(tmp_path / "fa.zarr")
    assert list(tree.ds["flip_angles"].values) == ["[2.0, 10.0]", "[5.0, 15.0, 30.0]"]
    assert tree["case_0001"].ds.sizes["flip_angle"] == 3


def test_overwrite_never_replaces_something_else(tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("hi")
    with pytest.raises(FileExistsError, match="not a phantomdce DRO store"):
        write_dro(make(), precious, overwrite=True)
    assert (precious / "notes.txt").read_text() == "hi"
    with pytest.raises(FileNotFoundError, match="not a phantomdce DRO store"):
        phantomdce.open_dro(precious)
    write_dro(make(), tmp_path / "d.zarr")
    write_dro(make(replicates=2), tmp_path / "d.zarr", overwrite=True)  # a store: replaced
    assert phantomdce.open_dro(tmp_path / "d.zarr")["case_0000"].ds.sizes["voxel"] == 32


def test_vfa_noise_is_the_dynamic_noise_over_the_root_of_the_averages():
    # issue 11, item 8: the VFA images' noise is an explicit protocol key
    sc = parse_scenario(
        {
            "seed": 3,
            "replicates": 4000,
            "protocol": {"snr": 50.0},
            "tissue": {"model": "extended_tofts", "Ktrans": 0.1, "ve": 0.3, "vp": 0.02},
            "sweep": {"vfa_averages": [1, 4]},
        }
    )
    sd = {}
    for case in sc.cases():
        ds = simulate_case(sc, case)
        sd[case.protocol.vfa_averages] = ds["vfa_signal"].values.std(axis=0)
        assert ds.attrs["vfa_averages"] == case.protocol.vfa_averages
    ratio = sd[1] / sd[4]
    np.testing.assert_allclose(ratio, 2.0, rtol=0.06)
    # one average: the dynamic frames' SD (signal at fa / snr), as the VFA shared before
    ds = simulate_case(sc, sc.cases()[0])
    base = ds["signal"].values[:, :5].std(axis=0).mean()
    np.testing.assert_allclose(sd[1], base, rtol=0.06)


def test_phantom_vfa_images_are_averaged_too():
    from phantomdce.dro.protocol import Protocol
    from phantomdce.phantom.acquire import Acquisition, acquire
    from phantomdce.phantom.anatomy import make_neck

    ph = make_neck((6, 96, 96), seed=5)
    acq = Acquisition(2.0, 3.0, inflow=False)
    out = {}
    for n in (1, 4):
        proto = Protocol.from_mapping(
            {"dt": 5.0, "duration": 60.0, "snr": 30.0, "vfa_averages": n}
        )
        ds = acquire(ph, proto, acq, seed=3)
        clean = acquire(ph, proto.replace(snr=float("inf")), acq, seed=3)
        muscle = ds["vfa_signal"].values - clean["vfa_signal"].values
        out[n] = (ds.attrs["noise_sigma"], ds.attrs["vfa_noise_sigma"], np.std(muscle))
    assert out[1][1] == pytest.approx(out[1][0]) and out[4][1] == pytest.approx(out[4][0] / 2)
    assert out[1][2] / out[4][2] == pytest.approx(2.0, rel=0.1)
