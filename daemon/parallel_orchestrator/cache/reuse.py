"""The daemon's side of result reuse: keys per job, lookups, storing, in-flight sharing.

One ``ResultReuse`` per daemon (and one per ``once``). It keeps a ``FileDigestIndex`` per
hypothesis (fed by the watcher's changed paths), the ``ResultStore`` under
``<state_dir>/cache/`` and one future per key whose job is running, so that four fresh
worktrees of one commit start one process and three waits.

A result is stored only when it is the result *of that key*: no watched file of the
job's worktree may have changed between the key's computation and the job's end. The
watcher reports a change a little after it happens, so the check waits ``SETTLE_S``
after the job; then every change reported since the key must have been made after the
job ended (the next save), as far as the watcher's timestamps tell; within ``MARGIN_S``
of the end it counts as during the job. When the key computed anew is the same, only
files the key covers and changes dated ``MARGIN_S`` before the end count (the job may
write and remove git-ignored files; a touch right after the job is harmless), but a
file changed *and changed back* during the job does: the job may have read the other
content (``git stash`` + ``stash pop`` during a run). Without a watcher (``once``) the
worktree is listed again and the key must come out the same. Every blocking step
(hashing, git, disk) runs on one worker thread.
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ..report.eventlog import get_logger
from ..store.safe_open import read_regular, write_new
from .digests import DigestStopped
from .index import FileDigestIndex
from .inputkey import input_key
from .listing import IgnoreRules, ListingError
from .store import REUSABLE, CachedResult, ResultStore

T = TypeVar("T")
_LEAD_AGAIN = True  # an in-flight future's value: its leader gave up, elect another
CACHE_DIR = "cache"
# How long after a job ends the watcher may still be delivering changes made before the
# end (its step, at most 50 ms, plus a chunk and the loop's latency).
SETTLE_S = 0.25
# The watcher dates a chunk's changes from its step; a change stamped up to this long
# after the job's end may still have been made before it: counted as during the job (and
# one stamped this long before the end may have been made after it: see ``_unchanged``).
MARGIN_S = 0.05


@dataclass(frozen=True)
class JobKey:
    """A job's input key, and the index change mark its digest included."""

    value: str
    seq: int
    index: int = 0  # the serial of the FileDigestIndex that computed it


@dataclass(frozen=True)
class Hit:
    entry: CachedResult
    log: bytes | None


class ResultReuse:
    """``watched``: the daemon feeds changes through ``changed``. Without a watcher
    (``once``) the inputs are verified by listing the worktree again after the job."""

    def __init__(self, state_dir: Path, rules: IgnoreRules, *, watched: bool = True) -> None:
        self.rules = rules
        self.watched = watched
        self.log = get_logger()
        self.store = ResultStore(state_dir / CACHE_DIR, on_problem=self._entry_problem)
        self._indexes: dict[str, FileDigestIndex] = {}
        self._inflight: dict[str, asyncio.Future[Hit | bool | None]] = {}
        self._settling: set[asyncio.Task[None]] = set()
        # One worker thread of its own: hashing and git stay off the loop without growing
        # the loop's default executor (each index serialises its own work anyway).
        self._executor: ThreadPoolExecutor | None = None

    async def _blocking(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="po-cache")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # -- worktrees and changes (event loop, cheap) -----------------------------------
    def set_worktrees(self, paths: Mapping[str, Path]) -> None:
        """Keep indexes of these hypotheses; a moved or removed one starts afresh."""
        for hyp in list(self._indexes):
            if paths.get(hyp) != self._indexes[hyp].root:
                self._indexes.pop(hyp).stop.set()
        for hyp, path in paths.items():
            if hyp not in self._indexes:
                self._indexes[hyp] = FileDigestIndex(path, self.rules)

    def set_rules(self, rules: IgnoreRules, state_dir: Path) -> None:
        if rules != self.rules:
            self.rules = rules
            roots = {hyp: index.root for hyp, index in self._indexes.items()}
            self._stop_indexes()
            self.set_worktrees(roots)
        self.store.dir = state_dir / CACHE_DIR

    def changed(self, hyp: str, relpaths: set[str] | list[str], when: float | None = None) -> None:
        """Paths of ``hyp`` the watcher saw change at ``when`` (monotonic)."""
        index = self._indexes.get(hyp)
        if index is not None:
            index.mark_changed(relpaths, when)

    def invalidate(self, hyp: str | None = None) -> None:
        """Relist (a .gitignore changed in ``hyp``, or the watcher may have missed
        changes anywhere: ``hyp`` None)."""
        for name, index in self._indexes.items():
            if hyp is None or name == hyp:
                index.invalidate()

    # -- keys and lookups --------------------------------------------------------------
    async def key(self, hyp: str, script: Any) -> JobKey | None:
        """The job's input key; None (and a warning) when its inputs cannot be known."""
        index = self._indexes.get(hyp)
        if index is None:
            return None
        try:
            view = await self._blocking(index.view_digest, tuple(script.watch))
        except DigestStopped:
            return None  # shutting down, or the worktree went away
        except (ListingError, OSError) as exc:
            self.log.warning(
                "cache_key_unavailable", hypothesis=hyp, script=script.name, error=str(exc)
            )
            return None
        key = input_key(script, view)
        if key is None:
            self.log.warning(
                "cache_key_unavailable", hypothesis=hyp, script=script.name, error=view.problem
            )
            return None
        return JobKey(key, view.seq, index.serial)

    async def lookup(self, key: str) -> Hit | None:
        found = await self._blocking(self.store.get, key)
        return None if found is None else Hit(*found)

    def running(self, key: str) -> bool:
        """Whether a job with this key runs now (a job asking ``share`` would wait)."""
        return key in self._inflight

    async def share(self, key: str) -> tuple[Hit | None, bool]:
        """``(hit, leader)``: a stored result, else the result of the running job with
        this key (waited for), else ``leader`` True: the caller runs and must call
        ``settle`` or ``abandon`` for ``key``. A shared run that ended without a
        reusable result (timeout, error, inputs changed) gives ``(None, False)``: the
        caller runs on its own (one timeout each, not one after another). A leader that
        was cancelled hands the lead to one of its waiters."""
        while True:
            running = self._inflight.get(key)
            if running is None:  # checked first: joining a running job needs no disk read
                hit = await self.lookup(key)
                if hit is not None:
                    return hit, False
                running = self._inflight.get(key)
                if running is None:
                    self._inflight[key] = asyncio.get_running_loop().create_future()
                    return None, True
            outcome = await asyncio.shield(running)
            if outcome is not _LEAD_AGAIN:
                return outcome, False  # type: ignore[return-value]

    async def run_shared(
        self,
        hyp: str,
        script: Any,
        run: Callable[[], Awaitable[T]],
        entry_of: Callable[[T, str], tuple[CachedResult, Path | None]],
    ) -> T | Hit:
        """``run()``, unless a stored job or a running one with equal inputs gives its
        result (the ``Hit`` is returned then); a run's result is stored as
        ``entry_of(result, key)`` gives it: the entry and its run log."""
        key = await self.key(hyp, script)
        if key is None:
            return await run()
        hit, leader = await self.share(key.value)
        if hit is not None:
            return hit
        try:
            done = await run()
        except BaseException:
            if leader:
                self.abandon(key.value)
            raise
        entry, log_path = entry_of(done, key.value)
        await self.settle(key, hyp, script, entry, log_path)
        return done

    def abandon(self, key: str) -> None:
        """The leader of ``key`` was cancelled (or crashed) before its result: one of its
        waiters leads instead, the others wait on."""
        running = self._inflight.pop(key, None)
        if running is not None and not running.done():
            running.set_result(_LEAD_AGAIN)

    # -- storing -----------------------------------------------------------------------
    async def settle(
        self,
        key: JobKey,
        hyp: str,
        script: Any,
        entry: CachedResult,
        log_path: Path | None,
        ended: float | None = None,
    ) -> None:
        """Store ``entry`` (and hand it to waiters) if the job's inputs were ``key``'s
        until ``ended`` (monotonic; default now). Always resolves the in-flight future,
        also when cancelled (shutdown)."""
        ended = time.monotonic() if ended is None else ended
        hit: Hit | None = None
        try:
            if entry.result not in REUSABLE:
                return
            if not await self._unchanged(key, hyp, script, ended):
                self.log.info(
                    "cache_not_stored",
                    hypothesis=hyp,
                    script=script.name,
                    job_id=entry.job_id,
                    reason="inputs changed while the job ran",
                )
                return
            log = await self._blocking(_read_log, log_path)
            hit = Hit(entry, log)
            try:
                await self._blocking(self.store.put, entry, log)
            except OSError as exc:
                self.log.warning(
                    "cache_write_failed", path=os.fsdecode(self.store.dir), error=str(exc)
                )
        finally:
            running = self._inflight.pop(key.value, None)
            if running is not None and not running.done():
                running.set_result(hit)

    async def _unchanged(self, key: JobKey, hyp: str, script: Any, ended: float) -> bool:
        index = self._indexes.get(hyp)
        if index is None or index.serial != key.index:
            return False  # a new index (new ignore rules, moved worktree) lacks the marks
        if not self.watched:
            index.invalidate()
            again = await self.key(hyp, script)
            return again is not None and again.value == key.value
        await asyncio.sleep(SETTLE_S)
        again = await self.key(hyp, script)
        globs = tuple(script.watch)
        if again is not None and again.value == key.value:
            # The same content now, but a watched file changed *and changed back* during
            # the job may have been read in between. Only changes dated surely before the
            # end count here: a touch or a save of the same bytes right after the job
            # (dated up to half a watcher step early) must not cost the entry.
            changed = await self._blocking(
                functools.partial(index.changed_during, known_only=True),
                globs,
                key.seq,
                ended - MARGIN_S,
            )
            return not changed
        # Changed since: fine if every change came after the job's end (the next save).
        changed = await self._blocking(index.changed_during, globs, key.seq, ended + MARGIN_S)
        return not changed

    def settle_later(
        self,
        key: JobKey,
        hyp: str,
        script: Any,
        entry: CachedResult,
        log_path: Path | None,
        ended: float,
    ) -> None:
        """``settle`` as a task of its own: the job is over once its verdict is logged, so
        a newer change of the same cell (``on_busy = "restart"``) must not cancel the
        storing; equal jobs arriving meanwhile wait for it as for a running job."""
        task = asyncio.get_running_loop().create_task(
            self.settle(key, hyp, script, entry, log_path, ended)
        )
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def aclose(self) -> None:
        """Shutdown: cancel pending stores (their waiters get None), free the thread."""
        for task in list(self._settling):
            task.cancel()
        await asyncio.gather(*self._settling, return_exceptions=True)
        self.close()

    def close(self) -> None:
        """Let the worker thread go; a scan in progress stops at its next file (or next
        MiB of a large one): the thread is joined at interpreter exit."""
        self._stop_indexes()
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None

    def _stop_indexes(self) -> None:
        for index in self._indexes.values():
            index.stop.set()
        self._indexes.clear()

    def _entry_problem(self, path: Path, error: str) -> None:
        self.log.warning("cache_entry_unreadable", path=os.fsdecode(path), error=error)


def _read_log(path: Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        return read_regular(path)
    except OSError:
        return None


def write_reused_log(path: Path, hit: Hit) -> None:
    """Give the reusing job its own run log: a copy of the original's (0600), with a first
    line saying whose it is. Raises OSError."""
    head = f"[parallel-orchestrator] cached: output of job {hit.entry.job_id}\n".encode()
    write_new(path, head + (hit.log or b""))


def rules_for(settings: Any) -> IgnoreRules:
    """The ignore rules of a ``Settings``' worktrees section."""
    w = settings.worktrees
    return IgnoreRules(globs=tuple(w.ignore), respect_gitignore=bool(w.respect_gitignore))
