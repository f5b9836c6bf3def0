"""Watcher chunks into batches: classification, gitignore admission, the batch timer.

Each chunk is sorted per hypothesis by the ``WorktreeIndex`` (ignored paths dropped by
the .git and ``ignore`` glob filters); a released ``index.lock`` lets the batcher go on,
a changed root or git admin dir asks for rediscovery. With ``respect_gitignore`` each
hypothesis' paths are then put to ``git check-ignore`` (a subprocess, awaited in a task);
only the rest reach the batcher. The batch timer runs on loop timers: it fires at the
batcher's next deadline and hands each closed batch to ``dispatch``. While any admission
is in flight the timer waits: closing a batch, or releasing a git operation's held
changes, before the chunks already seen have been admitted would split one burst or one
checkout into two batches.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine, Iterable
from pathlib import Path
from typing import Any, Protocol

from watchfiles import Change

from ..pipeline.batcher import Batch, Batcher
from ..repo.filters import (
    GitCheckIgnoreError,
    GitIgnoreOracle,
    GitInternalsFilter,
    GlobIgnoreFilter,
)
from ..repo.worktreeindex import WorktreeIndex
from ..watch.waitmarks import WaitMarkers
from ..watch.watcher import Chunk
from .ownfiles import OwnFiles


class ChangeObserver(Protocol):
    """Told of every classified change before it is batched (the result cache's digests)."""

    def changed(self, hyp: str, relpaths: set[str], when: float) -> None: ...

    def invalidate(self, hyp: str | None = None) -> None: ...


class ChangeIntake:
    """Turns watcher chunks into the batcher's input and closes batches on time.

    ``index`` gives the current ``WorktreeIndex`` (replaced when worktrees change);
    ``spawn`` runs a coroutine as a task the daemon owns (cancelled at shutdown);
    ``respect_gitignore`` and ``log`` are callables because a reload may change them;
    ``rediscover`` asks the daemon to list the worktrees again. ``markers``: the
    ``wait`` markers, taken out of every chunk (never a change to test) and settled
    whenever the intake may have become ``quiet``. ``own`` gives the daemon's own files
    (a reload may move them).
    """

    def __init__(
        self,
        *,
        debounce_s: float,
        max_wait_s: float,
        batch_id_prefix: str,
        index: Callable[[], WorktreeIndex],
        ignore: Iterable[str],
        dispatch: Callable[[Batch], None],
        spawn: Callable[[Coroutine[Any, Any, None]], None],
        respect_gitignore: Callable[[], bool],
        rediscover: Callable[[], None],
        log: Callable[[], Any],
        observer: ChangeObserver | None = None,
        markers: WaitMarkers | None = None,
        own: Callable[[], OwnFiles] = OwnFiles,
    ) -> None:
        self._observer = observer
        self.batcher = Batcher(
            debounce_s, max_wait_s, self.is_locked, id_prefix=batch_id_prefix, exists=self.exists
        )
        self._index = index
        self._git_filter = GitInternalsFilter()
        self._glob_filter = GlobIgnoreFilter(ignore)
        self._dispatch = dispatch
        self._spawn = spawn
        self._respect_gitignore = respect_gitignore
        self._rediscover = rediscover
        self._log = log
        self._markers = markers
        self._oracles: dict[str, GitIgnoreOracle] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._admitting = 0  # admissions in flight
        self._force_after_admit = False
        self._closing = False
        self._own = own

    def set_ignore(self, ignore: Iterable[str]) -> None:
        """The ``ignore`` globs of a reloaded config."""
        self._glob_filter = GlobIgnoreFilter(ignore)

    # -- what the batcher asks the file system (stat only) ------------------------------
    def exists(self, hyp: str, rel: str) -> bool:
        root = self._index().root(hyp)
        return root is not None and os.path.lexists(os.path.join(root, rel))

    def is_locked(self, hyp: str) -> bool:
        lock = self._index().lock_path(hyp)
        return lock is not None and os.path.exists(lock)

    # -- chunks -------------------------------------------------------------------------
    def _ignored(self, rel: str) -> bool:
        return self._git_filter.ignored(rel) or self._glob_filter.ignored(rel)

    @property
    def quiet(self) -> bool:
        """Every change seen so far has left: batched (its jobs queued) or dropped."""
        return not self._admitting and self.batcher.idle()

    def settle(self, sweep: bool = False) -> None:
        """The intake may have become ``quiet``: the wait markers seen may be answered.
        ``sweep``: first take the markers already in the folder (placed before the watch
        was armed)."""
        if self._markers is not None:
            if sweep:
                self._markers.sweep()
            self._markers.settle(self.quiet)

    def _take_markers(self, changes: set[tuple[int, str]]) -> set[tuple[int, str]]:
        markers = self._markers
        if markers is None or not any(markers.owns(path) for _change, path in changes):
            return changes
        for change, path in changes:
            if markers.owns(path) and change != Change.deleted:
                markers.seen(path)
        return {(c, p) for c, p in changes if not markers.owns(p)}

    def on_chunk(self, chunk: Chunk) -> None:
        """The watcher's callback (on the loop): one chunk of raw changes."""
        stream_ended = self.batcher.streaming and not chunk.streaming
        self.batcher.streaming = chunk.streaming
        # Wait markers first (they live in the state dir), then the daemon's own files:
        # the state dir, status and log files are never a change (ownfiles.py).
        changes = self._own().drop_from(self._take_markers(chunk.changes))
        seen = self._index().classify(changes, self._ignored)
        for hyp in seen.released:
            self.batcher.lock_released(hyp)
        for hyp in seen.gitignore_touched:
            self.gitignore_changed(hyp)
            if self._observer is not None:
                self._observer.invalidate(hyp)
        if seen.rediscover:
            self._rediscover()
        if seen.lock_event:
            self.arm(force=True)
        for hyp, rels in seen.changed.items():
            if self._observer is not None:  # before any job can start on these changes
                self._observer.changed(hyp, rels, chunk.first)
            self.add(hyp, rels, chunk.first, chunk.last, seen.created.get(hyp, set()))
        if seen.changed or stream_ended:
            self.arm()
        self.settle()

    # -- gitignore oracles, one per worktree ------------------------------------------
    def track(self, hyp: str, path: Path) -> None:
        """A new (or moved) worktree: ask git about its own ignore rules."""
        self._oracles[hyp] = GitIgnoreOracle(path)

    def forget(self, hyp: str) -> None:
        """A worktree went away: drop its held changes and its oracle."""
        self.batcher.forget(hyp)
        self._oracles.pop(hyp, None)

    def gitignore_changed(self, hyp: str) -> None:
        oracle = self._oracles.get(hyp)
        if oracle is not None:
            oracle.invalidate()

    # -- intake -------------------------------------------------------------------------
    def add(self, hyp: str, rels: set[str], first: float, last: float, created: set[str]) -> None:
        """Hand one hypothesis' changes of a chunk on: via git check-ignore, or directly."""
        if self._respect_gitignore() and hyp in self._oracles:
            self._admitting += 1
            self._spawn(self._admit(hyp, rels, first, last, created))
        else:
            self.batcher.add(hyp, rels, first, last, created)

    async def _admit(
        self, hyp: str, rels: set[str], first: float, last: float, created: set[str]
    ) -> None:
        """Ask git which paths it ignores, then hand the rest to the batcher."""
        try:
            oracle = self._oracles.get(hyp)
            if oracle is None:
                return
            try:
                ignored = await oracle.ignored(rels)
            except (GitCheckIgnoreError, OSError) as exc:
                if not oracle.worktree.is_dir():
                    # The worktree is being removed (deleted behind git's back: no admin
                    # dir change says so): rediscover now rather than at the next round.
                    self._rediscover()
                    return
                self._log().warning("gitignore_check_failed", hypothesis=hyp, error=str(exc))
                ignored = set()
            keep = rels - ignored
            if keep and self._index().root(hyp) is not None:
                self.batcher.add(hyp, keep, first, last, created & keep)
        finally:
            self._admitting -= 1
            if not self._admitting:
                force, self._force_after_admit = self._force_after_admit, False
                self.arm(force=force)
                self.settle()

    # -- the batch timer ----------------------------------------------------------------
    def arm(self, force: bool = False) -> None:
        """Fire at the batcher's next deadline; ``force``: now (a git lock came or went)."""
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
            self._dispatch(batch)
        self.arm()
        self.settle()

    def close(self) -> None:
        """Shutdown: no more batches."""
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
