"""Phantom generation and acquisition: 256 x 256 x 40 truth grid, 100 frames.

Run with ``pytest benchmarks/test_bench_phantom.py --benchmark-only -s``. Runs in a child
process that reports its own peak resident memory; a 1 mm acquisition (the largest output:
40 x 256 x 256 x 100 float32 samples) and the ESNR 2 x 2 x 3 mm one, each with the default
physics (sinc PSF in plane and through the slab, laminar inflow) and the idealised one
(voxel average, rectangular slices, no inflow), so the cost of the physics is a ratio
measured in the same run.
"""

import subprocess
import sys
import time

import pytest

CODE = """
import resource, time
from phantomdce.dro.protocol import Protocol
from phantomdce.phantom.acquire import Acquisition, acquire
from phantomdce.phantom.anatomy import make_neck
t0 = time.perf_counter()
ph = make_neck((40, 256, 256), seed=0)
t1 = time.perf_counter()
proto = Protocol.from_mapping({"dt": 3.0, "duration": 300.0, "snr": 30.0})
ds = acquire(ph, proto, Acquisition(IN_PLANE, SLICE_MM, **KW))
t2 = time.perf_counter()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(t1 - t0, t2 - t1, peak, dict(ds.signal.sizes))
"""


IDEAL = {"in_plane_psf": "box", "slice_profile": "rect", "inflow": False}


@pytest.mark.benchmark(group="phantom")
@pytest.mark.parametrize("physics", ["default", "ideal"])
@pytest.mark.parametrize(("in_plane", "slice_mm"), [(1.0, 1.0), (2.0, 3.0)])
def test_phantom_generation_and_acquisition(benchmark, in_plane, slice_mm, physics):
    def once():
        t0 = time.perf_counter()
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                CODE.replace("IN_PLANE", str(in_plane))
                .replace("SLICE_MM", str(slice_mm))
                .replace("KW", repr(IDEAL if physics == "ideal" else {})),
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split(maxsplit=3)
        total = time.perf_counter() - t0
        return float(out[0]), float(out[1]), total, float(out[2]), out[3]

    gen, acq, total, peak, sizes = benchmark.pedantic(once, rounds=1, iterations=1)
    benchmark.extra_info.update(
        {"generate_s": gen, "acquire_s": acq, "process_s": total, "peak_rss_mb": peak}
    )
    print(
        f"\n{in_plane} x {in_plane} x {slice_mm} mm, {physics} physics: generate {gen:.1f} s,"
        f" acquire {acq:.1f} s, peak RSS {peak:.0f} MB, output {sizes.strip()}"
    )
