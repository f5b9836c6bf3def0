"""A child watcher for Python 3.11 that needs no thread per child.

Python 3.11's default child watcher (ThreadedChildWatcher) starts one thread per child
process; the daemon's other subprocesses (git) started with
``asyncio.create_subprocess_exec`` would each cost one. 3.12+ watches children with pidfds
already, so this module only matters on 3.11. ``run_job`` does not depend on it: it
watches its own leaders (``leaderwatch``).
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from typing import Any

_watcher_policy: object | None = None

if sys.version_info < (3, 12):

    class _PidfdChildWatcher(asyncio.AbstractChildWatcher):
        """A loop-agnostic pidfd watcher (what 3.12 ships): no thread, no SIGCHLD handler.

        3.11's own PidfdChildWatcher binds to one loop, which breaks when the executor's
        sync API runs a second loop in a worker thread; this one uses the running loop.
        """

        def add_child_handler(self, pid: int, callback: Callable[..., Any], *args: Any) -> None:
            loop = asyncio.get_running_loop()
            pidfd = os.pidfd_open(pid)
            loop.add_reader(pidfd, self._do_wait, loop, pid, pidfd, callback, args)

        def _do_wait(
            self,
            loop: asyncio.AbstractEventLoop,
            pid: int,
            pidfd: int,
            callback: Callable[..., Any],
            args: tuple[Any, ...],
        ) -> None:
            loop.remove_reader(pidfd)
            try:
                _, status = os.waitpid(pid, 0)
            except ChildProcessError:
                returncode = 255  # reaped elsewhere; asyncio's own watchers do the same
            else:
                returncode = os.waitstatus_to_exitcode(status)
            os.close(pidfd)
            callback(pid, returncode, *args)

        def remove_child_handler(self, pid: int) -> bool:
            return True

        def attach_loop(self, loop: asyncio.AbstractEventLoop | None) -> None:
            pass

        def is_active(self) -> bool:
            return True

        def close(self) -> None:
            pass

        def __enter__(self) -> _PidfdChildWatcher:
            return self

        def __exit__(self, *exc: object) -> None:
            pass


def install_child_watcher() -> bool:
    """On Python 3.11 with pidfd support, replace the thread-per-child watcher; idempotent.

    Python 3.12+ already watches children with pidfds: nothing to do there (False). A
    watcher the application installed itself is left alone (False). ``run_job`` does not
    need it (it watches its leaders itself); it is for the daemon's other subprocesses
    (git) started with ``asyncio.create_subprocess_exec``.
    """
    global _watcher_policy
    if sys.version_info >= (3, 12) or not hasattr(os, "pidfd_open"):
        return False
    policy = asyncio.get_event_loop_policy()
    if policy is _watcher_policy:
        return True
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:
        return False  # kernel < 5.3 or pidfd blocked
    current = policy.get_child_watcher()
    if isinstance(current, asyncio.ThreadedChildWatcher):
        policy.set_child_watcher(_PidfdChildWatcher())
    elif not isinstance(current, _PidfdChildWatcher):
        return False
    _watcher_policy = policy
    return True
