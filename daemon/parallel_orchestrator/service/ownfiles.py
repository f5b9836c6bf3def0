"""The daemon's own files, which never count as changes to a hypothesis.

``init`` puts the config (and so, by default, ``state/`` and ``daemon.log`` beside it)
inside the repository; a custom ``status_file`` or ``log_file`` may sit in a worktree too.
Every status write and log line then was a change in that worktree, which formed a batch,
which ran jobs, which wrote the status file again: a loop without end. So the state dir,
the status file (with its ``.status.json.*.tmp`` siblings) and the log file (with
rotated siblings such as ``daemon.log.1``) are dropped from every watcher chunk, whatever
the ``ignore`` globs say.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

from ..settings.loader import DaemonSettings
from ..watch.chunk import Changes


@dataclass(frozen=True)
class OwnFiles:
    """Absolute paths (as given and as resolved): ``exact`` ones and ``prefixes``."""

    exact: frozenset[str] = frozenset()
    prefixes: tuple[str, ...] = ()

    def owns(self, path: str) -> bool:
        return path in self.exact or path.startswith(self.prefixes)

    def drop_from(self, changes: Changes) -> Changes:
        """``changes`` without the daemon's own files (the same set when none is there)."""
        if not self.prefixes:
            return changes
        mine = {item for item in changes if self.owns(item[1])}
        return changes - mine if mine else changes


def _spellings(path: Path) -> set[str]:
    """The path as configured and with symlinks resolved: the watcher reports paths under
    the worktree roots, which git gives resolved."""
    return {os.fsdecode(path), os.path.realpath(path)}


def own_files(d: DaemonSettings) -> OwnFiles:
    """The daemon's own files under ``d`` (asked on every watcher chunk: cached)."""
    return _own_files(d.state_dir, d.status_file, d.log_file)


@functools.lru_cache(maxsize=4)
def _own_files(state_dir: Path, status_file: Path, log_file: Path | None) -> OwnFiles:
    exact: set[str] = set()
    prefixes: list[str] = []
    for spelled_dir in _spellings(state_dir):
        exact.add(spelled_dir)
        prefixes.append(spelled_dir.rstrip(os.sep) + os.sep)
    for file in (status_file, log_file):
        if file is None:
            continue
        for spelled in _spellings(file):
            prefixes.append(spelled)  # the file and siblings named after it (daemon.log.1)
            folder, name = os.path.split(spelled)
            prefixes.append(os.path.join(folder, f".{name}."))  # atomic-write temp files
    return OwnFiles(frozenset(exact), tuple(prefixes))
