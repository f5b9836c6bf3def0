"""A non-recursive watch of a few folders, for the daemon's control files.

The worktree ``Watcher`` is recursive and tuned for bursts of source edits; the control
files (rerun requests in the state dir, the config file in its folder, which may be a
busy one such as $HOME) want the opposite: only the folders' direct entries, filtered
in the thread (a busy folder costs a wake-up of this thread, never of the event loop),
and a short step so a request is picked up within milliseconds.

The watch is only a wake-up: consumers rescan what they care about when told, and are
told to rescan after every (re-)arm too, so a failed or late watch costs latency,
never a lost request or save. A watch that fails (a folder removed, a name watchfiles
cannot decode) is rebuilt after a back-off over the folders that still exist.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Sequence

from watchfiles._rust_notify import RustNotify, WatchfilesRustInternalError

# How long one watch call may block with nothing happening: bounds how late the thread
# notices a stop or a new folder set (a timeout, not a poll).
IDLE_TIMEOUT_MS = 500
STEP_MS = 5  # quiet time that ends a chunk: the pickup latency floor
MAX_CHUNK_MS = 50
RETRY_S = 1.0


class FolderWatch:
    """Calls ``on_paths(paths)`` on the loop with the wanted paths that changed.

    ``wanted(path)`` runs in the watch thread and must be cheap and thread-safe (a
    set lookup). ``on_paths(frozenset())`` after each (re-)arm means "rescan".
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        wanted: Callable[[str], bool],
        on_paths: Callable[[frozenset[str]], None],
    ) -> None:
        self._loop = loop
        self._wanted = wanted
        self._on_paths = on_paths
        self._folders: tuple[str, ...] = ()
        self._generation = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._armed = threading.Event()
        self._thread: threading.Thread | None = None

    def set_folders(self, folders: Sequence[str]) -> None:
        new = tuple(sorted(set(folders)))
        with self._lock:
            if new == self._folders:
                return
            self._folders = new
            self._generation += 1
            self._armed.clear()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="po-control-watch", daemon=True)
        self._thread.start()

    async def wait_armed(self, timeout: float) -> bool:
        return await asyncio.to_thread(self._armed.wait, timeout)

    def stop(self, timeout: float = 1.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    # -- thread side --------------------------------------------------------------------
    def _post(self, paths: frozenset[str]) -> None:
        try:
            self._loop.call_soon_threadsafe(self._on_paths, paths)
        except RuntimeError:
            self._stop.set()  # the loop is closed: we are shutting down

    def _run(self) -> None:
        notify: RustNotify | None = None
        armed_for = -1
        try:
            while not self._stop.is_set():
                with self._lock:
                    generation, folders = self._generation, self._folders
                if notify is None or armed_for != generation:
                    if notify is not None:
                        notify.close()
                    notify = self._arm(folders)
                    armed_for = generation
                    with self._lock:
                        if self._generation == generation:
                            self._armed.set()
                    if notify is not None:
                        self._post(frozenset())  # rescan: what changed before the arm
                if notify is None:
                    self._stop.wait(IDLE_TIMEOUT_MS / 1000)
                    continue
                if not self._watch_once(notify):
                    notify.close()
                    notify = None
                    armed_for = -1
                    self._stop.wait(RETRY_S)
        finally:
            if notify is not None:
                notify.close()

    def _arm(self, folders: tuple[str, ...]) -> RustNotify | None:
        existing = [f for f in folders if os.path.isdir(f)]
        if not existing:
            return None
        try:
            return RustNotify(existing, False, False, 50, False, True)
        except (OSError, RuntimeError, ValueError):
            return None  # retried at the next generation or after RETRY_S via _run

    def _watch_once(self, notify: RustNotify) -> bool:
        """One watch call; False when the watch must be rebuilt."""
        try:
            result = notify.watch(MAX_CHUNK_MS, STEP_MS, IDLE_TIMEOUT_MS, None)
        except (WatchfilesRustInternalError, RuntimeError):
            return False
        if isinstance(result, set):
            paths = frozenset(path for _change, path in result if self._wanted(path))
            if paths:
                self._post(paths)
        return True
