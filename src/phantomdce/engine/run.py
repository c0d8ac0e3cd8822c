"""The benchmark engine: simulate, estimate and fit every case of a scenario, store it all.

Work is split into units of one case and one chunk of ``chunk_voxels`` voxels. A unit
simulates its voxels (their values do not depend on the split), runs the estimation
pipeline and every fitter, writes the estimates into its own region of
``OUT/estimates.zarr`` and then, atomically, a marker ``OUT/progress/<case>_<chunk>.json``.
A run started again skips every unit with a marker, so an interrupted run (even by
SIGKILL) ends with the same results as an uninterrupted one. Memory is bounded by the
chunk, not the sweep.

Units run in this process by default; ``scheduler="processes"`` or ``"threads"`` uses
dask's local schedulers, and the address of a ``dask.distributed`` scheduler
(``tcp://host:8786``) runs them on that cluster.

Layout of ``OUT/``:

- ``run.json``: scenario (TOML text and parsed), fit settings, fitters with versions and
  sources, identities (scenario hash, run identity), package version.
- ``estimates.zarr``: an :class:`xarray.DataTree`; the root holds the cases table; each
  case node holds ``<parameter>`` (fitter, voxel) estimates in package units, ``success``
  (fitter, voxel), ``at_limit_<parameter>`` (fitter, voxel; bool, False where the fitter
  gave no flag) for the parameters in :data:`AT_LIMIT`, ``true_<parameter>`` (voxel)
  ground truth, ``tissue`` and ``replicate`` indices (int64; -1 until the voxel's unit has
  run) and ``fit_time_s`` (fitter, chunk). Its metadata is consolidated when the run is
  finalized; open it with :func:`open_results` (``phantomdce.open_results``).
- ``metrics.csv``: one row per case, fitter and parameter (see
  :mod:`phantomdce.engine.metrics`); ``failures.csv`` (written with :mod:`csv`): one row per
  failed fitter chunk, columns ``case, chunk, voxel_start, voxel_stop, fitter, error,
  traceback``; ``error`` is ``"<ExceptionType>: <message>"`` and ``traceback`` the last
  frames (:data:`TRACEBACK_FRAMES`) of where it was raised (in the fitter's child process
  for an isolated fitter), without repeating the error. ``suspect.csv``: estimates a fitter
  called successful that cannot be (outside the parameter's physical range, or not finite),
  at most :data:`SUSPECT_LISTED` per case, fitter and parameter. ``digests.json``: the
  SHA-256 of these files (see :mod:`phantomdce.engine.verify`).

With ``[fit] error_budget`` the ``fitter`` axis also holds each fitter's error-budget
entries, ``"<fitter> [true <stage>]"`` (:class:`phantomdce.engine.config.FitEntry`): the same
fitter on the same simulated voxels with one pipeline stage set to its truth. They are
stored, resumed, isolated, timed and reported like any fitter; their ``run.json`` records
add ``oracle_of`` and ``oracle_stage``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

import phantomdce
from phantomdce.dro.config import ConfigError, parse_toml
from phantomdce.dro.scenario import Scenario, parse_scenario
from phantomdce.dro.simulate import simulate_case
from phantomdce.engine.config import FitConfig, FitEntry
from phantomdce.engine.isolate import (  # noqa: F401 - FitterError re-exported
    FitterError,
    describe_failure,
    fit_isolated,
)
from phantomdce.engine.verify import (
    damaged_units,
    region_digest,
    store_digest,
    write_file_digests,
)
from phantomdce.files import disk_fault, is_temporary_of, write_atomic
from phantomdce.params import MODELS, PARAMETERS
from phantomdce.phantom.scenario import (
    PhantomScenario,
    cap_subjects,
    is_phantom_scenario,
    parse_phantom_scenario,
)

__all__ = [
    "RunPlan",
    "plan_run",
    "execute",
    "finalize",
    "run",
    "open_results",
    "ResultDirError",
    "FitterError",
    "check_scheduler",
    "collect_estimates",
]

#: Voxels per case, fitter and parameter that ``suspect.csv`` lists (the count is complete).
SUSPECT_LISTED = 100
#: Parameters every run stores estimates for (NaN where a fitter has none).
ESTIMATED = ("Ktrans", "ve", "vp", "fp", "ps", "kep", "delay")
#: Parameters whose ``at_limit_<param>`` flags (fitter, voxel) the store holds: a fitter's
#: estimate at a limit where its model degenerates (see :mod:`phantomdce.fit.base`).
AT_LIMIT = ("Ktrans", "ve", "vp", "fp", "ps", "delay")


class ResultDirError(ConfigError):
    """The output directory holds something else than this run."""


def check_scheduler(scheduler: str | None) -> None:
    """Refuse a scheduler whose package is not installed (before anything is written).

    Raises
    ------
    ConfigError
        ``"processes"``/``"threads"`` without dask, or an address without dask.distributed.
    """
    import importlib.util

    if scheduler is None or scheduler in ("local", "sync", "synchronous"):
        return
    module = "dask" if scheduler in ("processes", "threads") else "distributed"
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise ConfigError(
            f"--scheduler {scheduler}: needs the {module!r} package, which is not installed;"
            " install the extra with `pip install 'phantomdce[dask]'` or run without"
            " --scheduler (in this process)"
        )


@dataclass(frozen=True)
class RunPlan:
    """A checked run: what to do and where.

    Attributes
    ----------
    out : Path
        Result directory.
    raw : dict
        The scenario as parsed from TOML (what workers re-read).
    scenario : Scenario or PhantomScenario
        The checked scenario (a phantom scenario when the file has ``[phantom]``).
    fit : FitConfig
        Checked fit settings.
    fitters : list of FitterInfo
        Resolved fitters.
    units : sequence of tuple
        ``(case_index, chunk_index, voxel_start, voxel_stop)`` for every unit (a
        :class:`UnitGrid` for a simulated scenario); a phantom
        case's chunks are its subjects (chunk ``s`` is subject ``s``; its voxels are known
        only when its ROIs are placed, so start and stop are 0).
    """

    out: Path
    raw: dict[str, Any]
    scenario: Scenario | PhantomScenario
    fit: FitConfig
    fitters: list
    units: Sequence[tuple[int, int, int, int]]
    lock: contextlib.ExitStack | None = field(default=None, compare=False, repr=False)
    #: Units of a resumed run found damaged and unmarked (``(case, chunk, reason)``): they
    #: run again (see :mod:`phantomdce.engine.verify`).
    repaired: tuple[tuple[str, int, str], ...] = ()

    def release(self) -> None:
        """Release the output folder's lock (:mod:`phantomdce.engine.lock`), if held."""
        if self.lock is not None:
            self.lock.close()

    @property
    def phantom(self) -> bool:
        """Whether this is a phantom scenario (units are case x subject)."""
        return isinstance(self.scenario, PhantomScenario)

    def unit_store(self, case_index: int, chunk_index: int) -> Path:
        """Where a phantom unit writes its results (see :mod:`phantomdce.engine.phantom`)."""
        return self.out / "units" / f"case_{case_index:04d}_chunk_{chunk_index:05d}.zarr"

    @property
    def store(self) -> Path:
        """Path of ``estimates.zarr``."""
        return self.out / "estimates.zarr"

    def marker(self, case_index: int, chunk_index: int) -> Path:
        """Path of a unit's completion marker."""
        return self.out / "progress" / f"case_{case_index:04d}_chunk_{chunk_index:05d}.json"

    def pending(self) -> list[tuple[int, int, int, int]]:
        """Units without a completion marker."""
        progress = self.out / "progress"
        done = {p.name for p in progress.iterdir()} if progress.is_dir() else set()
        return [u for u in self.units if self.marker(u[0], u[1]).name not in done]

    @property
    def entries(self) -> list[FitEntry]:
        """The results' fitter axis: the fitters, then their error-budget entries."""
        return self.fit.entries(self.fitters)


class UnitGrid(Sequence):
    """The units of a simulated scenario, computed when asked for (a lazy list).

    Unit ``i`` is ``(case, chunk, voxel_start, voxel_stop)`` with ``case, chunk =
    divmod(i, chunks per case)``: a plan of any size costs no memory until its units run.
    """

    def __init__(self, n_cases: int, n_voxels: int, chunk_voxels: int) -> None:
        self.n_cases, self.n_voxels, self.step = n_cases, n_voxels, chunk_voxels
        self.per_case = -(-n_voxels // chunk_voxels)

    def __len__(self) -> int:
        return self.n_cases * self.per_case

    def __getitem__(self, i):  # noqa: ANN001 - int or slice, as a list
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        c, k = divmod(i, self.per_case)
        a = k * self.step
        return (c, k, a, min(a + self.step, self.n_voxels))


def store_bytes(plan: RunPlan) -> int:
    """Upper bound of ``estimates.zarr``'s size (uncompressed), in bytes.

    Zero for a phantom scenario (its voxel counts are known only when its ROIs are placed;
    a phantom case is bounded by the phantom's size).
    """
    if plan.phantom:
        return 0
    n_fit = len(plan.entries)
    # tissue, replicate and up to 8 truth values (8 bytes each) per voxel; per fitter the
    # estimates (float64), success and at-limit flags (bool)
    per_voxel = 8 * 2 + 8 * 8 + n_fit * (8 * len(ESTIMATED) + 1 + len(AT_LIMIT))
    return len(plan.scenario.cases()) * plan.scenario.n_voxels * per_voxel


def estimate_seconds(plan: RunPlan, *, sample: int = 128, workers: int = 1) -> float | None:
    """Seconds the pending units of a plan should take on this machine, from a sample.

    The first ``sample`` voxels of the first case are simulated, put through the pipeline
    and fitted by every fitter that runs in this process (each fitter twice: the first
    call compiles, the second is timed); the time per voxel is scaled to the pending
    voxels and divided by ``workers``. Isolated plug-ins are not timed (a sample must not
    run someone else's code outside its child). None for a phantom scenario (its voxel
    counts are known only when its ROIs are placed) or a plan with nothing pending.
    """
    if plan.phantom:
        return None
    pending = plan.pending()
    if not pending:
        return None
    n = min(sample, plan.scenario.n_voxels)
    case = plan.scenario.cases()[0]
    t0 = time.perf_counter()
    ds = simulate_case(plan.scenario, case, voxels=range(0, n))
    simulate = (time.perf_counter() - t0) / n
    inputs = {}
    per_voxel = simulate
    for entry in plan.entries:
        info = entry.info
        isolated = plan.fit.isolate == "all" or (
            plan.fit.isolate == "plugins" and info.source != "builtin"
        )
        if isolated:
            continue
        try:
            if entry.pipeline not in inputs:
                inputs[entry.pipeline] = entry.pipeline(ds)
            data = inputs[entry.pipeline]
            info.fitter.fit(data.copy(deep=True))  # compiles (a cost paid once)
            t1 = time.perf_counter()
            info.fitter.fit(data.copy(deep=True))
            per_voxel += (time.perf_counter() - t1) / n
        except Exception:  # noqa: BLE001 - the run records it; an estimate is only advice
            continue
    voxels = sum(b - a for _, _, a, b in pending)
    return per_voxel * voxels / max(1, workers)


def check_size(plan: RunPlan) -> None:
    """Refuse a run whose store could not fit the free disk space, before it is created.

    Raises
    ------
    ConfigError
        With the plan's size (voxel curves, store bytes) and the free space.
    """
    need = store_bytes(plan)
    where = plan.out
    while not where.exists():
        where = where.parent
    free = shutil.disk_usage(where).free
    if need > free:
        n = len(plan.scenario.cases()) * plan.scenario.n_voxels
        raise ConfigError(
            f"{plan.scenario.name!r}: {len(plan.scenario.cases())} cases x"
            f" {plan.scenario.n_voxels} voxels = {n:.3g} voxel curves need up to"
            f" {need / 1e9:.3g} GB of estimates, but {where} has {free / 1e9:.3g} GB free:"
            " expected fewer replicates, tissues or sweep values, or another output folder"
        )


def _read_raw(path: str | Path) -> tuple[dict[str, Any], str]:
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    raw = parse_toml(text, source=str(path))
    raw.setdefault("name", path.stem)
    return raw, text


def _truth_names(scenario: Scenario) -> list[str]:
    case = scenario.cases()[0]
    ds = simulate_case(scenario, case, voxels=range(0, 1))
    return [
        n
        for n, v in ds.data_vars.items()
        if v.attrs.get("role") == "truth" and v.dims == ("voxel",)
    ]


def _run_json(plan: RunPlan, toml_text: str) -> dict[str, Any]:
    versions = {i.name: i.version for i in plan.fitters}
    extra = {}
    if plan.phantom:
        from phantomdce.engine.phantom import ROI_MAX_FAILED_FRACTION

        extra["phantom"] = {
            **plan.scenario.settings(),
            "roi_max_failed_fraction": ROI_MAX_FAILED_FRACTION,
        }
        extra["scenario_mapping"] = plan.scenario.raw
    return {
        "scenario_name": plan.scenario.name,
        "scenario_hash": plan.scenario.hash,
        "run_identity": plan.fit.identity(versions),
        "chunk_voxels": plan.fit.chunk_voxels,
        "scenario_toml": toml_text,
        "scenario": plan.scenario.source,
        "fit": plan.fit.as_dict(),
        "fitters": [{**fitter_record(e.info), **e.record_keys()} for e in plan.entries],
        **extra,
        "phantomdce_version": phantomdce.__version__,
    }


def parse_any(raw: dict[str, Any]) -> Scenario | PhantomScenario:
    """A DRO scenario, or a phantom scenario when the mapping has ``[phantom]``."""
    return parse_phantom_scenario(raw) if is_phantom_scenario(raw) else parse_scenario(raw)


def fit_config(scenario: Scenario | PhantomScenario, fitters: list[str] | None) -> FitConfig:
    if isinstance(scenario, PhantomScenario):
        return FitConfig.from_mapping(
            scenario.scenario.fit,
            model="extended_tofts",
            fitters=fitters,
            error_budget_runner="phantom scenarios",
        )
    return FitConfig.from_mapping(scenario.fit, model=scenario.tissue.model, fitters=fitters)


def estimated_parameters(model: str) -> list[str]:
    """Parameters a fitter of ``model`` gives, with the derived ones the engine adds.

    The model's own parameters, Ktrans = Fp PS / (Fp + PS) for the two-compartment models
    (first) and kep = Ktrans / ve where both exist (last), as :func:`collect_estimates`
    derives them.
    """
    names = list(MODELS[model].parameters)
    if "fp" in names and "ps" in names:
        names.insert(0, "Ktrans")
    if "Ktrans" in names and "ve" in names:
        names.append("kep")
    return names


def fitter_record(info) -> dict[str, str]:
    """How run.json records a fitter: name, version, model, input, method, source."""
    return {k: getattr(info, k) for k in ("name", "version", "model", "input", "method", "source")}


def _creation_leftovers(out: Path) -> list[Path] | None:
    """What a run killed while creating ``out`` left (before its run.json); None if other.

    Creation makes, in order: the lock file, ``estimates.zarr.partial`` (renamed to
    ``estimates.zarr``), empty ``progress/`` and ``units/`` folders, and ``run.json``
    through a temporary file (:func:`phantomdce.files.is_temporary_of`). No unit runs
    before run.json exists, so a folder holding only these (and no progress marker) is an
    interrupted creation.
    """
    from phantomdce.engine.lock import LOCK_NAME

    found = []
    for p in out.iterdir():
        if p.name == LOCK_NAME:
            continue
        if p.name in ("estimates.zarr.partial", "estimates.zarr"):
            found.append(p)
        elif p.name in ("progress", "units") and p.is_dir() and not any(p.iterdir()):
            found.append(p)
        elif is_temporary_of(p, "run.json"):
            found.append(p)
        else:
            return None
    return found


def _check_existing(out: Path, meta: dict[str, Any]) -> bool:
    """True if ``out`` already holds this run (resume); raise if it holds another.

    A folder left by a run killed while it was being created (see
    :func:`_creation_leftovers`) is cleared and created again.
    """
    if not out.exists():
        return False
    if not out.is_dir():
        raise ResultDirError(f"{out} exists and is a file: choose an empty or new directory")
    run_file = out / "run.json"
    if not run_file.exists():
        leftovers = _creation_leftovers(out)
        if leftovers is None:
            raise ResultDirError(
                f"{out} is not empty and holds no phantomdce run: choose an empty or new directory"
            )
        for p in leftovers:
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink()
        return False
    try:
        old = json.loads(run_file.read_text())
        if not isinstance(old, dict):
            raise ValueError("not a JSON object")
    except (ValueError, UnicodeDecodeError) as exc:
        raise ResultDirError(
            f"{run_file} is damaged ({exc}): the run's identity is lost; delete {out} and run"
            " the command again"
        ) from None
    if old.get("scenario_hash") != meta["scenario_hash"]:
        raise ResultDirError(
            f"{out} holds results of a different scenario ({old.get('scenario_name')!r}, hash"
            f" {old.get('scenario_hash')}; this one is {meta['scenario_name']!r}, hash"
            f" {meta['scenario_hash']}): refusing to mix them; choose another directory"
        )
    if old.get("run_identity") != meta["run_identity"]:
        raise ResultDirError(
            f"{out} holds results of the same scenario with other fit settings or fitter"
            f" versions (run {old.get('run_identity')}, this run {meta['run_identity']}):"
            " refusing to mix them; choose another directory"
        )
    if old.get("chunk_voxels") != meta["chunk_voxels"]:
        raise ResultDirError(
            f"{out} was run with chunk_voxels = {old.get('chunk_voxels')}; resume it with the"
            f" same value (asked {meta['chunk_voxels']})"
        )
    return True


def plan_run(
    scenario_path: str | Path,
    out: str | Path,
    *,
    fitters: list[str] | None = None,
    overrides: dict[str, Any] | None = None,
    phantom_subjects: int | None = None,
) -> RunPlan:
    """Check everything and prepare (or reopen) the result directory.

    Parameters
    ----------
    scenario_path : str or Path
        Scenario TOML file.
    out : str or Path
        Result directory (created; or an earlier run of the same scenario, resumed).
    fitters : list of str, optional
        Fitter names or ``module:attribute`` specs, overriding ``[fit] fitters``.
    overrides : dict, optional
        Top-level scenario keys to replace (a study's ``replicates``, for example).
    phantom_subjects : int, optional
        At most this many subjects for a phantom scenario (a study's ``phantom_subjects``,
        :func:`phantomdce.phantom.scenario.cap_subjects`); part of the run's identity.

    Returns
    -------
    RunPlan

    Raises
    ------
    ConfigError
        A bad scenario value, an unknown fitter, or a result directory that holds
        something else; nothing is written in that case.
    """
    raw, text = _read_raw(scenario_path)
    if overrides:
        raw = {**raw, **overrides}
        text += "\n# overridden by the study: " + json.dumps(overrides, sort_keys=True) + "\n"
    if is_phantom_scenario(raw):
        capped = cap_subjects(raw, phantom_subjects)
        if capped != raw:
            text += f"\n# the study keeps at most {phantom_subjects} phantom subjects\n"
        raw = capped
    scenario = parse_any(raw)
    fit = fit_config(scenario, fitters)
    infos = fit.resolve()
    if isinstance(scenario, PhantomScenario):
        subjects = range(scenario.subjects)
        units = [(case.index, s, 0, 0) for case in scenario.cases() for s in subjects]
    else:
        units = UnitGrid(len(scenario.cases()), scenario.n_voxels, fit.chunk_voxels)
    plan = RunPlan(Path(out), raw, scenario, fit, infos, units)
    _check_oracles(plan)
    meta = _run_json(plan, text)
    if plan.out.exists() and not plan.out.is_dir():
        raise ResultDirError(f"{out} exists and is a file: choose an empty or new directory")
    if (
        plan.out.is_dir()
        and not (plan.out / "run.json").exists()
        and _creation_leftovers(plan.out) is None
    ):  # someone else's folder: refused before the lock file is put into it
        raise ResultDirError(
            f"{out} is not empty and holds no phantomdce run: choose an empty or new directory"
        )
    if not (plan.out / "run.json").exists():
        check_size(plan)  # before anything is written, the lock file included
    # one run per folder, from here to finalize (or this process's end): see engine.lock
    from phantomdce.engine.lock import hold_run_lock

    lock = contextlib.ExitStack()
    lock.enter_context(hold_run_lock(plan.out))
    plan = dataclasses.replace(plan, lock=lock)
    try:
        if _check_existing(plan.out, meta):
            # a resumed run: units whose stored data no longer match their digests (a
            # deleted, truncated or swapped chunk) are unmarked, so they run again
            repaired = []
            for marker, case, chunk, why in damaged_units(plan.out, phantom=plan.phantom):
                marker.unlink(missing_ok=True)
                repaired.append((case, chunk, why))
            plan = dataclasses.replace(plan, repaired=tuple(repaired))
        else:
            _create_store(plan, meta)
    except BaseException:
        lock.close()
        raise
    return plan


def _check_oracles(plan: RunPlan) -> None:
    """With an error budget, run each pipeline on one voxel: one that cannot run fails here."""
    if not plan.fit.error_budget:
        return
    ds = simulate_case(plan.scenario, plan.scenario.cases()[0], voxels=range(0, 1))
    checks = [("fit.pipeline", plan.fit.pipeline)] + [
        (f"fit.error_budget[{k}] = {stage!r}: the pipeline with {stage} = 'true'", pipe)
        for k, stage in enumerate(plan.fit.error_budget)
        for pipe in [plan.fit.oracle_pipeline(stage)]
    ]
    for what, pipeline in checks:
        try:
            pipeline(ds)
        except (ValueError, KeyError) as exc:
            raise ConfigError(f"{what} cannot run on this scenario: {exc}") from None


def _create_store(plan: RunPlan, meta: dict[str, Any]) -> None:
    import zarr

    from phantomdce.dro.store import cases_table

    plan.out.mkdir(parents=True, exist_ok=True)
    tmp = plan.out / "estimates.zarr.partial"
    if tmp.exists():
        shutil.rmtree(tmp)
    if plan.phantom:
        _create_phantom_store(plan, meta, tmp)
        return
    root_ds = cases_table(plan.scenario)
    root_ds.attrs.update(
        {"run_identity": meta["run_identity"], "fitters": [e.name for e in plan.entries]}
    )
    root_ds.to_zarr(tmp, mode="w", consolidated=False, zarr_format=2)
    group = zarr.open_group(str(tmp), mode="a", zarr_format=2)
    n_vox = plan.scenario.n_voxels
    n_fit = len(plan.entries)
    step = plan.fit.chunk_voxels
    n_chunks = -(-n_vox // step)
    truth = _truth_names(plan.scenario)
    names = np.array([e.name for e in plan.entries])

    def arr(g, name, shape, chunks, dtype, dims, fill, **attrs):
        g.create_array(
            name=name,
            shape=shape,
            chunks=chunks,
            dtype=dtype,
            fill_value=fill,
            attributes={"_ARRAY_DIMENSIONS": list(dims), **attrs},
        )

    for case in plan.scenario.cases():
        g = group.create_group(case.name)
        g.attrs.update(
            {
                **case.protocol.as_attrs(),
                "case_index": case.index,
                "case_values": case.values,
                "model": plan.scenario.tissue.model,
            }
        )
        arr(g, "fitter", (n_fit,), (n_fit,), names.dtype, ["fitter"], "")
        g["fitter"][:] = names
        arr(g, "voxel", (n_vox,), (n_vox,), "i8", ["voxel"], None)
        g["voxel"][:] = np.arange(n_vox)
        for name in ("tissue", "replicate"):
            arr(g, name, (n_vox,), (step,), "i8", ["voxel"], -1)
        for name in truth:
            p = PARAMETERS.get(name)
            arr(
                g,
                f"true_{name}",
                (n_vox,),
                (step,),
                "f8",
                ["voxel"],
                np.nan,
                units=p.units if p else "a.u.",
                long_name=f"true {name}",
            )
        for name in ESTIMATED:
            arr(
                g,
                name,
                (n_fit, n_vox),
                (n_fit, step),
                "f8",
                ["fitter", "voxel"],
                np.nan,
                units=PARAMETERS[name].units,
                long_name=f"estimated {PARAMETERS[name].long_name}",
            )
        arr(g, "success", (n_fit, n_vox), (n_fit, step), bool, ["fitter", "voxel"], None)
        for name in AT_LIMIT:
            arr(
                g,
                f"at_limit_{name}",
                (n_fit, n_vox),
                (n_fit, step),
                bool,
                ["fitter", "voxel"],
                None,
                long_name=f"estimated {name} at the limit where the model degenerates",
            )
        arr(
            g,
            "fit_time_s",
            (n_fit, n_chunks),
            (n_fit, 1),
            "f8",
            ["fitter", "chunk"],
            np.nan,
            units="s",
            long_name="wall time of each fitter on each chunk",
        )
    (plan.out / "progress").mkdir(exist_ok=True)
    tmp.rename(plan.store)
    write_atomic(plan.out / "run.json", json.dumps(meta, indent=2, default=str))


def _create_phantom_store(plan: RunPlan, meta: dict[str, Any], tmp: Path) -> None:
    """The store of a phantom run: the cases table and empty case nodes with their attrs.

    Each case node is written when the run is finalized (:func:`finalize`), from its
    subjects' unit stores in ``OUT/units/``.
    """
    import zarr

    root_ds = plan.scenario.cases_table()
    root_ds.attrs.update(
        {"run_identity": meta["run_identity"], "fitters": [e.name for e in plan.entries]}
    )
    root_ds.to_zarr(tmp, mode="w", consolidated=False, zarr_format=2)
    group = zarr.open_group(str(tmp), mode="a", zarr_format=2)
    for case in plan.scenario.cases():
        g = group.create_group(case.name)
        g.attrs.update(
            {
                **case.protocol.as_attrs(),
                "acquisition": dict(case.acquisition.__dict__),
                "case_index": case.index,
                "case_values": case.values,
                "model": "extended_tofts",
            }
        )
    (plan.out / "progress").mkdir(exist_ok=True)
    (plan.out / "units").mkdir(exist_ok=True)
    tmp.rename(plan.store)
    write_atomic(plan.out / "run.json", json.dumps(meta, indent=2, default=str))


# -- one unit of work --------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _load(
    raw_json: str, fitters: tuple[str, ...]
) -> tuple[Scenario | PhantomScenario, FitConfig, list]:
    raw = json.loads(raw_json)
    scenario = parse_any(raw)
    fit = fit_config(scenario, list(fitters))
    return scenario, fit, fit.resolve()


def collect_estimates(
    result: Any, info: Any, n: int
) -> tuple[dict[str, np.ndarray], np.ndarray, dict[str, np.ndarray]]:
    """Check a fitter's output for ``n`` voxels as the engine does; raise ValueError if bad.

    Parameters
    ----------
    result : xarray.Dataset
        What ``fitter.fit`` returned.
    info : object
        The fitter (or its registry entry): ``model`` names its parameters.
    n : int
        Voxels it was given.

    Returns
    -------
    estimates : dict of str to ndarray
        Per parameter (package units), with the derived Ktrans and kep.
    success : ndarray of bool
        False also where an estimate is not finite (and not a flagged limit).
    at_limit : dict of str to ndarray of bool
        The ``at_limit_<param>`` flags the fitter gave (False where ``success`` is False).
        A flagged estimate may be infinite (Fp -> infinity); the two-compartment Ktrans is
        then PS.
    """
    if not isinstance(result, xr.Dataset):
        raise ValueError(f"returned {type(result).__name__}, expected an xarray.Dataset")
    if "success" not in result:
        raise ValueError("returned no 'success' variable")
    needed = MODELS[info.model].parameters
    missing = [p for p in needed if p not in result]
    if missing:
        raise ValueError(f"returned no {missing} (model {info.model!r} has {list(needed)})")
    est = {}
    for name in (*needed, *(p for p in ("delay",) if p in result)):
        values = np.asarray(result[name].values, dtype=np.float64).reshape(-1)
        if values.size != n:
            raise ValueError(f"returned {values.size} values of {name!r} for {n} voxels")
        est[name] = values
    success = np.asarray(result["success"].values).reshape(-1)
    if success.size != n:
        raise ValueError(f"returned {success.size} success flags for {n} voxels")
    limits = {}
    for var in result.data_vars:
        if not str(var).startswith("at_limit_"):
            continue
        name = str(var)[len("at_limit_") :]
        if name not in est:
            raise ValueError(f"returned {var!r} for {name!r}, which it does not estimate")
        flags = np.asarray(result[var].values).reshape(-1)
        if flags.size != n or flags.dtype != bool:
            raise ValueError(
                f"returned {var!r} with {flags.size} values of dtype {flags.dtype}: expected"
                f" {n} bool flags"
            )
        limits[name] = flags
    ok_values = [
        np.isfinite(v) | (limits[k] & ~np.isnan(v)) if k in limits else np.isfinite(v)
        for k, v in est.items()
    ]
    success = success.astype(bool) & np.all(ok_values, axis=0)
    limits = {k: v & success for k, v in limits.items()}
    with np.errstate(invalid="ignore", divide="ignore"):
        if "fp" in est and "ps" in est and "Ktrans" not in est:
            # the two-compartment models' Ktrans, Fp PS / (Fp + PS), as the truth defines it
            # (PS itself in the limit Fp -> infinity)
            fp = est["fp"] / 100.0
            est["Ktrans"] = np.where(np.isposinf(fp), est["ps"], fp * est["ps"] / (fp + est["ps"]))
        if "Ktrans" in est and "ve" in est:
            est["kep"] = est["Ktrans"] / est["ve"]
    return est, success, limits


def _fit_entries(
    ds: xr.Dataset | None,
    fit: FitConfig,
    infos: list,
    specs: list[str],
    n: int,
    unit_error: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """Run every fitter (and error-budget entry) on one unit's voxels.

    A fitter that raises, returns something malformed, crashes or hangs in its child is
    recorded (``errors``, ``tracebacks``) and the others go on. ``unit_error`` (the
    description of why the unit has no data, e.g. an empty ROI; ``ds`` is then None) is
    recorded for every entry instead.

    Returns
    -------
    dict
        ``block`` (estimates per parameter, (fitter, voxel)), ``success``, ``at_limit``,
        ``times`` (s per fitter), ``errors`` and ``tracebacks`` (by entry name).
    """
    entries = fit.entries(infos)
    n_fit = len(entries)
    out: dict[str, Any] = {
        "block": {name: np.full((n_fit, n), np.nan) for name in ESTIMATED},
        "success": np.zeros((n_fit, n), dtype=bool),
        "at_limit": {name: np.zeros((n_fit, n), dtype=bool) for name in AT_LIMIT},
        "times": np.full(n_fit, np.nan),
        "errors": {},
        "tracebacks": {},
        "suspect": {},
    }
    if len(specs) != len(infos):
        raise RuntimeError(f"fitters {specs} resolve to {[i.name for i in infos]}")
    if unit_error is not None:
        for entry in entries:
            out["errors"][entry.name], out["tracebacks"][entry.name] = unit_error
        out["times"][:] = 0.0
        return out
    # one input per distinct pipeline, all from the same simulated voxels; an error-budget
    # pipeline that cannot run fails its entries only (recorded like a fitter's failure)
    inputs: dict[Any, Any] = {fit.pipeline: fit.pipeline(ds)}
    for f, entry in enumerate(entries):
        spec, info = specs[entry.index], entry.info
        isolate = fit.isolate == "all" or (fit.isolate == "plugins" and info.source != "builtin")
        if entry.pipeline not in inputs:
            try:
                inputs[entry.pipeline] = entry.pipeline(ds)
            except Exception as exc:  # noqa: BLE001 - recorded for each of its entries
                inputs[entry.pipeline] = RuntimeError(
                    f"the pipeline with {entry.oracle_stage} = 'true' failed:"
                    f" {type(exc).__name__}: {exc}"
                )
        t0 = time.perf_counter()
        try:
            if isinstance(inputs[entry.pipeline], Exception):
                raise inputs[entry.pipeline]
            view = inputs[entry.pipeline].copy(deep=True)
            if isolate:
                result = fit_isolated(spec, info, view, fit.timeout_s)
            else:
                result = info.fitter.fit(view)
            est, ok, limits = collect_estimates(result, info, n)
            # success flagged on estimates that are not finite: failed voxels, listed
            claimed = np.asarray(result["success"].values).reshape(-1).astype(bool)
            nonfinite = np.flatnonzero(claimed & ~ok)
            if nonfinite.size:
                out["suspect"][entry.name] = {
                    "count": int(nonfinite.size),
                    "voxels": nonfinite[:SUSPECT_LISTED].tolist(),
                }
            for name, values in est.items():
                out["block"][name][f] = np.where(ok, values, np.nan)
            out["success"][f] = ok
            for name, flags in limits.items():
                if name in out["at_limit"]:
                    out["at_limit"][name][f] = flags
        except Exception as exc:  # noqa: BLE001 - a plug-in's failure is recorded, not raised
            if disk_fault(exc) is not None:
                raise  # a full disk is the machine's fault, not the fitter's: stop, resume
            out["errors"][entry.name], out["tracebacks"][entry.name] = describe_failure(exc)
        out["times"][f] = time.perf_counter() - t0
    return out


def run_unit(job: dict[str, Any]) -> dict[str, Any]:
    """Do one unit: simulate, estimate, fit, write its region and marker.

    Parameters
    ----------
    job : dict
        ``out``, ``raw_json``, ``fitters`` (names/specs), ``case_index``, ``chunk_index``,
        ``start``, ``stop``, ``sys_path``.

    Returns
    -------
    dict
        ``fit_time_s`` and ``errors`` per fitter.
    """
    for path in job["sys_path"]:
        if path not in sys.path:
            sys.path.append(path)
    scenario, fit, infos = _load(job["raw_json"], tuple(job["fitters"]))
    case = scenario.cases()[job["case_index"]]
    if "case_values" in job and case.values != job["case_values"]:
        raise RuntimeError(
            f"case {job['case_index']} expands to {case.values} in the worker but to"
            f" {job['case_values']} in the plan: the scenario was not passed faithfully"
        )
    if isinstance(scenario, PhantomScenario):
        return _run_phantom_unit(job, scenario, case, fit, infos)
    import zarr

    a, b, k = job["start"], job["stop"], job["chunk_index"]
    ds = simulate_case(scenario, case, voxels=range(a, b))
    entries = fit.entries(infos)
    res = _fit_entries(ds, fit, infos, list(job["fitters"]), b - a)
    group = zarr.open_group(str(Path(job["out"]) / "estimates.zarr"), mode="r+", zarr_format=2)
    g = group[case.name]
    g["tissue"][a:b] = ds["tissue"].values
    g["replicate"][a:b] = ds["replicate"].values
    for name, var in ds.data_vars.items():
        if f"true_{name}" in g:
            g[f"true_{name}"][a:b] = var.values
    for name, values in res["block"].items():
        g[name][:, a:b] = values
    g["success"][:, a:b] = res["success"]
    for name, flags in res["at_limit"].items():
        g[f"at_limit_{name}"][:, a:b] = flags
    g["fit_time_s"][:, k] = res["times"]
    # the data as stored (read back): what a resumed run or a reader checks them against
    digest = region_digest(g, a, b, k)
    return _mark(job, case.name, k, [a, b], entries, res, digest)


def _mark(job, case_name, k, voxels, entries, res, digest: str) -> dict[str, Any]:
    """Write a unit's progress marker (atomically, after its data); return the record."""
    record = {
        "case": case_name,
        "chunk": k,
        "voxels": voxels,
        "digest": digest,
        "fit_time_s": {e.name: float(t) for e, t in zip(entries, res["times"], strict=True)},
        "errors": res["errors"],
        "tracebacks": res["tracebacks"],
        "nonfinite_success": res.get("suspect", {}),
    }
    marker = Path(job["out"]) / "progress" / f"case_{job['case_index']:04d}_chunk_{k:05d}.json"
    write_atomic(marker, json.dumps(record))
    return record


def _run_phantom_unit(job, scenario: PhantomScenario, case, fit: FitConfig, infos) -> dict:
    """One subject of one phantom case: acquire, place the ROIs, fit, write its unit store."""
    from phantomdce.engine import phantom as ph
    from phantomdce.engine.isolate import describe_failure as describe

    s = job["chunk_index"]
    entries = fit.entries(infos)
    ds, unit_error, images = None, None, None
    try:
        if s == 0:  # subject 0 also keeps what the report's figures draw
            ds, images = ph.unit_case(scenario, case, s, with_images=True)
        else:
            ds = ph.unit_case(scenario, case, s)
    except ValueError as exc:  # e.g. a tumour ROI without a voxel at this resolution
        unit_error = describe(exc)
    n = 0 if ds is None else ds.sizes["voxel"]
    res = _fit_entries(ds, fit, infos, list(job["fitters"]), n, unit_error)
    truth = {k: np.full(n, np.nan) for k in ph.TRUTH}
    if ds is not None:
        for k in ("Ktrans", "ve", "vp"):
            truth[k] = ds[k].values
        with np.errstate(invalid="ignore", divide="ignore"):
            truth["kep"] = truth["Ktrans"] / truth["ve"]
    node: dict[str, Any] = {
        "success": (("fitter", "voxel"), res["success"]),
        "fit_time_s": (("fitter",), res["times"], {"units": "s"}),
        "tissue": ("voxel", np.zeros(0, np.int64) if ds is None else ds["tissue"].values),
        "replicate": ("voxel", np.zeros(0, np.int64) if ds is None else ds["replicate"].values),
    }
    for name, values in res["block"].items():
        node[name] = (("fitter", "voxel"), values, {"units": PARAMETERS[name].units})
    for name, flags in res["at_limit"].items():
        node[f"at_limit_{name}"] = (("fitter", "voxel"), flags)
    for k, v in truth.items():
        node[f"true_{k}"] = ("voxel", v, {"units": PARAMETERS[k].units})
    attrs = {
        "roi_voxels": 0 if ds is None else int(ds.attrs["roi_voxels"]),
        "subject": s,
        **{f"enhancing_true_{k}": v for k, v in ph.enhancing_truth(scenario, s, case).items()},
    }
    coords: dict[str, Any] = {"fitter": [e.name for e in entries], "voxel": np.arange(n)}
    if images is not None:
        node.update({k: v for k, v in images.items() if k.startswith("figure_")})
        coords.update(images["coords"])
        attrs.update({f"figure_{k}": v for k, v in images["attrs"].items()})
        t = ds["time"].values
        coords["time"] = ("time", t, {"units": "s"})
        aif_units = {"units": "mM", "long_name": "plasma AIF"}
        node["aif_used"] = ("time", fit.pipeline.plasma_aif(ds), aif_units)
        node["aif_true"] = ("time", ds["ca"].values, {**aif_units, "role": "truth"})
        attrs["aif_source"] = fit.pipeline.aif
    out = xr.Dataset(node, coords=coords, attrs=attrs)
    path = Path(job["out"]) / "units" / f"case_{case.index:04d}_chunk_{s:05d}.zarr"
    ph.write_unit(path, out)
    return _mark(job, case.name, s, [0, n], entries, res, store_digest(path))


# -- execution ---------------------------------------------------------------------------


def _jobs(plan: RunPlan, units: Iterable[tuple[int, int, int, int]]) -> list[dict[str, Any]]:
    # key order matters: the sweep axes expand in the order they are written
    raw_json = json.dumps(plan.raw, default=str)
    cases = plan.scenario.cases()
    return [
        {
            "out": str(plan.out.resolve()),
            "raw_json": raw_json,
            "fitters": list(plan.fit.fitters),
            "case_index": c,
            "case_values": cases[c].values,
            "chunk_index": k,
            "start": a,
            "stop": b,
            "sys_path": list(sys.path),
        }
        for c, k, a, b in units
    ]


def execute(
    plan: RunPlan,
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[dict[str, Any]]:
    """Run every pending unit of a plan.

    Parameters
    ----------
    plan : RunPlan
        From :func:`plan_run`.
    scheduler : str, optional
        None (this process), ``"processes"`` or ``"threads"`` (dask local schedulers), or
        the address of a ``dask.distributed`` scheduler.
    workers : int, optional
        Workers for the dask local schedulers.
    progress : callable, optional
        Called as ``progress(done, total)``.

    Returns
    -------
    list of dict
        The records of the units run now.
    """
    check_scheduler(scheduler)
    jobs = _jobs(plan, plan.pending())
    total = len(jobs)
    done: list[dict[str, Any]] = []

    def tick(record):
        done.append(record)
        if progress is not None:
            progress(len(done), total)

    if not jobs:
        return done
    from phantomdce.engine.isolate import close_workers

    try:
        if scheduler is None or scheduler in ("local", "sync", "synchronous"):
            for job in jobs:
                tick(run_unit(job))
        elif scheduler in ("processes", "threads"):
            import dask

            tasks = [dask.delayed(run_unit)(job) for job in jobs]
            for record in dask.compute(*tasks, scheduler=scheduler, num_workers=workers):
                tick(record)
        else:
            from dask.distributed import Client, as_completed

            with Client(scheduler) as client:
                try:
                    futures = client.map(run_unit, jobs, pure=False)
                    for future in as_completed(futures):
                        tick(future.result())
                finally:
                    # isolated plug-ins' children on the cluster's workers (which outlive
                    # the run) end with it
                    try:
                        client.run(close_workers)
                    except Exception:  # noqa: BLE001 - a lost cluster has no children to end
                        pass
    finally:
        close_workers()  # an idle plug-in child holds its memory until it is ended
    return done


def run(
    scenario_path: str | Path,
    out: str | Path,
    *,
    fitters: list[str] | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[dict[str, Any]]:
    """Plan, execute and finalize a run; returns the metrics rows.

    See :func:`plan_run`, :func:`execute` and :func:`finalize`.
    """
    plan = plan_run(scenario_path, out, fitters=fitters)
    try:
        execute(plan, scheduler=scheduler, workers=workers, progress=progress)
        return finalize(plan)
    finally:
        plan.release()


# -- metrics -----------------------------------------------------------------------------


def open_results(out: str | Path, *, cache: bool = True) -> xr.DataTree:
    """Open the estimates of a run (``OUT/estimates.zarr``), lazily.

    Parameters
    ----------
    out : str or Path
        Result directory of :func:`run` or ``phantomdce run``.
    cache : bool, optional
        Keep a variable in memory once it has been read whole (xarray's ``cache``); the
        engine's metrics turn it off, so that a large case is never held whole.

    Returns
    -------
    xarray.DataTree
        The root holds the cases table (``case_name`` and the swept values); one child per
        case, in the scenario's order, with ``<parameter>`` (fitter, voxel) estimates in
        package units, ``success``, ``at_limit_<parameter>``, ``true_<parameter>``,
        ``tissue`` and ``replicate`` (int64 indices; -1 where a voxel's unit has not run
        yet) and ``fit_time_s`` (fitter, chunk) in s. See the module docstring.

    Raises
    ------
    FileNotFoundError
        ``out`` holds no ``estimates.zarr``.

    Examples
    --------
    >>> import phantomdce
    >>> tree = phantomdce.open_results("out/")  # doctest: +SKIP
    >>> tree["case_0000"]["Ktrans"].sel(fitter="nlls_extended_tofts")  # doctest: +SKIP
    """
    store = Path(out) / "estimates.zarr"
    if not store.is_dir():
        raise FileNotFoundError(f"{store}: no results; is {out} a `phantomdce run` directory?")
    # masks off: the -1 fill of tissue/replicate would turn them into floats; the float
    # arrays' fill is NaN either way
    tree = xr.open_datatree(
        store,
        engine="zarr",
        consolidated=(store / ".zmetadata").exists(),
        mask_and_scale=False,
        cache=cache,
    )
    root = tree.to_dataset(inherit=False)
    if "case_name" in root:
        order = [str(c) for c in root["case_name"].values]
        if set(order) == set(tree.children) and order != list(tree.children):
            # a store lists its groups in the file system's order, not the scenario's
            tree.children = {name: tree[name].copy() for name in order}
    return tree


def finalize(plan: RunPlan) -> list[dict[str, Any]]:
    """Compute the metrics of a finished run and write ``metrics.csv`` and ``failures.csv``."""
    from phantomdce.engine.metrics import case_metrics, metrics_table

    missing = plan.pending()
    if missing:
        raise RuntimeError(f"{len(missing)} units are not finished: run again to complete them")
    starts = _assemble_phantom(plan) if plan.phantom else {}
    nodes = {n: store_digest(plan.store / n) for n in starts}  # phantom case nodes
    tree = open_results(plan.out, cache=False)
    if not plan.phantom:
        _verify_units(plan, tree)
    from phantomdce.engine.metrics import out_of_range

    rows = []
    failures = []
    suspect: list[tuple] = []
    for case in plan.scenario.cases():
        # one (fitter, parameter) row at a time, each truth read once: the case node is
        # never held whole (the tree does not cache what it reads)
        ds = tree[case.name].to_dataset()
        tissue, replicate = ds["tissue"].values, ds["replicate"].values
        names: dict[int, list[str]] = {}
        for f, entry in enumerate(plan.entries):
            names[f] = estimated_parameters(entry.info.model)
            # the true delay is 0 only when the fitter sees the true AIF
            if entry.pipeline.aif == "true" and np.isfinite(ds["delay"][f].values).any():
                names[f].append("delay")
        times = [float(np.nansum(ds["fit_time_s"][f].values)) for f in names]
        successes = {f: ds["success"][f].values for f in names}  # bool: n bytes each
        bounds = _fitter_bounds(plan, ds, tissue)  # Cramér-Rao variances, once per kind
        found: dict[tuple[int, str], dict[str, Any]] = {}
        for name in dict.fromkeys(n for f in names for n in names[f]):
            truth = _truth_for(ds, name)
            if truth is None:
                continue
            for f, entry in enumerate(plan.entries):
                if name not in names[f]:
                    continue
                success = successes[f]
                values = ds[name][f].values
                limit = ds[f"at_limit_{name}"][f].values if f"at_limit_{name}" in ds else None
                row = {"case": case.name, "fitter": entry.name, "parameter": name}
                row.update(
                    case_metrics(
                        values,
                        truth,
                        success,
                        tissue,
                        replicate,
                        parameter=name,
                        fit_time_s=times[f],
                        seed=plan.scenario.seed,
                        at_limit=limit,
                        crlb_var=bounds[f].get(name),
                    )
                )
                found[f, name] = row
                odd = out_of_range(values, name) & success
                if limit is not None:
                    odd &= ~limit
                p = PARAMETERS[name]
                for v in np.flatnonzero(odd)[:SUSPECT_LISTED]:
                    suspect.append(
                        (case.name, entry.name, name, int(v), repr(float(values[v])),
                         f"outside the physical range [{p.lower:g}, {p.upper:g}] {p.units}")
                    )  # fmt: skip
            del truth
        # rows fitter by fitter, each in its parameters' order
        rows.extend(found[f, n] for f in names for n in names[f] if (f, n) in found)
    for marker in sorted((plan.out / "progress").glob("*.json")):
        record = json.loads(marker.read_text())
        tracebacks = record.get("tracebacks", {})
        voxels = record["voxels"]
        if record["case"] in starts:  # a phantom subject: its voxels in the case node
            first = starts[record["case"]][record["chunk"]]
            voxels = [first + voxels[0], first + voxels[1]]
        for fitter, found in record.get("nonfinite_success", {}).items():
            for v in found["voxels"]:
                suspect.append(
                    (record["case"], fitter, "success", voxels[0] + v, "nan",
                     "flagged success with an estimate that is not finite (counted as failed)")
                )  # fmt: skip
        for fitter, message in record["errors"].items():
            failures.append(
                (
                    record["case"],
                    record["chunk"],
                    *voxels,
                    fitter,
                    message,
                    tracebacks.get(fitter, ""),
                )
            )
    write_atomic(plan.out / "metrics.csv", metrics_table(rows))
    _write_failures(plan.out / "failures.csv", failures)
    _write_csv(plan.out / "suspect.csv", SUSPECT_COLUMNS, suspect)
    _consolidate(plan.store)
    write_file_digests(plan.out, nodes=nodes)
    plan.release()
    return rows


#: Columns of ``failures.csv``.
FAILURE_COLUMNS = ("case", "chunk", "voxel_start", "voxel_stop", "fitter", "error", "traceback")


#: Columns of ``suspect.csv``: estimates a fitter called successful that cannot be (outside
#: the parameter's physical range in ``params.PARAMETERS``, or not finite), at most
#: :data:`SUSPECT_LISTED` per case, fitter and parameter (``metrics.csv``'s
#: ``out_of_range`` has the full count).
SUSPECT_COLUMNS = ("case", "fitter", "parameter", "voxel", "estimate", "problem")


def _write_failures(path: Path, failures: list[tuple]) -> None:
    _write_csv(path, FAILURE_COLUMNS, failures)


def _write_csv(path: Path, columns: tuple[str, ...], rows: list[tuple]) -> None:
    import csv
    import io

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    write_atomic(path, buf.getvalue())


def _consolidate(store: Path) -> None:
    """Consolidate a finished store's metadata, so it opens fast and without a warning."""
    import zarr

    zarr.consolidate_metadata(str(store), zarr_format=2)


def _assemble_phantom(plan: RunPlan) -> dict[str, list[int]]:
    """Write each phantom case node from its subjects' unit stores; first voxel per subject.

    A unit marked done whose store is missing (lost in a machine crash) is unmarked and the
    run asked to be repeated, as :func:`_verify_units` does for simulated cases.
    """
    from phantomdce.engine.phantom import assemble_case

    bad = [(c, k) for c, k, _, _ in plan.units if not plan.unit_store(c, k).is_dir()]
    for c, k in bad:
        plan.marker(c, k).unlink(missing_ok=True)
    if bad:
        raise RuntimeError(
            f"{len(bad)} units marked done had not written their results (e.g. case {bad[0][0]},"
            f" subject {bad[0][1]}); their markers were removed: run again to redo them"
        )
    names = [e.name for e in plan.entries]
    starts = {}
    for case in plan.scenario.cases():
        paths = [plan.unit_store(case.index, s) for s in range(plan.scenario.subjects)]
        ds, starts[case.name] = assemble_case(plan.scenario, case, names, paths)
        ds.to_zarr(plan.store, group=case.name, mode="w", zarr_format=2, consolidated=False)
    _consolidate(plan.store)
    return starts


def _verify_units(plan: RunPlan, tree: xr.DataTree) -> None:
    """Check that every unit marked done wrote its region; unmark and raise if not.

    A marker is written after its unit's zarr writes, but a crash of the machine (not of
    the process) can still lose unsynced data; such units are found here, their markers
    removed, and the run asked to be repeated, which redoes only them.
    """
    bad = []
    cases = plan.scenario.cases()
    read: tuple[int, np.ndarray, np.ndarray] | None = None  # one case's arrays at a time
    for c, k, a, b in plan.units:
        if read is None or read[0] != c:
            g = tree[cases[c].name]
            read = (c, g["tissue"].values >= 0, np.isfinite(g["fit_time_s"].values).all(0))
        _, written, timed = read
        if not (bool(written[a:b].all()) and bool(timed[k])):
            bad.append((c, k))
            plan.marker(c, k).unlink(missing_ok=True)
    if bad:
        raise RuntimeError(
            f"{len(bad)} units marked done had not written their results (e.g. case {bad[0][0]},"
            f" chunk {bad[0][1]}); their markers were removed: run again to redo them"
        )


def _fitter_bounds(
    plan: RunPlan, ds: xr.Dataset, tissue: np.ndarray
) -> list[dict[str, np.ndarray]]:
    """Per fitter entry, the Cramér-Rao variance bound per voxel of each parameter.

    The bound matching the fitter's information (:func:`phantomdce.engine.metrics.bound_kind`),
    all kinds of a case from one computation of its Jacobians; an empty mapping where none
    applies (metrics NaN).
    """
    from phantomdce.engine.metrics import bound_kind, case_bounds

    model = ds.attrs.get("model")
    kinds: list[str | None] = []
    for f, entry in enumerate(plan.entries):
        kind, _ = bound_kind(
            tissue_model=model,
            fitter_model=entry.info.model,
            fitter_input=entry.info.input,
            pipeline=entry.pipeline,
            case_attrs=ds.attrs,
            shared_m0=bool(getattr(entry.info.fitter, "shared_m0", False)),
            delay_fitted=bool(np.isfinite(ds["delay"][f].values).any()),
            phantom=plan.phantom or model not in MODELS,
        )
        kinds.append(kind)
    needed = tuple(dict.fromkeys(k for k in kinds if k is not None))
    by_kind: dict[str, dict[str, np.ndarray]] = {}
    if needed:
        names = [*MODELS[model].parameters, "T10", "m0"]
        if all(f"true_{k}" in ds for k in names):  # else a store without them: no bound
            truth = {k: ds[f"true_{k}"].values for k in names}
            by_kind = case_bounds(ds.attrs, truth, tissue, kind=needed)
    return [by_kind.get(kind, {}) if kind is not None else {} for kind in kinds]


def _truth_for(ds: xr.Dataset, name: str) -> np.ndarray | None:
    """Truth of a parameter; vp is 0 for tissue models without a plasma compartment."""
    if f"true_{name}" in ds:
        return ds[f"true_{name}"].values
    if name == "vp":
        return np.zeros(ds.sizes["voxel"])
    if name == "delay":
        return np.zeros(ds.sizes["voxel"])
    return None
