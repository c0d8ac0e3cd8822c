"""Fit speed of every built-in fitter as a ratio to a numpy Murase solve, in one run.

Issue 13 item 5. On the same data (extended Tofts curves, 100 frames at 3 s, Parker AIF,
noise SD 0.02 mM, 4000 voxels: :func:`fitspeed.make_data`), one thread everywhere (BLAS
included: the measurement runs in a child process with ``OMP_NUM_THREADS``,
``OPENBLAS_NUM_THREADS`` and ``MKL_NUM_THREADS`` set to 1), it times

- the vectorised numpy Murase linear solve (:func:`phantomdce.fit.llsq.llsq_numpy`), the
  baseline every other figure is divided by;
- ``llsq_extended_tofts`` (numba, one thread);
- every built-in NLLS fitter's ``fit`` (one thread; the extended Tofts data are fitted with
  each model), the whole fitter including its success judgement;
- ``nlls_extended_tofts`` with ``parallel=True`` on all of numba's threads.

The one-thread figures are the best of a few rounds of the process's CPU time (one
thread: CPU time is the time it ran, whatever else the machine runs); the parallel
speed-up compares wall-clock times of serial and parallel rounds taken alternately, and
means little when the machine's load average (printed with the figures) exceeds one.

Run ``python benchmarks/bench_fit_speed.py`` (prints the table; ``--json`` for JSON;
``--repeat N`` runs N children, prints each one's ratios and load average, then the
medians) or ``pytest benchmarks/bench_fit_speed.py -s`` (checks the targets of issue 13
on the medians of three runs).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SINGLE = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
NLLS_MODELS = ("extended_tofts", "tofts", "patlak", "2cxm", "2cum")


def _best(fn, rounds: int, clock=time.process_time) -> float:
    """Shortest time (s, by ``clock``) of ``rounds`` calls."""
    best = float("inf")
    for _ in range(rounds):
        t0 = clock()
        fn()
        best = min(best, clock() - t0)
    return best


def measure(n_voxels: int = 4000, rounds: int = 5) -> dict[str, float]:
    """Voxels/s of each fitter and its ratio to numpy Murase (run in a single-thread env)."""
    import numba

    sys.path.insert(0, str(HERE))
    from phantomdce.fit.llsq import llsq, llsq_numpy
    from phantomdce.fit.nlls import NLLSFitter

    from fitspeed import make_data

    data = make_data(n_voxels)
    t, ct, ca = data["time"].values, data["ct"].values, data["ca"].values
    small = data.isel(voxel=slice(0, 8))
    res: dict[str, float] = {"voxels": n_voxels, "numba_threads": numba.get_num_threads()}
    res["load_average_1min"] = os.getloadavg()[0]
    llsq(t, ct[:8], ca, model="extended_tofts")  # compile
    t_np = _best(lambda: llsq_numpy(t, ct, ca, model="extended_tofts"), rounds)
    res["numpy_murase_voxels_per_s"] = n_voxels / t_np
    t_ll = _best(lambda: llsq(t, ct, ca, model="extended_tofts"), rounds)
    res["llsq_extended_tofts_voxels_per_s"] = n_voxels / t_ll
    res["llsq_extended_tofts_ratio"] = t_np / t_ll
    fitters = [NLLSFitter(m) for m in NLLS_MODELS]
    fitters.insert(1, NLLSFitter("extended_tofts", fit_delay=True))
    for f in fitters:
        f.fit(small)  # compile
        slow = f.model in ("2cxm", "2cum")
        t_f = _best(lambda f=f: f.fit(data), 2 if slow else rounds)
        res[f"{f.name}_voxels_per_s"] = n_voxels / t_f
        res[f"{f.name}_ratio"] = t_np / t_f
    par = NLLSFitter("extended_tofts", parallel=True)
    ser = NLLSFitter("extended_tofts")
    par.fit(small)
    wall = {True: float("inf"), False: float("inf")}
    for _ in range(rounds):
        for parallel, f in ((False, ser), (True, par)):
            t_f = _best(lambda f=f: f.fit(data), 1, time.perf_counter)
            wall[parallel] = min(wall[parallel], t_f)
    res["nlls_extended_tofts_parallel_voxels_per_s"] = n_voxels / wall[True]
    res["nlls_extended_tofts_parallel_speedup"] = wall[False] / wall[True]
    res["nlls_extended_tofts_delay_vs_nlls"] = (
        res["nlls_extended_tofts_delay_voxels_per_s"] / res["nlls_extended_tofts_voxels_per_s"]
    )
    res["load_average_1min_after"] = os.getloadavg()[0]
    return res


def run_child(n_voxels: int = 4000, rounds: int = 5) -> dict[str, float]:
    """:func:`measure` in a child process with one BLAS/OpenMP thread."""
    env = {**os.environ, **SINGLE}
    out = subprocess.run(
        [sys.executable, str(Path(__file__)), "--json", "--voxels", str(n_voxels),
         "--rounds", str(rounds), "--in-process"],
        env=env, check=True, capture_output=True, text=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


#: The figures of each repeat shown in the table of :func:`repeated` (with the load).
RATIOS = (
    "llsq_extended_tofts_ratio",
    *(f"nlls_{m}_ratio" for m in NLLS_MODELS),
    "nlls_extended_tofts_delay_ratio",
    "nlls_extended_tofts_delay_vs_nlls",
    "nlls_extended_tofts_parallel_speedup",
)


def repeated(n_repeats: int, n_voxels: int = 4000, rounds: int = 5) -> dict[str, float]:
    """Median of each figure over ``n_repeats`` children (:func:`run_child`).

    The ratios of one run are taken in one process, alternately, so they hold under load
    better than the voxels/s; each repeat's ratios and load average are printed.
    """
    runs = []
    short = [k.replace("nlls_", "").replace("extended_tofts", "etm").replace("_ratio", "")
             for k in RATIOS]  # fmt: skip
    print(f"{'repeat':>6s} {'load':>5s} " + " ".join(f"{k[-14:]:>14s}" for k in short))
    for i in range(n_repeats):
        res = run_child(n_voxels, rounds)
        runs.append(res)
        print(f"{i:6d} {res['load_average_1min']:5.2f} "
              + " ".join(f"{res[k]:14.4g}" for k in RATIOS))  # fmt: skip
    return {k: float(np.median([r[k] for r in runs])) for k in runs[0]}


def main(argv: list[str] | None = None) -> int:
    """Print the figures (a table, or one JSON line with ``--json``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voxels", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=1,
                        help="children to run; the figures printed are their medians")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.in_process:
        res = measure(args.voxels, args.rounds)
    elif args.repeat > 1:
        res = repeated(args.repeat, args.voxels, args.rounds)
    else:
        res = run_child(args.voxels, args.rounds)
    if args.json:
        print(json.dumps(res))
    else:
        for key, value in res.items():
            print(f"{key:48s} {value:,.4g}")
    return 0


def test_fit_speed_targets_of_issue_13():
    """The targets of issue 13 item 5, as ratios measured in one run (median of three)."""
    res = repeated(3)
    print("\n" + "\n".join(f"{k:48s} {v:,.4g}" for k, v in res.items()))
    assert res["llsq_extended_tofts_ratio"] >= 3
    assert res["nlls_extended_tofts_ratio"] >= 0.7
    assert res["nlls_extended_tofts_delay_vs_nlls"] >= 0.3
    if res["numba_threads"] >= 2:
        assert res["nlls_extended_tofts_parallel_speedup"] >= 1.7


if __name__ == "__main__":
    sys.exit(main())
