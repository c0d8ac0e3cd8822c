"""Figures of a recommendation's results: bias and CV against the knob, error maps, scatter.

Every function returns a :class:`matplotlib.figure.Figure` drawn on an Agg canvas (no
``pyplot``, no global state, no display needed). matplotlib is imported inside the
functions, so importing this module stays light.

All percentages are relative to the true value; parameter units come from
:data:`phantomdce.params.PARAMETERS`.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

import numpy as np

from phantomdce.params import PARAMETERS
from phantomdce.report.model import Criterion, RecommendationResult
from phantomdce.report.verdict import Verdict, _key, _same, format_knob_value

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "error_map_figure",
    "figure_to_png",
    "flip_angle_run_figures",
    "flip_angle_sensitivity",
    "flip_angle_sensitivity_figure",
    "knob_figure",
    "scatter_figure",
    "spgr_concentration_sensitivity",
]

_DPI = 110
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
_REC_COLOUR = "0.15"
_OK_COLOUR = "tab:green"
_MAX_SCATTER_POINTS = 4000


def _new_figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def figure_to_png(fig: Figure) -> bytes:
    """Render a figure to PNG bytes at its own dpi.

    Parameters
    ----------
    fig : matplotlib.figure.Figure
        Figure to render.

    Returns
    -------
    bytes
        The PNG file content.
    """
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi)
    return buf.getvalue()


def _unit_suffix(parameter: str) -> str:
    spec = PARAMETERS.get(parameter)
    if spec is None or spec.units in ("", "1"):
        return ""
    return f" ({spec.units})"


def _fmt_pct(x: float) -> str:
    return f"{x:.0f}" if abs(x) >= 100 else f"{x:.1f}"


def _parameters_with_rows(result: RecommendationResult) -> list[str]:
    present = {row.parameter for row in result.rows}
    order = list(result.recommendation.parameters)
    order += [p for p in ("Ktrans", "ve", "vp", "kep") if p not in order]
    return [p for p in order if p in present]


def _fitters(result: RecommendationResult) -> list[str]:
    """Judged fitters (error-budget oracle entries are left out)."""
    out = list(result.fitters)
    out += sorted({r.fitter for r in result.rows} - set(out) - set(result.oracles))
    return out


def _categories(result: RecommendationResult) -> tuple[list[Any], list[Hashable]]:
    """Knob values of a category knob in the result's order (extras from the rows last)."""
    values: list[Any] = []
    keys: list[Hashable] = []
    for v in [*result.knob_values, *(r.knob_value for r in result.rows)]:
        k = _key(v, "category")
        if not any(_same(k, known) for known in keys):
            values.append(v)
            keys.append(k)
    return values, keys


def _position(value: Any, kind: str, cat_keys: list[Hashable]) -> float:
    if kind != "category":
        return float(value)
    k = _key(value, kind)
    return float(next(i for i, known in enumerate(cat_keys) if _same(known, k)))


def _metric(metrics: dict[str, float], name: str) -> float:
    try:
        return float(metrics.get(name, math.nan))
    except (TypeError, ValueError):
        return math.nan


def _maybe_symlog(ax: Axes, values: np.ndarray, limit: float | None) -> None:
    """Switch to a symmetric log axis when outliers would squash the acceptance band."""
    finite = np.abs(values[np.isfinite(values)])
    scale = max(limit or 10.0, 10.0)
    if finite.size and finite.max() > 10 * scale:
        ax.set_yscale("symlog", linthresh=2 * scale, linscale=1.5)


def knob_figure(
    result: RecommendationResult,
    criterion: Criterion | None = None,
    *,
    fitters: list[str] | None = None,
) -> Figure:
    """Relative bias (with 95 % CI) and CV of each parameter against the swept knob.

    Parameters
    ----------
    result : RecommendationResult
        Results of one recommendation.
    criterion : Criterion, optional
        Shaded as the acceptance region of each parameter it covers, in %
        (default ``Criterion()``).
    fitters : list of str, optional
        Fitters to draw (default: all of the result), one line each.

    Returns
    -------
    matplotlib.figure.Figure
        One row per parameter (Ktrans, ve, vp, kep as present), columns relative bias (%)
        and CV (%); the recommended threshold (ordered knobs) or categories (category knobs)
        drawn as vertical dashed lines; one figure legend listing the fitters. Where a
        fitter's rows carry a finite Cramér-Rao bound (``crlb_cv_pct``, see
        :mod:`phantomdce.report.results`), the CV panel draws it as a thin dashed line in
        the fitter's colour (label ``"CRLB <fitter>"``), at the knob values where it is
        finite.
    """
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.transforms import blended_transform_factory

    criterion = Criterion() if criterion is None else criterion
    rec = result.recommendation
    kind = rec.kind
    fitters = _fitters(result) if fitters is None else list(fitters)
    params = _parameters_with_rows(result)
    nrows = max(len(params), 1)
    fig = _new_figure(9.0, max(4.0, 2.2 * nrows + 1.4))
    fig.suptitle(
        f"{rec.title}: relative bias and CV against {rec.knob_label}\nrecommendation: {rec.text}",
        fontsize=11,
    )
    if not params:
        ax = fig.add_subplot()
        ax.set_axis_off()
        ax.text(0.5, 0.5, "no results to show", ha="center", va="center")
        return fig

    cat_values, cat_keys = _categories(result) if kind == "category" else ([], [])
    xs_all = (
        [float(_key(v, kind)) for v in [*result.knob_values, *(r.knob_value for r in result.rows)]]
        if kind != "category"
        else list(range(len(cat_values)))
    )
    span = (max(xs_all) - min(xs_all)) if len(xs_all) > 1 else 1.0
    span = span or 1.0
    step = 0.012 * span if kind != "category" else 0.09
    colours = [f"C{i % 10}" for i in range(len(fitters))]

    # recommended positions
    rec_x: list[float] = []
    if kind == "category":
        for v in rec.recommended:
            k = _key(v, kind)
            rec_x += [float(i) for i, known in enumerate(cat_keys) if _same(known, k)]
    elif rec.threshold is not None:
        rec_x = [float(rec.threshold)]

    axes = fig.subplots(nrows, 2, sharex=True, squeeze=False)
    any_bound = False
    for r, p in enumerate(params):
        ax_b, ax_c = axes[r]
        bias_lim = criterion.max_abs_rel_bias_pct.get(p)
        cv_lim = criterion.max_cv_pct.get(p)
        if bias_lim is not None:
            ax_b.axhspan(-bias_lim, bias_lim, color=_OK_COLOUR, alpha=0.13, lw=0)
        if cv_lim is not None:
            ax_c.axhspan(0, cv_lim, color=_OK_COLOUR, alpha=0.13, lw=0)
        ax_b.axhline(0.0, color="0.5", lw=0.7)
        all_b, all_c = [], []
        for i, f in enumerate(fitters):
            rows = [row for row in result.rows if row.fitter == f and row.parameter == p]
            if not rows:
                continue
            pts = sorted(
                (
                    _position(row.knob_value, kind, cat_keys),
                    _metric(row.metrics, "rel_bias_pct"),
                    _metric(row.metrics, "rel_bias_ci_low"),
                    _metric(row.metrics, "rel_bias_ci_high"),
                    _metric(row.metrics, "cv_pct"),
                    _metric(row.metrics, "crlb_cv_pct"),
                )
                for row in rows
            )
            x, rb, lo, hi, cv, bound = (
                np.array(c, dtype=float) for c in zip(*pts, strict=True)
            )
            x = x + (i - (len(fitters) - 1) / 2) * step
            yerr = np.nan_to_num(np.clip(np.vstack([rb - lo, hi - rb]), 0, None), nan=0.0)
            style = {
                "color": colours[i],
                "marker": _MARKERS[i % len(_MARKERS)],
                "ms": 5,
                "lw": 1.4,
                "ls": "none" if kind == "category" else "-",
                "label": f,
            }
            ax_b.errorbar(x, rb, yerr=yerr, capsize=2.5, elinewidth=1, **style)
            ax_c.plot(x, cv, **style)
            has = np.isfinite(bound)
            if has.any():
                any_bound = True
                ax_c.plot(
                    x[has], bound[has], color=colours[i], ls=(0, (4, 2)), lw=1.0,
                    marker="_" if kind == "category" else None, ms=12, label=f"CRLB {f}",
                )  # fmt: skip
            all_b += [*rb, *lo, *hi]
            all_c += list(cv) + list(bound[has])
        _maybe_symlog(ax_b, np.array(all_b, dtype=float), bias_lim)
        _maybe_symlog(ax_c, np.array(all_c, dtype=float), cv_lim)
        for ax in (ax_b, ax_c):
            for xr in rec_x:
                ax.axvline(xr, color=_REC_COLOUR, ls="--", lw=1.2)
            ax.grid(True, lw=0.4, alpha=0.5)
        ax_b.set_ylabel(f"{p}\nrelative bias (%)")
        ax_c.set_ylabel(f"{p}\nCV (%)")
        if r == 0:
            ax_b.set_title("relative bias, with 95% CI", fontsize=10)
            ax_c.set_title("coefficient of variation", fontsize=10)
            for ax in (ax_b, ax_c):
                trans = blended_transform_factory(ax.transData, ax.transAxes)
                for xr in rec_x:
                    ax.text(
                        xr, 0.98, "recommended" if kind == "category" else " recommended",
                        transform=trans, ha="center" if kind == "category" else "left",
                        va="top", fontsize=8, color=_REC_COLOUR,
                        bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1},
                    )  # fmt: skip

    for ax in axes[-1]:
        ax.set_xlabel(rec.knob_label)
        if kind == "category":
            ax.set_xticks(range(len(cat_values)))
            ax.set_xticklabels([str(v) for v in cat_values], rotation=20, ha="right")
            for i in {int(x) for x in rec_x}:
                ax.get_xticklabels()[i].set_fontweight("bold")
        else:
            ticks = sorted({float(v) for v in xs_all})
            if len(ticks) <= 16:
                ax.set_xticks(ticks)
                ax.set_xticklabels([f"{t:g}" for t in ticks])

    handles: list[Any] = [
        Line2D(
            [],
            [],
            color=colours[i],
            marker=_MARKERS[i % len(_MARKERS)],
            label=f,
            ls="none" if kind == "category" else "-",
        )
        for i, f in enumerate(fitters)
    ]
    if any_bound:
        handles.append(
            Line2D([], [], color="0.3", ls=(0, (4, 2)), lw=1.0, label="CRLB (fitter's colour)")
        )
    if rec_x:
        handles.append(Line2D([], [], color=_REC_COLOUR, ls="--", label="recommended"))
    handles.append(Patch(color=_OK_COLOUR, alpha=0.3, label="accuracy criterion met"))
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 3))
    return fig


def _tissue_axes(truths: list[dict[str, float]]) -> tuple[str | None, str | None, list[str]]:
    keys: list[str] = []
    for t in truths:
        keys += [k for k in t if k not in keys]
    x = "Ktrans" if "Ktrans" in keys else (keys[0] if keys else None)
    rest = [k for k in keys if k != x]
    y = "ve" if "ve" in rest else (rest[0] if rest else None)
    others = [k for k in rest if k != y]
    return x, y, others


def _label_grid(
    ax: Axes, xs: list[float], ys: list[float], xname: str, yname: str | None
) -> None:
    """Ticks at the cell centres of a tissue-grid map, labelled with the true values."""
    ax.set_xticks(np.arange(len(xs)) + 0.5)
    ax.set_xticklabels([f"{v:.3g}" for v in xs])
    ax.set_yticks(np.arange(len(ys)) + 0.5)
    ax.set_yticklabels([f"{v:.3g}" for v in ys] if yname else [""])
    ax.set_xlabel(f"true {xname}{_unit_suffix(xname)}")
    ax.set_ylabel(f"true {yname}{_unit_suffix(yname)}" if yname else "")


def _finite_sorted(values: Any) -> list[float]:
    return sorted({float(v) for v in values if v is not None and math.isfinite(float(v))})


def error_map_figure(
    result: RecommendationResult,
    fitter: str,
    knob_value: Any,
    parameter: str = "Ktrans",
) -> Figure:
    """QIBA-style map of the mean relative error of a parameter over the Ktrans x ve grid.

    Parameters
    ----------
    result : RecommendationResult
        Results of one recommendation (its ``tissues`` rows are used).
    fitter : str
        Fitter shown.
    knob_value : Any
        Knob value (setting) shown.
    parameter : str, optional
        Parameter whose error is mapped (default ``"Ktrans"``).

    Returns
    -------
    matplotlib.figure.Figure
        Heat map of the mean relative error (%) with true Ktrans (/min) on x and true ve on y,
        averaged (weighted by the number of estimates) over the other tissue axes such as vp;
        diverging colour map centred at 0, values written in the cells, labelled colour bar.
        Cells without a finite value are grey.
    """
    rec = result.recommendation
    kind = rec.kind
    key = _key(knob_value, kind)
    rows = [
        t
        for t in result.tissues
        if t.fitter == fitter and t.parameter == parameter and _same(_key(t.knob_value, kind), key)
    ]
    setting = format_knob_value(knob_value, rec.knob_label)
    fig = _new_figure(9.0, 6.0)
    ax = fig.add_subplot()
    xname, yname, others = _tissue_axes([t.truth for t in rows])
    over = f", averaged over {', '.join(others)}" if others else ""
    ax.set_title(
        f"{rec.title}: mean relative error of {parameter} over the tissue grid{over}\n"
        f"{fitter}, {rec.knob_label.split(' (')[0]} = {setting}",
        fontsize=10,
    )
    if not rows or xname is None:
        ax.set_axis_off()
        ax.text(0.5, 0.5, "no tissue results for this setting", ha="center", va="center")
        return fig

    xs = _finite_sorted(t.truth.get(xname, math.nan) for t in rows)
    ys = _finite_sorted(t.truth.get(yname, math.nan) for t in rows) if yname else [0.0]
    sums = np.zeros((len(ys), len(xs)))
    weights = np.zeros((len(ys), len(xs)))
    for t in rows:
        xv = t.truth.get(xname, math.nan)
        yv = t.truth.get(yname, math.nan) if yname else 0.0
        err = float(t.mean_rel_error_pct)
        if xv not in xs or yv not in ys or not math.isfinite(err):
            continue
        w = float(t.n) if t.n and t.n > 0 else 1.0
        sums[ys.index(yv), xs.index(xv)] += w * err
        weights[ys.index(yv), xs.index(xv)] += w
    grid = np.full_like(sums, np.nan)
    np.divide(sums, weights, out=grid, where=weights > 0)

    import matplotlib as mpl

    finite = np.abs(grid[np.isfinite(grid)])
    vmax = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    cmap = mpl.colormaps["RdBu_r"].with_extremes(bad="0.8")
    mesh = ax.pcolormesh(
        np.ma.masked_invalid(grid), cmap=cmap, vmin=-vmax, vmax=vmax, edgecolors="white", lw=0.5
    )
    if grid.size <= 400:
        for (i, j), val in np.ndenumerate(grid):
            text = "n/a" if not math.isfinite(val) else _fmt_pct(val)
            dark = math.isfinite(val) and abs(val) > 0.6 * vmax
            ax.text(
                j + 0.5, i + 0.5, text, ha="center", va="center", fontsize=8,
                color="white" if dark else "black",
            )  # fmt: skip
    _label_grid(ax, xs, ys, xname, yname)
    cbar = fig.colorbar(mesh, ax=ax)
    cbar.set_label(f"mean relative error of {parameter} (%)")
    return fig


def tissue_threshold_figure(verdict: Verdict) -> Figure:
    """Map of the Ktrans x ve grid: how far each tissue keeps the criterion.

    Parameters
    ----------
    verdict : Verdict
        An ordered-knob verdict on a scenario with a tissue grid.

    Returns
    -------
    matplotlib.figure.Figure
        One cell per (true Ktrans, true ve); the text is the loosest knob value reached
        from the strictest with the criterion holding for that tissue (for every vp of the
        cell: the strictest of them), "none" where it fails already at the strictest
        setting. Colour: green where the recommended setting is reached, red where not.
    """
    from phantomdce.report.verdict import tissue_loosest

    per = tissue_loosest(verdict)
    fig = _new_figure(9.0, 6.0)
    ax = fig.add_subplot()
    ax.set_title(
        f"{verdict.title}: loosest {verdict.knob_label} at which each tissue meets the "
        f"criterion\n{verdict.fitter} (strictest over the other tissue axes)",
        fontsize=10,
    )
    xname, yname, others = _tissue_axes([truth for truth, _ in per.values()])
    if not per or xname is None or verdict.kind == "category":
        ax.set_axis_off()
        ax.text(0.5, 0.5, "no tissue grid for this recommendation", ha="center", va="center")
        return fig
    xs = _finite_sorted(t.get(xname, math.nan) for t, _ in per.values())
    ys = _finite_sorted(t.get(yname, math.nan) for t, _ in per.values()) if yname else [0.0]
    sign = 1.0 if verdict.kind == "max" else -1.0
    # strictest over the other axes: for "max" the smallest loosest value (None = -inf)
    cell: dict[tuple[int, int], float] = {}
    for truth, value in per.values():
        xv, yv = truth.get(xname, math.nan), truth.get(yname, math.nan) if yname else 0.0
        if xv not in xs or yv not in ys:
            continue
        score = -math.inf if value is None else sign * float(value)
        ij = (ys.index(yv), xs.index(xv))
        cell[ij] = min(cell.get(ij, math.inf), score)
    target = verdict.recommended_values[0] if verdict.recommended_values else None
    import matplotlib as mpl

    grid = np.full((len(ys), len(xs)), np.nan)
    for (i, j), score in cell.items():
        if target is None:
            grid[i, j] = 0.5
        else:
            grid[i, j] = 1.0 if score >= sign * float(target) - 1e-9 else 0.0
    cmap = mpl.colors.ListedColormap(["#f4a6a6", "#a8e0b0"]).with_extremes(bad="0.85")
    ax.pcolormesh(
        np.ma.masked_invalid(grid), cmap=cmap, vmin=0, vmax=1, edgecolors="white", lw=0.5
    )
    for (i, j), score in cell.items():
        text = "none" if score == -math.inf else format_knob_value(
            sign * score, verdict.knob_label
        )
        ax.text(j + 0.5, i + 0.5, text, ha="center", va="center", fontsize=9)
    _label_grid(ax, xs, ys, xname, yname)
    if target is not None:
        where = format_knob_value(target, verdict.knob_label)
        ax.text(
            1.0, -0.12, f"green: meets at the recommended {where}; red: does not",
            transform=ax.transAxes, ha="right", fontsize=8,
        )  # fmt: skip
    return fig


def scatter_figure(result: RecommendationResult, fitter: str, knob_value: Any) -> Figure:
    """Estimate against truth for each parameter at one setting, with the identity line.

    Parameters
    ----------
    result : RecommendationResult
        Results of one recommendation (its ``scatter`` samples are used).
    fitter : str
        Fitter shown.
    knob_value : Any
        Knob value (setting) shown.

    Returns
    -------
    matplotlib.figure.Figure
        One panel per parameter with samples (at most 4000 per panel, evenly thinned),
        axes in the parameter's units.
    """
    rec = result.recommendation
    kind = rec.kind
    key = _key(knob_value, kind)
    samples: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for (value, f, p), (truth, est) in result.scatter.items():
        if f == fitter and _same(_key(value, kind), key):
            samples[p] = (np.asarray(truth, dtype=float), np.asarray(est, dtype=float))
    order = [p for p in rec.parameters if p in samples]
    order += sorted(p for p in samples if p not in order)
    n = max(len(order), 1)
    ncols = n if n <= 2 else math.ceil(n / 2)
    nrows = 1 if n <= 2 else 2
    fig = _new_figure(9.0, 4.2 if nrows == 1 else 6.8)
    setting = format_knob_value(knob_value, rec.knob_label)
    fig.suptitle(
        f"{rec.title}: estimate against truth\n"
        f"{fitter}, {rec.knob_label.split(' (')[0]} = {setting}",
        fontsize=11,
    )
    if not order:
        ax = fig.add_subplot()
        ax.set_axis_off()
        ax.text(0.5, 0.5, "no samples for this setting", ha="center", va="center")
        return fig
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, p in zip(axes, order, strict=False):
        truth, est = samples[p]
        if truth.size > _MAX_SCATTER_POINTS:
            idx = np.linspace(0, truth.size - 1, _MAX_SCATTER_POINTS).astype(int)
            truth, est = truth[idx], est[idx]
        alpha = 0.8 if truth.size < 300 else 0.3
        ax.scatter(truth, est, s=8, alpha=alpha, color="C0", lw=0, label="estimates")
        both = np.concatenate([truth, est])
        both = both[np.isfinite(both)]
        if both.size:
            lo, hi = float(both.min()), float(both.max())
            pad = 0.03 * (hi - lo or 1.0)
            ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="0.2", ls="--", lw=1,
                    label="identity")  # fmt: skip
        failed = int(np.sum(~np.isfinite(est)))
        extra = f" ({failed} failed not shown)" if failed else ""
        ax.set_title(f"{p}{extra}", fontsize=10)
        ax.set_xlabel(f"true {p}{_unit_suffix(p)}")
        ax.set_ylabel(f"estimated {p}{_unit_suffix(p)}")
        ax.grid(True, lw=0.4, alpha=0.5)
        ax.legend(loc="upper left", fontsize=8)
    for ax in axes[len(order) :]:
        ax.set_axis_off()
    return fig


# --------------------------------------------------------------------------- flip angle


#: Sweep keys that set the dynamic series' flip angle.
FLIP_ANGLE_KNOBS = ("fa", "scanner.fa")


def spgr_concentration_sensitivity(
    fa: Any,
    tr: float,
    r10: Any,
    concentration: Any,
    relaxivity: float,
    m0: Any = 1.0,
) -> np.ndarray:
    """Sensitivity of the SPGR steady-state signal to the contrast agent, dS/dC.

    ``S = m0 sin(a) (1 - E1) / (1 - cos(a) E1)``, ``E1 = exp(-TR R1)``,
    ``R1 = R10 + relaxivity C`` (the fast-exchange linear relaxation of
    :func:`phantomdce.signal.spgr`), so::

        dS/dC = relaxivity m0 sin(a) (1 - cos a) TR E1 / (1 - cos(a) E1)^2

    Parameters
    ----------
    fa : array_like
        Flip angle, degrees.
    tr : float
        Repetition time, s.
    r10 : array_like
        Native R1, /s.
    concentration : array_like
        Concentration at which the slope is taken, mM.
    relaxivity : float
        r1, /s/mM.
    m0 : array_like, optional
        Equilibrium magnetisation, a.u. (default 1: the slope per unit M0).

    Returns
    -------
    ndarray
        dS/dC in a.u. of ``m0`` per mM, broadcast over the inputs.

    Examples
    --------
    >>> round(float(spgr_concentration_sensitivity(15.0, 0.004, 1 / 1.66, 0.0, 4.5)), 5)
    0.11953
    """
    a = np.deg2rad(np.asarray(fa, dtype=float))
    r1 = np.asarray(r10, dtype=float) + relaxivity * np.asarray(concentration, dtype=float)
    e1 = np.exp(-tr * r1)
    c = np.cos(a)
    return relaxivity * np.asarray(m0, dtype=float) * np.sin(a) * (1.0 - c) * tr * e1 / (
        1.0 - c * e1
    ) ** 2


def flip_angle_sensitivity(protocols: Any) -> dict[str, np.ndarray]:
    """How the signal's sensitivity to concentration moves with the dynamic flip angle.

    For each protocol (one per simulated flip angle): the whole-blood concentration at the
    AIF's peak frame (:func:`phantomdce.dro.simulate.arterial_truth`), the slope dS/dC of
    blood's SPGR signal there and before contrast, the receiver's noise SD (the noise of a
    tissue of native tumour T1 at the protocol's ``snr``: what the scanner model fixes), and
    their ratio, the noise-equivalent concentration at the AIF peak.

    Parameters
    ----------
    protocols : sequence of phantomdce.dro.protocol.Protocol
        The simulated protocols (``fa`` in degrees, ``tr`` in s, ``snr``).

    Returns
    -------
    dict of str to ndarray
        ``fa_deg`` (deg), ``peak_blood_mM`` (mM), ``dsdc_peak_per_m0`` and
        ``dsdc_baseline_per_m0`` (1/mM, per unit M0 of blood), ``sigma_per_m0`` (the
        receiver's noise SD per unit M0), ``noise_equivalent_peak_mM`` (mM: the SD of a
        blood concentration read at the peak from one voxel, to first order, with M0 of blood
        equal to that of tissue), ``arterial_sigma_ratio`` (the simulator's arterial-voxel
        noise SD, :func:`phantomdce.dro.simulate.arterial_noise_sigma`, over the receiver's:
        1 when the protocol states ``snr_t1_s``, as a scanner model does).
    """
    from phantomdce.dro.protocol import RECEIVER_REFERENCE_M0
    from phantomdce.dro.simulate import M0_BLOOD, arterial_noise_sigma, arterial_truth
    from phantomdce.signal import native_t1, spgr

    out: dict[str, list[float]] = {
        k: []
        for k in (
            "fa_deg",
            "peak_blood_mM",
            "dsdc_peak_per_m0",
            "dsdc_baseline_per_m0",
            "sigma_per_m0",
            "noise_equivalent_peak_mM",
            "arterial_sigma_ratio",
        )
    }
    for p in protocols:
        _, cb, art_pre = arterial_truth(p)
        peak = float(np.max(cb))
        r10_blood = 1.0 / native_t1("blood", p.field_strength)
        r10_tumour = 1.0 / native_t1("tumour", p.field_strength)
        dsdc = float(spgr_concentration_sensitivity(p.fa, p.tr, r10_blood, peak, p.relaxivity))
        base = float(spgr_concentration_sensitivity(p.fa, p.tr, r10_blood, 0.0, p.relaxivity))
        if p.snr_t1_s is None:  # the receiver's SD: SNR snr in tumour, per unit M0
            sigma = float(spgr(r10_tumour, fa=p.fa, tr=p.tr)) / p.snr
        else:  # the receiver's SD the simulator uses (stated at T1 snr_t1_s), per unit M0
            sigma = float(p.noise_sigma(p.snr_t1_s)) / RECEIVER_REFERENCE_M0
        out["fa_deg"].append(float(p.fa))
        out["peak_blood_mM"].append(peak)
        out["dsdc_peak_per_m0"].append(dsdc)
        out["dsdc_baseline_per_m0"].append(base)
        out["sigma_per_m0"].append(sigma)
        out["noise_equivalent_peak_mM"].append(sigma / dsdc)
        out["arterial_sigma_ratio"].append(arterial_noise_sigma(p, art_pre) / M0_BLOOD / sigma)
    return {k: np.asarray(v, dtype=float) for k, v in out.items()}


def flip_angle_sensitivity_figure(sens: dict[str, np.ndarray], title: str = "") -> Figure:
    """Draw :func:`flip_angle_sensitivity`: dS/dC of blood and the noise-equivalent peak.

    Parameters
    ----------
    sens : dict
        The output of :func:`flip_angle_sensitivity`.
    title : str, optional
        Prefix of the figure's title (e.g. the scenario's name).

    Returns
    -------
    matplotlib.figure.Figure
        Left: dS/dC of blood per unit M0 (1/mM) at the AIF peak and before contrast,
        against the flip angle (deg). Right: the noise-equivalent blood concentration at
        the AIF peak (mM) under the receiver's fixed noise.
    """
    fig = _new_figure(10.0, 4.0)
    left, right = fig.subplots(1, 2)
    order = np.argsort(sens["fa_deg"])
    fa = sens["fa_deg"][order]
    peak = float(np.max(sens["peak_blood_mM"])) if fa.size else math.nan
    left.plot(fa, sens["dsdc_peak_per_m0"][order], "o-", label=f"AIF peak ({peak:.2g} mM)")
    left.plot(fa, sens["dsdc_baseline_per_m0"][order], "s--", label="before contrast (0 mM)")
    left.set_xlabel("dynamic flip angle (deg)")
    left.set_ylabel("dS/dC of blood per unit M0 (1/mM)")
    left.legend(fontsize=8)
    right.plot(fa, sens["noise_equivalent_peak_mM"][order], "o-", color="tab:red")
    right.set_xlabel("dynamic flip angle (deg)")
    right.set_ylabel("noise-equivalent blood concentration\nat the AIF peak (mM)")
    right.set_ylim(bottom=0.0)
    fig.suptitle(
        (f"{title}: " if title else "")
        + "sensitivity of the SPGR signal to blood concentration (noise SD fixed by the receiver)",
        fontsize=10,
    )
    return fig


def flip_angle_run_figures(run_dir: Any) -> list[tuple[Any, str]]:
    """The dS/dC figure of a run whose scenario sweeps the dynamic flip angle.

    Draws ``run_dir/figures/flip_angle_sensitivity.png`` (reused when it exists: it is
    written atomically) from the run's stored scenario.

    Parameters
    ----------
    run_dir : path
        A run folder (``run.json``) of a simulated-tissue scenario.

    Returns
    -------
    list of (Path, str)
        The PNG and its caption (with the numbers at the smallest, reference and largest
        angle); empty when the scenario sweeps neither ``fa`` nor ``scanner.fa``.
    """
    import json
    import tomllib
    from pathlib import Path

    from phantomdce.dro.scenario import parse_scenario
    from phantomdce.files import write_atomic

    run_dir = Path(run_dir)
    meta = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    scenario = parse_scenario(tomllib.loads(meta["scenario_toml"]))
    if not any(k in scenario.sweep for k in FLIP_ANGLE_KNOBS):
        return []
    sens = flip_angle_sensitivity([c.protocol for c in scenario.cases()])
    path = run_dir / "figures" / "flip_angle_sensitivity.png"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, figure_to_png(flip_angle_sensitivity_figure(sens, scenario.name)))
    fa, ne = sens["fa_deg"], sens["noise_equivalent_peak_mM"]
    lo, hi = int(np.argmin(fa)), int(np.argmax(fa))
    ratio = sens["dsdc_peak_per_m0"] / sens["dsdc_baseline_per_m0"]
    art = sens["arterial_sigma_ratio"]
    if np.allclose(art, 1.0, rtol=1e-9):
        art_words = "is the receiver's at every angle (one noise SD in every voxel)."
    else:
        art_words = (
            f"is {np.min(art):.2f}-{np.max(art):.2f} of the receiver's over the swept angles."
        )
    caption = (
        f"dS/dC of blood's SPGR signal at the AIF peak ({np.max(sens['peak_blood_mM']):.2g} mM"
        f" whole blood) and before contrast, and the noise-equivalent concentration at the"
        f" peak (receiver noise SD / dS/dC): {ne[lo]:.3g} mM at {fa[lo]:g} deg,"
        f" {ne[hi]:.3g} mM at {fa[hi]:g} deg; at the peak the slope is {100 * ratio[lo]:.2g}%"
        f" of its pre-contrast value at {fa[lo]:g} deg and {100 * ratio[hi]:.2g}% at"
        f" {fa[hi]:g} deg (the signal saturates with R1 sooner at a low angle). The"
        f" simulator's arterial noise SD {art_words}"
    )
    return [(path, caption)]
