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
text (``rusterrors``) so that change is not lost. The root that held the path is then
stat-polled for a hold-down that doubles on each repeat, and roots whose own name is not
UTF-8 are always polled (``polling``; see docs/reliability.md). A root it cannot read
is left out of the arm and taken in once readable (``hiddenroots``). Chunks and their
``watchfiles.Change`` values are defined in ``chunk``.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from watchfiles import Change
from watchfiles._rust_notify import RustNotify, WatchfilesRustInternalError

from .chunk import Changes, Chunk, changes_from_rust
from .hiddenroots import HiddenRoots
from .polling import POLL_MIN_MS, PollFallback, changed_since
from .rusterrors import undecodable_path

# Names other modules import from here (the watcher is the package's watching API).
__all__ = ["Chunk", "Watcher", "expand_new_dirs", "step_for", "undecodable_path"]

# How long one RustNotify.watch call may block when nothing happens: bounds how late the
# thread notices a stop or re-arm request. Costs nothing: it is a timeout, not a poll.
IDLE_TIMEOUT_MS = 500
BIG_CHUNK = 16  # changes in one chunk: more than a save makes, likely part of a stream
MAX_STEP_MS = 50
# RustNotify's own poll delay: only used by its polling mode, which we never ask for.
RUST_POLL_DELAY_MS = 50
# After a failure right after arming, wait this long before re-arming, doubling up to
# BACKOFF_MAX_S; a watch that held HEALTHY_AFTER_S after arming resets it.
BACKOFF_MIN_S = 0.05
BACKOFF_MAX_S = 2.0
HEALTHY_AFTER_S = 1.0
# After a failure, files changed since (failure time - this) are reported as modified:
# mtimes are coarser than our clock.
RECOVERY_SLACK_S = 1.0
# The same for a root a permission hid: the moment it was found hidden is known to the
# millisecond, so only the kernel's coarse timestamp clock needs a margin.
HIDDEN_SLACK_S = 0.1
# inotify only watches a new folder once it has seen it created: files written into it
# before that are never reported (``mkdir -p a/b && touch a/b/c``, a checkout creating a
# package). So a created folder is listed and its contents count as created too, up to
# this many files per chunk.
MAX_EXPANDED = 10_000


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


def expand_new_dirs(changes: Changes) -> Changes:
    """``changes`` plus every file inside a folder it reports as created (see MAX_EXPANDED)."""
    out = set(changes)
    budget = MAX_EXPANDED
    for change, path in changes:
        if change != Change.added or budget <= 0:
            continue
        if not os.path.isdir(path) or os.path.islink(path):
            continue
        for root, dirs, files in os.walk(path):
            dirs[:] = [d for d in dirs if d != ".git"]
            for name in files:
                out.add((Change.added, os.path.join(root, name)))
                budget -= 1
            if budget <= 0:
                break
    return out


def _may_exist(path: str) -> bool:
    """Not known to be gone: a root behind a folder we cannot search is kept for
    ``HiddenRoots`` to hold (``os.path.exists`` says False to both)."""
    try:
        os.stat(path)
    except PermissionError:
        return True
    except (OSError, ValueError):
        return False
    return True


@dataclass
class _WatchState:
    """The watch thread's state from one watch call to the next."""

    notify: RustNotify | None = None
    # (generation, step, demoted roots) the current notify was built for
    armed_for: tuple[int, int, frozenset[str]] | None = None
    armed_at: float = 0.0  # monotonic time of the last (re-)arm
    failure: str = ""  # why the last watcher failed
    failed_at: float | None = None  # wall time of that failure, until the re-arm reports it
    backoff: float = BACKOFF_MIN_S


class Watcher:
    """Runs the watch loop in a daemon thread; delivers chunks with ``call_soon_threadsafe``."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        on_chunk: Callable[[Chunk], None],
        on_restart: Callable[[str], None],
        step_ms: int,
        chunk_ms: int | None = None,
        on_unwatchable: Callable[[str, str], None] | None = None,
    ) -> None:
        """``on_restart(reason)``: re-armed after changes may have been missed;
        ``on_unwatchable(root, why)``: a root cannot be read, so it is not watched until
        it can (then ``on_restart`` says so and what changed there is recovered)."""
        self._loop = loop
        self._on_chunk = on_chunk
        self._on_restart = on_restart
        self._on_unwatchable = on_unwatchable
        self.step_ms = step_ms
        self.chunk_ms = chunk_ms or max(4 * step_ms, 20)
        self._paths: tuple[str, ...] = ()
        self._generation = 0
        self._stop = threading.Event()
        self._armed = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        # Thread side only: roots watched by stat polling instead of inotify.
        self._fallback = PollFallback()
        self._hidden = HiddenRoots()
        self._in_stream = False  # the last chunk was cut while changes kept coming

    def set_paths(self, paths: Sequence[str]) -> bool:
        """Watch these paths from now on; True when that takes a re-arm (a path is new).

        Fewer paths are no re-arm: the armed watcher already covers the rest, and what it
        still reports from a dropped root (usually deleted) is nobody's change. A re-arm
        there would be worse than useless: the old watcher runs until the new one is
        armed, so an edit made meanwhile is seen by both and reported twice, a moment
        apart: two batches, and the first run restarted (cancelled) by the second.
        """
        new = tuple(sorted(set(paths)))
        with self._lock:
            if new == self._paths:
                return False
            grows = not set(new) <= set(self._paths)
            self._paths = new
            if not grows:
                return False
            self._next_generation()
        return True

    def rearm(self) -> None:
        """Build the watch anew for the same paths (``wait_armed`` tells when it is).

        inotify watches a folder, not a path: a repository deleted and cloned again at
        the same path (or a worktree folder replaced) is not watched by the old arm at all.
        """
        with self._lock:
            self._next_generation()

    def _next_generation(self) -> None:
        """Ask the thread for a new arm (under ``_lock``); ``wait_armed`` waits for it."""
        self._generation += 1
        if not self._stop.is_set():  # stopped: nothing will arm, nobody may wait
            self._armed.clear()

    def set_step(self, step_ms: int) -> None:
        with self._lock:
            self.step_ms = step_ms
            self.chunk_ms = max(4 * step_ms, 20)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="po-watcher", daemon=True)
        self._thread.start()

    async def wait_armed(self, timeout: float) -> bool:
        """True once the current path set is being watched (READY=1 waits for this);
        False at once when the watcher stopped (the waiting thread would otherwise hold
        the process's exit: asyncio.run waits for its executor threads)."""
        armed = await asyncio.to_thread(self._armed.wait, timeout)
        return armed and not self._stop.is_set()

    def stop(self, timeout: float = 2.0) -> None:
        with self._lock:
            self._stop.set()
            self._armed.set()  # wakes whoever waits for an arm that will never come
        if self._thread is not None:
            self._thread.join(timeout)

    # -- thread side --------------------------------------------------------------------
    def _post(self, fn: Callable[..., None], *args: object) -> None:
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:
            self._stop.set()  # the loop is closed: we are shutting down

    def _post_changes(self, changes: Changes) -> None:
        """Deliver changes seen just now (polled, drained or recovered: not dated)."""
        now = time.monotonic()
        self._post(self._on_chunk, Chunk(changes, now, now))

    def _run(self) -> None:
        state = _WatchState()
        try:
            while not self._stop.is_set():
                with self._lock:
                    generation, paths = self._generation, self._paths
                    step, chunk = self.step_ms, self.chunk_ms
                self._fallback.retain(paths)
                key = (generation, step, self._fallback.active_demotions())
                if self._hidden.any_revealed():
                    state.armed_for = None  # a hidden root can be read now: take it in
                if (state.notify is None or state.armed_for != key) and not self._rearm(
                    state, key, paths
                ):
                    continue
                self._poll()
                if state.notify is None:  # nothing (or nothing but polled roots) to watch
                    idle_ms = POLL_MIN_MS if self._fallback.polling else IDLE_TIMEOUT_MS
                    self._stop.wait(idle_ms / 1000)
                    continue
                self._watch_step(state, paths, step, chunk)
        finally:
            if state.notify is not None:
                state.notify.close()

    def _rearm(
        self, state: _WatchState, key: tuple[int, int, frozenset[str]], paths: tuple[str, ...]
    ) -> bool:
        """Build the watcher for ``key``; False (after a back-off) when that failed."""
        try:
            fresh = self._arm(paths)
        except (OSError, RuntimeError, ValueError) as exc:
            # RuntimeError covers WatchfilesRustInternalError; ValueError a path
            # RustNotify cannot take. Retried: never end the thread.
            state.failure = f"cannot arm watcher: {exc}"
            state.failed_at = state.failed_at or time.time()
            self._back_off(state)
            return False
        if state.notify is not None:
            # A plain re-arm: the old watcher ran until the new one was armed; drain what
            # it saw in between, so nothing falls into the gap.
            self._drain(state.notify)
            state.notify.close()
        state.notify, state.armed_for = fresh, key
        state.armed_at = time.monotonic()
        with self._lock:
            # Only for the paths asked for now: a set_paths that came in while this arm
            # ran still waits for the next one.
            if self._generation == key[0]:
                self._armed.set()
        if state.failed_at is not None:
            # Re-armed after a failure: report it only now (whoever reacts to it can rely
            # on the watch being back) and recover what changed while no watcher worked.
            self._post(self._on_restart, state.failure)
            recovered = changed_since(paths, state.failed_at - RECOVERY_SLACK_S)
            if recovered:
                self._post_changes(recovered)
            state.failed_at = None
        self._recover_revealed()
        return True

    def _recover_revealed(self) -> None:
        """Roots just armed again after a permission hid them: say so, and report the
        files changed there since they were hidden (nothing watched them meanwhile)."""
        for root, since in self._hidden.take().items():
            self._post(self._on_restart, f"{root}: readable again, watched again")
            # The root itself as changed: the daemon lists the worktrees again (it may be
            # a file or a link now, not the folder that was hidden).
            recovered = changed_since([root], since - HIDDEN_SLACK_S)
            self._post_changes({*recovered, (Change.modified, root)})

    def _back_off(self, state: _WatchState) -> None:
        self._stop.wait(state.backoff)
        state.backoff = min(state.backoff * 2, BACKOFF_MAX_S)

    def _arm(self, paths: tuple[str, ...]) -> RustNotify | None:
        existing = [p for p in paths if _may_exist(p)]
        # A hidden root found gone (probed as readable, then missing): nothing watched it,
        # so nobody saw it go; said as its deletion, which makes the daemon rediscover.
        gone = [p for p in paths if p in self._hidden.hidden and p not in existing]
        if gone:
            self._post_changes({(Change.deleted, p) for p in gone})
        # watchfiles takes roots as UTF-8 strings: a worktree folder whose name is not
        # UTF-8 would make RustNotify raise (and, unhandled, end this thread). Such roots,
        # and roots demoted after a decode error, are stat-polled; the rest use inotify.
        watchable, released = self._fallback.assign(existing)
        for changes in released:  # back to inotify: report what the last poll missed
            self._post_changes(changes)
        watchable, hidden = self._hidden.visible(watchable)
        for root, why in hidden:
            if self._on_unwatchable is not None:
                self._post(self._on_unwatchable, root, why)
        if not watchable:
            return None
        return RustNotify(watchable, False, False, RUST_POLL_DELAY_MS, True, True)

    def _poll(self) -> None:
        """Report what changed in the polled roots, for each whose poll is due."""
        changes = self._fallback.poll_due()
        if changes:
            self._post_changes(changes)

    def _watch_step(
        self, state: _WatchState, paths: tuple[str, ...], step: int, chunk: int
    ) -> None:
        """One watch call on ``state.notify``; on failure it is closed and dropped."""
        assert state.notify is not None
        reason, bad_path = self._watch_once(state.notify, step, chunk)
        if reason is None:
            if time.monotonic() - state.armed_at > HEALTHY_AFTER_S:
                state.backoff = BACKOFF_MIN_S  # the watch held: the next failure is a new one
            return
        if bad_path is not None:
            reason += self._fallback.demote(bad_path, paths)
        state.failure, state.failed_at = reason, time.time()
        state.notify.close()
        state.notify = None
        if time.monotonic() - state.armed_at < HEALTHY_AFTER_S:
            # Failed right after arming: back off rather than spin on re-arms.
            self._back_off(state)

    def _drain(self, notify: RustNotify) -> None:
        try:
            result = notify.watch(1, 1, 1, None)
        except (WatchfilesRustInternalError, RuntimeError):
            return
        if isinstance(result, set) and result:
            self._post_changes(changes_from_rust(result))

    def _watch_once(
        self, notify: RustNotify, step: int, chunk: int
    ) -> tuple[str | None, str | None]:
        """One watch call; returns (failure reason, undecodable path) when the watcher
        must be rebuilt, (None, None) when it keeps going."""
        # Inside a stream, a quiet of two steps ends it (and the batch may close).
        timeout = 2 * step if self._in_stream else IDLE_TIMEOUT_MS
        try:
            result = notify.watch(chunk, step, timeout, None)
        except WatchfilesRustInternalError as exc:
            path = undecodable_path(str(exc))
            if path is not None:
                self._post_changes({(Change.modified, path)})
            return f"{type(exc).__name__}: {exc}", path
        except RuntimeError as exc:  # e.g. "RustNotify watcher closed"
            return f"{type(exc).__name__}: {exc}", None
        if isinstance(result, set):
            now = time.monotonic()
            # More changes coming right after means the call was cut mid-stream (after
            # ``chunk`` ms), not ended by a quiet step. A big chunk waits a step for them
            # (a writer may pause a moment); a small one (a save) looks without waiting.
            # Once in a stream, only a quiet call ends it (below).
            more = self._waiting_now(notify, step if len(result) >= BIG_CHUNK else 1)
            streaming = bool(more) or self._in_stream
            # RustNotify returns after one quiet step, so the last change happened in
            # the step before that: date it at that step's middle. Dating the first
            # change the same errs by at most ``chunk`` ms on max_batch_wait, harmless.
            # A stream's chunks are dated when seen: the quiet that closes the batch
            # is then counted from the stream's real end.
            last = now if streaming else now - 1.5 * step / 1000
            self._in_stream = streaming
            changes = expand_new_dirs(changes_from_rust(result | more))
            self._post(self._on_chunk, Chunk(changes, last, last, streaming))
        elif self._in_stream:  # a quiet call after a stream: it is over
            self._in_stream = False
            now = time.monotonic()
            self._post(self._on_chunk, Chunk(set(), now, now))
        return None, None

    @staticmethod
    def _waiting_now(notify: RustNotify, window_ms: int) -> set[tuple[int, str]]:
        """Changes collected since the last call or arriving within ``window_ms``."""
        try:
            more = notify.watch(window_ms, window_ms, window_ms, None)
        except (WatchfilesRustInternalError, RuntimeError):
            return set()  # the next real call reports the failure
        return more if isinstance(more, set) else set()
