"""The job runner with real processes: results, kills, cancellation, bounded output, env."""

from __future__ import annotations

import asyncio
import errno
import gc
import json
import os
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from parallel_orchestrator.jobs import janitor, leaderwatch, runner, spawner
from parallel_orchestrator.jobs.runner import JobSpec, cut_marker, run_job

ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"}


def spec(tmp_path: Path, *argv: str, **kw: object) -> JobSpec:
    fields: dict[str, object] = {"cwd": tmp_path, "env": dict(ENV), "timeout_s": 30.0}
    fields.update(kw)
    return JobSpec(argv=tuple(argv), **fields)  # type: ignore[arg-type]


def script(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body).lstrip())
    path.chmod(0o755)
    return path


def running(pid: int, start_time: int | None = None) -> bool:
    """Alive and not a zombie (this machine's init may never reap), and the same process."""
    st = janitor.read_stat(pid)
    if st is None or st.state in ("Z", "X"):
        return False
    return start_time is None or st.start_time == start_time


async def wait_until(pred: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


async def read_pid_file(path: Path) -> tuple[int, int | None]:
    assert await wait_until(lambda: path.exists() and path.read_text().strip() != "")
    pid = int(path.read_text().split()[0])
    return pid, janitor.process_start_time(pid)


async def test_exit_codes_map_to_pass_and_fail(tmp_path: Path) -> None:
    ok = await run_job(spec(tmp_path, "true"))
    assert (ok.result, ok.exit_code, ok.error_message) == ("pass", 0, "")
    bad = await run_job(spec(tmp_path, "sh", "-c", "echo out; echo err >&2; exit 3"))
    assert (bad.result, bad.exit_code) == ("fail", 3)
    assert bad.output_tail == "out\nerr\n"  # stderr merged into the same stream
    assert bad.pid is not None and bad.duration_s >= 0
    assert bad.started_at <= bad.finished_at


async def test_signal_death_is_128_plus_signum(tmp_path: Path) -> None:
    out = await run_job(spec(tmp_path, "sh", "-c", "kill -TERM $$"))
    assert (out.result, out.exit_code) == ("fail", 143)
    assert "SIGTERM" in out.error_message


async def test_own_process_group_and_session_stdin_devnull(tmp_path: Path) -> None:
    seen: list[int] = []
    code = "import os,sys; print(os.getpid(), os.getpgrp(), os.getsid(0), sys.stdin.read()=='')"
    out = await run_job(spec(tmp_path, sys.executable, "-c", code), on_started=seen.append)
    pid, pgid, sid, stdin_empty = out.output_tail.split()
    assert int(pid) == int(pgid) == int(sid) == out.pid == seen[0]
    assert stdin_empty == "True"


async def test_timeout_kills_term_ignoring_script_and_its_grandchild(tmp_path: Path) -> None:
    job = script(
        tmp_path,
        "stubborn.sh",
        """
        #!/bin/sh
        trap '' TERM
        sleep 300 &
        echo $! > grandchild.pid
        while :; do sleep 0.05; done
        """,
    )
    task = asyncio.create_task(run_job(spec(tmp_path, str(job), timeout_s=1.0, kill_grace_s=0.5)))
    gc, gc_start = await read_pid_file(tmp_path / "grandchild.pid")
    out = await task
    assert (out.result, out.exit_code) == ("timeout", 124)
    assert out.extra["group_signal"] == "SIGKILL"  # SIGTERM was ignored for the grace
    assert "timed out after 1 s" in out.error_message
    assert not running(gc, gc_start)
    assert out.pid is not None and not running(out.pid)
    assert 1.4 <= out.duration_s < 15


async def test_normal_exit_kills_background_leftover_and_does_not_wait_for_its_pipe(
    tmp_path: Path,
) -> None:
    job = script(
        tmp_path,
        "leaves.sh",
        """
        #!/bin/sh
        sleep 300 &
        echo $! > bg.pid
        echo done
        """,
    )
    task = asyncio.create_task(run_job(spec(tmp_path, str(job), kill_grace_s=5.0)))
    bg, bg_start = await read_pid_file(tmp_path / "bg.pid")
    out = await task
    assert (out.result, out.exit_code) == ("pass", 0)
    assert out.extra["group_signal"] == "SIGTERM"
    assert not running(bg, bg_start)
    assert out.output_tail == "done\n"
    assert out.duration_s < 5  # the sleep held stdout open: we did not wait for EOF


async def test_cancellation_does_not_orphan(tmp_path: Path) -> None:
    """Regression: cancelling the awaiting task kills the group, reaps, re-raises."""
    job = script(
        tmp_path,
        "forever.sh",
        """
        #!/bin/sh
        trap '' TERM
        sleep 300 &
        echo $$ $! > pids
        while :; do sleep 0.05; done
        """,
    )
    task = asyncio.create_task(run_job(spec(tmp_path, str(job), kill_grace_s=0.3)))
    assert await wait_until(
        lambda: (tmp_path / "pids").exists() and len((tmp_path / "pids").read_text().split()) == 2
    )
    leader, gc = (int(x) for x in (tmp_path / "pids").read_text().split())
    gc_start = janitor.process_start_time(gc)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not running(leader) and not running(gc, gc_start)
    with pytest.raises(ChildProcessError):
        os.waitpid(leader, os.WNOHANG)  # already reaped: no zombie left with us
    assert leader not in runner.job_leaders()


async def test_second_cancel_during_cleanup_skips_grace_but_still_kills(tmp_path: Path) -> None:
    job = script(
        tmp_path,
        "stubborn.sh",
        """
        #!/bin/sh
        trap '' TERM
        echo $$ > pid
        while :; do sleep 0.05; done
        """,
    )
    task = asyncio.create_task(run_job(spec(tmp_path, str(job), kill_grace_s=60.0)))
    leader, start = await read_pid_file(tmp_path / "pid")
    t0 = time.monotonic()
    task.cancel()
    await asyncio.sleep(0.2)  # not synchronisation: the second cancel may land at any point
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - t0 < 30  # far less than the 60 s grace
    assert not running(leader, start)


async def test_exec_failures_are_errors_naming_the_command(tmp_path: Path) -> None:
    missing = await run_job(spec(tmp_path, "no-such-command-xyz.sh"))
    assert (missing.result, missing.exit_code) == ("error", None)
    assert missing.error_message.startswith(
        "cannot run 'no-such-command-xyz.sh': No such file or directory; looked in PATH="
    )

    not_exec = tmp_path / "plain.sh"
    not_exec.write_text("#!/bin/sh\ntrue\n")
    denied = await run_job(spec(tmp_path, str(not_exec)))
    assert denied.result == "error" and "Permission denied" in denied.error_message
    assert str(not_exec) in denied.error_message

    no_shebang = script(tmp_path, "noshebang", "\x7fELF garbage\n")
    enoexec = await run_job(spec(tmp_path, str(no_shebang)))
    assert enoexec.result == "error" and "Exec format error" in enoexec.error_message

    bad_interp = script(tmp_path, "badinterp.sh", "#!/nonexistent/interpreter\n")
    interp = await run_job(spec(tmp_path, str(bad_interp)))
    assert interp.result == "error" and "interpreter" in interp.error_message

    gone = tmp_path / "gone"
    no_cwd = await run_job(spec(tmp_path, "true", cwd=gone))
    assert no_cwd.result == "error" and str(gone) in no_cwd.error_message


async def test_undecodable_bytes_are_replaced(tmp_path: Path) -> None:
    out = await run_job(spec(tmp_path, "printf", "\\377\\376ok"))
    assert out.result == "pass"
    assert out.output_tail == "\ufffd\ufffdok"


async def test_log_keeps_head_and_tail_with_marker(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "deep" / "job.log"
    out = await run_job(
        spec(tmp_path, "seq", "1", "100000", log_path=log, max_log_bytes=10_000, tail_bytes=100)
    )
    full = subprocess.run(["seq", "1", "100000"], capture_output=True, check=True).stdout
    data = log.read_bytes()
    cut = len(full) - 10_000
    assert data == full[:5000] + cut_marker(cut) + full[-5000:]
    assert out.extra["output_bytes"] == len(full)
    assert out.extra["output_bytes_cut"] == cut
    assert out.output_tail == full[-100:].decode()


async def test_short_output_is_logged_whole_and_private(tmp_path: Path) -> None:
    log = tmp_path / "state" / "runs" / "job.log"
    log.parent.mkdir(parents=True)
    log.write_text("old content that must go")
    log.chmod(0o644)
    out = await run_job(spec(tmp_path, "echo", "hello", log_path=log))
    assert out.result == "pass"
    assert log.read_text() == "hello\n"
    assert stat.S_IMODE(log.stat().st_mode) == 0o600


async def test_new_log_dirs_are_0700(tmp_path: Path) -> None:
    log = tmp_path / "a" / "b" / "job.log"
    await run_job(spec(tmp_path, "true", log_path=log))
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    for d in (tmp_path / "a", tmp_path / "a" / "b"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700


async def test_env_is_scrubbed_and_marked(tmp_path: Path) -> None:
    env = dict(ENV)
    env.update(
        NOTIFY_SOCKET="/run/systemd/notify",
        WATCHDOG_USEC="1000000",
        WATCHDOG_PID="1",
        LISTEN_FDS="2",
        LISTEN_PID="1",
        LISTEN_FDNAMES="a:b",
        KEEP_ME="yes",
    )
    out = await run_job(spec(tmp_path, "env", env=env, job_id="job-42"))
    lines = set(out.output_tail.splitlines())
    assert "KEEP_ME=yes" in lines and "PO_JOB_ID=job-42" in lines
    assert not [x for x in lines if x.startswith(("NOTIFY_", "WATCHDOG_", "LISTEN_"))]


async def test_default_merges_stderr_into_one_stream_and_log(tmp_path: Path) -> None:
    """The daemon's shape (split_stderr off): one pipe, so the log keeps the line order."""
    log = tmp_path / "run.log"
    out = await run_job(
        spec(
            tmp_path,
            "sh",
            "-c",
            "echo out; echo err >&2; echo out2",
            log_path=log,
            capture_bytes=1024,
        )
    )
    assert log.read_text() == "out\nerr\nout2\n"
    assert out.output_tail == out.output == "out\nerr\nout2\n"
    assert (out.stderr_tail, out.stderr_output) == ("", "")
    assert out.extra["output_bytes"] == 13 and "stderr_bytes" not in out.extra
    plain = await run_job(spec(tmp_path, "echo", "hi"))
    assert (plain.output_tail, plain.output) == ("hi\n", "")  # no capture unless asked


async def test_split_stderr_reports_the_streams_apart(tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    out = await run_job(
        spec(
            tmp_path,
            "sh",
            "-c",
            "echo out; echo err >&2; exit 3",
            split_stderr=True,
            capture_bytes=1 << 20,
            log_path=log,
        )
    )
    assert (out.result, out.exit_code) == ("fail", 3)
    assert (out.output, out.stderr_output) == ("out\n", "err\n")
    assert (out.output_tail, out.stderr_tail) == ("out\n", "err\n")
    assert (out.extra["output_bytes"], out.extra["stderr_bytes"]) == (8, 4)
    # The log still gets both; across two pipes their relative order is not guaranteed.
    assert sorted(log.read_text().splitlines()) == ["err", "out"]


async def test_split_stderr_without_pidfd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(leaderwatch, "have_pidfd", lambda: False)
    out = await run_job(
        spec(tmp_path, "sh", "-c", "echo out; echo err >&2", split_stderr=True, capture_bytes=64)
    )
    assert (out.result, out.output, out.stderr_output) == ("pass", "out\n", "err\n")


async def test_large_capture_keeps_head_and_tail_with_marker(tmp_path: Path) -> None:
    cap = 1 << 20
    out = await run_job(
        spec(
            tmp_path,
            "sh",
            "-c",
            "echo small; seq 1 500000 >&2",
            split_stderr=True,
            capture_bytes=cap,
        )
    )
    full = subprocess.run(["seq", "1", "500000"], capture_output=True, check=True).stdout
    assert len(full) > 3 * cap
    cut = len(full) - cap
    expected = full[: cap // 2] + cut_marker(cut) + full[-cap // 2 :]
    assert out.stderr_output == expected.decode()
    assert out.output == "small\n"
    assert out.stderr_tail == full[-2048:].decode()
    assert out.extra["stderr_bytes"] == len(full)
    assert out.extra["stderr_bytes_cut"] == cut
    assert "output_bytes_cut" not in out.extra


async def test_capture_cut_does_not_split_characters(tmp_path: Path) -> None:
    # 1000 two-byte characters; a 1002-byte capture cuts both halves mid-character.
    out = await run_job(
        spec(
            tmp_path,
            sys.executable,
            "-c",
            "print('\u00e9' * 1000, end='')",
            env={**ENV, "PYTHONIOENCODING": "utf-8"},
            capture_bytes=1002,
        )
    )
    assert out.output == "\u00e9" * 250 + cut_marker(998).decode() + "\u00e9" * 250


FLOOD = """
import asyncio, json, resource, sys
from pathlib import Path
from parallel_orchestrator.jobs.runner import JobSpec, run_job

async def main() -> None:
    n, log, split = int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "split"
    # split: the flood goes to stderr, captured (1 MiB) as the executor does.
    spec = JobSpec(argv=("sh", "-c", f"head -c {n} /dev/zero" + (" >&2" if split else "")),
                   cwd=log.parent, env={"PATH": "/usr/bin:/bin"}, timeout_s=120,
                   log_path=log, max_log_bytes=1 << 20, split_stderr=split,
                   capture_bytes=(1 << 20) if split else 0)
    out = await run_job(spec)
    print(json.dumps({"result": out.result, "size": log.stat().st_size,
                      "cut": out.extra.get("output_bytes_cut", 0),
                      "tail": len(out.stderr_tail if split else out.output_tail),
                      "capture": len(out.stderr_output),
                      "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))

asyncio.run(main())
"""


@pytest.mark.parametrize("mode", ["merged", "split"])
def test_output_flood_keeps_log_and_memory_bounded(tmp_path: Path, mode: str) -> None:
    harness = tmp_path / "flood.py"
    harness.write_text(FLOOD)

    def run(n: int) -> dict[str, int | str]:
        proc = subprocess.run(
            [sys.executable, str(harness), str(n), str(tmp_path / f"{n}.log"), mode],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        return json.loads(proc.stdout)

    baseline = run(0)
    flood = run(50_000_000)
    assert flood["result"] == "pass"
    assert flood["size"] <= (1 << 20) + len(cut_marker(50_000_000))
    assert flood["cut"] == 50_000_000 - (1 << 20)
    assert flood["tail"] == 2048
    if mode == "split":
        assert flood["capture"] == (1 << 20) + len(cut_marker(50_000_000 - (1 << 20)))
    growth_mb = (int(flood["maxrss_kb"]) - int(baseline["maxrss_kb"])) / 1024
    assert growth_mb < 16, f"RSS grew {growth_mb:.1f} MB for 50 MB of output"


async def test_no_thread_per_job(tmp_path: Path) -> None:
    """Exits are watched with pidfds; only the small spawn pool adds threads."""
    await run_job(spec(tmp_path, "true"))  # warm the spawn pool
    go = tmp_path / "go"
    threads_before = threading.active_count()
    jobs = [
        asyncio.create_task(
            run_job(spec(tmp_path, "sh", "-c", f"while [ ! -e {go} ]; do sleep 0.01; done"))
        )
        for _ in range(12)
    ]
    assert await wait_until(lambda: len(runner.job_leaders()) >= 12)
    assert threading.active_count() <= threads_before + spawner.SPAWN_THREADS
    go.touch()
    assert {(await j).result for j in jobs} == {"pass"}


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="3.12+ watches children with pidfds")
async def test_child_watcher_for_other_subprocesses_on_311() -> None:
    if not runner.install_child_watcher():
        pytest.skip("no pidfd support here")
    threads_before = threading.active_count()
    proc = await asyncio.create_subprocess_exec("sh", "-c", "echo hi", stdout=subprocess.PIPE)
    assert threading.active_count() == threads_before  # no watcher thread per child
    out, _ = await proc.communicate()
    assert (out, proc.returncode) == (b"hi\n", 0)
    assert runner.install_child_watcher() is True  # idempotent


async def test_no_timeout_when_zero(tmp_path: Path) -> None:
    out = await run_job(spec(tmp_path, "true", timeout_s=0))
    assert out.result == "pass"


async def test_many_short_jobs_leave_no_registry_entries(tmp_path: Path) -> None:
    outs = await asyncio.gather(*(run_job(spec(tmp_path, "true")) for _ in range(40)))
    assert {o.result for o in outs} == {"pass"}
    assert not {o.pid for o in outs} & runner.job_leaders()


UNAWAITED = """
import asyncio, sys
from pathlib import Path
from parallel_orchestrator.jobs.runner import JobSpec, run_job

work = Path(sys.argv[1])

async def main() -> None:
    spec = JobSpec(argv=("sh", "-c", "trap '' TERM; sleep 300 & echo $! > gc.pid; wait"),
                   cwd=work, env={"PATH": "/usr/bin:/bin"}, timeout_s=300, kill_grace_s=0.2)
    asyncio.get_running_loop().create_task(run_job(spec))  # never awaited: a caller's bug
    while not (work / "gc.pid").exists() or not (work / "gc.pid").read_text():
        await asyncio.sleep(0.01)

asyncio.run(main())  # cancels the forgotten task on the way out
print("done")
"""


def test_loop_shutdown_with_an_unawaited_job_still_kills_it(tmp_path: Path) -> None:
    harness = tmp_path / "unawaited.py"
    harness.write_text(UNAWAITED)
    proc = subprocess.run(
        [sys.executable, str(harness), str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and proc.stdout == "done\n", proc.stderr
    gc = int((tmp_path / "gc.pid").read_text())
    assert not running(gc)


async def test_without_pidfd_the_exit_is_awaited_in_a_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The portable fallback (no pidfd: not Linux, or kernel < 5.3) gives the same results."""
    monkeypatch.setattr(leaderwatch, "have_pidfd", lambda: False)
    ok = await run_job(spec(tmp_path, "sh", "-c", "echo fine; exit 0"))
    assert (ok.result, ok.output_tail) == ("pass", "fine\n")
    bad = await run_job(spec(tmp_path, "sh", "-c", "exit 7"))
    assert (bad.result, bad.exit_code) == ("fail", 7)
    slow = await run_job(spec(tmp_path, "sleep", "30", timeout_s=0.3, kill_grace_s=0.2))
    assert (slow.result, slow.exit_code) == ("timeout", 124)
    assert slow.pid is not None and not running(slow.pid)


# ---------------------------------------------------------------------------------------
# The lean hot path (reaping at EOF, the shared epoll, the spawn pool's hand-off, the
# shared /dev/null) must not cost any of the guarantees.


@pytest.mark.parametrize("split", [False, True])
async def test_leader_closing_its_output_is_still_awaited(tmp_path: Path, split: bool) -> None:
    """EOF before the exit: the leader is then watched directly, not taken for exited."""
    out = await run_job(
        spec(tmp_path, "sh", "-c", "echo hi; exec >&- 2>&-; sleep 0.3; exit 3", split_stderr=split)
    )
    assert (out.result, out.exit_code, out.output_tail) == ("fail", 3, "hi\n")
    assert out.duration_s >= 0.3
    assert out.pid is not None and out.pid not in runner.job_leaders()


async def test_cancel_right_after_start_still_kills_and_reaps(tmp_path: Path) -> None:
    """Cancelled before the exit is watched at all (well inside the EOF window)."""
    started: list[int] = []
    task = asyncio.create_task(
        run_job(spec(tmp_path, "sleep", "300", kill_grace_s=0.2), on_started=started.append)
    )
    assert await wait_until(lambda: bool(started))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not running(started[0])
    with pytest.raises(ChildProcessError):
        os.waitpid(started[0], os.WNOHANG)
    assert started[0] not in runner.job_leaders()


def test_finished_loops_keep_no_descriptors(tmp_path: Path) -> None:
    """Each loop's job watcher (one epoll) goes with the loop: sync APIs run a loop a call."""

    def fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    asyncio.run(run_job(spec(tmp_path, "true")))  # warm up: spawn pool, /dev/null
    gc.collect()
    before = fds()
    for _ in range(5):
        assert asyncio.run(run_job(spec(tmp_path, "true", split_stderr=True))).result == "pass"
    gc.collect()
    assert fds() <= before


async def test_idle_watcher_is_closed_while_the_loop_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(leaderwatch, "MUX_IDLE_S", 0.05)
    loop = asyncio.get_running_loop()
    assert (await run_job(spec(tmp_path, "true"))).result == "pass"
    assert await wait_until(lambda: not leaderwatch.has_mux(loop), timeout=5)
    assert (await run_job(spec(tmp_path, "echo", "again"))).output_tail == "again\n"


def test_spawn_for_a_closed_loop_is_killed_and_reaped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its task is gone, so nobody would ever watch that leader: the spawn thread ends it."""
    spawned: list[subprocess.Popen[bytes]] = []
    real_spawn = spawner.spawn

    def recording_spawn(job: JobSpec, env: dict[str, str]) -> spawner.Spawned:
        result = real_spawn(job, env)
        spawned.append(result.popen)
        return result

    monkeypatch.setattr(spawner, "spawn", recording_spawn)
    loop = asyncio.new_event_loop()
    loop.close()
    delivered: list[object] = []
    spawner.spawn_pool().submit(loop, spec(tmp_path, "sleep", "300"), dict(ENV), delivered.append)
    deadline = time.monotonic() + 20
    while not (spawned and spawned[0].returncode is not None) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert spawned and spawned[0].returncode == -9  # SIGKILLed and reaped
    assert spawned[0].pid not in runner.job_leaders()
    assert delivered == []


async def test_stdin_is_devnull_even_if_our_descriptor_was_replaced(tmp_path: Path) -> None:
    fd = spawner.devnull_fd()
    secret = tmp_path / "secret"
    secret.write_text("not for jobs\n")
    other = os.open(secret, os.O_RDONLY)
    os.dup2(other, fd)  # the application closed ours and reused the number
    os.close(other)
    try:
        out = await run_job(spec(tmp_path, "cat"))
        assert (out.result, out.output_tail) == ("pass", "")
        assert spawner.devnull_fd() != fd
    finally:
        os.close(fd)


async def test_exit_is_still_watched_when_no_pidfd_can_be_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """E.g. EMFILE when a leader outlives its output: a thread waits for it instead."""
    if not leaderwatch.have_pidfd():
        pytest.skip("no pidfd support here")

    def no_pidfd(pid: int, flags: int = 0) -> int:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(os, "pidfd_open", no_pidfd)
    out = await run_job(spec(tmp_path, "sh", "-c", "exec >&- 2>&-; sleep 0.2; exit 4"))
    assert (out.result, out.exit_code) == ("fail", 4)
    slow = await run_job(spec(tmp_path, "sleep", "30", timeout_s=0.3, kill_grace_s=0.2))
    assert (slow.result, slow.exit_code) == ("timeout", 124)
    assert slow.pid is not None and not running(slow.pid)


def test_spawn_pool_without_any_thread_queues_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def cannot_start(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    pool = spawner.SpawnPool(2)
    loop = asyncio.new_event_loop()
    monkeypatch.setattr(threading.Thread, "start", cannot_start)
    try:
        with pytest.raises(RuntimeError):
            pool.submit(loop, spec(tmp_path, "true"), dict(ENV), print)
    finally:
        loop.close()
    assert pool.queued() == 0


async def test_exit_before_the_deadline_is_not_a_timeout_even_if_unnoticed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The leader exits, a background child holds the pipe, and the exit is not watched
    yet when the time is up: the deadline checks the exit itself, and the job failed."""
    monkeypatch.setattr(leaderwatch, "EXIT_WATCH_DELAY_S", 60.0)
    job = script(tmp_path, "bg.sh", "#!/bin/sh\nsleep 300 &\necho $! > bg.pid\nexit 5\n")
    out = await run_job(spec(tmp_path, str(job), timeout_s=2.0, kill_grace_s=5.0))
    assert (out.result, out.exit_code) == ("fail", 5)
    assert out.extra["group_signal"] == "SIGTERM"
    assert not running(int((tmp_path / "bg.pid").read_text()))
