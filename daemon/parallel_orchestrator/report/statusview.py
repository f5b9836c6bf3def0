"""The human view of the status file: `parallel-orchestrator status [--watch]`.

Reads the document the daemon replaces atomically (schema_version 1, see the design's
"Status file") and renders it as one row per hypothesis and one column per script.
Nothing here talks to the daemon: the file is the interface, so the view works on a
copy, after a crash, or while the daemon is down — which is why the header must make a
stopped or dead daemon impossible to miss.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import watchfiles

from ..errors import OrchestratorError
from ..states import (
    ACTIVE_STATES,
    CANCELLED,
    CELL_STATES,
    DAEMON_STOPPED,
    ERROR,
    FAIL,
    FAILING_RESULTS,
    FINAL_RESULTS,
    NEVER_RUN,
    PASS,
    QUEUED,
    REPO_MISSING,
    RUNNING,
    TIMEOUT,
)
from ..store.safe_open import read_regular
from .safetext import finite, one_line

SCHEMA_VERSION = 1

# state -> (unicode mark, ascii mark, short word shown next to the mark)
_MARKS: dict[str, tuple[str, str, str]] = {
    PASS: ("✓", "+", "pass"),
    FAIL: ("✗", "x", "fail"),
    TIMEOUT: ("⏱", "T", "timeout"),
    ERROR: ("!", "!", "error"),
    CANCELLED: ("\u2013", "-", "cancelled"),  # en dash
    RUNNING: ("▶", ">", "running"),
    QUEUED: ("…", "~", "queued"),
    NEVER_RUN: ("·", ".", "never"),
}
_UNKNOWN_MARK = ("?", "?", "")

_ANSI = {
    "green": "\x1b[32m",
    "red": "\x1b[31m",
    "yellow": "\x1b[33m",
    "cyan": "\x1b[36m",
    "dim": "\x1b[2m",
    "bold_red": "\x1b[1;31m",
}
_RESET = "\x1b[0m"
_STATE_COLOR = {
    PASS: "green",
    FAIL: "red",
    ERROR: "red",
    TIMEOUT: "yellow",
    RUNNING: "cyan",
    NEVER_RUN: "dim",
    CANCELLED: "dim",
}
_SUMMARY_ORDER = CELL_STATES
_FAILING = FAILING_RESULTS
CLEAR_SCREEN = "\x1b[H\x1b[2J"


class StatusFileError(OrchestratorError):
    """The status file cannot be shown; ``str()`` is one line naming the path."""


class StatusFileMissing(StatusFileError):
    """No status file yet: the daemon never ran with this state dir, or it was removed."""


class StatusFileInvalid(StatusFileError):
    """The file exists but is unreadable, not JSON, or not a schema_version 1 document."""


def _missing_folder(path: Path) -> Path | None:
    """The highest missing folder on the way to ``path`` (a repository holding the state
    dir was moved away, say), or None when ``path``'s own folder exists."""
    gone = None
    folder = Path(os.path.abspath(path)).parent
    while not os.path.isdir(folder) and folder.parent != folder:
        gone, folder = folder, folder.parent
    return gone


def read_status(path: Path) -> dict[str, Any]:
    """Load and shape-check the status document so rendering never meets a surprise type."""
    try:
        # Non-blocking, regular files only: a FIFO named as the status file must not hang.
        raw = read_regular(path, follow=True)
    except FileNotFoundError as exc:
        gone = _missing_folder(path)
        where = f" {gone} does not exist" if gone is not None else ""
        raise StatusFileMissing(f"{path}: no status file (is the daemon running?{where})") from exc
    except OSError as exc:
        raise StatusFileInvalid(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        # NaN/Infinity are not JSON (an old daemon wrote them): shown as unknown, not fatal.
        # 1e400 is JSON too, read as inf, which json refuses to write back (--json).
        doc = finite(json.loads(raw, parse_constant=lambda _name: None))
    except RecursionError as exc:
        raise StatusFileInvalid(f"{path}: not a status file: nested too deeply") from exc
    except UnicodeDecodeError as exc:
        raise StatusFileInvalid(f"{path}: not UTF-8 text ({exc.reason})") from exc
    except json.JSONDecodeError as exc:
        raise StatusFileInvalid(
            f"{path}: not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from exc
    problem = _schema_problem(doc)
    if problem:
        raise StatusFileInvalid(f"{path}: not a status file: {problem}")
    return doc


def _schema_problem(doc: object) -> str:
    """Return why ``doc`` is not a schema_version 1 status document ('' when it is)."""
    if not isinstance(doc, dict):
        return "top level is not an object"
    version = doc.get("schema_version")
    if version != SCHEMA_VERSION:
        return f"schema_version is {version!r}, expected {SCHEMA_VERSION}"
    if not isinstance(doc.get("daemon"), dict):
        return "'daemon' is not an object"
    hypotheses = doc.get("hypotheses")
    if not isinstance(hypotheses, dict):
        return "'hypotheses' is not an object"
    for hyp_id, hyp in hypotheses.items():
        if not isinstance(hyp, dict):
            return f"hypotheses.{hyp_id} is not an object"
        scripts = hyp.get("scripts", {})
        if not isinstance(scripts, dict):
            return f"hypotheses.{hyp_id}.scripts is not an object"
        for name, entry in scripts.items():
            if not isinstance(entry, dict):
                return f"hypotheses.{hyp_id}.scripts.{name} is not an object"
    if "summary" in doc and not isinstance(doc["summary"], dict):
        return "'summary' is not an object"
    return ""


# ---------------------------------------------------------------------------- helpers


def should_color(stream: TextIO, env: Mapping[str, str]) -> bool:
    """Colour only for a terminal, honouring https://no-color.org (set and non-empty)."""
    if env.get("NO_COLOR", ""):
        return False
    if env.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    if isatty is None:
        return False
    try:
        return bool(isatty())
    except ValueError:  # closed stream: nothing will be shown in colour anyway
        return False


def can_encode_marks(encoding: str | None) -> bool:
    """Whether the unicode marks survive ``encoding``; the CLI passes sys.stdout.encoding."""
    if not encoding:
        return False
    sample = "".join(mark for mark, _, _ in _MARKS.values())
    try:
        sample.encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return False
    return True


def pid_alive(pid: object) -> bool | None:
    """True/False for a usable pid, None when the document has no usable pid to check."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # a pid beyond pid_t is no process
        return False
    except PermissionError:  # exists, owned by someone else (e.g. a system service)
        return True
    return True


def parse_timestamp(value: object) -> float | None:
    """Epoch seconds from either an epoch number or an ISO 8601 string (naive = UTC)."""
    if isinstance(value, bool):
        return None
    try:
        if isinstance(value, int | float):
            number = float(value)
            return number if math.isfinite(number) else None
        if isinstance(value, str) and value:
            parsed = datetime.fromisoformat(value)
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=UTC)
            return parsed.timestamp()
    except (ValueError, OverflowError):  # not a date, or one no clock can hold
        return None
    return None


def format_duration(seconds: float) -> str:
    """Compact, roughly constant-width durations: 0.4s, 12.3s, 2m05s, 1h07m, 2d03h."""
    if not math.isfinite(seconds):
        return "?"
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    total = int(seconds)
    if total < 3600:
        return f"{total // 60}m{total % 60:02d}s"
    if total < 86400:
        return f"{total // 3600}h{total % 3600 // 60:02d}m"
    return f"{total // 86400}d{total % 86400 // 3600:02d}h"


def format_ago(seconds: float) -> str:
    """Coarse age for 'finished 3m ago'; precision beyond one unit is noise here."""
    if not math.isfinite(seconds):
        return "at an unknown time"
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{int(seconds)}s ago"
    if seconds < 3600:
        return f"{int(seconds // 60)}m ago"
    if seconds < 86400:
        return f"{int(seconds // 3600)}h ago"
    return f"{int(seconds // 86400)}d ago"


def _paint(text: str, colour: str | None, color: bool) -> str:
    if not color or not colour or not text:
        return text
    return f"{_ANSI[colour]}{text}{_RESET}"


# ---------------------------------------------------------------------------- table


@dataclass(frozen=True)
class _Cell:
    """One table cell; its text is escaped here, so no name or value from the file
    (a worktree folder, a branch) can put a control character on the terminal."""

    text: str
    colour: str | None

    def __post_init__(self) -> None:
        object.__setattr__(self, "text", one_line(self.text))


def _iter_jobs(doc: Mapping[str, Any]) -> list[tuple[str, str, Mapping[str, Any]]]:
    jobs = []
    for hyp_id, hyp in doc.get("hypotheses", {}).items():
        for name, entry in hyp.get("scripts", {}).items():
            jobs.append((hyp_id, name, entry))
    return jobs


def _count_states(doc: Mapping[str, Any]) -> dict[str, int]:
    """Count from the cells themselves so the last line always agrees with the table."""
    counts = dict.fromkeys(_SUMMARY_ORDER, 0)
    for _, _, entry in _iter_jobs(doc):
        state = entry.get("state")
        if isinstance(state, str):
            counts[state] = counts.get(state, 0) + 1
    return counts


def summary_line(doc: Mapping[str, Any]) -> str:
    """One line for systemd's STATUS= and the table's footer: what needs attention first."""
    n_hyp = len(doc.get("hypotheses", {}))
    counts = _count_states(doc)
    parts = [f"{n_hyp} {'hypothesis' if n_hyp == 1 else 'hypotheses'}"]
    if _repo_missing(doc.get("daemon")):  # nothing runs until it is back: said first
        parts.insert(0, "repository missing")
    failing = sum(counts[s] for s in _FAILING)
    for count, label in (
        (counts[RUNNING], "running"),
        (counts[QUEUED], "queued"),
        (failing, "failing"),
        (counts[PASS], "passing"),
        (counts[CANCELLED], "cancelled"),
        (counts[NEVER_RUN], "never run"),
    ):
        if count:
            parts.append(f"{count} {label}")
    return ", ".join(parts)


def _counts_line(doc: Mapping[str, Any]) -> str:
    """The table's footer: every non-zero state count, in the summary's key order."""
    n_hyp = len(doc.get("hypotheses", {}))
    counts = _count_states(doc)
    total = sum(counts.values())
    hyp_word = "hypothesis" if n_hyp == 1 else "hypotheses"
    head = f"{n_hyp} {hyp_word}, {total} {'job' if total == 1 else 'jobs'}"
    labels = {NEVER_RUN: "never run"}
    parts = [f"{count} {labels.get(state, state)}" for state, count in counts.items() if count]
    return head + (": " + ", ".join(parts) if parts else "")


def state_mark(state: object, ascii_only: bool = False) -> tuple[str, str]:
    """(mark, word) for a cell state, as the grid shows it (``compare`` uses the same)."""
    uni, asc, word = _MARKS.get(state if isinstance(state, str) else "?", _UNKNOWN_MARK)
    return (asc if ascii_only else uni), (word or str(state))


def state_colour(state: object) -> str | None:
    return _STATE_COLOR.get(state) if isinstance(state, str) else None


def paint(text: str, colour: str | None, color: bool) -> str:
    return _paint(text, colour, color)


def tests_fraction(tests: object) -> str | None:
    """``passed/total`` of a cell's ``tests``, or None when it has no test-level results."""
    if not isinstance(tests, Mapping):
        return None
    passed, total = tests.get("passed"), tests.get("total")
    if not isinstance(passed, int) or not isinstance(total, int):
        return None
    return f"{passed}/{total}"


def first_failing(tests: object) -> str | None:
    """The id of the first failing test of a cell's ``tests`` (entries are {"id", ...})."""
    failing = tests.get("failing") if isinstance(tests, Mapping) else None
    if not isinstance(failing, list) or not failing:
        return None
    first = failing[0]
    found = first.get("id") if isinstance(first, Mapping) else first
    return found if isinstance(found, str) else None


def _shorten(text: str, limit: int, ascii_only: bool) -> str:
    if len(text) <= limit:
        return text
    return text[: limit - 3] + "..." if ascii_only else text[: limit - 1] + "\u2026"


def _cell(entry: Mapping[str, Any], now: float, level: int, ascii_only: bool) -> _Cell:
    """Render one hypothesis x script cell; higher ``level`` drops detail to fit the width."""
    state = entry.get("state")
    state_key = state if isinstance(state, str) else "?"
    uni, asc, word = _MARKS.get(state_key, _UNKNOWN_MARK)
    mark = asc if ascii_only else uni
    if level >= 3:
        return _Cell(mark, _STATE_COLOR.get(state_key))
    parts = [mark, word or str(state)]
    finished = state_key in ("pass", "fail", "timeout", "error", "cancelled")
    fraction = tests_fraction(entry.get("tests")) if finished else None
    if fraction is not None and level <= 2:
        parts.append(fraction)
    if level <= 1:
        if state_key == RUNNING:
            started = parse_timestamp(entry.get("started_at"))
            if started is not None:
                parts.append(format_duration(now - started))
        elif state_key in FINAL_RESULTS:
            duration = entry.get("duration_s")
            if isinstance(duration, int | float) and not isinstance(duration, bool):
                parts.append(format_duration(float(duration)))
            if entry.get("cached") is True:
                parts.append("cached")  # reused from cached_from, no process ran
            finished_at = parse_timestamp(entry.get("finished_at"))
            if level == 0 and finished_at is not None:
                parts.append(format_ago(now - finished_at))
            failing = first_failing(entry.get("tests"))
            if failing is not None:
                parts.append(failing if level == 0 else _shorten(failing, 32, ascii_only))
        if level == 0 and state_key in ACTIVE_STATES:
            last = entry.get("last_result")
            if isinstance(last, str) and last:
                parts.append(f"(last {last})")
    return _Cell(" ".join(parts), _STATE_COLOR.get(state_key))


def _header(doc: Mapping[str, Any], now: float, color: bool) -> list[str]:
    daemon = doc.get("daemon", {})
    state = daemon.get("state")
    pid = daemon.get("pid")
    alive = pid_alive(pid)
    if state == DAEMON_STOPPED:
        line = _paint("daemon: stopped", "yellow", color)
        if alive is not None:
            line += f" (was pid {pid})"
    elif alive is False:
        line = _paint(f"daemon: pid {pid} NOT RUNNING (stale status)", "bold_red", color)
        line += f", last state {one_line(state)}"
    else:
        liveness = "alive" if alive else "liveness unknown"
        pid_text = f"pid {pid}, {liveness}" if alive is not None else "no pid"
        line = f"daemon: {_paint(one_line(state), 'green', color)} ({pid_text})"
    updated = parse_timestamp(daemon.get("updated_at"))
    line += f", updated {format_ago(now - updated)}" if updated is not None else ", never updated"
    lines = [line]
    if _repo_missing(daemon):
        lines.append(_paint(REPO_MISSING_LINE, "bold_red", color))
    details = []
    if daemon.get("version"):
        details.append(f"version {one_line(daemon['version'])}")
    if daemon.get("config_path"):
        details.append(f"config {one_line(daemon['config_path'])}")
    if details:
        lines.append(_paint(", ".join(details), "dim", color))
    rejected = _config_error_line(daemon)
    if rejected:
        lines.append(_paint(rejected, "yellow", color))
    return lines


REPO_MISSING_LINE = (
    "repository missing (moved or deleted): nothing runs until it is back at worktrees.repo"
)


def _repo_missing(daemon: object) -> bool:
    """``daemon.repo_state`` says the repository was moved or deleted."""
    return isinstance(daemon, Mapping) and daemon.get("repo_state") == REPO_MISSING


def _config_error_line(daemon: Mapping[str, Any]) -> str:
    """A reload the daemon rejected (it runs on its last good config), from
    ``daemon.config_error``; "" when there is none or it is malformed."""
    record = daemon.get("config_error")
    errors = record.get("errors") if isinstance(record, dict) else None
    if not isinstance(errors, list) or not errors:
        return ""
    first = one_line(errors[0]) if isinstance(errors[0], str) else "?"
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"config reload rejected, running on the last good one: {first}{more}"


def _script_names(doc: Mapping[str, Any]) -> list[str]:
    names: dict[str, None] = {}
    for _, name, _ in _iter_jobs(doc):
        names.setdefault(name, None)
    return list(names)


def _table_rows(
    doc: Mapping[str, Any], scripts: list[str], now: float, level: int, ascii_only: bool
) -> list[list[_Cell]]:
    rows = [[_Cell("HYPOTHESIS", None), _Cell("BRANCH", None)]]
    rows[0] += [_Cell(name, None) for name in scripts]
    for hyp_id, hyp in doc.get("hypotheses", {}).items():
        branch = hyp.get("branch")
        row = [_Cell(str(hyp_id), None), _Cell(str(branch) if branch else "-", None)]
        cells = hyp.get("scripts", {})
        for name in scripts:
            entry = cells.get(name)
            row.append(
                _cell(entry, now, level, ascii_only) if entry is not None else _Cell("", None)
            )
        rows.append(row)
    return rows


def _layout(rows: list[list[_Cell]], color: bool) -> list[str]:
    """Pad on the visible text, then colour, so ANSI codes never disturb the alignment."""
    widths = [max(len(row[i].text) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        padded = [
            _paint(cell.text, cell.colour, color) + " " * (widths[i] - len(cell.text))
            for i, cell in enumerate(row)
        ]
        lines.append("  ".join(padded).rstrip())
    rule = "  ".join("-" * w for w in widths)
    lines.insert(1, rule)
    return lines


def _visible_width(rows: list[list[_Cell]]) -> int:
    widths = [max(len(row[i].text) for row in rows) for i in range(len(rows[0]))]
    return sum(widths) + 2 * (len(widths) - 1)


def render_table(
    doc: Mapping[str, Any],
    *,
    now: float | None = None,
    color: bool = False,
    width: int | None = None,
    ascii_only: bool = False,
) -> str:
    """The full `status` screen; detail is shed per cell (never columns) to fit ``width``."""
    now = time.time() if now is None else now
    lines = _header(doc, now, color)
    scripts = _script_names(doc)
    if not doc.get("hypotheses"):
        lines.append("(no hypotheses)")
    else:
        level = 0
        rows = _table_rows(doc, scripts, now, level, ascii_only)
        while width is not None and level < 3 and _visible_width(rows) > width:
            level += 1
            rows = _table_rows(doc, scripts, now, level, ascii_only)
        lines.append("")
        lines.extend(_layout(rows, color))
        if level >= 3:  # bare marks only: say what they mean
            pick = 1 if ascii_only else 0
            lines.append("  ".join(f"{marks[pick]} {marks[2]}" for marks in _MARKS.values()))
    lines.append("")
    lines.append(_counts_line(doc))
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- watch


class _EitherEvent:
    """Stops watchfiles' Rust loop when any of the events is set (it only calls is_set)."""

    def __init__(self, *events: threading.Event) -> None:
        self._events = events

    def is_set(self) -> bool:
        return any(event.is_set() for event in self._events)


class _DirWatcher:
    """Background watch of the status file's folder that only sets ``wake``.

    The file is replaced by rename, so a watch on the file itself would follow the old
    inode and go silent; the folder is watched non-recursively, filtered to the name."""

    def __init__(self, path: Path, wake: threading.Event, stop: threading.Event) -> None:
        self._path = path
        self._wake = wake
        self._closing = threading.Event()
        self._stop = _EitherEvent(stop, self._closing)
        self.error: Exception | None = None
        self._thread = threading.Thread(target=self._run, name="status-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def close(self) -> None:
        self._closing.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        name = self._path.name

        def only_status_file(_change: watchfiles.Change, changed: str) -> bool:
            return Path(changed).name == name

        try:
            for _changes in watchfiles.watch(
                self._path.parent,
                watch_filter=only_status_file,
                stop_event=self._stop,
                debounce=200,
                step=20,
                recursive=False,
                raise_interrupt=False,
            ):
                self._wake.set()
        except Exception as exc:  # shown in the next frame; the loop re-arms the watch
            self.error = exc
        finally:
            self._wake.set()  # also how a stop reaches the drawing loop without a tick


def _isatty(out: TextIO) -> bool:
    isatty = getattr(out, "isatty", None)
    try:
        return bool(isatty()) if isatty is not None else False
    except ValueError:
        return False


def _signature(path: Path) -> tuple[int, int, int] | None:
    """Identity of the file's current version: a rename-replace always changes the inode."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    except OSError as exc:  # unreadable: let read_status report it in the frame
        return (-1, exc.errno or 0, 0)
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def _frame(path: Path, *, color: bool, ascii_only: bool, width: int | None, now: float) -> str:
    try:
        doc = read_status(path)
    except StatusFileMissing:
        dots = "..." if ascii_only else "…"
        return f"waiting for {path}{dots}\n"
    except StatusFileInvalid as exc:
        return _paint(str(exc), "red", color) + "\n"
    return render_table(doc, now=now, color=color, width=width, ascii_only=ascii_only)


def watch_status(
    path: Path,
    out: TextIO,
    *,
    color: bool,
    stop: threading.Event | None = None,
    interval_s: float = 1.0,
    ascii_only: bool = False,
    width: int | None = None,
    clock: Callable[[], float] = time.time,
    wake: threading.Event | None = None,
    footer: Callable[[], str] | None = None,
) -> None:
    """Redraw whenever the status file is replaced; on a TTY also every ``interval_s`` so
    the "N s ago" text stays true. Off a TTY (a pipe, a log) a frame is written only when
    the file actually changed, after a rule line, so the output stays a readable history.

    The file watch only wakes the loop early: the file is also stat-ed every
    ``interval_s``, so a lost or failed watch costs latency, never a missed update.
    Returns when ``stop`` is set or on Ctrl-C. ``wake`` redraws now (a key was pressed);
    ``footer`` gives lines shown under each frame (the keys' help and answers)."""
    stop = stop if stop is not None else threading.Event()
    tty = _isatty(out)
    wake = wake if wake is not None else threading.Event()
    shown_footer = ""
    watcher: _DirWatcher | None = None
    note = ""
    never_drawn = object()
    drawn: object = never_drawn
    try:
        while not stop.is_set():
            if watcher is not None and not watcher.alive():
                if watcher.error is not None:
                    note = f"file watch failed ({watcher.error}); re-arming"
                watcher = None
            if watcher is None and path.parent.is_dir():
                watcher = _DirWatcher(path, wake, stop)
                watcher.start()
            signature = _signature(path)
            extra = footer() if footer is not None else ""
            if tty or signature != drawn or note or extra != shown_footer:
                frame_width = width
                if frame_width is None and tty:
                    frame_width = shutil.get_terminal_size().columns
                frame = _frame(
                    path, color=color, ascii_only=ascii_only, width=frame_width, now=clock()
                )
                if note:
                    frame += note + "\n"
                    note = ""
                frame += extra
                shown_footer = extra
                if tty:
                    out.write(CLEAR_SCREEN + frame)
                else:
                    first = drawn is never_drawn
                    out.write(("" if first else "-" * 40 + "\n") + frame)
                out.flush()
                drawn = signature
            if watcher is not None:
                wake.wait(interval_s)
                wake.clear()
            else:
                stop.wait(interval_s)  # no folder to watch yet: poll for it to appear
    except KeyboardInterrupt:
        out.write("\n")
        out.flush()
    finally:
        if watcher is not None:
            watcher.close()
