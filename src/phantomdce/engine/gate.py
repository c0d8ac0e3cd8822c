"""The regression gate: a baseline of a run's accuracy, and a check against it.

``phantomdce baseline OUT -o baseline.json`` keeps, for every case, fitter and parameter,
the bias, SD over noise replicates and failure rate of a finished run, with the
tolerances. ``phantomdce check OUT --baseline baseline.json`` compares a new run of the
*same scenario* and lists everything that got worse:

- bias: ``|bias_new| > |bias_base| + max(bias_atol, bias_rtol * |bias_base|)``
- precision: ``sd_new > sd_base * (1 + sd_rtol) + bias_atol``
- failures: ``failure_rate_new > failure_rate_base + failure_atol``
- a case, fitter or parameter of the baseline missing from the new run (a fitter of the
  baseline that the run lacks is named once, with the fitters the run has).

A baseline that is not one (not a JSON object with ``scenario_name``, ``scenario_hash`` and
a ``metrics`` list of rows with ``case``, ``fitter``, ``parameter``, ``bias``, ``sd`` and
``failure_rate``) is refused with :class:`~phantomdce.dro.config.ConfigError` naming what
is wrong (:func:`check_baseline`).

``bias_atol`` defaults to a tenth of the OSIPI tolerance of each parameter (Ktrans
0.0005 /min, ve 0.005, vp 0.0025, fp 0.5 mL/100mL/min, ps and kep 0.0005 /min, delay 0.1
s); ``bias_rtol`` and ``sd_rtol`` to 10%; ``failure_atol`` to 0.01. Runs are seeded, so an
unchanged fitter reproduces its baseline exactly.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import phantomdce
from phantomdce.dro.config import ConfigError

__all__ = ["Tolerances", "make_baseline", "check_run", "check_baseline", "Regression"]

#: Keys every baseline row holds; the numbers must be numbers (or null for NaN).
BASELINE_ROW_KEYS = ("case", "fitter", "parameter", "bias", "sd", "failure_rate")

#: A tenth of the OSIPI absolute tolerance of each parameter (package units).
DEFAULT_BIAS_ATOL = {
    "Ktrans": 0.0005,
    "ve": 0.005,
    "vp": 0.0025,
    "fp": 0.5,
    "ps": 0.0005,
    "kep": 0.0005,
    "delay": 0.1,
    "T10": 0.005,
}


@dataclass(frozen=True)
class Tolerances:
    """How much worse a metric may get before the check fails (see the module docstring)."""

    bias_atol: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_BIAS_ATOL))
    bias_rtol: float = 0.10
    sd_rtol: float = 0.10
    failure_atol: float = 0.01


@dataclass(frozen=True)
class Regression:
    """One thing that got worse (or is missing: then ``note`` says what)."""

    case: str
    fitter: str
    parameter: str
    metric: str
    baseline: float
    current: float
    allowed: float
    note: str = ""

    def __str__(self) -> str:
        if self.note:
            return self.note
        return (
            f"{self.case} {self.fitter} {self.parameter}: {self.metric} {self.current:.6g}"
            f" (baseline {self.baseline:.6g}, allowed up to {self.allowed:.6g})"
        )


#: Columns of ``metrics.csv`` that the gate reads.
GATE_COLUMNS = ("case", "fitter", "parameter", "bias", "sd", "failure_rate")


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as fh:
        fh.seek(0, 2)
        if fh.tell() == 0:
            return True  # empty: refused by the header check
        fh.seek(-1, 2)
        return fh.read(1) == b"\n"


def _read_metrics(out: Path, meta: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of a run's ``metrics.csv``, refusing an empty, truncated or partial file.

    Every fitter that ``run.json`` (``meta``) names must have rows: a run whose metrics do not cover
    its fitters (a disk that filled while writing, a file cut short) is refused, so that a
    baseline or a check can never rest on nothing.
    """
    from phantomdce.engine.verify import check_file_digest

    path = out / "metrics.csv"
    redo = "; run the same `phantomdce run` command again to rewrite it"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no metrics; is {out} a finished `phantomdce run`?")
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            header = reader.fieldnames or []
            missing = [c for c in GATE_COLUMNS if c not in header]
            if missing:
                raise ConfigError(
                    f"{path} is empty or damaged: no column {', '.join(missing)}{redo}"
                )
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"{path} is damaged: not CSV text ({exc}){redo}") from None
    if not _ends_with_newline(path):
        # a file cut inside its last field still parses (``0.93`` of ``0.9345``): every
        # metrics.csv the engine writes ends with a line break
        raise ConfigError(f"{path} is cut short: its last line has no line break{redo}")
    if not rows:
        raise ConfigError(f"{path} holds no metrics rows{redo}")
    for i, row in enumerate(rows):
        if None in row or any(v is None for v in row.values()):
            raise ConfigError(f"{path}: row {i + 2} is cut short or has extra fields{redo}")
        for key, value in row.items():
            if key not in ("case", "fitter", "parameter"):
                try:
                    row[key] = float(value) if value not in ("", "nan") else math.nan
                except ValueError:
                    raise ConfigError(
                        f"{path}: row {i + 2}, {key} = {value!r}: expected a number{redo}"
                    ) from None
    present = {r["fitter"] for r in rows}
    absent = [f["name"] for f in meta.get("fitters", []) if f["name"] not in present]
    if absent:
        raise ConfigError(
            f"{path} has no rows for {', '.join(absent)}, which the run names: the"
            f" metrics are incomplete{redo}"
        )
    changed = check_file_digest(out, "metrics.csv")  # well-formed, but edited or swapped
    if changed is not None:
        raise ConfigError(f"{changed}{redo}")
    return rows


def _run_meta(out: Path) -> dict[str, Any]:
    path = out / "run.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: not a phantomdce run directory")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        meta = exc
    if not isinstance(meta, dict):
        what = f"not JSON ({meta})" if isinstance(meta, Exception) else "not a JSON object"
        raise ConfigError(
            f"{path} is damaged: {what}; run the `phantomdce run` command again into a new"
            " folder"
        )
    return meta


def make_baseline(out: str | Path, tolerances: Tolerances | None = None) -> dict[str, Any]:
    """The baseline of a finished run (a JSON-ready dict)."""
    out = Path(out)
    meta = _run_meta(out)
    tol = tolerances or Tolerances()
    keep = ("bias", "sd", "failure_rate", "rel_bias_pct", "cv_pct")
    return {
        "scenario_name": meta["scenario_name"],
        "scenario_hash": meta["scenario_hash"],
        "fitters": meta["fitters"],
        "phantomdce_version": phantomdce.__version__,
        "tolerances": asdict(tol),
        "metrics": [
            {
                "case": r["case"],
                "fitter": r["fitter"],
                "parameter": r["parameter"],
                **{k: r[k] for k in keep},
            }
            for r in _read_metrics(out, meta)
        ],
    }


def check_run(
    out: str | Path, baseline: dict[str, Any], tolerances: Tolerances | None = None
) -> list[Regression]:
    """Everything in a run that is worse than its baseline (empty: the check passes).

    Raises
    ------
    ConfigError
        The baseline was made from a different scenario.
    """
    out = Path(out)
    meta = _run_meta(out)
    check_baseline(baseline)
    if baseline.get("scenario_hash") != meta["scenario_hash"]:
        raise ConfigError(
            f"the baseline was made from scenario {baseline.get('scenario_name')!r} (hash"
            f" {baseline.get('scenario_hash')}) but {out} is a run of"
            f" {meta['scenario_name']!r} (hash {meta['scenario_hash']}): a baseline only"
            " applies to a run of the same scenario"
        )
    tol = tolerances or Tolerances(**baseline.get("tolerances", {}))
    rows = _read_metrics(out, meta)
    current = {(r["case"], r["fitter"], r["parameter"]): r for r in rows}
    run_fitters = list(dict.fromkeys(r["fitter"] for r in rows))
    found: list[Regression] = []
    absent: set[str] = set()
    for base in baseline["metrics"]:
        key = (base["case"], base["fitter"], base["parameter"])
        now = current.get(key)
        if now is None and base["fitter"] not in run_fitters:
            if base["fitter"] not in absent:
                absent.add(base["fitter"])
                n = sum(1 for b in baseline["metrics"] if b["fitter"] == base["fitter"])
                found.append(
                    Regression(
                        "every case",
                        base["fitter"],
                        "every parameter",
                        "missing fitter",
                        math.nan,
                        math.nan,
                        math.nan,
                        note=(
                            f"fitter {base['fitter']!r} of the baseline ({n} rows) is missing"
                            f" from the run, which has {', '.join(run_fitters) or 'no fitter'}:"
                            " run it too (--fitters) or make a new baseline"
                        ),
                    )
                )
            continue
        if now is None:
            found.append(
                Regression(
                    *key,
                    "missing",
                    math.nan,
                    math.nan,
                    math.nan,
                    note=(
                        f"{base['case']} {base['fitter']} {base['parameter']}: in the baseline"
                        " but missing from the run's metrics.csv"
                    ),
                )
            )
            continue
        atol = tol.bias_atol.get(base["parameter"], 0.0)
        b0, b1 = abs(base["bias"]), abs(now["bias"])
        allowed = b0 + max(atol, tol.bias_rtol * b0)
        if _worse(b1, allowed, b0):
            found.append(Regression(*key, "|bias|", b0, b1, allowed))
        allowed = base["sd"] * (1 + tol.sd_rtol) + atol
        if _worse(now["sd"], allowed, base["sd"]):
            found.append(Regression(*key, "sd", base["sd"], now["sd"], allowed))
        allowed = base["failure_rate"] + tol.failure_atol
        if _worse(now["failure_rate"], allowed, base["failure_rate"]):
            found.append(
                Regression(*key, "failure_rate", base["failure_rate"], now["failure_rate"], allowed)
            )
    base_fitters = {b["fitter"] for b in baseline["metrics"]}
    for fitter in run_fitters:
        if fitter not in base_fitters:
            found.append(
                Regression(
                    "every case",
                    fitter,
                    "every parameter",
                    "not in the baseline",
                    math.nan,
                    math.nan,
                    math.nan,
                    note=(
                        f"fitter {fitter!r} of the run has no rows in the baseline: the check"
                        " cannot judge it; make a new baseline that includes it"
                    ),
                )
            )
    return found


def check_baseline(baseline: Any, source: str = "the baseline") -> None:
    """Refuse anything that is not a baseline written by :func:`make_baseline`.

    Parameters
    ----------
    baseline : object
        The parsed JSON.
    source : str, optional
        How to name it in the message (e.g. its file name).

    Raises
    ------
    ConfigError
        Naming the first key that is missing or of the wrong type.
    """
    hint = "; make one with `phantomdce baseline RUN -o baseline.json`"
    if not isinstance(baseline, dict):
        raise ConfigError(
            f"{source} is not a phantomdce baseline: expected a JSON object, found"
            f" {type(baseline).__name__}{hint}"
        )
    for key in ("scenario_name", "scenario_hash"):
        if not isinstance(baseline.get(key), str) or not baseline[key]:
            raise ConfigError(
                f"{source} is not a phantomdce baseline: {key} = {baseline.get(key)!r},"
                f" expected text{hint}"
            )
    metrics = baseline.get("metrics")
    if not isinstance(metrics, list) or not metrics:
        raise ConfigError(
            f"{source} is not a phantomdce baseline: metrics = {metrics!r:.60}, expected a"
            f" non-empty list of rows{hint}"
        )
    for i, row in enumerate(metrics):
        if not isinstance(row, dict):
            raise ConfigError(f"{source}: metrics[{i}] = {row!r:.60}: expected an object{hint}")
        for key in BASELINE_ROW_KEYS:
            value = row.get(key)
            text = key in ("case", "fitter", "parameter")
            ok = isinstance(value, str) if text else (
                value is None or (isinstance(value, int | float) and not isinstance(value, bool))
            )
            if not ok:
                raise ConfigError(
                    f"{source}: metrics[{i}].{key} = {value!r}: expected"
                    f" {'text' if text else 'a number'}{hint}"
                )
        for key in ("bias", "sd", "failure_rate"):
            if row[key] is None:
                row[key] = math.nan


def _worse(value: float, allowed: float, base: float) -> bool:
    """Worse than allowed; a metric that became NaN where the baseline had one is worse."""
    if math.isnan(value):
        return not math.isnan(base)
    return value > allowed if not math.isnan(allowed) else False
