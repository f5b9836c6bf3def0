"""A dask worker's side of its job host: start it once, pass jobs to it, hear back.

One host per worker process (see ``jobhost`` for why a process of its own). It is started
on first use from a thread of ours that lives exactly as long as the host: that thread
forks it, reads its frames and reaps it. PR_SET_PDEATHSIG fires when the *thread* that
forked a process ends, so forking from a pool thread that might retire would kill a
healthy host's jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, ClassVar

from ..errors import OrchestratorError
from ..jobs.model import JobOutcome, JobSpec
from . import hostwire

# The folder holding the package, for the host's PYTHONPATH: the worker may have found us
# through a path the host's fresh interpreter would not (a test's sys.path, a preload).
_PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])


class HostGone(OrchestratorError):
    """The job host exited (or could not start); its jobs ended with it."""


class HostedJob:
    """One job on the host: ``started`` gets the leader's pid, ``ended`` the last message."""

    __slots__ = ("ended", "job_id", "started")

    def __init__(self, loop: asyncio.AbstractEventLoop, job_id: str) -> None:
        self.job_id = job_id
        self.started: asyncio.Future[int] = loop.create_future()
        self.ended: asyncio.Future[tuple[Any, ...]] = loop.create_future()


class HostLink:
    """The connection to this worker process's job host."""

    _current: ClassVar[HostLink | None] = None
    _starting: ClassVar[asyncio.Lock | None] = None

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._jobs: dict[str, HostedJob] = {}
        self._out: asyncio.WriteTransport | None = None
        self.alive = True
        self.pid: int | None = None
        self._owner = os.getpid()  # a forked copy of this process must start its own host

    @classmethod
    async def get(cls) -> HostLink:
        """This process's link, starting the host on first use (or after it died)."""
        link = cls._current
        if link is not None and link.alive and link._pid_matches():
            return link
        if cls._starting is None:
            cls._starting = asyncio.Lock()
        async with cls._starting:
            link = cls._current
            if link is None or not link.alive or not link._pid_matches():
                link = cls(asyncio.get_running_loop())
                await link._start()
                cls._current = link
        return link

    def _pid_matches(self) -> bool:
        return self._owner == os.getpid()

    async def _start(self) -> None:
        ready: asyncio.Future[subprocess.Popen[bytes]] = self._loop.create_future()
        thread = threading.Thread(
            target=self._keep_host, args=(ready,), name="po-jobhost", daemon=True
        )
        thread.start()
        popen = await ready
        assert popen.stdin is not None
        self.pid = popen.pid
        self._out, _ = await self._loop.connect_write_pipe(asyncio.Protocol, popen.stdin)

    def _keep_host(self, ready: asyncio.Future[subprocess.Popen[bytes]]) -> None:
        """The host's thread: fork it, relay its frames to the loop, reap it."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (_PACKAGE_PARENT, env.get("PYTHONPATH", "")) if p
        )
        argv = [sys.executable, "-m", "parallel_orchestrator.backends.jobhost", str(os.getpid())]
        try:
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=env,
                close_fds=True,
                start_new_session=True,  # a terminal's Ctrl-C reaches the worker, not it
            )
        except OSError as exc:
            self._loop.call_soon_threadsafe(_fail, ready, HostGone(f"cannot start: {exc}"))
            return
        self._loop.call_soon_threadsafe(_resolve, ready, popen)
        assert popen.stdout is not None
        try:
            while (message := hostwire.read_frame(popen.stdout)) is not None:
                self._loop.call_soon_threadsafe(self._on_message, message)
        finally:
            popen.stdout.close()
            code = popen.wait()
            # A closed loop (RuntimeError) means the worker is exiting: nobody waits.
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._on_host_gone, code)

    def _on_message(self, message: tuple[Any, ...]) -> None:
        op, job_id = message[0], message[1]
        job = self._jobs.get(job_id)
        if job is None:
            return
        if op == "started":
            if not job.started.done():
                job.started.set_result(int(message[2]))
            return
        del self._jobs[job_id]
        if not job.ended.done():
            job.ended.set_result(message)

    def _on_host_gone(self, code: int) -> None:
        self.alive = False
        if self._out is not None:
            self._out.close()
        jobs, self._jobs = self._jobs, {}
        for job in jobs.values():
            if not job.ended.done():
                job.ended.set_result(("failed", job.job_id, f"the job host exited ({code})"))

    def run(self, job_id: str, spec: JobSpec) -> HostedJob:
        """Ask the host to run ``spec``; raises HostGone when it has exited."""
        if not self.alive or self._out is None or self._out.is_closing():
            raise HostGone("the job host has exited")
        job = HostedJob(self._loop, job_id)
        self._jobs[job_id] = job
        self._out.write(hostwire.frame(("run", job_id, spec)))
        return job

    def cancel(self, job_id: str) -> None:
        """Ask the host to end the job the way a local cancel does (group kill, sweep)."""
        if job_id in self._jobs and self._out is not None and not self._out.is_closing():
            self._out.write(hostwire.frame(("cancel", job_id)))


def outcome_of(message: tuple[Any, ...]) -> JobOutcome | None:
    """The outcome an ``ended`` message carries; None for a cancelled job."""
    if message[0] == "finished":
        outcome = message[2]
        assert isinstance(outcome, JobOutcome)
        return outcome
    return None


def _resolve(fut: asyncio.Future[Any], value: object) -> None:
    if not fut.done():
        fut.set_result(value)


def _fail(fut: asyncio.Future[Any], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)
