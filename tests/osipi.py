"""Readers for the OSIPI DCE-DSC-MRI Code Collection test data in tests/data/osipi.

The data are copied from OSIPI/DCE-DSC-MRI_CodeCollection (Apache-2.0, see
tests/data/osipi/LICENSE and README.md). Array cells hold space-separated numbers.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

OSIPI = Path(__file__).parent / "data" / "osipi"


def read_rows(relpath: str) -> list[dict[str, object]]:
    """Rows of an OSIPI CSV, with array cells parsed to float arrays and names stripped."""
    rows = []
    with open(OSIPI / relpath, encoding="utf-8-sig", newline="") as fh:
        for raw in csv.DictReader(fh):
            row: dict[str, object] = {}
            for key, cell in raw.items():
                key = key.strip()
                parts = cell.split()
                if key == "label":
                    row[key] = cell
                elif len(parts) > 1:
                    row[key] = np.array(parts, dtype=float)
                else:
                    try:
                        row[key] = float(cell)
                    except ValueError:
                        row[key] = cell
            rows.append(row)
    return rows


# Tolerances OSIPI applies, |measured - reference| <= atol + rtol * |reference|: the
# package's table (its OSIPI entries are checked against the OSIPI README in test_metrics)
from phantomdce.engine.metrics import TOLERANCES  # noqa: E402,F401
