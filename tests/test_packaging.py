"""Packaging metadata (issue 12 item 11): an SPDX license string, and a build without
deprecation warnings from the build backend."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_license_is_an_spdx_string_with_its_file() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT"
    for name in project["license-files"]:
        assert (ROOT / name).is_file(), name
    assert "MIT License" in (ROOT / "LICENSE").read_text()


@pytest.mark.slow
def test_building_the_package_prints_no_warnings(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0 and "No matching distribution" in done.stderr:
        pytest.skip("no package index reachable for the build backend")
    assert done.returncode == 0, done.stderr[-2000:]
    log = done.stdout + done.stderr
    complaints = re.findall(r".*(?:Deprecat|BuildBackendWarning|SetuptoolsWarning).*", log)
    assert complaints == []
    assert list(tmp_path.glob("parallel_orchestrator-*.whl"))
