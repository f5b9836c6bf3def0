"""Writing the status board to its file, and surviving a file system that refuses.

One place owns every write of the status file so its policy lives in one place: a failed
write is retried every ``STATUS_RETRY_S`` until one succeeds (``status_write_recovered``
then), and logged once per kind of failure (and once a minute), not once a second for a
day of full disk. After each write the one-line summary goes to systemd's ``STATUS=``
when it changed.

Callers say "the board changed, write it" with ``write()``. Today that writes at once
(the daemon relies on it: a job's status is on disk before its ``job_started`` line).
Coalescing (one write in flight, a short window, always a final write) fits behind the
same two calls: ``write()`` becomes a request, ``flush()`` the final write at shutdown.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from .status import StatusBoard
from .statusview import summary_line

STATUS_RETRY_S = 1.0
REPEAT_LOG_EVERY_S = 60.0


class StatusSink(Protocol):
    """Where the summary line goes (systemd's ``STATUS=``): ``service.notify.Notifier``."""

    def status(self, line: str) -> None: ...


class StatusWriter:
    """Writes ``board`` to ``path()``; retries, logs and forwards the summary line.

    ``path`` and ``log`` are callables because a reload may change both.
    ``before_write`` refines the board just before each write (the daemon sets
    idle/running from its scheduler there).
    """

    def __init__(
        self,
        board: StatusBoard,
        *,
        path: Callable[[], Path],
        log: Callable[[], Any],
        sink: StatusSink,
        before_write: Callable[[], None] = lambda: None,
    ) -> None:
        self.board = board
        self._path = path
        self._log = log
        self._sink = sink
        self._before_write = before_write
        self._retry: asyncio.TimerHandle | None = None
        self._last_line = ""
        self.error = ""  # the last write error, "" while writes succeed
        self._error_kind = ""
        self._error_logged = 0.0

    def write(self) -> None:
        """Write the board now (see the module doc for why "now")."""
        self._before_write()
        self._attempt()
        line = summary_line(self.board.doc)
        if line != self._last_line:
            self._last_line = line
            self._sink.status(line)

    def flush(self) -> None:
        """The final write (shutdown): same as ``write`` until writes are coalesced."""
        self.write()

    def close(self) -> None:
        """Stop retrying (after the final write)."""
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None

    def _attempt(self) -> None:
        path = self._path()
        try:
            self.board.write(path)
        except OSError as exc:
            # The message names a fresh temp file each time: compare the errno.
            now = time.monotonic()
            error, kind = str(exc), f"{type(exc).__name__}:{exc.errno}"
            if kind != self._error_kind or now - self._error_logged >= REPEAT_LOG_EVERY_S:
                self._log().warning("status_write_failed", path=os.fsdecode(path), error=error)
                self._error_kind, self._error_logged = kind, now
            self.error = error
            if self._retry is None:
                loop = asyncio.get_running_loop()
                self._retry = loop.call_later(STATUS_RETRY_S, self._on_retry)
            return
        if self.error:
            self._log().info(
                "status_write_recovered", path=os.fsdecode(path), previous_error=self.error
            )
            self.error = self._error_kind = ""

    def _on_retry(self) -> None:
        self._retry = None
        self.write()
