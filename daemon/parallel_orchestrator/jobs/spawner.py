"""Starting job leaders: a small shared pool of spawn threads.

Why threads: ``asyncio.create_subprocess_exec`` forks in the event-loop thread, and a
vfork parent waits until the child has exec'd, so spawns would be serialised on the loop;
on a busy 2-CPU machine that made 500 short jobs 2-4x slower than the original thread pool
(see docs/benchmarks.md, "Executor"). With the fork in a worker thread the loop keeps
running. The spawn thread also creates the pipes and hands the result to the loop with one
``call_soon_threadsafe`` (``SpawnPool``, ``Handoff``). Each leader goes into the
registry of job leaders (``leaders``) as it is forked, so the janitor never reaps one.
"""

from __future__ import annotations

import asyncio
import os
import queue
import signal
import subprocess
import threading
from collections.abc import Callable
from contextlib import suppress

from . import janitor
from .leaders import forget_leader, spawn_done, spawn_starting
from .model import JobSpec

SPAWN_THREADS = 4  # fork+exec waits for the child's exec: a few threads keep the CPUs busy

_pool_lock = threading.Lock()
_spawn_pool: SpawnPool | None = None


def _after_fork_in_child() -> None:
    """A forked child has none of our threads: start from a clean slate."""
    global _pool_lock, _spawn_pool
    _pool_lock = threading.Lock()
    _spawn_pool = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class Spawned:
    """What a spawn thread hands to the loop: the leader and the loop's ends of its pipes
    (stdout, then stderr if split; non-blocking)."""

    __slots__ = ("popen", "read_fds")

    def __init__(self, popen: subprocess.Popen[bytes], read_fds: list[int]) -> None:
        self.popen = popen
        self.read_fds = read_fds

    def abandon(self) -> None:
        """Nobody will watch this leader (setup failed, or its loop is gone): kill its
        group, reap it, close our descriptors. Blocks only for a SIGKILLed process."""
        pid = self.popen.pid
        janitor.signal_group(pid, signal.SIGKILL)
        self.popen.wait()
        forget_leader(pid)
        _close_fds(self.read_fds)


_devnull: tuple[int, int, int] | None = None  # (fd, st_dev, st_ino) of our /dev/null
_devnull_lock = threading.Lock()


def _still_devnull(known: tuple[int, int, int] | None) -> bool:
    if known is None:
        return False
    try:
        st = os.fstat(known[0])
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == known[1:]


def devnull_fd() -> int:
    """A /dev/null descriptor for the leaders' stdin, opened once, not once per job.

    ``stdin=DEVNULL`` makes ``Popen`` open and close /dev/null for every child. Ours is
    checked (one fstat) before each use, in case the application closed it and the
    number now names some other file, which must never become a job's stdin.
    """
    global _devnull
    known = _devnull
    if _still_devnull(known):
        assert known is not None
        return known[0]
    with _devnull_lock:
        known = _devnull
        if _still_devnull(known):
            assert known is not None
            return known[0]
        fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)  # a replaced one is not ours
        st = os.fstat(fd)
        _devnull = (fd, st.st_dev, st.st_ino)
        return fd


def spawn(spec: JobSpec, env: dict[str, str]) -> Spawned:
    """Create the pipes and start the leader (runs in a spawn thread).

    All of it is syscalls and ``Popen``; done here, none of it occupies the event loop.
    ``Popen(argv)`` is an exec, never a shell. Raises what ``Popen`` raises; nothing is
    left open or running then.
    """
    read_fds: list[int] = []
    write_fds: list[int] = []  # one pipe for stdout and stderr, or two when split
    try:
        for _ in range(2 if spec.split_stderr else 1):
            read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
            read_fds.append(read_fd)
            write_fds.append(write_fd)
            os.set_blocking(read_fd, False)
        # A forked leader is our child before it is a known leader: hold orphan reaping off.
        spawn_starting()
        try:
            popen = subprocess.Popen(
                spec.argv,
                stdin=devnull_fd(),
                stdout=write_fds[0],
                stderr=write_fds[-1],
                cwd=spec.cwd,
                env=env,
                start_new_session=True,  # own session and group: pgid == sid == pid
                close_fds=True,
            )
        except BaseException:
            spawn_done(None)
            raise
        spawn_done(popen.pid)  # reaped only by leaderwatch.WatchedLeader (or abandon)
    except BaseException:
        _close_fds(read_fds)
        raise
    finally:
        _close_fds(write_fds)  # the child has its copies; EOF must come when it is done
    return Spawned(popen, read_fds)


Deliver = Callable[["Spawned | BaseException"], None]


class SpawnPool:
    """A few threads that run ``spawn`` and hand each result straight to its loop.

    Why not ``loop.run_in_executor``: per job it builds a concurrent future, an asyncio
    future chained to it by two callbacks, and (to survive a cancel mid-fork) a shield on
    top: three futures and three loop hand-offs where one ``call_soon_threadsafe`` does,
    a measurable share of a short job's cost. It also drops the result if the loop has
    closed meanwhile, leaving a running leader nobody watches; here the thread kills and
    reaps it instead. Threads start on demand, at most ``size``; they are daemon threads
    idling on a queue, so they never hold up interpreter exit.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._requests: queue.SimpleQueue[
            tuple[asyncio.AbstractEventLoop, JobSpec, dict[str, str], Deliver]
        ] = queue.SimpleQueue()
        self._threads = 0
        self._lock = threading.Lock()

    def submit(
        self,
        loop: asyncio.AbstractEventLoop,
        spec: JobSpec,
        env: dict[str, str],
        deliver: Deliver,
    ) -> None:
        """Spawn ``spec``; ``deliver(result)`` is then called on ``loop``'s thread.

        Raises (and queues nothing) only when no thread exists and none can be started: a
        request queued for nobody could never be cancelled, and its leader never reaped.
        """
        if self._threads < self._size:
            with self._lock:
                if self._threads < self._size:
                    thread = threading.Thread(
                        target=self._work, name=f"po-spawn-{self._threads + 1}", daemon=True
                    )
                    try:
                        thread.start()
                    except RuntimeError:  # "can't start new thread": the others will do
                        if not self._threads:
                            raise
                    else:
                        self._threads += 1
        self._requests.put((loop, spec, env, deliver))

    def queued(self) -> int:
        """Requests no thread has taken yet."""
        return self._requests.qsize()

    def _work(self) -> None:
        while True:
            loop, spec, env, deliver = self._requests.get()
            result: Spawned | BaseException
            try:
                result = spawn(spec, env)
            except BaseException as exc:  # raised in the awaiting task instead
                result = exc
            try:
                loop.call_soon_threadsafe(deliver, result)
            except RuntimeError:  # the loop is closed: nobody will ever watch this leader
                if isinstance(result, Spawned):
                    result.abandon()
            del loop, spec, env, deliver, result  # keep nothing alive while idle


def spawn_pool() -> SpawnPool:
    """The process's shared pool, started on first use (and anew in a forked child)."""
    global _spawn_pool
    with _pool_lock:
        if _spawn_pool is None:
            _spawn_pool = SpawnPool(SPAWN_THREADS)
        return _spawn_pool


class Handoff:
    """Receives the spawn thread's result for one job's task.

    A cancel while the thread forks must not lose the child, so the task keeps waiting
    (and remembers the cancel) until the result is in: what ``asyncio.shield`` is used
    for, without its extra future and callbacks.
    """

    __slots__ = ("_waiter", "done", "result")

    def __init__(self) -> None:
        self.done = False
        self.result: Spawned | BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None

    def deliver(self, result: Spawned | BaseException) -> None:
        """Called on the loop's thread by the spawn thread."""
        self.done = True
        self.result = result
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Wait for the result; True when the task was cancelled meanwhile."""
        cancelled = False
        while not self.done:
            self._waiter = loop.create_future()
            try:
                await self._waiter
            except asyncio.CancelledError:
                cancelled = True
        self._waiter = None
        return cancelled


def _close_fds(fds: list[int]) -> None:
    for fd in fds:
        with suppress(OSError):
            os.close(fd)
