"""``parallel-orchestrator run``: the long-running daemon that wires the pipeline together.

worktrees -> watcher -> intake (WorktreeIndex, filters, gitignore, batcher) -> dispatch
(planner) -> scheduler -> jobglue (runner, ledger) -> status writer / JSON log.

This module keeps only lifecycle and wiring: the state-dir lock, start-up (crash
recovery, discovery), signals, rediscovery, reload and shutdown. Each stage's own work
lives in the module named above.

Signal handlers only record the signal; the main loop acts on it (uvicorn's shape).
Shutdown: stop intake, cancel running jobs (each runner kills its group: SIGTERM, grace,
SIGKILL, reap), log what was cut, write the final status, ``daemon_stopped`` last.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .. import __version__
from ..backends.base import close_within, open_backend
from ..cache.reuse import ResultReuse, rules_for
from ..jobs import janitor, ledger
from ..jobs.runner import install_child_watcher, reap_orphan_zombies
from ..pipeline.batcher import Batch
from ..pipeline.scheduler import Scheduler
from ..repo.worktreeindex import WorktreeIndex, reindex
from ..repo.worktrees import Worktree
from ..report.eventlog import configure_logging, get_logger
from ..report.status import StatusBoard, load_previous
from ..report.statuswriter import StatusWriter
from ..settings.loader import ConfigError, Settings, load_settings
from ..states import (
    DAEMON_IDLE,
    DAEMON_RELOADING,
    DAEMON_RUNNING,
    DAEMON_STOPPED,
    DAEMON_STOPPING,
    PASS,
)
from ..store.fence import fence
from ..watch.waitmarks import WaitMarkers, marker_folder
from ..watch.watcher import Watcher, step_for
from .control import ControlChannel, cell_map
from .dispatch import dispatch_batch, run_everything
from .feedback import FeedbackGuard
from .intake import ChangeIntake
from .jobglue import BoardHooks, JobGlue, path_or_none, report_recovered
from .notify import Notifier
from .ownfiles import own_files
from .reaper import kill_leftovers, reap_periodically
from .repopresence import RepoPresence, discover_at_start
from .sidebyside import SideBySide
from .statedir import STATE_DIR_LOST, StateDirLock, tidy_state_dir
from .statedir import DaemonError as DaemonError  # re-exported: callers import it here

REDISCOVER_EVERY_S = 10.0
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class Daemon:
    """Lifecycle and wiring; each stage's work lives in its own module (see the README)."""

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
        self.worktrees: dict[str, Worktree] = {}
        self.index = WorktreeIndex({})
        # Signal numbers, or a reason to stop (str) from the daemon itself.
        self._signals: asyncio.Queue[int | str] = asyncio.Queue()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._rediscover_requested = asyncio.Event()
        self._discovery_lock = asyncio.Lock()  # one discover-and-apply at a time
        self.state_lock = StateDirLock(settings.daemon.state_dir, settings.config_path)
        self.notifier = Notifier(self.env)
        d = settings.daemon
        self.sidebyside = SideBySide(settings, self.env, lambda: self.log, lambda: self.worktrees)
        self.board = StatusBoard(
            pid=os.getpid(), version=__version__, config_path=settings.config_path
        )
        self.status = StatusWriter(
            self.board,
            path=lambda: self.settings.daemon.status_file,
            log=lambda: self.log,
            sink=self.notifier,
            before_write=self._refine_daemon_state,
        )
        self.markers = WaitMarkers(marker_folder(d.state_dir), self.status, lambda: self.log)
        self.board.doc["daemon"]["wait_dir"] = os.fsdecode(self.markers.folder)
        self.reuse = ResultReuse(d.state_dir, rules_for(settings))
        self.intake = ChangeIntake(
            debounce_s=d.debounce_ms / 1000,
            max_wait_s=d.max_batch_wait_ms / 1000,
            batch_id_prefix=f"{self.session}-b",
            index=lambda: self.index,
            ignore=settings.worktrees.ignore,
            dispatch=self._dispatch_batch,
            spawn=self._spawn,
            respect_gitignore=lambda: self.settings.worktrees.respect_gitignore,
            rediscover=self._rediscover_requested.set,
            log=lambda: self.log,
            observer=self.reuse,
            own=lambda: own_files(self.settings.daemon),
            markers=self.markers,
        )
        self.batcher = self.intake.batcher
        self.ledger = ledger.Ledger(d.state_dir / "jobs", self.state_lock.check_before_write)
        ex = settings.executor
        # BackendUnavailable (distributed missing; at start: scheduler unreachable) is an
        # OrchestratorError: one line, exit 2.
        self.backend = open_backend(ex.backend, ex.address, log=lambda: self.log)
        self._slots = d.concurrency  # max_concurrency = 0: the backend's, once started
        self.jobs = JobGlue(
            session=self.session,
            settings=lambda: self.settings,
            worktree=lambda hyp: self.worktrees.get(hyp),
            board=self.board,
            writer=self.status,
            log=lambda: self.log,
            env=self.env,
            jobs_ledger=self.ledger,
            backend=self.backend,
            reuse=self.reuse,
            extras=self.sidebyside,
            rerun_due=lambda key: self.scheduler.pending(key),
        )
        self.feedback = FeedbackGuard(lambda: self.log, self.board.process_ended)
        self.repo_presence = RepoPresence(
            self.board, self.status, lambda: self.log, watch_anew=self._watch_anew
        )
        self.scheduler = Scheduler(
            self.feedback.wrap(self.jobs.run),
            concurrency=d.concurrency,
            on_busy=d.on_busy,
            priority=self._priority,
            hooks=BoardHooks(self.board, self.status, lambda: self.log),
            exclusive=[s.name for s in settings.scripts if s.exclusive],
        )
        self.watcher: Watcher | None = None
        self.control = ControlChannel(
            state_dir=d.state_dir,
            config=settings.config_path,
            cells=lambda: cell_map(self.worktrees, self.settings.scripts, self.board),
            run=lambda req: self.scheduler.submit(req),
            batch_id=self.batcher.next_batch_id,
            reload=lambda: self._signals.put_nowait(signal.SIGHUP),
            log=lambda: self.log,
        )

    # == lifecycle ========================================================================
    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        install_child_watcher()
        d = self.settings.daemon
        self.state_lock.acquire()
        if tidied := tidy_state_dir(d.state_dir, d.status_file):
            self.log.info("state_dir_tidied", removed=[os.fsdecode(p) for p in tidied])
        self.control.prepare()  # DaemonError
        self.sidebyside.open()  # TempDirError / WaitMarkerError: one line, exit 2
        self.markers.prepare()
        janitor.become_subreaper()
        recovered = ledger.recover(self.jobs_dir)
        await self._start_backend()
        found = await discover_at_start(self.settings.worktrees, self.jobs_dir, recovered)
        self._set_worktrees(found, initial=True)
        previous = load_previous(d.status_file, self.log)
        if previous:
            self.board.adopt_previous(previous)
        self.sidebyside.seed(self.board.doc)
        report_recovered(recovered, self.board, self.log)
        self.log.info(
            "daemon_started",
            pid=os.getpid(),
            version=__version__,
            config_path=path_or_none(self.settings.config_path),
            hypotheses=len(self.worktrees),
            scripts=len(self.settings.scripts),
            state_dir=os.fsdecode(d.state_dir),
            status_file=os.fsdecode(d.status_file),
        )
        for wt in self.worktrees.values():
            self._log_worktree("worktree_added", wt, initial=True)
        self.status.write()

        for sig in SIGNALS:
            loop.add_signal_handler(sig, self._signals.put_nowait, sig)
        for sig in self._early_signals:  # arrived before the loop's handlers were in place
            self._signals.put_nowait(sig)
        code = 0
        try:
            await self._start_watching(loop)
            if d.run_on_start and self._signals.empty():
                self._run_everything(list(self.worktrees), reason="start")
            await self.control.start(loop)  # rerun requests, config saves
            self.intake.settle(sweep=True)
            reason = await self._main_loop()
            code = 1 if reason == STATE_DIR_LOST else 0  # a stop we did not choose
        except Exception as exc:
            # A bug must not orphan the running jobs: log it, then shut down as usual.
            self.log.exception("daemon_crashed", error=f"{type(exc).__name__}: {exc}")
            reason, code = f"crash: {type(exc).__name__}", 1
        await self._shutdown(reason)
        for sig in SIGNALS:
            loop.remove_signal_handler(sig)
        return code

    async def _start_backend(self) -> None:
        await self.backend.start()
        self._slots = await self.backend.slots()
        self.scheduler.set_limits(self._concurrency(self.settings), *self._policy(self.settings))

    def _concurrency(self, settings: Settings) -> int:
        return settings.daemon.max_concurrency or self._slots

    @staticmethod
    def _policy(settings: Settings) -> tuple[Any, list[str]]:
        return settings.daemon.on_busy, [s.name for s in settings.scripts if s.exclusive]

    async def _start_watching(self, loop: asyncio.AbstractEventLoop) -> None:
        self.watcher = Watcher(
            loop,
            self.intake.on_chunk,
            self._on_watcher_restart,
            step_for(self.settings.daemon.debounce_ms, self.env),
            on_unwatchable=self._on_unwatchable,
        )
        self.watcher.set_paths(self.markers.with_folder(self.index.watch_paths()))
        self.watcher.start()
        if not await self.watcher.wait_armed(30):
            self.log.warning("watcher_slow_to_arm")
        self.board.set_daemon_state(DAEMON_IDLE)
        self.status.flush()  # READY=1 and the status file agree
        self.notifier.ready()
        self._spawn(self.notifier.run_watchdog())
        self._spawn(self._periodic_rediscover())
        self._spawn(reap_periodically(lambda: bool(self.scheduler.running), lambda: self.log))
        self._spawn(self._guard_state_dir())

    async def _main_loop(self) -> str:
        while True:
            sig = await self._signals.get()
            if isinstance(sig, str):
                return sig
            if sig == signal.SIGHUP:
                await self.reload()
                continue
            return signal.Signals(sig).name

    async def _shutdown(self, reason: str) -> None:
        self.status.flush()  # job lines waiting on a coalesced write come first
        self.log.info(
            "daemon_stopping",
            reason=reason,
            running=[f"{h}/{s}" for h, s in self.scheduler.running],
            queued=[f"{h}/{s}" for h, s in self.scheduler.waiting],
            pending_changes=sum(len(p) for p in self.batcher.held.values()),
        )
        self.intake.close()
        self.notifier.stopping()
        self.board.set_daemon_state(DAEMON_STOPPING)
        self.status.write()
        # The watcher thread notices a stop only between watch calls (up to ~0.5 s): stop
        # it alongside the jobs, not before them, or that wait eats into the
        # kill_grace_s + 2 s shutdown budget.
        watcher_stopped = asyncio.gather(
            asyncio.to_thread(self.watcher.stop, 1.5) if self.watcher else asyncio.sleep(0),
            asyncio.to_thread(self.control.close),
        )
        grace = max((s.kill_grace_s for s in self.settings.scripts), default=5.0)
        stuck = await self.scheduler.shutdown(timeout=grace + 1.5)
        await close_within(self.backend, 1.0, self.log)
        await self.sidebyside.close()
        await watcher_stopped
        if stuck:
            self.log.error("jobs_not_stopped", jobs=[f"{h}/{s}" for h, s in stuck])
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        reap_orphan_zombies()
        await kill_leftovers("shutdown", lambda: bool(self.scheduler.running), lambda: self.log)
        self.board.set_daemon_state(DAEMON_STOPPED)
        self.status.flush()
        self.status.close()
        self.notifier.close()
        await self.reuse.aclose()
        self.log.info("daemon_stopped", reason=reason)
        self.state_lock.release()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def jobs_dir(self) -> Path:
        return self.jobs.jobs_dir

    @property
    def runs_dir(self) -> Path:
        return self.jobs.runs_dir

    def _refine_daemon_state(self) -> None:
        """Before each status write: idle or running, from the scheduler."""
        if self.board.doc["daemon"]["state"] in (DAEMON_IDLE, DAEMON_RUNNING):
            self.board.set_daemon_state(DAEMON_RUNNING if self.scheduler.running else DAEMON_IDLE)

    # == worktrees ========================================================================
    def _set_worktrees(self, found: list[Worktree], *, initial: bool = False) -> None:
        new = {wt.id: wt for wt in found}
        old = self.worktrees
        self.worktrees = new
        fence(self.settings.worktrees.repo, (wt.path for wt in found))  # never recreated
        for hyp in old.keys() - new.keys():
            self.scheduler.cancel_hypothesis(hyp)
            self.intake.forget(hyp)
            self._log_worktree("worktree_removed", old[hyp])
        added = [hyp for hyp in new if hyp not in old or old[hyp].path != new[hyp].path]
        for hyp in added:
            self.intake.track(hyp, new[hyp].path)
            if not initial:
                self._log_worktree("worktree_added", new[hyp])
        for hyp in new.keys() - set(added):
            if old[hyp].branch != new[hyp].branch:
                self._log_worktree(
                    "worktree_branch_changed", new[hyp], previous_branch=old[hyp].branch
                )
        self.reuse.set_worktrees({wt.id: wt.path for wt in new.values()})
        self._index_worktrees()
        self.board.set_hypotheses(
            ((wt.id, os.fsdecode(wt.path), wt.branch) for wt in new.values()),
            [s.name for s in self.settings.scripts],
        )
        if not initial:
            self.status.write()
            if added and self.settings.daemon.run_on_start:
                self._run_everything(added, reason="worktree_added")

    def _index_worktrees(self) -> None:
        """Read git's layout of the worktrees anew (``reindex``)."""
        self.index, problems = reindex(self.worktrees.values(), self.index)
        for hyp, error in problems:
            self.log.warning("git_dir_unknown", hypothesis=hyp, error=error)
        if self.watcher is not None:
            self.watcher.set_paths(self.markers.with_folder(self.index.watch_paths()))

    def _log_worktree(self, event: str, wt: Worktree, **extra: Any) -> None:
        self.log.info(event, hypothesis=wt.id, path=os.fsdecode(wt.path), branch=wt.branch, **extra)

    async def rediscover(self) -> None:
        async with self._discovery_lock:
            found = await self.repo_presence.discover(self.settings.worktrees, self.worktrees)
            if found is None:
                return
            # The branch counts too: a `git checkout` in a worktree must reach the status
            # file and the {branch} placeholder, not only additions and removals.
            current = {(wt.id, wt.path, wt.branch) for wt in self.worktrees.values()}
            if {(wt.id, wt.path, wt.branch) for wt in found} != current:
                await self._apply_worktrees(found)
            elif self.index.hidden:  # e.g. a worktree no longer hidden: its lock again
                self._index_worktrees()

    async def _apply_worktrees(self, found: list[Worktree]) -> None:
        """``_set_worktrees``, but a new worktree is watched before it is announced.

        Whoever sees ``worktree_added`` (or the status gaining it) and edits a file there
        must get a run; announcing first would lose edits made while the watcher re-arms.
        """
        if self.watcher is not None:
            known = {os.fsdecode(wt.path) for wt in self.worktrees.values()}
            fresh = [os.fsdecode(wt.path) for wt in found if os.fsdecode(wt.path) not in known]
            paths = self.markers.with_folder(self.index.watch_paths()) + fresh
            rearmed = bool(fresh) and self.watcher.set_paths(paths)
            if rearmed and not await self.watcher.wait_armed(30):
                self.log.warning("watcher_slow_to_arm", paths=fresh)
        self._set_worktrees(found)

    async def _watch_anew(self, found: list[Worktree]) -> None:
        """The repository is back, maybe as a new folder at the old path (the old arm
        watches the deleted one): re-arm for every worktree, re-index, then it is served."""
        if self.watcher is not None:
            self.watcher.rearm()
        await self._apply_worktrees(found)
        if self.watcher is not None and not await self.watcher.wait_armed(30):
            self.log.warning("watcher_slow_to_arm")

    async def _periodic_rediscover(self) -> None:
        while True:
            # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancel that
            # arrives as the event gets set, and shutdown then waited for this task forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(REDISCOVER_EVERY_S):
                    await self._rediscover_requested.wait()
            self._rediscover_requested.clear()
            await self.rediscover()

    async def _guard_state_dir(self) -> None:
        """Keep ``daemon.lock`` guarding the state dir; stop if it cannot (``statedir``)."""
        reason = await self.state_lock.watch(lambda: self.log, self._state_dir_restored)
        self._signals.put_nowait(reason)

    def _state_dir_restored(self) -> None:
        """The state dir was recreated: the running jobs' ledger records and the status
        file go back into it, so a crash now is still recovered."""
        try:
            self.ledger.rewrite()
        except OSError as exc:
            self.jobs.ledger_failed(exc)
        self.status.write()

    # == changes ==========================================================================
    def _on_watcher_restart(self, reason: str) -> None:
        if self.index.hidden:  # a root readable again: its index.lock before any edit
            self._index_worktrees()
        self.log.warning("watcher_restarted", reason=reason)
        self.reuse.invalidate()  # changes may have been missed: relist before the next key

    def _on_unwatchable(self, path: str, error: str) -> None:
        self.log.warning("worktree_unreadable", path=path, error=error)

    def _dispatch_batch(self, batch: Batch) -> None:
        submit = self.feedback.gate(batch, self.scheduler.submit)
        if dispatch_batch(batch, self.worktrees, self.settings.scripts, submit, self.log):
            self._rediscover_requested.set()

    def _run_everything(self, hyps: list[str], reason: str) -> None:
        batch_id = self.batcher.next_batch_id()
        run_everything(
            batch_id, hyps, self.settings.scripts, self.scheduler.submit, self.log, reason
        )

    # == jobs =============================================================================
    def _priority(self, key: tuple[str, str]) -> int:
        cell = self.board.cell(*key)
        return 0 if cell is None or cell.get("last_result") != PASS else 1

    # == reload ===========================================================================
    async def reload(self) -> None:
        """Apply the config file anew; a bad one changes nothing (``config_invalid``)."""
        self.notifier.reloading()
        self.board.set_daemon_state(DAEMON_RELOADING)
        self.status.write()
        await self.control.config_reloading(self.worktrees)
        try:
            new = await asyncio.to_thread(
                load_settings, self.settings.config_path, cwd=self.cwd, env=self.env
            )
            if preflight(self.settings, new):
                self.log = get_logger()
        except ConfigError as exc:
            errors = getattr(exc, "errors", None) or [str(exc)]
            self.log.error(
                "config_invalid",
                errors=list(errors),
                config_path=path_or_none(self.settings.config_path),
            )
            self.board.set_config_error(list(errors))
            self.board.set_daemon_state(DAEMON_IDLE)  # the status writer refines idle/running
            self.status.write()
            self.notifier.ready()
            return
        old = self.settings
        self.settings = new
        d = new.daemon
        self.batcher.debounce_s = d.debounce_ms / 1000
        self.batcher.max_wait_s = d.max_batch_wait_ms / 1000
        if self.watcher is not None:
            self.watcher.set_step(step_for(d.debounce_ms, self.env))
        self.intake.set_ignore(new.worktrees.ignore)
        self.reuse.set_rules(rules_for(new), d.state_dir)
        self.sidebyside.reload(new)
        self.scheduler.set_limits(self._concurrency(new), *self._policy(new))
        if new.executor != old.executor:
            self.log.warning("executor_change_needs_restart", kept=old.executor.backend)
        kept = {s.name for s in new.scripts}
        for script in old.scripts:
            if script.name not in kept:
                self.scheduler.cancel_script(script.name)  # ends ``cancelled``
        async with self._discovery_lock:
            found = await self.repo_presence.discover(new.worktrees, self.worktrees)
            if found is None:
                found = list(self.worktrees.values())
            # also reshapes the status board for the new scripts
            await self._apply_worktrees(found)
        self.board.set_config_error(None)
        self.board.set_daemon_state(DAEMON_IDLE)
        self.status.flush()  # on disk before config_reloaded says so
        self.log.info(
            "config_reloaded",
            config_path=path_or_none(new.config_path),
            hypotheses=len(self.worktrees),
            scripts=len(new.scripts),
        )
        await self.control.config_reloaded(old, new, self.worktrees)  # runs changed scripts
        self.notifier.ready()


def preflight(old_settings: Settings, new: Settings) -> bool:
    """What could fail half-way through applying ``new``, tried first: a log file that
    cannot be opened makes the whole config invalid, not half-used. A new state dir
    cannot be applied live at all (the lock and the crash ledger of running jobs stay
    in the old one; after a crash nothing would recover them): refused the same way.

    True when logging was reconfigured (the caller takes a fresh logger).
    """
    old = old_settings.daemon
    d = new.daemon
    source = path_or_none(new.config_path) or "(embedded default)"
    if d.state_dir != old.state_dir:
        raise ConfigError(
            f"{source}: daemon.state_dir: changed from {os.fsdecode(old.state_dir)} to "
            f"{os.fsdecode(d.state_dir)}; a running daemon keeps its state dir "
            "(lock, crash ledger): restart it to apply"
        )
    if (d.log_level, d.log_file) == (old.log_level, old.log_file):
        return False
    try:
        configure_logging(d.log_level, d.log_file)  # the old sink stays on failure
    except OSError as exc:
        raise ConfigError(
            f"{source}: daemon.log_file: cannot open {d.log_file}: {exc.strerror or exc}"
        ) from exc
    return True
