"""The report opened in a real browser (headless Chromium): slow, run with -m slow."""

import shutil
import subprocess
from pathlib import Path

import pytest

from phantomdce.cli import main

pytestmark = pytest.mark.slow

SCENARIO = """
name = "browser"
seed = 3
replicates = 4

[tissue]
model = "extended_tofts"
Ktrans = [0.1, 0.3]
ve = [0.2, 0.4]
vp = 0.03

[sweep]
dt = [2.0, 5.0, 10.0]

[fit]
fitters = ["nlls_extended_tofts", "llsq_extended_tofts"]

[recommendation]
id = "temporal_resolution"
title = "Temporal resolution"
text = "Temporal resolution should be <= 5 s"
knob = "dt"
knob_label = "temporal resolution (s)"
kind = "max"
threshold = 5.0
recommended = [5.0]
"""


def chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    pytest.skip("no Chromium on this machine (apt-get install chromium)")


def test_report_renders_in_headless_chromium(tmp_path):
    browser = chromium()
    scenario = tmp_path / "s.toml"
    scenario.write_text(SCENARIO)
    report = tmp_path / "report"
    assert (
        main(["run", str(scenario), "-o", str(tmp_path / "out"), "-q", "--report", str(report)])
        == 0
    )
    shot = tmp_path / "page.png"
    subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=1280,2000",
            f"--screenshot={shot}",
            (report / "index.html").as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 50_000
    # the page drew text and figures, not a blank or an error page
    dump = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            f"--user-data-dir={tmp_path / 'profile2'}",
            "--dump-dom",
            (report / "index.html").as_uri(),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    assert "Temporal resolution" in dump and "data:image/png;base64," in dump
    assert Path(report / "summary.md").exists()
