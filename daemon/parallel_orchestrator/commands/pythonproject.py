"""What ``init`` needs to know about a Python project: its interpreter and its runner.

Jobs run under systemd with a minimal PATH (and Debian has no ``python``), so a bare
``python`` in a generated command is a job that cannot start. The interpreter written
out is the one the project really uses: the repository's virtualenv when there is one,
else the absolute path of ``python3``.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
from pathlib import Path

VENV_FOLDERS = (".venv", "venv")
_IMPORTS_PYTEST = re.compile(r"^\s*(?:import|from)\s+pytest\b", re.MULTILINE)
_IMPORTS_UNITTEST = re.compile(r"^\s*(?:import|from)\s+unittest\b", re.MULTILINE)
_SCAN_FILES = 50  # test modules read to tell unittest from pytest
_SCAN_BYTES = 1 << 16


def project_python(repo: Path) -> tuple[str, str]:
    """(interpreter, why) for the project's commands.

    The venv's ``bin/python`` is kept as the link it is (resolving it would name the
    base interpreter and lose the venv's packages).
    """
    for folder in VENV_FOLDERS:
        candidate = repo / folder / "bin" / "python"
        if os.access(candidate, os.X_OK) and (repo / folder / "pyvenv.cfg").is_file():
            return os.fspath(candidate.absolute()), f"the repository's virtualenv {folder}/"
    found = shutil.which("python3")
    if found:
        why = "python3 on PATH; no .venv/ or venv/ in the repository"
        return _real_executable(os.path.abspath(found)), why
    return "python3", "python3 is not on PATH here: write the full path"


def _real_executable(python: str) -> str:
    """What ``python`` really runs: a pyenv/asdf shim on PATH only works with the shell's
    environment, so the interpreter is asked for its own path (``sys.executable``)."""
    try:
        done = subprocess.run(
            [python, "-c", "import sys; print(sys.executable)"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return python
    real = done.stdout.strip()
    return real if done.returncode == 0 and os.path.isabs(real) else python


def top_level_test_modules(repo: Path) -> list[Path]:
    return sorted(itertools.chain(repo.glob("test_*.py"), repo.glob("*_test.py")))


def _test_modules(repo: Path, folders: list[str]) -> list[Path]:
    found = top_level_test_modules(repo)
    for folder in folders:
        found += sorted(itertools.chain((repo / folder).rglob("test_*.py")))
        found += sorted((repo / folder).rglob("*_test.py"))
    return found[:_SCAN_FILES]


def uses_unittest(repo: Path, folders: list[str]) -> bool:
    """Test modules import unittest and none imports pytest (the caller has already
    found no pytest configuration): ``python -m unittest`` is how the project runs."""
    unittest_seen = False
    for module in _test_modules(repo, folders):
        try:
            with open(module, "rb") as f:
                text = f.read(_SCAN_BYTES).decode("utf-8", "replace")
        except OSError:
            continue
        if _IMPORTS_PYTEST.search(text):
            return False
        unittest_seen = unittest_seen or bool(_IMPORTS_UNITTEST.search(text))
    return unittest_seen


def unittest_command(repo: Path, python: str, folders: list[str]) -> list[str]:
    """``python -m unittest``; its discovery only enters packages, so a tests folder
    without ``__init__.py`` is named as the start directory instead."""
    if folders and not top_level_test_modules(repo):
        folder = folders[0]
        if not (repo / folder / "__init__.py").is_file():
            return [python, "-m", "unittest", "discover", "-s", folder]
    return [python, "-m", "unittest"]
