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
``spawner`` (the pool) and ``leaders`` (the registry of job leaders).

What a short job costs is mostly per-job bookkeeping, so the hot path is kept lean (each
choice is explained where it is made): the spawn result reaches the loop by one
``call_soon_threadsafe`` (``SpawnPool``); a loop's pipes and pidfds share one epoll of our
own instead of costing an ``add_reader`` each; the leader is reaped when its output
reaches EOF, and its exit is watched by a pidfd only when EOF does not come soon or a kill
needs it (``WatchedLeader``); waits use one future each, not Event + wait_for. Without
pidfds (not Linux, kernel < 5.3) the exit is awaited in a thread instead — correct, but
one thread per job. The mux and the watching live in ``leaderwatch``.

Output: by default stdout and stderr share one pipe, so the run log keeps the order of
lines as a terminal would show them (what the daemon wants). ``split_stderr`` gives stderr
its own pipe (what the executor API needs: the original tool returned the two streams
separately); both pipes are watched by the loop the same way. Every buffer has a fixed
cap: a job printing gigabytes costs at most the log's and the captures' caps in memory
(``outputsink``).

This module keeps the job's life cycle — environment scrubbing, the run's steps (spawn,
watch, await the end, clean up, report) and the kill-and-cleanup that ends every job — and
is the API the rest of the package imports (``JobSpec`` and ``JobOutcome`` live in
``model``, re-exported here).
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
from dataclasses import dataclass

from ..states import ERROR, FAIL, PASS, TIMEOUT
from . import janitor
from .childwatch import install_child_watcher
from .leaders import job_leaders, reap_orphan_zombies
from .leaderwatch import WatchedLeader
from .model import JobOutcome, JobSpec, Result
from .outputsink import JobOutput, cut_marker, make_private_dirs
from .spawner import Handoff, Spawned, spawn_pool

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

# Variables a job must never inherit from a systemd-managed daemon.
SCRUBBED_ENV_PREFIXES: tuple[str, ...] = ("NOTIFY_SOCKET", "WATCHDOG_", "LISTEN_")

TIMEOUT_EXIT_CODE = 124
# The kernel closes a dying process's files before it reports the exit, so EOF normally
# arrives together with the exit; still open after this long means another holder.
EOF_GRACE_S = 0.1
# After the leader is gone, how long to wait for whoever still holds the output pipe.
_DRAIN_TIMEOUT_S = 1.0
# How long a SIGKILLed group or leader may take to disappear before we give up waiting.
_KILL_WAIT_S = 2.0

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
    if exc.errno == errno.ENOENT and os.sep not in prog:
        # Where it looked: under systemd PATH is minimal, and Debian has no `python`.
        path = spec.env.get("PATH", os.defpath)
        reason += (
            f"; looked in PATH={path} (give an absolute path, or set PATH in the script's env)"
        )
    elif exc.errno == errno.ENOENT and os.sep in prog and (spec.cwd / prog).exists():
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
    child: WatchedLeader,
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
        return TIMEOUT, TIMEOUT_EXIT_CODE, f"timed out after {spec.timeout_s:g} s"
    if rc is None:
        return ERROR, None, "the process did not exit after SIGKILL"
    if rc == 0:
        return PASS, 0, ""
    if rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = f"signal {-rc}"
        return FAIL, 128 - rc, f"killed by {name}"
    return FAIL, rc, ""


def _error_outcome(message: str, started_at: float, t0: float) -> JobOutcome:
    """The outcome of a job that never ran (bad spec, log not writable, spawn failed)."""
    return JobOutcome(
        result=ERROR,
        exit_code=None,
        duration_s=time.monotonic() - t0,
        output_tail="",
        error_message=message,
        started_at=started_at,
        finished_at=time.time(),
    )


async def run_job(spec: JobSpec, on_started: Callable[[int], None] | None = None) -> JobOutcome:
    """Run ``spec``; on cancellation kill the group, reap, then re-raise CancelledError."""
    started_at = time.time()
    t0 = time.monotonic()
    job_id = spec.job_id or f"anon-{uuid.uuid4().hex}"
    if not spec.argv:
        return _error_outcome("empty command", started_at, t0)
    # A missing cwd is reported by the spawn itself (chdir fails in the child): no stat here.
    env = scrub_env(spec.env)
    env[janitor.MARKER_VAR] = job_id
    try:
        output = JobOutput(spec)
    except OSError as exc:
        message = f"cannot open log file '{spec.log_path}': {exc.strerror}"
        return _error_outcome(message, started_at, t0)

    try:
        return await _run_spawned(spec, job_id, env, output, on_started, started_at, t0)
    finally:
        output.close()


@dataclass(slots=True)
class _Run:
    """One job from its spawn on: the leader, and what happened to the run so far.

    A cancel or a failing ``on_started`` does not end the run on the spot: the job is
    killed and cleaned up first, then they are re-raised (``cancelled``, ``failure``).
    """

    spec: JobSpec
    job_id: str
    child: WatchedLeader
    output: JobOutput
    cancelled: bool  # a cancel arrived (during the spawn, the wait or the cleanup)
    timed_out: bool = False  # the job's time ended before its leader did
    failure: Exception | None = None  # what on_started raised


async def _run_spawned(
    spec: JobSpec,
    job_id: str,
    env: dict[str, str],
    output: JobOutput,
    on_started: Callable[[int], None] | None,
    started_at: float,
    t0: float,
) -> JobOutcome:
    """Spawn, watch, await the end, clean up, report: the steps every job goes through."""
    loop = asyncio.get_running_loop()
    spawned, cancelled = await _spawn(loop, spec, env)
    if not isinstance(spawned, Spawned):
        return _error_outcome(_spawn_error_message(spec, spawned), started_at, t0)
    run = _Run(spec, job_id, _watch(loop, spawned, output), output, cancelled)
    if not run.cancelled:
        await _await_end(run, on_started)
    run.child.stop_clock()
    extra = await _clean_up(run)
    run.child.close()
    if run.failure is not None:
        raise run.failure
    if run.cancelled:
        raise asyncio.CancelledError()
    return _outcome(run, extra, started_at, t0)


async def _spawn(
    loop: asyncio.AbstractEventLoop, spec: JobSpec, env: dict[str, str]
) -> tuple[Spawned | OSError | ValueError, bool]:
    """Start the leader in a spawn thread: (the leader, or why it could not start; whether
    a cancel arrived meanwhile). A cancel mid-fork waits for the child: it is not lost.

    Raises CancelledError for a cancelled spawn that failed, and errors that are not about
    the spec (e.g. no spawn thread could start).
    """
    handoff = Handoff()
    spawn_pool().submit(loop, spec, env, handoff.deliver)
    cancelled = await handoff.wait(loop)
    spawned = handoff.result
    if isinstance(spawned, Spawned):
        return spawned, cancelled
    assert spawned is not None
    if cancelled:
        raise asyncio.CancelledError() from spawned
    if not isinstance(spawned, (OSError, ValueError)):
        raise spawned
    return spawned, False


def _watch(loop: asyncio.AbstractEventLoop, spawned: Spawned, output: JobOutput) -> WatchedLeader:
    """Have the loop watch the new leader's pipes (and exit); never leaves it unwatched."""
    child = WatchedLeader(loop, spawned, output)
    try:
        child.watch()
    except BaseException:  # do not leave the job running unwatched
        child.detach()
        spawned.abandon()
        raise
    return child


async def _await_end(run: _Run, on_started: Callable[[int], None] | None) -> None:
    """Start the job's clock, tell ``on_started``, wait for the leader's exit or the
    timeout. A cancel or a failing ``on_started`` is recorded in ``run``, not raised."""
    child = run.child
    child.start_clock(_timeout_of(run.spec))
    try:
        if on_started is not None:
            on_started(child.pid)
        await child.until(child.ended_or_time_up)
        run.timed_out = not child.exited
    except asyncio.CancelledError:
        run.cancelled = True
    except Exception as exc:  # on_started failed: still kill and reap, then re-raise
        run.failure = exc


def _nothing_left(pid: int) -> bool:
    """Group empty and nothing adopted that a sweep could find (a subreaper's escapees are
    our children by now; without subreaper this touches no /proc at all)."""
    return not janitor.group_alive(pid) and (
        not janitor.is_subreaper() or not janitor.adopted_children(job_leaders())
    )


async def _clean_up(run: _Run) -> dict[str, object]:
    """End what is left of the job and wait for its output; returns ``JobOutcome.extra``.

    A cancel meanwhile is recorded in ``run`` (the cleanup itself always completes).
    """
    child = run.child
    kill = run.timed_out or run.cancelled or run.failure is not None
    extra: dict[str, object] | None = None
    eof_grace_s = EOF_GRACE_S
    if not kill and _nothing_left(child.pid):
        # The common case: leader exited, nothing left. The pipes normally close with the
        # exit, but a child another spawn thread is forking holds copies of them until it
        # execs, so EOF may trail the exit a little: wait for it here, within the grace,
        # rather than in a cleanup task (a measurable cost per short job, and a third of
        # them on a busy 2-CPU machine).
        try:
            if await child.until(child.is_eof, EOF_GRACE_S):
                extra = {}
        except asyncio.CancelledError:
            run.cancelled = True
        eof_grace_s = 0.0  # waited already (or cancelled: no more waiting)
    if extra is None:
        extra, cancelled_again = await _end_job_uninterrupted(
            run.spec, run.job_id, child.pid, child, kill, eof_grace_s
        )
        run.cancelled = run.cancelled or cancelled_again
    try:
        if not await child.until(child.is_eof, _DRAIN_TIMEOUT_S):
            extra["output_pipe_held"] = True  # an unattributed process kept the pipe open
    except asyncio.CancelledError:
        run.cancelled = True
    return extra


def _outcome(run: _Run, extra: dict[str, object], started_at: float, t0: float) -> JobOutcome:
    """The outcome of a job that ran to its end (not cancelled)."""
    output = run.output
    result, exit_code, message = _result_of(run.child.returncode, run.timed_out, run.spec)
    if run.timed_out and "group_signal" in extra:
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
        pid=run.child.pid,
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
    child: WatchedLeader,
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
