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
and we are as fast as the thread pool without a thread per job. That lives in
``spawner`` (the pool and the registry of job leaders).

What a short job costs is mostly per-job bookkeeping, so the hot path is kept lean (each
choice is explained where it is made): the spawn result reaches the loop by one
``call_soon_threadsafe`` (``_SpawnPool``); a loop's pipes and pidfds share one epoll of our
own (``_Mux``) instead of costing an ``add_reader`` each; the leader is reaped when its
output reaches EOF, and its exit is watched by a pidfd only when EOF does not come soon
or a kill needs it (``_Child``); waits use one future each, not Event + wait_for. Without
pidfds (not Linux, kernel < 5.3) the exit is awaited in a thread instead — correct, but
one thread per job. The mux and the watching live in ``leaderwatch``.

Output: by default stdout and stderr share one pipe, so the run log keeps the order of
lines as a terminal would show them (what the daemon wants). ``split_stderr`` gives stderr
its own pipe (what the executor API needs: the original tool returned the two streams
separately); both pipes are watched by the loop the same way. Every buffer has a fixed
cap: a job printing gigabytes costs at most the log's and the captures' caps in memory
(``outputsink``).

This module keeps the job's life cycle — spec, outcome, environment scrubbing, and the
kill-and-cleanup that ends every job — and is the API the rest of the package imports.
"""

from __future__ import annotations

import asyncio
import errno
import math
import os
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from . import janitor
from .childwatch import install_child_watcher
from .leaderwatch import _Child
from .outputsink import _Output, cut_marker, make_private_dirs
from .spawner import (
    _Handoff,
    _Spawned,
    _spawner,
    job_leaders,
    reap_orphan_zombies,
)

# Names other modules import from here (the runner is the package's job-running API).
__all__ = [
    "SCRUBBED_ENV_PREFIXES",
    "TIMEOUT_EXIT_CODE",
    "JobOutcome",
    "JobSpec",
    "Result",
    "cut_marker",
    "install_child_watcher",
    "job_leaders",
    "make_private_dirs",
    "reap_orphan_zombies",
    "run_job",
    "scrub_env",
]

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


async def run_job(spec: JobSpec, on_started: Callable[[int], None] | None = None) -> JobOutcome:
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
    ending = asyncio.ensure_future(_end_job(spec, job_id, pid, child, kill, hurry, eof_grace_s))
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
