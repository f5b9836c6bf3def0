"""The JSON log sink, structlog configuration, the status board and run-log pruning."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
import structlog
from structlog.testing import capture_logs

from parallel_orchestrator.jobs.spec import prune_runs
from parallel_orchestrator.report.eventlog import configure_logging, get_logger, reset_logging
from parallel_orchestrator.report.status import StatusBoard
from parallel_orchestrator.store.fence import fence, reset_fence


@pytest.fixture(autouse=True)
def _reset_structlog():
    yield
    reset_logging()


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_log_lines_start_with_timestamp_level_event(tmp_path: Path) -> None:
    log = tmp_path / "d.log"
    configure_logging("info", log)
    get_logger().info("job_finished", hypothesis="h", result="pass", path=Path("/x y"))
    get_logger().debug("hidden")  # below the level
    [line] = log.read_text().splitlines()
    assert list(json.loads(line))[:3] == ["timestamp", "level", "event"]
    event = json.loads(line)
    assert event["event"] == "job_finished" and event["level"] == "info"
    assert event["timestamp"].endswith("Z") and "T" in event["timestamp"]
    assert event["path"] == "/x y"
    assert os.stat(log).st_mode & 0o777 == 0o600


def test_log_level_filters_only_non_contract_events(tmp_path: Path) -> None:
    log = tmp_path / "d.log"
    configure_logging("warning", log)
    get_logger().info("job_finished", result="pass")  # a contract event: always written
    get_logger().info("job_dropped")  # an extra event below the level: filtered
    get_logger().warning("notify_failed")
    assert [e["event"] for e in read_lines(log)] == ["job_finished", "notify_failed"]


def test_log_file_is_reopened_after_logrotate_moves_it(tmp_path: Path) -> None:
    log = tmp_path / "d.log"
    configure_logging("info", log)
    get_logger().info("before")
    os.rename(log, tmp_path / "d.log.1")  # what logrotate does (without copytruncate)
    get_logger().info("after")
    assert [e["event"] for e in read_lines(tmp_path / "d.log.1")] == ["before"]
    assert [e["event"] for e in read_lines(log)] == ["after"]
    log.unlink()  # deleted outright: recreated too
    get_logger().info("again")
    assert [e["event"] for e in read_lines(log)] == ["again"]


def test_a_log_file_in_a_moved_repository_complains_once_and_keeps_every_line(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    repo = tmp_path / "repo"
    log = repo / "logs" / "po.log"
    configure_logging("info", log)
    fence(repo, [])
    try:
        os.rename(repo, tmp_path / "moved")
        for n in range(3):
            get_logger().info("job_finished", n=n)
        assert not repo.exists()  # neither the log's folder nor the repository recreated
        err = capfd.readouterr().err
        assert err.count("cannot write log") == 1  # once per failure spell, not per line
        assert "inside the missing repository" in err
        assert [json.loads(ln)["n"] for ln in err.splitlines() if ln.startswith("{")] == [0, 1, 2]
        os.rename(tmp_path / "moved", repo)  # back: the same file is written again
        get_logger().info("job_finished", n=3)
        assert read_lines(log)[-1]["n"] == 3
        assert "cannot write log" not in capfd.readouterr().err
    finally:
        reset_fence()


def test_undecodable_names_stay_valid_json(tmp_path: Path) -> None:
    log = tmp_path / "d.log"
    configure_logging("info", log)
    get_logger().info("batch_formed", hypotheses={"h": [os.fsdecode(b"bad\xff.py")]})
    assert read_lines(log)[0]["hypotheses"]["h"][0].startswith("bad")


def test_events_can_be_asserted_as_dicts() -> None:
    configure_logging("info", None)
    with capture_logs() as logs:
        structlog.get_logger().info("config_invalid", errors=["x: bad"])
    assert logs == [{"event": "config_invalid", "errors": ["x: bad"], "log_level": "info"}]


def test_status_file_is_replaced_atomically(tmp_path: Path) -> None:
    board = StatusBoard(pid=1, version="t", config_path=None)
    board.set_hypotheses([(f"h{i}", f"/w/h{i}", "b") for i in range(50)], ["a", "b", "c"])
    path = tmp_path / "status.json"
    board.write(path)
    stop = threading.Event()
    bad: list[str] = []
    reads = 0

    def reader() -> None:
        nonlocal reads
        while not stop.is_set():
            text = path.read_text()
            try:
                json.loads(text)
            except ValueError:
                bad.append(text[:80])
            reads += 1

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(300):
            board.update("h1", "a", state="running", output_tail="x" * (i * 37 % 2000))
            board.write(path)
    finally:
        stop.set()
        t.join()
    assert reads > 0 and bad == []
    doc = json.loads(path.read_text())
    assert doc["summary"]["running"] == 1 and doc["summary"]["never_run"] == 149
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert not [p for p in tmp_path.iterdir() if p.name != "status.json"]  # no temp left


def test_prune_runs_keeps_the_newest(tmp_path: Path) -> None:
    now = time.time()
    for i in range(6):
        for suffix in (".log", ".changed", ".changed0"):
            p = tmp_path / f"j{i}{suffix}"
            p.write_text("x")
            os.utime(p, (now - 100 + i, now - 100 + i))
    prune_runs(tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "j4.changed",
        "j4.changed0",
        "j4.log",
        "j5.changed",
        "j5.changed0",
        "j5.log",
    ]


def test_queued_and_dropped_cells() -> None:
    board = StatusBoard(pid=1, version="t", config_path=None)
    board.set_hypotheses([("h", "/w/h", "b")], ["a", "b"])
    assert board.mark_queued("h", "a")
    assert board.cell("h", "a")["state"] == "queued"
    assert board.mark_dropped("h", "a")
    assert board.cell("h", "a")["state"] == "never_run"  # no last result yet
    board.update("h", "b", state="running", last_result="fail")
    assert not board.mark_queued("h", "b")  # a running cell stays running
    assert not board.mark_dropped("h", "b")
    board.update("h", "b", state="queued")
    assert board.mark_dropped("h", "b")
    assert board.cell("h", "b")["state"] == "fail"
    assert not board.mark_queued("nope", "a")
