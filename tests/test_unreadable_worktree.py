"""Issue 11 ("Also"): a worktree made unreadable for a moment is not a removed one.

``chmod 000`` on a worktree makes ``git worktree list`` call it prunable (git cannot see
its ``.git``), so a rediscovery in that moment dropped the hypothesis: its watch went,
and an edit made right after the mode came back was lost until the next periodic round.
Now a served worktree that only a permission hides is kept; one whose folder is really
gone still goes at once.

Root reads through any mode, so as root the daemon runs without CAP_DAC_OVERRIDE and
CAP_DAC_READ_SEARCH (``setpriv``): it then meets the modes as any other user would.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import DaemonProcess, git, make_repo, write_config
from reliability_helpers import touch_edit, without_read_override

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs setpriv")


def _serve(repo: Path, tmp_path: Path) -> DaemonProcess:
    """A daemon over ``repo`` that meets file modes as a plain user does."""
    config = write_config(
        tmp_path / "cfg" / "po.toml",
        repo,
        [{"name": "py", "command": ["true"], "watch": ["**/*.py"]}],
    )
    return DaemonProcess(config, prefix=without_read_override())


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[DaemonProcess, dict[str, Path]]]:
    _, trees = make_repo(tmp_path / "r", hypotheses=("hyp-1",))
    daemon = _serve(trees["repo"], tmp_path)
    try:
        daemon.wait_ready()
        yield daemon, trees
    finally:
        for tree in trees.values():
            if tree.exists():
                os.chmod(tree, 0o755)
        daemon.stop()


def _edit_runs(daemon: DaemonProcess, tree: Path, hyp: str) -> None:
    touch_edit(tree / "src" / "app.py")
    daemon.wait_event(
        "job_finished", lambda e: e["hypothesis"] == hyp and e["script"] == "py", timeout=30
    )


def test_a_worktree_unreadable_for_a_second_is_not_removed(
    served: tuple[DaemonProcess, dict[str, Path]],
) -> None:
    """The issue's case as a user meets it: the mode change itself makes the daemon list
    the worktrees (the watcher sees the root's attributes change) while it is hidden."""
    daemon, trees = served
    hidden = trees["hyp-1"]
    os.chmod(hidden, 0)
    time.sleep(1.0)  # the scenario: unreadable for a second (not a wait for an event)
    os.chmod(hidden, 0o755)
    _edit_runs(daemon, hidden, "hyp-1")
    assert daemon.events("worktree_removed") == []


def test_an_edit_right_after_a_worktree_was_unreadable_is_run(
    served: tuple[DaemonProcess, dict[str, Path]], tmp_path: Path
) -> None:
    """While hidden, a re-arm (here: a worktree added) cannot watch it; it is watched
    again once readable, and is not dropped from the hypotheses meanwhile."""
    daemon, trees = served
    hidden = trees["hyp-1"]
    os.chmod(hidden, 0)
    # Adding a worktree makes the daemon list them all while hyp-1 is unreadable; its
    # worktree_added is the proof that this discovery round is over.
    git(trees["repo"], "worktree", "add", "-q", "-b", "hyp-2", os.fsdecode(tmp_path / "r/hyp-2"))
    daemon.wait_event("worktree_added", lambda e: e["hypothesis"] == "hyp-2", timeout=30)
    assert daemon.events("worktree_removed") == []
    assert "hyp-1" in daemon.status()["hypotheses"]
    (unreadable,) = daemon.wait_event("worktree_unreadable")
    assert unreadable["path"] == os.fsdecode(hidden)
    os.chmod(hidden, 0o755)
    _edit_runs(daemon, hidden, "hyp-1")


def test_a_worktree_behind_an_unreadable_parent_is_kept(tmp_path: Path) -> None:
    _, trees = make_repo(tmp_path / "r", hypotheses=())
    parent = tmp_path / "r" / "nest"
    parent.mkdir()
    nested = parent / "hyp-1"
    git(trees["repo"], "worktree", "add", "-q", "-b", "hyp-1", os.fsdecode(nested))
    daemon = _serve(trees["repo"], tmp_path)
    try:
        daemon.wait_ready()
        os.chmod(parent, 0)
        git(trees["repo"], "worktree", "add", "-q", "-b", "hyp-2", os.fsdecode(tmp_path / "r/h2"))
        daemon.wait_event("worktree_added", lambda e: e["hypothesis"] == "h2", timeout=30)
        assert daemon.events("worktree_removed") == []
        os.chmod(parent, 0o755)
        _edit_runs(daemon, nested, "hyp-1")
    finally:
        os.chmod(parent, 0o755)
        daemon.stop()


def test_a_worktree_really_removed_still_goes_at_once(
    served: tuple[DaemonProcess, dict[str, Path]],
) -> None:
    """The permission rule keeps only the hidden: a deleted folder is a removal."""
    daemon, trees = served
    shutil.rmtree(trees["hyp-1"])
    (removed,) = daemon.wait_event("worktree_removed", timeout=30)
    assert removed["hypothesis"] == "hyp-1"
    daemon.wait_status(lambda d: "hyp-1" not in d["hypotheses"])
