"""The state dir is not trusted blindly (issue 11: items 1, 2, 5, 11 and the leftovers).

Each test drives the real daemon (``python -m parallel_orchestrator run``) on a real git
repository and plays the attacker or the careless user: a state dir others can write,
links and FIFOs planted where the daemon writes or reads, a ledger record naming an
innocent process, a state dir deleted under a running daemon, corrupt files left by a
crash. Unit proofs of the opener itself live in test_store.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from harness import (
    DaemonProcess,
    make_repo,
    pid_alive,
    processes_with_env,
    run_cli,
    wait_until,
    write_config,
)
from reliability_helpers import touch_edit, wait_fresh_ready, write_script

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc")

# A start that hangs (a FIFO read) must fail the test well before the harness's 60 s.
QUICK_START_S = 20.0
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")

STUCK = """
import time
print("stuck", flush=True)
time.sleep(1000)
"""


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
        d._stderr.close()


@pytest.fixture
def tag_env():
    """A marker every process of a job inherits; whatever carries one at the end is killed."""
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


@pytest.fixture
def bystander():
    """An innocent process (no PO_JOB_ID): what a planted ledger record would name."""
    proc = subprocess.Popen(["sleep", "1000"])
    yield proc
    proc.kill()
    proc.wait()


def _setup(tmp_path: Path, scripts: list[dict] | None = None, **daemon) -> Path:
    repo, _ = make_repo(tmp_path, hypotheses=())
    spec = scripts or [{"name": "ok", "command": ["true"], "watch": ["**/*.py"]}]
    return write_config(tmp_path / "cfg" / "po.toml", repo, spec, **daemon)


def _start_time(pid: int) -> int:
    data = Path(f"/proc/{pid}/stat").read_bytes()
    return int(data[data.rindex(b")") + 2 :].split()[19])


def _refused(config: Path) -> str:
    """``run`` must refuse at once: exit 2 and one line on stderr, no traceback."""
    done = run_cli("run", "-c", os.fsdecode(config), cwd=config.parent, timeout=QUICK_START_S)
    assert done.returncode == 2, done.stderr + done.stdout
    assert "Traceback" not in done.stderr + done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


# == 1. a state dir others could write is refused ========================================
@pytest.mark.parametrize(
    "trouble", ["state-world-writable", "jobs-group-writable", "runs-a-symlink", "foreign-owner"]
)
def test_a_state_dir_others_could_write_is_refused(tmp_path: Path, trouble: str) -> None:
    config = _setup(tmp_path)
    state = config.parent / "state"
    state.mkdir(mode=0o700)
    if trouble == "state-world-writable":
        state.chmod(0o777)
        expected = "writable by group/others (mode 0777)"
    elif trouble == "jobs-group-writable":
        (state / "jobs").mkdir()
        (state / "jobs").chmod(0o770)
        expected = "its jobs/ writable by group/others (mode 0770)"
    elif trouble == "runs-a-symlink":
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        (state / "runs").symlink_to(elsewhere)
        expected = "its runs/: a symlink"
    else:
        if os.geteuid() != 0:
            pytest.skip("giving a folder to another user needs root")
        os.chown(state, 65534, 65534)
        expected = "owned by another user (uid 65534)"
    line = _refused(config)
    assert f"daemon.state_dir {state}: " in line, line
    assert "refusing" in line and expected in line, line
    assert not (state / "daemon.lock").exists()


def test_a_planted_lock_symlink_is_never_written_through(tmp_path: Path) -> None:
    """A link at daemon.lock used to be opened O_CREAT and truncated: a root daemon
    emptied a file of the attacker's choosing."""
    config = _setup(tmp_path)
    state = config.parent / "state"
    state.mkdir(mode=0o700)
    victim = tmp_path / "precious.txt"
    victim.write_text("precious\n")
    (state / "daemon.lock").symlink_to(victim)
    line = _refused(config)
    assert "daemon.lock" in line, line
    assert victim.read_text() == "precious\n"


# == 1. recovery kills only what proves to be one of our jobs ============================
def test_a_planted_ledger_record_gets_no_process_killed(
    tmp_path: Path, daemons, bystander: subprocess.Popen
) -> None:
    """Everything a record holds (pid, start time, boot id) is readable from /proc: the
    record alone proves nothing. The process must carry the recorded PO_JOB_ID."""
    config = _setup(tmp_path)
    jobs = config.parent / "state" / "jobs"
    jobs.mkdir(parents=True, mode=0o700)
    record = {
        "job_id": "planted-j1",
        "hypothesis": "repo",
        "script": "ok",
        "pid": bystander.pid,
        "pgid": bystander.pid,
        "start_time": _start_time(bystander.pid),
        "batch_id": "planted-b1",
        "started_at": 0.0,
        "boot_id": BOOT_ID.read_text().strip(),
    }
    (jobs / "planted-j1.json").write_text(json.dumps(record))
    d = daemons(config)
    d.wait_ready()
    recovered = d.wait_event("job_recovered")[0]
    assert recovered["job_id"] == "planted-j1"
    assert recovered["killed"] == [] and recovered["leader_alive"] is False
    assert bystander.poll() is None and pid_alive(bystander.pid)
    assert d.stop() == 0
    assert bystander.poll() is None


# == 2. two daemons on one state dir =====================================================
def _stuck_job(tmp_path: Path, daemons, tag_env, **daemon) -> tuple[Path, DaemonProcess, str]:
    """A daemon whose one job runs until killed; returns (config, daemon, job marker)."""
    marker, env = tag_env()
    cmd = write_script(tmp_path / "scripts", "stuck.py", STUCK)
    spec = [{"name": "stuck", "command": cmd, "watch": ["**/*.py"], "env": env}]
    config = _setup(tmp_path, spec, **daemon)
    d = daemons(config)
    d.wait_ready()
    touch_edit(config.parent.parent / "repo" / "src" / "app.py")
    d.wait_event("job_started")
    wait_until(lambda: processes_with_env(marker), what="the job running")
    return config, d, marker


def test_a_deleted_state_dir_is_recreated_and_locked_again(
    tmp_path: Path, daemons, tag_env
) -> None:
    config, d1, marker = _stuck_job(tmp_path, daemons, tag_env)
    job = d1.events("job_started")[0]
    state = config.parent / "state"
    shutil.rmtree(state)  # the careless user; the lock's inode is gone with it

    restored = d1.wait_event("state_dir_restored")[0]
    assert restored["path"] == os.fsdecode(state)
    assert d1.events("state_dir_replaced")[0]["path"] == os.fsdecode(state)
    assert stat.S_IMODE(state.stat().st_mode) == 0o700

    # The running job's ledger record is back: a crash now would still be recovered.
    # (rmtree is no atomic delete: the guard may have restored the folder while rmtree
    # still ran, and restores it once more when rmtree finishes: wait for the last one.)
    def ledger_ids() -> list[str]:
        found = []
        for p in (state / "jobs").glob("*.json"):
            with contextlib.suppress(OSError, ValueError):
                found.append(json.loads(p.read_text())["job_id"])
        return found

    wait_until(lambda: ledger_ids() == [job["job_id"]], what="the job's record restored")

    # A second daemon on the same state dir is refused, and the job lives on.
    line = _refused(config)
    assert "another daemon" in line and str(d1.proc.pid) in line, line
    assert processes_with_env(marker)
    assert d1.stop() == 0
    assert processes_with_env(marker) == []


def test_recovery_leaves_the_jobs_of_a_live_daemon_alone(tmp_path: Path, daemons, tag_env) -> None:
    """Records of a daemon that still runs (they reached another state dir: a copy, a
    restore, a race with rm -rf) are not leftovers: its job must not be killed."""
    config, d1, marker = _stuck_job(tmp_path, daemons, tag_env)
    running = processes_with_env(marker)
    other_cfg = write_config(
        tmp_path / "other" / "po.toml",
        tmp_path / "repo",
        [{"name": "stuck", "command": ["true"], "watch": ["**/*.py"]}],
    )
    other_jobs = other_cfg.parent / "state" / "jobs"
    other_jobs.mkdir(parents=True, mode=0o700)
    for record in (config.parent / "state" / "jobs").glob("*.json"):
        shutil.copy(record, other_jobs / record.name)

    d2 = daemons(other_cfg)
    d2.wait_ready()
    skipped = d2.wait_event("job_record_skipped")[0]
    assert skipped["daemon_pid"] == d1.proc.pid
    assert d2.events("job_recovered") == []
    assert processes_with_env(marker) == running
    assert d2.stop() == 0
    assert processes_with_env(marker) == running  # nor at its shutdown
    assert d1.stop() == 0


def test_a_state_dir_change_on_reload_is_refused(tmp_path: Path, daemons) -> None:
    """Lock and ledger cannot move with it: refused like any config that cannot apply."""
    config = _setup(tmp_path)
    d = daemons(config)
    d.wait_ready()
    write_config(
        config,
        tmp_path / "repo",
        [{"name": "ok", "command": ["true"], "watch": ["**/*.py"]}],
        state_dir="state2",
    )
    d.signal(signal.SIGHUP)
    invalid = d.wait_event("config_invalid")[0]
    assert any("daemon.state_dir" in e and "restart" in e for e in invalid["errors"]), invalid
    assert d.events("config_reloaded") == []
    assert not (config.parent / "state2").exists()
    touch_edit(tmp_path / "repo" / "src" / "app.py")  # the old config still works
    assert d.wait_event("job_finished")[0]["result"] == "pass"
    assert d.stop() == 0
    assert d.status()["daemon"]["state"] == "stopped"


# == 5. FIFOs and folders where state files belong =======================================
def test_fifos_and_folders_in_the_state_dir_do_not_block_the_start(tmp_path: Path, daemons) -> None:
    config = _setup(tmp_path)
    state = config.parent / "state"
    jobs = state / "jobs"
    jobs.mkdir(parents=True, mode=0o700)
    os.mkfifo(state / "status.json", 0o600)
    os.mkfifo(jobs / "fifo.json", 0o600)
    (jobs / "folder.json").mkdir()

    d = daemons(config)
    # The event first: reading status.json (as wait_ready does) would block on the FIFO.
    corrupt = d.wait_event("state_file_corrupt", timeout=QUICK_START_S)[0]
    d.wait_ready(timeout=QUICK_START_S)
    assert corrupt["path"] == os.fsdecode(state / "status.json")
    assert "not a regular file" in corrupt["error"]
    unreadable = {e["path"]: e for e in d.wait_event("job_record_unreadable", count=2)}
    assert set(unreadable) == {os.fsdecode(jobs / "fifo.json"), os.fsdecode(jobs / "folder.json")}
    assert stat.S_ISFIFO(os.lstat(state / "status.json.corrupt").st_mode)
    assert (jobs / "folder.json.corrupt").is_dir()
    assert stat.S_ISREG(os.lstat(state / "status.json").st_mode)  # its own, written anew
    assert d.stop() == 0


def test_status_on_a_fifo_answers_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "status.json"
    os.mkfifo(fifo, 0o600)
    done = run_cli("status", "--status-file", os.fsdecode(fifo), cwd=tmp_path, timeout=20)
    assert done.returncode == 3, done  # as for any status file that cannot be read
    assert "not a regular file" in done.stderr and os.fsdecode(fifo) in done.stderr
    assert "Traceback" not in done.stderr


# == 11. corrupt state at start ==========================================================
def test_corrupt_state_is_set_aside_never_fatal(tmp_path: Path, daemons) -> None:
    config = _setup(tmp_path)
    state = config.parent / "state"
    jobs = state / "jobs"
    jobs.mkdir(parents=True, mode=0o700)
    (state / "status.json").write_text('{"schema_version": 1, "hypotheses": {')  # cut short
    (jobs / "a.json").mkdir()  # a folder named like a record
    (jobs / "b.json").write_text('{"job_id": ["not", "a", "string"]}')

    d = daemons(config)
    d.wait_ready(timeout=QUICK_START_S)
    corrupt = d.wait_event("state_file_corrupt")[0]
    assert corrupt["moved_to"] == os.fsdecode(state / "status.json.corrupt")
    assert (state / "status.json.corrupt").read_text().endswith("{")
    bad = {Path(e["path"]).name for e in d.wait_event("job_record_unreadable", count=2)}
    assert bad == {"a.json", "b.json"}
    assert sorted(p.name for p in jobs.iterdir()) == ["a.json.corrupt", "b.json.corrupt"]
    touch_edit(tmp_path / "repo" / "src" / "app.py")
    assert d.wait_event("job_finished")[0]["result"] == "pass"
    assert d.stop() == 0


def test_wrong_types_in_the_status_file_are_dropped_and_it_stays_strict_json(
    tmp_path: Path, daemons
) -> None:
    config = _setup(tmp_path)
    state = config.parent / "state"
    state.mkdir(mode=0o700)
    cell = {"state": ["pass"], "last_result": "pass", "duration_s": 1e999, "job_id": {"x": 1}}
    doc_daemon = ["not", "an", "object"]
    doc = {
        "schema_version": 1,
        "daemon": doc_daemon,
        "hypotheses": {"repo": {"path": ["x"], "scripts": {"ok": cell}}},
    }
    (state / "status.json").write_text(json.dumps(doc))  # Python writes 1e999 as Infinity

    d = daemons(config)
    d.wait_event("daemon_started", timeout=QUICK_START_S)
    d.wait_status(lambda doc: doc["daemon"] != doc_daemon, QUICK_START_S, "the new status file")
    wait_fresh_ready(d, timeout=QUICK_START_S)

    def strict(text: str) -> dict:
        return json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in status"))

    now = strict((state / "status.json").read_text())
    assert now["hypotheses"]["repo"]["scripts"]["ok"]["last_result"] == "pass"
    assert now["hypotheses"]["repo"]["scripts"]["ok"]["duration_s"] is None
    assert now["hypotheses"]["repo"]["scripts"]["ok"]["job_id"] is None
    shown = run_cli("status", "-c", os.fsdecode(config), "--json", cwd=config.parent)
    assert shown.returncode == 0, shown.stderr
    assert d.stop() == 0
    strict((state / "status.json").read_text())


# == Also: leftovers of a kill -9 =========================================================
def test_leftovers_of_a_killed_daemon_are_removed_at_start(tmp_path: Path, daemons) -> None:
    config = _setup(tmp_path)
    state = config.parent / "state"
    run_dir = state / "runs" / "repo" / "ok"
    run_dir.mkdir(parents=True, mode=0o700)
    for folder in (state / "runs", state / "runs" / "repo"):
        folder.chmod(0o700)
    temp = state / ".status.json.0badf00d.tmp"  # the atomic writer's temp, cut by kill -9
    temp.write_text('{"schema_ver')
    orphans = [run_dir / "old-j1.changed", run_dir / "old-j1.changed0"]  # no log: never ran
    kept = [run_dir / "old-j2.log", run_dir / "old-j2.changed", run_dir / "old-j2.changed0"]
    for path in orphans + kept:
        path.write_text("src/app.py\n")
    # cache/ and results/ may be mid-write by a `once` right now: only old temps go.
    (state / "cache").mkdir(mode=0o700)
    (state / "results" / "repo").mkdir(parents=True, mode=0o700)
    (state / "results").chmod(0o700)
    old_temps = [
        state / "cache" / ".k1.json.00000001.tmp",
        state / "results" / "repo" / ".ok.json.00000002.tmp",
    ]
    young = state / "cache" / ".k2.json.00000003.tmp"
    for path in [*old_temps, young]:
        path.write_text("{")
    for path in old_temps:
        os.utime(path, (time.time() - 3600, time.time() - 3600))

    d = daemons(config)
    d.wait_ready()
    tidied = d.wait_event("state_dir_tidied")[0]
    assert set(tidied["removed"]) == {os.fsdecode(p) for p in [temp, *orphans, *old_temps]}
    assert not temp.exists()
    assert [p.exists() for p in orphans + old_temps] == [False] * 4
    assert all(p.exists() for p in kept) and young.exists()
    assert d.stop() == 0


def test_once_refuses_an_untrusted_state_dir_too(tmp_path: Path) -> None:
    """``once`` writes run logs and reads cache entries there: the same refusal."""
    config = _setup(tmp_path)
    state = config.parent / "state"
    state.mkdir(mode=0o700)
    state.chmod(0o777)
    done = run_cli("once", "-c", os.fsdecode(config), cwd=config.parent, timeout=QUICK_START_S)
    assert done.returncode == 2, done.stderr + done.stdout
    assert f"daemon.state_dir {state}: refusing" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (state / "runs").exists()


def test_a_state_dir_taken_by_another_daemon_stops_this_one(
    tmp_path: Path, daemons, tag_env
) -> None:
    """The state dir replaced by one whose lock another daemon already holds: this one
    cannot keep its crash ledger there, so it stops (its jobs with it), clearly."""
    config, d1, marker = _stuck_job(tmp_path, daemons, tag_env)
    state = config.parent / "state"
    shutil.rmtree(state)
    state.mkdir(mode=0o700)
    holder = os.open(state / "daemon.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(holder, b"4242\n/elsewhere/po.toml\n")
        lost = d1.wait_event("state_dir_lost")[0]
        assert "another daemon (pid 4242" in lost["error"], lost
        assert d1.wait_exit() == 1
        stopping = d1.events("daemon_stopping")[0]
        assert stopping["reason"] == "state_dir_lost"
        assert d1.events()[-1]["event"] == "daemon_stopped"
        assert processes_with_env(marker) == []
    finally:
        os.close(holder)


# == the lock guard itself ===============================================================
async def test_a_ledger_write_makes_the_guard_check_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before a ledger record is written the guard checks the lock: a deleted state dir
    is relocked before the next periodic check (here: an hour away)."""
    import asyncio

    from parallel_orchestrator.jobs.ledger import JobRecord, Ledger
    from parallel_orchestrator.service import statedir

    monkeypatch.setattr(statedir, "CHECK_EVERY_S", 3600.0)
    state = tmp_path / "state"
    lock = statedir.StateDirLock(state, None)
    lock.acquire()
    events: list[str] = []

    class Log:
        def warning(self, event: str, **_: object) -> None:
            events.append(event)

        error = warning

    restored = asyncio.Event()
    guard = asyncio.ensure_future(lock.watch(lambda: Log(), restored.set))
    try:
        await asyncio.sleep(0)  # the guard is waiting
        shutil.rmtree(state)
        record = JobRecord.for_process(
            job_id="s-j1", hypothesis="h", script="s", pid=os.getpid(), batch_id="s-b1"
        )
        Ledger(state / "jobs", lock.check_before_write).add(record)
        await asyncio.wait_for(restored.wait(), 20)
        assert events == ["state_dir_replaced", "state_dir_restored"]
        assert lock.problem() == "" and (state / "daemon.lock").exists()
    finally:
        guard.cancel()
        lock.release()


# == a state dir in a folder others can write: they could swap the whole of it ===========
@pytest.mark.parametrize("trouble", ["parent-world-writable", "linked-from-shared-folder"])
def test_a_state_dir_in_a_folder_others_can_write_is_refused(
    tmp_path: Path, daemons, trouble: str
) -> None:
    """Whoever can write the state dir's parent can rename it away at any time and put a
    folder of their own (with runs/ or jobs/ linked anywhere) in its place: every write
    between two lock checks would then land where they chose. A sticky folder (/tmp) is
    fine: others cannot rename an entry they do not own."""
    shared = tmp_path / "shared"
    shared.mkdir()
    if trouble == "parent-world-writable":
        state = shared / "state"
        config = _setup(tmp_path, state_dir=os.fsdecode(state))
    else:
        mine = tmp_path / "mine"
        mine.mkdir(mode=0o700)
        state = mine / "state"
        (shared / "link").symlink_to(mine)
        config = _setup(tmp_path, state_dir=os.fsdecode(shared / "link" / "state"))
    shared.chmod(0o777)
    line = _refused(config)
    assert "refusing" in line and f"{shared}, mode 0777" in line, line
    assert not (state / "daemon.lock").exists()

    shared.chmod(0o1777)  # sticky, like /tmp: trusted
    d = daemons(config)
    d.wait_event("daemon_started")
    assert (state / "daemon.lock").exists()
    assert d.stop() == 0


# == 3. error lines name hostile things escaped ===========================================
def test_error_lines_show_control_characters_escaped(tmp_path: Path) -> None:
    """A worktree folder name (or an argument) holding an escape sequence must not drive
    the terminal when an error line names it: every error line is shown escaped."""
    hostile = "h\x1b]0;PWNED\x07\x1b[2J"
    repo, _ = make_repo(tmp_path, hypotheses=())
    subprocess.run(
        ["git", "-C", repo, "worktree", "add", "-q", "-b", "plain", tmp_path / hostile],
        check=True,
    )
    config = write_config(tmp_path / "cfg" / "po.toml", repo, [{"name": "ok", "command": ["true"]}])
    cfg = os.fsdecode(config)
    for argv in (
        ["once", "-c", cfg, "--hypothesis", "nope\x1b[31m"],  # names the hostile worktree
        ["status", "-c", cfg, "extra\x1b[2J"],  # argparse's own error line
    ):
        done = run_cli(*argv, cwd=config.parent, timeout=QUICK_START_S)
        assert done.returncode == 2, done.stderr
        assert "\x1b" not in done.stderr and "\x07" not in done.stderr, repr(done.stderr)
        assert "\\x1b" in done.stderr, done.stderr


# == the log file: a link planted by someone else is never appended through ==============
def test_a_log_file_link_planted_by_another_user_is_refused(tmp_path: Path, daemons) -> None:
    """With fs.protected_symlinks off (containers, some systems), a link another user
    planted at the log file's name in a shared folder (/tmp) made a root daemon append
    its JSON lines to a file of their choosing. A link of our own (or root's) still
    works: /dev/stderr is one."""
    if os.geteuid() != 0:
        pytest.skip("planting a link owned by another user needs root")
    public = tmp_path / "public"
    public.mkdir()
    public.chmod(0o1777)
    victim = tmp_path / "precious.txt"
    victim.write_text("precious\n")
    log = public / "po.log"
    log.symlink_to(victim)
    os.lchown(log, 65534, 65534)
    config = _setup(tmp_path, log_file=os.fsdecode(log))
    line = _refused(config)
    assert f"log file {log}: cannot open" in line and "uid 65534" in line, line
    assert victim.read_text() == "precious\n"

    os.lchown(log, 0, 0)  # a link of our own: followed as before
    d = daemons(config)
    wait_until(lambda: "daemon_started" in victim.read_text(), 60, what="log via our link")
    assert d.stop() == 0
