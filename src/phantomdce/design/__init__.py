"""Protocol design for a site's own scanner (issue 12, parts 4 and 5).

A top-level package like :mod:`phantomdce.engine`: it may use the truth side, the
estimation side, the engine and the report; nothing on the truth side imports it.

- :mod:`phantomdce.design.site`: a site's protocol, scanner, tissues, fitter and pipeline
  (``SITE.toml``).
- :mod:`phantomdce.design.assess`: ``phantomdce assess SITE.toml``, the one-page report of
  where a site's protocol stands.

This module stays light (no import of the estimation side, the engine or the report): the
command line builds its parser from it for every command.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "DEFAULT_PHASES",
    "DEFAULT_REPEATABILITY_SUBJECTS",
    "DEFAULT_REPLICATES",
    "add_assess_parser",
]

#: Noise replicates per tissue and arrival phase of ``assess``'s Monte Carlo (a small one:
#: the CV's standard error is about CV / sqrt(2 (replicates x phases - 1)), 6.5% of it).
DEFAULT_REPLICATES = 30
#: Bolus arrival phases over one frame interval pooled by ``assess``'s Monte Carlo (the
#: arrival at a site is not synchronised with its frames).
DEFAULT_PHASES = 4
#: Phantom subjects of assess's test-retest simulation (issue 15, part 4): each gives one
#: test-retest pair per tumour size; the study's scenario has 20 (about 1 s of CPU per
#: session and size at the ESNR protocol).
DEFAULT_REPEATABILITY_SUBJECTS = 4


def _cmd_assess(args: Any) -> int:
    from phantomdce.design.assess import cmd_assess

    return cmd_assess(args)


def add_assess_parser(sub: Any) -> None:
    """Add ``phantomdce assess SITE.toml -o DIR`` to the command line's subparsers."""
    p = sub.add_parser(
        "assess", help="one-page report of where a site's protocol stands (SITE.toml)"
    )
    p.add_argument("site", help="site TOML file (see phantomdce.design.site)")
    p.add_argument("-o", "--output", required=True, help="report directory (run in DIR/run)")
    p.add_argument(
        "--replicates",
        type=int,
        default=DEFAULT_REPLICATES,
        help=f"noise replicates per tissue and arrival phase (default {DEFAULT_REPLICATES})",
    )
    p.add_argument(
        "--phases",
        type=int,
        default=DEFAULT_PHASES,
        help=f"bolus arrival phases over one frame (default {DEFAULT_PHASES})",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the Monte Carlo's noise")
    p.add_argument(
        "--study",
        default=None,
        metavar="DIR",
        help="the study report to read verdicts from (default reports/esnr2022)",
    )
    p.add_argument(
        "--study-scenarios",
        default=None,
        metavar="DIR",
        help="the study's scenarios (default scenarios/esnr2022)",
    )
    p.add_argument(
        "--run-dir",
        default=None,
        metavar="DIR",
        help="where the engine runs the site's Monte Carlo (default DIR/run)",
    )
    p.add_argument(
        "--repeatability-subjects",
        type=int,
        default=DEFAULT_REPEATABILITY_SUBJECTS,
        metavar="N",
        help="phantom subjects of the test-retest simulation at the site's protocol (default"
        f" {DEFAULT_REPEATABILITY_SUBJECTS}; 0: skip it)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="print only the report's paths")
    p.set_defaults(func=_cmd_assess)
