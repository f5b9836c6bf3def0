"""``PO_TMPDIR``: a fresh temp folder, private to one job, removed after it.

Hypotheses run the same suite at once; suites that write fixed names under ``$TMPDIR``
would collide, and a collision looks like a regression in ``compare``. So every job gets
its own folder (0700) as ``PO_TMPDIR`` and ``TMPDIR``.

The folders live under one root per daemon, made with ``mkdtemp`` in the daemon's own
temp dir (``$TMPDIR`` or /tmp: short paths, since AF_UNIX socket paths are limited to
107 bytes, and usually tmpfs). The root's path is recorded in the state dir, so the next
start removes what a crashed daemon left behind (the state dir's lock says only one
daemon uses that record).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import stat
import tempfile
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

from ..errors import OrchestratorError
from ..store.atomic import write_atomic
from ..store.safe_open import read_regular

ROOT_PREFIX = "parallel-orchestrator-"
SMALL_TREE_ENTRIES = 64  # removed on the loop up to this many entries
RECORD_NAME = "tmproot"


class TempDirError(OrchestratorError):
    """The root for the jobs' temp folders cannot be made; names the folder."""


def remove_tree(path: Path) -> None:
    """``rm -rf``, also through folders a test made read-only; raises OSError. A job
    may swap its folder for a symlink (or a file): that goes, and is never followed."""
    try:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            os.unlink(path)
            return
        shutil.rmtree(path)
    except FileNotFoundError:
        return
    except OSError:
        _make_writable(path)
        shutil.rmtree(path)


def _make_writable(path: Path) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        return
    with contextlib.suppress(OSError):
        os.chmod(path, 0o700)
    with contextlib.suppress(OSError), os.scandir(path) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                _make_writable(Path(entry.path))


def _is_small(path: Path, limit: int) -> bool:
    """Whether the tree under ``path`` has at most ``limit`` entries (stops counting there)."""
    budget = limit
    try:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            return True  # a symlink or a file: one unlink, never followed
    except OSError:
        return True
    stack = [path]
    while stack:
        try:
            with os.scandir(stack.pop()) as entries:
                for entry in entries:
                    budget -= 1
                    if budget < 0:
                        return False
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(Path(entry.path))
        except OSError:
            return False  # unreadable (a test's chmod): the thread's careful removal
    return True


async def _in_own_thread(fn: Callable[[Path], None], path: Path) -> None:
    """``fn(path)`` in a thread started for it, awaited; its exception is raised here."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def settle(error: BaseException | None) -> None:
        if not done.done():
            if error is not None:
                done.set_exception(error)
            else:
                done.set_result(None)

    def work() -> None:
        error: BaseException | None = None
        try:
            fn(path)
        except BaseException as exc:  # handed to the awaiting task, not swallowed
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody awaits
            loop.call_soon_threadsafe(settle, error)

    threading.Thread(target=work, name="po-tmpdir-remove", daemon=True).start()
    await asyncio.shield(done)


def temp_base(env: Mapping[str, str]) -> Path:
    """The daemon's own temp dir: ``$TMPDIR`` when it is an absolute folder, else /tmp."""
    raw = env.get("TMPDIR", "")
    if raw and os.path.isabs(raw) and os.path.isdir(raw):
        return Path(raw)
    return Path("/tmp")


class JobTempDirs:
    """Makes and removes the jobs' private temp folders."""

    def __init__(self, base: Path, state_dir: Path | None = None) -> None:
        """``state_dir``: where the root is recorded for crash recovery (the daemon's);
        None for ``once``, which may run beside a daemon and removes its root itself."""
        self._record = None if state_dir is None else state_dir / RECORD_NAME
        self._base = base
        self.root: Path | None = None

    def open(self) -> Path | None:
        """Remove what the previous daemon left, make a fresh root; returns the old root
        when one was removed. Raises TempDirError."""
        left = self._recorded_root() if self._record is not None else None
        if left is not None:
            with contextlib.suppress(OSError):
                remove_tree(left)
        try:
            self.root = Path(tempfile.mkdtemp(prefix=ROOT_PREFIX, dir=self._base))
            if self._record is not None:
                self._write_record(self._record, self.root)
        except OSError as exc:
            raise TempDirError(
                f"temp dir {self._base}: cannot make the jobs' temp folders: {exc.strerror or exc}"
            ) from exc
        return left

    def _recorded_root(self) -> Path | None:
        """The recorded root, if it still is a folder of ours made by ``open``."""
        assert self._record is not None
        try:
            raw = read_regular(self._record, 1 << 16).decode("utf-8").strip()
        except (OSError, UnicodeDecodeError):
            return None
        path = Path(raw)
        if not path.is_absolute() or not path.name.startswith(ROOT_PREFIX):
            return None
        try:
            st = os.lstat(path)
        except OSError:
            return None
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
            return None  # a symlink or someone else's: never follow it
        return path

    @staticmethod
    def _write_record(record: Path, root: Path) -> None:
        write_atomic(record, (os.fsdecode(root) + "\n").encode("utf-8"), mode=0o600)

    def create(self, job_id: str) -> Path:
        """A fresh 0700 folder for ``job_id``; raises OSError."""
        if self.root is None:
            raise OSError("the jobs' temp root is not open")
        path = self.root / job_id
        if os.path.lexists(path):
            remove_tree(path)
        os.mkdir(path, 0o700)
        os.chmod(path, 0o700)  # exactly, whatever the umask
        return path

    async def remove(self, path: Path) -> None:
        """Remove a job's folder; raises OSError.

        A folder of a few entries (most jobs) goes at once, on the loop: a handful of
        unlinks. A bigger one (it may hold gigabytes) goes in a short-lived thread of its
        own, not asyncio's default pool, which would keep up to CPUs + 4 idle workers.
        """
        if _is_small(path, SMALL_TREE_ENTRIES):
            remove_tree(path)
        else:
            await _in_own_thread(remove_tree, path)

    async def close(self) -> None:
        """Shutdown: the root and its record go."""
        if self.root is None:
            return
        root, self.root = self.root, None
        await _in_own_thread(remove_tree, root)
        if self._record is not None:
            with contextlib.suppress(OSError):
                self._record.unlink()
