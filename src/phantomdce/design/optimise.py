"""``phantomdce optimise SITE.toml --target ... --scan-time ...``: a scanner's best protocols.

The search (issue 12, part 5):

1. **Space.** Every combination of the knobs of :mod:`phantomdce.design.space` (readout
   matrix, slices of the slab, acceleration, dynamic flip angle, VFA angle set and averages,
   duration) is a candidate protocol of the site's own scanner: frame time, voxel size, SNR,
   VFA noise and VFA time come from :meth:`phantomdce.scanner.Scanner.derive`, scaled from the
   SNR the site measured.
2. **Score.** :func:`phantomdce.design.score.score_protocols` gives each candidate's
   Cramér-Rao bound (two-step, the route of the recommendations) on every tissue of the site's
   grid, and its scan time (dynamic duration + VFA time).
3. **Bias.** The deterministic bias of the site's fitter (a noise-free fit through the
   site's pipeline: sampling, T1-mapping and model bias; see :mod:`phantomdce.design.score`
   for its limits) is computed only where it can change the answer: for the candidates the
   search visits in order (below), each distinct noise-free protocol once.
4. **Target.** ``"Ktrans:bias<=5,cv<=10"`` (see :func:`parse_target`): every constraint must
   hold on **every** tissue of the grid (the worst tissue), and the scan time within the
   budget.
5. **Pareto front.** Among the candidates whose bias meets the target (*admissible*), those
   that no other admissible candidate beats in both scan time and worst-tissue Ktrans CV
   (:func:`pareto_front`, exact: a candidate whose CV is not below the best CV of the
   admissible candidates no longer than it cannot be on the front, and its bias is not
   needed). A brute-force computation checks it in the tests.
6. **Choice.** The best three: the admissible candidates within the budget that meet every
   CV constraint, lowest worst-tissue Ktrans CV first (front points before the rest). If none
   meets the target, the three *closest* (smallest shortfall, the largest of value / limit over
   the constraints and scan time / budget) are shown and said to fail.
7. **Confirmation.** The chosen three are simulated and fitted by Monte Carlo through the one
   engine (:func:`phantomdce.engine.run.run` on a scenario made with
   :func:`phantomdce.dro.scenario.parse_scenario`, one case per protocol), and the measured
   worst-tissue CV and bias are printed beside the predicted ones, with their disagreement.

Output in ``DIR``: ``pareto.png`` (scan time vs worst-tissue Ktrans CV, every candidate, the
front, the site's protocol and the ESNR protocol on this scanner marked), ``front.csv`` and
``front.md`` (the front), ``best.csv`` (the three with bound and Monte Carlo),
``candidates.csv.gz`` (every candidate), ``summary.md`` and ``index.html``, ``optimise.json``
and the Monte-Carlo run in ``mc/``.

Importing this module is light (the command line builds its parser from it for every
command): the scorer, the engine and the report are imported where they are used.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import io
import json
import math
import re
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from phantomdce.design.space import (
    Candidate,
    Space,
    default_space,
    enumerate_space,
    esnr_compliant,
    g_factor_model,
    make_candidate,
    parse_g_factors,
)
from phantomdce.dro.config import ConfigError, parse_toml, toml_text
from phantomdce.dro.protocol import Protocol

__all__ = [
    "METRICS",
    "Constraint",
    "Target",
    "parse_target",
    "pareto_front",
    "Search",
    "search",
    "estimator_bound",
    "confirm",
    "optimise",
    "add_parser",
]

#: What a target may constrain, per parameter: ``bias`` (|relative bias| on the worst tissue,
#: %, from the noise-free fit) and ``cv`` (CV on the worst tissue, %, from the bound).
METRICS = ("bias", "cv")
#: The parameters a target may name (the extended Tofts model's and the derived kep).
TARGET_PARAMETERS = ("Ktrans", "ve", "vp", "kep")
#: Spacing (s) of the bound's convolution grid in the search: 0.1 s, ten times faster than
#: the simulator's 0.01 s and within 1e-4 of it (:func:`phantomdce.precision.crlb`).
SEARCH_GRID_STEP_S = 0.1
#: Where the optimise output marks itself (a folder holding it may be written again).
MARKER = "optimise.json"
#: Monte-Carlo replicates per tissue of the confirmation unless set.
DEFAULT_REPLICATES = 100
#: Seed of the confirmation's noise unless set.
DEFAULT_SEED = 20260
_PART = re.compile(r"^\s*(bias|cv)\s*(<=)\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*%?\s*$")


@dataclass(frozen=True)
class Constraint:
    """One limit of a target: ``metric`` of ``parameter`` <= ``limit`` (%) on every tissue."""

    parameter: str
    metric: str
    limit: float

    def __str__(self) -> str:
        what = "|bias|" if self.metric == "bias" else "CV"
        return f"{self.parameter} {what} <= {self.limit:g}%"


@dataclass(frozen=True)
class Target:
    """Constraints that must all hold on the worst tissue (see :func:`parse_target`)."""

    constraints: tuple[Constraint, ...]
    text: str

    def of(self, metric: str) -> tuple[Constraint, ...]:
        """The constraints on one metric (``"bias"`` or ``"cv"``)."""
        return tuple(c for c in self.constraints if c.metric == metric)

    def __str__(self) -> str:
        return ", ".join(str(c) for c in self.constraints)


def parse_target(text: str, path: str = "--target") -> Target:
    """Parse a target such as ``"Ktrans:bias<=5,cv<=10; ve:cv<=20"``.

    Syntax: parameter groups separated by ``;``, each ``<parameter>:<limit>[,<limit>...]``
    with a limit ``bias<=X`` (|relative bias| <= X %, worst tissue) or ``cv<=X`` (CV <= X %,
    worst tissue); ``X`` > 0, a trailing ``%`` allowed. Parameters: :data:`TARGET_PARAMETERS`.

    Raises
    ------
    ConfigError
        Naming the bad part: an unknown parameter or metric, another operator than ``<=``,
        a limit that is not a number > 0, a metric given twice, an empty target.
    """
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"{path} = {text!r}: expected e.g. 'Ktrans:bias<=5,cv<=10'")
    out: list[Constraint] = []
    seen: set[tuple[str, str]] = set()
    for group in (g for g in text.split(";") if g.strip()):
        if ":" not in group:
            raise ConfigError(
                f"{path} part {group.strip()!r}: expected <parameter>:<limits>, e.g."
                " 'Ktrans:bias<=5,cv<=10'"
            )
        name, limits = (s.strip() for s in group.split(":", 1))
        if name not in TARGET_PARAMETERS:
            from phantomdce.dro.config import did_you_mean

            raise ConfigError(
                f"{path} part {group.strip()!r}: unknown parameter {name!r}"
                f"{did_you_mean(name, TARGET_PARAMETERS)}; expected one of"
                f" {list(TARGET_PARAMETERS)}"
            )
        if not limits:
            raise ConfigError(f"{path} part {group.strip()!r}: expected limits after {name}:")
        for part in limits.split(","):
            m = _PART.match(part)
            if m is None:
                metric = part.strip().split("<")[0].split(">")[0].split("=")[0].strip()
                if metric not in METRICS:
                    why = f"unknown metric {metric!r}; expected 'bias' or 'cv'"
                elif "<=" not in part:
                    why = "expected the operator '<=' (a target is an upper limit)"
                else:
                    why = "expected a limit that is a number > 0 (in %)"
                raise ConfigError(f"{path} part {part.strip()!r} (of {name}): {why}")
            metric, _, value = m.groups()
            limit = float(value)
            if not limit > 0:
                raise ConfigError(
                    f"{path} part {part.strip()!r} (of {name}): expected a limit > 0 %"
                )
            if (name, metric) in seen:
                raise ConfigError(f"{path}: {name} {metric} is given twice; expected it once")
            seen.add((name, metric))
            out.append(Constraint(name, metric, limit))
    if not out:
        raise ConfigError(f"{path} = {text!r}: expected e.g. 'Ktrans:bias<=5,cv<=10'")
    return Target(tuple(out), text)


def pareto_front(
    time_s: Sequence[float],
    cv_pct: Sequence[float],
    admissible: Callable[[int], bool],
) -> list[int]:
    """Indices of the Pareto front of the admissible points (lower time and CV are better).

    A point is on the front when it is admissible, its CV is finite and no admissible point
    has a time and a CV each no larger and one of them smaller (equal points are all on it).
    ``admissible(i)`` is asked only for the points that could be on the front, in order of
    increasing time (then CV): a point whose CV is above the best CV of the admissible points
    visited so far is dominated whatever its own admissibility.

    Returns
    -------
    list of int
        Front indices, by increasing time (and decreasing CV).
    """
    t = np.asarray(time_s, dtype=float)
    c = np.asarray(cv_pct, dtype=float)
    order = np.lexsort((c, t))
    best_c, best_t = math.inf, math.inf
    front: list[int] = []
    for i in order:
        ci, ti = c[i], t[i]
        if not np.isfinite(ci) or ci > best_c or (ci == best_c and ti > best_t):
            continue
        if not admissible(int(i)):
            continue
        front.append(int(i))
        if ci < best_c:
            best_c, best_t = ci, ti
    return front


@dataclass
class Search:
    """The result of :func:`search` (see the module docstring for each step)."""

    site: Any
    target: Target
    budget_s: float
    space: Space
    candidates: list[Candidate]
    refused: list[tuple[dict[str, Any], str]]
    scores: Any  # xarray.Dataset of score_protocols
    bias: dict[int, dict[str, float]]  # candidate -> worst |bias| % per parameter (inf: failed)
    front: list[int]
    chosen: list[int]
    meets: bool
    site_index: int | None
    esnr_index: int | None
    timings: dict[str, float]
    max_voxel_mm3: float | None = None
    bound: str = "two_step"  # the bound's kind (phantomdce.precision.KINDS)
    bound_note: str = ""  # why no bound matches the site's estimator ("" when one does)

    def worst_cv(self, parameter: str = "Ktrans") -> np.ndarray:
        """Worst-tissue CV bound (%) of every candidate."""
        return np.asarray(self.scores["worst_cv_pct"].sel(parameter=parameter).values)

    def scan_time(self) -> np.ndarray:
        """Scan time (dynamic + VFA) of every candidate, s."""
        return np.asarray(self.scores["scan_time_s"].values)

    def bound_worst_tissue(self, i: int, parameter: str = "Ktrans") -> int:
        """Index of the tissue on which candidate ``i``'s CV bound is largest."""
        cv = self.scores["crlb_cv_pct"].sel(parameter=parameter).values[i]
        return int(np.argmax(np.where(np.isnan(cv), -np.inf, cv)))

    def shortfall(self, i: int) -> float:
        """Largest of value / limit over the target's constraints and time / budget."""
        parts = [self.scan_time()[i] / self.budget_s]
        for c in self.target.of("cv"):
            parts.append(self.worst_cv(c.parameter)[i] / c.limit)
        b = self.bias.get(i)
        if b is not None:
            for c in self.target.of("bias"):
                parts.append(b[c.parameter] / c.limit)
        return float(max(parts))


def _worst_bias(values: Mapping[str, np.ndarray], ok: np.ndarray) -> dict[str, float]:
    out = {}
    for name, v in values.items():
        a = np.abs(np.asarray(v, dtype=float))
        out[name] = math.inf if (not ok.all() or np.isnan(a).any()) else float(a.max())
    return out


def estimator_bound(site: Any) -> tuple[str, str]:
    """The bound matching the site's fitter and pipeline, and a note if none matches.

    :func:`phantomdce.engine.metrics.bound_kind` (as the engine's ``crlb_sd``): ``two_step``
    for a concentration fitter with T1 from the VFA images, ``joint``/``joint_shared_m0`` for
    a signal fitter, ... Where no bound matches (a measured or population AIF, a fitted
    delay, a model mismatch), the two-step bound is used, a lower limit that leaves out that
    error source, and the note says why.
    """
    from phantomdce.engine.metrics import bound_kind
    from phantomdce.fit.pipeline import Pipeline
    from phantomdce.fit.registry import resolve_fitters

    info = resolve_fitters([site.fitter])[0]
    kind, why = bound_kind(
        tissue_model=site.tissue.model,
        fitter_model=info.model,
        fitter_input=info.input,
        pipeline=Pipeline.from_mapping(dict(site.pipeline)),
        case_attrs={"snr": site.protocol.snr, "b1": site.protocol.b1},
        shared_m0=bool(getattr(info.fitter, "shared_m0", False)),
    )
    if kind is None:
        return "two_step", f"no bound matches the site's estimator ({why}): two-step bound used"
    return kind, ""


def _esnr_settings(site: Any, space: Space) -> dict[str, Any] | None:
    """The ESNR protocol on this scanner (its knob values), or None if the space has none.

    The site's geometry and flip angle, VFA 5/15/30 deg with one average, 300 s, and the
    least acceleration of the space that makes dt <= 5 s.
    """
    sc = site.scanner
    g = g_factor_model(space.g_factors, sc.parallel_factor, sc.g_factor)["g"]
    for r in sorted(space.parallel_factor):
        settings = {
            "matrix_read": sc.matrix[0],
            "slices": sc.slices,
            "parallel_factor": r,
            "fa": sc.fa,
            "vfa_flip_angles": (5.0, 15.0, 30.0),
            "vfa_averages": 1,
            "duration": 300.0,
        }
        try:
            cand = make_candidate(sc, site.protocol, settings, g)
        except ConfigError:
            continue
        if esnr_compliant(cand.protocol):
            return settings
    return None


def _find(candidates: Sequence[Candidate], settings: Mapping[str, Any]) -> int | None:
    for i, c in enumerate(candidates):
        s = c.settings
        if (
            s["matrix"][0] == settings["matrix_read"]
            and s["slices"] == settings["slices"]
            and s["parallel_factor"] == settings["parallel_factor"]
            and s["fa"] == settings["fa"]
            and tuple(s["vfa_flip_angles"]) == tuple(settings["vfa_flip_angles"])
            and s["vfa_averages"] == settings["vfa_averages"]
            and s["duration"] == settings["duration"]
        ):
            return i
    return None


def _with(space: Space, settings: Mapping[str, Any]) -> Space:
    """The space with each knob's value of ``settings`` added (so that it is a candidate)."""
    add = lambda vals, v: tuple(sorted(set(vals) | {v}))  # noqa: E731
    return dataclasses.replace(
        space,
        matrix_read=add(space.matrix_read, int(settings["matrix_read"])),
        slices=add(space.slices, int(settings["slices"])),
        parallel_factor=add(space.parallel_factor, float(settings["parallel_factor"])),
        fa=add(space.fa, float(settings["fa"])),
        vfa_flip_angles=tuple(
            dict.fromkeys([*space.vfa_flip_angles, tuple(settings["vfa_flip_angles"])])
        ),
        vfa_averages=add(space.vfa_averages, int(settings["vfa_averages"])),
        duration=add(space.duration, float(settings["duration"])),
    )


def search(
    site: Any,
    target: Target,
    budget_s: float,
    *,
    space: Space | None = None,
    n_best: int = 3,
    max_voxel_mm3: float | None = None,
) -> Search:
    """Search a site's protocol space for the protocols meeting a target within a budget.

    Parameters
    ----------
    site : phantomdce.design.site.Site
        A site with a ``[scanner]`` table (the knobs are coupled through it).
    target : Target
        From :func:`parse_target`.
    budget_s : float
        Scan-time budget (dynamic duration + VFA time), s.
    space : Space, optional
        The knobs' values (default :func:`phantomdce.design.space.default_space`); the site's
        own values and those of the ESNR protocol on this scanner are added to the knobs, so
        both are candidates (marked in the output).
    n_best : int, optional
        How many protocols to choose.
    max_voxel_mm3 : float, optional
        Largest voxel volume accepted, mm3: the bound and the bias know nothing of partial
        volume, so without a limit the search buys SNR with coarse voxels. Candidates above
        it are left out (counted in ``refused``).

    Returns
    -------
    Search

    Raises
    ------
    ConfigError
        A site without a scanner, a budget <= 0, a target naming a parameter the tissue
        model does not have.
    """
    from phantomdce.design.score import noise_free_bias, score_protocols

    t0 = time.perf_counter()
    if site.scanner is None:
        raise ConfigError(
            f"site {site.name!r} has no [scanner] table: optimise needs the scanner model"
            " (matrix, fov_mm, slices, slice_thickness_mm, tr, fa, reference_snr, ...) to"
            " couple frame time, voxel size and SNR; expected a [scanner] table"
        )
    if not (isinstance(budget_s, int | float) and math.isfinite(budget_s) and budget_s > 0):
        raise ConfigError(f"--scan-time = {budget_s!r}: expected a time in s > 0")
    sc, pr = site.scanner, site.protocol
    space = default_space(sc, pr) if space is None else space
    site_settings = {
        "matrix_read": sc.matrix[0],
        "slices": sc.slices,
        "parallel_factor": sc.parallel_factor,
        "fa": sc.fa,
        "vfa_flip_angles": tuple(sc.vfa_flip_angles),
        "vfa_averages": sc.vfa_averages,
        "duration": pr.duration,
    }
    space = _with(space, site_settings)
    esnr = _esnr_settings(site, space)
    if esnr is not None:
        space = _with(space, esnr)
    candidates, refused = enumerate_space(sc, pr, space)
    if max_voxel_mm3 is not None:
        if not (math.isfinite(max_voxel_mm3) and max_voxel_mm3 > 0):
            raise ConfigError(f"--max-voxel-mm3 = {max_voxel_mm3!r}: expected a volume > 0 mm3")
        coarse = [c for c in candidates if c.derived.voxel_mm3 > max_voxel_mm3 * (1 + 1e-9)]
        refused += [
            (c.settings, f"voxel {c.derived.voxel_mm3:.3g} mm3 > --max-voxel-mm3"
                         f" {max_voxel_mm3:g}")
            for c in coarse
        ]
        candidates = [c for c in candidates if c.derived.voxel_mm3 <= max_voxel_mm3 * (1 + 1e-9)]
    if not candidates:
        raise ConfigError(
            f"no protocol of the space is valid: e.g. {refused[0][1] if refused else '?'}"
        )
    t_space = time.perf_counter()
    kind, why = estimator_bound(site)
    scores = score_protocols(
        [c.protocol for c in candidates],
        site.tissue,
        model=None,
        kind=kind,
        bias=False,
        grid_step=SEARCH_GRID_STEP_S,
        labels=[c.label for c in candidates],
        vfa_time_s=[c.derived.vfa_time_s for c in candidates],
    )
    params = list(scores.parameter.values)
    for c in target.constraints:
        if c.parameter not in params:
            raise ConfigError(
                f"--target names {c.parameter}: the tissue model {site.tissue.model!r} has"
                f" {params}; expected one of them"
            )
    t_score = time.perf_counter()

    cache: dict[Protocol, dict[str, float]] = {}
    bias: dict[int, dict[str, float]] = {}

    def bias_of(i: int) -> dict[str, float]:
        if i not in bias:
            p = candidates[i].protocol
            key = dataclasses.replace(p, snr=math.inf, vfa_averages=1, vfa_sigma_ratio=None)
            if key not in cache:
                values, ok = noise_free_bias(p, site.tissue, fitter=site.fitter,
                                             pipeline=site.pipeline)
                cache[key] = _worst_bias(values, ok)
            bias[i] = cache[key]
        return bias[i]

    def admissible(i: int) -> bool:
        b = bias_of(i)
        return all(b.get(c.parameter, math.inf) <= c.limit for c in target.of("bias"))

    found = Search(site, target, float(budget_s), space, candidates, refused, scores, bias,
                   [], [], False, None, None, {}, max_voxel_mm3, kind, why)
    t_time = found.scan_time()
    kt_cv = found.worst_cv("Ktrans")
    front = pareto_front(t_time, kt_cv, admissible)
    found.front = front

    # the chosen: admissible, within budget, every CV limit met; lowest Ktrans CV first
    cv_ok = np.ones(len(candidates), dtype=bool)
    for c in target.of("cv"):
        cv_ok &= found.worst_cv(c.parameter) <= c.limit
    within = t_time <= budget_s + 1e-9
    pool = np.flatnonzero(cv_ok & within & np.isfinite(kt_cv))
    on_front = set(front)
    order = sorted(pool, key=lambda i: (i not in on_front, kt_cv[i], t_time[i]))
    chosen: list[int] = []
    for i in order:
        if admissible(int(i)):
            chosen.append(int(i))
            if len(chosen) == n_best:
                break
    found.meets = bool(chosen)
    if not chosen:  # the closest: smallest shortfall, found with its lower bound first
        lower = np.maximum(t_time / budget_s, 0.0)
        for c in target.of("cv"):
            lower = np.maximum(lower, found.worst_cv(c.parameter) / c.limit)
        ranked: list[tuple[float, int]] = []
        for i in np.argsort(lower, kind="stable"):
            if not np.isfinite(lower[i]):
                break
            if len(ranked) >= n_best and lower[i] >= ranked[n_best - 1][0]:
                break
            bias_of(int(i))
            ranked.append((found.shortfall(int(i)), int(i)))
            ranked.sort()
        chosen = [i for _, i in ranked[:n_best]]
    found.chosen = chosen
    found.site_index = _find(candidates, site_settings)
    found.esnr_index = None if esnr is None else _find(candidates, esnr)
    for i in (found.site_index, found.esnr_index):
        if i is not None:
            bias_of(i)
    t_end = time.perf_counter()
    found.timings = {
        "space_s": t_space - t0,
        "bound_s": t_score - t_space,
        "bias_s": t_end - t_score,
        "bias_fits": float(len(cache)),
    }
    return found


# -- Monte-Carlo confirmation ------------------------------------------------------------------


def mc_scenario(
    site: Any, protocols: Sequence[Protocol], *, replicates: int, seed: int
) -> dict[str, Any]:
    """The scenario (parsed-TOML form) whose cases are the given protocols, in order.

    The first protocol is the base; the keys in which the others differ are swept together
    (``zip``), so case ``k`` is protocol ``k``. The site's tissue grid, fitter and pipeline.
    """
    from phantomdce.design.score import protocol_table, tissue_table

    tables = [protocol_table(p) for p in protocols]
    base = tables[0]
    keys = [k for k in base if any(t.get(k) != base[k] for t in tables[1:])]
    data: dict[str, Any] = {
        "name": "optimise_confirmation",
        "description": f"Monte-Carlo confirmation of the protocols chosen for {site.name}",
        "seed": int(seed),
        "replicates": int(replicates),
        "protocol": base,
        "tissue": tissue_table(site.tissue),
    }
    if keys:
        data["sweep"] = {k: [t[k] for t in tables] for k in keys}
    if len(keys) > 1:
        data["zip"] = [keys]
    data["fit"] = {"fitters": [site.fitter], "pipeline": dict(site.pipeline)}
    return data


def confirm(
    site: Any,
    protocols: Sequence[Protocol],
    out: str | Path,
    *,
    replicates: int = DEFAULT_REPLICATES,
    seed: int = DEFAULT_SEED,
    parameters: Sequence[str] = ("Ktrans", "ve", "vp"),
) -> list[dict[str, Any]]:
    """Monte Carlo of the protocols through the engine; per protocol, worst-tissue CV and bias.

    Parameters
    ----------
    site : Site
        Its tissue grid, fitter and pipeline.
    protocols : sequence of Protocol
        The protocols (one case each).
    out : str or Path
        Folder of the scenario (``scenario.toml``) and the run (``run/``); replaced.
    replicates, seed : int
        Noise replicates per tissue and the scenario's seed.
    parameters : sequence of str
        Parameters to measure.

    Returns
    -------
    list of dict
        Per protocol: ``tissue_cv_pct`` and ``tissue_bias_pct`` (per parameter, a list over
        the tissues in the grid's order: CV = SD / |mean| of the valid estimates, bias =
        (mean - truth) / truth, %), ``tissue_n`` (valid fits per tissue) and
        ``mc_failure_rate``; :func:`mc_summary` reduces it.
    """
    from phantomdce.dro.scenario import parse_scenario
    from phantomdce.engine.run import open_results, run

    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    data = mc_scenario(site, protocols, replicates=replicates, seed=seed)
    scenario = parse_scenario(data)  # checked before anything runs
    for case, pr in zip(scenario.cases(), protocols, strict=True):
        if case.protocol != pr:
            raise RuntimeError(f"confirmation case {case.index} is not the protocol chosen")
    path = out / "scenario.toml"
    path.write_text(toml_text(data), encoding="utf-8")
    run(path, out / "run")
    tree = open_results(out / "run")
    rows = []
    for case in scenario.cases():
        ds = tree[case.name].to_dataset()
        tissue = np.asarray(ds["tissue"].values)
        ids = np.unique(tissue)
        ok_all = np.asarray(ds["success"].sel(fitter=site.fitter).values, dtype=bool)
        row: dict[str, Any] = {
            "tissue_cv_pct": {},
            "tissue_bias_pct": {},
            "tissue_n": [int(np.count_nonzero(ok_all & (tissue == t))) for t in ids],
            "mc_failure_rate": float(1.0 - ok_all.mean()),
        }
        for name in parameters:
            est = np.asarray(ds[name].sel(fitter=site.fitter).values, dtype=float)
            truth = np.asarray(ds[f"true_{name}"].values, dtype=float)
            ok = ok_all & np.isfinite(est)
            cvs, biases = [], []
            for t in ids:
                e = est[ok & (tissue == t)]
                y = truth[tissue == t][0]
                m = e.mean() if e.size else math.nan
                cvs.append(100.0 * e.std(ddof=1) / abs(m) if e.size > 1 and m != 0 else math.inf)
                biases.append(100.0 * (m - y) / abs(y) if e.size else math.inf)
            row["tissue_cv_pct"][name] = cvs
            row["tissue_bias_pct"][name] = biases
        rows.append(row)
    return rows


def mc_summary(row: Mapping[str, Any], parameter: str, bound_tissue: int) -> dict[str, float]:
    """A confirmation row of :func:`confirm` reduced to the numbers shown beside the bound.

    Returns
    -------
    dict
        ``cv_at_bound_tissue_pct`` (the Monte-Carlo CV on the tissue where the bound's CV is
        largest, the like-for-like comparison) with ``cv_se_pct`` (its standard error,
        ``CV / sqrt(2 (n - 1))``), ``cv_worst_pct`` (the largest Monte-Carlo CV over the
        tissues: the maximum of noisy estimates, biased upwards) and ``abs_bias_worst_pct``
        (the largest |mean error| / truth over the tissues, %).
    """
    cv = np.asarray(row["tissue_cv_pct"][parameter], dtype=float)
    n = row["tissue_n"][bound_tissue]
    c = float(cv[bound_tissue])
    return {
        "cv_at_bound_tissue_pct": c,
        "cv_se_pct": c / math.sqrt(2.0 * max(n - 1, 1)),
        "cv_worst_pct": float(np.max(cv)),
        "abs_bias_worst_pct": float(np.max(np.abs(row["tissue_bias_pct"][parameter]))),
    }


# -- output ------------------------------------------------------------------------------------


def _fmt(v: float, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if isinstance(v, float) and math.isinf(v):
        return "failed"
    return f"{v:.{digits}g}"


def _row(found: Search, i: int) -> dict[str, Any]:
    c = found.candidates[i]
    s, d = c.settings, c.derived
    b = found.bias.get(i)
    out = {
        "label": c.label,
        "scan_time_s": round(c.scan_time_s, 3),
        "dynamic_s": c.protocol.duration,
        "vfa_time_s": round(d.vfa_time_s, 3),
        "dt_s": round(d.dt, 4),
        "voxel_mm": "x".join(f"{v:.3g}" for v in d.voxel_mm),
        "snr": round(d.snr, 3),
        "matrix": f"{s['matrix'][0]}x{s['matrix'][1]}",
        "slices": s["slices"],
        "R": s["parallel_factor"],
        "g": round(s["g_factor"], 3),
        "fa_deg": s["fa"],
        "vfa_deg": "/".join(f"{a:g}" for a in s["vfa_flip_angles"]),
        "vfa_averages": s["vfa_averages"],
        "esnr": c.esnr,
    }
    for p in ("Ktrans", "ve", "vp"):
        out[f"{p}_cv_bound_pct"] = round(float(found.worst_cv(p)[i]), 3)
        out[f"{p}_abs_bias_pct"] = (
            round(b[p], 3) if b is not None and math.isfinite(b[p]) else (
                "failed" if b is not None else "")
        )
    return out


def _csv(rows: Sequence[Mapping[str, Any]]) -> str:
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    return buf.getvalue()


def pareto_figure(found: Search, mc: Sequence[Mapping[str, Any]] | None = None) -> bytes:
    """The Pareto figure (PNG bytes): scan time vs worst-tissue Ktrans CV."""
    from matplotlib.figure import Figure

    from phantomdce.report.figures import figure_to_png

    t = found.scan_time()
    cv = found.worst_cv("Ktrans")
    fig = Figure(figsize=(8.0, 5.2), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    finite = np.isfinite(cv)
    esnr = np.array([c.esnr for c in found.candidates])
    ax.scatter(t[finite & ~esnr], cv[finite & ~esnr], s=4, c="0.75", lw=0,
               label="every candidate (bound)")
    ax.scatter(t[finite & esnr], cv[finite & esnr], s=5, c="#9ecae1", lw=0,
               label="candidates following every ESNR rule")
    free = pareto_front(t, cv, lambda i: True)
    ax.plot(t[free], cv[free], "--", color="0.45", lw=1,
            label="front of the bound alone (below the solid one: bias above the target)")
    f = found.front
    ax.plot(t[f], cv[f], "-o", color="#08519c", ms=3.5, lw=1.2,
            label="Pareto front (bias within target)")
    for c in found.target.of("cv"):
        if c.parameter == "Ktrans":
            ax.axhline(c.limit, color="#d62728", ls="--", lw=1, label=f"target: {c}")
    ax.axvline(found.budget_s, color="0.3", ls=":", lw=1,
               label=f"scan-time budget {found.budget_s:g} s")
    if found.esnr_index is not None:
        i = found.esnr_index
        ax.plot(t[i], cv[i], marker="*", ms=15, color="#2ca02c", mec="k", ls="none",
                label="ESNR protocol on this scanner")
    if found.site_index is not None:
        i = found.site_index
        ax.plot(t[i], cv[i], marker="D", ms=8, color="#ff7f0e", mec="k", ls="none",
                label="the site's protocol")
    for k, i in enumerate(found.chosen):
        ax.plot(t[i], cv[i], marker="o", ms=11, mfc="none", mec="k", mew=1.5, ls="none",
                label="chosen (bound)" if k == 0 else None)
        ax.annotate(str(k + 1), (t[i], cv[i]), xytext=(6, 6), textcoords="offset points")
        if mc is not None and k < len(mc):
            summ = mc_summary(mc[k], "Ktrans", found.bound_worst_tissue(i))
            m, se = summ["cv_at_bound_tissue_pct"], summ["cv_se_pct"]
            ax.errorbar(t[i], m, yerr=1.96 * se, fmt="s", color="#6a3d9a", ms=5, capsize=3,
                        label="Monte Carlo (95% CI)" if k == 0 else None)
    top = np.nanpercentile(cv[finite], 98) if finite.any() else 1.0
    ax.set_ylim(0, max(top, *(c.limit * 1.3 for c in found.target.of("cv")), 1.0))
    ax.set_xlabel("scan time: dynamic series + VFA images (s)")
    ax.set_ylabel("worst-tissue Ktrans CV (%), Cramér-Rao bound")
    ax.set_title(f"{found.site.name}: {len(found.candidates)} protocols of the scanner")
    ax.legend(fontsize=7, loc="upper right")
    ax.grid(alpha=0.3)
    return figure_to_png(fig)


def _mc_verdict(found: Search, row: Mapping[str, Any], i: int) -> str:
    """What the Monte Carlo says of the target: "meets", or each limit it exceeds."""
    fails = []
    for c in found.target.constraints:
        summ = mc_summary(row, c.parameter, found.bound_worst_tissue(i, c.parameter))
        value = summ["abs_bias_worst_pct"] if c.metric == "bias" else summ["cv_at_bound_tissue_pct"]
        if not value <= c.limit:
            what = "|bias|" if c.metric == "bias" else "CV"
            fails.append(f"{c.parameter} {what} {value:.3g}% > {c.limit:g}%")
    return "meets" if not fails else "fails: " + "; ".join(fails)


def _result_words(found: Search) -> str:
    if found.meets:
        return (
            f"{len(found.chosen)} protocol(s) meet the target ({found.target}) on every"
            f" tissue within {found.budget_s:g} s (predicted by the bound and the noise-free"
            " bias; the Monte-Carlo check is beside them)."
        )
    return (
        f"**No protocol of the space meets the target** ({found.target}) on every tissue"
        f" within {found.budget_s:g} s. The closest {len(found.chosen)} are shown (shortfall"
        " = the largest of value / limit over the constraints and scan time / budget; > 1"
        " fails)."
    )


def write_outputs(
    found: Search,
    out: Path,
    mc: Sequence[Mapping[str, Any]] | None,
    *,
    command: str,
    elapsed_s: float,
    replicates: int,
) -> dict[str, Any]:
    """Write the figure, tables, summary, HTML page and JSON record into ``out``."""
    import phantomdce
    from phantomdce.report.render import html_figure, html_page, html_table, md_table

    png = pareto_figure(found, mc)
    (out / "pareto.png").write_bytes(png)
    front_rows = [_row(found, i) for i in found.front]
    (out / "front.csv").write_text(_csv(front_rows), encoding="utf-8")
    all_rows = [_row(found, i) for i in range(len(found.candidates))]
    with gzip.open(out / "candidates.csv.gz", "wt", encoding="utf-8", newline="") as fh:
        fh.write(_csv(all_rows))

    best_rows = []
    for k, i in enumerate(found.chosen):
        r = _row(found, i)
        row = {"rank": k + 1, **r, "shortfall": round(found.shortfall(i), 3)}
        if mc is not None:
            for p in ("Ktrans", "ve", "vp"):
                summ = mc_summary(mc[k], p, found.bound_worst_tissue(i, p))
                row[f"{p}_cv_mc_pct"] = round(summ["cv_at_bound_tissue_pct"], 3)
                row[f"{p}_cv_mc_se_pct"] = round(summ["cv_se_pct"], 3)
                row[f"{p}_cv_mc_worst_pct"] = round(summ["cv_worst_pct"], 3)
                row[f"{p}_abs_bias_mc_pct"] = round(summ["abs_bias_worst_pct"], 3)
            row["mc_failure_rate"] = round(mc[k]["mc_failure_rate"], 4)
            row["mc_verdict"] = _mc_verdict(found, mc[k], i)
        best_rows.append(row)
    (out / "best.csv").write_text(_csv(best_rows), encoding="utf-8")

    header = ["#", "protocol", "scan time (s)", "dt (s)", "voxel (mm)", "SNR",
              "Ktrans CV bound (%)", "Ktrans CV MC, same tissue (%, 95% CI)", "disagreement",
              "Ktrans CV MC, worst tissue (%)", "Ktrans |bias| noise-free (%)",
              "Ktrans |bias| MC (%)", "meets (predicted)", "Monte Carlo"]
    best_table = []
    for k, i in enumerate(found.chosen):
        r = _row(found, i)
        bound = r["Ktrans_cv_bound_pct"]
        if mc is not None:
            summ = mc_summary(mc[k], "Ktrans", found.bound_worst_tissue(i))
            m, se = summ["cv_at_bound_tissue_pct"], summ["cv_se_pct"]
            mc_cv = f"{m:.3g} ± {1.96 * se:.2g}"
            dis = f"{100.0 * (m / bound - 1.0):+.0f}%" if bound else "n/a"
            mc_w = _fmt(summ["cv_worst_pct"])
            mc_b = _fmt(summ["abs_bias_worst_pct"])
            mc_says = _mc_verdict(found, mc[k], i)
        else:
            mc_cv, dis, mc_w, mc_b, mc_says = "not run", "", "not run", "not run", ""
        best_table.append([
            str(k + 1), r["label"], _fmt(r["scan_time_s"], 4), _fmt(r["dt_s"]), r["voxel_mm"],
            _fmt(r["snr"]), _fmt(bound), mc_cv, dis, mc_w, str(r["Ktrans_abs_bias_pct"]), mc_b,
            "yes" if found.meets else f"no (shortfall {found.shortfall(i):.2f})", mc_says,
        ])
    fheader = ["protocol", "scan time (s)", "dt (s)", "voxel (mm)", "SNR", "R", "fa (deg)",
               "VFA (deg) x avg", "Ktrans CV bound (%)", "ve CV (%)", "Ktrans |bias| (%)",
               "ESNR rules"]
    ftable = [
        [r["label"], _fmt(r["scan_time_s"], 4), _fmt(r["dt_s"]), r["voxel_mm"],
         _fmt(r["snr"]), f"{r['R']:g}", f"{r['fa_deg']:g}",
         f"{r['vfa_deg']} x{r['vfa_averages']}", _fmt(r["Ktrans_cv_bound_pct"]),
         _fmt(r["ve_cv_bound_pct"]), str(r["Ktrans_abs_bias_pct"]),
         "yes" if r["esnr"] else "no"]
        for r in front_rows
    ]
    (out / "front.md").write_text(
        f"# Pareto front of {found.site.name}\n\n" + md_table(fheader, ftable) + "\n",
        encoding="utf-8",
    )
    marks = []
    for what, i in (("the site's protocol", found.site_index),
                    ("the ESNR protocol on this scanner", found.esnr_index)):
        if i is None:
            marks.append([what, "not in the space", "", "", "", ""])
            continue
        r = _row(found, i)
        marks.append([what, r["label"], _fmt(r["scan_time_s"], 4), _fmt(r["dt_s"]),
                      _fmt(r["Ktrans_cv_bound_pct"]), str(r["Ktrans_abs_bias_pct"])])
    mheader = ["", "protocol", "scan time (s)", "dt (s)", "Ktrans CV bound (%)",
               "Ktrans |bias| noise-free (%)"]
    tm = found.timings
    sp = found.space.describe()
    facts = [
        ("site", found.site.name),
        ("target", f"{found.target} on every tissue ({found.site.tissue.size} tissues)"),
        ("scan-time budget", f"{found.budget_s:g} s (dynamic + VFA)"),
        ("voxel limit", "none" if found.max_voxel_mm3 is None
         else f"<= {found.max_voxel_mm3:g} mm3"),
        ("command", command),
        ("time", f"{elapsed_s:.1f} s (space {tm['space_s']:.1f} s, bound"
                 f" {tm['bound_s']:.1f} s, bias {tm['bias_s']:.1f} s for"
                 f" {int(tm['bias_fits'])} noise-free fits, Monte Carlo"
                 f" {tm.get('mc_s', 0.0):.1f} s)"),
        ("phantomdce", phantomdce.__version__),
    ]
    n_voxel = sum("--max-voxel-mm3" in why for _, why in found.refused)
    space_words = (
        f"{len(found.candidates)} candidate protocols ({n_voxel} combinations left out by the"
        f" voxel limit, {len(found.refused) - n_voxel} refused as invalid protocols):"
        " readout matrix "
        f"{sp['matrix_read']} (phase at the site's ratio), slices {sp['slices']} at the"
        f" site's slab, R {sp['parallel_factor']} (g-factors {sp['g_factors']}, scaled to the"
        f" site's g at its R: an assumption), dynamic flip angle {sp['fa_deg']} deg, VFA sets"
        f" {sp['vfa_flip_angles_deg']} deg with {sp['vfa_averages']} averages, duration"
        f" {sp['duration_s']} s. TR, bandwidth, partial Fourier and field are the site's."
    )
    kinds = {
        "two_step": "two-step (T10 from the VFA images, then the dynamic fit)",
        "joint": "joint (VFA and dynamic data fitted together)",
        "joint_shared_m0": "joint with one M0 for both series",
        "baseline_m0": "T10 known, M0 from the baseline",
        "known": "T10 and M0 known",
    }
    note = f"; {found.bound_note}" if found.bound_note else ""
    method = (
        f"CV: the {kinds.get(found.bound, found.bound)} Cramér-Rao bound"
        f" (phantomdce.precision), the one matching the site's fitter {found.site.fitter},"
        f" on the worst tissue{note}. Bias: the site's fitter and pipeline on noise-free data"
        " (sampling, T1-mapping and model bias); it leaves out the bias noise itself causes"
        " and the spread over bolus-arrival phases, which the Monte Carlo"
        f" ({replicates} replicates per tissue through the engine) measures."
    )
    md = [
        f"# Protocol design for {found.site.name}",
        "",
        *[f"- **{k}**: {v}" for k, v in facts],
        "",
        _result_words(found),
        "",
        "![Pareto front](pareto.png)",
        "",
        "## The chosen protocols: bound beside Monte Carlo",
        "",
        md_table(header, best_table),
        "",
        "Disagreement = Monte-Carlo CV / bound - 1 on the tissue where the bound is largest"
        " (the bound is a lower limit for an unbiased estimator; a fitter that is not"
        " efficient, or biased at this SNR, departs from it). The Monte-Carlo worst tissue"
        " is the largest of the tissues' noisy CVs, so it reads high. All biases and CVs are"
        " of the worst tissue of the grid. The last column judges the target on the"
        " Monte-Carlo numbers (CV on the bound's worst tissue, the largest |bias|).",
        "",
        md_table(mheader, marks),
        "",
        "## Method and search space",
        "",
        method,
        "",
        space_words,
        "",
        f"## Pareto front ({len(found.front)} protocols; front.csv, front.md)",
        "",
        md_table(fheader, ftable),
        "",
    ]
    (out / "summary.md").write_text("\n".join(md), encoding="utf-8")
    body = "\n".join([
        f"<p>{_result_words(found).replace('**', '')}</p>",
        html_figure(png, "Scan time against the worst-tissue Ktrans CV bound of every"
                    " candidate; the front of those whose bias meets the target."),
        "<h2>The chosen protocols: bound beside Monte Carlo</h2>",
        html_table(header, best_table),
        html_table(mheader, marks),
        "<h2>Method and search space</h2>",
        f"<p>{method}</p><p>{space_words}</p>",
        f"<h2>Pareto front ({len(found.front)} protocols)</h2>",
        html_table(fheader, ftable),
    ])
    (out / "index.html").write_text(
        html_page(f"Protocol design for {found.site.name}", facts, body), encoding="utf-8"
    )
    record = {
        "site": found.site.name,
        "target": found.target.text,
        "constraints": [dataclasses.asdict(c) for c in found.target.constraints],
        "scan_time_budget_s": found.budget_s,
        "max_voxel_mm3": found.max_voxel_mm3,
        "bound_kind": found.bound,
        "bound_note": found.bound_note,
        "meets": found.meets,
        "chosen": best_rows,
        "front": [found.candidates[i].label for i in found.front],
        "site_protocol": None if found.site_index is None else _row(found, found.site_index),
        "esnr_protocol": None if found.esnr_index is None else _row(found, found.esnr_index),
        "space": sp,
        "n_candidates": len(found.candidates),
        "n_refused": len(found.refused),
        "timings_s": {**found.timings, "total_s": elapsed_s},
        "command": command,
        "phantomdce_version": phantomdce.__version__,
    }
    (out / MARKER).write_text(json.dumps(record, indent=1, default=str), encoding="utf-8")
    return record


def _prepare(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"-o {out}: exists and is a file; expected a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).exists():
        raise ConfigError(
            f"-o {out}: not empty and holds no optimise output; choose an empty or new folder"
        )
    out.mkdir(parents=True, exist_ok=True)


def optimise(
    site_path: str | Path,
    target: str,
    scan_time_s: float,
    out: str | Path,
    *,
    replicates: int = DEFAULT_REPLICATES,
    seed: int = DEFAULT_SEED,
    g_factors: str | None = None,
    monte_carlo: bool = True,
    max_voxel_mm3: float | None = None,
    space_path: str | Path | None = None,
    command: str = "",
) -> dict[str, Any]:
    """Run the whole optimisation and write its output (see the module docstring).

    ``space_path``: a TOML file whose keys replace knobs of the default space
    (:meth:`phantomdce.design.space.Space.from_mapping`: ``matrix_read``, ``slices``,
    ``parallel_factor``, ``fa``, ``vfa_flip_angles``, ``vfa_averages``, ``duration``).

    Returns
    -------
    dict
        The record written to ``optimise.json``.
    """
    from phantomdce.design.site import load_site

    t0 = time.perf_counter()
    goal = parse_target(target)
    site = load_site(site_path)
    if replicates < 2:
        raise ConfigError(f"--replicates = {replicates!r}: expected an integer >= 2")
    out = Path(out)
    _prepare(out)
    space = None
    if site.scanner is not None and (g_factors is not None or space_path is not None):
        space = default_space(site.scanner, site.protocol)
        if space_path is not None:
            text = Path(space_path).read_text(encoding="utf-8")
            raw = parse_toml(text, source=f"--space {space_path}")
            space = Space.from_mapping(raw, base=space, path="space")
        if g_factors is not None:
            space = dataclasses.replace(space, g_factors=parse_g_factors(g_factors))
    found = search(site, goal, float(scan_time_s), space=space, max_voxel_mm3=max_voxel_mm3)
    mc = None
    if monte_carlo and found.chosen:
        t_mc = time.perf_counter()
        mc = confirm(site, [found.candidates[i].protocol for i in found.chosen], out / "mc",
                     replicates=replicates, seed=seed)
        found.timings["mc_s"] = time.perf_counter() - t_mc
    return write_outputs(found, out, mc, command=command or "phantomdce optimise",
                         elapsed_s=time.perf_counter() - t0, replicates=replicates)


# -- command line ------------------------------------------------------------------------------


def _cmd(args: Any) -> int:
    command = "phantomdce " + " ".join(getattr(args, "argv", []) or [])
    rec = optimise(
        args.site,
        args.target,
        args.scan_time,
        args.output,
        replicates=args.replicates,
        seed=args.seed,
        g_factors=args.g_factors,
        monte_carlo=not args.no_monte_carlo,
        max_voxel_mm3=args.max_voxel_mm3,
        space_path=args.space,
        command=command.strip(),
    )
    verdict = "meets the target" if rec["meets"] else "NO protocol meets the target; closest"
    print(f"optimise {rec['site']}: {rec['n_candidates']} protocols; {verdict}:")
    for row in rec["chosen"]:
        mc = row.get("Ktrans_cv_mc_pct")
        mc_txt = (f", Monte Carlo {mc:.3g}% ({row['mc_verdict']})" if mc is not None else "")
        print(
            f"  {row['rank']}. {row['label']}: scan {row['scan_time_s']:.0f} s, Ktrans CV"
            f" bound {row['Ktrans_cv_bound_pct']:.3g}%{mc_txt}, |bias| noise-free"
            f" {row['Ktrans_abs_bias_pct']}%"
        )
    print(f"  in {rec['timings_s']['total_s']:.1f} s; {Path(args.output) / 'index.html'}")
    return 0


def add_parser(sub: Any) -> None:
    """Add the ``optimise`` subcommand to the CLI's subparsers."""
    p = sub.add_parser(
        "optimise",
        help="search a site's scanner protocols for the best one meeting a target",
    )
    p.add_argument("site", help="SITE.toml with a [scanner] table")
    p.add_argument(
        "--target",
        required=True,
        help="limits on the worst tissue, e.g. 'Ktrans:bias<=5,cv<=10; ve:cv<=20'"
        " (bias: |relative bias| %%, cv: CV %%)",
    )
    p.add_argument("--scan-time", required=True, type=float,
                   help="scan-time budget, s (dynamic series + VFA images)")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--replicates", type=int, default=DEFAULT_REPLICATES,
                   help="Monte-Carlo noise replicates per tissue of the confirmation")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the confirmation")
    p.add_argument("--g-factors", default=None,
                   help="g-factor at each acceleration, 'R:g,...' (default"
                        " 1:1,2:1.1,3:1.3,4:1.6, scaled to the site's g)")
    p.add_argument("--max-voxel-mm3", type=float, default=None,
                   help="largest voxel volume accepted, mm3 (default: no limit)")
    p.add_argument("--space", default=None, metavar="SPACE.toml",
                   help="knob values replacing the default space's (matrix_read, slices,"
                        " parallel_factor, fa, vfa_flip_angles, vfa_averages, duration)")
    p.add_argument("--no-monte-carlo", action="store_true",
                   help="skip the Monte-Carlo confirmation")
    p.set_defaults(func=_cmd)
