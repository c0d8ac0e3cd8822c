"""phantomdce-curvefit: textbook per-voxel ``curve_fit`` fitters for phantomdce.

Register with phantomdce through the entry point ``phantomdce.fitters``
(``curvefit = "phantomdce_curvefit:all_fitters"``), or name one fitter by spec, e.g.
``"phantomdce_curvefit:CurveFitExtendedTofts"``.
"""

from phantomdce_curvefit.fitters import (
    DELAY_SETUP,
    LIMITS,
    MODEL_SETUP,
    UNDETERMINED_AT_LIMIT,
    VERSION,
    CurveFit2CUM,
    CurveFit2CXM,
    CurveFitExtendedTofts,
    CurveFitFitter,
    CurveFitPatlak,
    CurveFitTofts,
    ParameterSetup,
    all_fitters,
    limit_flags,
    shift_aif,
    undetermined_flags,
    unfittable,
)

__version__ = VERSION

__all__ = [
    "DELAY_SETUP",
    "MODEL_SETUP",
    "CurveFit2CUM",
    "CurveFit2CXM",
    "CurveFitExtendedTofts",
    "CurveFitFitter",
    "CurveFitPatlak",
    "CurveFitTofts",
    "ParameterSetup",
    "all_fitters",
    "shift_aif",
    "unfittable",
    "LIMITS",
    "limit_flags",
    "UNDETERMINED_AT_LIMIT",
    "undetermined_flags",
    "__version__",
]
