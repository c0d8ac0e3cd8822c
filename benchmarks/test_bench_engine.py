"""A sweep of 10^6 voxel curves (simulate + extended Tofts fit) through the engine.

Run with ``pytest benchmarks/test_bench_engine.py --benchmark-only -s``. The run happens
in a child process so that its peak resident memory can be read
(``resource.getrusage(RUSAGE_CHILDREN)``); the claim is that memory stays bounded by the
chunk size (here under 2 GB for 10^6 curves of 100 frames), whatever the sweep size.
"""

import json
import resource
import subprocess
import sys
import time

import pytest

SCENARIO = """
name = "engine-bench"
seed = 1
replicates = 2000

[protocol]
dt = 3.0
duration = 300.0
snr = 20.0

[tissue]
model = "extended_tofts"
Ktrans = [0.05, 0.1, 0.2, 0.4, 0.6]
ve = [0.1, 0.2, 0.3, 0.5]
vp = [0.01, 0.02, 0.05, 0.1, 0.2]

[sweep]
snr = [10.0, 20.0, 30.0, 50.0, 100.0]

[fit]
fitters = ["nlls_extended_tofts"]
chunk_voxels = 8192
"""


def run_child(scenario, out):
    code = (
        "import resource, sys; from phantomdce.cli import main;"
        f" rc = main(['run', {str(scenario)!r}, '-o', {str(out)!r}, '-q']); sys.exit(rc)"
    )
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return elapsed, peak_mb, proc.stdout


@pytest.mark.benchmark(group="engine")
def test_million_curve_sweep_in_bounded_memory(benchmark, tmp_path):
    scenario = tmp_path / "bench.toml"
    scenario.write_text(SCENARIO)
    result = {}

    def once():
        out = tmp_path / f"out{len(result)}"
        result["elapsed"], result["peak_mb"], result["stdout"] = run_child(scenario, out)
        return out

    out = benchmark.pedantic(once, rounds=1, iterations=1)
    n = 5 * 100 * 2000
    assert n == 10**6
    meta = json.loads((out / "run.json").read_text())
    assert meta["scenario_name"] == "engine-bench"
    info = {
        "voxel_curves": n,
        "seconds": result["elapsed"],
        "curves_per_s": n / result["elapsed"],
        "peak_rss_mb": result["peak_mb"],
    }
    benchmark.extra_info.update(info)
    print("\n" + "\n".join(f"{k:20s} {v:,.4g}" for k, v in info.items()))
    assert result["peak_mb"] < 2048
