"""The scanner model (issue 12 part 3): each scaling law on its own, errors, scenarios."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phantomdce.dro.config import ConfigError
from phantomdce.dro.protocol import Protocol
from phantomdce.dro.scenario import parse_scenario
from phantomdce.dro.simulate import simulate_case
from phantomdce.dro.store import cases_table
from phantomdce.precision import crlb
from phantomdce.scanner import PROTOCOL_KEYS_SET, Scanner

#: A 3D SPGR of a head-and-neck DCE: 1.25 x 1.25 x 3 mm, 40 partitions.
BASE = {
    "matrix": [192, 192],
    "fov_mm": [240.0, 240.0],
    "slices": 40,
    "slice_thickness_mm": 3.0,
    "tr": 0.004,
    "fa": 15.0,
    "reference_snr": 25.0,
}


def scanner(**changes) -> Scanner:
    """The base scanner with ``changes``; the reference stays the base protocol."""
    return Scanner.from_mapping(BASE).replace(**changes)


def ratio(**changes) -> tuple[float, float]:
    """(dt ratio, snr ratio) of the base scanner changed by ``changes`` over the base."""
    a, b = scanner().derive(), scanner(**changes).derive()
    return b.dt / a.dt, b.snr / a.snr


def spgr_independent(fa_deg: float, tr: float, t1: float) -> float:
    """The SPGR steady state per unit M0, written out here (not phantomdce.signal)."""
    a = math.radians(fa_deg)
    e1 = math.exp(-tr / t1)
    return math.sin(a) * (1.0 - e1) / (1.0 - math.cos(a) * e1)


# -- the base and its reference --------------------------------------------------------------


def test_the_reference_protocol_has_the_reference_snr_and_its_frame_time():
    d = scanner().derive()
    assert d.snr == pytest.approx(25.0, rel=1e-14)
    # 192 phase lines x 40 partitions x 4 ms
    assert d.dt == pytest.approx(192 * 40 * 0.004, rel=1e-14)
    assert d.voxel_mm == pytest.approx((1.25, 1.25, 3.0))
    assert d.voxel_mm3 == pytest.approx(1.25 * 1.25 * 3.0)
    # one readout of 1 / 400 Hz/px per sampled line
    assert d.acquisition_time_per_image_s == pytest.approx(192 * 40 / 400.0)
    assert d.vfa_sigma_ratio == 1.0
    assert d.vfa_time_s == pytest.approx(3 * 192 * 40 * 0.004)


def test_a_partial_reference_names_only_what_differs_and_is_kept_by_replace():
    s = Scanner.from_mapping(
        {**BASE, "parallel_factor": 2.0, "reference": {"parallel_factor": 1.0}}
    )
    assert s.reference["parallel_factor"] == 1.0
    assert s.reference["slices"] == 40  # copied from the scanner
    assert s.derive().snr == pytest.approx(25.0 / math.sqrt(2.0), rel=1e-14)
    # a change of the scanner keeps the site's measurement
    t = s.replace(parallel_factor=1.0)
    assert t.reference == s.reference
    assert t.derive().snr == pytest.approx(25.0, rel=1e-14)


# -- each scaling law on its own -------------------------------------------------------------


def test_half_the_voxel_volume_halves_snr_at_the_same_frame_time():
    dt, snr = ratio(slice_thickness_mm=1.5)
    assert (dt, snr) == pytest.approx((1.0, 0.5), rel=1e-14)
    # the read direction too: a smaller read FOV at the same matrix
    dt, snr = ratio(fov_mm=[120.0, 240.0])
    assert (dt, snr) == pytest.approx((1.0, 0.5), rel=1e-14)


def test_parallel_imaging_halves_frame_time_and_divides_snr_by_g_sqrt_r():
    dt, snr = ratio(parallel_factor=2.0)
    assert (dt, snr) == pytest.approx((0.5, 1.0 / math.sqrt(2.0)), rel=1e-14)
    dt, snr = ratio(parallel_factor=2.0, g_factor=1.2)
    assert (dt, snr) == pytest.approx((0.5, 1.0 / (1.2 * math.sqrt(2.0))), rel=1e-14)
    dt, snr = ratio(g_factor=1.5)
    assert (dt, snr) == pytest.approx((1.0, 1.0 / 1.5), rel=1e-14)


def test_twice_the_averages_doubles_frame_time_and_multiplies_snr_by_sqrt2():
    dt, snr = ratio(averages=2)
    assert (dt, snr) == pytest.approx((2.0, math.sqrt(2.0)), rel=1e-14)


def test_partial_fourier_scales_frame_time_and_snr_by_the_sampled_fraction():
    dt, snr = ratio(partial_fourier=0.625)
    assert (dt, snr) == pytest.approx((0.625, math.sqrt(0.625)), rel=1e-14)


def test_twice_the_bandwidth_divides_snr_by_sqrt2_at_the_same_frame_time():
    dt, snr = ratio(bandwidth_hz_px=800.0)
    assert (dt, snr) == pytest.approx((1.0, 1.0 / math.sqrt(2.0)), rel=1e-14)


def test_more_phase_encodes_at_the_same_voxel_buy_snr_but_the_readout_matrix_does_not():
    # twice the phase FOV and matrix: the same voxel, twice the lines
    dt, snr = ratio(matrix=[192, 384], fov_mm=[240.0, 480.0])
    assert (dt, snr) == pytest.approx((2.0, math.sqrt(2.0)), rel=1e-14)
    # twice the read FOV and matrix: the same voxel and lines (Parker & Gullberg 1990)
    dt, snr = ratio(matrix=[384, 192], fov_mm=[480.0, 240.0])
    assert (dt, snr) == pytest.approx((1.0, 1.0), rel=1e-14)
    # slices: the same voxel, twice the partitions
    dt, snr = ratio(slices=80)
    assert (dt, snr) == pytest.approx((2.0, math.sqrt(2.0)), rel=1e-14)


@pytest.mark.parametrize("fa", [5.0, 10.0, 25.0])
def test_the_flip_angle_scales_snr_by_the_spgr_signal_at_the_reference_t1(fa):
    t1 = 1.5  # native tumour T1 at 3 T, the default reference T1
    dt, snr = ratio(fa=fa)
    expected = spgr_independent(fa, 0.004, t1) / spgr_independent(15.0, 0.004, t1)
    assert (dt, snr) == pytest.approx((1.0, expected), rel=1e-12)


def test_tr_scales_frame_time_and_the_spgr_signal():
    dt, snr = ratio(tr=0.006)
    t1 = 1.5
    expected = spgr_independent(15.0, 0.006, t1) / spgr_independent(15.0, 0.004, t1)
    assert (dt, snr) == pytest.approx((1.5, expected), rel=1e-12)


def test_an_explicit_reference_t1_sets_the_flip_angle_dependence():
    base = Scanner.from_mapping({**BASE, "reference_t1_s": 0.8})
    d = base.replace(fa=5.0).derive()
    expected = spgr_independent(5.0, 0.004, 0.8) / spgr_independent(15.0, 0.004, 0.8)
    assert d.snr / base.derive().snr == pytest.approx(expected, rel=1e-12)
    assert d.t1_s == 0.8


def test_vfa_noise_ratio_and_time_follow_the_averages():
    d = scanner(averages=2, vfa_averages=8, vfa_flip_angles=[2.0, 5.0, 10.0, 15.0]).derive()
    assert d.vfa_sigma_ratio == pytest.approx(math.sqrt(2.0 / 8.0), rel=1e-14)
    assert d.vfa_time_s == pytest.approx(4 * 192 * 40 * 8 * 0.004, rel=1e-14)


def test_a_linear_b0_scaling_is_the_stated_assumption():
    s = Scanner.from_mapping(
        {
            **BASE,
            "field_strength": 1.5,
            "b0_scaling": "linear",
            "reference": {"field_strength": 3.0},
        }
    )
    t1_15, t1_3 = 1.2, 1.5  # native tumour T1 at 1.5 and 3 T
    expected = 25.0 * 0.5 * spgr_independent(15.0, 0.004, t1_15) / spgr_independent(
        15.0, 0.004, t1_3
    )
    assert s.derive().snr == pytest.approx(expected, rel=1e-12)


@settings(max_examples=60, deadline=None)
@given(
    phase=st.integers(64, 512),
    slices=st.integers(8, 120),
    averages=st.integers(1, 4),
    pf=st.floats(0.55, 1.0),
    r=st.floats(1.0, 4.0),
)
def test_snr_per_root_frame_time_is_fixed_by_voxel_and_receiver(phase, slices, averages, pf, r):
    """At a fixed voxel, bandwidth, TR and flip angle (g = 1), SNR / sqrt(dt) is constant:
    every change of lines, averages, partial Fourier or R trades time for SNR alone."""
    ref = scanner().derive()
    d = scanner(
        matrix=[192, phase],
        fov_mm=[240.0, 1.25 * phase],
        slices=slices,
        averages=averages,
        partial_fourier=pf,
        parallel_factor=r,
    ).derive()
    assert d.voxel_mm3 == pytest.approx(ref.voxel_mm3, rel=1e-12)
    assert d.snr / math.sqrt(d.dt) == pytest.approx(ref.snr / math.sqrt(ref.dt), rel=1e-12)


# -- errors name the key path, the value and what was expected --------------------------------


@pytest.mark.parametrize(
    ("data", "pieces"),
    [
        ({**BASE, "matrx": [1, 2]}, ["scanner.matrx", "did you mean 'matrix'"]),
        ({k: v for k, v in BASE.items() if k != "slices"}, ["scanner", "missing ['slices']"]),
        ({**BASE, "matrix": [192]}, ["scanner.matrix = [192]", "two integers"]),
        ({**BASE, "matrix": [192, 0]}, ["scanner.matrix[1] = 0", ">= 1"]),
        ({**BASE, "parallel_factor": 0.5}, ["scanner.parallel_factor = 0.5", ">= 1.0"]),
        ({**BASE, "partial_fourier": 0.4}, ["scanner.partial_fourier = 0.4", "> 0.5"]),
        ({**BASE, "g_factor": 0.9}, ["scanner.g_factor = 0.9", ">= 1.0"]),
        ({**BASE, "fa": 95.0}, ["scanner.fa = 95.0", "< 90.0"]),
        ({**BASE, "reference_snr": -1}, ["scanner.reference_snr = -1", "> 0.0"]),
        ({**BASE, "field_strength": 7.0}, ["scanner.field_strength = 7.0", "[1.5, 3.0]"]),
        (
            {**BASE, "bandwidth_hz_px": 200.0},
            ["scanner.bandwidth_hz_px = 200.0", "5 ms", "shorter than scanner.tr = 4 ms"],
        ),
        ({**BASE, "vfa_tr": 0.01}, ["scanner.vfa_tr = 0.01", "scanner.tr = 0.004"]),
        ({**BASE, "reference": {"tr": -1}}, ["scanner.reference.tr = -1", "> 0.0"]),
        ({**BASE, "reference": {"snr": 3}}, ["scanner.reference.snr", "expected one of"]),
        ({**BASE, "reference": 25}, ["scanner.reference = 25", "expected a table"]),
        (
            {**BASE, "reference": {"field_strength": 1.5}},
            ["scanner.reference.field_strength = 1.5", "scanner.field_strength = 3.0", "linear"],
        ),
    ],
)
def test_errors_name_key_value_and_expectation(data, pieces):
    with pytest.raises(ConfigError) as err:
        Scanner.from_mapping(data)
    for piece in pieces:
        assert piece in str(err.value)


# -- the protocol it sets, and scenarios -----------------------------------------------------


def test_protocol_changes_are_exactly_the_keys_the_scanner_sets():
    s = scanner(vfa_averages=4)
    changes = s.protocol_changes()
    assert tuple(changes) == PROTOCOL_KEYS_SET
    proto = Protocol.from_mapping(changes)
    assert proto.dt == s.derive().dt and proto.snr == s.derive().snr
    assert proto.vfa_noise_ratio == 0.5


SCANNER_TOML = {**BASE, "partial_fourier": 0.75, "vfa_averages": 4, "parallel_factor": 4.0}


def _scenario(**extra):
    data = {
        "name": "scanner_test",
        "seed": 7,
        "replicates": 3,
        "protocol": {"duration": 120.0, "n_baseline": 3, "arterial_voxels": 2},
        "tissue": {"model": "extended_tofts", "Ktrans": [0.1, 0.3], "ve": 0.3, "vp": 0.05},
    }
    data.update(extra)
    return parse_scenario(data)


def test_a_scanner_scenario_and_the_equivalent_plain_protocol_simulate_identical_data():
    sc = _scenario(
        scanner={**SCANNER_TOML, "parallel_factor": 4.0, "reference": {"parallel_factor": 2.0}},
        sweep={"scanner.parallel_factor": [3.0, 4.0]},
    )
    cases = sc.cases()
    assert [c.scanner.parallel_factor for c in cases] == [3.0, 4.0]
    # the plain protocol: the values the scanner derives, copied; the same sweep order
    d = [c.derived for c in cases]
    s = cases[0].scanner
    plain = _scenario(
        protocol={
            "duration": 120.0,
            "n_baseline": 3,
            "arterial_voxels": 2,
            "tr": s.tr,
            "fa": s.fa,
            "flip_angles": list(s.vfa_flip_angles),
            "field_strength": s.field_strength,
            "vfa_averages": s.vfa_averages,
            "vfa_sigma_ratio": d[0].vfa_sigma_ratio,
            "snr_t1_s": d[0].t1_s,
        },
        sweep={"dt": [x.dt for x in d], "snr": [x.snr for x in d]},
        zip=[["dt", "snr"]],
    )
    assert d[0].vfa_sigma_ratio == 0.5
    for case, pcase in zip(cases, plain.cases(), strict=True):
        assert case.protocol == pcase.protocol
        a = simulate_case(sc, case)
        b = simulate_case(plain, pcase)
        for name in ("signal", "vfa_signal", "arterial_signal", "ct", "signal_pre"):
            np.testing.assert_array_equal(a[name].values, b[name].values)
        np.testing.assert_array_equal(a["time"].values, b["time"].values)
        assert a.attrs["scanner_derived"]["snr"] == case.derived.snr
        assert a.attrs["scanner_derived"]["dt_s"] == a.attrs["dt"]
    # the sweep moves frame time and SNR together: R 3 -> 4
    assert d[1].dt / d[0].dt == pytest.approx(0.75)
    assert d[1].snr / d[0].snr == pytest.approx(math.sqrt(0.75))
    assert cases[1].protocol.dt == d[1].dt


def test_the_cases_table_records_derived_values_with_units():
    sc = _scenario(scanner=SCANNER_TOML, sweep={"scanner.slice_thickness_mm": [2.0, 4.0]})
    table = cases_table(sc)
    assert table["scanner.slice_thickness_mm"].attrs["units"] == "mm"
    np.testing.assert_allclose(table["voxel_slice_mm"].values, [2.0, 4.0])
    assert table["voxel_slice_mm"].attrs["units"] == "mm"
    assert table["snr"].values[1] == pytest.approx(2 * table["snr"].values[0])
    assert table["dt_s"].attrs["units"] == "s"
    vfa = table["vfa_time_s"].values
    np.testing.assert_allclose(table["scan_time_s"].values, 120.0 + vfa)
    assert table["scan_time_s"].attrs["units"] == "s"


@pytest.mark.parametrize(
    ("extra", "pieces"),
    [
        ({"protocol": {"dt": 2.0}}, ["protocol.dt = 2.0", "[scanner]", "scanner sets 'dt'"]),
        ({"protocol": {"snr": 30.0}}, ["protocol.snr = 30.0", "scanner sets 'snr'"]),
        ({"protocol": {"vfa_averages": 2}}, ["protocol.vfa_averages = 2", "scanner sets"]),
        ({"sweep": {"fa": [10.0, 15.0]}}, ["sweep.fa = [10.0, 15.0]", "scanner sets 'fa'"]),
        ({"sweep": {"scanner.reference": [{}]}}, ["sweep.scanner.reference", "expected one of"]),
        ({"sweep": {"scanner.matrx": [[1, 2]]}}, ["sweep.scanner.matrx", "scanner.matrix"]),
        ({"sweep": {"scanner.averages": [1, 0]}}, ["sweep.scanner.averages[1] = 0", ">= 1"]),
    ],
)
def test_a_scanner_scenario_refuses_what_the_scanner_sets(extra, pieces):
    data = {"scanner": SCANNER_TOML, **extra}
    if "protocol" in extra:
        data["protocol"] = {"duration": 120.0, "n_baseline": 3, **extra["protocol"]}
    with pytest.raises(ConfigError) as err:
        _scenario(**data)
    for piece in pieces:
        assert piece in str(err.value)


def test_scanner_sweep_keys_need_a_scanner_table():
    with pytest.raises(ConfigError, match=r"sweep.scanner.parallel_factor .*\[scanner\] table"):
        _scenario(sweep={"scanner.parallel_factor": [1.0, 2.0]})


def test_a_swept_scanner_that_breaks_a_law_names_the_case():
    with pytest.raises(ConfigError, match=r"sweep case 1 .*bandwidth_hz_px .* shorter than"):
        _scenario(scanner=SCANNER_TOML, sweep={"scanner.tr": [0.004, 0.002]})


def test_scenarios_without_a_scanner_keep_their_hash():
    """The new protocol key is not in the hash of a scenario that does not set it."""
    sc = _scenario()
    assert "vfa_sigma_ratio" not in sc.source["protocol"]
    assert "snr_t1_s" not in sc.source["protocol"]
    assert "scanner" not in sc.source
    assert sc.cases()[0].scanner is None and sc.cases()[0].scanner_attrs() == {}


# -- vfa_sigma_ratio where the noise is made or bounded ----------------------------------------


def test_vfa_sigma_ratio_sets_the_noise_of_the_simulated_vfa_images():
    def vfa_noise_sd(**protocol):
        sc = _scenario(
            replicates=4000,
            protocol={"duration": 60.0, "n_baseline": 3, "snr": 200.0, **protocol},
        )
        ds = simulate_case(sc, sc.cases()[0])
        from phantomdce.signal import vfa_signal

        clean = vfa_signal(
            1.0 / ds["T10"].values, flip_angles=ds["flip_angle"].values, tr=0.004, m0=1000.0
        )
        return float(np.std(ds["vfa_signal"].values - clean) / np.mean(clean))

    base = vfa_noise_sd()
    assert vfa_noise_sd(vfa_sigma_ratio=2.0) / base == pytest.approx(2.0, rel=0.05)
    # None keeps the averages rule, bitwise
    assert vfa_noise_sd(vfa_averages=4) / base == pytest.approx(0.5, rel=0.05)


def test_the_precision_bound_uses_vfa_sigma_ratio():
    params = {"Ktrans": 0.2, "ve": 0.25, "vp": 0.05}
    by_ratio = crlb(Protocol(vfa_sigma_ratio=0.5), "extended_tofts", params)["Ktrans"]
    by_averages = crlb(Protocol(vfa_averages=4), "extended_tofts", params)["Ktrans"]
    plain = crlb(Protocol(), "extended_tofts", params)["Ktrans"]
    np.testing.assert_allclose(by_ratio, by_averages, rtol=1e-12)
    assert np.all(by_ratio < plain)


# -- snr_t1_s: one receiver noise SD in every voxel ----------------------------------------------


def test_noise_sigma_is_each_voxels_own_signal_or_the_receivers_one_sd():
    t10 = np.array([0.8, 1.5, 2.5])
    own = Protocol(snr=20.0).noise_sigma(t10, 1000.0)
    expected = [1000.0 * spgr_independent(15.0, 0.004, t) / 20.0 for t in t10]
    np.testing.assert_allclose(own, expected, rtol=1e-13)
    receiver = Protocol(snr=20.0, snr_t1_s=1.2).noise_sigma(t10, [1000.0, 2000.0, 500.0])
    ref = 1000.0 * spgr_independent(15.0, 0.004, 1.2) / 20.0
    np.testing.assert_allclose(receiver, [ref] * 3, rtol=1e-13)
    assert np.all(Protocol(snr=math.inf, snr_t1_s=1.2).noise_sigma(t10) == 0.0)
    # the receiver's SD does not follow a transmit (B1) error; each voxel's own SNR does
    off = Protocol(snr=20.0, snr_t1_s=1.2, b1=0.8).noise_sigma(t10)
    np.testing.assert_allclose(off, [ref] * 3, rtol=1e-13)
    own_b1 = Protocol(snr=20.0, b1=0.8).noise_sigma(1.2)
    assert own_b1 == pytest.approx(1000.0 * spgr_independent(12.0, 0.004, 1.2) / 20.0, rel=1e-13)


def test_a_scanner_states_the_t1_of_its_snr():
    s = scanner(reference_t1_s=1.2)
    assert s.protocol_changes()["snr_t1_s"] == 1.2 == s.derive().t1_s


def test_with_a_receiver_every_tissue_and_the_arterial_voxels_share_one_noise_sd():
    """Tissues of native T1 0.8 and 2.5 s and blood: the same SD with snr_t1_s, their own
    pre-contrast signal / snr without it (the DRO's per-voxel SNR)."""

    def sds(**protocol):
        sc = _scenario(
            replicates=3000,
            protocol={"duration": 120.0, "n_baseline": 3, "snr": 50.0, "fa": 25.0,
                      "arterial_voxels": 3000, "bat": 60.0, **protocol},
            tissue={"model": "tofts", "Ktrans": 0.1, "ve": 0.3, "T10": [0.8, 2.5]},
        )
        ds = simulate_case(sc, sc.cases()[0])
        pre = ds["signal"].values[:, :12]  # frames at 0-55 s, before the arrival at 60 s
        tissue = np.repeat([0, 1], 3000)
        tissue_sd = [float(np.std(pre[tissue == k] - ds["signal_pre"].values[tissue == k, None]))
                     for k in (0, 1)]
        art = ds["arterial_signal"].values[:, :12]
        art_sd = float(np.std(art - float(ds["arterial_signal_pre"])))
        return tissue_sd, art_sd, ds

    (short, long_), art, ds = sds(snr_t1_s=1.2)
    ref = 1000.0 * spgr_independent(25.0, 0.004, 1.2) / 50.0
    for sd in (short, long_, art):
        assert sd == pytest.approx(ref, rel=0.03)
    (short, long_), art, ds = sds()
    own = ds["signal_pre"].values[[0, 3000]] / 50.0
    assert short == pytest.approx(own[0], rel=0.03) and long_ == pytest.approx(own[1], rel=0.03)
    assert own[0] / own[1] > 1.3  # the two rules differ here by more than the tolerance
    assert art == pytest.approx(float(ds["arterial_signal_pre"]) / 50.0, rel=0.03)


def test_the_precision_bound_uses_the_receivers_noise():
    """A tissue of T1 t under a receiver stated at T1 r has SNR snr * S(t) / S(r)."""
    params = {"Ktrans": 0.2, "ve": 0.25, "vp": 0.05}
    got = crlb(Protocol(snr=20.0, snr_t1_s=1.0), "extended_tofts", params, t10=2.0)
    snr_eff = 20.0 * spgr_independent(15.0, 0.004, 2.0) / spgr_independent(15.0, 0.004, 1.0)
    want = crlb(Protocol(snr=snr_eff), "extended_tofts", params, t10=2.0)
    for k in ("Ktrans", "ve", "vp", "T10"):
        assert got[k] == pytest.approx(want[k], rel=1e-10)
    assert got["Ktrans"] > crlb(Protocol(snr=20.0), "extended_tofts", params, t10=2.0)["Ktrans"]


PHANTOM_SCANNER = {**SCANNER_TOML, "matrix": [96, 96], "fov_mm": [120.0, 120.0]}


def _phantom(**extra):
    from phantomdce.phantom.scenario import parse_phantom_scenario

    raw = {
        "name": "ph",
        "phantom": {"shape": [8, 96, 96]},
        "protocol": {"duration": 60.0, "n_baseline": 3, "post_bolus_s": None},
        "scanner": PHANTOM_SCANNER,
        "sweep": {"scanner.slice_thickness_mm": [1.5, 3.0]},
    }
    raw.update(extra)
    return parse_phantom_scenario(raw)


def test_a_phantom_scanner_sets_the_voxel_and_the_noise_of_the_acquisition():
    from phantomdce.phantom.acquire import REFERENCE_VOXEL_MM3, acquire
    from phantomdce.phantom.anatomy import make_neck
    from phantomdce.signal import native_t1

    ps = _phantom()
    cases = ps.cases()
    assert [(c.acquisition.in_plane_mm, c.acquisition.slice_mm) for c in cases] == [
        (1.25, 1.5),
        (1.25, 3.0),
    ]
    for c in cases:
        d = c.derived
        assert d.t1_s == native_t1("muscle", 3.0)  # the site's SNR is muscle's
        # the phantom's snr is muscle's at its reference voxel, scaled by volume there
        assert c.protocol.snr == pytest.approx(d.snr * REFERENCE_VOXEL_MM3 / d.voxel_mm3)
    table = ps.cases_table()
    np.testing.assert_allclose(table["voxel_slice_mm"].values, [1.5, 3.0])
    assert table["scan_time_s"].attrs["units"] == "s"
    # the noise SD follows the scanner's SNR alone: half the voxel, twice the noise (not 4x)
    ph = make_neck((8, 96, 96), seed=3)
    sig = [acquire(ph, c.protocol, c.acquisition).attrs["noise_sigma"] for c in cases]
    assert sig[0] / sig[1] == pytest.approx(cases[1].derived.snr / cases[0].derived.snr)
    assert sig[0] / sig[1] == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("extra", "pieces"),
    [
        ({"acquisition": {"in_plane_mm": 2.0}}, ["acquisition.in_plane_mm = 2.0", "[scanner]"]),
        (
            {"sweep": {"slice_mm": [2.0, 3.0]}},
            ["sweep.slice_mm = [2.0, 3.0]", "scanner.slice_thickness_mm"],
        ),
        (
            {"scanner": {**PHANTOM_SCANNER, "fov_mm": [120.0, 150.0]}},
            ["1.25 x 1.5625 mm", "square in-plane voxel"],
        ),
    ],
)
def test_a_phantom_scanner_refuses_what_it_sets(extra, pieces):
    with pytest.raises(ConfigError) as err:
        _phantom(**extra)
    for piece in pieces:
        assert piece in str(err.value)


def test_the_example_scenario_trades_frame_time_voxel_and_snr():
    from pathlib import Path

    from phantomdce.dro.scenario import load_scenario

    path = Path(__file__).resolve().parents[1] / "scenarios/examples/scanner_tradeoff.toml"
    table = cases_table(load_scenario(path))
    snr, dt, vox = (table[k].values.reshape(3, 3) for k in ("snr", "dt_s", "voxel_mm3"))
    assert snr[1, 0] == pytest.approx(25.0)  # the site's measured protocol
    assert np.all(np.diff(dt, axis=1) < 0) and np.all(np.diff(snr, axis=1) < 0)  # more R
    assert np.all(np.diff(dt, axis=0) > 0) and np.all(np.diff(vox, axis=0) < 0)  # finer matrix
    assert np.all(np.diff(snr, axis=0) < 0)


def test_the_joint_fitter_weighs_the_vfa_images_by_vfa_sigma_ratio():
    """A case that states the ratio is fitted as one with the equivalent averages."""
    from phantomdce.fit.joint import JointFitter
    from phantomdce.fit.pipeline import Pipeline

    sc = _scenario(replicates=20, protocol={"duration": 120.0, "n_baseline": 3, "snr": 15.0})
    data = Pipeline()(simulate_case(sc, sc.cases()[0]))
    fitter = JointFitter("extended_tofts")

    def fit(**attrs):
        d = data.copy()
        d.attrs = {**data.attrs, **attrs}
        return fitter.fit(d)["Ktrans"].values

    by_ratio = fit(vfa_sigma_ratio=0.5, vfa_averages=1)
    by_averages = fit(vfa_sigma_ratio="none", vfa_averages=4)
    unweighted = fit(vfa_sigma_ratio="none", vfa_averages=1)
    np.testing.assert_array_equal(by_ratio, by_averages)
    assert not np.allclose(by_ratio, unweighted, rtol=1e-6, equal_nan=True)


def test_simulate_summarises_a_scanner_sweep(tmp_path, capsys):
    from phantomdce.cli import main

    path = tmp_path / "s.toml"
    path.write_text(
        'name = "s"\nreplicates = 1\n[protocol]\nduration = 120.0\nn_baseline = 3\n'
        "[scanner]\nmatrix = [192, 192]\nfov_mm = [240.0, 240.0]\nslices = 40\n"
        "slice_thickness_mm = 3.0\ntr = 0.004\nfa = 15.0\nreference_snr = 25.0\n"
        "partial_fourier = 0.75\n"
        "[tissue]\nKtrans = 0.2\nve = 0.3\nvp = 0.05\n"
        '[sweep]\n"scanner.parallel_factor" = [3.0, 4.0]\n',
        encoding="utf-8",
    )
    assert main(["simulate", str(path), "-o", str(tmp_path / "dro.zarr"), "-q"]) == 0
    out = capsys.readouterr().out
    assert "scanner.parallel_factor" in out
    # the SNR of R = 4 (the reference is the scanner as first given, R = 1), to 4 digits
    snr = Scanner.from_mapping({**BASE, "partial_fourier": 0.75}).replace(parallel_factor=4.0)
    assert f"{snr.derive().snr:.4g}" in out
