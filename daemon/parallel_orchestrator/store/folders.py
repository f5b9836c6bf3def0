"""Creating folders with exactly the mode we mean.

``Path.mkdir(parents=True, mode=...)`` gives the parents the umask's default mode, and
the umask also masks the mode of the last folder; the state dir must be 0700 and a config
folder must not be group-writable, so both need every created level set explicitly.

Once the daemon runs, a missing level that is the repository's or a worktree's folder
is never created (``store.fence``): the whole call fails with ``FencedError`` instead.
"""

from __future__ import annotations

import os
from contextlib import suppress
from pathlib import Path

from .fence import refuse_fenced


def make_dirs(directory: Path, mode: int) -> None:
    """Create ``directory`` and its missing parents, each with ``mode`` (umask or not);
    folders that already exist are left as they are. Raises ``FencedError`` (creating
    nothing) when a missing level is a fenced folder (``store.fence``)."""
    wanted, missing = directory, []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    refuse_fenced(wanted, missing)
    for path in reversed(missing):
        with suppress(FileExistsError):  # created concurrently: fine
            path.mkdir(mode=mode)
            os.chmod(path, mode)
