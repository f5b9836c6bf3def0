"""Result reuse end to end: the real daemon over real worktrees, observed through its log,
status file and run logs.

Each job appends a line to ``runs.txt`` (outside the worktrees), so "how many processes
ran" is counted by the jobs themselves, not only by ``job_started``.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from harness import DaemonProcess, git, make_repo, wait_until, write_config

pytestmark = pytest.mark.timeout(180)

HYPS = ("hyp-1", "hyp-2", "hyp-3")  # plus the main worktree "repo": four of one commit


def job_script(runs: Path, *, fail: bool = False, sleep: float = 0.3, **extra: Any) -> dict:
    body = f'echo "$PO_HYPOTHESIS $PO_JOB_ID" >> {runs}; sleep {sleep}; echo "output of the run"'
    if fail:
        body += "; echo boom >&2; exit 3"
    return {
        "name": "tests",
        "command": ["sh", "-c", body],
        "watch": ["**/*.py"],
        "timeout_s": 30,
        "cache": True,
        **extra,
    }


def ran(runs: Path) -> list[str]:
    return runs.read_text().splitlines() if runs.exists() else []


def start(tmp_path: Path, script: dict, *, hyps=HYPS, **daemon: Any) -> tuple[DaemonProcess, dict]:
    repo, trees = make_repo(tmp_path / "r", hyps)
    cfg = write_config(tmp_path / "cfg" / "po.toml", repo, [script], **daemon)
    d = DaemonProcess(cfg)
    d.wait_ready()
    return d, trees


def finished(d: DaemonProcess, count: int, timeout: float = 60) -> list[dict]:
    return d.wait_event("job_finished", count=count, timeout=timeout)


def test_four_identical_worktrees_run_once_and_a_restart_keeps_the_cache(tmp_path: Path) -> None:
    runs = tmp_path / "runs.txt"
    d, _ = start(tmp_path, job_script(runs), run_on_start=True)
    try:
        done = finished(d, 4)
        assert len(ran(runs)) == 1
        assert len(d.events("job_started")) == 1
        leader = next(e for e in done if not e["cached"])
        reused = [e for e in done if e["cached"]]
        assert len(reused) == 3 and {e["hypothesis"] for e in done} == {"repo", *HYPS}
        for e in reused:
            assert e["cached_from"] == leader["job_id"] and e["result"] == "pass"
            assert e["job_id"] != leader["job_id"]
            cell = d.cell(e["hypothesis"], "tests")
            assert (cell["cached"], cell["cached_from"]) == (True, leader["job_id"])
            assert "output of the run" in Path(e["log_path"]).read_text()
        assert d.cell(leader["hypothesis"], "tests")["cached"] is False
    finally:
        assert d.stop() == 0
    again = DaemonProcess(d.config)  # a restart: the entries are on disk (same log file)
    try:
        done = finished(again, 8)[4:]
        assert all(e["cached"] for e in done) and len(ran(runs)) == 1
        assert len(again.events("job_started")) == 1  # the first daemon's
    finally:
        again.stop()


def test_touch_same_bytes_change_and_change_back(tmp_path: Path) -> None:
    runs = tmp_path / "runs.txt"
    d, trees = start(tmp_path, job_script(runs), hyps=("hyp-1",))
    app = trees["hyp-1"] / "src" / "app.py"
    try:
        app.write_text("VALUE = 2\n")  # a change: runs
        first = finished(d, 1)[0]
        assert first["cached"] is False and len(ran(runs)) == 1
        os.utime(app)  # a bare touch ...
        app.write_text("VALUE = 2\n")  # ... and the same bytes again: no run
        second = finished(d, 2)[1]
        assert second["cached"] is True and second["cached_from"] == first["job_id"]
        app.write_text("VALUE = 3\n")  # another change: runs
        third = finished(d, 3)[2]
        assert third["cached"] is False and len(ran(runs)) == 2
        app.write_text("VALUE = 2\n")  # back to the first content: a hit
        fourth = finished(d, 4)[3]
        assert (fourth["cached"], fourth["cached_from"]) == (True, first["job_id"])
        assert len(ran(runs)) == 2
    finally:
        assert d.stop() == 0


def test_unwatched_and_ignored_differences_still_hit(tmp_path: Path) -> None:
    runs = tmp_path / "runs.txt"
    repo, trees = make_repo(
        tmp_path / "r", ("hyp-1", "hyp-2"), {"src/app.py": "V = 1\n", ".gitignore": "build/\n"}
    )
    (trees["hyp-1"] / "notes.txt").write_text("unwatched: not a .py file\n")
    (trees["hyp-2"] / "build").mkdir()
    (trees["hyp-2"] / "build" / "gen.py").write_text("git-ignored = True\n")
    (trees["repo"] / "src" / "extra.py").write_text("watched = True\n")  # a real difference
    cfg = write_config(tmp_path / "cfg" / "po.toml", repo, [job_script(runs)], run_on_start=True)
    d = DaemonProcess(cfg)
    try:
        done = finished(d, 3)
        by_hyp = {e["hypothesis"]: e for e in done}
        assert by_hyp["repo"]["cached"] is False
        assert [by_hyp["hyp-1"]["cached"], by_hyp["hyp-2"]["cached"]].count(True) == 1
        assert len(ran(runs)) == 2
    finally:
        assert d.stop() == 0


def test_a_fail_is_reused_with_its_exit_code_output_and_log(tmp_path: Path) -> None:
    runs = tmp_path / "runs.txt"
    d, _ = start(tmp_path, job_script(runs, fail=True), hyps=("hyp-1",), run_on_start=True)
    try:
        done = finished(d, 2)
        leader = next(e for e in done if not e["cached"])
        hit = next(e for e in done if e["cached"])
        assert len(ran(runs)) == 1
        for key in ("result", "exit_code", "output_tail"):
            assert hit[key] == leader[key]
        assert (hit["result"], hit["exit_code"]) == ("fail", 3) and "boom" in hit["output_tail"]
        assert "boom" in Path(hit["log_path"]).read_text()
        cell = d.cell(hit["hypothesis"], "tests")
        assert (cell["state"], cell["exit_code"], cell["cached"]) == ("fail", 3, True)
    finally:
        assert d.stop() == 0


def test_a_timeout_is_never_reused(tmp_path: Path) -> None:
    runs = tmp_path / "runs.txt"
    script = job_script(runs, sleep=30, timeout_s=0.5, kill_grace_s=0.2)
    d, _ = start(tmp_path, script, hyps=("hyp-1",), run_on_start=True)
    try:
        done = finished(d, 2)
        assert [e["result"] for e in done] == ["timeout", "timeout"]
        assert not any(e["cached"] for e in done) and len(ran(runs)) == 2
        assert not list((d.folder / "state" / "cache").glob("*.json"))
    finally:
        assert d.stop() == 0


def test_cache_false_runs_everything_and_adds_no_keys(tmp_path: Path) -> None:
    runs = tmp_path / "runs.txt"
    d, _ = start(tmp_path, job_script(runs, cache=False), run_on_start=True)
    try:
        done = finished(d, 4)
        assert len(ran(runs)) == 4 and len(d.events("job_started")) == 4
        assert not any("cached" in e for e in done)
        assert "cached" not in d.cell("hyp-1", "tests")
    finally:
        assert d.stop() == 0


@pytest.mark.parametrize("damage", ["garbage", "fifo"])
def test_a_damaged_entry_is_a_miss_never_a_crash(tmp_path: Path, damage: str) -> None:
    runs = tmp_path / "runs.txt"
    d, _ = start(tmp_path, job_script(runs), hyps=(), run_on_start=True)
    cache = d.folder / "state" / "cache"
    try:
        finished(d, 1)
        entries = wait_until(lambda: list(cache.glob("*.json")), what="the stored entry")
    finally:
        assert d.stop() == 0
    assert len(entries) == 1
    entries[0].unlink()
    if damage == "fifo":
        os.mkfifo(entries[0])
    else:
        entries[0].write_bytes(b"{half a docu")
    again = DaemonProcess(d.config)  # the same log file: its events follow the first's
    try:
        done = finished(again, 2)
        assert done[1]["cached"] is False and len(ran(runs)) == 2
        problem = again.wait_event("cache_entry_unreadable")[0]
        assert problem["path"] == os.fsdecode(entries[0])
        assert again.proc.poll() is None
    finally:
        assert again.stop() == 0


def test_a_git_checkout_back_is_a_hit(tmp_path: Path) -> None:
    runs = tmp_path / "runs.txt"
    d, trees = start(tmp_path, job_script(runs), hyps=("hyp-1",))
    wt = trees["hyp-1"]
    try:
        (wt / "src" / "app.py").write_text("VALUE = 7\n")
        git(wt, "commit", "-qam", "seven")
        first = finished(d, 1)[0]
        # Its result is stored once the watcher has had time to report changes made
        # before it ended (a checkout within that instant would be taken as one).
        wait_until(lambda: list((d.folder / "state" / "cache").glob("*.json")), what="entry")
        git(wt, "checkout", "-q", "HEAD~1")
        finished(d, 2)
        git(wt, "checkout", "-q", "hyp-1")  # back to the commit that already ran
        back = finished(d, 3)[2]
        assert (back["cached"], back["cached_from"]) == (True, first["job_id"])
    finally:
        assert d.stop() == 0


def test_shutdown_while_jobs_wait_for_a_shared_run(tmp_path: Path) -> None:
    runs = tmp_path / "runs.txt"
    d, _ = start(tmp_path, job_script(runs, sleep=30), run_on_start=True)
    d.wait_event("job_started")
    d.signal(signal.SIGTERM)
    assert d.wait_exit(30) == 0
    assert d.events()[-1]["event"] == "daemon_stopped"
    assert len(ran(runs)) == 1
    assert not list((d.folder / "state" / "cache").glob("*.json"))  # cancelled: not stored


JUNIT = (
    '<testsuite><testcase classname="t" name="ok"/>'
    '<testcase classname="t" name="bad"><failure message="boom"/></testcase></testsuite>'
)


def test_a_reused_result_carries_its_tests(tmp_path: Path) -> None:
    runs = tmp_path / "runs.txt"
    script = job_script(runs)
    script["command"][2] += f"; printf '%s' '{JUNIT}' > \"$PO_JUNIT_XML\"; exit 1"
    d, _ = start(tmp_path, script, hyps=("hyp-1",), run_on_start=True)
    try:
        done = finished(d, 2)
        leader = next(e for e in done if not e["cached"])
        hit = next(e for e in done if e["cached"])
        assert len(ran(runs)) == 1
        assert hit["tests"] == leader["tests"] and hit["tests"]["failing"] == ["t::bad"]
        cell = d.cell(hit["hypothesis"], "tests")
        assert cell["tests"]["failing"] == [{"id": "t::bad", "message": "boom"}]
        results = d.folder / "state" / "results" / hit["hypothesis"] / "tests.json"
        doc = json.loads(results.read_text())
        assert doc == {"job_id": hit["job_id"], "tests": {"t::ok": "passed", "t::bad": "failed"}}
    finally:
        assert d.stop() == 0


def test_logs_mark_a_reused_result() -> None:
    from parallel_orchestrator.report.logview import format_event

    event = {
        "timestamp": "2026-01-01T00:00:00Z",
        "event": "job_finished",
        "hypothesis": "hyp-2",
        "script": "tests",
        "result": "pass",
        "exit_code": 0,
        "duration_s": 2.5,
    }
    assert "cached" not in format_event(event)
    line = format_event({**event, "cached": True, "cached_from": "abc-j1"})
    assert line.endswith("(cached from abc-j1)") and "hyp-2/tests" in line
