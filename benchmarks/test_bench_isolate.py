"""What isolating a plug-in costs per chunk, now that its child process is reused.

Run with ``pytest benchmarks/test_bench_isolate.py --benchmark-only -s``. A plug-in that
returns at once (``tests/engine_plugins/acme_slow_start.py``) fits 10 chunks of 8192 voxels x
100 frames (the engine's usual chunk) in this process, isolated in a reused child, and
isolated in a new child per chunk (what every chunk cost before the child was reused). The
claim: after the first chunk, isolation costs <= 0.5 s per chunk.
"""

import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import xarray as xr

from phantomdce.engine.isolate import close_workers, fit_isolated

PLUGINS = str(Path(__file__).parents[1] / "tests" / "engine_plugins")
SPEC, NAME = "acme_slow_start:QuickFit", "acme_slow_start"
CHUNKS, VOXELS, FRAMES = 10, 8192, 100


def measure() -> dict[str, float]:
    """Seconds per chunk: in this process, isolated (first, then reused), a new child each."""
    sys.path.insert(0, PLUGINS)
    try:
        from acme_slow_start import QuickFit

        rng = np.random.default_rng(0)
        data = xr.Dataset(
            {"ct": (("voxel", "time"), rng.normal(size=(VOXELS, FRAMES)))},
            coords={"time": np.arange(FRAMES) * 3.0},
        )
        info = SimpleNamespace(name=NAME)

        t0 = time.perf_counter()
        for _ in range(CHUNKS):
            QuickFit().fit(data)
        direct = (time.perf_counter() - t0) / CHUNKS

        close_workers()
        t0 = time.perf_counter()
        fit_isolated(SPEC, info, data, 60.0)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(CHUNKS):
            fit_isolated(SPEC, info, data, 60.0)
        reused = (time.perf_counter() - t0) / CHUNKS

        t0 = time.perf_counter()
        for _ in range(3):  # a new child per chunk: the cost before reuse
            close_workers()
            fit_isolated(SPEC, info, data, 60.0)
        fresh = (time.perf_counter() - t0) / 3
        close_workers()
    finally:
        sys.path.remove(PLUGINS)
    return {
        "chunk_voxels": VOXELS,
        "direct_s_per_chunk": direct,
        "isolated_first_chunk_s": first,
        "isolated_reused_s_per_chunk": reused,
        "isolation_overhead_s_per_chunk": reused - direct,
        "new_child_s_per_chunk": fresh,
        "new_child_over_reused_ratio": fresh / reused,
    }


@pytest.mark.benchmark(group="isolate")
def test_a_reused_child_costs_at_most_half_a_second_per_chunk(benchmark):
    res = benchmark.pedantic(measure, rounds=1, iterations=1)
    benchmark.extra_info.update(res)
    print("\n" + "\n".join(f"{k:40s} {v:,.4g}" for k, v in res.items()))
    assert res["isolation_overhead_s_per_chunk"] <= 0.5
    assert res["new_child_over_reused_ratio"] >= 5
