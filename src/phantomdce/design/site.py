"""A site: its protocol (plain keys or its scanner), tissue grid, fitter and pipeline.

A ``SITE.toml`` describes what one site acquires and how it analyses it::

    name = "example_site"
    description = "3 T neck protocol"

    [protocol]                 # plain protocol keys (phantomdce.dro.protocol), preset allowed
    preset = "esnr2022"
    dt = 4.0                   # s
    snr = 25.0

    [scanner]                  # optional: the acquisition (phantomdce.scanner); it sets the
    matrix = [192, 192]        # protocol keys it derives (dt, tr, fa, flip_angles,
    ...                        # field_strength, snr, vfa_sigma_ratio)

    [tissue]                   # optional: default the head-and-neck grid of the study
    model = "extended_tofts"
    Ktrans = [0.05, 0.1, 0.2, 0.4]

    [fit]                      # optional
    fitter = "nlls_extended_tofts"
    [fit.pipeline]
    t1 = "vfa_nonlinear"
    aif = "true"

Every bad value is refused with a :class:`~phantomdce.dro.config.ConfigError` naming its key
path, the value and what was expected. A plain ``[protocol]`` key that the ``[scanner]``
table sets is refused too, naming both. Units are the package's: times in s, angles in
degrees, Ktrans in /min, volume fractions 0-1.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from phantomdce.dro.config import ConfigError, as_str, read_toml, unknown_key
from phantomdce.dro.protocol import Protocol, preset
from phantomdce.dro.scenario import TissueGrid, check_name, parse_scenario

__all__ = [
    "DEFAULT_FITTER",
    "DEFAULT_PIPELINE",
    "HEAD_AND_NECK_TISSUE",
    "SITE_KEYS",
    "Site",
    "load_site",
    "parse_site",
]

#: Top-level keys of a site file.
SITE_KEYS = ("name", "description", "protocol", "scanner", "tissue", "fit")
#: Keys of a site's ``[fit]`` table.
FIT_KEYS = ("fitter", "pipeline")
#: The fitter a site is judged with unless it names another (the study's first fitter).
DEFAULT_FITTER = "nlls_extended_tofts"
#: The estimation pipeline unless the site sets one: T1 from a nonlinear fit of the VFA
#: images (nominal B1) and the AIF known exactly (``aif = "true"``, as in the study's tissue
#: scenarios: the result then has no AIF error; a site measuring its AIF in a carotid ROI
#: sets ``aif = "measured"``, and a population AIF ``aif = "population"``).
DEFAULT_PIPELINE: Mapping[str, Any] = MappingProxyType({"t1": "vfa_nonlinear", "aif": "true"})
#: The head-and-neck SCC tissue grid of the study (``scenarios/esnr2022/noise.toml``, the
#: same in every tissue scenario of the study): Ktrans /min, ve and vp 0-1, extended Tofts.
HEAD_AND_NECK_TISSUE: Mapping[str, Any] = MappingProxyType(
    {
        "model": "extended_tofts",
        "Ktrans": (0.05, 0.1, 0.2, 0.4),
        "ve": (0.1, 0.25, 0.4),
        "vp": (0.01, 0.03, 0.08),
    }
)


@dataclass(frozen=True)
class Site:
    """A validated site. Build it with :func:`load_site` or :func:`parse_site`.

    Attributes
    ----------
    name : str
        The site's name (a plain name: it names folders).
    protocol : Protocol
        The site's dynamic and VFA protocol; the keys a scanner derives (see
        ``Scanner.protocol_changes``) are applied when ``scanner`` is set.
    scanner : phantomdce.scanner.Scanner or None
        The site's scanner model (``[scanner]``), None for plain protocol keys.
    tissue : TissueGrid
        Tissues the site is assessed on (default :data:`HEAD_AND_NECK_TISSUE`).
    fitter : str
        Fitter the site uses (a registered name or ``module:attribute``; default
        :data:`DEFAULT_FITTER`).
    pipeline : dict
        The estimation pipeline's settings (:class:`phantomdce.fit.pipeline.Pipeline`
        keys; default :data:`DEFAULT_PIPELINE`: VFA nonlinear T1, the true AIF).
    source : dict
        The parsed TOML as given.
    description : str
        Free text.
    """

    name: str
    protocol: Protocol
    scanner: Any
    tissue: TissueGrid
    fitter: str = DEFAULT_FITTER
    pipeline: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_PIPELINE))
    source: dict[str, Any] = field(default_factory=dict)
    description: str = ""


def _table(path: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{path} = {value!r}: expected a table")
    return value


def _scanner(raw: Mapping[str, Any]) -> Any:
    try:
        from phantomdce.scanner import Scanner
    except ImportError:  # pragma: no cover - the scanner model ships with the package
        raise ConfigError(
            "scanner: this phantomdce has no scanner model (phantomdce.scanner); expected"
            " plain [protocol] keys instead"
        ) from None
    return Scanner.from_mapping(raw, path="scanner")


def _protocol(data: Mapping[str, Any]) -> tuple[Protocol, Any]:
    raw = dict(_table("protocol", data.get("protocol", {})))
    base = preset(as_str("protocol.preset", raw.pop("preset", "esnr2022")))
    scanner = None
    if "scanner" in data:
        scanner = _scanner(_table("scanner", data["scanner"]))
        changes = scanner.protocol_changes()
        both = [k for k in raw if k in changes]
        if both:
            k = both[0]
            raise ConfigError(
                f"protocol.{k} = {raw[k]!r}: the [scanner] table sets {k} (scanner gives"
                f" {changes[k]!r}); expected {k} only from [scanner], or no [scanner] table"
            )
        base = base.replace(path="scanner", **changes)
    protocol = Protocol.from_mapping(raw, base=base)
    protocol.check_post_bolus_window()
    return protocol, scanner


def _tissue(data: Mapping[str, Any]) -> TissueGrid:
    raw = data.get("tissue")
    if raw is None:
        raw = {k: list(v) if isinstance(v, tuple) else v for k, v in HEAD_AND_NECK_TISSUE.items()}
    _table("tissue", raw)
    # the scenario parser checks a tissue table (names the key path tissue.<key>)
    return parse_scenario({"tissue": dict(raw)}).tissue


def _fit(data: Mapping[str, Any], model: str) -> tuple[str, dict[str, Any]]:
    raw = _table("fit", data.get("fit", {}))
    for key in raw:
        if key not in FIT_KEYS:
            raise unknown_key("fit", key, FIT_KEYS)
    fitter = as_str("fit.fitter", raw.get("fitter", DEFAULT_FITTER))
    pipeline = dict(_table("fit.pipeline", raw.get("pipeline", dict(DEFAULT_PIPELINE))))
    from phantomdce.engine.config import FitConfig

    # the engine's own checks of the pipeline's keys and values and of the fitter's name (a
    # fitter of another model than the tissue's is allowed: its model error is measured)
    try:
        FitConfig.from_mapping({"fitters": [fitter], "pipeline": pipeline}, model=model)
    except ConfigError as exc:
        raise ConfigError(str(exc).replace("fit.fitters", "fit.fitter", 1)) from None
    return fitter, pipeline


def parse_site(data: Mapping[str, Any], default_name: str = "site") -> Site:
    """Validate a site given as a mapping (the parsed TOML).

    Parameters
    ----------
    data : mapping
        Keys of :data:`SITE_KEYS`: ``name``, ``description``, the tables ``protocol``
        (plain protocol keys, ``preset`` allowed, default ``"esnr2022"``), ``scanner``,
        ``tissue`` and ``fit`` (``fitter`` and a ``pipeline`` table).
    default_name : str, optional
        Name used when ``name`` is absent.

    Returns
    -------
    Site

    Raises
    ------
    ConfigError
        The first invalid key, naming its path, value and what was expected.
    """
    for key in data:
        if key not in SITE_KEYS:
            raise unknown_key("", key, SITE_KEYS)
    name = check_name("name", as_str("name", data.get("name", default_name)))
    description = data.get("description", "")
    if not isinstance(description, str):
        raise ConfigError(f"description = {description!r}: expected a string")
    protocol, scanner = _protocol(data)
    tissue = _tissue(data)
    fitter, pipeline = _fit(data, tissue.model)
    return Site(
        name=name,
        protocol=protocol,
        scanner=scanner,
        tissue=tissue,
        fitter=fitter,
        pipeline=pipeline,
        source=dict(data),
        description=description,
    )


def load_site(path: str | Path) -> Site:
    """Read and validate a ``SITE.toml`` file (see :func:`parse_site`).

    Raises
    ------
    ConfigError
        Invalid TOML or an invalid value (the message names the key path).
    FileNotFoundError
        The file does not exist.
    """
    path = Path(path)
    return parse_site(read_toml(path), default_name=path.stem)
