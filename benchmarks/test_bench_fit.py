"""Fitting benchmarks (see fitspeed.py): ratios measured in the same run."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from fitspeed import compare_llsq, compare_nlls, make_data  # noqa: E402


@pytest.fixture(scope="module")
def data():
    return make_data(10_000)


@pytest.mark.benchmark(group="fit")
def test_nlls_is_100x_faster_than_curve_fit_and_as_accurate(benchmark, data):
    res = benchmark.pedantic(compare_nlls, args=(data, 500), rounds=1, iterations=1)
    benchmark.extra_info.update(res)
    print("\n" + "\n".join(f"{k:40s} {v:,.4g}" for k, v in res.items()))
    assert res["voxels"] >= 10_000
    assert res["speed_ratio"] >= 100
    assert res["error_ratio"] <= 1.05


@pytest.mark.benchmark(group="fit")
def test_numba_llsq_is_3x_faster_than_numpy(benchmark, data):
    res = benchmark.pedantic(compare_llsq, args=(data,), rounds=1, iterations=1)
    benchmark.extra_info.update(res)
    print("\n" + "\n".join(f"{k:40s} {v:,.4g}" for k, v in res.items()))
    assert res["llsq_speed_ratio"] >= 3
