"""events.jsonl: every log line kept in the state dir, bounded by rotation; ``logs`` reads it
(and follows it across a rotation)."""

from __future__ import annotations

import json
import stat
import threading
from pathlib import Path
from typing import Any

import pytest

from parallel_orchestrator.report.eventlog import (
    EventHistory,
    configure_logging,
    get_logger,
    keep_event_history,
    reset_logging,
)
from parallel_orchestrator.report.logview import (
    EventFilter,
    follow_events,
    format_event,
    last_events,
)


@pytest.fixture(autouse=True)
def _reset() -> Any:
    yield
    reset_logging()


def test_history_gets_every_line_whatever_the_log_file(tmp_path: Path) -> None:
    configure_logging("info", tmp_path / "elsewhere.log")
    keep_event_history(tmp_path / "state" / "events.jsonl")
    get_logger().info("job_finished", hypothesis="h", script="s", result="pass", duration_s=1.5)
    history = tmp_path / "state" / "events.jsonl"
    assert stat.S_IMODE(history.stat().st_mode) == 0o600
    assert history.read_text() == (tmp_path / "elsewhere.log").read_text()
    configure_logging("info", None)  # a reload of the log settings keeps the history
    get_logger().info("daemon_stopped", reason="x")
    assert [json.loads(x)["event"] for x in history.read_text().splitlines()] == [
        "job_finished",
        "daemon_stopped",
    ]


def test_rotation_keeps_at_most_two_files(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    history = EventHistory(path, max_bytes=1000)
    for i in range(100):
        history.append(json.dumps({"event": "job_finished", "n": i}))
    history.close()
    assert path.stat().st_size <= 1000
    older = path.with_name("events.jsonl.1")
    assert older.stat().st_size <= 1000
    assert not path.with_name("events.jsonl.2").exists()
    numbers = [json.loads(x)["n"] for f in (older, path) for x in f.read_text().splitlines()]
    assert numbers == list(range(100 - len(numbers), 100))  # the newest, none skipped


def finished(n: int, hyp: str = "h", result: str = "fail") -> str:
    return json.dumps(
        {
            "timestamp": "2026-01-02T03:04:05.000Z",
            "level": "warning",
            "event": "job_finished",
            "hypothesis": hyp,
            "script": "tests",
            "result": result,
            "duration_s": 2.5,
            "n": n,
            "tests": {
                "total": 5,
                "passed": 3,
                "failed": 2,
                "errors": 0,
                "skipped": 0,
                "failing": ["m::a", "m::b"],
            },
        }
    )


def test_last_events_filters_and_spans_the_rotated_file(tmp_path: Path) -> None:
    (tmp_path / "events.jsonl.1").write_text(finished(1) + "\n" + finished(2, "g") + "\n")
    (tmp_path / "events.jsonl").write_text(
        '{"event": "batch_formed"}\n' + finished(3, result="pass") + "\n{cut"
    )
    got = last_events(tmp_path, EventFilter(), 10)
    assert [e["n"] for _, e in got] == [1, 2, 3]
    only_h = last_events(tmp_path, EventFilter(hypotheses=["h"], results=["fail"]), 10)
    assert [e["n"] for _, e in only_h] == [1]
    assert [e["n"] for _, e in last_events(tmp_path, EventFilter(), 1)] == [3]
    line = format_event(json.loads(finished(9)))
    assert "h/tests" in line and "fail" in line and "2.5s" in line
    assert "3/5 passed" in line and "m::a, m::b" in line


def test_follow_reads_new_lines_across_a_rotation(tmp_path: Path) -> None:
    size = len(finished(0)) + 1
    history = EventHistory(tmp_path / "events.jsonl", max_bytes=3 * size + 10)
    history.append(finished(0))
    seen: list[int] = []
    got_all = threading.Event()
    first = threading.Event()  # the last old line is shown: the follower reads the file
    stop = threading.Event()

    def emit(_line: bytes, event: dict[str, Any]) -> None:
        seen.append(event["n"])
        first.set()
        if len(seen) == 6:
            got_all.set()

    worker = threading.Thread(
        target=follow_events, args=(tmp_path, EventFilter(), emit, stop), kwargs={"n": 1}
    )
    worker.start()
    try:
        assert first.wait(10)
        for n in range(1, 6):
            history.append(finished(n))  # three lines a file: one rotation, at line 3
        assert got_all.wait(10), seen
    finally:
        stop.set()
        worker.join(10)
    assert seen == list(range(6))
    assert (tmp_path / "events.jsonl.1").exists()
