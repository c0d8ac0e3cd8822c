"""Verdicts: does a recommended setting meet an accuracy criterion, and how far does it hold.

Pure logic on the rows of a :class:`~phantomdce.report.model.RecommendationResult` (no
plotting, no I/O). Every number in a verdict and in its summary sentence is read from the
rows; nothing is typed in.

Rules
-----
A *setting* is one fitter at one value of the swept knob. Each judged parameter ``p`` is
checked on its :class:`~phantomdce.report.model.KnobRow` metrics:

- ``|rel_bias_pct| <= criterion.max_abs_rel_bias_pct[p]`` (if ``p`` has a bias limit);
- ``cv_pct <= criterion.max_cv_pct[p]`` (if ``p`` has a CV limit);
- ``failure_rate <= max_failure_rate`` (:data:`MAX_FAILURE_RATE`, 5 %, unless the caller
  passes another value; it is kept outside :class:`~phantomdce.report.model.Criterion` so
  the criterion stays about accuracy and precision).

A NaN or missing metric fails its check, and the reason says so. The setting is classified:

=================================== =========================================================
:data:`MEETS`                       every check passes and the whole bootstrap 95 % CI of the
                                    relative bias (``rel_bias_ci_low``, ``rel_bias_ci_high``)
                                    lies inside ``±limit``
:data:`MEETS_CI_CROSSES`            every check passes on the point estimates, but a CI
                                    crosses the limit (or is unavailable, e.g. one replicate)
:data:`FAILS`                       at least one check fails
:data:`NO_DATA`                     the fitter has no row for a judged parameter at this value
=================================== =========================================================

Judged parameters are those with a limit in the criterion that the recommendation lists in
``parameters`` and that the fitter estimates (has a row for at some knob value); the others
are named in :attr:`Verdict.notes`.

Ordered knobs (``kind`` ``"max"`` or ``"min"``) are walked from the strictest value (the
smallest for ``"max"``, the largest for ``"min"``) towards looser ones; settings without
data are skipped. :attr:`Verdict.loosest_meeting` is the last value before the first setting
that does not meet on point estimates (both *meets* classes count), and
:attr:`Verdict.loosest_meeting_ci` the same walk counting :data:`MEETS` only. The
recommended setting is the ``threshold`` if the fitter has it (else the nearest value on the
recommended side: the largest value below it for ``"max"``, the smallest above it for
``"min"``); without a threshold, the values in ``recommended``. For ``"category"`` knobs
each recommended category is judged and ``loosest_meeting`` lists the categories that meet.

Examples
--------
>>> from phantomdce.report.model import Criterion
>>> for part in describe_criterion(Criterion()).split("; "):
...     print(part)
|relative bias| <= 10% (95% CI inside ±10%) and CV <= 20% for Ktrans and ve
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

from phantomdce.report.model import Criterion, KnobRow, RecommendationResult

__all__ = [
    "FAILS",
    "MAX_FAILURE_RATE",
    "MEETS",
    "MEETS_CI_CROSSES",
    "NO_DATA",
    "ParamCheck",
    "Setting",
    "Verdict",
    "describe_criterion",
    "format_knob_value",
    "judge",
    "judge_all",
]

#: Largest fraction of failed fits (0-1) a setting may have and still meet the criterion.
MAX_FAILURE_RATE = 0.05

#: Class of a setting whose point estimates and whole bias CI are inside the limits.
MEETS = "meets"
#: Class of a setting whose point estimates meet but whose bias CI crosses a limit.
MEETS_CI_CROSSES = "meets (CI crosses the limit)"
#: Class of a setting that fails at least one check (NaN metrics fail).
FAILS = "fails"
#: Class of a setting for which the fitter has no row of a judged parameter.
NO_DATA = "no data"

_MEETING = (MEETS, MEETS_CI_CROSSES)
# worst first: the class of several recommended settings is the worst of theirs
_RANK = {FAILS: 0, NO_DATA: 1, MEETS_CI_CROSSES: 2, MEETS: 3}
_KINDS = ("max", "min", "category")


@dataclass(frozen=True)
class ParamCheck:
    """The numbers behind one parameter at one setting, and their verdict.

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
        :data:`MEETS`, :data:`MEETS_CI_CROSSES` or :data:`FAILS`.
    reasons : tuple of str
        Why the parameter does not fully meet (empty when it meets).
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
    reasons: tuple[str, ...] = ()
    cv_noise_pct: float = math.nan
    """CV over noise replicates alone (root mean square over the pooled cases), %."""
    case_bias_min: float = math.nan
    """Lowest relative bias of the pooled cases, %."""
    case_bias_max: float = math.nan
    """Highest relative bias of the pooled cases, %."""


@dataclass(frozen=True)
class Setting:
    """One knob value of one fitter: its class and the per-parameter numbers.

    Attributes
    ----------
    knob_value : Any
        The knob value as it appears in the result.
    status : str
        :data:`MEETS`, :data:`MEETS_CI_CROSSES`, :data:`FAILS` or :data:`NO_DATA`.
    checks : dict of str to ParamCheck
        One entry per judged parameter with a row at this value.
    reasons : tuple of str
        Why the setting does not fully meet (failures first).
    """

    knob_value: Any
    status: str
    checks: dict[str, ParamCheck]
    reasons: tuple[str, ...] = ()


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
        ``"max"``, ``"min"`` or ``"category"``.
    fitter : str
        Fitter judged.
    criterion : str
        The criterion in words (:func:`describe_criterion`).
    parameters : tuple of str
        Parameters judged for this fitter.
    recommended_values : tuple
        Knob values judged as the recommended setting(s) (empty if none was simulated).
    recommended_meets : str
        Class of the recommended setting(s): the worst class among them, :data:`NO_DATA`
        when there is none.
    loosest_meeting : Any
        Ordered knobs: the loosest value reached from the strictest one without a setting
        that fails (None if the strictest already fails). ``"category"``: list of the
        categories that meet on point estimates.
    loosest_meeting_ci : Any
        As ``loosest_meeting``, counting only settings whose whole CI is inside the limits.
    breaks_at : Any
        Ordered knobs: the first value on the walk that does not meet (None if none).
    settings : tuple of Setting
        The per-setting table, strictest first (``"category"``: in the result's order).
    summary : str
        A plain-words summary generated from the rows.
    notes : tuple of str
        Caveats: parameters not judged, settings without data, nearest-value substitution.
    """

    recommendation_id: str
    title: str
    text: str
    knob_label: str
    kind: str
    fitter: str
    criterion: str
    parameters: tuple[str, ...]
    recommended_values: tuple[Any, ...]
    recommended_meets: str
    loosest_meeting: Any
    loosest_meeting_ci: Any
    breaks_at: Any
    settings: tuple[Setting, ...]
    summary: str
    notes: tuple[str, ...] = field(default=())

    def setting(self, knob_value: Any) -> Setting | None:
        """Return the setting at ``knob_value`` (None if it is not in the table)."""
        key = _key(knob_value, self.kind)
        for s in self.settings:
            if _same(_key(s.knob_value, self.kind), key):
                return s
        return None


# --------------------------------------------------------------------------- formatting


def _fmt_num(x: float) -> str:
    """Format a percentage-like number: 1 decimal below 100, none above; ``NaN`` spelled."""
    if x is None or not math.isfinite(x):
        return "NaN" if x is None or math.isnan(x) else ("inf" if x > 0 else "-inf")
    return f"{x:.0f}" if abs(x) >= 100 else f"{x:.1f}"


def _fmt_limit(x: float) -> str:
    return f"{x:g}"


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


def _join(words: list[str]) -> str:
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " and " + words[-1]


def describe_criterion(criterion: Criterion, *, max_failure_rate: float = MAX_FAILURE_RATE) -> str:
    """Return the criterion in words.

    Parameters
    ----------
    criterion : Criterion
        Limits per parameter, in %.
    max_failure_rate : float, optional
        Largest admissible fraction of failed fits, 0-1.

    Returns
    -------
    str
        E.g. ``"|relative bias| <= 10% (95% CI inside ±10%) and CV <= 20% for Ktrans and
        ve; failure rate <= 5%"``; parameters with the same limits are grouped.
    """
    groups: dict[tuple[float | None, float | None], list[str]] = {}
    for p in _criterion_parameters(criterion):
        limits = (criterion.max_abs_rel_bias_pct.get(p), criterion.max_cv_pct.get(p))
        groups.setdefault(limits, []).append(p)
    parts = []
    for (bias, cv), params in groups.items():
        terms = []
        if bias is not None:
            b = _fmt_limit(bias)
            terms.append(f"|relative bias| <= {b}% (95% CI inside ±{b}%)")
        if cv is not None:
            terms.append(f"CV <= {_fmt_limit(cv)}%")
        parts.append(f"{' and '.join(terms)} for {_join(params)}")
    parts.append(f"failure rate <= {_fmt_limit(100 * max_failure_rate)}%")
    return "; ".join(parts)


# --------------------------------------------------------------------------- keys


def _criterion_parameters(criterion: Criterion) -> list[str]:
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
    if kind in ("max", "min"):
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
    fails: list[str] = []
    doubts: list[str] = []
    if bias_limit is not None:
        if math.isnan(rb):
            fails.append(f"{p} relative bias is NaN (not computable)")
        elif abs(rb) > bias_limit:
            fails.append(f"{p} bias {_fmt_num(rb)}% outside ±{_fmt_limit(bias_limit)}%")
        elif math.isnan(lo) or math.isnan(hi):
            doubts.append(f"{p} bias 95% CI unavailable")
        elif lo < -bias_limit or hi > bias_limit:
            doubts.append(
                f"{p} bias 95% CI [{_fmt_num(lo)}, {_fmt_num(hi)}] crosses "
                f"±{_fmt_limit(bias_limit)}%"
            )
    if cv_limit is not None:
        if math.isnan(cv):
            fails.append(f"{p} CV is NaN (not computable)")
        elif cv > cv_limit:
            fails.append(f"{p} CV {_fmt_num(cv)}% > {_fmt_limit(cv_limit)}%")
    if math.isnan(fr):
        fails.append(f"{p} failure rate is NaN (not computable)")
    elif fr > max_failure_rate:
        fails.append(
            f"{p} failure rate {_fmt_num(100 * fr)}% > {_fmt_limit(100 * max_failure_rate)}%"
        )
    status = FAILS if fails else (MEETS_CI_CROSSES if doubts else MEETS)
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
        cv_noise_pct=_metric(row, "cv_noise_pct"),
        case_bias_min=_metric(row, "rel_bias_case_min"),
        case_bias_max=_metric(row, "rel_bias_case_max"),
        reasons=tuple(fails + doubts),
    )


def _setting(
    value: Any,
    rows: dict[str, KnobRow],
    params: list[str],
    criterion: Criterion,
    max_failure_rate: float,
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
    if missing or not params:
        why = f"no result for {_join(missing)}" if missing else "no judged parameter"
        reasons = tuple(r for c in checks.values() for r in c.reasons)
        return Setting(value, NO_DATA, checks, (why, *reasons))
    statuses = [c.status for c in checks.values()]
    status = min(statuses, key=_RANK.__getitem__)
    fails = [r for c in checks.values() if c.status == FAILS for r in c.reasons]
    doubts = [r for c in checks.values() if c.status != FAILS for r in c.reasons]
    return Setting(value, status, checks, tuple(fails + doubts))


def _headline(setting: Setting) -> ParamCheck | None:
    """The parameter that speaks for a setting: the first failing one, else the closest call."""
    checks = list(setting.checks.values())
    if not checks:
        return None
    failing = [c for c in checks if c.status == FAILS]
    if failing:
        return failing[0]

    def usage(c: ParamCheck) -> float:
        u = 0.0
        if c.bias_limit:
            u = max(u, abs(c.rel_bias_pct) / c.bias_limit)
        if c.cv_limit:
            u = max(u, c.cv_pct / c.cv_limit)
        return u if math.isfinite(u) else math.inf

    return max(checks, key=usage)


def _describe_check(c: ParamCheck) -> str:
    def pct(x: float) -> str:
        return f"{_fmt_num(x)}%" if math.isfinite(x) else "NaN"

    ci = ""
    if math.isfinite(c.ci_low) and math.isfinite(c.ci_high):
        ci = f" [{_fmt_num(c.ci_low)}, {_fmt_num(c.ci_high)}]"
    return f"{c.parameter} bias {pct(c.rel_bias_pct)}{ci} and CV {pct(c.cv_pct)}"


def _first_reason(setting: Setting) -> str:
    return setting.reasons[0] if setting.reasons else setting.status


def _describe_setting(setting: Setting, label: str, tag: str, prep: str = "At") -> str:
    where = f"{label} ({tag})" if tag else label
    if setting.status == NO_DATA:
        return f"{prep} {where}: no data ({_first_reason(setting)})"
    head = _headline(setting)
    numbers = _describe_check(head) if head else ""
    text = f"{prep} {where} {numbers}: {setting.status}"
    if setting.status == FAILS:
        text += f" ({_first_reason(setting)})"
    elif setting.status == MEETS_CI_CROSSES:
        text += f" ({_first_reason(setting)})"
    return text


def _walk(ordered: list[Setting], meeting: tuple[str, ...]) -> tuple[Any, Setting | None]:
    """Walk settings strictest first; return (loosest value meeting, first setting breaking)."""
    loosest = None
    for s in ordered:
        if s.status == NO_DATA:
            continue
        if s.status not in meeting:
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
        Limits per parameter, in % (default: ``Criterion()``, |bias| <= 10 % and
        CV <= 20 % for Ktrans and ve).
    fitter : str
        Name of the fitter to judge (need not have rows: then every setting has no data).
    max_failure_rate : float, optional
        Largest admissible fraction of failed fits, 0-1 (default :data:`MAX_FAILURE_RATE`).

    Returns
    -------
    Verdict
        Class of the recommended setting, loosest setting that meets, per-setting table and
        a summary in plain words (rules in the module docstring).

    Raises
    ------
    ValueError
        If the recommendation's ``kind`` is not ``"max"``, ``"min"`` or ``"category"``, an
        ordered knob has a non-numeric value, or ``max_failure_rate`` is not in [0, 1].
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

    # knob values: the result's, then any extra value found in this fitter's rows
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

    estimated = {p for rows in by_value.values() for p in rows}
    notes: list[str] = []
    params = []
    for p in _criterion_parameters(criterion):
        if p not in rec.parameters:
            notes.append(
                f"{p} is in the criterion but not among this recommendation's "
                "parameters: not judged"
            )
        elif p not in estimated:
            notes.append(f"{fitter} gives no {p} estimate: {p} not judged")
        else:
            params.append(p)

    settings = [
        _setting(v, by_value.get(k, {}), params, criterion, max_failure_rate)
        for v, k in zip(values, keys, strict=True)
    ]
    if kind in ("max", "min"):
        order = sorted(range(len(settings)), key=lambda i: keys[i], reverse=kind == "min")
        settings = [settings[i] for i in order]
        keys = [keys[i] for i in order]
    no_data = [s for s in settings if s.status == NO_DATA]
    if no_data and len(no_data) < len(settings):
        notes.append("no data at " + ", ".join(fmt(s.knob_value) for s in no_data))
    with_data = [(k, s) for k, s in zip(keys, settings, strict=True) if s.status != NO_DATA]

    # the recommended setting(s)
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
    if recommended:
        recommended_meets = min((s.status for s in recommended), key=_RANK.__getitem__)
    else:
        recommended_meets = NO_DATA

    # loosest setting that meets
    if kind in ("max", "min"):
        loosest, breaking = _walk(settings, _MEETING)
        loosest_ci, _ = _walk(settings, (MEETS,))
        breaks_at = breaking.knob_value if breaking is not None else None
    else:
        loosest = [s.knob_value for s in settings if s.status in _MEETING]
        loosest_ci = [s.knob_value for s in settings if s.status == MEETS]
        breaking, breaks_at = None, None

    # summary, from the rows only
    sentences = []
    if not with_data:
        sentences.append(
            f"No results for {fitter}"
            + (f" ({_join(params)})" if params else " on the criterion's parameters")
            + "."
        )
    else:
        if recommended:
            prep = "With" if kind == "category" else "At"
            clauses = [
                _describe_setting(s, fmt(s.knob_value), tag, prep if j == 0 else prep.lower())
                for j, (s, tag) in enumerate(zip(recommended, tags, strict=True))
            ]
            sentences.append("; ".join(clauses) + ".")
        elif rec.threshold is None and not rec.recommended:
            sentences.append("The guideline recommends no setting here.")
        else:
            sentences.append("The recommended setting was not simulated.")
        if kind in ("max", "min"):
            bound = "up to" if kind == "max" else "down to"
            if loosest is None:
                assert breaking is not None
                sentences.append(
                    f"The criterion fails already at the strictest simulated setting, "
                    f"{fmt(breaking.knob_value)} ({_first_reason(breaking)})."
                )
                later = [s for s in settings if s.status in _MEETING]
                if later:
                    sentences.append(
                        "It is met at " + ", ".join(fmt(s.knob_value) for s in later) + "."
                    )
            elif breaking is None:
                sentences.append(
                    f"The criterion holds over the whole simulated range, {bound} {fmt(loosest)}."
                )
            else:
                sentences.append(
                    f"The criterion holds {bound} {fmt(loosest)} and breaks at "
                    f"{fmt(breaking.knob_value)} ({_first_reason(breaking)})."
                )
                i = settings.index(breaking)
                again = [s for s in settings[i + 1 :] if s.status in _MEETING]
                if again:
                    sentences.append(
                        "It is met again at "
                        + ", ".join(fmt(s.knob_value) for s in again)
                        + ", beyond the break."
                    )
            if loosest is not None and not _same_value(loosest_ci, loosest, kind):
                if loosest_ci is None:
                    sentences.append(
                        "With the whole 95% CI required inside the limits, no setting "
                        "qualifies from the strictest on."
                    )
                else:
                    sentences.append(
                        f"With the whole 95% CI required inside the limits it holds {bound} "
                        f"{fmt(loosest_ci)}."
                    )
        else:
            failing = [s for s in settings if s.status not in _MEETING and s.status != NO_DATA]
            met = ", ".join(fmt(v) for v in loosest) if loosest else "no category"
            text = f"The criterion is met by {met}"
            if failing:
                text += "; not by " + "; ".join(
                    f"{fmt(s.knob_value)} ({_first_reason(s)})" for s in failing
                )
            sentences.append(text + ".")

    return Verdict(
        recommendation_id=rec.id,
        title=rec.title,
        text=rec.text,
        knob_label=label,
        kind=kind,
        fitter=fitter,
        criterion=describe_criterion(criterion, max_failure_rate=max_failure_rate),
        parameters=tuple(params),
        recommended_values=tuple(s.knob_value for s in recommended),
        recommended_meets=recommended_meets,
        loosest_meeting=loosest,
        loosest_meeting_ci=loosest_ci,
        breaks_at=breaks_at,
        settings=tuple(settings),
        summary=" ".join(sentences),
        notes=tuple(notes),
    )


def _same_value(a: Any, b: Any, kind: str) -> bool:
    if a is None or b is None:
        return a is b
    return _same(_key(a, kind), _key(b, kind))


def _fitters(result: RecommendationResult) -> list[str]:
    out = list(result.fitters)
    for row in result.rows:
        if row.fitter not in out:
            out.append(row.fitter)
    return out


def judge_all(
    result: RecommendationResult,
    criterion: Criterion | None = None,
    *,
    max_failure_rate: float = MAX_FAILURE_RATE,
) -> list[Verdict]:
    """Judge every fitter of a result (see :func:`judge`).

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
        the rows).
    """
    return [
        judge(result, criterion, fitter=f, max_failure_rate=max_failure_rate)
        for f in _fitters(result)
    ]
