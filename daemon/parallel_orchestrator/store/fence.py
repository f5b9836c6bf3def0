"""Folders the daemon must never create: the repository's and its worktrees'.

Those folders are git's and the user's. When the whole repository was moved or deleted,
every writer whose target lived inside it (a ``log_file`` in ``<repo>/logs``, a status
file or even the state dir inside the repository) recreated its folder *with its
parents*: the repository folder reappeared, empty, at the old path, and rediscovery then
saw a folder that is not a repository instead of a missing one.

So ``make_dirs`` asks ``refuse_fenced`` about the levels it would create: if one of them
is a fenced folder it creates nothing and raises ``FencedError`` (an ``OSError``, ENOENT,
naming the folder), which every writer already handles as it handles an unwritable path.
Folders *below* a fenced folder that exists are created as before.

The fenced set is process-wide state kept here alone (the shape of structlog's
``_config``): ``run`` fences the configured repository before it creates anything (a
repository missing at start-up is not brought into being by the state dir or the log
file either), the daemon fences every worktree once it knows them (``fence``) and each
new one as it comes (a removed one stays fenced); ``reset_fence`` empties it (tests).
Commands that do not call ``fence`` (``init``, ``once``, ``rerun``) are unaffected.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable
from pathlib import Path


class FencedError(FileNotFoundError):
    """A folder was not created because it is a missing repository or worktree folder."""

    def __init__(self, wanted: Path, fenced: Path, kind: str) -> None:
        super().__init__(
            errno.ENOENT,
            f"{os.fsdecode(wanted)} is inside the missing {kind} {os.fsdecode(fenced)}: "
            "not created",
        )
        self.fenced = fenced


# Each fenced folder under its own spellings (as configured, absolute, resolved) -> the
# folder as named in messages, and what it is ("repository" or "worktree").
_fenced: dict[str, tuple[Path, str]] = {}


def _spellings(path: Path) -> set[str]:
    """``path`` as written, made absolute and resolved: a missing level is compared in the
    same forms, so a symlinked parent (``/tmp`` -> ``/private/tmp``) cannot slip past."""
    text = os.fspath(path)
    return {os.path.abspath(text), os.path.realpath(text)}


def fence(repo: Path | None, worktrees: Iterable[Path]) -> None:
    """From now on never create ``repo`` (``worktrees.repo``) or any of ``worktrees``.

    Folders fenced before stay fenced: a worktree deleted by hand (``rm -rf``) is no
    longer served once rediscovery drops it, and a log or status file inside it must not
    bring its folder back then either. A folder the user recreates is used as before
    (only creating a fenced level is refused), so the set only grows, by the worktrees
    this daemon ever served."""
    global _fenced
    fenced = dict(_fenced)
    for path in worktrees:
        for spelling in _spellings(path):
            fenced[spelling] = (path, "worktree")
    if repo is not None:  # the repository wins where it is also the main worktree
        for spelling in _spellings(repo):
            fenced[spelling] = (repo, "repository")
    _fenced = fenced


def reset_fence() -> None:
    """Fence nothing again (tests; a process that is no daemon)."""
    global _fenced
    _fenced = {}


def fenced_folder(path: Path) -> tuple[Path, str] | None:
    """The fenced folder ``path`` names (and its kind), or None."""
    if not _fenced:
        return None
    for spelling in _spellings(path):
        hit = _fenced.get(spelling)
        if hit is not None:
            return hit
    return None


def refuse_fenced(wanted: Path, missing: Iterable[Path]) -> None:
    """Raise ``FencedError`` if one of the ``missing`` levels of ``wanted`` is fenced."""
    for level in missing:
        hit = fenced_folder(level)
        if hit is not None:
            raise FencedError(wanted, *hit)


def missing_fenced_parent(path: Path) -> tuple[Path, str] | None:
    """The fenced folder at or above ``path`` that does not exist (the repository was
    moved or deleted), or None: ``path`` could then not be recreated."""
    if not _fenced:
        return None
    level = Path(os.path.abspath(path))
    while True:
        hit = fenced_folder(level)
        if hit is not None and not os.path.isdir(level):
            return hit
        if level.parent == level:
            return None
        level = level.parent
