"""Fitting speed and accuracy, measured side by side in one run.

Run as a script (``python benchmarks/fitspeed.py --voxels 10000``) or through
pytest-benchmark (``pytest benchmarks --benchmark-only -s``). Compares, on the same
simulated extended Tofts data (100 frames at 3 s, Parker AIF, noise SD 0.02 mM):

- phantomdce's batched Levenberg-Marquardt (one thread) against the textbook per-voxel
  ``scipy.optimize.curve_fit`` plug-in (``fitters/phantomdce-curvefit``): voxels/s, the
  per-voxel speed ratio, and the median absolute Ktrans error of each on the same voxels;
- the numba linear least-squares fitter against the same method in vectorised numpy.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import xarray as xr

from phantomdce import kinetics as K
from phantomdce.aif import plasma_aif
from phantomdce.fit.llsq import llsq, llsq_numpy
from phantomdce.fit.nlls import NLLSFitter

ROOT = Path(__file__).resolve().parents[1]


def curvefit_fitter():
    """The reference plug-in, from the source tree if it is not installed."""
    try:
        from phantomdce_curvefit import CurveFitExtendedTofts
    except ImportError:
        sys.path.insert(0, str(ROOT / "fitters" / "phantomdce-curvefit" / "src"))
        from phantomdce_curvefit import CurveFitExtendedTofts
    return CurveFitExtendedTofts()


def make_data(n_voxels: int, *, seed: int = 0, noise_sd: float = 0.02) -> xr.Dataset:
    """Extended Tofts curves over a head-and-neck-like parameter range, with noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(100) * 3.0
    ca = plasma_aif("parker", t, bat=15.0, hct=0.42)
    kt = rng.uniform(0.05, 0.5, n_voxels)
    ve = rng.uniform(0.1, 0.5, n_voxels)
    vp = rng.uniform(0.01, 0.1, n_voxels)
    ct = K.extended_tofts(t, ca, ktrans=kt, ve=ve, vp=vp) + rng.normal(0, noise_sd, (n_voxels, 100))
    return xr.Dataset(
        {"ct": (("voxel", "time"), ct), "ca": ("time", ca), "Ktrans_true": ("voxel", kt)},
        coords={"time": t, "voxel": np.arange(n_voxels)},
    )


def _timed(fn, *args, rounds: int = 1):
    best, out = np.inf, None
    for _ in range(rounds):
        t0 = time.perf_counter()
        out = fn(*args)
        best = min(best, time.perf_counter() - t0)
    return best, out


def compare_nlls(data: xr.Dataset, n_curvefit: int) -> dict[str, float]:
    """NLLS (one thread) against curve_fit on the same data; curve_fit on a subset."""
    fitter = NLLSFitter("extended_tofts")
    fitter.fit(data.isel(voxel=slice(0, 8)))  # compile
    n = data.sizes["voxel"]
    t_ours, ours = _timed(fitter.fit, data)
    sub = data.isel(voxel=slice(0, n_curvefit))
    t_cf, cf = _timed(curvefit_fitter().fit, sub)
    truth = data["Ktrans_true"].values
    err_ours_sub = np.nanmedian(np.abs(ours["Ktrans"].values[:n_curvefit] - truth[:n_curvefit]))
    err_cf = np.nanmedian(np.abs(cf["Ktrans"].values - truth[:n_curvefit]))
    rate_ours, rate_cf = n / t_ours, n_curvefit / t_cf
    return {
        "voxels": n,
        "curvefit_voxels": n_curvefit,
        "nlls_voxels_per_s": rate_ours,
        "curvefit_voxels_per_s": rate_cf,
        "speed_ratio": rate_ours / rate_cf,
        "nlls_median_abs_ktrans_error": err_ours_sub,
        "nlls_median_abs_ktrans_error_all": float(np.nanmedian(np.abs(ours["Ktrans"] - truth))),
        "curvefit_median_abs_ktrans_error": err_cf,
        "error_ratio": err_ours_sub / err_cf,
    }


def compare_llsq(data: xr.Dataset) -> dict[str, float]:
    """Numba linear least squares against the same method in vectorised numpy."""
    t, ct, ca = data["time"].values, data["ct"].values, data["ca"].values
    llsq(t, ct[:8], ca, model="extended_tofts")  # compile
    t_numba, _ = _timed(lambda: llsq(t, ct, ca, model="extended_tofts"), rounds=3)
    t_numpy, _ = _timed(lambda: llsq_numpy(t, ct, ca, model="extended_tofts"), rounds=3)
    n = ct.shape[0]
    return {
        "llsq_numba_voxels_per_s": n / t_numba,
        "llsq_numpy_voxels_per_s": n / t_numpy,
        "llsq_speed_ratio": t_numpy / t_numba,
    }


def main(argv: list[str] | None = None) -> int:
    """Print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voxels", type=int, default=10_000)
    parser.add_argument("--curvefit-voxels", type=int, default=500)
    args = parser.parse_args(argv)
    data = make_data(args.voxels)
    res = compare_nlls(data, args.curvefit_voxels) | compare_llsq(data)
    for key, value in res.items():
        print(f"{key:40s} {value:,.4g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
