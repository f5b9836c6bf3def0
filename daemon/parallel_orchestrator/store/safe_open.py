"""Opening state files without following links or blocking: regular files only.

The state dir holds files the daemon reads back (status, ledger records). A symlink
planted there must not redirect the read, and a FIFO must not hang the caller before
the type check: so ``O_NOFOLLOW | O_NONBLOCK``, then ``fstat`` on the open descriptor,
so the check and the read are about the same file.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

_READ_FLAGS = (
    os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
)


class NotRegularFile(OSError):
    """The path names a FIFO, socket, device or folder, not a regular file."""


def open_regular(path: Path) -> int:
    """A read-only descriptor of ``path``, which must be a regular file and no symlink.

    Raises OSError (``ELOOP`` for a symlink on Linux, ``NotRegularFile`` otherwise).
    """
    fd = os.open(path, _READ_FLAGS)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFile(errno.EINVAL, "not a regular file", os.fsdecode(path))
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular(path: Path, limit: int | None = None) -> bytes:
    """The content of a regular file (``open_regular``), at most ``limit`` bytes."""
    fd = open_regular(path)
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
