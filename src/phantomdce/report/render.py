"""Write a study report: one self-contained HTML page and a Markdown summary.

``index.html`` embeds every figure as a base64 PNG and its CSS inline: it references no
external resource and opens offline. ``summary.md`` carries the same verdicts and tables and
links the same figures, saved as PNG files under ``figures/``. Both start with the title,
the exact command and phantomdce version that produced them, the date and the criterion.
All text taken from results (titles, notes, fitter and knob names) is escaped.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from phantomdce.files import write_atomic
from phantomdce.report.model import Criterion, RecommendationResult
from phantomdce.report.verdict import (
    DEGENERATE,
    FAILS,
    MAX_FAILURE_RATE,
    MEETS,
    MEETS_CI_CROSSES,
    NO_DATA,
    NOT_ESTIMABLE,
    UNDECIDED,
    BudgetEntry,
    Crossover,
    Setting,
    Verdict,
    crossovers,
    error_budget,
    format_knob_value,
    judge_all,
)
from phantomdce.report.words import (
    CLASS_WORDS,
    describe_criterion,
    fmt_pct,
    loosest_words,
    runs_words,
    tissue_words,
    verdict_summary,
)

__all__ = [
    "write_report",
    "html_escape",
    "html_figure",
    "html_page",
    "html_table",
    "md_escape",
    "md_table",
    "status_badge",
]

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;
 max-width:1180px;margin:0 auto;padding:1.5em;color:#1d1d1f;line-height:1.45}
h1{font-size:1.7em;margin-bottom:.2em}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;
 margin-top:2em}h3{margin-top:1.5em}
code,pre{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.92em}
pre{background:#f5f5f7;padding:.6em .8em;overflow-x:auto;white-space:pre-wrap}
table{border-collapse:collapse;margin:.8em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.3em .55em;text-align:left;vertical-align:top}
th{background:#f0f0f3}td.num{text-align:right;white-space:nowrap}
.meta td:first-child{font-weight:600;white-space:nowrap}
.st{display:inline-block;padding:.05em .45em;border-radius:.3em;font-weight:600;
 white-space:nowrap}
.st-ok{background:#d8f3dc;color:#14532d}.st-warn{background:#fff3c4;color:#713f12}
.st-bad{background:#fde2e1;color:#7f1d1d}.st-na{background:#e9e9ee;color:#444}
.rec{font-size:1.05em;background:#f5f7ff;border-left:4px solid #4c6ef5;padding:.4em .8em}
.notes{color:#444;font-style:italic}
.grey{color:#999}
figure{margin:1em 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.9em;color:#555}
nav ul{columns:2}
"""

_CSS_CLASS = {
    MEETS: "st-ok",
    MEETS_CI_CROSSES: "st-warn",
    FAILS: "st-bad",
    UNDECIDED: "st-warn",
    NOT_ESTIMABLE: "st-na",
    DEGENERATE: "st-na",
    NO_DATA: "st-na",
}

_NO_RESULTS = "No results for this recommendation."


@dataclass(frozen=True)
class _Fig:
    path: Path  # under outdir/figures
    png: bytes
    caption: str


@dataclass(frozen=True)
class _Section:
    result: RecommendationResult
    verdicts: list[Verdict]
    knob: _Fig
    detail: list[_Fig]
    detail_note: str
    budgets: list[tuple[Verdict, Any, list[BudgetEntry]]]
    crossovers: list[Crossover] = field(default_factory=list)


# --------------------------------------------------------------------------- text helpers


def _h(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _md(text: Any) -> str:
    """Escape text for a Markdown paragraph or table cell.

    Whatever a Markdown renderer would read as HTML (``<`` before a letter, ``/``, ``!`` or
    ``?``; ``&`` before an entity) is HTML-escaped; ``<=`` and ``&`` in words stay readable.
    Pipes, backticks and a leading ``>`` or ``#`` are backslash-escaped; newlines become spaces.
    """
    out = re.sub(r"\s*\n\s*", " ", str(text)).strip()
    out = re.sub(r"&(?=#?\w+;)", "&amp;", out)
    out = re.sub(r"<(?=[A-Za-z/!?])", "&lt;", out)
    out = re.sub(r"([|`])", r"\\\1", out)
    return re.sub(r"^([>#])", r"\\\1", out)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_") or "x"


def _bias_cell(rb: float, lo: float, hi: float) -> str:
    if math.isnan(lo) or math.isnan(hi):
        return fmt_pct(rb)
    return f"{fmt_pct(rb)} [{fmt_pct(lo)}, {fmt_pct(hi)}]"


def _short_criterion(criterion: Criterion, params: Sequence[str]) -> str:
    if not params:
        return "no judged parameter"
    parts = []
    for p in params:
        terms = []
        if (b := criterion.max_abs_rel_bias_pct.get(p)) is not None:
            terms.append(f"|bias| <= {b:g}%")
        if (c := criterion.max_cv_pct.get(p)) is not None:
            terms.append(f"CV <= {c:g}%")
        parts.append(f"{p}: {', '.join(terms)}")
    return "; ".join(parts)


def _fmt(v: Verdict, value: Any) -> str:
    return format_knob_value(value, v.knob_label)


def _recommended_words(v: Verdict) -> str:
    if not v.recommended_values:
        return "not simulated" if v.kind == "category" else "none recommended"
    return ", ".join(_fmt(v, x) for x in v.recommended_values)


def _verdict_rows(v: Verdict) -> list[tuple[str, str]]:
    """(recommended setting words, class) rows: one per option of a category verdict."""
    if v.kind == "category" and v.options:
        return [(_fmt(v, value), status) for value, status in v.options]
    if not v.recommended_values and v.kind != "category":
        return [("no recommended setting (the guideline sets none)", "-")]
    return [(_recommended_words(v), v.recommended_meets)]


def _loosest_cell(v: Verdict) -> str:
    point, ci = loosest_words(v)
    text = point if ci == point else f"{point} (whole CI inside: {ci})"
    if v.tissue_grid and v.kind == "range":
        avg, worst = runs_words(v, "average"), runs_words(v, "every_tissue")
        if (avg, worst) != (point,) * 2:
            text += f"; grid average: {avg}; every tissue: {worst}"
    elif v.tissue_grid and v.kind != "category":

        def fmt(x: Any) -> str:
            return "none" if x is None else _fmt(v, x)

        if (v.loosest_average, v.loosest_worst_tissue) != (v.loosest_meeting,) * 2:
            text += (
                f"; grid average: {fmt(v.loosest_average)}; "
                f"every tissue: {fmt(v.loosest_worst_tissue)}"
            )
    return text


_UNJUDGED = (NOT_ESTIMABLE, DEGENERATE)


def _setting_columns(v: Verdict) -> list[str]:
    cols = [v.knob_label, "class"]
    for p in v.parameters:
        cols += [
            f"{p} rel. bias % [95% CI]",
            f"{p} bias range over cases %",
            f"{p} CV % (noise only) [CRLB efficiency]",
            f"{p} failed %",
        ]
    if v.tissue_grid:
        cols += ["tissues meeting", "worst tissue"]
    return cols + ["why"]


def _setting_cells(v: Verdict, s: Setting) -> tuple[list[str], set[int]]:
    """The cells of one setting row, and the indices of cells shown greyed (not judged)."""
    cells = [_fmt(v, s.knob_value), s.status]
    grey: set[int] = set()
    for p in v.parameters:
        c = s.checks.get(p)
        if c is None:
            cells += ["-", "-", "-", "-"]
        else:
            same = math.isnan(c.case_bias_min) or c.case_bias_min == c.case_bias_max
            failed = fmt_pct(100 * c.failure_rate)
            if math.isfinite(c.at_limit_rate) and c.at_limit_rate > 0:
                failed += f" (+{fmt_pct(100 * c.at_limit_rate)} at a limit)"
            if s.status in _UNJUDGED:
                grey.update(range(len(cells), len(cells) + 3))
            cells += [
                _bias_cell(c.rel_bias_pct, c.ci_low, c.ci_high),
                "-" if same else f"{fmt_pct(c.case_bias_min)} to {fmt_pct(c.case_bias_max)}",
                f"{fmt_pct(c.cv_pct)}"
                + ("" if same else f" ({fmt_pct(c.cv_noise_pct)})")
                + (f" [{c.efficiency:.2f}]" if math.isfinite(c.efficiency) else ""),
                failed,
            ]
    if v.tissue_grid:
        worst = s.worst_tissue
        if s.tissues:
            cells.append(f"{s.tissues_meeting} of {len(s.tissues)}")
        else:
            cells.append("-")
        if worst is None:
            cells.append("-")
        else:
            p = worst.parameter
            cells.append(
                f"{tissue_words(worst.truth)}: {p} bias "
                f"{fmt_pct(worst.rel_bias_pct.get(p, math.nan))}%, CV "
                f"{fmt_pct(worst.cv_pct.get(p, math.nan))}%"
            )
        if s.status in _UNJUDGED:
            grey.update((len(cells) - 2, len(cells) - 1))
    return cells + ["; ".join(str(r) for r in s.reasons)], grey


_BUDGET_NAMES = {
    "": "every stage estimated",
    "t1": "true T1",
    "aif": "true AIF",
    "baseline": "true baseline signal",
}


def _budget_table(entries: list[BudgetEntry]) -> tuple[list[str], list[list[str]]]:
    header = [
        "pipeline",
        "parameter",
        "rel. bias %",
        "CV %",
        "bias due to this stage, %",
        "CV due to this stage, %",
    ]
    rows = []
    for e in entries:
        rows.append(
            [
                _BUDGET_NAMES.get(e.stage, f"true {e.stage}"),
                e.parameter,
                fmt_pct(e.rel_bias_pct),
                fmt_pct(e.cv_pct),
                "-" if not e.stage else fmt_pct(e.bias_share_pct),
                "-" if not e.stage else fmt_pct(e.cv_share_pct),
            ]
        )
    return header, rows


_BUDGET_NOTE = (
    "Error budget: the same cases (same noise) fitted with one pipeline stage at a time set "
    "to its true value. The bias due to a stage is the full pipeline's relative bias minus "
    "the bias with that stage true; the CV due to a stage is sqrt(CV_full^2 - CV_true^2) "
    "(independent sources add in quadrature). A stage missing from the table is already set "
    "to its truth by the scenario (e.g. the true AIF in the sweeps that isolate an acquisition "
    "setting; see the notes above)."
)


_CROSSOVER_NOTE = (
    "At each setting the two options are compared on |relative bias| (an option wins when "
    "the interval of |bias| its bootstrap 95% CI allows lies wholly below the other's) and on "
    "the CV (95% interval CV(1 ± 1.96/sqrt(2(n-1))), n the independent subjects or "
    "replicates); an option wins the setting when it wins on one and does not lose the other; "
    "overlapping intervals decide nothing."
)


def crossover_words(c: Crossover) -> str:
    """The crossover of two options in one sentence (only what the comparisons support)."""
    from phantomdce.report import verdict as vd

    def fmt(x: Any) -> str:
        return format_knob_value(x, c.knob_label)

    head = f"{c.fitter}, {c.parameter}: {c.second} against {c.first}"
    if c.statement == vd.CROSSES:
        return f"{head}: {c.second} wins from {fmt(c.crossover_at)} on, not at stricter settings."
    if c.statement == vd.SECOND_THROUGHOUT:
        return f"{head}: {c.second} wins at every simulated setting."
    if c.statement == vd.NEVER_FIRST_WINS:
        return f"{head}: {c.second} never wins here; {c.first} wins at every simulated setting."
    if c.statement == vd.ALL_UNDECIDED:
        return f"{head}: no setting decides (the intervals overlap everywhere)."
    if c.statement == vd.NEVER:
        won = [fmt(x.knob_value) for x in c.comparisons if x.status == vd.SECOND_WINS]
        where = f" (it wins at {', '.join(won)} only)" if won else ""
        return f"{head}: {c.second} does not keep winning up to the loosest setting{where}."
    return f"{head}: no setting has comparable numbers for both."


def _crossover_table(c: Crossover) -> tuple[list[str], list[list[str]]]:
    from phantomdce.report import verdict as vd

    names = {"first": c.first, "second": c.second, "": "-"}
    header = [c.knob_label]
    for o in (c.first, c.second):
        header += [f"{c.parameter} bias % [95% CI] ({o})", f"CV % [95% CI] ({o})"]
    header += ["bias winner", "CV winner", "setting"]
    rows = []
    for x in c.comparisons:
        row = [format_knob_value(x.knob_value, c.knob_label)]
        for k in ("first", "second"):
            lo, hi = x.cv_ci[k]
            cv = fmt_pct(x.cv_pct[k])
            row += [
                _bias_cell(x.bias_pct[k], *x.bias_ci[k]),
                cv if math.isinf(hi) else f"{cv} [{fmt_pct(lo)}, {fmt_pct(hi)}]",
            ]
        status = {vd.FIRST_WINS: f"{c.first} wins", vd.SECOND_WINS: f"{c.second} wins"}
        row += [names[x.bias_winner], names[x.cv_winner], status.get(x.status, x.status)]
        rows.append(row)
    return header, rows


def _info_value(value: Any) -> str:
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, default=str)
    return str(value)


# --------------------------------------------------------------------------- figures


def _make_sections(
    results: Sequence[RecommendationResult], criterion: Criterion, figdir: Path
) -> list[_Section]:
    from phantomdce.report.figures import (
        error_map_figure,
        figure_to_png,
        knob_figure,
        scatter_figure,
        tissue_threshold_figure,
    )

    def save(fig: Any, name: str, caption: str) -> _Fig:
        png = figure_to_png(fig)
        path = figdir / f"{name}.png"
        write_atomic(path, png)
        return _Fig(path, png, caption)

    sections = []
    for i, result in enumerate(results, start=1):
        rec = result.recommendation
        stem = f"{i:02d}_{_slug(rec.id)}"
        verdicts = judge_all(result, criterion)
        knob = save(
            knob_figure(result, criterion),
            f"{stem}_knob",
            f"{rec.title}: relative bias (95% CI) and CV of each parameter against "
            f"{rec.knob_label}, one line per fitter; dashed: the recommended setting; "
            f"green: the accuracy criterion"
            + (
                "; thin dashed in a fitter's colour: its Cramér-Rao bound on the CV"
                " (table: CV [efficiency = bound variance / measured variance])."
                if any(math.isfinite(r.metrics.get("crlb_cv_pct", math.nan)) for r in result.rows)
                else "."
            ),
        )
        detail: list[_Fig] = []
        note = ""
        first = verdicts[0] if verdicts else None
        budgets = []
        for v in verdicts:
            if v.recommended_values:
                entries = error_budget(result, v.fitter, v.recommended_values[0], v.parameters)
                if entries:
                    budgets.append((v, v.recommended_values[0], entries))
        if first is not None and first.tissue_grid and first.kind not in ("category", "range"):
            detail.append(
                save(
                    tissue_threshold_figure(first),
                    f"{stem}_tissue_threshold",
                    f"How far each tissue of the Ktrans x ve grid keeps the criterion "
                    f"({first.fitter}): the loosest {rec.knob_label} reached from the "
                    "strictest setting with the criterion holding for that tissue.",
                )
            )
        if first is None:
            note = ""
        elif not first.recommended_values:
            note = f"No recommended setting was simulated for {first.fitter}."
        else:
            value = first.recommended_values[0]
            where = format_knob_value(value, rec.knob_label)
            note = f"{first.fitter} at {where} (the recommended setting)."
            mapped = {t.parameter for t in result.tissues if t.fitter == first.fitter} & set(
                first.parameters or ("Ktrans",)
            )
            for p in [p for p in first.parameters if p in mapped] or sorted(mapped)[:1]:
                detail.append(
                    save(
                        error_map_figure(result, first.fitter, value, parameter=p),
                        f"{stem}_errormap_{_slug(p)}",
                        f"Mean relative error of {p} (%) over the true Ktrans x ve grid, "
                        f"{first.fitter} at {where}.",
                    )
                )
            if result.scatter:
                detail.append(
                    save(
                        scatter_figure(result, first.fitter, value),
                        f"{stem}_scatter",
                        f"Estimate against truth, {first.fitter} at {where}; dashed: identity.",
                    )
                )
        for k, (path, caption) in enumerate(result.figures):
            png = Path(path).read_bytes()
            copy = figdir / f"{stem}_run_{k:02d}.png"
            write_atomic(copy, png)
            detail.append(_Fig(copy, png, caption))
        sections.append(
            _Section(result, verdicts, knob, detail, note, budgets, crossovers(result))
        )
    return sections


# --------------------------------------------------------------------------- HTML


def _badge(status: str, *, like: str | None = None) -> str:
    """A coloured label: the text ``status``, coloured as the class ``like`` (default itself)."""
    css = _CSS_CLASS.get(like or status, "st-na")
    return f'<span class="st {css}">{_h(status)}</span>'


def _img(fig: _Fig) -> str:
    data = base64.b64encode(fig.png).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{_h(fig.caption)}">'
        f"<figcaption>{_h(fig.caption)}</figcaption></figure>"
    )


def _page_head(title: str) -> list[str]:
    """The first lines of every report page: doctype, head with the inline CSS, the title."""
    return [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_h(title)}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        "<header>",
        f"<h1>{_h(title)}</h1>",
    ]


def _html_table(header: list[str], rows: list[list[str]], *, raw: bool = False) -> str:
    """A table; cells are escaped unless ``raw`` (then the caller escaped them)."""
    head = "".join(f"<th>{_h(c)}</th>" for c in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{c if raw else _h(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html(
    sections: list[_Section],
    *,
    title: str,
    command: str,
    version: str,
    date: str,
    criterion_words: str,
    criterion: Criterion,
    scenario_info: dict[str, Any] | None,
    literature: list[dict[str, str]] | None = None,
) -> str:
    out = [
        *_page_head(title),
        '<table class="meta"><tbody>',
        f"<tr><td>command</td><td><code>{_h(command)}</code></td></tr>",
        f"<tr><td>phantomdce version</td><td><code>{_h(version)}</code></td></tr>",
        f"<tr><td>date</td><td>{_h(date)}</td></tr>",
        f"<tr><td>accuracy criterion</td><td>{_h(criterion_words)}</td></tr>",
    ]
    for key, value in (scenario_info or {}).items():
        out.append(f"<tr><td>{_h(key)}</td><td>{_h(_info_value(value))}</td></tr>")
    out += ["</tbody></table>", "</header>"]

    out.append("<nav><h2>Contents</h2><ul>")
    out.append('<li><a href="#verdicts">Verdicts</a></li>')
    if literature:
        out.append('<li><a href="#literature">What the literature reports</a></li>')
    for i, sec in enumerate(sections, start=1):
        rec = sec.result.recommendation
        out.append(f'<li><a href="#rec-{i}">{_h(rec.title)}</a></li>')
    out.append("</ul></nav>")

    out += ['<section id="verdicts">', "<h2>Verdicts</h2>"]
    rows = []
    for sec in sections:
        rec = sec.result.recommendation
        if not sec.verdicts:
            rows.append(
                [f"<strong>{_h(rec.title)}</strong><br>{_h(rec.text)}", "-", "-",
                 _badge(NO_DATA), "-", _h(_NO_RESULTS)]
            )  # fmt: skip
        for v in sec.verdicts:
            summary = verdict_summary(v)
            for words, status in _verdict_rows(v):
                rows.append(
                    [
                        f"<strong>{_h(rec.title)}</strong><br>{_h(rec.text)}",
                        _h(v.fitter),
                        _h(_short_criterion(criterion, v.parameters)),
                        f"{_h(words)}: {_badge(status)}",
                        _h(_loosest_cell(v)),
                        _h(summary),
                    ]
                )
    header = [
        "recommendation",
        "fitter",
        "criterion",
        "recommended setting meets?",
        "loosest setting that meets",
        "summary",
    ]
    out.append(_html_table(header, rows, raw=True))
    out.append(
        "<p>Classes: "
        + "; ".join(f"{_badge(k)} {_h(w)}" for k, w in CLASS_WORDS)
        + ". The loosest setting is reached from the strictest simulated one without a setting "
        "that does not meet in between; settings without data are skipped. On a tissue grid "
        "the loosest setting is also given for the grid average alone and with every tissue "
        "required to meet. A recommendation with alternatives (categories) has one row per "
        "recommended option, each judged on its own.</p>"
    )
    out.append("</section>")
    if literature:
        out += [
            '<section id="literature">',
            "<h2>What the literature reports</h2>",
            "<p>Each direction is measured in these results (first fitter); where it is "
            "not reproduced, the reason is given.</p>",
        ]
        lit_rows = [
            [
                _h(c["claim"]),
                _h(c["source"]),
                _h(c["recommendation"]),
                _h(c["measured"]),
                _badge(
                    c["status"],
                    like={"reproduced": MEETS, "not reproduced": FAILS}.get(c["status"], NO_DATA),
                ),
                _h(c["explanation"]),
            ]
            for c in literature
        ]
        out.append(
            _html_table(
                [
                    "reported direction",
                    "source",
                    "recommendation",
                    "measured",
                    "reproduced?",
                    "why not",
                ],
                lit_rows,
                raw=True,
            )
        )
        out.append("</section>")

    for i, sec in enumerate(sections, start=1):
        rec = sec.result.recommendation
        out += [
            f'<section id="rec-{i}">',
            f"<h2>{_h(rec.title)}</h2>",
            f'<p class="rec"><strong>Recommendation:</strong> {_h(rec.text)}</p>',
            f"<p>Swept: {_h(rec.knob_label)} (scenario <code>{_h(sec.result.scenario)}</code>); "
            f"fitters: {_h(', '.join(v.fitter for v in sec.verdicts))}.</p>",
        ]
        if rec.notes:
            out.append(f'<p class="notes">{_h(rec.notes)}</p>')
        out.append(_img(sec.knob))
        for v in sec.verdicts:
            out.append(
                f"<h3>{_h(v.fitter)}: "
                + "; ".join(f"{_h(w)} {_badge(st)}" for w, st in _verdict_rows(v))
                + "</h3>"
            )
            out.append(f"<p>{_h(verdict_summary(v))}</p>")
            if v.notes:
                out.append(
                    '<ul class="notes">' + "".join(f"<li>{_h(n)}</li>" for n in v.notes) + "</ul>"
                )
            cells = []
            for s in v.settings:
                texts, grey = _setting_cells(v, s)
                row = [
                    f'<span class="grey">{_h(c)}</span>' if j in grey else _h(c)
                    for j, c in enumerate(texts)
                ]
                row[1] = _badge(s.status)
                cells.append(row)
            out.append(_html_table(_setting_columns(v), cells, raw=True))
        for v, value, entries in sec.budgets:
            out.append(
                f"<h3>Error budget: {_h(v.fitter)} at {_h(_fmt(v, value))}</h3>"
                f'<p class="notes">{_h(_BUDGET_NOTE)}</p>'
            )
            header, budget_rows = _budget_table(entries)
            out.append(_html_table(header, budget_rows))
        for c in sec.crossovers:
            out.append(
                f"<h3>Crossover: {_h(c.second)} against {_h(c.first)} ({_h(c.fitter)})</h3>"
                f"<p>{_h(crossover_words(c))}</p>"
                f'<p class="notes">{_h(_CROSSOVER_NOTE)}</p>'
            )
            out.append(_html_table(*_crossover_table(c)))
        if sec.detail or sec.detail_note:
            out.append(f"<h3>Error maps and error against truth: {_h(sec.detail_note)}</h3>")
            out += [_img(f) for f in sec.detail]
        out.append("</section>")
    out += [
        "<footer><p>Generated by phantomdce "
        f"{_h(version)}. All verdicts are computed from the simulated results.</p></footer>",
        "</body>",
        "</html>",
    ]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- Markdown


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = [
        "| " + " | ".join(_md(c) for c in header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    lines += ["| " + " | ".join(_md(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _fence(text: str) -> str:
    ticks = "```"
    while ticks in text:
        ticks += "`"
    return f"{ticks}\n{text}\n{ticks}"


def _markdown(
    sections: list[_Section],
    outdir: Path,
    *,
    title: str,
    command: str,
    version: str,
    date: str,
    criterion_words: str,
    criterion: Criterion,
    scenario_info: dict[str, Any] | None,
    literature: list[dict[str, str]] | None = None,
) -> str:
    def link(fig: _Fig) -> str:
        rel = fig.path.relative_to(outdir).as_posix()
        alt = re.sub(r"([\[\]])", r"\\\1", _md(fig.caption))
        return f"![{alt}]({rel})\n\n*{_md(fig.caption)}*"

    out = [
        f"# {_md(title)}",
        "",
        "Produced by:",
        "",
        _fence(command),
        "",
        f"- phantomdce version: `{version.replace('`', '')}`",
        f"- date: {_md(date)}",
        f"- accuracy criterion: {_md(criterion_words)}",
    ]
    for key, value in (scenario_info or {}).items():
        out.append(f"- {_md(key)}: {_md(_info_value(value))}")
    out += ["", "## Verdicts", ""]
    rows = []
    for sec in sections:
        rec = sec.result.recommendation
        if not sec.verdicts:
            rows.append([f"{rec.title}: {rec.text}", "-", "-", NO_DATA, "-", _NO_RESULTS])
        for v in sec.verdicts:
            summary = verdict_summary(v)
            for words, status in _verdict_rows(v):
                rows.append(
                    [
                        f"{rec.title}: {rec.text}",
                        v.fitter,
                        _short_criterion(criterion, v.parameters),
                        f"{words}: **{status}**",
                        _loosest_cell(v),
                        summary,
                    ]
                )
    out.append(
        _md_table(
            [
                "recommendation",
                "fitter",
                "criterion",
                "recommended setting meets?",
                "loosest setting that meets",
                "summary",
            ],
            rows,
        )
    )
    out += ["", "Classes:", ""]
    out += [f"- **{k}**: {_md(w)}" for k, w in CLASS_WORDS]
    if literature:
        out += [
            "",
            "## What the literature reports",
            "",
            "Each direction is measured in these results (first fitter); where it is not "
            "reproduced, the reason is given.",
            "",
        ]
        out.append(
            _md_table(
                [
                    "reported direction",
                    "source",
                    "recommendation",
                    "measured",
                    "reproduced?",
                    "why not",
                ],
                [
                    [
                        c["claim"],
                        c["source"],
                        c["recommendation"],
                        c["measured"],
                        c["status"],
                        c["explanation"],
                    ]
                    for c in literature
                ],
            )
        )
    for sec in sections:
        rec = sec.result.recommendation
        out += [
            "",
            f"## {_md(rec.title)}",
            "",
            f"**Recommendation:** {_md(rec.text)}",
            "",
            f"Swept: {_md(rec.knob_label)} (scenario `{sec.result.scenario.replace('`', '')}`).",
        ]
        if rec.notes:
            out += ["", f"*{_md(rec.notes)}*"]
        out += ["", link(sec.knob)]
        for v in sec.verdicts:
            out += [
                "",
                f"### {_md(v.fitter)}: "
                + "; ".join(f"{_md(w)}: {_md(st)}" for w, st in _verdict_rows(v)),
                "",
                _md(verdict_summary(v)),
            ]
            if v.notes:
                out += [""] + [f"- {_md(n)}" for n in v.notes]
            md_rows = []
            for s in v.settings:
                texts, grey = _setting_cells(v, s)
                md_rows.append(
                    [f"({c}, not judged)" if j in grey and c != "-" else c
                     for j, c in enumerate(texts)]
                )  # fmt: skip
            out += ["", _md_table(_setting_columns(v), md_rows)]
        for v, value, entries in sec.budgets:
            header, budget_rows = _budget_table(entries)
            out += [
                "",
                f"### Error budget: {_md(v.fitter)} at {_md(_fmt(v, value))}",
                "",
                f"*{_md(_BUDGET_NOTE)}*",
                "",
                _md_table(header, budget_rows),
            ]
        for c in sec.crossovers:
            out += [
                "",
                f"### Crossover: {_md(c.second)} against {_md(c.first)} ({_md(c.fitter)})",
                "",
                _md(crossover_words(c)),
                "",
                f"*{_md(_CROSSOVER_NOTE)}*",
                "",
                _md_table(*_crossover_table(c)),
            ]
        if sec.detail or sec.detail_note:
            out += ["", f"### Error maps and error against truth: {_md(sec.detail_note)}"]
            for fig in sec.detail:
                out += ["", link(fig)]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- entry point


def write_report(
    results: Sequence[RecommendationResult],
    outdir: str | os.PathLike[str],
    *,
    criterion: Criterion | None = None,
    title: str = "phantomdce evidence report",
    command: str,
    version: str,
    scenario_info: dict[str, Any] | None = None,
    date: str | None = None,
    literature: list[dict[str, str]] | None = None,
    extra_sections: Sequence[tuple[str, str]] = (),
) -> dict[str, Path]:
    """Write the report of a study: ``index.html``, ``summary.md`` and ``figures/*.png``.

    Parameters
    ----------
    results : sequence of RecommendationResult
        One per recommendation, in the order the report shows them.
    outdir : str or os.PathLike
        Output directory (created if needed; files of the same names are replaced).
    criterion : Criterion, optional
        Accuracy criterion, limits in % (default ``Criterion()``: |relative bias| <= 10 %
        and CV <= 20 % for Ktrans and ve); failed-fit rate at most
        :data:`~phantomdce.report.verdict.MAX_FAILURE_RATE`.
    title : str, optional
        Report title.
    command : str
        The exact command that produced the results, shown at the top.
    version : str
        The phantomdce version that produced them, shown at the top.
    scenario_info : dict, optional
        Extra key/value lines for the header (e.g. scenario hash, replicates, seed).
    date : str, optional
        Date shown at the top (default: now, UTC, ``YYYY-MM-DD HH:MM UTC``).
    literature : list of dict, optional
        Reported directions checked against the results
        (:func:`phantomdce.report.literature.check_claims`), shown after the verdicts.
    extra_sections : sequence of (str, str), optional
        Further sections as (HTML, Markdown) text, shown at the end in this order (e.g.
        :func:`phantomdce.report.repeatability.repeatability_blocks`).

    Returns
    -------
    dict of str to pathlib.Path
        ``"html"``: ``outdir/index.html`` (self-contained: figures embedded as base64 PNG,
        inline CSS, no external resource); ``"markdown"``: ``outdir/summary.md``;
        ``"figures"``: ``outdir/figures`` (the PNG files the Markdown links).

    Raises
    ------
    TypeError
        If ``results`` holds something other than ``RecommendationResult``.
    ValueError
        If ``command`` or ``version`` is empty.
    """
    results = list(results)
    for i, r in enumerate(results):
        if not isinstance(r, RecommendationResult):
            raise TypeError(f"results[{i}] is a {type(r).__name__}; expected RecommendationResult")
    if not str(command).strip():
        raise ValueError("command is empty; expected the command that produced the results")
    if not str(version).strip():
        raise ValueError("version is empty; expected the phantomdce version of the results")
    criterion = Criterion() if criterion is None else criterion
    when = date or datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    words = describe_criterion(criterion, max_failure_rate=MAX_FAILURE_RATE)

    out = Path(outdir)
    figdir = out / "figures"
    figdir.mkdir(parents=True, exist_ok=True)
    sections = _make_sections(results, criterion, figdir)
    common = {
        "title": title,
        "command": str(command),
        "version": str(version),
        "date": when,
        "criterion_words": words,
        "criterion": criterion,
        "scenario_info": scenario_info,
        "literature": literature,
    }
    html_path = out / "index.html"
    md_path = out / "summary.md"
    html, md = _html(sections, **common), _markdown(sections, out, **common)
    for block_html, block_md in extra_sections:  # e.g. report.repeatability's sections
        html = html.replace("<footer>", block_html + "<footer>", 1)
        md = md.rstrip("\n") + "\n\n" + block_md.rstrip("\n") + "\n"
    write_atomic(html_path, html)
    write_atomic(md_path, md)
    return {"html": html_path, "markdown": md_path, "figures": figdir}


# --------------------------------------------------------------------------- parts of a page
# Public building blocks for other one-page reports in the study report's style (e.g.
# ``phantomdce assess``): the same escaping, tables, badges, figures and inline CSS.


def html_escape(text: Any) -> str:
    """Escape text for HTML (quotes included)."""
    return _h(text)


def md_escape(text: Any) -> str:
    """Escape text for a Markdown paragraph or table cell (as the study report does)."""
    return _md(text)


def html_table(header: list[str], rows: list[list[str]], *, raw: bool = False) -> str:
    """An HTML table; cells are escaped unless ``raw`` (then the caller escaped them)."""
    return _html_table(header, rows, raw=raw)


def md_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table whose cells are escaped with :func:`md_escape`."""
    return _md_table(header, rows)


def status_badge(status: str, *, like: str | None = None) -> str:
    """A verdict class as a coloured label (coloured as the class ``like``, default itself)."""
    return _badge(status, like=like)


def html_figure(png: bytes, caption: str) -> str:
    """A figure embedded as a base64 PNG with its caption (no external file)."""
    return _img(_Fig(Path("figure.png"), png, caption))


def html_page(title: str, header_rows: Sequence[tuple[str, str]], body: str) -> str:
    """A self-contained HTML page in the study report's style.

    Parameters
    ----------
    title : str
        Page title and first heading (escaped).
    header_rows : sequence of (str, str)
        Key/value lines of the header table (escaped), e.g. the command and the version.
    body : str
        The page's HTML after the header (not escaped: the caller escapes its text).

    Returns
    -------
    str
        The HTML document, with the study report's CSS inline and no external resource.
    """
    meta = "".join(
        f"<tr><td>{_h(k)}</td><td>{_h(v)}</td></tr>" for k, v in header_rows
    )
    return "\n".join(
        [
            *_page_head(title),
            f'<table class="meta"><tbody>{meta}</tbody></table>',
            "</header>",
            body,
            "</body>",
            "</html>",
        ]
    ) + "\n"
