"""A plug-in whose module takes long to import (like a heavy solver library) and fits at once.

The import delay (s) is read from ``ACME_IMPORT_DELAY_S`` (0 when unset), so only the test
that needs a slow start pays for it.
"""

import os
import time

import numpy as np
import xarray as xr

time.sleep(float(os.environ.get("ACME_IMPORT_DELAY_S", "0")))


class QuickFit:
    """Returns the same estimates for every voxel, immediately."""

    name = "acme_slow_start"
    version = "1.0"
    model = "extended_tofts"
    input = "concentration"
    method = "nlls"

    def fit(self, data):
        n = data.sizes["voxel"]
        values = {"Ktrans": 0.1, "ve": 0.2, "vp": 0.01}
        out = {k: ("voxel", np.full(n, v)) for k, v in values.items()}
        out["success"] = ("voxel", np.ones(n, dtype=bool))
        return xr.Dataset(out)
