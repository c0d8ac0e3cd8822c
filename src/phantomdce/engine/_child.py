"""Serve one plug-in fitter spec to the process that started it (private).

``python -m phantomdce.engine._child REQUEST RESPONSE LIFELINE`` is started by
:mod:`phantomdce.engine.isolate` in its own session (so its process group holds it and every
process a plug-in starts); the three arguments are file descriptors it inherits:

- REQUEST (read): frames from the parent. The first is ``{"spec", "sys_path"}``; the child
  resolves the spec (imports the plug-in once) and answers ``{"ready": True}`` or
  ``{"error", "traceback"}`` (then exits). Each later frame is ``{"name", "data", "environ",
  "cwd"}``: the child takes the parent's current environment and working folder (as a child
  started for this chunk would have), answers ``{"started": True}`` once the chunk is loaded
  (the parent's per-chunk time limit ``fit.timeout_s`` counts from then, so it measures the
  fit), then ``{"result": Dataset}`` or ``{"error": str, "traceback": str}``. End of file
  (the parent closed the pipe or died) ends the child.
- RESPONSE (write): the answers.
- LIFELINE (read): a pipe whose write end only the parent holds and never writes. Before the
  plug-in is imported the child forks a reaper that blocks on it; end of file means the
  parent process died, and the reaper kills the whole process group (the child, whatever the
  plug-in started, itself), even if the plug-in holds the interpreter's lock in C code.

A frame is an 8-byte big-endian length and a pickle. Pickle is used only between a run and
its own child. The descriptors are made non-inheritable again, so processes a plug-in starts
do not hold them (a parent therefore sees end of file when the child dies).
"""

from __future__ import annotations

import os
import pickle
import signal
import struct
import sys
import traceback

HEADER = struct.Struct(">Q")  # frame length, bytes


def read_frame(fd: int) -> bytes | None:
    """One frame's payload from ``fd``; None at end of file before the frame starts."""
    head = _read_exact(fd, HEADER.size)
    if head is None:
        return None
    (size,) = HEADER.unpack(head)
    body = _read_exact(fd, size)
    if body is None:
        raise EOFError(f"the pipe ended inside a frame of {size} bytes")
    return body


def _read_exact(fd: int, n: int) -> bytes | None:
    parts, got = [], 0
    while got < n:
        chunk = os.read(fd, min(n - got, 1 << 20))
        if not chunk:
            if got:
                raise EOFError(f"the pipe ended after {got} of {n} bytes")
            return None
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def write_frame(fd: int, payload: bytes) -> None:
    """Write ``payload`` as one frame to the blocking descriptor ``fd``."""
    view = memoryview(HEADER.pack(len(payload)) + payload)
    while view:
        view = view[os.write(fd, view) :]


def _start_reaper(lifeline: int) -> int:
    """Fork a process that kills this process group once ``lifeline`` reaches end of file.

    Returns the reaper's process id (in this process; the reaper never returns).
    """
    if (pid := os.fork()) != 0:
        return pid
    try:  # the reaper: hold no descriptor but the lifeline (the parent must see EOF on ours)
        os.closerange(3, lifeline)
        os.closerange(lifeline + 1, 1 << 16)
        while os.read(lifeline, 1):
            pass
    except BaseException:  # noqa: BLE001, S110 - whatever happens, the group goes
        pass
    finally:
        os.killpg(0, signal.SIGKILL)
        os._exit(0)


def _failure(exc: BaseException) -> dict[str, str]:
    return {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}


def _send(fd: int, outcome: dict) -> None:
    try:
        payload = pickle.dumps(outcome, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # noqa: BLE001 - e.g. an unpicklable result
        payload = pickle.dumps({"error": f"result could not be returned: {exc}"})
    write_frame(fd, payload)


def _take_context(environ: dict[str, str], cwd: str) -> None:
    """Make this process's environment and working folder the parent's."""
    if dict(os.environ) != environ:
        os.environ.clear()
        os.environ.update(environ)
    if cwd and os.getcwd() != cwd:
        try:
            os.chdir(cwd)
        except OSError:  # gone or not reachable: stay (the parent's old folder, as before)
            pass


def serve(request: int, response: int) -> int:
    """Resolve the spec, then fit chunk after chunk until the request pipe ends; return 0."""
    frame = read_frame(request)
    if frame is None:
        return 0
    try:
        job = pickle.loads(frame)
        for path in reversed(job["sys_path"]):
            if path not in sys.path:
                sys.path.insert(0, path)
        from phantomdce.fit.registry import resolve_fitters

        spec = job["spec"]
        fitters = {info.name: info.fitter for info in resolve_fitters([spec])}
    except BaseException as exc:  # noqa: BLE001 - everything a plug-in does is reported
        _send(response, _failure(exc))
        return 0
    _send(response, {"ready": True})
    while (frame := read_frame(request)) is not None:
        job = pickle.loads(frame)
        _send(response, {"started": True})
        try:
            _take_context(job["environ"], job["cwd"])
            if job["name"] not in fitters:
                raise LookupError(f"fitter {job['name']!r} not found from {spec!r}")
            outcome = {"result": fitters[job["name"]].fit(job["data"])}
        except BaseException as exc:  # noqa: BLE001 - everything a plug-in does is reported
            outcome = _failure(exc)
        del job
        _send(response, outcome)
    return 0


def main(argv: list[str]) -> int:
    """Serve the parent on the descriptors ``argv`` names; exit 0 when it closes the pipe."""
    request, response, lifeline = (int(a) for a in argv)
    for fd in (request, response, lifeline):
        os.set_inheritable(fd, False)
    reaper = _start_reaper(lifeline)
    os.close(lifeline)
    try:
        return serve(request, response)
    except (BrokenPipeError, EOFError):  # the parent went away mid-frame
        return 0
    finally:  # a clean end (the parent closed the pipe): end the reaper and reap it here,
        os.kill(reaper, signal.SIGKILL)  # so that no orphan is left for init to reap
        os.waitpid(reaper, 0)


if __name__ == "__main__":  # pragma: no cover - runs in the child
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # without the interpreter's teardown of the plug-in's modules (seconds)
