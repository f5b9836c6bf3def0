"""From a scheduled request to a finished job, and every record of it on the way.

The scheduler decides *when* a hypothesis x script runs; this module does what running
one means for the daemon: a job id, the run log and changed-file lists, the spec, the
crash-recovery ledger entry, the status cell, ``job_started`` / ``job_finished``, pruning
old run logs. Whatever a later feature attaches to a job (result files, caching, notify
hooks) goes here, next to the records it extends.

Ordering contract: the status file is written before each job log line, so whoever reads
``job_started`` or ``job_finished`` and then the status file finds the job there.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

from ..backends.base import JobBackend, LocalBackend
from ..cache.reuse import Hit, JobKey, ResultReuse, write_reused_log
from ..cache.store import CachedResult
from ..cache.testresults import report_from, results_of
from ..jobs import ledger
from ..jobs.model import JobOutcome
from ..jobs.spec import RunFiles, make_spec, prepare_run_files, prune_runs
from ..pipeline.scheduler import JobRequest, SchedulerHooks
from ..repo.worktrees import Worktree
from ..report.junit import TestReport
from ..report.partialrun import merged_report, runs_partially
from ..report.status import StatusBoard, iso
from ..report.statuswriter import StatusWriter
from ..report.testcollect import (
    CollectedTests,
    collect_tests,
    describe_problems,
    needs_reading,
    record_results,
)
from ..settings.loader import ScriptSettings, Settings
from ..states import CANCELLED, ERROR, OUTPUT_TAIL_BYTES, PASS, QUEUED, RUNNING
from ..store.safe_open import open_regular
from .sidebyside import SideBySide

TAIL_BYTES = OUTPUT_TAIL_BYTES


@dataclass(frozen=True)
class _Ticket:
    """A cached script's job: its input key, and whether it runs for the others."""

    key: JobKey
    leader: bool


@dataclass(frozen=True)
class _Job:
    """One job's identity: what its records and log lines share."""

    req: JobRequest
    wt: Worktree
    script: ScriptSettings
    job_id: str
    log_path: Path | None
    argv: list[str]

    def fields(self) -> dict[str, Any]:
        return {
            "batch_id": self.req.batch_id,
            "job_id": self.job_id,
            "hypothesis": self.wt.id,
            "script": self.script.name,
        }


class JobGlue:
    """Runs scheduler requests as jobs and records them (the scheduler's ``run`` callable).

    ``settings`` and ``log`` are callables: a reload replaces both. ``worktree`` looks a
    hypothesis up in the daemon's current set (None once it went away). ``extras`` gives
    each job its PO_TMPDIR/PO_PORT_BASE and hears of each result (hooks); ``rerun_due``
    says whether the scheduler holds another run of a cell.
    """

    def __init__(
        self,
        *,
        session: str,
        settings: Callable[[], Settings],
        worktree: Callable[[str], Worktree | None],
        board: StatusBoard,
        writer: StatusWriter,
        log: Callable[[], Any],
        env: dict[str, str],
        jobs_ledger: ledger.Ledger,
        extras: SideBySide,
        backend: JobBackend | None = None,
        reuse: ResultReuse | None = None,
        rerun_due: Callable[[tuple[str, str]], bool] = lambda _key: False,
    ) -> None:
        self._ledger = jobs_ledger
        self._backend: JobBackend = backend or LocalBackend()
        self._reuse = reuse
        self._session = session
        self._settings = settings
        self._worktree = worktree
        self._board = board
        self._writer = writer
        self._log = log
        self._env = env
        self._extras = extras
        self._rerun_due = rerun_due
        self._job_ids = 0

    @property
    def jobs_dir(self) -> Path:
        return self._settings().daemon.state_dir / "jobs"

    @property
    def runs_dir(self) -> Path:
        return self._settings().daemon.state_dir / "runs"

    def _next_job_id(self) -> str:
        self._job_ids += 1
        return f"{self._session}-j{self._job_ids}"

    def _script(self, name: str) -> ScriptSettings | None:
        return next((s for s in self._settings().scripts if s.name == name), None)

    async def run(self, req: JobRequest) -> None:
        """Run ``req`` to its end; a cancel still records the job, then propagates."""
        wt = self._worktree(req.hypothesis)
        script = self._script(req.script)
        if wt is None or script is None:
            return
        job_id = self._next_job_id()
        ticket = await self._share(req, wt, script, job_id)
        if ticket is False:
            return  # reused: recorded as finished, no process
        try:
            await self._run(req, wt, script, job_id, ticket or None)
        except BaseException:
            if ticket and ticket.leader and self._reuse is not None:
                self._reuse.abandon(ticket.key.value)  # cancelled or crashed: a waiter leads
            raise

    async def _run(
        self,
        req: JobRequest,
        wt: Worktree,
        script: ScriptSettings,
        job_id: str,
        ticket: _Ticket | None,
    ) -> None:
        files = self._run_files(wt, script, job_id, req.changed)
        extra_env, tmpdir = self._extras.job_env(wt.id, job_id)
        spec = make_spec(
            wt,
            script,
            batch_id=req.batch_id,
            job_id=job_id,
            files=files,
            base_env=self._env,
            extra_env=extra_env,
        )
        job = _Job(req, wt, script, job_id, spec.log_path, list(spec.argv))
        started_wall = time.time()
        started = time.monotonic()
        pid_box: list[int] = []
        worker_box: list[str | None] = []

        def on_started(pid: int, worker: str | None) -> None:
            pid_box.append(pid)
            worker_box.append(worker)
            self._started(job, pid, worker, started_wall)

        cancelled = False
        try:
            outcome = await self._backend.run(spec, on_started)
        except asyncio.CancelledError:
            cancelled = True
            outcome = JobOutcome(
                result=CANCELLED,
                exit_code=None,
                duration_s=time.monotonic() - started,
                output_tail=read_tail(job.log_path),
                pid=pid_box[0] if pid_box else None,
                started_at=started_wall,
                finished_at=time.time(),
            )
        except Exception as exc:  # a runner bug or an OS failure: report it as the job's error
            self._log().exception("job_crashed", **job.fields())
            outcome = JobOutcome(
                result=ERROR,
                exit_code=None,
                duration_s=time.monotonic() - started,
                output_tail="",
                error_message=f"{type(exc).__name__}: {exc}",
                started_at=started_wall,
                finished_at=time.time(),
            )
        finally:
            ended = time.monotonic()
            try:
                self._ledger.remove(job.job_id)
            except OSError as exc:
                self.ledger_failed(exc)
        try:
            await self._extras.cleanup(job_id, tmpdir)  # the job's processes are gone
        except asyncio.CancelledError:
            cancelled = True  # cancelled while its temp folder goes: it still goes (thread)
        tests = None if cancelled else await self._read_tests(job, files, started_wall)
        worker = worker_box[0] if worker_box else None
        self._finished(job, outcome, worker, tests, cached_from="" if ticket else None)
        self._prune(job)
        if cancelled:
            raise asyncio.CancelledError
        if ticket is not None and self._reuse is not None:
            entry = CachedResult(
                ticket.key.value,
                job_id,
                wt.id,
                script.name,
                outcome.result,
                outcome.exit_code,
                outcome.duration_s,
                outcome.output_tail,
                results_of(tests),
            )
            self._reuse.settle_later(ticket.key, wt.id, script, entry, job.log_path, ended)

    async def _share(
        self, req: JobRequest, wt: Worktree, script: ScriptSettings, job_id: str
    ) -> _Ticket | Literal[False] | None:
        """For a ``cache = true`` script: reuse a stored or running equal job's result
        (False: done, recorded), else the ticket to run with (None: not cached)."""
        if self._reuse is None or not script.cache:
            return None
        try:
            key = await self._reuse.key(wt.id, script)
            if key is None:
                return None
            if self._reuse.running(key.value):
                self._log().info(
                    "job_waiting",
                    batch_id=req.batch_id,
                    hypothesis=wt.id,
                    script=script.name,
                    reason="an equal job is running",
                )
            hit, leader = await self._reuse.share(key.value)
        except Exception:  # a bug in the cache must cost the reuse, not the job
            self._log().exception("cache_failed", hypothesis=wt.id, script=script.name)
            return None
        except asyncio.CancelledError:
            # Cancelled before anything ran (a newer change, shutdown): as a dropped request.
            if self._board.mark_dropped(wt.id, script.name):
                self._writer.write()
            self._log().info(
                "job_dropped",
                batch_id=req.batch_id,
                hypothesis=wt.id,
                script=script.name,
                reason="cancelled",
            )
            raise
        if hit is None:
            return _Ticket(key, leader)
        await self._reused(req, wt, script, job_id, hit)
        return False

    async def _reused(
        self, req: JobRequest, wt: Worktree, script: ScriptSettings, job_id: str, hit: Hit
    ) -> None:
        """Record ``hit`` as this job's result: its own run log (a copy), its tests (and
        results file), status, log line."""
        files = self._run_files(wt, script, job_id, req.changed)
        log_path = files.log if files is not None else None
        if log_path is not None:
            try:
                write_reused_log(log_path, hit)
            except OSError as exc:
                self._log().warning(
                    "run_log_unavailable",
                    hypothesis=wt.id,
                    script=script.name,
                    path=os.fsdecode(log_path),
                    error=str(exc),
                )
                log_path = None
        e = hit.entry
        outcome = JobOutcome(
            result=e.result,
            exit_code=e.exit_code,
            duration_s=e.duration_s,
            output_tail=e.output_tail,
            finished_at=time.time(),
        )
        job = _Job(req, wt, script, job_id, log_path, [])
        tests = report_from(e.results)
        try:
            state_dir = self._settings().daemon.state_dir
            await asyncio.to_thread(record_results, state_dir, wt.id, script.name, job_id, tests)
        except OSError as exc:
            self._log().warning(
                "results_write_failed", hypothesis=wt.id, script=script.name, error=str(exc)
            )
        self._finished(job, outcome, None, tests, cached_from=e.job_id)
        self._prune(job)

    def _run_files(
        self, wt: Worktree, script: ScriptSettings, job_id: str, changed: set[str]
    ) -> RunFiles | None:
        """The run log and changed-file lists; None when they cannot be made.

        On the loop: a folder and two small files, no fsync. (In a worker thread it would
        grow the default executor by a thread per concurrent job for no measurable gain.)
        """
        runs_dir = self.runs_dir
        name = script.name
        try:
            return prepare_run_files(runs_dir, wt.id, name, job_id, changed)
        except OSError as exc:
            self._log().warning(
                "run_log_unavailable",
                hypothesis=wt.id,
                script=name,
                path=os.fsdecode(runs_dir),
                error=str(exc),
            )
            return None

    def ledger_failed(self, exc: OSError) -> None:
        self._log().warning("ledger_write_failed", path=os.fsdecode(self.jobs_dir), error=str(exc))

    def _started(self, job: _Job, pid: int, worker: str | None, started_wall: float) -> None:
        """``worker``: the dask worker's address; None for a local job. Only a local job's
        pid goes to the crash-recovery ledger: a remote pid names a process elsewhere."""
        if worker is None:
            record = ledger.JobRecord.for_process(
                job_id=job.job_id,
                hypothesis=job.wt.id,
                script=job.script.name,
                pid=pid,
                batch_id=job.req.batch_id,
                started_at=started_wall,
            )
            try:
                self._ledger.add(record)
            except OSError as exc:
                self.ledger_failed(exc)
        self._board.update(
            job.wt.id,
            job.script.name,
            state=RUNNING,
            started_at=iso(started_wall),
            finished_at=None,
            job_id=job.job_id,
            batch_id=job.req.batch_id,
            log_path=path_or_none(job.log_path),
        )
        # The log line once the status file shows the job (statuswriter's module doc).
        self._writer.write_then(
            partial(
                self._log().info,
                "job_started",
                **job.fields(),
                pid=pid,
                command=list(job.argv),
                worker=worker,
            )
        )

    async def _read_tests(
        self, job: _Job, files: RunFiles | None, started_wall: float
    ) -> TestReport | None:
        """The job's JUnit reports (``{junit}`` and the script's ``junit`` globs), read
        off the loop; each one not to be trusted is logged as ``junit_unreadable`` and
        makes ``tests`` null, never the job's result. The per-test outcomes are kept for
        ``compare`` (``<state_dir>/results/``)."""
        hyp, name = job.wt.id, job.script.name
        job_report = files.junit if files is not None else None
        state_dir = self._settings().daemon.state_dir
        if not needs_reading(job_report, job.script.junit):
            found = CollectedTests()  # the common no-report case stays on the loop
        else:
            found = await asyncio.to_thread(
                collect_tests, job_report, job.wt.path, job.script.junit, started_wall
            )
        for problem in describe_problems(found.problems):
            self._log().warning("junit_unreadable", hypothesis=hyp, script=name, **problem)
        report = found.report
        try:
            if report is None:
                record_results(state_dir, hyp, name, job.job_id, None)  # one unlink
            else:
                if runs_partially(job.script.command):  # testmon: merge into the cell's view
                    cell = self._board.cell(hyp, name) or {}
                    report = await asyncio.to_thread(
                        merged_report,
                        state_dir,
                        hyp,
                        name,
                        job.job_id,
                        report,
                        job.wt.path,
                        cell.get("tests"),
                    )
                await asyncio.to_thread(record_results, state_dir, hyp, name, job.job_id, report)
        except OSError as exc:
            self._log().warning("results_write_failed", hypothesis=hyp, script=name, error=str(exc))
        return report

    def _finished(
        self,
        job: _Job,
        outcome: JobOutcome,
        worker: str | None,
        tests: TestReport | None = None,
        cached_from: str | None = None,
    ) -> None:
        """``cached_from``: None for a script without ``cache = true`` (no cache keys),
        "" for a job that ran, else the id of the job whose result it reused."""
        tail = outcome.output_tail
        if outcome.error_message and outcome.error_message not in tail:
            tail = (tail + ("\n" if tail else "") + outcome.error_message)[-TAIL_BYTES:]
        duration = round(outcome.duration_s, 3)
        log_path = path_or_none(job.log_path)
        # Another run of this cell is due (a restart, or on_busy = "queue"): the cell says
        # "queued", so no reader (``wait``) takes this result for the latest one.
        due = self._rerun_due((job.wt.id, job.script.name))
        self._board.update(
            job.wt.id,
            job.script.name,
            state=QUEUED if due else outcome.result,
            last_result=outcome.result,
            exit_code=outcome.exit_code,
            duration_s=duration,
            started_at=iso(outcome.started_at) if outcome.started_at else None,
            finished_at=iso(outcome.finished_at or time.time()),
            job_id=job.job_id,
            batch_id=job.req.batch_id,
            log_path=log_path,
            output_tail=tail,
            tests=tests.cell_summary() if tests is not None else None,
        )
        reuse = (
            {}
            if cached_from is None
            else {"cached": bool(cached_from), "cached_from": cached_from or None}
        )
        self._board.update(job.wt.id, job.script.name, **reuse)
        cell = self._board.cell(job.wt.id, job.script.name)
        if cell is not None and cached_from is None:  # cache turned off since: no stale keys
            cell.pop("cached", None)
            cell.pop("cached_from", None)
        fields: dict[str, Any] = dict(
            job.fields(),
            result=outcome.result,
            exit_code=outcome.exit_code,
            duration_s=duration,
            log_path=log_path,
            output_tail=tail,
            worker=worker,
            tests=tests.event_summary() if tests is not None else None,
            **reuse,
        )
        if outcome.error_message:
            fields["error"] = outcome.error_message
        level = "info" if outcome.result in (PASS, CANCELLED) else "warning"
        # After the status write that shows the result, as for job_started.
        self._writer.write_then(partial(getattr(self._log(), level), "job_finished", **fields))
        self._extras.finished(
            job.wt.id, job.script.name, outcome.result, job.job_id, fields["tests"]
        )

    def _prune(self, job: _Job) -> None:
        """Keep the newest ``keep_runs`` logs: at most keep_runs + 1 files to stat, one to go."""
        run_dir = self.runs_dir / job.wt.id / job.script.name
        try:
            prune_runs(run_dir, self._settings().daemon.keep_runs)
        except OSError as exc:
            self._log().warning(
                "run_prune_failed", hypothesis=job.wt.id, script=job.script.name, error=str(exc)
            )


def path_or_none(path: Path | None) -> str | None:
    return None if path is None else os.fsdecode(path)


def read_tail(path: Path | None, size: int = TAIL_BYTES) -> str:
    """The last ``size`` bytes of a run log as text; "" when there is none."""
    if path is None:
        return ""
    try:
        with os.fdopen(open_regular(path), "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - size))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


class BoardHooks(SchedulerHooks):
    """The scheduler's queue moves, shown on the status board (and ``job_dropped``)."""

    def __init__(self, board: StatusBoard, writer: StatusWriter, log: Callable[[], Any]) -> None:
        self._board = board
        self._writer = writer
        self._log = log

    def queued(self, req: JobRequest) -> None:
        if self._board.mark_queued(req.hypothesis, req.script):
            self._writer.write()

    def dropped(self, req: JobRequest, reason: str) -> None:
        self._board.mark_dropped(req.hypothesis, req.script)
        self._log().info(
            "job_dropped",
            hypothesis=req.hypothesis,
            script=req.script,
            batch_id=req.batch_id,
            reason=reason,
        )
        self._writer.write()

    def idle(self) -> None:
        self._writer.write()


def report_recovered(
    recovered: Iterable[ledger.RecoveredJob], board: StatusBoard, log: Any
) -> None:
    """Jobs the ledger held at start-up ran under a daemon that died: they end ``error``."""
    for found_job in recovered:
        rec = found_job.record
        if rec is None:
            moved = found_job.moved_to
            log.warning(
                "job_record_unreadable",
                path=os.fsdecode(found_job.path),
                error=found_job.problem,
                moved_to=None if moved is None else os.fsdecode(moved),
            )
            continue
        if found_job.daemon_alive:
            log.warning(
                "job_record_skipped",
                path=os.fsdecode(found_job.path),
                job_id=rec.job_id,
                daemon_pid=rec.daemon_pid,
                reason="the daemon that runs this job is still running",
            )
            continue
        board.update(
            rec.hypothesis,
            rec.script,
            state=ERROR,
            last_result=ERROR,
            exit_code=None,
            finished_at=iso(time.time()),
            job_id=rec.job_id,
            batch_id=rec.batch_id,
            started_at=iso(rec.started_at),
            output_tail="daemon died while this job ran",
        )
        log.warning(
            "job_recovered",
            job_id=rec.job_id,
            batch_id=rec.batch_id,
            hypothesis=rec.hypothesis,
            script=rec.script,
            pid=rec.pid,
            leader_alive=found_job.leader_alive,
            killed=list(found_job.killed),
            result=ERROR,
            error="daemon died",
        )
