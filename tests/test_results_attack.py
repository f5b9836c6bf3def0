"""Hostile and damaged inputs to ``logs``, ``output``, ``status`` and ``compare``, and to
the daemon's event history: the real CLI and the real daemon on real files in temp dirs.

Every case here was a defect found by attacking the commands: a path out of the state dir,
a command hanging on a FIFO, a traceback on a damaged file, a follower gone silent, an id
that redraws the terminal. What must hold: a one-line error naming the file and the exit
code the design gives (2 usage, 3 nothing to read), never a hang or a traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from harness import make_repo, run_cli, wait_until, write_config

pytestmark = pytest.mark.timeout(120)

# A command that hangs instead of failing shows up as TimeoutExpired, well within the
# test's own timeout.
HANG_S = 20.0


def _config(tmp_path: Path, **daemon: Any) -> Path:
    repo, _ = make_repo(tmp_path, ("hyp-a",))
    script = {"name": "tests", "command": [sys.executable, "-c", "pass"], "watch": ["**/*"]}
    return write_config(tmp_path / "cfg" / "po.toml", repo, [script], **daemon)


def cli(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, "-c", os.fsdecode(cfg), cwd=cfg.parent, timeout=HANG_S)


def one_line_error(got: subprocess.CompletedProcess[str], code: int, *names: str) -> None:
    assert got.returncode == code, (got.returncode, got.stdout, got.stderr)
    assert "Traceback" not in got.stderr, got.stderr
    assert len(got.stderr.strip().splitlines()) == 1, got.stderr
    for name in names:
        assert name in got.stderr, got.stderr


def test_output_never_leaves_the_state_dir(tmp_path: Path) -> None:
    cfg = _config(tmp_path)  # never ran: no status file to check names against
    outside = tmp_path / "outside" / "s"
    outside.mkdir(parents=True)
    (outside / "x.log").write_text("SECRET\n")
    # runs/<hyp>/<script>: cfg/state/runs/../../../outside/s is tmp_path/outside/s
    for cell in ("../../../outside/s", os.fsdecode(outside), "../s", "hyp-a/..", "./s"):
        got = cli(cfg, "output", cell)
        assert "SECRET" not in got.stdout, cell
        one_line_error(got, 2, "HYPOTHESIS/SCRIPT")
    assert cli(cfg, "output", "hyp-a/tests", "--job", "../../etc/passwd").returncode == 2
    assert cli(cfg, "output", "hyp-a/tests").returncode == 3  # a good name: nothing yet


@pytest.mark.parametrize("kind", ["fifo", "folder", "symlink"])
def test_logs_refuses_a_history_that_is_not_a_file(tmp_path: Path, kind: str) -> None:
    cfg = _config(tmp_path)
    state = cfg.parent / "state"
    state.mkdir(mode=0o700)
    history = state / "events.jsonl"
    if kind == "fifo":
        os.mkfifo(history)
    elif kind == "folder":
        history.mkdir()
    else:
        (tmp_path / "elsewhere.jsonl").write_text('{"event": "daemon_started"}\n')
        history.symlink_to(tmp_path / "elsewhere.jsonl")
    for args in (("logs",), ("logs", "-f"), ("logs", "--json", "-n", "5")):
        one_line_error(cli(cfg, *args), 3, "events.jsonl")


GOOD = {
    "timestamp": "2026-01-01T10:00:00Z",
    "event": "job_finished",
    "hypothesis": "hyp-a",
    "script": "tests",
    "result": "fail",
    "duration_s": 1.5,
    "tests": {"total": 2, "passed": 1, "failed": 1, "errors": 0, "failing": ["t::bad"]},
}


def test_logs_skips_damaged_lines_and_shows_the_good_ones(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    state = cfg.parent / "state"
    state.mkdir(mode=0o700)
    damaged = [
        "[" * 100_000,  # nested too deep for json
        '{"event": "job_finished", "duration_s": 1e400}',
        '{"event": "job_finished", "duration_s": NaN}',
        '{"event": "job_finished", "duration_s": -1e300}',
        '{"event": "job_finished", "timestamp": "0001-01-01T00:00:00"}',
        '{"event": "job_finished", "timestamp": "0001-01-01T00:00:00+14:00"}',
        '{"event": "job_finished", "hypothesis": {"x": 1}, "tests": {"failing": "abc"}}',
        '{"event": "job_finished", "tests": {"failing": [{"a": 1}], "failed": 1e400}}',
        '{"event": "job_fin',  # cut by a crash
    ]
    lines = [*damaged, json.dumps(GOOD)]
    (state / "events.jsonl").write_text("\n".join(lines) + "\n")
    got = cli(cfg, "logs", "-n", "50")
    assert got.returncode == 0, got.stderr
    assert "Traceback" not in got.stderr
    shown = got.stdout.splitlines()
    assert len(shown) == len(damaged) - 1  # "[[[..." and the cut line skipped, the rest shown
    assert "hyp-a/tests" in shown[-1] and "1/2 passed" in shown[-1] and "t::bad" in shown[-1]


FOLLOW = [sys.executable, "-m", "parallel_orchestrator", "logs", "-f", "-n", "0", "--json"]


def _follow(cfg: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*FOLLOW, "-c", os.fsdecode(cfg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _append(path: Path, event: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(event) + "\n")


def _append_until(path: Path, event: dict[str, Any], shown: Any) -> None:
    """Append ``event`` until ``shown()``: a follower started with ``-n 0`` skips what
    was written before it opened the file, and there is no signal for that moment."""

    def appended_and_shown() -> bool:
        _append(path, event)
        return bool(shown())

    wait_until(appended_and_shown, timeout=15, interval=0.3)


def test_logs_follow_goes_on_after_the_history_is_truncated_in_place(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    state = cfg.parent / "state"
    state.mkdir(mode=0o700)
    history = state / "events.jsonl"
    history.write_text((json.dumps({**GOOD, "job_id": "old"}) + "\n") * 50)
    follower = _follow(cfg)
    seen: list[dict[str, Any]] = []

    def read() -> None:
        assert follower.stdout is not None
        seen.extend(json.loads(line) for line in follower.stdout)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        before = {**GOOD, "job_id": "before"}
        _append_until(history, before, lambda: any(e.get("job_id") == "before" for e in seen))
        with open(history, "r+") as f:  # logrotate's copytruncate: same inode, size 0
            f.truncate(0)
        after = {**GOOD, "job_id": "after"}
        _append_until(history, after, lambda: any(e.get("job_id") == "after" for e in seen))
        assert all(e.get("job_id") != "old" for e in seen)  # -n 0: no old lines
    finally:
        follower.send_signal(2)
        assert follower.wait(10) == 0
        assert follower.stderr is not None
        assert b"Traceback" not in follower.stderr.read()


def test_logs_follow_into_a_reader_that_leaves_exits_cleanly(tmp_path: Path) -> None:
    """``logs -f | head -1``: the pipe closes; the next event ends the follower, exit 0."""
    cfg = _config(tmp_path)
    state = cfg.parent / "state"
    state.mkdir(mode=0o700)
    history = state / "events.jsonl"
    history.write_text("")
    follower = _follow(cfg)
    first: list[bytes] = []
    assert follower.stdout is not None
    reader = threading.Thread(target=lambda: first.append(follower.stdout.readline()))
    reader.start()
    try:
        _append_until(history, {**GOOD, "job_id": "one"}, lambda: first)
        reader.join(10)
        assert json.loads(first[0])["job_id"] == "one"
        follower.stdout.close()  # the reader went away

        def ended() -> bool:
            _append(history, {**GOOD, "job_id": "more"})
            return follower.poll() is not None

        wait_until(ended, timeout=15, interval=0.3)
        assert follower.returncode == 0
        assert follower.stderr is not None
        assert follower.stderr.read() == b""
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
