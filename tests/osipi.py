"""Readers for the OSIPI DCE-DSC-MRI Code Collection test data in tests/data/osipi.

The data are copied from OSIPI/DCE-DSC-MRI_CodeCollection (Apache-2.0, see
tests/data/osipi/LICENSE and README.md). Array cells hold space-separated numbers.
"""

from __future__ import annotations

from pathlib import Path

from phantomdce.data import read_osipi_csv

OSIPI = Path(__file__).parent / "data" / "osipi"


def read_rows(relpath: str) -> list[dict[str, object]]:
    """Rows of an OSIPI CSV, with array cells parsed to float arrays and names stripped."""
    return read_osipi_csv(OSIPI / relpath)


# Tolerances OSIPI applies, |measured - reference| <= atol + rtol * |reference|: the
# package's table (its OSIPI entries are checked against the OSIPI README in test_metrics)
from phantomdce.engine.metrics import TOLERANCES  # noqa: E402,F401
