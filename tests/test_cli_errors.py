"""Faults of the surroundings give one sentence, never a traceback (issue 14, item 10).

Each fault is provoked for real where that is cheap: a file-size limit (``RLIMIT_FSIZE`` in
a child process), a damaged chunk of a finished run, a truncated or garbled ``metrics.csv``;
a full disk is an ``fsync`` that fails with ENOSPC while ``metrics.csv`` is written, and a
lost dask scheduler the exception dask.distributed raises then (a real scheduler killed
mid-run is the slow test).
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from phantomdce.cli import EXIT_FAULT, EXIT_USAGE, main
from phantomdce.dro.config import ConfigError
from phantomdce.engine.gate import make_baseline
from phantomdce.engine.run import run

from test_engine import estimates, metrics_without_timing, scenario


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished tiny run: (scenario file, result folder). Copy it before damaging it."""
    tmp = tmp_path_factory.mktemp("faults")
    path = scenario(tmp, replicates=2)
    run(path, tmp / "run")
    return path, tmp / "run"


def copy_of(finished, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished[1], out)
    return out


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "phantomdce.cli", *args],
        capture_output=True,
        text=True,
        timeout=600,
        **kwargs,
    )


def test_a_full_disk_is_one_sentence_and_the_run_resumes(finished, tmp_path, monkeypatch, capsys):
    path, _ = finished
    out = tmp_path / "run"
    real_fsync = os.fsync

    def full_disk(fd):
        if ".metrics.csv." in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to tell which file is synced")
    monkeypatch.setattr(os, "fsync", full_disk)
    assert main(["run", str(path), "-o", str(out), "-q"]) == EXIT_FAULT
    line = one_line(capsys.readouterr().err)
    assert line == (
        "phantomdce: error: a disk is full ([Errno 28] No space left on device): free some"
        f" space (the output goes to {out}) and run the same command again to resume"
    )
    assert not (out / "metrics.csv").exists()
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert main(["run", str(path), "-o", str(out), "-q"]) == 0
    assert metrics_without_timing(out) == metrics_without_timing(finished[1])


@pytest.mark.slow
def test_a_file_size_limit_is_one_sentence_and_the_run_resumes(finished, tmp_path):
    import resource

    path, done = finished
    # a limit that every unit's files pass and the summaries of the run do not: the
    # consolidated metadata (.zmetadata) and metrics.csv, written when the run is finalized
    sizes = {p.name: p.stat().st_size for p in done.rglob("*") if p.is_file()}
    last = [sizes.pop("metrics.csv"), sizes.pop(".zmetadata")]
    limit = max(sizes.values()) + 1
    assert min(last) > limit

    def limited():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    out = tmp_path / "run"
    proc = cli("run", str(path), "-o", str(out), "-q", preexec_fn=limited)
    assert proc.returncode == EXIT_FAULT, proc.stderr
    line = one_line(proc.stderr)
    assert "a file reached this process's file-size limit" in line
    assert "[Errno 27] File too large" in line
    assert line.endswith(
        f"raise or lift the limit (the output goes to {out}) and run the same command again to"
        " resume"
    )
    assert not (out / "metrics.csv").exists()
    proc = cli("run", str(path), "-o", str(out), "-q")
    assert proc.returncode == 0, proc.stderr
    assert metrics_without_timing(out) == metrics_without_timing(done)


@pytest.mark.parametrize(
    "damage",
    [
        lambda raw: raw[: len(raw) // 2],  # truncated
        lambda raw: b"",  # emptied
        lambda raw: bytes(range(256)) * 2,  # garbled
    ],
    ids=["truncated", "emptied", "garbled"],
)
def test_a_damaged_chunk_is_named_in_one_sentence(finished, tmp_path, capsys, damage):
    # a DRO store (simulate's) read by export-nifti: no run digests to repair it from
    store = tmp_path / "dro.zarr"
    assert main(["simulate", str(finished[0]), "-o", str(store), "-q"]) == 0
    capsys.readouterr()
    chunk = store / "case_0000" / "signal" / "0.0"
    chunk.write_bytes(damage(chunk.read_bytes()))
    assert main(["export-nifti", str(store), "-o", str(tmp_path / "nii")]) == EXIT_FAULT
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"phantomdce: error: the store is damaged: {chunk} cannot be read (")
    assert line.endswith(
        "; delete it and run the command that made the store (`phantomdce run` or `simulate`)"
        " again"
    )


def test_a_full_disk_inside_a_fitter_stops_the_run_instead_of_failing_the_fitter(
    finished, tmp_path, monkeypatch, capsys
):
    # a fitter whose kernel cache (numba, cache=True) cannot be written: the fit itself is fine
    from phantomdce.fit.nlls import NLLSFitter

    def no_space(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(NLLSFitter, "fit", no_space)
    out = tmp_path / "run"
    status = main(["run", str(finished[0]), "-o", str(out), "-q"])
    err = capsys.readouterr().err
    assert status == EXIT_FAULT, err
    assert "a disk is full" in one_line(err)
    monkeypatch.undo()
    assert main(["run", str(finished[0]), "-o", str(out), "-q"]) == 0  # nothing blamed, kept
    assert metrics_without_timing(out) == metrics_without_timing(finished[1])


def test_a_lost_dask_scheduler_is_one_sentence(finished, tmp_path, monkeypatch, capsys):
    pytest.importorskip("distributed")
    from distributed.client import FutureCancelledError

    import phantomdce.engine.run as engine

    def lost(*args, **kwargs):
        raise FutureCancelledError(
            "run_unit-1", "scheduler-connection-lost", "Client lost the connection.\nRe-run."
        )

    monkeypatch.setattr(engine, "execute", lost)
    address = "tcp://127.0.0.1:8786"
    out = tmp_path / "run"
    argv = ["run", str(finished[0]), "-o", str(out), "--scheduler", address, "-q"]
    assert main(argv) == EXIT_FAULT
    line = one_line(capsys.readouterr().err)
    assert line == (
        f"phantomdce: error: lost the dask scheduler at {address}: scheduler-connection-lost;"
        " the finished chunks are kept: start the scheduler and its workers again and run the"
        " same command again to resume"
    )


def test_an_unrelated_error_in_a_distributed_run_is_not_called_a_lost_scheduler(
    finished, tmp_path, monkeypatch, capsys
):
    import phantomdce.engine.run as engine

    def refused(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", "x.json")

    monkeypatch.setattr(engine, "execute", refused)
    argv = ["run", str(finished[0]), "-o", str(tmp_path / "r"), "--scheduler", "tcp://h:1", "-q"]
    assert main(argv) == EXIT_USAGE
    assert "Permission denied" in one_line(capsys.readouterr().err)


DAMAGED_CSV = pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda raw: raw[: len(raw) // 3], "is cut short"),  # a disk that filled mid-line
        (lambda raw: raw[:200] + b"\xff\xfe\x00" + raw[200:], "is damaged: not CSV text"),
        (lambda raw: b"\x00" * len(raw), "is empty or damaged"),  # zeros after a crash
    ],
    ids=["truncated", "not-utf8", "zeros"],
)


@DAMAGED_CSV
@pytest.mark.parametrize("command", ["check", "baseline"])
def test_a_damaged_metrics_csv_is_one_line(finished, tmp_path, capsys, damage, message, command):
    good = tmp_path / "good.json"
    assert main(["baseline", str(finished[1]), "-o", str(good)]) == 0
    capsys.readouterr()
    out = copy_of(finished, tmp_path)
    metrics = out / "metrics.csv"
    metrics.write_bytes(damage(metrics.read_bytes()))
    if command == "check":
        argv = ["check", str(out), "--baseline", str(good)]
    else:
        argv = ["baseline", str(out), "-o", str(tmp_path / "new.json")]
    assert main(argv) == EXIT_USAGE
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"phantomdce: error: {metrics}")
    assert line.endswith("run the same `phantomdce run` command again to rewrite it")
    assert not (tmp_path / "new.json").exists()


@DAMAGED_CSV
def test_the_gate_says_what_is_wrong_in_a_damaged_metrics_csv(finished, tmp_path, damage, message):
    # run.json and metrics.csv only, as a run from before recorded digests: the gate reads it
    out = tmp_path / "run"
    out.mkdir()
    shutil.copy(finished[1] / "run.json", out)
    metrics = out / "metrics.csv"
    metrics.write_bytes(damage((finished[1] / "metrics.csv").read_bytes()))
    with pytest.raises(ConfigError) as err:
        make_baseline(out)
    assert str(err.value).startswith(str(metrics)) and message in str(err.value)
    assert "\n" not in str(err.value)


def test_a_damaged_run_json_is_one_line(finished, tmp_path, capsys):
    out = copy_of(finished, tmp_path)
    (out / "run.json").write_bytes((out / "run.json").read_bytes()[:50])
    assert main(["baseline", str(out), "-o", str(tmp_path / "b.json")]) == EXIT_USAGE
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"phantomdce: error: {out / 'run.json'} is damaged: not JSON (")


def test_every_output_of_a_run_has_the_umask_s_mode(tmp_path):
    """run.json, metrics.csv, markers and chunks alike: 0666 minus the umask (not 0600)."""
    path = scenario(tmp_path, replicates=1)
    old = os.umask(0o022)
    try:
        assert main(["run", str(path), "-o", str(tmp_path / "run"), "-q"]) == 0
    finally:
        os.umask(old)
    modes = {
        str(p.relative_to(tmp_path)): oct(stat.S_IMODE(p.stat().st_mode))
        for p in (tmp_path / "run").rglob("*")
        if p.is_file() and p.name != ".lock"
    }
    assert modes["run/run.json"] == "0o644"
    assert set(modes.values()) == {"0o644"}, modes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_an_unreachable_scheduler_is_one_sentence(finished, tmp_path):
    pytest.importorskip("distributed")
    address = f"tcp://127.0.0.1:{_free_port()}"
    env = {**os.environ, "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "1s"}
    out = tmp_path / "run"
    proc = cli("run", str(finished[0]), "-o", str(out), "--scheduler", address, "-q", env=env)
    assert proc.returncode == EXIT_FAULT, proc.stderr
    line = one_line(proc.stderr)
    assert line.startswith(f"phantomdce: error: cannot reach the dask scheduler at {address} (")
    assert line.endswith("start it (or check the address) and run the same command again to resume")


@pytest.mark.slow
def test_a_scheduler_killed_mid_run_is_one_sentence_and_the_run_resumes(tmp_path):
    pytest.importorskip("distributed")
    path = scenario(tmp_path, replicates=40, chunk=8)
    address = f"tcp://127.0.0.1:{_free_port()}"
    port = address.rsplit(":", 1)[1]
    module = [sys.executable, "-m"]
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    started = []

    def start(*cmd):
        started.append(subprocess.Popen(cmd, **quiet))
        return started[-1]

    out = tmp_path / "run"
    env = {**os.environ, "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "2s"}
    try:
        scheduler = start(
            *module, "distributed.cli.dask_scheduler", "--port", port, "--no-dashboard"
        )
        worker = [address, "--nthreads", "1", "--no-nanny", "--no-dashboard"]
        start(*module, "distributed.cli.dask_worker", *worker)  # no nanny: ends when killed
        cmd = [*module, "phantomdce.cli", "run", str(path), "-o", str(out)]
        cmd += ["--scheduler", address, "-q"]
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        deadline = time.monotonic() + 300
        while len(list((out / "progress").glob("*.json"))) < 2 and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.1)
        scheduler.kill()
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == EXIT_FAULT, err
        line = one_line(err)
        assert line.startswith(f"phantomdce: error: lost the dask scheduler at {address}: ")
        assert line.endswith("run the same command again to resume")
    finally:
        for p in started:
            p.kill()
            p.wait(timeout=60)
    run(path, tmp_path / "whole")
    assert main(["run", str(path), "-o", str(out), "-q"]) == 0
    # bitwise the estimates of an uninterrupted run in this process
    resumed, whole = estimates(out), estimates(tmp_path / "whole")
    for case in whole:
        for name, values in whole[case].items():
            np.testing.assert_array_equal(resumed[case][name], values, err_msg=f"{case} {name}")
