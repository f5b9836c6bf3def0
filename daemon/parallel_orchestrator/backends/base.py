"""Where a job runs, behind one small interface the daemon and ``once`` share.

``local`` runs jobs in this process's runner (``jobs.runner.run_job``). ``dask`` hands them
to a Dask cluster (``daskcluster``), imported only when chosen, so the package works
without ``distributed`` installed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Protocol

from ..errors import OrchestratorError
from ..jobs.model import JobOutcome, JobSpec
from ..jobs.runner import run_job

BACKENDS: tuple[str, ...] = ("local", "dask")

# Called once the job's leader runs: its pid, and the worker's address (None: local).
OnStarted = Callable[[int, "str | None"], None]


class BackendUnavailable(OrchestratorError):
    """The backend cannot run jobs at all (scheduler unreachable, package missing).

    ``str()`` is one line naming what is at fault (the address, the package).
    """


class EventLog(Protocol):
    def info(self, event: str, **fields: Any) -> Any: ...
    def warning(self, event: str, **fields: Any) -> Any: ...


class JobBackend(Protocol):
    name: str

    async def start(self) -> None:
        """Get ready to run jobs; raises BackendUnavailable."""

    async def run(self, spec: JobSpec, on_started: OnStarted | None = None) -> JobOutcome:
        """Run ``spec`` as ``run_job`` does: cancelling the call kills the job, then
        re-raises CancelledError."""
        ...

    async def slots(self) -> int:
        """How many jobs it runs at once (max_concurrency = 0 means this many)."""
        ...

    async def close(self) -> None:
        """Release what ``start`` took (connections, a cluster of our own)."""


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
