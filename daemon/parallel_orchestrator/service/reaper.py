"""The daemon's periodic clean-up of processes that no job accounts for any more.

Every ``REAP_EVERY_S``: reap exited orphans adopted from jobs, and, once no job runs,
kill adopted children that no job accounts for (``kill_leftovers``). Its own module so
the daemon keeps only lifecycle and wiring.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from ..jobs import janitor
from ..jobs.runner import job_leaders, reap_orphan_zombies

REAP_EVERY_S = 2.0


async def reap_periodically(running: Callable[[], bool], log: Callable[[], Any]) -> None:
    """``running``: whether any job runs now (the scheduler's view)."""
    while True:
        await asyncio.sleep(REAP_EVERY_S)
        reap_orphan_zombies()
        await kill_leftovers("idle", running, log)


async def kill_leftovers(when: str, running: Callable[[], bool], log: Callable[[], Any]) -> None:
    """Kill adopted children that no job accounts for, once no job runs.

    An escapee that both cleared its environment (no PO_JOB_ID marker) and left its
    job's session cannot be attributed to a job, so no job's sweep kills it; but as
    subreaper we still hold it as a child. With nothing running (checked without an
    await before each pass of the kill, so no leader can be mid-spawn) every such child
    is a leftover. The daemon's own helpers (git) share its session and are spared.
    """
    if running() or not janitor.is_subreaper():
        return
    killed = await janitor.sweep_unattributed(job_leaders, lambda: not running())
    if killed:
        log().warning("escapees_killed", pids=killed, when=when)
