"""Run a plug-in fitter on one chunk in a child process, and describe its failures.

``fit.isolate`` runs a fitter in a child interpreter (:mod:`phantomdce.engine._child`), so
that a crash, a hang or a memory blow-up of a plug-in is recorded as that fitter's failure on
that chunk (``failures.csv``) and the run goes on.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import xarray as xr

__all__ = [
    "FitterError",
    "describe_failure",
    "last_frames",
    "fit_isolated",
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
#: resolution) before ``fit.timeout_s`` starts counting; past it the chunk fails.
CHILD_STARTUP_LIMIT_S = 120.0


def fit_isolated(spec: str, info, data: xr.Dataset, timeout: float) -> xr.Dataset:
    """Fit one chunk in a child process; ``timeout`` (s) counts from the child's READY signal.

    The child (:mod:`phantomdce.engine._child`) creates a READY file once its interpreter is
    up and the fitter is imported and resolved, so a slow start on a loaded machine does not
    count against the fit's time limit; the start-up has its own limit,
    :data:`CHILD_STARTUP_LIMIT_S`. A result written within the limit is accepted even if the
    child's interpreter has not finished exiting.
    """
    with tempfile.TemporaryDirectory(prefix="phantomdce-fit-") as tmp:
        src, dst = Path(tmp) / "in.pkl", Path(tmp) / "out.pkl"
        ready, log = Path(tmp) / "ready", Path(tmp) / "stderr.txt"
        with open(src, "wb") as fh:
            pickle.dump({"spec": spec, "name": info.name, "sys_path": sys.path, "data": data}, fh)
        with open(log, "w") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "phantomdce.engine._child", str(src), str(dst), str(ready)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
            try:
                started = time.monotonic()
                while not ready.exists() and proc.poll() is None:
                    if time.monotonic() - started > CHILD_STARTUP_LIMIT_S:
                        raise TimeoutError(
                            f"the fitter's process did not start within"
                            f" {CHILD_STARTUP_LIMIT_S:g} s"
                        )
                    time.sleep(0.01)
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    if not dst.exists():  # else the fit ended in time, the interpreter's exit not
                        raise TimeoutError(
                            f"ran past the time limit of {timeout:g} s per chunk"
                        ) from None
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        if not dst.exists():
            tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])
            raise RuntimeError(
                f"the fitter's process ended without a result (exit code {proc.returncode})"
                + (f": {tail}" if tail else "")
            )
        with open(dst, "rb") as fh:
            outcome = pickle.load(fh)
    if "error" in outcome:
        raise FitterError(outcome["error"], outcome.get("traceback", ""))
    return outcome["result"]


