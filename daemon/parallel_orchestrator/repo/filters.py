"""Which changed paths count: small filters in watchfiles' ``BaseFilter`` spirit.

Each filter answers one question about a worktree-relative path. ``.git`` internals never
count; the ``ignore`` globs of the config never count; with ``respect_gitignore`` the paths
git itself ignores never count, decided by ``git check-ignore`` so the semantics are git's
own (negations, nested .gitignore files, info/exclude, core.excludesFile) and cached.
git runs through ``repo.git`` like every other git call: a scrubbed environment (a
``GIT_DIR`` inherited from a hook must not make it answer for another repository), a
timeout, and no git left running when the caller is cancelled.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterable
from fnmatch import fnmatchcase
from pathlib import Path

from .git import GitError, run_git_async, split_z
from .pathglob import compile_glob


class PathFilter:
    """Base: ``ignored(relpath)`` is True when a change of that path must not count."""

    def ignored(self, relpath: str) -> bool:
        raise NotImplementedError


class GitInternalsFilter(PathFilter):
    def ignored(self, relpath: str) -> bool:
        return ".git" in relpath.split("/")


class GlobIgnoreFilter(PathFilter):
    """``ignore`` globs: with a ``/`` a glob is anchored at the worktree root (and covers
    everything below a matching folder); without one it matches any path segment, like
    .gitignore, so ``node_modules`` or ``*.pyc`` do what people expect."""

    def __init__(self, patterns: Iterable[str]) -> None:
        self.anchored = [compile_glob(p.rstrip("/")) for p in patterns if "/" in p.rstrip("/")]
        self.names = [p.rstrip("/") for p in patterns if "/" not in p.rstrip("/")]

    def ignored(self, relpath: str) -> bool:
        parts = relpath.split("/")
        if self.names and any(fnmatchcase(part, n) for part in parts for n in self.names):
            return True
        if self.anchored:
            prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
            return any(rx.match(p) for rx in self.anchored for p in prefixes)
        return False


GITIGNORE_NAMES = (".gitignore",)
_CACHE_MAX = 50_000


class GitIgnoreOracle:
    """Asks ``git check-ignore`` about paths of one worktree, with an LRU cache.

    The cache is dropped whenever a .gitignore changes (the daemon calls ``invalidate``);
    a failing git is logged by the caller and treated as "not ignored": a spurious run is
    better than a missed one.
    """

    def __init__(self, worktree: Path) -> None:
        self.worktree = worktree
        self._cache: OrderedDict[str, bool] = OrderedDict()

    def invalidate(self) -> None:
        self._cache.clear()

    async def ignored(self, relpaths: Iterable[str]) -> set[str]:
        paths = list(dict.fromkeys(relpaths))
        unknown = [p for p in paths if p not in self._cache]
        if unknown:
            found = await self._check(unknown)
            for p in unknown:
                self._cache[p] = p in found
            while len(self._cache) > _CACHE_MAX:
                self._cache.popitem(last=False)
        return {p for p in paths if self._cache.get(p)}

    async def _check(self, relpaths: list[str]) -> set[str]:
        payload = b"".join(os.fsencode(p) + b"\0" for p in relpaths)
        try:
            done = await run_git_async(
                self.worktree, "check-ignore", "--stdin", "-z", input=payload
            )
        except GitError as exc:
            raise GitCheckIgnoreError(f"git check-ignore in {self.worktree} failed: {exc}") from exc
        if done.returncode not in (0, 1):  # 1: none of them is ignored
            detail = done.last_line()
            raise GitCheckIgnoreError(
                f"git check-ignore in {self.worktree} failed (exit {done.returncode})"
                + (f": {detail}" if detail else "")
            )
        return {os.fsdecode(p) for p in split_z(done.stdout) if p}


class GitCheckIgnoreError(GitError):
    """``git check-ignore`` failed; the caller logs it and counts the paths as not ignored."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "failed")
