"""After a job: find the JUnit reports it wrote, read them, keep the per-test outcomes.

A job's reports are the file at ``PO_JUNIT_XML`` / ``{junit}`` (fresh for every job) and
the files its script's ``junit`` globs match under the worktree that were written during
the job (mtime at or after its start: a report left by an earlier run says nothing about
this one). Everything here blocks (globbing, parsing): the daemon runs it in a thread.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .junit import JunitUnreadable, TestReport, parse_reports
from .results import merge_results, read_results, remove_results, results_document, write_results

# File systems stamp mtimes from a coarse clock (a jiffy behind ``time.time()``): a report
# written in the job's first milliseconds may look a little older than the job.
MTIME_SLACK_S = 0.05
MAX_GLOB_MATCHES = 1000  # a glob like "**/*.xml" in a huge tree must not read them all
MAX_GLOB_SCAN = 20000  # ... nor list a million paths


@dataclass
class CollectedTests:
    report: TestReport | None = None
    problems: list[JunitUnreadable] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)


def _matches(worktree: Path, pattern: str) -> list[Path]:
    try:
        return list(itertools.islice(worktree.glob(pattern), MAX_GLOB_SCAN))
    except (OSError, ValueError):
        return []  # the worktree vanished, or a pattern pathlib cannot take: no reports


def _glob_reports(worktree: Path, globs: Sequence[str], since: float) -> list[Path]:
    found: list[Path] = []
    seen: set[Path] = set()
    for pattern in globs:
        for path in _matches(worktree, pattern):
            if len(found) >= MAX_GLOB_MATCHES:
                return found
            if path in seen or path.is_symlink():
                continue
            try:
                st = path.stat()
            except OSError:
                continue
            if path.is_file() and st.st_mtime >= since - MTIME_SLACK_S:
                seen.add(path)
                found.append(path)
    return sorted(found)


def report_paths(
    job_report: Path | None, worktree: Path, globs: Sequence[str], started_at: float
) -> list[Path]:
    """The reports this job wrote: its own ``{junit}`` file (when written) and the fresh
    files matching the script's ``junit`` globs."""
    paths: list[Path] = []
    if job_report is not None and os.path.lexists(job_report):
        paths.append(job_report)
    paths.extend(_glob_reports(worktree, globs, started_at) if globs else [])
    return paths


def collect_tests(
    job_report: Path | None, worktree: Path, globs: Sequence[str], started_at: float
) -> CollectedTests:
    """Read every report of the job; ``report`` is None when there is none, or when one
    of them cannot be trusted (each such is in ``problems``)."""
    paths = report_paths(job_report, worktree, globs, started_at)
    if not paths:
        return CollectedTests(paths=paths)
    report, problems = parse_reports(paths)
    return CollectedTests(report=report, problems=problems, paths=paths)


def record_results(
    state_dir: Path,
    hypothesis: str,
    script: str,
    job_id: str,
    report: TestReport | None,
    *,
    partial: bool = False,
) -> None:
    """Keep the job's per-test outcomes for ``compare`` (raises OSError). No report: the
    cell has no test-level results any more. ``partial``: only some tests ran, merge with
    the previous list (``merge_results``)."""
    if report is None:
        remove_results(state_dir, hypothesis, script)
        return
    if partial:
        doc = merge_results(read_results(state_dir, hypothesis, script), job_id, report.outcomes)
    else:
        doc = results_document(job_id, report.outcomes)
    write_results(state_dir, hypothesis, script, doc)


def needs_reading(job_report: Path | None, globs: Sequence[str]) -> bool:
    """Whether there may be reports to read (one ``lstat``: cheap on the event loop)."""
    return bool(globs) or (job_report is not None and os.path.lexists(job_report))


def describe_problems(problems: Iterable[JunitUnreadable]) -> list[dict[str, str]]:
    return [{"path": os.fsdecode(p.path), "error": p.error} for p in problems]
