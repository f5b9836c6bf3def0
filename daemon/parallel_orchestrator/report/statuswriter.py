"""Writing the status board to its file, coalesced, and surviving a file system that refuses.

One place owns every write of the status file so its policy lives in one place.

Coalescing: every job state change used to rewrite and fsync the whole document, which
for thousands of scripts meant minutes and gigabytes per run. Now ``write()`` is a
request. After a quiet spell it is written at once (a single change is not delayed);
after a write, requests wait for the end of a window (``COALESCE_S``, longer for a big
document: size / ``BYTES_PER_S``, at most ``MAX_GAP_S``, so a 2 MB document is rewritten
about once a second) and one write then covers them all. Only one write is ever in
progress (writes happen on the loop, from one timer). ``flush()`` writes at once whatever is
pending (shutdown's final write; the daemon also calls it before ``daemon_stopping``).

The guarantee a log reader relies on, that a job is in the status file before its
``job_started`` / ``job_finished`` line, is kept by ``write_then``: the line is emitted
right after the write that contains the change, so it comes up to one window later
instead of the write coming early.

Failures: a failed write is retried every ``STATUS_RETRY_S`` until one succeeds
(``status_write_recovered`` then), and logged once per kind of failure (and once a
minute), not once a second for a day of full disk; a folder not recreated because the
repository it was in is missing (``store.fence``) is said once, not once a minute.
Lines waiting on a failed write are emitted anyway: the log must not lose them. After
each write the one-line summary goes to systemd's ``STATUS=`` when it changed.
``close()`` logs ``status_write_totals`` (writes, bytes): what
``benchmarks/status_scale.py`` reports.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from ..store.fence import FencedError
from .status import StatusBoard
from .statusview import summary_line

STATUS_RETRY_S = 1.0
REPEAT_LOG_EVERY_S = 60.0
COALESCE_S = 0.05  # the window a first request opens
BYTES_PER_S = 2_000_000  # a big document waits size / this between writes ...
MAX_GAP_S = 2.0  # ... but never longer than this


class StatusSink(Protocol):
    """Where the summary line goes (systemd's ``STATUS=``): ``service.notify.Notifier``."""

    def status(self, line: str) -> None: ...


class StatusWriter:
    """Writes ``board`` to ``path()``; coalesces, retries, logs and forwards the summary.

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
        self._timer: asyncio.TimerHandle | None = None
        self._after: list[Callable[[], None]] = []
        self._next_at = 0.0  # monotonic time before which no window closes
        self._last_line = ""
        self.error = ""  # the last write error, "" while writes succeed
        self._error_kind = ""
        self._error_logged = 0.0
        self.writes = 0
        self.bytes_written = 0

    def write(self) -> None:
        """The board changed: write it within the window (see the module doc)."""
        if self._timer is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a one-shot caller): write at once
            self.flush()
            return
        wait = self._next_at - time.monotonic()
        if wait <= 0:  # quiet for a window: the first change goes out at once
            self._write_now()
            return
        self._timer = loop.call_later(wait, self._on_timer)

    def write_then(self, emit: Callable[[], None]) -> None:
        """Request a write and call ``emit`` (a log line) right after it lands."""
        self._after.append(emit)
        self.write()

    def flush(self) -> None:
        """Write now (with whatever is pending): the final write, or one that must be on
        disk before the caller goes on (READY=1)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._write_now()

    def close(self) -> None:
        """Stop retrying (after the final write) and say what all the writes cost."""
        if self._timer is not None or self._after:
            self.flush()
        for handle in (self._retry, self._timer):
            if handle is not None:
                handle.cancel()
        self._retry = self._timer = None
        self._log().info("status_write_totals", writes=self.writes, bytes=self.bytes_written)

    def _on_timer(self) -> None:
        self._timer = None
        self._write_now()

    def _write_now(self) -> None:
        self._before_write()
        size = self._attempt()
        self._next_at = time.monotonic() + min(MAX_GAP_S, max(COALESCE_S, size / BYTES_PER_S))
        line = summary_line(self.board.doc)
        if line != self._last_line:
            self._last_line = line
            self._sink.status(line)
        after, self._after = self._after, []
        for emit in after:
            emit()

    def _attempt(self) -> int:
        """One write; its size in bytes (0 when it failed)."""
        path = self._path()
        try:
            size = self.board.write(path)
        except OSError as exc:
            # The message names a fresh temp file each time: compare the errno.
            now = time.monotonic()
            error, kind = str(exc), f"{type(exc).__name__}:{exc.errno}"
            # A folder inside a missing repository: said once; ``repo_missing`` is the state.
            repeat = not isinstance(exc, FencedError)
            if kind != self._error_kind or (
                repeat and now - self._error_logged >= REPEAT_LOG_EVERY_S
            ):
                self._log().warning("status_write_failed", path=os.fsdecode(path), error=error)
                self._error_kind, self._error_logged = kind, now
            self.error = error
            if self._retry is None:
                with_loop = _running_loop()
                if with_loop is not None:
                    self._retry = with_loop.call_later(STATUS_RETRY_S, self._on_retry)
            return 0
        self.writes += 1
        self.bytes_written += size
        if self.error:
            self._log().info(
                "status_write_recovered", path=os.fsdecode(path), previous_error=self.error
            )
            self.error = self._error_kind = ""
        return size

    def _on_retry(self) -> None:
        self._retry = None
        self.write()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
