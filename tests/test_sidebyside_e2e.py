"""End-to-end, real daemon: hypotheses side by side without collisions (PO_TMPDIR,
PO_PORT_BASE, exclusive scripts), hooks on result changes, and ``wait``.

Jobs run ``tools/probe.py``, which records what it saw into ``out/<job_id>.json``; the
``out`` and ``hooks`` folders are outside every worktree, so records are never edits.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import stat
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import DaemonProcess, make_repo, processes_with_env, run_cli, wait_until, write_config
from parallel_orchestrator.commands.waiter import wait_for_verdict

pytestmark = pytest.mark.timeout(180)

PROBE = r"""
import json, os, stat, sys, time
from pathlib import Path

mode = sys.argv[1]
out = Path(os.environ["PO_TEST_OUT"])
job = os.environ["PO_JOB_ID"]
tmp = os.environ.get("PO_TMPDIR")
doc = {"hypothesis": os.environ["PO_HYPOTHESIS"], "job": job, "arg": mode, "tmpdir": tmp,
       "TMPDIR": os.environ.get("TMPDIR"), "port_base": os.environ.get("PO_PORT_BASE"),
       "start": time.time()}
if tmp:
    st = os.stat(tmp)
    doc["mode"] = stat.S_IMODE(st.st_mode)
    doc["entries"] = os.listdir(tmp)
    (Path(tmp) / "scratch").mkdir()
    (Path(tmp) / "scratch" / "data").write_text("x")


def save():
    (out / f".{job}").write_text(json.dumps(doc))
    os.replace(out / f".{job}", out / f"{job}.json")


if mode == "sleep":
    save()
    time.sleep(float(sys.argv[2]))
doc["end"] = time.time()
save()
if mode == "hang":
    time.sleep(300)
"""

HOOK = r"""
import json, os, sys
data = json.loads(sys.stdin.read())
folder = sys.argv[1]
path = os.path.join(folder, f"{os.getpid()}-{os.urandom(4).hex()}.json")
with open(path + ".tmp", "w") as f:
    json.dump(data, f)
os.replace(path + ".tmp", path)
"""

# exit 0 when src/app.py says GOOD; when it says SLOW, tells so (out/slow) and sleeps first
CHECK = (
    "import os, sys, time; t = open('src/app.py').read()\n"
    "if 'SLOW' in t:\n"
    "    open(os.path.join(os.environ['PO_TEST_OUT'], 'slow'), 'w').close(); time.sleep(30)\n"
    "sys.exit(0 if 'GOOD' in t else 1)"
)


class Side:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.repo, self.trees = make_repo(root, files={"src/app.py": "GOOD\n"})
        self.out = root / "out"
        self.out.mkdir()
        self.hooks = root / "hooks"
        self.hooks.mkdir()
        self.tool = root / "probe.py"
        self.tool.write_text(PROBE)
        self.hook = root / "hook.py"
        self.hook.write_text(HOOK)
        self.cfg = root / "cfg" / "config.toml"
        self.tag = uuid.uuid4().hex
        self.daemons: list[DaemonProcess] = []

    @property
    def env(self) -> dict[str, str]:
        return {"PO_TEST_TAG": self.tag, "PO_TEST_OUT": os.fsdecode(self.out)}

    def probe(self, name: str, *args: str, **extra: Any) -> dict[str, Any]:
        return {
            "name": name,
            "command": [sys.executable, os.fsdecode(self.tool), *args],
            "timeout_s": 60,
            "kill_grace_s": 1,
            "env": self.env,
            **extra,
        }

    def check(self, **extra: Any) -> dict[str, Any]:
        return {
            "name": "check",
            "command": [sys.executable, "-c", CHECK],
            "timeout_s": 60,
            "kill_grace_s": 1,
            "env": self.env,
            **extra,
        }

    def start(
        self, scripts: list[dict[str, Any]], notify: dict[str, Any] | None = None, **daemon: Any
    ) -> DaemonProcess:
        daemon.setdefault("max_concurrency", 8)
        write_config(self.cfg, self.repo, scripts, **daemon)
        if notify is not None:
            import tomli_w

            doc = {"notify": notify}
            with open(self.cfg, "a") as f:
                f.write("\n" + tomli_w.dumps(doc))
        d = DaemonProcess(self.cfg)
        self.daemons.append(d)
        d.wait_ready()
        return d

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(p.read_text()) for p in sorted(self.out.glob("*.json"))]

    def hook_calls(self) -> list[dict[str, Any]]:
        return [json.loads(p.read_text()) for p in self.hooks.glob("*.json")]


@pytest.fixture
def side(tmp_path: Path) -> Iterator[Side]:
    s = Side(tmp_path)
    yield s
    for d in s.daemons:
        if d.proc.poll() is None:
            d.stop()
    marker = f"PO_TEST_TAG={s.tag}"
    leaked: list[int] = []
    try:
        wait_until(lambda: not processes_with_env(marker), 10, what="jobs to be gone")
    except AssertionError:
        leaked = processes_with_env(marker)
        for pid in leaked:
            os.kill(pid, signal.SIGKILL)
    assert not leaked, f"processes outlived the daemon: {leaked}"


def finished(d: DaemonProcess, hyp: str, script: str, count: int = 1) -> list[dict[str, Any]]:
    return d.wait_event(
        "job_finished", lambda e: e["hypothesis"] == hyp and e["script"] == script, count=count
    )


# -- PO_TMPDIR and PO_PORT_BASE -------------------------------------------------------


def test_each_job_gets_a_private_temp_dir_and_each_hypothesis_its_ports(side: Side) -> None:
    d = side.start(
        [side.probe("probe", "quick"), side.probe("hang", "hang", timeout_s=1)],
        run_on_start=True,
        port_range=[30000, 31000],
    )
    hyps = sorted(side.trees)  # repo, hyp-1, hyp-2
    for hyp in hyps:
        finished(d, hyp, "probe")
        finished(d, hyp, "hang")
    first = {r["job"]: r for r in side.records()}
    assert len(first) == 2 * len(hyps)
    tmpdirs = [r["tmpdir"] for r in first.values()]
    assert len(set(tmpdirs)) == len(tmpdirs)  # one of its own per job
    for r in first.values():
        assert r["TMPDIR"] == r["tmpdir"] and r["mode"] == 0o700 and r["entries"] == []
        assert not os.path.exists(r["tmpdir"])  # removed after the job, timeout included
    bases = {}
    for r in first.values():
        bases.setdefault(r["hypothesis"], set()).add(int(r["port_base"]))
    assert all(len(b) == 1 for b in bases.values())  # the same for all its jobs
    starts = sorted(b.pop() for b in bases.values())
    assert len(starts) == len(hyps)  # disjoint
    assert all(s >= 30000 and s + 100 <= 31000 and s % 100 == 0 for s in starts)
    # A later job of a hypothesis: the same ports, a fresh temp dir.
    (side.trees["hyp-1"] / "src" / "app.py").write_text("GOOD again\n")
    finished(d, "hyp-1", "probe", count=2)
    (again,) = [
        r
        for r in side.records()
        if r["job"] not in first and r["hypothesis"] == "hyp-1" and r["arg"] == "quick"
    ]
    hyp1 = {int(r["port_base"]) for r in first.values() if r["hypothesis"] == "hyp-1"}
    assert {int(again["port_base"])} == hyp1
    assert again["tmpdir"] not in tmpdirs
    root = Path(again["tmpdir"]).parent
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    d.stop()
    assert not root.exists()  # the daemon's temp root goes with it


def test_a_cancelled_jobs_temp_dir_is_removed(side: Side) -> None:
    d = side.start([side.probe("slow", "sleep", "30", watch=["src/*.py"])])
    (side.trees["hyp-1"] / "src" / "app.py").write_text("one\n")
    wait_until(lambda: side.records(), 30, what="the slow job to record")
    (side.trees["hyp-1"] / "src" / "app.py").write_text("two\n")  # restart: cancel it
    cancelled = d.wait_event("job_finished", lambda e: e["result"] == "cancelled")[0]
    (record,) = [r for r in side.records() if r["job"] == cancelled["job_id"]]
    assert not os.path.exists(record["tmpdir"])


# -- exclusive ------------------------------------------------------------------------


def test_exclusive_jobs_never_overlap_across_hypotheses(side: Side) -> None:
    d = side.start(
        [
            side.probe("db", "sleep", "0.4", exclusive=True),
            side.probe("unit", "sleep", "0.4"),
        ],
        run_on_start=True,
    )
    hyps = sorted(side.trees)
    for hyp in hyps:
        finished(d, hyp, "db")
        finished(d, hyp, "unit")
    by_script: dict[str, list[tuple[float, float]]] = {"db": [], "unit": []}
    for e in d.events("job_started"):
        rec = next(r for r in side.records() if r["job"] == e["job_id"])
        by_script[e["script"]].append((rec["start"], rec["end"]))
    db = sorted(by_script["db"])
    assert len(db) == len(hyps)
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(db)), db
    unit = sorted(by_script["unit"])  # the control: the same jobs, not exclusive, overlap
    assert any(a[1] > b[0] for a, b in itertools.pairwise(unit)), unit


# -- hooks ----------------------------------------------------------------------------


def test_hook_fires_on_result_changes_only(side: Side) -> None:
    app = side.trees["hyp-1"] / "src" / "app.py"
    d = side.start(
        [side.check()],
        notify={"command": [sys.executable, os.fsdecode(side.hook), os.fsdecode(side.hooks)]},
    )
    n = 0

    def save(text: str, result: str) -> dict[str, Any]:
        nonlocal n
        app.write_text(text)
        n += 1
        return d.wait_event(
            "job_finished",
            lambda e: e["hypothesis"] == "hyp-1" and e["result"] != "cancelled",
            count=n,
        )[-1]

    save("GOOD 1\n", "pass")  # first result: nothing to compare with
    broke = save("BAD 1\n", "fail")  # pass -> fail
    save("BAD 2\n", "fail")  # fail -> fail: no news
    app.write_text("GOOD SLOW\n")  # starts, then is cancelled by the next save
    wait_until((side.out / "slow").exists, 30, what="the slow job to read its input")
    save("BAD 3\n", "fail")  # cancelled (no news), then fail -> fail (no news)
    assert d.events("job_finished")[-2]["result"] == "cancelled", [
        (e["job_id"], e["result"]) for e in d.events("job_finished")
    ]
    fixed = save("GOOD 2\n", "pass")  # fail -> pass; previous is not the cancelled one
    save("GOOD 3\n", "pass")  # pass -> pass: no news
    sentinel = save("BAD 4\n", "fail")  # pass -> fail, the last one
    wait_until(
        lambda: any(c["job_id"] == sentinel["job_id"] for c in side.hook_calls()),
        30,
        what="the last hook call",
    )
    calls = sorted(side.hook_calls(), key=lambda c: int(c["job_id"].rsplit("j", 1)[1]))
    assert calls == [
        {
            "hypothesis": "hyp-1",
            "script": "check",
            "previous": prev,
            "result": res,
            "job_id": job["job_id"],
            "tests": None,
        }
        for job, prev, res in [
            (broke, "pass", "fail"),
            (fixed, "fail", "pass"),
            (sentinel, "pass", "fail"),
        ]
    ]
    assert not d.events("notify_failed")


def test_a_failing_hook_is_logged(side: Side) -> None:
    d = side.start([side.check()], notify={"command": [sys.executable, "-c", "exit(5)"]})
    app = side.trees["hyp-1"] / "src" / "app.py"
    app.write_text("GOOD\n")
    finished(d, "hyp-1", "check")
    app.write_text("BAD\n")
    job = finished(d, "hyp-1", "check", count=2)[-1]
    (failed,) = d.wait_event("notify_failed")
    assert failed["job_id"] == job["job_id"] and failed["exit_code"] == 5


# -- wait -----------------------------------------------------------------------------


def test_wait_without_a_daemon_exits_3(side: Side) -> None:
    write_config(side.cfg, side.repo, [side.check()])
    res = run_cli("wait", "-c", os.fsdecode(side.cfg), cwd=side.root)
    assert res.returncode == 3, res.stderr
    assert "no daemon is running" in res.stderr
    d = side.start([side.check()])
    d.stop()  # the status file stays, its daemon is gone
    res = run_cli("wait", "-c", os.fsdecode(side.cfg), cwd=side.root)
    assert res.returncode == 3, res.stderr


def test_wait_times_out_with_124_and_names_unknown_cells(side: Side) -> None:
    d = side.start([side.check()])
    cfg = os.fsdecode(side.cfg)
    (side.trees["hyp-1"] / "src" / "app.py").write_text("GOOD SLOW\n")
    res = run_cli("wait", "-c", cfg, "--hypothesis", "hyp-1", "--timeout", "1", cwd=side.root)
    assert res.returncode == 124, res.stdout + res.stderr
    assert d.cell("hyp-1", "check")["state"] == "running"
    res = run_cli("wait", "-c", cfg, "--hypothesis", "nope", "--script", "zap", cwd=side.root)
    assert (
        res.returncode == 2 and "--hypothesis nope" in res.stderr and "--script zap" in res.stderr
    )
    assert list((side.root / "cfg" / "state" / "wait").iterdir()) == []


def test_wait_returns_the_verdict_of_the_save_just_made(side: Side) -> None:
    """Save, then wait at once, alternating a breaking and a repairing save: a stale
    verdict (the previous save's) would show as the wrong exit code."""
    grep = {"name": "check", "command": ["grep", "-q", "GOOD", "src/app.py"], "env": side.env}
    d = side.start([grep], debounce_ms=5, max_batch_wait_ms=200)
    app = side.trees["hyp-1"] / "src" / "app.py"
    cfg = os.fsdecode(side.cfg)
    status = side.root / "cfg" / "state" / "status.json"
    for i, (text, code) in enumerate([("BAD\n", 1), ("GOOD\n", 0)] * 2):
        app.write_text(f"{text}{i}\n")
        res = run_cli("wait", "-c", cfg, "--hypothesis", "hyp-1", "--json", cwd=side.root)
        assert res.returncode == code, res.stdout + res.stderr
        doc = json.loads(res.stdout)
        assert [c["state"] for c in doc["cells"]] == ["pass" if code == 0 else "fail"]
    budget = float(os.environ.get("PO_WAIT_RACE_S", "40"))
    deadline = time.monotonic() + budget
    iterations = 0
    stale: list[tuple[int, dict[str, Any]]] = []
    while time.monotonic() < deadline:
        good = iterations % 2 == 1
        app.write_text(("GOOD" if good else "BAD") + f" {iterations}\n")
        result = wait_for_verdict(status, ["hyp-1"], ["check"], timeout_s=60)
        if result.verdict != ("pass" if good else "fail"):
            stale.append((iterations, result.to_dict()))
        iterations += 1
    assert not stale, f"{len(stale)} stale verdicts in {iterations} rounds; first: {stale[0]}"
    assert iterations >= 100, f"only {iterations} rounds in {budget:g} s"
    print(f"{iterations} save-then-wait rounds in {budget:g} s, none stale")
    batches = d.events("batch_formed")
    assert not any(".wait" in p for b in batches for ps in b["hypotheses"].values() for p in ps)
    assert list((side.root / "cfg" / "state" / "wait").iterdir()) == []
    assert stat.S_IMODE((side.root / "cfg" / "state" / "wait").stat().st_mode) == 0o700
