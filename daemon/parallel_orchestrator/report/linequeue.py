"""Log lines to a pipe or terminal without ever blocking the daemon.

A paused reader (``run | less``) or a stuck one (``run | jq`` waiting on input) leaves a
pipe full after 64 KiB; a blocking write from the event loop then froze the whole
daemon: timeouts stopped firing and SIGTERM went unanswered. And stdout on a full disk
raised ENOSPC out of whatever callback happened to log, losing that callback's work.

So callers only append to a bounded in-memory buffer; one writer thread drains it to the
file descriptor. When the buffer is full the line is dropped and counted; once the
reader has caught up (the buffer is empty again) one ``log_dropped`` line says how many
were lost. A write error (ENOSPC, EPIPE) drops the lines being written, counted the same
way, and is reported once per failure spell on stderr. The JSON history the design
keeps in the state dir is written separately, so contract events still reach a file.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
from collections import deque
from datetime import UTC, datetime

MAX_BUFFERED_BYTES = 256 * 1024  # ~100 job_finished lines with full output tails


def _timestamp() -> str:
    """The same shape as structlog's ``TimeStamper(fmt="iso", utc=True)``."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def dropped_line(count: int) -> bytes:
    """The ``log_dropped`` event: how many lines a stalled or failing reader cost."""
    doc = {"timestamp": _timestamp(), "level": "warning", "event": "log_dropped", "count": count}
    return (json.dumps(doc) + "\n").encode()


class BackgroundLines:
    """A bounded buffer of lines for ``fd``, written by a daemon thread.

    ``put`` never blocks for longer than a lock held only around deque operations.
    ``close`` lets the thread finish what is buffered, bounded by a timeout: a reader
    that never resumes must not hold up the daemon's exit.
    """

    def __init__(self, fd: int, max_bytes: int = MAX_BUFFERED_BYTES) -> None:
        self._fd = fd
        self._max = max_bytes
        self._lines: deque[bytes] = deque()
        self._size = 0  # buffered plus being written: what a stalled reader holds up
        self._dropped = 0
        self._failing = False
        self._closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="log-writer", daemon=True)
        self._thread.start()

    @property
    def dropped(self) -> int:
        """Lines dropped and not yet reported by a ``log_dropped`` line."""
        with self._cond:
            return self._dropped

    def put(self, data: bytes) -> None:
        with self._cond:
            if self._closed or (self._size and self._size + len(data) > self._max):
                self._dropped += 1
                return
            self._lines.append(data)
            self._size += len(data)
            self._cond.notify()

    def close(self, timeout: float = 1.0) -> None:
        """Stop taking lines; wait up to ``timeout`` s for the buffered ones to be written."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._lines and not self._closed:
                    self._cond.wait()
                if not self._lines:
                    return
                lines = list(self._lines)
                self._lines.clear()
            written = self._write(b"".join(lines))
            with self._cond:
                self._size -= sum(len(line) for line in lines)
                if not written:
                    self._dropped += len(lines)
                    continue
                report = self._dropped if not self._lines else 0
            if report and self._write(dropped_line(report)):
                with self._cond:
                    self._dropped -= report

    def _write(self, data: bytes) -> bool:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as exc:
            if not self._failing:  # once per failure spell, not once per line
                self._failing = True
                complain(f"parallel-orchestrator: cannot write the log (fd {self._fd}): {exc}\n")
            return False
        self._failing = False
        return True


def complain(text: str) -> None:
    """Tell stderr, which may itself be full or gone: that must not raise either."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        os.write(sys.stderr.fileno(), text.encode("utf-8", "replace"))
