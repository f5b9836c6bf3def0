"""Whether ``worktrees.repo`` is still there, said once per change, not every 10 s.

Moving or deleting the whole repository made every rediscovery fail, and each failure
was logged (``worktree_discovery_failed`` every 10 s, forever) without saying what
happened. Now a repository folder that is gone is a state: ``repo_missing`` (logged once,
and ``daemon.repo_state`` = ``"repo_missing"`` in the status file) until a discovery
succeeds again (``repo_restored``, ``repo_state`` = ``"ok"``). Other discovery failures
are logged when their message changes, not on every retry.

A repository back at its path, or one replaced by another folder there between two
rounds (``mv repo old && mv clone repo``: never seen missing), is another folder than
the one inotify watches: ``watch_anew`` is awaited before it is served again (the
latter also said as ``watcher_restarted``), else no edit made in it would ever run.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from ..jobs import ledger
from ..repo.worktrees import Worktree, WorktreeError, discover_async, hidden_by_permission
from ..report.status import StatusBoard
from ..report.statuswriter import StatusWriter
from ..settings.loader import WorktreeSettings
from ..states import REPO_MISSING, REPO_OK
from .statedir import DaemonError


async def discover_at_start(
    settings: WorktreeSettings, jobs_dir: Path, recovered: list[ledger.RecoveredJob]
) -> list[Worktree]:
    """The worktrees to serve at start-up; raises DaemonError (one line, exit 2). The
    ledger was recovered already (orphans killed, records deleted): on a refusal its
    records are put back, or a restart refused while the repository is missing lost
    them and the next start never reported those jobs."""
    try:
        return await discover_async(settings, strict=True)
    except WorktreeError as exc:
        ledger.put_back(jobs_dir, recovered)
        raise DaemonError(str(exc)) from exc


class RepoPresence:
    def __init__(
        self,
        board: StatusBoard,
        writer: StatusWriter,
        log: Callable[[], Any],
        watch_anew: Callable[[list[Worktree]], Awaitable[None]] | None = None,
    ) -> None:
        """``watch_anew(found)``: awaited when the repository is back, before
        ``repo_restored`` says so (whoever edits on seeing that line must get a run), and
        when a served folder was replaced by another at the same path."""
        self._board = board
        self._writer = writer
        self._log = log
        self._watch_anew = watch_anew
        self.missing = False
        self._last_error = ""
        board.doc["daemon"]["repo_state"] = REPO_OK

    async def discover(
        self, settings: WorktreeSettings, served: Mapping[str, Worktree] | None = None
    ) -> list[Worktree] | None:
        """The worktrees, or None (the failure said as above) when they cannot be listed.
        ``served``: the worktrees being served, kept while a permission hides them
        (``worktrees.discover_async``)."""
        known = [wt.path for wt in (served or {}).values()]
        try:
            found = await discover_async(settings, known=known)
        except WorktreeError as exc:
            self.failed(settings.repo, str(exc))
            return None
        replaced = replaced_folders(served or {}, found)
        if (self.missing or replaced) and self._watch_anew is not None:
            await self._watch_anew(found)
        if replaced and not self.missing:  # said once watched: an edit made then runs
            shown = ", ".join(os.fsdecode(path) for path in replaced)
            reason = f"{shown}: replaced by another folder at the same path, watched anew"
            self._log().warning("watcher_restarted", reason=reason)
        self.succeeded(settings.repo)
        return found

    def failed(self, repo: Path | None, error: str) -> None:
        """A discovery failed with ``error``; ``repo`` is the configured repository."""
        if repo is not None and not os.path.isdir(repo) and not hidden_by_permission(repo):
            if not self.missing:
                self.missing = True
                self._log().error(REPO_MISSING, repo=os.fsdecode(repo), error=error)
                self._set(REPO_MISSING)
            return
        if error != self._last_error:
            self._last_error = error
            self._log().warning("worktree_discovery_failed", error=error)

    def succeeded(self, repo: Path | None) -> None:
        self._last_error = ""
        if self.missing:
            self.missing = False
            self._log().info("repo_restored", repo=os.fsdecode(repo) if repo else None)
            self._set(REPO_OK)

    def _set(self, state: str) -> None:
        self._board.doc["daemon"]["repo_state"] = state
        self._writer.write()


def replaced_folders(served: Mapping[str, Worktree], found: list[Worktree]) -> list[Path]:
    """Paths served before and found again, but now another folder (``Worktree.folder``)."""
    replaced = []
    for wt in found:
        old = served.get(wt.id)
        if old is None or old.path != wt.path or None in (old.folder, wt.folder):
            continue
        if old.folder != wt.folder:
            replaced.append(wt.path)
    return replaced
