"""Find and kill the processes a job left behind, including those that left its process group.

Killing a job's process group is not enough: a job may call ``setsid()`` or double-fork
out of the group (daemonising test servers do). Two mechanisms catch those escapees:

* **Subreaper** (``become_subreaper``, used by the daemon): orphaned descendants are
  reparented to us instead of init, so after a job's group is dead its escapees are among
  our direct children. Listing them is cheap when the kernel has ``CONFIG_PROC_CHILDREN``
  (``/proc/<pid>/task/<tid>/children``); otherwise one pass over ``/proc/*/stat`` finds them.
* **Marker**: every job runs with ``PO_JOB_ID=<job_id>``, which descendants inherit.
  ``find_marked`` scans every ``/proc/<pid>/environ``; it is slow, so it is used only when
  we are not a subreaper and the job gave reason to look (timeout, cancel, or a group that
  still had members when the leader exited), and at crash recovery.

Attribution of a process to a job (``_JobTrace``): it carries the job's marker, or it is in
a process group or session that belongs to the job — the job's own group/session (the
leader runs in a new session, so pgid == sid == leader pid) or the group/session of an
escapee already attributed. Sessions cannot be joined from outside, so every member of a
session created inside a job descends from that job: signalling it is safe.

Unmarked escapees (they cleared their environment *and* left the job's session) cannot be
attributed to one job. As a subreaper we still hold them as children: ``kill_unattributed``
(``sweep_unattributed`` on the event loop) kills every adopted, non-leader child; the
daemon runs it whenever no job runs and at shutdown, when every job has ended, so nothing
of ours outlives the daemon. Without subreaper they are not found.

Nothing here ever reaps a pid that is not ours to reap: ``waitpid`` is only called on a
specific pid that ``/proc`` shows as our child and that is not in ``known`` (the job leaders
the runner waits for); never ``waitpid(-1)``.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import os
import signal
import sys
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field

MARKER_VAR = "PO_JOB_ID"
PR_SET_CHILD_SUBREAPER = 36
PR_GET_CHILD_SUBREAPER = 37

_PROC = "/proc"
_subreaper: bool | None = None  # cached answer of PR_GET_CHILD_SUBREAPER
_children_file_ok: bool | None = None  # does this kernel provide task/<tid>/children?
# Between passes of kill_unattributed: a SIGKILLed process is normally gone by then.
_UNATTRIBUTED_PAUSE_S = 0.005


@dataclass(frozen=True)
class ProcStat:
    """The fields of ``/proc/<pid>/stat`` the janitor needs."""

    pid: int
    state: str
    ppid: int
    pgrp: int
    session: int
    start_time: int  # clock ticks since boot (field 22); with the pid it names one process


@dataclass
class SweepReport:
    """What a sweep did; the runner puts it in ``JobOutcome.extra``."""

    killed: list[int] = field(default_factory=list)
    reaped: list[int] = field(default_factory=list)
    unreaped: list[int] = field(default_factory=list)  # killed but not gone by the deadline
    scans: int = 0


_libc: ctypes.CDLL | None = None


def _prctl(option: int, arg2: int) -> int:
    """Call prctl(2); raise OSError naming the option on failure."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
        _libc.prctl.restype = ctypes.c_int
    if _libc.prctl(option, arg2, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({option}): {os.strerror(err)}")
    return 0


def become_subreaper() -> bool:
    """Make orphaned descendants reparent to this process; True when in effect.

    Process-global (children do not inherit it), so only the daemon calls it: a library
    user's process should not start adopting orphans it never reaps.
    """
    global _subreaper
    if not sys.platform.startswith("linux"):
        return False
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    _subreaper = True
    return True


def is_subreaper() -> bool:
    """Whether orphans reparent to us (asked once from the kernel, then cached)."""
    global _subreaper
    if _subreaper is None:
        if not sys.platform.startswith("linux"):
            _subreaper = False
        else:
            value = ctypes.c_int(0)
            _prctl(PR_GET_CHILD_SUBREAPER, ctypes.addressof(value))
            _subreaper = value.value != 0
    return _subreaper


def read_proc(path: str, limit: int = -1) -> bytes | None:
    """Read a /proc file; None when the process is gone or not ours to read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, ProcessLookupError, PermissionError, NotADirectoryError):
        return None
    try:
        if limit > 0:
            return os.read(fd, limit)
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    except (ProcessLookupError, PermissionError, FileNotFoundError):
        return None
    except OSError as exc:  # ESRCH surfaces as a plain OSError on some kernels
        if exc.errno in (errno.ESRCH, errno.EACCES, errno.EPERM):
            return None
        raise
    finally:
        os.close(fd)


def parse_stat(pid: int, data: bytes) -> ProcStat:
    """Parse ``/proc/<pid>/stat``; comm may hold spaces and ')', so split at the last ')'."""
    rest = data[data.rindex(b")") + 2 :].split()
    return ProcStat(
        pid=pid,
        state=rest[0].decode("ascii", "replace"),
        ppid=int(rest[1]),
        pgrp=int(rest[2]),
        session=int(rest[3]),
        start_time=int(rest[19]),
    )


def read_stat(pid: int) -> ProcStat | None:
    """The process's stat line, or None when it no longer exists."""
    data = read_proc(f"{_PROC}/{pid}/stat", 1024)
    if not data:
        return None
    return parse_stat(pid, data)


def process_start_time(pid: int) -> int | None:
    """Start time (clock ticks since boot) of ``pid``; with the pid it identifies one process."""
    st = read_stat(pid)
    return None if st is None else st.start_time


def boot_id() -> str:
    """This boot's id: start times from another boot mean nothing."""
    data = read_proc(f"{_PROC}/sys/kernel/random/boot_id")
    return "" if data is None else data.decode("ascii", "replace").strip()


def has_marker(pid: int, job_id: str) -> bool:
    """Whether ``pid`` runs with exactly ``PO_JOB_ID=<job_id>`` in its environment."""
    return bool(job_id) and _env_has(pid, f"{MARKER_VAR}={job_id}".encode())


def _env_has(pid: int, entry: bytes) -> bool:
    data = read_proc(f"{_PROC}/{pid}/environ")
    return bool(data) and entry in data.split(b"\0")


def all_pids() -> list[int]:
    """Every pid in /proc (a listing of the whole process table: slow path only)."""
    return [int(name) for name in os.listdir(_PROC) if name.isdigit()]


def find_marked(job_id: str) -> list[int]:
    """Every live process carrying this job's marker (full /proc scan: slow, use sparingly)."""
    return find_with_env(f"{MARKER_VAR}={job_id}") if job_id else []


def find_with_env(entry: str) -> list[int]:
    """Every process but us whose environment holds exactly ``entry`` (``NAME=value``)."""
    me = os.getpid()
    return [pid for pid in all_pids() if pid != me and _env_has(pid, entry.encode())]


def _children_via_task_files(pid: int) -> list[int] | None:
    try:
        tids = os.listdir(f"{_PROC}/{pid}/task")
    except FileNotFoundError:
        return None
    out: list[int] = []
    for tid in tids:
        data = read_proc(f"{_PROC}/{pid}/task/{tid}/children")
        if data is None:
            if not os.path.exists(f"{_PROC}/{pid}/task/{tid}"):
                continue  # the thread ended meanwhile
            return None  # the kernel has no CONFIG_PROC_CHILDREN
        out.extend(int(x) for x in data.split())
    return out


def children_of_self() -> list[int]:
    """Our direct children: cheap via task/*/children when available, else a stat scan."""
    global _children_file_ok
    me = os.getpid()
    if _children_file_ok is not False:
        found = _children_via_task_files(me)
        if found is not None:
            _children_file_ok = True
            return found
        _children_file_ok = False
    out = []
    for pid in all_pids():
        data = read_proc(f"{_PROC}/{pid}/stat", 1024)
        if data and parse_stat(pid, data).ppid == me:
            out.append(pid)
    return out


def adopted_children(known: Collection[int]) -> list[int]:
    """Our children that are not job leaders the runner waits for: adopted orphans."""
    return [pid for pid in children_of_self() if pid not in known]


def _try_reap(pid: int) -> bool:
    """Reap ``pid`` (our child) if it has exited; True when it is gone."""
    try:
        done, _status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True  # not (or no longer) our child: reaped elsewhere or reparented
    return done == pid


def reap_adopted_zombies(known: Collection[int]) -> list[int]:
    """Reap adopted children that have exited, so escaped-and-exited orphans don't pile up.

    Children in our own session are skipped: those are the daemon's own helpers (git, ...)
    whose owners wait for them; jobs always run in sessions of their own.

    ``known`` must hold every job leader the runner waits for *and* no spawn may be in
    flight (a just-spawned leader is not in ``known`` yet); ``runner.reap_orphan_zombies``
    checks both.
    """
    own_session = os.getsid(0)
    reaped = []
    for st in _stats(adopted_children(known)):
        if st.state == "Z" and st.session != own_session and _try_reap(st.pid):
            reaped.append(st.pid)
    return reaped


def reap_group_zombies(pgid: int, known: Collection[int]) -> list[int]:
    """Reap adopted children in group ``pgid`` that have exited (they keep the group alive)."""
    reaped = []
    for st in _stats(adopted_children(known)):
        if st.pgrp == pgid and st.state == "Z" and _try_reap(st.pid):
            reaped.append(st.pid)
    return reaped


def _signal(pid: int, sig: int) -> bool:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


def signal_group(pgid: int, sig: int) -> bool:
    """Signal a whole process group; False when it has no members left."""
    if pgid <= 1 or pgid == os.getpgrp():
        return False  # never our own group, never init's
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # a member we may not signal (setuid): the group still exists
    return True


def group_alive(pgid: int) -> bool:
    """Whether any process (zombies included) is still in group ``pgid``.

    One syscall when the group is gone, the runner's check after every job; only a live
    group gets ``signal_group``'s guards (never init's group, never our own).
    """
    if pgid <= 1:
        return False
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # a member we may not signal (setuid): the group still exists
    return pgid != os.getpgrp()


def live_group_members(pgid: int) -> list[int]:
    """Members of group ``pgid`` that have not exited (a /proc scan: slow path only).

    A group of zombies still answers ``killpg(pgid, 0)``; if they are not our children
    we cannot reap them (and some inits never do), but they no longer run.
    """
    out = []
    for pid in all_pids():
        data = read_proc(f"{_PROC}/{pid}/stat", 1024)
        if data:
            st = parse_stat(pid, data)
            if st.pgrp == pgid and st.state not in ("Z", "X"):
                out.append(pid)
    return out


class _JobTrace:
    """What belongs to one job: its marker plus the groups/sessions created inside it."""

    def __init__(self, job_id: str, pgid: int | None) -> None:
        self.job_id = job_id
        self.groups: set[int] = set()
        self.sessions: set[int] = set()
        if pgid is not None:
            self.groups.add(pgid)
            self.sessions.add(pgid)  # the leader ran in a new session: sid == pgid
        self._own = (os.getpgrp(), os.getsid(0))

    def owns(self, st: ProcStat) -> bool:
        """Whether ``st`` belongs to the job; if so, its group and session are the job's too."""
        if (
            st.pgrp in self.groups
            or st.session in self.sessions
            or (st.state != "Z" and has_marker(st.pid, self.job_id))
        ):
            self.taint(st)
            return True
        return False

    def taint(self, st: ProcStat) -> None:
        """Record the escapee's own group/session: everything in them descends from the job."""
        if st.pgrp not in self._own:
            self.groups.add(st.pgrp)
        if st.session not in self._own:
            self.sessions.add(st.session)

    def kill(self, st: ProcStat) -> None:
        _signal(st.pid, signal.SIGKILL)
        if st.pgrp == st.pid:
            signal_group(st.pgrp, signal.SIGKILL)


async def sweep_adopted(
    job_id: str,
    pgid: int | None,
    known: Callable[[], Collection[int]],
    *,
    deadline_s: float = 5.0,
) -> SweepReport:
    """Kill and reap our adopted children that belong to the job, until none are left.

    Killing one may reparent its own children to us, hence the loop. Requires subreaper.
    ``known`` is called on every pass because other jobs start and end meanwhile.
    """
    report = SweepReport()
    trace = _JobTrace(job_id, pgid)
    pending: set[int] = set()
    deadline = time.monotonic() + deadline_s
    delay = 0.001
    while True:
        report.scans += 1
        found_new = False
        for pid in adopted_children(known()):
            if pid in pending:
                continue
            st = read_stat(pid)
            if st is None or not trace.owns(st):
                continue
            found_new = True
            if st.state != "Z":
                trace.kill(st)
                report.killed.append(pid)
            pending.add(pid)
        for pid in list(pending):
            if _try_reap(pid):
                pending.discard(pid)
                report.reaped.append(pid)
        if not pending and not found_new:
            return report
        if time.monotonic() >= deadline:
            report.unreaped = sorted(pending)
            return report
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)


async def sweep_marked(job_id: str, pgid: int | None, *, deadline_s: float = 5.0) -> SweepReport:
    """Without subreaper: full /proc scans, SIGKILL what belongs to the job, until none is left.

    The processes found are not our children (init reaps them), so nothing is reaped here.
    """
    report = SweepReport()
    trace = _JobTrace(job_id, pgid)
    me = os.getpid()
    deadline = time.monotonic() + deadline_s
    while True:
        report.scans += 1
        alive = []
        for pid in all_pids():
            if pid == me:
                continue
            st = read_stat(pid)
            if st is None or st.state == "Z" or not trace.owns(st):
                continue
            alive.append(pid)
            trace.kill(st)
            if pid not in report.killed:
                report.killed.append(pid)
        if not alive:
            return report
        if time.monotonic() >= deadline:
            report.unreaped = sorted(alive)
            return report
        await asyncio.sleep(0.01)


def kill_marked(job_id: str, rounds: int = 20) -> list[int]:
    """Synchronous SIGKILL of every process carrying the marker (crash recovery)."""
    trace = _JobTrace(job_id, None)
    killed: list[int] = []
    for _ in range(rounds):
        found = [st for st in _stats(find_marked(job_id)) if st.state != "Z"]
        if not found:
            break
        for st in found:
            trace.kill(st)
            killed.append(st.pid)
        time.sleep(0.01)
    return sorted(set(killed))


def _stats(pids: Iterable[int]) -> list[ProcStat]:
    return [st for st in (read_stat(pid) for pid in pids) if st is not None]


def kill_unattributed(known: Collection[int], *, deadline_s: float = 2.0) -> list[int]:
    """SIGKILL and reap every adopted child that is not a job leader (daemon shutdown).

    Used once all jobs have ended: anything still reparented to us then is a leftover of
    some job, marked or not. A caller with running jobs must not call it. Loops because
    killing one reparents its children to us. Our own session (the daemon's helpers) is
    left alone. Blocks up to ``deadline_s``: on an event loop use ``sweep_unattributed``.
    """
    own_session = os.getsid(0)
    killed: list[int] = []
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if not _kill_unattributed_once(known, own_session, killed):
            break
        time.sleep(_UNATTRIBUTED_PAUSE_S)
    return sorted(set(killed))


async def sweep_unattributed(
    known: Callable[[], Collection[int]],
    still_idle: Callable[[], bool],
    *,
    deadline_s: float = 2.0,
) -> list[int]:
    """``kill_unattributed`` for the event loop: it awaits between passes, never sleeps.

    Each pass runs without an await and only while ``still_idle()`` holds (no job
    running, so no leader mid-spawn that could be taken for a leftover): a job started
    meanwhile ends the sweep, and the next idle sweep resumes it. ``known`` is called on
    every pass, like ``sweep_adopted``'s.
    """
    own_session = os.getsid(0)
    killed: list[int] = []
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline and still_idle():
        if not _kill_unattributed_once(known(), own_session, killed):
            break
        await asyncio.sleep(_UNATTRIBUTED_PAUSE_S)
    return sorted(set(killed))


def _kill_unattributed_once(known: Collection[int], own_session: int, killed: list[int]) -> bool:
    """One pass: SIGKILL (adding to ``killed``) and try to reap every adopted child outside
    our session that is not in ``known``; False when there was none left."""
    left = [st for st in _stats(adopted_children(known)) if st.session != own_session]
    if not left:
        return False
    for st in left:
        if st.state != "Z" and _signal(st.pid, signal.SIGKILL):
            killed.append(st.pid)
    for st in left:
        _try_reap(st.pid)
    return True
