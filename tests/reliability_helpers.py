"""What the reliability tests measure about a real daemon process, read from /proc.

Kept apart from ``harness.py`` (which starts daemons and reads their logs): these helpers
answer "how much memory / how many fds / which children / which sockets" for any pid.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import DaemonProcess, wait_until

# /proc/net/tcp state column: 0A is TCP_LISTEN.
TCP_LISTEN = "0A"
# /proc/net/unix "Flags" column: __SO_ACCEPTCON, set on a socket that called listen().
UNIX_ACCEPTCON = 0x00010000
INET_TABLES = ("tcp", "tcp6", "udp", "udp6", "udplite", "udplite6", "raw", "raw6")


# -- memory, fds, processes ------------------------------------------------------------
def proc_status_kb(pid: int, key: str) -> int:
    """A ``kB`` field of /proc/<pid>/status (VmRSS, VmHWM, ...)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name == key:
            return int(value.split()[0])
    raise KeyError(f"{key} not in /proc/{pid}/status")


def rss_kb(pid: int) -> int:
    return proc_status_kb(pid, "VmRSS")


def hwm_kb(pid: int) -> int:
    """Peak RSS over the process's whole life: catches a spike no sampler would see."""
    return proc_status_kb(pid, "VmHWM")


def fd_targets(pid: int) -> list[str]:
    """What each open fd of ``pid`` points at (for a readable diff when counts differ)."""
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(FileNotFoundError):
            out.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
    return sorted(out)


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _stat_fields(pid: int) -> tuple[str, int] | None:
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return None
    rest = data[data.rindex(b")") + 2 :].split()
    return rest[0].decode(), int(rest[1])


def descendants(pid: int) -> list[int]:
    """Every live (non-zombie) process below ``pid``, by walking parent links in /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is None or fields[0] in ("Z", "X"):
            continue
        children.setdefault(fields[1], []).append(int(entry))
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return sorted(out)


def thread_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


# -- sockets ---------------------------------------------------------------------------
def socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for target in fd_targets(pid):
        if target.startswith("socket:["):
            inodes.add(int(target[len("socket:[") : -1]))
    return inodes


def inet_sockets(pid: int) -> list[str]:
    """Every inet socket (TCP listening or not, UDP, raw) the process holds, as table rows."""
    mine = socket_inodes(pid)
    found = []
    for table in INET_TABLES:
        path = Path(f"/proc/{pid}/net/{table}")
        if not path.exists():
            continue
        for row in path.read_text().splitlines()[1:]:
            cols = row.split()
            if len(cols) > 9 and int(cols[9]) in mine:
                found.append(f"{table}: {row.strip()}")
    return found


def listening_sockets(pid: int) -> list[str]:
    """Sockets of ``pid`` that accept connections: TCP LISTEN or a listening unix socket."""
    mine = socket_inodes(pid)
    found = []
    for table in ("tcp", "tcp6"):
        path = Path(f"/proc/{pid}/net/{table}")
        if path.exists():
            for row in path.read_text().splitlines()[1:]:
                cols = row.split()
                if int(cols[9]) in mine and cols[3] == TCP_LISTEN:
                    found.append(f"{table}: {row.strip()}")
    for row in Path(f"/proc/{pid}/net/unix").read_text().splitlines()[1:]:
        cols = row.split()
        if int(cols[6]) in mine and int(cols[3], 16) & UNIX_ACCEPTCON:
            found.append(f"unix: {row.strip()}")
    return found


# -- scripts and files -----------------------------------------------------------------
def write_script(folder: Path, name: str, body: str) -> list[str]:
    """A Python job script outside every worktree; returns the command that runs it."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(body))
    return [sys.executable, os.fsdecode(path)]


def touch_edit(path: Path, text: str = "# edit\n") -> None:
    with open(path, "a") as f:
        f.write(text)


def events_after(d: DaemonProcess, name: str, after: int) -> list[dict[str, Any]]:
    """Events named ``name`` that come after the first ``after`` log lines."""
    return [e for e in d.events()[after:] if e["event"] == name]


def wait_cell(
    d: DaemonProcess, hyp: str, script: str, *states: str, where: Any = None, timeout: float = 30.0
) -> dict[str, Any]:
    """Wait until the status cell is in one of ``states`` (and ``where(cell)`` holds)."""

    def check() -> dict[str, Any] | None:
        d._check_alive()
        try:
            cell = d.cell(hyp, script)
        except (FileNotFoundError, ValueError, KeyError):
            return None
        if cell["state"] in states and (where is None or where(cell)):
            return cell
        return None

    return wait_until(check, timeout, what=f"{hyp}/{script} in {states}")


def wait_fresh_ready(d: DaemonProcess, timeout: float = 60.0) -> None:
    """Ready as ``wait_ready``, but only once the status file is this daemon's own: after a
    crash the previous daemon's file still says "running"."""

    def ready() -> bool:
        d._check_alive()
        try:
            doc = d.status()["daemon"]
        except (FileNotFoundError, ValueError, KeyError):
            return False
        return doc["pid"] == d.proc.pid and doc["state"] in ("idle", "running")

    wait_until(ready, timeout, what="the new daemon ready")


def wait_idle(d: DaemonProcess, timeout: float = 30.0) -> int:
    """Wait until every started job has finished and none is queued; the finished count."""

    def idle() -> int | None:
        d._check_alive()
        events = d.events()
        started = {e["job_id"] for e in events if e["event"] == "job_started"}
        finished = {e["job_id"] for e in events if e["event"] == "job_finished"}
        try:
            summary = d.status()["summary"]
        except (FileNotFoundError, ValueError):
            return None
        # A job cancelled while it was being spawned finishes without having started.
        quiet = started <= finished and summary["running"] == summary["queued"] == 0
        return len(finished) if quiet else None

    return wait_until(
        lambda: (idle(),) if idle() is not None else None, timeout, what="daemon idle"
    )[0]


def observe(seconds: float) -> None:
    """An observation window, used only to show that something does NOT happen (a rerun
    loop, a respawn): an absence has no event to wait for. Never used to synchronise."""
    time.sleep(seconds)


def without_read_override() -> list[str]:
    """The command prefix that makes a daemon obey file modes: root reads through any
    mode, so as root it runs without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH
    (``setpriv``) and meets ``chmod 000`` as any other user would."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: file modes cannot hide anything")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search", "--"]


# -- mounts (root only) ----------------------------------------------------------------
@contextlib.contextmanager
def small_tmpfs(path: Path, size: str = "1m") -> Iterator[Path]:
    """A real, tiny filesystem at ``path`` (the honest way to fill a disk); skips when
    mounting is not allowed here (not root, or no CAP_SYS_ADMIN in a container)."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", os.fsdecode(path)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield path
    finally:
        # Lazy: a daemon that failed to stop may still hold files open in it.
        subprocess.run(["umount", "-l", os.fsdecode(path)], capture_output=True, check=False)


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[None]:
    """Make ``path`` read-only for everyone, root included: a read-only bind mount over it
    (chmod does not stop root, and a plain ``remount,ro`` is refused while the daemon holds
    files open for writing). Leaving the block removes the overlay. Skips when mounting is
    not allowed here."""
    if os.geteuid() != 0:
        pytest.skip("a read-only bind mount needs root")
    target = os.fsdecode(path)
    done = subprocess.run(["mount", "--bind", target, target], capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot bind-mount: {done.stderr.decode(errors='replace').strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", target], check=True, capture_output=True)
        yield
    finally:
        subprocess.run(["umount", "-l", target], capture_output=True, check=False)
