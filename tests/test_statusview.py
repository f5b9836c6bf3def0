"""The `status` view: rendering, colour decisions, staleness, file errors, --watch."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from parallel_orchestrator.report.statusview import (
    CLEAR_SCREEN,
    StatusFileInvalid,
    StatusFileMissing,
    can_encode_marks,
    format_ago,
    format_duration,
    parse_timestamp,
    read_status,
    render_table,
    should_color,
    summary_line,
    watch_status,
)

NOW = 1_700_000_000.0
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def entry(state: str, last: str | None = None, **kw: Any) -> dict[str, Any]:
    return {
        "state": state,
        "last_result": last,
        "exit_code": kw.get("exit_code"),
        "duration_s": kw.get("duration_s"),
        "started_at": kw.get("started_at"),
        "finished_at": kw.get("finished_at"),
        "job_id": "j1",
        "batch_id": "b1",
        "log_path": None,
        "output_tail": "",
    }


def make_doc(pid: int | None = None, state: str = "running") -> dict[str, Any]:
    """Every script state once; 'slow' first appears in the second row (column order)."""
    return {
        "schema_version": 1,
        "daemon": {
            "pid": os.getpid() if pid is None else pid,
            "version": "0.1.0",
            "state": state,
            "started_at": NOW - 600,
            "updated_at": "2023-11-14T22:13:17Z",  # NOW - 3 s, as ISO 8601
            "config_path": "/etc/po.toml",
        },
        "hypotheses": {
            "main": {
                "path": "/r/main",
                "branch": "main",
                "scripts": {
                    "tests": entry("pass", "pass", duration_s=1.23, finished_at=NOW - 180),
                    "lint": entry("fail", "fail", exit_code=1, duration_s=0.4, finished_at=NOW - 5),
                },
            },
            "hyp-2": {
                "path": "/r/hyp-2",
                "branch": "hyp-2",
                "scripts": {
                    "tests": entry("running", "fail", started_at=NOW - 12),
                    "lint": entry("queued"),
                    "slow": entry("timeout", "timeout", duration_s=300, finished_at=NOW - 4000),
                },
            },
            "hyp-3": {
                "path": "/r/hyp-3",
                "branch": None,
                "scripts": {
                    "tests": entry("error", "error", duration_s=0.01, finished_at=NOW - 1),
                    "lint": entry("cancelled", "cancelled", duration_s=2, finished_at=NOW - 70),
                    "slow": entry("never_run"),
                },
            },
        },
        "summary": {},
    }


def table_cells(text: str) -> dict[tuple[str, str], str]:
    """Parse the rendered table back into {(hypothesis, script): cell text} by column."""
    lines = text.splitlines()
    header_idx = next(i for i, line in enumerate(lines) if line.startswith("HYPOTHESIS"))
    header = lines[header_idx]
    names = header.split()
    starts = [header.index(" " + n + " ") + 1 if i else 0 for i, n in enumerate(names[:-1])]
    starts.append(header.rindex(" " + names[-1]) + 1)
    cells: dict[tuple[str, str], str] = {}
    for line in lines[header_idx + 2 :]:
        if not line.strip():
            break
        values = [line[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
        for name, value in zip(names[2:], values[2:], strict=True):
            cells[(values[0], name)] = value
    return cells


def test_every_state_has_its_mark_in_the_right_cell() -> None:
    text = render_table(make_doc(), now=NOW)
    cells = table_cells(text)
    assert cells[("main", "tests")] == "✓ pass 1.2s 3m ago"
    assert cells[("main", "lint")] == "✗ fail 0.4s 5s ago"
    assert cells[("main", "slow")] == ""
    assert cells[("hyp-2", "tests")] == "▶ running 12.0s (last fail)"
    assert cells[("hyp-2", "lint")] == "… queued"
    assert cells[("hyp-2", "slow")] == "⏱ timeout 5m00s 1h ago"
    assert cells[("hyp-3", "tests")].startswith("! error")
    assert cells[("hyp-3", "lint")] == "\u2013 cancelled 2.0s 1m ago"
    assert cells[("hyp-3", "slow")] == "· never"


def test_columns_follow_first_seen_order_and_rows_show_branch() -> None:
    lines = render_table(make_doc(), now=NOW).splitlines()
    header = next(line for line in lines if line.startswith("HYPOTHESIS"))
    assert header.split() == ["HYPOTHESIS", "BRANCH", "tests", "lint", "slow"]
    assert re.match(r"hyp-2\s+hyp-2\s", next(x for x in lines if x.startswith("hyp-2")))
    assert re.match(r"hyp-3\s+-\s", next(x for x in lines if x.startswith("hyp-3")))


def test_header_and_footer() -> None:
    text = render_table(make_doc(), now=NOW)
    first = text.splitlines()[0]
    assert first == f"daemon: running (pid {os.getpid()}, alive), updated 3s ago"
    assert text.rstrip("\n").splitlines()[-1] == (
        "3 hypotheses, 8 jobs: 1 pass, 1 fail, 1 timeout, 1 error, 1 cancelled, "
        "1 running, 1 queued, 1 never run"
    )


def test_no_ansi_without_color_and_ansi_with_it() -> None:
    plain = render_table(make_doc(), now=NOW, color=False)
    assert "\x1b" not in plain
    colored = render_table(make_doc(), now=NOW, color=True)
    assert "\x1b[32m✓ pass" in colored
    assert "\x1b[31m✗ fail" in colored
    assert "\x1b[31m! error" in colored
    assert "\x1b[33m⏱ timeout" in colored
    assert "\x1b[36m▶ running" in colored
    assert "\x1b[2m· never" in colored
    assert "\x1b[2m\u2013 cancelled" in colored
    # colour never disturbs the alignment
    assert ANSI.sub("", colored) == plain


def test_ascii_only_output_is_pure_ascii() -> None:
    text = render_table(make_doc(), now=NOW, ascii_only=True)
    text.encode("ascii")
    cells = table_cells(text)
    assert cells[("main", "tests")].startswith("+ pass")
    assert cells[("hyp-3", "slow")] == ". never"


def test_narrow_width_sheds_detail_not_columns() -> None:
    text = render_table(make_doc(), now=NOW, width=40)
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("HYPOTHESIS"))
    table = lines[start : start + 5]
    assert all(len(line) <= 40 for line in table), table
    assert table[0].split() == ["HYPOTHESIS", "BRANCH", "tests", "lint", "slow"]
    assert "✗ fail" in text  # the legend explains the bare marks


def test_dead_pid_is_reported_as_stale() -> None:
    proc = subprocess.Popen(["true"])
    proc.wait()  # reaped: the pid is free
    first = render_table(make_doc(pid=proc.pid, state="running"), now=NOW).splitlines()[0]
    assert first.startswith(f"daemon: pid {proc.pid} NOT RUNNING (stale status)")


def test_stopped_daemon_is_obvious() -> None:
    first = render_table(make_doc(state="stopped"), now=NOW).splitlines()[0]
    assert first.startswith("daemon: stopped")


def test_summary_line() -> None:
    assert summary_line(make_doc()) == (
        "3 hypotheses, 1 running, 1 queued, 3 failing, 1 passing, 1 cancelled, 1 never run"
    )
    one = {"schema_version": 1, "daemon": {}, "hypotheses": {"a": {"scripts": {}}}}
    assert summary_line(one) == "1 hypothesis"


def test_a_missing_repository_is_said_in_the_header_and_the_summary() -> None:
    """``daemon.repo_state`` = ``repo_missing``: nothing runs until the repository is
    back, which the table of stale cells alone does not tell (nor systemd's STATUS=)."""
    doc = make_doc(state="idle")
    doc["daemon"]["repo_state"] = "repo_missing"
    lines = render_table(doc, now=NOW).splitlines()
    assert lines[1].startswith("repository missing (moved or deleted)")
    assert summary_line(doc).startswith("repository missing, 3 hypotheses")
    doc["daemon"]["repo_state"] = "ok"
    assert "repository missing" not in render_table(doc, now=NOW)
    assert not summary_line(doc).startswith("repository missing")


def test_empty_document_renders() -> None:
    doc = {"schema_version": 1, "daemon": {"state": "starting"}, "hypotheses": {}}
    text = render_table(doc, now=NOW)
    assert "(no hypotheses)" in text
    assert "daemon: starting (no pid), never updated" in text


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_should_color() -> None:
    master, slave = os.openpty()
    try:
        with open(slave, "w", closefd=True) as tty:
            assert should_color(tty, {})
            assert should_color(tty, {"NO_COLOR": ""})  # set but empty: ignored
            assert not should_color(tty, {"NO_COLOR": "1"})
            assert not should_color(tty, {"TERM": "dumb"})
    finally:
        os.close(master)
    assert not should_color(io.StringIO(), {})


def test_can_encode_marks() -> None:
    assert can_encode_marks("utf-8")
    assert not can_encode_marks("ascii")
    assert not can_encode_marks(None)
    assert not can_encode_marks("no-such-codec")


def test_formatting_helpers() -> None:
    assert format_duration(0.44) == "0.4s"
    assert format_duration(125) == "2m05s"
    assert format_duration(3720) == "1h02m"
    assert format_ago(-3) == "0s ago"
    assert format_ago(4000) == "1h ago"
    assert parse_timestamp("2023-11-14T22:13:20+00:00") == NOW
    assert parse_timestamp("2023-11-14T22:13:20") == NOW
    assert parse_timestamp(NOW) == NOW
    assert parse_timestamp("yesterday") is None
    assert parse_timestamp(None) is None


# ---------------------------------------------------------------------------- read_status


def write_atomically(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc), encoding="utf-8")
    os.replace(tmp, path)


def test_read_status_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    write_atomically(path, make_doc())
    assert read_status(path)["hypotheses"]["main"]["branch"] == "main"


def test_read_status_missing(tmp_path: Path) -> None:
    with pytest.raises(StatusFileMissing, match=re.escape(str(tmp_path / "nope.json"))) as got:
        read_status(tmp_path / "nope.json")
    assert str(got.value).endswith("no status file (is the daemon running?)")


def test_read_status_names_the_missing_folder_it_was_in(tmp_path: Path) -> None:
    """A state dir inside a repository that was moved away: the folder that is gone is
    the answer, not only "is the daemon running?" (it is, waiting for it)."""
    path = tmp_path / "repo" / ".po-state" / "status.json"
    with pytest.raises(StatusFileMissing) as got:
        read_status(path)
    assert str(got.value) == (
        f"{path}: no status file (is the daemon running? {tmp_path / 'repo'} does not exist)"
    )


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"{not json", "not JSON"),
        (b"\xff\xfe\x00", "not UTF-8"),
        (b"[1, 2]", "top level is not an object"),
        (b'{"schema_version": 2, "daemon": {}, "hypotheses": {}}', "schema_version is 2"),
        (b'{"schema_version": 1, "daemon": {}, "hypotheses": []}', "'hypotheses'"),
        (
            b'{"schema_version": 1, "daemon": {}, "hypotheses": {"a": {"scripts": {"t": 1}}}}',
            "hypotheses.a.scripts.t",
        ),
    ],
)
def test_read_status_invalid(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "status.json"
    path.write_bytes(content)
    with pytest.raises(StatusFileInvalid) as info:
        read_status(path)
    message = str(info.value)
    assert str(path) in message and reason in message and "\n" not in message


def test_read_status_on_a_directory_is_invalid(tmp_path: Path) -> None:
    with pytest.raises(StatusFileInvalid, match=re.escape(str(tmp_path))):
        read_status(tmp_path)


# ---------------------------------------------------------------------------- watch


def wait_until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def start_watch(
    path: Path, out: io.StringIO, **kw: Any
) -> tuple[threading.Thread, threading.Event]:
    stop = threading.Event()
    thread = threading.Thread(
        target=watch_status, args=(path, out), kwargs={"color": False, "stop": stop, **kw}
    )
    thread.start()
    return thread, stop


def test_watch_redraws_after_atomic_replace(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    write_atomically(path, make_doc())
    out = io.StringIO()
    # A long tick: only the file watch can produce the second frame (and end the loop).
    thread, stop = start_watch(path, out, interval_s=60.0)
    try:
        wait_until(lambda: out.getvalue().count("daemon:") == 1)
        doc = make_doc()
        doc["hypotheses"]["hyp-new"] = {"path": "/x", "branch": "x", "scripts": {}}
        write_atomically(path, doc)
        wait_until(lambda: "hyp-new" in out.getvalue())
    finally:
        stop.set()
        thread.join(timeout=20)
    assert not thread.is_alive()
    text = out.getvalue()
    assert CLEAR_SCREEN not in text  # not a TTY: frames are separated, never cleared
    assert "-" * 40 + "\n" in text


def test_watch_waits_for_missing_file_and_folder(tmp_path: Path) -> None:
    path = tmp_path / "state" / "status.json"
    out = io.StringIO()
    thread, stop = start_watch(path, out, interval_s=0.05)
    try:
        wait_until(lambda: f"waiting for {path}…" in out.getvalue())
        path.parent.mkdir()
        write_atomically(path, make_doc())
        wait_until(lambda: "HYPOTHESIS" in out.getvalue())
    finally:
        stop.set()
        thread.join(timeout=20)
    assert not thread.is_alive()
    assert out.getvalue().count("waiting for") == 1  # off a TTY, unchanged frames are skipped


def test_watch_on_a_tty_clears_and_refreshes(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    write_atomically(path, make_doc())
    out = _Tty()
    thread, stop = start_watch(path, out, interval_s=0.05, width=200)
    try:
        wait_until(lambda: out.getvalue().count(CLEAR_SCREEN) >= 3)  # periodic, no change
    finally:
        stop.set()
        thread.join(timeout=20)
    assert not thread.is_alive()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_watch_returns_on_ctrl_c(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    write_atomically(path, make_doc())
    out = io.StringIO()

    def interrupt_after_first_frame() -> None:
        wait_until(lambda: "HYPOTHESIS" in out.getvalue())
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)

    assert threading.current_thread() is threading.main_thread()
    sender = threading.Thread(target=interrupt_after_first_frame)
    sender.start()
    watch_status(path, out, color=False, interval_s=60.0)  # returns instead of raising
    sender.join(timeout=20)
    assert out.getvalue().endswith("\n")


def test_a_reused_result_is_marked_cached() -> None:
    doc = make_doc()
    cell = doc["hypotheses"]["main"]["scripts"]["lint"]
    cell.update(cached=True, cached_from="abc-j1")
    cells = table_cells(render_table(doc, now=NOW))
    assert cells[("main", "lint")] == "✗ fail 0.4s cached 5s ago"
    assert cells[("main", "tests")] == "✓ pass 1.2s 3m ago"  # cached absent: unchanged
