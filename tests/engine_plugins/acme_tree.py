"""Plug-ins that report on their own process or leave processes behind, for test_isolate.py.

Each reads its instructions from the chunk's attributes (``data.attrs``), which travel to an
isolated child with the data.
"""

import os
import subprocess
import time

import numpy as np
import xarray as xr


class _Base:
    version = "1.0"
    model = "extended_tofts"
    input = "concentration"
    method = "nlls"


def _constant(n):
    values = {"Ktrans": 0.1, "ve": 0.2, "vp": 0.01}
    out = {k: ("voxel", np.full(n, v)) for k, v in values.items()}
    out["success"] = ("voxel", np.ones(n, dtype=bool))
    return xr.Dataset(out)


class WhoAmI(_Base):
    """Fits at once and says where it ran: ``attrs`` ``pid``, ``pgid``, ``mark`` (env).

    ``data.attrs``: ``crash`` -> ``os._exit(3)``; ``raise`` -> RuntimeError;
    ``sleep_s`` -> sleep that long first.
    """

    name = "acme_whoami"

    def fit(self, data):
        if data.attrs.get("crash"):
            os._exit(3)
        if data.attrs.get("raise"):
            raise RuntimeError("acme asked to raise")
        time.sleep(float(data.attrs.get("sleep_s", 0.0)))
        out = _constant(data.sizes["voxel"])
        out.attrs.update(
            pid=os.getpid(), pgid=os.getpgid(0), mark=os.environ.get("ACME_MARK", "")
        )
        return out


class SpawnsAndHangs(_Base):
    """Starts ``sleep 300``, writes "<own pid> <sleep pid>" to ``attrs["pidfile"]``, hangs."""

    name = "acme_spawns"

    def fit(self, data):
        sleeper = subprocess.Popen(["sleep", "300"])
        path = data.attrs["pidfile"]
        with open(path + ".tmp", "w") as fh:
            fh.write(f"{os.getpid()} {sleeper.pid}")
        os.replace(path + ".tmp", path)
        time.sleep(3600)


class Echo(_Base):
    """Estimates computed from the data (floats, a coordinate, attributes), deterministic."""

    name = "acme_echo"

    def fit(self, data):
        ct = data["ct"]
        out = xr.Dataset(
            {
                "Ktrans": ct.mean("time") * np.pi,
                "ve": ct.std("time") / 3.0,
                "vp": np.exp(-ct.max("time")),
                "success": ct.min("time") > -1.0,
            },
            coords={"voxel": np.arange(ct.sizes["voxel"]) * 7},
            attrs={"note": "echo", "n": ct.sizes["voxel"]},
        )
        return out
