"""Roots a permission hides from the watcher, watched again once it no longer does.

inotify needs read access to a folder to watch it, and RustNotify skips a root it cannot
read without a word: a worktree that was ``chmod 000`` (or behind such a folder) while
the watcher armed was never watched again, even after its mode came back, so every edit
there was lost until some unrelated re-arm. ``HiddenRoots`` keeps such roots out of the
arm, notices (at most every ``check_every_s``) when one can be read again, and hands the
watcher what to recover: the root and the time it was found hidden, to list the files
changed since.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

CHECK_EVERY_S = 0.5


def unreadable_because(path: str) -> str:
    """Why ``path`` cannot be watched for lack of permission ("" when it can, or when it
    fails for another reason: a missing root is the discovery's business, not ours)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except PermissionError as exc:
        return exc.strerror or "permission denied"
    except OSError:
        return ""
    os.close(fd)
    return ""


@dataclass
class HiddenRoots:
    """Thread side of the watcher only (no lock)."""

    clock: Callable[[], float] = time.time  # wall clock: compared with file mtimes
    check_every_s: float = CHECK_EVERY_S
    probe: Callable[[str], str] = unreadable_because
    hidden: dict[str, float] = field(default_factory=dict)  # root -> hidden since (wall)
    revealed: dict[str, float] = field(default_factory=dict)  # readable again, not armed yet
    _checked_at: float = 0.0

    def visible(self, roots: Iterable[str]) -> tuple[list[str], list[tuple[str, str]]]:
        """The roots to arm now, and the newly hidden ones with the reason.

        A root that was hidden and is readable now moves to ``revealed`` (see ``take``).
        """
        wanted = list(roots)
        now = self.clock()
        out: list[str] = []
        newly: list[tuple[str, str]] = []
        for root in wanted:
            reason = self.probe(root)
            if reason:
                if root not in self.hidden:
                    self.hidden[root] = now
                    newly.append((root, reason))
                continue
            since = self.hidden.pop(root, None)
            if since is not None:
                self.revealed[root] = since
            out.append(root)
        keep = set(wanted)
        self.hidden = {r: t for r, t in self.hidden.items() if r in keep}
        self._checked_at = now
        return out, newly

    def any_revealed(self) -> bool:
        """Whether a hidden root can be read now (probed at most every ``check_every_s``):
        the watcher then re-arms to take it in."""
        if not self.hidden:
            return False
        now = self.clock()
        if now - self._checked_at < self.check_every_s:
            return False
        self._checked_at = now
        return any(not self.probe(root) for root in self.hidden)

    def take(self) -> dict[str, float]:
        """Roots armed again since the last call, with the time each was found hidden."""
        out, self.revealed = self.revealed, {}
        return out
