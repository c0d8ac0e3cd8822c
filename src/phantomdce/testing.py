"""Accuracy assertions for a fitter's own test suite.

Example, in a vendor's tests::

    from phantomdce.testing import assert_fitter_accuracy

    def test_my_fitter_is_accurate():
        assert_fitter_accuracy(MyFitter(), "scenarios/esnr2022/acquisition_time.toml",
                               where="recommended",
                               max_abs_rel_bias_pct={"Ktrans": 10, "ve": 10},
                               max_cv_pct={"Ktrans": 20, "ve": 20})

The fitter runs in this process on the selected cases of the scenario (simulated on the
fly, through the scenario's ``[fit.pipeline]`` settings); every case, parameter and
criterion that is not met is listed in one assertion message, the case named by its swept
values (``duration=60 s``). A study scenario sweeps settings outside the recommendation on
purpose (60 s and 120 s acquisitions above): select the cases a fitter is expected to pass
with ``where={"duration": 300}`` or ``where="recommended"`` (the scenario's
``[recommendation] recommended`` values of its knob).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["assert_fitter_accuracy", "fitter_metrics", "select_cases", "case_label"]

#: Type of the ``where`` argument: sweep key -> value (or list of values), or "recommended".
Where = Mapping[str, Any] | str | None


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool):
        return bool(np.isclose(float(a), float(b), rtol=1e-9, atol=0.0))
    if isinstance(a, tuple | list) and isinstance(b, tuple | list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def case_label(scenario: Any, case: Any) -> str:
    """A case named by its swept values with their units, e.g. ``duration=60 s``.

    Parameters
    ----------
    scenario : phantomdce.dro.scenario.Scenario
        The scenario the case belongs to.
    case : phantomdce.dro.scenario.Case
        One of ``scenario.cases()``.

    Returns
    -------
    str
        ``key=value unit`` for every swept key, joined by ", "; the case's node name for a
        scenario without a sweep.
    """
    units = scenario.protocol.units()
    parts = []
    for key, value in case.values.items():
        unit = units.get(key, "")
        shown = f"{value:g}" if isinstance(value, float) else str(value)
        parts.append(f"{key}={shown}" + (f" {unit}" if unit not in ("", "1") else ""))
    return ", ".join(parts) or case.name


def select_cases(scenario: Any, where: Where = None) -> list:
    """The cases of a scenario that a ``where`` selection keeps.

    Parameters
    ----------
    scenario : phantomdce.dro.scenario.Scenario
        A loaded scenario.
    where : mapping or "recommended", optional
        None keeps every case. A mapping keeps the cases whose swept value of each key
        equals the given value or one of a list of values, in the key's units
        (``{"duration": 300}``: duration in s). ``"recommended"`` keeps the cases whose
        value of the ``[recommendation] knob`` is one of its ``recommended`` values.

    Returns
    -------
    list of phantomdce.dro.scenario.Case
        The kept cases, in the scenario's order.

    Raises
    ------
    ValueError
        An unknown key, a scenario without a recommendation for ``"recommended"``, or a
        selection that keeps no case (the message lists the swept values).
    """
    cases = scenario.cases()
    if where is None:
        return cases
    if isinstance(where, str):
        if where != "recommended":
            raise ValueError(
                f"where = {where!r}: expected a mapping of swept keys to values or"
                " 'recommended'"
            )
        rec = scenario.recommendation
        if not rec.get("knob") or not rec.get("recommended"):
            raise ValueError(
                f"where = 'recommended': scenario {scenario.name!r} has no [recommendation]"
                " with a knob and recommended values; select cases with a mapping instead,"
                " e.g. where={" + ", ".join(f"{k!r}: ..." for k in scenario.sweep) + "}"
            )
        where = {rec["knob"]: list(rec["recommended"])}
    if not isinstance(where, Mapping):
        raise ValueError(f"where = {where!r}: expected a mapping or 'recommended'")
    for key in where:
        if key not in scenario.sweep:
            raise ValueError(
                f"where[{key!r}]: {key!r} is not swept by scenario {scenario.name!r}"
                f" (swept: {', '.join(scenario.sweep) or 'nothing'})"
            )
    wanted = {k: v if isinstance(v, list) else [v] for k, v in where.items()}
    kept = [
        c
        for c in cases
        if all(any(_same(c.values[k], v) for v in vs) for k, vs in wanted.items())
    ]
    if not kept:
        swept = "; ".join(
            f"{k}: {', '.join(f'{v:g}' if isinstance(v, float) else str(v) for v in vs)}"
            for k, vs in scenario.sweep.items()
        )
        raise ValueError(f"where = {dict(where)!r} keeps no case of {scenario.name!r} ({swept})")
    return kept


def fitter_metrics(
    fitter: Any, scenario: str | Path, *, where: Where = None
) -> list[dict[str, Any]]:
    """Metrics rows (one per case and parameter) of a fitter object on a scenario.

    Parameters
    ----------
    fitter : object
        A fitter (see :mod:`phantomdce.fit.base`); a registered name or
        ``module:attribute`` spec string also works.
    scenario : str or Path
        Scenario TOML file.
    where : mapping or "recommended", optional
        Which cases to run (see :func:`select_cases`); default every case.

    Returns
    -------
    list of dict
        ``case`` (node name), ``label`` (swept values, :func:`case_label`), ``fitter``,
        ``parameter`` and the metrics of :func:`phantomdce.engine.metrics.case_metrics`.
    """
    import time

    from phantomdce.dro.scenario import load_scenario
    from phantomdce.dro.simulate import simulate_case
    from phantomdce.engine.metrics import case_metrics
    from phantomdce.engine.run import collect_estimates
    from phantomdce.fit.base import check_fitter
    from phantomdce.fit.pipeline import Pipeline
    from phantomdce.fit.registry import get_fitter

    if isinstance(fitter, str):
        fitter = get_fitter(fitter)
    check_fitter(fitter)
    sc = load_scenario(scenario)
    pipeline = Pipeline.from_mapping(dict(sc.fit.get("pipeline", {})), path="fit.pipeline")
    rows = []
    for case in select_cases(sc, where):
        ds = simulate_case(sc, case)
        data = pipeline(ds)
        t0 = time.perf_counter()
        est, ok, limits = collect_estimates(
            fitter.fit(data.copy(deep=True)), fitter, ds.sizes["voxel"]
        )
        elapsed = time.perf_counter() - t0
        for name, values in est.items():
            if name in ds:
                truth = ds[name].values
            elif name == "vp":
                truth = np.zeros(ds.sizes["voxel"])
            else:
                continue
            row = {
                "case": case.name,
                "label": case_label(sc, case),
                "fitter": fitter.name,
                "parameter": name,
            }
            row.update(
                case_metrics(
                    values,
                    truth,
                    ok,
                    ds["tissue"].values,
                    ds["replicate"].values,
                    parameter=name,
                    fit_time_s=elapsed,
                    seed=sc.seed,
                    at_limit=limits.get(name),
                )
            )
            rows.append(row)
    return rows


def assert_fitter_accuracy(
    fitter: Any,
    scenario: str | Path,
    *,
    where: Where = None,
    max_abs_rel_bias_pct: Mapping[str, float] | None = None,
    max_cv_pct: Mapping[str, float] | None = None,
    max_failure_rate: float = 0.05,
) -> list[dict[str, Any]]:
    """Assert that a fitter meets accuracy criteria on the selected cases of a scenario.

    Parameters
    ----------
    fitter : object or str
        The fitter, or a registered name or ``module:attribute`` spec.
    scenario : str or Path
        Scenario TOML file.
    where : mapping or "recommended", optional
        Which cases to judge (see :func:`select_cases`): ``{"duration": 300}``,
        ``{"duration": [300, 420]}`` or ``"recommended"``; default every case.
    max_abs_rel_bias_pct : mapping of str to float, optional
        Largest allowed |relative bias| (%) per parameter (default Ktrans and ve: 10%).
    max_cv_pct : mapping of str to float, optional
        Largest allowed within-case coefficient of variation (%) per parameter (default
        Ktrans and ve: 20%).
    max_failure_rate : float, optional
        Largest allowed fraction of failed voxels for every parameter.

    Returns
    -------
    list of dict
        The metrics rows (for further checks).

    Raises
    ------
    AssertionError
        Listing every case (by its swept values), parameter and criterion that is not
        met.
    ValueError
        A ``where`` that names an unswept key or keeps no case.
    """
    bias = {"Ktrans": 10.0, "ve": 10.0} if max_abs_rel_bias_pct is None else max_abs_rel_bias_pct
    cv = {"Ktrans": 20.0, "ve": 20.0} if max_cv_pct is None else max_cv_pct
    rows = fitter_metrics(fitter, scenario, where=where)
    problems = []
    seen = {r["parameter"] for r in rows}
    for name in set(bias) | set(cv):
        if name not in seen:
            problems.append(f"{name}: the fitter returned no estimates of it")
    for r in rows:
        who = f"{r['label']}: {r['parameter']}"
        p = r["parameter"]
        if p in bias and not abs(r["rel_bias_pct"]) <= bias[p]:
            problems.append(f"{who} |relative bias| {abs(r['rel_bias_pct']):.3g}% > {bias[p]}%")
        if p in cv and not r["cv_pct"] <= cv[p]:
            problems.append(f"{who} CV {r['cv_pct']:.3g}% > {cv[p]}%")
        if not r["failure_rate"] <= max_failure_rate:
            problems.append(f"{who} failure rate {r['failure_rate']:.3g} > {max_failure_rate}")
    if problems:
        name = getattr(fitter, "name", fitter)
        raise AssertionError(
            f"fitter {name!r} misses the accuracy criteria on {scenario}:\n  "
            + "\n  ".join(problems)
        )
    return rows
