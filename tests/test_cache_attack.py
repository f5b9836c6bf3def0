"""Result reuse under attack: inputs that differ in ways a key could miss, observed on the
real daemon over real worktrees. A wrong hit (a verdict reused for other inputs) is the
worst defect a cache can have; each test here once found or could find one.
"""

from __future__ import annotations

import os
import signal
import time
import tomllib
from pathlib import Path

import pytest
import tomli_w

from harness import DaemonProcess, make_repo, wait_until, write_config

pytestmark = pytest.mark.timeout(180)


def test_the_executable_bit_of_a_watched_file_is_an_input(tmp_path: Path) -> None:
    """``./check.sh`` fails with "permission denied" where it is not executable: two
    worktrees that differ only in that bit must not share a verdict (git, too, records
    the bit as part of a file)."""
    runs = tmp_path / "runs.txt"
    repo, trees = make_repo(tmp_path / "r", ("hyp-1",), {"check.sh": "#!/bin/sh\necho ok\n"})
    os.chmod(trees["repo"] / "check.sh", 0o755)
    os.chmod(trees["hyp-1"] / "check.sh", 0o644)
    body = f'echo "$PO_HYPOTHESIS" >> {runs}; exec ./check.sh'
    script = {
        "name": "tests",
        "command": ["sh", "-c", body],
        "watch": ["**/*.sh"],
        "timeout_s": 30,
        "cache": True,
    }
    cfg = write_config(tmp_path / "cfg" / "po.toml", repo, [script], run_on_start=True)
    d = DaemonProcess(cfg)
    try:
        done = {e["hypothesis"]: e for e in d.wait_event("job_finished", count=2, timeout=60)}
        assert done["repo"]["result"] == "pass" and done["hyp-1"]["result"] == "fail"
        assert not done["repo"]["cached"] and not done["hyp-1"]["cached"]
        assert sorted(runs.read_text().split()) == ["hyp-1", "repo"]
    finally:
        assert d.stop() == 0


def test_content_changed_and_changed_back_during_a_run_is_not_stored(tmp_path: Path) -> None:
    """A->B->A while the job runs: the job may have read B, so its verdict is not the one
    of A (the key computed after the job is A's again, which alone proves nothing)."""
    seen = tmp_path / "seen.txt"
    gate = tmp_path / "gate"
    repo, _ = make_repo(tmp_path / "r", ())
    app = repo / "src" / "app.py"
    # The job reads app.py once the test opens the gate, then reports what it read.
    body = (
        f"while [ ! -e {gate} ]; do sleep 0.05; done; "
        f'v=$(cat src/app.py); echo "$PO_JOB_ID $v" >> {seen}; echo "read: $v"; sleep 1; '
        f'case "$v" in *1*) exit 0;; *) exit 1;; esac'
    )
    script = {
        "name": "tests",
        "command": ["sh", "-c", body],
        "watch": ["**/*.py"],
        "timeout_s": 60,
        "cache": True,
    }
    cfg = write_config(
        tmp_path / "cfg" / "po.toml", repo, [script], run_on_start=True, on_busy="queue"
    )
    d = DaemonProcess(cfg)
    try:
        d.wait_event("job_started", count=1, timeout=60)
        app.write_text("VALUE = 2\n")  # B while the job runs
        gate.touch()
        wait_until(lambda: seen.exists() and "VALUE = 2" in seen.read_text(), timeout=30)
        app.write_text("VALUE = 1\n")  # back to A
        first = d.wait_event("job_finished", count=1, timeout=60)[0]
        assert first["result"] == "fail"  # it read B
        # The queued rerun for A must not reuse B's verdict.
        second = d.wait_event("job_finished", count=2, timeout=60)[1]
        assert second["cached"] is False, second
        assert second["result"] == "pass"
    finally:
        assert d.stop() == 0


def test_sigterm_while_a_huge_watched_file_is_hashed_exits_in_bound(tmp_path: Path) -> None:
    """The key of a worktree holding a 30 GiB (sparse) watched file takes long to hash:
    off the loop, and SIGTERM must not wait for it (the hashing thread is joined at
    interpreter exit), within kill_grace_s + 2 s (plus a margin for a loaded machine)."""
    repo, _ = make_repo(tmp_path / "r", ())
    with open(repo / "big.py", "wb") as f:
        f.truncate(30 << 30)
    script = {
        "name": "tests",
        "command": ["true"],
        "watch": ["**/*.py"],
        "timeout_s": 30,
        "kill_grace_s": 1,
        "cache": True,
    }
    cfg = write_config(tmp_path / "cfg" / "po.toml", repo, [script], run_on_start=True)
    d = DaemonProcess(cfg)
    d.wait_ready()
    d.wait_event("batch_formed", count=1, timeout=60)
    assert not d.events("job_finished")  # still hashing
    sent = time.monotonic()
    d.signal(signal.SIGTERM)
    try:
        assert d.wait_exit(timeout=20) == 0
    finally:
        d.stop()
    assert time.monotonic() - sent < 1 + 2 + 3


def test_a_change_during_a_run_that_spans_a_reload_of_the_ignore_rules_is_not_stored(
    tmp_path: Path,
) -> None:
    """New ignore rules rebuild the digest indexes; a job keyed by the old index must not
    be judged by the new one's change marks (its first ones are not the old key's)."""
    seen = tmp_path / "seen.txt"
    gate = tmp_path / "gate"
    repo, _ = make_repo(tmp_path / "r", ())
    app = repo / "src" / "app.py"
    body = (
        f"while [ ! -e {gate} ]; do sleep 0.05; done; "
        f'v=$(cat src/app.py); echo "$PO_JOB_ID $v" >> {seen}; sleep 1; '
        f'case "$v" in *1*) exit 0;; *) exit 1;; esac'
    )
    script = {
        "name": "tests",
        "command": ["sh", "-c", body],
        "watch": ["**/*.py"],
        "timeout_s": 60,
        "cache": True,
    }
    cfg = write_config(
        tmp_path / "cfg" / "po.toml", repo, [script], run_on_start=True, on_busy="queue"
    )
    d = DaemonProcess(cfg)
    try:
        d.wait_event("job_started", count=1, timeout=60)
        doc = tomllib.loads(cfg.read_text())
        doc["worktrees"]["ignore"] = ["vendor"]
        cfg.write_text(tomli_w.dumps(doc))
        d.wait_event("config_reloaded", count=1, timeout=30)
        app.write_text("VALUE = 2\n")  # B, after the reload, while the job runs
        gate.touch()
        first = d.wait_event("job_finished", count=1, timeout=60)[0]
        assert first["result"] == "fail"  # it read B
        second = d.wait_event("job_finished", count=2, timeout=60)[1]
        assert second["result"] == "fail" and second["cached"] is False  # B runs
        app.write_text("VALUE = 1\n")  # back to A: never ran, B's verdict must not be A's
        third = d.wait_event("job_finished", count=3, timeout=60)[2]
        assert (third["result"], third["cached"]) == ("pass", False), third
    finally:
        assert d.stop() == 0
