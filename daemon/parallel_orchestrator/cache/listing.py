"""The files of a worktree that a change could matter for: what the watcher would consider.

The watcher drops ``.git`` internals (``GitInternalsFilter``), the ``ignore`` globs
(``GlobIgnoreFilter``) and, with ``respect_gitignore``, whatever ``git check-ignore``
calls ignored. A full listing uses ``git ls-files --cached --others --exclude-standard``,
which applies exactly git's exclude rules (tracked files are never "ignored", as for
check-ignore) and skips ignored folders such as ``.venv`` without walking them. Outside
git, or without ``respect_gitignore``, the tree is walked with the same two filters.
Single new paths are checked with ``git check-ignore``, the watcher's own oracle.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..repo.filters import GitInternalsFilter, GlobIgnoreFilter
from ..repo.git import GitError, GitResult, run_git, split_z


class ListingError(RuntimeError):
    """git could not list or classify a worktree's files."""


@dataclass(frozen=True)
class IgnoreRules:
    """Everything that decides whether a worktree-relative path counts."""

    globs: tuple[str, ...]
    respect_gitignore: bool

    def __post_init__(self) -> None:
        object.__setattr__(self, "_glob_filter", GlobIgnoreFilter(self.globs))

    def filtered(self, relpath: str) -> bool:
        """True when the watcher drops ``relpath`` before asking git."""
        if _GIT_INTERNALS.ignored(relpath):
            return True
        glob_filter: GlobIgnoreFilter = self._glob_filter  # type: ignore[attr-defined]
        return glob_filter.ignored(relpath)


_GIT_INTERNALS = GitInternalsFilter()


def _git(root: Path, args: list[str], stdin: bytes | None = None) -> GitResult:
    try:
        return run_git(root, *args, input=stdin)
    except GitError as exc:
        raise ListingError(str(exc)) from exc


def is_git_worktree(root: Path) -> bool:
    return os.path.lexists(root / ".git")


def list_files(root: Path, rules: IgnoreRules) -> list[str]:
    """Worktree-relative paths of every file (not folder) the watcher would consider."""
    if rules.respect_gitignore and is_git_worktree(root):
        return _git_listing(root, rules)
    return _walk(root, "", rules)


def _git_listing(root: Path, rules: IgnoreRules) -> list[str]:
    proc = _git(root, ["ls-files", "-z", "--cached", "--others", "--exclude-standard"])
    if not proc.ok:
        raise ListingError(f"git ls-files in {root}: {proc.said()}")
    out: list[str] = []
    seen: set[str] = set()
    for raw in split_z(proc.stdout):
        rel = os.fsdecode(raw)
        if rel in seen or rules.filtered(rel.rstrip("/")):
            continue  # --cached lists a file once per unmerged stage
        seen.add(rel)
        if rel.endswith("/"):  # an untracked nested repository: git does not descend
            out.extend(_walk(root, rel.rstrip("/"), rules))
        else:
            out.append(rel)
    return out


def _walk(root: Path, below: str, rules: IgnoreRules) -> list[str]:
    out: list[str] = []
    stack = [below]
    base = os.fsdecode(root)
    while stack:
        rel_dir = stack.pop()
        try:
            entries = list(os.scandir(os.path.join(base, rel_dir) if rel_dir else base))
        except OSError:
            continue  # vanished or unreadable: what cannot be listed cannot be watched
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            if rules.filtered(rel):
                continue
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError:
                continue
            if is_dir:
                stack.append(rel)
            else:
                out.append(rel)
    return out


def git_ignored(root: Path, relpaths: Iterable[str]) -> set[str]:
    """Which of ``relpaths`` git ignores (``git check-ignore``, as the watcher's oracle)."""
    paths = list(relpaths)
    if not paths:
        return set()
    payload = b"".join(os.fsencode(p) + b"\0" for p in paths)
    proc = _git(root, ["check-ignore", "--stdin", "-z"], stdin=payload)
    if proc.returncode not in (0, 1):
        raise ListingError(f"git check-ignore in {root}: {proc.said()}")
    return {os.fsdecode(p) for p in split_z(proc.stdout)}
