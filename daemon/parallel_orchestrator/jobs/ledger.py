"""Crash ledger: one small file per running job, so a restarted daemon can kill what is left.

If the daemon dies (SIGKILL, OOM, bug), its jobs are reparented to init and keep running.
At the next start ``recover`` reads ``<state_dir>/jobs/*.json`` and kills them. A pid alone
is not an identity — it may have been reused by an unrelated process — so a leader is
signalled only if its start time (and boot id) still match the record. Descendants are
found by their ``PO_JOB_ID`` marker and must have started no earlier than the leader.

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
from dataclasses import asdict, dataclass
from pathlib import Path

from ..store.atomic import write_atomic
from ..store.folders import make_dirs
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
        )

    @classmethod
    def from_json(cls, data: object) -> JobRecord:
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        start = data.get("start_time")
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
        )


@dataclass(frozen=True)
class RecoveredJob:
    """One record found at start-up: the daemon marks the job ``error`` ("daemon died")."""

    record: JobRecord | None  # None when the file could not be read
    path: Path
    leader_alive: bool  # the recorded leader was still running (and was killed)
    killed: tuple[int, ...]  # every pid sent SIGKILL
    problem: str = ""  # why the record was unusable, if it was


def _private_dir(path: Path) -> None:
    make_dirs(path, 0o700)
    os.chmod(path, 0o700)  # also when it existed already


class Ledger:
    """The ``jobs`` directory of the state dir; one ``<job_id>.json`` per running job."""

    def __init__(self, jobs_dir: Path) -> None:
        self.jobs_dir = jobs_dir

    def path_for(self, job_id: str) -> Path:
        # Quoted, so any job id is one safe file name (no '/', no '..' traversal).
        return self.jobs_dir / (urllib.parse.quote(job_id, safe="") + ".json")

    def add(self, record: JobRecord) -> Path:
        _private_dir(self.jobs_dir)
        path = self.path_for(record.job_id)
        data = json.dumps(asdict(record)).encode("utf-8")
        write_atomic(path, data, mode=0o600, durable=False)
        return path

    def remove(self, job_id: str) -> None:
        self.path_for(job_id).unlink(missing_ok=True)

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
            record = JobRecord.from_json(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            found.append(RecoveredJob(None, path, False, (), problem=f"unreadable record: {exc}"))
            path.unlink(missing_ok=True)
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
