"""Which hypothesis a watched path belongs to, and what a watcher chunk means for each.

The daemon watches every worktree plus the git admin dirs that live outside them. A chunk
of raw ``(Change, path)`` pairs must become: per hypothesis, the worktree-relative paths
that count as edits; the hypotheses whose ``index.lock`` went away (a git operation
ended, so held changes may go); whether the set of worktrees itself may have changed
(a root or an admin dir moved). ``WorktreeIndex`` answers that from tables alone, so it
is tested in-process with made-up chunks (``tests/test_worktree_index.py``), no watcher.

Building the tables needs git's layout on disk (``index_worktrees``); the classification
needs only one question answered by the file system, "is this path a folder", which the
caller passes in (``is_dir``) so tests can answer it too.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from watchfiles import Change

from .worktrees import Worktree, WorktreeError, git_common_dir, index_lock_path


def is_real_dir(path: str) -> bool:
    """A folder, not a symlink to one: the default ``is_dir`` of ``classify``."""
    return os.path.isdir(path) and not os.path.islink(path)


@dataclass
class Classified:
    """What one watcher chunk means, per hypothesis."""

    changed: dict[str, set[str]] = field(default_factory=dict)  # hyp -> relative paths
    created: dict[str, set[str]] = field(default_factory=dict)  # subset of changed: added
    released: list[str] = field(default_factory=list)  # hyps whose index.lock was deleted
    lock_event: bool = False  # any index.lock came or went
    rediscover: bool = False  # a worktree root or a git admin dir changed
    gitignore_touched: set[str] = field(default_factory=set)  # hyps with an edited .gitignore


class WorktreeIndex:
    """Routing tables over the current worktrees: roots, ``index.lock`` paths, admin dirs.

    Pure: built from strings, answers from strings. Paths are ``os.fsdecode``-d, as the
    watcher reports them.
    """

    def __init__(
        self,
        roots: Mapping[str, str],
        locks: Mapping[str, str] | None = None,
        admin_dirs: Iterable[str] = (),
        hidden: Iterable[str] = (),
    ) -> None:
        """``roots``: hyp -> worktree path; ``locks``: hyp -> its index.lock path;
        ``admin_dirs``: ``<common git dir>/worktrees`` of each repository; ``hidden``: the
        hyps whose git dir a permission hid (no lock known: worth reading again)."""
        self.hidden = frozenset(hidden)
        self._roots = dict(roots)
        self._root_paths = {path: hyp for hyp, path in roots.items()}
        # (path + "/", hyp), longest first: a nested worktree wins over its parent.
        self._prefixes = sorted(
            ((path.rstrip("/") + "/", hyp) for hyp, path in roots.items()),
            key=lambda item: len(item[0]),
            reverse=True,
        )
        self._lock_of = dict(locks or {})
        self._locks = {lock: hyp for hyp, lock in self._lock_of.items()}
        self.admin_dirs = frozenset(admin_dirs)

    def root(self, hyp: str) -> str | None:
        """The worktree path of ``hyp``; None when it is not (or no longer) indexed."""
        return self._roots.get(hyp)

    def lock_path(self, hyp: str) -> str | None:
        """The ``index.lock`` path of ``hyp``; None when git's dir is unknown."""
        return self._lock_of.get(hyp)

    def locate(self, path: str) -> tuple[str, str] | None:
        """(hyp, path relative to its worktree) or None when no worktree holds ``path``."""
        for prefix, hyp in self._prefixes:
            if path.startswith(prefix):
                return hyp, path[len(prefix) :]
        return None

    def watch_paths(self) -> list[str]:
        """Every root, plus the git dirs of admin dirs that no root already covers.

        Git admin dirs (index.lock of linked worktrees, worktree add/remove) live in the
        main repository's .git, outside a linked worktree.
        """
        roots = list(self._root_paths)
        extra: list[str] = []
        for admin in sorted(self.admin_dirs):
            git_dir = os.path.dirname(admin)
            if not any(git_dir.startswith(r.rstrip("/") + "/") for r in roots):
                extra.append(git_dir)
        return roots + extra

    def _in_admin_dir(self, path: str) -> bool:
        return any(path == a or path.startswith(a + "/") for a in self.admin_dirs)

    def classify(
        self,
        changes: Iterable[tuple[int, str]],
        ignored: Callable[[str], bool] = lambda rel: False,
        is_dir: Callable[[str], bool] = is_real_dir,
    ) -> Classified:
        """Sort a chunk's ``(Change, absolute path)`` pairs; ``ignored`` gets relative paths.

        ``is_dir`` is asked only for paths that were not deleted.
        """
        out = Classified()
        for change, path in changes:
            if path in self._locks:
                out.lock_event = True
                if change == Change.deleted:
                    out.released.append(self._locks[path])
                continue
            if path in self._root_paths or self._in_admin_dir(path):
                out.rediscover = True
                continue
            located = self.locate(path)
            if located is None:
                continue
            hyp, rel = located
            if not rel or ignored(rel):
                continue
            if change != Change.deleted and is_dir(path):
                # A folder is not a change to test: the watcher already lists the files
                # of a new folder, and "build" next to "build/gen.py" is only noise.
                continue
            if rel == ".gitignore" or rel.endswith("/.gitignore"):
                out.gitignore_touched.add(hyp)
            out.changed.setdefault(hyp, set()).add(rel)
            if change == Change.added:
                out.created.setdefault(hyp, set()).add(rel)
        return out


def index_worktrees(
    worktrees: Iterable[Worktree],
) -> tuple[WorktreeIndex, list[tuple[str, str]]]:
    """Read git's layout of each worktree into a ``WorktreeIndex``.

    Returns the index and, for each worktree whose git dir could not be read, (hyp,
    error): that one still routes its edits, but has no lock to wait for. One a
    permission hid (``chmod 000``) is in the index's ``hidden``: read it again later.
    """
    roots: dict[str, str] = {}
    locks: dict[str, str] = {}
    admin_dirs: set[str] = set()
    problems: list[tuple[str, str]] = []
    hidden: list[str] = []
    for wt in worktrees:
        roots[wt.id] = os.fsdecode(wt.path)
        try:
            locks[wt.id] = os.fsdecode(index_lock_path(wt.path))
            admin_dirs.add(os.fsdecode(git_common_dir(wt.path) / "worktrees"))
        except (WorktreeError, OSError) as exc:
            problems.append((wt.id, str(exc)))
            if isinstance(exc, PermissionError) or isinstance(exc.__cause__, PermissionError):
                hidden.append(wt.id)  # the folder, or its .git file, chmod 000
    return WorktreeIndex(roots, locks, admin_dirs, hidden), problems


def reindex(
    worktrees: Iterable[Worktree], previous: WorktreeIndex
) -> tuple[WorktreeIndex, list[tuple[str, str]]]:
    """``index_worktrees`` again, leaving out the problems of the worktrees whose git dir
    a permission already hid in ``previous``: a hidden worktree is read again on every
    round (until its ``index.lock`` is known: a checkout there must hold its runs), and
    said once, not on every retry."""
    index, problems = index_worktrees(worktrees)
    return index, [(hyp, error) for hyp, error in problems if hyp not in previous.hidden]
