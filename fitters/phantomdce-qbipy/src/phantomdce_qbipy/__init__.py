"""phantomdce-qbipy: QbiPy (Madym's Python tools) as phantomdce plug-in fitters.

Register with phantomdce through the entry point ``phantomdce.fitters``
(``qbipy = "phantomdce_qbipy:all_fitters"``).
"""

from phantomdce_qbipy.fitters import (
    NLLS_SPECS,
    QBIPY_VERSION,
    VERSION,
    ParamSpec,
    QbiPyFitter,
    all_fitters,
    qbipy_aif,
    to_phantomdce,
    unfittable,
)

__version__ = VERSION

__all__ = [
    "NLLS_SPECS",
    "QBIPY_VERSION",
    "ParamSpec",
    "QbiPyFitter",
    "all_fitters",
    "qbipy_aif",
    "to_phantomdce",
    "unfittable",
    "__version__",
]
