"""Command-line interface: ``phantomdce simulate``, ``phantomdce export-nifti``."""

from __future__ import annotations

import argparse
import errno
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import phantomdce

__all__ = ["main", "EXIT_USAGE", "EXIT_FITTER_FAILED", "EXIT_FAULT", "EXIT_INTERRUPTED"]

#: Exit status of a refused command: a bad scenario, path, option or fitter spec.
EXIT_USAGE = 2
#: Exit status of a finished run in which a fitter failed on every chunk (see failures.csv).
EXIT_FITTER_FAILED = 3
#: Exit status of a command stopped by its surroundings: a full disk, a file-size limit, a lost
#: dask scheduler, a damaged store (one sentence says which, and what to do; a run keeps its
#: finished chunks and resumes).
EXIT_FAULT = 4
#: Exit status after Ctrl-C (128 + SIGINT, as a shell reports it).
EXIT_INTERRUPTED = 130


def _progress(quiet: bool, desc: str = "simulating", unit: str = "case"):
    """A progress callback ``(done, total)`` and its closer.

    A tqdm bar on stderr when it is a terminal; nothing when ``quiet`` or redirected.
    """
    if quiet or not sys.stderr.isatty():
        return None, lambda: None
    from tqdm import tqdm

    bar = tqdm(total=0, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True)

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    return update, bar.close


def _phantom_summary(path: Path) -> str:
    tree = phantomdce.open_dro(path)
    root = tree.ds
    keys = list(root.attrs.get("sweep_keys", []))
    lines = [
        f"phantom DRO store: {path}",
        f"  scenario {root.attrs['scenario']!r}, seed {root.attrs['seed']},"
        f" phantomdce {root.attrs['phantomdce_version']}; {root.sizes['case']} cases, each"
        " the whole acquired image as voxels, with acquired/ and truth/ grids",
    ]
    for i, name in enumerate(root["case_name"].values):
        ds = tree[str(name)].ds
        values = " ".join(f"{k}={root[k].values[i]}" for k in keys)
        grid = " x ".join(str(n) for n in ds.attrs["grid_shape"])
        lines.append(
            f"  {name!s:<10} {values}: grid {grid} (slice, y, x), {ds.sizes['time']} frames,"
            f" noise sigma {ds.attrs['noise_sigma']:.3g}, {ds.attrs['carotid_voxels']}"
            " carotid voxels"
        )
    return "\n".join(lines)


def _summary(path: Path) -> str:
    import numpy as np

    tree = phantomdce.open_dro(path)
    root = tree.ds
    lines = [
        f"DRO store: {path}",
        f"  scenario {root.attrs['scenario']!r} (hash {root.attrs['scenario_hash']}),"
        f" model {root.attrs['model']}, seed {root.attrs['seed']},"
        f" phantomdce {root.attrs['phantomdce_version']}",
        f"  {root.sizes['case']} cases x {root.attrs['n_voxels_per_case']} voxels"
        f" ({root.attrs['replicates']} noise replicates per tissue);"
        " max ca, max ct: largest true plasma AIF and noise-free tissue concentration",
    ]
    keys = list(root.attrs.get("sweep_keys", []))
    units = {k: root[k].attrs.get("units", "") for k in keys}
    labels = {k: k + (f" [{units[k]}]" if units[k] not in ("", "1") else "") for k in keys}
    width = {k: max(18, len(labels[k]) + 2) for k in keys}  # "scanner.<key>" is long
    header = f"  {'case':<10}" + "".join(f"{labels[k]:>{width[k]}}" for k in keys)
    header += f"{'frames':>8}{'max ca mM':>11}{'max ct mM':>11}"
    header += "" if "snr" in keys else f"{'SNR':>8}"
    lines.append(header)
    for name in root["case_name"].values:
        ds = tree[str(name)].ds
        values = {**ds.attrs, **ds.attrs.get("case_values", {})}  # "scanner.<key>" too
        row = f"  {name!s:<10}" + "".join(f"{values[k]!s:>{width[k]}}" for k in keys)
        ct_peak = float(np.asarray(ds["ct"].max()))
        row += f"{ds.sizes['time']:>8}{float(ds['ca'].max()):>11.3f}{ct_peak:>11.3f}"
        snr = ds.attrs["snr"]
        snr = f"{snr:.4g}" if isinstance(snr, float) and len(str(snr)) > 7 else str(snr)
        row += "" if "snr" in keys else f"{snr:>8}"
        lines.append(row)
    return "\n".join(lines)


def _check_output_dir(path: str | Path, option: str = "-o") -> Path:
    """Refuse an output path that is not a folder (or cannot become one) before any work."""
    from phantomdce.dro.config import ConfigError

    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{option} {out}: exists and is a file; expected a folder (new or empty)")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"{option} {out}: {parent} is a file, not a folder")
            break
    return out


def _check_scheduler(scheduler: str | None) -> None:
    """Refuse a ``--scheduler`` whose package is not installed, before anything is written."""
    from phantomdce.engine.run import check_scheduler

    check_scheduler(scheduler)


def _check_report_target(args: argparse.Namespace) -> None:
    """Before a run: the report folder can be written and the scenario's report is known.

    A scenario without ``[recommendation]`` gets a plain report (metrics tables and
    figures, no verdict); a ``[recommendation]`` table with a bad key is refused here, not
    after the sweep.
    """
    import tomllib

    from phantomdce.report.results import parse_recommendation

    if not args.report:
        return
    _check_output_dir(args.report, "--report")
    try:
        raw = tomllib.loads(Path(args.scenario).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return  # the run reports the problem with the file
    if "include" in raw:  # a study: its scenarios are checked by the study
        return
    if "recommendation" in raw:
        parse_recommendation(raw["recommendation"], args.scenario)
    elif not args.quiet:
        print(
            f"note: {args.scenario} has no [recommendation]: the report will show the metrics"
            " (tables and figures) without a verdict",
            file=sys.stderr,
        )


def _failed_fitters(out: Path, n_units: int) -> dict[str, str]:
    """Fitters that failed on every one of the ``n_units`` chunks of a run: first error each."""
    import csv

    path = out / "failures.csv"
    if n_units <= 0 or not path.exists():
        return {}
    chunks: dict[str, set[tuple[str, str]]] = {}
    first: dict[str, str] = {}
    with open(path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            fitter = row.get("fitter", "")
            chunks.setdefault(fitter, set()).add((row.get("case", ""), row.get("chunk", "")))
            first.setdefault(fitter, row.get("error", ""))
    return {f: first[f] for f, c in chunks.items() if len(c) >= n_units}


def _report_failed_fitters(out: Path, n_units: int) -> int:
    """Say which fitters failed on every chunk of a run; the exit status (0 or 3)."""
    failed = _failed_fitters(out, n_units)
    if not failed:
        return 0
    for fitter, error in failed.items():
        print(
            f"phantomdce: error: fitter {fitter!r} failed on every chunk ({n_units} of"
            f" {n_units}) of {out}: it produced no estimates; first error: {error}; see"
            f" {out}/failures.csv",
            file=sys.stderr,
        )
    return EXIT_FITTER_FAILED


def _cmd_simulate(args: argparse.Namespace) -> int:
    from phantomdce.dro.scenario import load_scenario
    from phantomdce.dro.store import write_dro

    _check_output_dir(args.output)
    if _is_phantom(args.scenario):
        from phantomdce.phantom.scenario import simulate_phantom_scenario

        update, close = _progress(args.quiet)
        try:
            out = simulate_phantom_scenario(
                args.scenario, args.output, overwrite=args.overwrite, progress=update
            )
        finally:
            close()
        print(_phantom_summary(out))
        return 0
    scenario = load_scenario(args.scenario)
    out = Path(args.output)
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"{out} exists: use --overwrite to replace it")
    n_cases = len(scenario.cases())
    if not args.quiet:
        print(
            f"simulating {scenario.name!r}: {n_cases} cases x {scenario.n_voxels} voxels",
            file=sys.stderr,
        )
    t0 = time.perf_counter()
    update, close = _progress(args.quiet)
    try:
        write_dro(scenario, out, overwrite=args.overwrite, progress=update)
    finally:
        close()
    elapsed = time.perf_counter() - t0
    print(_summary(out))
    n = n_cases * scenario.n_voxels
    print(f"  {n} voxel curves in {elapsed:.1f} s ({n / elapsed:,.0f} curves/s)")
    return 0


def _metrics_summary(
    rows: list[dict],
    labels: dict[str, str] | None = None,
    params: tuple[str, ...] = ("Ktrans", "ve", "vp"),
) -> str:
    labels = labels or {}
    width = max([10, *(len(v) for v in labels.values())])
    lines = [
        f"  {'case':<{width}} {'fitter':<28} {'param':<7} {'bias':>10} {'rel bias %':>11}"
        f" {'CV %':>8} {'within tol':>11} {'failures':>9} {'s/voxel':>9}"
    ]
    for r in rows:
        if r["parameter"] not in params:
            continue
        lines.append(
            f"  {labels.get(r['case'], r['case']):<{width}} {r['fitter']:<28}"
            f" {r['parameter']:<7} {r['bias']:>10.4g}"
            f" {r['rel_bias_pct']:>11.3g} {r['cv_pct']:>8.3g} {r['within_tol']:>11.2f}"
            f" {r['failure_rate']:>9.3f} {r['fit_time_per_voxel_s']:>9.2g}"
        )
    return "\n".join(lines)


def _cmd_run(args: argparse.Namespace) -> int:
    from phantomdce.engine.study import is_study

    _check_output_dir(args.output)
    _check_scheduler(args.scheduler)
    _check_report_target(args)
    if is_study(args.scenario):
        return _cmd_run_study(args)
    from phantomdce.engine.run import execute, finalize, plan_run

    fitters = [f.strip() for f in args.fitters.split(",") if f.strip()] if args.fitters else None
    plan = plan_run(args.scenario, args.output, fitters=fitters)
    pending = plan.pending()
    for case, chunk, why in plan.repaired:
        print(f"note: {plan.out}: case {case}, chunk {chunk}: {why}; recomputing it",
              file=sys.stderr)  # fmt: skip
    if not args.quiet:
        resumed = len(plan.units) - len(pending)
        note = f", resuming: {resumed} of {len(plan.units)} chunks already done" if resumed else ""
        sc = plan.scenario
        from phantomdce.engine.run import store_bytes

        size = (
            f"{sc.subjects} phantom subjects x {sc.replicates} acquisitions"
            if plan.phantom
            else f"{sc.n_voxels} voxels (estimates up to {store_bytes(plan) / 1e6:.3g} MB)"
        )
        print(
            f"run {sc.name!r}: {len(sc.cases())} cases x {size},"
            f" fitters {', '.join(i.name for i in plan.fitters)} -> {plan.out}{note}",
            file=sys.stderr,
        )
        from phantomdce.engine.run import estimate_seconds

        workers = (args.workers or os.cpu_count() or 1) if args.scheduler else 1
        eta = estimate_seconds(plan, workers=workers)
        if eta is not None:
            print(
                f"  estimated time on this machine: about {_duration(eta)} (from a"
                " 128-voxel sample of the first case; plug-ins run in their own process"
                " are not timed)",
                file=sys.stderr,
            )
    update, close = _progress(args.quiet, "fitting", "subject" if plan.phantom else "chunk")
    t0 = time.perf_counter()
    try:
        execute(plan, scheduler=args.scheduler, workers=args.workers, progress=update)
        rows = finalize(plan)
    finally:
        close()
        plan.release()
    elapsed = time.perf_counter() - t0
    print(f"results: {plan.out}/estimates.zarr, {plan.out}/metrics.csv")
    labels = {
        c.name: " ".join(f"{k}={v}" for k, v in c.values.items()) or c.name
        for c in plan.scenario.cases()
    }
    print("  bias in the parameter's units (Ktrans /min; ve, vp fractions); CV over replicates")
    print(_metrics_summary(rows, labels))
    n_failed = _count_failures(plan.out)
    if n_failed:
        print(f"  {n_failed} fitter chunks failed: see {plan.out}/failures.csv")
    if plan.phantom:
        from phantomdce.engine.run import open_results

        tree = open_results(plan.out)
        n = sum(tree[c.name].sizes.get("voxel", 0) for c in plan.scenario.cases())
    else:
        n = len(plan.scenario.cases()) * plan.scenario.n_voxels
    print(f"  {n} voxel curves in {elapsed:.1f} s")
    if args.report:
        _write_report(plan.out, Path(args.report), argv_command(args))
    return _report_failed_fitters(plan.out, len(plan.units))


def _duration(seconds: float) -> str:
    """A duration for people: ``"40 s"``, ``"12 min"``, ``"3.5 h"``."""
    if seconds < 90:
        return f"{max(seconds, 1):.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _count_failures(out: Path) -> int:
    import csv

    path = out / "failures.csv"
    if not path.exists():
        return 0
    with open(path, newline="", encoding="utf-8") as fh:
        return sum(1 for _ in csv.DictReader(fh))


def _is_phantom(path: str) -> bool:
    import tomllib

    from phantomdce.phantom.scenario import is_phantom_scenario

    try:
        return is_phantom_scenario(tomllib.loads(Path(path).read_text(encoding="utf-8")))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return False  # the regular path reports the problem with the file


def argv_command(args: argparse.Namespace) -> str:
    """The command line that produced a result, for the report's header."""
    import shlex

    return "phantomdce " + " ".join(shlex.quote(a) for a in args.argv)


def _cmd_run_study(args: argparse.Namespace) -> int:
    from phantomdce.engine.study import load_study, run_study

    study = load_study(args.scenario)
    fitters = [f.strip() for f in args.fitters.split(",") if f.strip()] if args.fitters else None
    if not args.quiet:
        print(
            f"study {study.name!r}: {len(study.scenarios)} scenarios -> {args.output}",
            file=sys.stderr,
        )
    bars: dict[str, tuple] = {}

    def progress(name: str, done: int, total: int) -> None:
        if name not in bars:
            for _, close in bars.values():
                close()
            bars[name] = _progress(args.quiet, name, "chunk")
        update = bars[name][0]
        if update is not None:
            update(done, total)

    t0 = time.perf_counter()
    try:
        rows = run_study(
            args.scenario,
            args.output,
            fitters=fitters,
            scheduler=args.scheduler,
            workers=args.workers,
            progress=progress,
        )
    finally:
        for _, close in bars.values():
            close()
    print(f"study {study.name!r}: {len(rows)} scenarios in {time.perf_counter() - t0:.1f} s")
    for name, r in rows.items():
        print(f"  {Path(args.output) / name}/metrics.csv ({len(r)} rows)")
    if args.report:
        _write_report(Path(args.output), Path(args.report), argv_command(args))
    status = 0
    for name in rows:
        run_dir = Path(args.output) / name
        n_units = len(list((run_dir / "progress").glob("*.json")))
        status = max(status, _report_failed_fitters(run_dir, n_units))
    return status


def _write_report(out: Path, dest: Path, command: str) -> None:
    from phantomdce.report.literature import check_claims
    from phantomdce.report.model import Criterion
    from phantomdce.report.plain import has_recommendation, write_plain_report
    from phantomdce.report.render import write_report
    from phantomdce.report.repeatability import repeatability_blocks
    from phantomdce.report.results import collect_results, run_dirs
    from phantomdce.report.verdict import judge_all

    info = _study_info(out)
    dirs = run_dirs(out)
    if dirs and not any(has_recommendation(d) for d in dirs):
        paths = write_plain_report(
            dirs,
            dest,
            title=f"phantomdce report: {info.get('study', out.name)}",
            command=command,
            version=phantomdce.__version__,
            scenario_info=info,
        )
        print("no [recommendation] in these results: a plain report (metrics, no verdict)")
        print(f"report: {paths['html']}")
        return
    results = collect_results(out)
    criterion = Criterion()
    paths = write_report(
        results,
        dest,
        criterion=criterion,
        title=f"phantomdce report: {info.get('study', out.name)}",
        command=command,
        version=phantomdce.__version__,
        scenario_info=info,
        literature=check_claims(results),
        extra_sections=repeatability_blocks(dirs, dest / "figures"),
    )
    print("verdicts (criterion: |relative bias| <= 10% and CV <= 20% for Ktrans and ve):")
    for result in results:
        for v in judge_all(result, criterion):
            print(f"  {result.recommendation.title} [{v.fitter}]: {v.summary}")
    print(f"report: {paths['html']}")


def _study_info(out: Path) -> dict[str, str]:
    """Header lines of a report: the study, its scenarios with their hashes and sizes."""
    import json

    from phantomdce.report.results import run_dirs

    info: dict[str, str] = {}
    study = out / "study.toml"
    if study.exists():
        import tomllib

        raw = tomllib.loads(study.read_text())
        info["study"] = f"{raw.get('name', out.name)}: {raw.get('description', '')}"
    for d in run_dirs(out):
        meta = json.loads((d / "run.json").read_text())
        sc = meta["scenario"]
        info[f"scenario {meta['scenario_name']}"] = (
            f"hash {meta['scenario_hash']}, seed {sc['seed']}, {sc['replicates']} replicates"
            f" per tissue, fitters {', '.join(f['name'] for f in meta['fitters'])}"
        )
    return info


def _cmd_report(args: argparse.Namespace) -> int:
    _write_report(Path(args.run), Path(args.output), argv_command(args))
    return 0


def _cmd_baseline(args: argparse.Namespace) -> int:
    import json

    from phantomdce.engine.gate import make_baseline
    from phantomdce.files import write_atomic

    baseline = make_baseline(args.run)
    write_atomic(args.output, json.dumps(baseline, indent=1))
    print(f"baseline of {len(baseline['metrics'])} metrics rows written to {args.output}")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    import json

    from phantomdce.dro.config import ConfigError
    from phantomdce.engine.gate import check_baseline, check_run

    try:
        baseline = json.loads(Path(args.baseline).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"{args.baseline} is not a phantomdce baseline: not JSON ({exc})"
        ) from None
    check_baseline(baseline, args.baseline)
    regressions = check_run(args.run, baseline)
    if not regressions:
        print(f"check passed: {len(baseline['metrics'])} rows no worse than {args.baseline}")
        return 0
    print(f"check FAILED: {len(regressions)} regressions against {args.baseline}")
    for r in regressions:
        print(f"  {r}")
    return 1


def _cmd_verify(args: argparse.Namespace) -> int:
    from phantomdce.engine.verify import verify_run

    out = Path(args.output)
    runs = sorted(p.parent for p in out.rglob("run.json")) if out.is_dir() else []
    if not runs:
        print(f"phantomdce: error: {out} holds no phantomdce run (no run.json)", file=sys.stderr)
        return 2
    bad = 0
    for run_dir in runs:
        report = verify_run(run_dir)
        if report.ok:
            print(f"ok: {run_dir}: {report.units} units match their digests")
        else:
            bad += 1
            print(report.message())
    return 1 if bad else 0


def _cmd_export_nifti(args: argparse.Namespace) -> int:
    from phantomdce.dro.nifti import export_nifti

    try:
        written = export_nifti(args.store, args.output, case=args.case, overwrite=args.overwrite)
    except FileExistsError as exc:
        raise FileExistsError(str(exc).replace("pass overwrite=True", "use --overwrite")) from None
    for p in written:
        print(p)
    return 0


def _cmd_fitters(args: argparse.Namespace) -> int:
    from phantomdce.fit.registry import DuplicateFitterError, list_fitters

    try:
        infos = list_fitters()
    except DuplicateFitterError as exc:
        print(f"phantomdce: error: {exc}", file=sys.stderr)
        return 2
    columns = ("name", "model", "input", "method", "version", "source")
    rows = [{c: getattr(info, c) for c in columns} for info in infos]
    if args.json:
        import json

        print(json.dumps(rows, indent=2))
        return 0
    widths = {c: max([len(c)] + [len(r[c]) for r in rows]) for c in columns}
    print("  ".join(f"{c:<{widths[c]}}" for c in columns).rstrip())
    for r in rows:
        print("  ".join(f"{r[c]:<{widths[c]}}" for c in columns).rstrip())
    if not rows:
        print("(no fitters installed)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``phantomdce`` command."""
    parser = argparse.ArgumentParser(
        prog="phantomdce",
        description="DCE-MRI digital reference objects that test protocol recommendations.",
    )
    parser.add_argument("--version", action="version", version=phantomdce.__version__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("simulate", help="simulate a scenario into a DRO zarr store")
    p.add_argument("scenario", help="scenario TOML file")
    p.add_argument("-o", "--output", required=True, help="output .zarr directory")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=_cmd_simulate)

    p = sub.add_parser("run", help="simulate, estimate and fit a scenario; store metrics")
    p.add_argument("scenario", help="scenario TOML file")
    p.add_argument("-o", "--output", required=True, help="result directory")
    p.add_argument(
        "--fitters", default=None, help="comma-separated fitter names or module:attribute specs"
    )
    p.add_argument(
        "--scheduler",
        default=None,
        help="'processes' or 'threads' (dask, local) or a dask.distributed address"
        " (tcp://host:8786); default: this process",
    )
    p.add_argument("--workers", type=int, default=None, help="workers for local dask schedulers")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar (for CI)")
    p.add_argument(
        "--report", default=None, metavar="DIR", help="also write the study report into DIR"
    )
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("report", help="write the HTML and Markdown report of a run or study")
    p.add_argument("run", help="result directory of `phantomdce run` (a run or a study)")
    p.add_argument("-o", "--output", required=True, help="report directory")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("baseline", help="save the accuracy of a finished run as a baseline")
    p.add_argument("run", help="result directory of `phantomdce run`")
    p.add_argument("-o", "--output", required=True, help="baseline JSON file")
    p.set_defaults(func=_cmd_baseline)

    p = sub.add_parser("check", help="fail (exit 1) if a run is less accurate than a baseline")
    p.add_argument("run", help="result directory of `phantomdce run`")
    p.add_argument("--baseline", required=True, help="baseline JSON from `phantomdce baseline`")
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser("export-nifti", help="export one case of a DRO store as NIfTI + JSON")
    p.add_argument("store", help="DRO .zarr store")
    p.add_argument("-o", "--output", required=True, help="output directory")
    p.add_argument("--case", default=None, help="case node name (default: the first case)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export")
    p.set_defaults(func=_cmd_export_nifti)

    p = sub.add_parser(
        "verify", help="check a run's (or study's) stored results against their digests"
    )
    p.add_argument("output", help="run or study output folder")
    p.set_defaults(func=_cmd_verify)

    from phantomdce import score_cli
    from phantomdce.dro import export as _export_cmd

    _export_cmd.add_parser(sub)
    score_cli.add_parser(sub)

    p = sub.add_parser("fitters", help="list the built-in and plug-in fitters")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(func=_cmd_fitters)

    from phantomdce.design import add_assess_parser

    add_assess_parser(sub)
    from phantomdce.leaderboard_cli import add_parser as add_leaderboard_parser

    add_leaderboard_parser(sub)
    from phantomdce.design import optimise as _optimise_cmd

    _optimise_cmd.add_parser(sub)
    return parser


# -- faults of the surroundings: one sentence each, never a traceback ---------------------

#: ``--scheduler`` values that run in this process or on dask's local schedulers.
_LOCAL_SCHEDULERS = (None, "local", "sync", "synchronous", "processes", "threads")
#: How long the search for a damaged chunk may take before the message goes without its name, s.
_DAMAGE_SEARCH_S = 30.0


def _again(args: argparse.Namespace) -> str:
    """What to do after the fault is mended: the same command (it resumes a run)."""
    if args.command == "run":
        return "run the same command again to resume"
    if args.command in ("simulate", "export-nifti") and not args.overwrite:
        return "run the same command again with --overwrite"
    return "run the same command again"


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions it was raised from or during, innermost last."""
    seen: list[BaseException] = []
    while exc is not None and not any(exc is s for s in seen):
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


def _raised_in(exc: BaseException, packages: tuple[str, ...]) -> bool:
    """True if a frame of ``exc``'s traceback lies in one of ``packages`` (by file path)."""
    import os
    import traceback

    marks = tuple(f"{os.sep}{p}{os.sep}" for p in packages)
    return any(
        any(m in frame.filename for m in marks) for frame in traceback.extract_tb(exc.__traceback__)
    )


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _disk_fault(exc: BaseException, args: argparse.Namespace) -> str | None:
    """A full disk or quota (ENOSPC, EDQUOT) or a file-size limit (EFBIG)."""
    from phantomdce.files import disk_fault

    e = disk_fault(exc)
    if e is None:
        return None
    # the file if the error names it; a write() names none (it may be a cache or a temporary
    # file outside the output folder, so the output folder is named as a hint, not as fact)
    folder = getattr(args, "output", None)
    where = f" while writing {e.filename}" if e.filename else ""
    hint = f" (the output goes to {folder})" if folder and not e.filename else ""
    error = f"[Errno {e.errno}] {e.strerror}"
    if e.errno == errno.EFBIG:
        return (
            f"a file reached this process's file-size limit{where} (`ulimit -f`, {error}):"
            f" raise or lift the limit{hint} and {_again(args)}"
        )
    return f"a disk is full{where} ({error}): free some space{hint} and {_again(args)}"


def _scheduler_fault(exc: BaseException, args: argparse.Namespace) -> str | None:
    """A ``dask.distributed`` scheduler that was lost during the run or never reached."""
    import concurrent.futures

    address = getattr(args, "scheduler", None)
    if address in _LOCAL_SCHEDULERS:
        return None
    for e in _chain(exc):
        lost = isinstance(e, concurrent.futures.CancelledError) or type(e).__name__ in (
            "CommClosedError",
            "StreamClosedError",
        )
        if lost:
            reason = getattr(e, "reason", None) or _one_line(e)
            return (
                f"lost the dask scheduler at {address}: {reason}; the finished chunks are kept:"
                f" start the scheduler and its workers again and {_again(args)}"
            )
        connect = isinstance(e, OSError | TimeoutError) and "connect" in str(e).lower()
        if connect and _raised_in(e, ("distributed",)):
            return (
                f"cannot reach the dask scheduler at {address} ({_one_line(e)}): start it (or"
                f" check the address) and {_again(args)}"
            )
    return None


def _zarr_stores(roots: list[Path]) -> list[Path]:
    """The zarr stores in or at ``roots`` (not descending into a store)."""
    import os

    stores: list[Path] = []
    for root in roots:
        if not root.is_dir():
            continue
        for folder, dirs, files in os.walk(root):
            if ".zgroup" in files or "zarr.json" in files:
                stores.append(Path(folder))
                dirs.clear()
            else:
                dirs.sort()
    return stores


def _damaged_files(roots: list[Path], limit: int = 3) -> list[Path]:
    """Files of the zarr stores under ``roots`` that cannot be read: metadata, then chunks.

    A chunk is damaged when zarr cannot decode it (truncated, garbled, emptied). A missing
    chunk reads as the fill value and is not found here. Stops after ``limit`` files or
    :data:`_DAMAGE_SEARCH_S` seconds.
    """
    import json
    import os

    import numpy as np
    import zarr

    found: list[Path] = []
    deadline = time.monotonic() + _DAMAGE_SEARCH_S
    stores = _zarr_stores(roots)
    meta_names = (".zgroup", ".zarray", ".zattrs", ".zmetadata", "zarr.json")
    for store in stores:
        for folder, _, files in os.walk(store):
            for name in sorted(f for f in files if f in meta_names):
                try:
                    json.loads(Path(folder, name).read_bytes())
                except (OSError, ValueError):
                    found.append(Path(folder, name))
    for store in stores:
        try:
            members = list(zarr.open_group(str(store), mode="r").members(max_depth=None))
        except Exception:  # noqa: BLE001 - a store zarr cannot open is damaged
            found.append(store)
            continue
        for _, node in members:
            if not isinstance(node, zarr.Array):
                continue
            for idx in np.ndindex(node.cdata_shape):
                if len(found) >= limit or time.monotonic() > deadline:
                    return found
                try:
                    node.get_block_selection(idx)
                except Exception:  # noqa: BLE001 - whatever the codec raises
                    found.append(store / node.path / node.metadata.encode_chunk_key(idx))
    return found[:limit]


def _store_fault(exc: BaseException, args: argparse.Namespace) -> str | None:
    """A store whose chunk (or metadata) cannot be decoded: name the file if it is found."""
    decode = codec = False
    for e in _chain(exc):
        if isinstance(e, RuntimeError | ValueError | TypeError):
            decode = decode or _raised_in(e, ("numcodecs",))
            codec = codec or decode or _raised_in(e, ("zarr",))
    if not codec:
        return None
    roots = [Path(getattr(args, k)) for k in ("output", "run", "store") if getattr(args, k, None)]
    damaged = _damaged_files(roots)
    if not damaged and not decode:
        return None  # raised in zarr, but no damage found: not a damaged store
    error = _one_line(exc)
    if args.command == "run":
        redo = "run the same command again to recompute"
    else:
        redo = "run the command that made the store (`phantomdce run` or `simulate`) again"
    if not damaged:
        where = " or ".join(str(r) for r in roots) or "the result folder"
        return f"the store in {where} is damaged ({error}); {redo}"
    files = ", ".join(str(p) for p in damaged)
    return (
        f"the store is damaged: {files} cannot be read ({error}); delete"
        f" {'them' if len(damaged) > 1 else 'it'} and {redo}"
    )


def _fault_sentence(exc: BaseException, args: argparse.Namespace) -> str | None:
    """One line for a fault of the surroundings, or None if ``exc`` is none of them."""
    for describe in (_disk_fault, _store_fault, _scheduler_fault):
        sentence = describe(exc, args)
        if sentence is not None:
            return sentence
    return None


def _quiet_dask_client(args: argparse.Namespace) -> None:
    """A lost scheduler is reported in one sentence: no logged traceback from the client."""
    if getattr(args, "scheduler", None) not in _LOCAL_SCHEDULERS:
        import logging

        try:
            import distributed.client  # noqa: F401 - its logging set-up first, then ours
        except ImportError:
            return  # check_scheduler says so
        logging.getLogger("distributed.client").setLevel(logging.CRITICAL)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status.

    A refused command (bad scenario, path, option) prints one line and returns
    :data:`EXIT_USAGE`; a fault of the surroundings (a full disk, a file-size limit, a lost
    dask scheduler, a damaged store) one line that says what happened and what to do, and
    returns :data:`EXIT_FAULT`; neither prints a traceback.
    """
    from phantomdce.dro.config import ConfigError

    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    _quiet_dask_client(args)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        # Ctrl-C: no traceback (it would end in whatever numba or dask kernel ran)
        what = (
            "run the same command again to resume"
            if args.command == "run"
            else "nothing was written; run the command again"
        )
        print(f"\nphantomdce: interrupted: {what}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        sentence = None if isinstance(exc, ConfigError) else _fault_sentence(exc, args)
        if sentence is not None:
            print(f"phantomdce: error: {sentence}", file=sys.stderr)
            return EXIT_FAULT
        if not isinstance(exc, ConfigError | ValueError | ImportError | OSError):
            raise
        # OSError: a path that exists, is missing, is a file where a folder is expected, ...
        print(f"phantomdce: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
