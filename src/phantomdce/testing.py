"""Accuracy assertions for a fitter's own test suite.

Example, in a vendor's tests::

    from phantomdce.testing import assert_fitter_accuracy

    def test_my_fitter_is_accurate():
        assert_fitter_accuracy(MyFitter(), "scenarios/esnr2022/acquisition_time.toml",
                               max_abs_rel_bias_pct={"Ktrans": 10, "ve": 10},
                               max_cv_pct={"Ktrans": 20, "ve": 20})

The fitter runs in this process on every case of the scenario (simulated on the fly,
through the scenario's ``[fit.pipeline]`` settings); every case, parameter and criterion
that is not met is listed in one assertion message.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["assert_fitter_accuracy", "fitter_metrics"]


def fitter_metrics(fitter: Any, scenario: str | Path) -> list[dict[str, Any]]:
    """Metrics rows (one per case and parameter) of a fitter object on a scenario.

    Parameters
    ----------
    fitter : object
        A fitter (see :mod:`phantomdce.fit.base`); a registered name or
        ``module:attribute`` spec string also works.
    scenario : str or Path
        Scenario TOML file.

    Returns
    -------
    list of dict
        ``case``, ``fitter``, ``parameter`` and the metrics of
        :func:`phantomdce.engine.metrics.case_metrics`.
    """
    import time

    from phantomdce.dro.scenario import load_scenario
    from phantomdce.dro.simulate import simulate_case
    from phantomdce.engine.metrics import case_metrics
    from phantomdce.engine.run import _collect
    from phantomdce.fit.base import check_fitter
    from phantomdce.fit.pipeline import Pipeline
    from phantomdce.fit.registry import get_fitter

    if isinstance(fitter, str):
        fitter = get_fitter(fitter)
    check_fitter(fitter)
    sc = load_scenario(scenario)
    pipeline = Pipeline.from_mapping(dict(sc.fit.get("pipeline", {})), path="fit.pipeline")
    rows = []
    for case in sc.cases():
        ds = simulate_case(sc, case)
        data = pipeline(ds)
        t0 = time.perf_counter()
        est, ok = _collect(fitter.fit(data.copy(deep=True)), fitter, ds.sizes["voxel"])
        elapsed = time.perf_counter() - t0
        for name, values in est.items():
            if name in ds:
                truth = ds[name].values
            elif name == "vp":
                truth = np.zeros(ds.sizes["voxel"])
            else:
                continue
            row = {"case": case.name, "fitter": fitter.name, "parameter": name}
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
                )
            )
            rows.append(row)
    return rows


def assert_fitter_accuracy(
    fitter: Any,
    scenario: str | Path,
    *,
    max_abs_rel_bias_pct: Mapping[str, float] | None = None,
    max_cv_pct: Mapping[str, float] | None = None,
    max_failure_rate: float = 0.05,
) -> list[dict[str, Any]]:
    """Assert that a fitter meets accuracy criteria on every case of a scenario.

    Parameters
    ----------
    fitter : object or str
        The fitter, or a registered name or ``module:attribute`` spec.
    scenario : str or Path
        Scenario TOML file.
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
        Listing every case, parameter and criterion that is not met.
    """
    bias = {"Ktrans": 10.0, "ve": 10.0} if max_abs_rel_bias_pct is None else max_abs_rel_bias_pct
    cv = {"Ktrans": 20.0, "ve": 20.0} if max_cv_pct is None else max_cv_pct
    rows = fitter_metrics(fitter, scenario)
    problems = []
    seen = {r["parameter"] for r in rows}
    for name in set(bias) | set(cv):
        if name not in seen:
            problems.append(f"{name}: the fitter returned no estimates of it")
    for r in rows:
        where = f"{r['case']} {r['parameter']}"
        p = r["parameter"]
        if p in bias and not abs(r["rel_bias_pct"]) <= bias[p]:
            problems.append(f"{where}: |relative bias| {abs(r['rel_bias_pct']):.3g}% > {bias[p]}%")
        if p in cv and not r["cv_pct"] <= cv[p]:
            problems.append(f"{where}: CV {r['cv_pct']:.3g}% > {cv[p]}%")
        if not r["failure_rate"] <= max_failure_rate:
            problems.append(f"{where}: failure rate {r['failure_rate']:.3g} > {max_failure_rate}")
    if problems:
        name = getattr(fitter, "name", fitter)
        raise AssertionError(
            f"fitter {name!r} misses the accuracy criteria on {scenario}:\n  "
            + "\n  ".join(problems)
        )
    return rows
