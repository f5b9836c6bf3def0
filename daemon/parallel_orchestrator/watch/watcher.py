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
text so that change is not lost. The root that held the path is then stat-polled for a
hold-down that doubles on each repeat: watchfiles also fails on mere reads of such a
name and right after every re-arm while a folder so named exists, so re-arming alone
would spin. Roots whose own name is not UTF-8 are always polled (see docs/reliability.md).
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
        # Thread side only. Roots watched by stat polling instead of inotify: those whose
        # own name is not UTF-8 (RustNotify cannot take them), and those "demoted" after a
        # decode error inside them, until their hold-down (monotonic) ends.
        self._pollers: dict[str, _Poller] = {}
        self._demoted: dict[str, float] = {}
        self._strikes: dict[str, int] = {}

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
        # watchfiles takes roots as UTF-8 strings: a worktree folder whose name is not
        # UTF-8 would make RustNotify raise (and, unhandled, end this thread). Such roots,
        # and roots demoted after a decode error, are stat-polled; the rest use inotify.
        polled = {p for p in existing if not _is_utf8(p) or p in self._demoted}
        for root in list(self._pollers):
            if root not in polled:  # back to inotify: report what the last poll missed
                changes = self._pollers.pop(root).poll()
                if changes:
                    now = time.monotonic()
                    self._post(self._on_chunk, Chunk(changes, now, now))
        for root in polled:
            if root not in self._pollers:
                self._pollers[root] = _Poller(root)
        watchable = [p for p in existing if p not in polled]
        if not watchable:
            return None
        return RustNotify(watchable, False, False, 50, True, True)

    def _active_demotions(self) -> frozenset[str]:
        """Demoted roots whose hold-down still runs; an expired one gets inotify again."""
        now = time.monotonic()
        for root, until in list(self._demoted.items()):
            if until <= now:
                del self._demoted[root]
        return frozenset(self._demoted)

    def _demote(self, path: str, paths: tuple[str, ...]) -> str:
        """Poll the root holding ``path`` (undecodable) for a while; returns what we did.

        watchfiles fails on *every* event naming such a path — reads included — and on
        every re-arm while a folder with such a name exists, so re-arming alone would spin
        (and a job reading the file would retrigger itself forever). The hold-down doubles
        with each strike, so a name that stays only costs a log line now and then.
        """
        root = max(
            (r for r in paths if path == r or path.startswith(r.rstrip("/") + "/")),
            key=len,
            default=None,
        )
        if root is None:
            return ""
        strikes = self._strikes[root] = self._strikes.get(root, 0) + 1
        hold = min(DEMOTE_MAX_S, DEMOTE_MIN_S * 2 ** (strikes - 1))
        self._demoted[root] = time.monotonic() + hold
        return f"; polling {root} for {hold:g} s"

    def _poll(self) -> None:
        """Report what changed in the polled roots, for each whose poll is due."""
        now = time.monotonic()
        changes: set[tuple[int, str]] = set()
        for poller in self._pollers.values():
            if now >= poller.due:
                changes |= poller.poll()
        if changes:
            now = time.monotonic()
            self._post(self._on_chunk, Chunk(changes, now, now))

    def _run(self) -> None:
        notify: RustNotify | None = None
        # (generation, step, demoted roots) the current notify was built for
        armed_for: tuple[int, int, frozenset[str]] | None = None
        failed_at: float | None = None  # wall time of the last watcher failure
        armed_at = 0.0  # monotonic time of the last (re-)arm
        failure = ""
        backoff = 0.05
        try:
            while not self._stop.is_set():
                with self._lock:
                    generation, paths = self._generation, self._paths
                    step, chunk = self.step_ms, self.chunk_ms
                key = (generation, step, self._active_demotions())
                if notify is None or armed_for != key:
                    try:
                        fresh = self._arm(paths)
                    except (OSError, RuntimeError, ValueError) as exc:
                        # RuntimeError covers WatchfilesRustInternalError; ValueError a
                        # path RustNotify cannot take. Retried: never end the thread.
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
                    notify, armed_for = fresh, key
                    armed_at = time.monotonic()
                    with self._lock:
                        # Only for the paths asked for now: a set_paths that came in
                        # while this arm ran still waits for the next one.
                        if self._generation == generation:
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
                self._poll()
                if notify is None:  # nothing (or nothing but polled roots) to watch
                    self._stop.wait((POLL_MIN_MS if self._pollers else IDLE_TIMEOUT_MS) / 1000)
                    continue
                reason, bad_path = self._watch_once(notify, step, chunk)
                if reason is None:
                    if time.monotonic() - armed_at > 1.0:
                        backoff = 0.05  # the watch held: the next failure is a new one
                    continue
                if bad_path is not None:
                    reason += self._demote(bad_path, paths)
                failure, failed_at = reason, time.time()
                notify.close()
                notify = None
                if time.monotonic() - armed_at < 1.0:
                    # Failed right after arming: back off rather than spin on re-arms.
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, 2.0)
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

    def _watch_once(
        self, notify: RustNotify, step: int, chunk: int
    ) -> tuple[str | None, str | None]:
        """One watch call; returns (failure reason, undecodable path) when the watcher
        must be rebuilt, (None, None) when it keeps going."""
        try:
            result = notify.watch(chunk, step, IDLE_TIMEOUT_MS, None)
        except WatchfilesRustInternalError as exc:
            now = time.monotonic()
            path = undecodable_path(str(exc))
            if path is not None:
                self._post(self._on_chunk, Chunk({(2, path)}, now, now))
            return f"{type(exc).__name__}: {exc}", path
        except RuntimeError as exc:  # e.g. "RustNotify watcher closed"
            return f"{type(exc).__name__}: {exc}", None
        if isinstance(result, set):
            now = time.monotonic()
            # RustNotify returns after one quiet step, so the last change happened in
            # the step before that: date it at that step's middle. Dating the first
            # change the same errs by at most ``chunk`` ms on max_batch_wait, harmless.
            last = now - 1.5 * step / 1000
            self._post(self._on_chunk, Chunk(expand_new_dirs(result), last, last))
        return None, None


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


def _is_utf8(path: str) -> bool:
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:  # surrogate escapes: the name on disk is not UTF-8
        return False
    return True


# Polled roots are rescanned (a stat walk) every POLL_MIN_MS, or 20x the last scan's time
# if longer: a big tree polled costs at most ~5% of a core. Polling is the fallback for
# the rare root inotify-through-watchfiles cannot serve, not a general method.
POLL_MIN_MS = 500
MAX_POLLED_FILES = 200_000
DEMOTE_MIN_S = 5.0
DEMOTE_MAX_S = 600.0


class _Poller:
    """Change detection for one root by comparing stat snapshots (added, modified, deleted)."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.due = 0.0
        self.snapshot = self._scan()

    def _scan(self) -> dict[str, tuple[int, int, int]]:
        started = time.monotonic()
        snap: dict[str, tuple[int, int, int]] = {}
        for folder, dirs, files in os.walk(self.root):
            dirs[:] = [d for d in dirs if d != ".git"]
            for name in files:
                full = os.path.join(folder, name)
                try:
                    st = os.lstat(full)
                except OSError:
                    continue
                snap[full] = (st.st_mtime_ns, st.st_ctime_ns, st.st_size)
            if len(snap) >= MAX_POLLED_FILES:
                break
        took = time.monotonic() - started
        self.due = time.monotonic() + max(POLL_MIN_MS / 1000, 20 * took)
        return snap

    def poll(self) -> set[tuple[int, str]]:
        new = self._scan()
        old, self.snapshot = self.snapshot, new
        changes = {(1 if p not in old else 2, p) for p, sig in new.items() if old.get(p) != sig}
        changes |= {(3, p) for p in old.keys() - new.keys()}
        return changes


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
