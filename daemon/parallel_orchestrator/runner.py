"""Run one job: its own process group, a timeout, a kill that always reaps, bounded output.

The contract is that no process a job started outlives the job. So after the leader ends
— normally, by timeout, or because the awaiting task was cancelled — the job's process
group is emptied (SIGTERM, ``kill_grace_s``, SIGKILL), the leader is reaped, and the
janitor sweeps descendants that escaped the group. The normal path stays cheap: one
``killpg(pgid, 0)`` shows the group is empty, and the escapee sweep is a listing of our
own children (subreaper) or skipped (no subreaper and nothing suspicious).

How a job is started: ``subprocess.Popen(argv)`` — an exec, never a shell — called in a
small shared thread pool, then watched by the event loop: the output pipe with
``add_reader`` (chunks go straight to a bounded sink) and the exit with a pidfd. Why not
``asyncio.create_subprocess_exec``: it forks in the event-loop thread, and a vfork parent
waits until the child has exec'd, so spawns are serialised on the loop; on a busy 2-CPU
machine that made 500 short jobs 2-4x slower than the original thread pool (see
docs/benchmarks.md, "Executor"). With the fork in a worker thread the loop keeps running,
and we are as fast as the thread pool without a thread per job. Without pidfds (not Linux,
kernel < 5.3) the exit is awaited in that pool instead — correct, but one thread per job.
"""

from __future__ import annotations

import asyncio
import errno
import math
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
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


@dataclass(frozen=True)
class JobOutcome:
    result: Result
    exit_code: int | None  # 124 on timeout; None when it never ran or was cancelled
    duration_s: float
    output_tail: str  # last ~tail_bytes of output, undecodable bytes replaced
    error_message: str = ""
    pid: int | None = None
    started_at: float = 0.0  # time.time()
    finished_at: float = 0.0
    extra: dict[str, object] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------
# Which of our children are job leaders (the janitor must never reap those).

_registry_lock = threading.Lock()
_leaders: set[int] = set()
_spawning = 0


@contextmanager
def _spawn_in_flight() -> Iterator[None]:
    """Mark a spawn whose pid is not yet in ``_leaders`` (so orphan reaping holds off)."""
    global _spawning
    with _registry_lock:
        _spawning += 1
    try:
        yield
    finally:
        with _registry_lock:
            _spawning -= 1


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


class _OutputSink:
    """Combined output: the first half of the cap goes to the log as it arrives, the last
    half waits in a ring and is written at the end, after a marker saying what was cut."""

    def __init__(self, log_path: Path | None, max_log_bytes: int, tail_bytes: int) -> None:
        self._fd = _open_log(log_path) if log_path is not None else None
        self._tail_bytes = max(0, tail_bytes)
        head = max(0, max_log_bytes) // 2 if self._fd is not None else 0
        self._head_left = head
        self._head_tail = b""  # last tail_bytes of the head, for output_tail of short output
        ring = max(0, max_log_bytes) - head if self._fd is not None else 0
        self._ring_cap = max(ring, self._tail_bytes)
        self._ring: deque[bytes] = deque()
        self._ring_len = 0
        self.total = 0
        self.cut = 0
        self.error = ""

    def write(self, data: bytes) -> None:
        self.total += len(data)
        if self._head_left:
            head = data[: self._head_left]
            self._head_left -= len(head)
            self._write_file(head)
            if self._tail_bytes:
                self._head_tail = (self._head_tail + head)[-self._tail_bytes :]
            data = data[len(head) :]
            if not data:
                return
        self._ring.append(data)
        self._ring_len += len(data)
        excess = self._ring_len - self._ring_cap
        while excess > 0:
            first = self._ring[0]
            if len(first) <= excess:
                self._ring.popleft()
                n = len(first)
            else:
                self._ring[0] = first[excess:]
                n = excess
            self._ring_len -= n
            self.cut += n
            excess -= n

    def _write_file(self, data: bytes) -> None:
        if self._fd is None:
            return
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as exc:
            # Disk full or similar: stop logging, keep the tail, and say so in the outcome.
            self.error = f"log write failed: {exc.strerror}"
            os.close(self._fd)
            self._fd = None

    def tail(self) -> str:
        n = self._tail_bytes
        if not n:
            return ""
        data = b"".join(self._ring)
        if len(data) < n:
            data = self._head_tail + data
        data = data[-n:]
        if self.total > len(data):  # cut inside the stream: skip a partial UTF-8 character
            i = 0
            while i < min(3, len(data)) and 0x80 <= data[i] <= 0xBF:
                i += 1
            data = data[i:]
        return data.decode("utf-8", errors="replace")

    def close(self) -> None:
        if self._fd is None:
            return
        if self.cut:
            self._write_file(cut_marker(self.cut))
        for chunk in self._ring:
            self._write_file(chunk)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


_READ_CHUNK = 256 * 1024
_SPAWN_THREADS = 4  # fork+exec waits for the child's exec: a few threads keep the CPUs busy
_spawn_pool: ThreadPoolExecutor | None = None
_pidfd_ok: bool | None = None


def _after_fork_in_child() -> None:
    """A forked child has none of our threads or children: start from a clean slate."""
    global _registry_lock, _spawn_pool, _spawning
    _registry_lock = threading.Lock()
    _spawn_pool = None
    _spawning = 0
    _leaders.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _spawner() -> ThreadPoolExecutor:
    global _spawn_pool
    with _registry_lock:
        if _spawn_pool is None:
            _spawn_pool = ThreadPoolExecutor(_SPAWN_THREADS, thread_name_prefix="po-spawn")
        return _spawn_pool


def _have_pidfd() -> bool:
    global _pidfd_ok
    if _pidfd_ok is None:
        try:
            os.close(os.pidfd_open(os.getpid()))
            _pidfd_ok = True
        except (AttributeError, OSError):
            _pidfd_ok = False
    return _pidfd_ok


def _popen(spec: JobSpec, env: dict[str, str], write_fd: int) -> subprocess.Popen[bytes]:
    """Start the leader (runs in a spawn thread); the parent's copy of the pipe is closed."""
    try:
        return subprocess.Popen(
            spec.argv,
            stdin=subprocess.DEVNULL,
            stdout=write_fd,
            stderr=write_fd,
            cwd=spec.cwd,
            env=env,
            start_new_session=True,  # own session and group: pgid == sid == pid
            close_fds=True,
        )
    finally:
        os.close(write_fd)


class _Child:
    """A running leader, watched by the loop: output into the sink, exit via pidfd.

    ``wake`` is set by the exit or by the timeout; ``reaped`` once its status is collected
    (only here, so the pid cannot be reused while we may still signal its group).
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        popen: subprocess.Popen[bytes],
        read_fd: int,
        sink: _OutputSink,
    ) -> None:
        self.loop = loop
        self.popen = popen
        self.pid = popen.pid
        self.sink = sink
        self.wake = asyncio.Event()
        self.reaped = asyncio.Event()
        self.eof = asyncio.Event()
        self.exited = False
        self._read_fd: int | None = read_fd
        self._pidfd: int | None = None
        self._waiter: asyncio.Future[int] | None = None
        os.set_blocking(read_fd, False)
        loop.add_reader(read_fd, self._readable)
        if _have_pidfd():
            self._pidfd = os.pidfd_open(self.pid)  # works on a zombie too: never ESRCH here
            loop.add_reader(self._pidfd, self._ended)
        else:
            self._waiter = loop.run_in_executor(None, popen.wait)
            self._waiter.add_done_callback(lambda _: self._ended())

    def _readable(self) -> None:
        fd = self._read_fd
        if fd is None:
            return
        try:
            data = os.read(fd, _READ_CHUNK)
        except BlockingIOError:
            return
        except OSError as exc:
            self.sink.error = self.sink.error or f"output read failed: {exc.strerror}"
            data = b""
        if data:
            self.sink.write(data)
        else:
            self._close_pipe()

    def _close_pipe(self) -> None:
        if self._read_fd is not None:
            self.loop.remove_reader(self._read_fd)
            os.close(self._read_fd)
            self._read_fd = None
        self.eof.set()

    def _ended(self) -> None:
        if self._pidfd is not None:
            self.loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        self.popen.wait()  # the pidfd said it exited: this reaps without blocking
        with _registry_lock:
            _leaders.discard(self.pid)
        self.exited = True
        self.reaped.set()
        self.wake.set()

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode

    def time_up(self) -> None:
        self.wake.set()

    def close(self) -> None:
        """Stop watching the pipe (an unattributed holder may keep it open forever)."""
        self._close_pipe()


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


async def _event_within(event: asyncio.Event, seconds: float) -> bool:
    if event.is_set():
        return True  # no wait_for (it costs a task on 3.11)
    try:
        await asyncio.wait_for(event.wait(), seconds)
    except TimeoutError:
        return False
    return True


async def _end_job(
    spec: JobSpec,
    job_id: str,
    pid: int,
    child: _Child,
    kill: bool,
    hurry: asyncio.Event,
) -> dict[str, object]:
    """Empty the job's group, reap the leader, sweep escapees. Always runs to the end."""
    extra: dict[str, object] = {}
    pgid = pid  # start_new_session: the leader leads its own group and session
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
    if not await _event_within(child.reaped, _KILL_WAIT_S):
        extra["leader_unreaped"] = pid  # unkillable (D state); reaped when it does exit
    if janitor.is_subreaper():
        report = await janitor.sweep_adopted(job_id, pgid, job_leaders)
    elif crowded or not await _event_within(child.eof, _EOF_GRACE_S):
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
        sink = _OutputSink(spec.log_path, spec.max_log_bytes, spec.tail_bytes)
    except OSError as exc:
        return early_error(f"cannot open log file '{spec.log_path}': {exc.strerror}")

    try:
        return await _run_spawned(spec, job_id, env, sink, on_started, started_at, t0)
    finally:
        sink.close()


async def _run_spawned(
    spec: JobSpec,
    job_id: str,
    env: dict[str, str],
    sink: _OutputSink,
    on_started: Callable[[int], None] | None,
    started_at: float,
    t0: float,
) -> JobOutcome:
    loop = asyncio.get_running_loop()
    cancelled = False
    with _spawn_in_flight():
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        try:
            spawn = loop.run_in_executor(_spawner(), _popen, spec, env, write_fd)
        except BaseException:
            os.close(read_fd)
            os.close(write_fd)
            raise
        # A cancel while the thread forks must not lose the child: let the spawn finish.
        while not spawn.done():
            try:
                await asyncio.shield(spawn)
            except asyncio.CancelledError:
                cancelled = True
            except (OSError, ValueError):
                break  # reported below, from spawn.result()
        try:
            popen = spawn.result()
        except (OSError, ValueError) as exc:
            os.close(read_fd)
            if cancelled:
                raise asyncio.CancelledError() from exc
            return JobOutcome(
                result="error",
                exit_code=None,
                duration_s=time.monotonic() - t0,
                output_tail="",
                error_message=_spawn_error_message(spec, exc),
                started_at=started_at,
                finished_at=time.time(),
            )
        except BaseException:
            os.close(read_fd)
            raise
        pid = popen.pid
        with _registry_lock:
            _leaders.add(pid)  # reaped only by child._ended, so it is still unreaped here
        try:
            child = _Child(loop, popen, read_fd, sink)
        except BaseException:  # e.g. EMFILE on pidfd_open: do not leave the job running
            janitor.signal_group(pid, signal.SIGKILL)
            popen.wait()
            with _registry_lock:
                _leaders.discard(pid)
            loop.remove_reader(read_fd)
            with suppress(OSError):
                os.close(read_fd)
            raise

    timed_out = False
    failure: BaseException | None = None
    limit = _timeout_of(spec)
    timer = None
    if limit is not None:
        timer = loop.call_later(limit, child.time_up)
    if not cancelled:
        try:
            if on_started is not None:
                on_started(pid)
            await child.wake.wait()
            timed_out = not child.exited
        except asyncio.CancelledError:
            cancelled = True
        except Exception as exc:  # on_started failed: still kill and reap, then re-raise
            failure = exc
    if timer is not None:
        timer.cancel()

    kill = timed_out or cancelled or failure is not None
    if (
        not kill
        and child.eof.is_set()
        and not janitor.is_subreaper()
        and not janitor.group_alive(pid)
    ):
        # The common case, decided without awaiting: group empty, pipe closed, and no
        # subreaper sweep to do. Skips the cleanup task (a measurable cost per short job).
        extra: dict[str, object] = {}
    else:
        extra, cancelled_again = await _end_job_uninterrupted(
            spec, job_id, pid, child, kill
        )
        cancelled = cancelled or cancelled_again
    try:
        if not await _event_within(child.eof, _DRAIN_TIMEOUT_S):
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
    if sink.error:
        extra["log_error"] = sink.error
    extra["output_bytes"] = sink.total
    if sink.cut:
        extra["output_bytes_cut"] = sink.cut
    return JobOutcome(
        result=result,
        exit_code=exit_code,
        duration_s=time.monotonic() - t0,
        output_tail=sink.tail(),
        error_message=message,
        pid=pid,
        started_at=started_at,
        finished_at=time.time(),
        extra=extra,
    )


async def _end_job_uninterrupted(
    spec: JobSpec,
    job_id: str,
    pid: int,
    child: _Child,
    kill: bool,
) -> tuple[dict[str, object], bool]:
    """Run ``_end_job`` to completion even if we are cancelled (again) meanwhile.

    A cancel during cleanup skips the remaining grace (SIGKILL at once) but still waits
    for the kill, the reaping and the sweep. Returns the cleanup's report and whether a
    cancel arrived meanwhile (the caller re-raises it once everything is done).
    """
    hurry = asyncio.Event()
    cancelled = False
    ending = asyncio.ensure_future(_end_job(spec, job_id, pid, child, kill, hurry))
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
