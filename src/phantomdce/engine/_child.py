"""Run one plug-in fitter on one chunk in a child process (private).

``python -m phantomdce.engine._child IN OUT``: IN is a pickle of ``{"spec", "name",
"sys_path", "data"}``; OUT receives ``{"result": Dataset}`` or ``{"error": str}``. The parent
can stop this process when the fitter runs past its time limit.
"""

from __future__ import annotations

import pickle
import sys
import traceback


def main(argv: list[str]) -> int:
    """Load the job, fit, write the outcome; always exit 0 unless killed."""
    src, dst = argv
    with open(src, "rb") as fh:
        job = pickle.load(fh)
    for path in reversed(job["sys_path"]):
        if path not in sys.path:
            sys.path.insert(0, path)
    try:
        from phantomdce.fit.registry import resolve_fitters

        infos = [i for i in resolve_fitters([job["spec"]]) if i.name == job["name"]]
        if not infos:
            raise LookupError(f"fitter {job['name']!r} not found from {job['spec']!r}")
        outcome = {"result": infos[0].fitter.fit(job["data"])}
    except BaseException as exc:  # noqa: BLE001 - everything a plug-in does is reported
        outcome = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    try:
        with open(dst, "wb") as fh:
            pickle.dump(outcome, fh)
    except Exception as exc:  # noqa: BLE001 - e.g. an unpicklable result
        with open(dst, "wb") as fh:
            pickle.dump({"error": f"result could not be returned: {exc}"}, fh)
    return 0


if __name__ == "__main__":  # pragma: no cover - runs in the child
    sys.exit(main(sys.argv[1:]))
