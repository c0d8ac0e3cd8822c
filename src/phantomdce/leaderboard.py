"""The fitter leaderboard: every installed fitter on one fixed panel (``phantomdce leaderboard``).

``phantomdce leaderboard -o reports/fitters [--fitters SPEC ...]`` runs every registered
fitter (built-ins and entry-point plug-ins, plus the names or ``module:attribute`` specs given
with ``--fitters``) through the one engine (:func:`phantomdce.engine.run.plan_run`,
``execute``, ``finalize``) on the panel's scenarios (``scenarios/leaderboard/``):

- ``esnr_snr.toml``: the ESNR 2022 recommended protocol, extended Tofts tissue, SNR 30, 20
  and 10 (three items);
- ``dt10.toml``: the same at dt 10 s, SNR 30;
- ``tissue_2cxm.toml``: two-compartment exchange tissue on the recommended protocol, SNR 30.

A fitter is run on the items its model can fit (:func:`fits`): its own tissue model, and
every tissue for an extended Tofts fitter (the ESNR reference model). Plug-ins run in a child
process (the engine's default ``fit.isolate = "plugins"``): a crash, a hang or an exception
is the fitter's failure on the chunk (``failures.csv``), not the leaderboard's. A plug-in or
spec that does not load is a row of :data:`LOAD_FAILURE` with its error.

Besides the panel: each fitter's pass count on the OSIPI model cases of its model
(:data:`phantomdce.data.OSIPI_MODEL_FILES`, OSIPI's tolerances
:data:`phantomdce.engine.metrics.TOLERANCES`), and a timing pass: each fitter fits the same
pipeline output (the first panel item of its tissue, :func:`timing_item`) after a warm-up
on 4 voxels (so a child's start and a JIT compilation are not counted), best of 3 fits (of
as many as fit in :data:`TIMING_BUDGET_S`: a slow fitter is timed once); in the same
process and on the same data a vectorised numpy Murase linear solve of the extended Tofts
model (:func:`phantomdce.fit.llsq.llsq_numpy`, best of 3) is timed: ``time_ratio`` is the
fitter's time per voxel over the baseline's (1 = as fast; 10 = ten times slower). An
isolated plug-in's time includes passing the chunk to its child and back.

Outputs in ``OUT/``: ``index.html`` and ``summary.md`` (the command at the top),
``leaderboard.csv`` (:data:`COLUMNS`, one row per item, fitter and parameter; bias, CV,
failure rate and efficiency copied from the run's ``metrics.csv``), ``tissues.csv`` (per
tissue), ``fitters.csv`` (:data:`FITTER_COLUMNS`: per fitter: package, versions, OSIPI pass
count, time per voxel and its ratio, status).
"""

from __future__ import annotations

import csv
import importlib.metadata
import io
import math
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

import phantomdce
from phantomdce.data import OSIPI_MODEL_FILES, osipi_rows
from phantomdce.dro.config import ConfigError, read_toml
from phantomdce.dro.simulate import simulate_case
from phantomdce.engine.isolate import close_workers, describe_failure, fit_isolated
from phantomdce.engine.metrics import TOLERANCES, case_metrics
from phantomdce.engine.run import (
    execute,
    finalize,
    fit_config,
    open_results,
    parse_any,
    plan_run,
)
from phantomdce.fit import registry
from phantomdce.fit.llsq import llsq_numpy
from phantomdce.params import MODELS

__all__ = [
    "COLUMNS",
    "FITTER_COLUMNS",
    "LOAD_FAILURE",
    "PARAMETERS",
    "Entrant",
    "PanelItem",
    "default_panel",
    "discover",
    "fits",
    "leaderboard",
    "osipi_score",
    "time_fitters",
    "timing_item",
]

#: Parameters the leaderboard tabulates (where the fitter estimates them).
PARAMETERS = ("Ktrans", "ve", "vp")
#: Status of a fitter (or spec, or plug-in) that did not load.
LOAD_FAILURE = "did not load"
#: Columns of ``leaderboard.csv`` (units: bias and sd in the parameter's units, *_pct in %).
COLUMNS = (
    "item",
    "scenario",
    "case",
    "fitter",
    "parameter",
    "n_voxels",
    "failure_rate",
    "bias",
    "rel_bias_pct",
    "cv_pct",
    "efficiency",
    "median_tissue_abs_rel_bias_pct",
    "worst_tissue_abs_rel_bias_pct",
    "median_tissue_cv_pct",
    "worst_tissue_cv_pct",
)
#: Columns of ``fitters.csv``: time per voxel in s, ``time_ratio`` to the numpy Murase baseline.
FITTER_COLUMNS = (
    "fitter",
    "model",
    "input",
    "method",
    "source",
    "package",
    "package_version",
    "fitter_version",
    "osipi_file",
    "osipi_passed",
    "osipi_cases",
    "osipi_error",
    "timing_item",
    "time_per_voxel_s",
    "timing_fits",
    "baseline_time_per_voxel_s",
    "time_ratio",
    "timing_error",
    "status",
)
#: Voxels fitted once before a fitter is timed (child start, JIT compilation).
WARMUP_VOXELS = 4
#: Wall-clock time (s) after which a fitter's timing stops repeating its fit (best of what ran).
TIMING_BUDGET_S = 2.0


@dataclass
class Entrant:
    """A fitter of the leaderboard, or a plug-in/spec that failed to load.

    Attributes
    ----------
    name : str
        Registry name (or, for a load failure, the plug-in or spec).
    run_as : str
        What the engine is given: the registry name, or the spec that provides the fitter.
    info : FitterInfo or None
        The resolved fitter; None for a load failure.
    error : str
        Why it did not load ("" when it did).
    """

    name: str
    run_as: str
    info: Any = None
    error: str = ""
    results: dict[str, Any] = field(default_factory=dict)

    @property
    def isolated(self) -> bool:
        """Whether the engine runs it in a child (``fit.isolate = "plugins"``)."""
        return self.info is not None and self.info.source != "builtin"


def default_panel() -> Path:
    """``scenarios/leaderboard/`` of the source tree (an installed package has none)."""
    return Path(__file__).resolve().parents[2] / "scenarios" / "leaderboard"


def fits(fitter_model: str, tissue_model: str) -> bool:
    """Whether a fitter of ``fitter_model`` is run on tissue of ``tissue_model``.

    Its own model, and any tissue for an extended Tofts fitter (the reference model of the
    ESNR recommendations, fitted to 2CXM tissue in the panel).

    >>> fits("extended_tofts", "2cxm"), fits("2cxm", "2cxm"), fits("tofts", "extended_tofts")
    (True, True, False)
    """
    return fitter_model == tissue_model or fitter_model == "extended_tofts"


def discover(specs: Sequence[str] = (), *, installed: bool = True) -> list[Entrant]:
    """Every registered fitter and those of ``specs``; what does not load is an entrant too.

    Parameters
    ----------
    specs : sequence of str
        Registry names or ``module:attribute`` specs to add.
    installed : bool
        Include every registered fitter (False: only ``specs``).

    Returns
    -------
    list of Entrant
        Registered fitters by name, then each spec's fitters, then load failures (a plug-in
        that warned while the registry loaded, a spec that raised), each with its error.
    """
    registry.refresh()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", registry.PluginWarning)
        infos = registry.list_fitters() if installed else []
    entrants = [Entrant(i.name, i.name, i) for i in infos]
    failed = [
        Entrant(f"plug-in {i}", "", None, str(w.message))
        for i, w in enumerate(caught)
        if issubclass(w.category, registry.PluginWarning)
    ]
    known = {e.name for e in entrants}
    for spec in specs:
        try:
            resolved = registry.resolve_fitters([spec])
        except Exception as exc:  # noqa: BLE001 - a spec that does not load is a row
            failed.append(Entrant(spec, spec, None, describe_failure(exc)[0]))
            continue
        for info in resolved:
            if info.name in known:
                continue  # an installed plug-in named by its spec
            known.add(info.name)
            entrants.append(Entrant(info.name, spec, info))
    return entrants + failed


def _package(info: Any) -> tuple[str, str]:
    """Distribution providing a fitter and its version (importlib.metadata)."""
    if info.source == "builtin":
        return "phantomdce", phantomdce.__version__
    if info.source.startswith("spec "):
        top = info.source[len("spec ") :].split(":")[0].split(".")[0]
        dists = importlib.metadata.packages_distributions().get(top, [])
        if not dists:
            return f"{top} (not installed: spec)", ""
        return dists[0], importlib.metadata.version(dists[0])
    dist = info.source.split()[0]
    try:
        return dist, importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return dist, ""


def _fit(entrant: Entrant, data: xr.Dataset, timeout_s: float = 600.0) -> xr.Dataset:
    """Fit as the engine does: plug-ins in a child process, built-ins here."""
    if entrant.isolated:
        return fit_isolated(entrant.run_as, entrant.info, data, timeout_s)
    return entrant.info.fitter.fit(data)


def osipi_score(entrant: Entrant) -> dict[str, Any]:
    """Pass count of a fitter on the OSIPI cases of its model, with OSIPI's tolerances.

    A case passes when every parameter of the model (OSIPI's ``ps`` for the Patlak
    Ktrans) is within ``atol + rtol |reference|`` (:data:`TOLERANCES`). Curves that share
    an AIF and time grid are fitted together.

    Returns
    -------
    dict
        ``osipi_file``, ``osipi_passed``, ``osipi_cases`` and ``osipi_error`` ("" or why
        the fitter could not be scored).
    """
    info = entrant.info
    relpath = OSIPI_MODEL_FILES[info.model]
    out: dict[str, Any] = {"osipi_file": relpath, "osipi_passed": "", "osipi_cases": ""}
    if info.input != "concentration":
        return out | {"osipi_error": "signal input: the OSIPI model cases are concentrations"}
    rows = osipi_rows(relpath)
    names = list(MODELS[info.model].parameters)
    groups: dict[bytes, list[int]] = {}
    for i, row in enumerate(rows):
        ca = row.get("ca", row.get("cp_aif"))
        groups.setdefault(ca.tobytes() + row["t"].tobytes(), []).append(i)
    est = {p: np.full(len(rows), np.nan) for p in names}
    try:
        for idx in groups.values():
            first = rows[idx[0]]
            ct = np.stack([rows[i].get("C", rows[i].get("C_t")) for i in idx])
            data = xr.Dataset(
                {"ct": (("voxel", "time"), ct),
                 "ca": ("time", first.get("ca", first.get("cp_aif")))},
                coords={"time": first["t"], "voxel": np.arange(len(idx))},
            )  # fmt: skip
            res = _fit(entrant, data)
            for p in names:
                est[p][idx] = np.where(res["success"].values, res[p].values, np.nan)
    except Exception as exc:  # noqa: BLE001 - a failing fitter is a row
        return out | {"osipi_cases": len(rows), "osipi_error": describe_failure(exc)[0]}
    passed = np.ones(len(rows), dtype=bool)
    for i, row in enumerate(rows):
        for p in names:
            truth = row["ps"] if (info.model, p) == ("patlak", "Ktrans") else row[p]
            atol, rtol = TOLERANCES[p]
            passed[i] &= bool(abs(est[p][i] - truth) <= atol + rtol * abs(truth))
    return out | {"osipi_passed": int(passed.sum()), "osipi_cases": len(rows), "osipi_error": ""}


@dataclass
class PanelItem:
    """One panel item: a case of a panel scenario, run into ``run_dir``."""

    label: str
    scenario_file: Path
    scenario: Any
    case: Any
    run_dir: Path


def timing_item(items: Sequence[PanelItem], model: str) -> PanelItem:
    """The panel item a fitter of ``model`` is timed on: the first of its tissue model.

    The first extended Tofts item for the models without one in the panel but Tofts and
    Patlak; the first 2CXM item for the 2CUM.
    """
    want = {"2cum": "2cxm"}.get(model, model)
    for item in items:
        if item.scenario.tissue.model == want:
            return item
    return items[0]


def time_fitters(
    entrants: Sequence[Entrant], items: Sequence[PanelItem], *, rounds: int = 3
) -> dict[str, dict[str, Any]]:
    """Time every fitter and the numpy Murase baseline on the same data, in this process.

    Each fitter fits the pipeline output of its :func:`timing_item` after a warm-up on
    :data:`WARMUP_VOXELS` voxels, best of ``rounds`` fits (fewer once their total passes
    :data:`TIMING_BUDGET_S`); the baseline (``llsq_numpy``, extended Tofts) solves the same
    ``ct``, best of ``rounds``: both sides the best of repeated runs in the same process.

    Returns
    -------
    dict
        Per fitter name: ``timing_item``, ``time_per_voxel_s`` (the best of ``timing_fits``
        fits), ``baseline_time_per_voxel_s``, ``time_ratio`` and ``timing_error``.
    """
    inputs: dict[str, xr.Dataset] = {}
    baseline: dict[str, float] = {}
    out = {}
    for entrant in entrants:
        if entrant.info is None:
            continue
        item = timing_item(items, entrant.info.model)
        if item.label not in inputs:
            fit = fit_config(item.scenario, ["nlls_extended_tofts"])
            data = fit.pipeline(simulate_case(item.scenario, item.case))
            inputs[item.label] = data
            t, ct, ca = data["time"].values, data["ct"].values, data["ca"].values
            llsq_numpy(t, ct[:WARMUP_VOXELS], ca, model="extended_tofts")
            best = math.inf
            for _ in range(rounds):
                t0 = time.perf_counter()
                llsq_numpy(t, ct, ca, model="extended_tofts")
                best = min(best, time.perf_counter() - t0)
            baseline[item.label] = best / ct.shape[0]
        data = inputs[item.label]
        n = data.sizes["voxel"]
        row: dict[str, Any] = {
            "timing_item": item.label,
            "baseline_time_per_voxel_s": baseline[item.label],
            "time_per_voxel_s": math.nan,
            "timing_fits": 0,
            "time_ratio": math.nan,
            "timing_error": "",
        }
        try:
            _fit(entrant, data.isel(voxel=slice(0, WARMUP_VOXELS)).copy(deep=True))
            best, spent, fits = math.inf, 0.0, 0
            for _ in range(rounds):
                view = data.copy(deep=True)
                t0 = time.perf_counter()
                _fit(entrant, view)
                took = time.perf_counter() - t0
                best, spent, fits = min(best, took), spent + took, fits + 1
                if spent > TIMING_BUDGET_S:
                    break
            per_voxel = best / n
        except Exception as exc:  # noqa: BLE001 - a failing fitter is a row
            row["timing_error"] = describe_failure(exc)[0]
        else:
            row["time_per_voxel_s"] = per_voxel
            row["timing_fits"] = fits
            row["time_ratio"] = per_voxel / baseline[item.label]
        out[entrant.name] = row
    return out


def _label(scenario: Any, case: Any) -> str:
    name = scenario.name.removeprefix("leaderboard_")
    values = ", ".join(f"{k} {v:g}" for k, v in case.values.items())
    return f"{name} ({values})" if values else name


def _run_panel(
    panel: Path, work: Path, entrants: Sequence[Entrant], replicates: int | None, say: Any
) -> tuple[list[PanelItem], list[dict[str, Any]], list[dict[str, str]]]:
    """Run each panel scenario with its eligible fitters; items, metrics rows, failures."""
    files = sorted(panel.glob("*.toml"))
    if not files:
        raise ConfigError(f"panel {panel}: no scenario files (*.toml)")
    items, metrics, failures = [], [], []
    for file in files:
        raw = read_toml(file)
        if replicates is not None:
            raw = {**raw, "replicates": replicates}
        scenario = parse_any(raw)
        tissue = scenario.tissue.model
        run_as = list(dict.fromkeys(
            e.run_as for e in entrants if e.info is not None and fits(e.info.model, tissue)
        ))  # fmt: skip
        if not run_as:
            continue
        run_dir = work / file.stem
        t0 = time.perf_counter()
        plan = plan_run(
            file,
            run_dir,
            fitters=run_as,
            overrides={"replicates": replicates} if replicates is not None else None,
        )
        try:
            execute(plan)
            rows = finalize(plan)
        finally:
            plan.release()
        say(f"  {file.name}: {len(run_as)} fitters in {time.perf_counter() - t0:.0f} s")
        for case in scenario.cases():
            items.append(PanelItem(_label(scenario, case), file, scenario, case, run_dir))
        eligible = {e.name for e in entrants if e.info is not None and fits(e.info.model, tissue)}
        for row in rows:
            if row["fitter"] in eligible:
                case = next(c for c in scenario.cases() if c.name == row["case"])
                metrics.append(row | {"item": _label(scenario, case), "scenario": file.name})
        with open(run_dir / "failures.csv", encoding="utf-8", newline="") as fh:
            for rec in csv.DictReader(fh):
                if rec["fitter"] in eligible:
                    failures.append(rec | {"scenario": file.name})
    return items, metrics, failures


def _tissue_rows(items: Sequence[PanelItem], metrics: Sequence[dict[str, Any]]) -> list[dict]:
    """Per tissue bias and CV of every (item, fitter, parameter) row, from the estimates."""
    out = []
    trees: dict[Path, Any] = {}
    for row in metrics:
        if row["parameter"] not in PARAMETERS:
            continue
        item = next(i for i in items if i.label == row["item"])
        if item.run_dir not in trees:
            trees[item.run_dir] = open_results(item.run_dir)
        ds = trees[item.run_dir][row["case"]].to_dataset()
        p = row["parameter"]
        truth_name = f"true_{p}"
        if truth_name not in ds:
            continue
        f = list(ds["fitter"].values).index(row["fitter"])
        values, truth = ds[p][f].values, ds[truth_name].values
        success, tissue = ds["success"][f].values, ds["tissue"].values
        replicate = ds["replicate"].values
        for t in np.unique(tissue):
            sel = tissue == t
            m = case_metrics(values[sel], truth[sel], success[sel], tissue[sel],
                             replicate[sel], parameter=p, n_boot=10)  # fmt: skip
            out.append({
                "item": row["item"], "fitter": row["fitter"], "parameter": p,
                "tissue": int(t), "truth": float(truth[sel][0]),
                "failure_rate": m["failure_rate"], "rel_bias_pct": m["rel_bias_pct"],
                "cv_pct": m["cv_pct"],
            })  # fmt: skip
    return out


def _summaries(tissues: Sequence[dict]) -> dict[tuple[str, str, str], dict[str, float]]:
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for r in tissues:
        groups.setdefault((r["item"], r["fitter"], r["parameter"]), []).append(r)
    out = {}
    for key, rows in groups.items():
        rb = np.abs([r["rel_bias_pct"] for r in rows])
        cv = np.array([r["cv_pct"] for r in rows])
        rb, cv = rb[np.isfinite(rb)], cv[np.isfinite(cv)]
        out[key] = {
            "median_tissue_abs_rel_bias_pct": float(np.median(rb)) if rb.size else math.nan,
            "worst_tissue_abs_rel_bias_pct": float(np.max(rb)) if rb.size else math.nan,
            "median_tissue_cv_pct": float(np.median(cv)) if cv.size else math.nan,
            "worst_tissue_cv_pct": float(np.max(cv)) if cv.size else math.nan,
        }
    return out


def _csv(columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow(["" if r.get(c) is None else _cell(r.get(c)) for c in columns])
    return buf.getvalue()


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else repr(v)
    return str(v)


def _g(v: Any, fmt: str = ".3g") -> str:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return "–" if not math.isfinite(v) else format(v, fmt)
    return str(v) if v not in (None, "") else "–"


def leaderboard(
    out: str | Path,
    *,
    specs: Sequence[str] = (),
    installed: bool = True,
    panel: str | Path | None = None,
    replicates: int | None = None,
    work: str | Path | None = None,
    command: str = "",
    log: Any = None,
) -> dict[str, Any]:
    """Run the panel, the OSIPI cases and the timing pass; write the leaderboard to ``out``.

    Parameters
    ----------
    out : str or Path
        Folder for ``index.html``, ``summary.md``, ``leaderboard.csv``, ``tissues.csv`` and
        ``fitters.csv`` (created; existing files of these names are replaced).
    specs : sequence of str
        Fitter names or ``module:attribute`` specs to add to the registered fitters.
    installed : bool
        Run every registered fitter too (False: only ``specs``).
    panel : str or Path, optional
        Folder of panel scenarios (default :func:`default_panel`).
    replicates : int, optional
        Noise replicates per tissue for every panel scenario (default: each file's).
    work : str or Path, optional
        Folder for the engine's run directories (kept; one per scenario, must be new or
        the same run); default a temporary folder, removed afterwards.
    command : str
        The command shown at the top of the report.
    log : callable, optional
        Called with a line of progress text.

    Returns
    -------
    dict
        ``rows`` (leaderboard.csv), ``fitters`` (fitters.csv), ``tissues``, ``failures``
        (the runs' failures.csv rows) and ``seconds`` (wall time of the whole leaderboard).
    """
    t_start = time.perf_counter()
    panel = Path(panel) if panel is not None else default_panel()
    if not panel.is_dir():
        raise ConfigError(f"panel = {str(panel)!r}: no such folder of scenario files")
    if replicates is not None and replicates < 2:
        raise ConfigError(f"replicates = {replicates!r}: expected an integer >= 2 (for the CV)")
    out = Path(out)
    entrants = discover(specs, installed=installed)
    tmp = None
    if work is None:
        tmp = tempfile.mkdtemp(prefix="phantomdce-leaderboard-")
        work = tmp
    say = log or (lambda _msg: None)
    try:
        items, metrics, failures = _run_panel(panel, Path(work), entrants, replicates, say)
        tissues = _tissue_rows(items, metrics)
        say(f"{time.perf_counter() - t_start:.0f} s: panel done; timing")
        timing = time_fitters(entrants, items)
        say(f"{time.perf_counter() - t_start:.0f} s: timing done; OSIPI cases")
        for e in entrants:
            if e.info is not None:
                t0 = time.perf_counter()
                e.results = osipi_score(e)
                say(f"  OSIPI {e.name}: {time.perf_counter() - t0:.1f} s")
    finally:
        close_workers()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    summary = _summaries(tissues)
    rows = []
    for m in metrics:
        if m["parameter"] not in PARAMETERS:
            continue
        key = (m["item"], m["fitter"], m["parameter"])
        rows.append({c: m.get(c) for c in COLUMNS} | summary.get(key, {}))
    fitters = []
    failed_fitters = {f["fitter"] for f in failures}
    for e in entrants:
        if e.info is None:
            fitters.append({"fitter": e.name, "source": e.run_as, "status": LOAD_FAILURE,
                            "osipi_error": e.error, "timing_error": e.error})  # fmt: skip
            continue
        package, version = _package(e.info)
        status = "ran"
        if e.name in failed_fitters:
            status = "failed on some chunks (failures.csv of its run)"
        fitters.append(
            {"fitter": e.name, "model": e.info.model, "input": e.info.input,
             "method": e.info.method, "source": e.info.source, "package": package,
             "package_version": version, "fitter_version": e.info.version, "status": status}
            | e.results | timing.get(e.name, {})
        )  # fmt: skip
    seconds = time.perf_counter() - t_start
    result = {"rows": rows, "fitters": fitters, "tissues": tissues, "failures": failures,
              "seconds": seconds, "items": [i.label for i in items]}  # fmt: skip
    _write(out, result, command or "phantomdce leaderboard -o " + str(out))
    return result


def _versions(f: dict[str, Any]) -> str:
    """The package's version, and the fitter's where it says more (the wrapped package's).

    An adapter's fitter version names the package it wraps (``0.1.0+qbipy1.3.8``): the
    version a vendor compares.

    >>> _versions({"package_version": "0.1.0", "fitter_version": "0.1.0+qbipy1.3.8"})
    '0.1.0 (fitter 0.1.0+qbipy1.3.8)'
    >>> _versions({"package_version": "0.6.20", "fitter_version": "0.6.20"})
    '0.6.20'
    """
    package, fitter = str(f.get("package_version", "")), str(f.get("fitter_version", ""))
    return package if fitter in ("", package) else f"{package} (fitter {fitter})"


def _write(out: Path, result: dict[str, Any], command: str) -> None:
    from phantomdce.report.render import html_page, html_table, md_table

    out.mkdir(parents=True, exist_ok=True)
    (out / "leaderboard.csv").write_text(_csv(COLUMNS, result["rows"]), encoding="utf-8")
    (out / "fitters.csv").write_text(_csv(FITTER_COLUMNS, result["fitters"]), encoding="utf-8")
    tcols = ("item", "fitter", "parameter", "tissue", "truth", "failure_rate", "rel_bias_pct",
             "cv_pct")  # fmt: skip
    (out / "tissues.csv").write_text(_csv(tcols, result["tissues"]), encoding="utf-8")
    fcols = ("scenario", "case", "chunk", "fitter", "error")
    (out / "failures.csv").write_text(_csv(fcols, result["failures"]), encoding="utf-8")

    fhead = ["fitter", "model", "package", "version", "OSIPI pass", "time/voxel (s)",
             "fits timed", "time ratio to numpy Murase", "status"]  # fmt: skip
    frows = []
    for f in result["fitters"]:
        if f.get("status") == LOAD_FAILURE:
            frows.append([f["fitter"], "–", "–", "–", "–", "–", "–", "–", f"{LOAD_FAILURE}: "
                          + f.get("osipi_error", "")])  # fmt: skip
            continue
        osipi = (f"{f['osipi_passed']}/{f['osipi_cases']}" if f.get("osipi_passed") != ""
                 else (f.get("osipi_error") or "–"))  # fmt: skip
        status = f["status"] if not f.get("timing_error") else f"timing: {f['timing_error']}"
        frows.append([f["fitter"], f["model"], f["package"], _versions(f), osipi,
                      _g(f.get("time_per_voxel_s", math.nan)), str(f.get("timing_fits", "–")),
                      _g(f.get("time_ratio", math.nan)), status])  # fmt: skip
    thead = ["item", "fitter", "param", "failure rate", "bias", "rel. bias %", "CV %",
             "efficiency", "|rel. bias| % median / worst tissue",
             "CV % median / worst tissue"]  # fmt: skip
    trows = [
        [r["item"], r["fitter"], r["parameter"], _g(r["failure_rate"]), _g(r["bias"]),
         _g(r["rel_bias_pct"]), _g(r["cv_pct"]), _g(r["efficiency"]),
         f"{_g(r.get('median_tissue_abs_rel_bias_pct'))} / "
         f"{_g(r.get('worst_tissue_abs_rel_bias_pct'))}",
         f"{_g(r.get('median_tissue_cv_pct'))} / {_g(r.get('worst_tissue_cv_pct'))}"]
        for r in result["rows"]
    ]  # fmt: skip
    baseline = sorted({f.get("baseline_time_per_voxel_s") for f in result["fitters"]
                       if isinstance(f.get("baseline_time_per_voxel_s"), float)})  # fmt: skip
    intro = (
        "Every installed fitter on the leaderboard panel (scenarios/leaderboard/), run through "
        "phantomdce's engine: ESNR 2022 recommended protocol at SNR 30, 20 and 10, dt 10 s, "
        "and 2CXM tissue fitted with the extended Tofts model. Each fitter fits the items its "
        "model can fit (extended Tofts fitters all of them; 2CXM fitters the 2CXM tissue); "
        "plug-ins run in a child process. Bias, CV (pooled over tissues), failure rate and "
        "efficiency (Cramér-Rao bound variance over measured variance, where the bound "
        "applies) are the runs' metrics.csv; per-tissue summaries from the estimates. "
        "OSIPI pass: cases of the fitter's model within OSIPI's tolerances. Time per voxel: "
        "the best of up to 3 fits of the same data after a warm-up, as a ratio to a "
        "vectorised numpy Murase "
        "linear solve (extended Tofts) of the same data in the same run"
        + (f" ({', '.join(_g(b) for b in baseline)} s per voxel)" if baseline else "")
        + "; an isolated plug-in's time includes the transfer to its child process. "
        f"Whole leaderboard: {result['seconds']:.0f} s."
    )
    header = [("command", command), ("phantomdce", phantomdce.__version__),
              ("python", sys.version.split()[0]), ("date", time.strftime("%Y-%m-%d"))]  # fmt: skip
    body = (
        f"<p>{_esc(intro)}</p><h2>Fitters</h2>" + html_table(fhead, frows)
        + "<h2>Panel: Ktrans, ve, vp</h2>" + html_table(thead, trows)
    )  # fmt: skip
    (out / "index.html").write_text(html_page("Fitter leaderboard", header, body),
                                    encoding="utf-8")  # fmt: skip
    md = [
        "# Fitter leaderboard",
        "",
        "```",
        command,
        "```",
        "",
        f"phantomdce {phantomdce.__version__}, Python {sys.version.split()[0]}.",
        "",
        intro,
        "",
        "## Fitters",
        "",
        md_table(fhead, frows),
        "",
        "## Panel: Ktrans, ve, vp",
        "",
        md_table(thead, trows),
        "",
    ]
    (out / "summary.md").write_text("\n".join(md), encoding="utf-8")


def _esc(text: str) -> str:
    from phantomdce.report.render import html_escape

    return html_escape(text)


