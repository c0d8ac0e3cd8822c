"""A plain report of any run or study: metrics tables and figures, no verdict.

``phantomdce report`` (and ``phantomdce run --report``) on results whose scenarios carry no
``[recommendation]`` table writes this report instead of the verdict report: there is no
recommendation to judge, but every run still has its metrics. Written into the report
folder:

- ``index.html`` and ``summary.md``: the command, version and date, then per run its
  scenario (name, hash, seed, replicates, fitters) and a table of the metrics of every
  case, fitter and parameter (``metrics.csv``: bias in the parameter's units, relative
  bias %, CV %, failure rate, fraction within the OSIPI tolerance);
- ``figures/<run>_metrics.png``: relative bias (%) and CV (%) of Ktrans, ve and vp against
  the case (named by its swept values), one line per fitter and parameter.
"""

from __future__ import annotations

import csv
import html
import json
import os
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from phantomdce.files import write_atomic
from phantomdce.report.render import _html_table, _md, _md_table

__all__ = ["write_plain_report", "PLAIN_PARAMETERS"]

#: Parameters drawn on the figures (every parameter of metrics.csv is in the tables).
PLAIN_PARAMETERS = ("Ktrans", "ve", "vp")
_COLUMNS = (
    ("bias", "bias"),
    ("rel_bias_pct", "rel. bias %"),
    ("cv_pct", "CV %"),
    ("failure_rate", "failure rate"),
    ("within_tol", "within tol."),
    ("n_voxels", "voxels"),
)


def _read_metrics(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _case_labels(run: Path) -> dict[str, str]:
    """Case node name -> its swept values (``dt=5.0 s``), from the results store."""
    from phantomdce.engine.run import open_results

    tree = open_results(run)
    labels = {}
    for name, node in tree.children.items():
        values = node.attrs.get("case_values", {})
        labels[name] = ", ".join(f"{k}={v}" for k, v in dict(values).items()) or name
    return labels


def _number(text: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return float("nan")


def _fmt(text: str) -> str:
    value = _number(text)
    return "" if value != value else f"{value:.4g}"  # NaN: empty


def _figure(rows: Sequence[Mapping[str, str]], labels: Mapping[str, str], title: str, path: Path):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from phantomdce.report.figures import figure_to_png

    cases = list(dict.fromkeys(r["case"] for r in rows))
    x = {c: i for i, c in enumerate(cases)}
    fig = Figure(figsize=(max(6.0, 0.6 * len(cases) + 3.0), 6.5), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 1, sharex=True)
    series: dict[tuple[str, str], list[Mapping[str, str]]] = {}
    for r in rows:
        if r["parameter"] in PLAIN_PARAMETERS:
            series.setdefault((r["fitter"], r["parameter"]), []).append(r)
    for ax, key, label in (
        (axes[0], "rel_bias_pct", "relative bias (%)"),
        (axes[1], "cv_pct", "CV (%)"),
    ):
        for (fitter, param), points in series.items():
            ax.plot(
                [x[p["case"]] for p in points],
                [_number(p[key]) for p in points],
                marker="o",
                label=f"{param} [{fitter}]",
            )
        ax.set_ylabel(label)
        ax.axhline(0.0, color="0.6", lw=0.8)
        ax.grid(alpha=0.3)
    axes[0].set_title(title)
    axes[1].set_xticks(range(len(cases)))
    axes[1].set_xticklabels([labels.get(c, c) for c in cases], rotation=30, ha="right")
    axes[1].set_xlabel("case (swept values)")
    if series:
        axes[0].legend(fontsize="small", ncols=2)
    fig.tight_layout()
    write_atomic(path, figure_to_png(fig))


def write_plain_report(
    runs: Sequence[str | os.PathLike[str]],
    outdir: str | os.PathLike[str],
    *,
    title: str,
    command: str,
    version: str,
    scenario_info: Mapping[str, str] | None = None,
    date: str | None = None,
) -> dict[str, Path]:
    """Write the plain report (metrics, no verdict) of finished runs.

    Parameters
    ----------
    runs : sequence of path
        Result folders of ``phantomdce run`` (each with ``run.json`` and ``metrics.csv``).
    outdir : str or os.PathLike
        Report folder (created if needed; files of the same names are replaced).
    title : str
        Report title.
    command : str
        The command that produced the results, shown at the top.
    version : str
        The phantomdce version that produced them.
    scenario_info : mapping, optional
        Extra key/value lines for the header.
    date : str, optional
        Date shown at the top (default: now, UTC).

    Returns
    -------
    dict of str to Path
        ``html``, ``markdown`` and one ``figure <run>`` entry per run.
    """
    out = Path(outdir)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    date = date or datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    paths: dict[str, Path] = {}
    head = [
        f"command: {command}",
        f"phantomdce {version}, {date}",
        *(f"{k}: {v}" for k, v in (scenario_info or {}).items()),
        "No scenario of these results has a [recommendation] table: this report shows the"
        " metrics (bias in the parameter's units: Ktrans /min, ve and vp fractions; relative"
        " bias and CV over replicates in %) without a verdict.",
    ]
    md = [f"# {_md(title)}", "", *(f"- {_md(h)}" for h in head), ""]
    body = [f"<h1>{html.escape(title)}</h1>", "<ul>"]
    body += [f"<li>{html.escape(h)}</li>" for h in head] + ["</ul>"]
    for run in map(Path, runs):
        meta = json.loads((run / "run.json").read_text(encoding="utf-8"))
        rows = _read_metrics(run)
        labels = _case_labels(run)
        name = str(meta.get("scenario_name", run.name))
        fig = out / "figures" / f"{run.name}_metrics.png"
        _figure(rows, labels, f"{name}: relative bias and CV per case", fig)
        paths[f"figure {run.name}"] = fig
        sc = meta.get("scenario", {})
        about = (
            f"scenario {name!r} (hash {meta.get('scenario_hash')}), seed {sc.get('seed')},"
            f" {sc.get('replicates')} replicates per tissue, fitters"
            f" {', '.join(f['name'] for f in meta.get('fitters', []))}"
        )
        header = ["case", "fitter", "parameter", *(c[1] for c in _COLUMNS)]
        table = [
            [labels.get(r["case"], r["case"]), r["fitter"], r["parameter"]]
            + [_fmt(r.get(c[0], "")) for c in _COLUMNS]
            for r in rows
        ]
        md += [f"## {_md(name)}", "", _md(about), "", f"![metrics](figures/{fig.name})", ""]
        md += [_md_table(header, table), ""]
        body += [
            f"<h2>{html.escape(name)}</h2>",
            f"<p>{html.escape(about)}</p>",
            f'<img src="figures/{html.escape(fig.name)}" alt="metrics of {html.escape(name)}">',
            _html_table(header, table),
        ]
    page = (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;max-width:70em;margin:auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px}"
        "img{max-width:100%}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
    paths["html"] = out / "index.html"
    paths["markdown"] = out / "summary.md"
    write_atomic(paths["html"], page)
    write_atomic(paths["markdown"], "\n".join(md) + "\n")
    return paths


def has_recommendation(run: str | os.PathLike[str]) -> bool:
    """True if the run's scenario has a ``[recommendation]`` table."""
    import tomllib

    meta: dict[str, Any] = json.loads((Path(run) / "run.json").read_text(encoding="utf-8"))
    return "recommendation" in tomllib.loads(meta.get("scenario_toml", ""))
