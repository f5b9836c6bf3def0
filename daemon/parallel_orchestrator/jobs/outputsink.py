"""Where a job's output goes: the run log and the captures the outcome reports.

Kept apart from the process handling because its concern is memory and disk, not
processes: every buffer has a fixed cap, so a job printing gigabytes costs at most the
log's and the captures' caps. The log streams its head to the file as it arrives and
keeps its tail in a ring, written at the end after a marker saying what was cut
(``cut_marker``); a capture keeps a stream whole if it fits, else its first and last halves
around the same marker.
"""

from __future__ import annotations

import codecs
import os
from collections import deque
from pathlib import Path

from ..store.folders import make_dirs
from ..store.safe_open import open_new
from .model import JobSpec


def make_private_dirs(directory: Path) -> None:
    """Create ``directory`` and missing parents as 0700: run logs name what is tested."""
    make_dirs(directory, 0o700)


def _open_log(path: Path) -> int:
    make_private_dirs(path.parent)
    return open_new(path, 0o600)  # never through a link, never a FIFO; exactly 0600


def cut_marker(n: int) -> bytes:
    return f"\n[... {n} bytes cut by parallel-orchestrator ...]\n".encode()


class _Ring:
    """The last ``cap`` bytes of a stream, kept as the chunks read: appending copies
    nothing (the same bytes objects may sit in several rings), only trimming slices."""

    def __init__(self, cap: int) -> None:
        self.cap = max(0, cap)
        self._chunks: deque[bytes] = deque()
        self.size = 0
        self.dropped = 0

    def append(self, data: bytes) -> None:
        self._chunks.append(data)
        self.size += len(data)
        excess = self.size - self.cap
        while excess > 0:
            first = self._chunks[0]
            if len(first) <= excess:
                self._chunks.popleft()
                n = len(first)
            else:
                self._chunks[0] = first[excess:]
                n = excess
            self.size -= n
            self.dropped += n
            excess -= n

    def chunks(self) -> list[bytes]:
        return list(self._chunks)

    def last(self, n: int) -> bytes:
        """The last ``n`` bytes held (fewer if fewer are held)."""
        if n <= 0:
            return b""
        return b"".join(self._chunks)[-n:]


def _skip_partial_char(data: bytes) -> bytes:
    """Drop UTF-8 continuation bytes at the start (a cut landed inside a character)."""
    i = 0
    while i < min(3, len(data)) and 0x80 <= data[i] <= 0xBF:
        i += 1
    return data[i:]


class _Log:
    """The run log: the first half of the cap goes to the file as it arrives, the last
    half waits in a ring and is written at the end, after a marker saying what was cut."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self._fd: int | None = _open_log(path)
        cap = max(0, max_bytes)
        self._head_left = cap // 2
        self._ring = _Ring(cap - self._head_left)
        self.error = ""

    @property
    def cut(self) -> int:
        return self._ring.dropped

    def write(self, data: bytes) -> None:
        if self._head_left:
            head = data[: self._head_left]
            self._head_left -= len(head)
            self._write_file(head)
            data = data[len(head) :]
            if not data:
                return
        self._ring.append(data)

    def _write_file(self, data: bytes) -> None:
        if self._fd is None:
            return
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as exc:
            # Disk full or similar: stop logging, keep the captures, say so in the outcome.
            self.error = f"log write failed: {exc.strerror}"
            os.close(self._fd)
            self._fd = None

    def close(self) -> None:
        if self._fd is None:
            return
        if self.cut:
            self._write_file(cut_marker(self.cut))
        for chunk in self._ring.chunks():
            self._write_file(chunk)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class Capture:
    """What the outcome reports of one stream: its last ``tail_bytes``, and with
    ``capture_bytes`` the stream itself — whole if it fits, else the first and last halves
    around a cut marker. Holds at most ``max(capture_bytes, tail_bytes)`` bytes."""

    def __init__(self, tail_bytes: int, capture_bytes: int) -> None:
        cap = max(0, capture_bytes)
        self._capturing = cap > 0
        self._tail_bytes = max(0, tail_bytes)
        self._head_cap = cap // 2
        self._tail_cap = cap - self._head_cap
        self._head = bytearray()
        # Every byte also enters the ring, so the tail of a short stream is there too.
        self._ring = _Ring(max(self._tail_cap, self._tail_bytes))
        self.total = 0

    def write(self, data: bytes) -> None:
        self.total += len(data)
        room = self._head_cap - len(self._head)
        if room > 0:
            self._head += data[:room]
        self._ring.append(data)

    def _after_head(self) -> tuple[int, int]:
        """(bytes of the capture after its head, bytes cut between head and those)."""
        after = self.total - len(self._head)
        kept = min(after, self._tail_cap)
        return kept, after - kept

    @property
    def cut(self) -> int:
        """Bytes left out of the capture (or, with no capture, out of the tail)."""
        if self._capturing:
            return self._after_head()[1]
        return self.total - min(self.total, self._tail_bytes)

    def tail(self) -> str:
        if not self.total:
            return ""  # the usual case for stderr, and for many tests' stdout
        data = self._ring.last(self._tail_bytes)
        if self.total > len(data):
            data = _skip_partial_char(data)
        return data.decode("utf-8", errors="replace")

    def text(self) -> str:
        if not self._capturing or not self.total:
            return ""
        kept, cut = self._after_head()
        rest = self._ring.last(kept)
        if not cut:
            return (bytes(self._head) + rest).decode("utf-8", errors="replace")
        # Cut inside: no replacement characters for a character split by the cut.
        head = codecs.getincrementaldecoder("utf-8")("replace").decode(self._head, final=False)
        tail = _skip_partial_char(rest).decode("utf-8", errors="replace")
        return head + cut_marker(cut).decode() + tail


class JobOutput:
    """A job's output: each chunk goes to the log (if any) and to its stream's capture."""

    def __init__(self, spec: JobSpec) -> None:
        self.log = _Log(spec.log_path, spec.max_log_bytes) if spec.log_path is not None else None
        self.stdout = Capture(spec.tail_bytes, spec.capture_bytes)
        self.stderr = Capture(spec.tail_bytes, spec.capture_bytes) if spec.split_stderr else None
        self.read_error = ""

    def write(self, capture: Capture, data: bytes) -> None:
        if self.log is not None:
            self.log.write(data)
        capture.write(data)

    @property
    def error(self) -> str:
        return (self.log.error if self.log is not None else "") or self.read_error

    def report(self, extra: dict[str, object]) -> None:
        """Sizes and cuts into ``extra``; ``output_bytes_cut`` is the log's cut if there
        is a log (that is where the output lives), else what the captures left out."""
        stderr_total = self.stderr.total if self.stderr is not None else 0
        extra["output_bytes"] = self.stdout.total + stderr_total
        cut = self.log.cut if self.log is not None else self.stdout.cut
        if cut:
            extra["output_bytes_cut"] = cut
        if self.stderr is not None:
            extra["stderr_bytes"] = stderr_total
            if self.log is None and self.stderr.cut:
                extra["stderr_bytes_cut"] = self.stderr.cut

    def close(self) -> None:
        if self.log is not None:
            self.log.close()
