"""phantomdce-dcmri: the independent dcmri package as phantomdce plug-in fitters.

Register with phantomdce through the entry point ``phantomdce.fitters``
(``dcmri = "phantomdce_dcmri:all_fitters"``).
"""

from phantomdce_dcmri.fitters import (
    DCMRI_VERSION,
    FP_LIMIT,
    MODEL_MAP,
    VERSION,
    DcmriConcentrationTissue,
    DcmriFitter,
    ModelMapping,
    all_fitters,
    limit_flags,
    to_phantomdce,
    unfittable,
)

__version__ = VERSION

__all__ = [
    "DCMRI_VERSION",
    "MODEL_MAP",
    "DcmriConcentrationTissue",
    "DcmriFitter",
    "ModelMapping",
    "all_fitters",
    "to_phantomdce",
    "unfittable",
    "FP_LIMIT",
    "limit_flags",
    "__version__",
]
