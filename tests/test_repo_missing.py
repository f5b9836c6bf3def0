"""Issue 11 item 14: moving or deleting the whole repository.

The daemon used to keep the old paths and log ``worktree_discovery_failed`` every 10 s
forever. Now the status file says ``repo_missing`` (``daemon.repo_state``), the log says
it once, nothing is recreated where the repository was, and when it comes back the
daemon says so once (``repo_restored``) and serves it again.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from harness import DaemonProcess, make_repo, write_config


def test_a_moved_repository_is_repo_missing_once_and_recovered_when_back(
    tmp_path: Path,
) -> None:
    _, trees = make_repo(tmp_path / "r", hypotheses=())
    repo = trees["repo"]
    config = write_config(
        tmp_path / "cfg" / "po.toml",
        repo,
        [{"name": "py", "command": ["true"], "watch": ["**/*.py"]}],
    )
    daemon = DaemonProcess(config)
    try:
        daemon.wait_ready()
        assert daemon.status()["daemon"]["repo_state"] == "ok"
        moved = tmp_path / "r" / "moved-away"
        os.rename(repo, moved)
        (missing,) = daemon.wait_event("repo_missing", timeout=30)
        assert missing["repo"] == os.fsdecode(repo)
        daemon.wait_status(lambda d: d["daemon"]["repo_state"] == "repo_missing")
        # A periodic rediscovery round (every 10 s) passes without a word or a folder.
        time.sleep(11)
        assert not repo.exists()
        assert len(daemon.events("repo_missing")) == 1
        os.rename(moved, repo)
        daemon.wait_event("repo_restored", timeout=30)
        daemon.wait_status(lambda d: d["daemon"]["repo_state"] == "ok")
        assert len(daemon.events("repo_missing")) == 1
        assert daemon.events("worktree_discovery_failed") == []
        # Served again: an edit runs the script.
        (repo / "src" / "app.py").write_text("VALUE = 2\n")
        daemon.wait_event("job_finished")
    finally:
        daemon.stop()
