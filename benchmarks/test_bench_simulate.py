"""Simulation throughput against the cost no simulator can avoid: drawing the noise.

Run with ``pytest benchmarks --benchmark-only`` (not part of the default test suite).
The claim is a ratio measured in the same run, not a wall-clock limit: simulating a
sweep of 10^6 voxel curves of 100 frames (truth, SPGR signal, VFA images and Rician noise,
in memory) costs at most 3x what numpy needs to draw the complex noise for those curves.
"""

import time

import numpy as np
import pytest

from phantomdce.dro.scenario import parse_scenario
from phantomdce.dro.simulate import simulate_case

SCENARIO = {
    "name": "bench",
    "seed": 1,
    "replicates": 1000,
    "protocol": {"dt": 3.0, "duration": 300.0, "snr": 20.0},  # 100 frames
    "tissue": {
        "model": "extended_tofts",
        "Ktrans": [0.02, 0.05, 0.1, 0.2, 0.4],
        "ve": [0.1, 0.2, 0.3, 0.5],
        "vp": [0.005, 0.01, 0.02, 0.05, 0.1],
    },
    "sweep": {"snr": [10.0, 12.0, 15.0, 20.0, 25.0, 30.0, 40.0, 50.0, 75.0, 100.0]},
}


def simulate_sweep(scenario):
    n = 0
    for case in scenario.cases():
        ds = simulate_case(scenario, case)
        n += ds.sizes["voxel"]
    return n


def draw_noise(scenario):
    """Baseline: numpy draws the real and imaginary noise for every curve, case by case."""
    n_frames = scenario.protocol.n_frames
    buf = np.empty((2, scenario.n_voxels, n_frames))
    for case in scenario.cases():
        rng = np.random.default_rng([scenario.seed, case.index])
        rng.standard_normal(out=buf)
    return len(scenario.cases()) * scenario.n_voxels


def _best_of(fn, arg, rounds=3):
    best = np.inf
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn(arg)
        best = min(best, time.perf_counter() - t0)
    return best


@pytest.mark.benchmark(group="simulate-1e6")
def test_simulation_costs_at_most_3x_the_noise_draw(benchmark):
    scenario = parse_scenario(SCENARIO)
    assert len(scenario.cases()) * scenario.n_voxels == 10**6
    assert scenario.protocol.n_frames == 100
    simulate_sweep(scenario)  # compile numba kernels before timing
    n = benchmark.pedantic(simulate_sweep, args=(scenario,), rounds=3, iterations=1)
    baseline = _best_of(draw_noise, scenario)
    sim = benchmark.stats.stats.min
    ratio = sim / baseline
    benchmark.extra_info.update(
        {
            "voxel_curves": n,
            "noise_draw_s": baseline,
            "ratio_to_noise_draw": ratio,
            "curves_per_s": n / sim,
        }
    )
    print(
        f"\nsimulate {n} curves: {sim:.2f} s ({n / sim:,.0f}/s); numpy noise draw "
        f"{baseline:.2f} s; ratio {ratio:.2f}"
    )
    assert ratio <= 3.0


@pytest.mark.benchmark(group="simulate-1e6")
def test_noise_draw_baseline(benchmark):
    scenario = parse_scenario(SCENARIO)
    benchmark.pedantic(draw_noise, args=(scenario,), rounds=3, iterations=1)
