"""One table of tracer-kinetic parameters and models.

Validation, docs, stored attributes and report labels read these tables instead of
restating names, units and bounds. Names follow the OSIPI lexicon.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

__all__ = ["PARAMETERS", "MODELS", "Parameter", "ModelSpec"]


@dataclass(frozen=True)
class Parameter:
    """A kinetic or relaxation parameter.

    Attributes
    ----------
    symbol : str
        Name used in data stores and APIs (OSIPI lexicon spelling).
    long_name : str
        Human-readable name.
    units : str
        Units the package uses for this parameter everywhere.
    lower, upper : float
        Physically admissible range (inclusive).

    """

    symbol: str
    long_name: str
    units: str
    lower: float
    upper: float


PARAMETERS = MappingProxyType(
    {
        "Ktrans": Parameter("Ktrans", "volume transfer constant", "/min", 0.0, 5.0),
        "kep": Parameter("kep", "efflux rate constant", "/min", 0.0, 100.0),
        "ve": Parameter("ve", "extravascular extracellular volume fraction", "1", 0.0, 1.0),
        "vp": Parameter("vp", "plasma volume fraction", "1", 0.0, 1.0),
        "fp": Parameter("fp", "plasma flow", "mL/100mL/min", 0.0, 1000.0),
        "ps": Parameter("ps", "permeability-surface area product", "/min", 0.0, 100.0),
        "T10": Parameter("T10", "native (pre-contrast) T1", "s", 0.0, 10.0),
        "delay": Parameter("delay", "arterial delay", "s", -60.0, 60.0),
    }
)


@dataclass(frozen=True)
class ModelSpec:
    """A tracer-kinetic model: its name and the parameters it is defined by."""

    name: str
    long_name: str
    parameters: tuple[str, ...]


MODELS = MappingProxyType(
    {
        "tofts": ModelSpec("tofts", "standard Tofts", ("Ktrans", "ve")),
        "extended_tofts": ModelSpec("extended_tofts", "extended Tofts", ("Ktrans", "ve", "vp")),
        "patlak": ModelSpec("patlak", "Patlak", ("Ktrans", "vp")),
        "2cxm": ModelSpec("2cxm", "two-compartment exchange", ("fp", "ps", "ve", "vp")),
        "2cum": ModelSpec("2cum", "two-compartment uptake", ("fp", "ps", "vp")),
    }
)
