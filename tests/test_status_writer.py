"""StatusWriter in-process: a real status file on a real file system, a real event loop.

A write fails here because a plain file stands where the status file's folder should be
(root ignores permission bits, so a read-only folder would not fail a write).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import structlog
from structlog.testing import capture_logs

from parallel_orchestrator.report import statuswriter
from parallel_orchestrator.report.eventlog import configure_logging
from parallel_orchestrator.report.status import StatusBoard
from parallel_orchestrator.report.statuswriter import STATUS_RETRY_S, StatusWriter
from parallel_orchestrator.store.fence import fence, reset_fence


class Lines:
    """Stands in for the sd_notify socket: records each STATUS= line."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def status(self, line: str) -> None:
        self.lines.append(line)


def make_writer(path: Path) -> tuple[StatusBoard, StatusWriter, Lines]:
    configure_logging("info", None)
    board = StatusBoard(pid=1, version="t", config_path=None)
    board.set_hypotheses([("h1", "/w/h1", "b")], ["a"])
    board.set_daemon_state("idle")
    sink = Lines()
    log = structlog.get_logger()
    return board, StatusWriter(board, path=lambda: path, log=lambda: log, sink=sink), sink


async def wait_for(cond, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        await asyncio.sleep(0.02)
    return cond()


async def test_writes_the_board_and_forwards_a_changed_summary_once(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    board, writer, sink = make_writer(path)
    writer.write()
    writer.write()
    writer.flush()
    assert json.loads(path.read_text())["hypotheses"]["h1"]["scripts"]["a"]["state"] == "never_run"
    assert len(sink.lines) == 1  # the same summary is not sent twice
    assert board.mark_queued("h1", "a")
    writer.write()
    writer.flush()
    assert len(sink.lines) == 2
    assert json.loads(path.read_text())["summary"]["queued"] == 1


async def test_failure_logged_once_retried_and_recovery_reported(tmp_path: Path) -> None:
    blocker = tmp_path / "state"
    blocker.write_text("not a folder")
    path = blocker / "status.json"
    _board, writer, _sink = make_writer(path)
    with capture_logs() as logs:
        writer.flush()
        writer.write()
        writer.flush()  # same kind of failure: not logged again
        failed = [e for e in logs if e["event"] == "status_write_failed"]
        assert len(failed) == 1 and failed[0]["path"] == str(path)
        assert writer.error
        blocker.unlink()  # the cause goes away; the retry timer writes without being asked
        assert await wait_for(path.exists, timeout=STATUS_RETRY_S + 10)
        recovered = [e for e in logs if e["event"] == "status_write_recovered"]
    assert len(recovered) == 1
    assert recovered[0]["previous_error"] and recovered[0]["path"] == str(path)
    assert writer.error == ""
    writer.close()


async def test_before_write_refines_the_board_each_time(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    board = StatusBoard(pid=1, version="t", config_path=None)
    calls: list[int] = []
    writer = StatusWriter(
        board,
        path=lambda: path,
        log=structlog.get_logger,
        sink=Lines(),
        before_write=lambda: calls.append(1),
    )
    writer.write()
    writer.flush()
    assert calls == [1, 1]


async def test_requests_in_a_window_make_one_write_and_lines_follow_it(tmp_path: Path) -> None:
    """Coalescing: many requests, one write; a line given to ``write_then`` is emitted
    only once the write that shows its change has landed."""
    path = tmp_path / "status.json"
    board, writer, _sink = make_writer(path)
    seen: list[str] = []

    def emit() -> None:
        doc = json.loads(path.read_text())
        seen.append(doc["hypotheses"]["h1"]["scripts"]["a"]["state"])

    writer.write()  # after a quiet spell: written at once
    assert writer.writes == 1
    first_size = path.stat().st_size
    for _ in range(1000):
        board.mark_queued("h1", "a")
        writer.write()
    writer.write_then(emit)
    assert writer.writes == 1 and seen == []  # nothing yet: the window is open
    assert await wait_for(lambda: seen == ["queued"], timeout=5)
    assert writer.writes == 2 and writer.bytes_written == first_size + path.stat().st_size
    writer.write_then(emit)
    writer.flush()  # a pending write goes out at once
    assert writer.writes == 3 and seen == ["queued", "queued"]
    writer.close()  # nothing pending: no write
    assert writer.writes == 3


async def test_a_status_file_in_a_missing_repository_is_said_once_not_every_minute(
    tmp_path: Path, monkeypatch
) -> None:
    repo = tmp_path / "repo"
    path = repo / "out" / "status.json"
    fence(repo, [])
    # A plain failure is said again after REPEAT_LOG_EVERY_S; this one never is.
    monkeypatch.setattr(statuswriter, "REPEAT_LOG_EVERY_S", 0.0)
    try:
        _board, writer, _sink = make_writer(path)
        with capture_logs() as logs:
            for _ in range(3):
                writer.flush()
            failed = [e for e in logs if e["event"] == "status_write_failed"]
        assert len(failed) == 1 and "inside the missing repository" in failed[0]["error"]
        assert not repo.exists()
        writer.close()
    finally:
        reset_fence()
