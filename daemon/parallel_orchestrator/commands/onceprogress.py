"""The one-line progress display of ``once`` on a terminal.

A full suite over several worktrees can take minutes; silence for that long reads as a
hang. On a terminal (stderr a TTY, so pipes and CI logs stay clean) one line is redrawn
in place: jobs done, running, waiting, failures so far, elapsed time. It is redrawn when
a job starts or ends and once a second in between, and erased before the results print.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TextIO

from ..states import PASS

_CLEAR_LINE = "\r\x1b[2K"


class OnceProgress:
    """Counts jobs and (when given a stream) keeps one status line on it up to date."""

    def __init__(
        self, total: int, stream: TextIO | None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.total = total
        self.running = 0
        self.done = 0
        self.not_passed = 0
        self._stream = stream
        self._clock = clock
        self._started = clock()
        self._drawn = False

    def job_started(self) -> None:
        self.running += 1
        self.draw()

    def job_finished(self, result: str) -> None:
        self.running -= 1
        self.done += 1
        self.not_passed += result != PASS
        self.draw()

    def line(self) -> str:
        elapsed = self._clock() - self._started
        waiting = self.total - self.done - self.running
        parts = [f"{self.done}/{self.total} done", f"{self.running} running"]
        if waiting:
            parts.append(f"{waiting} waiting")
        if self.not_passed:
            parts.append(f"{self.not_passed} not passed")
        return f"once: {', '.join(parts)}; {elapsed:.0f}s elapsed"

    def draw(self) -> None:
        if self._stream is None:
            return
        self._stream.write(_CLEAR_LINE + self.line())
        self._stream.flush()
        self._drawn = True

    def close(self) -> None:
        """Erase the line, so the results start on a clean one."""
        if self._stream is not None and self._drawn:
            self._stream.write(_CLEAR_LINE)
            self._stream.flush()
            self._drawn = False

    async def tick(self, interval_s: float = 1.0) -> None:
        """Redraw every ``interval_s`` (the elapsed time moves); cancelled when done."""
        while True:
            await asyncio.sleep(interval_s)
            self.draw()
