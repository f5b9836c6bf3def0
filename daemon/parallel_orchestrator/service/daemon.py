"""``parallel-orchestrator run``: the long-running daemon that wires the pipeline together.

worktrees -> watcher -> filters -> batcher -> planner -> scheduler -> runner -> status/log.

Signal handlers only record the signal; the main loop acts on it (uvicorn's shape).
Shutdown: stop intake, cancel running jobs (each runner kills its group: SIGTERM, grace,
SIGKILL, reap), log what was cut, write the final status, ``daemon_stopped`` last.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import secrets
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .. import __version__
from ..jobs import janitor, ledger
from ..jobs.runner import (
    JobOutcome,
    install_child_watcher,
    job_leaders,
    reap_orphan_zombies,
    run_job,
)
from ..jobs.spec import make_spec, prepare_run_files, prune_runs
from ..pipeline.batcher import Batch, Batcher
from ..pipeline.planner import plan
from ..pipeline.scheduler import JobRequest, Scheduler, SchedulerHooks
from ..repo.filters import (
    GitCheckIgnoreError,
    GitIgnoreOracle,
    GitInternalsFilter,
    GlobIgnoreFilter,
)
from ..repo.worktrees import (
    Worktree,
    WorktreeError,
    discover_async,
    git_common_dir,
    index_lock_path,
)
from ..report.eventlog import configure_logging, get_logger
from ..report.status import StatusBoard, iso, load_previous
from ..report.statusview import summary_line
from ..settings.loader import (
    ConfigError,
    ScriptSettings,
    Settings,
    load_settings,
)
from ..store.folders import make_dirs
from ..watch.watcher import Chunk, Watcher, step_for
from .notify import Notifier

MAX_LOGGED_PATHS = 50
CHANGE_ADDED = 1  # watchfiles.Change.added
CHANGE_DELETED = 3  # watchfiles.Change.deleted
REDISCOVER_EVERY_S = 10.0
REAP_EVERY_S = 2.0
STATUS_RETRY_S = 1.0


class DaemonError(Exception):
    """A reason the daemon cannot start; one line, names the thing at fault."""


def prepare_state_dir(state_dir: Path) -> None:
    """Create the state dir 0700 (it holds test output) and prove it is writable."""
    try:
        make_dirs(state_dir, 0o700)
        probe = state_dir / f".probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise DaemonError(f"state dir {state_dir}: not writable: {exc.strerror or exc}") from exc


class Daemon:
    def __init__(
        self,
        settings: Settings,
        *,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        early_signals: list[int] | None = None,
    ) -> None:
        self.settings = settings
        # Signals the CLI recorded before the event loop ran (filled in until run() installs
        # the loop's handlers; a SIGTERM during start-up still means a clean stop).
        self._early_signals = early_signals if early_signals is not None else []
        self.cwd = cwd or Path.cwd()
        self.env = dict(os.environ if env is None else env)
        self.log = get_logger()
        self.session = secrets.token_hex(3)
        self._job_ids = 0
        self.worktrees: dict[str, Worktree] = {}
        self._roots: list[tuple[str, str]] = []  # (path + "/", hyp), longest first
        self._root_paths: dict[str, str] = {}
        self._locks: dict[str, str] = {}  # index.lock path -> hyp
        self._lock_of: dict[str, str] = {}  # hyp -> index.lock path
        self._admin_dirs: set[str] = set()  # <common git dir>/worktrees
        self._oracles: dict[str, GitIgnoreOracle] = {}
        self._git_filter = GitInternalsFilter()
        self._glob_filter = GlobIgnoreFilter(settings.worktrees.ignore)
        self._signals: asyncio.Queue[int] = asyncio.Queue()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._rediscover_requested = asyncio.Event()
        self._discovery_lock = asyncio.Lock()  # one discover-and-apply at a time
        self._admitting = 0  # _admit tasks in flight
        self._force_after_admit = False
        self._closing = False
        self._status_retry: asyncio.TimerHandle | None = None
        self._last_status_line = ""
        self._status_error = ""  # the last status write error, "" while writes succeed
        self._status_error_kind = ""
        self._status_error_logged = 0.0
        self._lock_fd: int | None = None
        self.notifier = Notifier(self.env)
        d = settings.daemon
        self.batcher = Batcher(
            d.debounce_ms / 1000,
            d.max_batch_wait_ms / 1000,
            self._is_locked,
            id_prefix=f"{self.session}-b",
            exists=self._exists,
        )
        self.board = StatusBoard(
            pid=os.getpid(), version=__version__, config_path=settings.config_path
        )
        self.scheduler = Scheduler(
            self._run_request,
            concurrency=d.concurrency,
            on_busy=d.on_busy,
            priority=self._priority,
            hooks=_Hooks(self),
            exclusive=[s.name for s in settings.scripts if s.exclusive],
        )
        self.watcher: Watcher | None = None
        self.ledger = ledger.Ledger(settings.daemon.state_dir / "jobs")

    # == lifecycle ========================================================================
    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        install_child_watcher()
        d = self.settings.daemon
        prepare_state_dir(d.state_dir)
        self._acquire_lock(d.state_dir)
        janitor.become_subreaper()
        recovered = ledger.recover(self.jobs_dir)
        try:
            found = await discover_async(self.settings.worktrees, strict=True)
        except WorktreeError as exc:
            raise DaemonError(str(exc)) from exc
        self._set_worktrees(found, initial=True)
        previous = load_previous(d.status_file)
        if previous:
            self.board.adopt_previous(previous)
        for found_job in recovered:
            rec = found_job.record
            if rec is None:
                self.log.warning(
                    "job_record_unreadable",
                    path=os.fsdecode(found_job.path),
                    error=found_job.problem,
                )
                continue
            self.board.update(
                rec.hypothesis,
                rec.script,
                state="error",
                last_result="error",
                exit_code=None,
                finished_at=iso(time.time()),
                job_id=rec.job_id,
                batch_id=rec.batch_id,
                started_at=iso(rec.started_at),
                output_tail="daemon died while this job ran",
            )
            self.log.warning(
                "job_recovered",
                job_id=rec.job_id,
                batch_id=rec.batch_id,
                hypothesis=rec.hypothesis,
                script=rec.script,
                pid=rec.pid,
                leader_alive=found_job.leader_alive,
                killed=list(found_job.killed),
                result="error",
                error="daemon died",
            )
        self.log.info(
            "daemon_started",
            pid=os.getpid(),
            version=__version__,
            config_path=_path_or_none(self.settings.config_path),
            hypotheses=len(self.worktrees),
            scripts=len(self.settings.scripts),
            state_dir=os.fsdecode(d.state_dir),
            status_file=os.fsdecode(d.status_file),
        )
        for wt in self.worktrees.values():
            self._log_worktree("worktree_added", wt, initial=True)
        self._write_status()

        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(sig, self._signals.put_nowait, sig)
        for sig in self._early_signals:  # arrived before the loop's handlers were in place
            self._signals.put_nowait(sig)
        code = 0
        try:
            await self._start_watching(loop)
            if d.run_on_start and self._signals.empty():
                self._run_everything(list(self.worktrees), reason="start")
            reason = await self._main_loop()
        except Exception as exc:
            # A bug must not orphan the running jobs: log it, then shut down as usual.
            self.log.exception("daemon_crashed", error=f"{type(exc).__name__}: {exc}")
            reason, code = f"crash: {type(exc).__name__}", 1
        await self._shutdown(reason)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        return code

    async def _start_watching(self, loop: asyncio.AbstractEventLoop) -> None:
        self.watcher = Watcher(
            loop,
            self._on_chunk,
            self._on_watcher_restart,
            step_for(self.settings.daemon.debounce_ms, self.env),
        )
        self.watcher.set_paths(self._watch_paths())
        self.watcher.start()
        if not await self.watcher.wait_armed(30):
            self.log.warning("watcher_slow_to_arm")
        self.board.set_daemon_state("idle")
        self._write_status()
        self.notifier.ready()
        self._spawn(self.notifier.run_watchdog())
        self._spawn(self._periodic_rediscover())
        self._spawn(self._periodic_reap())

    async def _main_loop(self) -> str:
        while True:
            sig = await self._signals.get()
            if sig == signal.SIGHUP:
                await self.reload()
                continue
            return signal.Signals(sig).name

    async def _shutdown(self, reason: str) -> None:
        self.log.info(
            "daemon_stopping",
            reason=reason,
            running=[f"{h}/{s}" for h, s in self.scheduler.running],
            queued=[f"{h}/{s}" for h, s in self.scheduler.waiting],
            pending_changes=sum(len(p) for p in self.batcher.held.values()),
        )
        self._closing = True
        self.notifier.stopping()
        self.board.set_daemon_state("stopping")
        self._write_status()
        if self._timer is not None:
            self._timer.cancel()
        # The watcher thread notices a stop only between watch calls (up to ~0.5 s): stop
        # it alongside the jobs, not before them, or that wait eats into the
        # kill_grace_s + 2 s shutdown budget.
        watcher_stopped = (
            asyncio.ensure_future(asyncio.to_thread(self.watcher.stop, 1.5))
            if self.watcher is not None
            else None
        )
        grace = max((s.kill_grace_s for s in self.settings.scripts), default=5.0)
        stuck = await self.scheduler.shutdown(timeout=grace + 1.5)
        if watcher_stopped is not None:
            await watcher_stopped
        if stuck:
            self.log.error("jobs_not_stopped", jobs=[f"{h}/{s}" for h, s in stuck])
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        reap_orphan_zombies()
        self._kill_leftovers("shutdown")
        self.board.set_daemon_state("stopped")
        self._write_status()
        self.notifier.close()
        self.log.info("daemon_stopped", reason=reason)
        self._release_lock()

    def _acquire_lock(self, state_dir: Path) -> None:
        path = state_dir / "daemon.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            other = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            raise DaemonError(
                f"state dir {state_dir}: another daemon (pid {other}) is using it"
            ) from exc
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def jobs_dir(self) -> Path:
        return self.settings.daemon.state_dir / "jobs"

    @property
    def runs_dir(self) -> Path:
        return self.settings.daemon.state_dir / "runs"

    # == worktrees ========================================================================
    def _set_worktrees(self, found: list[Worktree], *, initial: bool = False) -> None:
        new = {wt.id: wt for wt in found}
        old = self.worktrees
        self.worktrees = new
        for hyp in old.keys() - new.keys():
            self.scheduler.cancel_hypothesis(hyp)
            self.batcher.forget(hyp)
            self._oracles.pop(hyp, None)
            self._log_worktree("worktree_removed", old[hyp])
        added = [hyp for hyp in new if hyp not in old or old[hyp].path != new[hyp].path]
        for hyp in added:
            self._oracles[hyp] = GitIgnoreOracle(new[hyp].path)
            if not initial:
                self._log_worktree("worktree_added", new[hyp])
        for hyp in new.keys() - set(added):
            if old[hyp].branch != new[hyp].branch:
                self._log_worktree(
                    "worktree_branch_changed", new[hyp], previous_branch=old[hyp].branch
                )
        self._roots = sorted(
            ((os.fsdecode(wt.path).rstrip("/") + "/", wt.id) for wt in new.values()),
            key=lambda item: len(item[0]),
            reverse=True,
        )
        self._root_paths = {os.fsdecode(wt.path): wt.id for wt in new.values()}
        self._lock_of = {}
        self._admin_dirs = set()
        for wt in new.values():
            try:
                self._lock_of[wt.id] = os.fsdecode(index_lock_path(wt.path))
                self._admin_dirs.add(os.fsdecode(git_common_dir(wt.path) / "worktrees"))
            except (WorktreeError, OSError) as exc:
                self.log.warning("git_dir_unknown", hypothesis=wt.id, error=str(exc))
        self._locks = {lock: hyp for hyp, lock in self._lock_of.items()}
        self.board.set_hypotheses(
            ((wt.id, os.fsdecode(wt.path), wt.branch) for wt in new.values()),
            [s.name for s in self.settings.scripts],
        )
        if self.watcher is not None:
            self.watcher.set_paths(self._watch_paths())
        if not initial:
            self._write_status()
            if added and self.settings.daemon.run_on_start:
                self._run_everything(added, reason="worktree_added")

    def _watch_paths(self) -> list[str]:
        roots = [os.fsdecode(wt.path) for wt in self.worktrees.values()]
        extra: list[str] = []
        # Git admin dirs (index.lock of linked worktrees, worktree add/remove) live in the
        # main repository's .git, outside a linked worktree: watch them when not covered.
        for admin in self._admin_dirs:
            git_dir = os.path.dirname(admin)
            if not any(git_dir.startswith(r.rstrip("/") + "/") for r in roots):
                extra.append(git_dir)
        return roots + extra

    def _log_worktree(self, event: str, wt: Worktree, **extra: Any) -> None:
        self.log.info(event, hypothesis=wt.id, path=os.fsdecode(wt.path), branch=wt.branch, **extra)

    async def rediscover(self) -> None:
        async with self._discovery_lock:
            try:
                found = await discover_async(self.settings.worktrees)
            except WorktreeError as exc:
                self.log.warning("worktree_discovery_failed", error=str(exc))
                return
            # The branch counts too: a `git checkout` in a worktree must reach the status
            # file and the {branch} placeholder, not only additions and removals.
            current = {(wt.id, wt.path, wt.branch) for wt in self.worktrees.values()}
            if {(wt.id, wt.path, wt.branch) for wt in found} != current:
                await self._apply_worktrees(found)

    async def _apply_worktrees(self, found: list[Worktree]) -> None:
        """``_set_worktrees``, but a new worktree is watched before it is announced.

        Whoever sees ``worktree_added`` (or the status gaining it) and edits a file there
        must get a run; announcing first would lose edits made while the watcher re-arms.
        """
        if self.watcher is not None:
            known = {os.fsdecode(wt.path) for wt in self.worktrees.values()}
            fresh = [os.fsdecode(wt.path) for wt in found if os.fsdecode(wt.path) not in known]
            rearmed = bool(fresh) and self.watcher.set_paths(self._watch_paths() + fresh)
            if rearmed and not await self.watcher.wait_armed(30):
                self.log.warning("watcher_slow_to_arm", paths=fresh)
        self._set_worktrees(found)

    async def _periodic_rediscover(self) -> None:
        while True:
            # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancel that
            # arrives as the event gets set, and shutdown then waited for this task forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(REDISCOVER_EVERY_S):
                    await self._rediscover_requested.wait()
            self._rediscover_requested.clear()
            await self.rediscover()

    async def _periodic_reap(self) -> None:
        while True:
            await asyncio.sleep(REAP_EVERY_S)
            reap_orphan_zombies()
            self._kill_leftovers("idle")

    def _kill_leftovers(self, when: str) -> None:
        """Kill adopted children that no job accounts for, once no job runs.

        An escapee that both cleared its environment (no PO_JOB_ID marker) and left its
        job's session cannot be attributed to a job, so no job's sweep kills it; but as
        subreaper we still hold it as a child. With nothing running (checked without an
        await before the kill, so no leader can be mid-spawn) every such child is a
        leftover. The daemon's own helpers (git) share its session and are spared.
        """
        if self.scheduler.running or not janitor.is_subreaper():
            return
        killed = janitor.kill_unattributed(job_leaders())
        if killed:
            self.log.warning("escapees_killed", pids=killed, when=when)

    # == changes ==========================================================================
    def _locate(self, path: str) -> tuple[str, str] | None:
        for prefix, hyp in self._roots:
            if path.startswith(prefix):
                return hyp, path[len(prefix) :]
        return None

    def _exists(self, hyp: str, rel: str) -> bool:
        wt = self.worktrees.get(hyp)
        return wt is not None and os.path.lexists(os.path.join(wt.path, rel))

    def _is_locked(self, hyp: str) -> bool:
        lock = self._lock_of.get(hyp)
        return lock is not None and os.path.exists(lock)

    def _on_chunk(self, chunk: Chunk) -> None:
        per_hyp: dict[str, set[str]] = {}
        created: dict[str, set[str]] = {}
        rediscover = False
        lock_event = False
        for change, path in chunk.changes:
            if path in self._locks:
                lock_event = True
                if change == CHANGE_DELETED:
                    self.batcher.lock_released(self._locks[path])
                continue
            if any(path == a or path.startswith(a + "/") for a in self._admin_dirs):
                rediscover = True
                continue
            if path in self._root_paths:
                rediscover = True
                continue
            located = self._locate(path)
            if located is None:
                continue
            hyp, rel = located
            if not rel or self._git_filter.ignored(rel) or self._glob_filter.ignored(rel):
                continue
            if change != CHANGE_DELETED and os.path.isdir(path) and not os.path.islink(path):
                # A folder is not a change to test: the watcher already lists the files
                # of a new folder, and "build" next to "build/gen.py" is only noise.
                continue
            if rel == ".gitignore" or rel.endswith("/.gitignore"):
                oracle = self._oracles.get(hyp)
                if oracle is not None:
                    oracle.invalidate()
            per_hyp.setdefault(hyp, set()).add(rel)
            if change == CHANGE_ADDED:
                created.setdefault(hyp, set()).add(rel)
        if rediscover:
            self._rediscover_requested.set()
        if lock_event:
            self._arm_timer(force=True)
        for hyp, rels in per_hyp.items():
            if self.settings.worktrees.respect_gitignore and hyp in self._oracles:
                self._admitting += 1
                self._spawn(
                    self._admit(hyp, rels, chunk.first, chunk.last, created.get(hyp, set()))
                )
            else:
                self.batcher.add(hyp, rels, chunk.first, chunk.last, created.get(hyp, ()))
        if per_hyp:
            self._arm_timer()

    async def _admit(
        self, hyp: str, rels: set[str], first: float, last: float, created: set[str]
    ) -> None:
        """Ask git which paths it ignores, then hand the rest to the batcher.

        While any admission is in flight the batch timer waits (``_on_timer``): closing a
        batch, or releasing a git operation's held changes, before the chunks already
        seen have been admitted would split one burst or one checkout into two batches.
        """
        try:
            oracle = self._oracles.get(hyp)
            if oracle is None:
                return
            try:
                ignored = await oracle.ignored(rels)
            except (GitCheckIgnoreError, OSError) as exc:
                if not oracle.worktree.is_dir():
                    return  # the worktree is being removed: rediscovery reports that
                self.log.warning("gitignore_check_failed", hypothesis=hyp, error=str(exc))
                ignored = set()
            keep = rels - ignored
            if keep and hyp in self.worktrees:
                self.batcher.add(hyp, keep, first, last, created & keep)
        finally:
            self._admitting -= 1
            if not self._admitting:
                force, self._force_after_admit = self._force_after_admit, False
                self._arm_timer(force=force)

    def _on_watcher_restart(self, reason: str) -> None:
        self.log.warning("watcher_restarted", reason=reason)

    def _arm_timer(self, force: bool = False) -> None:
        if self._closing:
            return
        if force and self._admitting:
            self._force_after_admit = True  # _admit re-forces once the last one is in
        loop = asyncio.get_running_loop()
        deadline = self.batcher.next_deadline(loop.time())
        if force:
            deadline = loop.time() if deadline is None else min(deadline, loop.time())
        if deadline is None:
            return
        if self._timer is not None and self._timer_at is not None:
            if self._timer_at <= deadline:
                return
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = self._timer_at = None
        if self._admitting:
            return  # the last admission to finish re-arms the timer
        now = asyncio.get_running_loop().time()
        for batch in self.batcher.close_due(now):
            self._dispatch_batch(batch)
        self._arm_timer()

    def _dispatch_batch(self, batch: Batch) -> None:
        changes: dict[str, set[str]] = {}
        for hyp, paths in batch.changes.items():
            wt = self.worktrees.get(hyp)
            if wt is None:
                continue
            if not wt.path.is_dir():
                self._rediscover_requested.set()
                continue
            changes[hyp] = paths
        if not changes:
            return  # every hypothesis of the batch went away meanwhile
        planned = plan(changes, self.settings.scripts)
        jobs = [f"{h}/{s}" for h, names in planned.items() for s in names]
        self.log.info(
            "batch_formed",
            batch_id=batch.batch_id,
            hypotheses={h: sorted(p)[:MAX_LOGGED_PATHS] for h, p in changes.items()},
            changed_count=sum(len(p) for p in changes.values()),
            jobs=jobs,
            reason=batch.reason,
        )
        for hyp, names in planned.items():
            for name in names:
                self.scheduler.submit(JobRequest(hyp, name, batch.batch_id, set(changes[hyp])))

    def _run_everything(self, hyps: list[str], reason: str) -> None:
        batch_id = self.batcher.next_batch_id()
        jobs = [(h, s.name) for h in hyps for s in self.settings.scripts]
        self.log.info(
            "batch_formed",
            batch_id=batch_id,
            hypotheses={h: [] for h in hyps},
            changed_count=0,
            jobs=[f"{h}/{s}" for h, s in jobs],
            reason=reason,
        )
        for hyp, name in jobs:
            self.scheduler.submit(JobRequest(hyp, name, batch_id, set()))

    # == jobs =============================================================================
    def _priority(self, key: tuple[str, str]) -> int:
        cell = self.board.cell(*key)
        return 0 if cell is None or cell.get("last_result") != "pass" else 1

    def _script(self, name: str) -> ScriptSettings | None:
        return next((s for s in self.settings.scripts if s.name == name), None)

    def _next_job_id(self) -> str:
        self._job_ids += 1
        return f"{self.session}-j{self._job_ids}"

    async def _run_request(self, req: JobRequest) -> None:
        wt = self.worktrees.get(req.hypothesis)
        script = self._script(req.script)
        if wt is None or script is None:
            return
        job_id = self._next_job_id()
        try:
            files = prepare_run_files(self.runs_dir, wt.id, script.name, job_id, req.changed)
        except OSError as exc:
            self.log.warning(
                "run_log_unavailable",
                hypothesis=wt.id,
                script=script.name,
                path=os.fsdecode(self.runs_dir),
                error=str(exc),
            )
            files = None
        spec = make_spec(
            wt, script, batch_id=req.batch_id, job_id=job_id, files=files, base_env=self.env
        )
        log_path = spec.log_path
        argv = spec.argv
        common = {
            "batch_id": req.batch_id,
            "job_id": job_id,
            "hypothesis": wt.id,
            "script": script.name,
        }
        started_wall = time.time()
        started = time.monotonic()
        pid_box: list[int] = []

        def on_started(pid: int) -> None:
            pid_box.append(pid)
            try:
                self.ledger.add(
                    ledger.JobRecord.for_process(
                        job_id=job_id,
                        hypothesis=wt.id,
                        script=script.name,
                        pid=pid,
                        batch_id=req.batch_id,
                        started_at=started_wall,
                    )
                )
            except OSError as exc:
                self.log.warning(
                    "ledger_write_failed", path=os.fsdecode(self.jobs_dir), error=str(exc)
                )
            self.board.update(
                wt.id,
                script.name,
                state="running",
                started_at=iso(started_wall),
                finished_at=None,
                job_id=job_id,
                batch_id=req.batch_id,
                log_path=_path_or_none(log_path),
            )
            # Status first, then the log line: whoever reads the log and then the status
            # file must find the job there already.
            self._write_status()
            self.log.info("job_started", **common, pid=pid, command=list(argv))

        outcome: JobOutcome
        cancelled = False
        try:
            outcome = await run_job(spec, on_started)
        except asyncio.CancelledError:
            cancelled = True
            outcome = JobOutcome(
                result="cancelled",
                exit_code=None,
                duration_s=time.monotonic() - started,
                output_tail=_read_tail(log_path),
                pid=pid_box[0] if pid_box else None,
                started_at=started_wall,
                finished_at=time.time(),
            )
        except Exception as exc:  # a runner bug or an OS failure: report it as the job's error
            self.log.exception("job_crashed", **common)
            outcome = JobOutcome(
                result="error",
                exit_code=None,
                duration_s=time.monotonic() - started,
                output_tail="",
                error_message=f"{type(exc).__name__}: {exc}",
                started_at=started_wall,
                finished_at=time.time(),
            )
        finally:
            try:
                self.ledger.remove(job_id)
            except OSError as exc:
                self.log.warning(
                    "ledger_write_failed", path=os.fsdecode(self.jobs_dir), error=str(exc)
                )
        self._finish(req, wt, script, job_id, log_path, outcome, common)
        if cancelled:
            raise asyncio.CancelledError

    def _finish(
        self,
        req: JobRequest,
        wt: Worktree,
        script: ScriptSettings,
        job_id: str,
        log_path: Path | None,
        outcome: JobOutcome,
        common: dict[str, Any],
    ) -> None:
        tail = outcome.output_tail
        if outcome.error_message and outcome.error_message not in tail:
            tail = (tail + ("\n" if tail else "") + outcome.error_message)[-2048:]
        duration = round(outcome.duration_s, 3)
        self.board.update(
            wt.id,
            script.name,
            state=outcome.result,
            last_result=outcome.result,
            exit_code=outcome.exit_code,
            duration_s=duration,
            started_at=iso(outcome.started_at) if outcome.started_at else None,
            finished_at=iso(outcome.finished_at or time.time()),
            job_id=job_id,
            batch_id=req.batch_id,
            log_path=_path_or_none(log_path),
            output_tail=tail,
        )
        fields: dict[str, Any] = dict(
            common,
            result=outcome.result,
            exit_code=outcome.exit_code,
            duration_s=duration,
            log_path=_path_or_none(log_path),
            output_tail=tail,
        )
        if outcome.error_message:
            fields["error"] = outcome.error_message
        self._write_status()  # before the log line, as for job_started
        level = "info" if outcome.result in ("pass", "cancelled") else "warning"
        getattr(self.log, level)("job_finished", **fields)
        try:
            prune_runs(self.runs_dir / wt.id / script.name, self.settings.daemon.keep_runs)
        except OSError as exc:
            self.log.warning(
                "run_prune_failed", hypothesis=wt.id, script=script.name, error=str(exc)
            )

    # == status ===========================================================================
    def _write_status(self) -> None:
        if self.board.doc["daemon"]["state"] in ("idle", "running"):
            self.board.set_daemon_state("running" if self.scheduler.running else "idle")
        path = self.settings.daemon.status_file
        try:
            self.board.write(path)
        except OSError as exc:
            # Retried every second while it fails; logged on the first failure, when the
            # error changes, and once a minute, not once a second for a day of full disk.
            # (The message names a fresh temp file each time: compare the errno.)
            now = time.monotonic()
            error, kind = str(exc), f"{type(exc).__name__}:{exc.errno}"
            if kind != self._status_error_kind or now - self._status_error_logged >= 60:
                self.log.warning("status_write_failed", path=os.fsdecode(path), error=error)
                self._status_error_kind, self._status_error_logged = kind, now
            self._status_error = error
            if self._status_retry is None:
                loop = asyncio.get_running_loop()
                self._status_retry = loop.call_later(STATUS_RETRY_S, self._retry_status)
        else:
            if self._status_error:
                self.log.info(
                    "status_write_recovered",
                    path=os.fsdecode(path),
                    previous_error=self._status_error,
                )
                self._status_error = self._status_error_kind = ""
        line = summary_line(self.board.doc)
        if line != self._last_status_line:
            self._last_status_line = line
            self.notifier.status(line)

    def _retry_status(self) -> None:
        self._status_retry = None
        self._write_status()

    # == reload ===========================================================================
    async def reload(self) -> None:
        """Apply the config file anew; a bad one changes nothing (``config_invalid``)."""
        self.notifier.reloading()
        self.board.set_daemon_state("reloading")
        self._write_status()
        try:
            new = await asyncio.to_thread(
                load_settings, self.settings.config_path, cwd=self.cwd, env=self.env
            )
            self._preflight(new)
        except ConfigError as exc:
            errors = getattr(exc, "errors", None) or [str(exc)]
            self.log.error(
                "config_invalid",
                errors=list(errors),
                config_path=_path_or_none(self.settings.config_path),
            )
            self.board.set_daemon_state("idle")  # _write_status refines idle/running
            self._write_status()
            self.notifier.ready()
            return
        old = self.settings
        self.settings = new
        d = new.daemon
        self.batcher.debounce_s = d.debounce_ms / 1000
        self.batcher.max_wait_s = d.max_batch_wait_ms / 1000
        if self.watcher is not None:
            self.watcher.set_step(step_for(d.debounce_ms, self.env))
        self._glob_filter = GlobIgnoreFilter(new.worktrees.ignore)
        self.scheduler.set_limits(
            d.concurrency, d.on_busy, [s.name for s in new.scripts if s.exclusive]
        )
        kept = {s.name for s in new.scripts}
        for script in old.scripts:
            if script.name not in kept:
                self.scheduler.cancel_script(script.name)  # ends ``cancelled``
        async with self._discovery_lock:
            try:
                found = await discover_async(new.worktrees)
            except WorktreeError as exc:
                self.log.warning("worktree_discovery_failed", error=str(exc))
                found = list(self.worktrees.values())
            # also reshapes the status board for the new scripts
            await self._apply_worktrees(found)
        self.board.set_daemon_state("idle")
        self._write_status()
        self.log.info(
            "config_reloaded",
            config_path=_path_or_none(new.config_path),
            hypotheses=len(self.worktrees),
            scripts=len(new.scripts),
        )
        self.notifier.ready()

    def _preflight(self, new: Settings) -> None:
        """What could fail half-way through applying ``new``, tried first: a new state dir
        or log file that cannot be written makes the whole config invalid, not half-used."""
        old = self.settings.daemon
        d = new.daemon
        source = _path_or_none(new.config_path) or "(embedded default)"
        if d.state_dir != old.state_dir:
            try:
                prepare_state_dir(d.state_dir)
            except DaemonError as exc:
                raise ConfigError(f"{source}: daemon.state_dir: {exc}") from exc
        if (d.log_level, d.log_file) != (old.log_level, old.log_file):
            try:
                configure_logging(d.log_level, d.log_file)  # the old sink stays on failure
            except OSError as exc:
                raise ConfigError(
                    f"{source}: daemon.log_file: cannot open {d.log_file}: {exc.strerror or exc}"
                ) from exc
            self.log = get_logger()


class _Hooks(SchedulerHooks):
    def __init__(self, daemon: Daemon) -> None:
        self.d = daemon

    def queued(self, req: JobRequest) -> None:
        cell = self.d.board.cell(req.hypothesis, req.script)
        if cell is not None and cell["state"] != "running":
            cell["state"] = "queued"
            self.d._write_status()

    def dropped(self, req: JobRequest, reason: str) -> None:
        cell = self.d.board.cell(req.hypothesis, req.script)
        if cell is not None and cell["state"] == "queued":
            cell["state"] = cell["last_result"] or "never_run"
        self.d.log.info(
            "job_dropped",
            hypothesis=req.hypothesis,
            script=req.script,
            batch_id=req.batch_id,
            reason=reason,
        )
        self.d._write_status()

    def idle(self) -> None:
        self.d._write_status()


def _path_or_none(path: Path | None) -> str | None:
    return None if path is None else os.fsdecode(path)


def _read_tail(path: Path | None, size: int = 2048) -> str:
    if path is None:
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - size))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""
