"""Debounce changes into batches, and hold a worktree's changes while git works in it.

Pure logic driven by explicit timestamps, so tests use a fake clock: the daemon calls
``add`` for every change it sees, asks ``next_deadline`` when to wake up, and calls
``close_due(now)`` then. A batch closes ``debounce_s`` after its last change or
``max_wait_s`` after its first, whichever comes first. At close, a hypothesis whose git
``index.lock`` exists (a checkout, rebase or commit in progress) keeps its changes
``held`` until the lock goes, then they leave as one batch: a ``git checkout`` of 1,000
files becomes one run, not a run on a half-written tree.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

# A git operation that leaves index.lock behind (a crash) must not hold changes forever.
STALE_LOCK_S = 30.0
LOCK_RECHECK_S = 0.25
# The lock is gone on disk but the watcher has not reported its removal yet: the files git
# wrote just before may still be on their way (inotify delivers them before the removal).
# Wait for that report, or this long in case the watcher missed it.
UNREPORTED_UNLOCK_S = 1.0


@dataclass
class Batch:
    batch_id: str
    changes: dict[str, set[str]]
    first_change: float
    closed_at: float
    reason: str = "changes"  # "changes" | "git_op_finished" | "git_lock_stale"
    last_change: float | None = None  # when its last change happened (None: not known)

    @property
    def changed_count(self) -> int:
        return sum(len(p) for p in self.changes.values())


@dataclass
class _Held:
    paths: set[str] = field(default_factory=set)
    since: float = 0.0
    gone_since: float | None = None  # when the lock was first found gone
    reported: bool = False  # the watcher reported the lock's removal


class Batcher:
    def __init__(
        self,
        debounce_s: float,
        max_wait_s: float,
        is_locked: Callable[[str], bool],
        id_prefix: str = "b",
        exists: Callable[[str, str], bool] | None = None,
    ) -> None:
        self.debounce_s = debounce_s
        self.max_wait_s = max_wait_s
        self._is_locked = is_locked
        self._ids = itertools.count(1)
        self._prefix = id_prefix
        self._pending: dict[str, set[str]] = {}
        # Paths first seen being created in the open batch. One that is gone again when the
        # batch closes was transient (an editor's temp file renamed onto the real path, a
        # tool's scratch file): not a change of the code, so it is dropped then.
        self._created: dict[str, set[str]] = {}
        self._exists = exists
        self._first: float | None = None
        self._last: float | None = None
        self.held: dict[str, _Held] = {}
        # The watcher is inside a stream of changes: the batch stays open (up to
        # max_wait) however long the gap between its chunks (docs/latency.md).
        self.streaming = False

    def next_batch_id(self) -> str:
        return f"{self._prefix}{next(self._ids)}"

    def add(
        self, hyp: str, paths: Iterable[str], first: float, last: float, created: Iterable[str] = ()
    ) -> None:
        """Record changes; ``first``/``last`` are the estimated times they happened;
        ``created`` are those among ``paths`` whose change was a creation."""
        bucket = self._pending.setdefault(hyp, set())
        fresh = set(created) - bucket
        if fresh:
            self._created.setdefault(hyp, set()).update(fresh)
        bucket.update(paths)
        if not bucket:
            del self._pending[hyp]
            return
        self._first = first if self._first is None else min(self._first, first)
        self._last = last if self._last is None else max(self._last, last)

    def forget(self, hyp: str) -> None:
        """A removed hypothesis: drop whatever it had pending or held."""
        self._pending.pop(hyp, None)
        self._created.pop(hyp, None)
        self.held.pop(hyp, None)
        if not self._pending:
            self._first = self._last = None

    def idle(self) -> bool:
        """Nothing pending and nothing held: every change added so far has left."""
        return not self._pending and not self.held

    def next_deadline(self, now: float) -> float | None:
        deadlines: list[float] = []
        if self._first is not None and self._last is not None:
            deadlines.append(self._open_until(self._first, self._last))
        if self.held:
            # Locks are also watched through the watcher; this recheck is a safety net for
            # a lock removal the watcher missed, and bounds a stale lock.
            deadlines.append(now + LOCK_RECHECK_S)
        if not deadlines:
            return None
        return min(deadlines)

    def close_due(self, now: float) -> list[Batch]:
        out: list[Batch] = []
        if self._first is not None and self._last is not None:
            deadline = self._open_until(self._first, self._last)
            if now >= deadline:
                ready: dict[str, set[str]] = {}
                self._drop_transient()
                for hyp, paths in self._pending.items():
                    if hyp in self.held or self._is_locked(hyp):
                        held = self.held.setdefault(hyp, _Held(since=now))
                        held.paths |= paths
                    else:
                        ready[hyp] = paths
                if ready:
                    out.append(
                        Batch(self.next_batch_id(), ready, self._first, now, last_change=self._last)
                    )
                self._pending = {}
                self._created = {}
                self._first = self._last = None
        out.extend(self._release_held(now))
        return out

    def _open_until(self, first: float, last: float) -> float:
        """When the open batch closes: debounce after its last change, unless a stream is
        still coming in; never later than max_wait after its first change."""
        if self.streaming:
            return first + self.max_wait_s
        return min(first + self.max_wait_s, last + self.debounce_s)

    def _drop_transient(self) -> None:
        if self._exists is None:
            return
        for hyp, created in self._created.items():
            bucket = self._pending.get(hyp)
            if bucket is None:
                continue
            bucket -= {p for p in created if not self._exists(hyp, p)}
            if not bucket:
                del self._pending[hyp]

    def lock_released(self, hyp: str) -> None:
        """The watcher reported the removal of ``hyp``'s index.lock.

        inotify keeps order, so every file git wrote before it has been seen by now: the
        held changes may leave as soon as the lock is gone, and none are left behind to
        form a second batch a moment later.
        """
        held = self.held.get(hyp)
        if held is not None:
            held.reported = True

    def _release_held(self, now: float) -> list[Batch]:
        released: list[Batch] = []
        for hyp in list(self.held):
            held = self.held[hyp]
            stale = now - held.since >= STALE_LOCK_S
            if self._is_locked(hyp):
                held.gone_since, held.reported = None, False  # a new git operation
                done = False
            else:
                if held.gone_since is None:
                    held.gone_since = now
                done = held.reported or now - held.gone_since >= UNREPORTED_UNLOCK_S
            if stale or done:
                del self.held[hyp]
                reason = "git_lock_stale" if stale else "git_op_finished"
                released.append(
                    Batch(
                        self.next_batch_id(),
                        {hyp: held.paths | self._take(hyp)},
                        held.since,
                        now,
                        reason,
                    )
                )
        return released

    def _take(self, hyp: str) -> set[str]:
        """Take ``hyp``'s pending changes out of the open batch.

        The lock's removal is often seen before the open batch's debounce ends, with the
        last files git wrote still pending: they belong to the same git operation and
        leave with the held ones, not as a second batch (a second run) right after.
        """
        if hyp not in self._pending:
            return set()
        created = self._created.pop(hyp, set())
        paths = self._pending.pop(hyp)
        if self._exists is not None:
            paths -= {p for p in created if not self._exists(hyp, p)}
        if not self._pending:
            self._created = {}
            self._first = self._last = None
        return paths
