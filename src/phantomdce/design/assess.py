"""``phantomdce assess SITE.toml``: where a site's protocol stands, on one page.

The page (``DIR/index.html``, self-contained, and ``DIR/summary.md``, in the study report's
style) has, for a :class:`~phantomdce.design.site.Site`:

1. **The ESNR 2022 recommendations** (the ``[recommendation]`` tables of the study's
   scenarios, ``scenarios/esnr2022/*.toml``): the site's value of each knob against the
   threshold, and the verdict *the committed study* (``reports/esnr2022/summary.md``) gave
   at that value, with every other setting at the study's (the study varies one knob at a
   time); where the study did not simulate the site's value, the verdicts of the two
   simulated neighbours. The verdict of the site's protocol *as a whole* comes from the
   Monte Carlo below, and the page says which is which.
2. **Bias and CV per tissue** of Ktrans, ve, vp (and kep) on the site's tissue grid: a Monte
   Carlo at the site's protocol, run by the one engine (:func:`phantomdce.engine.run.run`)
   on a scenario built from the site (:func:`site_scenario`) into ``DIR/run``, pooled over
   the bolus arrival phase (unknown at a site: ``phases`` values over one frame), and judged
   by the study's rules (:func:`phantomdce.report.verdict.judge`: per-tissue criterion, *not
   estimable* where more than :data:`~phantomdce.report.verdict.MAX_FAILURE_RATE` of the
   fits fail). Beside the Monte-Carlo CV, the Cramér-Rao bound
   (:func:`phantomdce.precision.crlb`) at each case's protocol; a tissue where the
   Monte-Carlo noise-only CV and the bound differ by more than :data:`BOUND_TOLERANCE` of the
   bound plus 1.96 standard errors of the Monte-Carlo CV is flagged.
3. **The error budget**: the engine's ``error_budget`` entries (the same voxels with one
   pipeline stage set to its truth: T1 mapping and AIF, :data:`BUDGET_STAGES`) through
   :func:`phantomdce.report.verdict.error_budget`, and two lines from the noise-free cases of
   the same run (``snr = inf``): *sampling* (the bias and the spread over arrival phases of
   noise-free data: the frame timing and the model) and *noise* (what the noise adds).
4. **Three single changes** that buy the most precision or accuracy at equal scan time,
   scored by :func:`phantomdce.design.score.score_protocols` (the bound and the fitter's
   noise-free bias; no Monte Carlo).
5. **Repeatability** (issue 15, part 4): the study's test-retest scenario on the neck phantom
   at the site's protocol (:func:`repeatability_scenario`; ``--repeatability-subjects``
   subjects, each scanned twice), through the engine, read by
   :func:`phantomdce.report.repeatability.repeatability`: within-subject SD and CV of the
   tumour ROI's Ktrans, the repeatability coefficient and the smallest detectable change per
   tumour size (1, 2, 3 cm), and whether a 30% change is detectable.

Units: percentages are relative to the true value; times in s; Ktrans and kep in /min.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import time
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import phantomdce
from phantomdce.design import (
    DEFAULT_PHASES,
    DEFAULT_REPEATABILITY_SUBJECTS,
    DEFAULT_REPLICATES,
)
from phantomdce.design.site import Site, load_site
from phantomdce.dro.config import ConfigError, toml_text
from phantomdce.dro.protocol import Protocol
from phantomdce.dro.scenario import SCANNER_PREFIX, parse_scenario
from phantomdce.files import write_atomic
from phantomdce.report.model import Criterion, RecommendationResult, TissueRow
from phantomdce.report.render import (
    html_escape,
    html_figure,
    html_page,
    html_table,
    md_escape,
    md_table,
    status_badge,
)
from phantomdce.report.verdict import (
    FAILS,
    MAX_FAILURE_RATE,
    MEETS,
    NO_DATA,
    NOT_ESTIMABLE,
    Setting,
    Verdict,
    error_budget,
    format_knob_value,
    judge,
)
from phantomdce.report.words import describe_criterion, fmt_pct, tissue_words

__all__ = [
    "BOUND_TOLERANCE",
    "REPEATABILITY_TEMPLATE",
    "repeatability_scenario",
    "BUDGET_STAGES",
    "DEFAULT_PHASES",
    "DEFAULT_REPLICATES",
    "Assessment",
    "BudgetLine",
    "Change",
    "RecommendationLine",
    "TissueLine",
    "cmd_assess",
    "assess",
    "best_changes",
    "bound_agrees",
    "bound_kind",
    "tissue_class",
    "recommendation_lines",
    "site_scenario",
    "study_settings",
    "write_assessment",
]

#: The Monte-Carlo CV and the bound "agree" within this fraction of the bound (issue 12:
#: the bound matches the NLLS estimator's SD within 10% where the SNR is >= 20 and the bias
#: below 2%), plus 1.96 standard errors of the Monte-Carlo CV.
BOUND_TOLERANCE = 0.10
#: Parameters of the per-tissue table.
TABLE_PARAMETERS = ("Ktrans", "ve", "vp")
#: The recommendation id of the site's own run (its knob is the SNR: the site's and inf).
SITE_RECOMMENDATION = "site_protocol"
#: Where a checkout keeps the committed study report and its scenarios.
STUDY_REPORT = Path("reports") / "esnr2022"
STUDY_SCENARIOS = Path("scenarios") / "esnr2022"


# --------------------------------------------------------------------------- the site's run


def _protocol_keys(protocol: Protocol) -> dict[str, Any]:
    """The protocol as plain keys a scenario accepts (None: left at the default)."""
    out = {}
    for f in dataclasses.fields(protocol):
        v = getattr(protocol, f.name)
        if v is None:
            continue
        if f.name == "duration" and protocol.post_bolus_s is not None:
            continue  # post_bolus_s sets it
        out[f.name] = list(v) if isinstance(v, tuple) else v
    return out


#: Pipeline stages whose error the budget measures (the engine's ``error_budget`` entries):
#: the T1 map and the AIF. The baseline signal's error is noise of the baseline frames and
#: stays in the budget's noise line (an entry for it would add a third of the fits).
BUDGET_STAGES = ("t1", "aif")


def _budget_stages(site: Site) -> list[str]:
    """The stages of :data:`BUDGET_STAGES` the site's pipeline estimates (not ``"true"``)."""
    from phantomdce.fit.pipeline import Pipeline

    pipe = Pipeline.from_mapping(dict(site.pipeline), path="fit.pipeline")
    stages = [s for s in BUDGET_STAGES if getattr(pipe, s) != "true"]
    if pipe.concentration == "true":  # the fitters see the true concentration: no T1 used
        stages = [s for s in stages if s == "aif"]
    return stages


def site_scenario(
    site: Site,
    *,
    replicates: int = DEFAULT_REPLICATES,
    phases: int = DEFAULT_PHASES,
    seed: int = 0,
) -> dict[str, Any]:
    """The scenario (a mapping, as parsed TOML) whose run is the site's Monte Carlo.

    The site's protocol, tissue grid, fitter and pipeline; swept: ``snr`` over the site's
    SNR and ``inf`` (noise-free cases, for the budget's sampling line) and, unless the site
    fixes the arrival (``bat``), ``bat_phase`` over ``phases`` values ``k / phases``; the
    error budget of the stages of :data:`BUDGET_STAGES` the site estimates; a
    ``[recommendation]`` table
    whose knob is the SNR, so that the study's collection and verdict rules apply.

    Parameters
    ----------
    site : Site
        The site.
    replicates : int, optional
        Noise replicates per tissue and case.
    phases : int, optional
        Bolus arrival phases over one frame interval (1: the site's ``bat_phase`` alone).
    seed : int, optional
        Seed of the simulation's noise.

    Returns
    -------
    dict
        Top-level scenario keys; :func:`phantomdce.dro.scenario.parse_scenario` accepts it
        and its first case has the site's protocol.

    Raises
    ------
    ConfigError
        ``replicates`` or ``phases`` below 1.
    """
    if isinstance(replicates, bool) or not isinstance(replicates, int) or replicates < 1:
        raise ConfigError(f"--replicates = {replicates!r}: expected an integer >= 1")
    if isinstance(phases, bool) or not isinstance(phases, int) or phases < 1:
        raise ConfigError(f"--phases = {phases!r}: expected an integer >= 1")
    p = site.protocol
    sweep: dict[str, list[Any]] = {"snr": [p.snr] + ([math.inf] if math.isfinite(p.snr) else [])}
    if p.bat is None and phases > 1:
        sweep["bat_phase"] = [k / phases for k in range(phases)]
    tissue = {"model": site.tissue.model, **{k: list(v) for k, v in site.tissue.axes.items()}}
    return {
        "name": site.name,
        "description": f"phantomdce assess: the site {site.name!r} at its own protocol",
        "seed": int(seed),
        "replicates": int(replicates),
        "protocol": _protocol_keys(p),
        "tissue": tissue,
        "sweep": sweep,
        "fit": {
            "fitters": [site.fitter],
            "error_budget": _budget_stages(site),
            "pipeline": dict(site.pipeline),
        },
        "recommendation": {
            "id": SITE_RECOMMENDATION,
            "title": f"The site's protocol ({site.name})",
            "text": "the site's protocol as a whole",
            "knob": "snr",
            "knob_label": "pre-contrast SNR",
            "kind": "category",
            "recommended": [p.snr],
            "parameters": ["Ktrans", "ve", "vp", "kep"],
        },
    }


def _check_round_trip(site: Site, scenario: Mapping[str, Any]) -> None:
    """The scenario's first case must simulate the site's protocol (a self-check)."""
    case = parse_scenario(scenario).cases()[0].protocol
    if dataclasses.replace(case, bat_phase=site.protocol.bat_phase) != site.protocol:
        raise RuntimeError(  # pragma: no cover - a defect of site_scenario, not of a site
            f"the assess scenario's first case {case} is not the site's protocol {site.protocol}"
        )


def run_site(
    site: Site,
    out: str | Path,
    *,
    replicates: int = DEFAULT_REPLICATES,
    phases: int = DEFAULT_PHASES,
    seed: int = 0,
    run_dir: str | Path | None = None,
) -> Path:
    """Run the site's Monte Carlo through the engine; returns the run directory.

    Writes ``out/site_scenario.toml`` (:func:`site_scenario`) and runs it into ``run_dir``
    (default ``out/run``); a finished run of the same scenario is reused (the engine
    resumes it), a run of another scenario there is refused by the engine.
    """
    from phantomdce.engine.run import run

    scenario = site_scenario(site, replicates=replicates, phases=phases, seed=seed)
    _check_round_trip(site, scenario)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "site_scenario.toml"
    header = (
        "# Written by `phantomdce assess`: the site's Monte Carlo as an ordinary scenario\n"
        "# (`phantomdce run` runs it the same way).\n"
    )
    write_atomic(path, header + toml_text(scenario))
    target = Path(run_dir) if run_dir is not None else out / "run"
    run(path, target)
    return target


# --------------------------------------------------------------------------- per tissue


@dataclass(frozen=True)
class TissueLine:
    """One tissue and parameter of the site's Monte Carlo, beside the bound.

    Attributes
    ----------
    tissue : int
        Grid index.
    truth : dict of str to float
        The tissue's true Ktrans (/min), ve, vp.
    parameter : str
        Parameter symbol.
    bias_pct, bias_se_pct : float
        Mean relative error over the tissue's voxels (pooled over the arrival phases), %,
        and its standard error.
    cv_pct : float
        CV of the estimates pooled over arrival phases (noise and phase), %.
    cv_noise_pct : float
        Noise-only CV: root mean square over the arrival phases of each phase's CV, %.
    crlb_cv_pct : float
        The bound's CV (root mean square over the phases of ``100 sd / truth``), %.
    failure_rate : float
        Fraction of failed fits, 0-1.
    n : int
        Successful fits.
    status : str
        :data:`~phantomdce.report.verdict.NOT_ESTIMABLE` (this parameter's fits fail more
        than allowed), else the tissue's class under the criterion (``meets`` or ``fails``)
        for judged parameters, ``""`` for a parameter the criterion does not judge.
    bound_agrees : bool or None
        Whether the noise-only Monte-Carlo CV agrees with the bound (None: not compared).
    """

    tissue: int
    truth: dict[str, float]
    parameter: str
    bias_pct: float
    bias_se_pct: float
    cv_pct: float
    cv_noise_pct: float
    crlb_cv_pct: float
    failure_rate: float
    n: int
    status: str
    bound_agrees: bool | None


def bound_kind(site: Site) -> str:
    """The Cramér-Rao bound that matches the site's estimator (:data:`precision.KINDS`).

    ``joint``/``joint_shared_m0`` for the joint fitters (``nlls_<model>_joint``,
    ``..._joint_shared_m0``); ``known`` when T1 and the baseline are true, ``baseline_m0``
    when T1 alone is, else ``two_step`` (T1 from the VFA images, then the dynamic fit).
    """
    if site.fitter.endswith("_joint_shared_m0"):
        return "joint_shared_m0"
    if site.fitter.endswith("_joint"):
        return "joint"
    t1 = site.pipeline.get("t1", "vfa_nonlinear")
    baseline = site.pipeline.get("baseline", "measured")
    if t1 == "true":
        return "known" if baseline == "true" else "baseline_m0"
    return "two_step"


def _cv(values: np.ndarray) -> float:
    if values.size < 2 or np.mean(values) == 0:
        return math.nan
    return float(100.0 * np.std(values, ddof=1) / abs(np.mean(values)))


def _per_case(run_dir: Path, site: Site, kind: str) -> dict[tuple[int, str], dict[str, list]]:
    """Per (tissue, parameter): each noisy case's CV of the site's fitter and bound CV."""
    from phantomdce.engine.run import open_results
    from phantomdce.precision import crlb

    model = site.tissue.model
    tree = open_results(run_dir)
    out: dict[tuple[int, str], dict[str, list]] = {}
    for name in sorted(tree.children):
        ds = tree[name].to_dataset()
        if not math.isfinite(float(ds.attrs["snr"])):
            continue
        f = ds["fitter"].values.tolist().index(site.fitter)
        tissue = ds["tissue"].values
        success = ds["success"].values[f].astype(bool)
        ids, first = np.unique(tissue, return_index=True)
        from phantomdce.params import MODELS

        params = {p: ds[f"true_{p}"].values[first] for p in MODELS[model].parameters}
        sd = crlb(
            dict(ds.attrs),
            model,
            params,
            t10=ds["true_T10"].values[first],
            m0=ds["true_m0"].values[first] if "true_m0" in ds else 1000.0,
            kind=kind,
        )
        for p in TABLE_PARAMETERS:
            if p not in ds or f"true_{p}" not in ds:
                continue
            est = ds[p].values[f]
            truth = ds[f"true_{p}"].values
            for i, t in enumerate(ids):
                sel = (tissue == t) & success & np.isfinite(est)
                d = out.setdefault((int(t), p), {"cv": [], "bound": []})
                d["cv"].append(_cv(est[sel]))
                true = float(truth[first[i]])
                d["bound"].append(100.0 * float(sd[p][i]) / abs(true) if true else math.nan)
    return out


def _rms(values: Sequence[float]) -> float:
    """Root mean square of the finite values (a phase with fewer than 2 fits has no CV)."""
    a = np.asarray(values, dtype=float)
    a = a[np.isfinite(a)]
    return float(np.sqrt(np.mean(a**2))) if a.size else math.nan


def tissue_lines(
    run_dir: str | Path, site: Site, result: RecommendationResult, setting: Setting
) -> list[TissueLine]:
    """The per-tissue table of the site's run (see :class:`TissueLine`).

    Parameters
    ----------
    run_dir : str or Path
        The site's run (:func:`run_site`).
    site : Site
        The site.
    result : RecommendationResult
        The run collected by :func:`phantomdce.report.results.collect_results`.
    setting : Setting
        The judged setting at the site's SNR (its per-tissue checks give the class).

    Returns
    -------
    list of TissueLine
        Ordered by tissue, then parameter as in :data:`TABLE_PARAMETERS`.
    """
    kind = bound_kind(site)
    cases = _per_case(Path(run_dir), site, kind)
    rows: dict[tuple[int, str], TissueRow] = {
        (t.tissue, t.parameter): t
        for t in result.tissues
        if t.fitter == site.fitter and _is_site_snr(t.knob_value, site)
    }
    checks = {t.tissue: t for t in setting.tissues}
    judged = set(setting.checks)
    out = []
    for (tissue, p), row in sorted(
        rows.items(), key=lambda kv: (kv[0][0], _order(kv[0][1]))
    ):
        if p not in TABLE_PARAMETERS:
            continue
        c = cases.get((tissue, p), {"cv": [], "bound": []})
        n_cases = max(len(c["cv"]), 1)
        cv_noise = _rms(c["cv"])
        bound = _rms(c["bound"])
        status = tissue_class(row, checks.get(tissue) if p in judged else None)
        agrees = None
        if status != NOT_ESTIMABLE:
            agrees = bound_agrees(cv_noise, bound, row.n - n_cases)
        out.append(
            TissueLine(
                tissue,
                dict(row.truth),
                p,
                row.mean_rel_error_pct,
                row.rel_bias_se_pct,
                row.cv_pct,
                cv_noise,
                bound,
                row.failure_rate,
                row.n,
                status,
                agrees,
            )
        )
    return out


def tissue_class(row: TissueRow, check: Any | None) -> str:
    """The class of one tissue and parameter, by the study's rules.

    :data:`~phantomdce.report.verdict.NOT_ESTIMABLE` when more than
    :data:`~phantomdce.report.verdict.MAX_FAILURE_RATE` of the parameter's fits failed (or
    the rate is unknown); else the tissue's class under the criterion, ``meets`` or
    ``fails`` (:class:`~phantomdce.report.verdict.TissueCheck` ``check``, None for a
    parameter the criterion does not judge: then ``""``).
    """
    if not row.failure_rate <= MAX_FAILURE_RATE:  # NaN too
        return NOT_ESTIMABLE
    if check is None:
        return ""
    return MEETS if check.meets else FAILS


def bound_agrees(cv_pct: float, bound_cv_pct: float, dof: int) -> bool | None:
    """Whether a Monte-Carlo CV agrees with the bound's (None: one of them is not finite).

    They agree when ``|cv - bound| <= BOUND_TOLERANCE * bound + 1.96 SE``, ``SE = cv /
    sqrt(2 dof)`` the standard error of a CV estimated with ``dof`` degrees of freedom.
    """
    if not (math.isfinite(cv_pct) and math.isfinite(bound_cv_pct)):
        return None
    se = cv_pct / math.sqrt(max(2.0 * dof, 1.0))
    return abs(cv_pct - bound_cv_pct) <= BOUND_TOLERANCE * bound_cv_pct + 1.96 * se


def _order(p: str) -> int:
    return TABLE_PARAMETERS.index(p) if p in TABLE_PARAMETERS else len(TABLE_PARAMETERS)


def _is_site_snr(value: Any, site: Site) -> bool:
    try:
        return math.isclose(float(value), site.protocol.snr) or (
            math.isinf(float(value)) and math.isinf(site.protocol.snr)
        )
    except (TypeError, ValueError):
        return False


# --------------------------------------------------------------------------- error budget


@dataclass(frozen=True)
class BudgetLine:
    """One source of error of one parameter at the site's protocol.

    Attributes
    ----------
    source : str
        ``"T1 mapping"``, ``"AIF"``, ``"sampling"``, ``"noise"`` or
        ``"total"``.
    parameter : str
        Parameter symbol.
    bias_pct, cv_pct : float
        What the source contributes to the relative bias (%, signed) and to the CV (%).
    how : str
        How the line was measured.
    """

    source: str
    parameter: str
    bias_pct: float
    cv_pct: float
    how: str


_STAGE_SOURCE = {"t1": "T1 mapping", "aif": "AIF"}


def budget_lines(result: RecommendationResult, site: Site) -> list[BudgetLine]:
    """The error budget at the site's protocol (see the module docstring).

    Stage lines are :func:`phantomdce.report.verdict.error_budget` at the site's SNR
    (``bias`` = full bias minus the bias with the stage true, ``cv`` =
    ``sqrt(CV_full^2 - CV_true^2)``). *Sampling* is the noise-free cases' relative bias and
    CV (the spread over arrival phases), with the AIF true if the budget has an AIF entry.
    *Noise* is the full pipeline's bias at the site's SNR minus the noise-free bias, and
    ``sqrt(CV_full^2 - CV_noise-free^2)``. The stage lines overlap the noise line (a T1 map
    from noisy VFA images is noise too): the shares are not meant to add up.
    """
    params = TABLE_PARAMETERS
    snr = site.protocol.snr
    noisy = error_budget(result, site.fitter, snr, params)
    out: list[BudgetLine] = []
    stages = {(e.stage, e.parameter): e for e in noisy}
    free = {}
    if math.isfinite(snr):
        free_entries = error_budget(result, site.fitter, math.inf, params)
        free = {(e.stage, e.parameter): e for e in free_entries}
        if not free:  # no error-budget entry: the fitter's own noise-free rows
            for r in result.rows:
                if r.fitter == site.fitter and _is_inf(r.knob_value):
                    free[("", r.parameter)] = _entry(r)
    if not stages:  # no error-budget entry: the fitter's own rows at the site's SNR
        for r in result.rows:
            if r.fitter == site.fitter and _is_site_snr(r.knob_value, site):
                stages[("", r.parameter)] = _entry(r)
    for p in params:
        full = stages.get(("", p))
        if full is None:
            continue
        for stage in BUDGET_STAGES:
            e = stages.get((stage, p))
            if e is not None:
                out.append(
                    BudgetLine(
                        _STAGE_SOURCE[stage],
                        p,
                        e.bias_share_pct,
                        e.cv_share_pct,
                        f"same voxels with the {_STAGE_SOURCE[stage]} true",
                    )
                )
        nf = free.get(("aif", p)) or free.get(("", p))
        if nf is not None:
            aif_true = ("aif", p) in free
            out.append(
                BudgetLine(
                    "sampling",
                    p,
                    nf.rel_bias_pct,
                    nf.cv_pct,
                    "noise-free data" + (" with the AIF true" if aif_true else "")
                    + ": bias, and the spread over arrival phases",
                )
            )
            nf_full = free.get(("", p), nf)
            out.append(
                BudgetLine(
                    "noise",
                    p,
                    full.rel_bias_pct - nf_full.rel_bias_pct,
                    math.sqrt(max(full.cv_pct**2 - nf_full.cv_pct**2, 0.0)),
                    "SNR of the site minus noise-free",
                )
            )
        out.append(BudgetLine("total", p, full.rel_bias_pct, full.cv_pct, "the site's run"))
    return out


def _is_inf(value: Any) -> bool:
    try:
        return math.isinf(float(value))
    except (TypeError, ValueError):
        return False


@dataclass(frozen=True)
class _Entry:
    rel_bias_pct: float
    cv_pct: float


def _entry(row: Any) -> _Entry:
    return _Entry(float(row.metrics.get("rel_bias_pct", math.nan)), float(row.metrics["cv_pct"]))


# --------------------------------------------------------------------------- recommendations


@dataclass(frozen=True)
class RecommendationLine:
    """Where the site stands on one ESNR recommendation, and the study's verdict there.

    Attributes
    ----------
    id, title, text : str
        The recommendation (its scenario's ``[recommendation]`` table).
    site_value : str
        The site's value of the knob, formatted (``"not described by the site"`` when the
        site file does not set it).
    stands : str
        ``"follows"``, ``"deviates"``, ``"no recommended value"`` or ``"-"``.
    study : str
        The study's class(es) at the site's value for the site's fitter, e.g. ``"meets"``,
        ``"between 5 s (meets) and 6 s (meets)"`` or why there is none.
    status : str
        The class the badge shows (the worst of ``study``; ``no data`` when none).
    """

    id: str
    title: str
    text: str
    site_value: str
    stands: str
    study: str
    status: str


def study_settings(summary_md: str) -> dict[str, dict[str, list[tuple[str, str]]]]:
    """The settings tables of a study report's ``summary.md``.

    Returns
    -------
    dict
        Section title (as escaped in the Markdown) -> fitter label -> ``[(knob value text,
        class), ...]`` in table order. Error-budget and detail subsections are skipped.
    """
    out: dict[str, dict[str, list[tuple[str, str]]]] = {}
    section = fitter = None
    in_table = False
    for line in summary_md.splitlines():
        if line.startswith("## "):
            section, fitter, in_table = line[3:].strip(), None, False
            continue
        if line.startswith("### "):
            head = line[4:]
            fitter = None
            if section is not None and not head.startswith(("Error budget", "Error maps")):
                fitter = re.split(r"(?<!\\): ", head, maxsplit=1)[0]
            in_table = False
            continue
        if section is None or fitter is None:
            continue
        if line.startswith("|---") or line.startswith("|:"):
            in_table = True
            continue
        if in_table and line.startswith("| "):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            if len(cells) >= 2:
                out.setdefault(section, {}).setdefault(fitter, []).append((cells[0], cells[1]))
        elif in_table and not line.strip():
            in_table = False
    return out


_AIF_CATEGORY = {"true": "true AIF", "measured": "carotid ROI"}
_UNSET = "not described by the site"
#: The ``option`` of the study's runs that follows the site's ``fit.pipeline.aif``.
_AIF_OPTION = {"measured": "carotid ROI", "population": "population AIF"}


def _site_knob(rec: Mapping[str, Any], site: Site, scanner_voxel: tuple | None) -> Any:
    knob = rec["knob"]
    p = site.protocol
    if knob == "pipeline.aif":
        aif = site.pipeline.get("aif", "true")
        if aif == "population":
            name = site.pipeline.get("population_aif", "parker")
            return f"population ({name.capitalize()})"
        return _AIF_CATEGORY.get(aif)
    if knob == "fitter":
        return site.fitter
    if knob in ("slice_mm", "in_plane_mm"):
        if scanner_voxel is None:
            return None
        return float(scanner_voxel[2]) if knob == "slice_mm" else float(max(scanner_voxel[:2]))
    if knob.startswith(SCANNER_PREFIX):  # e.g. "scanner.fa": the scanner's, or the protocol's
        key = knob[len(SCANNER_PREFIX) :]
        source = site.scanner if site.scanner is not None and hasattr(site.scanner, key) else p
        if not hasattr(source, key):
            return None
        v = getattr(source, key)
        return list(v) if isinstance(v, tuple) else v
    if hasattr(p, knob):
        v = getattr(p, knob)
        return list(v) if isinstance(v, tuple) else v
    return None


def _label(value: Any) -> Any:
    from phantomdce.report.results import knob_label

    return knob_label(value)


def _number(x: Any) -> float | None:
    if isinstance(x, bool):
        return None
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


_RANK = (NO_DATA, NOT_ESTIMABLE, "degenerate", FAILS, "undecided: CI too wide",
         "meets (CI crosses the limit)", MEETS)  # fmt: skip


def _worst(classes: Sequence[str]) -> str:
    ranked = [c for c in classes if c in _RANK]
    return min(ranked, key=_RANK.index) if ranked else NO_DATA


def recommendation_lines(
    site: Site, scenarios_dir: str | Path, summary_md: str | None
) -> list[RecommendationLine]:
    """One line per recommendation of the study's scenarios (see :class:`RecommendationLine`).

    Parameters
    ----------
    site : Site
        The site.
    scenarios_dir : str or Path
        Folder of the study's scenario files (their ``[recommendation]`` tables and swept
        values).
    summary_md : str or None
        The study report's ``summary.md`` text (None: no study verdicts, only where the
        site stands).
    """
    settings = study_settings(summary_md) if summary_md else {}
    voxel = site.scanner.derive().voxel_mm if site.scanner is not None else None
    groups: dict[str, dict[str, Any]] = {}
    for path in sorted(Path(scenarios_dir).glob("*.toml")):
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
        rec = raw.get("recommendation")
        if not rec:
            continue
        g = groups.setdefault(rec["id"], {"rec": rec, "order": rec.get("order", 100), "swept": []})
        sweep = raw.get("sweep", {}).get(rec["knob"])
        if sweep is not None:
            g["swept"] += [v for v in sweep if v not in g["swept"]]
        if "knob_value" in rec and rec["knob_value"] not in g["swept"]:
            g["swept"].append(rec["knob_value"])
    out = []
    for g in sorted(groups.values(), key=lambda g: (g["order"], g["rec"]["id"])):
        rec = g["rec"]
        label = rec.get("knob_label", rec["knob"])
        value = _site_knob(rec, site, voxel)
        fmt = _formatter(label)
        if value is None:
            out.append(
                RecommendationLine(rec["id"], rec["title"], rec["text"], _UNSET, "-",
                                   "-", NO_DATA)
            )  # fmt: skip
            continue
        kind, thr = rec["kind"], rec.get("threshold")
        recommended = [_label(v) for v in rec.get("recommended", [])]
        if kind == "max" and thr is not None:
            stands = "follows" if float(value) <= thr + 1e-9 else "deviates"
            stands += f" ({fmt(value)} {'<=' if stands == 'follows' else '>'} {fmt(thr)})"
        elif kind == "min" and thr is not None:
            stands = "follows" if float(value) >= thr - 1e-9 else "deviates"
            stands += f" ({fmt(value)} {'>=' if stands == 'follows' else '<'} {fmt(thr)})"
        elif kind == "category" and recommended:
            stands = "follows" if _label(value) in recommended else "deviates"
        elif kind == "range" and recommended and _number(value) is not None:
            # a direction ("as low as possible"), read as the lowest value the study swept
            lowest = min(float(v) for v in rec["recommended"])
            follows = float(value) <= lowest + 1e-9
            stands = "follows" if follows else "deviates"
            stands += (f" ({fmt(value)} {'<=' if follows else '>'} {fmt(lowest)}, the lowest"
                       " value the study swept)")  # fmt: skip
        else:
            stands = "no recommended value"
        if rec["knob"] == "pipeline.aif" and site.pipeline.get("aif", "true") == "true":
            stands = "not judged: the site file takes the AIF as known (fit.pipeline.aif)"
        study, status = _study_at(settings, rec, site, value, g["swept"], fmt)
        out.append(
            RecommendationLine(rec["id"], rec["title"], rec["text"], fmt(value), stands, study,
                               status)
        )  # fmt: skip
    return out


def _formatter(label: str):  # noqa: ANN202 - a closure
    return lambda v: format_knob_value(_label(v), label)


def _study_at(settings, rec, site: Site, value, swept, fmt) -> tuple[str, str]:
    if not settings:
        return "no study report found", NO_DATA
    section = settings.get(md_escape(rec["title"]))
    if not section:
        return "not in the study report", NO_DATA
    mine = {f: rows for f, rows in section.items() if f == site.fitter
            or f.startswith(f"{site.fitter} (")}  # fmt: skip
    note = ""
    no_own_option = False  # several options, none of them the site's
    if rec["knob"] == "fitter":  # the fitted model is the knob: one row label for all
        mine = dict(section)
    elif len(mine) > 1:  # options (the AIF of an injection-rate sweep, the field strength
        # of a flip-angle sweep): the site's own
        options = {
            f"({_AIF_OPTION.get(site.pipeline.get('aif', 'true'))})",
            f"({site.protocol.field_strength:g} T)",
        }
        own = {f: rows for f, rows in mine.items() if any(f.endswith(o) for o in options)}
        if own:
            mine = own
        else:
            no_own_option = True
            shown = ", ".join(f.split(" (", 1)[1].rstrip(")") for f in mine if " (" in f)
            note = (
                f" (none of the study's options ({shown}) is the site's: each option shown,"
                " the class is the first's)"
            )
    if not mine:
        first = next(iter(section))
        base = first.split(" (")[0]
        mine = {f: rows for f, rows in section.items() if f.split(" (")[0] == base}
        note = f" ({base}: the study did not run {site.fitter})"
    parts, classes = [], []
    first_option: list[str] | None = None
    for fitter, rows in mine.items():
        table = dict(rows)
        tag = fitter[len(site.fitter) :].strip() if fitter.startswith(site.fitter) else ""
        text = md_escape(fmt(value))
        if text in table:
            words, cls = table[text], [table[text]]
        else:
            words, cls = _neighbours(rec, value, swept, table, fmt)
        parts.append(f"{tag}: {words}".strip(": ").strip() if tag else words)
        classes += cls
        first_option = cls if first_option is None else first_option
    if no_own_option and first_option is not None:
        # none of the options is the site's: the badge is the first option's, the
        # recommendation's primary way, as a category verdict's (report.verdict.judge)
        return "; ".join(parts) + note, _worst(first_option)
    return "; ".join(parts) + note, _worst(classes)


def _neighbours(rec, value, swept, table, fmt) -> tuple[str, list[str]]:
    x = _number(value)
    nums = sorted(v for v in (_number(s) for s in swept) if v is not None)
    if rec["kind"] == "category" or x is None or not nums:
        return "not simulated by the study", []
    lo = [v for v in nums if v < x]
    hi = [v for v in nums if v > x]
    if not lo or not hi:
        return f"outside the simulated range ({fmt(nums[0])} to {fmt(nums[-1])})", []
    a, b = lo[-1], hi[0]
    ca = table.get(md_escape(fmt(a)), NO_DATA)
    cb = table.get(md_escape(fmt(b)), NO_DATA)
    return f"not simulated; between {fmt(a)} ({ca}) and {fmt(b)} ({cb})", [ca, cb]


# --------------------------------------------------------------------------- changes


@dataclass(frozen=True)
class Change:
    """A single change of the site's protocol and what it buys at equal scan time.

    Attributes
    ----------
    key : str
        The changed key (``scanner.<key>`` for a scanner key).
    old, new : Any
        Its value at the site and in the change.
    dt, snr : float
        The changed protocol's frame time (s) and SNR.
    ktrans_cv_pct, ve_cv_pct, ktrans_bias_pct, ve_bias_pct : float
        Grid means over tissues of the CV (%: the bound's, with the spread of the noise-free
        bias over arrival phases) and of the |relative bias| of noise-free fits averaged over
        the phases (%).
    error_pct : float
        Grid mean over tissues, Ktrans and ve of ``sqrt(bias^2 + CV^2)``, %: the ranking score.
    gain_pct : float
        The site's ``error_pct`` minus this one (positive: better).
    scan_time_s : float
        Dynamic duration plus VFA time where known, s.
    """

    key: str
    old: Any
    new: Any
    dt: float
    snr: float
    ktrans_cv_pct: float
    ve_cv_pct: float
    ktrans_bias_pct: float
    ve_bias_pct: float
    error_pct: float
    gain_pct: float
    scan_time_s: float


#: Candidate values of the single changes (package units).
_PLAIN_CANDIDATES: dict[str, list[Any]] = {
    "fa": [10.0, 12.0, 15.0, 18.0, 20.0, 25.0, 30.0],
    "flip_angles": [[2.0, 15.0], [3.0, 15.0], [3.0, 20.0], [5.0, 25.0], [2.0, 20.0],
                    [5.0, 15.0, 30.0], [3.0, 10.0, 25.0], [2.0, 10.0, 20.0], [4.0, 12.0, 25.0]],
    "n_baseline": [2, 3, 5, 8, 10],
}  # fmt: skip
_SCANNER_CANDIDATES: dict[str, list[Any]] = {
    "parallel_factor": [1.0, 1.5, 2.0, 2.5, 3.0, 4.0],
    "partial_fourier": [0.625, 0.75, 0.875, 1.0],
    "bandwidth_hz_px": [200.0, 300.0, 400.0, 600.0, 800.0],
    "fa": [10.0, 12.0, 15.0, 18.0, 20.0, 25.0],
    "vfa_flip_angles": _PLAIN_CANDIDATES["flip_angles"],
    "matrix": [[128, 128], [160, 160], [192, 192], [224, 224], [256, 256]],
    "slices": [24, 30, 40, 48, 60],
}
#: g-factor against the parallel-imaging factor R assumed when a change moves R (the
#: ``scanner_tradeoff`` example's assumption, not a coil's map): the site's g is scaled by
#: ``G(R_new) / G(R_site)``, linear between these points.
_G_OF_R = ((1.0, 1.0), (1.5, 1.05), (2.0, 1.1), (2.5, 1.18), (3.0, 1.25), (4.0, 1.5))
#: The recommendations' voxel limits a change must keep (in-plane and slice, mm).
_MAX_IN_PLANE_MM = 2.0
_MAX_SLICE_MM = 4.0


def _g_of_r(r: float) -> float:
    xs, ys = zip(*_G_OF_R, strict=True)
    return float(np.interp(r, xs, ys))


def _scanner_change(sc: Any, key: str, new: Any) -> tuple[dict[str, Any], str]:
    """The scanner values a single change sets (with what moves with it), and its words."""
    if key == "parallel_factor":
        g = sc.g_factor * _g_of_r(new) / _g_of_r(sc.parallel_factor)
        return {key: new, "g_factor": g}, f" (g {sc.g_factor:.3g} -> {g:.3g}, assumed)"
    if key == "slices":  # the same slab: thinner or thicker partitions
        thick = sc.slices * sc.slice_thickness_mm / new
        return {key: new, "slice_thickness_mm": thick}, (
            f" x {thick:.3g} mm (slab {new * thick:.0f} mm kept)"
        )
    return {key: new}, ""


def _candidates(site: Site) -> list[tuple[str, Any, Any, Protocol, float]]:
    """(key, old, new, protocol, VFA time s or NaN) of every single change, site first."""
    p = site.protocol
    out = []
    if site.scanner is None:
        out.append(("", None, None, p, math.nan))
        for key, values in _PLAIN_CANDIDATES.items():
            old = getattr(p, key)
            for v in values:
                new = tuple(v) if isinstance(v, list) else v
                if new == old or (key == "flip_angles" and len(new) != len(old)):
                    continue  # the VFA time is unknown: as many angles as the site's
                try:
                    changes: dict[str, Any] = {key: new}
                    if key == "fa":  # receiver noise fixed: the SNR follows the signal
                        changes["snr"] = p.snr * _spgr_ratio(p, new)
                    if key == "n_baseline" and p.post_bolus_s is None:
                        pass  # same duration: fewer or more frames after the arrival
                    proto = p.replace(**changes)
                    proto.check_post_bolus_window()
                except ConfigError:
                    continue
                out.append((key, old, new, proto, math.nan))
        return out
    sc = site.scanner
    base = _protocol_keys(p)
    out.append(("", None, None, p, sc.derive().vfa_time_s))
    for key, values in _SCANNER_CANDIDATES.items():
        old = getattr(sc, key)
        for v in values:
            new = tuple(v) if isinstance(v, list) else v
            if new == old:
                continue
            changes, words = _scanner_change(sc, key, new)
            try:
                s2 = sc.replace(**changes)
                d = s2.derive()
                if max(d.voxel_mm[:2]) > _MAX_IN_PLANE_MM + 1e-9 or (
                    d.voxel_mm[2] > _MAX_SLICE_MM + 1e-9
                ):
                    continue  # leaves the recommended voxel
                proto = Protocol.from_mapping({**base, **s2.protocol_changes()}, base=Protocol())
                proto.check_post_bolus_window()
            except (ConfigError, ValueError):
                continue
            out.append((f"scanner.{key}", old, _Shown(new, words), proto, d.vfa_time_s))
    return out


@dataclass(frozen=True)
class _Shown:
    """A changed value with the words of what moved with it."""

    value: Any
    words: str = ""


def _spgr_ratio(p: Protocol, fa: float) -> float:
    from phantomdce.signal import native_t1, spgr

    r1 = 1.0 / float(native_t1("tumour", p.field_strength))
    return float(spgr(r1, fa=fa * p.b1, tr=p.tr) / spgr(r1, fa=p.fa * p.b1, tr=p.tr))


def best_changes(
    site: Site, n: int = 3, *, phases: int = DEFAULT_PHASES
) -> tuple[list[Change], Change | None, str]:
    """The ``n`` single changes (distinct keys) that most lower the error at equal scan time.

    Every candidate of one key changed (:data:`_PLAIN_CANDIDATES` for plain protocol keys,
    :data:`_SCANNER_CANDIDATES` for a scanner) is scored with
    :func:`phantomdce.design.score.score_protocols` (bound and noise-free bias, no Monte
    Carlo); candidates whose scan time exceeds the site's by more than 1% are dropped; the
    best value of each key is kept and the keys ranked by ``gain_pct``.

    Returns
    -------
    changes : list of Change
        At most ``n``, best first, with a positive gain only.
    site_score : Change or None
        The site's own scores (``key`` ``""``).
    note : str
        How the changes were chosen, or why there are none.
    """
    try:
        from phantomdce.design.score import score_protocols
    except ImportError:
        return [], None, "the protocol scorer (phantomdce.design.score) is not available"
    cands = _candidates(site)
    grid = [0.0] if site.protocol.bat is not None else [k / phases for k in range(phases)]
    protocols = [c[3].replace(bat_phase=ph) for c in cands for ph in grid]
    ds = score_protocols(
        protocols,
        site.tissue,
        model=site.tissue.model,
        kind=bound_kind(site),
        fitter=site.fitter,
        pipeline=dict(site.pipeline),
        vfa_time_s=[c[4] for c in cands for _ in grid],
    )
    shape = (len(cands), len(grid), ds.sizes["tissue"])
    times = ds["scan_time_s"].values.reshape(len(cands), len(grid))[:, 0]
    pooled = {}
    for p in ("Ktrans", "ve"):
        cv = ds["crlb_cv_pct"].sel(parameter=p).values.reshape(shape)
        bias = ds["bias_pct"].sel(parameter=p).values.reshape(shape)
        bias = np.where(np.isfinite(bias), bias, np.inf)  # a failed noise-free fit
        with np.errstate(invalid="ignore"):
            # over arrival phases, as the Monte Carlo pools them: the mean bias, and the CV
            # of noise (the bound) and of the phase-to-phase spread of the bias
            mean_bias = bias.mean(axis=1)
            total_cv = np.sqrt((cv**2).mean(axis=1) + bias.var(axis=1))
        pooled[p] = (np.abs(mean_bias), total_cv)  # (candidate, tissue)
    err = np.mean([np.sqrt(b**2 + c**2) for b, c in pooled.values()], axis=0)
    score = err.mean(axis=1)
    scores = []
    for i, (key, old, new, proto, _) in enumerate(cands):
        (kb, kc), (vb, vc) = (pooled[p] for p in ("Ktrans", "ve"))
        scores.append(
            Change(key, old, new, proto.dt, proto.snr, float(np.mean(kc[i])),
                   float(np.mean(vc[i])), float(np.mean(kb[i])), float(np.mean(vb[i])),
                   float(score[i]), float(score[0] - score[i]), float(times[i]))
        )  # fmt: skip
    mine = scores[0]
    best: dict[str, Change] = {}
    for c in scores[1:]:
        if not math.isfinite(c.error_pct) or c.scan_time_s > mine.scan_time_s * 1.01 + 1e-9:
            continue
        if c.key not in best or c.gain_pct > best[c.key].gain_pct:
            best[c.key] = c
    ranked = sorted((c for c in best.values() if c.gain_pct > 0), key=lambda c: -c.gain_pct)
    how = (
        f"{len(cands) - 1} single changes scored by the bound ({bound_kind(site)}) and the"
        f" {site.fitter} fit of noise-free data on every tissue, at {len(grid)} arrival"
        " phase(s) pooled as the Monte Carlo pools them (CV^2 = the bound's CV^2 averaged over"
        " the phases + the variance of the noise-free bias over them); scan time (dynamic series"
        f" and VFA images) at most 1% above the site's {mine.scan_time_s:.0f} s; the best"
        " value of each key, keys ranked by the gain"
        + (" (scanner keys: the dynamic duration is kept, so the frame time, voxel and SNR"
           " move together; a change of R moves the g-factor as assumed in the"
           " scanner_tradeoff example; voxels beyond 2 mm in-plane or 4 mm slice are left"
           " out)" if site.scanner is not None else
           " (without a [scanner] table the VFA time is unknown: VFA sets keep the site's"
           " number of angles, a new dynamic flip angle keeps the receiver noise, and dt"
           " cannot change at equal cost)")
    )  # fmt: skip
    return ranked[:n], mine, how


# --------------------------------------------------------------------------- assessment


@dataclass
class PageSection:
    """A section of the page: anchor id, heading, HTML body and Markdown body."""

    id: str
    title: str
    html: str
    markdown: str


@dataclass
class Assessment:
    """Everything the page shows (see the module docstring).

    Attributes
    ----------
    site : Site
    run_dir : Path
        The site's engine run.
    result : RecommendationResult
        The run collected like a study's.
    verdict : Verdict
        The site's fitter judged on it; :attr:`setting` is the site's SNR.
    tissues : list of TissueLine
    budget : list of BudgetLine
    recommendations : list of RecommendationLine
    changes : list of Change
    site_score : Change or None
    changes_note : str
    timings : dict of str to float
        Seconds spent in each part.
    extra_sections : list of PageSection
        Sections added after the others (the repeatability figures of issue 15 go here).
    """

    site: Site
    run_dir: Path
    result: RecommendationResult
    verdict: Verdict
    setting: Setting
    tissues: list[TissueLine]
    budget: list[BudgetLine]
    recommendations: list[RecommendationLine]
    changes: list[Change]
    site_score: Change | None
    changes_note: str
    criterion: Criterion
    settings: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    extra_sections: list[PageSection] = field(default_factory=list)


def _repo_path(relative: Path) -> Path | None:
    """``relative`` under the working directory or the source checkout, if it exists."""
    for root in (Path.cwd(), Path(phantomdce.__file__).resolve().parents[2]):
        if (root / relative).exists():
            return root / relative
    return None


def assess(
    site: Site,
    out: str | Path,
    *,
    replicates: int = DEFAULT_REPLICATES,
    phases: int = DEFAULT_PHASES,
    seed: int = 0,
    study_report: str | Path | None = None,
    study_scenarios: str | Path | None = None,
    run_dir: str | Path | None = None,
    changes: bool = True,
    repeatability_subjects: int = DEFAULT_REPEATABILITY_SUBJECTS,
) -> Assessment:
    """Run the site's Monte Carlo and gather every part of the page.

    Parameters
    ----------
    site : Site
        The site.
    out : str or Path
        Output folder (the run goes to ``out/run`` unless ``run_dir``).
    replicates, phases, seed : int, optional
        The Monte Carlo's size and seed (:func:`site_scenario`).
    study_report : str or Path, optional
        The study report folder (its ``summary.md``); default ``reports/esnr2022`` of the
        working directory or the source checkout.
    study_scenarios : str or Path, optional
        The study's scenario folder; default ``scenarios/esnr2022`` likewise.
    run_dir : str or Path, optional
        Where the engine runs (default ``out/run``).
    changes : bool, optional
        Score the single changes (False: skip that section).
    repeatability_subjects : int, optional
        Phantom subjects of the test-retest simulation at the site's protocol
        (:func:`repeatability_scenario`; 0: skip it). Its run goes to ``out/repeatability``
        (or beside ``run_dir``).

    Returns
    -------
    Assessment
    """
    from phantomdce.report.results import collect_results

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    run = run_site(site, out, replicates=replicates, phases=phases, seed=seed, run_dir=run_dir)
    timings["monte_carlo_s"] = time.perf_counter() - t0
    t = time.perf_counter()
    (result,) = [r for r in collect_results(run) if r.recommendation.id == SITE_RECOMMENDATION]
    criterion = Criterion()
    verdict = judge(result, criterion, fitter=site.fitter)
    setting = next(s for s in verdict.settings if _is_site_snr(s.knob_value, site))
    tissues = tissue_lines(run, site, result, setting)
    budget = budget_lines(result, site)
    timings["metrics_and_bound_s"] = time.perf_counter() - t
    t = time.perf_counter()
    report = Path(study_report) if study_report is not None else _repo_path(STUDY_REPORT)
    scen = Path(study_scenarios) if study_scenarios is not None else _repo_path(STUDY_SCENARIOS)
    summary = None
    if report is not None and (report / "summary.md").exists():
        summary = (report / "summary.md").read_text(encoding="utf-8")
    recs = recommendation_lines(site, scen, summary) if scen is not None else []
    timings["recommendations_s"] = time.perf_counter() - t
    t = time.perf_counter()
    best, mine, note = (
        best_changes(site, phases=phases) if changes else ([], None, "not computed")
    )
    timings["changes_s"] = time.perf_counter() - t
    a = Assessment(
        site, run, result, verdict, setting, tissues, budget, recs, best, mine, note, criterion,
        settings={
            "replicates": replicates,
            "phases": phases,
            "seed": seed,
            "study_report": str(report / "summary.md") if summary is not None else "not found",
            "study_scenarios": str(scen) if scen is not None else "not found",
        },
        timings=timings,
    )
    t = time.perf_counter()
    a.extra_sections.append(
        _repeatability_section(
            site,
            out,
            scen,
            subjects=repeatability_subjects,
            seed=seed,
            run_dir=None if run_dir is None else Path(run_dir).parent / "repeatability",
        )
    )
    timings["repeatability_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t0
    return a


#: The study's test-retest scenario, the template of the site's (its session variation,
#: phantom, ROI rule and tumour sizes).
REPEATABILITY_TEMPLATE = "phantom_repeatability.toml"


def repeatability_scenario(
    site: Site, template: Mapping[str, Any], *, subjects: int, seed: int = 0
) -> dict[str, Any]:
    """The test-retest scenario (a mapping, as parsed TOML) at the site's protocol.

    The study's test-retest scenario (``template``: its phantom, session variation, ROI rule
    and swept tumour diameters) with the site's protocol, fitter and pipeline and
    ``subjects`` phantom subjects (one test-retest pair each per tumour size). A site with
    a ``[scanner]`` table keeps it, so the phantom is acquired at the scanner's voxel with
    its noise (the reference SNR in tissue of the site's T1, as in the site's own Monte
    Carlo); a site with plain keys is acquired at the template's voxel, its ``snr`` taken as
    the phantom's (muscle in a 2 x 2 x 3 mm voxel, scaled by voxel volume).

    Raises
    ------
    ConfigError
        ``subjects`` below 2 (a within-subject SD needs at least two pairs).
    """
    if isinstance(subjects, bool) or not isinstance(subjects, int) or subjects < 2:
        raise ConfigError(
            f"--repeatability-subjects = {subjects!r}: expected an integer >= 2 (0 skips it)"
        )
    raw = json.loads(json.dumps(dict(template)))  # a deep copy of plain TOML data
    raw["name"] = f"{site.name}_repeatability"
    raw["description"] = (
        f"phantomdce assess: test-retest on the neck phantom at the site {site.name!r}'s protocol"
    )
    raw["seed"] = int(raw.get("seed", 0)) + int(seed)
    raw["phantom"] = {**raw.get("phantom", {}), "subjects": int(subjects)}
    protocol = _protocol_keys(site.protocol)
    if site.scanner is not None:
        from phantomdce.scanner import PROTOCOL_KEYS_SET

        table = dict(site.source["scanner"])
        table.setdefault("reference_t1_s", float(site.scanner.derive().t1_s))
        raw["scanner"] = table
        protocol = {k: v for k, v in protocol.items() if k not in PROTOCOL_KEYS_SET}
        acq = dict(raw.get("acquisition", {}))
        for key in ("in_plane_mm", "slice_mm"):
            acq.pop(key, None)  # the scanner's voxel sets them
        raw["acquisition"] = acq
    if raw["phantom"].get("subject_aif") == "varied":
        protocol.pop("aif", None)  # each subject its own AIF shape (the template's design)
    raw["protocol"] = protocol
    raw["fit"] = {"fitters": [site.fitter], "pipeline": dict(site.pipeline)}
    sweep = {k: v for k, v in raw.get("sweep", {}).items() if k == "tumour_diameter_mm"}
    raw["sweep"] = sweep
    raw.pop("recommendation", None)
    return raw


def _repeatability_section(
    site: Site,
    out: str | Path,
    scenarios: Path | None,
    *,
    subjects: int,
    seed: int,
    run_dir: Path | None,
) -> PageSection:
    """Test-retest at the site's protocol (issue 15, part 4), or why it was not simulated."""
    title = "Repeatability and the smallest detectable change"
    template = None if scenarios is None else scenarios / REPEATABILITY_TEMPLATE
    if subjects == 0 or template is None or not template.exists():
        why = (
            "not simulated (--repeatability-subjects 0)"
            if subjects == 0
            else f"not simulated: the study's test-retest scenario ({REPEATABILITY_TEMPLATE}) was"
            " not found (give --study-scenarios)"
        )
        return PageSection("repeatability", title, f"<p>{html_escape(why)}</p>", md_escape(why))
    from phantomdce.engine.run import run
    from phantomdce.report.figures import figure_to_png
    from phantomdce.report.repeatability import (
        PUBLISHED_TEXT,
        detectable_words,
        repeatability,
        repeatability_figure,
        repeatability_rows,
    )

    raw = repeatability_scenario(
        site, tomllib.loads(template.read_text(encoding="utf-8")), subjects=subjects, seed=seed
    )
    out = Path(out)
    path = out / "repeatability_scenario.toml"
    header = "# Written by `phantomdce assess`: test-retest at the site's protocol.\n"
    write_atomic(path, header + toml_text(raw))
    target = run_dir if run_dir is not None else out / "repeatability"
    run(path, target)
    table = repeatability(target, "Ktrans", seed=seed)
    fig = repeatability_figure(table)
    try:
        png = figure_to_png(fig)
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)
    (out / "figures").mkdir(exist_ok=True)
    (out / "figures" / "repeatability.png").write_bytes(png)
    var = raw["phantom"].get("session_variation", {})
    intro = (
        f"{subjects} neck-phantom subjects scanned twice at the site's protocol, fitted with"
        f" {site.fitter} and the site's pipeline"
        f" ({', '.join(f'{k} = {v}' for k, v in dict(site.pipeline).items())})"
        f" ({', '.join(f'{k} = {v}' for k, v in var.items())} between"
        " sessions; new noise; the tumour ROI redrawn on each session's images). Within-subject"
        " SD (wSD) and CV (wCV) of the tumour ROI's Ktrans; repeatability coefficient RC = 2.77"
        " wSD; smallest detectable change SDC = 2.77 wCV (a relative change detectable with"
        " 95% confidence in one patient), with its 95% bootstrap interval over subjects."
        f" With {subjects} subjects the intervals are wide; the study's scenario has 20."
        " Physiological change between sessions is not simulated: these are lower limits."
    )
    words = detectable_words(table)
    head, rows = repeatability_rows(
        table.sort_values("tumour_diameter_mm"),
        keys=["tumour_diameter_mm"],
        labels={"tumour_diameter_mm": "tumour (mm)"},
        sdc_decimals=1,  # an SDC of 29.9% against a 30% change is detectable, not "30"
    )
    html = (
        f"<p>{html_escape(intro)}</p>"
        + "".join(f"<p>{html_escape(w)}</p>" for w in words)
        + html_table(head, rows)
        + html_figure(png, "Smallest detectable change against tumour diameter")
        + f"<p>{html_escape(PUBLISHED_TEXT)}</p>"
    )
    markdown = "\n\n".join(
        [md_escape(intro), *[md_escape(w) for w in words], md_table(head, rows),
         "![Smallest detectable change](figures/repeatability.png)", md_escape(PUBLISHED_TEXT)]
    )
    return PageSection("repeatability", title, html, markdown)


# --------------------------------------------------------------------------- the page


def _figure(a: Assessment) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from phantomdce.report.figures import figure_to_png

    fig = Figure(figsize=(11, 4.2), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    markers = dict(zip(("Ktrans", "ve", "vp"), "os^", strict=True))
    lo, hi = math.inf, 0.0
    for p in TABLE_PARAMETERS:
        lines = [t for t in a.tissues if t.parameter == p and t.status != NOT_ESTIMABLE]
        x = np.array([t.crlb_cv_pct for t in lines])
        y = np.array([t.cv_noise_pct for t in lines])
        ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
        if ok.any():
            ax1.scatter(x[ok], y[ok], marker=markers[p], label=p, alpha=0.8)
            lo = min(lo, float(np.min(x[ok])), float(np.min(y[ok])))
            hi = max(hi, float(np.max(x[ok])), float(np.max(y[ok])))
        idx = np.array([t.tissue for t in lines])
        b = np.array([t.bias_pct for t in lines])
        se = np.array([t.bias_se_pct for t in lines])
        ax2.errorbar(idx, b, yerr=1.96 * np.nan_to_num(se), fmt=markers[p], label=p, ms=4,
                     alpha=0.8)  # fmt: skip
    if not math.isfinite(lo):
        lo, hi = 1.0, 100.0
    line = np.geomspace(lo / 1.2, hi * 1.2, 50)
    ax1.plot(line, line, color="0.2", lw=1, label="MC = bound")
    ax1.fill_between(line, line * (1 - BOUND_TOLERANCE), line * (1 + BOUND_TOLERANCE),
                     color="0.85", label="±10%")  # fmt: skip
    ax1.set_xscale("log")
    ax1.set_yscale("log")
    ax1.set_xlabel("Cramér-Rao bound CV (%)")
    ax1.set_ylabel("Monte-Carlo CV, noise only (%)")
    ax1.set_title("Precision per tissue: Monte Carlo against the bound")
    ax1.legend(fontsize=8)
    for lim in (-10, 10):
        ax2.axhline(lim, color="tab:green", lw=1, ls="--")
    ax2.axhline(0, color="0.3", lw=0.8)
    ax2.set_xlabel("tissue (grid index)")
    ax2.set_ylabel("relative bias (%), 95% CI")
    ax2.set_title("Bias per tissue (Monte Carlo)")
    ax2.legend(fontsize=8)
    return figure_to_png(fig)


def _site_rows(a: Assessment) -> list[tuple[str, str]]:
    s = a.site
    p = s.protocol
    rows = [
        ("site", s.name + (f": {s.description}" if s.description else "")),
        ("protocol", f"dt {p.dt:.3g} s, {p.n_baseline} baseline frames, duration"
                     f" {p.duration:.4g} s, fa {p.fa:g} deg, TR {1000 * p.tr:.3g} ms, VFA"
                     f" {list(p.flip_angles)} deg x {p.vfa_averages} average(s),"
                     f" {p.field_strength:g} T, SNR {p.snr:.3g}"),
        ("tissue grid", f"{s.tissue.model}: "
                        + ", ".join(f"{k} {list(v)}" for k, v in s.tissue.axes.items())),
        ("fitter and pipeline", f"{s.fitter}; " + ", ".join(f"{k} = {v}"
                                                           for k, v in s.pipeline.items())),
    ]  # fmt: skip
    if s.scanner is not None:
        d = s.scanner.derive()
        rows.append(
            ("scanner (derived)", f"dt {d.dt:.3g} s, voxel"
             f" {' x '.join(f'{v:.3g}' for v in d.voxel_mm)} mm ({d.voxel_mm3:.3g} mm3),"
             f" SNR {d.snr:.3g}, VFA noise ratio"
             f" {d.vfa_sigma_ratio:.3g}, VFA time {d.vfa_time_s:.3g} s")
        )  # fmt: skip
    rows.append(
        ("Monte Carlo", f"{a.settings['replicates']} replicates x {a.settings['phases']} arrival"
         f" phase(s) per tissue, seed {a.settings['seed']}, engine run {a.run_dir}")
    )  # fmt: skip
    return rows


def _tissue_table(a: Assessment) -> tuple[list[str], list[list[str]], list[list[str]]]:
    by_tissue: dict[int, list[TissueLine]] = {}
    for t in a.tissues:
        by_tissue.setdefault(t.tissue, []).append(t)
    header = ["tissue", "class"]
    for p in TABLE_PARAMETERS:
        header += [f"{p} bias % (± SE)", f"{p} CV % MC (noise only)", f"{p} CV % bound"]
    header.append("flags")
    html_rows, md_rows = [], []
    for _, lines in sorted(by_tissue.items()):
        judged = [t.status for t in lines if t.status]
        cls = NOT_ESTIMABLE if NOT_ESTIMABLE in judged else (judged[0] if judged else "-")
        flags = []
        cells = [tissue_words(lines[0].truth), cls]
        for p in TABLE_PARAMETERS:
            t = next((x for x in lines if x.parameter == p), None)
            if t is None:
                cells += ["-", "-", "-"]
                continue
            if t.status == NOT_ESTIMABLE:
                flags.append(f"{p} not estimable ({fmt_pct(100 * t.failure_rate)}% failed)")
            if t.bound_agrees is False:
                flags.append(f"{p}: MC and bound disagree")
            cells += [
                f"{fmt_pct(t.bias_pct)} (± {fmt_pct(t.bias_se_pct)})",
                f"{fmt_pct(t.cv_pct)} ({fmt_pct(t.cv_noise_pct)})",
                fmt_pct(t.crlb_cv_pct),
            ]
        cells.append("; ".join(flags))
        md_rows.append(cells)
        html_rows.append([html_escape(c) if i != 1 else (status_badge(c) if c != "-" else "-")
                          for i, c in enumerate(cells)])  # fmt: skip
    return header, html_rows, md_rows


def _budget_table(a: Assessment) -> tuple[list[str], list[list[str]]]:
    header = ["source", "parameter", "bias %", "CV %", "measured as"]
    rows = [
        [b.source, b.parameter, fmt_pct(b.bias_pct), fmt_pct(b.cv_pct), b.how] for b in a.budget
    ]
    return header, rows


def _recs_table(a: Assessment) -> tuple[list[str], list[list[str]], list[str]]:
    header = ["recommendation", "site's value", "where the site stands",
              f"the study's verdict at that value ({a.site.fitter})"]  # fmt: skip
    rows, status = [], []
    for r in a.recommendations:
        rows.append([f"{r.title}: {r.text}", r.site_value, r.stands, r.study])
        status.append(r.status)
    return header, rows, status


def _changes_table(a: Assessment) -> tuple[list[str], list[list[str]]]:
    header = [
        "change", "dt s", "SNR", "Ktrans CV % (model)", "ve CV % (model)", "Ktrans |bias| %",
        "ve |bias| %", "error %", "gain (points)", "scan time s",
    ]  # fmt: skip
    rows = []
    items = ([a.site_score] if a.site_score is not None else []) + a.changes
    for c in items:
        name = "the site's protocol" if not c.key else f"{c.key}: {_val(c.old)} -> {_val(c.new)}"
        rows.append([name, f"{c.dt:.3g}", f"{c.snr:.3g}", fmt_pct(c.ktrans_cv_pct),
                     fmt_pct(c.ve_cv_pct), fmt_pct(c.ktrans_bias_pct), fmt_pct(c.ve_bias_pct),
                     fmt_pct(c.error_pct), "-" if not c.key else f"{c.gain_pct:+.1f}",
                     f"{c.scan_time_s:.0f}"])  # fmt: skip
    return header, rows


def _val(v: Any) -> str:
    if isinstance(v, _Shown):
        return _val(v.value) + v.words
    if isinstance(v, tuple | list):
        return "[" + ", ".join(f"{x:g}" for x in v) + "]"
    return f"{v:g}" if isinstance(v, float) else str(v)


_TISSUE_NOTE = (
    "Monte Carlo at the site's protocol through the engine, pooled over the bolus arrival "
    "phases: bias is the mean relative error (± its standard error); the first CV pools the "
    "phases (noise and sampling), the one in brackets is the noise alone (root mean square of "
    "each phase's CV), compared with the Cramér-Rao bound at each phase's protocol ({kind}; "
    "the bound takes the AIF as known). 'MC and bound disagree' where they differ by more "
    "than 10% of the bound plus 1.96 standard errors of the Monte-Carlo CV. The class applies "
    "the study's per-tissue rule (a limit exceeded beyond 1.96 standard errors fails); 'not "
    "estimable' where more than {fail:g}% of a parameter's fits failed."
)
_BUDGET_NOTE = (
    "T1 mapping and AIF: the same voxels fitted with that stage set to its "
    "truth (bias: the full bias minus the bias with the stage true; CV: sqrt(CV_full^2 - "
    "CV_true^2)). Sampling: the noise-free cases of the same run (the frame timing and the "
    "model; its CV is the spread over arrival phases). Noise: the full result minus the "
    "noise-free one. The stage lines overlap the noise line (noisy VFA images are noise too), "
    "so the lines do not add up; a stage the pipeline takes as true has no line."
)
_RECS_NOTE = (
    "Where the site stands: its value against the recommendation's threshold. The study's "
    "verdict: the committed ESNR 2022 study's class for the site's fitter at the site's value, "
    "read from its report; the study varies one knob at a time with every other setting at "
    "the study's (e.g. SNR 30), so this is not a verdict on the site's protocol as a whole. "
    "That verdict is the Monte Carlo's, in the first row."
)


def _whole_words(setting: Setting) -> str:
    """The Monte Carlo's verdict on the site's protocol: class, pooled numbers, tissues, why."""
    parts = []
    for p, c in setting.checks.items():
        ci = (
            f" [{fmt_pct(c.ci_low)}, {fmt_pct(c.ci_high)}]"
            if math.isfinite(c.ci_low) and math.isfinite(c.ci_high)
            else ""
        )
        parts.append(
            f"{p} bias {fmt_pct(c.rel_bias_pct)}%{ci}, CV {fmt_pct(c.cv_pct)}%,"
            f" {fmt_pct(100 * c.failure_rate)}% of fits failed"
        )
    text = "; ".join(parts)
    if setting.tissues:
        text += f"; the criterion holds in {setting.tissues_meeting} of {len(setting.tissues)}"
        text += " tissues"
        worst = setting.worst_tissue
        if worst is not None and not setting.all_tissues_meet:
            q = worst.parameter
            text += (
                f" (worst: {tissue_words(worst.truth)}, {q} bias"
                f" {fmt_pct(worst.rel_bias_pct.get(q, math.nan))}%, CV"
                f" {fmt_pct(worst.cv_pct.get(q, math.nan))}%)"
            )
    reasons = "; ".join(str(r) for r in setting.reasons)
    return text + (f". Why: {reasons}" if reasons else "")


def _model_check(a: Assessment) -> str:
    """The model's numbers for the site's protocol beside the Monte Carlo's (grid means)."""
    if a.site_score is None:
        return ""
    out = []
    for p, cv, bias in (
        ("Ktrans", a.site_score.ktrans_cv_pct, a.site_score.ktrans_bias_pct),
        ("ve", a.site_score.ve_cv_pct, a.site_score.ve_bias_pct),
    ):
        lines = [t for t in a.tissues if t.parameter == p]
        if not lines:
            continue
        mc_cv = float(np.nanmean([t.cv_pct for t in lines]))
        mc_bias = float(np.nanmean([abs(t.bias_pct) for t in lines]))
        out.append(
            f"{p} CV {fmt_pct(cv)}% (Monte Carlo {fmt_pct(mc_cv)}%), |bias| {fmt_pct(bias)}%"
            f" (Monte Carlo {fmt_pct(mc_bias)}%)"
        )
    return "For the site's protocol the model gives, as grid means: " + "; ".join(out) + "."


def _study_cell(text: str, status: str) -> str:
    return status if text == status else f"{status}: {text}"


def _header_rows(a: Assessment, command: str) -> list[tuple[str, str]]:
    return [
        ("command", command),
        ("phantomdce version", phantomdce.__version__),
        ("accuracy criterion", describe_criterion(a.criterion, max_failure_rate=MAX_FAILURE_RATE)),
        *_site_rows(a),
        ("time", ", ".join(f"{k.removesuffix('_s').replace('_', ' ')} {v:.1f} s"
                           for k, v in a.timings.items())),
    ]  # fmt: skip


def write_assessment(a: Assessment, out: str | Path, *, command: str) -> dict[str, Path]:
    """Write the page: ``out/index.html`` (self-contained), ``out/summary.md`` and its figure.

    Returns
    -------
    dict of str to Path
        ``"html"``, ``"markdown"`` and ``"figure"`` (``out/figures/assess.png``).
    """
    out = Path(out)
    figdir = out / "figures"
    figdir.mkdir(parents=True, exist_ok=True)
    png = _figure(a)
    fig_path = figdir / "assess.png"
    write_atomic(fig_path, png)
    caption = (
        "Left: noise-only Monte-Carlo CV of each tissue against its Cramér-Rao bound (grey: "
        "±10%). Right: relative bias per tissue with its 95% CI (dashed: ±10%)."
    )
    title = f"phantomdce assessment of {a.site.name}"
    whole = f"{a.setting.status}: {_whole_words(a.setting)}"
    kind = bound_kind(a.site)
    t_head, t_html, t_md = _tissue_table(a)
    b_head, b_rows = _budget_table(a)
    r_head, r_rows, r_status = _recs_table(a)
    c_head, c_rows = _changes_table(a)
    tissue_note = _TISSUE_NOTE.format(kind=kind, fail=100 * MAX_FAILURE_RATE)
    whole_row = [
        "The site's protocol as a whole", "-", "-",
        f"Monte Carlo at the site's protocol: {a.setting.status}",
    ]  # fmt: skip

    body = [
        "<nav><h2>Contents</h2><ul>",
        '<li><a href="#recommendations">ESNR 2022 recommendations</a></li>',
        '<li><a href="#tissues">Bias and CV per tissue</a></li>',
        '<li><a href="#budget">Error budget</a></li>',
        '<li><a href="#changes">Three single changes</a></li>',
        *[f'<li><a href="#{s.id}">{html_escape(s.title)}</a></li>' for s in a.extra_sections],
        "</ul></nav>",
        '<section id="recommendations"><h2>ESNR 2022 recommendations</h2>',
        f"<p>{html_escape(_RECS_NOTE)}</p>",
    ]
    html_recs = [[f"<strong>{html_escape(whole_row[0])}</strong>", "-", "-",
                  "Monte Carlo: " + status_badge(a.setting.status) + " "
                  + html_escape(_whole_words(a.setting))]]  # fmt: skip
    for row, st in zip(r_rows, r_status, strict=True):
        html_recs.append([html_escape(c) for c in row[:3]]
                         + [status_badge(st) + ("" if row[3] == st
                                                else " " + html_escape(row[3]))])  # fmt: skip
    body += [html_table(r_head, html_recs, raw=True), "</section>"]
    body += [
        '<section id="tissues"><h2>Bias and CV per tissue</h2>',
        f"<p>{status_badge(a.setting.status)} {html_escape(_whole_words(a.setting))}</p>",
        f'<p class="notes">{html_escape(tissue_note)}</p>',
        html_table(t_head, t_html, raw=True),
        html_figure(png, caption),
        "</section>",
        '<section id="budget"><h2>Error budget</h2>',
        f'<p class="notes">{html_escape(_BUDGET_NOTE)}</p>',
        html_table(b_head, b_rows),
        "</section>",
        '<section id="changes"><h2>Three single changes at equal or lower scan time</h2>',
        f'<p class="notes">{html_escape(a.changes_note)}. The score: the mean over tissues,'
        " Ktrans and ve of sqrt(bias^2 + CV^2), with CV and bias as above; a model, not a"
        f" Monte Carlo. {html_escape(_model_check(a))}</p>",
        html_table(c_head, c_rows) if c_rows else "<p>No single change improves the score.</p>",
        "</section>",
    ]
    for s in a.extra_sections:
        body += [f'<section id="{s.id}"><h2>{html_escape(s.title)}</h2>', s.html, "</section>"]
    body.append(
        "<footer><p>Generated by phantomdce "
        f"{html_escape(phantomdce.__version__)}; every number is computed from the site's "
        "run, the bound and the committed study report.</p></footer>"
    )
    header = _header_rows(a, command)
    html_path = out / "index.html"
    write_atomic(html_path, html_page(title, header, "\n".join(body)))

    md = [f"# {md_escape(title)}", ""]
    md += [f"- {md_escape(k)}: {md_escape(v)}" for k, v in header]
    md += ["", "## ESNR 2022 recommendations", "", md_escape(_RECS_NOTE), ""]
    md.append(md_table(r_head, [[whole_row[0], "-", "-", f"Monte Carlo: {whole}"]]
                       + [r[:3] + [_study_cell(r[3], st)] for r, st in zip(r_rows, r_status,
                                                                    strict=True)]))  # fmt: skip
    md += ["", "## Bias and CV per tissue", "",
           f"**{a.setting.status}**: {md_escape(_whole_words(a.setting))}",
           "", f"*{md_escape(tissue_note)}*", "", md_table(t_head, t_md), "",
           f"![{md_escape(caption)}](figures/assess.png)", "",
           f"*{md_escape(caption)}*"]  # fmt: skip
    md += ["", "## Error budget", "", f"*{md_escape(_BUDGET_NOTE)}*", "",
           md_table(b_head, b_rows)]  # fmt: skip
    md += ["", "## Three single changes at equal or lower scan time", "",
           f"*{md_escape(a.changes_note)}. The score: the mean over tissues, Ktrans and ve of"
           " sqrt(bias^2 + CV^2), with CV and bias as above; a model, not a Monte Carlo."
           f" {md_escape(_model_check(a))}*", ""]  # fmt: skip
    md.append(md_table(c_head, c_rows) if c_rows else "No single change improves the score.")
    for s in a.extra_sections:
        md += ["", f"## {md_escape(s.title)}", "", s.markdown]
    md_path = out / "summary.md"
    write_atomic(md_path, "\n".join(md) + "\n")
    return {"html": html_path, "markdown": md_path, "figure": fig_path}


# --------------------------------------------------------------------------- command line


def cmd_assess(args: Any) -> int:
    """Run ``phantomdce assess`` (:func:`phantomdce.design.add_assess_parser`'s arguments).

    Prints the report's paths and the time taken; returns the exit status 0.
    """
    t0 = time.perf_counter()
    site = load_site(args.site)
    a = assess(
        site,
        args.output,
        replicates=args.replicates,
        phases=args.phases,
        seed=args.seed,
        study_report=args.study,
        study_scenarios=args.study_scenarios,
        run_dir=args.run_dir,
        repeatability_subjects=args.repeatability_subjects,
    )
    argv = getattr(args, "argv", None)
    command = "phantomdce " + " ".join(argv) if argv else f"phantomdce assess {args.site}"
    paths = write_assessment(a, args.output, command=command)
    print(f"{paths['html']}\n{paths['markdown']}")
    if not getattr(args, "quiet", False):
        print(f"assessed {site.name} in {time.perf_counter() - t0:.1f} s")
    return 0
