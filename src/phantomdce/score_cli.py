"""The ``phantomdce score`` subcommand's arguments (the work: :mod:`phantomdce.engine.score`).

Kept apart so that building the command line loads no estimation module: ``phantomdce
simulate`` and ``phantomdce export`` stay on the truth side.
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_parser"]


def add_parser(sub: Any) -> None:
    """Add ``phantomdce score`` to the CLI's subparsers."""
    p = sub.add_parser(
        "score", help="score another program's parametric maps of a `phantomdce export`"
    )
    p.add_argument("export", help="folder written by `phantomdce export`")
    p.add_argument(
        "--maps",
        required=True,
        help="PARAM=PATH,... (NIfTI, DICOM or CSV; {case} in a path: the case folder)",
    )
    p.add_argument("--name", default="external", help="the software's name (its fitter name)")
    p.add_argument("-o", "--output", required=True, help="result folder (as `phantomdce run`)")
    p.add_argument("--report", default=None, metavar="DIR", help="also write the report")
    p.set_defaults(func=_cmd_score)


def _cmd_score(args: argparse.Namespace) -> int:
    from phantomdce.engine.score import cli_score

    return cli_score(args)
