"""The built-in fitters, registered under these names.

- ``nlls_<model>`` for every model, and ``nlls_<model>_delay`` (arterial delay fitted):
  batched Levenberg-Marquardt (:class:`phantomdce.fit.nlls.NLLSFitter`).
- ``llsq_tofts``, ``llsq_extended_tofts``, ``llsq_patlak``: linear least squares (Murase),
  :class:`phantomdce.fit.llsq.LLSQFitter`.
"""

from __future__ import annotations

from phantomdce.fit.llsq import LLSQ_MODELS, LLSQFitter
from phantomdce.fit.nlls import NLLSFitter
from phantomdce.params import MODELS

__all__ = ["builtin_fitters"]


def builtin_fitters() -> list:
    """Return one instance of every built-in fitter."""
    fitters: list = []
    for model in MODELS:
        fitters.append(NLLSFitter(model))
        fitters.append(NLLSFitter(model, fit_delay=True))
    fitters.extend(LLSQFitter(model) for model in LLSQ_MODELS)
    return fitters
