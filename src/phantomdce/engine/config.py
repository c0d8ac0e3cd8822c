"""The ``[fit]`` table of a scenario: which fitters, the pipeline, chunking, limits.

Example::

    [fit]
    fitters = ["nlls_extended_tofts", "llsq_extended_tofts"]
    chunk_voxels = 4096      # voxels per work unit (bounds memory)
    timeout_s = 600          # per chunk and plug-in fitter; a fitter past it fails the chunk
    isolate = "plugins"      # run plug-ins in a child process: "plugins", "all" or "none"

    error_budget = ["t1", "baseline"]   # also fit with each stage set to its truth

    [fit.pipeline]
    t1 = "vfa_nonlinear"
    aif = "measured"

The error budget: for each stage listed in ``error_budget`` and each fitter, the engine
also fits every case (same voxels, same noise) with that one pipeline stage set to
``"true"``, as an extra entry of the results' fitter axis named ``"<fitter> [true <stage>]"``
(:func:`oracle_name`); its record in ``run.json`` carries ``oracle_of`` (the fitter) and
``oracle_stage``. Comparing the entries' bias and CV with the fitter's says how much of each
comes from that stage. A stage already ``"true"`` in the pipeline, or one the pipeline does
not use, is refused.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from phantomdce.dro.config import ConfigError, as_float, as_int, as_str, unknown_key
from phantomdce.fit.pipeline import Pipeline

__all__ = ["FitConfig", "FitEntry", "DEFAULT_FITTERS", "ERROR_BUDGET_STAGES", "oracle_name"]

DEFAULT_FITTERS = {
    "tofts": ["nlls_tofts"],
    "extended_tofts": ["nlls_extended_tofts"],
    "patlak": ["nlls_patlak"],
    "2cxm": ["nlls_2cxm"],
    "2cum": ["nlls_2cum"],
}
FIT_KEYS = ("fitters", "pipeline", "chunk_voxels", "timeout_s", "isolate", "error_budget")
ISOLATE = ("plugins", "all", "none")
#: Pipeline stages an error budget can set to their true value, in the order they run.
ERROR_BUDGET_STAGES = ("t1", "baseline", "aif")
_STAGE_WORDS = {"t1": "native T1", "baseline": "pre-contrast baseline signal", "aif": "AIF"}


def oracle_name(fitter: str, stage: str) -> str:
    """Name of a fitter's error-budget entry: ``"<fitter> [true <stage>]"``."""
    return f"{fitter} [true {stage}]"


@dataclass(frozen=True)
class FitEntry:
    """One entry of the results' ``fitter`` axis: a fitter run under one pipeline.

    Attributes
    ----------
    name : str
        Name on the fitter axis and in ``metrics.csv``: the fitter's name, or
        :func:`oracle_name` for an error-budget entry.
    index : int
        Position of the fitter in :attr:`FitConfig.fitters` (and in the resolved fitters).
    info : FitterInfo
        The resolved fitter.
    pipeline : Pipeline
        The pipeline whose output this entry's fitter sees.
    oracle_stage : str or None
        The stage set to ``"true"`` for an error-budget entry; None for the fitter itself.
    """

    name: str
    index: int
    info: Any
    pipeline: Pipeline
    oracle_stage: str | None = None

    @property
    def oracle_of(self) -> str | None:
        """Name of the fitter an error-budget entry repeats; None for the fitter itself."""
        return self.info.name if self.oracle_stage is not None else None

    def record_keys(self) -> dict[str, str]:
        """What ``run.json`` adds to the fitter's record: its entry name and oracle keys."""
        if self.oracle_stage is None:
            return {"name": self.name}
        return {"name": self.name, "oracle_of": self.info.name, "oracle_stage": self.oracle_stage}


@dataclass(frozen=True)
class FitConfig:
    """Checked ``[fit]`` settings.

    Attributes
    ----------
    fitters : tuple of str
        Registered names or ``module:attribute`` specs, in run order.
    pipeline : Pipeline
        Estimation pipeline settings.
    chunk_voxels : int
        Voxels per work unit; a multiple of 1024 keeps noise blocks whole.
    timeout_s : float
        Time limit per chunk for each isolated fitter, s. It counts the fit, from the
        moment the child process has started and imported the fitter, not the start-up.
    isolate : str
        Which fitters run in a child process that can be stopped: ``"plugins"`` (default),
        ``"all"`` or ``"none"``.
    error_budget : tuple of str
        Stages (of :data:`ERROR_BUDGET_STAGES`, in the order written) whose oracle entries
        are also fitted; empty for none.
    """

    fitters: tuple[str, ...]
    pipeline: Pipeline = field(default_factory=Pipeline)
    chunk_voxels: int = 4096
    timeout_s: float = 600.0
    isolate: str = "plugins"
    error_budget: tuple[str, ...] = ()

    @classmethod
    def from_mapping(
        cls,
        raw: dict[str, Any],
        *,
        model: str,
        fitters: list[str] | None = None,
        error_budget_runner: str | None = None,
    ) -> FitConfig:
        """Check a ``[fit]`` table; ``fitters`` (e.g. from the command line) overrides it.

        Parameters
        ----------
        raw : dict
            The scenario's ``[fit]`` table.
        model : str
            Tissue model of the scenario (chooses the default fitters).
        fitters : list of str, optional
            Fitter names or specs replacing ``fit.fitters``.
        error_budget_runner : str, optional
            Set for scenarios whose runs do not fit error-budget entries (``"phantom
            scenarios"``): a non-empty ``fit.error_budget`` is then refused, naming them.

        Raises
        ------
        ConfigError
            With the key path (``fit.pipeline.aif``) of the first bad value, or an unknown
            fitter name with the registered names.
        """
        for key in raw:
            if key not in FIT_KEYS:
                raise unknown_key("fit", key, FIT_KEYS)
        names = fitters if fitters is not None else raw.get("fitters", DEFAULT_FITTERS[model])
        if not isinstance(names, list | tuple) or not names:
            raise ConfigError(f"fit.fitters = {names!r}: expected a non-empty list of fitter names")
        names = tuple(as_str(f"fit.fitters[{i}]", n) for i, n in enumerate(names))
        if len(set(names)) != len(names):
            raise ConfigError(f"fit.fitters = {list(names)!r}: expected each fitter once")
        pipe_raw = raw.get("pipeline", {})
        if not isinstance(pipe_raw, dict):
            raise ConfigError(f"fit.pipeline = {pipe_raw!r}: expected a table")
        try:
            pipeline = Pipeline.from_mapping(dict(pipe_raw), path="fit.pipeline")
        except (ValueError, TypeError) as exc:
            msg = str(exc)
            raise ConfigError(msg if "fit.pipeline" in msg else f"fit.{msg}") from None
        cfg = cls(
            fitters=names,
            pipeline=pipeline,
            chunk_voxels=as_int("fit.chunk_voxels", raw.get("chunk_voxels", 4096), lo=1),
            timeout_s=as_float(
                "fit.timeout_s", raw.get("timeout_s", 600.0), units="s", lo=0.0, lo_open=True
            ),
            isolate=as_str("fit.isolate", raw.get("isolate", "plugins"), choices=ISOLATE),
            error_budget=_error_budget(raw.get("error_budget", []), pipeline),
        )
        if cfg.error_budget and error_budget_runner is not None:
            raise ConfigError(
                f"fit.error_budget = {list(cfg.error_budget)!r}: not supported by"
                f" {error_budget_runner}, which fits only the scenario's pipeline; remove the key"
            )
        infos = cfg.resolve()  # unknown fitters fail here, before any work
        cfg._check_budget(infos)
        return cfg

    def _check_budget(self, infos: list) -> None:
        """Refuse error-budget stages that cannot change what any fitter sees."""
        p = self.pipeline
        concentration_fitters = all(i.input == "concentration" for i in infos)
        for k, stage in enumerate(self.error_budget):
            where = f"fit.error_budget[{k}] = {stage!r}"
            if stage in ("t1", "baseline") and p.concentration == "true" and concentration_fitters:
                if stage == "t1" or p.aif != "measured":
                    raise ConfigError(
                        f"{where}: fit.pipeline.concentration = 'true' hands every fitter the"
                        f" true concentration, so the {_STAGE_WORDS[stage]} is not used and its"
                        " error-budget entry would repeat the fitter; remove it from"
                        " fit.error_budget"
                    )
        names = {i.name for i in infos}
        for entry in self.entries(infos):
            if entry.oracle_stage is not None and entry.name in names:
                raise ConfigError(
                    f"fit.error_budget: the entry {entry.name!r} has the name of a fitter;"
                    " rename that fitter"
                )

    def oracle_pipeline(self, stage: str) -> Pipeline:
        """The pipeline with one stage set to its true value (an error-budget entry's)."""
        if stage not in ERROR_BUDGET_STAGES:
            raise ValueError(f"stage {stage!r}: expected one of {list(ERROR_BUDGET_STAGES)}")
        return replace(self.pipeline, **{stage: "true"})

    def entries(self, infos: list) -> list[FitEntry]:
        """The results' fitter axis: every fitter, then each fitter's error-budget entries.

        Parameters
        ----------
        infos : list of FitterInfo
            The resolved fitters (:meth:`resolve`), one per name of :attr:`fitters`.

        Returns
        -------
        list of FitEntry
            The fitters in run order under the scenario's pipeline, then, for each fitter in
            the same order and each stage of :attr:`error_budget` in its order, the entry
            :func:`oracle_name` ``(fitter, stage)`` under :meth:`oracle_pipeline`.
        """
        out = [FitEntry(i.name, f, i, self.pipeline) for f, i in enumerate(infos)]
        for f, info in enumerate(infos):
            for stage in self.error_budget:
                out.append(
                    FitEntry(
                        oracle_name(info.name, stage), f, info, self.oracle_pipeline(stage), stage
                    )
                )
        return out

    def resolve(self) -> list:
        """The fitters' registry entries (:class:`phantomdce.fit.registry.FitterInfo`)."""
        from phantomdce.fit.registry import UnknownFitterError, resolve_fitters

        try:
            return resolve_fitters(list(self.fitters))
        except UnknownFitterError as exc:
            raise ConfigError(f"fit.fitters: {exc}") from None
        except (ImportError, AttributeError, TypeError, ValueError) as exc:
            raise ConfigError(f"fit.fitters: {exc}") from None

    def as_dict(self) -> dict[str, Any]:
        """Plain-type form (for provenance and hashing)."""
        d = asdict(self)
        d["fitters"] = list(self.fitters)
        d["pipeline"] = asdict(self.pipeline)
        d["error_budget"] = list(self.error_budget)
        return d

    def identity(self, fitter_versions: dict[str, str]) -> str:
        """Hash of what decides the estimates: fitters and their versions, and the pipeline.

        Chunking, time limit and isolation do not change the estimates and are left out;
        so is an empty error budget (runs without one keep their identity).
        """
        blob = {**self.as_dict(), "versions": fitter_versions}
        for key in ("chunk_voxels", "timeout_s", "isolate"):
            blob.pop(key)
        if not blob["error_budget"]:
            blob.pop("error_budget")
        return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def _error_budget(value: Any, pipeline: Pipeline) -> tuple[str, ...]:
    """Check ``fit.error_budget``: distinct stages, none already true in the pipeline."""
    if not isinstance(value, list | tuple):
        raise ConfigError(
            f"fit.error_budget = {value!r}: expected a list of pipeline stages from"
            f" {list(ERROR_BUDGET_STAGES)} (may be empty)"
        )
    stages = tuple(
        as_str(f"fit.error_budget[{k}]", v, choices=ERROR_BUDGET_STAGES)
        for k, v in enumerate(value)
    )
    if len(set(stages)) != len(stages):
        raise ConfigError(f"fit.error_budget = {list(stages)!r}: expected each stage once")
    for k, stage in enumerate(stages):
        if getattr(pipeline, stage) == "true":
            raise ConfigError(
                f"fit.error_budget[{k}] = {stage!r}: the pipeline already uses the true"
                f" {_STAGE_WORDS[stage]} (fit.pipeline.{stage} = 'true'), so its error-budget"
                " entry would repeat the fitter; remove it from fit.error_budget"
            )
    return stages
