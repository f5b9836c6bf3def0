"""Crash ledger: one small file per running job, so a restarted daemon can kill what is left.

If the daemon dies (SIGKILL, OOM, bug), its jobs are reparented to init and keep running.
At the next start ``recover`` reads ``<state_dir>/jobs/*.json`` and kills them. A record
is never proof on its own word: a pid may have been reused, and a record may have been
planted. So a leader is signalled only if its start time (and boot id) still match the
record *and* its environment carries the recorded ``PO_JOB_ID`` (which no process
outside our jobs has); descendants are found by that marker and must have started no
earlier than the leader. A record whose daemon (pid and start time, also recorded) is
still running is left alone: those are a live daemon's jobs, not leftovers.

A record that cannot be used (corrupt JSON, a FIFO, a folder) is set aside as
``<name>.corrupt`` and reported; it never stops the start.

Records are written atomically (``store.atomic``: temp file + rename) but not fsynced: the
record must survive a crash of the daemon, which the page cache does; a power loss ends
the jobs too, and a disk flush per job start would stall the event loop.
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from ..store.atomic import write_atomic
from ..store.folders import make_dirs
from ..store.safe_open import read_regular, set_aside
from . import janitor


@dataclass(frozen=True)
class JobRecord:
    job_id: str
    hypothesis: str
    script: str
    pid: int
    pgid: int
    start_time: int | None  # janitor.process_start_time(pid), clock ticks since boot
    batch_id: str
    started_at: float  # time.time()
    boot_id: str = ""  # start times from another boot mean nothing
    daemon_pid: int = 0  # the daemon that ran the job (0: not recorded)
    daemon_start_time: int | None = None  # its start time: with the pid, one process

    @classmethod
    def for_process(
        cls,
        *,
        job_id: str,
        hypothesis: str,
        script: str,
        pid: int,
        batch_id: str,
        started_at: float | None = None,
    ) -> JobRecord:
        """A record for a just-started job leader (its own group: pgid == pid)."""
        return cls(
            job_id=job_id,
            hypothesis=hypothesis,
            script=script,
            pid=pid,
            pgid=pid,
            start_time=janitor.process_start_time(pid),
            batch_id=batch_id,
            started_at=time.time() if started_at is None else started_at,
            boot_id=janitor.boot_id(),
            daemon_pid=os.getpid(),
            daemon_start_time=janitor.process_start_time(os.getpid()),
        )

    @classmethod
    def from_json(cls, data: object) -> JobRecord:
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        start = data.get("start_time")
        daemon_start = data.get("daemon_start_time")
        return cls(
            job_id=str(data["job_id"]),
            hypothesis=str(data.get("hypothesis", "")),
            script=str(data.get("script", "")),
            pid=int(data["pid"]),
            pgid=int(data.get("pgid", data["pid"])),
            start_time=None if start is None else int(start),
            batch_id=str(data.get("batch_id", "")),
            started_at=float(data.get("started_at", 0.0)),
            boot_id=str(data.get("boot_id", "")),
            daemon_pid=int(data.get("daemon_pid") or 0),
            daemon_start_time=None if daemon_start is None else int(daemon_start),
        )

    def daemon_alive(self) -> bool:
        """Whether the daemon that ran this job still runs (and it is not us)."""
        if self.daemon_pid <= 0 or self.daemon_pid == os.getpid():
            return False
        st = janitor.read_stat(self.daemon_pid)
        return st is not None and st.start_time == self.daemon_start_time


@dataclass(frozen=True)
class RecoveredJob:
    """One record found at start-up: the daemon marks the job ``error`` ("daemon died")."""

    record: JobRecord | None  # None when the file could not be read
    path: Path
    leader_alive: bool  # the recorded leader was still running (and was killed)
    killed: tuple[int, ...]  # every pid sent SIGKILL
    problem: str = ""  # why the record was unusable, if it was
    moved_to: Path | None = None  # where an unusable record was set aside
    daemon_alive: bool = False  # its daemon still runs: left alone, not recovered


def _private_dir(path: Path) -> None:
    make_dirs(path, 0o700)
    os.chmod(path, 0o700)  # also when it existed already


class Ledger:
    """The ``jobs`` directory of the state dir; one ``<job_id>.json`` per running job."""

    def __init__(self, jobs_dir: Path, before_write: Callable[[], None] = lambda: None) -> None:
        self.jobs_dir = jobs_dir
        self._before_write = before_write  # the daemon checks its state-dir lock there
        self._live: dict[str, JobRecord] = {}  # what is on disk now, for ``rewrite``

    def path_for(self, job_id: str) -> Path:
        # Quoted, so any job id is one safe file name (no '/', no '..' traversal).
        return self.jobs_dir / (urllib.parse.quote(job_id, safe="") + ".json")

    def add(self, record: JobRecord) -> Path:
        self._before_write()
        _private_dir(self.jobs_dir)
        path = self.path_for(record.job_id)
        data = json.dumps(asdict(record)).encode("utf-8")
        write_atomic(path, data, mode=0o600, durable=False)
        self._live[record.job_id] = record
        return path

    def remove(self, job_id: str) -> None:
        self._live.pop(job_id, None)
        self.path_for(job_id).unlink(missing_ok=True)

    def rewrite(self) -> None:
        """Write every running job's record again (the state dir was deleted or moved
        away under us), and remove this daemon's records of jobs that ended meanwhile:
        their removal found no folder (a repository holding the state dir was moved
        away), and once it was back the next start reported each as a job whose daemon
        died, ``error``, though it had passed."""
        me = (os.getpid(), janitor.process_start_time(os.getpid()))
        for path in self.paths():
            try:
                record = _read_record(path)
            except (OSError, ValueError):
                continue  # not ours to judge: ``recover`` sets it aside at the next start
            ours = (record.daemon_pid, record.daemon_start_time) == me
            if ours and record.job_id not in self._live:
                path.unlink(missing_ok=True)
        for record in list(self._live.values()):
            self.add(record)

    def paths(self) -> list[Path]:
        """The record files, oldest name first."""
        return sorted(self.jobs_dir.glob("*.json"))


def _kill_leader(record: JobRecord) -> list[int]:
    """SIGKILL the recorded leader's group, only if the pid still names the same process.

    Returns the pids signalled (empty when the leader is gone or the pid was reused).
    """
    st = janitor.read_stat(record.pid)
    if st is None or record.start_time is None or st.start_time != record.start_time:
        return []  # gone, or the pid now belongs to someone else
    if not janitor.has_marker(record.pid, record.job_id):
        return []  # not one of our jobs, whatever the record says
    if st.pgrp == record.pgid and record.pgid == record.pid:
        members = janitor.live_group_members(record.pgid)
        janitor.signal_group(record.pgid, signal.SIGKILL)
        return sorted(set(members) | {record.pid})
    try:
        os.kill(record.pid, signal.SIGKILL)
    except ProcessLookupError:
        return []
    return [record.pid]


def _kill_descendants(record: JobRecord) -> list[int]:
    """SIGKILL marked processes that started no earlier than the recorded leader."""
    killed: list[int] = []
    for _ in range(20):  # a process may fork while we scan: repeat until a pass finds none
        found = []
        for pid in janitor.find_marked(record.job_id):
            st = janitor.read_stat(pid)
            if st is None or st.state == "Z":
                continue
            if record.start_time is not None and st.start_time < record.start_time:
                continue  # older than the job: the same id used by something else
            found.append(pid)
        if not found:
            break
        for pid in found:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            killed.append(pid)
        time.sleep(0.01)
    return killed


RECORD_LIMIT = 1 << 16  # a record is ~300 bytes; anything bigger is not one


def _read_record(path: Path) -> JobRecord:
    """Parse one record; raises OSError (a FIFO, a folder, a link) or ValueError."""
    try:
        return JobRecord.from_json(json.loads(read_regular(path, RECORD_LIMIT)))
    except (KeyError, TypeError, RecursionError, UnicodeDecodeError) as exc:
        raise ValueError(f"{type(exc).__name__}: {exc}") from exc


def _unusable(path: Path, exc: Exception) -> RecoveredJob:
    """Set an unusable record aside (``.corrupt``): reported once, never read again."""
    problem = f"unreadable record: {exc}"
    try:
        moved: Path | None = set_aside(path)
    except OSError as move_exc:
        moved = None
        problem += f" (cannot set it aside: {move_exc.strerror or move_exc})"
    return RecoveredJob(None, path, False, (), problem=problem, moved_to=moved)


def put_back(jobs_dir: Path, recovered: list[RecoveredJob]) -> None:
    """Write back the records ``recover`` deleted, when the daemon then could not start
    (its repository missing, say): the start that succeeds reports those jobs
    (``job_recovered``, ``error``) instead of their vanishing without a word. Their
    processes were killed already; that start finds them gone."""
    ledger = Ledger(jobs_dir)
    for job in recovered:
        if job.record is not None and not job.daemon_alive:
            ledger.add(job.record)


def recover(jobs_dir: Path) -> list[RecoveredJob]:
    """Kill what the previous daemon's jobs left running; delete their records."""
    if not jobs_dir.is_dir():
        return []
    for stale in jobs_dir.glob(".*.tmp"):  # an interrupted write
        stale.unlink(missing_ok=True)
    this_boot = janitor.boot_id()
    found: list[RecoveredJob] = []
    for path in Ledger(jobs_dir).paths():
        try:
            record = _read_record(path)
        except (OSError, ValueError) as exc:
            found.append(_unusable(path, exc))
            continue
        if record.daemon_alive():
            found.append(RecoveredJob(record, path, False, (), daemon_alive=True))
            continue
        leader_alive = False
        killed: list[int] = []
        if not record.boot_id or record.boot_id == this_boot:
            killed = _kill_leader(record)
            leader_alive = bool(killed)
            killed.extend(p for p in _kill_descendants(record) if p not in killed)
        found.append(RecoveredJob(record, path, leader_alive, tuple(killed)))
        path.unlink(missing_ok=True)
    return found
