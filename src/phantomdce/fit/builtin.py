"""The built-in fitters, registered under these names.

- ``nlls_<model>`` for every model, and ``nlls_<model>_delay`` (arterial delay fitted):
  batched Levenberg-Marquardt (:class:`phantomdce.fit.nlls.NLLSFitter`).
- ``llsq_tofts``, ``llsq_extended_tofts``, ``llsq_patlak``: linear least squares (Murase),
  :class:`phantomdce.fit.llsq.LLSQFitter`.
- ``nlls_<model>_joint`` and ``nlls_<model>_joint_shared_m0`` for the Tofts, extended Tofts
  and Patlak models: the VFA images and the dynamic signal fitted together (input
  ``"signal"``), :class:`phantomdce.fit.joint.JointFitter`; the shared-M0 variant assumes
  both series share coil, receiver gain, TR and voxel.

Every fitter but the joint ones takes the pipeline's concentration (input
``"concentration"``); the engine hands each fitter the pipeline's output, which holds the
measured signals too (:meth:`phantomdce.fit.pipeline.Pipeline.__call__`).
"""

from __future__ import annotations

from phantomdce.fit.joint import joint_fitters
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
    fitters.extend(joint_fitters())
    return fitters
