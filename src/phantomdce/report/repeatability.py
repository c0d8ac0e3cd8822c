"""Test-retest repeatability of a phantom run: wSD, wCV, RC and the smallest detectable change.

A phantom scenario with ``phantom.sessions = 2`` (:mod:`phantomdce.phantom.scenario`) scans
every subject in two sessions that differ by the noise, the injection (bolus arrival, AIF
amplitude), the positioning and the ROI redrawn on the session's images; the truth is the
same. The run's cases carry the swept value ``session``; with a ROI summary
(``phantom.summary = "roi_mean"``, ...) each case holds one ROI value per subject and
acquisition (``tissue`` the subject, ``replicate`` the code ``subject * replicates + r``).
:func:`repeatability` pairs the values of the same subject and acquisition index across the
sessions of otherwise equal cases and reports, per fitter and setting (protocol, tumour
diameter, ...):

- the within-subject SD ``wSD = sqrt(mean_i s_i^2)``, ``s_i^2`` the variance (ddof 1) of
  pair ``i``'s values over its sessions (for two sessions ``(x1 - x2)^2 / 2``), in the
  parameter's units (Ktrans /min);
- the within-subject CV ``wCV = sqrt(mean_i s_i^2 / m_i^2)``, ``m_i`` the pair's mean
  (root mean square of the pairs' CVs, 0-1);
- the repeatability coefficient ``RC = 2.77 wSD`` (``2.77 = 1.96 sqrt(2)``): 95 % of the
  differences between two measurements of the same subject are within +-RC (Bland & Altman
  1996, BMJ 313:744 "Measurement error"; the QIBA metrology terminology, Raunig et al. 2015,
  Stat Methods Med Res 24:27-67);
- the smallest detectable relative change with 95 % confidence between one pair of scans,
  ``SDC% = 2.77 wCV x 100`` (the relative RC, %): a true change of a subject's value larger
  than this is told apart from measurement error; a 30 % drop in Ktrans is detectable when
  ``SDC% < 30``.

The pairs of one subject share its sessions' injection, positioning and ROI (``replicates``
acquisitions per session differ by their noise only), so the independent units are the
subjects: the 95 % intervals are a percentile bootstrap over subjects (seeded).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

__all__ = [
    "RC_FACTOR",
    "repeatability",
    "pair_values",
    "within_subject",
    "repeatability_figure",
    "repeatability_blocks",
    "repeatability_rows",
    "detectable_words",
    "is_test_retest_run",
]

#: The repeatability coefficient's factor: 1.96 x sqrt(2) (two measurements' difference).
RC_FACTOR = 1.96 * np.sqrt(2.0)
#: Bootstrap resamples of the subjects for the 95 % intervals.
N_BOOTSTRAP = 2000


def _tree(results: str | Path | xr.DataTree) -> xr.DataTree:
    if isinstance(results, xr.DataTree):
        return results
    from phantomdce.engine.run import open_results

    return open_results(Path(results))


def is_test_retest_run(run_dir: str | Path) -> bool:
    """Whether a run directory holds a phantom test-retest run (``phantom.sessions`` >= 2)."""
    meta = Path(run_dir) / "run.json"
    if not meta.exists():
        return False
    phantom = json.loads(meta.read_text()).get("scenario", {}).get("phantom")
    return isinstance(phantom, dict) and int(phantom.get("sessions", 1)) >= 2


def pair_values(
    results: str | Path | xr.DataTree, parameter: str = "Ktrans"
) -> pd.DataFrame:
    """The stored ROI values of a test-retest run, one row per subject, acquisition and session.

    Parameters
    ----------
    results : path or xarray.DataTree
        A run directory (``phantomdce run -o``) or its :func:`~phantomdce.open_results` tree.
    parameter : str
        The estimated parameter (``Ktrans`` in /min by default).

    Returns
    -------
    pandas.DataFrame
        Columns: the swept keys except ``session`` (the setting), ``fitter``, ``session``,
        ``subject``, ``pair`` (the replicate code: subject and acquisition index) and
        ``value`` (NaN where the ROI value failed).

    Raises
    ------
    ValueError
        The run has no ``session`` sweep key (not a test-retest run), or holds one value per
        voxel rather than per ROI.
    """
    tree = _tree(results)
    root = tree.to_dataset() if hasattr(tree, "to_dataset") else tree.ds
    keys = list(root.attrs.get("sweep_keys", []))
    if "session" not in keys:
        raise ValueError(
            f"sweep keys {keys}: expected 'session' (a phantom run with phantom.sessions >= 2)"
        )
    phantom = json.loads(root.attrs.get("phantom", "{}"))
    if phantom.get("summary", "voxel") == "voxel":
        raise ValueError(
            "phantom.summary = 'voxel': expected one ROI value per subject and acquisition"
            " (a ROI summary such as 'roi_mean')"
        )
    setting_keys = [k for k in keys if k != "session"]
    rows = []
    for i, name in enumerate(root["case_name"].values):
        node = tree[str(name)]
        values = {k: root[k].values[i].item() for k in keys}
        est = node[parameter]
        ok = node["success"].values.astype(bool)
        subject = node["tissue"].values
        pair = node["replicate"].values
        for f, fitter in enumerate(est["fitter"].values):
            v = np.where(ok[f], est.values[f], np.nan)
            for s, p, x in zip(subject, pair, v, strict=True):
                rows.append(
                    {
                        **{k: values[k] for k in setting_keys},
                        "fitter": str(fitter),
                        "session": int(values["session"]),
                        "subject": int(s),
                        "pair": int(p),
                        "value": float(x),
                    }
                )
    return pd.DataFrame(rows)


def within_subject(values: np.ndarray) -> tuple[float, float, int]:
    """Within-subject SD and CV of repeated measurements.

    Parameters
    ----------
    values : ndarray (pairs, sessions)
        Each row one subject's (acquisition's) values over its sessions; rows with a NaN are
        left out.

    Returns
    -------
    tuple
        ``wSD`` (the values' units): ``sqrt(mean_i s_i^2)``, ``s_i^2`` the row's variance
        (ddof 1); ``wCV`` (0-1): ``sqrt(mean_i s_i^2 / m_i^2)``, ``m_i`` the row's mean; the
        number of rows used. NaN and 0 when no row is complete.

    Examples
    --------
    >>> wsd, wcv, n = within_subject(np.array([[1.0, 1.2], [2.0, 1.8]]))
    >>> round(wsd, 6), round(wcv, 4), n
    (0.141421, 0.105, 2)
    """
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] < 2:
        raise ValueError(f"values of shape {x.shape}: expected (pairs, sessions >= 2)")
    x = x[np.isfinite(x).all(axis=1)]
    if not len(x):
        return float("nan"), float("nan"), 0
    var = x.var(axis=1, ddof=1)
    mean = x.mean(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        wcv = float(np.sqrt(np.mean(var / mean**2)))
    return float(np.sqrt(var.mean())), wcv, int(len(x))


def repeatability(
    results: str | Path | xr.DataTree,
    parameter: str = "Ktrans",
    *,
    change: float = 0.30,
    seed: int = 0,
    n_bootstrap: int = N_BOOTSTRAP,
) -> pd.DataFrame:
    """Repeatability of a test-retest run, per fitter and setting (see the module docstring).

    Parameters
    ----------
    results : path or xarray.DataTree
        A phantom run with ``phantom.sessions >= 2`` and a ROI summary.
    parameter : str
        The estimated parameter (``Ktrans``, /min).
    change : float
        A relative change (0-1, default a 30 % drop) to judge detectable or not.
    seed : int
        Seed of the bootstrap over subjects.
    n_bootstrap : int
        Bootstrap resamples (0: no intervals).

    Returns
    -------
    pandas.DataFrame
        One row per fitter and setting (the swept keys except ``session``), with
        ``n_subjects``, ``n_pairs``, ``mean`` (mean of the paired values, units of the
        parameter), ``wsd`` (same units), ``wcv`` (0-1), ``rc`` (``2.77 wsd``, units of the
        parameter), ``sdc_percent`` (``2.77 wcv x 100``: the smallest relative change
        detectable with 95 % confidence, %), ``sdc_percent_lo`` and ``sdc_percent_hi`` (its
        95 % bootstrap interval over subjects, %), ``change_percent`` (``change x 100``)
        and ``detectable`` (``sdc_percent < change_percent``). The frame's ``attrs`` give
        the parameter and the units.
    """
    if not 0 < change < 1:
        raise ValueError(f"change = {change!r}: expected a relative change in (0, 1)")
    df = pair_values(results, parameter)
    setting_keys = [c for c in df.columns if c not in ("fitter", "session", "subject", "pair",
                                                       "value")]
    rng = np.random.default_rng(seed)
    rows = []
    for key, group in df.groupby([*setting_keys, "fitter"], sort=False, dropna=False):
        wide = group.pivot_table(index="pair", columns="session", values="value", dropna=False)
        subjects = group.groupby("pair")["subject"].first().reindex(wide.index).to_numpy()
        x = wide.to_numpy(dtype=np.float64)
        wsd, wcv, n = within_subject(x)
        complete = np.isfinite(x).all(axis=1)
        lo = hi = float("nan")
        if n_bootstrap and n:
            ids = np.unique(subjects[complete])
            by_subject = [x[complete & (subjects == s)] for s in ids]
            draws = []
            for _ in range(n_bootstrap):
                pick = rng.integers(0, ids.size, ids.size)
                draws.append(within_subject(np.concatenate([by_subject[i] for i in pick]))[1])
            lo, hi = (RC_FACTOR * 100 * np.percentile(draws, [2.5, 97.5])).tolist()
        sdc = RC_FACTOR * wcv * 100
        rows.append(
            {
                **dict(zip([*setting_keys, "fitter"], key, strict=True)),
                "n_subjects": int(np.unique(subjects[complete]).size),
                "n_pairs": n,
                "mean": float(np.nanmean(x[complete])) if n else float("nan"),
                "wsd": wsd,
                "wcv": wcv,
                "rc": RC_FACTOR * wsd,
                "sdc_percent": sdc,
                "sdc_percent_lo": lo,
                "sdc_percent_hi": hi,
                "change_percent": 100 * change,
                "detectable": bool(sdc < 100 * change),
            }
        )
    from phantomdce.params import PARAMETERS

    out = pd.DataFrame(rows)
    out.attrs = {"parameter": parameter, "units": PARAMETERS[parameter].units,
                 "setting_keys": setting_keys}
    return out


def repeatability_figure(table: pd.DataFrame, *, x: str = "tumour_diameter_mm") -> Any:
    """The smallest detectable change (%) against ``x``, a line per other setting and fitter.

    A dashed line marks the judged change (``change_percent``, a 30 % drop by default).
    Returns a matplotlib figure.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    others = [k for k in table.attrs.get("setting_keys", []) if k != x]
    groups = list(table.groupby([*others, "fitter"], sort=False))
    for i, (key, g) in enumerate(groups):
        key = key if isinstance(key, tuple) else (key,)
        label = ", ".join(f"{k} = {v}" for k, v in zip([*others, "fitter"], key, strict=True))
        g = g.sort_values(x) if x in g else g
        xs = g[x].to_numpy(dtype=float) if x in g else np.arange(len(g), dtype=float)
        xs = xs + 0.4 * (i - (len(groups) - 1) / 2)  # side by side: the intervals stay apart
        ax.errorbar(
            xs,
            g["sdc_percent"],
            yerr=[g["sdc_percent"] - g["sdc_percent_lo"], g["sdc_percent_hi"] - g["sdc_percent"]],
            marker="o",
            capsize=3,
            label=label,
        )
    if len(table):
        change = float(table["change_percent"].iloc[0])
        ax.axhline(change, color="k", ls="--", lw=1, label=f"a {change:g}% change")
    ax.set_xlabel("tumour diameter (mm)" if x == "tumour_diameter_mm" else x)
    ax.set_ylabel(f"smallest detectable change of {table.attrs.get('parameter', '')} (%)")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7)
    ax.set_title("Test-retest: 2.77 x wCV (95% bootstrap CI over subjects)", fontsize=9)
    fig.tight_layout()
    return fig


def detectable_words(table: pd.DataFrame, *, size: str = "tumour_diameter_mm") -> list[str]:
    """One sentence per fitter and protocol: the smallest detectable change at each tumour size.

    Says at which sizes the judged change (``change_percent``, e.g. a 30 % drop) exceeds the
    smallest detectable change, and whether the bootstrap interval's upper end does too (then
    the change is detectable with the interval's confidence as well).
    """
    others = [k for k in table.attrs.get("setting_keys", []) if k != size]
    out = []
    for key, g in table.groupby([*others, "fitter"], sort=False):
        key = key if isinstance(key, tuple) else (key,)
        where = ", ".join(f"{k} = {v:g}" if isinstance(v, float) else f"{k} = {v}"
                          for k, v in zip([*others, "fitter"], key, strict=True))
        change = float(g["change_percent"].iloc[0])
        parts = []
        for _, r in (g.sort_values(size) if size in g else g).iterrows():
            label = f"{r[size] / 10:g} cm tumour" if size in g else "all"
            verdict = "detectable" if r["detectable"] else "not detectable"
            if r["detectable"] and not r["sdc_percent_hi"] < change:
                verdict += f" (but the 95% CI reaches {r['sdc_percent_hi']:.0f}%)"
            parts.append(f"{label}: SDC {r['sdc_percent']:.0f}%, {verdict}")
        out.append(f"{where}, a {change:g}% change of the ROI Ktrans: " + "; ".join(parts))
    return out


def repeatability_rows(
    table: pd.DataFrame,
    keys: Sequence[str] | None = None,
    labels: Mapping[str, str] | None = None,
    sdc_decimals: int = 0,
) -> tuple[list[str], list[list[str]]]:
    """Header and text cells of a repeatability table, one row per setting and fitter.

    Parameters
    ----------
    table : pandas.DataFrame
        The output of :func:`repeatability`.
    keys : sequence of str, optional
        Columns that name the row; default: the table's setting keys and ``fitter``.
    labels : mapping, optional
        Header text for some of ``keys`` (e.g. ``{"tumour_diameter_mm": "tumour (mm)"}``).
    sdc_decimals : int
        Decimals of the SDC (%) and its interval: 1 where an SDC just below the change
        would otherwise print as the change itself.

    Returns
    -------
    header, rows : list of str, list of list of str
        The columns: the keys, subjects (pairs), mean, wSD, wCV (%), RC, SDC (%) with its 95%
        interval, and whether the table's change is detectable; units from the table's attrs.
    """
    if keys is None:
        keys = [*table.attrs.get("setting_keys", []), "fitter"]
    labels = dict(labels or {})
    units = table.attrs.get("units", "")
    d = sdc_decimals
    header = [*(labels.get(k, k) for k in keys), "subjects (pairs)", f"mean ({units})",
              f"wSD ({units})", "wCV (%)", f"RC ({units})", "SDC (%), 95% CI",
              "detects the change"]  # fmt: skip
    rows = []
    for _, r in table.iterrows():
        rows.append(
            [
                *[f"{r[k]:g}" if isinstance(r[k], float) else str(r[k]) for k in keys],
                f"{r['n_subjects']} ({r['n_pairs']})",
                f"{r['mean']:.3g}",
                f"{r['wsd']:.3g}",
                f"{100 * r['wcv']:.1f}",
                f"{r['rc']:.3g}",
                f"{r['sdc_percent']:.{d}f}"
                f" ({r['sdc_percent_lo']:.{d}f}-{r['sdc_percent_hi']:.{d}f})",
                ("yes" if r["detectable"] else "no") + f" ({r['change_percent']:g}% change)",
            ]
        )
    return header, rows


SECTION_TEXT = (
    "Each phantom subject is scanned in two sessions that differ by the noise, the injection"
    " (bolus arrival, AIF amplitude), a repositioning by up to a voxel and the tumour ROI"
    " redrawn by the same rule on the session's images; its tissues are the same. Per protocol"
    " and tumour diameter: the within-subject SD (wSD) and CV (wCV) of the ROI Ktrans, the"
    " repeatability coefficient RC = 2.77 x wSD (95% of test-retest differences lie within"
    " +-RC; Bland & Altman 1996, BMJ 313:744; Raunig et al. 2015, Stat Methods Med Res 24:27)"
    " and the smallest change detectable with 95% confidence in one subject scanned twice,"
    " SDC = 2.77 x wCV (relative, %). A response (e.g. a 30% drop in Ktrans) is detectable"
    " when it exceeds the SDC. The intervals are a bootstrap over subjects (the independent"
    " units)."
)

#: What the simulated repeatability is compared with: published test-retest values, each
#: verified in the source's text (docs/repeatability_literature.md lists them and what could
#: not be verified).
PUBLISHED_TEXT = (
    "Published test-retest wCV of tumour Ktrans, two scans 2-7 days apart without therapy:"
    " 8.9% in liver and 17.9% in lung tumours (AJR Am J Roentgenol 2010;194:W134,"
    " doi:10.2214/AJR.09.3116), an SDC of 25% and 50%, with other organs and protocols: an"
    " order of magnitude to hold the phantom's numbers against, not a test. For patients"
    " scanned with the protocol simulated here, the phantom's wCV is a lower bound: it leaves"
    " out the tumour's physiological change between sessions, scanner drift and T1-map (B1)"
    " changes. The QIBA DCE-MRI profile's claim and a head-and-neck tumour test-retest"
    " value could not be verified; docs/repeatability_literature.md lists the sources read."
)


def repeatability_blocks(
    run_dirs: Sequence[str | Path], figdir: str | Path
) -> list[tuple[str, str]]:
    """The report's test-retest sections: one (HTML, Markdown) pair per test-retest run.

    Runs that are not test-retest runs are skipped; each section has the table of
    :func:`repeatability` and its figure (``figdir/repeatability_<run>.png``, linked from
    the Markdown as ``figures/<name>``, embedded in the HTML).
    """
    import base64
    import io

    from phantomdce.report.render import html_escape, html_table, md_escape, md_table

    out = []
    figdir = Path(figdir)
    for d in run_dirs:
        d = Path(d)
        if not is_test_retest_run(d):
            continue
        title = f"Test-retest repeatability ({d.name})"
        try:
            table = repeatability(d)
        except (ValueError, FileNotFoundError, KeyError) as exc:  # e.g. a run not finished
            why = f"not available: {exc}"
            out.append(
                (
                    f"<section><h2>{html_escape(title)}</h2><p>{html_escape(why)}</p></section>",
                    f"## {md_escape(title)}\n\n{md_escape(why)}\n",
                )
            )
            continue
        header, rows = repeatability_rows(table)
        fig = repeatability_figure(table)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)
        import matplotlib.pyplot as plt

        plt.close(fig)
        figdir.mkdir(parents=True, exist_ok=True)
        name = f"repeatability_{d.name}.png"
        (figdir / name).write_bytes(buf.getvalue())
        png = base64.b64encode(buf.getvalue()).decode()
        words = detectable_words(table)
        html = (
            f"<section><h2>{html_escape(title)}</h2><p>{html_escape(SECTION_TEXT)}</p>"
            f"<p>{html_escape(PUBLISHED_TEXT)}</p>"
            + "<ul>" + "".join(f"<li>{html_escape(w)}</li>" for w in words) + "</ul>"
            + html_table(header, rows)
            + f'<figure><img alt="smallest detectable change" src="data:image/png;base64,{png}">'
            "<figcaption>Smallest detectable change (%) of the ROI Ktrans against the tumour"
            " diameter.</figcaption></figure></section>"
        )
        md = (
            f"## {md_escape(title)}\n\n{md_escape(SECTION_TEXT)}\n\n"
            f"{md_escape(PUBLISHED_TEXT)}\n\n"
            + "".join(f"- {md_escape(w)}\n" for w in words) + "\n"
            + md_table(header, rows)
            + f"\n\n![smallest detectable change](figures/{name})\n"
        )
        out.append((html, md))
    return out
