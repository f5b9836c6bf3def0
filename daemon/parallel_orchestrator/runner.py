"""Run one job: its own process group, a timeout, a kill that always reaps, bounded output.

The contract is that no process a job started outlives the job. So after the leader ends
— normally, by timeout, or because the awaiting task was cancelled — the job's process
group is emptied (SIGTERM, ``kill_grace_s``, SIGKILL), the leader is reaped, and the
janitor sweeps descendants that escaped the group. The normal path stays cheap: one
``killpg(pgid, 0)`` shows the group is empty, and the escapee sweep is a listing of our
own children (subreaper) or skipped (no subreaper and nothing suspicious).

How a job is started: ``subprocess.Popen(argv)`` — an exec, never a shell — called in a
small shared pool of spawn threads (which also create the pipes), then watched by the
event loop: the output pipes (chunks go straight to bounded buffers) and the exit. Why not
``asyncio.create_subprocess_exec``: it forks in the event-loop thread, and a vfork parent
waits until the child has exec'd, so spawns are serialised on the loop; on a busy 2-CPU
machine that made 500 short jobs 2-4x slower than the original thread pool (see
docs/benchmarks.md, "Executor"). With the fork in a worker thread the loop keeps running,
and we are as fast as the thread pool without a thread per job.

What a short job costs is mostly per-job bookkeeping, so the hot path is kept lean (each
choice is explained where it is made): the spawn result reaches the loop by one
``call_soon_threadsafe`` (``_SpawnPool``); a loop's pipes and pidfds share one epoll of our
own (``_Mux``) instead of costing an ``add_reader`` each; the leader is reaped when its
output reaches EOF, and its exit is watched by a pidfd only when EOF does not come soon
or a kill needs it (``_Child``); waits use one future each, not Event + wait_for. Without
pidfds (not Linux, kernel < 5.3) the exit is awaited in a thread instead — correct, but
one thread per job.

Output: by default stdout and stderr share one pipe, so the run log keeps the order of
lines as a terminal would show them (what the daemon wants). ``split_stderr`` gives stderr
its own pipe (what the executor API needs: the original tool returned the two streams
separately); both pipes are watched by the loop the same way. Every buffer has a fixed
cap: a job printing gigabytes costs at most the log's and the captures' caps in memory.
"""

from __future__ import annotations

import asyncio
import codecs
import errno
import functools
import math
import os
import queue
import select
import signal
import subprocess
import sys
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from . import janitor

Result = Literal["pass", "fail", "timeout", "error", "cancelled"]

# Variables a job must never inherit from a systemd-managed daemon.
SCRUBBED_ENV_PREFIXES: tuple[str, ...] = ("NOTIFY_SOCKET", "WATCHDOG_", "LISTEN_")

TIMEOUT_EXIT_CODE = 124
# After the leader is gone, how long to wait for whoever still holds the output pipe.
_DRAIN_TIMEOUT_S = 1.0
# The kernel closes a dying process's files before it reports the exit, so EOF normally
# arrives together with the exit; still open after this long means another holder.
_EOF_GRACE_S = 0.1
# How long a SIGKILLed group or leader may take to disappear before we give up waiting.
_KILL_WAIT_S = 2.0
# A leader is normally reaped when its output reaches EOF; if that has not happened this
# long after the start, its exit is watched directly (pidfd) from then on.
_EXIT_WATCH_DELAY_S = 0.05


@dataclass(frozen=True)
class JobSpec:
    argv: tuple[str, ...]
    cwd: Path
    env: dict[str, str]  # the complete environment of the child; scrubbed again by the runner
    timeout_s: float  # <= 0 or inf: no limit
    kill_grace_s: float = 5.0
    job_id: str = ""  # also exported as PO_JOB_ID, the marker used to find escaped descendants
    log_path: Path | None = None  # combined stdout+stderr, created 0600, capped (head + tail)
    max_log_bytes: int = 8 * 1024 * 1024
    tail_bytes: int = 2048
    # stderr in its own pipe, reported apart (JobOutcome.stderr_*). The log still gets
    # both, interleaved in the order the loop read them (exact order needs one pipe).
    split_stderr: bool = False
    # > 0: JobOutcome.output (and .stderr_output) hold each stream whole up to this many
    # bytes; a longer stream keeps its first and last halves around a cut marker. This is
    # held in memory per stream, so it is off for the daemon (its output goes to the log).
    capture_bytes: int = 0


@dataclass(frozen=True)
class JobOutcome:
    result: Result
    exit_code: int | None  # 124 on timeout; None when it never ran or was cancelled
    duration_s: float
    output_tail: str  # last ~tail_bytes of stdout (+stderr unless split), bad bytes replaced
    error_message: str = ""
    pid: int | None = None
    started_at: float = 0.0  # time.time()
    finished_at: float = 0.0
    extra: dict[str, object] = field(default_factory=dict)
    stderr_tail: str = ""  # split_stderr: last ~tail_bytes of stderr
    output: str = ""  # capture_bytes > 0: stdout (+stderr unless split), see JobSpec
    stderr_output: str = ""  # capture_bytes > 0 and split_stderr: stderr, likewise


# ---------------------------------------------------------------------------------------
# Which of our children are job leaders (the janitor must never reap those).

_registry_lock = threading.Lock()
_leaders: set[int] = set()
_spawning = 0  # spawns under way whose leader is not in _leaders yet (see _spawn)


def job_leaders() -> frozenset[int]:
    """Pids of job leaders not yet reaped (the runner alone reaps them)."""
    with _registry_lock:
        return frozenset(_leaders)


def reap_orphan_zombies() -> list[int]:
    """Reap exited orphans adopted from jobs; the daemon calls this periodically.

    Skipped while a spawn is in flight: the new leader could be taken for an orphan.
    """
    with _registry_lock:
        if _spawning:
            return []
        known = frozenset(_leaders)
    return janitor.reap_adopted_zombies(known)


# ---------------------------------------------------------------------------------------
# Child watcher: Python 3.11's default starts one thread per child.

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


# ---------------------------------------------------------------------------------------
# Output: head streamed to the log, tail in a ring, never more than max_log_bytes held.


def make_private_dirs(directory: Path) -> None:
    """Create ``directory`` and missing parents as 0700 (``mkdir -p`` would use 0777)."""
    missing = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    for d in reversed(missing):
        with suppress(FileExistsError):  # created concurrently: fine
            d.mkdir(mode=0o700)




def _open_log(path: Path) -> int:
    make_private_dirs(path.parent)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW
    fd = os.open(path, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)  # O_CREAT's mode does not apply to a file that already existed
    except OSError:
        os.close(fd)
        raise
    return fd


def cut_marker(n: int) -> bytes:
    return f"\n[... {n} bytes cut by parallel-orchestrator ...]\n".encode()


class _Ring:
    """The last ``cap`` bytes of a stream, kept as the chunks read: appending copies
    nothing (the same bytes objects may sit in several rings), only trimming slices."""

    def __init__(self, cap: int) -> None:
        self.cap = max(0, cap)
        self._chunks: deque[bytes] = deque()
        self.size = 0
        self.dropped = 0

    def append(self, data: bytes) -> None:
        self._chunks.append(data)
        self.size += len(data)
        excess = self.size - self.cap
        while excess > 0:
            first = self._chunks[0]
            if len(first) <= excess:
                self._chunks.popleft()
                n = len(first)
            else:
                self._chunks[0] = first[excess:]
                n = excess
            self.size -= n
            self.dropped += n
            excess -= n

    def chunks(self) -> list[bytes]:
        return list(self._chunks)

    def last(self, n: int) -> bytes:
        """The last ``n`` bytes held (fewer if fewer are held)."""
        if n <= 0:
            return b""
        return b"".join(self._chunks)[-n:]


def _skip_partial_char(data: bytes) -> bytes:
    """Drop UTF-8 continuation bytes at the start (a cut landed inside a character)."""
    i = 0
    while i < min(3, len(data)) and 0x80 <= data[i] <= 0xBF:
        i += 1
    return data[i:]


class _Log:
    """The run log: the first half of the cap goes to the file as it arrives, the last
    half waits in a ring and is written at the end, after a marker saying what was cut."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self._fd: int | None = _open_log(path)
        cap = max(0, max_bytes)
        self._head_left = cap // 2
        self._ring = _Ring(cap - self._head_left)
        self.error = ""

    @property
    def cut(self) -> int:
        return self._ring.dropped

    def write(self, data: bytes) -> None:
        if self._head_left:
            head = data[: self._head_left]
            self._head_left -= len(head)
            self._write_file(head)
            data = data[len(head) :]
            if not data:
                return
        self._ring.append(data)

    def _write_file(self, data: bytes) -> None:
        if self._fd is None:
            return
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as exc:
            # Disk full or similar: stop logging, keep the captures, say so in the outcome.
            self.error = f"log write failed: {exc.strerror}"
            os.close(self._fd)
            self._fd = None

    def close(self) -> None:
        if self._fd is None:
            return
        if self.cut:
            self._write_file(cut_marker(self.cut))
        for chunk in self._ring.chunks():
            self._write_file(chunk)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class _Capture:
    """What the outcome reports of one stream: its last ``tail_bytes``, and with
    ``capture_bytes`` the stream itself — whole if it fits, else the first and last halves
    around a cut marker. Holds at most ``max(capture_bytes, tail_bytes)`` bytes."""

    def __init__(self, tail_bytes: int, capture_bytes: int) -> None:
        cap = max(0, capture_bytes)
        self._capturing = cap > 0
        self._tail_bytes = max(0, tail_bytes)
        self._head_cap = cap // 2
        self._tail_cap = cap - self._head_cap
        self._head = bytearray()
        # Every byte also enters the ring, so the tail of a short stream is there too.
        self._ring = _Ring(max(self._tail_cap, self._tail_bytes))
        self.total = 0

    def write(self, data: bytes) -> None:
        self.total += len(data)
        room = self._head_cap - len(self._head)
        if room > 0:
            self._head += data[:room]
        self._ring.append(data)

    def _after_head(self) -> tuple[int, int]:
        """(bytes of the capture after its head, bytes cut between head and those)."""
        after = self.total - len(self._head)
        kept = min(after, self._tail_cap)
        return kept, after - kept

    @property
    def cut(self) -> int:
        """Bytes left out of the capture (or, with no capture, out of the tail)."""
        if self._capturing:
            return self._after_head()[1]
        return self.total - min(self.total, self._tail_bytes)

    def tail(self) -> str:
        if not self.total:
            return ""  # the usual case for stderr, and for many tests' stdout
        data = self._ring.last(self._tail_bytes)
        if self.total > len(data):
            data = _skip_partial_char(data)
        return data.decode("utf-8", errors="replace")

    def text(self) -> str:
        if not self._capturing or not self.total:
            return ""
        kept, cut = self._after_head()
        rest = self._ring.last(kept)
        if not cut:
            return (bytes(self._head) + rest).decode("utf-8", errors="replace")
        # Cut inside: no replacement characters for a character split by the cut.
        head = codecs.getincrementaldecoder("utf-8")("replace").decode(self._head, final=False)
        tail = _skip_partial_char(rest).decode("utf-8", errors="replace")
        return head + cut_marker(cut).decode() + tail


class _Output:
    """A job's output: each chunk goes to the log (if any) and to its stream's capture."""

    def __init__(self, spec: JobSpec) -> None:
        self.log = _Log(spec.log_path, spec.max_log_bytes) if spec.log_path is not None else None
        self.stdout = _Capture(spec.tail_bytes, spec.capture_bytes)
        self.stderr = _Capture(spec.tail_bytes, spec.capture_bytes) if spec.split_stderr else None
        self.read_error = ""

    def write(self, capture: _Capture, data: bytes) -> None:
        if self.log is not None:
            self.log.write(data)
        capture.write(data)

    @property
    def error(self) -> str:
        return (self.log.error if self.log is not None else "") or self.read_error

    def report(self, extra: dict[str, object]) -> None:
        """Sizes and cuts into ``extra``; ``output_bytes_cut`` is the log's cut if there
        is a log (that is where the output lives), else what the captures left out."""
        stderr_total = self.stderr.total if self.stderr is not None else 0
        extra["output_bytes"] = self.stdout.total + stderr_total
        cut = self.log.cut if self.log is not None else self.stdout.cut
        if cut:
            extra["output_bytes_cut"] = cut
        if self.stderr is not None:
            extra["stderr_bytes"] = stderr_total
            if self.log is None and self.stderr.cut:
                extra["stderr_bytes_cut"] = self.stderr.cut

    def close(self) -> None:
        if self.log is not None:
            self.log.close()


_READ_CHUNK = 256 * 1024
_SPAWN_THREADS = 4  # fork+exec waits for the child's exec: a few threads keep the CPUs busy
_spawn_pool: _SpawnPool | None = None
_pidfd_ok: bool | None = None
_HAVE_EPOLL = hasattr(select, "epoll")


def _after_fork_in_child() -> None:
    """A forked child has none of our threads or children: start from a clean slate."""
    global _registry_lock, _spawn_pool, _spawning
    _registry_lock = threading.Lock()
    _spawn_pool = None
    _spawning = 0
    _leaders.clear()
    _muxes.clear()  # the parent's loops are not ours to run


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _have_pidfd() -> bool:
    global _pidfd_ok
    if _pidfd_ok is None:
        try:
            os.close(os.pidfd_open(os.getpid()))
            _pidfd_ok = True
        except (AttributeError, OSError):
            _pidfd_ok = False
    return _pidfd_ok


class _Spawned:
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
        with _registry_lock:
            _leaders.discard(pid)
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


def _devnull_fd() -> int:
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


def _spawn(spec: JobSpec, env: dict[str, str]) -> _Spawned:
    """Create the pipes and start the leader (runs in a spawn thread).

    All of it is syscalls and ``Popen``; done here, none of it occupies the event loop.
    ``Popen(argv)`` is an exec, never a shell. Raises what ``Popen`` raises; nothing is
    left open or running then.
    """
    global _spawning
    read_fds: list[int] = []
    write_fds: list[int] = []  # one pipe for stdout and stderr, or two when split
    try:
        for _ in range(2 if spec.split_stderr else 1):
            read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
            read_fds.append(read_fd)
            write_fds.append(write_fd)
            os.set_blocking(read_fd, False)
        # A forked leader is our child before it is in _leaders: hold orphan reaping off.
        with _registry_lock:
            _spawning += 1
        try:
            popen = subprocess.Popen(
                spec.argv,
                stdin=_devnull_fd(),
                stdout=write_fds[0],
                stderr=write_fds[-1],
                cwd=spec.cwd,
                env=env,
                start_new_session=True,  # own session and group: pgid == sid == pid
                close_fds=True,
            )
        except BaseException:
            with _registry_lock:
                _spawning -= 1
            raise
        with _registry_lock:
            _spawning -= 1
            _leaders.add(popen.pid)  # reaped only by _Child._ended (or abandon)
    except BaseException:
        _close_fds(read_fds)
        raise
    finally:
        _close_fds(write_fds)  # the child has its copies; EOF must come when it is done
    return _Spawned(popen, read_fds)


_Deliver = Callable[["_Spawned | BaseException"], None]


class _SpawnPool:
    """A few threads that run ``_spawn`` and hand each result straight to its loop.

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
            tuple[asyncio.AbstractEventLoop, JobSpec, dict[str, str], _Deliver]
        ] = queue.SimpleQueue()
        self._threads = 0
        self._lock = threading.Lock()

    def submit(
        self,
        loop: asyncio.AbstractEventLoop,
        spec: JobSpec,
        env: dict[str, str],
        deliver: _Deliver,
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

    def _work(self) -> None:
        while True:
            loop, spec, env, deliver = self._requests.get()
            result: _Spawned | BaseException
            try:
                result = _spawn(spec, env)
            except BaseException as exc:  # raised in the awaiting task instead
                result = exc
            try:
                loop.call_soon_threadsafe(deliver, result)
            except RuntimeError:  # the loop is closed: nobody will ever watch this leader
                if isinstance(result, _Spawned):
                    result.abandon()
            del loop, spec, env, deliver, result  # keep nothing alive while idle


def _spawner() -> _SpawnPool:
    global _spawn_pool
    with _registry_lock:
        if _spawn_pool is None:
            _spawn_pool = _SpawnPool(_SPAWN_THREADS)
        return _spawn_pool


class _Handoff:
    """Receives the spawn thread's result for one job's task.

    A cancel while the thread forks must not lose the child, so the task keeps waiting
    (and remembers the cancel) until the result is in: what ``asyncio.shield`` is used
    for, without its extra future and callbacks.
    """

    __slots__ = ("_waiter", "done", "result")

    def __init__(self) -> None:
        self.done = False
        self.result: _Spawned | BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None

    def deliver(self, result: _Spawned | BaseException) -> None:
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


class _Mux:
    """One loop's job descriptors (output pipes, pidfds) in an epoll of our own, which is
    registered with the loop as a single reader.

    Why: ``loop.add_reader`` + ``remove_reader`` cost about 5.5 us of Python per
    descriptor (selector keys, a handle, transport checks), and a job has two or three;
    a raw epoll registration costs 1.4 us, and one loop callback dispatches all that are
    ready. Closed after ``_MUX_IDLE_S`` without descriptors (not at once: with short jobs
    the count touches zero between spawns hundreds of times a batch), and in any case
    when its loop is garbage-collected (``_muxes`` holds loops weakly, the mux holds none).
    """

    __slots__ = ("_callbacks", "_epoll", "_idle_check", "closed")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._epoll = select.epoll()  # close-on-exec
        self._callbacks: dict[int, Callable[[], None]] = {}
        # A flag, not the TimerHandle: the handle refers to the loop, and a mux referring
        # to its loop would keep it alive through _muxes forever.
        self._idle_check = False
        self.closed = False
        try:
            loop.add_reader(self._epoll.fileno(), self._dispatch, loop)
        except BaseException:
            self._epoll.close()
            raise

    def add(self, fd: int, callback: Callable[[], None]) -> None:
        self._epoll.register(fd, select.EPOLLIN)
        self._callbacks[fd] = callback

    def remove(self, loop: asyncio.AbstractEventLoop, fd: int) -> None:
        if self._callbacks.pop(fd, None) is None:
            return
        self._epoll.unregister(fd)
        if not self._callbacks and not self._idle_check:
            self._idle_check = True
            loop.call_later(_MUX_IDLE_S, self._close_if_idle, loop)

    def _close_if_idle(self, loop: asyncio.AbstractEventLoop) -> None:
        self._idle_check = False
        if self._callbacks:
            return  # busy again; the next time it empties schedules another check
        self.closed = True
        if _muxes.get(loop) is self:
            del _muxes[loop]
        loop.remove_reader(self._epoll.fileno())
        self._epoll.close()

    def _dispatch(self, loop: asyncio.AbstractEventLoop) -> None:
        for fd, _events in self._epoll.poll(0):
            callback = self._callbacks.get(fd)  # None: removed by an earlier callback
            if callback is None:
                continue
            try:
                callback()
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:  # as the loop treats a failing reader callback
                loop.call_exception_handler(
                    {"message": "Exception in a job watcher callback", "exception": exc}
                )


_MUX_IDLE_S = 1.0
_muxes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Mux] = (
    weakref.WeakKeyDictionary()
)


def _mux_for(loop: asyncio.AbstractEventLoop) -> _Mux | None:
    """The loop's mux; None where there is no epoll (or the loop takes no weak
    references): then descriptors go to ``loop.add_reader`` one by one."""
    if not _HAVE_EPOLL:
        return None
    try:
        mux = _muxes.get(loop)
        if mux is None or mux.closed:
            mux = _Mux(loop)
            _muxes[loop] = mux
    except TypeError:
        return None
    return mux


class _Child:
    """A running leader, watched by the loop: output pipes into ``output``, and its exit.

    The exit, cheaply: the kernel closes a dying process's files just before it becomes a
    zombie, so when the output pipes reach EOF the leader has almost always exited, and
    one ``waitpid(WNOHANG)`` reaps it. Only if it has not (it closed its output but runs
    on), or if EOF has not come within ``_EXIT_WATCH_DELAY_S`` (a background process may
    hold the pipes forever), or once the runner needs the exit for a kill, is the exit
    watched: a pidfd on the loop (per job that is a pidfd_open, two epoll_ctl and a close
    saved for short jobs), or without pidfds a thread waiting.

    State is three flags — ``exited`` (reaped: its status collected, only here, so the pid
    cannot be reused while we may still signal its group), ``eof`` (every output pipe
    closed), ``time_is_up`` — and ``until`` waits for a condition on them. That is cheaper
    than asyncio.Event + wait_for (a task per call on 3.11), and runs several times a job.
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, spawned: _Spawned, output: _Output
    ) -> None:
        self.loop = loop
        self.popen = spawned.popen
        self.pid = spawned.popen.pid
        self.output = output
        self.exited = False
        self.eof = False
        self.time_is_up = False
        self._waiters: list[asyncio.Future[None]] = []
        captures = [output.stdout] if output.stderr is None else [output.stdout, output.stderr]
        self._open: dict[int, _Capture] = {}
        self._fds = list(zip(spawned.read_fds, captures, strict=True))
        self._exit_watched = False
        self._timer: asyncio.TimerHandle | None = None  # see start_clock
        self._deadline: float | None = None
        self._pidfd: int | None = None
        self._exit_waiter: asyncio.Future[int] | None = None
        self._mux: _Mux | None = None

    def _watch_fd(self, fd: int, callback: Callable[[], None]) -> None:
        """Call ``callback`` when ``fd`` is readable: through the loop's mux if it has one."""
        mux = self._mux
        if mux is None or mux.closed:  # closed only when none of our fds were in it
            mux = self._mux = _mux_for(self.loop)
        if mux is None:
            self.loop.add_reader(fd, callback)
        else:
            mux.add(fd, callback)

    def _unwatch_fd(self, fd: int) -> None:
        """Undo ``_watch_fd`` (a no-op for a descriptor not watched)."""
        if self._mux is None:
            self.loop.remove_reader(fd)
        else:
            self._mux.remove(self.loop, fd)

    def watch(self) -> None:
        """Register the pipes with the loop; on failure the caller must ``detach`` and
        abandon the spawn (the job must not run on unwatched)."""
        for fd, capture in self._fds:
            self._open[fd] = capture
            self._watch_fd(fd, functools.partial(self._readable, fd))
        if not _have_pidfd():
            self.watch_exit()  # a thread waits from the start; start_clock does the rest

    def start_clock(self, limit: float | None) -> None:
        """Start the job's one timer: first, after ``_EXIT_WATCH_DELAY_S``, it watches the
        exit if EOF has not reaped the leader by then; then it ends the job's time, after
        ``limit`` seconds (None: no limit). One timer, not two: asyncio keeps timers in a
        heap ordered by Python-level comparisons, a visible cost per short job."""
        loop = self.loop
        self._deadline = None if limit is None else loop.time() + limit
        if not self._exit_watched and (limit is None or limit > _EXIT_WATCH_DELAY_S):
            self._timer = loop.call_later(_EXIT_WATCH_DELAY_S, self._tick)
        elif self._deadline is not None:
            self._timer = loop.call_at(self._deadline, self._time_up)

    def stop_clock(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self) -> None:
        self._timer = None
        if self._deadline is not None:  # armed first: the job's time must end regardless
            self._timer = self.loop.call_at(self._deadline, self._time_up)
        self.watch_exit()

    def _time_up(self) -> None:
        self._timer = None
        if not self.exited and self.popen.poll() is not None:
            # It did exit in time; nothing had told us yet (EOF still pending, exit not
            # watched yet): a pass or fail, not a timeout.
            self._reaped()
        self.time_is_up = True
        self._changed()

    def watch_exit(self) -> None:
        """Have the leader's exit wake the loop from now on (see the class docstring)."""
        if self.exited or self._exit_watched:
            return
        self._exit_watched = True
        if _have_pidfd():
            try:
                self._pidfd = os.pidfd_open(self.pid)  # unreaped, so never ESRCH
                self._watch_fd(self._pidfd, self._ended)
                return
            except OSError:  # e.g. EMFILE: wait in a thread rather than not at all
                if self._pidfd is not None:
                    os.close(self._pidfd)
                    self._pidfd = None
        self._exit_waiter = self.loop.run_in_executor(None, self.popen.wait)
        self._exit_waiter.add_done_callback(lambda _: self._ended())

    def detach(self) -> None:
        """Undo ``watch`` as far as it got; the pipes stay open (abandon closes them)."""
        for fd, _capture in self._fds:
            self._unwatch_fd(fd)
        self._open.clear()
        self.stop_clock()

    def _readable(self, fd: int) -> None:
        capture = self._open.get(fd)
        if capture is None:
            return
        try:
            data = os.read(fd, _READ_CHUNK)
        except BlockingIOError:
            return
        except OSError as exc:
            out = self.output
            out.read_error = out.read_error or f"output read failed: {exc.strerror}"
            data = b""
        if data:
            self.output.write(capture, data)
        else:
            self._close_pipe(fd)

    def _close_pipe(self, fd: int) -> None:
        if self._open.pop(fd, None) is not None:
            self._unwatch_fd(fd)
            os.close(fd)
        if not self._open and not self.eof:
            self.eof = True
            if not self._exit_watched and not self.exited:
                if self.popen.poll() is not None:  # waitpid(WNOHANG): the usual case
                    self._reaped()
                else:
                    self.watch_exit()
            self._changed()

    def _ended(self) -> None:
        """The pidfd (or the waiting thread) says the leader exited."""
        if self._pidfd is not None:
            self._unwatch_fd(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        self.popen.wait()  # it exited: this reaps without blocking
        self._reaped()
        self._changed()

    def _reaped(self) -> None:
        with _registry_lock:
            _leaders.discard(self.pid)
        self.exited = True

    def _changed(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def ended_or_time_up(self) -> bool:
        return self.exited or self.time_is_up

    def is_exited(self) -> bool:
        return self.exited

    def is_eof(self) -> bool:
        return self.eof

    async def until(self, cond: Callable[[], bool], timeout: float | None = None) -> bool:
        """Wait until ``cond()`` holds (True) or ``timeout`` seconds have passed (False)."""
        if cond():
            return True
        if timeout is not None and timeout <= 0:
            return False
        loop = self.loop
        expired = False
        timer = None
        if timeout is not None:

            def expire() -> None:
                nonlocal expired
                expired = True
                self._changed()

            timer = loop.call_later(timeout, expire)
        try:
            while not cond():
                if expired:
                    return False
                waiter = loop.create_future()
                self._waiters.append(waiter)
                await waiter
            return True
        finally:
            if timer is not None:
                timer.cancel()

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode

    def close(self) -> None:
        """Stop watching the pipes (an unattributed holder may keep one open forever);
        a leader not reaped yet stays watched, to be reaped when it does exit."""
        for fd in list(self._open):
            self._close_pipe(fd)
        self.watch_exit()


# ---------------------------------------------------------------------------------------


_SCRUB_INITIALS = frozenset(p[0] for p in SCRUBBED_ENV_PREFIXES)


def scrub_env(env: dict[str, str]) -> dict[str, str]:
    """A copy of the job's environment without systemd's per-service variables."""
    out = dict(env)
    for key in [k for k in out if k[:1] in _SCRUB_INITIALS and k.startswith(SCRUBBED_ENV_PREFIXES)]:
        del out[key]
    return out


def _spawn_error_message(spec: JobSpec, exc: OSError | ValueError) -> str:
    if not isinstance(exc, OSError):  # e.g. a NUL byte in an argument
        return f"cannot run '{spec.argv[0]}': {exc}"
    reason = exc.strerror or str(exc)
    if exc.filename is not None and str(exc.filename) == str(spec.cwd):
        return f"working directory '{spec.cwd}' is not usable: {reason}"
    prog = spec.argv[0]
    if exc.errno == errno.ENOENT and os.sep in prog and (spec.cwd / prog).exists():
        reason += " (its #! interpreter was not found)"
    elif exc.errno == errno.ENOEXEC:
        reason += " (no #! line?)"
    return f"cannot run '{prog}': {reason}"


def _timeout_of(spec: JobSpec) -> float | None:
    t = spec.timeout_s
    return None if t is None or t <= 0 or math.isinf(t) else t


async def _wait_group_gone(pgid: int, limit_s: float, hurry: asyncio.Event | None) -> bool:
    """Wait until group ``pgid`` has no running members; as subreaper, reap its zombies."""
    deadline = time.monotonic() + limit_s
    delay = 0.002
    reaper = janitor.is_subreaper()
    while True:
        if reaper:
            janitor.reap_group_zombies(pgid, job_leaders())
        if not janitor.group_alive(pgid) or not janitor.live_group_members(pgid):
            return True  # empty, or only zombies that are not ours to reap
        if time.monotonic() >= deadline or (hurry is not None and hurry.is_set()):
            return False
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)


async def _end_job(
    spec: JobSpec,
    job_id: str,
    pid: int,
    child: _Child,
    kill: bool,
    hurry: asyncio.Event,
    eof_grace_s: float,
) -> dict[str, object]:
    """Empty the job's group, reap the leader, sweep escapees. Always runs to the end.

    ``eof_grace_s``: how long a pipe still open after the leader's exit may take to close
    before it counts as held by an escapee (0 when the caller already waited that long).
    """
    extra: dict[str, object] = {}
    pgid = pid  # start_new_session: the leader leads its own group and session
    # Reap the leader as soon as it dies: a zombie leader keeps the group "alive" to
    # killpg, which would make _wait_group_gone fall back to /proc scans.
    child.watch_exit()
    crowded = kill or janitor.group_alive(pgid)
    if crowded:
        sig = signal.SIGTERM
        gone = False
        if spec.kill_grace_s > 0 and not hurry.is_set():
            janitor.signal_group(pgid, signal.SIGTERM)
            gone = await _wait_group_gone(pgid, spec.kill_grace_s, hurry)
        if not gone:
            sig = signal.SIGKILL
            janitor.signal_group(pgid, signal.SIGKILL)
            if not await _wait_group_gone(pgid, _KILL_WAIT_S, None):
                extra["group_unreaped"] = janitor.live_group_members(pgid)
        extra["group_signal"] = sig.name
    if not await child.until(child.is_exited, _KILL_WAIT_S):
        extra["leader_unreaped"] = pid  # unkillable (D state); reaped when it does exit
    if janitor.is_subreaper():
        report = await janitor.sweep_adopted(job_id, pgid, job_leaders)
    elif crowded or not await child.until(child.is_eof, eof_grace_s):
        # Group empty but someone still holds the output pipe: an escapee. Find it.
        report = await janitor.sweep_marked(job_id, pgid)
    else:
        report = None
    if report is not None and report.killed:
        extra["escapees_killed"] = report.killed
    if report is not None and report.unreaped:
        extra["escapees_unreaped"] = report.unreaped
    return extra


def _last_resort_kill(pgid: int, job_id: str) -> None:
    janitor.signal_group(pgid, signal.SIGKILL)
    janitor.kill_marked(job_id, rounds=3)


def _result_of(rc: int | None, timed_out: bool, spec: JobSpec) -> tuple[Result, int | None, str]:
    if timed_out:
        return "timeout", TIMEOUT_EXIT_CODE, f"timed out after {spec.timeout_s:g} s"
    if rc is None:
        return "error", None, "the process did not exit after SIGKILL"
    if rc == 0:
        return "pass", 0, ""
    if rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = f"signal {-rc}"
        return "fail", 128 - rc, f"killed by {name}"
    return "fail", rc, ""


async def run_job(
    spec: JobSpec, on_started: Callable[[int], None] | None = None
) -> JobOutcome:
    """Run ``spec``; on cancellation kill the group, reap, then re-raise CancelledError."""
    started_at = time.time()
    t0 = time.monotonic()
    job_id = spec.job_id or f"anon-{uuid.uuid4().hex}"

    def early_error(message: str) -> JobOutcome:
        return JobOutcome(
            result="error",
            exit_code=None,
            duration_s=time.monotonic() - t0,
            output_tail="",
            error_message=message,
            started_at=started_at,
            finished_at=time.time(),
        )

    if not spec.argv:
        return early_error("empty command")
    # A missing cwd is reported by the spawn itself (chdir fails in the child): no stat here.
    env = scrub_env(spec.env)
    env[janitor.MARKER_VAR] = job_id
    try:
        output = _Output(spec)
    except OSError as exc:
        return early_error(f"cannot open log file '{spec.log_path}': {exc.strerror}")

    try:
        return await _run_spawned(spec, job_id, env, output, on_started, started_at, t0)
    finally:
        output.close()


def _close_fds(fds: list[int]) -> None:
    for fd in fds:
        with suppress(OSError):
            os.close(fd)


async def _run_spawned(
    spec: JobSpec,
    job_id: str,
    env: dict[str, str],
    output: _Output,
    on_started: Callable[[int], None] | None,
    started_at: float,
    t0: float,
) -> JobOutcome:
    loop = asyncio.get_running_loop()
    handoff = _Handoff()
    _spawner().submit(loop, spec, env, handoff.deliver)
    cancelled = await handoff.wait(loop)  # a cancel mid-fork waits for the child: not lost
    spawned = handoff.result
    if not isinstance(spawned, _Spawned):
        assert spawned is not None
        if cancelled:
            raise asyncio.CancelledError() from spawned
        if not isinstance(spawned, (OSError, ValueError)):
            raise spawned
        return JobOutcome(
            result="error",
            exit_code=None,
            duration_s=time.monotonic() - t0,
            output_tail="",
            error_message=_spawn_error_message(spec, spawned),
            started_at=started_at,
            finished_at=time.time(),
        )
    pid = spawned.popen.pid
    child = _Child(loop, spawned, output)
    try:
        child.watch()
    except BaseException:  # do not leave the job running unwatched
        child.detach()
        spawned.abandon()
        raise

    timed_out = False
    failure: BaseException | None = None
    if not cancelled:
        child.start_clock(_timeout_of(spec))
        try:
            if on_started is not None:
                on_started(pid)
            await child.until(child.ended_or_time_up)
            timed_out = not child.exited
        except asyncio.CancelledError:
            cancelled = True
        except Exception as exc:  # on_started failed: still kill and reap, then re-raise
            failure = exc
    child.stop_clock()

    kill = timed_out or cancelled or failure is not None
    extra: dict[str, object] | None = None
    eof_grace_s = _EOF_GRACE_S
    if (
        not kill
        and not janitor.group_alive(pid)
        and (not janitor.is_subreaper() or not janitor.adopted_children(job_leaders()))
    ):
        # The common case: leader exited, group empty, nothing adopted that a sweep could
        # find (a subreaper's escapees are our children by now; without subreaper this
        # touches no /proc at all). The pipes normally close with the exit, but a child
        # another spawn thread is forking holds copies of them until it execs, so EOF
        # may trail the exit a little: wait for it here, within the grace, rather than in
        # a cleanup task (a measurable cost per short job, and a third of them on a busy
        # 2-CPU machine).
        try:
            if await child.until(child.is_eof, _EOF_GRACE_S):
                extra = {}
        except asyncio.CancelledError:
            cancelled = True
        eof_grace_s = 0.0  # waited already (or cancelled: no more waiting)
    if extra is None:
        extra, cancelled_again = await _end_job_uninterrupted(
            spec, job_id, pid, child, kill, eof_grace_s
        )
        cancelled = cancelled or cancelled_again
    try:
        if not await child.until(child.is_eof, _DRAIN_TIMEOUT_S):
            extra["output_pipe_held"] = True  # an unattributed process kept the pipe open
    except asyncio.CancelledError:
        cancelled = True
    child.close()
    if failure is not None:
        raise failure
    if cancelled:
        raise asyncio.CancelledError()

    result, exit_code, message = _result_of(child.returncode, timed_out, spec)
    if timed_out and "group_signal" in extra:
        message += f"; process group sent {extra['group_signal']}"
    if output.error:
        extra["log_error"] = output.error
    output.report(extra)
    return JobOutcome(
        result=result,
        exit_code=exit_code,
        duration_s=time.monotonic() - t0,
        output_tail=output.stdout.tail(),
        error_message=message,
        pid=pid,
        started_at=started_at,
        finished_at=time.time(),
        extra=extra,
        stderr_tail=output.stderr.tail() if output.stderr is not None else "",
        output=output.stdout.text(),
        stderr_output=output.stderr.text() if output.stderr is not None else "",
    )


async def _end_job_uninterrupted(
    spec: JobSpec,
    job_id: str,
    pid: int,
    child: _Child,
    kill: bool,
    eof_grace_s: float,
) -> tuple[dict[str, object], bool]:
    """Run ``_end_job`` to completion even if we are cancelled (again) meanwhile.

    A cancel during cleanup skips the remaining grace (SIGKILL at once) but still waits
    for the kill, the reaping and the sweep. Returns the cleanup's report and whether a
    cancel arrived meanwhile (the caller re-raises it once everything is done).
    """
    hurry = asyncio.Event()
    cancelled = False
    ending = asyncio.ensure_future(
        _end_job(spec, job_id, pid, child, kill, hurry, eof_grace_s)
    )
    while not ending.done():
        try:
            await asyncio.shield(ending)
        except asyncio.CancelledError:
            # Cancelled (again) while cleaning up: skip the grace, SIGKILL now, still reap.
            cancelled = True
            hurry.set()
    if ending.cancelled():
        # The cleanup task itself was cancelled: only a loop shutting down does that (e.g.
        # asyncio.run cancelling every task of a caller that never awaited us). No more
        # awaiting is possible; kill synchronously, as a last resort.
        _last_resort_kill(pid, job_id)
        child.close()
        raise asyncio.CancelledError()
    return ending.result(), cancelled
