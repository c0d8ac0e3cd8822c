"""The docstring examples run with the default ``pytest``; importing the package stays light.

The examples themselves run through ``--doctest-modules`` over ``src/phantomdce`` (see
``[tool.pytest.ini_options]`` in pyproject.toml): no hand-kept list of modules.
"""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "phantomdce"


def test_every_module_with_examples_is_collected_by_the_default_pytest():
    with_examples = {
        p.relative_to(ROOT).as_posix() for p in SRC.rglob("*.py") if ">>> " in p.read_text()
    }
    assert len(with_examples) >= 5  # aif, kinetics, signal, noise, fit.t1 at least
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "src"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    collected = {line.split("::")[0] for line in out.stdout.splitlines() if "::" in line}
    missing = sorted(with_examples - collected)
    assert not missing, f"docstring examples not run by pytest: {missing}\n{out.stdout[-2000:]}"


def test_import_is_light():
    code = "import sys, phantomdce; print(any(m in sys.modules for m in ('matplotlib', 'dask')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
