"""The daemon's control files: rerun requests and the config file, on one folder watch.

``parallel-orchestrator rerun`` drops a request into ``<state_dir>/requests/``; saving
the config file reloads it. Both are noticed by one non-recursive ``FolderWatch`` (its
own inotify instance, apart from the worktrees' watcher, so neither file ever reaches
the change intake and triggers a run). Requests are read and removed off the loop;
each valid one becomes one batch (``batch_formed`` with reason ``manual``).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..pipeline.scheduler import JobRequest
from ..report.safetext import one_line
from ..report.status import StatusBoard
from ..settings.loader import ScriptSettings, Settings
from ..watch.folderwatch import FolderWatch
from .configwatch import ConfigWatch
from .dispatch import run_cells
from .requests import RequestInbox, UnknownTargets, requests_folder, select_cells
from .statedir import DaemonError

MANUAL_REASON = "manual"


def reloaded_scripts(old: Settings, new: Settings) -> list[str]:
    """Scripts a reload added or changed (any key: command, watch, env...)."""
    before = {s.name: s for s in old.scripts}
    return [s.name for s in new.scripts if before.get(s.name) != s]


def cell_map(
    worktrees: Iterable[str], scripts: Sequence[ScriptSettings], board: StatusBoard
) -> tuple[dict[str, list[str]], dict[tuple[str, str], str | None]]:
    """Each hypothesis' scripts and each cell's last result, for ``select_cells``."""
    names = [s.name for s in scripts]
    scripts_of = {hyp: names for hyp in worktrees}
    last = {}
    for hyp in scripts_of:
        for name in names:
            cell = board.cell(hyp, name)
            last[(hyp, name)] = None if cell is None else cell.get("last_result")
    return scripts_of, last


class ControlChannel:
    """Wires the folder watch to the request inbox and the config watch.

    ``cells()`` gives each hypothesis' scripts and each cell's last result, as the
    daemon knows them now; ``run`` submits a job request to the scheduler, ``batch_id``
    names a new batch; ``reload()`` queues a reload as SIGHUP does.
    """

    def __init__(
        self,
        *,
        state_dir: Path,
        config: Path | None,
        cells: Callable[
            [], tuple[Mapping[str, Sequence[str]], Mapping[tuple[str, str], str | None]]
        ],
        run: Callable[[JobRequest], None],
        batch_id: Callable[[], str],
        reload: Callable[[], None],
        log: Callable[[], Any],
    ) -> None:
        self.inbox = RequestInbox(requests_folder(state_dir))
        self.config = ConfigWatch(config, reload, self._spawn)
        self._cells = cells
        self._run = run
        self._batch_id = batch_id
        self._log = log
        self._tasks: set[asyncio.Task[Any]] = set()
        self._before_reload: set[str] = set()
        self._watch: FolderWatch | None = None
        self._collecting = False
        self._again = False
        self._request_folder = os.fsdecode(self.inbox.folder)

    def prepare(self) -> None:
        """Create the requests folder (0700); raises DaemonError."""
        try:
            self.inbox.prepare()
        except OSError as exc:
            raise DaemonError(f"{self.inbox.folder}: {exc.strerror or exc}") from exc
        self._request_folder = os.path.realpath(self.inbox.folder)

    async def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Watch; the rescan after arming takes requests left from before (a ``rerun``
        racing our start) and reloads a config saved since the daemon read it."""
        await self.config.refresh()
        self._watch = FolderWatch(loop, self._wanted, self._on_paths)
        self._watch.set_folders(self._folders())
        self._watch.start()
        if not await self._watch.wait_armed(10):
            self._log().warning("control_watch_slow_to_arm")

    def _folders(self) -> list[str]:
        return [self._request_folder, *self.config.folders]

    def _wanted(self, path: str) -> bool:
        return os.path.dirname(path) == self._request_folder or self.config.wanted(path)

    async def config_reloading(self, worktrees: Iterable[str]) -> None:
        """Before a reload reads the config (SIGHUP or a save)."""
        self._before_reload = set(worktrees)
        await self.config.reading()

    async def config_reloaded(self, old: Settings, new: Settings, worktrees: Iterable[str]) -> None:
        """After a good reload: scripts it added or changed run once in the hypotheses
        that were there before (a new worktree runs all of its own), when
        ``run_on_start``; the config's links may have been repointed. (The state dir,
        and so the requests folder, cannot change on a reload.)"""
        changed = reloaded_scripts(old, new)
        if changed and new.daemon.run_on_start:
            hyps = [h for h in worktrees if h in self._before_reload]
            self.run_cells([(h, s) for h in hyps for s in changed], "config_reloaded")
        self.config.config = new.config_path
        await self.config.refresh()
        if self._watch is not None:
            self._watch.set_folders(self._folders())

    def run_cells(self, cells: list[tuple[str, str]], reason: str) -> None:
        if cells:
            run_cells(self._batch_id(), cells, self._run, self._log(), reason)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def close(self) -> None:
        """Stop the watch (blocking: up to a second; call it off the loop). Tasks still
        reading requests are left to the loop's end: they only read and unlink files."""
        self.config.close()
        if self._watch is not None:
            self._watch.stop()

    # -- the watch's callback ------------------------------------------------------------
    def _on_paths(self, paths: frozenset[str]) -> None:
        rescan = not paths
        if rescan or any(self.config.wanted(p) for p in paths):
            self.config.changed()
        if rescan or any(os.path.dirname(p) == self._request_folder for p in paths):
            self.take_requests()

    def take_requests(self) -> None:
        if self._collecting:
            self._again = True  # one more scan once this one is done
            return
        self._collecting = True
        self._spawn(self._collect())

    async def _collect(self) -> None:
        try:
            while True:
                self._again = False
                for name, request in await asyncio.to_thread(self.inbox.collect):
                    self._handle(name, request)
                if not self._again:
                    return
        finally:
            self._collecting = False

    def _handle(self, name: str, request: Any) -> None:
        log = self._log()
        if isinstance(request, str):
            log.warning("rerun_request_invalid", file=one_line(name), error=request)
            return
        scripts_of, last = self._cells()
        try:
            cells = select_cells(request, scripts_of, last)
        except UnknownTargets as exc:
            log.warning("rerun_request_invalid", file=name, error=one_line(str(exc)))
            return
        if not cells:
            log.info(
                "rerun_nothing", file=name, targets=list(request.targets), failed=request.failed
            )
            return
        self.run_cells(cells, MANUAL_REASON)
