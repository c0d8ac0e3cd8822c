"""Acquisition of the phantom: voxel size, slice profile and PSF, gap, fat, inflow, noise.

The dynamic series and the VFA images are computed per voxel *type* (a handful of
curves, see :mod:`phantomdce.phantom.anatomy`), then taken to the acquired grid by a
linear, separable imaging operator: an acquired voxel's signal is the weighted sum of the
signals of the truth voxels (magnetisation adds), each weight the integral of the
point-spread function (PSF) over a truth voxel. Because the operator is linear and
separable, the acquired signals are ``weights @ curves`` with ``weights`` the
PSF-weighted type composition of each acquired voxel, so memory scales with the acquired
grid, not the truth grid times the frames.

PSF, in plane (``in_plane_psf``) and through the slices (``slice_profile``):

- ``"box"`` / ``"rect"``: voxel integration, the volume-weighted mean of the truth voxels
  the acquired voxel covers (the idealised voxel; slices separated by the gap).
- ``"sinc"``: Fourier encoding, as a 3D SPGR encodes both directions: k-space truncated
  at the voxel's Nyquist frequency, so the image is the object convolved with
  ``sinc(x / size) / size`` sampled at the voxel centres (ringing and blurring at edges;
  integrated exactly over each truth voxel with the sine integral). The anatomy beyond
  the phantom's edges is taken as its edge voxels continued (no wrap-around, no false
  edge: in plane the edge is air; in z the phantom sits inside a larger slab), so a
  homogeneous region is returned exactly.
- ``"hann"``: Fourier encoding with a Hann k-space filter (less ringing, a wider PSF:
  ``sinc/2 + (sinc shifted by +-1 voxel)/4``).
- ``"gaussian"`` (slices only): a 2D multislice RF profile, Gaussian of FWHM the slice
  thickness (crosstalk into the gap and the neighbours), truncated at 2 slice thicknesses
  and renormalised.

The truth maps and ``fraction`` of each acquired voxel are always its volume composition
(box and rect), what the voxel nominally represents; ``weight`` is the PSF composition
that made the signal.

Fat: a fraction ``fat_fraction`` of a type's proton density is fat (native T1 of fat,
no enhancement); fat suppression keeps ``1 - fat_suppression`` of it.

Inflow: blood enters the excited slab fully relaxed, arteries from below (z = 0 side),
jugular veins from above, at a mean velocity ``v``; blood that has travelled a depth
``d`` into the slab has received ``d / (v TR)`` RF pulses and gives
:func:`phantomdce.signal.spgr_inflow` (averaged exactly over each truth voxel's depth),
in the dynamic series and in the VFA images. Flow is laminar by default: each vessel's
cross-section is cut into :data:`LAMINAR_BANDS` equal-area rings whose blood moves at
``2 v (1 - rho^2)`` (the axis at twice the mean, the wall still, so blood at the wall is
saturated); ``flow_profile = "plug"`` moves all of it at the mean. ``inflow_offset_mm``
is how far into the slab blood has already travelled when it reaches the phantom's first
slice: the phantom is a 40 mm slab at the oropharynx, inside a larger neck coverage.
Pulsatile flow (slower, more saturated blood in diastole) is not modelled, and the
model is that of a 3D slab whatever the slice profile (the refresh of blood in each slice
of a 2D multislice acquisition is not modelled); one offset serves arteries and veins.
Vessel curves thus depend on the truth slice and ring (``vessel_signal``); the other
types' do not.

Noise: the protocol's ``snr`` is the pre-contrast SNR of muscle in a reference voxel of
2 x 2 x 3 mm (the ESNR 2022 in-plane limit and recommended slice); SNR scales with voxel
volume, so a smaller voxel is noisier (an assumption of fixed scan time and bandwidth).
The VFA images have the same voxel and receiver, averaged ``vfa_averages`` times: their
noise SD is the dynamic series' SD / sqrt(vfa_averages) (attribute ``vfa_noise_sigma``).
Veins carry the arterial curve delayed by 6 s and dispersed by an 8 s exponential (an
assumption).

What the analyst has (``role = "measurement"``, kept by
:func:`phantomdce.fit.pipeline.measurements_only`): the images (``signal``, ``vfa_signal``),
the lesion contour drawn on the anatomical images (``lesion_outline``: the acquired voxels
at least half of whose volume is lesion, :data:`~phantomdce.phantom.anatomy.LESION_CLASSES`)
and the carotid landmarks an analyst would click (attributes ``carotid_right_mm`` and
``carotid_left_mm``, ``[slice, y, x]`` in mm on the acquired grid's frame, listed in
:data:`phantomdce.dro.boundary.ACQUISITION_ATTRS`). Everything else is truth.
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
import xarray as xr
from scipy.special import ndtr, sici

from phantomdce.dro.protocol import Protocol
from phantomdce.dro.simulate import case_aif
from phantomdce.dro.truth import aif_on_grid, tissue_truth, truth_grid
from phantomdce.kinetics import convolve_irf
from phantomdce.noise import add_rician_noise, rng_for
from phantomdce.params import PARAMETERS
from phantomdce.phantom.anatomy import CLASSES, LESION_CLASSES, Phantom
from phantomdce.signal import r1_from_concentration, spgr, spgr_inflow, vfa_signal

__all__ = [
    "Acquisition",
    "FLOW_PROFILES",
    "IN_PLANE_PSFS",
    "LAMINAR_BANDS",
    "SLICE_PROFILES",
    "LANDMARK_ATTRS",
    "acquire",
    "class_fractions",
    "overlap_weights",
    "psf_weights",
    "sphere_mask",
    "type_curves",
]

#: Venous curve: the arterial one delayed (s) and dispersed by an exponential (s).
VEIN_DELAY_S, VEIN_DISPERSION_S = 6.0, 8.0
#: Reference voxel volume (mm^3) at which ``Protocol.snr`` holds: 2 x 2 x 3 mm.
REFERENCE_VOXEL_MM3 = 12.0
M0 = 1000.0
IN_PLANE_PSFS = ("box", "sinc", "hann")
SLICE_PROFILES = ("rect", "sinc", "hann", "gaussian")
FLOW_PROFILES = ("laminar", "plug")
#: Laminar flow: the vessel cross-section is cut into this many equal-area rings, each with
#: its own curve (averaged over its speeds by 8-point Gauss-Legendre quadrature: within
#: 1e-4 of the exact ring average in the wall ring at the slab edge, where it is worst).
LAMINAR_BANDS = 8
_BAND_NODES = 8
#: Phantom landmarks given to the analyst, and the acquisition attribute (``[slice, y, x]``,
#: mm from the grid's corner) that carries each.
LANDMARK_ATTRS = MappingProxyType(
    {"carotid_right": "carotid_right_mm", "carotid_left": "carotid_left_mm"}
)


@dataclass(frozen=True)
class Acquisition:
    """Spatial acquisition settings.

    Attributes
    ----------
    in_plane_mm, slice_mm, gap_mm : float
        Acquired voxel size in plane, slice thickness and gap between slices, mm.
    fat_suppression : float
        Fat suppression efficiency, 0-1 (the fraction of fat signal removed).
    quantise : bool
        Round the magnitude images to integers, as a scanner's reconstruction stores them
        (needed for DICOM export; the rounding error, RMS 0.29, is far below the noise).
    in_plane_psf : {"sinc", "hann", "box"}
        In-plane point-spread function (see the module docstring); default ``"sinc"``,
        the Fourier encoding of a 3D SPGR.
    slice_profile : {"sinc", "hann", "rect", "gaussian"}
        Through-slice profile; default ``"sinc"`` (3D partition encoding, no gap).
    inflow : bool
        Model the inflow of unsaturated blood into the slab (default True).
    artery_velocity_cm_s, vein_velocity_cm_s : float
        Mean (plug-flow) blood velocity through the slab, cm/s. Defaults: 17 cm/s, a
        common carotid flow of 400 mL/min (normal volunteers 250-580 mL/min per side by
        phase-contrast MR, AJR 1989;152:1307) through the phantom's 7 mm lumen; 8 cm/s in
        the jugular veins (an assumption: a similar flow through a larger lumen).
    inflow_offset_mm : float
        Depth of the excited slab blood has crossed before it reaches the phantom's edge
        (arteries: the bottom; veins: the top), mm. Default 80 mm: a neck coverage from the
        thoracic inlet up, the oropharynx about 80 mm above its lower edge (an assumption;
        the carotid AIF depends strongly on it, see the scenario ``phantom_aif_inflow``).
    flow_profile : {"laminar", "plug"}
        Velocity across a vessel: laminar (Poiseuille, ``2 v (1 - rho^2)`` with ``rho`` the
        normalised radius, so the axis carries twice the mean and the wall stands still) or
        plug (the mean everywhere).
    """

    in_plane_mm: float = 2.0
    slice_mm: float = 3.0
    gap_mm: float = 0.0
    fat_suppression: float = 0.95
    quantise: bool = False
    in_plane_psf: str = "sinc"
    slice_profile: str = "sinc"
    inflow: bool = True
    artery_velocity_cm_s: float = 17.0
    vein_velocity_cm_s: float = 8.0
    inflow_offset_mm: float = 80.0
    flow_profile: str = "laminar"

    def __post_init__(self) -> None:
        def number(v: object) -> bool:
            return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)

        for name, unit in (
            ("in_plane_mm", "mm"),
            ("slice_mm", "mm"),
            ("artery_velocity_cm_s", "cm/s"),
            ("vein_velocity_cm_s", "cm/s"),
        ):
            v = getattr(self, name)
            if not (number(v) and v > 0):
                raise ValueError(f"acquisition.{name} = {v!r}: expected a number > 0 ({unit})")
        for name in ("gap_mm", "inflow_offset_mm"):
            v = getattr(self, name)
            if not (number(v) and v >= 0):
                raise ValueError(f"acquisition.{name} = {v!r}: expected a distance >= 0 (mm)")
        if not (number(self.fat_suppression) and 0 <= self.fat_suppression <= 1):
            raise ValueError(
                f"acquisition.fat_suppression = {self.fat_suppression!r}: expected a fraction"
                " of fat signal removed, 0-1"
            )
        for name in ("inflow", "quantise"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(
                    f"acquisition.{name} = {getattr(self, name)!r}: expected True or False"
                )
        if self.flow_profile not in FLOW_PROFILES:
            raise ValueError(
                f"acquisition.flow_profile = {self.flow_profile!r}: expected one of "
                f"{', '.join(FLOW_PROFILES)}"
            )
        if self.in_plane_psf not in IN_PLANE_PSFS:
            raise ValueError(
                f"acquisition.in_plane_psf = {self.in_plane_psf!r}: expected one of "
                f"{', '.join(IN_PLANE_PSFS)}"
            )
        if self.slice_profile not in SLICE_PROFILES:
            raise ValueError(
                f"acquisition.slice_profile = {self.slice_profile!r}: expected one of "
                f"{', '.join(SLICE_PROFILES)}"
            )
        if self.slice_profile in ("sinc", "hann") and self.gap_mm > 0:
            raise ValueError(
                f"acquisition.gap_mm = {self.gap_mm!r} with slice_profile = "
                f"{self.slice_profile!r}: a Fourier-encoded (3D) slab has no gap; expected "
                "gap_mm = 0, or slice_profile 'rect' or 'gaussian' (2D multislice)"
            )


def _n_out(n_in: int, vox_in: float, size: float, step: float) -> int:
    extent = n_in * vox_in
    return int(np.floor((extent - size) / step + 1e-9)) + 1 if extent >= size else 0


def overlap_weights(n_in: int, vox_in: float, size: float, step: float) -> np.ndarray:
    """Weights (n_out, n_in): overlap of each output interval with each input voxel / size.

    Output interval ``k`` covers ``[k * step, k * step + size]`` mm; input voxel ``j`` covers
    ``[j * vox_in, (j + 1) * vox_in]``. Only intervals inside the input extent are kept.
    """
    n_out = _n_out(n_in, vox_in, size, step)
    lo = np.arange(n_out)[:, None] * step
    hi = lo + size
    a = np.arange(n_in)[None, :] * vox_in
    b = a + vox_in
    return np.clip(np.minimum(hi, b) - np.maximum(lo, a), 0.0, None) / size


def psf_weights(
    n_in: int, vox_in: float, size: float, step: float, kind: str = "box"
) -> np.ndarray:
    """Weights (n_out, n_in): the PSF of output voxel ``k`` integrated over input voxel ``j``.

    Parameters
    ----------
    n_in : int
        Number of truth voxels along the axis.
    vox_in : float
        Truth voxel size, mm.
    size, step : float
        Acquired voxel size and centre-to-centre step (size + gap), mm.
    kind : {"box", "rect", "sinc", "hann", "gaussian"}
        The PSF (see the module docstring).

    Returns
    -------
    ndarray (n_out, n_in)
        Each row sums to 1 (a homogeneous object is returned exactly).
    """
    if kind in ("box", "rect"):
        return overlap_weights(n_in, vox_in, size, step)
    n_out = _n_out(n_in, vox_in, size, step)
    centre = (np.arange(n_out) * step + size / 2)[:, None]
    edges = np.arange(n_in + 1) * vox_in
    if kind == "gaussian":
        sigma = size / (2.0 * math.sqrt(2.0 * math.log(2.0)))
        cdf = ndtr((edges[None, :] - centre) / sigma)
        w = np.diff(cdf, axis=1)
        w[np.abs(centre - (edges[None, :-1] + edges[None, 1:]) / 2) > 2.0 * size] = 0.0
        return w / w.sum(axis=1, keepdims=True)
    if kind not in ("sinc", "hann"):
        raise ValueError(f"kind={kind!r}: expected box, rect, sinc, hann or gaussian")
    # antiderivative of the kernel in units of the voxel: sinc(u) -> Si(pi u) / pi
    shifts = ((0.0, 1.0),) if kind == "sinc" else ((0.0, 0.5), (-1.0, 0.25), (1.0, 0.25))

    def cumulative(x: np.ndarray) -> np.ndarray:
        return sum(wt * sici(np.pi * (x - sh))[0] / np.pi for sh, wt in shifts)

    u = (edges[None, :] - centre) / size
    cum = cumulative(u)
    w = np.diff(cum, axis=1)
    # the anatomy beyond the phantom's edges is its edge voxel, continued
    w[:, 0] += cum[:, 0] + 0.5
    w[:, -1] += 0.5 - cum[:, -1]
    return w


def _vessel_pulses(phantom: Phantom, acq: Acquisition, tr: float, kind: str):
    """RF pulses received at the near and far face of each truth slice (nz,), (nz,)."""
    nz = phantom.types.shape[0]
    v = phantom.voxel_mm
    depth = acq.inflow_offset_mm + np.arange(nz) * v
    if kind == "vein":  # the jugular veins flow down: they enter at the top
        depth = depth[::-1]
    velocity_mm_s = 10.0 * (
        acq.artery_velocity_cm_s if kind == "artery" else acq.vein_velocity_cm_s
    )
    per_mm = 1.0 / (velocity_mm_s * tr)
    return depth * per_mm, (depth + v) * per_mm


def type_curves(
    phantom: Phantom,
    protocol: Protocol,
    fat_suppression: float,
    acquisition: Acquisition | None = None,
):
    """Noise-free signal of each voxel type at the frames, and its VFA signals.

    Returns
    -------
    dynamic : ndarray (n_types, n_t)
    vfa : ndarray (n_types, n_angles)
    pre : ndarray (n_types,)
        Pre-contrast signal.
    vessels : dict
        With inflow (``acquisition.inflow``): per (vessel type index, laminar ring), its
        signal in each truth slice, ``(dynamic (nz, n_t), vfa (nz, n_angles))``; empty
        without.
        ``dynamic`` and ``vfa`` hold the steady-state (no inflow) vessel curves.
    """
    grid = truth_grid(protocol.frame_times, bat=protocol.bolus_arrival)
    aif = case_aif(protocol)
    ca_grid = aif_on_grid(grid, aif)
    ca = ca_grid[grid.frame_idx]
    # venous plasma: the arterial curve delayed and dispersed (mass conserving)
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
    vessels: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
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
        fat_dyn = fat * spgr(r10_fat, **kw)
        fat_vfa = fat * vfa_signal(r10_fat, flip_angles=angles, tr=protocol.tr, b1=protocol.b1)
        dyn[i] = water * spgr(r1, **kw) + fat_dyn
        pre[i] = water * spgr(r10, **kw) + fat_dyn
        vfa[i] = water * vfa_signal(r10, flip_angles=angles, tr=protocol.tr, b1=protocol.b1)
        vfa[i] += fat_vfa
        if "blood" in p and acquisition is not None and acquisition.inflow:
            kind = "vein" if "vein" in p else "artery"
            n0, n1 = _vessel_pulses(phantom, acquisition, protocol.tr, kind)
            for band, speeds in enumerate(_band_speeds(phantom, acquisition)):
                z_dyn = np.zeros((n0.size, protocol.n_frames))
                z_vfa = np.zeros((n0.size, angles.size))
                for speed, wt in speeds:  # relative speed v / v_mean and quadrature weight
                    a0, a1 = n0[:, None] / speed, n1[:, None] / speed
                    z_dyn += wt * spgr_inflow(r1[None, :], pulses=a0, pulses_to=a1, **kw)
                    z_vfa += wt * spgr_inflow(
                        r10,
                        fa=angles[None, :],
                        tr=protocol.tr,
                        b1=protocol.b1,
                        pulses=a0,
                        pulses_to=a1,
                    )
                vessels[(i, band)] = (water * z_dyn + fat_dyn, water * z_vfa + fat_vfa)
    return dyn, vfa, pre, vessels


def _laminar(phantom: Phantom, acq: Acquisition) -> bool:
    """Whether the vessels carry laminar rings (else plug flow, one ring)."""
    return acq.flow_profile == "laminar" and phantom.vessel_rho2 is not None


def _band_speeds(phantom: Phantom, acq: Acquisition) -> list[list[tuple[float, float]]]:
    """Per laminar ring: (speed / mean speed, weight) quadrature nodes; one ring for plug."""
    if not _laminar(phantom, acq):
        return [[(1.0, 1.0)]]
    x, w = np.polynomial.legendre.leggauss(_BAND_NODES)
    out = []
    for band in range(LAMINAR_BANDS):  # rho^2 uniform over the area: equal-area rings
        rho2 = (band + (x + 1.0) / 2.0) / LAMINAR_BANDS
        out.append(
            [(float(2.0 * (1.0 - r)), float(wt / 2.0)) for r, wt in zip(rho2, w, strict=True)]
        )
    return out


def _vessel_band(phantom: Phantom, acq: Acquisition) -> np.ndarray:
    """Laminar ring index of each truth voxel (0 outside vessels, and for plug flow)."""
    if not _laminar(phantom, acq):
        return np.zeros(phantom.types.shape, dtype=np.int16)
    rho2 = np.nan_to_num(phantom.vessel_rho2, nan=0.0)
    return np.clip((rho2 * LAMINAR_BANDS).astype(np.int16), 0, LAMINAR_BANDS - 1)


def class_fractions(phantom: Phantom, acquired: xr.Dataset, names: Iterable[str]) -> xr.DataArray:
    """Summed volume fraction (0-1) of the given classes in each acquired voxel (slice, y, x).

    Reads the truth: the acquisition's ``fraction`` and the phantom's voxel types.
    """
    idx = [i for i, p in enumerate(phantom.type_params) if p["class"] in set(names)]
    return acquired["fraction"].sel(type=idx).sum("type")


def sphere_mask(grid: xr.Dataset, centre_mm: Sequence[float], radius_mm: float) -> np.ndarray:
    """The acquired voxels (slice, y, x mask) whose centre lies in a sphere.

    Pure geometry on the coordinates ``slice``, ``y`` and ``x`` (mm) of ``grid`` (an
    acquisition, or its measurements only); the mask may be empty.

    Parameters
    ----------
    grid : xarray.Dataset
        Holds the coordinates ``slice``, ``y``, ``x`` in mm.
    centre_mm : sequence of 3 floats
        Centre ``(slice, y, x)``, mm from the grid's corner.
    radius_mm : float
        Radius, mm.
    """
    zz, yy, xx = np.meshgrid(
        grid["slice"].values, grid["y"].values, grid["x"].values, indexing="ij"
    )
    cz, cy, cx = centre_mm
    return (zz - cz) ** 2 + (yy - cy) ** 2 + (xx - cx) ** 2 <= radius_mm**2


#: One acquisition at a time per process: BLAS has one thread pool per process, so a limit
#: that one thread lifts would otherwise lift it under another thread's acquisition.
_ACQUIRING = threading.Lock()


def _one_blas_thread(func):
    """Run ``func`` with BLAS on one thread: its sums then do not depend on the machine.

    OpenBLAS splits a matrix product between its threads in a way that changes the order of
    the floating-point sums, so the acquired image would differ in its last bits between a
    process with 1 and one with 2 BLAS threads (a dask worker and the run, say), and a
    carotid voxel chosen by a near tie could differ with it. The truth must not depend on
    where it is computed. Acquisitions in concurrent threads of one process (dask's threads
    scheduler) take turns (:data:`_ACQUIRING`), each under the limit.
    """

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        from threadpoolctl import threadpool_limits

        with _ACQUIRING, threadpool_limits(limits=1, user_api="blas"):
            return func(*args, **kwargs)

    return wrapper


@_one_blas_thread
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
        Voxel size, slice thickness and gap (mm), PSF and slice profile, fat suppression
        and inflow.
    seed : int
        Noise seed (streams keyed by seed, stream and slice).

    Returns
    -------
    xarray.Dataset
        ``signal`` (slice, y, x, time) and ``vfa_signal`` (slice, y, x, flip_angle) as
        float32 measurements; ``fraction`` (type, slice, y, x) the volume composition of
        each acquired voxel and ``weight`` its PSF composition; ``type_signal`` (type,
        time) the noise-free signal of each type and, with inflow, ``vessel_signal``
        (vessel, truth_slice, time) that of each vessel type (``vessel_type``) and laminar
        ring (``ring``) in each truth slice (the
        noise-free acquired signal is ``weight @ type_signal`` with the vessel types'
        part taken slice by slice from ``vessel_signal``); truth maps at the acquired grid
        (volume-weighted ``Ktrans``, ``ve``, ``vp`` of the enhancing tissue they
        contain); the true plasma AIF ``ca`` (time, mM); coordinates in mm. The analyst's
        measurements besides the images: ``lesion_outline`` (slice, y, x bool) and the
        carotid landmarks ``carotid_right_mm``, ``carotid_left_mm`` (attributes,
        ``[slice, y, x]`` mm; see the module docstring).
    """
    acq = acquisition or Acquisition()
    nz, ny, nx = phantom.types.shape
    v = phantom.voxel_mm
    step_z = acq.slice_mm + acq.gap_mm
    box = (
        overlap_weights(nz, v, acq.slice_mm, step_z),
        overlap_weights(ny, v, acq.in_plane_mm, acq.in_plane_mm),
        overlap_weights(nx, v, acq.in_plane_mm, acq.in_plane_mm),
    )
    for name, size, n in (
        ("slice_mm", acq.slice_mm, nz),
        ("in_plane_mm", acq.in_plane_mm, min(ny, nx)),
    ):
        if size > n * v:
            raise ValueError(
                f"acquisition.{name} = {size!r} mm: larger than the phantom ({n} voxels of"
                f" {v} mm); expected <= {n * v:g} mm"
            )
    psf = (
        psf_weights(nz, v, acq.slice_mm, step_z, acq.slice_profile),
        psf_weights(ny, v, acq.in_plane_mm, acq.in_plane_mm, acq.in_plane_psf),
        psf_weights(nx, v, acq.in_plane_mm, acq.in_plane_mm, acq.in_plane_psf),
    )
    same_psf = acq.slice_profile == "rect" and acq.in_plane_psf == "box"
    n_types = len(phantom.type_params)
    shape = (box[0].shape[0], box[1].shape[0], box[2].shape[0])
    frac = np.empty((n_types, *shape), dtype=np.float32)
    weight = frac if same_psf else np.empty_like(frac)
    dyn, vfa, pre, vessels = type_curves(phantom, protocol, acq.fat_suppression, acq)
    vessel_types = {t for t, _ in vessels}
    band = _vessel_band(phantom, acq) if vessels else None
    # (vessel type, laminar ring) -> (nz, sy, sx) in-plane PSF weights, per truth slice
    in_plane: dict[tuple[int, int], np.ndarray] = {}

    def in_plane_weights(mask: np.ndarray, wy: np.ndarray, wx: np.ndarray) -> np.ndarray:
        rows = np.flatnonzero(mask.any(axis=(0, 2)))
        cols = np.flatnonzero(mask.any(axis=(0, 1)))
        if rows.size == 0:
            return np.zeros((mask.shape[0], wy.shape[0], wx.shape[0]), dtype=np.float32)
        # only the rows and columns the mask touches (small for a vessel ring)
        sub = mask[:, rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].astype(np.float32)
        wy_sub = wy[:, rows[0] : rows[-1] + 1].astype(np.float32)
        wx_sub = wx[:, cols[0] : cols[-1] + 1].astype(np.float32)
        f = np.tensordot(sub, wy_sub, axes=(1, 1))  # (nz, nx', sy)
        return np.tensordot(f, wx_sub, axes=(1, 1))  # (nz, sy, sx)

    for t in range(n_types):
        is_t = phantom.types == t
        frac[t] = np.tensordot(box[0], in_plane_weights(is_t, box[1], box[2]), axes=(1, 0))
        if not same_psf:
            f = in_plane_weights(is_t, psf[1], psf[2])
            weight[t] = np.tensordot(psf[0], f, axes=(1, 0))
        if t in vessel_types:
            for key in [k for k in vessels if k[0] == t]:
                in_plane[key] = in_plane_weights(is_t & (band == key[1]), psf[1], psf[2])
    flat = weight.reshape(n_types, -1).T  # (n_acq, n_types)
    dyn_main, vfa_main = dyn.copy(), vfa.copy()
    for t in vessel_types:  # their signal depends on the truth slice: added slice by slice
        dyn_main[t] = 0.0
        vfa_main[t] = 0.0
    muscle = next(i for i, p in enumerate(phantom.type_params) if p["class"] == "muscle")
    volume = acq.in_plane_mm**2 * acq.slice_mm
    sigma = pre[muscle] / protocol.snr * (REFERENCE_VOXEL_MM3 / volume)
    vfa_sigma = protocol.vfa_noise_sigma(sigma)
    per_slice = shape[1] * shape[2]
    # slice by slice, so that memory holds one slice of float64 curves at a time
    signal = np.empty((shape[0] * per_slice, protocol.n_frames), dtype=np.float32)
    vfa_out = np.empty((shape[0] * per_slice, vfa.shape[1]), dtype=np.float32)
    if vessels:  # all (vessel, ring) parts as one matrix: one product per acquired slice
        keys = list(vessels)
        parts = np.concatenate([in_plane.pop(k).reshape(nz, -1) for k in keys])  # (K nz, P)
        cols = np.flatnonzero(np.any(parts != 0, axis=0))
        parts_t = np.ascontiguousarray(parts[:, cols].T, dtype=np.float64)  # (C, K nz)
        del parts
        z_dyn_all = np.concatenate([vessels[k][0] for k in keys])  # (K nz, n_t)
        z_vfa_all = np.concatenate([vessels[k][1] for k in keys])
        wz_all = np.tile(psf[0], (1, len(keys)))  # (n_slices, K nz)
    for s in range(shape[0]):
        rows = slice(s * per_slice, (s + 1) * per_slice)
        clean = flat[rows] @ dyn_main
        vclean = flat[rows] @ vfa_main
        if vessels and cols.size:
            clean[cols] += parts_t @ (wz_all[s][:, None] * z_dyn_all)
            vclean[cols] += parts_t @ (wz_all[s][:, None] * z_vfa_all)
        if np.isfinite(protocol.snr):
            add_rician_noise(clean, sigma, rng=rng_for(seed, 0, 0, s), out=clean)
            # the VFA images: same voxel and receiver, vfa_averages averages each
            add_rician_noise(vclean, vfa_sigma, rng=rng_for(seed, 0, 1, s), out=vclean)
        else:  # magnitude images: a Fourier PSF's negative side lobes show as |signal|
            np.abs(clean, out=clean)
            np.abs(vclean, out=vclean)
        if acq.quantise:
            np.rint(clean, out=clean)
            np.rint(vclean, out=vclean)
        signal[rows] = clean
        vfa_out[rows] = vclean
    vol = frac.reshape(n_types, -1).T
    maps = {}
    for name in ("Ktrans", "ve", "vp"):
        vals = np.array([p.get(name, np.nan) for p in phantom.type_params])
        has = np.isfinite(vals)
        w = vol[:, has].sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            maps[name] = (vol[:, has] @ vals[has]) / w
    dims4 = ("slice", "y", "x")
    lesion = [i for i, p in enumerate(phantom.type_params) if p["class"] in LESION_CLASSES]
    outline = frac[lesion].sum(axis=0) >= 0.5
    coords = {
        "slice": (
            "slice",
            np.arange(shape[0]) * step_z + acq.slice_mm / 2,
            {"units": "mm", "long_name": "slice centre"},
        ),
        "y": ("y", (np.arange(shape[1]) + 0.5) * acq.in_plane_mm, {"units": "mm"}),
        "x": ("x", (np.arange(shape[2]) + 0.5) * acq.in_plane_mm, {"units": "mm"}),
        "time": ("time", protocol.frame_times, {"units": "s"}),
        "flip_angle": ("flip_angle", np.asarray(protocol.flip_angles), {"units": "deg"}),
        "type": ("type", np.arange(n_types)),
    }
    data = {
        "signal": (
            (*dims4, "time"),
            signal.reshape(*shape, -1),
            {"units": "a.u.", "role": "measurement"},
        ),
        "vfa_signal": (
            (*dims4, "flip_angle"),
            vfa_out.reshape(*shape, -1),
            {"units": "a.u.", "role": "measurement"},
        ),
        "lesion_outline": (
            dims4,
            outline,
            {
                "role": "measurement",
                "long_name": "lesion contour an analyst draws on the anatomical images (voxels"
                " at least half lesion: tumour, necrosis, haemorrhage)",
            },
        ),
        "ca": (
            "time",
            case_aif(protocol)(protocol.frame_times),
            {"units": "mM", "role": "truth", "long_name": "true plasma AIF at the frames"},
        ),
        "type_signal": (
            ("type", "time"),
            dyn,
            {
                "units": "a.u.",
                "role": "truth",
                "long_name": "noise-free signal of each voxel type (steady state: vessels"
                " without inflow)",
            },
        ),
        "type_vfa_signal": (("type", "flip_angle"), vfa, {"units": "a.u.", "role": "truth"}),
        "fraction": (
            ("type", *dims4),
            frac,
            {"long_name": "volume fraction of each voxel type", "role": "truth"},
        ),
        "weight": (
            ("type", *dims4),
            weight,
            {
                "long_name": "PSF-weighted composition of each acquired voxel (its weighted"
                " sum of type signals is the noise-free signal)",
                "role": "truth",
            },
        ),
    }
    if vessels:
        order = sorted(vessels)
        coords["vessel_type"] = ("vessel", [t for t, _ in order], {"long_name": "voxel type"})
        coords["ring"] = ("vessel", [b for _, b in order], {"long_name": "laminar ring, 0: axis"})
        coords["truth_slice"] = (
            "truth_slice",
            (np.arange(nz) + 0.5) * v,
            {"units": "mm", "long_name": "truth-grid slice centre"},
        )
        data["vessel_signal"] = (
            ("vessel", "truth_slice", "time"),
            np.stack([vessels[t][0] for t in order]),
            {
                "units": "a.u.",
                "role": "truth",
                "long_name": "vessel signal with inflow, per vessel type and laminar ring",
            },
        )
    units = {k: PARAMETERS[k].units for k in ("Ktrans", "ve", "vp")}
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
        "in_plane_psf": acq.in_plane_psf,
        "slice_profile": acq.slice_profile,
        "inflow": int(acq.inflow),
        "artery_velocity_cm_s": acq.artery_velocity_cm_s,
        "vein_velocity_cm_s": acq.vein_velocity_cm_s,
        "inflow_offset_mm": acq.inflow_offset_mm,
        "flow_profile": acq.flow_profile,
        "noise_sigma": float(sigma),
        "vfa_noise_sigma": float(vfa_sigma),
        "phantom_seed": phantom.seed,
        "truth_voxel_mm": phantom.voxel_mm,
    }
    for name, key in LANDMARK_ATTRS.items():
        if name in phantom.landmarks:
            attrs[key] = [float(c) for c in phantom.landmarks[name]]
    return xr.Dataset(data, coords=coords, attrs=attrs)
