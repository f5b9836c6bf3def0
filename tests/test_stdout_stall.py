"""Issue 11 items 4 and 10: the daemon's stdout log must never stop the daemon.

A paused reader (``run | less``) fills the pipe after 64 KiB; stdout on a full disk
refuses every write. Either way jobs keep running, timeouts keep firing, SIGTERM ends the
daemon cleanly, and (for the stalled reader) one ``log_dropped`` line says what was lost.
Observed through the status file, as a user of a stalled terminal would.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from harness import make_repo, wait_until, write_config

NOISY = 40  # scripts per hypothesis, each with a ~2.5 KB output tail in job_finished


def _scripts() -> list[dict[str, Any]]:
    noisy = [
        {
            "name": f"noisy{i:02d}",
            "command": ["sh", "-c", "head -c 2500 /dev/zero | tr '\\0' x"],
            "watch": ["src/*.py"],
        }
        for i in range(NOISY)
    ]
    slow = {
        "name": "slow",
        "command": ["sleep", "30"],
        "watch": ["slow/*.txt"],
        "timeout_s": 1,
        "kill_grace_s": 1,
    }
    return [*noisy, slow]


def _start(tmp_path: Path, stdout: int) -> tuple[subprocess.Popen[bytes], Path, dict[str, Path]]:
    _, trees = make_repo(tmp_path / "r", hypotheses=("hyp-1",))
    config = write_config(
        tmp_path / "cfg" / "po.toml", trees["repo"], _scripts(), log_file="", run_on_start=True
    )
    stderr = open(tmp_path / "stderr", "wb")  # noqa: SIM115 - the child holds it
    proc = subprocess.Popen(
        [sys.executable, "-m", "parallel_orchestrator", "run", "-c", os.fsdecode(config)],
        cwd=config.parent,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
    )
    stderr.close()
    return proc, config.parent / "state" / "status.json", trees


def _status(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


def _cells(doc: dict[str, Any] | None, script: str | None = None) -> list[dict[str, Any]]:
    if doc is None:
        return []
    return [
        cell
        for hyp in doc["hypotheses"].values()
        for name, cell in hyp["scripts"].items()
        if script is None or name == script
    ]


def _noisy(status: Path, hyp: str | None = None) -> list[dict[str, Any]]:
    doc = _status(status)
    if doc is None:
        return []
    return [
        cell
        for h, entry in doc["hypotheses"].items()
        for name, cell in entry["scripts"].items()
        if name.startswith("noisy") and hyp in (None, h)
    ]


def _noisy_job_ids(status: Path) -> set[str]:
    return {c["job_id"] for c in _noisy(status) if c.get("job_id")}


def _noisy_all_pass(status: Path, not_in: set[str], hyp: str | None = None) -> bool:
    """Every noisy cell (of ``hyp``, or of both hypotheses) passed in a job not in ``not_in``."""
    cells = _noisy(status, hyp)
    return len(cells) == (NOISY if hyp else 2 * NOISY) and all(
        c["state"] == "pass" and c["job_id"] not in not_in for c in cells
    )


class PipeReader:
    """Reads the daemon's stdout only while ``reading`` is set (a pager, paused or not)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.reading = threading.Event()
        self.data = bytearray()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self.reading.wait(0.05):
                continue
            ready, _, _ = select.select([self.fd], [], [], 0.05)
            if ready:
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    return
                self.data.extend(chunk)

    def events(self) -> list[dict[str, Any]]:
        text = bytes(self.data).decode("utf-8", "replace")
        return [json.loads(ln) for ln in text[: text.rfind("\n") + 1].splitlines() if ln]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


def _touch(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_a_stalled_stdout_reader_never_stops_the_daemon(tmp_path: Path) -> None:
    read_fd, write_fd = os.pipe()
    proc, status, trees = _start(tmp_path, write_fd)
    os.close(write_fd)
    reader = PipeReader(read_fd)
    try:
        # The start-up run writes far more than a pipe holds (> 60 job_finished lines of
        # ~2.5 KB each) while nobody reads: every job still finishes.
        wait_until(lambda: _noisy_all_pass(status, set()), 60, what="start-up run")
        # Changes still become runs (more log than pipe and buffer hold together), and a
        # timeout still fires.
        for hyp, value in (("hyp-1", 2), ("repo", 2)):
            before = _noisy_job_ids(status)
            _touch(trees[hyp] / "src" / "app.py", f"VALUE = {value}\n")
            wait_until(
                lambda b=before, h=hyp: _noisy_all_pass(status, b, h), 60, what="rerun stalled"
            )
        _touch(trees["hyp-1"] / "slow" / "a.txt", "go\n")
        wait_until(
            lambda: any(c["state"] == "timeout" for c in _cells(_status(status), "slow")),
            30,
            what="a timeout while stalled",
        )
        # The reader resumes: what could not be buffered is counted, once.
        reader.reading.set()
        second = _noisy_job_ids(status)
        _touch(trees["repo"] / "src" / "app.py", "VALUE = 3\n")
        wait_until(lambda: _noisy_all_pass(status, second, "repo"), 60, what="rerun after resume")
        dropped = wait_until(
            lambda: [e for e in reader.events() if e["event"] == "log_dropped"],
            30,
            what="log_dropped",
        )
        assert dropped[0]["count"] > 0 and dropped[0]["level"] == "warning"
        # Stalled again, then SIGTERM: honoured within kill_grace_s + 2 s (+ 1 s to let the
        # log drain), and the final status says stopped.
        reader.reading.clear()
        third = _noisy_job_ids(status)
        _touch(trees["hyp-1"] / "src" / "app.py", "VALUE = 4\n")
        wait_until(lambda: _noisy_all_pass(status, third, "hyp-1"), 60, what="rerun stalled again")
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert time.monotonic() - started < 1 + 2 + 1 + 2  # grace, bound, drain, slack
        assert _status(status)["daemon"]["state"] == "stopped"
        # Every contract event still reached the event history in the state dir.
        history = (status.parent / "events.jsonl").read_text().splitlines()
        events = [json.loads(line)["event"] for line in history]
        assert events[-1] == "daemon_stopped"
        assert events.count("job_finished") >= 6 * NOISY  # start-up (2 x) and four reruns
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.close()
        with contextlib.suppress(OSError):
            os.close(read_fd)


def test_stdout_on_a_full_disk_loses_no_change_and_stops_cleanly(tmp_path: Path) -> None:
    with open("/dev/full", "wb") as full:
        proc, status, trees = _start(tmp_path, full.fileno())
    try:
        wait_until(lambda: _noisy_all_pass(status, set()), 60, what="start-up run")
        for round_ in range(3):  # every change is still seen and run
            before = _noisy_job_ids(status)
            _touch(trees["hyp-1"] / "src" / "app.py", f"VALUE = {round_ + 10}\n")
            wait_until(lambda b=before: _noisy_all_pass(status, b, "hyp-1"), 60, what="rerun")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert _status(status)["daemon"]["state"] == "stopped"
        errors = (tmp_path / "stderr").read_text(errors="replace")
        assert "Traceback" not in errors
        assert errors.count("cannot write the log") <= 2  # once per failure spell
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
