"""Attacks on issue 15 (side by side, hooks, wait) with the real daemon and CLI."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest

from harness import wait_until, write_config
from parallel_orchestrator.commands import waiter
from test_sidebyside_e2e import Side, finished, side  # noqa: F401  (fixture)

pytestmark = pytest.mark.timeout(180)

# The job swaps its PO_TMPDIR for a symlink to a folder outside (and a read-only tree).
SWAP = r"""
import os, shutil, sys
tmp = os.environ["PO_TMPDIR"]
outside = sys.argv[1]
shutil.rmtree(tmp)
os.symlink(outside, tmp)
"""


def test_a_temp_dir_swapped_for_a_symlink_is_removed_without_following_it(
    side: Side,  # noqa: F811
) -> None:
    outside = side.root / "outside"
    (outside / "deep").mkdir(parents=True)
    (outside / "deep" / "canary").write_text("keep me")
    tool = side.root / "swap.py"
    tool.write_text(SWAP)
    script = {
        "name": "swap",
        "command": [sys.executable, os.fsdecode(tool), os.fsdecode(outside)],
        "timeout_s": 60,
        "kill_grace_s": 1,
        "env": side.env,
    }
    d = side.start([script], run_on_start=True)
    for hyp in side.trees:
        finished(d, hyp, "swap")
    assert (outside / "deep" / "canary").read_text() == "keep me"
    # the link itself went with the job: nothing left, nothing failed
    assert not d.events("tmpdir_cleanup_failed")
    root = Path((d.status_path.parent / "tmproot").read_text().strip())
    assert list(root.iterdir()) == []  # the links went with their jobs
    d.stop()
    assert (outside / "deep" / "canary").read_text() == "keep me"


def test_wait_cut_short_by_a_daemon_stop_exits_3_not_fail(side: Side) -> None:  # noqa: F811
    """The daemon stops while the job ``wait`` waits for runs: it is cancelled. That is
    no verdict on the edit (exit 1 would tell an agent its edit broke something)."""
    d = side.start([side.check()])
    (side.trees["hyp-1"] / "src" / "app.py").write_text("GOOD SLOW\n")
    wait = subprocess.Popen(
        [sys.executable, "-m", "parallel_orchestrator", "wait", "-c", os.fsdecode(side.cfg)],
        cwd=side.root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: (side.out / "slow").exists(), 30, what="the slow job to start")
        d.stop()
        out, err = wait.communicate(timeout=30)
    finally:
        if wait.poll() is None:
            wait.kill()
            wait.wait()
    assert wait.returncode == 3, out + err
    assert "no daemon is running" in err


def test_wait_sees_the_stop_even_between_its_liveness_checks(
    side: Side,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same, when the status file showing the job cancelled is read before the next
    liveness check (every 0.1 s; here made rare so the order is certain)."""
    monkeypatch.setattr(waiter, "ALIVE_CHECK_S", 600.0)
    d = side.start([side.check()])
    (side.trees["hyp-1"] / "src" / "app.py").write_text("GOOD SLOW\n")
    outcome: list[BaseException | waiter.WaitResult] = []

    def run() -> None:
        try:
            outcome.append(waiter.wait_for_verdict(d.status_path, timeout_s=60))
        except BaseException as exc:  # handed to the test
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    wait_until(lambda: (side.out / "slow").exists(), 30, what="the slow job to start")
    wait_until(lambda: d.cell("hyp-1", "check")["state"] == "running", 30, what="running")
    d.stop()
    thread.join(60)
    assert len(outcome) == 1 and isinstance(outcome[0], waiter.NoDaemon), outcome


def test_a_wait_folder_that_is_a_symlink_is_refused(side: Side) -> None:  # noqa: F811
    """wait/ swapped for a link elsewhere: the daemon would watch that folder and delete
    the ``*.wait`` files in it. Refused at start like the state dir's other folders."""
    write_config(side.cfg, side.repo, [side.check()])
    elsewhere = side.root / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "theirs.wait").write_text("not the daemon's")
    state = side.cfg.parent / "state"
    state.mkdir(mode=0o700)
    (state / "wait").symlink_to(elsewhere)
    cmd = [sys.executable, "-m", "parallel_orchestrator", "run", "-c", os.fsdecode(side.cfg)]
    try:
        res = subprocess.run(cmd, cwd=side.root, capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("the daemon ran with wait/ a symlink")
    assert res.returncode != 0 and "wait/" in res.stderr, res.stderr
    assert (elsewhere / "theirs.wait").read_text() == "not the daemon's"


def test_exclusive_jobs_restarted_by_edits_never_overlap(side: Side) -> None:  # noqa: F811
    """on_busy = restart cancels a running exclusive job: its successor (or another
    hypothesis's job) must not start before the cancelled one has ended."""
    d = side.start(
        [side.probe("db", "sleep", "0.6", exclusive=True, watch=["src/*.py"])],
        on_busy="restart",
        debounce_ms=20,
    )
    hyps = ["hyp-1", "hyp-2"]
    for i in range(6):
        for hyp in hyps:
            (side.trees[hyp] / "src" / "app.py").write_text(f"GOOD {i}\n")
        time.sleep(0.25)  # edits while the previous ones run: restarts
    started = len(d.events("job_started"))
    ended = {
        e["job_id"]: datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")).timestamp()
        for e in d.wait_event("job_finished", count=started)
    }
    # a cancelled job never wrote its end: it ended at the latest when the daemon said so
    spans = sorted((r["start"], r.get("end") or ended[r["job"]]) for r in side.records())
    results = [e["result"] for e in d.events("job_finished")]
    assert "cancelled" in results and len(spans) >= 2, results  # restarts did happen
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans)), spans
