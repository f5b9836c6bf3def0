"""The daemon's hold on its state dir: trusted, locked, and still the same folder.

``prepare_state_dir`` creates the folder 0700 (it holds test output and the crash
ledger), refuses one that others could write (``store.trust``) and proves it writable.
``StateDirLock`` takes ``daemon.lock`` (flock, held until the fd closes) so a second
daemon on the same folder is refused, and keeps checking that the lock still guards the
path: after an ``rm -rf`` (or a replacement) of the state dir a flock on the deleted
inode guards nothing, and a second daemon would start, recover and kill our jobs. So
the lock's (st_dev, st_ino) is compared with the path's; on a mismatch the folder is
recreated 0700 and the lock re-taken, or, if another daemon got there first, the
daemon stops with a clear error. A state dir inside the repository that was moved or
deleted is not recreated (that would recreate the repository folder): the daemon says
so once (``state_dir_missing``) and waits; moved back, the lock it holds guards it again
(``state_dir_restored``); back as a fresh folder without it, it is recreated as above.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import OrchestratorError
from ..jobs.spec import prune_orphan_lists
from ..store.atomic import remove_stale_temps
from ..store.fence import FencedError, missing_fenced_parent
from ..store.folders import make_dirs
from ..store.safe_open import Create, open_state_file, write_new
from ..store.trust import state_dir_problems

LOCK_NAME = "daemon.lock"
CHECK_EVERY_S = 1.0
SHARED_TEMP_AGE_S = 600.0  # a temp this old in cache/ or results/ is no live write's
STATE_DIR_LOST = "state_dir_lost"  # the stop reason when another daemon took the folder
STATE_DIR_MISSING = "state_dir_missing"  # gone with the repository; waited for, not recreated


class DaemonError(OrchestratorError):
    """A reason the daemon cannot start; one line, names the thing at fault."""


def prepare_state_dir(state_dir: Path) -> None:
    """Create the state dir 0700, refuse it if others could write it, prove it writable."""
    where = f"daemon.state_dir {os.fsdecode(state_dir)}"
    try:
        make_dirs(state_dir, 0o700)
    except FencedError as exc:  # names the folder and the missing repository
        raise DaemonError(f"daemon.state_dir: {exc.strerror}") from exc
    except OSError as exc:
        raise DaemonError(f"{where}: not writable: {exc.strerror or exc}") from exc
    problems = state_dir_problems(state_dir)
    if problems:
        raise DaemonError(f"{where}: " + "; ".join(problems))
    probe = state_dir / f".probe-{os.getpid()}.tmp"  # a leftover is swept like any temp
    try:
        write_new(probe, b"")
        probe.unlink()
    except OSError as exc:
        raise DaemonError(f"{where}: not writable: {exc.strerror or exc}") from exc


def tidy_state_dir(state_dir: Path, status_file: Path) -> list[Path]:
    """What a killed daemon left half-done, removed at start-up (no writer of ours runs
    yet): temp files of interrupted atomic writes, in the state dir and the status
    file's own ones where it lives elsewhere; changed-file lists of jobs without a log."""
    removed = remove_stale_temps(state_dir)
    if status_file.parent != state_dir:
        removed += remove_stale_temps(status_file.parent, status_file.name)
    # Entries ``once`` may be writing right now: only temps no live write could own.
    for folder in [state_dir / "cache", *sorted((state_dir / "results").glob("*/"))]:
        removed += remove_stale_temps(folder, older_than_s=SHARED_TEMP_AGE_S)
    return removed + prune_orphan_lists(state_dir / "runs")


def _lock_held_message(state_dir: Path, holder: bytes, config_path: Path | None) -> str:
    """One line naming the key, the folder and both configs, so the fix is obvious."""
    lines = holder.decode("utf-8", "backslashreplace").splitlines()
    pid = lines[0].strip() if lines and lines[0].strip() else "?"
    theirs = lines[1].strip() if len(lines) > 1 and lines[1].strip() else "?"
    ours = os.fsdecode(config_path) if config_path else "the embedded default"
    return (
        f"daemon.state_dir {state_dir}: another daemon (pid {pid}, config {theirs}) "
        f"is using it; this one's config is {ours}: give each its own daemon.state_dir"
    )


def lock_state_dir(state_dir: Path, config_path: Path | None = None) -> int:
    """Take ``daemon.lock`` and write our pid and our config's path into it: what the
    next daemon's refusal names. Raises DaemonError when another daemon holds it."""
    path = state_dir / LOCK_NAME
    try:
        fd = open_state_file(path, Create.UPDATE)
    except OSError as exc:
        raise DaemonError(
            f"daemon.state_dir {state_dir}: cannot open {LOCK_NAME}: {exc.strerror or exc}"
        ) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        holder = os.pread(fd, 8192, 0)
        os.close(fd)
        raise DaemonError(_lock_held_message(state_dir, holder, config_path)) from exc
    record = f"{os.getpid()}\n{os.fsdecode(config_path) if config_path else ''}\n"
    os.ftruncate(fd, 0)
    os.pwrite(fd, record.encode("utf-8", "surrogateescape"), 0)
    return fd


def _ident(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


class StateDirLock:
    """``daemon.lock`` held for the daemon's life, and proof it still guards the path."""

    def __init__(self, state_dir: Path, config_path: Path | None) -> None:
        self.state_dir = state_dir
        self._config_path = config_path
        self._fd: int | None = None
        self._idents: tuple[tuple[int, int], tuple[int, int]] | None = None
        self._check_now: asyncio.Event | None = None  # set: ``watch`` checks at once

    def acquire(self) -> None:
        """Prepare the folder and take the lock; raises DaemonError."""
        prepare_state_dir(self.state_dir)
        fd = lock_state_dir(self.state_dir, self._config_path)
        self.release()
        self._fd = fd
        self._idents = (_ident(os.fstat(fd)), _ident(os.stat(self.state_dir)))

    def problem(self) -> str:
        """Why the lock no longer guards the state dir ("" while it does)."""
        if self._fd is None or self._idents is None:
            return ""
        try:
            lock = _ident(os.stat(self.state_dir / LOCK_NAME, follow_symlinks=False))
            folder = _ident(os.stat(self.state_dir))
        except FileNotFoundError:
            return "the state dir or its lock file was deleted"
        except OSError as exc:
            if exc.errno in (errno.ENOTDIR, errno.ELOOP):
                return f"the state dir was replaced ({exc.strerror})"
            return ""  # cannot tell (EACCES, EIO): keep the lock we have
        if (lock, folder) != self._idents:
            return "the state dir or its lock file was replaced"
        return ""

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def check_before_write(self) -> None:
        """Before a write that recovery depends on (a ledger record): if the lock no
        longer guards the folder, ``watch`` acts now rather than within a second."""
        if self._check_now is not None and self.problem():
            self._check_now.set()

    async def watch(self, log: Callable[[], Any], restored: Callable[[], None]) -> str:
        """Check every ``CHECK_EVERY_S`` (or at once, ``check_before_write``); re-take a
        lost lock (then ``restored()``). Returns only when the state dir cannot be held:
        the reason to stop."""
        self._check_now = asyncio.Event()
        waiting = False  # the state dir went with the repository: wait for it
        path = os.fsdecode(self.state_dir)
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CHECK_EVERY_S):
                    await self._check_now.wait()
            self._check_now.clear()
            problem = self.problem()
            if not problem:
                if waiting:  # moved back: the lock we hold guards it again
                    waiting = False
                    log().warning("state_dir_restored", path=path, lock=LOCK_NAME)
                    restored()
                continue
            if gone := missing_fenced_parent(self.state_dir):
                # Inside the repository, which was moved or deleted: recreating the state
                # dir would recreate the repository folder (``store.fence``). Said once.
                if not waiting:
                    waiting = True
                    log().warning(
                        STATE_DIR_MISSING, path=path, repo=os.fsdecode(gone[0]), error=problem
                    )
                continue
            waiting = False
            log().warning("state_dir_replaced", path=path, error=problem)
            try:
                self.acquire()
            except DaemonError as exc:
                log().error(STATE_DIR_LOST, path=path, error=str(exc))
                return STATE_DIR_LOST
            log().warning("state_dir_restored", path=path, lock=LOCK_NAME)
            restored()
