"""The ``phantomdce leaderboard`` subcommand's arguments (the work: :mod:`phantomdce.leaderboard`).

Kept apart so that building the command line loads no engine or estimation module:
``phantomdce simulate`` and ``phantomdce export`` stay on the truth side.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

__all__ = ["add_parser"]


def add_parser(sub: Any) -> None:
    """Add ``phantomdce leaderboard`` to the CLI's subparsers."""
    p = sub.add_parser(
        "leaderboard",
        help="every installed fitter on the fixed leaderboard panel and the OSIPI cases",
        description="The fitter leaderboard: every installed fitter on one fixed panel.",
    )
    p.add_argument("-o", "--output", required=True, help="report folder, e.g. reports/fitters")
    p.add_argument("--fitters", nargs="*", default=[], metavar="SPEC",
                   help="more fitters: registry names or module:attribute specs (spaces or"
                   " commas between them)")  # fmt: skip
    p.add_argument("--only", action="store_true",
                   help="only the --fitters given, not every installed fitter")  # fmt: skip
    p.add_argument("--panel", default=None, help="folder of panel scenarios")
    p.add_argument("--replicates", type=int, default=None,
                   help="noise replicates per tissue (default: each scenario's)")  # fmt: skip
    p.add_argument("--work", default=None, help="keep the engine's runs in this folder")
    p.set_defaults(func=_cmd_leaderboard)


def _cmd_leaderboard(args: argparse.Namespace) -> int:
    from phantomdce.leaderboard import LOAD_FAILURE, leaderboard

    command = "phantomdce " + " ".join(sys.argv[1:]) if sys.argv[1:] else ""
    if command and os.environ.get("PYTHONPATH"):  # where a spec's module was found
        command = f"PYTHONPATH={os.environ['PYTHONPATH']} {command}"
    specs = [s for arg in args.fitters for s in arg.split(",") if s.strip()]
    res = leaderboard(args.output, specs=specs, installed=not args.only, panel=args.panel,
                      replicates=args.replicates, work=args.work, command=command,
                      log=lambda msg: print(msg, file=sys.stderr, flush=True))  # fmt: skip
    loaded = sum(1 for f in res["fitters"] if f.get("status") != LOAD_FAILURE)
    print(f"{loaded} fitters on {len(res['items'])} panel items in {res['seconds']:.0f} s;"
          f" wrote {args.output}/index.html, summary.md, leaderboard.csv, fitters.csv")  # fmt: skip
    return 0

