"""Runs that test only part of a suite (pytest-testmon, ``--lf``): their reports merged
into the cell's per-test view.

A testmon run reports only the tests the change could affect. The cell's view is then:
tests in the new report take its outcome, the others keep their last one
(``results.merge_results``), and tests removed from the code disappear. "Removed" is
decided from the worktree, cheaply: a pytest id ``pkg.test_mod.Class::test_name[param]``
names a module file; when that file is gone, or no longer defines ``test_name``, the
test is dropped. Ids whose file cannot be found (another layout, another runner) are
kept: better a stale line than a lost failure.

Failure messages of kept failures come from the cell's previous ``tests`` summary.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .junit import TestReport
from .results import merge_results, read_results

# Options after which pytest reports only part of the suite.
PARTIAL_OPTIONS = ("--testmon", "--testmon-forceselect", "--lf", "--last-failed", "--picked")


def runs_partially(command: tuple[str, ...] | list[str]) -> bool:
    """Whether a script's command selects only some tests (so its reports are merged)."""
    return any(arg in PARTIAL_OPTIONS or arg.startswith("--testmon") for arg in command)


def merged_report(
    state_dir: Path,
    hypothesis: str,
    script: str,
    job_id: str,
    report: TestReport,
    worktree: Path,
    previous_cell_tests: Mapping[str, Any] | None,
) -> TestReport:
    """The cell's view after a partial run's ``report``. Blocking: reads files."""
    previous = read_results(state_dir, hypothesis, script)
    outcomes: dict[str, str] = merge_results(previous, job_id, report.outcomes)["tests"]
    kept = _still_defined(
        [t for t in outcomes if t not in report.outcomes], worktree, _DefinitionCache()
    )
    outcomes = {t: o for t, o in outcomes.items() if t in report.outcomes or t in kept}
    messages = {t: m for t, m in _previous_messages(previous_cell_tests).items() if t in outcomes}
    messages.update(report.messages)
    return TestReport(outcomes=outcomes, messages=messages)


def _previous_messages(cell_tests: Mapping[str, Any] | None) -> dict[str, str]:
    failing = cell_tests.get("failing") if isinstance(cell_tests, Mapping) else None
    if not isinstance(failing, list):
        return {}
    return {
        item["id"]: item.get("message") or ""
        for item in failing
        if isinstance(item, dict) and isinstance(item.get("id"), str)
    }


class _DefinitionCache:
    """Module text per candidate path, read once per merge."""

    def __init__(self) -> None:
        self.texts: dict[Path, str | None] = {}

    def text(self, path: Path) -> str | None:
        if path not in self.texts:
            try:
                self.texts[path] = path.read_text(encoding="utf-8", errors="replace")
            except OSError:
                self.texts[path] = None
        return self.texts[path]


def _still_defined(test_ids: list[str], worktree: Path, cache: _DefinitionCache) -> set[str]:
    return {t for t in test_ids if _defined(t, worktree, cache)}


def _defined(test_id: str, worktree: Path, cache: _DefinitionCache) -> bool:
    classname, sep, name = test_id.partition("::")
    parts = [p for p in classname.split(".") if p]
    if not sep or not name or not parts:
        return True  # not a pytest id: cannot tell
    function = re.escape(re.sub(r"\[.*\]$", "", name))
    for i in range(len(parts), 0, -1):
        text = cache.text(worktree.joinpath(*parts[:i]).with_suffix(".py"))
        if text is not None:
            return re.search(rf"^\s*(?:async\s+)?def\s+{function}\s*\(", text, re.M) is not None
    # No module file: removed if its package folder is here (tests/ without test_x.py),
    # unknown (kept) if the id does not follow this worktree's layout at all.
    return not (worktree / parts[0]).is_dir()
