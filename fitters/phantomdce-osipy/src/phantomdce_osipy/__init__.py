"""phantomdce-osipy: osipy (the OSIPI perfusion library) as phantomdce plug-in fitters.

Register with phantomdce through the entry point ``phantomdce.fitters``
(``osipy = "phantomdce_osipy:all_fitters"``). osipy needs Python >= 3.12; this module
imports without it (see :mod:`phantomdce_osipy.fitters`).
"""

from phantomdce_osipy.fitters import (
    OSIPY_MODELS,
    VERSION,
    OsipyFitter,
    OsipyUnavailableError,
    all_fitters,
    limit_flags,
    osipy_version,
    to_phantomdce,
    unfittable,
)

__version__ = VERSION

__all__ = [
    "OSIPY_MODELS",
    "OsipyFitter",
    "OsipyUnavailableError",
    "all_fitters",
    "limit_flags",
    "osipy_version",
    "to_phantomdce",
    "unfittable",
    "__version__",
]
