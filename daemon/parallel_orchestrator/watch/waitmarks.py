"""How far the daemon has seen the filesystem, for ``parallel-orchestrator wait``.

An agent saves a file and runs ``wait``. The save may still be in the kernel's inotify
queue, in the watcher's current chunk, or in the batcher's debounce window: reading the
status file then would give the verdict of the *previous* edit. So ``wait`` drops a
marker file into ``<state_dir>/wait/``, a folder the daemon watches with the same
inotify instance as the worktrees. One inotify instance keeps one queue in the order
events happened: once the marker's creation is delivered, every change made before
``wait`` was called has been delivered too (a change made by a process that finished
before ``wait`` started is queued before the marker).

The daemon *acknowledges* a marker by deleting it, and only once every change seen
before it has left the batcher (its batch formed and its jobs handed to the scheduler,
or dropped as ignored) and the status file showing those jobs queued has been written.
``wait`` sees its marker gone and then only has to wait for the selected cells to leave
``queued``/``running``. Markers never reach the batcher, so they never trigger a run;
whatever is left in the folder (a daemon that died) is cleared at the next start.

A ``wait`` that starts while the daemon starts may drop its marker before the watch is
armed: its creation is then never delivered, so the folder is listed once the watch is
up (``sweep``). A listed marker is not answered at once, though: the edit made before it
may still be in the watcher's queue (the status file says ``idle`` before the listing,
so that edit and marker are fair game), and answering then gave the verdict of the state
before the edit. The sweep therefore drops a marker of its own, and the listed markers
join the pending ones only when the watcher delivers it: everything queued before it,
the edits before the listed markers included, has been delivered by then.

Roots the watcher has to stat-poll (non-UTF-8 names, see watcher.py) are outside this
ordering guarantee.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

from ..errors import OrchestratorError
from ..store.folders import make_dirs
from ..store.safe_open import write_new

FOLDER_NAME = "wait"
MARKER_RE = re.compile(r"[A-Za-z0-9_-]{1,64}\.wait")


class WaitMarkerError(OrchestratorError):
    """The markers' folder cannot be made; names it."""


def marker_folder(state_dir: Path) -> Path:
    return state_dir / FOLDER_NAME


class StatusFile(Protocol):
    """The status file's writer (report.statuswriter.StatusWriter)."""

    error: str  # "" after a write that succeeded

    def flush(self) -> None:
        """Write now (writes are otherwise coalesced): on disk before a marker goes."""


class WaitMarkers:
    """Markers seen by the watcher and not yet acknowledged.

    ``status`` writes the status file before an acknowledgement (``wait`` reads it right
    after); ``log`` gives the current logger.
    """

    def __init__(
        self, folder: Path, status: StatusFile | None = None, log: Callable[[], Any] | None = None
    ) -> None:
        self.folder = folder
        self._status = status
        self._log = log
        self._prefix = os.fsdecode(folder).rstrip("/") + "/"
        self._pending: dict[str, None] = {}  # marker paths, in the order seen
        self._swept: dict[str, list[str]] = {}  # our sentinel -> the markers it vouches for
        self.acknowledged = 0  # markers acknowledged since start (published in the status)

    def prepare(self) -> None:
        """Create the folder (0700) and clear what a previous daemon left; raises
        WaitMarkerError."""
        try:
            make_dirs(self.folder, 0o700)
            for entry in os.scandir(self.folder):
                if MARKER_RE.fullmatch(entry.name):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
        except OSError as exc:
            raise WaitMarkerError(f"{self.folder}: {exc.strerror or exc}") from exc

    def with_folder(self, paths: Iterable[str]) -> list[str]:
        """``paths`` to watch plus this folder (unless one of them holds it already): one
        inotify instance for both is what orders a marker after the changes before it."""
        paths = list(paths)
        mine = os.fsdecode(self.folder)
        if any(mine.startswith(p.rstrip("/") + "/") for p in paths):
            return paths
        return [*paths, mine]

    def owns(self, path: str) -> bool:
        """Whether a watched path is in the marker folder (never a change to test)."""
        return path.startswith(self._prefix) or path == self._prefix[:-1]

    def seen(self, path: str) -> None:
        if MARKER_RE.fullmatch(os.path.basename(path)) and os.path.dirname(path) == os.fsdecode(
            self.folder
        ):
            self._pending[path] = None
            for swept in self._swept.pop(path, ()):  # our sentinel came through
                self._pending[swept] = None

    def sweep(self) -> None:
        """Markers already in the folder (perhaps written before the watch was armed):
        pending once a sentinel dropped now comes through the watcher (module docstring)."""
        folder = os.fsdecode(self.folder)
        found: list[str] = []
        with contextlib.suppress(OSError), os.scandir(self.folder) as entries:
            found = [os.path.join(folder, e.name) for e in entries if MARKER_RE.fullmatch(e.name)]
        if not found:
            return
        sentinel = os.path.join(folder, f"po-sweep-{os.getpid()}-{secrets.token_hex(6)}.wait")
        try:
            write_new(Path(sentinel), b"")
        except OSError:
            for path in found:  # no sentinel: answer them as before, at the next quiet
                self._pending[path] = None
            return
        self._swept[sentinel] = found

    @property
    def pending(self) -> bool:
        return bool(self._pending)

    def settle(self, quiet: bool) -> None:
        """Acknowledge the markers seen once ``quiet`` (every change seen before them has
        left the intake: batched and its jobs queued, or dropped) and the status file
        saying so has been written; after a failed write, at the next settle."""
        if not self._pending or not quiet:
            return
        if self._status is not None:
            self._status.flush()
            if self._status.error:
                return
        for error in self.acknowledge():
            if self._log is not None:
                self._log().warning("wait_marker_failed", error=error)

    def acknowledge(self) -> list[str]:
        """Delete every pending marker (``wait`` reads that as "seen"); returns the errors
        of those that could not be deleted (their ``wait`` will time out)."""
        done = list(self._pending)
        self._pending.clear()
        errors = []
        for path in done:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass  # its ``wait`` gave up and took it back
            except OSError as exc:
                errors.append(f"{path}: {exc.strerror or exc}")
        self.acknowledged += len(done)
        return errors
