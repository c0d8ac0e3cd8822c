"""Run the examples in the public docstrings as doctests."""

import doctest
import importlib

import pytest

MODULES = [
    "phantomdce.aif",
    "phantomdce.kinetics",
    "phantomdce.signal",
    "phantomdce.noise",
    "phantomdce.fit.t1",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_import_is_light():
    import subprocess
    import sys

    code = "import sys, phantomdce; print(any(m in sys.modules for m in ('matplotlib', 'dask')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
