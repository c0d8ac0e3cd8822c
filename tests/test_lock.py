"""One run per output folder (issue 14, item 4): phantomdce.engine.lock."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest

from phantomdce.dro.config import ConfigError
from phantomdce.engine.lock import LOCK_NAME, RunLockedError, hold_run_lock, lock_holder

#: A process that takes the lock of argv[1], says so, and waits to be killed; with "fork"
#: as argv[2] it first forks a child that outlives it.
HOLDER = textwrap.dedent(
    """
    import os, sys, time
    from phantomdce.engine.lock import hold_run_lock
    with hold_run_lock(sys.argv[1]):
        child = os.fork() if len(sys.argv) > 2 else -1
        if child == 0:
            time.sleep(120)
            os._exit(0)
        print("locked", child, flush=True)
        time.sleep(120)
    """
)


def _start_holder(out, *extra):
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline().split()
    assert line[:1] == ["locked"], proc.stderr.read() if proc.poll() is not None else line
    proc.child = int(line[1])
    return proc


def _kill(proc):
    proc.kill()
    proc.wait(timeout=30)
    proc.stdout.close()
    proc.stderr.close()


def test_a_second_run_into_the_same_folder_is_refused_naming_the_holder(tmp_path):
    out = tmp_path / "out"
    holder = _start_holder(out)
    try:
        with pytest.raises(RunLockedError) as err:
            with hold_run_lock(out):
                pytest.fail("took a lock that another process holds")
        message = str(err.value)
        assert str(out) in message
        assert f"process {holder.pid}" in message
        assert f"host {socket.gethostname()}" in message
        started = err.value.holder["started"]
        assert started.endswith("Z") and f"started {started}" in message
        assert isinstance(err.value, ConfigError)  # the CLI prints it as one line
        assert lock_holder(out)["pid"] == holder.pid
    finally:
        _kill(holder)


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    out = tmp_path / "out"
    holder = _start_holder(out)
    _kill(holder)  # SIGKILL: no cleanup code runs
    assert json.loads((out / LOCK_NAME).read_text())["pid"] == holder.pid  # its record stays
    assert lock_holder(out) is None
    with hold_run_lock(out):
        assert lock_holder(out)["pid"] == os.getpid()
    assert (out / LOCK_NAME).read_text() == ""  # released: the record is cleared


def test_a_forked_child_that_outlives_the_run_does_not_keep_the_lock(tmp_path):
    out = tmp_path / "out"
    holder = _start_holder(out, "fork")
    try:
        _kill(holder)
        os.kill(holder.child, 0)  # the child lives on, orphaned
        assert lock_holder(out) is None
        with hold_run_lock(out):
            pass
    finally:
        os.kill(holder.child, signal.SIGKILL)


def test_the_lock_is_released_when_the_run_raises(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ZeroDivisionError):
        with hold_run_lock(out):
            assert lock_holder(out)["pid"] == os.getpid()
            1 / 0  # noqa: B018
    assert lock_holder(out) is None
    # and another process takes it at once
    holder = _start_holder(out)
    _kill(holder)


def test_the_lock_is_reentrant_in_one_process(tmp_path):
    out = tmp_path / "study"
    with hold_run_lock(out):
        with hold_run_lock(out):
            pass
        assert lock_holder(out)["pid"] == os.getpid()  # the inner exit kept the lock
        with hold_run_lock(out / "scenario_a"):  # a study's run inside its folder
            assert lock_holder(out / "scenario_a")["pid"] == os.getpid()
    assert lock_holder(out) is None and lock_holder(out / "scenario_a") is None


def test_the_lock_creates_the_folder_and_adds_only_its_file(tmp_path):
    out = tmp_path / "a" / "b"
    with hold_run_lock(out) as path:
        assert path == out / LOCK_NAME
    assert [p.name for p in out.iterdir()] == [LOCK_NAME]


def test_a_file_where_the_folder_should_be_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        with hold_run_lock(tmp_path / "f"):
            pass


def test_an_unreadable_record_still_gives_a_sentence(tmp_path, monkeypatch):
    import phantomdce.engine.lock as lock

    monkeypatch.setattr(lock, "_RECORD_WAIT_S", 0.05)
    out = tmp_path / "out"
    holder = _start_holder(out)
    try:
        # the holder is stopped between taking the lock and writing its record: simulate by
        # erasing the record while it holds the lock
        (out / LOCK_NAME).write_text("")
        with pytest.raises(RunLockedError, match="its record is unreadable"):
            with hold_run_lock(out):
                pass
    finally:
        _kill(holder)
