"""The DRO simulator: one case of a scenario to an :class:`xarray.Dataset`.

Ground truth first (continuous-time tissue curves, :mod:`phantomdce.dro.truth`), then the
noise-free SPGR signal, then Rician noise. Noise is drawn in fixed blocks of
:data:`NOISE_BLOCK_VOXELS` voxels from a generator keyed by ``(seed, case index, stream,
block)``, so every voxel's noise is the same however the work is split.

Voxel ``v`` has tissue ``v // replicates`` and replicate ``v % replicates``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import xarray as xr

import phantomdce
from phantomdce.aif import Injection, plasma_aif
from phantomdce.dro.protocol import AGENT_CONCENTRATION_M, Protocol
from phantomdce.dro.scenario import Case, Scenario
from phantomdce.dro.truth import (
    TRUTH_STEP_S,
    TruthGrid,
    aif_on_grid,
    tissue_truth,
    truth_grid,
    window_mean,
)
from phantomdce.noise import add_rician_noise, rng_for
from phantomdce.params import MODELS, PARAMETERS
from phantomdce.signal import native_t1, r1_from_concentration, spgr, vfa_signal

__all__ = [
    "NOISE_BLOCK_VOXELS",
    "SNR_DEFINITION",
    "arterial_noise_sigma",
    "arterial_truth",
    "case_aif",
    "simulate_case",
]

#: Voxels per noise block: the unit of random-stream assignment (part of the store format).
NOISE_BLOCK_VOXELS = 1024
#: Stream ids for :func:`phantomdce.noise.rng_for`.
STREAM_DYNAMIC, STREAM_VFA, STREAM_ARTERIAL = 0, 1, 2
#: Proton density (equilibrium magnetisation, a.u.) of blood and of the muscle that
#: surrounds an arterial voxel; equal to the default tissue m0 (an assumption).
M0_BLOOD = M0_MUSCLE = 1000.0
#: Largest number of grid values held at once per batch of tissues.
_BATCH_ELEMENTS = 4_000_000

SNR_DEFINITION = (
    "snr = noise-free pre-contrast signal of the dynamic series (spgr at R10, fa, tr, b1) /"
    " sigma, sigma = SD of each of the real and imaginary Gaussian noise channels; the VFA"
    " images are acquired with the same voxel and receiver, each with vfa_averages averages:"
    " their sigma is sigma / sqrt(vfa_averages), or sigma * vfa_sigma_ratio when a scanner"
    " model sets that ratio; when snr_t1_s is set (a scanner model), sigma is the receiver's,"
    " the same in every voxel (tissue and arterial): the pre-contrast signal of a tissue of"
    " T1 snr_t1_s and M0 1000 / snr"
)


def arterial_noise_sigma(protocol: Protocol, arterial_pre: float | None = None) -> float:
    """Noise SD per channel (a.u.) of the simulated arterial (carotid) voxels.

    Parameters
    ----------
    protocol : Protocol
        The acquisition.
    arterial_pre : float, optional
        The arterial voxel's noise-free pre-contrast signal, a.u. (default: computed by
        :func:`arterial_truth`).

    Returns
    -------
    float
        The receiver's one SD (:meth:`Protocol.noise_sigma
        <phantomdce.dro.protocol.Protocol.noise_sigma>`) when ``protocol.snr_t1_s`` is set;
        else the voxel's own pre-contrast signal / ``snr`` (every voxel at SNR ``snr``).
        Zero without noise.
    """
    if not np.isfinite(protocol.snr):
        return 0.0
    if protocol.snr_t1_s is not None:  # the receiver's noise, as in the tissue voxels
        return float(protocol.noise_sigma(protocol.snr_t1_s))
    if arterial_pre is None:
        arterial_pre = arterial_truth(protocol)[2]
    return float(arterial_pre) / protocol.snr


def case_injection(protocol: Protocol) -> Injection | None:
    """The injection of a protocol (None: the population AIF as published)."""
    if protocol.injection_rate is None:
        return None
    return Injection.from_dose(
        protocol.dose,
        weight_kg=protocol.weight,
        agent_concentration_mol_l=AGENT_CONCENTRATION_M[protocol.agent],
        rate_ml_s=protocol.injection_rate,
        saline_flush=protocol.saline_flush,
    )


def case_aif(protocol: Protocol):
    """The true continuous plasma AIF of a protocol, as a function of time in s (mM)."""
    injection = case_injection(protocol)
    bat = protocol.bolus_arrival

    scale = protocol.aif_scale

    def aif(t: np.ndarray) -> np.ndarray:
        return scale * plasma_aif(
            protocol.aif, t, bat=bat, hct=protocol.hct, dose=protocol.dose, injection=injection
        )

    return aif


def _derived(model: str, table: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Parameters implied by the model's own (kep; Ktrans and kep of the 2CXM/2CUM)."""
    out: dict[str, np.ndarray] = {}
    if model in ("tofts", "extended_tofts"):
        out["kep"] = table["Ktrans"] / table["ve"]
    elif model in ("2cxm", "2cum"):
        fp = table["fp"] / 100.0  # /min
        ps = table["ps"]
        with np.errstate(invalid="ignore", divide="ignore"):
            out["Ktrans"] = np.where(fp + ps > 0, fp * ps / (fp + ps), 0.0)
            if model == "2cxm":
                out["kep"] = out["Ktrans"] / table["ve"]
    return out


def _grid_and_aif(protocol: Protocol) -> tuple[TruthGrid, np.ndarray]:
    grid = truth_grid(
        protocol.frame_times,
        bat=protocol.bolus_arrival,
        window=protocol.dt if protocol.sampling == "average" else 0.0,
    )
    return grid, aif_on_grid(grid, case_aif(protocol))


def _at_frames(protocol: Protocol, grid: TruthGrid, values: np.ndarray) -> np.ndarray:
    """Frame values of a grid quantity: point samples, or window means."""
    if protocol.sampling == "average":
        return window_mean(grid, values)
    return values[..., grid.frame_idx]


def arterial_truth(protocol: Protocol) -> tuple[np.ndarray, np.ndarray, float]:
    """Noise-free arterial-voxel signal at the frames.

    An arterial voxel holds blood (fraction ``blood_fraction``; whole-blood concentration
    ``Cp (1 - Hct)``, native T1 of blood at the field) and non-enhancing muscle (the rest),
    whose magnetisations add (partial volume). Relaxivity in blood is taken equal to the
    protocol's ``r1`` (an assumption).

    Returns
    -------
    signal : ndarray (n_t,)
        Noise-free signal, a.u.
    cb : ndarray (n_t,)
        Whole-blood concentration at the frames, mM.
    s_pre : float
        Pre-contrast signal of the voxel, a.u.
    """
    grid, ca_grid = _grid_and_aif(protocol)
    f = protocol.blood_fraction
    r10_blood = 1.0 / native_t1("blood", protocol.field_strength)
    r10_muscle = 1.0 / native_t1("muscle", protocol.field_strength)
    cb_grid = ca_grid * (1.0 - protocol.hct)
    kw = {"fa": protocol.fa, "tr": protocol.tr, "b1": protocol.b1}
    muscle = (1.0 - f) * spgr(r10_muscle, m0=M0_MUSCLE, **kw)
    blood = f * spgr(
        r1_from_concentration(cb_grid, r10=r10_blood, r1_relaxivity=protocol.relaxivity),
        m0=M0_BLOOD,
        **kw,
    )
    s_pre = float(f * spgr(r10_blood, m0=M0_BLOOD, **kw) + muscle)
    return _at_frames(protocol, grid, blood + muscle), _at_frames(protocol, grid, cb_grid), s_pre


def _truth_and_signal(
    model: str, table: Mapping[str, np.ndarray], protocol: Protocol
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Noise-free frame values per tissue: (ct (n, n_t), signal (n, n_t), ca (n_t,))."""
    average = protocol.sampling == "average"
    grid, ca_grid = _grid_and_aif(protocol)
    ca = _at_frames(protocol, grid, ca_grid)
    n = table["T10"].size
    r10 = 1.0 / table["T10"]
    r1 = protocol.relaxivity
    ct = np.empty((n, protocol.n_frames))
    sig = np.empty((n, protocol.n_frames))
    batch = max(1, _BATCH_ELEMENTS // grid.t.size)
    names = MODELS[model].parameters
    for a in range(0, n, batch):
        b = min(n, a + batch)
        params = {k: table[k][a:b] for k in names}
        c_grid = tissue_truth(model, params, grid=grid, ca_grid=ca_grid)
        if average:
            ct[a:b] = window_mean(grid, c_grid)
            s_grid = spgr(
                r1_from_concentration(c_grid, r10=r10[a:b, None], r1_relaxivity=r1),
                fa=protocol.fa,
                tr=protocol.tr,
                m0=table["m0"][a:b, None],
                b1=protocol.b1,
            )
            sig[a:b] = window_mean(grid, s_grid)
        else:
            ct[a:b] = c_grid[:, grid.frame_idx]
            sig[a:b] = spgr(
                r1_from_concentration(ct[a:b], r10=r10[a:b, None], r1_relaxivity=r1),
                fa=protocol.fa,
                tr=protocol.tr,
                m0=table["m0"][a:b, None],
                b1=protocol.b1,
            )
    return ct, sig, ca


def _noisy(
    clean: np.ndarray,
    tissue_of_voxel: np.ndarray,
    sigma: np.ndarray,
    *,
    seed: int,
    case_index: int,
    stream: int,
    voxels: range,
) -> np.ndarray:
    """Per-voxel noisy copies of the per-tissue clean rows, block by block."""
    out = np.empty((len(voxels), clean.shape[1]))
    if not np.isfinite(sigma).all() or np.all(sigma == 0):
        np.take(clean, tissue_of_voxel[voxels.start : voxels.stop], axis=0, out=out)
        return out
    first = voxels.start // NOISE_BLOCK_VOXELS
    last = (voxels.stop - 1) // NOISE_BLOCK_VOXELS
    for block in range(first, last + 1):
        lo = max(voxels.start, block * NOISE_BLOCK_VOXELS)
        hi = min(voxels.stop, (block + 1) * NOISE_BLOCK_VOXELS)
        b_lo = block * NOISE_BLOCK_VOXELS
        b_hi = min((block + 1) * NOISE_BLOCK_VOXELS, tissue_of_voxel.size)
        rows = tissue_of_voxel[b_lo:b_hi]
        rng = rng_for(seed, case_index, stream, block)
        if lo == b_lo and hi == b_hi:
            dst = out[lo - voxels.start : hi - voxels.start]
            np.take(clean, rows, axis=0, out=dst)
            add_rician_noise(dst, sigma[rows, None], rng=rng, out=dst)
        else:  # partial block: draw the whole block so the values do not depend on the split
            full = np.take(clean, rows, axis=0)
            add_rician_noise(full, sigma[rows, None], rng=rng, out=full)
            out[lo - voxels.start : hi - voxels.start] = full[lo - b_lo : hi - b_lo]
    return out


def simulate_case(scenario: Scenario, case: Case, *, voxels: range | None = None) -> xr.Dataset:
    """Simulate one case of a scenario.

    Parameters
    ----------
    scenario : Scenario
        The validated scenario (tissue grid, replicates, seed).
    case : Case
        One case from :meth:`Scenario.cases`.
    voxels : range, optional
        Subset of voxels to simulate (default all). The values of a voxel do not depend on
        which subset it was simulated in.

    Returns
    -------
    xarray.Dataset
        Coordinates ``time`` (s), ``voxel``, ``flip_angle`` (deg), per-voxel ``tissue`` and
        ``replicate`` indices; truth (the model's parameters, derived ``kep``/``Ktrans``,
        ``T10`` in s, ``m0``), ``ct`` (voxel, time, mM, noise-free), ``ca`` (time, mM,
        true plasma AIF), ``signal_pre`` (voxel, a.u., the noise-free pre-contrast signal),
        ``signal`` (voxel, time), ``vfa_signal`` (voxel, flip_angle) and, when
        ``arterial_voxels > 0``, ``arterial_signal`` (arterial_voxel, time) with the truth
        ``arterial_signal_pre`` (scalar, a.u.).
        Every protocol value, unit, seed, scenario hash and package version is in attrs.

    """
    protocol = case.protocol
    model = scenario.tissue.model
    table = scenario.tissue.table(protocol)
    n_tissue = table["T10"].size
    n_vox = n_tissue * scenario.replicates
    voxels = range(n_vox) if voxels is None else voxels
    if voxels.step != 1 or voxels.start < 0 or voxels.stop > n_vox or len(voxels) == 0:
        raise ValueError(f"voxels={voxels!r}: expected a contiguous range within [0, {n_vox})")
    tissue_of_voxel = np.repeat(np.arange(n_tissue), scenario.replicates)
    sel = tissue_of_voxel[voxels.start : voxels.stop]

    ct, sig_clean, ca = _truth_and_signal(model, table, protocol)
    r10 = 1.0 / table["T10"]
    s_pre = spgr(r10, fa=protocol.fa, tr=protocol.tr, m0=table["m0"], b1=protocol.b1)
    sigma = protocol.noise_sigma(table["T10"], table["m0"])
    vfa_clean = vfa_signal(
        r10,
        flip_angles=np.asarray(protocol.flip_angles),
        tr=protocol.tr,
        m0=table["m0"],
        b1=protocol.b1,
    )
    common = {"seed": scenario.seed, "case_index": case.index, "voxels": voxels}
    signal = _noisy(sig_clean, tissue_of_voxel, sigma, stream=STREAM_DYNAMIC, **common)
    vfa_sigma = protocol.vfa_noise_sigma(sigma)
    vfa = _noisy(vfa_clean, tissue_of_voxel, vfa_sigma, stream=STREAM_VFA, **common)

    n_art = protocol.arterial_voxels
    if n_art:
        art_clean, _, art_pre = arterial_truth(protocol)
        art_sigma = np.full(1, arterial_noise_sigma(protocol, art_pre))
        arterial = _noisy(
            art_clean[None, :],
            np.zeros(n_art, dtype=np.int64),
            art_sigma,
            seed=scenario.seed,
            case_index=case.index,
            stream=STREAM_ARTERIAL,
            voxels=range(n_art),
        )

    truth = {k: table[k] for k in (*MODELS[model].parameters, "T10", "m0")}
    truth.update(_derived(model, table))
    data_vars: dict[str, Any] = {}
    for name, values in truth.items():
        units = PARAMETERS[name].units if name in PARAMETERS else "a.u."
        long_name = (
            PARAMETERS[name].long_name if name in PARAMETERS else "equilibrium magnetisation"
        )
        data_vars[name] = (
            "voxel",
            values[sel],
            {"units": units, "long_name": long_name, "role": "truth"},
        )
    data_vars["ct"] = (
        ("voxel", "time"),
        ct[sel],
        {"units": "mM", "long_name": "tissue concentration (noise-free truth)", "role": "truth"},
    )
    data_vars["ca"] = (
        "time",
        ca,
        {"units": "mM", "long_name": "plasma arterial input function (truth)", "role": "truth"},
    )
    data_vars["signal_pre"] = (
        "voxel",
        s_pre[sel],
        {
            "units": "a.u.",
            "long_name": "noise-free pre-contrast signal of the dynamic series (truth)",
            "role": "truth",
        },
    )
    data_vars["signal"] = (
        ("voxel", "time"),
        signal,
        {"units": "a.u.", "long_name": "dynamic SPGR magnitude signal", "role": "measurement"},
    )
    data_vars["vfa_signal"] = (
        ("voxel", "flip_angle"),
        vfa,
        {"units": "a.u.", "long_name": "variable flip angle SPGR signal", "role": "measurement"},
    )
    if n_art:
        data_vars["arterial_signal"] = (
            ("arterial_voxel", "time"),
            arterial,
            {
                "units": "a.u.",
                "long_name": "SPGR signal of arterial voxels (blood + muscle partial volume)",
                "role": "measurement",
            },
        )
        data_vars["arterial_signal_pre"] = (
            (),
            art_pre,
            {
                "units": "a.u.",
                "long_name": "noise-free pre-contrast signal of the arterial voxels (truth)",
                "role": "truth",
            },
        )
    coords = {
        "time": ("time", protocol.frame_times, {"units": "s", "long_name": "frame time"}),
        "voxel": ("voxel", np.arange(voxels.start, voxels.stop)),
        "flip_angle": (
            "flip_angle",
            np.asarray(protocol.flip_angles),
            {"units": "deg", "long_name": "VFA nominal flip angle"},
        ),
        "tissue": ("voxel", sel, {"long_name": "index into the tissue grid"}),
        "replicate": ("voxel", np.arange(voxels.start, voxels.stop) % scenario.replicates),
    }
    attrs = {
        **protocol.as_attrs(),
        "protocol_units": protocol.units(),
        "model": model,
        "case_index": case.index,
        "case_values": {k: v for k, v in case.values.items()},
        "seed": scenario.seed,
        "replicates": scenario.replicates,
        "scenario": scenario.name,
        "scenario_hash": scenario.hash,
        "phantomdce_version": phantomdce.__version__,
        "noise_block_voxels": NOISE_BLOCK_VOXELS,
        "truth_grid_step_s": TRUTH_STEP_S,
        "snr_definition": SNR_DEFINITION,
    }
    if case.scanner is not None:
        attrs["scanner"] = case.scanner.as_mapping()
        attrs["scanner_derived"] = case.scanner_attrs()
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)
