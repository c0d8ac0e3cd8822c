"""phantomdce-pbrain: p-brain's kinetic models as phantomdce plug-in fitters.

Register with phantomdce through the entry point ``phantomdce.fitters``
(``pbrain = "phantomdce_pbrain:all_fitters"``).
"""

from phantomdce_pbrain.fitters import (
    KEP_GRID_PER_S,
    PBRAIN_VERSION,
    TISSUE_DENSITY_G_PER_ML,
    VERSION,
    PBrainFitter,
    all_fitters,
    per_100g_to_per_min,
    unfittable,
)

__version__ = VERSION

__all__ = [
    "KEP_GRID_PER_S",
    "PBRAIN_VERSION",
    "TISSUE_DENSITY_G_PER_ML",
    "PBrainFitter",
    "all_fitters",
    "per_100g_to_per_min",
    "unfittable",
    "__version__",
]
