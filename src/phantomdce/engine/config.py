"""The ``[fit]`` table of a scenario: which fitters, the pipeline, chunking, limits.

Example::

    [fit]
    fitters = ["nlls_extended_tofts", "llsq_extended_tofts"]
    chunk_voxels = 4096      # voxels per work unit (bounds memory)
    timeout_s = 600          # per chunk and plug-in fitter; a fitter past it fails the chunk
    isolate = "plugins"      # run plug-ins in a child process: "plugins", "all" or "none"

    [fit.pipeline]
    t1 = "vfa_nonlinear"
    aif = "true"
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from phantomdce.dro.config import ConfigError, as_float, as_int, as_str, unknown_key
from phantomdce.fit.pipeline import Pipeline

__all__ = ["FitConfig", "DEFAULT_FITTERS"]

DEFAULT_FITTERS = {
    "tofts": ["nlls_tofts"],
    "extended_tofts": ["nlls_extended_tofts"],
    "patlak": ["nlls_patlak"],
    "2cxm": ["nlls_2cxm"],
    "2cum": ["nlls_2cum"],
}
FIT_KEYS = ("fitters", "pipeline", "chunk_voxels", "timeout_s", "isolate")
ISOLATE = ("plugins", "all", "none")


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
        Time limit per chunk for each isolated fitter, s.
    isolate : str
        Which fitters run in a child process that can be stopped: ``"plugins"`` (default),
        ``"all"`` or ``"none"``.
    """

    fitters: tuple[str, ...]
    pipeline: Pipeline = field(default_factory=Pipeline)
    chunk_voxels: int = 4096
    timeout_s: float = 600.0
    isolate: str = "plugins"

    @classmethod
    def from_mapping(
        cls, raw: dict[str, Any], *, model: str, fitters: list[str] | None = None
    ) -> FitConfig:
        """Check a ``[fit]`` table; ``fitters`` (e.g. from the command line) overrides it.

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
        )
        cfg.resolve()  # unknown fitters fail here, before any work
        return cfg

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
        return d

    def identity(self, fitter_versions: dict[str, str]) -> str:
        """Hash of what decides the estimates: fitters and their versions, and the pipeline.

        Chunking, time limit and isolation do not change the estimates and are left out.
        """
        blob = {**self.as_dict(), "versions": fitter_versions}
        for key in ("chunk_voxels", "timeout_s", "isolate"):
            blob.pop(key)
        return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]
