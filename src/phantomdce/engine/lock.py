"""One run per output folder: an exclusive OS-level lock on ``OUT/.lock``.

Two runs started into the same folder would otherwise write the same store and the same
``metrics.csv`` at once. :func:`hold_run_lock` takes an exclusive ``flock`` on the file
``OUT/.lock`` (:data:`LOCK_NAME`) for as long as the run lasts; a second run into the same
folder fails at once with :class:`RunLockedError`, whose message names the folder and the
process id, host and start time of the run that holds it.

The lock is the kernel's, not the file's existence: it dies with the process that holds it
(even under SIGKILL), so a killed run never leaves a stale lock, and the next run takes it.
The file itself stays in the folder (removing it would let two runs lock two different
files of the same name); between runs it is empty. It is the only thing the lock adds to
``OUT``: a folder that holds nothing but ``.lock`` (a run killed just after creating it) is
an empty folder for every other purpose (the engine's check of an existing folder ignores
:data:`LOCK_NAME`).

The record in the file while a run holds it is one JSON object: ``pid`` (int), ``host``
(str, :func:`socket.gethostname`), ``started`` (str, ISO 8601 UTC, seconds) and
``command`` (str, the process's command line). It is for the message only: the lock is the
``flock``, never the record.

The lock is re-entrant within one process (a study that locks its folder and then runs each
scenario into a locked sub-folder, or a caller and the engine both taking it), and it is not
inherited: a child forked while it is held closes its copy of the descriptor, so a child
that outlives its parent cannot keep the folder locked. Needs ``fcntl`` (POSIX).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from phantomdce.dro.config import ConfigError

__all__ = ["LOCK_NAME", "RunLockedError", "hold_run_lock", "lock_holder"]

#: Name of the lock file inside the output folder.
LOCK_NAME = ".lock"

#: How long a refused run waits for the holder's record to appear (the holder writes it
#: right after it takes the lock), in s.
_RECORD_WAIT_S = 1.0

# path -> [fd, depth] of the locks this process holds (re-entrancy); guarded by _GUARD
_HELD: dict[str, list[int]] = {}
_GUARD = threading.Lock()


class RunLockedError(ConfigError):
    """Another process holds the lock of the output folder.

    Attributes
    ----------
    out : pathlib.Path
        The output folder.
    holder : dict
        The holder's record (``pid``, ``host``, ``started``, ``command``); empty if it
        could not be read.
    """

    def __init__(self, out: Path, holder: dict[str, Any]) -> None:
        self.out = Path(out)
        self.holder = dict(holder)
        if holder:
            who = (
                f"process {holder.get('pid', '?')} on host {holder.get('host', '?')},"
                f" started {holder.get('started', '?')}"
            )
        else:
            who = "another process (its record is unreadable)"
        super().__init__(
            f"{self.out} is in use by another phantomdce run: {who}; wait for it to finish"
            " (or stop it) and run the same command again, or choose another folder"
        )


def _record() -> dict[str, Any]:
    started = dt.datetime.now(dt.UTC).replace(microsecond=0)
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": started.isoformat().replace("+00:00", "Z"),
        "command": " ".join(sys.argv),
    }


def _read_record(fd: int) -> dict[str, Any]:
    try:
        raw = os.pread(fd, 65536, 0)
        rec = json.loads(raw.decode("utf-8"))
    except (OSError, ValueError):
        return {}
    return rec if isinstance(rec, dict) and "pid" in rec else {}


def _alive_here(rec: dict[str, Any]) -> bool:
    """False for a record of a process on this host that no longer exists (a stale record)."""
    if rec.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(rec["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError, OverflowError):
        return True
    return True


def _holder_of_locked(fd: int) -> dict[str, Any]:
    """The record of the process that holds the lock of ``fd``'s file.

    The holder writes its record right after taking the lock: until then the file is empty
    or still holds the record of a killed run. Wait (at most :data:`_RECORD_WAIT_S`) for a
    record of a living process.
    """
    deadline = time.monotonic() + _RECORD_WAIT_S
    rec = _read_record(fd)
    while not (rec and _alive_here(rec)) and time.monotonic() < deadline:
        time.sleep(0.02)
        rec = _read_record(fd)
    return rec


def lock_holder(out: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Who holds the lock of ``out`` now: the holder's record, or None if nobody does.

    Parameters
    ----------
    out : str or path-like
        An output folder.

    Returns
    -------
    dict or None
        ``pid``, ``host``, ``started``, ``command`` of the run that holds the lock (empty
        if its record cannot be read; this process's own record if it holds it); None if
        the folder or its lock file does not exist or nobody holds the lock.
    """
    import fcntl

    path = Path(out) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _holder_of_locked(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _close_inherited() -> None:
    """In a forked child: close (never unlock) the parent's lock descriptors."""
    for fd, _ in _HELD.values():
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()
    global _GUARD
    _GUARD = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_inherited)


@contextlib.contextmanager
def hold_run_lock(out: str | os.PathLike[str]) -> Iterator[Path]:
    """Hold the exclusive lock of the output folder ``out`` for the ``with`` block.

    Creates ``out`` (and its parents) if needed, then ``out/.lock``; takes an exclusive
    ``fcntl.flock`` on it without waiting and writes this process's record into it (see the
    module docstring). On leaving the block, also by an exception, the record is cleared
    and the lock released; if the process dies instead, the kernel releases it.

    Parameters
    ----------
    out : str or path-like
        The output folder of a run (or of a study).

    Yields
    ------
    pathlib.Path
        The lock file, ``out/.lock``.

    Raises
    ------
    RunLockedError
        Another process holds the lock: the message names ``out`` and that process's id,
        host and start time.
    ConfigError
        ``out`` (or one of its parents) is a file.
    OSError
        The folder or its lock file cannot be created (permissions, full disk).

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     with hold_run_lock(tmp) as path:
    ...         print(path.name, lock_holder(tmp)["pid"] == os.getpid())
    ...     print(lock_holder(tmp))
    .lock True
    None
    """
    import fcntl

    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ConfigError(
            f"{out}: exists and is a file (or lies in one); expected a folder"
        ) from None
    path = out / LOCK_NAME
    key = os.path.realpath(path)
    with _GUARD:
        if key in _HELD:
            _HELD[key][1] += 1
            held = True
        else:
            held = False
    if held:
        try:
            yield path
        finally:
            with _GUARD:
                _HELD[key][1] -= 1
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        try:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holder = _holder_of_locked(fd)
        finally:
            os.close(fd)
        raise RunLockedError(out, holder) from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_record()).encode("utf-8"), 0)
        with _GUARD:
            _HELD[key] = [fd, 1]
    except BaseException:
        os.close(fd)
        raise
    try:
        yield path
    finally:
        with _GUARD:
            _HELD[key][1] -= 1
            last = _HELD[key][1] == 0
            if last:
                del _HELD[key]
        if last:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
