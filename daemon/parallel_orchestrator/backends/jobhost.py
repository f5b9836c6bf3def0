"""The job host: one small process per dask worker process, running that worker's jobs.

Run as ``python -m parallel_orchestrator.backends.jobhost <worker pid>`` by ``hostlink``.

Why a process of its own rather than ``run_job`` inside the worker: a worker killed with
SIGKILL cleans nothing up, so the job's process group (and any setsid'd grandchild) would
outlive it. The host notices its worker's death twice over: its stdin, whose other end
only the worker holds, reaches EOF, and PR_SET_PDEATHSIG sends it SIGTERM. Either way it
cancels every job through the local runner's own kill path (SIGTERM to the group,
kill_grace_s, SIGKILL, then the escapee sweep: the host is a subreaper, so escapees stay
its descendants) and exits. SIGINT is ignored: a Ctrl-C in the worker's terminal ends the
worker, and with it (by EOF) the jobs, in order.

Why one host per worker rather than one supervisor per job: starting Python costs tens of
milliseconds, a frame on a pipe tens of microseconds.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import sys

from ..jobs import janitor
from ..jobs.model import JobSpec
from ..jobs.runner import install_child_watcher, reap_orphan_zombies, run_job
from . import hostwire

PR_SET_PDEATHSIG = 1
_REAP_EVERY_S = 5.0


def set_parent_death_signal(sig: int) -> bool:
    """Have the kernel send ``sig`` when our parent (thread) dies; False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(sig), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_PDEATHSIG): {os.strerror(err)}")
    return True


class JobHost:
    """Runs the jobs its worker asks for; ends them all when the worker goes."""

    def __init__(self, out: asyncio.WriteTransport) -> None:
        self._out = out
        self._jobs: dict[str, asyncio.Task[None]] = {}

    def send(self, message: tuple[object, ...]) -> None:
        if not self._out.is_closing():
            self._out.write(hostwire.frame(message))

    def handle(self, message: tuple[object, ...]) -> None:
        op = message[0]
        if op == "run":
            _, job_id, spec = message
            assert isinstance(job_id, str) and isinstance(spec, JobSpec)
            task = asyncio.ensure_future(self._run(job_id, spec))
            self._jobs[job_id] = task
        elif op == "cancel":
            task = self._jobs.get(str(message[1]))
            if task is not None:
                task.cancel()
        else:
            raise ValueError(f"unknown job host request {op!r}")

    async def _run(self, job_id: str, spec: JobSpec) -> None:
        try:
            outcome = await run_job(spec, lambda pid: self.send(("started", job_id, pid)))
        except asyncio.CancelledError:
            self.send(("cancelled", job_id))  # run_job has killed and reaped everything
        except Exception as exc:  # a runner failure: the worker reports it as the job's error
            self.send(("failed", job_id, f"{type(exc).__name__}: {exc}"))
        else:
            self.send(("finished", job_id, outcome))
        finally:
            self._jobs.pop(job_id, None)

    async def stop(self) -> None:
        """Cancel every job (each is killed with its own kill_grace_s) and wait for all."""
        tasks = list(self._jobs.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _read_requests(reader: asyncio.StreamReader, host: JobHost) -> None:
    while True:
        try:
            header = await reader.readexactly(hostwire.HEADER_SIZE)
            body = await reader.readexactly(hostwire.body_size(header))
        except asyncio.IncompleteReadError:
            return  # the worker is gone
        host.handle(hostwire.decode(body))


async def _reap_periodically() -> None:
    while True:
        await asyncio.sleep(_REAP_EVERY_S)
        reap_orphan_zombies()


async def serve(in_fd: int, out_fd: int) -> None:
    """Serve requests from ``in_fd`` until EOF or SIGTERM, then end every job."""
    install_child_watcher()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(in_fd, "rb", buffering=0)
    )
    out, _ = await loop.connect_write_pipe(asyncio.Protocol, os.fdopen(out_fd, "wb", buffering=0))
    host = JobHost(out)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    reading = asyncio.ensure_future(_read_requests(reader, host))
    reaping = asyncio.ensure_future(_reap_periodically())
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({reading, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (reading, reaping, stopping):
            task.cancel()
        await host.stop()
        out.close()  # flushes what is buffered, if the worker still reads
        if janitor.is_subreaper():
            janitor.kill_unattributed(frozenset())
    if reading.done() and not reading.cancelled() and reading.exception() is not None:
        raise reading.exception()  # a malformed request: worth a traceback on stderr


def main(argv: list[str]) -> None:
    parent = int(argv[1])
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    set_parent_death_signal(signal.SIGTERM)
    if os.getppid() != parent:
        return  # the worker died before PDEATHSIG was armed
    janitor.become_subreaper()
    # Frames go to a private copy of stdout; stray prints land on stderr, not in a frame.
    out_fd = os.dup(1)
    os.dup2(2, 1)
    asyncio.run(serve(0, out_fd))


if __name__ == "__main__":
    main(sys.argv)
