"""Structured JSON logging: one place that owns structlog's global configuration.

Every line is one JSON object whose first keys are ``timestamp`` (ISO 8601, UTC),
``level`` and ``event``; dashboards and our acceptance checks parse these lines, so the
shape is a contract. ``configure_logging`` may be called again (on reload) and
``reset_logging`` puts structlog back as it was, for tests.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import stat
import sys
import threading
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any, TextIO

import structlog

from ..store.folders import make_dirs
from ..store.safe_open import Create, open_state_file
from .linequeue import BackgroundLines, complain

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

# The events the design makes a contract: consumers (dashboards, agents, our checks) rely
# on seeing every one of them, so ``log_level`` filters only the others.
CONTRACT_EVENTS = frozenset(
    {
        "daemon_started",
        "worktree_added",
        "worktree_removed",
        "batch_formed",
        "job_started",
        "job_finished",
        "config_reloaded",
        "config_invalid",
        "daemon_stopping",
        "daemon_stopped",
        "status_write_failed",
        "watcher_restarted",
        "notify_failed",
        "junit_unreadable",
    }
)


def open_log_file(path: Path) -> int:
    """``path`` opened to append (created 0600). A symlink there is followed only if it is
    ours or root's (/dev/stderr is one): in a shared folder another user could plant one
    at the name, and with fs.protected_symlinks off a root daemon would append to the
    file of their choosing. Raises OSError naming the link's owner."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
    try:
        return os.open(path, flags | getattr(os, "O_NOFOLLOW", 0), 0o600)
    except OSError as exc:  # ELOOP for a link (EACCES for another's link in /tmp)
        try:
            st = os.lstat(path)
        except OSError:
            raise exc from None
        if not stat.S_ISLNK(st.st_mode):
            raise
    if st.st_uid not in (os.geteuid(), 0):
        raise OSError(errno.ELOOP, f"a symlink owned by another user (uid {st.st_uid})")
    return os.open(path, flags, 0o600)


class JsonLineSink:
    """Writes rendered lines to stdout or to a file that logrotate may move away.

    Like ``logging.handlers.WatchedFileHandler``: before each write, compare the open
    file's inode with the path's; if the file was moved or deleted, reopen the path so
    new lines go to the new file and none are lost to the rotated one.
    """

    def __init__(self, path: Path | None, stream: TextIO | None = None) -> None:
        self._path = path
        self._stream = stream if stream is not None else sys.stdout
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._ident: tuple[int, int] | None = None
        self._failing = False  # the file could not be written: lines go to stderr
        # stdout (a pipe, a terminal, a full disk): through a writer thread, never blocking.
        self._background: BackgroundLines | None = None
        if path is not None:
            self._open()
        else:
            self._background = _background_for(self._stream)

    def _open(self) -> None:
        assert self._path is not None
        # 0700 like the state dir the log file usually lives in: it names what is tested.
        make_dirs(self._path.parent, 0o700)
        fd = open_log_file(self._path)
        st = os.fstat(fd)
        if self._fd is not None:
            os.close(self._fd)
        self._fd, self._ident = fd, (st.st_dev, st.st_ino)

    def _rotated(self) -> bool:
        assert self._path is not None
        try:
            st = os.stat(self._path)
        except FileNotFoundError:
            return True
        return (st.st_dev, st.st_ino) != self._ident

    def write_line(self, line: str) -> None:
        data = line + "\n"
        if self._background is not None:
            self._background.put(data.encode("utf-8", "replace"))
            return
        with self._lock:
            if self._path is None:
                try:
                    self._stream.write(data)
                    self._stream.flush()
                except (OSError, ValueError):
                    # stdout went away or is full: logging must never kill the daemon.
                    pass
                return
            try:
                if self._rotated():
                    self._open()
                assert self._fd is not None
                os.write(self._fd, data.encode("utf-8", "replace"))
            except OSError as exc:
                # The log file is unwritable (disk full, permissions, its folder inside a
                # repository that was moved away): the line goes to stderr rather than
                # being lost, and why only once per failure spell, not before every line.
                if not self._failing:
                    complain(
                        f"parallel-orchestrator: cannot write log {self._path}: {exc}; "
                        "its lines go to stderr until it can be written again\n"
                    )
                self._failing = True
                complain(data)
                return
            self._failing = False

    def close(self, timeout: float = 1.0) -> None:
        """Close the file; stdout's writer gets ``timeout`` s to write what it holds."""
        if self._background is not None:
            self._background.close(timeout)
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    # structlog calls the method named after the level; all go to the same place.
    def msg(self, message: str) -> None:
        self.write_line(message)

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


EVENTS_FILE = "events.jsonl"
EVENTS_MAX_BYTES = 10 * 1024 * 1024


class EventHistory:
    """``<state_dir>/events.jsonl``: the same lines as the log, whatever ``log_file`` says,
    so ``logs`` finds them under a terminal, systemd or a log file alike. Bounded: past
    ``max_bytes`` the file is renamed to ``events.jsonl.1`` (replacing the older one) and
    a new one started, so at most twice the bound is kept. 0600: it names what is tested.
    """

    def __init__(self, path: Path, max_bytes: int = EVENTS_MAX_BYTES) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._size = 0
        self._ident: tuple[int, int] | None = None
        self._failed = False

    def _open(self) -> None:
        make_dirs(self.path.parent, 0o700)
        fd = open_state_file(self.path, Create.APPEND)  # in the state dir: never via a link
        st = os.fstat(fd)
        self._close_fd()
        self._fd, self._size, self._ident = fd, st.st_size, (st.st_dev, st.st_ino)

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _moved(self) -> bool:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return True
        return (st.st_dev, st.st_ino) != self._ident

    def append(self, line: str) -> None:
        data = (line + "\n").encode("utf-8", "replace")
        with self._lock:
            try:
                if self._fd is None or self._moved():
                    self._open()
                if self._size and self._size + len(data) > self.max_bytes:
                    os.replace(self.path, self.path.with_name(self.path.name + ".1"))
                    self._open()
                assert self._fd is not None
                os.write(self._fd, data)
                self._size += len(data)
                self._failed = False
            except OSError as exc:
                if not self._failed:  # once per failure spell, not once per line
                    complain(f"parallel-orchestrator: cannot write {self.path}: {exc}\n")
                self._failed = True

    def close(self) -> None:
        with self._lock:
            self._close_fd()


class _Tee:
    """The logger structlog writes to: the configured sink, and the event history."""

    def __init__(self, sink: JsonLineSink) -> None:
        self.sink = sink

    def msg(self, message: str) -> None:
        self.sink.write_line(message)
        history = _history
        if history is not None:
            history.append(message)

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


def _background_for(stream: TextIO) -> BackgroundLines | None:
    """A writer thread for a stream backed by a real fd; None for an in-memory one."""
    try:
        fd = stream.fileno()
    except (OSError, ValueError, AttributeError):
        return None
    with contextlib.suppress(OSError, ValueError):
        stream.flush()  # what was written through the stream goes out before our lines
    return BackgroundLines(fd)


class _LevelFilter:
    """Drop events below the configured level, except the contract events."""

    def __init__(self, level: int) -> None:
        self.level = level

    def __call__(
        self, _: Any, method: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        level = LEVELS.get("warning" if method == "warn" else method, logging.ERROR)
        if level < self.level and event_dict.get("event") not in CONTRACT_EVENTS:
            raise structlog.DropEvent
        return event_dict


def _order_keys(_: Any, method: str, event_dict: MutableMapping[str, Any]) -> dict[str, Any]:
    ordered: dict[str, Any] = {
        "timestamp": event_dict.pop("timestamp", None),
        "level": event_dict.pop("level", method),
        "event": event_dict.pop("event", ""),
    }
    ordered.update(event_dict)
    return ordered


def _json_default(obj: object) -> object:
    if isinstance(obj, Path):
        return os.fsdecode(obj)
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    return repr(obj)


_sink: JsonLineSink | None = None
_history: EventHistory | None = None


def keep_event_history(path: Path | None) -> None:
    """Also append every log line to ``path`` (``<state_dir>/events.jsonl``); None stops.
    Survives ``configure_logging`` (a reload of the log settings keeps the history)."""
    global _history
    old = _history
    _history = EventHistory(path) if path is not None else None
    if old is not None:
        old.close()


def configure_logging(
    level: str = "info", log_file: Path | None = None, stream: TextIO | None = None
) -> None:
    """(Re)configure the process-wide logger; the previous sink is closed."""
    global _sink
    old = _sink
    _sink = JsonLineSink(log_file, stream)
    tee = _Tee(_sink)
    structlog.configure(
        processors=[
            _LevelFilter(LEVELS.get(level, logging.INFO)),
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
            structlog.processors.format_exc_info,
            _order_keys,
            # ensure_ascii: every line stays valid ASCII JSON even for paths with
            # undecodable bytes (surrogate escapes).
            structlog.processors.JSONRenderer(
                serializer=json.dumps, default=_json_default, ensure_ascii=True
            ),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        logger_factory=lambda *_args: tee,
        cache_logger_on_first_use=False,
    )
    if old is not None:
        old.close()


def drain_logging(timeout: float = 1.0) -> None:
    """At exit: give the log's writer up to ``timeout`` s to write what it still holds
    (a reader that stalled for good must not hold up the exit)."""
    if _sink is not None:
        _sink.close(timeout)


def reset_logging() -> None:
    """Undo ``configure_logging`` (tests)."""
    global _sink
    if _sink is not None:
        _sink.close()
        _sink = None
    keep_event_history(None)
    structlog.reset_defaults()


def get_logger() -> Any:
    return structlog.get_logger()
