"""Command-line interface: ``phantomdce simulate``, ``phantomdce export-nifti``."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import phantomdce

__all__ = ["main"]


def _progress(quiet: bool):
    if quiet:
        return None
    start = time.perf_counter()

    def report(done: int, total: int) -> None:
        width = 30
        filled = int(width * done / total)
        elapsed = time.perf_counter() - start
        eta = elapsed / done * (total - done)
        sys.stderr.write(
            f"\r  [{'#' * filled}{'.' * (width - filled)}] {done}/{total} cases"
            f"  {elapsed:5.1f} s elapsed, ~{eta:4.0f} s left"
        )
        if done == total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    return report


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
        f" ({root.attrs['replicates']} noise replicates per tissue)",
    ]
    keys = list(root.attrs.get("sweep_keys", []))
    header = f"  {'case':<10}" + "".join(f"{k:>16}" for k in keys)
    header += f"{'frames':>8}{'peak ca mM':>12}{'peak ct mM':>12}{'SNR':>8}"
    lines.append(header)
    for name in root["case_name"].values:
        ds = tree[str(name)].ds
        row = f"  {name!s:<10}" + "".join(f"{ds.attrs[k]!s:>16}" for k in keys)
        ct_peak = float(np.asarray(ds["ct"].max()))
        row += f"{ds.sizes['time']:>8}{float(ds['ca'].max()):>12.3f}{ct_peak:>12.3f}"
        row += f"{ds.attrs['snr']!s:>8}"
        lines.append(row)
    return "\n".join(lines)


def _cmd_simulate(args: argparse.Namespace) -> int:
    from phantomdce.dro.scenario import load_scenario
    from phantomdce.dro.store import write_dro

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
    write_dro(scenario, out, overwrite=args.overwrite, progress=_progress(args.quiet))
    elapsed = time.perf_counter() - t0
    print(_summary(out))
    n = n_cases * scenario.n_voxels
    print(f"  {n} voxel curves in {elapsed:.1f} s ({n / elapsed:,.0f} curves/s)")
    return 0


def _cmd_export_nifti(args: argparse.Namespace) -> int:
    from phantomdce.dro.nifti import export_nifti

    written = export_nifti(args.store, args.output, case=args.case, overwrite=args.overwrite)
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

    p = sub.add_parser("export-nifti", help="export one case of a DRO store as NIfTI + JSON")
    p.add_argument("store", help="DRO .zarr store")
    p.add_argument("-o", "--output", required=True, help="output directory")
    p.add_argument("--case", default=None, help="case node name (default: the first case)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export")
    p.set_defaults(func=_cmd_export_nifti)

    p = sub.add_parser("fitters", help="list the built-in and plug-in fitters")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(func=_cmd_fitters)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    from phantomdce.dro.config import ConfigError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ConfigError, FileExistsError, FileNotFoundError) as exc:
        print(f"phantomdce: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
