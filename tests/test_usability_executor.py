"""The executor API as the README prints it (issue 12 items 2 and 10), on real scripts."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from parallel_orchestrator.async_test_executor import AsyncTestExecutor
from parallel_orchestrator.config import Hypothesis, TestResult
from parallel_orchestrator.test_executor import TestExecutor

README = Path(__file__).resolve().parent.parent / "README.md"


def add_script(worktree: Path, hid: str, body: str) -> None:
    path = worktree / ".falsification" / f"test_{hid}.sh"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)


def readme_executor_example() -> str:
    text = README.read_text()
    section = text[text.index("## Executor API") :]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, "README lost its executor example"
    return match.group(1)


def test_the_readme_example_runs_as_printed(tmp_path: Path) -> None:
    """Worktrees beside the repository, the example run from inside the repository."""
    (tmp_path / "repo").mkdir()
    add_script(tmp_path / "repo-h1", "h1", 'test "$(pwd)" = "$PO_WORKTREE"')
    add_script(tmp_path / "repo-h2", "h2", "exit 3")
    done = subprocess.run(
        [sys.executable, "-c", readme_executor_example()],
        cwd=tmp_path / "repo",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["h1 pass 0 0.6", "h2 fail 3 0.6"]


def test_relative_worktrees_mean_relative_to_the_callers_folder(
    tmp_path: Path, monkeypatch
) -> None:
    add_script(tmp_path / "trees" / "h1", "h1", 'echo "ran in $(pwd)"')
    monkeypatch.chdir(tmp_path)
    executor = TestExecutor()
    (result,) = executor.execute_parallel(
        [Hypothesis(id="h1", description="")], {"h1": Path("trees/h1")}
    )
    assert result.result is TestResult.PASS, result.error_message
    assert result.stdout.strip() == f"ran in {os.path.realpath(tmp_path / 'trees' / 'h1')}"
    assert result.worktree_path == "trees/h1"  # as given
    single = executor.execute_single(Hypothesis(id="h1", description=""), "trees/h1")
    assert single.result is TestResult.PASS, single.error_message
    missing = executor.execute_single(Hypothesis(id="h2", description=""), "trees/h1")
    assert missing.result is TestResult.ERROR and "not found" in missing.error_message


def test_calculate_confidence_is_still_a_method() -> None:
    executor = AsyncTestExecutor()
    assert executor._calculate_confidence(TestResult.TIMEOUT, 1.0) == 0.3
    assert executor._calculate_confidence(TestResult.ERROR, 100.0) == 0.2
    assert executor._calculate_confidence(TestResult.PASS, 4.9) == 0.6
    assert executor._calculate_confidence(TestResult.FAIL, 4.9) == 0.6
    assert executor._calculate_confidence(TestResult.PASS, 5.0) == 0.85
    assert executor._calculate_confidence(TestResult.FAIL, 30.0) == 0.85
