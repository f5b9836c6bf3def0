"""The real daemon speaking sd_notify to a datagram socket that stands in for systemd.

No systemd manager runs: a manager started here could adopt processes that are not ours.
Instead this test plays systemd's part of the protocol: it binds the notify socket, sets
NOTIFY_SOCKET / WATCHDOG_USEC / WATCHDOG_PID exactly as systemd would for a Type=notify
service, checks who sent each datagram (SCM_CREDENTIALS, as NotifyAccess=main does) and
when (kernel receive timestamps), and sends SIGHUP / SIGTERM as ExecReload= and
`systemctl stop` would.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pytest

WATCHDOG_USEC = 400_000  # systemd would expect a ping at least every 0.4 s
KILL_GRACE_S = 2.0
STARTUP_TIMEOUT_S = 60.0  # import + git + watcher arming on a loaded 2-core box
EVENT_TIMEOUT_S = 30.0
# Linux's SO_TIMESTAMPNS (asm-generic and x86); Python's socket module does not export it.
SO_TIMESTAMPNS = 35
T = TypeVar("T")


@dataclass(frozen=True)
class Datagram:
    at: float  # when the kernel queued it (CLOCK_REALTIME seconds)
    pid: int  # the sender, from SCM_CREDENTIALS
    lines: tuple[str, ...]

    def has(self, line: str) -> bool:
        return line in self.lines

    def value(self, key: str) -> str | None:
        for line in self.lines:
            name, sep, value = line.partition("=")
            if sep and name == key:
                return value
        return None


@dataclass
class NotifySocket:
    """systemd's end of the notify socket: records every datagram with sender and time."""

    path: str
    sock: socket.socket = field(init=False)
    received: list[Datagram] = field(default_factory=list)
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _stop: threading.Event = field(default_factory=threading.Event)
    _kernel_time: bool = False
    sender: subprocess.Popen[bytes] | None = None  # stop waiting early once it has exited

    def __post_init__(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            self._kernel_time = True
        except OSError:
            self._kernel_time = False  # fall back to the reader thread's clock
        self.sock.settimeout(0.1)
        self._thread = threading.Thread(target=self._read, name="notify-socket", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        ancillary = socket.CMSG_SPACE(12) + socket.CMSG_SPACE(16)
        while not self._stop.is_set():
            try:
                data, ancdata, _flags, _addr = self.sock.recvmsg(65536, ancillary)
            except TimeoutError:
                continue
            at, pid = time.time(), -1
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("3i", payload[:12])[0]
                elif level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and self._kernel_time:
                    sec, nsec = struct.unpack("2q", payload[:16])
                    at = sec + nsec / 1e9
            with self._cond:
                self.received.append(Datagram(at, pid, tuple(data.decode().split("\n"))))
                self._cond.notify_all()

    def wait_for(
        self,
        predicate: Callable[[list[Datagram]], T | None],
        what: str,
        timeout: float = EVENT_TIMEOUT_S,
    ) -> T:
        """Block until ``predicate`` finds something, the sender exits, or ``timeout``."""
        deadline = time.monotonic() + timeout
        gone = False
        with self._cond:
            while True:
                found = predicate(self.received)
                if found is not None and found is not False:
                    return found
                if not gone and self.sender is not None and self.sender.poll() is not None:
                    # Its last datagrams may still sit in the socket queue: let the reader
                    # catch up (it wakes us), but stop waiting for anything more.
                    gone = True
                    deadline = min(deadline, time.monotonic() + 5.0)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    seen = [d.lines for d in self.received][-20:]
                    why = "the daemon exited" if gone else "timed out"
                    raise AssertionError(f"{why} waiting for {what}; last datagrams: {seen}")
                self._cond.wait(min(remaining, 0.2))

    def snapshot(self) -> list[Datagram]:
        with self._cond:
            return list(self.received)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.sock.close()


def first_after(start: int, line: str) -> Callable[[list[Datagram]], int | None]:
    """Predicate: index of the first datagram at or after ``start`` containing ``line``."""

    def find(received: list[Datagram]) -> int | None:
        for index in range(start, len(received)):
            if received[index].has(line):
                return index
        return None

    return find


def job_processes(marker: str) -> list[int]:
    """Pids of live processes that are jobs of this test's daemon (PO_JOB_ID + our marker)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
        except OSError:
            continue  # gone, or not ours to read
        if f"PO_TEST_MARKER={marker}".encode() in environ and any(
            item.startswith(b"PO_JOB_ID=") for item in environ
        ):
            pids.append(int(entry))
    return pids


def wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


@pytest.fixture
def notify_socket() -> Iterator[NotifySocket]:
    directory = tempfile.mkdtemp(prefix="po-sd-")  # short: AF_UNIX paths max 107 bytes
    listener = NotifySocket(os.path.join(directory, "notify.sock"))
    yield listener
    listener.close()
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A git repository with one commit; its main worktree is the one hypothesis."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run([*git, "init", "-q"], check=True, timeout=60)
    (repo / "mod.py").write_text("x = 1\n")
    subprocess.run([*git, "add", "mod.py"], check=True, timeout=60)
    subprocess.run([*git, "commit", "-q", "-m", "init"], check=True, timeout=60)
    return tmp_path


@pytest.mark.timeout(300)
def test_daemon_speaks_sd_notify(project: Path, notify_socket: NotifySocket) -> None:
    marker = uuid.uuid4().hex
    env_dump = project / "job-env.txt"
    config = project / "po.toml"
    # Publish the environment atomically (the test reads it), then stay running until stop.
    job = f"env > '{env_dump}.tmp' && mv '{env_dump}.tmp' '{env_dump}' && exec sleep 600"
    config.write_text(
        f"""
[daemon]
state_dir = "state"
log_file = "daemon.log"
run_on_start = true

[worktrees]
repo = "repo"

[[scripts]]
name = "sleeper"
command = ["sh", "-c", "{job}"]
watch = ["**/*.py"]
timeout_s = 900
kill_grace_s = {KILL_GRACE_S}
env = {{ PO_TEST_MARKER = "{marker}" }}
"""
    )
    config.chmod(0o600)

    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("NOTIFY_SOCKET", "WATCHDOG_", "LISTEN_"))
    }
    env.update(
        NOTIFY_SOCKET=notify_socket.path,
        WATCHDOG_USEC=str(WATCHDOG_USEC),
        LISTEN_FDS="0",
        LISTEN_FDNAMES="none",
    )
    # systemd sets WATCHDOG_PID and LISTEN_PID to the main pid; exec keeps the shell's pid.
    launcher = 'export WATCHDOG_PID=$$ LISTEN_PID=$$; exec "$@"'
    console = project / "daemon.out"  # a file, not a pipe: nothing can block the daemon
    with console.open("wb") as out:
        proc = subprocess.Popen(
            [
                "sh",
                "-c",
                launcher,
                "sh",
                sys.executable,
                "-m",
                "parallel_orchestrator",
                "run",
                "-c",
                str(config),
            ],
            env=env,
            cwd=project,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    notify_socket.sender = proc
    try:
        _exercise(proc, notify_socket, env_dump, marker, project / "daemon.log", console)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        for pid in job_processes(marker):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _exercise(
    proc: subprocess.Popen[bytes],
    sd: NotifySocket,
    env_dump: Path,
    marker: str,
    log_file: Path,
    console: Path,
) -> None:
    def output() -> str:
        return console.read_text(errors="replace")[-4000:]

    # READY=1, from the main pid (anything else NotifyAccess=main would drop).
    try:
        ready = sd.wait_for(first_after(0, "READY=1"), "READY=1", STARTUP_TIMEOUT_S)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\ndaemon output:\n{output()}") from None
    assert sd.snapshot()[ready].pid == proc.pid

    # The start-up job is running; its environment carries no line to systemd.
    assert wait_until(env_dump.exists, EVENT_TIMEOUT_S), "the job never started"
    job_env = env_dump.read_text().splitlines()
    leaked = [
        line for line in job_env if line.startswith(("NOTIFY_SOCKET=", "WATCHDOG_", "LISTEN_"))
    ]
    assert leaked == [], leaked
    assert any(line.startswith("PO_JOB_ID=") for line in job_env)
    assert job_processes(marker), "no live job found before stop"

    # STATUS= lines: present and one line each (multi-line would break the protocol).
    status = sd.wait_for(
        lambda rs: [d.value("STATUS") for d in rs if d.value("STATUS") is not None] or None,
        "STATUS=",
    )
    assert all(line for line in status), status

    # Enough watchdog pings to judge their rhythm.
    sd.wait_for(lambda rs: sum(d.has("WATCHDOG=1") for d in rs) >= 8 or None, "8 x WATCHDOG=1")

    # SIGHUP (what ExecReload= sends): RELOADING=1 with MONOTONIC_USEC, then READY=1.
    before_usec = time.monotonic_ns() // 1000
    start = len(sd.snapshot())
    proc.send_signal(signal.SIGHUP)
    reloading = sd.wait_for(first_after(start, "RELOADING=1"), "RELOADING=1")
    after_usec = time.monotonic_ns() // 1000
    datagram = sd.snapshot()[reloading]
    usec = datagram.value("MONOTONIC_USEC")
    assert usec is not None, f"MONOTONIC_USEC not in the RELOADING=1 datagram: {datagram.lines}"
    assert before_usec <= int(usec) <= after_usec
    sd.wait_for(first_after(reloading + 1, "READY=1"), "READY=1 after the reload")
    mark = len(sd.snapshot())
    sd.wait_for(
        lambda rs: sum(d.has("WATCHDOG=1") for d in rs[mark:]) >= 3 or None,
        "WATCHDOG=1 after the reload",
    )

    # SIGTERM (what `systemctl stop` sends): STOPPING=1, exit 0 in time, no job left.
    start = len(sd.snapshot())
    proc.send_signal(signal.SIGTERM)
    sd.wait_for(first_after(start, "STOPPING=1"), "STOPPING=1")
    try:
        code = proc.wait(timeout=KILL_GRACE_S + 2 + 20)  # contract: kill_grace_s + 2
    except subprocess.TimeoutExpired:
        raise AssertionError("the daemon did not exit after SIGTERM") from None
    assert code == 0, output()
    assert wait_until(lambda: not job_processes(marker), 10), job_processes(marker)

    received = sd.snapshot()
    assert {d.pid for d in received} == {proc.pid}, "a datagram came from another process"

    # The watchdog never went quiet for as long as systemd would tolerate.
    # Judged from the first ping to STOPPING=1, after which systemd stops the watchdog.
    stopping_at = next(d.at for d in received if d.has("STOPPING=1"))
    beats = [d.at for d in received if d.has("WATCHDOG=1") and d.at <= stopping_at]
    beats.append(stopping_at)
    gaps = [b - a for a, b in itertools.pairwise(beats)]
    assert max(gaps) < WATCHDOG_USEC / 1e6, f"largest watchdog gap {max(gaps):.3f}s"

    last = json.loads(log_file.read_text().splitlines()[-1])
    assert last["event"] == "daemon_stopped"
