"""Escaped descendants: /proc parsing, markers, and sweeps with and without subreaper.

Subreaper is process-global, so those tests run in a child Python process (the harness)
instead of turning the pytest process into a reaper of every test's orphans.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from parallel_orchestrator.jobs import janitor
from parallel_orchestrator.jobs.runner import JobSpec, run_job
from process_checks import running, wait_until

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc")

ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"}

# A job that double-forks: the grandchild calls setsid() (new session and group), writes its
# pid, then becomes `sleep`. With CLEAR=1 it also drops its environment (no marker).
ESCAPE = textwrap.dedent(
    """
    import os, signal, sys
    clear = os.environ.get("CLEAR") == "1"
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            with open("escapee.pid", "w") as f:
                f.write(str(os.getpid()))
            cmd = sys.argv[1:] or ["sleep", "300"]
            if clear:
                os.execve("/bin/sh", ["sh", "-c", "exec " + " ".join(cmd)], {})
            os.execvp(cmd[0], cmd)
        os._exit(0)
    os.wait()
    if os.environ.get("WAIT_EXIT") == "1":
        # Leave only once the escapee has exited (a zombie of the subreaper), so the job's
        # own sweep finds a zombie, not a live process it would kill and reap itself.
        import time
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                pid = int(open("escapee.pid").read())
                with open(f"/proc/{pid}/stat", "rb") as f:
                    if f.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                        break
            except (OSError, ValueError):
                pass
            time.sleep(0.005)
    if os.environ.get("STAY") == "1":
        while True:
            signal.pause()
    """
)


def test_parse_stat_handles_spaces_and_parens_in_comm() -> None:
    fields = " ".join(str(i) for i in range(4, 53))  # fields 4.. after "pid (comm) state"
    line = f"123 (we) ird (x) S {fields}\n".encode()
    st = janitor.parse_stat(123, line)
    assert (st.state, st.ppid, st.pgrp, st.session) == ("S", 4, 5, 6)
    assert st.start_time == 22


def test_process_start_time_of_a_process_with_odd_name(tmp_path: Path) -> None:
    odd = tmp_path / "we) ird (x"
    odd.symlink_to("/bin/sleep")
    proc = subprocess.Popen([str(odd), "30"])
    try:
        assert wait_until(
            lambda: (
                (janitor.read_stat(proc.pid) or janitor.ProcStat(0, "", 0, 0, 0, 0)).state
                in ("S", "R")
                and b"ird" in Path(f"/proc/{proc.pid}/stat").read_bytes()
            )
        )
        st = janitor.read_stat(proc.pid)
        assert st is not None and st.ppid == os.getpid()
        start = janitor.process_start_time(proc.pid)
        assert start is not None and start > 0
        mine = janitor.process_start_time(os.getpid())
        assert mine is not None and start >= mine
    finally:
        proc.kill()
        proc.wait()
    assert janitor.process_start_time(proc.pid) is None


def test_find_marked_matches_the_exact_entry_only() -> None:
    job = f"t-{uuid.uuid4().hex}"
    exact = subprocess.Popen(["sleep", "30"], env={**ENV, "PO_JOB_ID": job})
    longer = subprocess.Popen(["sleep", "30"], env={**ENV, "PO_JOB_ID": job + "-2"})
    other_var = subprocess.Popen(["sleep", "30"], env={**ENV, "XPO_JOB_ID": job})
    try:
        assert wait_until(lambda: janitor.has_marker(exact.pid, job))
        assert janitor.find_marked(job) == [exact.pid]
        assert not janitor.has_marker(longer.pid, job)
        assert not janitor.has_marker(other_var.pid, job)
    finally:
        for p in (exact, longer, other_var):
            p.kill()
            p.wait()
    assert janitor.find_marked(job) == []


def test_children_of_self_lists_direct_children() -> None:
    proc = subprocess.Popen(["sleep", "30"])
    try:
        assert proc.pid in janitor.children_of_self()
        assert proc.pid not in janitor.adopted_children({proc.pid})
    finally:
        proc.kill()
        proc.wait()


def test_group_alive_checks_the_group_and_never_reports_ours() -> None:
    proc = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        assert janitor.group_alive(proc.pid)
    finally:
        proc.kill()
        proc.wait()
    assert not janitor.group_alive(proc.pid)  # reaped: the group is gone
    assert not janitor.group_alive(os.getpgrp())  # ours is never a job's group
    assert not janitor.group_alive(1) and not janitor.group_alive(0)


async def test_timeout_without_subreaper_kills_escapee_by_marker(tmp_path: Path) -> None:
    """Library use: no subreaper, so a timed-out job triggers the /proc marker scan."""
    (tmp_path / "escape.py").write_text(ESCAPE)
    assert not janitor.is_subreaper()
    spec = JobSpec(
        argv=(sys.executable, "escape.py"),
        cwd=tmp_path,
        env={**ENV, "STAY": "1"},
        timeout_s=1.0,
        kill_grace_s=0.2,
        job_id=f"t-{uuid.uuid4().hex}",
    )
    task = asyncio.create_task(run_job(spec))
    pid_file = tmp_path / "escapee.pid"
    deadline = time.monotonic() + 20
    while not (pid_file.exists() and pid_file.read_text()):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    escapee = int(pid_file.read_text())
    start = janitor.process_start_time(escapee)
    st = janitor.read_stat(escapee)
    out = await task
    assert out.result == "timeout"
    assert st is not None and st.session != out.pid  # it really left the job's session
    assert not running(escapee, start)
    assert escapee in out.extra["escapees_killed"]  # type: ignore[operator]


HARNESS = textwrap.dedent(
    """
    import asyncio, json, os, sys, time
    from pathlib import Path
    from parallel_orchestrator.jobs import janitor
    from parallel_orchestrator.jobs import runner
    from parallel_orchestrator.jobs.runner import JobSpec, run_job

    def running(pid):
        st = janitor.read_stat(pid)
        return st is not None and st.state not in ("Z", "X")

    async def main():
        mode, work = sys.argv[1], Path(sys.argv[2])
        report = {"subreaper": janitor.become_subreaper()}
        unmarked = mode.startswith("unmarked")
        env = {"PATH": os.environ["PATH"], "CLEAR": "1" if unmarked else "0",
               "WAIT_EXIT": "1" if mode == "zombie" else "0"}
        cmd = ["true"] if mode == "zombie" else []
        spec = JobSpec(argv=(sys.executable, "escape.py", *cmd), cwd=work, env=env,
                       timeout_s=60, kill_grace_s=1, job_id="h-" + os.urandom(8).hex())
        out = await run_job(spec)
        escapee = int((work / "escapee.pid").read_text())
        report.update(result=out.result, extra=out.extra, escapee=escapee,
                      alive_after_job=running(escapee))
        if mode == "unmarked":
            report["unattributed"] = janitor.kill_unattributed(runner.job_leaders())
            report["alive_after_shutdown_sweep"] = running(escapee)
        if mode == "unmarked-on-loop":
            busy = await janitor.sweep_unattributed(runner.job_leaders, lambda: False)
            report["swept_while_busy"] = busy
            report["alive_after_busy_sweep"] = running(escapee)
            ticks = [0]

            async def tick():
                while True:
                    ticks[0] += 1
                    await asyncio.sleep(0)

            ticker = asyncio.create_task(tick())
            await asyncio.sleep(0)
            before = ticks[0]
            report["unattributed"] = await janitor.sweep_unattributed(
                runner.job_leaders, lambda: True)
            report["loop_ran_during_sweep"] = ticks[0] > before
            ticker.cancel()
            report["alive_after_shutdown_sweep"] = running(escapee)
        if mode == "zombie":
            deadline = time.monotonic() + 20
            while (janitor.read_stat(escapee) or janitor.ProcStat(0, "Z", 0, 0, 0, 0)).state \\
                    != "Z" and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            report["zombie_before"] = janitor.read_stat(escapee) is not None
            report["reaped"] = runner.reap_orphan_zombies()
            report["exists_after"] = janitor.read_stat(escapee) is not None
        print(json.dumps(report))

    asyncio.run(main())
    """
)


def run_harness(tmp_path: Path, mode: str) -> dict[str, object]:
    (tmp_path / "escape.py").write_text(ESCAPE)
    (tmp_path / "harness.py").write_text(HARNESS)
    proc = subprocess.run(
        [sys.executable, str(tmp_path / "harness.py"), mode, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["subreaper"] is True
    return report


def test_subreaper_kills_double_forked_setsid_escapee_after_normal_exit(tmp_path: Path) -> None:
    report = run_harness(tmp_path, "marked")
    assert report["result"] == "pass"
    assert report["alive_after_job"] is False
    assert report["escapee"] in report["extra"]["escapees_killed"]  # type: ignore[index]


def test_unmarked_escapee_is_left_to_the_shutdown_sweep(tmp_path: Path) -> None:
    """Documented policy: no marker and its own session -> not attributable to the job,
    but as our adopted child it is killed by kill_unattributed at daemon shutdown."""
    report = run_harness(tmp_path, "unmarked")
    assert report["result"] == "pass"
    assert report["alive_after_job"] is True
    assert report["escapee"] in report["unattributed"]  # type: ignore[operator]
    assert report["alive_after_shutdown_sweep"] is False


def test_shutdown_sweep_on_the_loop_lets_the_loop_run(tmp_path: Path) -> None:
    """The daemon's variant awaits between passes (the loop keeps serving while a killed
    escapee dies), and stops as soon as a job runs again (a leader mid-spawn is our child
    too and must never be taken for a leftover)."""
    report = run_harness(tmp_path, "unmarked-on-loop")
    assert report["result"] == "pass"
    assert report["alive_after_job"] is True
    assert report["swept_while_busy"] == []
    assert report["alive_after_busy_sweep"] is True
    assert report["escapee"] in report["unattributed"]  # type: ignore[operator]
    assert report["loop_ran_during_sweep"] is True
    assert report["alive_after_shutdown_sweep"] is False


def test_exited_escapee_zombies_are_reaped(tmp_path: Path) -> None:
    report = run_harness(tmp_path, "zombie")
    assert report["result"] == "pass"
    assert report["zombie_before"] is True
    assert report["escapee"] in report["reaped"]  # type: ignore[operator]
    assert report["exists_after"] is False


def test_become_subreaper_leaves_the_test_process_alone() -> None:
    assert janitor.is_subreaper() is False  # the harness tests did not leak into pytest


async def test_escapee_holding_the_output_pipe_is_found_without_subreaper(
    tmp_path: Path,
) -> None:
    """Normal exit, empty group, but the pipe is still open: that is an escapee; find it."""
    (tmp_path / "escape.py").write_text(ESCAPE)
    spec = JobSpec(
        argv=(sys.executable, "escape.py"),
        cwd=tmp_path,
        env=dict(ENV),
        timeout_s=60,
        job_id=f"t-{uuid.uuid4().hex}",
    )
    out = await run_job(spec)
    escapee = int((tmp_path / "escapee.pid").read_text())
    assert out.result == "pass"
    assert escapee in out.extra["escapees_killed"]  # type: ignore[operator]
    assert not running(escapee)
    assert "output_pipe_held" not in out.extra
