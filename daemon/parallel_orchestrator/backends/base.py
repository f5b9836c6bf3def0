"""Where a job runs, behind one small interface the daemon and ``once`` share.

``local`` runs jobs in this process's runner (``jobs.runner.run_job``). ``dask`` hands them
to a Dask cluster (``daskcluster``), imported only when chosen, so the package works
without ``distributed`` installed.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

from ..jobs.model import JobOutcome, JobSpec
from ..jobs.runner import run_job
from .interface import BACKENDS, BackendUnavailable, EventLog, JobBackend, OnStarted

__all__ = [
    "BACKENDS",
    "BackendUnavailable",
    "EventLog",
    "JobBackend",
    "LocalBackend",
    "OnStarted",
    "close_within",
    "open_backend",
]


class LocalBackend:
    """Jobs run here, by the local runner."""

    name = "local"

    async def start(self) -> None:
        return None

    async def run(self, spec: JobSpec, on_started: OnStarted | None = None) -> JobOutcome:
        if on_started is None:
            return await run_job(spec)
        report = on_started
        return await run_job(spec, lambda pid: report(pid, None))

    async def slots(self) -> int:
        return os.cpu_count() or 1

    async def close(self) -> None:
        return None


def open_backend(
    name: str, address: str = "", log: Callable[[], EventLog] | None = None
) -> JobBackend:
    """The backend ``[executor]`` names (not started yet); raises BackendUnavailable."""
    if name == "local":
        return LocalBackend()
    if name != "dask":
        raise BackendUnavailable(f"unknown executor backend {name!r} (choose local or dask)")
    try:
        from .daskcluster import DaskBackend
    except ImportError as exc:
        raise BackendUnavailable(
            f"backend = 'dask' needs the distributed package ({exc}); "
            "install parallel-orchestrator[dask]"
        ) from exc
    return DaskBackend(address, log=log)


async def close_within(backend: JobBackend, limit_s: float, log: EventLog) -> None:
    """Close ``backend`` at shutdown, once its jobs have ended; never raises.

    What is left then is a connection (or an in-process cluster, whose worker processes
    die with us anyway): it must not hold up the exit.
    """
    try:
        await asyncio.wait_for(backend.close(), limit_s)
    except TimeoutError:
        log.warning("executor_close_slow", backend=backend.name)
    except Exception as exc:  # shutdown goes on: the jobs are over, the log says why
        log.warning("executor_close_failed", backend=backend.name, error=str(exc))
