"""End-to-end: ``parallel-orchestrator run`` as a real subprocess over a real repository
with linked worktrees, driven by real file edits and git commands, observed only through
its JSON log and status file, as users and dashboards observe it.

Every job runs ``tools/job.py`` (written per test), which records what it saw (argv,
``PO_*`` variables, the changed-file list, its pids) into ``out/<job_id>.json``. Each
test's scripts carry a unique ``PO_TEST_TAG`` in their ``env`` table; the fixture fails
the test if any process with that tag outlives the daemon.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from harness import (
    DaemonProcess,
    git,
    make_repo,
    processes_with_env,
    run_cli,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.timeout(120)

JOB_TOOL = r'''
import json, os, signal, subprocess, sys, time
from pathlib import Path

mode = sys.argv[1]
out = Path(os.environ["PO_TEST_OUT"])
job = os.environ["PO_JOB_ID"]


def record(**extra):
    changed = Path(os.environ["PO_CHANGED_FILE"]).read_text().splitlines()
    doc = {"mode": mode, "argv": sys.argv[2:], "cwd": os.getcwd(), "pid": os.getpid(),
           "env": {k: v for k, v in os.environ.items() if k.startswith("PO_")},
           "changed": changed, **extra}
    tmp = out / f".{job}.tmp"
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, out / f"{job}.json")


def block():
    """Until the test creates out/release (bounded, so a broken test cannot hang)."""
    deadline = time.monotonic() + 90
    while not (out / "release").exists() and time.monotonic() < deadline:
        time.sleep(0.02)


if mode == "pass":
    record()
    print("all good", os.environ["PO_HYPOTHESIS"])
elif mode == "fail":
    record()
    print("it broke", os.environ["PO_HYPOTHESIS"])
    sys.exit(3)
elif mode == "block":
    record()
    block()
elif mode == "spawn":
    same_group = subprocess.Popen(["sleep", "300"])
    escaped = subprocess.Popen(["sleep", "301"], start_new_session=True)
    record(grandchildren=[same_group.pid, escaped.pid])
    block()
elif mode == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    record()
    while True:
        time.sleep(1)
'''


class Scenario:
    """One repository (main worktree ``repo`` + ``hyp-1``, ``hyp-2``), a config folder and
    an ``out`` folder outside every worktree, so a job's records never look like edits."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.repo, self.trees = make_repo(
            root,
            files={
                "src/app.py": "VALUE = 1\n",
                "src/util.py": "X = 2\n",
                "README.md": "demo\n",
                ".gitignore": "build/\n*.log\n",
            },
        )
        self.out = root / "out"
        self.out.mkdir()
        self.tools = root / "tools"
        self.tools.mkdir()
        self.tool = self.tools / "job.py"
        self.tool.write_text(JOB_TOOL)
        self.cfg = root / "cfg" / "config.toml"
        self.tag = f"PO_TEST_TAG={uuid.uuid4().hex}"
        self.daemons: list[DaemonProcess] = []

    def script(
        self, name: str, mode: str = "pass", watch: tuple[str, ...] = ("**/*.py",), **extra: Any
    ) -> dict[str, Any]:
        return {
            "name": name,
            "command": [
                sys.executable,
                os.fsdecode(self.tool),
                mode,
                "{hypothesis}",
                "{worktree}",
                "{branch}",
            ],
            "watch": list(watch),
            "timeout_s": 60,
            "kill_grace_s": 1,
            "env": {"PO_TEST_TAG": self.tag.split("=", 1)[1], "PO_TEST_OUT": os.fsdecode(self.out)},
            **extra,
        }

    def config(
        self, scripts: list[dict[str, Any]], worktrees: dict[str, Any] | None = None, **daemon: Any
    ) -> Path:
        daemon.setdefault("max_concurrency", 8)
        return write_config(self.cfg, self.repo, scripts, worktrees=worktrees, **daemon)

    def start(
        self, scripts: list[dict[str, Any]], worktrees: dict[str, Any] | None = None, **daemon: Any
    ) -> DaemonProcess:
        self.config(scripts, worktrees, **daemon)
        d = DaemonProcess(self.cfg)
        self.daemons.append(d)
        d.wait_ready()
        return d

    # -- what the jobs saw -------------------------------------------------------------
    def record(self, job_id: str, timeout: float = 30.0) -> dict[str, Any]:
        path = self.out / f"{job_id}.json"
        wait_until(path.exists, timeout, what=f"record of job {job_id}")
        return json.loads(path.read_text())

    def release(self) -> None:
        (self.out / "release").touch()

    def leftovers(self) -> list[int]:
        return processes_with_env(self.tag)


@pytest.fixture
def sc(tmp_path: Path) -> Iterator[Scenario]:
    scenario = Scenario(tmp_path)
    yield scenario
    scenario.release()
    for d in scenario.daemons:
        if d.proc.poll() is None:
            d.stop()
    leaked: list[int] = []
    try:
        wait_until(lambda: not scenario.leftovers(), 10, what="job processes to be gone")
    except AssertionError:
        leaked = scenario.leftovers()
        for pid in leaked:
            os.kill(pid, signal.SIGKILL)
    assert not leaked, f"processes outlived the daemon: {leaked}"


# -- helpers ------------------------------------------------------------------------------
def edit(path: Path, text: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text if text is not None else f"# {uuid.uuid4().hex}\n")


def finished(
    d: DaemonProcess, hyp: str, script: str, count: int = 1, timeout: float = 30.0
) -> list[dict[str, Any]]:
    return d.wait_event(
        "job_finished",
        lambda e: e["hypothesis"] == hyp and e["script"] == script,
        count=count,
        timeout=timeout,
    )


def batch_with(d: DaemonProcess, hyp: str, rel: str, timeout: float = 30.0) -> dict[str, Any]:
    return d.wait_event(
        "batch_formed", lambda e: rel in e["hypotheses"].get(hyp, []), timeout=timeout
    )[-1]


def idle(d: DaemonProcess, timeout: float = 30.0) -> dict[str, Any]:
    """Nothing running or queued, as the status file says."""
    return d.wait_status(
        lambda s: (
            s["daemon"]["state"] == "idle"
            and s["summary"]["running"] == 0
            and s["summary"]["queued"] == 0
        ),
        timeout,
        what="daemon idle",
    )


def jobs_of(d: DaemonProcess, event: str = "job_started") -> list[str]:
    return sorted(f"{e['hypothesis']}/{e['script']}" for e in d.events(event))


def absent_for(seconds: float, check: Any, what: str) -> None:
    """A negative check over a bounded window: ``check()`` stays falsy throughout."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert not check(), what
        time.sleep(0.05)


CELL_KEYS = {
    "state",
    "last_result",
    "exit_code",
    "duration_s",
    "started_at",
    "finished_at",
    "job_id",
    "batch_id",
    "log_path",
    "output_tail",
    "tests",
}
SUMMARY_KEYS = {"pass", "fail", "timeout", "error", "cancelled", "running", "queued", "never_run"}
FINISHED_KEYS = {
    "batch_id",
    "job_id",
    "hypothesis",
    "script",
    "result",
    "exit_code",
    "duration_s",
    "log_path",
    "output_tail",
    "tests",
}


def utc(ts: str) -> datetime:
    parsed = datetime.fromisoformat(ts)
    assert parsed.tzinfo is not None and parsed.utcoffset() == UTC.utcoffset(None), ts
    return parsed


# == 1. run_on_start, the status schema and the log format ================================
def test_run_on_start_runs_everything_and_reports_by_contract(sc: Scenario) -> None:
    d = sc.start([sc.script("ok", "pass"), sc.script("bad", "fail")], run_on_start=True)
    hyps = ["hyp-1", "hyp-2", "repo"]
    events = d.wait_event("job_finished", count=6)
    assert sorted(f"{e['hypothesis']}/{e['script']}" for e in events) == sorted(
        f"{h}/{s}" for h in hyps for s in ("ok", "bad")
    )
    for e in events:
        assert e.keys() >= FINISHED_KEYS, e
        assert e["result"] == ("pass" if e["script"] == "ok" else "fail")
        assert e["exit_code"] == (0 if e["script"] == "ok" else 3)
        assert isinstance(e["duration_s"], float) and e["duration_s"] >= 0
        assert Path(e["log_path"]).is_file()
        expected = "all good" if e["script"] == "ok" else "it broke"
        assert f"{expected} {e['hypothesis']}" in e["output_tail"]

    doc = d.wait_status(
        lambda s: s["summary"]["pass"] == 3 and s["summary"]["fail"] == 3,
        what="3 pass + 3 fail in the summary",
    )
    assert doc["schema_version"] == 1
    assert set(doc) >= {"schema_version", "daemon", "hypotheses", "summary"}
    daemon = doc["daemon"]
    assert set(daemon) >= {"pid", "version", "state", "started_at", "updated_at", "config_path"}
    assert daemon["pid"] == d.proc.pid
    assert daemon["config_path"] == os.fsdecode(sc.cfg)
    assert daemon["state"] in ("idle", "running")
    utc(daemon["started_at"])
    utc(daemon["updated_at"])
    assert set(doc["summary"]) == SUMMARY_KEYS
    assert doc["summary"] == {**dict.fromkeys(SUMMARY_KEYS, 0), "pass": 3, "fail": 3}
    assert sorted(doc["hypotheses"]) == hyps
    for hyp, entry in doc["hypotheses"].items():
        assert entry["path"] == os.path.realpath(sc.trees[hyp])
        assert entry["branch"] == ("main" if hyp == "repo" else hyp)
        assert sorted(entry["scripts"]) == ["bad", "ok"]
        for name, cell in entry["scripts"].items():
            assert set(cell) == CELL_KEYS, cell
            assert cell["state"] == cell["last_result"] == ("pass" if name == "ok" else "fail")
            assert utc(cell["started_at"]) <= utc(cell["finished_at"])
            assert Path(cell["log_path"]).is_file()

    started = d.events("daemon_started")
    assert len(started) == 1
    assert {"pid", "version", "config_path", "hypotheses", "scripts"} <= started[0].keys()
    assert started[0]["hypotheses"] == 3 and started[0]["scripts"] == 2
    assert d.stop() == 0
    lines = d.log_lines()
    for line in lines:
        keys = list(json.loads(line))
        assert keys[:3] == ["timestamp", "level", "event"], line
        utc(json.loads(line)["timestamp"])
    assert json.loads(lines[-1])["event"] == "daemon_stopped"


# == 2. exactly the affected scripts, in exactly the edited hypothesis ====================
def test_status_file_is_written_before_the_log_line(sc: Scenario) -> None:
    """Whoever sees job_started/job_finished in the log finds the job in the status file."""
    d = sc.start([sc.script("ok")])
    for n in range(1, 4):
        edit(sc.trees["hyp-1"] / "src" / "app.py")
        started = d.wait_event("job_started", count=n)[-1]
        assert d.cell("hyp-1", "ok")["job_id"] == started["job_id"]
        done = d.wait_event("job_finished", count=n)[-1]
        cell = d.cell("hyp-1", "ok")
        assert (cell["job_id"], cell["state"]) == (done["job_id"], done["result"])
    assert d.stop() == 0


def test_edit_reruns_only_affected_script_in_that_hypothesis(sc: Scenario) -> None:
    d = sc.start([sc.script("py", watch=("**/*.py",)), sc.script("docs", watch=("*.md",))])
    edit(sc.trees["hyp-1"] / "src" / "app.py")
    batch = batch_with(d, "hyp-1", "src/app.py")
    assert batch["jobs"] == ["hyp-1/py"]
    assert batch["changed_count"] == 1
    (done,) = finished(d, "hyp-1", "py")
    assert done["result"] == "pass" and done["batch_id"] == batch["batch_id"]
    rec = sc.record(done["job_id"])
    assert rec["changed"] == ["src/app.py"]
    wt = os.path.realpath(sc.trees["hyp-1"])
    assert rec["argv"] == ["hyp-1", wt, "hyp-1"]  # {hypothesis} {worktree} {branch}
    assert rec["cwd"] == wt
    env = rec["env"]
    assert env["PO_HYPOTHESIS"] == "hyp-1" and env["PO_WORKTREE"] == wt
    assert env["PO_BATCH_ID"] == batch["batch_id"] and env["PO_JOB_ID"] == done["job_id"]
    (started,) = d.events("job_started")
    assert started["job_id"] == done["job_id"] and started["pid"] == rec["pid"]
    assert started["command"][-3:] == ["hyp-1", wt, "hyp-1"]

    # A change no watch glob matches forms a batch but starts nothing.
    edit(sc.trees["hyp-2"] / "notes.txt")
    quiet = batch_with(d, "hyp-2", "notes.txt")
    assert quiet["jobs"] == []
    # A later real edit proves the daemon processed the quiet one and started nothing for it.
    edit(sc.trees["hyp-2"] / "README.md")
    assert batch_with(d, "hyp-2", "README.md")["jobs"] == ["hyp-2/docs"]
    finished(d, "hyp-2", "docs")
    idle(d)
    assert jobs_of(d) == ["hyp-1/py", "hyp-2/docs"]
    cell = d.cell("hyp-2", "py")
    assert cell["state"] == "never_run"


# == 3. on_busy ===========================================================================
def test_on_busy_restart_cancels_the_running_job_and_its_grandchildren(sc: Scenario) -> None:
    d = sc.start([sc.script("slow", "spawn")], on_busy="restart")
    edit(sc.trees["hyp-1"] / "src" / "app.py")
    (first,) = d.wait_event("job_started")
    rec = sc.record(first["job_id"])
    kids = rec["grandchildren"]
    edit(sc.trees["hyp-1"] / "src" / "util.py")
    (cut,) = d.wait_event("job_finished", lambda e: e["job_id"] == first["job_id"])
    assert cut["result"] == "cancelled" and cut["exit_code"] is None
    old = {rec["pid"], *kids}
    wait_until(lambda: old.isdisjoint(sc.leftovers()), 10, what="cancelled job's processes gone")
    second = d.wait_event("job_started", count=2)[-1]
    assert second["job_id"] != first["job_id"]
    rec2 = sc.record(second["job_id"])
    assert "src/util.py" in rec2["changed"]
    # Never two at once in one worktree: the first job's processes were gone by then.
    assert set(sc.leftovers()).isdisjoint({rec["pid"], *kids})
    sc.release()
    done = finished(d, "hyp-1", "slow", count=2)[-1]
    assert done["job_id"] == second["job_id"] and done["result"] == "pass"
    # A job that ends normally takes its grandchildren along too (even the setsid one).
    wait_until(lambda: not sc.leftovers(), 10, what="the finished job's grandchildren gone")
    idle(d)
    assert d.cell("hyp-1", "slow")["state"] == "pass"


def test_on_busy_queue_gives_exactly_one_rerun(sc: Scenario) -> None:
    d = sc.start([sc.script("slow", "block")], on_busy="queue")
    edit(sc.trees["hyp-1"] / "src" / "app.py")
    (first,) = d.wait_event("job_started")
    sc.record(first["job_id"])
    edit(sc.trees["hyp-1"] / "src" / "a.py")
    batch_with(d, "hyp-1", "src/a.py")
    edit(sc.trees["hyp-1"] / "src" / "b.py")
    batch_with(d, "hyp-1", "src/b.py")
    assert d.wait_status(lambda s: s["summary"]["running"] == 1)
    sc.release()
    starts = d.wait_event("job_started", count=2)
    rec = sc.record(starts[1]["job_id"])
    assert {"src/a.py", "src/b.py"} <= set(rec["changed"])
    finished(d, "hyp-1", "slow", count=2)
    idle(d)
    assert len(d.events("job_started")) == 2
    assert [e["result"] for e in d.events("job_finished")] == ["pass", "pass"]


def test_on_busy_ignore_drops_edits_during_a_run(sc: Scenario) -> None:
    d = sc.start([sc.script("slow", "block")], on_busy="ignore")
    edit(sc.trees["hyp-1"] / "src" / "app.py")
    (first,) = d.wait_event("job_started")
    sc.record(first["job_id"])
    edit(sc.trees["hyp-1"] / "src" / "a.py")
    batch = batch_with(d, "hyp-1", "src/a.py")
    assert batch["jobs"] == ["hyp-1/slow"]
    d.wait_event("job_dropped", lambda e: e["batch_id"] == batch["batch_id"])
    sc.release()
    finished(d, "hyp-1", "slow")
    idle(d)
    assert len(d.events("job_started")) == 1


# == 4. bursts ============================================================================
def test_burst_of_files_is_one_batch_and_one_run(sc: Scenario) -> None:
    # A generous debounce: on this noisy machine the writer itself may stall briefly.
    d = sc.start(
        [sc.script("py"), sc.script("docs", watch=("**/*.md",))],
        debounce_ms=400,
        max_batch_wait_ms=20000,
    )
    gen = sc.trees["hyp-1"] / "src" / "gen"
    gen.mkdir()
    names = [f"src/gen/m{i:03}.py" for i in range(500)]
    for rel in names:
        (sc.trees["hyp-1"] / rel).write_text("X = 1\n")
    (done,) = finished(d, "hyp-1", "py", timeout=60)
    idle(d)
    batches = [b for b in d.events("batch_formed") if b["changed_count"]]
    assert len(batches) == 1, batches
    assert batches[0]["jobs"] == ["hyp-1/py"]
    assert batches[0]["changed_count"] >= 500
    assert set(names) <= set(sc.record(done["job_id"])["changed"])
    assert jobs_of(d) == ["hyp-1/py"]


def test_git_checkout_of_many_files_is_one_batch_and_one_run(sc: Scenario) -> None:
    git(sc.repo, "checkout", "-q", "-b", "many")
    names = [f"pkg/mod{i:03}.py" for i in range(300)]
    for rel in names:
        edit(sc.repo / rel, "Y = 1\n")
    (sc.repo / "src" / "app.py").write_text("VALUE = 2\n")
    git(sc.repo, "add", "-A")
    git(sc.repo, "commit", "-q", "-m", "many")
    git(sc.repo, "checkout", "-q", "main")
    d = sc.start([sc.script("py"), sc.script("docs", watch=("**/*.md",))])
    git(sc.trees["hyp-2"], "checkout", "-q", "many")
    finished(d, "hyp-2", "py", timeout=60)
    idle(d)
    batches = [b for b in d.events("batch_formed") if b["changed_count"]]
    assert len(batches) == 1, [(b["batch_id"], b["changed_count"], b["reason"]) for b in batches]
    assert batches[0]["jobs"] == ["hyp-2/py"]
    (done,) = d.events("job_finished")
    changed = set(sc.record(done["job_id"])["changed"])
    assert set(names) | {"src/app.py"} <= changed
    assert jobs_of(d) == ["hyp-2/py"]
    # The status follows the branch switch.
    d.wait_status(
        lambda s: s["hypotheses"]["hyp-2"]["branch"] == "many", what="hyp-2 shown on branch many"
    )


# == 5. atomic saves, deletes, renames ====================================================
def test_atomic_save_delete_and_rename_count(sc: Scenario) -> None:
    d = sc.start([sc.script("py")])
    wt = sc.trees["hyp-1"]
    tmp = wt / "src" / ".app.py.po-swp"
    tmp.write_text("VALUE = 42\n")
    os.replace(tmp, wt / "src" / "app.py")
    (first,) = finished(d, "hyp-1", "py")
    assert "src/app.py" in sc.record(first["job_id"])["changed"]
    idle(d)

    (wt / "src" / "util.py").unlink()
    second = finished(d, "hyp-1", "py", count=2)[-1]
    assert sc.record(second["job_id"])["changed"] == ["src/util.py"]
    idle(d)

    os.rename(wt / "src" / "app.py", wt / "src" / "renamed.py")
    third = finished(d, "hyp-1", "py", count=3)[-1]
    assert {"src/app.py", "src/renamed.py"} <= set(sc.record(third["job_id"])["changed"])
    assert len(d.events("job_started")) == 3


# == 6. ignored paths =====================================================================
def test_ignored_paths_start_nothing(sc: Scenario) -> None:
    d = sc.start(
        [sc.script("all", watch=("**",))],
        worktrees={"ignore": ["node_modules", "*.tmp", "scratch/**"]},
    )
    wt = sc.trees["hyp-1"]
    ignored = [
        "build/out.py",
        "debug.log",
        "src/trace.log",
        "node_modules/pkg/m.py",
        "src/x.tmp",
        "scratch/a/b.py",
    ]
    for rel in ignored:
        edit(wt / rel)
    edit(sc.repo / ".git" / "po-test-internal")
    git(wt, "tag", "t1")
    git(wt, "add", "-A")  # index.lock and index in the admin dir
    for n in (1, 2):  # two sentinels: everything before them has been through the filters
        edit(wt / f"sentinel{n}.py")
        batch = batch_with(d, "hyp-1", f"sentinel{n}.py")
        finished(d, "hyp-1", "all", count=n)
    idle(d)
    seen = {
        p for b in d.events("batch_formed") for paths in b["hypotheses"].values() for p in paths
    }
    assert seen == {"sentinel1.py", "sentinel2.py"}, seen
    assert batch["jobs"] == ["hyp-1/all"]
    assert jobs_of(d) == ["hyp-1/all", "hyp-1/all"]


def test_gitignored_file_runs_when_respect_gitignore_is_off(sc: Scenario) -> None:
    d = sc.start([sc.script("py")], worktrees={"respect_gitignore": False})
    edit(sc.trees["hyp-2"] / "build" / "gen.py")
    assert batch_with(d, "hyp-2", "build/gen.py")["jobs"] == ["hyp-2/py"]
    (done,) = finished(d, "hyp-2", "py")
    assert sc.record(done["job_id"])["changed"] == ["build/gen.py"]


# == 7. git's index.lock holds a worktree's changes =======================================
def test_index_lock_defers_changes_until_git_is_done(sc: Scenario) -> None:
    d = sc.start([sc.script("py")])
    lock = sc.repo / ".git" / "worktrees" / "hyp-1" / "index.lock"
    assert lock.parent.is_dir()
    fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    os.close(fd)
    wt = sc.trees["hyp-1"]
    edit(wt / "src" / "app.py")
    edit(wt / "src" / "new.py")
    absent_for(
        1.5,
        lambda: d.events("job_started") or d.events("batch_formed"),
        "nothing may start while index.lock exists",
    )
    lock.unlink()
    (done,) = finished(d, "hyp-1", "py")
    idle(d)
    (batch,) = d.events("batch_formed")
    assert batch["hypotheses"] == {"hyp-1": ["src/app.py", "src/new.py"]}
    assert batch["reason"] == "git_op_finished"
    assert sc.record(done["job_id"])["changed"] == ["src/app.py", "src/new.py"]
    assert len(d.events("job_started")) == 1


# == 8. worktrees come and go =============================================================
def test_worktree_added_and_removed_live(sc: Scenario) -> None:
    d = sc.start([sc.script("py", "block")])
    new = sc.root / "hyp-3"
    git(sc.repo, "worktree", "add", "-q", "-b", "hyp-3", os.fsdecode(new))
    (added,) = d.wait_event("worktree_added", lambda e: e["hypothesis"] == "hyp-3")
    assert added["path"] == os.path.realpath(new) and added["branch"] == "hyp-3"
    d.wait_status(lambda s: "hyp-3" in s["hypotheses"], what="hyp-3 in the status")
    sc.release()
    edit(new / "src" / "app.py")
    (done,) = finished(d, "hyp-3", "py")
    assert done["result"] == "pass"
    (sc.out / "release").unlink()

    # A running job in a worktree that goes away is cancelled, and the worktree dropped:
    # hyp-2 removed by git, hyp-3's folder deleted behind git's back.
    edit(sc.trees["hyp-2"] / "src" / "app.py")
    edit(new / "src" / "app.py")
    running = {
        e["hypothesis"]: e
        for e in d.wait_event(
            "job_started", lambda e: e["hypothesis"] in ("hyp-2", "hyp-3"), count=3
        )
    }
    assert running["hyp-3"]["job_id"] != done["job_id"]
    pids = {hyp: sc.record(e["job_id"])["pid"] for hyp, e in running.items()}
    for hyp, remove in (
        (
            "hyp-2",
            lambda: git(sc.repo, "worktree", "remove", "--force", os.fsdecode(sc.trees["hyp-2"])),
        ),
        ("hyp-3", lambda: shutil.rmtree(new)),
    ):
        remove()
        (gone,) = d.wait_event("worktree_removed", lambda e, hyp=hyp: e["hypothesis"] == hyp)
        assert gone["path"] == os.path.realpath(sc.root / hyp) and gone["branch"] == hyp
        (cut,) = d.wait_event(
            "job_finished", lambda e, hyp=hyp: e["job_id"] == running[hyp]["job_id"]
        )
        assert cut["result"] == "cancelled"
        wait_until(lambda hyp=hyp: pids[hyp] not in sc.leftovers(), 10, what=f"{hyp}'s job gone")
        d.wait_status(lambda s, hyp=hyp: hyp not in s["hypotheses"], what=f"{hyp} dropped")

    # The others are still served.
    sc.release()
    edit(sc.trees["hyp-1"] / "src" / "app.py")
    assert finished(d, "hyp-1", "py")[0]["result"] == "pass"
    assert sorted(d.status()["hypotheses"]) == ["hyp-1", "repo"]


# == 9. SIGHUP ============================================================================
def test_sighup_reload_good_and_bad(sc: Scenario) -> None:
    d = sc.start([sc.script("py")])
    sc.config([sc.script("py"), sc.script("docs", watch=("**/*.md",))])
    d.signal(signal.SIGHUP)
    d.wait_event("config_reloaded")
    doc = d.wait_status(
        lambda s: all("docs" in h["scripts"] for h in s["hypotheses"].values()), what="docs column"
    )
    assert doc["hypotheses"]["hyp-1"]["scripts"]["docs"]["state"] == "never_run"
    edit(sc.trees["hyp-1"] / "README.md")
    assert finished(d, "hyp-1", "docs")[0]["result"] == "pass"

    good = sc.cfg.read_text()
    sc.cfg.write_text(good + "\n[daemon\nbroken = \n")
    d.signal(signal.SIGHUP)
    (bad,) = d.wait_event("config_invalid")
    assert bad["errors"] and any(os.fsdecode(sc.cfg) in err for err in bad["errors"])
    d.wait_status(lambda s: s["daemon"]["state"] == "idle", what="idle after a bad reload")
    assert d.proc.poll() is None
    edit(sc.trees["hyp-2"] / "src" / "app.py")
    edit(sc.trees["hyp-2"] / "README.md")
    finished(d, "hyp-2", "py")
    finished(d, "hyp-2", "docs")
    assert d.stop() == 0


def test_reload_that_cannot_be_applied_keeps_the_old_config(sc: Scenario) -> None:
    """A new log file that cannot be opened makes the reload invalid, not a crash; a script
    dropped by a reload has its running job cancelled."""
    d = sc.start([sc.script("py"), sc.script("slow", "block")])
    edit(sc.trees["hyp-1"] / "src" / "app.py")
    d.wait_event("job_started", lambda e: e["script"] == "slow")
    blocker = sc.root / "blocker"
    blocker.write_text("a file, so nothing can be created under it")
    good = sc.cfg.read_text()
    sc.cfg.write_text(good.replace('log_file = "daemon.log"', f'log_file = "{blocker}/x.log"'))
    d.signal(signal.SIGHUP)
    (bad,) = d.wait_event("config_invalid")
    assert any("log_file" in err for err in bad["errors"]), bad
    assert d.proc.poll() is None
    sc.config([sc.script("py")])  # drop "slow" while its job runs
    d.signal(signal.SIGHUP)
    d.wait_event("config_reloaded")
    (cancelled,) = d.wait_event("job_finished", lambda e: e["script"] == "slow")
    assert cancelled["result"] == "cancelled"
    doc = d.wait_status(lambda s: s["daemon"]["state"] == "idle", what="idle")
    assert all(set(h["scripts"]) == {"py"} for h in doc["hypotheses"].values())
    assert d.stop() == 0


# == 10. SIGTERM with running jobs ========================================================
def test_sigterm_cancels_jobs_and_exits_within_grace(sc: Scenario) -> None:
    grace = 1
    d = sc.start(
        [
            sc.script("stubborn", "stubborn", kill_grace_s=grace),
            sc.script("spawner", "spawn", kill_grace_s=grace),
        ],
        worktrees={"include": ["hyp-1"]},
        run_on_start=True,
    )
    started = d.wait_event("job_started", count=2)
    recs = [sc.record(e["job_id"]) for e in started]  # SIGTERM is ignored from here on
    pids = [r["pid"] for r in recs] + [p for r in recs for p in r.get("grandchildren", [])]
    assert len(pids) == 4
    t0 = time.monotonic()
    d.signal(signal.SIGTERM)
    code = d.wait_exit(timeout=30)
    elapsed = time.monotonic() - t0
    assert code == 0
    assert elapsed < grace + 5, f"took {elapsed:.1f}s to stop"
    doc = d.status()
    assert doc["daemon"]["state"] == "stopped"
    for name in ("stubborn", "spawner"):
        cell = doc["hypotheses"]["hyp-1"]["scripts"][name]
        assert cell["state"] == cell["last_result"] == "cancelled", cell
    results = {e["script"]: e["result"] for e in d.events("job_finished")}
    assert results == {"stubborn": "cancelled", "spawner": "cancelled"}
    assert d.events()[-1]["event"] == "daemon_stopped"
    assert sc.leftovers() == [], "a job's process outlived the daemon"


# == 11. refusing to start ================================================================
def test_second_daemon_on_the_same_state_dir_exits_2(sc: Scenario) -> None:
    sc.start([sc.script("py")])
    second = run_cli("run", "-c", os.fsdecode(sc.cfg), cwd=sc.cfg.parent)
    assert second.returncode == 2
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1, second.stderr
    assert os.fsdecode(sc.cfg.parent / "state") in lines[0]


def test_bad_config_exits_2_naming_file_and_key(sc: Scenario) -> None:
    sc.config([sc.script("py")], debounce_ms="fast")
    done = run_cli("run", "-c", os.fsdecode(sc.cfg), cwd=sc.cfg.parent)
    assert done.returncode == 2
    assert os.fsdecode(sc.cfg) in done.stderr and "debounce_ms" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


def test_impossible_state_dir_exits_2_naming_it(sc: Scenario) -> None:
    blocker = sc.root / "a-file"
    blocker.write_text("not a folder\n")
    state = blocker / "state"
    sc.config([sc.script("py")], state_dir=os.fsdecode(state))
    done = run_cli("run", "-c", os.fsdecode(sc.cfg), cwd=sc.cfg.parent)
    assert done.returncode == 2
    assert os.fsdecode(state) in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
