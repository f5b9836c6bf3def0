"""The one atomic file writer: readers see the old file or the new one, never a part.

A temp file in the same folder (so the rename stays on one filesystem), created with
``O_CREAT|O_EXCL|O_NOFOLLOW`` so neither a leftover nor a planted symlink is ever
written through; the data, ``fsync``, ``rename`` over the target, ``fsync`` of the
folder so the rename itself survives a power loss. Missing folders are created with
exactly the mode asked for (``make_dirs``), whatever the umask.

Temp names are ``.<name>.<random>.tmp``: a reader sweeping for interrupted writes (the
crash ledger) can find them by that pattern.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from pathlib import Path

from .folders import make_dirs
from .safe_open import Create, open_state_file

_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
_TEMP_SUFFIX = ".tmp"


def temp_name(path: Path) -> Path:
    """A fresh temp path beside ``path`` (``.<name>.<random>.tmp``)."""
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}{_TEMP_SUFFIX}")


def remove_stale_temps(
    folder: Path, name: str | None = None, *, older_than_s: float = 0.0
) -> list[Path]:
    """Remove temp files an interrupted ``write_atomic`` left in ``folder`` (kill -9
    between create and rename): those of target ``name``, or every one when None.

    At start-up, when no writer of ours is mid-write; where another process may write
    (``once`` stores cache entries), only temps older than ``older_than_s``.
    Returns what was removed.
    """
    prefix = "." if name is None else f".{name}."
    cutoff = time.time() - older_than_s
    removed = []
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return []
    for entry in entries:
        if entry.name.startswith(prefix) and entry.name.endswith(_TEMP_SUFFIX):
            if entry.is_dir(follow_symlinks=False):
                continue
            if older_than_s and entry.stat(follow_symlinks=False).st_mtime > cutoff:
                continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


def write_atomic(
    path: Path,
    data: bytes,
    *,
    mode: int = 0o600,
    dir_mode: int | None = None,
    exact_mode: bool = True,
    durable: bool = True,
    exclusive: bool = False,
) -> None:
    """Write ``data`` as the whole content of ``path``.

    ``mode``: the file's permission bits; with ``exact_mode`` they are set whatever the
    umask, without it the umask applies as for ``open(2)``. ``dir_mode``: create missing
    folders with this mode (None: the folder must exist). ``durable=False`` skips both
    fsyncs, for records that need only survive the process (the page cache does), not a
    power loss, and are written where a disk flush would stall the event loop.
    ``exclusive``: create ``path`` itself, failing with ``FileExistsError`` if it exists;
    the exclusive create is the existence check, so nothing appearing meanwhile is ever
    overwritten (a half-written file is removed on failure).

    OSError propagates unchanged; no temp file is left behind.
    """
    if dir_mode is not None:
        make_dirs(path.parent, dir_mode)
    if exclusive:
        fd = _create(path, mode, exact_mode)
        _fill(fd, path, data, mode, exact_mode=exact_mode, durable=durable)
    else:
        tmp = temp_name(path)
        fd = _create(tmp, mode, exact_mode)
        _fill(fd, tmp, data, mode, exact_mode=exact_mode, durable=durable)
        try:
            os.replace(tmp, path)
        except BaseException:
            _remove(tmp)
            raise
    if durable:
        fsync_folder(path.parent)


def _create(path: Path, mode: int, exact_mode: bool) -> int:
    """A new file: through the state dir's one opener (exact mode), or with the umask."""
    if exact_mode:
        return open_state_file(path, Create.NEW, mode)
    return os.open(path, _CREATE_FLAGS, mode)


def _fill(
    fd: int, created: Path, data: bytes, mode: int, *, exact_mode: bool, durable: bool
) -> None:
    """Write and close ``fd``; on any failure remove the file it created."""
    try:
        try:
            if exact_mode:
                os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        _remove(created)
        raise


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def fsync_folder(folder: Path) -> None:
    """Make a rename or create in ``folder`` durable. Some filesystems cannot fsync a
    folder (EINVAL): the data is written, only its durability is not confirmed."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
