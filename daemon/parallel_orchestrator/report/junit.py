"""Reading JUnit XML reports: what a job's tests did, from a file nobody vouches for.

A report is written by whatever the script runs, in a worktree anyone with a branch can
change, so the parser treats it as hostile: defusedxml refuses entity declarations (the
billion-laughs expansion) and external entities (a report that pulls in ``~/.ssh/...``),
the size is capped before a byte is parsed (``stat``, then a read that stops at the cap),
only regular files are opened (a FIFO would block us), and the document is streamed with
``iterparse`` so a 50 MiB report never becomes a 500 MiB tree. Any problem is one
``JunitUnreadable`` naming the file; the caller logs ``junit_unreadable`` and the job keeps
the result its exit code gave.

Test ids are ``<classname>::<name>`` (just ``<name>`` when classname is empty); outcomes
are ``passed``, ``failed`` (a ``<failure>``), ``error`` (an ``<error>``) and ``skipped``.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import defusedxml
import defusedxml.ElementTree as SafeET

from ..errors import OrchestratorError

MAX_REPORT_BYTES = 50 * 1024 * 1024
MAX_EVENT_FAILING = 20  # ids in job_finished
MAX_CELL_FAILING = 50  # {"id", "message"} in the status cell
MAX_MESSAGE_CHARS = 500
# A test id travels whole into job_finished (20 of them), the status cell (50) and every
# status rewrite; a report naming tests by the megabyte must not take them along. Longer
# ids keep their start and gain a digest of the whole: the same test gets the same id in
# every hypothesis (``compare`` matches them) and two long ids stay two.
MAX_ID_CHARS = 1000
# Real reports nest suites a few levels deep; every open element is held until it ends,
# so a report of nothing but nested <testsuite> (cheap to write) would cost the daemon
# ~16 bytes of file per ~170 bytes of memory.
MAX_DEPTH = 256
OUTCOMES = ("passed", "failed", "error", "skipped")
# A testcase with several outcome children (pytest: a failing call plus a teardown error)
# takes the most telling one; a test id seen twice (two reports, reruns) likewise.
_SEVERITY = {"passed": 0, "skipped": 1, "error": 2, "failed": 3}
_CHILD_OUTCOME = {"failure": "failed", "error": "error", "skipped": "skipped"}
_READ_CHUNK = 64 * 1024


class JunitUnreadable(OrchestratorError):
    """A report that is not trusted: malformed, hostile, too large or not a file."""

    def __init__(self, path: Path, error: str) -> None:
        super().__init__(f"{os.fsdecode(path)}: {error}")
        self.path = path
        self.error = error


@dataclass
class TestReport:
    """Every test case's outcome plus the failure messages we keep (the first 50)."""

    outcomes: dict[str, str] = field(default_factory=dict)
    messages: dict[str, str] = field(default_factory=dict)

    def add(self, test_id: str, outcome: str, message: str | None) -> None:
        old = self.outcomes.get(test_id)
        if old is not None and _SEVERITY[old] >= _SEVERITY[outcome]:
            return
        self.outcomes[test_id] = outcome
        keep = test_id in self.messages or len(self.messages) < MAX_CELL_FAILING
        if outcome in ("failed", "error") and message is not None and keep:
            self.messages[test_id] = message

    def merge(self, other: TestReport) -> None:
        for test_id, outcome in other.outcomes.items():
            self.add(test_id, outcome, other.messages.get(test_id, ""))

    def counts(self) -> dict[str, int]:
        tally = dict.fromkeys(OUTCOMES, 0)
        for outcome in self.outcomes.values():
            tally[outcome] += 1
        return {
            "total": len(self.outcomes),
            "passed": tally["passed"],
            "failed": tally["failed"],
            "errors": tally["error"],
            "skipped": tally["skipped"],
        }

    def failing_ids(self) -> list[str]:
        """Failed and errored ids in report order."""
        return [t for t, o in self.outcomes.items() if o in ("failed", "error")]

    def event_summary(self) -> dict[str, Any]:
        """``tests`` of ``job_finished``: counts and the first 20 failing ids."""
        return {**self.counts(), "failing": self.failing_ids()[:MAX_EVENT_FAILING]}

    def cell_summary(self) -> dict[str, Any]:
        """``tests`` of a status cell: counts and up to 50 ``{"id", "message"}``."""
        failing = [
            {"id": t, "message": self.messages.get(t, "")}
            for t in self.failing_ids()[:MAX_CELL_FAILING]
        ]
        return {**self.counts(), "failing": failing}


def test_id(classname: str | None, name: str | None) -> str:
    classname = (classname or "").strip()
    name = (name or "").strip()
    found = f"{classname}::{name}" if classname else name
    if len(found) <= MAX_ID_CHARS:
        return found
    digest = hashlib.sha256(found.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    return f"{found[:MAX_ID_CHARS]}...{digest}"


def failure_message(element: ET.Element) -> str:
    """The ``message`` attribute, else the first non-blank line of the text; <= 500 chars."""
    message = (element.get("message") or "").strip()
    if not message:
        text = element.text or ""
        message = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return message[:MAX_MESSAGE_CHARS]


class _CappedReader:
    """A file that refuses to yield more than ``limit`` bytes (the file may grow after
    ``stat``: the cap is enforced on what is actually read)."""

    def __init__(self, f: IO[bytes], path: Path, limit: int) -> None:
        self._f, self._path, self._left = f, path, limit

    def read(self, size: int = -1) -> bytes:
        want = _READ_CHUNK if size is None or size < 0 else min(size, _READ_CHUNK)
        data = self._f.read(want)
        self._left -= len(data)
        if self._left < 0:
            raise JunitUnreadable(self._path, f"larger than {MAX_REPORT_BYTES} bytes")
        return data


def _open_regular(path: Path, limit: int) -> IO[bytes]:
    try:
        # O_NONBLOCK: opening a FIFO planted under the report's name must not hang us;
        # O_NOFOLLOW: a report is a file the job wrote, not a link to someone else's.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise JunitUnreadable(path, "a symbolic link (not followed)") from exc
        raise JunitUnreadable(path, f"cannot open: {exc.strerror or exc}") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise JunitUnreadable(path, "not a regular file")
        if st.st_size > limit:
            raise JunitUnreadable(path, f"larger than {limit} bytes ({st.st_size} bytes)")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _case_outcome(case: ET.Element) -> tuple[str, str | None]:
    outcome, message = "passed", None
    for child in case:
        found = _CHILD_OUTCOME.get(child.tag)
        if found is not None and _SEVERITY[found] > _SEVERITY[outcome]:
            outcome = found
            message = failure_message(child) if found in ("failed", "error") else None
    return outcome, message


def _forget_ended(parent: list[Any], batch: int = 256) -> None:
    """Count one more ended child of ``parent``; drop the ended ones in batches. (The
    parser runs ahead of the events, so the child that just ended is not the parent's
    last one: only the ended prefix may go.)"""
    parent[1] += 1
    if parent[1] >= batch:
        del parent[0][: parent[1]]
        parent[1] = 0


def parse_report(path: Path, limit: int = MAX_REPORT_BYTES) -> TestReport:
    """Every ``<testcase>`` of one report, however ``<testsuites>``/``<testsuite>`` nest.

    Raises ``JunitUnreadable`` for anything not to be trusted; blocking (run it off the
    event loop)."""
    report = TestReport()
    with _open_regular(path, limit) as f:
        source = _CappedReader(f, path, limit)
        try:
            # [element, how many of its children have ended]: ended children are a prefix
            # of its children (document order), dropped in slices to keep memory flat.
            open_elements: list[list[Any]] = []
            for event, element in SafeET.iterparse(source, events=("start", "end")):
                if event == "start":
                    if not open_elements and element.tag not in ("testsuites", "testsuite"):
                        raise JunitUnreadable(path, f"not a JUnit report (root <{element.tag}>)")
                    open_elements.append([element, 0])
                    if len(open_elements) > MAX_DEPTH:
                        raise JunitUnreadable(path, f"nested deeper than {MAX_DEPTH} elements")
                    continue
                open_elements.pop()
                if element.tag == "testcase":
                    outcome, message = _case_outcome(element)
                    case_id = test_id(element.get("classname"), element.get("name"))
                    report.add(case_id, outcome, message)
                if element.tag in ("testcase", "testsuite") and open_elements:
                    element.clear()
                    _forget_ended(open_elements[-1])
        except defusedxml.DefusedXmlException as exc:
            raise JunitUnreadable(path, f"refused: {type(exc).__name__}") from exc
        except ET.ParseError as exc:
            raise JunitUnreadable(path, f"malformed XML: {exc}") from exc
        except (OSError, ValueError, UnicodeError, RecursionError) as exc:
            raise JunitUnreadable(path, f"{type(exc).__name__}: {exc}") from exc
    return report


def parse_reports(paths: Iterable[Path]) -> tuple[TestReport | None, list[JunitUnreadable]]:
    """Merge the readable reports; ``None`` when any is unreadable (a report we cannot
    trust makes the counts untrustworthy too) or when there is none."""
    merged: TestReport | None = None
    problems: list[JunitUnreadable] = []
    for path in paths:
        try:
            report = parse_report(path)
        except JunitUnreadable as exc:
            problems.append(exc)
            continue
        if merged is None:
            merged = report
        else:
            merged.merge(report)
    return (None if problems else merged), problems
