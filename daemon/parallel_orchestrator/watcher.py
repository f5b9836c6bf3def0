"""One watchfiles ``RustNotify`` over every worktree, in a thread, feeding the event loop.

Why not ``awatch``: its loop hands each wait to a worker thread and, more to the point,
conflates two clocks we want apart. RustNotify's ``step`` is both how often the idle
watcher wakes up (CPU) and the quiet time that ends a chunk (latency). We keep ``step``
short enough for fast reaction, let the watcher return small chunks, stamp each chunk
with the estimated time its changes happened, and leave the real debounce to the
``Batcher``, which runs on loop timers and costs nothing while idle. See
docs/latency.md for the figures behind the chosen step.

RustNotify's errors are sticky: once it fails (watchfiles 1.3 cannot decode a non-UTF-8
file name and reports it on every later call) the instance is useless. We then build a
new one, report ``watcher_restarted``, and recover the offending path from the error
text so that change is not lost.
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from watchfiles._rust_notify import RustNotify, WatchfilesRustInternalError

# How long one RustNotify.watch call may block when nothing happens: bounds how late the
# thread notices a stop or re-arm request. Costs nothing: it is a timeout, not a poll.
IDLE_TIMEOUT_MS = 500
MAX_STEP_MS = 50


def step_for(debounce_ms: int, env: dict[str, str] | None = None) -> int:
    """Watcher step: explicit env override > derived from debounce_ms.

    Our batcher dates a chunk's changes at ``return - 1.5 * step`` (the middle of the
    step in which they were first seen), so it needs ``1.5 * step <= debounce`` to close
    a batch on time; a shorter step only burns idle CPU (measured in docs/latency.md).
    """
    source = os.environ if env is None else env
    raw = source.get("PO_WATCH_STEP_MS", "")
    if raw.strip().isdigit() and int(raw) > 0:
        return int(raw)
    return max(1, min(MAX_STEP_MS, int(debounce_ms / 1.5)))


@dataclass(frozen=True)
class Chunk:
    """Changes returned by one watch call; times are ``time.monotonic()`` estimates."""

    changes: set[tuple[int, str]]
    first: float
    last: float


_DECODE_RE = re.compile(r'Unable to decode path "(?P<path>(?:[^"\\]|\\.)*)"')


def _unescape_rust_debug(text: str) -> bytes:
    """Invert Rust's ``{:?}`` of an OsStr: ``\\xNN`` bytes, ``\\u{...}``, ``\\n`` ..."""
    out = bytearray()
    i = 0
    simple = {"n": b"\n", "t": b"\t", "r": b"\r", "0": b"\0", "\\": b"\\", '"': b'"', "'": b"'"}
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            if nxt == "x" and i + 3 < len(text):
                out.append(int(text[i + 2 : i + 4], 16))
                i += 4
                continue
            if nxt == "u" and text[i + 2 : i + 3] == "{":
                end = text.index("}", i)
                out += chr(int(text[i + 3 : end], 16)).encode("utf-8")
                i = end + 1
                continue
            if nxt in simple:
                out += simple[nxt]
                i += 2
                continue
        out += c.encode("utf-8")
        i += 1
    return bytes(out)


def undecodable_path(error: str) -> str | None:
    """The path named by watchfiles' decode error, as ``os.fsdecode`` would give it."""
    m = _DECODE_RE.search(error)
    if not m:
        return None
    try:
        return os.fsdecode(_unescape_rust_debug(m.group("path")))
    except (ValueError, IndexError):
        return None


class Watcher:
    """Runs the watch loop in a daemon thread; delivers chunks with ``call_soon_threadsafe``."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        on_chunk: Callable[[Chunk], None],
        on_restart: Callable[[str], None],
        step_ms: int,
        chunk_ms: int | None = None,
    ) -> None:
        self._loop = loop
        self._on_chunk = on_chunk
        self._on_restart = on_restart
        self.step_ms = step_ms
        self.chunk_ms = chunk_ms or max(4 * step_ms, 20)
        self._paths: tuple[str, ...] = ()
        self._generation = 0
        self._stop = threading.Event()
        self._armed = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def set_paths(self, paths: Sequence[str]) -> bool:
        """Watch exactly these paths from now on (a re-arm if they differ)."""
        new = tuple(sorted(set(paths)))
        with self._lock:
            if new == self._paths:
                return False
            self._paths = new
            self._generation += 1
            self._armed.clear()
        return True

    def set_step(self, step_ms: int) -> None:
        with self._lock:
            self.step_ms = step_ms
            self.chunk_ms = max(4 * step_ms, 20)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="po-watcher", daemon=True)
        self._thread.start()

    async def wait_armed(self, timeout: float) -> bool:
        """True once the current path set is being watched (READY=1 waits for this)."""
        return await asyncio.to_thread(self._armed.wait, timeout)

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    # -- thread side --------------------------------------------------------------------
    def _post(self, fn: Callable[..., None], *args: object) -> None:
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:
            self._stop.set()  # the loop is closed: we are shutting down

    def _arm(self, paths: tuple[str, ...]) -> RustNotify | None:
        existing = [p for p in paths if os.path.exists(p)]
        if not existing:
            return None
        return RustNotify(existing, False, False, 50, True, True)

    def _run(self) -> None:
        notify: RustNotify | None = None
        armed_for: tuple[int, int] | None = None  # (generation, step) notify was built for
        failed_at: float | None = None  # wall time of the last watcher failure
        failure = ""
        backoff = 0.05
        try:
            while not self._stop.is_set():
                with self._lock:
                    generation, paths = self._generation, self._paths
                    step, chunk = self.step_ms, self.chunk_ms
                if notify is None or armed_for != (generation, step):
                    try:
                        fresh = self._arm(paths)
                    except (OSError, WatchfilesRustInternalError) as exc:
                        failure = f"cannot arm watcher: {exc}"
                        failed_at = failed_at or time.time()
                        self._stop.wait(backoff)
                        backoff = min(backoff * 2, 2.0)
                        continue
                    if notify is not None:
                        # A plain re-arm: the old watcher ran until the new one was armed;
                        # drain what it saw in between, so nothing falls into the gap.
                        self._drain(notify)
                        notify.close()
                    notify, armed_for, backoff = fresh, (generation, step), 0.05
                    self._armed.set()
                    if failed_at is not None:
                        # Re-armed after a failure: report it only now (whoever reacts to
                        # it can rely on the watch being back) and recover what changed
                        # while no watcher was working.
                        self._post(self._on_restart, failure)
                        recovered = changed_since(paths, failed_at - 1.0)
                        if recovered:
                            now = time.monotonic()
                            self._post(self._on_chunk, Chunk(recovered, now, now))
                        failed_at = None
                if notify is None:  # nothing to watch yet
                    self._stop.wait(IDLE_TIMEOUT_MS / 1000)
                    continue
                reason = self._watch_once(notify, step, chunk)
                if reason is not None:
                    failure, failed_at = reason, time.time()
                    notify.close()
                    notify = None
        finally:
            if notify is not None:
                notify.close()

    def _drain(self, notify: RustNotify) -> None:
        try:
            result = notify.watch(1, 1, 1, None)
        except (WatchfilesRustInternalError, RuntimeError):
            return
        if isinstance(result, set) and result:
            now = time.monotonic()
            self._post(self._on_chunk, Chunk(result, now, now))

    def _watch_once(self, notify: RustNotify, step: int, chunk: int) -> str | None:
        """One watch call; returns a failure reason when the watcher must be rebuilt."""
        try:
            result = notify.watch(chunk, step, IDLE_TIMEOUT_MS, None)
        except WatchfilesRustInternalError as exc:
            now = time.monotonic()
            path = undecodable_path(str(exc))
            if path is not None:
                self._post(self._on_chunk, Chunk({(2, path)}, now, now))
            return f"{type(exc).__name__}: {exc}"
        except RuntimeError as exc:  # e.g. "RustNotify watcher closed"
            return f"{type(exc).__name__}: {exc}"
        if isinstance(result, set):
            now = time.monotonic()
            # RustNotify returns after one quiet step, so the last change happened in
            # the step before that: date it at that step's middle. Dating the first
            # change the same errs by at most ``chunk`` ms on max_batch_wait, harmless.
            last = now - 1.5 * step / 1000
            self._post(self._on_chunk, Chunk(expand_new_dirs(result), last, last))
        return None


# inotify only watches a new folder once it has seen it created: files written into it
# before that are never reported (``mkdir -p a/b && touch a/b/c``, a checkout creating a
# package). So a created folder is listed and its contents count as created too.
MAX_EXPANDED = 10_000


def expand_new_dirs(changes: set[tuple[int, str]]) -> set[tuple[int, str]]:
    out = set(changes)
    budget = MAX_EXPANDED
    for change, path in changes:
        if change != 1 or budget <= 0 or not os.path.isdir(path) or os.path.islink(path):
            continue
        for root, dirs, files in os.walk(path):
            dirs[:] = [d for d in dirs if d != ".git"]
            for name in files:
                out.add((1, os.path.join(root, name)))
                budget -= 1
            if budget <= 0:
                break
    return out


def changed_since(roots: Sequence[str], since: float, limit: int = 200_000) -> set[tuple[int, str]]:
    """Files under ``roots`` modified or renamed (ctime) after ``since`` (wall clock).

    Only used after a watcher failure, to recover what changed while nothing watched;
    deletions in that gap cannot be recovered this way.
    """
    found: set[tuple[int, str]] = set()
    seen = 0
    for root in roots:
        for folder, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if d != ".git"]
            for name in files:
                seen += 1
                full = os.path.join(folder, name)
                try:
                    st = os.lstat(full)
                except OSError:
                    continue
                if max(st.st_mtime, st.st_ctime) >= since:
                    found.add((2, full))
            if seen >= limit:
                return found
    return found
