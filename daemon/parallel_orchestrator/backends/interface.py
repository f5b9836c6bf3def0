"""What every backend is and says, in a leaf module: ``base`` (which picks a backend)
and each backend import it, never each other the other way round."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from ..errors import OrchestratorError
from ..jobs.model import JobOutcome, JobSpec

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
