"""Reliability and security of the real daemon, run as a subprocess and observed from outside.

Each test starts ``python -m parallel_orchestrator run`` on a real git repository with
worktrees, makes real edits, and checks what a user (or an attacker) could see: /proc of
the daemon (memory, fds, sockets, children), the JSON log, the status file, the run logs.
Unit-level proofs of the same mechanisms live in test_runner / test_janitor / test_ledger.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from harness import (
    DaemonProcess,
    git,
    make_repo,
    pid_alive,
    processes_with_env,
    wait_until,
    write_config,
)
from reliability_helpers import (
    descendants,
    events_after,
    hwm_kb,
    inet_sockets,
    listening_sockets,
    observe,
    read_only,
    rss_kb,
    small_tmpfs,
    touch_edit,
    wait_cell,
    wait_fresh_ready,
    wait_idle,
    write_script,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc")

LOG_CAP = 8 * 1024 * 1024  # runner.JobSpec.max_log_bytes: what a run log may hold
FLOOD_MB = 300
# Measured (Python 3.11, docs/reliability.md): VmHWM ~29 MB before the flood, ~37 MB after
# (the 8 MB log cap is what it holds at most). Buffering the flood would need > 300 MB;
# 100 MB leaves room for another interpreter or allocator without hiding that.
RSS_BOUND_KB = 100 * 1024


@pytest.fixture
def daemons():
    """Every daemon a test starts is stopped (or killed) at the end, whatever happened."""
    started: list[DaemonProcess] = []

    def start(config: Path, **kw) -> DaemonProcess:
        d = DaemonProcess(config, **kw)
        started.append(d)
        return d

    yield start
    for d in started:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()
        if not d._stderr.closed:
            d._stderr.close()


@pytest.fixture
def tag_env():
    """An environment marker every process of a job inherits, to find them all later;
    whatever still carries one at the end is killed (by pid), so a failing test leaves
    nothing running."""
    made: list[str] = []

    def make() -> tuple[str, dict[str, str]]:
        tag = uuid.uuid4().hex
        made.append(f"PO_TEST_TAG={tag}")
        return made[-1], {"PO_TEST_TAG": tag}

    yield make
    for marker in made:
        for pid in processes_with_env(marker):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# == bounded memory and disk ===========================================================
FLOOD = f"""
import sys
out = sys.stdout.buffer
out.write(b"HEAD-MARK\\n")
chunk = (b"x" * 1023 + b"\\n") * 1024  # 1 MiB
for _ in range({FLOOD_MB}):
    out.write(chunk)
out.write(b"TAIL-MARK\\n")
"""


@pytest.mark.slow
def test_300mb_flood_keeps_daemon_memory_and_run_log_bounded(tmp_path: Path, daemons) -> None:
    repo, _ = make_repo(tmp_path, hypotheses=())
    cmd = write_script(tmp_path / "scripts", "flood.py", FLOOD)
    config = write_config(
        tmp_path / "cfg" / "po.toml",
        repo,
        [{"name": "flood", "command": cmd, "watch": ["**/*.py"], "timeout_s": 240}],
    )
    d = daemons(config)
    d.wait_ready()
    before_kb = hwm_kb(d.proc.pid)
    touch_edit(repo / "src" / "app.py")
    done = d.wait_event("job_finished", timeout=240)[0]
    peak_kb = hwm_kb(d.proc.pid)
    print(
        f"\nflood: daemon VmHWM before {before_kb} kB, after {FLOOD_MB} MB: {peak_kb} kB, "
        f"VmRSS now {rss_kb(d.proc.pid)} kB"
    )
    assert done["result"] == "pass", done
    assert peak_kb < RSS_BOUND_KB, f"daemon peaked at {peak_kb} kB during a {FLOOD_MB} MB flood"

    log = Path(done["log_path"])
    data = log.read_bytes()
    assert len(data) <= LOG_CAP + 200, len(data)
    assert data.startswith(b"HEAD-MARK\n")
    assert data.endswith(b"TAIL-MARK\n")
    total = FLOOD_MB * 1024 * 1024 + len(b"HEAD-MARK\nTAIL-MARK\n")
    cut = total - (len(data) - len(_marker_line(data)))
    assert _marker_line(data) == f"\n[... {cut} bytes cut by parallel-orchestrator ...]\n"
    assert "TAIL-MARK" in done["output_tail"]
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    assert d.stop() == 0


def _marker_line(data: bytes) -> str:
    start = data.index(b"\n[... ")
    end = data.index(b" ...]\n", start) + len(b" ...]\n")
    return data[start:end].decode()


# == no descendant outlives its job =====================================================
# The job double-forks; the grandchild calls setsid() (a new session and process group,
# out of reach of the job's killpg) and sleeps for good. A plain `setsid sleep &` from sh
# is the second escapee. Then the job either exits at once or runs until cancelled.
ESCAPE = """
import os, subprocess, sys, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execvp("sleep", ["sleep", "1000"])
    os._exit(0)
os.wait()
subprocess.Popen(["sh", "-c", "setsid sleep 1001 &"]).wait()
print("escaped", flush=True)
if len(sys.argv) > 1 and sys.argv[1] == "stay":
    time.sleep(1000)
"""


def _escape_setup(tmp_path: Path, mode: str, tag_env) -> tuple[Path, Path, str]:
    repo, _ = make_repo(tmp_path, hypotheses=())
    cmd = [*write_script(tmp_path / "scripts", "escape.py", ESCAPE), mode]
    marker, env = tag_env()
    config = write_config(
        tmp_path / "cfg" / "po.toml",
        repo,
        [{"name": "esc", "command": cmd, "watch": ["**/*.py"], "env": env, "kill_grace_s": 1}],
    )
    return repo, config, marker


def _escapees(marker: str) -> list[int]:
    """Job processes that are not the leader itself: the two sleeps."""
    return [
        p
        for p in processes_with_env(marker)
        if Path(f"/proc/{p}/comm").read_text().strip() == "sleep"
    ]


def test_setsid_and_double_fork_escapees_die_with_their_job(
    tmp_path: Path, daemons, tag_env
) -> None:
    repo, config, marker = _escape_setup(tmp_path, "exit", tag_env)
    d = daemons(config)
    d.wait_ready()
    touch_edit(repo / "src" / "app.py")
    done = d.wait_event("job_finished")[0]
    assert done["result"] == "pass"
    # The job has ended: both escapees are already gone (killed before job_finished).
    assert _escapees(marker) == []
    assert descendants(d.proc.pid) == []
    assert d.stop() == 0


def test_escapees_of_a_running_job_die_on_shutdown(tmp_path: Path, daemons, tag_env) -> None:
    repo, config, marker = _escape_setup(tmp_path, "stay", tag_env)
    d = daemons(config)
    d.wait_ready()
    touch_edit(repo / "src" / "app.py")
    d.wait_event("job_started")
    wait_until(lambda: len(_escapees(marker)) == 2, what="two escapees running")
    assert d.stop() == 0
    assert processes_with_env(marker) == []
    finished = d.events("job_finished")
    assert [e["result"] for e in finished] == ["cancelled"]
    assert d.events()[-1]["event"] == "daemon_stopped"


# An escapee that also empties its environment (no PO_JOB_ID marker) and leaves the job's
# session cannot be attributed to one job; the daemon still holds it as an adopted child.
UNMARKED = """
import os, sys, time
pidfile, mode = sys.argv[1], sys.argv[2]
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        with open(pidfile + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.rename(pidfile + ".tmp", pidfile)
        os.execve("/bin/sh", ["sh", "-c", "exec sleep 1000"], {})
    os._exit(0)
os.wait()
while not os.path.exists(pidfile):
    time.sleep(0.01)
if mode == "stay":
    time.sleep(1000)
"""


@pytest.mark.parametrize("mode", ["exit", "stay"])
def test_unmarked_escapee_dies_once_the_daemon_is_idle_or_stops(
    tmp_path: Path, daemons, mode: str
) -> None:
    repo, _ = make_repo(tmp_path, hypotheses=())
    pidfile = tmp_path / "escapee.pid"
    cmd = [*write_script(tmp_path / "scripts", "unmarked.py", UNMARKED), os.fsdecode(pidfile), mode]
    config = write_config(
        tmp_path / "cfg" / "po.toml",
        repo,
        [{"name": "u", "command": cmd, "watch": ["**/*.py"], "kill_grace_s": 1}],
    )
    d = daemons(config)
    escapee = 0
    try:
        d.wait_ready()
        touch_edit(repo / "src" / "app.py")
        escapee = int(
            wait_until(lambda: pidfile.exists() and pidfile.read_text(), what="escapee started")
        )
        assert b"PO_JOB_ID" not in Path(f"/proc/{escapee}/environ").read_bytes()
        if mode == "exit":
            assert d.wait_event("job_finished")[0]["result"] == "pass"
            # Nothing runs any more: every adopted child left is a job's leftover.
            wait_until(lambda: not pid_alive(escapee), what="unmarked escapee killed")
            assert d.wait_event("escapees_killed")[0]["pids"] == [escapee]
            assert d.stop() == 0
        else:
            d.wait_event("job_started")
            assert pid_alive(escapee)
            assert d.stop() == 0
            assert not pid_alive(escapee)
    finally:
        if escapee and pid_alive(escapee):
            os.kill(escapee, signal.SIGKILL)


# == security ===========================================================================
def test_state_is_private_and_there_is_no_listener(tmp_path: Path, daemons) -> None:
    repo, _ = make_repo(tmp_path, hypotheses=())
    cmd = write_script(tmp_path / "scripts", "talk.py", "print('secret test output')\n")
    config = write_config(
        tmp_path / "cfg" / "po.toml",
        repo,
        [{"name": "talk", "command": cmd, "watch": ["**/*.py"]}],
        run_on_start=True,
    )
    d = daemons(config)
    d.wait_ready()
    done = d.wait_event("job_finished")[0]
    state = tmp_path / "cfg" / "state"
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    log = Path(done["log_path"])
    assert log.read_text() == "secret test output\n"
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    for folder in log.parents:  # runs/<hyp>/<script> are private too
        if folder == state:
            break
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    assert not d.status_path.stat().st_mode & 0o077
    assert stat.S_IMODE(d.log_path.stat().st_mode) == 0o600  # output_tail is test output
    for changed in log.parent.glob("*.changed*"):
        assert stat.S_IMODE(changed.stat().st_mode) == 0o600, changed

    pid = d.proc.pid
    assert inet_sockets(pid) == []
    assert listening_sockets(pid) == []
    assert d.stop() == 0


def test_config_writable_by_others_is_refused_with_one_clear_line(tmp_path: Path, daemons) -> None:
    repo, _ = make_repo(tmp_path, hypotheses=())
    config = write_config(
        tmp_path / "cfg" / "po.toml",
        repo,
        [{"name": "t", "command": ["true"], "watch": ["**/*.py"]}],
    )
    config.chmod(0o666)
    d = daemons(config)
    assert d.proc.wait(60) == 2
    err = d.stderr_path.read_text()
    assert "refusing a config file writable by group/others" in err
    assert "Traceback" not in err
    assert not (tmp_path / "cfg" / "state").exists()

    config.chmod(0o600)
    (tmp_path / "cfg").chmod(0o777)
    d2 = daemons(config)
    assert d2.proc.wait(60) == 2
    assert "folder writable by group/others" in d2.stderr_path.read_text()
    (tmp_path / "cfg").chmod(0o755)


# == hostile and odd names ===============================================================
ODD_TREE = "hyp $(touch PWNED); 'q\"`touch PWNED`"
ODD_FILES = [
    "a b.py",
    "new\nline.py",
    "$(touch PWNED).py",
    "x;touch PWNED;.py",
    "q'uo\"te.py",
    "-rf.py",
    "tab\there.py",
]
BAD_NAME = b"bad\xff\xfename.py"  # not UTF-8: watchfiles 1.3 fails the whole watch on it
SHOW = """
import json, os, sys
def raw(var):
    with open(os.environ[var], "rb") as f:
        return f.read().hex()
record = {"argv": [os.fsencode(a).hex() for a in sys.argv[1:]],
          "hyp": os.fsencode(os.environ["PO_HYPOTHESIS"]).hex(),
          "wt": os.fsencode(os.environ["PO_WORKTREE"]).hex(),
          "cwd": os.fsencode(os.getcwd()).hex(),
          "changed": raw("PO_CHANGED_FILE"), "changed_z": raw("PO_CHANGED_FILE_Z")}
# Read every file, as test runners and linters do: an open() of a non-UTF-8 name is an
# event that watchfiles fails on too, and must not make the job rerun itself forever.
for folder, _dirs, files in os.walk(b"src"):
    for name in files:
        with open(os.path.join(folder, name), "rb") as f:
            f.read()
out = os.path.join(os.environ["OUT"], os.environ["PO_JOB_ID"] + ".json")
with open(out + ".tmp", "w") as f:
    json.dump(record, f)
os.replace(out + ".tmp", out)  # the test reads these while jobs run: never half a file
"""


def _job_records(out: Path) -> list[dict[str, bytes | list[bytes]]]:
    records = []
    for path in sorted(out.glob("*.json")):
        raw = json.loads(path.read_text())
        records.append(
            {
                k: [bytes.fromhex(x) for x in v] if isinstance(v, list) else bytes.fromhex(v)
                for k, v in raw.items()
            }
        )
    return records


def _changed_in(out: Path, hyp: bytes) -> set[bytes]:
    """Every changed name any job of ``hyp`` was given, from the NUL-separated list; the
    newline list must say the same wherever the names hold no newline."""
    seen: set[bytes] = set()
    for rec in _job_records(out):
        if rec["hyp"] != hyp:
            continue
        names = [n for n in rec["changed_z"].split(b"\0") if n]
        lines = [n for n in rec["changed"].split(b"\n") if n]
        if not any(b"\n" in n for n in names):
            assert lines == names
        seen.update(names)
    return seen


def _pwned(*roots: Path) -> list[str]:
    hits = []
    for root in roots:
        for folder, _dirs, files in os.walk(os.fsencode(root)):
            hits += [os.fsdecode(os.path.join(folder, f)) for f in files if f == b"PWNED"]
    return hits


def test_hostile_names_are_data_never_shell(tmp_path: Path, daemons) -> None:
    repo, trees = make_repo(tmp_path, hypotheses=("hyp-2",))
    odd = tmp_path / ODD_TREE
    git(repo, "worktree", "add", "-q", "-b", "hyp-odd", os.fsdecode(odd))
    out = tmp_path / "out"
    out.mkdir()
    cmd = [*write_script(tmp_path / "scripts", "show.py", SHOW), "{hypothesis}", "{worktree}"]
    config = write_config(
        tmp_path / "cfg" / "po.toml",
        repo,
        [{"name": "show", "command": cmd, "watch": ["**/*.py"], "env": {"OUT": os.fsdecode(out)}}],
    )
    d = daemons(config)
    d.wait_ready()
    assert ODD_TREE in d.status()["hypotheses"]
    hyp = os.fsencode(ODD_TREE)

    # Names full of shell syntax: each reaches the job as data, byte for byte.
    for name in ODD_FILES:
        (odd / "src" / name).write_text("x = 1\n")
    expected = {os.fsencode("src/" + n) for n in ODD_FILES}
    wait_until(lambda: expected <= _changed_in(out, hyp), what="every odd name delivered")
    rec = next(r for r in _job_records(out) if r["hyp"] == hyp)
    assert rec["argv"] == [hyp, os.fsencode(odd)]
    assert rec["wt"] == os.fsencode(odd) == rec["cwd"]

    # A name that is not UTF-8: the watcher fails, is re-armed, and the change still runs.
    (odd / "src").joinpath(os.fsdecode(BAD_NAME)).write_text("x = 2\n")
    restarted = d.wait_event("watcher_restarted")[0]
    assert "decode" in restarted["reason"]
    wait_until(
        lambda: b"src/" + BAD_NAME in _changed_in(out, hyp), what="the non-UTF-8 name delivered"
    )

    # Every worktree is still served after the re-arm.
    for name, tree in (("repo", repo), ("hyp-2", trees["hyp-2"]), (ODD_TREE, odd)):
        touch_edit(tree / "src" / "after.py")
        wait_until(
            lambda n=name: b"src/after.py" in _changed_in(out, os.fsencode(n)),
            what=f"{name} served after the watcher restart",
        )
    assert _pwned(tmp_path, Path.cwd()) == []
    # The jobs read the non-UTF-8 file (an event watchfiles fails on): that must not
    # trigger rerun after rerun. Observed over a window, since it is an absence.
    settle = wait_idle(d)
    observe(3.0)
    assert wait_idle(d) == settle
    # "cancelled": a batch that arrives while the job runs restarts it (on_busy=restart).
    assert {e["result"] for e in d.events("job_finished")} <= {"pass", "cancelled"}
    assert d.stop() == 0
    assert "Traceback" not in d.stderr_path.read_text(errors="replace")


def test_non_utf8_worktree_and_folder_names_keep_every_worktree_served(
    tmp_path: Path, daemons
) -> None:
    # A worktree folder whose name is not UTF-8 cannot be given to watchfiles at all, and
    # its git admin folder (.git/worktrees/<name>) makes every watch of the main worktree
    # fail at once. A non-UTF-8 *folder* inside a worktree does the same to that worktree.
    repo, trees = make_repo(tmp_path, hypotheses=("hyp-2",))
    bad_tree = Path(os.fsdecode(os.fsencode(tmp_path) + b"/bad\xffhyp"))
    git(repo, "worktree", "add", "-q", "-b", "hyp-bad", os.fsdecode(bad_tree))
    out = tmp_path / "out"
    out.mkdir()
    cmd = write_script(tmp_path / "scripts", "show.py", SHOW)
    config = write_config(
        tmp_path / "cfg" / "po.toml",
        repo,
        [{"name": "show", "command": cmd, "watch": ["**/*.py"], "env": {"OUT": os.fsdecode(out)}}],
    )
    d = daemons(config)
    d.wait_ready()
    ids = {e["hypothesis"] for e in d.events("worktree_added")}
    assert ids == {"repo", "hyp-2", bad_tree.name}

    touch_edit(bad_tree / "src" / "app.py")
    wait_until(
        lambda: b"src/app.py" in _changed_in(out, b"bad\xffhyp"),
        what="the non-UTF-8 worktree served",
    )
    folder = trees["hyp-2"] / "src" / os.fsdecode(b"pkg\xfe")
    folder.mkdir()
    (folder / "mod.py").write_text("x = 1\n")
    wait_until(
        lambda: b"src/pkg\xfe/mod.py" in _changed_in(out, b"hyp-2"),
        what="a file in a non-UTF-8 folder delivered",
    )
    assert d.events("watcher_restarted")
    for name, tree in (("repo", repo), ("hyp-2", trees["hyp-2"]), (bad_tree.name, bad_tree)):
        touch_edit(tree / "src" / "later.py")
        wait_until(
            lambda n=name: b"src/later.py" in _changed_in(out, os.fsencode(n)),
            what=f"{name!r} still served",
        )
    # The failing watch is not retried in a loop: a handful of restarts, not hundreds.
    assert len(d.events("watcher_restarted")) < 10
    assert {e["result"] for e in d.events("job_finished")} <= {"pass", "cancelled"}
    assert d.stop() == 0
    assert "Traceback" not in d.stderr_path.read_text(errors="replace")


# == crash recovery ======================================================================
# A job that leaves a grandchild in its group and an escapee in a session of its own,
# then sleeps; once the file "fast" exists next to the script it passes at once instead.
STUCK = """
import os, subprocess, sys, time
if os.path.exists(os.path.join(os.path.dirname(__file__), "fast")):
    sys.exit(0)
subprocess.Popen(["sleep", "1002"])
if os.fork() == 0:
    os.setsid()
    os.execvp("sleep", ["sleep", "1003"])
print("stuck", flush=True)
time.sleep(1000)
"""


def test_after_kill_9_the_next_daemon_kills_the_orphans_and_reports_the_job(
    tmp_path: Path, daemons, tag_env
) -> None:
    repo, _ = make_repo(tmp_path, hypotheses=())
    scripts = tmp_path / "scripts"
    cmd = write_script(scripts, "stuck.py", STUCK)
    marker, env = tag_env()
    spec = [{"name": "stuck", "command": cmd, "watch": ["**/*.py"], "env": env}]
    config = write_config(tmp_path / "cfg" / "po.toml", repo, spec)
    d1 = daemons(config)
    d1.wait_ready()
    touch_edit(repo / "src" / "app.py")
    started = d1.wait_event("job_started")[0]
    orphans = wait_until(
        lambda: (lambda p: p if len(p) == 3 else None)(processes_with_env(marker)),
        what="leader, grandchild and escapee running",
    )
    assert started["pid"] in orphans
    d1.proc.kill()  # SIGKILL: no cleanup of any kind
    d1.proc.wait()
    assert all(pid_alive(p) for p in orphans), "the jobs outlive a killed daemon"

    # The same state dir; a separate log so the two daemons' events stay apart.
    write_config(config, repo, spec, log_file="daemon2.log")
    (scripts / "fast").write_text("")
    d2 = daemons(config)
    d2.log_path = config.parent / "daemon2.log"
    wait_fresh_ready(d2)  # the old status file still says "running"
    assert processes_with_env(marker) == []
    recovered = d2.wait_event("job_recovered")[0]
    assert recovered["job_id"] == started["job_id"]
    assert recovered["error"] == "daemon died"
    assert set(recovered["killed"]) == set(orphans)
    cell = d2.cell("repo", "stuck")
    assert cell["state"] == cell["last_result"] == "error"
    assert "daemon died" in cell["output_tail"]
    assert cell["job_id"] == started["job_id"]
    assert not list((config.parent / "state" / "jobs").glob("*.json"))

    touch_edit(repo / "src" / "app.py")  # and it carries on
    assert d2.wait_event("job_finished")[0]["result"] == "pass"
    assert wait_cell(d2, "repo", "stuck", "pass")["last_result"] == "pass"
    assert d2.stop() == 0


def test_recovery_never_signals_a_reused_pid(tmp_path: Path, daemons) -> None:
    # The ledger of a dead daemon names a pid that now belongs to an unrelated process
    # (same pid, later start time): the new daemon must leave it alone.
    repo, _ = make_repo(tmp_path, hypotheses=())
    config = write_config(
        tmp_path / "cfg" / "po.toml",
        repo,
        [{"name": "t", "command": ["true"], "watch": ["**/*.py"]}],
    )
    bystander = subprocess.Popen(["sleep", "1000"])
    try:
        st = Path(f"/proc/{bystander.pid}/stat").read_bytes()
        start_time = int(st[st.rindex(b")") + 2 :].split()[19])
        jobs = config.parent / "state" / "jobs"
        jobs.mkdir(parents=True, mode=0o700)
        (jobs / "old-j1.json").write_text(
            json.dumps(
                {
                    "job_id": "old-j1",
                    "hypothesis": "repo",
                    "script": "t",
                    "pid": bystander.pid,
                    "pgid": bystander.pid,
                    "start_time": start_time - 1,
                    "batch_id": "old-b1",
                    "started_at": 0.0,
                    "boot_id": Path("/proc/sys/kernel/random/boot_id").read_text().strip(),
                }
            )
        )
        d = daemons(config)
        d.wait_ready()
        recovered = d.wait_event("job_recovered")[0]
        assert recovered["killed"] == [] and recovered["leader_alive"] is False
        assert bystander.poll() is None and pid_alive(bystander.pid)
        assert d.cell("repo", "t")["state"] == "error"
        assert d.stop() == 0
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


# == a worktree deleted under a running job =============================================
def test_worktree_deleted_while_its_job_runs(tmp_path: Path, daemons, tag_env) -> None:
    repo, trees = make_repo(tmp_path, hypotheses=("hyp-1", "hyp-2"))
    cmd = write_script(tmp_path / "scripts", "stuck.py", STUCK)
    marker, env = tag_env()
    config = write_config(
        tmp_path / "cfg" / "po.toml",
        repo,
        [{"name": "stuck", "command": cmd, "watch": ["**/*.py"], "env": env, "kill_grace_s": 1}],
    )
    d = daemons(config)
    d.wait_ready()
    touch_edit(trees["hyp-1"] / "src" / "app.py")
    d.wait_event("job_started", lambda e: e["hypothesis"] == "hyp-1")
    wait_until(lambda: len(processes_with_env(marker)) == 3, what="job running")
    shutil.rmtree(trees["hyp-1"])

    removed = d.wait_event("worktree_removed")[0]
    assert removed["hypothesis"] == "hyp-1"
    done = d.wait_event("job_finished", lambda e: e["hypothesis"] == "hyp-1")[0]
    assert done["result"] == "cancelled"
    assert processes_with_env(marker) == []
    assert "hyp-1" not in d.status()["hypotheses"]

    (tmp_path / "scripts" / "fast").write_text("")
    touch_edit(trees["hyp-2"] / "src" / "app.py")  # the others are still served
    later = d.wait_event("job_finished", lambda e: e["hypothesis"] == "hyp-2")[0]
    assert later["result"] == "pass"
    assert d.stop() == 0


# == state dir full or read-only ==========================================================
def _fill(folder: Path) -> Path:
    """Fill the filesystem of ``folder`` to the last byte; returns the filler file."""
    filler = folder / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    try:
        with open(filler, "ab") as f:  # the last partial block, byte by byte
            while True:
                f.write(b"\0")
                f.flush()
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc
    return filler


@pytest.mark.parametrize("trouble", ["full", "read-only"])
def test_state_dir_full_or_read_only_is_logged_and_survived(
    tmp_path: Path, daemons, trouble: str
) -> None:
    repo, _ = make_repo(tmp_path, hypotheses=())
    cmd = write_script(tmp_path / "scripts", "ok.py", "print('ok')\n")
    config = write_config(
        tmp_path / "cfg" / "po.toml", repo, [{"name": "ok", "command": cmd, "watch": ["**/*.py"]}]
    )
    state = config.parent / "state"
    with small_tmpfs(state, "512k"):
        d = daemons(config)
        d.wait_ready()
        touch_edit(repo / "src" / "app.py")
        first = d.wait_event("job_finished")[0]
        assert first["result"] == "pass" and first["log_path"]

        mark = len(d.events())
        trouble_ctx = contextlib.ExitStack()
        if trouble == "full":
            filler = _fill(state)
        else:
            trouble_ctx.enter_context(read_only(state))
        touch_edit(repo / "src" / "app.py")
        # The job still runs and its result still reaches the JSON log...
        second = d.wait_event("job_finished", count=2)[1]
        assert second["result"] == "pass", second
        assert second["output_tail"] == "ok\n"
        # ... while the status file cannot be written: said once per failure, with why.
        failed = wait_until(
            lambda: events_after(d, "status_write_failed", mark), what="status_write_failed"
        )[0]
        assert failed["path"] == os.fsdecode(d.status_path)
        expected = "No space left" if trouble == "full" else "Read-only file system"
        assert expected in failed["error"], failed
        assert d.status()["hypotheses"]["repo"]["scripts"]["ok"]["job_id"] == first["job_id"]

        if trouble == "full":
            filler.unlink()
        trouble_ctx.close()
        # The daemon retries: the status file catches up without any new edit ...
        wait_until(
            lambda: d.cell("repo", "ok")["job_id"] == second["job_id"],
            what="the status file written again",
        )
        recovered = d.wait_event("status_write_recovered")[0]
        assert recovered["previous_error"].split("]")[0] == failed["error"].split("]")[0]
        # ... the failure was reported, not repeated on every retry ...
        assert len(events_after(d, "status_write_failed", mark)) <= 2
        # ... and everything works as before, run logs included.
        touch_edit(repo / "src" / "app.py")
        third = d.wait_event("job_finished", count=3)[2]
        assert third["result"] == "pass" and Path(third["log_path"]).read_text() == "ok\n"
        wait_cell(d, "repo", "ok", "pass", where=lambda c: c["job_id"] == third["job_id"])
        assert d.stop() == 0
        assert d.status()["daemon"]["state"] == "stopped"
