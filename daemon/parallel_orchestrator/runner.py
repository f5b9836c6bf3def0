"""Run one job: its own process group, a timeout, a kill that always reaps, bounded output.

The contract is that no process a job started outlives the job. So after the leader ends
— normally, by timeout, or because the awaiting task was cancelled — the job's process
group is emptied (SIGTERM, ``kill_grace_s``, SIGKILL), the leader is reaped, and the
janitor sweeps descendants that escaped the group. The normal path stays cheap: one
``killpg(pgid, 0)`` shows the group is empty, and the escapee sweep is a listing of our
own children (subreaper) or skipped (no subreaper and nothing suspicious).

How a job is started: ``subprocess.Popen(argv)`` — an exec, never a shell — called in a
small shared thread pool, then watched by the event loop: the output pipe with
``add_reader`` (chunks go straight to bounded buffers) and the exit with a pidfd. Why not
``asyncio.create_subprocess_exec``: it forks in the event-loop thread, and a vfork parent
waits until the child has exec'd, so spawns are serialised on the loop; on a busy 2-CPU
machine that made 500 short jobs 2-4x slower than the original thread pool (see
docs/benchmarks.md, "Executor"). With the fork in a worker thread the loop keeps running,
and we are as fast as the thread pool without a thread per job. Without pidfds (not Linux,
kernel < 5.3) the exit is awaited in that pool instead — correct, but one thread per job.

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
        data = self._ring.last(self._tail_bytes)
        if self.total > len(data):
            data = _skip_partial_char(data)
        return data.decode("utf-8", errors="replace")

    def text(self) -> str:
        if not self._capturing:
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


def _popen(
    spec: JobSpec, env: dict[str, str], write_fds: list[int]
) -> subprocess.Popen[bytes]:
    """Start the leader (runs in a spawn thread); the parent's copies of the pipes are closed.

    ``write_fds``: one pipe for stdout and stderr, or two (stdout, stderr) when split.
    """
    try:
        return subprocess.Popen(
            spec.argv,
            stdin=subprocess.DEVNULL,
            stdout=write_fds[0],
            stderr=write_fds[-1],
            cwd=spec.cwd,
            env=env,
            start_new_session=True,  # own session and group: pgid == sid == pid
            close_fds=True,
        )
    finally:
        for fd in write_fds:
            os.close(fd)


class _Child:
    """A running leader, watched by the loop: output pipes into ``output``, exit via pidfd.

    ``wake`` is set by the exit or by the timeout; ``reaped`` once its status is collected
    (only here, so the pid cannot be reused while we may still signal its group).
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        popen: subprocess.Popen[bytes],
        read_fds: list[int],
        output: _Output,
    ) -> None:
        self.loop = loop
        self.popen = popen
        self.pid = popen.pid
        self.output = output
        self.wake = asyncio.Event()
        self.reaped = asyncio.Event()
        self.eof = asyncio.Event()  # every output pipe closed
        self.exited = False
        captures = [output.stdout] if output.stderr is None else [output.stdout, output.stderr]
        self._open: dict[int, _Capture] = {}
        self._pidfd: int | None = None
        self._waiter: asyncio.Future[int] | None = None
        for fd, capture in zip(read_fds, captures, strict=True):
            os.set_blocking(fd, False)
            loop.add_reader(fd, self._readable, fd)
            self._open[fd] = capture
        if _have_pidfd():
            self._pidfd = os.pidfd_open(self.pid)  # works on a zombie too: never ESRCH here
            loop.add_reader(self._pidfd, self._ended)
        else:
            self._waiter = loop.run_in_executor(None, popen.wait)
            self._waiter.add_done_callback(lambda _: self._ended())

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
            self.loop.remove_reader(fd)
            os.close(fd)
        if not self._open:
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
        """Stop watching the pipes (an unattributed holder may keep one open forever)."""
        for fd in list(self._open):
            self._close_pipe(fd)


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
    cancelled = False
    with _spawn_in_flight():
        read_fds: list[int] = []
        write_fds: list[int] = []
        try:
            for _ in range(2 if spec.split_stderr else 1):
                read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
                read_fds.append(read_fd)
                write_fds.append(write_fd)
            spawn = loop.run_in_executor(_spawner(), _popen, spec, env, write_fds)
        except BaseException:
            _close_fds(read_fds + write_fds)
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
            _close_fds(read_fds)
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
            _close_fds(read_fds)
            raise
        pid = popen.pid
        with _registry_lock:
            _leaders.add(pid)  # reaped only by child._ended, so it is still unreaped here
        try:
            child = _Child(loop, popen, read_fds, output)
        except BaseException:  # e.g. EMFILE on pidfd_open: do not leave the job running
            janitor.signal_group(pid, signal.SIGKILL)
            popen.wait()
            with _registry_lock:
                _leaders.discard(pid)
            for fd in read_fds:
                loop.remove_reader(fd)
            _close_fds(read_fds)
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
