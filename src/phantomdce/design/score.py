"""Fast scores of many protocols: the precision bound and the fitter's deterministic bias.

:func:`score_protocols` rates every protocol of a list on every tissue of a grid, without
Monte Carlo, so that hundreds of protocols take seconds:

**Precision** (``crlb_sd``, ``crlb_cv_pct``): the Cramér-Rao bound of
:mod:`phantomdce.precision` (its :func:`covariance <phantomdce.precision.covariance>` of the
signal-level Jacobians, the same noise model and nuisance parameters). The Jacobians are
assembled here by the chain rule so that the expensive part is shared between protocols:
the tissue concentration and its complex-step derivatives with respect to the kinetic
parameters (:meth:`SignalModel.concentration <phantomdce.precision.SignalModel.concentration>`)
depend only on the timing and the AIF, not on the flip angles, TR, field strength, SNR or
duration, so they are computed once per timing for the longest duration of the group (the
frames of a shorter series are a prefix of the longer one's: the truth grid and the exact
convolution at a node do not depend on later nodes). Per protocol, with
``R1 = 1/T10 + r1 C``, ``E = exp(-TR R1)``, ``a = b1 fa`` and the SPGR signal
``S = M0 f(R1)``, ``f = sin a (1 - E) / (1 - cos a E)``::

    dS/dtheta_k = M0 f'(R1) r1 dC/dtheta_k,  dS/dM0 = f(R1),  dS/dT10 = -M0 f'(R1) / T10^2,
    f'(R1) = sin a (1 - cos a) TR E / (1 - cos a E)^2,

window-averaged over each frame for ``"average"`` sampling, and likewise for the VFA images
at ``1/T10``. The noise SD of a dynamic sample is ``S_pre / snr`` (the receiver's one SD
when the protocol states ``snr_t1_s``: :meth:`phantomdce.dro.protocol.Protocol.noise_sigma`)
and of a VFA image
``S_pre / snr * r``, ``r`` the protocol's ``vfa_sigma_ratio`` when it has one, else
``1/sqrt(vfa_averages)`` (:mod:`phantomdce.precision`'s rule). A test checks the result
against :func:`phantomdce.precision.crlb` called directly.

**Bias** (``bias_pct``): the relative error of the site's fitter, through the estimation
pipeline (T1 from the VFA images, concentration from the signal, the AIF as the pipeline
says), on the protocol's **noise-free** data (:func:`phantomdce.dro.simulate.simulate_case`
with ``snr = inf``): the deterministic part of the error that comes from the temporal
sampling (a frame-time discretisation of the model), the T1 mapping and the model. Limits of
this bias model: it leaves out the bias that noise itself causes in a non-linear estimator
(which grows at low SNR and is what the Monte-Carlo confirmation of
:mod:`phantomdce.design.optimise` measures), and it is computed at the protocol's own bolus
arrival phase (``bat_phase``, 0 by default: the arrival on a frame), so the spread of
sampling bias over arrival phases (the ``temporal_resolution`` scenario) is not in it.
Noise-free fits are computed once per distinct noise-free protocol (protocols that differ
only in SNR or VFA averages share one).

Units: SDs in their parameter's units (Ktrans, kep /min; ve, vp 0-1); CVs and biases in %
of the true value; times in s.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr
from numpy.typing import NDArray

from phantomdce.dro.protocol import PROTOCOL_FIELDS, Protocol
from phantomdce.dro.scenario import TissueGrid, parse_scenario
from phantomdce.dro.simulate import simulate_case
from phantomdce.dro.truth import TRUTH_STEP_S, window_mean
from phantomdce.params import MODELS, PARAMETERS
from phantomdce.precision import (
    COMPLEX_STEP,
    KINDS,
    SignalModel,
    covariance,
    derived_parameters,
    derived_sd,
)

__all__ = [
    "DEFAULT_FITTER",
    "DEFAULT_PIPELINE",
    "noise_free_bias",
    "protocol_table",
    "score_protocols",
    "tissue_table",
    "vfa_sigma_ratio",
]

#: The fitter whose deterministic bias is scored unless another is named.
DEFAULT_FITTER = "nlls_extended_tofts"
#: The estimation pipeline of the bias unless another is given: T1 from a non-linear fit of
#: the VFA images, the true plasma AIF (no AIF error: the AIF is outside the protocol).
DEFAULT_PIPELINE: Mapping[str, Any] = {"t1": "vfa_nonlinear", "aif": "true"}
#: Protocol fields the tissue concentration at the frames does not depend on (the signal,
#: noise, duration and arterial-voxel settings): protocols equal in all other fields share
#: one concentration and its derivatives.
_SIGNAL_ONLY = (
    "duration",
    "post_bolus_s",
    "fa",
    "tr",
    "flip_angles",
    "b1",
    "field_strength",
    "r1",
    "snr",
    "vfa_averages",
    "vfa_sigma_ratio",
    "arterial_voxels",
    "blood_fraction",
)
#: Protocol fields that only set the noise: protocols equal in all other fields share one
#: noise-free fit.
_NOISE_ONLY = ("snr", "vfa_averages", "vfa_sigma_ratio", "snr_t1_s")


def vfa_sigma_ratio(protocol: Protocol) -> float:
    """Noise SD of one VFA image / noise SD of one dynamic frame (1).

    The protocol's ``vfa_sigma_ratio`` when it has one (set from a scanner), else
    ``1 / sqrt(vfa_averages)`` (:attr:`Protocol.vfa_noise_ratio
    <phantomdce.dro.protocol.Protocol.vfa_noise_ratio>`, the simulator's rule).
    """
    return float(protocol.vfa_noise_ratio)


def _key(protocol: Protocol, skip: Sequence[str]) -> tuple:
    """The protocol's values except ``skip`` (the resolved bolus arrival for ``bat``)."""
    return tuple(
        protocol.bolus_arrival if f.name == "bat" else getattr(protocol, f.name)
        for f in dataclasses.fields(protocol)
        if f.name not in skip
    )


def _spgr_and_slope(
    r1: NDArray, fa_deg: Any, tr: float, b1: float
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """SPGR signal per unit M0, ``f(R1)``, and its derivative ``df/dR1`` (s)."""
    a = np.deg2rad(b1 * np.asarray(fa_deg, dtype=np.float64))
    e1 = np.exp(-tr * r1)
    den = 1.0 - np.cos(a) * e1
    f = np.sin(a) * (1.0 - e1) / den
    df = np.sin(a) * (1.0 - np.cos(a)) * tr * e1 / den**2
    return f, df


class _Timing:
    """Concentration and its kinetic derivatives for one timing (longest duration)."""

    def __init__(
        self, protocol: Protocol, model: str, params: Mapping[str, NDArray], step: float
    ) -> None:
        self.sm = SignalModel(protocol, step=step)
        names = list(MODELS[model].parameters)
        n = next(iter(params.values())).size
        p = len(names)
        steps = COMPLEX_STEP * np.maximum(np.abs(np.stack([params[k] for k in names], -1)), 1.0)
        pert = {k: np.repeat(params[k].astype(np.complex128), p) for k in names}
        for j, name in enumerate(names):
            pert[name][j::p] += 1j * steps[:, j]
        c = self.sm.concentration(model, pert).reshape(n, p, -1)
        self.c = c[:, 0].real  # (n, nodes): the step is below rounding of the real part
        self.dc = c.imag / steps[:, :, None]  # (n, p, nodes), mM per package unit

    def dynamic(
        self, fa: float, tr: float, b1: float, r1: float, t10: NDArray, m0: NDArray
    ) -> NDArray[np.float64]:
        """Dynamic Jacobian at every frame of the longest series, (n, frames, p + 2).

        Columns: the kinetic parameters, ``m0`` and ``T10`` (as
        :meth:`phantomdce.precision.SignalModel.jacobians`).
        """
        r1_ = 1.0 / t10[:, None] + r1 * self.c
        f, df = _spgr_and_slope(r1_, fa, tr, b1)
        m = m0[:, None]
        cols = [m[:, None] * (df * r1)[:, None] * self.dc]  # (n, p, nodes)
        cols.append(f[:, None])
        cols.append((-m * df / t10[:, None] ** 2)[:, None])
        jd = np.concatenate(cols, axis=1)
        if self.sm.average:
            jd = window_mean(self.sm.grid, jd)
        return np.ascontiguousarray(np.transpose(jd, (0, 2, 1)))


def _vfa_jacobian(
    flip_angles: Sequence[float], tr: float, b1: float, t10: NDArray, m0: NDArray
) -> NDArray[np.float64]:
    """VFA Jacobian (n, angles, 2): d(signal)/d(M0 of the VFA series, T10)."""
    fv, dfv = _spgr_and_slope((1.0 / t10)[:, None], np.asarray(flip_angles), tr, b1)
    return np.stack([fv, -m0[:, None] * dfv / t10[:, None] ** 2], axis=-1)


#: Largest number of (protocol, tissue) rows of one batched covariance (bounds memory).
_BATCH_ROWS = 4096


def _truth_values(model: str, table: Mapping[str, NDArray]) -> dict[str, NDArray]:
    out = {k: table[k] for k in MODELS[model].parameters}
    for dname, func in derived_parameters(model).items():
        out[dname] = np.real(func({k: np.asarray(v, dtype=np.complex128) for k, v in out.items()}))
    return out


def protocol_table(protocol: Protocol) -> dict[str, Any]:
    """A protocol as a ``[protocol]`` table (plain types) that rebuilds it exactly.

    Every key of :data:`phantomdce.dro.protocol.PROTOCOL_FIELDS` whose value is set; the
    resolved ``duration`` instead of ``post_bolus_s``.
    """
    out: dict[str, Any] = {}
    for key in PROTOCOL_FIELDS:
        if key == "post_bolus_s" or not hasattr(protocol, key):
            continue
        value = getattr(protocol, key)
        if value is None:
            continue
        out[key] = list(value) if isinstance(value, tuple) else value
    return out


def tissue_table(tissue: TissueGrid) -> dict[str, Any]:
    """A tissue grid as a ``[tissue]`` table (plain types)."""
    return {"model": tissue.model, **{k: list(v) for k, v in tissue.axes.items()}}


def noise_free_bias(
    protocol: Protocol,
    tissue: TissueGrid,
    *,
    fitter: str = DEFAULT_FITTER,
    pipeline: Mapping[str, Any] | None = None,
) -> tuple[dict[str, NDArray[np.float64]], NDArray[np.bool_]]:
    """Relative error (%) of a fitter on a protocol's noise-free data, per tissue.

    Parameters
    ----------
    protocol : Protocol
        The acquisition (its SNR is ignored: the data are noise-free).
    tissue : TissueGrid
        The tissues (one voxel each).
    fitter : str, optional
        Fitter name or ``module:attribute`` spec (:func:`phantomdce.fit.registry.get_fitter`).
    pipeline : mapping, optional
        Estimation pipeline settings (:class:`phantomdce.fit.pipeline.Pipeline`; default
        :data:`DEFAULT_PIPELINE`).

    Returns
    -------
    bias_pct : dict of str to ndarray (n_tissues,)
        ``100 (estimate - truth) / truth`` per estimated parameter (and derived kep, Ktrans);
        NaN where the fit failed.
    success : ndarray of bool (n_tissues,)
        The fitter's success flags.
    """
    from phantomdce.engine.run import collect_estimates
    from phantomdce.fit.pipeline import Pipeline
    from phantomdce.fit.registry import resolve_fitters

    info = resolve_fitters([fitter])[0]
    pipe = Pipeline.from_mapping(dict(DEFAULT_PIPELINE if pipeline is None else pipeline))
    raw = {**protocol_table(protocol), "snr": math.inf}
    if pipe.aif != "measured":  # the arterial voxels enter only a measured AIF
        raw["arterial_voxels"] = 0
    scenario = parse_scenario(
        {"name": "bias", "replicates": 1, "protocol": raw, "tissue": tissue_table(tissue)}
    )
    ds = simulate_case(scenario, scenario.cases()[0])
    n = ds.sizes["voxel"]
    result = info.fitter.fit(pipe(ds).copy(deep=True))
    est, ok, _ = collect_estimates(result, info, n)
    out = {}
    for name, values in est.items():
        if name not in ds or name not in PARAMETERS:
            continue
        truth = np.asarray(ds[name].values, dtype=np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            rel = 100.0 * (values - truth) / truth
        out[name] = np.where(ok & (truth != 0), rel, np.nan)
    return out, ok


def _angles_label(angles) -> str:
    """``5, 15, 30``: the VFA flip angles as one text value (a label, not a CSV row)."""
    return ", ".join(map("{:g}".format, angles))


def score_protocols(
    protocols: Sequence[Protocol],
    tissue: TissueGrid,
    *,
    model: str | None = "extended_tofts",
    kind: str = "two_step",
    bias: bool = True,
    fitter: str = DEFAULT_FITTER,
    pipeline: Mapping[str, Any] | None = None,
    vfa_time_s: Sequence[float] | None = None,
    labels: Sequence[str] | None = None,
    grid_step: float = TRUTH_STEP_S,
) -> xr.Dataset:
    """Score protocols on a tissue grid: precision bound, deterministic bias, scan time.

    Parameters
    ----------
    protocols : sequence of Protocol
        The candidate acquisitions.
    tissue : TissueGrid
        The tissues every protocol is judged on (T10 absent: tumour at each protocol's
        field strength).
    model : str or None, optional
        Model of the bound; it must be the tissue's model (the data's), which None means.
    kind : str, optional
        Bound of :data:`phantomdce.precision.KINDS` (default ``"two_step"``: T10 from the VFA
        images, then the dynamic fit, the route of the recommendations).
    bias : bool, optional
        Compute ``bias_pct`` from noise-free fits (False: NaN, faster).
    fitter : str, optional
        The fitter of the bias (default :data:`DEFAULT_FITTER`).
    pipeline : mapping, optional
        The estimation pipeline of the bias (default :data:`DEFAULT_PIPELINE`).
    vfa_time_s : sequence of float, optional
        Acquisition time of each protocol's VFA images, s (from the scanner model); NaN or
        absent: unknown, and ``scan_time_s`` is the dynamic duration alone.
    labels : sequence of str, optional
        Names of the protocols (default ``"p0"``, ``"p1"``, ...).
    grid_step : float, optional
        Spacing (s) of the grid of the bound's convolution (``grid_step`` of
        :func:`phantomdce.precision.crlb`): the simulator's own by default; 0.1 s is about
        ten times faster and changes the bound by less than 1e-4 relative (precision's own
        measurement; a test here checks 1e-3).

    Returns
    -------
    xarray.Dataset
        Dimensions ``protocol``, ``tissue``, ``parameter`` (the model's parameters and the
        derived ones, e.g. Ktrans, ve, vp, kep). Variables:

        ``crlb_sd`` (protocol, tissue, parameter)
            bound on the SD, in the parameter's units (``inf``: not determined);
        ``crlb_cv_pct`` (protocol, tissue, parameter)
            ``100 crlb_sd / |truth|``, %;
        ``bias_pct`` (protocol, tissue, parameter)
            relative bias of the noise-free fit, % (NaN where ``bias`` is False, the fit
            failed or the fitter does not estimate the parameter);
        ``bias_fit_success`` (protocol, tissue)
            the noise-free fit's success flag;
        ``worst_cv_pct``, ``worst_abs_bias_pct`` (protocol, parameter)
            the largest over the tissues, % (NaN-aware; a failed fit makes the worst bias
            ``inf``);
        ``dynamic_time_s``, ``vfa_time_s``, ``scan_time_s`` (protocol)
            duration of the dynamic series, of the VFA images (NaN: unknown) and their sum
            (the duration alone where the VFA time is unknown), s;
        ``truth`` (tissue, parameter) and ``T10_s`` (protocol, tissue)
            the tissues' true values (package units) and native T1 (s).

        Protocol coordinates ``dt_s``, ``fa_deg``, ``tr_s``, ``snr``, ``vfa_sigma_ratio``,
        ``flip_angles_deg`` (text). Attributes ``kind``, ``model``, ``fitter``, ``pipeline``.

    Raises
    ------
    ValueError
        An empty list, a model other than the tissue's, an unknown kind, or lengths of
        ``vfa_time_s``/``labels`` that do not match.
    """
    protocols = list(protocols)
    if not protocols:
        raise ValueError("protocols = []: expected at least one Protocol to score")
    for i, p in enumerate(protocols):
        if not isinstance(p, Protocol):
            raise TypeError(f"protocols[{i}] = {p!r}: expected a phantomdce Protocol")
    model_ = tissue.model if model is None else model
    if model_ != tissue.model:
        raise ValueError(
            f"model={model!r}: the bound is computed for the model of the data; expected the"
            f" tissue grid's model {tissue.model!r} (or None)"
        )
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}: expected one of {list(KINDS)}")
    n_p = len(protocols)
    vfa_t = np.full(n_p, np.nan) if vfa_time_s is None else np.asarray(vfa_time_s, float)
    if vfa_t.shape != (n_p,):
        raise ValueError(f"vfa_time_s has {vfa_t.size} values: expected one per protocol ({n_p})")
    labels_ = [f"p{i}" for i in range(n_p)] if labels is None else [str(s) for s in labels]
    if len(labels_) != n_p:
        raise ValueError(f"labels has {len(labels_)} names: expected one per protocol ({n_p})")

    names = list(MODELS[model_].parameters)
    derived = list(derived_parameters(model_))
    params_out = names + [d for d in derived if d not in names]
    n_par = len(params_out)
    first = tissue.table(protocols[0])
    n_t = first["m0"].size
    kin = {k: np.asarray(first[k], dtype=np.float64) for k in names}
    truth = _truth_values(model_, kin)

    sd = np.zeros((n_p, n_t, n_par))
    t10_all = np.empty((n_p, n_t))
    m0_all = np.empty((n_p, n_t))
    groups: dict[tuple, list[int]] = {}
    for i, p in enumerate(protocols):
        groups.setdefault(_key(p, _SIGNAL_ONLY), []).append(i)
    p_kin = len(names)
    for members in groups.values():
        longest = max(members, key=lambda i: protocols[i].n_frames)
        n_frames_max = protocols[longest].n_frames
        timing = _Timing(protocols[longest], model_, kin, grid_step)  # shorter: a prefix
        dyn_cache: dict[tuple, NDArray] = {}
        vfa_cache: dict[tuple, NDArray] = {}
        rows: list[int] = []
        for i in members:
            pr = protocols[i]
            table = tissue.table(pr)
            t10 = np.asarray(table["T10"], dtype=np.float64)
            m0 = np.asarray(table["m0"], dtype=np.float64)
            t10_all[i] = t10
            m0_all[i] = m0
            if not np.isfinite(pr.snr):
                continue  # no noise: the bound is 0
            sig = (pr.fa, pr.tr, pr.b1, pr.relaxivity, pr.field_strength)
            if sig not in dyn_cache:
                dyn_cache[sig] = timing.dynamic(pr.fa, pr.tr, pr.b1, pr.relaxivity, t10, m0)
            vkey = (pr.flip_angles, pr.tr, pr.b1, pr.field_strength)
            if vkey not in vfa_cache:
                vfa_cache[vkey] = _vfa_jacobian(pr.flip_angles, pr.tr, pr.b1, t10, m0)
            rows.append(i)
        # zero rows add nothing to J^T J: shorter series and fewer VFA angles are padded
        n_ang = max((len(protocols[i].flip_angles) for i in rows), default=0)
        per = max(1, _BATCH_ROWS // n_t)
        for a in range(0, len(rows), per):
            chunk = rows[a : a + per]
            k = len(chunk)
            jd = np.zeros((k, n_t, n_frames_max, p_kin + 2))
            jv = np.zeros((k, n_t, n_ang, 2))
            sigma = np.empty((k, n_t))
            ratio = np.empty((k, 1))
            for c, i in enumerate(chunk):
                pr = protocols[i]
                full = dyn_cache[
                    (pr.fa, pr.tr, pr.b1, pr.relaxivity, pr.field_strength)
                ]
                jd[c, :, : pr.n_frames] = full[:, : pr.n_frames]
                v = vfa_cache[(pr.flip_angles, pr.tr, pr.b1, pr.field_strength)]
                jv[c, :, : v.shape[1]] = v
                sigma[c] = pr.noise_sigma(t10_all[i], m0_all[i])
                ratio[c] = vfa_sigma_ratio(pr)
            cov, _ = covariance(
                jd.reshape(k * n_t, n_frames_max, -1),
                jv.reshape(k * n_t, n_ang, 2),
                sigma=sigma.reshape(-1),
                sigma_vfa=(sigma * ratio).reshape(-1),
                kind=kind,
            )
            cov_kin = cov[:, :p_kin, :p_kin]
            with np.errstate(invalid="ignore"):
                d = np.sqrt(np.einsum("nii->ni", cov_kin))
            d = np.where(np.isnan(d), np.inf, d)
            out = {name: d[:, j] for j, name in enumerate(names)}
            out.update(derived_sd(model_, {n: np.tile(v, k) for n, v in kin.items()}, cov_kin))
            sd[chunk] = np.stack([out[q] for q in params_out], axis=-1).reshape(k, n_t, n_par)

    truth_arr = np.stack([truth[k] for k in params_out], axis=-1)  # (n_t, n_par)
    with np.errstate(invalid="ignore", divide="ignore"):
        cv = 100.0 * sd / np.abs(truth_arr)[None]

    bias_arr = np.full((n_p, n_t, n_par), np.nan)
    ok_arr = np.zeros((n_p, n_t), dtype=bool)
    if bias:
        cache: dict[tuple, tuple[dict, NDArray]] = {}
        for i, p in enumerate(protocols):
            key = _key(p, _NOISE_ONLY)
            if key not in cache:
                cache[key] = noise_free_bias(p, tissue, fitter=fitter, pipeline=pipeline)
            values, ok = cache[key]
            ok_arr[i] = ok
            for j, name in enumerate(params_out):
                if name in values:
                    bias_arr[i, :, j] = values[name]
    with np.errstate(invalid="ignore"):
        worst_cv = np.nanmax(np.where(np.isnan(cv), -np.inf, cv), axis=1)
        abs_b = np.abs(bias_arr)
        if bias:
            abs_b = np.where(ok_arr[:, :, None], abs_b, np.inf)
        worst_b = np.max(np.where(np.isnan(abs_b), -np.inf, abs_b), axis=1)
    worst_cv = np.where(np.isneginf(worst_cv), np.nan, worst_cv)
    worst_b = np.where(np.isneginf(worst_b), np.nan, worst_b)

    dyn = np.array([p.duration for p in protocols])
    scan = np.where(np.isnan(vfa_t), dyn, dyn + np.nan_to_num(vfa_t))
    units = {k: PARAMETERS[k].units for k in params_out}
    coords = {
        "protocol": labels_,
        "tissue": np.arange(n_t),
        "parameter": params_out,
        "dt_s": ("protocol", [p.dt for p in protocols], {"units": "s"}),
        "fa_deg": ("protocol", [p.fa for p in protocols], {"units": "deg"}),
        "tr_s": ("protocol", [p.tr for p in protocols], {"units": "s"}),
        "snr": ("protocol", [p.snr for p in protocols], {"units": "1"}),
        "vfa_sigma_ratio": (
            "protocol",
            [vfa_sigma_ratio(p) for p in protocols],
            {"units": "1", "long_name": "noise SD of a VFA image / of a dynamic frame"},
        ),
        "flip_angles_deg": (
            "protocol",
            [_angles_label(p.flip_angles) for p in protocols],
            {"units": "deg"},
        ),
    }
    for k in names:
        coords[k] = ("tissue", kin[k], {"units": PARAMETERS[k].units})
    data = {
        "crlb_sd": (
            ("protocol", "tissue", "parameter"),
            sd,
            {"units": "parameter's units", "parameter_units": str(units)},
        ),
        "crlb_cv_pct": (("protocol", "tissue", "parameter"), cv, {"units": "%"}),
        "bias_pct": (
            ("protocol", "tissue", "parameter"),
            bias_arr,
            {"units": "%", "long_name": "relative bias of the noise-free fit"},
        ),
        "bias_fit_success": (("protocol", "tissue"), ok_arr),
        "worst_cv_pct": (("protocol", "parameter"), worst_cv, {"units": "%"}),
        "worst_abs_bias_pct": (("protocol", "parameter"), worst_b, {"units": "%"}),
        "dynamic_time_s": ("protocol", dyn, {"units": "s"}),
        "vfa_time_s": ("protocol", vfa_t, {"units": "s"}),
        "scan_time_s": (
            "protocol",
            scan,
            {"units": "s", "long_name": "dynamic duration + VFA acquisition time (if known)"},
        ),
        "truth": (("tissue", "parameter"), truth_arr, {"units": "package units"}),
        "T10_s": (("protocol", "tissue"), t10_all, {"units": "s"}),
    }
    attrs = {
        "kind": kind,
        "model": model_,
        "fitter": fitter if bias else "none",
        "pipeline": str(dict(DEFAULT_PIPELINE if pipeline is None else pipeline)),
        "bias": "noise-free fit" if bias else "not computed",
        "grid_step_s": grid_step,
    }
    return xr.Dataset(data, coords=coords, attrs=attrs)
