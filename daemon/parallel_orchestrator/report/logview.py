"""``logs``: the daemon's event history (``<state_dir>/events.jsonl``) as lines a person scans.

One line per event: local time, hypothesis/script, result, duration and the first failing
tests for job results; a short summary for the daemon's other notable events (start, stop,
reloads, unreadable reports, warnings). ``--json`` prints the raw lines of the same events.
``follow`` keeps reading the file as the daemon appends to it, across its rotation to
``events.jsonl.1``: a new result shows within a poll interval (0.2 s).
"""

from __future__ import annotations

import json
import math
import os
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from ..errors import OrchestratorError
from ..store.safe_open import open_regular
from .eventlog import EVENTS_FILE, EVENTS_MAX_BYTES
from .safetext import one_line
from .statusview import state_mark

POLL_S = 0.2
CELL_WIDTH = 24  # "hypothesis/script" padded so results line up in a scrolling terminal
MAX_SHOWN_FAILING = 3
# The daemon keeps at most twice EVENTS_MAX_BYTES; a bigger file was not written by it,
# and ``logs`` reads only its end rather than all of it into memory.
MAX_READ_BYTES = 4 * EVENTS_MAX_BYTES
# Besides job results: what a person tailing results wants to know happened.
NOTABLE_EVENTS = frozenset(
    {
        "daemon_started",
        "daemon_stopped",
        "config_reloaded",
        "config_invalid",
        "worktree_added",
        "worktree_removed",
        "worktree_unreadable",
        "junit_unreadable",
        "job_recovered",
        "status_write_failed",
        "watcher_restarted",
        "daemon_crashed",
        # The repository (or the state dir inside it) moved away and back: nothing ran.
        "repo_missing",
        "repo_restored",
        "state_dir_missing",
        "state_dir_restored",
        "state_dir_lost",
    }
)


@dataclass(frozen=True)
class EventFilter:
    hypotheses: Sequence[str] = ()
    scripts: Sequence[str] = ()
    results: Sequence[str] = ()

    def wants(self, event: Mapping[str, Any]) -> bool:
        name = event.get("event")
        if name != "job_finished" and name not in NOTABLE_EVENTS:
            return False
        if self.hypotheses and event.get("hypothesis") not in self.hypotheses:
            return False
        if self.scripts and event.get("script") not in self.scripts:
            return False
        return not self.results or event.get("result") in self.results


def events_path(state_dir: Path) -> Path:
    return state_dir / EVENTS_FILE


class EventHistoryError(OrchestratorError):
    """The event history exists but cannot be read (a FIFO, a link, no permission)."""


def _open_history(path: Path) -> int:
    """A descriptor of the history file: a regular file only, so a FIFO planted there
    cannot hang ``logs``. FileNotFoundError passes; other failures are one line."""
    try:
        return open_regular(path)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise EventHistoryError(f"{path}: cannot read: {exc.strerror or exc}") from exc


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        event = json.loads(line)
    except (ValueError, RecursionError):
        return None  # a line cut by a crash (or garbage): skip it, the rest is still good
    return event if isinstance(event, dict) else None


def _lines(path: Path) -> list[bytes]:
    try:
        with os.fdopen(_open_history(path), "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > MAX_READ_BYTES:
                f.seek(size - MAX_READ_BYTES)
                f.readline()  # the rest of a line cut by the seek
            return f.read(MAX_READ_BYTES).splitlines()
    except FileNotFoundError:
        return []


def last_events(state_dir: Path, wanted: EventFilter, n: int) -> list[tuple[bytes, dict[str, Any]]]:
    """The last ``n`` wanted events (raw line, parsed), oldest first; the rotated file is
    read only when the current one has fewer than ``n``."""
    current = events_path(state_dir)
    return _wanted_tail(
        [*_lines(current.with_name(current.name + ".1")), *_lines(current)], wanted, n
    )


def _wanted_tail(
    lines: Sequence[bytes], wanted: EventFilter, n: int
) -> list[tuple[bytes, dict[str, Any]]]:
    if n <= 0:
        return []
    found: deque[tuple[bytes, dict[str, Any]]] = deque(maxlen=n)
    for line in lines:
        event = _parse(line)
        if event is not None and wanted.wants(event):
            found.append((line, event))
    return list(found)


def history_exists(state_dir: Path) -> bool:
    current = events_path(state_dir)
    return current.exists() or current.with_name(current.name + ".1").exists()


def _local_time(value: object) -> str:
    if not isinstance(value, str):
        return "-" * 19
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone()
    except (ValueError, OverflowError):  # not a time, or one local time cannot show
        return value[:19]
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def _duration(value: object) -> str:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return ""
    if not math.isfinite(value) or value < 0:
        return ""
    return f"{value:.1f}s" if value < 60 else f"{int(value // 60)}m{int(value % 60):02d}s"


def _tests_text(tests: object) -> str:
    if not isinstance(tests, Mapping):
        return ""
    parts = [f"{tests.get('passed')}/{tests.get('total')} passed"]
    failing = tests.get("failing")
    if isinstance(failing, list) and failing:
        ids = [str(t) for t in failing[:MAX_SHOWN_FAILING]]
        more = max(0, _failing_total(tests) - len(ids))
        parts.append("failing: " + ", ".join(ids) + (f" (+{more} more)" if more else ""))
    return "  ".join(parts)


def _failing_total(tests: Mapping[str, Any]) -> int:
    total = 0
    for key in ("failed", "errors"):
        value = tests.get(key)
        total += value if isinstance(value, int) else 0
    return total


def _details(event: Mapping[str, Any]) -> str:
    name = event.get("event")
    if name == "daemon_started":
        counts = f"{event.get('hypotheses')} hypotheses, {event.get('scripts')} scripts"
        return f"pid {event.get('pid')}, {counts}"
    if name == "junit_unreadable":
        return f"{event.get('path')}: {event.get('error')}"
    if name == "config_invalid":
        errors = event.get("errors")
        return "; ".join(map(str, errors)) if isinstance(errors, list) else str(errors)
    if name in ("repo_missing", "repo_restored"):
        return f"repo {event.get('repo')}"
    for key in ("reason", "error", "path"):
        if event.get(key) is not None:
            return f"{key} {event.get(key)}"
    return ""


def format_event(event: Mapping[str, Any], *, ascii_only: bool = False) -> str:
    """One human line: time, hypothesis/script, result, duration, first failing tests;
    every control character escaped (names and test ids come from the repository)."""
    return one_line(_format_event(event, ascii_only))


def _format_event(event: Mapping[str, Any], ascii_only: bool) -> str:
    when = _local_time(event.get("timestamp"))
    name = event.get("event")
    if name == "job_finished":
        cell = f"{event.get('hypothesis')}/{event.get('script')}"
        mark, word = state_mark(event.get("result"), ascii_only)
        duration = _duration(event.get("duration_s"))
        text = f"{when}  {cell:<{CELL_WIDTH}}  {mark} {word:<9} {duration:>7}"
        tests = _tests_text(event.get("tests"))
        if tests:
            text += f"  {tests}"
        elif (
            event.get("result") not in ("pass", "cancelled") and event.get("exit_code") is not None
        ):
            text += f"  exit {event.get('exit_code')}"
        if event.get("cached") is True:
            text += f"  (cached from {event.get('cached_from')})"  # no process ran
        return text.rstrip()
    cell = ""
    if event.get("hypothesis"):
        cell = f"{event.get('hypothesis')}" + (f"/{event['script']}" if event.get("script") else "")
    details = _details(event)
    return "  ".join(p for p in (when, f"{cell:<{CELL_WIDTH}}", str(name), details) if p)


class _Follower:
    """Reads lines appended to ``path``; notices rotation (a new inode under the name)
    after draining the old file, and a file that appears later."""

    def __init__(self, path: Path, at_end: bool) -> None:
        self.path = path
        self._f: Any = None
        self._ident: tuple[int, int] | None = None
        self._partial = b""
        self._open(at_end)

    def _open(self, at_end: bool) -> None:
        try:
            f = os.fdopen(_open_history(self.path), "rb")
        except FileNotFoundError:
            return
        st = os.fstat(f.fileno())
        if at_end:
            f.seek(0, os.SEEK_END)
        if self._f is not None:
            self._f.close()
        self._f, self._ident, self._partial = f, (st.st_dev, st.st_ino), b""

    def _replaced(self) -> bool:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        return (st.st_dev, st.st_ino) != self._ident

    def poll(self) -> Iterator[bytes]:
        if self._f is None:
            self._open(at_end=False)
            if self._f is None:
                return
        if os.fstat(self._f.fileno()).st_size < self._f.tell():
            self._f.seek(0)  # truncated in place (copytruncate): read it from the start
            self._partial = b""
        while True:
            data = self._f.read()
            if data:
                lines = (self._partial + data).split(b"\n")
                self._partial = lines.pop()
                yield from (line for line in lines if line)
            if not self._replaced():
                return
            self._open(at_end=False)  # drained the rotated file: go on with the new one

    def close(self) -> None:
        if self._f is not None:
            self._f.close()


def follow_events(
    state_dir: Path,
    wanted: EventFilter,
    emit: Callable[[bytes, dict[str, Any]], None],
    stop: threading.Event,
    n: int = 0,
    poll_s: float = POLL_S,
) -> None:
    """Emit the last ``n`` wanted events, then every one appended, until ``stop`` is set
    (or Ctrl-C). One reader does both, so no event falls between the two."""
    current = events_path(state_dir)
    follower = _Follower(current, at_end=False)
    try:
        older = _lines(current.with_name(current.name + ".1"))
        for line, event in _wanted_tail([*older, *follower.poll()], wanted, n):
            emit(line, event)
        while not stop.is_set():
            for line in follower.poll():
                event = _parse(line)
                if event is not None and wanted.wants(event):
                    emit(line, event)
            stop.wait(poll_s)
    finally:
        follower.close()
