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

The pipeline removes every variable marked ``role = "truth"`` before any stage runs and
reads one only when a stage is set to ``"true"``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import xarray as xr

from phantomdce.aif import AIFS, Injection, plasma_aif
from phantomdce.fit.t1 import vfa_t1_linear, vfa_t1_nonlinear
from phantomdce.signal import concentration_from_signal, native_t1

__all__ = ["Pipeline", "measurements_only"]

T1_SOURCES = ("vfa_nonlinear", "vfa_linear", "true")
CONCENTRATION_SOURCES = ("signal", "true")
AIF_SOURCES = ("true", "population", "measured")
BASELINE_SOURCES = ("measured", "true")


def measurements_only(case: xr.Dataset) -> xr.Dataset:
    """The case without its ground truth (every variable with ``role = "truth"``)."""
    truth = [name for name, var in case.data_vars.items() if var.attrs.get("role") == "truth"]
    return case.drop_vars(truth)


def _truth(case: xr.Dataset, name: str, stage: str) -> np.ndarray:
    """A truth variable an oracle stage reads, with a clear error when the case lacks it."""
    if name not in case:
        raise ValueError(
            f"pipeline.{stage} = 'true' needs the truth variable {name!r}, which this case"
            " does not hold (it is simulated for DRO cases, not for phantom cases)"
        )
    return np.asarray(case[name].values, dtype=np.float64)


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
    hct: float = 0.42

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
        """Build from a mapping (e.g. a scenario's ``[fit.pipeline]`` table), checking keys."""
        import difflib

        fields = set(cls.__dataclass_fields__)
        for key in values:
            if key not in fields:
                hint = difflib.get_close_matches(key, fields, n=1)
                did = f" (did you mean {hint[0]!r}?)" if hint else ""
                raise ValueError(
                    f"unknown key '{path}.{key}'{did}: expected one of {sorted(fields)}"
                )
        return cls(**values)

    def as_attrs(self) -> dict[str, Any]:
        """The settings as plain attributes."""
        return {f"pipeline_{k}": ("none" if v is None else v) for k, v in asdict(self).items()}

    # -- stages ---------------------------------------------------------------------------

    def t10(self, case: xr.Dataset) -> np.ndarray:
        """Native T1 per voxel, s."""
        if self.t1 == "true":
            return np.asarray(case["T10"].values, dtype=np.float64)
        fit = vfa_t1_linear if self.t1 == "vfa_linear" else vfa_t1_nonlinear
        t1, _ = fit(
            case["vfa_signal"].transpose("voxel", "flip_angle").values,
            case["flip_angle"].values,
            tr=float(case.attrs["tr"]),
            b1=self.b1,
        )
        return np.asarray(t1, dtype=np.float64)

    def tissue_concentration(self, case: xr.Dataset, t10: np.ndarray) -> np.ndarray:
        """Tissue concentration (voxel, time), mM."""
        if self.concentration == "true":
            return np.asarray(case["ct"].transpose("voxel", "time").values, dtype=np.float64)
        signal = case["signal"].transpose("voxel", "time").values
        if self.baseline == "true":
            s_pre = _truth(case, "signal_pre", "baseline")
        else:
            s_pre = signal[:, : int(case.attrs["n_baseline"])].mean(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return concentration_from_signal(
                signal,
                s_pre[:, None],
                r10=(1.0 / t10)[:, None],
                fa=float(case.attrs["fa"]),
                tr=float(case.attrs["tr"]),
                r1_relaxivity=float(case.attrs["r1"]),
                b1=self.b1,
            )

    def plasma_aif(self, case: xr.Dataset) -> np.ndarray:
        """Plasma AIF at the frames, mM."""
        t = np.asarray(case["time"].values, dtype=np.float64)
        attrs = case.attrs
        if self.aif == "true":
            return np.asarray(case["ca"].values, dtype=np.float64)
        if self.aif == "population":
            nominal = int(attrs["n_baseline"]) * float(attrs["dt"])
            bat = nominal if self.population_bat is None else self.population_bat
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
                bat=bat,
                hct=self.hct,
                dose=float(attrs["dose"]),
                injection=injection,
            )
        if "arterial_signal" not in case:
            raise ValueError(
                "pipeline.aif = 'measured' needs arterial voxels: the case has no"
                " 'arterial_signal' (set protocol.arterial_voxels > 0)"
            )
        art = case["arterial_signal"].transpose("arterial_voxel", "time").values.mean(axis=0)
        nb = int(attrs["n_baseline"])
        t1_blood = native_t1("blood", float(attrs["field_strength"]))
        if self.baseline == "true":
            art_pre = float(_truth(case, "arterial_signal_pre", "baseline"))
        else:
            art_pre = float(art[:nb].mean())
        cb = concentration_from_signal(
            art,
            art_pre,
            r10=1.0 / t1_blood,
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
            One case node of a DRO store.

        Returns
        -------
        xarray.Dataset
            What a fitter sees: ``time`` (s), ``ct`` (voxel, time, mM, estimated), ``ca``
            (time, mM, plasma), ``T10`` estimate (voxel, s), the measurements ``signal``,
            ``vfa_signal`` (and ``flip_angle``) for signal fitters, and the protocol attrs
            plus the pipeline settings. No ground truth is included.
        """
        measured = measurements_only(case)
        need_truth = "true" in (self.t1, self.concentration, self.aif, self.baseline)
        source = case if need_truth else measured
        t10 = self.t10(source)
        ct = self.tissue_concentration(source, t10)
        ca = self.plasma_aif(source)
        out = measured.copy()
        out["ct"] = (("voxel", "time"), ct, {"units": "mM", "long_name": "tissue concentration"})
        out["ca"] = ("time", ca, {"units": "mM", "long_name": "plasma AIF"})
        out["T10"] = ("voxel", t10, {"units": "s", "long_name": "native T1 (estimated)"})
        out.attrs = {**case.attrs, **self.as_attrs()}
        return out
