"""Crash ledger: records on disk, and recovery that kills survivors but never a reused pid."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from parallel_orchestrator.jobs import janitor
from parallel_orchestrator.jobs.ledger import JobRecord, Ledger, put_back, recover
from process_checks import running, wait_until

ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts; killed and reaped whatever the test did."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait()


def test_record_is_private_json_and_removed(tmp_path: Path) -> None:
    jobs = tmp_path / "state" / "jobs"
    ledger = Ledger(jobs)
    rec = JobRecord.for_process(
        job_id="b1/hyp-a/tests",
        hypothesis="hyp-a",
        script="tests",
        pid=os.getpid(),
        batch_id="b1",
    )
    path = ledger.add(rec)
    assert path.parent == jobs  # the '/' in the id did not create sub-directories
    assert stat.S_IMODE(jobs.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    data = json.loads(path.read_text())
    assert data["job_id"] == "b1/hyp-a/tests" and data["pid"] == os.getpid()
    assert data["pgid"] == os.getpid()
    assert data["start_time"] == janitor.process_start_time(os.getpid())
    assert {"hypothesis", "script", "batch_id", "started_at"} <= data.keys()
    assert [p.name for p in jobs.iterdir()] == [path.name]  # no temp file left
    ledger.remove("b1/hyp-a/tests")
    assert list(jobs.iterdir()) == []


def test_recover_kills_a_surviving_job_group_and_marked_escapee(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    job_id = f"crash-{uuid.uuid4().hex}"
    # The orphaned job: leader in its own session, a group member, and an escapee that
    # left the group with setsid (found by its marker only).
    leader = subprocess.Popen(
        ["sh", "-c", "sleep 300 & setsid sleep 301 & exec sleep 302"],
        env={**ENV, "PO_JOB_ID": job_id},
        start_new_session=True,
        cwd=tmp_path,
    )
    procs.append(leader)
    assert wait_until(lambda: len(janitor.find_marked(job_id)) == 3)
    marked = janitor.find_marked(job_id)
    starts = {pid: janitor.process_start_time(pid) for pid in marked}
    ledger = Ledger(tmp_path / "jobs")
    ledger.add(
        JobRecord.for_process(
            job_id=job_id, hypothesis="h", script="s", pid=leader.pid, batch_id="b"
        )
    )
    found = recover(tmp_path / "jobs")
    assert len(found) == 1
    job = found[0]
    assert job.record is not None and job.record.job_id == job_id
    assert job.leader_alive is True
    assert set(marked) <= set(job.killed)
    assert wait_until(lambda: not any(running(p, starts[p]) for p in marked))
    assert list((tmp_path / "jobs").iterdir()) == []


def test_recover_never_signals_a_reused_pid(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    """A record whose pid now names another process (different start time) is not signalled."""
    bystander = subprocess.Popen(["sleep", "300"], env=ENV, start_new_session=True)
    procs.append(bystander)
    real_start = janitor.process_start_time(bystander.pid)
    assert real_start is not None
    record = JobRecord(
        job_id=f"old-{uuid.uuid4().hex}",
        hypothesis="h",
        script="s",
        pid=bystander.pid,
        pgid=bystander.pid,
        start_time=real_start - 1,
        batch_id="b",
        started_at=0.0,
        boot_id=janitor.boot_id(),
    )
    Ledger(tmp_path / "jobs").add(record)
    found = recover(tmp_path / "jobs")
    assert len(found) == 1 and found[0].leader_alive is False and found[0].killed == ()
    time.sleep(0.05)  # not synchronisation: give a wrongly sent signal a moment to land
    assert bystander.poll() is None and running(bystander.pid, real_start)
    assert list((tmp_path / "jobs").iterdir()) == []


def test_recover_ignores_records_from_another_boot(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    job_id = f"boot-{uuid.uuid4().hex}"
    proc = subprocess.Popen(
        ["sleep", "300"], env={**ENV, "PO_JOB_ID": job_id}, start_new_session=True
    )
    procs.append(proc)
    rec = JobRecord.for_process(
        job_id=job_id, hypothesis="h", script="s", pid=proc.pid, batch_id="b"
    )
    Ledger(tmp_path / "jobs").add(JobRecord(**{**rec.__dict__, "boot_id": "another-boot"}))
    found = recover(tmp_path / "jobs")
    assert found[0].killed == () and proc.poll() is None


def test_recover_skips_marked_processes_older_than_the_leader(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    """The same job id on an older process (not a descendant): left alone."""
    job_id = f"dup-{uuid.uuid4().hex}"
    older = subprocess.Popen(["sleep", "300"], env={**ENV, "PO_JOB_ID": job_id})
    procs.append(older)
    older_start = janitor.process_start_time(older.pid)
    assert older_start is not None
    rec = JobRecord(
        job_id=job_id,
        hypothesis="h",
        script="s",
        pid=2**22 + 7,
        pgid=2**22 + 7,
        start_time=older_start + 1,
        batch_id="b",
        started_at=0.0,
        boot_id=janitor.boot_id(),
    )
    Ledger(tmp_path / "jobs").add(rec)
    found = recover(tmp_path / "jobs")
    assert found[0].killed == () and older.poll() is None


def test_unreadable_record_is_reported_and_set_aside(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    (jobs / "broken.json").write_text("{not json")
    (jobs / ".x.json.1.tmp").write_text("partial")
    found = recover(jobs)
    assert len(found) == 1 and found[0].record is None
    assert "unreadable record" in found[0].problem
    assert found[0].moved_to == jobs / "broken.json.corrupt"
    assert [p.name for p in jobs.iterdir()] == ["broken.json.corrupt"]
    assert recover(jobs) == []  # set aside: never read (or reported) again


def test_put_back_restores_what_recover_deleted_for_the_start_that_succeeds(
    tmp_path: Path,
) -> None:
    """A start refused after recovery (repository missing) puts the records back: the
    next start reports the same job (its process gone by then), not nothing."""
    jobs = tmp_path / "jobs"
    record = JobRecord(
        job_id="dead-1",
        hypothesis="h",
        script="s",
        pid=2**22 + 1,  # above the default pid_max: no process
        pgid=2**22 + 1,
        start_time=1,
        batch_id="b",
        started_at=0.0,
        boot_id=janitor.boot_id(),
        daemon_pid=2**22 + 2,
        daemon_start_time=1,
    )
    Ledger(jobs).add(record)
    (jobs / "broken.json").write_text("{not json")
    found = recover(jobs)
    assert sorted(p.name for p in jobs.iterdir()) == ["broken.json.corrupt"]
    put_back(jobs, found)
    again = recover(jobs)
    assert [job.record for job in again] == [record]  # the unreadable one stays aside
    assert again[0].killed == ()


def test_rewrite_drops_our_records_of_jobs_that_ended_while_the_folder_was_away(
    tmp_path: Path,
) -> None:
    """The state dir moved away (with the repository it is in) while a job ended: the
    record's removal found no folder. Back again, ``rewrite`` removes it, keeps the
    running job's, and leaves another daemon's alone."""
    state = tmp_path / "state"
    ledger = Ledger(state / "jobs")
    for job_id in ("ended", "running"):
        ledger.add(
            JobRecord.for_process(
                job_id=job_id, hypothesis="h", script="s", pid=os.getpid(), batch_id="b"
            )
        )
    other = JobRecord(
        job_id="other", hypothesis="h", script="s", pid=1, pgid=1, start_time=None,
        batch_id="b", started_at=0.0, daemon_pid=1, daemon_start_time=None,
    )  # fmt: skip
    (state / "jobs" / "other.json").write_text(json.dumps(other.__dict__))
    os.rename(state, tmp_path / "away")
    ledger.remove("ended")  # no folder: nothing removed, no error
    os.rename(tmp_path / "away", state)
    ledger.rewrite()
    assert sorted(p.name for p in ledger.paths()) == ["other.json", "running.json"]


def test_recover_without_directory_is_empty(tmp_path: Path) -> None:
    assert recover(tmp_path / "missing") == []


def test_kill_marked_reports_what_it_killed(procs: list[subprocess.Popen[bytes]]) -> None:
    job_id = f"km-{uuid.uuid4().hex}"
    proc = subprocess.Popen(["sleep", "300"], env={**ENV, "PO_JOB_ID": job_id})
    procs.append(proc)
    assert wait_until(lambda: janitor.find_marked(job_id) == [proc.pid])
    assert janitor.kill_marked(job_id) == [proc.pid]
    assert proc.wait(timeout=20) == -signal.SIGKILL
