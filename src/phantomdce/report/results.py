"""Collect a study's results into what the report shows (:mod:`phantomdce.report.model`).

Each run directory whose scenario has a ``[recommendation]`` table contributes to that
recommendation. Estimates are pooled over every case with the same knob value (other
sweep axes, such as the sampling phase, are nuisance axes averaged over): replicates of
different cases count as different noise blocks in the bootstrap. Several runs may share a
recommendation ``id``, each with a fixed ``knob_value`` (for a knob that is not a protocol
key, such as the AIF source of the pipeline); ``knob = "fitter"`` makes the fitters the
categories.

The Cramér-Rao bound of a knob value comes from the runs' ``metrics.csv`` (computed per
case by :func:`phantomdce.engine.run.finalize`): ``crlb_cv_pct`` is the root mean square of the
pooled cases' ``crlb_cv_pct`` and ``efficiency`` the mean of their bound variances over
the mean of their within-tissue variances (noise only, like ``cv_noise_pct``); NaN unless
every pooled case has a bound.
"""

from __future__ import annotations

import json
import math
import tomllib
from pathlib import Path
from typing import Any

import numpy as np

from phantomdce.dro.config import ConfigError
from phantomdce.engine.metrics import block_bootstrap_bias_ci, case_metrics
from phantomdce.engine.run import estimated_parameters
from phantomdce.report.model import KnobRow, Recommendation, RecommendationResult, TissueRow

__all__ = ["collect_results", "parse_recommendation", "run_dirs"]

REC_KEYS = (
    "id",
    "title",
    "text",
    "knob",
    "knob_label",
    "kind",
    "threshold",
    "recommended",
    "parameters",
    "notes",
    "knob_value",
    "order",
    "option",
)
_SCATTER_MAX = 1500


def parse_recommendation(raw: dict[str, Any], where: str) -> tuple[Recommendation, Any, int]:
    """Check a ``[recommendation]`` table; returns it, its fixed knob value and its order.

    ``option`` (text, optional) names one of several ways of following the recommendation
    (e.g. ``"carotid ROI"`` and ``"population AIF"`` for the AIF of an injection-rate sweep):
    runs of the same ``id`` with different options are judged separately, each option on its
    own verdict row (its fitters are labelled ``"<fitter> (<option>)"``).
    """
    for key in raw:
        if key not in REC_KEYS:
            raise ConfigError(f"{where}: unknown key 'recommendation.{key}'; expected {REC_KEYS}")
    for key in ("id", "title", "text", "knob", "kind"):
        if not isinstance(raw.get(key), str):
            raise ConfigError(f"{where}: recommendation.{key} = {raw.get(key)!r}: expected text")
    if "option" in raw and not (isinstance(raw["option"], str) and raw["option"].strip()):
        raise ConfigError(
            f"{where}: recommendation.option = {raw['option']!r}: expected a non-empty text"
        )
    if raw["kind"] not in ("max", "min", "category", "range"):
        raise ConfigError(
            f"{where}: recommendation.kind = {raw['kind']!r}: expected 'max', 'min', 'category'"
            " or 'range'"
        )
    rec = Recommendation(
        id=raw["id"],
        title=raw["title"],
        text=raw["text"],
        knob=raw["knob"],
        knob_label=raw.get("knob_label", raw["knob"]),
        kind=raw["kind"],
        threshold=raw.get("threshold"),
        recommended=[knob_label(v) for v in raw.get("recommended", [])],
        parameters=list(raw.get("parameters", ["Ktrans", "ve", "vp", "kep"])),
        notes=raw.get("notes", ""),
    )
    return rec, raw.get("knob_value"), int(raw.get("order", 100))


def run_dirs(out: str | Path) -> list[Path]:
    """Run directories of a result: ``out`` itself, or the members a study recorded.

    A study directory lists its scenarios (names and hashes) in ``study.json``; only those
    runs are used, and each must be the run of that very scenario, so that results of
    another study left in the same directory are never pooled in.
    """
    out = Path(out)
    if (out / "run.json").exists():
        return [out]
    manifest = out / "study.json"
    if not manifest.exists():
        return sorted(p.parent for p in out.glob("*/run.json"))
    members = json.loads(manifest.read_text())["scenarios"]
    dirs = []
    for name, digest in members.items():
        run_file = out / name / "run.json"
        if not run_file.exists():
            raise FileNotFoundError(f"{out}: the study's scenario {name!r} has no run")
        found = json.loads(run_file.read_text())["scenario_hash"]
        if found != digest:
            raise ValueError(
                f"{out / name} holds scenario hash {found}, but the study ran {digest}:"
                " refusing to report on a mixture"
            )
        dirs.append(out / name)
    return dirs


def knob_label(value: Any) -> Any:
    """A hashable, printable knob value: lists become text such as ``"[5, 15, 30]"``."""
    if isinstance(value, list | tuple):
        return "[" + ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value) + "]"
    return value


def _case_knob(values: dict[str, Any], knob: str, fixed: Any) -> Any:
    if fixed is not None:
        return fixed
    return knob_label(values.get(knob))


def _pooled(chunks: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}


def collect_results(out: str | Path, *, seed: int = 0) -> list[RecommendationResult]:
    """Every recommendation found under a study (or run) output directory.

    Raises
    ------
    FileNotFoundError
        No run directory, or no run with a ``[recommendation]`` table.
    """
    from phantomdce.engine.run import open_results
    from phantomdce.engine.verify import RunDamagedError, verify_run

    dirs = run_dirs(out)
    if not dirs:
        raise FileNotFoundError(f"{out}: no phantomdce run found (no run.json)")
    for d in dirs:  # a report rests only on results that match their digests
        check = verify_run(d, metadata=False)  # the store is opened below
        if not check.ok:
            raise RunDamagedError(check.message())
    groups: dict[str, dict[str, Any]] = {}
    for d in dirs:
        meta = json.loads((d / "run.json").read_text())
        raw = tomllib.loads(meta["scenario_toml"])
        if "recommendation" not in raw:
            continue
        rec, fixed, order = parse_recommendation(raw["recommendation"], str(d))
        option = raw["recommendation"].get("option")
        g = groups.setdefault(rec.id, {"rec": rec, "order": order, "runs": []})
        for other_dir, other_meta, other_fixed, other_option in g["runs"]:
            if other_option != option:
                pass
            elif fixed is None or other_fixed is None or fixed == other_fixed:
                raise ValueError(
                    f"runs {other_dir.name} and {d.name} both report on recommendation"
                    f" {rec.id!r}"
                    + (f" with knob value {fixed!r}" if fixed is not None else "")
                    + ": each run of a recommendation needs its own fixed knob_value"
                )
            if other_meta["scenario"]["tissue"] != meta["scenario"]["tissue"]:
                raise ValueError(
                    f"runs {other_dir.name} and {d.name} of recommendation {rec.id!r} have"
                    " different tissue grids: their tissues cannot be pooled"
                )
        g["runs"].append((d, meta, fixed, option))
    if not groups:
        raise FileNotFoundError(f"{out}: no run has a [recommendation] table to report on")
    results = []
    for g in sorted(groups.values(), key=lambda g: (g["order"], g["rec"].id)):
        results.append(_collect_one(g["rec"], g["runs"], open_results, seed))
    return results


def _noise_free(meta: dict[str, Any], case_values: dict[str, Any]) -> bool:
    """Whether a case was simulated without noise (``snr = inf``)."""
    snr = case_values.get("snr", meta.get("scenario", {}).get("protocol", {}).get("snr"))
    try:
        return snr is not None and math.isinf(float(snr))
    except (TypeError, ValueError):
        return False


def _collect_one(rec: Recommendation, runs, open_results, seed: int) -> RecommendationResult:
    pools: dict[tuple[Any, str, str], list[dict[str, np.ndarray]]] = {}
    knob_values: list[Any] = []
    fitters: list[str] = []
    oracles: dict[str, tuple[str, str]] = {}
    scenarios = []
    block = 0
    noise_free: dict[tuple[Any, str, str], list[bool]] = {}
    bounds: dict[tuple[Any, str, str], list[tuple[float, float, float]]] = {}
    tissue_grid = True
    for run_dir, meta, fixed, option in runs:
        case_bounds = _stored_bounds(run_dir)
        scenarios.append(meta["scenario_name"])
        tissue_grid = tissue_grid and "model" in meta["scenario"].get("tissue", {})
        # neck-phantom runs: a replicate code is subject * replicates + acquisition
        # (phantom.scenario.replicate_codes); subjects, not acquisitions, are independent
        phantom = "phantom" in meta["scenario"].get("tissue", {})
        per_subject = int(meta["scenario"].get("replicates", 1)) if phantom else 0
        estimated = {f["name"]: estimated_parameters(f["model"]) for f in meta["fitters"]}
        oracle_of = {
            f["name"]: (f["oracle_of"], f["oracle_stage"])
            for f in meta["fitters"]
            if "oracle_of" in f
        }
        tree = open_results(run_dir)
        for case_name in sorted(tree.children):
            ds = tree[case_name].to_dataset().load()
            case_values = ds.attrs.get("case_values", {})
            knob = _case_knob(case_values, rec.knob, fixed)
            replicate = ds["replicate"].values + block
            subject = (
                ds["replicate"].values // per_subject + block
                if per_subject
                else np.full(ds.sizes["voxel"], -1)
            )
            block += int(ds["replicate"].values.max()) + 1
            for f, fitter in enumerate(ds["fitter"].values.tolist()):
                key_value = fitter if rec.knob == "fitter" else knob
                label = "fitted model" if rec.knob == "fitter" else fitter
                if option is not None:
                    label = f"{label} ({option})"
                if fitter in oracle_of:
                    base, stage = oracle_of[fitter]
                    if rec.knob == "fitter":  # the fitted model is the knob: its oracle too
                        key_value, base = base, label
                        label = f"{label} [true {stage}]"
                    elif option is not None:
                        base = f"{base} ({option})"
                    oracles[label] = (base, stage)
                if key_value not in knob_values:
                    knob_values.append(key_value)
                if label not in fitters:
                    fitters.append(label)
                for name in rec.parameters:
                    truth = _truth(ds, name)
                    if truth is None or name not in ds or name not in estimated[fitter]:
                        continue
                    limit = f"at_limit_{name}"
                    at_limit = (
                        ds[limit].values[f].astype(bool)
                        if limit in ds
                        else np.zeros(ds.sizes["voxel"], dtype=bool)
                    )
                    noise_free.setdefault((key_value, label, name), []).append(
                        _noise_free(meta, case_values)
                    )
                    bounds.setdefault((key_value, label, name), []).append(
                        case_bounds.get((case_name, fitter, name), _NO_BOUND)
                    )
                    pools.setdefault((key_value, label, name), []).append(
                        {
                            "estimate": ds[name].values[f],
                            "truth": truth,
                            "success": ds["success"].values[f],
                            "at_limit": at_limit,
                            "tissue": ds["tissue"].values,
                            "replicate": replicate,
                            "subject": subject,
                            **{
                                f"t_{p}": _truth(ds, p)
                                for p in ("Ktrans", "ve", "vp")
                                if _truth(ds, p) is not None
                            },
                        }
                    )
    if all(isinstance(v, int | float) for v in knob_values):
        knob_values = sorted(knob_values)
    rows, tissues, scatter = [], [], {}
    rng = np.random.default_rng(seed)
    for (knob, fitter, name), chunks in pools.items():
        p = _pooled(chunks)
        m = case_metrics(
            p["estimate"],
            p["truth"],
            p["success"],
            p["tissue"],
            p["replicate"],
            parameter=name,
            at_limit=p["at_limit"],
            seed=seed,
        )
        ok = p["success"] & np.isfinite(p["estimate"])
        with np.errstate(invalid="ignore", divide="ignore"):
            rel = np.where(
                ok & (p["truth"] != 0), 100 * (p["estimate"] - p["truth"]) / p["truth"], np.nan
            )
        subjects = np.unique(p["subject"][p["subject"] >= 0])
        # the bootstrap resamples independent blocks: subjects where there are several
        blocks = p["subject"] if subjects.size > 1 else p["replicate"]
        lo, hi = block_bootstrap_bias_ci(rel, blocks, seed=seed)
        m["rel_bias_ci_low"], m["rel_bias_ci_high"] = lo, hi
        # independent blocks behind the CI (subjects, else replicates): a CV's standard error
        m["n_blocks"] = float(np.unique(blocks[np.isfinite(rel)]).size)
        m["cv_subject_pct"] = float("nan")
        if subjects.size > 1:
            # between subjects: SD of each subject's mean relative error, a nuisance axis
            # whose spread the CV covers like the other pooled axes
            means = [
                float(np.nanmean(rel[p["subject"] == sub]))
                for sub in subjects
                if np.isfinite(rel[p["subject"] == sub]).any()
            ]
            if len(means) > 1:
                m["cv_subject_pct"] = float(np.std(means, ddof=1))
                m["cv_pct"] = float(np.hypot(m["cv_pct"], m["cv_subject_pct"]))
        # per pooled case: noise-only precision and the spread of the bias over cases
        per_case = [
            case_metrics(
                c["estimate"],
                c["truth"],
                c["success"],
                c["tissue"],
                c["replicate"],
                parameter=name,
                at_limit=c["at_limit"],
                n_boot=0,
            )
            for c in chunks
        ]
        cvs = np.array([c["cv_pct"] for c in per_case])
        biases = np.array([c["rel_bias_pct"] for c in per_case])
        with np.errstate(invalid="ignore"):
            m["cv_noise_pct"] = (
                float(np.sqrt(np.nanmean(cvs**2))) if np.isfinite(cvs).any() else float("nan")
            )
        finite = biases[np.isfinite(biases)]
        m["rel_bias_case_min"] = float(finite.min()) if finite.size else float("nan")
        m["rel_bias_case_max"] = float(finite.max()) if finite.size else float("nan")
        m["noise_free"] = float(all(noise_free[(knob, fitter, name)]))
        m.update(_pooled_bound(bounds[(knob, fitter, name)]))
        m["tissue_grid"] = float(tissue_grid)
        rows.append(KnobRow(knob, fitter, name, m))
        tissues.extend(_tissue_rows(knob, fitter, name, p, rel, ok))
        idx = np.flatnonzero(ok)
        if idx.size > _SCATTER_MAX:
            idx = np.sort(rng.choice(idx, _SCATTER_MAX, replace=False))
        scatter[(knob, fitter, name)] = (p["truth"][idx].tolist(), p["estimate"][idx].tolist())
    figures = []
    for run_dir, run_meta, _, _ in runs:
        if "phantom" in run_meta:  # the maps and AIF of a phantom run, drawn (or reused) here
            from phantomdce.report.phantom import phantom_run_figures

            for path, caption in phantom_run_figures(run_dir):
                figures.append((path, f"{run_dir.name}: {caption}"))
        elif rec.knob in ("fa", "scanner.fa"):  # dS/dC of the AIF against the swept angle
            from phantomdce.report.figures import flip_angle_run_figures

            for path, caption in flip_angle_run_figures(run_dir):
                figures.append((path, f"{run_dir.name}: {caption}"))
    judged = [f for f in fitters if f not in oracles]
    rows = [r for r in rows if r.fitter not in oracles] + [r for r in rows if r.fitter in oracles]
    return RecommendationResult(
        rec,
        ", ".join(scenarios),
        knob_values,
        judged,
        rows,
        tissues,
        scatter,
        figures,
        oracles=oracles,
        tissue_grid=tissue_grid,
    )


_NO_BOUND = (math.nan, math.nan, math.nan)


def _stored_bounds(run_dir: Path) -> dict[tuple[str, str, str], tuple[float, float, float]]:
    """The bound of each case, fitter and parameter of a run, from its metrics.csv.

    ``(crlb_cv_pct^2, efficiency * sd^2, sd^2)``: the squared CV bound (%^2), the mean
    bound variance over the tissues of ``sd`` and the measured within-tissue variance. An
    older run without the bound columns gives none (NaN).
    """
    import csv

    path = Path(run_dir) / "metrics.csv"
    out: dict[tuple[str, str, str], tuple[float, float, float]] = {}
    if not path.exists():
        return out
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            if "efficiency" not in row:
                return {}
            num = {
                k: float(row[k]) if row[k] else math.nan
                for k in ("crlb_cv_pct", "efficiency", "sd")
            }
            out[row["case"], row["fitter"], row["parameter"]] = (
                num["crlb_cv_pct"] ** 2,
                num["efficiency"] * num["sd"] ** 2,
                num["sd"] ** 2,
            )
    return out


def _pooled_bound(cases: list[tuple[float, float, float]]) -> dict[str, float]:
    """The bound of a knob value pooled over its cases, like ``cv_noise_pct``.

    ``crlb_cv_pct``: root mean square of the cases' ``crlb_cv_pct``; ``efficiency``: mean
    over the cases of the bound variance over mean of their within-tissue variance (noise
    only: the spread between pooled cases is not noise the bound describes). NaN unless
    every pooled case has a bound.
    """
    a = np.array(cases, dtype=float).reshape(-1, 3)
    if not a.size or not np.isfinite(a).all():
        return {"crlb_cv_pct": math.nan, "efficiency": math.nan}
    measured = float(a[:, 2].mean())
    return {
        "crlb_cv_pct": float(np.sqrt(a[:, 0].mean())),
        "efficiency": float(a[:, 1].mean()) / measured if measured > 0 else math.nan,
    }


def _truth(ds, name: str) -> np.ndarray | None:
    if f"true_{name}" in ds:
        return ds[f"true_{name}"].values
    if name == "vp":
        return np.zeros(ds.sizes["voxel"])
    return None


def _tissue_rows(knob, fitter, name, p, rel, ok) -> list[TissueRow]:
    """One row per tissue: mean relative bias, CV, their standard errors and the failures.

    Computed for all tissues at once with counting sums (the phantom has ~1e4 tissues):
    the CV and the bias's SE use the two-pass variance (ddof 1) of the fitted voxels.
    """
    at_limit = p["at_limit"] & ~np.isfinite(p["estimate"])
    tissues, first, inv = np.unique(p["tissue"], return_index=True, return_inverse=True)
    inv = inv.ravel()
    n_tis = tissues.size

    def count(index, weights=None):
        return np.bincount(index, weights=weights, minlength=n_tis).astype(float)

    counted = count(inv, ~at_limit)
    good = np.asarray(ok, dtype=bool)
    g_inv, est = inv[good], p["estimate"][good]
    n_good = count(g_inv)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_e = count(g_inv, est) / n_good
        var_e = count(g_inv, (est - mean_e[g_inv]) ** 2) / (n_good - 1)
        cv = np.where(
            (n_good > 1) & (mean_e != 0), 100 * np.sqrt(var_e) / np.abs(mean_e), np.nan
        )
        rel_g = rel[good]
        fin = np.isfinite(rel_g)
        f_inv, r = g_inv[fin], rel_g[fin]
        n_fin = count(f_inv)
        mean_rel = count(f_inv, r) / n_fin
        var_r = count(f_inv, (r - mean_rel[f_inv]) ** 2) / (n_fin - 1)
        bias_se = np.where(n_fin > 1, np.sqrt(var_r) / np.sqrt(n_fin), np.nan)
        failure = np.where(counted > 0, 1.0 - n_good / counted, np.nan)
        cv_se = np.where(n_good > 1, cv / np.sqrt(2.0 * (n_good - 1)), np.nan)
    mean_rel = np.where(n_fin > 0, mean_rel, np.nan)
    truths = {k[2:]: p[k][first] for k in p if k.startswith("t_")}
    return [
        TissueRow(
            knob,
            fitter,
            name,
            {k: float(v[t]) for k, v in truths.items()},
            float(mean_rel[t]),
            float(cv[t]),
            int(n_good[t]),
            failure_rate=float(failure[t]),
            tissue=int(tissues[t]),
            rel_bias_se_pct=float(bias_se[t]),
            cv_se_pct=float(cv_se[t]),
        )
        for t in range(n_tis)
    ]
