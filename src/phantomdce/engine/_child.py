"""Run one plug-in fitter on one chunk in a child process (private).

``python -m phantomdce.engine._child IN OUT READY``: IN is a pickle of ``{"spec", "name",
"sys_path", "data"}``; OUT receives ``{"result": Dataset}`` or ``{"error": str, "traceback":
str}``, written atomically (:func:`phantomdce.files.write_atomic`). The child creates the file READY
once it has started: the interpreter is up, the job is loaded and the fitter's modules are
imported and resolved. The parent's per-chunk time limit (``fit.timeout_s``) starts then, so
it measures the fit, not the start-up; the parent can stop this process when the fitter runs
past it.
"""

from __future__ import annotations

import pickle
import sys
import traceback
from pathlib import Path

from phantomdce.files import write_atomic


def main(argv: list[str]) -> int:
    """Load the job, signal READY, fit, write the outcome; always exit 0 unless killed."""
    src, dst, ready = argv
    try:
        with open(src, "rb") as fh:
            job = pickle.load(fh)
        for path in reversed(job["sys_path"]):
            if path not in sys.path:
                sys.path.insert(0, path)
        from phantomdce.fit.registry import resolve_fitters

        infos = [i for i in resolve_fitters([job["spec"]]) if i.name == job["name"]]
        if not infos:
            raise LookupError(f"fitter {job['name']!r} not found from {job['spec']!r}")
        Path(ready).touch()
        outcome = {"result": infos[0].fitter.fit(job["data"])}
    except BaseException as exc:  # noqa: BLE001 - everything a plug-in does is reported
        outcome = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    try:
        payload = pickle.dumps(outcome)
    except Exception as exc:  # noqa: BLE001 - e.g. an unpicklable result
        payload = pickle.dumps({"error": f"result could not be returned: {exc}"})
    write_atomic(dst, payload)
    return 0


if __name__ == "__main__":  # pragma: no cover - runs in the child
    sys.exit(main(sys.argv[1:]))
