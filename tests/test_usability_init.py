"""`init` on the projects a new user has (issue 12 items 8 and 9), via the real CLI:
the interpreter written in full, top-level test modules, unittest projects."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

from harness import make_repo, run_cli

UNITTEST_MODULE = (
    "import unittest\n\n\nclass T(unittest.TestCase):\n"
    "    def test_ok(self):\n        self.assertEqual(1, 1)\n"
)


def init(repo: Path) -> tuple[dict, str]:
    done = run_cli("init", cwd=repo)
    assert done.returncode == 0, done.stderr
    config = tomllib.loads((repo / "parallel-orchestrator.toml").read_text())
    return config, done.stdout


def test_init_uses_the_repositorys_virtualenv_and_says_so(tmp_path: Path) -> None:
    repo, _ = make_repo(tmp_path, hypotheses=(), files={"tests/test_x.py": "def test_x(): pass\n"})
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(repo / ".venv")], check=True)
    config, out = init(repo)
    (script,) = config["scripts"]
    venv_python = os.fspath(repo / ".venv" / "bin" / "python")
    assert script["command"][:4] == [venv_python, "-m", "pytest", "-q"]
    assert f"python: {venv_python} (the repository's virtualenv .venv/)" in out


def test_init_without_a_virtualenv_writes_an_absolute_python3(tmp_path: Path) -> None:
    repo, _ = make_repo(tmp_path, hypotheses=(), files={"tests/test_x.py": "def test_x(): pass\n"})
    config, out = init(repo)
    python = config["scripts"][0]["command"][0]
    assert os.path.isabs(python) and os.access(python, os.X_OK)
    assert "python3" in os.path.basename(python)
    assert f"python: {python} (python3 on PATH" in out


def test_a_top_level_test_module_makes_a_pytest_project(tmp_path: Path) -> None:
    repo, _ = make_repo(
        tmp_path, hypotheses=(), files={"test_app.py": "def test_x(): assert True\n"}
    )
    config, out = init(repo)
    (script,) = config["scripts"]
    assert script["command"][1:4] == ["-m", "pytest", "-q"]
    assert "test_*.py at the top level" in out


def test_a_unittest_project_gets_python_m_unittest(tmp_path: Path) -> None:
    repo, _ = make_repo(
        tmp_path, hypotheses=(), files={"tests/test_app.py": UNITTEST_MODULE, "app.py": ""}
    )
    config, out = init(repo)
    (script,) = config["scripts"]
    # discovery only enters packages: tests/ has no __init__.py, so it is named
    assert script["command"][1:] == ["-m", "unittest", "discover", "-s", "tests"]
    assert "unittest project" in out
    done = run_cli("once", "--json", cwd=repo, env={"XDG_STATE_HOME": str(tmp_path / "st")})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Ran 1 test" in json.loads(done.stdout)["results"][0]["output_tail"]


def test_a_unittest_package_and_a_top_level_module_use_plain_discovery(tmp_path: Path) -> None:
    files = {"tests/__init__.py": "", "tests/test_app.py": UNITTEST_MODULE}
    repo, _ = make_repo(tmp_path / "a", hypotheses=(), files=files)
    assert init(repo)[0]["scripts"][0]["command"][1:] == ["-m", "unittest"]
    repo, _ = make_repo(tmp_path / "b", hypotheses=(), files={"test_app.py": UNITTEST_MODULE})
    assert init(repo)[0]["scripts"][0]["command"][1:] == ["-m", "unittest"]


def test_unittest_style_tests_run_by_pytest_stay_pytest(tmp_path: Path) -> None:
    files = {
        "tests/test_app.py": UNITTEST_MODULE,
        "tests/test_more.py": "import pytest\n\ndef test_x(): pass\n",
    }
    repo, _ = make_repo(tmp_path, hypotheses=(), files=files)
    assert init(repo)[0]["scripts"][0]["command"][1:4] == ["-m", "pytest", "-q"]
