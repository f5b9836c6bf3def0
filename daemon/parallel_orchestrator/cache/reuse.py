"""The daemon's side of result reuse: keys per job, lookups, storing, in-flight sharing.

One ``ResultReuse`` per daemon. It keeps a ``FileDigestIndex`` per hypothesis (fed by the
watcher's changed paths), the ``ResultStore`` under ``<state_dir>/cache/`` and one future
per key whose job is running, so that four fresh worktrees of one commit start one
process and three waits.

A result is stored only when it is the result *of that key*: after the job, once the
watcher has had time to report what changed meanwhile (``SETTLE_S``), the key is
computed again; a file edited while the job ran makes it differ and nothing is stored
(a later job with the old inputs must not get a result computed partly from new ones).
Every blocking step (hashing, git, disk) runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..report.eventlog import get_logger
from .index import FileDigestIndex
from .inputkey import input_key
from .listing import IgnoreRules, ListingError
from .store import REUSABLE, CachedResult, ResultStore

CACHE_DIR = "cache"
# How long after a job ends the watcher may still be delivering changes made before the
# end (its step, at most 50 ms, plus a chunk): a key recomputed after this sees them.
SETTLE_S = 0.25


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
        self._inflight: dict[str, asyncio.Future[Hit | None]] = {}

    # -- worktrees and changes (event loop, cheap) -----------------------------------
    def set_worktrees(self, paths: Mapping[str, Path]) -> None:
        """Keep indexes of these hypotheses; a moved or removed one starts afresh."""
        for hyp in list(self._indexes):
            if paths.get(hyp) != self._indexes[hyp].root:
                del self._indexes[hyp]
        for hyp, path in paths.items():
            if hyp not in self._indexes:
                self._indexes[hyp] = FileDigestIndex(path, self.rules)

    def set_rules(self, rules: IgnoreRules, state_dir: Path) -> None:
        if rules != self.rules:
            self.rules = rules
            roots = {hyp: index.root for hyp, index in self._indexes.items()}
            self._indexes.clear()
            self.set_worktrees(roots)
        self.store.dir = state_dir / CACHE_DIR

    def changed(self, hyp: str, relpaths: set[str] | list[str]) -> None:
        index = self._indexes.get(hyp)
        if index is not None:
            index.mark_changed(relpaths)

    def invalidate(self, hyp: str | None = None) -> None:
        """Relist (a .gitignore changed in ``hyp``, or the watcher may have missed
        changes anywhere: ``hyp`` None)."""
        for name, index in self._indexes.items():
            if hyp is None or name == hyp:
                index.invalidate()

    # -- keys and lookups --------------------------------------------------------------
    async def key(self, hyp: str, script: Any) -> str | None:
        """The job's input key; None (and a warning) when its inputs cannot be known."""
        index = self._indexes.get(hyp)
        if index is None:
            return None
        try:
            view = await asyncio.to_thread(index.view_digest, tuple(script.watch))
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
        return key

    async def lookup(self, key: str) -> Hit | None:
        found = await asyncio.to_thread(self.store.get, key)
        return None if found is None else Hit(*found)

    async def share(self, key: str) -> tuple[Hit | None, bool]:
        """``(hit, leader)``: a stored result, else the result of the running job with
        this key (waited for), else ``leader`` True: the caller runs and must call
        ``settle`` or ``abandon`` for ``key``. A shared run that produced nothing
        reusable gives ``(None, False)``: the caller runs on its own."""
        running = self._inflight.get(key)
        if running is None:  # checked first: joining a running job needs no disk read
            hit = await self.lookup(key)
            if hit is not None:
                return hit, False
            running = self._inflight.get(key)
            if running is None:
                self._inflight[key] = asyncio.get_running_loop().create_future()
                return None, True
        return await asyncio.shield(running), False

    def abandon(self, key: str) -> None:
        """The leader of ``key`` ends without a reusable result: its waiters run."""
        running = self._inflight.pop(key, None)
        if running is not None and not running.done():
            running.set_result(None)

    async def settle(
        self, key: str, hyp: str, script: Any, entry: CachedResult, log_path: Path | None
    ) -> None:
        """Store ``entry`` (and hand it to waiters) if the inputs are still ``key``'s.

        Always resolves the in-flight future, also when cancelled (shutdown)."""
        hit: Hit | None = None
        try:
            if entry.result in REUSABLE:
                if self.watched:
                    await asyncio.sleep(SETTLE_S)
                else:
                    self.invalidate(hyp)
                if await self.key(hyp, script) == key:
                    log = await asyncio.to_thread(_read_log, log_path)
                    hit = Hit(entry, log)
                    try:
                        await asyncio.to_thread(self.store.put, entry, log)
                    except OSError as exc:
                        self.log.warning(
                            "cache_write_failed", path=os.fsdecode(self.store.dir), error=str(exc)
                        )
                else:
                    self.log.info(
                        "cache_not_stored",
                        hypothesis=hyp,
                        script=script.name,
                        job_id=entry.job_id,
                        reason="inputs changed while the job ran",
                    )
        finally:
            running = self._inflight.pop(key, None)
            if running is not None and not running.done():
                running.set_result(hit)

    def _entry_problem(self, path: Path, error: str) -> None:
        self.log.warning("cache_entry_unreadable", path=os.fsdecode(path), error=error)


def _read_log(path: Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def write_reused_log(path: Path, hit: Hit) -> None:
    """Give the reusing job its own run log: a copy of the original's (0600), with a first
    line saying whose it is. Raises OSError."""
    head = f"[parallel-orchestrator] cached: output of job {hit.entry.job_id}\n".encode()
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW
    fd = os.open(path, flags, 0o600)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(head + (hit.log or b""))


def rules_for(settings: Any) -> IgnoreRules:
    """The ignore rules of a ``Settings``' worktrees section."""
    w = settings.worktrees
    return IgnoreRules(globs=tuple(w.ignore), respect_gitignore=bool(w.respect_gitignore))
