"""The architecture's one direction, checked: truth never imports estimation, no private reach."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "phantomdce"

#: The truth side: simulation modules that make cases.
TRUTH_MODULES = [
    "phantomdce.aif",
    "phantomdce.kinetics",
    "phantomdce.signal",
    "phantomdce.noise",
    "phantomdce.scanner",
    "phantomdce.dro.scenario",
    "phantomdce.dro.simulate",
    "phantomdce.dro.store",
    "phantomdce.dro.nifti",
    "phantomdce.dro.boundary",
    "phantomdce.phantom.anatomy",
    "phantomdce.phantom.acquire",
    "phantomdce.phantom.store",
    "phantomdce.phantom.export",
    "phantomdce.phantom.dicom",
    "phantomdce.phantom.case",
]


def test_the_truth_side_loads_no_estimation_engine_or_report_module():
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in TRUTH_MODULES)
        + "bad = sorted(m for m in sys.modules if m.startswith(("
        "'phantomdce.fit', 'phantomdce.engine', 'phantomdce.report')))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_no_truth_module_imports_estimation_even_inside_a_function():
    """A deferred import (inside a function) loads estimation only when called: none either."""
    offences = []
    for module in TRUTH_MODULES:
        path = SRC.parent / (module.replace(".", "/") + ".py")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                if name.startswith(("phantomdce.fit", "phantomdce.engine", "phantomdce.report")):
                    offences.append(f"{module}: imports {name}")
    assert offences == []


@pytest.mark.slow
def test_phantomdce_simulate_loads_no_estimation_engine_or_report_module(tmp_path):
    """``phantomdce simulate`` of a DRO and of a phantom scenario stays on the truth side."""
    from test_engine import scenario as dro_scenario
    from test_phantom import PHANTOM_SCENARIO

    (tmp_path / "p.toml").write_text(
        PHANTOM_SCENARIO.format(name="sim").replace("[16, 96, 96]", "[8, 48, 48]")
    )
    dro = dro_scenario(tmp_path, replicates=2)
    for k, scenario in enumerate([dro, tmp_path / "p.toml"]):
        code = (
            "import sys\n"
            "from phantomdce.cli import main\n"
            f"assert main(['simulate', {str(scenario)!r}, '-o', {str(tmp_path / f'o{k}')!r},"
            " '-q']) == 0\n"
            "bad = sorted(m for m in sys.modules if m.startswith(("
            "'phantomdce.fit', 'phantomdce.engine', 'phantomdce.report')))\n"
            "print('LOADED', ','.join(bad))\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        )
        assert out.stdout.strip().splitlines()[-1] == "LOADED", scenario.name


def _parent(module: str) -> str:
    """The package a module belongs to (a package is its own)."""
    if (SRC.parent / module.replace(".", "/")).is_dir():
        return module
    return module.rsplit(".", 1)[0]


def test_no_module_imports_a_private_name_of_another_package():
    offences = []
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC.parent).with_suffix("")
        module = ".".join(rel.parts).removesuffix(".__init__")
        own = _parent(module)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom) or not node.module:
                continue
            if not node.module.startswith("phantomdce"):
                continue
            home = _parent(node.module)
            for alias in node.names:
                private = alias.name.startswith("_") and not alias.name.startswith("__")
                private_module = any(p.startswith("_") for p in node.module.split(".")[1:])
                if (private or private_module) and home != own:
                    offences.append(f"{module}: from {node.module} import {alias.name}")
    assert offences == []
