"""Report rendering: a self-contained HTML page, a Markdown summary and the figures."""

from __future__ import annotations

import base64
import html
import re
from html.parser import HTMLParser

import numpy as np
import pytest

from phantomdce.report.figures import error_map_figure, knob_figure, scatter_figure
from phantomdce.report.render import write_report

from test_verdict import DT, dt_table, make_result, metrics

COMMAND = "phantomdce report runs/esnr/ -o reports/esnr --title 'a & b'"
VERSION = "0.1.0.dev0+test"
EVIL = "AIF <script>alert(1)</script>"
CATS = ["true AIF", "population AIF", "measured AIF"]


def aif_table(fitter, param, value):
    if value == "population AIF" and param == "Ktrans":
        return metrics(-25.0, 10.0)
    return metrics(3.0, 10.0)


def build_results():
    dt = make_result(dt_table, DT, notes="Coarser sampling biases vp & Ktrans (literature).")
    aif = make_result(
        aif_table,
        CATS,
        kind="category",
        threshold=None,
        recommended=["measured AIF"],
        rec_id="aif choice",
        title=EVIL,
        text="carotid ROI | population AIF may be considered",
        knob="aif",
        knob_label="AIF",
    )
    return [dt, aif]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    paths = write_report(
        build_results(),
        out / "rep",
        command=COMMAND,
        version=VERSION,
        scenario_info={"replicates": 20, "scenario hash": "abc123"},
        date="2024-01-02",
    )
    page = paths["html"].read_text(encoding="utf-8")
    md = paths["markdown"].read_text(encoding="utf-8")
    return paths, page, md


def test_files_exist(report):
    paths, _, _ = report
    assert paths["html"].name == "index.html" and paths["html"].is_file()
    assert paths["markdown"].name == "summary.md" and paths["markdown"].is_file()
    pngs = sorted(paths["figures"].glob("*.png"))
    # per recommendation: knob figure, error maps of Ktrans and ve, scatter
    assert len(pngs) == 9  # with the tissue-threshold map
    assert not list(paths["html"].parent.rglob("*.part"))


class _Checker(HTMLParser):
    VOID = {"meta", "img", "br", "hr", "link", "input", "col", "source", "wbr"}

    def __init__(self):
        super().__init__()
        self.stack, self.errors, self.tags = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unexpected </{tag}>, open: {self.stack[-3:]}")
        else:
            self.stack.pop()


def test_html_is_valid_and_self_contained(report):
    _, page, _ = report
    assert page.startswith('<!DOCTYPE html>\n<html lang="en">')
    assert '<meta charset="utf-8">' in page
    checker = _Checker()
    checker.feed(page)
    assert checker.errors == [] and checker.stack == []
    for tag, attrs in checker.tags:
        for name in ("src", "href"):
            value = attrs.get(name)
            if value is not None:
                assert value.startswith(("data:image/png;base64,", "#")), (tag, value[:40])
    assert not re.search(r"(src|href)=\"(https?:)?//", page)
    assert "<link" not in page and "<script" not in page and "url(" not in page
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 9
    assert all(base64.b64decode(img)[:8] == b"\x89PNG\r\n\x1a\n" for img in images)


def test_html_header_and_verdicts(report):
    _, page, _ = report
    assert html.escape(COMMAND) in page
    assert VERSION in page
    assert "2024-01-02" in page and "abc123" in page
    assert "|relative bias| &lt;= 10% (95% CI inside ±10%) and CV &lt;= 20% for Ktrans and ve" in (
        page
    )
    assert "<h2>Temporal resolution</h2>" in page
    assert html.escape(EVIL) in page
    # verdict words and numbers, from the rows
    assert '<span class="st st-ok">meets</span>' in page
    assert '<span class="st st-bad">fails</span>' in page
    assert (
        "At 5 s (recommended) Ktrans bias -6.0% [-6.9, -5.1] and CV 12.0%: meets, in 24 of 24"
        " tissues." in page
    )
    assert "The criterion holds up to 7 s and breaks at 9 s" in page
    assert "Other categories: true AIF: meets; population AIF: fails (Ktrans bias" in page
    assert html.escape("Coarser sampling biases vp & Ktrans (literature).") in page


def test_text_is_escaped(report):
    _, page, md = report
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script>" not in md and "&lt;script>alert(1)&lt;/script>" in md
    # a pipe in the text does not break the Markdown table
    assert "carotid ROI \\| population AIF" in md


def test_markdown_summary(report):
    paths, _, md = report
    lines = md.splitlines()
    assert lines[0] == "# phantomdce evidence report"
    assert COMMAND in md and VERSION in md and "2024-01-02" in md
    header = (
        "| recommendation | fitter | criterion | recommended setting meets? "
        "| loosest setting that meets | summary |"
    )
    i = lines.index(header)
    assert lines[i + 1] == "|---|---|---|---|---|---|"
    rows = lines[i + 2 : i + 6]
    assert len(rows) == 4 and all(r.startswith("| ") and r.count(" | ") >= 5 for r in rows)
    assert "| 5 s: **meets** | 7 s |" in rows[0]
    links = re.findall(r"!\[[^\n]*?\]\((figures/[^)]+\.png)\)", md)
    assert len(links) == 9
    for link in links:
        assert (paths["html"].parent / link).is_file()
    assert "| 9 s | fails | -10.8 [-11.7, -9.9] | - | 12.0 | 0.0 |" in md


def _vertical_lines_at(ax, x):
    return [
        line
        for line in ax.lines
        if len(line.get_xdata()) == 2 and np.allclose(np.asarray(line.get_xdata(), float), x)
    ]


def test_knob_figure_threshold_legend_and_shading():
    dt, aif = build_results()
    fig = knob_figure(dt)
    axes = fig.axes
    assert len(axes) == 6  # Ktrans, ve, vp x (bias, CV)
    assert all(_vertical_lines_at(ax, 5.0) for ax in axes)
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend[:2] == ["lsq", "llsq"] and "recommended" in legend
    labels = [(ax.get_xlabel(), ax.get_ylabel()) for ax in axes]
    assert labels[-2] == ("temporal resolution (s)", "vp\nrelative bias (%)")
    assert labels[1][1] == "Ktrans\nCV (%)"
    # acceptance bands for Ktrans and ve only: |bias| <= 10 and CV <= 20
    for ax, (lo, hi) in zip(axes[:4], [(-10, 10), (0, 20)] * 2, strict=True):
        (band,) = ax.patches
        assert (band.get_y(), band.get_y() + band.get_height()) == pytest.approx((lo, hi))
    assert len(axes[4].patches) == 0  # vp has no criterion
    assert "recommendation: <= 5 s" in fig._suptitle.get_text()

    fig = knob_figure(aif)
    pos = CATS.index("measured AIF")
    assert all(_vertical_lines_at(ax, float(pos)) for ax in fig.axes)
    assert [t.get_text() for t in fig.axes[-1].get_xticklabels()] == CATS


def test_error_map_and_scatter():
    dt, _ = build_results()
    fig = error_map_figure(dt, "lsq", 5, parameter="Ktrans")
    ax, cax = fig.axes
    assert cax.get_ylabel() == "mean relative error of Ktrans (%)"
    mesh = ax.collections[0]
    assert mesh.norm.vmin == -mesh.norm.vmax  # centred at 0
    # every tissue has the pooled row's error here (-6.0 at 5 s)
    texts = {t.get_text() for t in ax.texts}
    assert texts == {"-6.0"}
    assert len(ax.texts) == 12
    assert ax.get_xlabel() == "true Ktrans (/min)" and ax.get_ylabel() == "true ve"
    assert "averaged over vp" in ax.get_title() and "5 s" in ax.get_title()

    fig = scatter_figure(dt, "lsq", 5)
    assert len([a for a in fig.axes if a.collections]) == 3
    for ax in [a for a in fig.axes if a.collections]:
        identity = [ln for ln in ax.lines if np.allclose(ln.get_xdata(), ln.get_ydata())]
        assert identity
    assert fig.axes[0].get_xlabel() == "true Ktrans (/min)"

    empty = error_map_figure(dt, "nobody", 5)
    assert "no tissue results" in empty.axes[0].texts[0].get_text()


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="command is empty"):
        write_report(build_results()[:1], tmp_path, command=" ", version=VERSION)
    with pytest.raises(TypeError, match=r"results\[0\] is a dict"):
        write_report([{}], tmp_path, command=COMMAND, version=VERSION)
    assert not (tmp_path / "index.html").exists()
