"""The verdicts in words: every sentence of the report about a verdict is written here.

:mod:`phantomdce.report.verdict` decides (classes, numbers, :class:`~phantomdce.report.
verdict.Reason` objects); this module only formats what it decided, so that the HTML page,
the Markdown summary and the console say the same thing.

Examples
--------
>>> from phantomdce.report.verdict import Reason
>>> reason_text(Reason("failure", "Ktrans", 0.973, 0.05))
'97.3% of Ktrans fits failed (limit 5%)'
>>> reason_text(Reason("bias", "Ktrans", -10.8, 10.0))
'Ktrans bias -10.8% outside ±10%'
>>> tissue_words({"Ktrans": 0.4, "ve": 0.1, "vp": 0.01})
'Ktrans 0.4 /min, ve 0.1, vp 0.01'
"""

from __future__ import annotations

import math
from typing import Any

from phantomdce.params import PARAMETERS
from phantomdce.report.model import Criterion
from phantomdce.report.verdict import (
    DEGENERATE,
    FAILS,
    MAX_FAILURE_RATE,
    MEETING,
    MEETS,
    MEETS_CI_CROSSES,
    NO_DATA,
    NOT_ESTIMABLE,
    UNDECIDED,
    ParamCheck,
    Reason,
    Setting,
    TissueCheck,
    Verdict,
    _walk,
    criterion_parameters,
    format_knob_value,
    meeting_runs,
)

__all__ = [
    "CLASS_WORDS",
    "describe_criterion",
    "fmt_pct",
    "loosest_words",
    "option_words",
    "runs_words",
    "reason_text",
    "setting_clause",
    "tissue_words",
    "verdict_summary",
]

#: What each class means, for the report's legend.
CLASS_WORDS: tuple[tuple[str, str], ...] = (
    (MEETS, "pooled numbers, the 95% CI of the pooled relative bias and enough tissues inside "
     "the limits"),
    (
        MEETS_CI_CROSSES,
        "as meets, but the 95% CI of the pooled relative bias crosses a limit (or is "
        "unavailable)",
    ),
    (
        FAILS,
        "a pooled bias or CV outside a limit or not computable, or the criterion holds in "
        "too few tissues of the grid",
    ),
    (
        UNDECIDED,
        "the 95% CI of the pooled relative bias is wider than the acceptance band: too few "
        "subjects or replicates to decide",
    ),
    (
        NOT_ESTIMABLE,
        "more fits failed than the criterion allows: the survivors' bias and CV are shown "
        "(greyed) but not judged",
    ),
    (
        DEGENERATE,
        "the data are noisy but the estimates do not move with the noise: the fit learned "
        "nothing (e.g. it returned its starting values)",
    ),
    (NO_DATA, "the fitter has no result at this setting"),
)


def fmt_pct(x: float) -> str:
    """A percentage-like number: 1 decimal below 100, none above; NaN and inf spelled."""
    if x is None or not math.isfinite(x):
        return "NaN" if x is None or math.isnan(x) else ("inf" if x > 0 else "-inf")
    return f"{x:.0f}" if abs(x) >= 100 else f"{x:.1f}"


def _limit(x: float) -> str:
    return f"{x:g}"


def _join(words: list[str]) -> str:
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " and " + words[-1]


def describe_criterion(criterion: Criterion, *, max_failure_rate: float = MAX_FAILURE_RATE) -> str:
    """Return the criterion in words.

    Parameters
    ----------
    criterion : Criterion
        Limits per parameter, in %, and the fraction of tissues that must meet.
    max_failure_rate : float, optional
        Largest admissible fraction of failed fits, 0-1.

    Returns
    -------
    str
        E.g. ``"|relative bias| <= 10% (95% CI inside ±10%) and CV <= 20% for Ktrans and
        ve; in >= 90% of the tissues of the grid and on the grid average; failure rate
        <= 5%"``; parameters with the same limits are grouped.
    """
    groups: dict[tuple[float | None, float | None], list[str]] = {}
    for p in criterion_parameters(criterion):
        limits = (criterion.max_abs_rel_bias_pct.get(p), criterion.max_cv_pct.get(p))
        groups.setdefault(limits, []).append(p)
    parts = []
    for (bias, cv), params in groups.items():
        terms = []
        if bias is not None:
            b = _limit(bias)
            terms.append(f"|relative bias| <= {b}% (95% CI inside ±{b}%)")
        if cv is not None:
            terms.append(f"CV <= {_limit(cv)}%")
        parts.append(f"{' and '.join(terms)} for {_join(params)}")
    fraction = criterion.min_tissue_fraction
    where = "every tissue" if fraction >= 1.0 else f">= {_limit(100 * fraction)}% of the tissues"
    parts.append(f"in {where} of the grid and on the grid average")
    parts.append(f"failure rate <= {_limit(100 * max_failure_rate)}%")
    return "; ".join(parts)


def tissue_words(truth: dict[str, float]) -> str:
    """A tissue by its true parameters, with units: ``"Ktrans 0.4 /min, ve 0.1, vp 0.01"``."""
    out = []
    for p in ("Ktrans", "ve", "vp", "fp", "ps"):
        if p in truth:
            units = PARAMETERS[p].units if p in PARAMETERS else ""
            unit = f" {units}" if units and units != "1" else ""
            out.append(f"{p} {truth[p]:.3g}{unit}")
    return ", ".join(out)


def _pm(se: float) -> str:
    return f" ± {fmt_pct(se)}" if se is not None and math.isfinite(se) else ""


def _worst_words(t: TissueCheck) -> str:
    p = t.parameter
    bias_se, cv_se = t.rel_bias_se_pct.get(p, math.nan), t.cv_se_pct.get(p, math.nan)
    numbers = [f"{p} bias {fmt_pct(t.rel_bias_pct.get(p, math.nan))}{_pm(bias_se)}%"]
    numbers.append(f"CV {fmt_pct(t.cv_pct.get(p, math.nan))}{_pm(cv_se)}%")
    fr = t.failure_rate.get(p, 0.0)
    if fr:
        numbers.append(f"{fmt_pct(100 * fr)}% failed")
    return f"{tissue_words(t.truth)}: {', '.join(numbers)}"


def reason_text(reason: Reason) -> str:
    """One :class:`~phantomdce.report.verdict.Reason` in words."""
    p, code = reason.parameter, reason.code
    if code == "failure":
        return (
            f"{fmt_pct(100 * reason.value)}% of {p} fits failed "
            f"(limit {_limit(100 * reason.limit)}%)"
        )
    if code == "failure_nan":
        return f"{p} failure rate is NaN (not computable)"
    if code == "degenerate":
        return (
            f"{p} estimates do not vary with the noise (CV {reason.value:.1e}%): the fit "
            "learned nothing"
        )
    if code == "bias":
        return f"{p} bias {fmt_pct(reason.value)}% outside ±{_limit(reason.limit)}%"
    if code == "bias_nan":
        return f"{p} relative bias is NaN (not computable)"
    if code == "cv":
        return f"{p} CV {fmt_pct(reason.value)}% > {_limit(reason.limit)}%"
    if code == "cv_nan":
        return f"{p} CV is NaN (not computable)"
    if code == "bias_ci":
        return (
            f"{p} bias 95% CI [{fmt_pct(reason.low)}, {fmt_pct(reason.high)}] crosses "
            f"±{_limit(reason.limit)}%"
        )
    if code == "bias_ci_wide":
        return (
            f"{p} bias {fmt_pct(reason.value)}% with a 95% CI [{fmt_pct(reason.low)}, "
            f"{fmt_pct(reason.high)}] wider than the ±{_limit(reason.limit)}% band"
        )
    if code == "bias_ci_unavailable":
        return f"{p} bias 95% CI unavailable"
    if code == "tissues":
        text = (
            f"criterion met in {reason.tissues_meeting} of {reason.tissues_total} tissues "
            f"({fmt_pct(100 * reason.value)}% < {_limit(100 * reason.limit)}%)"
        )
        if reason.worst is not None:
            text += f"; worst tissue {_worst_words(reason.worst)}"
        return text
    if code == "no_result":
        return f"no result for {_join(list(reason.missing))}"
    if code == "no_parameter":
        return "no judged parameter"
    return code


def _fails_at(setting: Setting) -> str:
    """``"fails"``, ``"is not estimable"``, ``"is degenerate"``: the class as a verb phrase."""
    return "fails" if setting.status == FAILS else f"is {setting.status}"


def _first_reason(setting: Setting) -> str:
    return reason_text(setting.reasons[0]) if setting.reasons else setting.status


def _headline(setting: Setting) -> ParamCheck | None:
    """The parameter that speaks for a setting: the first not meeting, else the closest call."""
    checks = list(setting.checks.values())
    if not checks:
        return None
    failing = [c for c in checks if c.status not in MEETING]
    if failing:
        return failing[0]
    named = [r.parameter for r in setting.reasons if r.parameter in setting.checks]
    if named:  # the numbers shown are those of the parameter the reason names
        return setting.checks[named[0]]

    def usage(c: ParamCheck) -> float:
        u = 0.0
        if c.bias_limit:
            u = max(u, abs(c.rel_bias_pct) / c.bias_limit)
        if c.cv_limit:
            u = max(u, c.cv_pct / c.cv_limit)
        return u if math.isfinite(u) else math.inf

    return max(checks, key=usage)


def _numbers(c: ParamCheck) -> str:
    def pct(x: float) -> str:
        return f"{fmt_pct(x)}%" if math.isfinite(x) else "NaN"

    ci = ""
    if math.isfinite(c.ci_low) and math.isfinite(c.ci_high):
        ci = f" [{fmt_pct(c.ci_low)}, {fmt_pct(c.ci_high)}]"
    return f"{c.parameter} bias {pct(c.rel_bias_pct)}{ci} and CV {pct(c.cv_pct)}"


def setting_clause(verdict: Verdict, setting: Setting, tag: str = "", prep: str = "At") -> str:
    """One setting in words: where, the headline numbers, the class and why."""
    label = format_knob_value(setting.knob_value, verdict.knob_label)
    where = f"{label} ({tag})" if tag and tag != label else label
    if setting.status == NO_DATA:
        return f"{prep} {where}: no data ({_first_reason(setting)})"
    if setting.status == NOT_ESTIMABLE:
        head = _headline(setting)
        survivors = f"; the survivors' {_numbers(head)} are not judged" if head else ""
        return f"{prep} {where}: not estimable ({_first_reason(setting)}{survivors})"
    if setting.status == DEGENERATE:
        return f"{prep} {where}: degenerate ({_first_reason(setting)})"
    head = _headline(setting)
    numbers = f" {_numbers(head)}" if head else ""
    text = f"{prep} {where}{numbers}: {setting.status}"
    if setting.status != MEETS:
        text += f" ({_first_reason(setting)})"
    if setting.tissues and setting.status in MEETING:
        n, total = setting.tissues_meeting, len(setting.tissues)
        text += f", in {n} of {total} tissues"
        worst = setting.worst_tissue
        if worst is not None and not worst.meets:
            text += f" (worst tissue {_worst_words(worst)})"
    return text


def option_words(verdict: Verdict) -> str:
    """``"carotid ROI: meets; population (Parker): fails"`` for a category verdict."""
    return "; ".join(
        f"{format_knob_value(value, verdict.knob_label)}: {status}"
        for value, status in verdict.options
    )


def runs_words(verdict: Verdict, which: str = "meeting") -> str:
    """Where a ``"range"`` verdict's criterion holds, as runs: ``'10-25 deg'`` or ``'none'``.

    ``which`` is that of :func:`phantomdce.report.verdict.meeting_runs`.
    """

    def run(lo: Any, hi: Any) -> str:
        if lo == hi:
            return format_knob_value(lo, verdict.knob_label)
        text = format_knob_value(hi, verdict.knob_label)
        number = format_knob_value(hi, "")
        return format_knob_value(lo, "") + "-" + text if text.startswith(number) else (
            format_knob_value(lo, verdict.knob_label) + " to " + text
        )

    runs = meeting_runs(verdict, which)
    return " and ".join(run(lo, hi) for lo, hi in runs) or "none"


def loosest_words(verdict: Verdict) -> tuple[str, str]:
    """(point-estimate words, whole-CI words) of the loosest setting that meets."""

    def fmt(x: Any) -> str:
        return format_knob_value(x, verdict.knob_label)

    if verdict.kind == "range":
        return runs_words(verdict), runs_words(verdict, "ci")
    if verdict.kind == "category":
        point = ", ".join(fmt(x) for x in verdict.loosest_meeting) or "none"
        ci = ", ".join(fmt(x) for x in verdict.loosest_meeting_ci) or "none"
        return point, ci
    def words(loosest: Any, classes: tuple[str, ...]) -> str:
        if loosest is not None:
            return fmt(loosest)
        met = [s.knob_value for s in verdict.settings if s.status in classes]
        if met:  # the strictest does not meet, looser ones do
            return "none from the strictest (met at " + ", ".join(fmt(x) for x in met) + ")"
        return "none"

    return words(verdict.loosest_meeting, MEETING), words(verdict.loosest_meeting_ci, (MEETS,))


def _grid_sentence(verdict: Verdict) -> str:
    """Where the grid average and every tissue hold, when they differ from the verdict."""
    if not verdict.tissue_grid or verdict.kind == "category":
        return ""
    if verdict.kind == "range":
        avg, worst = runs_words(verdict, "average"), runs_words(verdict, "every_tissue")
        if avg == worst == runs_words(verdict):
            return ""
        return f"On the grid average the criterion holds at {avg}; in every tissue at {worst}."
    avg, worst = verdict.loosest_average, verdict.loosest_worst_tissue
    if avg == verdict.loosest_meeting and worst == verdict.loosest_meeting:
        return ""
    bound = "up to" if verdict.kind == "max" else "down to"

    def holds(x: Any) -> str:
        if x is None:
            return "already fails at the strictest setting"
        return f"holds {bound} {format_knob_value(x, verdict.knob_label)}"

    text = f"On the grid average the criterion {holds(avg)}; in every tissue it {holds(worst)}"
    # the setting that breaks the every-tissue walk (the verdict's own walk)
    _, breaking = _walk(list(verdict.settings), lambda s: s.all_tissues_meet)
    if breaking is not None and breaking.worst_tissue is not None:
        text += (
            f" (at {format_knob_value(breaking.knob_value, verdict.knob_label)} the worst "
            f"tissue is {_worst_words(breaking.worst_tissue)})"
        )
    return text + "."


def verdict_summary(verdict: Verdict) -> str:
    """The whole verdict in a few sentences, every number read from it."""
    v = verdict

    def fmt(x: Any) -> str:
        return format_knob_value(x, v.knob_label)

    with_data = [s for s in v.settings if s.status != NO_DATA]
    if not with_data:
        params = f" ({_join(list(v.parameters))})" if v.parameters else (
            " on the criterion's parameters"
        )
        return f"No results for {v.fitter}{params}."
    sentences = []
    recommended = v.recommended_settings
    if recommended:
        prep = "With" if v.kind == "category" else "At"
        clauses = [
            setting_clause(v, s, tag, prep if j == 0 else prep.lower())
            for j, (s, tag) in enumerate(zip(recommended, v.recommended_tags, strict=True))
        ]
        sentences.append("; ".join(clauses) + ".")
        if v.kind == "category" and len(v.options) > 1:
            sentences.append(f"Each recommended option is judged on its own: {option_words(v)}.")
    elif v.kind == "category" or v.recommended_values or v.notes:
        sentences.append("The recommended setting was not simulated.")
    else:
        sentences.append("The guideline recommends no setting here.")
    if v.kind in ("max", "min"):
        bound = "up to" if v.kind == "max" else "down to"
        breaking = v.setting(v.breaks_at) if v.breaks_at is not None else None
        if v.loosest_meeting is None:
            assert breaking is not None
            sentences.append(
                f"The criterion {_fails_at(breaking)} already at the strictest simulated "
                f"setting, {fmt(breaking.knob_value)} ({_first_reason(breaking)})."
            )
            later = [s for s in v.settings if s.status in MEETING]
            if later:
                sentences.append(
                    "It is met at " + ", ".join(fmt(s.knob_value) for s in later) + "."
                )
        elif breaking is None:
            sentences.append(
                f"The criterion holds over the whole simulated range, {bound} "
                f"{fmt(v.loosest_meeting)}."
            )
        else:
            why = _first_reason(breaking)
            if breaking.status != FAILS:
                why = f"{breaking.status}: {why}"
            sentences.append(
                f"The criterion holds {bound} {fmt(v.loosest_meeting)} and breaks at "
                f"{fmt(breaking.knob_value)} ({why})."
            )
            i = v.settings.index(breaking)
            again = [s for s in v.settings[i + 1 :] if s.status in MEETING]
            if again:
                sentences.append(
                    "It is met again at "
                    + ", ".join(fmt(s.knob_value) for s in again)
                    + ", beyond the break."
                )
        if v.loosest_meeting is not None and v.loosest_meeting_ci != v.loosest_meeting:
            if v.loosest_meeting_ci is None:
                sentences.append(
                    "With the whole 95% CI required inside the limits, no setting "
                    "qualifies from the strictest on."
                )
            else:
                sentences.append(
                    f"With the whole 95% CI required inside the limits it holds {bound} "
                    f"{fmt(v.loosest_meeting_ci)}."
                )
        grid = _grid_sentence(v)
        if grid:
            sentences.append(grid)
    elif v.kind == "range":
        first, last = with_data[0], with_data[-1]
        held = runs_words(v)
        sentences.append(
            f"Over the simulated {fmt(first.knob_value)} to {fmt(last.knob_value)} the "
            + (f"criterion holds at {held}." if held != "none" else "criterion holds nowhere.")
        )
        ci = runs_words(v, "ci")
        if ci != runs_words(v):
            sentences.append(f"With the whole 95% CI required inside the limits: {ci}.")
        failing = [s for s in with_data if s.status not in MEETING]
        if failing:
            sentences.append(
                "It does not hold at "
                + "; ".join(
                    f"{fmt(s.knob_value)} ({s.status}: {_first_reason(s)})" for s in failing
                )
                + "."
            )
        grid = _grid_sentence(v)
        if grid:
            sentences.append(grid)
    else:
        others = [
            s
            for s in v.settings
            if s.status != NO_DATA and s.knob_value not in v.recommended_values
        ]
        if others:
            sentences.append(
                "Other categories: "
                + "; ".join(
                    f"{fmt(s.knob_value)}: {s.status}"
                    + ("" if s.status == MEETS else f" ({_first_reason(s)})")
                    for s in others
                )
                + "."
            )
    unestimable = [s for s in v.settings if s.status == NOT_ESTIMABLE]
    if unestimable and len(unestimable) < len(with_data):
        sentences.append(
            "Not estimable (more fits failed than the criterion allows) at "
            + ", ".join(
                f"{fmt(s.knob_value)} ({fmt_pct(100 * max(c.failure_rate for c in s.checks.values()))}% failed)"  # noqa: E501
                for s in unestimable
            )
            + "."
        )
    return " ".join(sentences)
