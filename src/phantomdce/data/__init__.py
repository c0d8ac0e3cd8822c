"""Data files shipped with phantomdce.

``osipi/DCEmodels/``: the five undelayed DCE model files of the OSIPI DCE-DSC-MRI Code
Collection (Apache-2.0, ``osipi/LICENSE`` and ``osipi/README.md``), read with
:func:`osipi_rows`. ``phantomdce leaderboard`` scores every fitter on them.
"""

from __future__ import annotations

import csv
from importlib import resources
from pathlib import Path

import numpy as np

__all__ = ["OSIPI_MODEL_FILES", "osipi_path", "osipi_rows", "read_osipi_csv"]

#: The OSIPI model file of each kinetic model (undelayed cases), relative to ``osipi/``.
OSIPI_MODEL_FILES = {
    "tofts": "DCEmodels/dce_DRO_data_tofts.csv",
    "extended_tofts": "DCEmodels/dce_DRO_data_extended_tofts.csv",
    "patlak": "DCEmodels/patlak_sd_0.02_delay_0.csv",
    "2cxm": "DCEmodels/2cxm_sd_0.001_delay_0.csv",
    "2cum": "DCEmodels/2cum_sd_0.0025_delay_0.csv",
}


def osipi_path(relpath: str) -> Path:
    """Path of a shipped OSIPI file, e.g. ``"DCEmodels/dce_DRO_data_tofts.csv"``.

    Raises
    ------
    FileNotFoundError
        No such file is shipped (the message lists the shipped model files).
    """
    path = Path(str(resources.files(__name__) / "osipi" / relpath))
    if not path.is_file():
        raise FileNotFoundError(
            f"osipi file {relpath!r} is not shipped with phantomdce; shipped:"
            f" {sorted(OSIPI_MODEL_FILES.values())}"
        )
    return path


def osipi_rows(relpath: str) -> list[dict[str, object]]:
    """Rows of a shipped OSIPI CSV: array cells as float arrays, names stripped.

    OSIPI's array cells hold space-separated numbers in one CSV cell; some files start with
    a byte-order mark and some column names with spaces. ``label`` stays text, a one-number
    cell becomes a float, other text stays text.

    Examples
    --------
    >>> rows = osipi_rows(OSIPI_MODEL_FILES["extended_tofts"])
    >>> len(rows), sorted(k for k in rows[0] if k in ("Ktrans", "ve", "vp"))
    (15, ['Ktrans', 've', 'vp'])
    """
    return read_osipi_csv(osipi_path(relpath))


def read_osipi_csv(path: str | Path) -> list[dict[str, object]]:
    """Rows of an OSIPI CSV file anywhere (see :func:`osipi_rows` for the cell rules)."""
    rows = []
    with open(path, encoding="utf-8-sig", newline="") as fh:
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
