"""Verdicts: does a recommended setting meet an accuracy criterion, and how far does it hold.

Pure logic on the rows of a :class:`~phantomdce.report.model.RecommendationResult` (no
plotting, no I/O, no prose). A verdict is data: classes, numbers and structured
:class:`Reason` objects; :mod:`phantomdce.report.words` writes the sentences.

Rules
-----
A *setting* is one fitter at one value of the swept knob. Each judged parameter ``p`` is
checked on its pooled :class:`~phantomdce.report.model.KnobRow` metrics and, on a scenario
with a tissue grid, on each tissue's :class:`~phantomdce.report.model.TissueRow`:

- ``failure_rate <= max_failure_rate`` (:data:`MAX_FAILURE_RATE`, 5 %, unless the caller
  passes another value);
- ``|rel_bias_pct| <= criterion.max_abs_rel_bias_pct[p]`` (if ``p`` has a bias limit);
- ``cv_pct <= criterion.max_cv_pct[p]`` (if ``p`` has a CV limit).

A tissue *meets* unless a judged parameter is outside a limit by more than its sampling
noise on that tissue's numbers: ``|bias| - 1.96 SE > limit`` or ``CV - 1.96 SE(CV) > limit``
(``SE`` of the tissue's mean relative error and of its CV, from its replicates), or its
failure rate exceeds the limit; NaN fails. With a few dozen replicates per tissue one tissue's
bias has a standard error of a few per cent, so the largest of 36 noisy estimates is not by
itself a failing tissue. The setting is classified, the first rule that applies winning:

=================================== =========================================================
:data:`NO_DATA`                     the fitter has no row for a judged parameter here
:data:`NOT_ESTIMABLE`               a judged parameter's pooled failure rate exceeds the
                                    limit (or is NaN): its bias and CV come from the few
                                    survivors and are shown, never judged
:data:`DEGENERATE`                  the data are noisy but a judged parameter's estimates do
                                    not move with the noise (CV < :data:`DEGENERATE_CV_PCT`):
                                    the fit learned nothing (e.g. it returned its start)
:data:`FAILS`                       a pooled bias or CV is outside its limit or NaN, or the
                                    criterion holds in fewer than
                                    ``criterion.min_tissue_fraction`` of the tissues
:data:`UNDECIDED`                   the bootstrap 95 % CI of a pooled relative bias crosses
                                    its limit and is wider than the acceptance band itself
                                    (``hi - lo > 2 limit``): too few subjects or replicates
                                    to tell, whatever the point estimate
:data:`MEETS_CI_CROSSES`            all the above pass, but a bootstrap 95 % CI of a pooled
                                    relative bias crosses its limit (or is unavailable)
:data:`MEETS`                       all the above pass with every CI inside the limits
=================================== =========================================================

Judged parameters are those with a limit in the criterion that the recommendation lists in
``parameters`` and that the fitter estimates; the others are named in :attr:`Verdict.notes`.

Ordered knobs (``kind`` ``"max"`` or ``"min"``) are walked from the strictest value (the
smallest for ``"max"``, the largest for ``"min"``) towards looser ones; settings without
data are skipped. :attr:`Verdict.loosest_meeting` is the last value before the first setting
that does not meet (both *meets* classes count), :attr:`Verdict.loosest_meeting_ci` the same
walk counting :data:`MEETS` only; :attr:`Verdict.loosest_average` walks the pooled
(grid-average) checks alone and :attr:`Verdict.loosest_worst_tissue` requires every tissue
to meet. The recommended setting is the ``threshold`` if the fitter has it (else the nearest
value on the recommended side); without a threshold, the values in ``recommended``. For
``"category"`` knobs each recommended category is its own option, judged on its own
(:attr:`Verdict.options`): an optional alternative that fails does not make the primary
option fail.

``"range"`` knobs are numeric knobs whose recommendation is a direction, not a threshold
(e.g. "flip angle as low as possible"): the settings are sorted by value (smallest first), the
recommended setting(s) are the values in ``recommended``, judged as for an ordered knob (the
worst class among them), and the loosest fields hold, as for categories, the lists of values
at which the criterion holds (both *meets* classes, :data:`MEETS` only, the grid average,
every tissue). :func:`meeting_runs` gives those lists as runs of adjacent simulated values
(``((10, 25),)``: the criterion holds from 10 to 25 and nowhere else). The bootstrap CIs,
the not-estimable and tissue rules of each setting are those of every kind.

Examples
--------
>>> from phantomdce.report.model import Criterion
>>> from phantomdce.report.words import describe_criterion
>>> for part in describe_criterion(Criterion()).split("; "):
...     print(part)
|relative bias| <= 10% (95% CI inside ±10%) and CV <= 20% for Ktrans and ve
in >= 90% of the tissues of the grid and on the grid average
failure rate <= 5%
>>> format_knob_value(5.0, "temporal resolution (s)")
'5 s'
>>> format_knob_value(3, "number of pre-contrast frames")
'3 pre-contrast frames'
"""

from __future__ import annotations

import math
import re
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

from phantomdce.report.model import Criterion, KnobRow, RecommendationResult, TissueRow

__all__ = [
    "DEGENERATE",
    "DEGENERATE_CV_PCT",
    "FAILS",
    "MAX_FAILURE_RATE",
    "MEETS",
    "MEETS_CI_CROSSES",
    "NOT_ESTIMABLE",
    "NO_DATA",
    "UNDECIDED",
    "BudgetEntry",
    "Crossover",
    "OptionComparison",
    "ParamCheck",
    "Reason",
    "Setting",
    "TissueCheck",
    "Verdict",
    "describe_criterion",
    "compare_options",
    "crossovers",
    "error_budget",
    "format_knob_value",
    "judge",
    "judge_all",
    "meeting_runs",
    "option_labels",
    "tissue_loosest",
]

#: Largest fraction of failed fits (0-1) a setting may have and still be estimable.
MAX_FAILURE_RATE = 0.05

#: A CV (%) below this on noisy data means the estimates do not move with the noise.
DEGENERATE_CV_PCT = 1e-6

#: Class of a setting whose checks pass and whose bias CIs are inside the limits.
MEETS = "meets"
#: Class of a setting whose checks pass but whose bias CI crosses a limit.
MEETS_CI_CROSSES = "meets (CI crosses the limit)"
#: Class of a setting whose bias CI is wider than the acceptance band: the data cannot decide.
UNDECIDED = "undecided: CI too wide"
#: Class of a setting that fails a check on bias, CV or the fraction of tissues.
FAILS = "fails"
#: Class of a setting where more fits failed than the criterion allows.
NOT_ESTIMABLE = "not estimable"
#: Class of a setting whose estimates do not vary with the noise.
DEGENERATE = "degenerate"
#: Class of a setting for which the fitter has no row of a judged parameter.
NO_DATA = "no data"

MEETING = (MEETS, MEETS_CI_CROSSES)
# worst first: the class of several settings together is the worst of theirs
_RANK = {
    NO_DATA: 0,
    NOT_ESTIMABLE: 1,
    DEGENERATE: 2,
    FAILS: 3,
    UNDECIDED: 4,
    MEETS_CI_CROSSES: 5,
    MEETS: 6,
}
_KINDS = ("max", "min", "category", "range")


@dataclass(frozen=True)
class Reason:
    """Why a check does not fully pass (data; :func:`phantomdce.report.words.reason_text`).

    Attributes
    ----------
    code : str
        ``"bias"``, ``"bias_nan"``, ``"bias_ci"``, ``"bias_ci_unavailable"``,
        ``"bias_ci_wide"``, ``"cv"``,
        ``"cv_nan"``, ``"failure"``, ``"failure_nan"``, ``"degenerate"``, ``"tissues"``,
        ``"no_result"`` or ``"no_parameter"``.
    parameter : str
        The parameter concerned ('' for setting-wide reasons).
    value, limit, low, high : float
        The number, its limit and (``"bias_ci"``) the CI bounds, in % (rates as 0-1).
    blocking : bool
        True when the reason makes the setting not meet; False for a doubt (CI).
    tissues_meeting, tissues_total : int
        ``"tissues"``: how many tissues meet, of how many.
    worst : TissueCheck or None
        ``"tissues"``: the worst tissue.
    missing : tuple of str
        ``"no_result"``: the parameters without a row.
    """

    code: str
    parameter: str = ""
    value: float = math.nan
    limit: float = math.nan
    low: float = math.nan
    high: float = math.nan
    blocking: bool = True
    tissues_meeting: int = 0
    tissues_total: int = 0
    worst: TissueCheck | None = None
    missing: tuple[str, ...] = ()

    def __str__(self) -> str:
        from phantomdce.report.words import reason_text

        return reason_text(self)


@dataclass(frozen=True)
class TissueCheck:
    """One tissue of the grid at one setting: does every judged parameter meet there.

    Attributes
    ----------
    tissue : int
        Grid index.
    truth : dict of str to float
        The tissue's true parameters (Ktrans /min, ve, vp).
    rel_bias_pct, cv_pct, failure_rate : dict of str to float
        Per judged parameter: mean relative error (%), CV (%) and failure rate (0-1).
    meets : bool
        No judged parameter outside a limit by more than its sampling noise (1.96 standard
        errors of the tissue's bias and CV): a tissue fails only when its data show it.
    usage : float
        The largest ``(|number| - 1.96 SE) / limit`` (> 1: outside beyond the noise); the
        worst tissue has the largest.
    rel_bias_se_pct, cv_se_pct : dict of str to float
        Per judged parameter: the standard errors of the bias and the CV, %.
    parameter : str
        The parameter with that largest ratio.
    """

    tissue: int
    truth: dict[str, float]
    rel_bias_pct: dict[str, float]
    cv_pct: dict[str, float]
    failure_rate: dict[str, float]
    meets: bool
    usage: float
    parameter: str
    rel_bias_se_pct: dict[str, float] = field(default_factory=dict)
    cv_se_pct: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ParamCheck:
    """The pooled numbers behind one parameter at one setting, and their class.

    Attributes
    ----------
    parameter : str
        Parameter symbol (e.g. ``"Ktrans"``).
    rel_bias_pct, ci_low, ci_high : float
        Relative bias and its bootstrap 95 % CI, in %. NaN when unavailable.
    cv_pct : float
        Coefficient of variation, in %: over noise replicates and, where the setting pools
        several cases (nuisance axes such as the arrival phase), over those cases too.
    failure_rate : float
        Fraction of failed fits, 0-1.
    bias_limit, cv_limit : float or None
        The criterion's limits for this parameter, in % (None: not checked).
    status : str
        A setting class, for this parameter's pooled numbers alone.
    reasons : tuple of Reason
        Why the parameter does not fully meet (empty when it meets).
    cv_noise_pct : float
        CV over noise replicates alone (root mean square over the pooled cases), %.
    case_bias_min, case_bias_max : float
        Lowest and highest relative bias of the pooled cases, %.
    at_limit_rate : float
        Fraction of fits at the parameter's degenerate limit (``at_limit_<param>``), 0-1.
    efficiency : float
        Cramér-Rao bound variance over the measured within-tissue variance (noise only),
        1 for an efficient estimator, below 1 for a less precise one
        (:mod:`phantomdce.engine.metrics`); NaN where no bound applies. Shown beside the
        CV, not judged.
    """

    parameter: str
    rel_bias_pct: float
    ci_low: float
    ci_high: float
    cv_pct: float
    failure_rate: float
    bias_limit: float | None
    cv_limit: float | None
    status: str
    reasons: tuple[Reason, ...] = ()
    cv_noise_pct: float = math.nan
    case_bias_min: float = math.nan
    case_bias_max: float = math.nan
    at_limit_rate: float = math.nan
    efficiency: float = math.nan


@dataclass(frozen=True)
class Setting:
    """One knob value of one fitter: its class and the numbers behind it.

    Attributes
    ----------
    knob_value : Any
        The knob value as it appears in the result.
    status : str
        The setting's class (module docstring).
    checks : dict of str to ParamCheck
        One entry per judged parameter with a row at this value.
    reasons : tuple of Reason
        Why the setting does not fully meet (blocking reasons first).
    tissues : tuple of TissueCheck
        Per tissue of the grid (empty without a tissue grid).
    average_status : str
        The class on the pooled (grid-average) numbers alone.
    """

    knob_value: Any
    status: str
    checks: dict[str, ParamCheck]
    reasons: tuple[Reason, ...] = ()
    tissues: tuple[TissueCheck, ...] = ()
    average_status: str = NO_DATA

    @property
    def tissues_meeting(self) -> int:
        """Number of tissues of the grid where the criterion holds."""
        return sum(t.meets for t in self.tissues)

    @property
    def worst_tissue(self) -> TissueCheck | None:
        """The tissue farthest outside (or closest to) the limits; None without a grid."""
        return max(self.tissues, key=lambda t: t.usage) if self.tissues else None

    @property
    def all_tissues_meet(self) -> bool:
        """The setting meets on the average and in every tissue of the grid."""
        return self.average_status in MEETING and all(t.meets for t in self.tissues)


@dataclass(frozen=True)
class Verdict:
    """Whether one fitter's recommended setting meets the criterion, and how far it holds.

    Attributes
    ----------
    recommendation_id, title, text : str
        From the :class:`~phantomdce.report.model.Recommendation`.
    knob_label : str
        Axis label of the swept knob, with units.
    kind : str
        ``"max"``, ``"min"``, ``"category"`` or ``"range"``.
    fitter : str
        Fitter judged.
    criterion : Criterion
        The criterion judged against.
    max_failure_rate : float
        Largest admissible failure rate, 0-1.
    parameters : tuple of str
        Parameters judged for this fitter.
    recommended_values : tuple
        Knob values judged as the recommended setting(s) (empty if none was simulated).
    recommended_tags : tuple of str
        Per recommended value: ``"recommended"`` or ``"nearest simulated to the recommended
        X"`` (with ``X`` the target knob value, formatted).
    recommended_meets : str
        Ordered knobs: the worst class among the recommended settings. ``"category"``: the
        class of the first recommended option (each option's class is in ``options``).
        :data:`NO_DATA` when none was simulated.
    options : tuple of (Any, str)
        ``"category"``: each recommended option with its own class.
    loosest_meeting, loosest_meeting_ci : Any
        Ordered knobs: the loosest value reached from the strictest one without a setting
        that does not meet (None if the strictest already does not), counting both meets
        classes, or :data:`MEETS` only. ``"category"``: lists of the categories that meet;
        ``"range"``: lists of the values that meet, smallest first (:func:`meeting_runs`).
    loosest_average, loosest_worst_tissue : Any
        As ``loosest_meeting`` on the pooled (grid-average) checks alone, and with every
        tissue of the grid required to meet.
    breaks_at : Any
        Ordered knobs: the first value on the walk that does not meet (None if none).
    settings : tuple of Setting
        The per-setting table, strictest first (``"category"``: in the result's order).
    tissue_grid : bool
        Whether the per-tissue criterion applies.
    notes : tuple of str
        Caveats: parameters not judged, settings without data, nearest-value substitution.
    """

    recommendation_id: str
    title: str
    text: str
    knob_label: str
    kind: str
    fitter: str
    criterion: Criterion
    max_failure_rate: float
    parameters: tuple[str, ...]
    recommended_values: tuple[Any, ...]
    recommended_tags: tuple[str, ...]
    recommended_meets: str
    options: tuple[tuple[Any, str], ...]
    loosest_meeting: Any
    loosest_meeting_ci: Any
    loosest_average: Any
    loosest_worst_tissue: Any
    breaks_at: Any
    settings: tuple[Setting, ...]
    tissue_grid: bool = True
    notes: tuple[str, ...] = field(default=())

    def setting(self, knob_value: Any) -> Setting | None:
        """Return the setting at ``knob_value`` (None if it is not in the table)."""
        key = _key(knob_value, self.kind)
        for s in self.settings:
            if _same(_key(s.knob_value, self.kind), key):
                return s
        return None

    @property
    def recommended_settings(self) -> tuple[Setting, ...]:
        """The settings judged as recommended, in ``recommended_values`` order."""
        return tuple(s for v in self.recommended_values if (s := self.setting(v)) is not None)

    @property
    def summary(self) -> str:
        """The verdict in plain words (:func:`phantomdce.report.words.verdict_summary`)."""
        from phantomdce.report.words import verdict_summary

        return verdict_summary(self)


# --------------------------------------------------------------------------- formatting


def format_knob_value(value: Any, knob_label: str) -> str:
    """Format a knob value with the unit taken from its axis label.

    Parameters
    ----------
    value : Any
        The knob value (number or category).
    knob_label : str
        Axis label such as ``"temporal resolution (s)"``; a trailing ``(unit)`` gives the
        unit, a label ``"number of X"`` gives ``X``.

    Returns
    -------
    str
        ``"5 s"``, ``"3 pre-contrast frames"``, ``"label = value"`` or, for non-numbers,
        ``str(value)``.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    number = f"{value:g}"
    match = re.search(r"\(([^()]*)\)\s*$", knob_label)
    if match and match.group(1).strip():
        return f"{number} {match.group(1).strip()}"
    if knob_label.lower().startswith("number of "):
        return f"{number} {knob_label[len('number of ') :].strip()}"
    return f"{knob_label} = {number}" if knob_label else number


def describe_criterion(
    criterion: Criterion, *, max_failure_rate: float = MAX_FAILURE_RATE
) -> str:
    """Return the criterion in words (see :func:`phantomdce.report.words.describe_criterion`)."""
    from phantomdce.report.words import describe_criterion as words

    return words(criterion, max_failure_rate=max_failure_rate)


# --------------------------------------------------------------------------- keys


def criterion_parameters(criterion: Criterion) -> list[str]:
    """Parameters with a limit in the criterion, bias limits' order first."""
    out: list[str] = []
    for p in (*criterion.max_abs_rel_bias_pct, *criterion.max_cv_pct):
        if p not in out:
            out.append(p)
    return out


def _hashable(value: Any) -> Hashable:
    if isinstance(value, list | tuple):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((str(k), _hashable(v)) for k, v in value.items()))
    try:
        hash(value)
    except TypeError:
        return repr(value)
    return value


def _key(value: Any, kind: str) -> Hashable:
    """Comparable key of a knob value: a float for ordered knobs, hashable for categories."""
    if kind in ("max", "min", "range"):
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(
                f"knob value {value!r} is not a number, but the knob kind is {kind!r}"
            ) from None
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return _hashable(value)


def _same(a: Hashable, b: Hashable) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def _metric(row: KnobRow, name: str) -> float:
    value = row.metrics.get(name, math.nan)
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


# --------------------------------------------------------------------------- judging


def _check(
    row: KnobRow, bias_limit: float | None, cv_limit: float | None, max_failure_rate: float
) -> ParamCheck:
    p = row.parameter
    rb = _metric(row, "rel_bias_pct")
    lo = _metric(row, "rel_bias_ci_low")
    hi = _metric(row, "rel_bias_ci_high")
    cv = _metric(row, "cv_pct")
    fr = _metric(row, "failure_rate")
    n_ok = _metric(row, "n_success")
    noise_free = _metric(row, "noise_free") == 1.0
    status = MEETS
    reasons: list[Reason] = []
    if math.isnan(fr):
        status = NOT_ESTIMABLE
        reasons.append(Reason("failure_nan", p))
    elif fr > max_failure_rate:
        status = NOT_ESTIMABLE
        reasons.append(Reason("failure", p, fr, max_failure_rate))
    elif not noise_free and math.isfinite(cv) and cv < DEGENERATE_CV_PCT and n_ok >= 2:
        status = DEGENERATE
        reasons.append(Reason("degenerate", p, cv, DEGENERATE_CV_PCT))
    else:
        too_wide = (
            bias_limit is not None
            and math.isfinite(lo)
            and math.isfinite(hi)
            and (lo < -bias_limit < hi or lo < bias_limit < hi)  # reaches in and out
            and hi - lo > 2 * bias_limit
        )
        if bias_limit is not None:
            if math.isnan(rb):
                reasons.append(Reason("bias_nan", p))
            elif abs(rb) > bias_limit and not too_wide:
                reasons.append(Reason("bias", p, rb, bias_limit))
        if cv_limit is not None:
            if math.isnan(cv):
                reasons.append(Reason("cv_nan", p))
            elif cv > cv_limit:
                reasons.append(Reason("cv", p, cv, cv_limit))
        if reasons:
            status = FAILS
        elif too_wide:
            status = UNDECIDED
            reasons.append(Reason("bias_ci_wide", p, rb, bias_limit, lo, hi))
        elif bias_limit is not None:
            if math.isnan(lo) or math.isnan(hi):
                reasons.append(Reason("bias_ci_unavailable", p, rb, bias_limit, blocking=False))
            elif lo < -bias_limit or hi > bias_limit:
                reasons.append(Reason("bias_ci", p, rb, bias_limit, lo, hi, blocking=False))
            if reasons:
                status = MEETS_CI_CROSSES
    return ParamCheck(
        parameter=p,
        rel_bias_pct=rb,
        ci_low=lo,
        ci_high=hi,
        cv_pct=cv,
        failure_rate=fr,
        bias_limit=bias_limit,
        cv_limit=cv_limit,
        status=status,
        reasons=tuple(reasons),
        cv_noise_pct=_metric(row, "cv_noise_pct"),
        case_bias_min=_metric(row, "rel_bias_case_min"),
        case_bias_max=_metric(row, "rel_bias_case_max"),
        at_limit_rate=_metric(row, "at_limit_rate"),
        efficiency=_metric(row, "efficiency"),
    )


#: Two-sided 95 % normal quantile: a tissue fails a limit only when its number is outside
#: it by more than this many standard errors (sampling noise is not a failure).
Z95 = 1.96


def _ratio(x: float, limit: float | None, se: float = 0.0) -> float:
    """How far ``|x|`` is past ``limit`` beyond its noise: ``(|x| - Z95 se) / limit``."""
    if limit is None:
        return 0.0
    if not math.isfinite(x):
        return math.inf
    margin = abs(x) - Z95 * (se if math.isfinite(se) else 0.0)
    return margin / limit if limit > 0 else (math.inf if margin > 0 else 0.0)


def _tissue_checks(
    rows: dict[str, list[TissueRow]],
    params: list[str],
    criterion: Criterion,
    max_failure_rate: float,
) -> tuple[TissueCheck, ...]:
    by_tissue: dict[Hashable, dict[str, TissueRow]] = {}
    for p in params:
        for t in rows.get(p, []):
            key = t.tissue if t.tissue >= 0 else _hashable(t.truth)
            by_tissue.setdefault(key, {})[p] = t
    out = []
    for i, (key, per) in enumerate(by_tissue.items()):
        usage, worst_p = -1.0, params[0] if params else ""
        meets = len(per) == len(params)
        for p, t in per.items():
            u = max(
                _ratio(
                    t.mean_rel_error_pct, criterion.max_abs_rel_bias_pct.get(p), t.rel_bias_se_pct
                ),
                _ratio(t.cv_pct, criterion.max_cv_pct.get(p), t.cv_se_pct),
                _ratio(t.failure_rate, max_failure_rate),
            )
            if u > usage:
                usage, worst_p = u, p
            meets = meets and u <= 1.0
        any_row = next(iter(per.values()))
        out.append(
            TissueCheck(
                tissue=key if isinstance(key, int) else i,
                truth=dict(any_row.truth),
                rel_bias_pct={p: t.mean_rel_error_pct for p, t in per.items()},
                cv_pct={p: t.cv_pct for p, t in per.items()},
                failure_rate={p: t.failure_rate for p, t in per.items()},
                rel_bias_se_pct={p: t.rel_bias_se_pct for p, t in per.items()},
                cv_se_pct={p: t.cv_se_pct for p, t in per.items()},
                meets=meets,
                usage=usage,
                parameter=worst_p,
            )
        )
    return tuple(out)


def _setting(
    value: Any,
    rows: dict[str, KnobRow],
    tissue_rows: dict[str, list[TissueRow]],
    params: list[str],
    criterion: Criterion,
    max_failure_rate: float,
    tissue_grid: bool,
) -> Setting:
    checks: dict[str, ParamCheck] = {}
    missing = []
    for p in params:
        if p in rows:
            checks[p] = _check(
                rows[p],
                criterion.max_abs_rel_bias_pct.get(p),
                criterion.max_cv_pct.get(p),
                max_failure_rate,
            )
        else:
            missing.append(p)
    all_reasons = [r for c in checks.values() for r in c.reasons]
    if missing or not params:
        why = Reason("no_result", missing=tuple(missing)) if missing else Reason("no_parameter")
        return Setting(value, NO_DATA, checks, (why, *all_reasons))
    average = min((c.status for c in checks.values()), key=_RANK.__getitem__)
    tissues = _tissue_checks(tissue_rows, params, criterion, max_failure_rate) if (
        tissue_grid
    ) else ()
    status = average
    tissue_reason: list[Reason] = []
    if tissues and average in MEETING:
        n_ok = sum(t.meets for t in tissues)
        worst = max(tissues, key=lambda t: t.usage)
        if n_ok < criterion.min_tissue_fraction * len(tissues) - 1e-9:
            status = FAILS
            tissue_reason.append(
                Reason(
                    "tissues",
                    worst.parameter,
                    n_ok / len(tissues),
                    criterion.min_tissue_fraction,
                    tissues_meeting=n_ok,
                    tissues_total=len(tissues),
                    worst=worst,
                )
            )
    blocking = [r for r in all_reasons if r.blocking]
    doubts = [r for r in all_reasons if not r.blocking]
    return Setting(
        value,
        status,
        checks,
        tuple(blocking + tissue_reason + doubts),
        tissues,
        average,
    )


def _walk(ordered: list[Setting], meets) -> tuple[Any, Setting | None]:
    """Walk settings strictest first; return (loosest value meeting, first setting breaking)."""
    loosest = None
    for s in ordered:
        if s.status == NO_DATA:
            continue
        if not meets(s):
            return loosest, s
        loosest = s.knob_value
    return loosest, None


def judge(
    result: RecommendationResult,
    criterion: Criterion | None = None,
    *,
    fitter: str,
    max_failure_rate: float = MAX_FAILURE_RATE,
) -> Verdict:
    """Judge one fitter's results on one recommendation against an accuracy criterion.

    Parameters
    ----------
    result : RecommendationResult
        Rows of the recommendation's scenario, pooled per knob value.
    criterion : Criterion, optional
        Limits per parameter, in %, and the fraction of tissues that must meet (default:
        ``Criterion()``).
    fitter : str
        Name of the fitter to judge (need not have rows: then every setting has no data).
    max_failure_rate : float, optional
        Largest admissible fraction of failed fits, 0-1 (default :data:`MAX_FAILURE_RATE`).

    Returns
    -------
    Verdict
        Classes, numbers and reasons (rules in the module docstring); its ``summary``
        property puts them in words.

    Raises
    ------
    ValueError
        If the recommendation's ``kind`` is not ``"max"``, ``"min"``, ``"category"`` or
        ``"range"``, an ordered or range knob has a non-numeric value, or
        ``max_failure_rate`` is not in [0, 1].
    """
    criterion = Criterion() if criterion is None else criterion
    rec = result.recommendation
    kind = rec.kind
    if kind not in _KINDS:
        raise ValueError(f"recommendation {rec.id!r}: kind {kind!r}; expected one of {_KINDS}")
    if not 0.0 <= max_failure_rate <= 1.0:
        raise ValueError(f"max_failure_rate={max_failure_rate!r}; expected a value in [0, 1]")
    label = rec.knob_label

    def fmt(v: Any) -> str:
        return format_knob_value(v, label)

    values: list[Any] = []
    keys: list[Hashable] = []

    def add(v: Any) -> Hashable:
        k = _key(v, kind)
        for known in keys:
            if _same(known, k):
                return known
        keys.append(k)
        values.append(v)
        return k

    for v in result.knob_values:
        add(v)
    by_value: dict[Hashable, dict[str, KnobRow]] = {}
    for row in result.rows:
        if row.fitter == fitter:
            by_value.setdefault(add(row.knob_value), {})[row.parameter] = row
    tissue_by_value: dict[Hashable, dict[str, list[TissueRow]]] = {}
    for t in result.tissues:
        if t.fitter == fitter:
            tissue_by_value.setdefault(add(t.knob_value), {}).setdefault(t.parameter, []).append(t)

    estimated = {p for rows in by_value.values() for p in rows}
    notes: list[str] = []
    params = []
    for p in criterion_parameters(criterion):
        if p not in rec.parameters:
            notes.append(
                f"{p} is in the criterion but not among this recommendation's "
                "parameters: not judged"
            )
        elif p not in estimated:
            notes.append(f"{fitter} gives no {p} estimate: {p} not judged")
        else:
            params.append(p)
    tissue_grid = bool(result.tissue_grid)
    if not tissue_grid:
        notes.append(
            "no tissue grid (the neck phantom): judged on the pooled numbers, not per tissue"
        )

    settings = [
        _setting(
            v,
            by_value.get(k, {}),
            tissue_by_value.get(k, {}),
            params,
            criterion,
            max_failure_rate,
            tissue_grid,
        )
        for v, k in zip(values, keys, strict=True)
    ]
    if kind in ("max", "min", "range"):
        order = sorted(range(len(settings)), key=lambda i: keys[i], reverse=kind == "min")
        settings = [settings[i] for i in order]
        keys = [keys[i] for i in order]
    no_data = [s for s in settings if s.status == NO_DATA]
    if no_data and len(no_data) < len(settings):
        notes.append("no data at " + ", ".join(fmt(s.knob_value) for s in no_data))
    with_data = [(k, s) for k, s in zip(keys, settings, strict=True) if s.status != NO_DATA]

    recommended: list[Setting] = []
    tags: list[str] = []
    if kind in ("max", "min"):
        targets = [rec.threshold] if rec.threshold is not None else list(rec.recommended)
        for target in targets:
            t = _key(target, kind)
            exact = [s for k, s in with_data if _same(k, t)]
            if exact:
                recommended.append(exact[0])
                tags.append("recommended")
                continue
            side = [(k, s) for k, s in with_data if (k < t if kind == "max" else k > t)]
            if side:
                pick = max if kind == "max" else min
                _, s = pick(side, key=lambda ks: ks[0])
                recommended.append(s)
                tags.append(f"nearest simulated to the recommended {fmt(target)}")
                notes.append(
                    f"the recommended {fmt(target)} was not simulated"
                    f"{' for ' + fitter if any(_same(x, t) for x in keys) else ''}: "
                    f"judged at {fmt(s.knob_value)}"
                )
            else:
                notes.append(f"no simulated setting at or on the recommended side of {fmt(target)}")
    else:
        for target in rec.recommended:
            t = _key(target, kind)
            match = [s for k, s in zip(keys, settings, strict=True) if _same(k, t)]
            if match:
                recommended.append(match[0])
                tags.append("recommended")
            else:
                notes.append(f"the recommended {fmt(target)} was not simulated")
    options: tuple[tuple[Any, str], ...] = ()
    if not recommended:
        recommended_meets = NO_DATA
    elif kind == "category":
        options = tuple((s.knob_value, s.status) for s in recommended)
        recommended_meets = recommended[0].status
    else:
        recommended_meets = min((s.status for s in recommended), key=_RANK.__getitem__)

    if kind in ("max", "min"):
        loosest, breaking = _walk(settings, lambda s: s.status in MEETING)
        loosest_ci, _ = _walk(settings, lambda s: s.status == MEETS)
        loosest_avg, _ = _walk(settings, lambda s: s.average_status in MEETING)
        loosest_worst, _ = _walk(settings, lambda s: s.all_tissues_meet)
        breaks_at = breaking.knob_value if breaking is not None else None
    else:
        loosest = [s.knob_value for s in settings if s.status in MEETING]
        loosest_ci = [s.knob_value for s in settings if s.status == MEETS]
        loosest_avg = [s.knob_value for s in settings if s.average_status in MEETING]
        loosest_worst = [s.knob_value for s in settings if s.all_tissues_meet]
        breaks_at = None

    return Verdict(
        recommendation_id=rec.id,
        title=rec.title,
        text=rec.text,
        knob_label=label,
        kind=kind,
        fitter=fitter,
        criterion=criterion,
        max_failure_rate=max_failure_rate,
        parameters=tuple(params),
        recommended_values=tuple(s.knob_value for s in recommended),
        recommended_tags=tuple(tags),
        recommended_meets=recommended_meets,
        options=options,
        loosest_meeting=loosest,
        loosest_meeting_ci=loosest_ci,
        loosest_average=loosest_avg,
        loosest_worst_tissue=loosest_worst,
        breaks_at=breaks_at,
        settings=tuple(settings),
        tissue_grid=tissue_grid,
        notes=tuple(notes),
    )


def meeting_runs(verdict: Verdict, which: str = "meeting") -> tuple[tuple[Any, Any], ...]:
    """Runs of adjacent simulated knob values at which the criterion holds.

    Parameters
    ----------
    verdict : Verdict
        A ``"range"`` (or ``"max"``/``"min"``) verdict: settings in knob order.
    which : str, optional
        ``"meeting"`` (both *meets* classes), ``"ci"`` (:data:`MEETS` only), ``"average"``
        (the pooled checks alone) or ``"every_tissue"`` (every tissue of the grid meets).

    Returns
    -------
    tuple of (Any, Any)
        ``(first, last)`` knob values of each run, in the verdict's order; settings without
        data are skipped (they neither break nor extend a run). Empty if none meets.

    Raises
    ------
    ValueError
        For a ``"category"`` verdict (no order) or an unknown ``which``.

    Notes
    -----
    Settings at 5, 10, 15, 20 deg of which 10, 15 and 20 meet give one run, ``(10, 20)``.
    """
    tests = {
        "meeting": lambda s: s.status in MEETING,
        "ci": lambda s: s.status == MEETS,
        "average": lambda s: s.average_status in MEETING,
        "every_tissue": lambda s: s.all_tissues_meet,
    }
    if verdict.kind == "category":
        raise ValueError(f"verdict {verdict.recommendation_id!r}: a category knob has no runs")
    if which not in tests:
        raise ValueError(f"which={which!r}: expected one of {list(tests)}")
    runs: list[tuple[Any, Any]] = []
    current: list[Any] = []
    for s in verdict.settings:
        if s.status == NO_DATA:
            continue
        if tests[which](s):
            current.append(s.knob_value)
        elif current:
            runs.append((current[0], current[-1]))
            current = []
    if current:
        runs.append((current[0], current[-1]))
    return tuple(runs)


def judge_all(
    result: RecommendationResult,
    criterion: Criterion | None = None,
    *,
    max_failure_rate: float = MAX_FAILURE_RATE,
) -> list[Verdict]:
    """Judge every fitter of a result (see :func:`judge`); error-budget entries are not judged.

    Parameters
    ----------
    result : RecommendationResult
        Rows of the recommendation's scenario.
    criterion : Criterion, optional
        Limits per parameter, in % (default ``Criterion()``).
    max_failure_rate : float, optional
        Largest admissible fraction of failed fits, 0-1.

    Returns
    -------
    list of Verdict
        One per fitter, in the order of ``result.fitters`` (then fitters found only in
        the rows, except the error budget's oracle entries).
    """
    names = list(result.fitters)
    for row in result.rows:
        if row.fitter not in names and row.fitter not in result.oracles:
            names.append(row.fitter)
    return [
        judge(result, criterion, fitter=f, max_failure_rate=max_failure_rate) for f in names
    ]


# --------------------------------------------------------------------------- two options


#: Class of a comparison where the first option wins (see :func:`compare_options`).
FIRST_WINS = "first wins"
#: Class of a comparison where the second option wins.
SECOND_WINS = "second wins"
#: Class of a comparison where each option wins on one of bias and CV.
MIXED = "mixed: each wins on one"
#: Class of a comparison whose intervals overlap on both bias and CV.
TIE_UNDECIDED = "undecided: CIs overlap"
#: The crossover statements of :class:`Crossover`.
CROSSES = "crosses"
SECOND_THROUGHOUT = "second wins throughout"
NEVER = "never"
NEVER_FIRST_WINS = "never: first wins throughout"
ALL_UNDECIDED = "undecided throughout"


@dataclass(frozen=True)
class OptionComparison:
    """Two options of a recommendation at one knob value, on one parameter.

    Attributes
    ----------
    knob_value : Any
        The setting.
    bias_pct, bias_ci : dict of str to float / tuple
        Per option (``"first"``, ``"second"``): relative bias (%) and its bootstrap 95 % CI.
    abs_bias_interval : dict of str to tuple
        Per option: the interval of ``|relative bias|`` the CI allows, % (``(0, max)`` when
        the CI contains 0; ``(0, inf)`` when the CI is unavailable).
    cv_pct, cv_ci : dict of str to float / tuple
        Per option: CV (%) and its 95 % interval ``CV (1 +- 1.96 / sqrt(2 (n - 1)))``, with
        ``n`` the independent blocks (subjects; ``(0, inf)`` with fewer than two).
    bias_winner, cv_winner : str
        ``"first"``, ``"second"`` or ``""`` (the intervals overlap: undecided).
    status : str
        :data:`FIRST_WINS`, :data:`SECOND_WINS` (wins on one of bias and CV and does not
        lose the other), :data:`MIXED`, :data:`TIE_UNDECIDED` or :data:`NO_DATA`.
    """

    knob_value: Any
    bias_pct: dict[str, float]
    bias_ci: dict[str, tuple[float, float]]
    abs_bias_interval: dict[str, tuple[float, float]]
    cv_pct: dict[str, float]
    cv_ci: dict[str, tuple[float, float]]
    bias_winner: str
    cv_winner: str
    status: str


@dataclass(frozen=True)
class Crossover:
    """Where along an ordered knob the second of two options starts to win.

    Attributes
    ----------
    recommendation_id, knob_label, kind : str
        From the recommendation (``kind`` ``"max"`` or ``"min"``).
    fitter : str
        The fitter (without its option suffix).
    parameter : str
        The parameter compared (Ktrans by default).
    first, second : str
        The options' names (e.g. ``"carotid ROI"``, ``"population AIF"``).
    comparisons : tuple of OptionComparison
        One per knob value with data for both options, strictest first.
    crossover_at : Any
        The strictest value from which the second option wins at every looser value with
        data (None if it does not win at the loosest).
    statement : str
        :data:`CROSSES` (the second wins from ``crossover_at`` on, not before),
        :data:`SECOND_THROUGHOUT`, :data:`NEVER_FIRST_WINS` (the first wins at every value),
        :data:`ALL_UNDECIDED` (no value decides), :data:`NEVER` (otherwise: the second does
        not keep winning up to the loosest value) or :data:`NO_DATA`.
    """

    recommendation_id: str
    knob_label: str
    kind: str
    fitter: str
    parameter: str
    first: str
    second: str
    comparisons: tuple[OptionComparison, ...]
    crossover_at: Any
    statement: str


_OPTION_LABEL = re.compile(r"^(?P<fitter>.+) \((?P<option>[^()]+)\)$")


def option_labels(result: RecommendationResult) -> dict[str, dict[str, str]]:
    """The options of a result's fitters: fitter -> {option: label}.

    Runs of one recommendation with different ``option`` label their fitters
    ``"<fitter> (<option>)"`` (:mod:`phantomdce.report.results`); options in the order the
    result lists them. Fitters without an option are left out.
    """
    out: dict[str, dict[str, str]] = {}
    for label in result.fitters:
        m = _OPTION_LABEL.match(label)
        if m:
            out.setdefault(m["fitter"], {})[m["option"]] = label
    return out


def _abs_interval(lo: float, hi: float) -> tuple[float, float]:
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return (0.0, math.inf)
    if lo <= 0.0 <= hi:
        return (0.0, max(-lo, hi))
    return (min(abs(lo), abs(hi)), max(abs(lo), abs(hi)))


def _cv_interval(cv: float, n: float) -> tuple[float, float]:
    if not math.isfinite(cv) or not math.isfinite(n) or n < 2:
        return (0.0, math.inf)
    half = Z95 * cv / math.sqrt(2.0 * (n - 1.0))
    return (max(cv - half, 0.0), cv + half)


def _smaller(a: tuple[float, float], b: tuple[float, float]) -> str:
    """``"first"`` when interval ``a`` lies wholly below ``b``, ``"second"`` the reverse."""
    if a[1] < b[0]:
        return "first"
    if b[1] < a[0]:
        return "second"
    return ""


def compare_options(
    first: KnobRow | None, second: KnobRow | None, knob_value: Any
) -> OptionComparison:
    """Compare two options' pooled rows at one knob value (smaller |bias| and CV win).

    An option wins on bias when its interval of ``|relative bias|`` (from the bootstrap
    95 % CI, ``rel_bias_ci_low``/``_high``) lies wholly below the other's, and on CV when
    its CV interval (``CV +- 1.96 SE``, ``SE = CV / sqrt(2 (n - 1))`` with ``n`` the
    independent blocks ``n_blocks``: the subjects of a phantom run) lies wholly below the
    other's; overlapping intervals decide nothing. An option wins the setting when it wins
    on one and does not lose the other. A row whose failure rate exceeds
    :data:`MAX_FAILURE_RATE` has no comparable numbers (:data:`NO_DATA`).
    """
    rows = {"first": first, "second": second}
    usable = all(
        r is not None and _metric(r, "failure_rate") <= MAX_FAILURE_RATE for r in rows.values()
    )
    nums: dict[str, dict[str, Any]] = {k: {} for k in ("b", "bci", "ab", "cv", "cvci")}
    for k, r in rows.items():
        if r is None:
            nan2 = (math.nan, math.nan)
            nums["b"][k], nums["bci"][k], nums["ab"][k] = math.nan, nan2, (0.0, math.inf)
            nums["cv"][k], nums["cvci"][k] = math.nan, (0.0, math.inf)
            continue
        lo, hi = _metric(r, "rel_bias_ci_low"), _metric(r, "rel_bias_ci_high")
        cv = _metric(r, "cv_pct")
        nums["b"][k], nums["bci"][k] = _metric(r, "rel_bias_pct"), (lo, hi)
        nums["ab"][k] = _abs_interval(lo, hi)
        nums["cv"][k], nums["cvci"][k] = cv, _cv_interval(cv, _metric(r, "n_blocks"))
    if usable:
        bias_w = _smaller(nums["ab"]["first"], nums["ab"]["second"])
        cv_w = _smaller(nums["cvci"]["first"], nums["cvci"]["second"])
        wins = {bias_w, cv_w} - {""}
        if not wins:
            status = TIE_UNDECIDED
        elif len(wins) == 2:
            status = MIXED
        else:
            status = FIRST_WINS if wins == {"first"} else SECOND_WINS
    else:
        bias_w = cv_w = ""
        status = NO_DATA
    return OptionComparison(
        knob_value,
        nums["b"],
        nums["bci"],
        nums["ab"],
        nums["cv"],
        nums["cvci"],
        bias_w,
        cv_w,
        status,
    )


def crossovers(result: RecommendationResult, parameter: str = "Ktrans") -> list[Crossover]:
    """Every pair of options of an ordered recommendation, compared along its knob.

    For each fitter with several options (:func:`option_labels`) and each pair of them (in
    the result's order), each knob value with rows of both is compared
    (:func:`compare_options`), strictest first. The crossover is the strictest value from
    which the second option wins at every looser value with data; the statement says only
    what the comparisons support (e.g. :data:`ALL_UNDECIDED` when no value decides).
    ``"category"`` recommendations have no crossover (empty list).
    """
    rec = result.recommendation
    if rec.kind not in ("max", "min"):
        return []
    rows = {
        (_key(r.knob_value, rec.kind), r.fitter): r for r in result.rows if r.parameter == parameter
    }
    values = sorted({k for k, _ in rows}, reverse=rec.kind == "min")
    out = []
    for fitter, opts in option_labels(result).items():
        names = list(opts)
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                comps = tuple(
                    compare_options(rows[(v, opts[a])], rows[(v, opts[b])], v)
                    for v in values
                    if (v, opts[a]) in rows and (v, opts[b]) in rows
                )
                decided = [c for c in comps if c.status != NO_DATA]
                at = None
                for c in reversed(decided):
                    if c.status != SECOND_WINS:
                        break
                    at = c.knob_value
                if not decided:
                    statement = NO_DATA
                elif at is not None:
                    statement = SECOND_THROUGHOUT if at == decided[0].knob_value else CROSSES
                elif all(c.status == FIRST_WINS for c in decided):
                    statement = NEVER_FIRST_WINS
                elif all(c.status == TIE_UNDECIDED for c in decided):
                    statement = ALL_UNDECIDED
                else:
                    statement = NEVER
                out.append(
                    Crossover(rec.id, rec.knob_label, rec.kind, fitter, parameter, a, b, comps,
                              at, statement)
                )  # fmt: skip
    return out


# --------------------------------------------------------------------------- tissue map


def tissue_loosest(verdict: Verdict) -> dict[int, tuple[dict[str, float], Any]]:
    """Per tissue, the loosest knob value reached from the strictest with the tissue meeting.

    Parameters
    ----------
    verdict : Verdict
        An ordered-knob verdict on a scenario with a tissue grid.

    Returns
    -------
    dict of int to (dict, Any)
        Tissue index -> (its truth, the loosest value; None if it fails already at the
        strictest setting). ``"category"`` and ``"range"`` verdicts: the value is the list
        of knob values where the tissue meets. Settings without data or not estimable count
        as not met.
    """
    truths: dict[int, dict[str, float]] = {}
    result: dict[int, Any] = {}
    broken: set[int] = set()
    for s in verdict.settings:
        if s.status == NO_DATA:
            continue
        seen = {t.tissue: t for t in s.tissues}
        for tissue, t in seen.items():
            truths.setdefault(tissue, t.truth)
            ok = t.meets and s.average_status not in (NOT_ESTIMABLE, DEGENERATE)
            if verdict.kind in ("category", "range"):
                result.setdefault(tissue, [])
                if ok:
                    result[tissue].append(s.knob_value)
                continue
            result.setdefault(tissue, None)
            if tissue in broken:
                continue
            if ok:
                result[tissue] = s.knob_value
            else:
                broken.add(tissue)
    return {k: (truths[k], result[k]) for k in truths}


# --------------------------------------------------------------------------- error budget


@dataclass(frozen=True)
class BudgetEntry:
    """One source of error at one setting: the numbers with that stage set to its truth.

    Attributes
    ----------
    stage : str
        ``""`` for the full pipeline (every stage estimated), else the stage set to its
        true value (``"t1"``, ``"aif"``, ``"baseline"``).
    parameter : str
        Parameter symbol.
    rel_bias_pct, cv_pct : float
        Pooled relative bias and CV, % (with that stage true).
    bias_share_pct, cv_share_pct : float
        What the stage contributes: the full pipeline's relative bias minus this entry's,
        and ``sqrt(max(CV_full^2 - CV^2, 0))`` (independent sources add in quadrature),
        in % (NaN for the full pipeline).
    """

    stage: str
    parameter: str
    rel_bias_pct: float
    cv_pct: float
    bias_share_pct: float = math.nan
    cv_share_pct: float = math.nan


def error_budget(
    result: RecommendationResult, fitter: str, knob_value: Any, parameters: tuple[str, ...]
) -> list[BudgetEntry]:
    """The error budget of one fitter at one setting, from the run's oracle entries.

    Parameters
    ----------
    result : RecommendationResult
        Results whose ``oracles`` name entries ``"<fitter> [true <stage>]"`` (the scenario's
        ``[fit] error_budget``).
    fitter : str
        The judged fitter.
    knob_value : Any
        The setting.
    parameters : tuple of str
        Parameters to report.

    Returns
    -------
    list of BudgetEntry
        The full pipeline first, then one entry per stage and parameter; empty when the
        run has no oracle entry for ``fitter``.
    """
    stages = [(name, stage) for name, (base, stage) in result.oracles.items() if base == fitter]
    if not stages:
        return []
    kind = result.recommendation.kind
    key = _key(knob_value, kind)

    def row(name: str, p: str) -> KnobRow | None:
        for r in result.rows:
            if r.fitter == name and r.parameter == p and _same(_key(r.knob_value, kind), key):
                return r
        return None

    out = []
    for p in parameters:
        full = row(fitter, p)
        if full is None:
            continue
        fb, fc = _metric(full, "rel_bias_pct"), _metric(full, "cv_pct")
        out.append(BudgetEntry("", p, fb, fc))
        for name, stage in stages:
            r = row(name, p)
            if r is None:
                continue
            b, c = _metric(r, "rel_bias_pct"), _metric(r, "cv_pct")
            share_c = math.sqrt(max(fc**2 - c**2, 0.0)) if math.isfinite(fc + c) else math.nan
            out.append(BudgetEntry(stage, p, b, c, fb - b, share_c))
    return out
