"""The estimation pipeline: a DRO case's measurements to what a fitter sees.

Stages, each selectable so that one error source can be isolated at a time:

1. **T1** (``t1``): native T1 from the VFA signals, ``"vfa_linear"`` (DESPOT1) or
   ``"vfa_nonlinear"``, with an assumed B1 (``b1``, default 1: nominal flip angles); or
   ``"true"`` (the truth ``T10``).
2. **Baseline signal** (``baseline``): ``"measured"``, the mean of the first ``n_baseline``
   frames (protocol attribute) of each voxel, and of the arterial voxels' mean curve; or
   ``"true"`` (an oracle: the noise-free pre-contrast signal of the truth, ``signal_pre``
   per voxel and ``arterial_signal_pre`` for the arterial voxels).
3. **Concentration** (``concentration``): ``"signal"``, the exact SPGR inversion of the
   dynamic signal with the T1 above and the protocol's relaxivity; or ``"true"`` (the
   noise-free truth ``ct``, which isolates the fitter).
4. **AIF** (``aif``): ``"true"`` (the true plasma AIF ``ca``); ``"population"`` (a named
   population AIF with an assumed bolus arrival and haematocrit: the scanner knows when it
   injected, not the subject's circulation); or ``"measured"`` (from the simulated arterial
   voxels: baseline from the first ``n_baseline`` frames, blood T1 assumed at its literature
   value for the field, signal inverted to whole-blood concentration and divided by
   ``1 - hct``; partial volume is *not* corrected, as in practice).

The truth never reaches estimation (issue 11): every stage, ROI rule and fitter works on
:func:`measurements_only` of the case, which drops every variable marked ``role = "truth"``,
the per-voxel truth indices (``tissue``, ``replicate``) and every attribute that is not an
acquisition setting (:data:`phantomdce.dro.boundary.ACQUISITION_ATTRS`: the true ``b1``,
``hct``, ``bat``, ``aif``, ``aif_scale``, ``snr``, ... are dropped). What the analyst must
assume instead is set from the pipeline's own settings and handed on as ``assumed_b1``,
``assumed_hct``, ``assumed_bat`` (s) and ``assumed_t1_blood`` (s). A stage set to ``"true"``
(an oracle run) reads its own truth variable and nothing else: ``t1`` reads ``T10``,
``baseline`` reads ``signal_pre`` (and ``arterial_signal_pre``), ``concentration`` reads
``ct``, ``aif`` reads ``ca``. The fitter's input holds no truth variable or attribute either
way (an oracle stage's output is the estimate that stage hands on, not a truth variable).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import xarray as xr

from phantomdce.aif import AIFS, DEFAULT_HCT, Injection, plasma_aif
from phantomdce.dro.boundary import TRUTH_COORDS, acquisition_attrs
from phantomdce.dro.config import ConfigError, as_bool, as_float, as_str, unknown_key
from phantomdce.fit.t1 import vfa_t1_linear, vfa_t1_nonlinear
from phantomdce.signal import concentration_from_signal, native_t1

__all__ = ["Pipeline", "measurements_only"]

T1_SOURCES = ("vfa_nonlinear", "vfa_linear", "true")
CONCENTRATION_SOURCES = ("signal", "true")
AIF_SOURCES = ("true", "population", "measured")
BASELINE_SOURCES = ("measured", "true")


def measurements_only(case: xr.Dataset) -> xr.Dataset:
    """What a site knows of a case: its measurements and acquisition settings.

    Drops every variable with ``role = "truth"``, the truth indices ``tissue`` and
    ``replicate`` and every attribute outside
    :data:`phantomdce.dro.boundary.ACQUISITION_ATTRS` (see :mod:`phantomdce.dro.boundary`).
    """
    truth = [name for name, var in case.data_vars.items() if var.attrs.get("role") == "truth"]
    truth += [name for name in TRUTH_COORDS if name in case.coords]
    out = case.drop_vars(truth)
    out.attrs = acquisition_attrs(case.attrs)
    return out


def _truth(case: xr.Dataset, name: str, stage: str, *dims: str) -> np.ndarray:
    """A truth variable an oracle stage reads, with a clear error when the case lacks it."""
    if name not in case:
        raise ValueError(
            f"pipeline.{stage} = 'true' needs the truth variable {name!r}, which this case"
            " does not hold (it is simulated for DRO cases, not for phantom cases)"
        )
    var = case[name].transpose(*dims) if dims else case[name]
    return np.asarray(var.values, dtype=np.float64)


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"pipeline.{name} = {value!r}: expected one of {list(choices)}")


@dataclass(frozen=True)
class Pipeline:
    """Settings of the estimation pipeline (see the module docstring).

    Parameters
    ----------
    t1 : {"vfa_nonlinear", "vfa_linear", "true"}
        Source of native T1.
    b1 : float
        B1 (flip-angle scale) assumed by the T1 fit and the signal inversion (1: nominal).
    concentration : {"signal", "true"}
        Source of the tissue concentration curves.
    baseline : {"measured", "true"}
        Source of the pre-contrast signal used by the signal-to-concentration conversion of
        the tissue and of the measured AIF: the mean of the first ``n_baseline`` frames, or
        the noise-free truth (``signal_pre``, ``arterial_signal_pre``; an oracle).
    aif : {"true", "population", "measured"}
        Source of the plasma AIF.
    population_aif : str
        Name of the population AIF used when ``aif = "population"``.
    population_bat : float or None
        Assumed bolus arrival (s) for the population AIF; None uses the nominal arrival of
        the protocol, ``n_baseline * dt`` (never the simulated arrival itself).
    population_injection : bool
        Reshape the population AIF with the protocol's injection (rate, volume, flush).
    hct : float
        Haematocrit assumed when converting blood to plasma (population and measured AIF).
    """

    t1: str = "vfa_nonlinear"
    b1: float = 1.0
    concentration: str = "signal"
    baseline: str = "measured"
    aif: str = "true"
    population_aif: str = "parker"
    population_bat: float | None = None
    population_injection: bool = False
    hct: float = DEFAULT_HCT

    def __post_init__(self) -> None:
        _choice("t1", self.t1, T1_SOURCES)
        _choice("concentration", self.concentration, CONCENTRATION_SOURCES)
        _choice("aif", self.aif, AIF_SOURCES)
        _choice("baseline", self.baseline, BASELINE_SOURCES)
        _choice("population_aif", self.population_aif, tuple(AIFS))
        if not (np.isfinite(self.b1) and self.b1 > 0):
            raise ValueError(f"pipeline.b1 = {self.b1!r}: expected a positive number")
        if not 0.0 <= self.hct < 1.0:
            raise ValueError(f"pipeline.hct = {self.hct!r}: expected a fraction in [0, 1)")
        if self.population_bat is not None and not (
            np.isfinite(self.population_bat) and self.population_bat >= 0
        ):
            raise ValueError(
                f"pipeline.population_bat = {self.population_bat!r}: expected a time >= 0 s"
            )

    @classmethod
    def from_mapping(cls, values: dict[str, Any], *, path: str = "pipeline") -> Pipeline:
        """Build from a mapping (e.g. a scenario's ``[fit.pipeline]`` table), checking it.

        Parameters
        ----------
        values : dict
            Settings by field name; missing fields keep their defaults.
        path : str
            Key path of the table, for messages (``fit.pipeline``).

        Raises
        ------
        phantomdce.dro.config.ConfigError
            For an unknown key (with a close-match suggestion) or a bad value; the message
            names the key path (``fit.pipeline.hct``), the value and what was expected.
        """
        fields = cls.__dataclass_fields__
        for key in values:
            if key not in fields:
                raise unknown_key(path, key, fields)
        checked = dict(values)
        for key in ("b1", "hct"):
            if key in checked:
                checked[key] = as_float(f"{path}.{key}", checked[key])
        if checked.get("population_bat") is not None:
            checked["population_bat"] = as_float(
                f"{path}.population_bat", checked["population_bat"], units="s"
            )
        if "population_injection" in checked:
            as_bool(f"{path}.population_injection", checked["population_injection"])
        for key in ("t1", "concentration", "baseline", "aif", "population_aif"):
            if key in checked:
                as_str(f"{path}.{key}", checked[key])
        try:
            return cls(**checked)
        except ValueError as exc:  # a range or choice check of __post_init__
            msg = str(exc)
            if msg.startswith("pipeline."):
                msg = f"{path}.{msg.removeprefix('pipeline.')}"
            raise ConfigError(msg) from None

    def as_attrs(self) -> dict[str, Any]:
        """The settings as plain attributes."""
        return {f"pipeline_{k}": ("none" if v is None else v) for k, v in asdict(self).items()}

    def assumed_bat(self, case: xr.Dataset) -> float:
        """The bolus arrival the analyst assumes, s.

        ``population_bat``, or the nominal ``n_baseline * dt`` of the protocol (never the
        simulated arrival).
        """
        if self.population_bat is not None:
            return float(self.population_bat)
        return int(case.attrs["n_baseline"]) * float(case.attrs["dt"])

    def assumptions(self, case: xr.Dataset) -> dict[str, Any]:
        """What the analyst assumes instead of knowing, from the pipeline's own settings.

        Returns
        -------
        dict
            ``assumed_b1`` (actual / nominal flip angle), ``assumed_hct``, ``assumed_bat``
            (s) and ``assumed_t1_blood`` (s, the literature native T1 of blood at the
            field), with their units in ``assumed_units``.
        """
        return {
            "assumed_b1": float(self.b1),
            "assumed_hct": float(self.hct),
            "assumed_bat": self.assumed_bat(case),
            "assumed_t1_blood": float(native_t1("blood", float(case.attrs["field_strength"]))),
            "assumed_units": {
                "assumed_b1": "1 (actual/nominal)",
                "assumed_hct": "1",
                "assumed_bat": "s",
                "assumed_t1_blood": "s",
            },
        }

    # -- stages: each sees the measurements only, and its own truth variable when "true" ----

    def t10(self, case: xr.Dataset) -> np.ndarray:
        """Native T1 per voxel, s (``t1 = "true"`` reads the truth ``T10``)."""
        if self.t1 == "true":
            return _truth(case, "T10", "t1")
        known = measurements_only(case)
        fit = vfa_t1_linear if self.t1 == "vfa_linear" else vfa_t1_nonlinear
        t1, _ = fit(
            known["vfa_signal"].transpose("voxel", "flip_angle").values,
            known["flip_angle"].values,
            tr=float(known.attrs["tr"]),
            b1=self.b1,
        )
        return np.asarray(t1, dtype=np.float64)

    def tissue_concentration(self, case: xr.Dataset, t10: np.ndarray) -> np.ndarray:
        """Tissue concentration (voxel, time), mM.

        ``concentration = "true"`` reads the truth ``ct``; ``baseline = "true"`` reads
        ``signal_pre``.
        """
        if self.concentration == "true":
            return _truth(case, "ct", "concentration", "voxel", "time")
        known = measurements_only(case)
        signal = known["signal"].transpose("voxel", "time").values
        if self.baseline == "true":
            s_pre = _truth(case, "signal_pre", "baseline")
        else:
            s_pre = signal[:, : int(known.attrs["n_baseline"])].mean(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return concentration_from_signal(
                signal,
                s_pre[:, None],
                r10=(1.0 / t10)[:, None],
                fa=float(known.attrs["fa"]),
                tr=float(known.attrs["tr"]),
                r1_relaxivity=float(known.attrs["r1"]),
                b1=self.b1,
            )

    def plasma_aif(self, case: xr.Dataset) -> np.ndarray:
        """Plasma AIF at the frames, mM.

        ``aif = "true"`` reads the truth ``ca``; ``baseline = "true"`` reads
        ``arterial_signal_pre`` for the measured AIF.
        """
        if self.aif == "true":
            return _truth(case, "ca", "aif")
        known = measurements_only(case)
        t = np.asarray(known["time"].values, dtype=np.float64)
        attrs = known.attrs
        assumed = self.assumptions(known)
        if self.aif == "population":
            injection = None
            if self.population_injection and attrs.get("injection_rate", "none") != "none":
                injection = Injection(
                    rate_ml_s=float(attrs["injection_rate"]),
                    volume_ml=float(attrs["injection_volume"]),
                    saline_flush=bool(attrs["saline_flush"]),
                )
            return plasma_aif(
                self.population_aif,
                t,
                bat=assumed["assumed_bat"],
                hct=self.hct,
                dose=float(attrs["dose"]),
                injection=injection,
            )
        if "arterial_signal" not in known:
            raise ValueError(
                "pipeline.aif = 'measured' needs arterial voxels: the case has no"
                " 'arterial_signal' (set protocol.arterial_voxels > 0)"
            )
        art = known["arterial_signal"].transpose("arterial_voxel", "time").values.mean(axis=0)
        if self.baseline == "true":
            art_pre = float(_truth(case, "arterial_signal_pre", "baseline"))
        else:
            art_pre = float(art[: int(attrs["n_baseline"])].mean())
        cb = concentration_from_signal(
            art,
            art_pre,
            r10=1.0 / assumed["assumed_t1_blood"],
            fa=float(attrs["fa"]),
            tr=float(attrs["tr"]),
            r1_relaxivity=float(attrs["r1"]),
            b1=self.b1,
        )
        return np.nan_to_num(cb, nan=0.0) / (1.0 - self.hct)

    def __call__(self, case: xr.Dataset) -> xr.Dataset:
        """Run the pipeline on one DRO case.

        Parameters
        ----------
        case : xarray.Dataset
            One case node of a DRO store (or a phantom case).

        Returns
        -------
        xarray.Dataset
            What a fitter sees: ``time`` (s), ``ct`` (voxel, time, mM, estimated), ``ca``
            (time, mM, plasma), ``T10`` estimate (voxel, s), the measurements ``signal``,
            ``vfa_signal`` (and ``flip_angle``) and ``arterial_signal`` for signal fitters;
            as attributes the acquisition settings
            (:data:`phantomdce.dro.boundary.ACQUISITION_ATTRS`), the analyst's assumptions
            (``assumed_*``, see :meth:`assumptions`) and the settings (``pipeline_*``).
            No truth variable, truth index or truth attribute is included.
        """
        known = measurements_only(case)
        t10 = self.t10(case)
        ct = self.tissue_concentration(case, t10)
        ca = self.plasma_aif(case)
        out = known.copy()
        out["ct"] = (("voxel", "time"), ct, {"units": "mM", "long_name": "tissue concentration"})
        out["ca"] = ("time", ca, {"units": "mM", "long_name": "plasma AIF"})
        out["T10"] = ("voxel", t10, {"units": "s", "long_name": "native T1 (estimated)"})
        out.attrs = {**known.attrs, **self.assumptions(known), **self.as_attrs()}
        return out
