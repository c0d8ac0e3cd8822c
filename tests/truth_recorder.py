"""A plug-in fitter that records what it is given (for tests/test_truth_boundary.py)."""

import numpy as np
import xarray as xr

#: Every input the recorder was given, in order (deep copies).
RECORDS: list[xr.Dataset] = []


class Recorder:
    """Keeps a copy of each input and fits nothing (NaN, success False)."""

    name = "truth_recorder"
    version = "1.0"
    model = "extended_tofts"
    input = "concentration"
    method = "recording"

    def fit(self, data: xr.Dataset) -> xr.Dataset:
        RECORDS.append(data.copy(deep=True))
        n = data.sizes["voxel"]
        out = xr.Dataset({k: ("voxel", np.full(n, np.nan)) for k in ("Ktrans", "ve", "vp")})
        out["success"] = ("voxel", np.zeros(n, dtype=bool))
        return out
