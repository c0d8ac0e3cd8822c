"""Studies: several scenarios run together, one per recommendation.

A study file names its scenarios::

    name = "esnr2022"
    description = "..."
    include = ["esnr2022/temporal_resolution.toml", "esnr2022/baseline_frames.toml"]
    replicates = 100          # optional: replaces every scenario's replicates
    phantom_subjects = 5      # optional: at most this many subjects per phantom scenario

Paths are relative to the study file. ``phantomdce run STUDY.toml -o OUT/`` runs each
scenario into ``OUT/<scenario name>/``; ``phantomdce report OUT/`` reports on all of them.
A scenario file (no ``include``) is a study of one.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from phantomdce.dro.config import ConfigError, as_int, as_str, parse_toml, read_toml, unknown_key

__all__ = ["Study", "load_study", "is_study"]

STUDY_KEYS = ("name", "description", "include", "replicates", "phantom_subjects")


@dataclass(frozen=True)
class Study:
    """A checked study: its scenarios and the overrides applied to each."""

    name: str
    description: str
    path: Path
    scenarios: tuple[Path, ...]
    overrides: dict[str, Any]
    phantom_subjects: int | None = None


def is_study(path: str | Path) -> bool:
    """Whether a TOML file is a study (has ``include``) rather than a scenario."""
    try:
        return "include" in tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError:
        return False


def load_study(path: str | Path) -> Study:
    """Read and check a study file (every scenario must exist).

    Raises
    ------
    ConfigError
        An unknown key, a bad value or a missing scenario file, naming the key.
    """
    path = Path(path)
    raw = read_toml(path)
    for key in raw:
        if key not in STUDY_KEYS:
            raise unknown_key("", key, STUDY_KEYS)
    include = raw.get("include")
    if not isinstance(include, list) or not include:
        raise ConfigError(f"include = {include!r}: expected a non-empty list of scenario files")
    scenarios = []
    for i, item in enumerate(include):
        rel = as_str(f"include[{i}]", item)
        file = (path.parent / rel).resolve()
        if not file.is_file():
            raise ConfigError(f"include[{i}] = {rel!r}: no such scenario file ({file})")
        scenarios.append(file)
    overrides: dict[str, Any] = {}
    if "replicates" in raw:
        overrides["replicates"] = as_int("replicates", raw["replicates"], lo=1)
    return Study(
        name=as_str("name", raw.get("name", path.stem)),
        description=str(raw.get("description", "")),
        path=path,
        scenarios=tuple(scenarios),
        overrides=overrides,
        phantom_subjects=(
            as_int("phantom_subjects", raw["phantom_subjects"], lo=1)
            if "phantom_subjects" in raw
            else None
        ),
    )


def run_study(
    path: str | Path,
    out: str | Path,
    *,
    fitters: list[str] | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Run every scenario of a study (checking them all first); metrics rows by scenario.

    Parameters
    ----------
    path : str or Path
        Study file.
    out : str or Path
        Output directory; each scenario goes to ``out/<scenario name>/``.
    fitters, scheduler, workers
        As for :func:`phantomdce.engine.run.run`.
    progress : callable, optional
        ``progress(scenario_name, done, total)``.
    """
    from phantomdce.engine.run import execute, finalize, fit_config, parse_any, plan_run
    from phantomdce.phantom.scenario import cap_subjects, is_phantom_scenario

    study = load_study(path)
    out = Path(out)
    names: dict[str, Path] = {}
    phantoms: set[str] = set()
    for file in study.scenarios:  # check every scenario before anything is written
        raw = parse_toml(file.read_text(encoding="utf-8"), source=file.name)
        raw = (
            cap_subjects(raw, study.phantom_subjects)
            if is_phantom_scenario(raw)
            else {**raw, **study.overrides}
        )
        raw.setdefault("name", file.stem)
        try:
            scenario = parse_any(raw)
            fit_config(scenario, fitters)
        except ConfigError as exc:
            raise ConfigError(f"{file.name}: {exc}") from None
        if scenario.name in names:
            raise ConfigError(f"two scenarios of the study are named {scenario.name!r}")
        target = (out / scenario.name).resolve()
        if target.parent != out.resolve():  # names are checked; this guards the guard
            raise ConfigError(
                f"{file.name}: name = {scenario.name!r} would write outside {out} ({target});"
                " expected a plain folder name"
            )
        names[scenario.name] = file
        if is_phantom_scenario(raw):
            phantoms.add(scenario.name)
    # phantom scenarios keep their own replicates (repeated acquisitions)
    plans = [
        plan_run(
            file,
            out / name,
            fitters=fitters,
            overrides=None if name in phantoms else study.overrides,
            phantom_subjects=study.phantom_subjects,
        )
        for name, file in names.items()
    ]
    rows = {}
    for plan in plans:
        tick = None
        if progress is not None:
            name = plan.scenario.name
            tick = lambda done, total, name=name: progress(name, done, total)  # noqa: E731
        try:
            execute(plan, scheduler=scheduler, workers=workers, progress=tick)
            rows[plan.scenario.name] = finalize(plan)
        finally:
            plan.release()
    (out / "study.toml").write_text(Path(path).read_text(encoding="utf-8"))
    members = {p.scenario.name: p.scenario.hash for p in plans}
    (out / "study.json").write_text(
        json.dumps({"study": study.name, "scenarios": members}, indent=1)
    )
    return rows
