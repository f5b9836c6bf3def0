"""The stat-poll fallback: roots watched by comparing stat snapshots instead of inotify.

For the rare root RustNotify cannot serve, not a general method: a root whose own name is
not UTF-8 (watchfiles takes roots as UTF-8 strings, and would raise), and a root "demoted"
after a decode error inside it, for a hold-down that doubles on each repeat (watchfiles
fails on every event naming such a path — reads included — and right after every re-arm
while a folder so named exists, so re-arming alone would spin; see docs/reliability.md).
Also ``changed_since``: what changed while no watcher was working.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

from watchfiles import Change

from .chunk import Changes

# Polled roots are rescanned (a stat walk) every POLL_MIN_MS, or 20x the last scan's time
# if longer: a big tree polled costs at most ~5% of a core.
POLL_MIN_MS = 500
MAX_POLLED_FILES = 200_000
# A demoted root's hold-down: DEMOTE_MIN_S, doubled on each repeat, at most DEMOTE_MAX_S.
DEMOTE_MIN_S = 5.0
DEMOTE_MAX_S = 600.0
# changed_since looks at no more files than this.
MAX_RECOVERED_FILES = 200_000


def is_utf8(path: str) -> bool:
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:  # surrogate escapes: the name on disk is not UTF-8
        return False
    return True


class _Poller:
    """Change detection for one root by comparing stat snapshots (added, modified, deleted)."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.due = 0.0
        self.snapshot = self._scan()

    def _scan(self) -> dict[str, tuple[int, int, int]]:
        started = time.monotonic()
        snap: dict[str, tuple[int, int, int]] = {}
        for folder, dirs, files in os.walk(self.root):
            dirs[:] = [d for d in dirs if d != ".git"]
            for name in files:
                full = os.path.join(folder, name)
                try:
                    st = os.lstat(full)
                except OSError:
                    continue
                snap[full] = (st.st_mtime_ns, st.st_ctime_ns, st.st_size)
            if len(snap) >= MAX_POLLED_FILES:
                break
        took = time.monotonic() - started
        self.due = time.monotonic() + max(POLL_MIN_MS / 1000, 20 * took)
        return snap

    def poll(self) -> Changes:
        new = self._scan()
        old, self.snapshot = self.snapshot, new
        changes = {
            (Change.added if p not in old else Change.modified, p)
            for p, sig in new.items()
            if old.get(p) != sig
        }
        changes |= {(Change.deleted, p) for p in old.keys() - new.keys()}
        return changes


class PollFallback:
    """Which roots are stat-polled, and their pollers (used by the watch thread alone)."""

    def __init__(self) -> None:
        self._pollers: dict[str, _Poller] = {}
        self._demoted: dict[str, float] = {}  # root -> end of its hold-down (monotonic)
        self._strikes: dict[str, int] = {}  # root -> decode errors seen in it so far

    @property
    def polling(self) -> bool:
        """Whether any root is polled at the moment."""
        return bool(self._pollers)

    def assign(self, existing: Sequence[str]) -> tuple[list[str], list[Changes]]:
        """Poll those of ``existing`` (roots) inotify cannot serve: not UTF-8, or demoted.

        Returns the roots left for inotify, and what each root going back to inotify
        changed since its last poll (non-empty sets only; reported, not lost).
        """
        polled = {p for p in existing if not is_utf8(p) or p in self._demoted}
        released: list[Changes] = []
        for root in list(self._pollers):
            if root not in polled:
                changes = self._pollers.pop(root).poll()
                if changes:
                    released.append(changes)
        for root in polled:
            if root not in self._pollers:
                self._pollers[root] = _Poller(root)
        return [p for p in existing if p not in polled], released

    def retain(self, roots: Sequence[str]) -> None:
        """Stop polling roots no longer watched (a removed worktree)."""
        for root in self._pollers.keys() - set(roots):
            del self._pollers[root]

    def active_demotions(self) -> frozenset[str]:
        """Demoted roots whose hold-down still runs; an expired one gets inotify again."""
        now = time.monotonic()
        for root, until in list(self._demoted.items()):
            if until <= now:
                del self._demoted[root]
        return frozenset(self._demoted)

    def demote(self, path: str, roots: Sequence[str]) -> str:
        """Poll the root holding ``path`` (undecodable) for a while; returns what we did.

        The hold-down doubles with each strike, so a name that stays only costs a log line
        now and then (and a job reading the file cannot retrigger itself forever).
        """
        root = max(
            (r for r in roots if path == r or path.startswith(r.rstrip("/") + "/")),
            key=len,
            default=None,
        )
        if root is None:
            return ""
        strikes = self._strikes[root] = self._strikes.get(root, 0) + 1
        hold = min(DEMOTE_MAX_S, DEMOTE_MIN_S * 2 ** (strikes - 1))
        self._demoted[root] = time.monotonic() + hold
        return f"; polling {root} for {hold:g} s"

    def poll_due(self) -> Changes:
        """What changed in the polled roots whose poll is due."""
        now = time.monotonic()
        changes: Changes = set()
        for poller in self._pollers.values():
            if now >= poller.due:
                changes |= poller.poll()
        return changes


def changed_since(roots: Sequence[str], since: float, limit: int = MAX_RECOVERED_FILES) -> Changes:
    """Files under ``roots`` modified or renamed (ctime) after ``since`` (wall clock).

    Only used after a watcher failure, to recover what changed while nothing watched;
    deletions in that gap cannot be recovered this way.
    """
    found: Changes = set()
    seen = 0
    for root in roots:
        for folder, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if d != ".git"]
            for name in files:
                seen += 1
                full = os.path.join(folder, name)
                try:
                    st = os.lstat(full)
                except OSError:
                    continue
                if max(st.st_mtime, st.st_ctime) >= since:
                    found.add((Change.modified, full))
            if seen >= limit:
                return found
    return found
