"""Plug-in fitters that misbehave, for the engine's fault-isolation tests."""

import os
import time

import numpy as np

from phantomdce.fit.nlls import NLLSFitter


class _Base:
    version = "1.0"
    model = "extended_tofts"
    input = "concentration"
    method = "nlls"

    def _good(self, data):
        return NLLSFitter("extended_tofts").fit(data)


class Raises(_Base):
    name = "acme_raises"

    def fit(self, data):
        raise RuntimeError("acme solver exploded")


class ReturnsNaN(_Base):
    name = "acme_nan"

    def fit(self, data):
        out = self._good(data)
        out["Ktrans"][:] = np.nan
        return out


class WrongShape(_Base):
    name = "acme_shape"

    def fit(self, data):
        return self._good(data).isel(voxel=slice(0, 3))


class Hangs(_Base):
    name = "acme_hangs"

    def fit(self, data):
        time.sleep(3600)


class Degradable(_Base):
    """Accurate unless ACME_DEGRADE is set: then Ktrans is 20% high (a regression)."""

    name = "acme_et"

    def fit(self, data):
        out = self._good(data)
        if os.environ.get("ACME_DEGRADE"):
            out["Ktrans"] = out["Ktrans"] * 1.2
        return out


class NotADataset(_Base):
    name = "acme_int"

    def fit(self, data):
        return 42


def all_faulty():
    return [Raises(), ReturnsNaN(), WrongShape(), NotADataset()]
