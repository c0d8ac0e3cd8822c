"""Isolated plug-ins: a reused child per fitter spec, and no process or file left behind.

Processes are checked through /proc (Linux): a process counts as gone once it no longer
exists or is a zombie (dead, waiting to be reaped by whoever adopted it).
"""

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import xarray as xr

from phantomdce.engine.isolate import (
    FitterError,
    close_workers,
    fit_isolated,
    worker_pids,
)

PLUGINS = str(Path(__file__).parent / "engine_plugins")
WHOAMI = "acme_tree:WhoAmI"

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")


@pytest.fixture(scope="module", autouse=True)
def _no_children_left():
    # the tests share this process's children (starting one costs seconds on a busy machine)
    close_workers()
    yield
    close_workers()


@pytest.fixture(autouse=True)
def _plugins(monkeypatch):
    monkeypatch.syspath_prepend(PLUGINS)
    monkeypatch.delenv("ACME_MARK", raising=False)


def chunk(n=5, **attrs):
    return xr.Dataset({"ct": (("voxel", "time"), np.zeros((n, 8)))}, attrs=attrs)


def whoami(data=None, timeout=60.0):
    return fit_isolated(WHOAMI, SimpleNamespace(name="acme_whoami"), data or chunk(), timeout)


def alive(pid):
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def group_members(pgid, zombies=False):
    """Processes whose process group is ``pgid``: live ones (and zombies if ``zombies``)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid and (zombies or fields[0] not in "ZX"):
            members.append(int(entry.name))
    return members


def wait_gone(pids, limit_s=30.0):
    """Poll until none of ``pids`` is alive, at most ``limit_s``; return the survivors."""
    deadline = time.monotonic() + limit_s
    while (left := [p for p in pids if alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def wait_group_gone(pgid, limit_s=30.0):
    """Poll until process group ``pgid`` has no live member (SIGKILL lands asynchronously)."""
    deadline = time.monotonic() + limit_s
    while (left := group_members(pgid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def test_results_are_identical_to_the_fitter_in_this_process():
    from acme_tree import Echo

    rng = np.random.default_rng(3)
    data = xr.Dataset(
        {"ct": (("voxel", "time"), rng.normal(size=(50, 20)))},
        coords={"time": np.arange(20) * 2.5},
        attrs={"units": "mM"},
    )
    here = Echo().fit(data.copy(deep=True))
    for _ in range(2):  # a new or reused child, then the reused one
        result = fit_isolated("acme_tree:Echo", SimpleNamespace(name="acme_echo"), data, 60)
        xr.testing.assert_identical(result, here)
        np.testing.assert_array_equal(result["Ktrans"].values, here["Ktrans"].values)


@pytest.mark.slow
def test_results_of_an_nlls_plugin_are_identical_to_the_fitter_in_this_process():
    from phantomdce.dro.scenario import parse_scenario
    from phantomdce.dro.simulate import simulate_case
    from phantomdce.engine.config import FitConfig

    sc = parse_scenario(
        {
            "name": "iso",
            "seed": 5,
            "replicates": 4,
            "protocol": {"snr": 20.0, "dt": 4.0, "duration": 240.0},
            "tissue": {"model": "extended_tofts", "Ktrans": [0.1, 0.3], "ve": 0.3, "vp": 0.02},
        }
    )
    fit = FitConfig.from_mapping({"fitters": ["acme_faulty:Degradable"]}, model="extended_tofts")
    (info,) = fit.resolve()
    data = fit.pipeline(simulate_case(sc, sc.cases()[0]))
    here = info.fitter.fit(data.copy(deep=True))
    for _ in range(2):  # a new child, then the reused one
        xr.testing.assert_identical(fit_isolated("acme_faulty:Degradable", info, data, 60), here)


def test_a_second_chunk_reuses_the_child_which_leads_its_own_process_group():
    first = whoami().attrs
    assert first["pid"] != os.getpid()
    assert first["pgid"] == first["pid"]  # its own session: killpg reaches its whole tree
    assert whoami().attrs["pid"] == first["pid"]
    assert first["pid"] in worker_pids(WHOAMI)


def test_a_crash_ends_the_child_and_the_next_chunk_gets_a_new_one():
    pid = whoami().attrs["pid"]
    with pytest.raises(RuntimeError, match=r"ended without a result \(exit code 3\)"):
        whoami(chunk(crash=True))
    assert wait_group_gone(pid) == []
    again = whoami()
    assert again.attrs["pid"] != pid
    assert again["success"].values.all()


def test_a_fitter_that_raises_keeps_its_child():
    pid = whoami().attrs["pid"]
    with pytest.raises(FitterError, match="RuntimeError: acme asked to raise"):
        whoami(chunk(**{"raise": True}))
    assert whoami().attrs["pid"] == pid


def test_each_chunk_sees_the_environment_of_its_time(monkeypatch):
    # as a child started for the chunk would (e.g. a regression switched on between runs)
    monkeypatch.setenv("ACME_MARK", "a")
    first = whoami().attrs
    monkeypatch.setenv("ACME_MARK", "b")
    second = whoami().attrs
    monkeypatch.delenv("ACME_MARK")
    third = whoami().attrs
    assert (first["mark"], second["mark"], third["mark"]) == ("a", "b", "")
    assert first["pid"] == second["pid"] == third["pid"]


@pytest.mark.slow  # child processes or an engine run: the default pytest stays under 4 minutes
def test_a_child_whose_pipes_are_past_descriptor_1024_serves():
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip(f"at most {hard} open files")
    if soft != resource.RLIM_INFINITY and soft < 1200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1200, hard))
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        close_workers()  # a new child, whose pipes get descriptors past 1100 here
        assert whoami().attrs["pid"] == whoami().attrs["pid"]
    finally:
        for fd in held:
            os.close(fd)
        close_workers()
        if soft != resource.RLIM_INFINITY and soft < 1200:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.slow
def test_a_changed_sys_path_gets_a_new_child(monkeypatch, tmp_path):
    pid = whoami().attrs["pid"]
    monkeypatch.syspath_prepend(str(tmp_path))
    assert whoami().attrs["pid"] != pid
    assert wait_group_gone(pid) == []  # replaced, not left idle


@pytest.mark.slow  # child processes or an engine run: the default pytest stays under 4 minutes
def test_close_workers_ends_the_children():
    pid = whoami().attrs["pid"]
    assert len(group_members(pid)) == 2  # the child and its reaper
    assert close_workers() >= 1
    # an idle child ends by itself and reaps its reaper: no orphan, not even a zombie
    assert group_members(pid, zombies=True) == [] and worker_pids() == []
    assert whoami().attrs["pid"] != pid


@pytest.mark.slow  # child processes or an engine run: the default pytest stays under 4 minutes
def test_a_timeout_ends_every_process_the_plugin_started(tmp_path):
    pidfile = tmp_path / "pids"
    info = SimpleNamespace(name="acme_spawns")
    with pytest.raises(TimeoutError, match="ran past the time limit of 1 s per chunk"):
        fit_isolated("acme_tree:SpawnsAndHangs", info, chunk(pidfile=str(pidfile)), 1.0)
    child, sleeper = map(int, pidfile.read_text().split())
    assert wait_group_gone(child) == []
    assert not alive(sleeper)
    assert child not in worker_pids()


@pytest.mark.slow
def test_threads_get_a_child_each_and_reuse_them():
    # two chunks that overlap in time cannot share a child; afterwards both are reused
    barrier = threading.Barrier(2)
    pids = []

    def work():
        barrier.wait()
        pids.append(whoami(chunk(sleep_s=0.5)).attrs["pid"])

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(pids)) == 2
    assert whoami().attrs["pid"] in pids
    assert set(pids) <= set(worker_pids(WHOAMI))


@pytest.mark.slow
def test_a_forked_process_starts_its_own_child_and_leaves_the_parents_alone():
    pid = whoami().attrs["pid"]
    read, write = os.pipe()
    forked = os.fork()
    if forked == 0:  # pragma: no cover - the forked copy reports and exits without cleanup
        try:
            os.write(write, str(whoami().attrs["pid"]).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as fh:
        theirs = int(fh.read() or 0)
    os.waitpid(forked, 0)
    assert theirs not in (0, pid)
    assert whoami().attrs["pid"] == pid  # ours still serves
    assert wait_group_gone(theirs) == []  # theirs went with the forked process


RUN = """
import sys
from types import SimpleNamespace
import numpy as np, xarray as xr
sys.path.insert(0, {plugins!r})
from phantomdce.engine.isolate import fit_isolated
data = xr.Dataset({{"ct": (("voxel", "time"), np.zeros((5, 8)))}}, attrs={{"pidfile": {pidfile!r}}})
fit_isolated("acme_tree:SpawnsAndHangs", SimpleNamespace(name="acme_spawns"), data, 600.0)
"""


@pytest.mark.slow  # child processes or an engine run: the default pytest stays under 4 minutes
def test_a_killed_parent_takes_its_child_and_grandchildren_along(tmp_path):
    # the run (parent) is SIGKILLed alone, not its process group: nothing may outlive it,
    # and nothing may stay in its temporary folder
    pidfile, tmp = tmp_path / "pids", tmp_path / "tmp"
    tmp.mkdir()
    code = textwrap.dedent(RUN).format(plugins=PLUGINS, pidfile=str(pidfile))
    env = {**os.environ, "TMPDIR": str(tmp)}
    parent = subprocess.Popen([sys.executable, "-c", code], env=env)
    try:
        deadline = time.monotonic() + 120
        while not pidfile.exists():
            assert parent.poll() is None, "the parent ended before the plug-in started"
            assert time.monotonic() < deadline, "the plug-in did not start within 120 s"
            time.sleep(0.05)
        child, sleeper = map(int, pidfile.read_text().split())
        assert alive(child) and alive(sleeper)
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    assert wait_gone([child, sleeper], limit_s=30.0) == []
    assert wait_group_gone(child) == []
    assert list(tmp.iterdir()) == []


@pytest.mark.slow
def test_dask_processes_scheduler_reuses_a_child_per_worker_and_ends_them():
    import dask

    info = SimpleNamespace(name="acme_whoami")
    tasks = [dask.delayed(fit_isolated)(WHOAMI, info, chunk(), 60.0) for _ in range(6)]
    results = dask.compute(*tasks, scheduler="processes", num_workers=2)
    pids = {r.attrs["pid"] for r in results}
    assert all(r["success"].values.all() for r in results)
    assert len(pids) <= 2  # one child per worker process, reused
    assert wait_gone(list(pids), limit_s=30.0) == []  # the pool's processes ended: so did they


@pytest.mark.slow
def test_dask_distributed_workers_reuse_their_children_and_end_them():
    from dask.distributed import Client, LocalCluster

    info = SimpleNamespace(name="acme_whoami")
    with LocalCluster(n_workers=2, threads_per_worker=2, processes=True) as cluster:
        with Client(cluster) as client:
            futures = client.map(
                fit_isolated, [WHOAMI] * 8, [info] * 8, [chunk(i + 1) for i in range(8)],
                [60.0] * 8,
            )
            results = client.gather(futures)
    pids = {r.attrs["pid"] for r in results}
    assert [r.sizes["voxel"] for r in results] == list(range(1, 9))
    assert len(pids) <= 4  # at most one per worker thread
    assert wait_gone(list(pids), limit_s=30.0) == []


SCENARIO = """
name = "iso"
seed = 7
replicates = 6

[protocol]
snr = 20.0
dt = 4.0
duration = 240.0

[tissue]
model = "extended_tofts"
Ktrans = [0.1, 0.3]
ve = 0.3
vp = 0.02

[fit]
fitters = ["acme_faulty:Degradable"]
chunk_voxels = 4
isolate = "{isolate}"
"""


@pytest.mark.slow
@pytest.mark.parametrize("scheduler", [None, "threads", "processes"])
def test_a_run_with_reused_children_stores_what_the_fitter_gives_in_process(
    tmp_path, scheduler
):
    from phantomdce.engine.run import open_results, run

    stored = {}
    for isolate in ("plugins", "none"):
        path = tmp_path / f"{isolate}.toml"
        path.write_text(SCENARIO.format(isolate=isolate))
        run(path, tmp_path / isolate, scheduler=scheduler if isolate == "plugins" else None,
            workers=2)
        case = open_results(tmp_path / isolate)["case_0000"].ds
        stored[isolate] = {k: case[k].values for k in ("Ktrans", "ve", "vp", "success")}
        assert not (tmp_path / isolate / "failures.csv").read_text().strip().count("\n")
    for k, values in stored["none"].items():
        np.testing.assert_array_equal(stored["plugins"][k], values)
