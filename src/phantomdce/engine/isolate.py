"""Run a plug-in fitter on one chunk in a child process, and describe its failures.

``fit.isolate`` runs a fitter in a child interpreter (:mod:`phantomdce.engine._child`), so
that a crash, a hang or a memory blow-up of a plug-in is recorded as that fitter's failure on
that chunk (``failures.csv``) and the run goes on.

The child is reused: each process that fits (the run, a dask worker process, a
``dask.distributed`` worker) keeps idle children per fitter spec, started on first use with
the plug-in imported once, and hands each chunk to one over a pipe. A thread takes an idle
child or starts its own, so threads never share one. A child is replaced after a crash, a
time-out or a protocol error, and when the parent's ``sys.path`` changed since it started (the
plug-in would resolve differently); each chunk carries the parent's current environment and
working folder, which the child takes before fitting (as a child started for it would).

Process tree: a child runs in its own session; on a time-out or a crash, and when it is
closed, its whole process group is killed (``os.killpg``), so processes a plug-in started go
with it. If the parent dies (even by SIGKILL), a reaper forked by the child sees its lifeline
pipe end and kills the group. No file is written: the child's stderr (whose last lines a
crash reports) goes to an anonymous temporary file that vanishes with its descriptors.
:func:`close_workers` ends this process's children (a run calls it when it ends); it also
runs at interpreter exit.
"""

from __future__ import annotations

import atexit
import os
import pickle
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import xarray as xr

from phantomdce.engine._child import HEADER

__all__ = [
    "FitterError",
    "describe_failure",
    "last_frames",
    "fit_isolated",
    "close_workers",
    "worker_pids",
    "TRACEBACK_FRAMES",
    "CHILD_STARTUP_LIMIT_S",
]


#: Frames of a failed fitter's traceback kept in ``failures.csv`` (the innermost ones).
TRACEBACK_FRAMES = 4


class FitterError(RuntimeError):
    """A fitter failed in its child process; the message is ``"<Type>: <message>"``.

    Attributes
    ----------
    traceback : str
        The child's formatted traceback (empty if there was none).
    """

    def __init__(self, message: str, traceback: str = "") -> None:
        super().__init__(message)
        self.traceback = traceback


def describe_failure(exc: BaseException) -> tuple[str, str]:
    """How ``failures.csv`` records an exception: ``("<Type>: <message>", last frames)``.

    The type is named once (a :class:`FitterError` from a child already carries it); the
    traceback keeps the innermost :data:`TRACEBACK_FRAMES` frames (:func:`last_frames`).
    """
    import traceback

    if isinstance(exc, FitterError):
        return str(exc), last_frames(exc.traceback)
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return f"{type(exc).__name__}: {exc}", last_frames(text)


def last_frames(text: str, n: int = TRACEBACK_FRAMES) -> str:
    """The innermost ``n`` frames of a formatted traceback (header and frames only).

    The exception line itself is left out: ``failures.csv`` has it in ``error``.
    """
    lines = text.rstrip("\n").splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("  File ")]
    if not starts:
        return ""
    end = starts[-1] + 1
    while end < len(lines) and lines[end].startswith("    "):  # source line, ^^^ markers
        end += 1
    cut = len(starts) > n
    head = ["Traceback (most recent call last):", *(["  ..."] if cut else [])]
    return "\n".join([*head, *lines[starts[-n] if cut else starts[0] : end]])


#: Seconds a fitter's child process may take to start (interpreter, imports, plug-in
#: resolution), and to take a chunk in, before ``fit.timeout_s`` starts counting; past it
#: the chunk fails.
CHILD_STARTUP_LIMIT_S = 120.0

_POLL_S = 0.25  # how often a wait checks that the child is still alive, s
_GRACE_S = 5.0  # how long an idle child that is closed may take to end by itself, s
_READ_BYTES = 1 << 20


class _Ended(Exception):
    """The child closed its pipe or exited before answering."""


class _Late(Exception):
    """The child did not answer before the deadline."""


def _context() -> tuple[str, ...]:
    """What a child's plug-in resolution depends on: the parent's ``sys.path``."""
    return tuple(sys.path)


def _cwd() -> str:
    try:
        return os.getcwd()
    except OSError:  # the folder was removed: the child stays where it is
        return ""


def _ready(fd: int, event: int, timeout_s: float) -> bool:
    """Whether ``fd`` is ready for ``event`` (or at its end, or broken) within ``timeout_s``.

    ``poll``, not ``select``: a busy process (dask, many stores) may hold descriptors past
    ``select``'s limit of 1024.
    """
    poller = select.poll()
    poller.register(fd, event)
    return bool(poller.poll(max(0.0, timeout_s) * 1000.0))


class _Worker:
    """One child serving one fitter spec to this process (see the module docstring)."""

    def __init__(self, spec: str, context: tuple, generation: int) -> None:
        self.spec, self.context, self.generation = spec, context, generation
        self.owner = os.getpid()
        self.returncode: int | None = None
        self._buffer = bytearray()
        self.log = tempfile.TemporaryFile(prefix="phantomdce-fit-")
        req_r, self.req = os.pipe()
        self.res, res_w = os.pipe()
        life_r, self.life = os.pipe()
        child_ends = (req_r, res_w, life_r)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "phantomdce.engine._child", *map(str, child_ends)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=self.log,
                pass_fds=child_ends,
                start_new_session=True,
            )
        except BaseException:
            self._close_fds()
            raise
        finally:
            for fd in child_ends:
                os.close(fd)
        self.pid = self.proc.pid
        os.set_blocking(self.req, False)
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> None:
        payload = pickle.dumps({"spec": self.spec, "sys_path": list(self.context)})
        try:
            deadline = time.monotonic() + CHILD_STARTUP_LIMIT_S
            self._send(payload, deadline)
            answer = pickle.loads(self._receive(deadline))
        except _Late:
            raise TimeoutError(
                f"the fitter's process did not start within {CHILD_STARTUP_LIMIT_S:g} s"
            ) from None
        except _Ended:
            raise self._ended() from None
        if "error" in answer:  # the spec did not resolve: the child has exited
            raise FitterError(answer["error"], answer.get("traceback", ""))

    def fit(self, name: str, data: xr.Dataset, timeout: float) -> Any:
        """Fit ``data`` with fitter ``name``; the time limit ``timeout`` (s) counts the fit."""
        os.ftruncate(self.log.fileno(), 0)  # the log holds this chunk's stderr only
        os.lseek(self.log.fileno(), 0, os.SEEK_SET)  # (the offset is shared with the child)
        job = {"name": name, "data": data, "environ": dict(os.environ), "cwd": _cwd()}
        payload = pickle.dumps(job, protocol=pickle.HIGHEST_PROTOCOL)
        del job
        try:
            deadline = time.monotonic() + CHILD_STARTUP_LIMIT_S
            self._send(payload, deadline)
            del payload
            self._receive(deadline)  # "started": the chunk is loaded, the fit begins
            try:
                answer = pickle.loads(self._receive(time.monotonic() + timeout))
            except _Late:
                self.close()
                raise TimeoutError(
                    f"ran past the time limit of {timeout:g} s per chunk"
                ) from None
        except _Late:
            self.close()
            raise RuntimeError(
                f"the fitter's process did not take the chunk within"
                f" {CHILD_STARTUP_LIMIT_S:g} s"
            ) from None
        except _Ended:
            raise self._ended() from None
        if "error" in answer:
            raise FitterError(answer["error"], answer.get("traceback", ""))
        return answer["result"]

    def _ended(self) -> RuntimeError:
        try:  # let an exiting child finish, so that its own exit code is reported
            self.proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            pass
        size = os.fstat(self.log.fileno()).st_size
        start = max(0, size - 8192)
        text = os.pread(self.log.fileno(), size - start, start) if size else b""
        code = self.close()
        tail = " | ".join(text.decode(errors="replace").strip().splitlines()[-3:])
        return RuntimeError(
            f"the fitter's process ended without a result (exit code {code})"
            + (f": {tail}" if tail else "")
        )

    def _send(self, payload: bytes, deadline: float) -> None:
        view = memoryview(HEADER.pack(len(payload)) + payload)
        while view:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _Late
            if not _ready(self.req, select.POLLOUT, min(remaining, _POLL_S)):
                if self.proc.poll() is not None:
                    raise _Ended
                continue
            try:
                view = view[os.write(self.req, view[:_READ_BYTES]) :]
            except BlockingIOError:
                continue
            except BrokenPipeError:
                raise _Ended from None

    def _receive(self, deadline: float) -> bytes:
        """One frame from the child; :class:`_Late` past ``deadline``, :class:`_Ended` at EOF."""
        buf = self._buffer
        while True:
            if len(buf) >= HEADER.size:
                (size,) = HEADER.unpack_from(buf)
                if len(buf) >= HEADER.size + size:
                    frame = bytes(buf[HEADER.size : HEADER.size + size])
                    del buf[: HEADER.size + size]
                    return frame
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _Late
            if _ready(self.res, select.POLLIN, min(remaining, _POLL_S)):
                chunk = os.read(self.res, _READ_BYTES)
                if not chunk:
                    raise _Ended
                buf += chunk
            elif self.proc.poll() is not None and not _ready(self.res, select.POLLIN, 0):
                raise _Ended  # (a process the plug-in forked may hold the pipe open)

    def alive(self) -> bool:
        """Whether the child is running and this process started it."""
        return self.returncode is None and self.owner == os.getpid() and self.proc.poll() is None

    def close(self, graceful: bool = False) -> int | None:
        """Kill the child's process group, reap the child, drop the log; return its exit code.

        ``graceful``: first close the child's request pipe and give it :data:`_GRACE_S` to
        end by itself (it then reaps its own reaper, leaving no orphan behind).
        """
        if graceful and self.returncode is None and self.owner == os.getpid():
            self._close_request()  # (the lifeline stays: its end would set off the reaper)
            try:
                self.proc.wait(timeout=_GRACE_S)
            except subprocess.TimeoutExpired:
                pass
        if self.returncode is None and self.owner == os.getpid():
            try:  # the group outlives its leader while any member lives: the id stays its own
                os.killpg(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self.returncode = self.proc.wait()
            self._close_fds()
        self.log.close()
        return self.returncode

    def forget(self) -> None:
        """In a forked copy of the parent: drop the inherited descriptors, leave the child."""
        self.owner = -1
        self.proc.returncode = 0  # not this process's child: never to be waited for here
        self._close_fds()
        self.log.close()

    def _close_request(self) -> None:
        self._close_fds(("req",))

    def _close_fds(self, names: tuple[str, ...] = ("req", "res", "life")) -> None:
        for name in names:
            fd = getattr(self, name, -1)
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
                setattr(self, name, -1)


_LOCK = threading.Lock()
_IDLE: dict[str, list[_Worker]] = {}  # spec -> idle children of this process
_LIVE: set[_Worker] = set()  # every child this process started and has not closed
_GENERATION = 0  # close_workers() bumps it: children busy then are closed when handed back


def _take(spec: str) -> _Worker:
    context = _context()
    stale = []
    with _LOCK:
        idle = _IDLE.get(spec, [])
        while idle:
            worker = idle.pop()
            if worker.context == context and worker.alive():
                return worker
            stale.append(worker)
        generation = _GENERATION
    for worker in stale:
        _discard(worker, graceful=True)
    worker = _Worker(spec, context, generation)
    with _LOCK:
        _LIVE.add(worker)
    return worker


def _hand_back(worker: _Worker) -> None:
    with _LOCK:
        if worker.generation == _GENERATION and worker.alive():
            _IDLE.setdefault(worker.spec, []).append(worker)
            return
    _discard(worker, graceful=True)


def _discard(worker: _Worker, graceful: bool = False) -> None:
    worker.close(graceful)
    with _LOCK:
        _LIVE.discard(worker)


def fit_isolated(spec: str, info, data: xr.Dataset, timeout: float) -> xr.Dataset:
    """Fit one chunk in a child process; ``timeout`` (s) counts the fit only.

    The child (:mod:`phantomdce.engine._child`) is reused from an earlier chunk of the same
    ``spec`` in this process, or started (with its own limit, :data:`CHILD_STARTUP_LIMIT_S`,
    so a slow start on a loaded machine does not count against the fit's). The time limit
    starts once the child has loaded the chunk. A time-out or a crash kills the child's
    whole process group; the next chunk gets a new child. The result is the fitter's own,
    unpickled (identical to calling ``info.fitter.fit(data)`` in this process).

    Parameters
    ----------
    spec : str
        The fitter spec the run was given (resolved again in the child).
    info : FitterInfo
        The resolved fitter; its ``name`` selects among the fitters the spec provides.
    data : xarray.Dataset
        The chunk, as the fitter would receive it.
    timeout : float
        Time limit per chunk for the fit, s.

    Raises
    ------
    TimeoutError
        The fit ran past ``timeout`` or the child did not start in time.
    FitterError
        The fitter (or the plug-in's import) raised; the message names the exception.
    RuntimeError
        The child ended without an answer (a crash: its exit code and last stderr lines).
    """
    worker = _take(spec)
    try:
        result = worker.fit(info.name, data, timeout)
    except FitterError:
        _hand_back(worker)  # the fitter raised; the child is fine
        raise
    except BaseException:
        _discard(worker)
        raise
    _hand_back(worker)
    return result


def close_workers() -> int:
    """End this process's idle fitter children (and mark busy ones to end when done).

    Safe to call any time, e.g. when a run ends; the next isolated chunk starts a new child.
    Returns the number of children ended.
    """
    global _GENERATION
    with _LOCK:
        _GENERATION += 1
        idle = [w for workers in _IDLE.values() for w in workers]
        _IDLE.clear()
    _end(idle)
    return len(idle)


def _end(workers: list[_Worker]) -> None:
    """Close children: all their request pipes first, so that they end side by side."""
    for worker in workers:
        if worker.owner == os.getpid():
            worker._close_request()
    for worker in workers:
        _discard(worker, graceful=True)


def worker_pids(spec: str | None = None) -> list[int]:
    """Process ids of this process's live fitter children (of ``spec``, or all)."""
    with _LOCK:
        return sorted(w.pid for w in _LIVE if spec in (None, w.spec) and w.alive())


def _close_all() -> None:
    """At interpreter exit: end every child this process started, busy or idle."""
    with _LOCK:
        workers = list(_LIVE)
        _IDLE.clear()
    _end(workers)


def _forget_after_fork() -> None:
    """In a forked child of this process: its fitter children are the parent's, not ours."""
    global _LOCK
    _LOCK = threading.Lock()
    for worker in _LIVE:
        worker.forget()
    _LIVE.clear()
    _IDLE.clear()


atexit.register(_close_all)
os.register_at_fork(after_in_child=_forget_after_fork)
