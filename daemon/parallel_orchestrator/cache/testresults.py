"""Test-level results inside a cache entry: a reused job shows the tests of the job it
reuses (counts, failing ids and messages, the per-test outcomes ``compare`` reads)."""

from __future__ import annotations

from typing import Any

from ..report.junit import OUTCOMES, TestReport


def results_of(report: TestReport | None) -> dict[str, Any] | None:
    """What an entry keeps of a job's tests (None: the job had no readable report)."""
    if report is None:
        return None
    return {"outcomes": dict(report.outcomes), "messages": dict(report.messages)}


def report_from(results: dict[str, Any] | None) -> TestReport | None:
    """The ``TestReport`` an entry's ``results`` describe; None when it has none or they
    are not in the expected shape (an entry written by another version)."""
    if not isinstance(results, dict):
        return None
    outcomes, messages = results.get("outcomes"), results.get("messages")
    if not isinstance(outcomes, dict) or not isinstance(messages, dict):
        return None
    return TestReport(
        outcomes={k: v for k, v in outcomes.items() if isinstance(k, str) and v in OUTCOMES},
        messages={k: v for k, v in messages.items() if isinstance(k, str) and isinstance(v, str)},
    )
