"""Which changed paths count: small filters in watchfiles' ``BaseFilter`` spirit.

Each filter answers one question about a worktree-relative path. ``.git`` internals never
count; the ``ignore`` globs of the config never count; with ``respect_gitignore`` the paths
git itself ignores never count, decided by ``git check-ignore`` so the semantics are git's
own (negations, nested .gitignore files, info/exclude, core.excludesFile) and cached.
"""

from __future__ import annotations

import asyncio
import os
from collections import OrderedDict
from collections.abc import Iterable
from fnmatch import fnmatchcase
from pathlib import Path

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
        proc = await asyncio.create_subprocess_exec(
            "git",
            "-C",
            os.fsdecode(self.worktree),
            "check-ignore",
            "--stdin",
            "-z",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"},
        )
        out, err = await proc.communicate(payload)
        if proc.returncode not in (0, 1):
            detail = err.decode("utf-8", "replace").strip().splitlines()
            raise GitCheckIgnoreError(
                f"git check-ignore in {self.worktree} failed (exit {proc.returncode})"
                + (f": {detail[-1]}" if detail else "")
            )
        return {os.fsdecode(p) for p in out.split(b"\0") if p}


class GitCheckIgnoreError(RuntimeError):
    pass
