"""Saving the config file reloads it, exactly as SIGHUP does.

Editors save in several ways: in place (truncate + write), by writing a temp file and
renaming it over the config, by renaming the old one to a backup first (vim). A watch
on the file itself would follow the old inode after a rename, so the *folder* is
watched (non-recursively) and its events are matched against the config's name. A
config reached through symlinks is matched by the link's own path and by every path
on the way to the real file, whose folders are watched too.

One reload per save: events are gathered until the config's folder has been quiet for
``SETTLE_S``, then the file's identity (inode, size, mtime, ctime) is compared with
the one the last reload read; only a different file reloads. A SIGHUP reload records
that identity too, so a save followed by ``kill -HUP`` reloads once.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

SETTLE_S = 0.1
MAX_LINK_HOPS = 40

FileKey = tuple[int, int, int, int, int] | None


def file_key(path: Path) -> FileKey:
    """Identity of the file the path leads to now (None: it does not exist)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def config_paths(config: Path) -> set[str]:
    """The config's path and every path its symlinks lead through, each spelled with
    its folder's real path (how the folder watch reports them). Blocking: off the loop."""
    found: set[str] = set()
    current = os.path.abspath(config)
    for _ in range(MAX_LINK_HOPS):
        folder, name = os.path.split(current)
        real = os.path.join(os.path.realpath(folder), name)
        found.add(real)
        try:
            target = os.readlink(real)
        except OSError:
            break  # not a link (or gone): the end of the chain
        current = os.path.join(os.path.dirname(real), target)
    return found


class ConfigWatch:
    """Decides when a change seen in the config's folders means "reload".

    ``reload`` asks the daemon for a reload (it queues a SIGHUP-like request);
    ``spawn`` runs a coroutine as a daemon task.
    """

    def __init__(
        self,
        config: Path | None,
        reload: Callable[[], None],
        spawn: Callable[..., None],
    ) -> None:
        self.config = config
        self._reload = reload
        self._spawn = spawn
        self.paths: frozenset[str] = frozenset()
        # The file the daemon's settings came from (read just before): taken now, not
        # once the watch is armed, so a save in between still differs and reloads.
        self._loaded: FileKey = file_key(config) if config is not None else None
        self._timer: asyncio.TimerHandle | None = None

    @property
    def folders(self) -> list[str]:
        return sorted({os.path.dirname(p) for p in self.paths})

    def wanted(self, path: str) -> bool:
        """Thread-safe: reads one immutable set."""
        return path in self.paths

    async def refresh(self) -> None:
        """Recompute the watched paths (at start and after a reload: a link may have
        been pointed elsewhere)."""
        if self.config is not None:
            self.paths = frozenset(await asyncio.to_thread(config_paths, self.config))

    async def reading(self) -> None:
        """A reload is about to read the config: remember which file it reads."""
        if self.config is not None:
            self._loaded = await asyncio.to_thread(file_key, self.config)

    def changed(self) -> None:
        """Something happened to the config (or a rescan): settle, then compare."""
        if self.config is None:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(SETTLE_S, self._settled)

    def _settled(self) -> None:
        self._timer = None
        self._spawn(self._compare())

    async def _compare(self) -> None:
        assert self.config is not None
        key = await asyncio.to_thread(file_key, self.config)
        if key is None or key == self._loaded:
            return  # deleted (nothing to load; a recreation reloads) or the same file
        self._loaded = key
        self._reload()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
