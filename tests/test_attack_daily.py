"""Adversarial end-to-end checks of the daemon's control files (issue 12's rerun
requests and config reload), through the real CLI and the real daemon subprocess."""

from __future__ import annotations

import fcntl
import json
import os
import select
import subprocess
import sys
import termios
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import DaemonProcess, make_repo, wait_until, write_config

pytestmark = pytest.mark.timeout(120)

SCRIPTS = [{"name": "lint", "command": [sys.executable, "-c", "pass"], "watch": ["src/**"]}]


@pytest.fixture
def project(tmp_path: Path) -> Iterator[tuple[DaemonProcess, Path]]:
    repo, _trees = make_repo(tmp_path)
    config = write_config(tmp_path / "cfg" / "config.toml", repo, SCRIPTS, run_on_start=False)
    daemon = DaemonProcess(config)
    try:
        daemon.wait_ready()
        yield daemon, config
    finally:
        daemon.stop()


def test_requests_folder_swapped_for_a_symlink_deletes_nothing_it_points_at(
    project: tuple[DaemonProcess, Path], tmp_path: Path
) -> None:
    """requests/ replaced by a link to another folder between two runs: the daemon
    refuses to start (its scan removes every file it finds) and deletes nothing there."""
    daemon, config = project
    assert daemon.stop() == 0
    folder = config.parent / "state" / "requests"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    keep = elsewhere / "notes.txt"
    keep.write_text("precious")
    request = elsewhere / "1-0000000a.json"
    request.write_text(json.dumps({"version": 1, "targets": [], "failed": False}))
    folder.rmdir()
    os.symlink(elsewhere, folder)
    again = DaemonProcess(config)
    code = again.wait_exit()
    assert code == 2
    assert "refusing its requests/: a symlink" in again.stderr_path.read_text()
    assert keep.read_text() == "precious"
    assert request.exists()


STATUS_WATCH = [sys.executable, "-m", "parallel_orchestrator", "status", "--watch"]


@pytest.mark.parametrize("controlling", [False, True], ids=["plain-pty", "controlling-tty"])
def test_status_watch_exits_cleanly_when_its_pty_is_closed(
    project: tuple[DaemonProcess, Path], tmp_path: Path, controlling: bool
) -> None:
    """The terminal window closed under ``status --watch`` (the pty's master end goes):
    writes fail with EIO and the terminal cannot be restored; no traceback, exit 0."""
    _daemon, config = project
    master, slave = os.openpty()
    stderr = tmp_path / "watch.stderr"
    with open(stderr, "wb") as err:
        proc = subprocess.Popen(
            [*STATUS_WATCH, "-c", os.fsdecode(config)],
            stdin=slave,
            stdout=slave,
            stderr=err,
            start_new_session=True,
            preexec_fn=(lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0)) if controlling else None,
            cwd=config.parent,
        )
    os.close(slave)
    seen = bytearray()
    wait_until(lambda: seen.extend(_read_some(master)) or b"keys:" in seen, what="first frame")
    os.close(master)
    try:
        code = proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Traceback" not in stderr.read_text(errors="replace"), stderr.read_text()
    assert code == 0


def _read_some(fd: int) -> bytes:
    ready, _, _ = select.select([fd], [], [], 0.1)
    return os.read(fd, 65536) if ready else b""


def test_requests_folder_swapped_for_a_symlink_while_running_deletes_nothing_there(
    tmp_path: Path,
) -> None:
    """requests/ replaced by a link while the daemon runs, then a rescan (a config link
    retargeted re-arms the watch): the daemon removes every file it scans, so it must
    not scan through the link."""
    repo, _trees = make_repo(tmp_path)
    state, log = tmp_path / "cfg" / "state", tmp_path / "cfg" / "daemon.log"
    real_a = write_config(
        tmp_path / "a" / "config.toml", repo, SCRIPTS, state_dir=str(state), log_file=str(log)
    )
    real_b = write_config(
        tmp_path / "b" / "config.toml",
        repo,
        SCRIPTS,
        state_dir=str(state),
        log_file=str(log),
        debounce_ms=60,
    )
    config = tmp_path / "cfg" / "config.toml"
    config.parent.mkdir()
    os.symlink(real_a, config)
    daemon = DaemonProcess(config)
    try:
        daemon.wait_ready()
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        keep = elsewhere / "notes.txt"
        keep.write_text("precious")
        request = elsewhere / "1-0000000a.json"
        request.write_text(json.dumps({"version": 1, "targets": [], "failed": False}))
        (state / "requests").rmdir()
        os.symlink(elsewhere, state / "requests")
        os.symlink(real_b, tmp_path / "cfg" / ".link")
        os.replace(tmp_path / "cfg" / ".link", config)
        daemon.wait_event("config_reloaded")
        daemon.wait_event("rerun_request_invalid")
        assert keep.read_text() == "precious"
        assert request.exists()
        assert not [e for e in daemon.events("batch_formed") if e.get("reason") == "manual"]
    finally:
        daemon.stop()
