"""Issue 11 item 7: feedback loops.

The daemon's own files (state dir, status file, log file) inside a worktree never count as
changes; a script whose runs are triggered only by what its own runs wrote is reported
(``feedback_loop_suspected`` with the paths) and paused until a change from outside.
"""

from __future__ import annotations

import time
from pathlib import Path

from harness import DaemonProcess, make_repo, wait_until, write_config


def _batches_after_start(daemon: DaemonProcess) -> list[dict]:
    return [e for e in daemon.events("batch_formed") if e.get("reason") != "start"]


def test_the_daemons_own_files_in_a_worktree_never_trigger_a_batch(tmp_path: Path) -> None:
    _, trees = make_repo(tmp_path / "r", hypotheses=())
    repo = trees["repo"]
    # Where ``init`` puts it: the config, and so state/ and daemon.log, inside the repo.
    config = write_config(
        repo / "po" / "po.toml",
        repo,
        [{"name": "all", "command": ["true"], "watch": ["**"]}],
        run_on_start=True,
        status_file="status-copy.json",  # a custom status file beside the config
    )
    daemon = DaemonProcess(config)
    try:
        daemon.wait_event("job_finished")
        (repo / "src" / "app.py").write_text("VALUE = 2\n")
        daemon.wait_event("job_finished", count=2)
        # The status and log writes of those runs have happened; give a loop the time of
        # a few batches to show itself (debounce is 50 ms).
        time.sleep(1.5)
        batches = _batches_after_start(daemon)
        paths = [p for b in batches for ps in b["hypotheses"].values() for p in ps]
        assert paths == ["src/app.py"], paths
    finally:
        daemon.stop()


def test_a_script_retriggered_only_by_its_own_writes_is_paused_until_an_outside_change(
    tmp_path: Path,
) -> None:
    _, trees = make_repo(tmp_path / "r", hypotheses=("hyp-1",))
    script = {
        "name": "report",
        # Writes its report during its run (not in its very last moment: feedback.py).
        "command": ["sh", "-c", "date +%s%N > out/report.txt; sleep 0.3"],
        "watch": ["src/*.py", "out/*.txt"],
    }
    (trees["hyp-1"] / "out").mkdir()
    config = write_config(tmp_path / "cfg" / "po.toml", trees["repo"], [script])
    daemon = DaemonProcess(config)
    try:
        daemon.wait_ready()
        (trees["hyp-1"] / "src" / "app.py").write_text("VALUE = 2\n")
        suspected = daemon.wait_event("feedback_loop_suspected")[0]
        assert suspected["hypothesis"] == "hyp-1" and suspected["script"] == "report"
        assert suspected["paths"] == ["out/report.txt"]
        time.sleep(1.0)  # paused: its own writes start nothing more
        runs = len(daemon.events("job_started"))
        assert runs <= 5  # the first run and a few of its echoes, not hundreds
        time.sleep(1.0)
        assert len(daemon.events("job_started")) == runs
        # A change from outside runs it again (and its echo pauses it again at once).
        (trees["hyp-1"] / "src" / "app.py").write_text("VALUE = 3\n")
        daemon.wait_event("job_started", count=runs + 1)
        daemon.wait_event("feedback_loop_suspected", count=2)
        wait_until(lambda: daemon.cell("hyp-1", "report")["state"] == "pass", what="pass")
        assert len(daemon.events("job_started")) <= runs + 2
    finally:
        daemon.stop()
