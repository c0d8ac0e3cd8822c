"""Data structures passed from the study results to the report (no heavy imports).

A study is a set of scenarios, one per recommendation. Each scenario file carries a
``[recommendation]`` table (see :class:`Recommendation`); its run's estimates are pooled by
the value of the swept knob (over nuisance axes such as the sampling phase) into
:class:`KnobRow` rows, and per tissue into :class:`TissueRow` rows for error maps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Recommendation", "KnobRow", "TissueRow", "RecommendationResult", "Criterion"]


@dataclass(frozen=True)
class Recommendation:
    """One recommendation of the guideline, as a scenario states it.

    Attributes
    ----------
    id : str
        Short identifier, e.g. ``"temporal_resolution"``.
    title : str
        Heading, e.g. ``"Temporal resolution"``.
    text : str
        The recommendation as the guideline words it (e.g. "<= 5 s").
    knob : str
        What the scenario sweeps: a protocol key (``"dt"``), ``"fitter"`` or a pipeline
        setting; rows are grouped by its value.
    knob_label : str
        Axis label with units, e.g. ``"temporal resolution (s)"``.
    kind : str
        ``"max"`` (the recommendation is an upper limit: smaller values are stricter),
        ``"min"`` (a lower limit: larger values are stricter), ``"category"`` or ``"range"``
        (a direction, e.g. "as low as possible": the verdict lists the values that meet).
    threshold : float or None
        The recommended limit for ``"max"``/``"min"`` knobs (drawn on the figures).
    recommended : list
        Knob values that follow the recommendation (for ``"category"``: the recommended
        categories; for ordered knobs: the recommended setting(s) to judge, e.g. ``[5.0]``).
    parameters : list of str
        Parameters judged (default Ktrans, ve, vp, kep).
    notes : str
        Free text shown under the verdict (e.g. what the literature reports).
    """

    id: str
    title: str
    text: str
    knob: str
    knob_label: str
    kind: str
    threshold: float | None
    recommended: list[Any]
    parameters: list[str] = field(default_factory=lambda: ["Ktrans", "ve", "vp", "kep"])
    notes: str = ""


@dataclass(frozen=True)
class Criterion:
    """Accuracy criterion per parameter, judged per tissue.

    Attributes
    ----------
    max_abs_rel_bias_pct : dict of str to float
        Largest admissible |relative bias| per parameter, % (default 10 % for Ktrans and ve).
    max_cv_pct : dict of str to float
        Largest admissible coefficient of variation per parameter, % (default 20 %).
    min_tissue_fraction : float
        On a scenario with a tissue grid, the fraction (0-1) of the grid's tissues for which
        every limit must hold at a setting (default 0.9: at least 90 % of the tissues). The
        pooled (grid-average) numbers must hold as well. Scenarios without a tissue grid
        (the neck phantom) are judged on the pooled numbers alone.
    """

    max_abs_rel_bias_pct: dict[str, float] = field(
        default_factory=lambda: {"Ktrans": 10.0, "ve": 10.0}
    )
    max_cv_pct: dict[str, float] = field(default_factory=lambda: {"Ktrans": 20.0, "ve": 20.0})
    min_tissue_fraction: float = 0.9

    def __post_init__(self) -> None:
        if not 0.0 < self.min_tissue_fraction <= 1.0:
            raise ValueError(
                f"criterion.min_tissue_fraction = {self.min_tissue_fraction!r}: expected a"
                " fraction in (0, 1]"
            )


@dataclass(frozen=True)
class KnobRow:
    """Metrics of one fitter and parameter at one knob value, pooled over nuisance axes.

    ``metrics`` holds the keys of :data:`phantomdce.engine.metrics.METRICS` computed over
    all pooled voxels (so ``cv_pct`` covers noise and the nuisance axes) plus
    ``rel_bias_ci_low`` and ``rel_bias_ci_high`` (bootstrap 95% CI of the relative bias, %),
    ``cv_noise_pct`` (CV over noise replicates alone: root mean square of the pooled cases'
    CVs, %) and ``rel_bias_case_min``/``rel_bias_case_max`` (the range of the pooled cases'
    relative biases, %). On the neck phantom with several subjects the bootstrap resamples
    subjects (the independent units), ``cv_subject_pct`` is the SD over subjects of each
    subject's mean relative error (%), and ``cv_pct`` adds it in quadrature: the spread
    between subjects is a nuisance axis like the others. ``noise_free`` (1 or 0) and
    ``tissue_grid`` (1 or 0) say whether the cases had noise and a tissue grid.
    """

    knob_value: Any
    fitter: str
    parameter: str
    metrics: dict[str, float]


@dataclass(frozen=True)
class TissueRow:
    """Mean relative error (%), CV (%) and failure rate of one tissue at one knob value.

    Pooled over the cases of the knob value (nuisance axes) like :class:`KnobRow`. ``n`` is
    the number of valid estimates; ``failure_rate`` (0-1) counts failed fits among the
    tissue's voxels (a parameter at a degenerate limit, ``at_limit_<param>`` with a
    non-finite value, is neither valid nor failed); ``tissue`` is the grid index. The
    standard errors let the verdict tell a tissue outside a limit from sampling noise.
    """

    knob_value: Any
    fitter: str
    parameter: str
    truth: dict[str, float]  # the tissue's true parameters, e.g. {"Ktrans": 0.1, "ve": 0.2}
    mean_rel_error_pct: float
    cv_pct: float
    n: int
    failure_rate: float = 0.0
    tissue: int = -1
    rel_bias_se_pct: float = float("nan")
    """Standard error of ``mean_rel_error_pct`` (SD of the relative errors / sqrt(n)), %."""
    cv_se_pct: float = float("nan")
    """Approximate standard error of ``cv_pct``, ``cv / sqrt(2 (n - 1))``, %."""


@dataclass
class RecommendationResult:
    """Everything the report shows for one recommendation."""

    recommendation: Recommendation
    scenario: str
    knob_values: list[Any]
    fitters: list[str]
    rows: list[KnobRow]
    tissues: list[TissueRow]
    scatter: dict[tuple[Any, str, str], tuple[list[float], list[float]]]
    """(knob value, fitter, parameter) -> (truth, estimate) samples for error-vs-truth plots."""
    figures: list[tuple[Path, str]] = field(default_factory=list)
    """Figures a run drew itself (PNG path, caption), e.g. the phantom's maps and AIF."""
    oracles: dict[str, tuple[str, str]] = field(default_factory=dict)
    """Error-budget entries: label -> (judged fitter label, pipeline stage set to its truth).

    Their rows are in ``rows`` but they are not in ``fitters`` and are never judged."""
    tissue_grid: bool = True
    """Whether the runs have a tissue grid (the per-tissue criterion applies)."""
