"""Acquisition of the phantom: voxel size, slice thickness and gap, fat, noise.

The dynamic series and the VFA images are computed per voxel *type* (a handful of
curves, see :mod:`phantomdce.phantom.anatomy`), then taken to the acquired grid by the
exact partial-volume operator: an acquired voxel's signal is the volume-weighted mean of
the signals of the truth voxels it covers (magnetisation adds), with a rectangular slice
profile of the slice thickness, slices separated by the gap, and box (voxel-integration)
weighting in plane. Because the operator is linear and separable, the acquired signals are
``fractions @ curves`` with ``fractions`` the type composition of each acquired voxel, so
memory scales with the acquired grid, not the truth grid times the frames.

Fat: a fraction ``fat_fraction`` of a type's proton density is fat (native T1 of fat,
no enhancement); fat suppression keeps ``1 - fat_suppression`` of it.

Noise: the protocol's ``snr`` is the pre-contrast SNR of muscle in a reference voxel of
2 x 2 x 3 mm (the ESNR 2022 in-plane limit and recommended slice); SNR scales with voxel
volume, so a smaller voxel is noisier (an assumption of fixed scan time and bandwidth).
Veins carry the arterial curve delayed by 6 s and dispersed by an 8 s exponential (an
assumption). Inflow in the arteries is not modelled yet.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xarray as xr

from phantomdce.dro.protocol import Protocol
from phantomdce.dro.simulate import case_aif
from phantomdce.dro.truth import aif_on_grid, tissue_truth, truth_grid
from phantomdce.kinetics import convolve_irf
from phantomdce.noise import add_rician_noise, rng_for
from phantomdce.phantom.anatomy import CLASSES, Phantom
from phantomdce.signal import r1_from_concentration, spgr, vfa_signal

__all__ = ["Acquisition", "overlap_weights", "type_curves", "acquire"]

#: Venous curve: the arterial one delayed (s) and dispersed by an exponential (s).
VEIN_DELAY_S, VEIN_DISPERSION_S = 6.0, 8.0
#: Reference voxel volume (mm^3) at which ``Protocol.snr`` holds: 2 x 2 x 3 mm.
REFERENCE_VOXEL_MM3 = 12.0
M0 = 1000.0


@dataclass(frozen=True)
class Acquisition:
    """Spatial acquisition settings (mm) and fat suppression efficiency (0-1)."""

    in_plane_mm: float = 2.0
    slice_mm: float = 3.0
    gap_mm: float = 0.0
    fat_suppression: float = 0.95
    quantise: bool = False
    """Round the magnitude images to integers, as a scanner's reconstruction stores them
    (needed for DICOM export; the rounding error, RMS 0.29, is far below the noise)."""

    def __post_init__(self) -> None:
        for name in ("in_plane_mm", "slice_mm"):
            v = getattr(self, name)
            if not (np.isfinite(v) and v > 0):
                raise ValueError(f"acquisition.{name} = {v!r}: expected a size > 0 mm")
        if not (np.isfinite(self.gap_mm) and self.gap_mm >= 0):
            raise ValueError(f"acquisition.gap_mm = {self.gap_mm!r}: expected a gap >= 0 mm")
        if not 0 <= self.fat_suppression <= 1:
            raise ValueError(
                f"acquisition.fat_suppression = {self.fat_suppression!r}: expected 0-1"
            )


def overlap_weights(n_in: int, vox_in: float, size: float, step: float) -> np.ndarray:
    """Weights (n_out, n_in): overlap of each output interval with each input voxel / size.

    Output interval ``k`` covers ``[k * step, k * step + size]`` mm; input voxel ``j`` covers
    ``[j * vox_in, (j + 1) * vox_in]``. Only intervals inside the input extent are kept.
    """
    extent = n_in * vox_in
    n_out = int(np.floor((extent - size) / step + 1e-9)) + 1 if extent >= size else 0
    lo = np.arange(n_out)[:, None] * step
    hi = lo + size
    a = np.arange(n_in)[None, :] * vox_in
    b = a + vox_in
    return np.clip(np.minimum(hi, b) - np.maximum(lo, a), 0.0, None) / size


def type_curves(phantom: Phantom, protocol: Protocol, fat_suppression: float):
    """Noise-free signal of each voxel type at the frames, and its VFA signals.

    Returns
    -------
    dynamic : ndarray (n_types, n_t)
    vfa : ndarray (n_types, n_angles)
    pre : ndarray (n_types,)
        Pre-contrast signal.
    """
    grid = truth_grid(protocol.frame_times, bat=protocol.bolus_arrival)
    ca_grid = aif_on_grid(grid, case_aif(protocol))
    ca = ca_grid[grid.frame_idx]
    # venous plasma: the arterial curve delayed and dispersed (mass conserving)
    aif = case_aif(protocol)
    delayed = np.asarray(aif(grid.t - VEIN_DELAY_S), dtype=np.float64)
    k = 1.0 / VEIN_DISPERSION_S
    vein = convolve_irf(grid.t, delayed, 0.0, [k], [k], allow_jumps=True)
    fi = 0 if protocol.field_strength == 1.5 else 1
    r10_fat = 1.0 / CLASSES["fat"].t10[fi]
    kw = {"fa": protocol.fa, "tr": protocol.tr, "b1": protocol.b1}
    n = len(phantom.type_params)
    dyn = np.zeros((n, protocol.n_frames))
    vfa = np.zeros((n, len(protocol.flip_angles)))
    pre = np.zeros(n)
    angles = np.asarray(protocol.flip_angles)
    for i, p in enumerate(phantom.type_params):
        if p["pd"] == 0:
            continue
        water = M0 * p["pd"] * (1 - p["fat_fraction"])
        fat = M0 * p["pd"] * p["fat_fraction"] * (1 - fat_suppression)
        r10 = 1.0 / p["T10"]
        if "vein" in p:
            conc = vein[grid.frame_idx] * (1 - protocol.hct)
        elif "blood" in p:
            conc = ca * (1 - protocol.hct)
        elif "Ktrans" in p:
            params = {k: np.array([p[k]]) for k in ("Ktrans", "ve", "vp")}
            conc = tissue_truth("extended_tofts", params, grid=grid, ca_grid=ca_grid)[0]
            conc = conc[grid.frame_idx]
        else:
            conc = np.zeros(protocol.n_frames)
        r1 = r1_from_concentration(conc, r10=r10, r1_relaxivity=protocol.relaxivity)
        dyn[i] = water * spgr(r1, **kw) + fat * spgr(r10_fat, **kw)
        pre[i] = water * spgr(r10, **kw) + fat * spgr(r10_fat, **kw)
        vfa[i] = water * vfa_signal(r10, flip_angles=angles, tr=protocol.tr, b1=protocol.b1)
        vfa[i] += fat * vfa_signal(r10_fat, flip_angles=angles, tr=protocol.tr, b1=protocol.b1)
    return dyn, vfa, pre


def acquire(
    phantom: Phantom,
    protocol: Protocol,
    acquisition: Acquisition | None = None,
    *,
    seed: int = 0,
) -> xr.Dataset:
    """Acquire the phantom with a protocol and spatial settings.

    Parameters
    ----------
    phantom : Phantom
        From :func:`phantomdce.phantom.anatomy.make_neck`.
    protocol : Protocol
        Temporal and sequence settings (``snr`` as defined in the module docstring).
    acquisition : Acquisition, optional
        Voxel size, slice thickness and gap (mm) and fat suppression.
    seed : int
        Noise seed (streams keyed by seed, stream and slice).

    Returns
    -------
    xarray.Dataset
        ``signal`` (slice, y, x, time) and ``vfa_signal`` (slice, y, x, flip_angle) as
        float32 measurements, ``fraction`` (type, slice, y, x) the type composition of each
        acquired voxel and ``type_signal`` (type, time) the noise-free signal of each type
        (their product is the noise-free acquired signal), and truth maps at the acquired
        grid (volume-weighted ``Ktrans``, ``ve``, ``vp`` of the enhancing tissue they
        contain); coordinates in mm.
    """
    acq = acquisition or Acquisition()
    nz, ny, nx = phantom.types.shape
    v = phantom.voxel_mm
    wz = overlap_weights(nz, v, acq.slice_mm, acq.slice_mm + acq.gap_mm)
    wy = overlap_weights(ny, v, acq.in_plane_mm, acq.in_plane_mm)
    wx = overlap_weights(nx, v, acq.in_plane_mm, acq.in_plane_mm)
    if min(wz.shape[0], wy.shape[0], wx.shape[0]) == 0:
        raise ValueError(
            f"acquisition {acq} does not fit in the phantom ({nz} x {ny} x {nx} voxels of {v} mm)"
        )
    n_types = len(phantom.type_params)
    frac = np.empty((n_types, wz.shape[0], wy.shape[0], wx.shape[0]), dtype=np.float32)
    for t in range(n_types):
        onehot = (phantom.types == t).astype(np.float32)
        f = np.tensordot(wz, onehot, axes=(1, 0))  # (sz, ny, nx)
        f = np.tensordot(f, wy, axes=(1, 1))  # (sz, nx, sy)
        f = np.tensordot(f, wx, axes=(1, 1))  # (sz, sy, sx)
        frac[t] = f
    dyn, vfa, pre = type_curves(phantom, protocol, acq.fat_suppression)
    flat = frac.reshape(n_types, -1).T  # (n_acq, n_types)
    muscle = next(i for i, p in enumerate(phantom.type_params) if p["class"] == "muscle")
    volume = acq.in_plane_mm**2 * acq.slice_mm
    sigma = pre[muscle] / protocol.snr * (REFERENCE_VOXEL_MM3 / volume)
    shape = frac.shape[1:]
    per_slice = shape[1] * shape[2]
    # slice by slice, so that memory holds one slice of float64 curves at a time
    signal = np.empty((shape[0] * per_slice, protocol.n_frames), dtype=np.float32)
    vfa_out = np.empty((shape[0] * per_slice, vfa.shape[1]), dtype=np.float32)
    for s in range(shape[0]):
        rows = slice(s * per_slice, (s + 1) * per_slice)
        clean = flat[rows] @ dyn
        vclean = flat[rows] @ vfa
        if np.isfinite(protocol.snr):
            add_rician_noise(clean, sigma, rng=rng_for(seed, 0, 0, s), out=clean)
            add_rician_noise(vclean, sigma, rng=rng_for(seed, 0, 1, s), out=vclean)
        if acq.quantise:
            np.rint(clean, out=clean)
            np.rint(vclean, out=vclean)
        signal[rows] = clean
        vfa_out[rows] = vclean
    maps = {}
    for name in ("Ktrans", "ve", "vp"):
        vals = np.array([p.get(name, np.nan) for p in phantom.type_params])
        has = np.isfinite(vals)
        weight = flat[:, has].sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            maps[name] = (flat[:, has] @ vals[has]) / weight
    dims4 = ("slice", "y", "x")
    coords = {
        "slice": (
            "slice",
            np.arange(shape[0]) * (acq.slice_mm + acq.gap_mm) + acq.slice_mm / 2,
            {"units": "mm", "long_name": "slice centre"},
        ),
        "y": ("y", (np.arange(shape[1]) + 0.5) * acq.in_plane_mm, {"units": "mm"}),
        "x": ("x", (np.arange(shape[2]) + 0.5) * acq.in_plane_mm, {"units": "mm"}),
        "time": ("time", protocol.frame_times, {"units": "s"}),
        "flip_angle": ("flip_angle", np.asarray(protocol.flip_angles), {"units": "deg"}),
        "type": ("type", np.arange(n_types)),
    }
    data = {
        "signal": ((*dims4, "time"), signal.reshape(*shape, -1), {"units": "a.u."}),
        "vfa_signal": ((*dims4, "flip_angle"), vfa_out.reshape(*shape, -1), {"units": "a.u."}),
        "type_signal": (
            ("type", "time"),
            dyn,
            {
                "units": "a.u.",
                "role": "truth",
                "long_name": "noise-free signal of each voxel type (fraction-weighted sum of"
                " these is the noise-free acquired signal)",
            },
        ),
        "type_vfa_signal": (("type", "flip_angle"), vfa, {"units": "a.u.", "role": "truth"}),
        "fraction": (
            ("type", *dims4),
            frac,
            {"long_name": "volume fraction of each voxel type", "role": "truth"},
        ),
    }
    units = {"Ktrans": "/min", "ve": "1", "vp": "1"}
    for name, m in maps.items():
        data[name] = (
            dims4,
            m.reshape(shape),
            {"units": units[name], "role": "truth", "long_name": f"volume-weighted true {name}"},
        )
    attrs = {
        **protocol.as_attrs(),
        "in_plane_mm": acq.in_plane_mm,
        "slice_mm": acq.slice_mm,
        "gap_mm": acq.gap_mm,
        "fat_suppression": acq.fat_suppression,
        "quantised": int(acq.quantise),
        "noise_sigma": float(sigma),
        "phantom_seed": phantom.seed,
        "truth_voxel_mm": phantom.voxel_mm,
    }
    return xr.Dataset(data, coords=coords, attrs=attrs)
