"""The sd_notify client against real AF_UNIX datagram sockets (path and abstract)."""

from __future__ import annotations

import asyncio
import fcntl
import os
import shutil
import socket
import struct
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from parallel_orchestrator.service.notify import Notifier

RECV_TIMEOUT_S = 10.0


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path: AF_UNIX paths are limited to 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="po-notify-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def listener(short_dir: Path) -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket standing in for systemd's notify socket."""
    path = str(short_dir / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(RECV_TIMEOUT_S)
    yield sock, path
    sock.close()


def pending(sock: socket.socket) -> list[bytes]:
    """Every datagram already queued; a unix datagram is queued before sendto returns."""
    sock.setblocking(False)
    out: list[bytes] = []
    try:
        while True:
            out.append(sock.recv(4096))
    except BlockingIOError:
        return out
    finally:
        sock.settimeout(RECV_TIMEOUT_S)


def open_fds() -> dict[int, str]:
    """This process's descriptors and their targets, minus the one listing /proc/self/fd."""
    out: dict[int, str] = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            out[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except FileNotFoundError:
            continue  # the directory handle os.listdir used, already closed
    return out


def test_path_socket_receives_ready_from_this_process(
    listener: tuple[socket.socket, str],
) -> None:
    sock, path = listener
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    notifier = Notifier({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    assert notifier.ready() is True
    data, ancdata, _flags, _addr = sock.recvmsg(4096, socket.CMSG_SPACE(12))
    assert data == b"READY=1"
    creds = [
        d
        for level, kind, d in ancdata
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS
    ]
    assert creds, "no SCM_CREDENTIALS attached"
    pid, _uid, _gid = struct.unpack("3i", creds[0][:12])
    assert pid == os.getpid()
    notifier.close()


def test_abstract_socket() -> None:
    name = f"po-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(RECV_TIMEOUT_S)
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name})
        assert notifier.stopping() is True
        assert sock.recv(4096) == b"STOPPING=1"
        notifier.close()


def test_fields_travel_in_one_datagram(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    notifier = Notifier({"NOTIFY_SOCKET": path})
    assert notifier.send("STATUS=x", "WATCHDOG=1") is True
    assert notifier.watchdog() is True
    assert pending(sock) == [b"STATUS=x\nWATCHDOG=1", b"WATCHDOG=1"]
    notifier.close()


def test_reloading_carries_monotonic_usec_in_the_same_datagram(
    listener: tuple[socket.socket, str],
) -> None:
    sock, path = listener
    notifier = Notifier({"NOTIFY_SOCKET": path})
    before = time.monotonic_ns() // 1000
    assert notifier.reloading() is True
    after = time.monotonic_ns() // 1000
    [datagram] = pending(sock)
    first, second = datagram.decode().split("\n")
    assert first == "RELOADING=1"
    key, _, value = second.partition("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= after
    notifier.close()


def test_status_is_one_line(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    notifier = Notifier({"NOTIFY_SOCKET": path})
    assert notifier.status("4 hypotheses, 2 running,\n1 failing") is True
    assert pending(sock) == [b"STATUS=4 hypotheses, 2 running, 1 failing"]
    notifier.close()


def test_nothing_is_sent_without_notify_socket(
    listener: tuple[socket.socket, str],
) -> None:
    sock, _path = listener
    notifier = Notifier({"WATCHDOG_USEC": "400000"})
    assert not notifier.enabled
    with capture_logs() as logs:
        results = [
            notifier.ready(),
            notifier.status("x"),
            notifier.watchdog(),
            notifier.reloading(),
            notifier.stopping(),
            notifier.send("A=1"),
        ]
    assert results == [False] * 6
    assert logs == []
    assert pending(sock) == []
    assert Notifier({"NOTIFY_SOCKET": ""}).enabled is False


def test_default_env_is_os_environ(
    listener: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, path = listener
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    notifier = Notifier()
    assert notifier.ready() is True
    assert sock.recv(4096) == b"READY=1"
    notifier.close()


def test_missing_socket_is_logged_not_raised(short_dir: Path) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(short_dir / "absent.sock")})
    with capture_logs() as logs:
        assert notifier.stopping() is False
    [entry] = logs
    assert entry["event"] == "notify_failed"
    assert entry["log_level"] == "warning"
    assert "No such file" in entry["error"]
    notifier.close()


def test_refused_send_is_logged_and_not_sticky(short_dir: Path) -> None:
    """A socket file nobody listens on refuses; once someone listens, sends work again."""
    path = str(short_dir / "stale.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stale.bind(path)
    stale.close()  # the file stays, the listener is gone: ECONNREFUSED
    notifier = Notifier({"NOTIFY_SOCKET": path})
    with capture_logs() as logs:
        assert notifier.stopping() is False
    assert [e["event"] for e in logs] == ["notify_failed"]
    assert "refused" in logs[0]["error"].lower()

    os.unlink(path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(RECV_TIMEOUT_S)
        assert notifier.stopping() is True
        assert sock.recv(4096) == b"STOPPING=1"
    notifier.close()


def test_unsupported_address_is_logged() -> None:
    notifier = Notifier({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert notifier.enabled
    with capture_logs() as logs:
        assert notifier.ready() is False
    assert [e["event"] for e in logs] == ["notify_failed"]
    assert "vsock:2:1234" in logs[0]["error"]


def test_socket_is_close_on_exec(listener: tuple[socket.socket, str]) -> None:
    """Jobs are forked from the daemon; none may inherit a line to systemd."""
    sock, path = listener
    notifier = Notifier({"NOTIFY_SOCKET": path})
    before = open_fds()
    assert notifier.ready() is True
    opened = open_fds().keys() - before.keys()
    assert opened, "the first send opened no socket"
    for fd in opened:
        assert open_fds()[fd].startswith("socket:")
        assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
    assert notifier.ready() is True
    assert open_fds().keys() - before.keys() == opened, "a second send opened another socket"
    assert pending(sock) == [b"READY=1", b"READY=1"]
    notifier.close()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "400000"}, 0.2),
        ({"WATCHDOG_USEC": "400000", "WATCHDOG_PID": "{self}"}, 0.2),
        ({"WATCHDOG_USEC": "400000", "WATCHDOG_PID": "{other}"}, None),
        ({"WATCHDOG_USEC": "400000", "WATCHDOG_PID": "nope"}, None),
        ({}, None),
        ({"WATCHDOG_USEC": ""}, None),
        ({"WATCHDOG_USEC": "abc"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    me = os.getpid()
    resolved = {k: v.format(self=me, other=me + 1) for k, v in env.items()}
    interval = Notifier(resolved).watchdog_interval()
    if expected is None:
        assert interval is None
    else:
        assert interval == pytest.approx(expected)


async def test_run_watchdog_pings_from_the_event_loop(
    listener: tuple[socket.socket, str],
) -> None:
    sock, path = listener
    sock.setblocking(False)
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000"})
    task = asyncio.create_task(notifier.run_watchdog())
    loop = asyncio.get_running_loop()
    try:
        received = [
            await asyncio.wait_for(loop.sock_recv(sock, 4096), RECV_TIMEOUT_S) for _ in range(3)
        ]
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert received == [b"WATCHDOG=1"] * 3
    notifier.close()


async def test_run_watchdog_returns_when_no_watchdog_applies(
    listener: tuple[socket.socket, str],
) -> None:
    _sock, path = listener
    for env in (
        {"NOTIFY_SOCKET": path},
        {"WATCHDOG_USEC": "100000"},
        {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000", "WATCHDOG_PID": str(os.getpid() + 1)},
    ):
        await asyncio.wait_for(Notifier(env).run_watchdog(), RECV_TIMEOUT_S)
