"""Opening state files without following links or blocking: regular files only.

The state dir holds files the daemon reads back (status, ledger records) and files it
creates (the lock, run logs, changed-file lists, temp files of the atomic writer). A
symlink planted there must not redirect a read or a write (a root daemon truncating a
file of an attacker's choosing), and a FIFO must not hang the caller before the type
check: so every open here is ``O_NOFOLLOW | O_NONBLOCK``, then ``fstat`` on the open
descriptor, so the check and the use are about the same file.

Readers: ``open_regular`` / ``read_regular``. Writers: ``open_state_file`` (one place
for every create in the state dir), ``write_new`` for small files that are new.
"""

from __future__ import annotations

import errno
import os
import stat
from contextlib import suppress
from enum import Enum
from pathlib import Path

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_READ_FLAGS = os.O_RDONLY | os.O_CLOEXEC | _NOFOLLOW | _NONBLOCK
_WRITE_BASE = os.O_CREAT | os.O_CLOEXEC | _NOFOLLOW | _NONBLOCK


class NotRegularFile(OSError):
    """The path names a FIFO, socket, device or folder, not a regular file."""


class Create(Enum):
    """How ``open_state_file`` opens: each adds to ``O_CREAT|O_NOFOLLOW|O_NONBLOCK``."""

    NEW = os.O_WRONLY | os.O_EXCL  # must not exist: nothing there is ever written through
    TRUNCATE = os.O_WRONLY | os.O_TRUNC  # a file of ours, emptied
    APPEND = os.O_WRONLY | os.O_APPEND  # a log kept across runs
    UPDATE = os.O_RDWR  # read and rewrite in place (the lock file)


def _checked(fd: int, path: Path) -> int:
    """``fd`` if it is a regular file; else closed and ``NotRegularFile``."""
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFile(errno.EINVAL, "not a regular file", os.fsdecode(path))
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_regular(path: Path, *, follow: bool = False, dir_fd: int | None = None) -> int:
    """A read-only descriptor of ``path``, which must be a regular file and no symlink
    (``follow``: a symlink to one is fine; for paths a person named on the command line;
    ``dir_fd``: ``path`` is relative to that open folder).

    Raises OSError (``ELOOP`` for a symlink on Linux, ``NotRegularFile`` otherwise).
    """
    flags = _READ_FLAGS & ~_NOFOLLOW if follow else _READ_FLAGS
    return _checked(os.open(path, flags, dir_fd=dir_fd), path)


def read_regular(
    path: Path, limit: int | None = None, *, follow: bool = False, dir_fd: int | None = None
) -> bytes:
    """The content of a regular file (``open_regular``), at most ``limit`` bytes."""
    fd = open_regular(path, follow=follow, dir_fd=dir_fd)
    try:
        chunks: list[bytes] = []
        left = limit
        while left is None or left > 0:
            chunk = os.read(fd, 1 << 16 if left is None else min(left, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            if left is not None:
                left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def open_state_file(path: Path, how: Create, mode: int = 0o600) -> int:
    """A descriptor for writing ``path``, created ``mode`` exactly (whatever the umask).

    Never through a symlink (``ELOOP``), never a FIFO, device or folder
    (``NotRegularFile``; a FIFO without a reader fails at once with ``ENXIO`` rather
    than blocking). ``Create.NEW`` raises ``FileExistsError`` if anything is there.
    """
    fd = _checked(os.open(path, _WRITE_BASE | how.value, mode), path)
    try:
        os.fchmod(fd, mode)  # O_CREAT's mode is masked, and ignored for an existing file
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_new(path: Path, mode: int = 0o600) -> int:
    """``open_state_file(path, Create.NEW)``; a leftover with the same name (a file of an
    interrupted run, or a link: the link itself) is removed first, a folder there is an
    error (``IsADirectoryError``)."""
    try:
        return open_state_file(path, Create.NEW, mode)
    except FileExistsError:
        with suppress(FileNotFoundError):
            os.unlink(path)
        return open_state_file(path, Create.NEW, mode)


def write_new(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Create ``path`` holding ``data`` (``open_new``). Not atomic: for files nobody
    reads before they are complete (changed-file lists, a probe)."""
    fd = open_new(path, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    except BaseException:
        os.close(fd)
        with suppress(OSError):
            os.unlink(path)
        raise
    os.close(fd)


CORRUPT_SUFFIX = ".corrupt"


def set_aside(path: Path) -> Path:
    """Rename an unusable state file (corrupt, a FIFO, a folder where a file belongs) to
    ``<name>.corrupt`` (``.corrupt.1``, ... if taken), out of every reader's way but kept
    for a person to look at. Returns the new path; raises OSError if it cannot move."""
    for n in range(100):
        target = path.with_name(path.name + CORRUPT_SUFFIX + (f".{n}" if n else ""))
        if os.path.lexists(target):
            continue
        os.rename(path, target)
        return target
    raise OSError(errno.EEXIST, "too many set-aside copies", os.fsdecode(path))
