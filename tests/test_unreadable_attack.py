"""An adversarial pass over "a worktree made unreadable for a moment is not removed".

Each test is a way the first fix still lost a worktree or its edits: a reload while it
is hidden, a mode flipped back while git was looking, a checkout right after it was
hidden (its ``index.lock`` unknown), a hidden worktree then deleted. The daemon runs
without CAP_DAC_OVERRIDE (``without_read_override``), so modes hide things from it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import DaemonProcess, git, make_repo, write_config
from reliability_helpers import observe, touch_edit, without_read_override

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs setpriv")

SCRIPTS = [{"name": "py", "command": ["true"], "watch": ["**/*.py"]}]


@pytest.fixture
def trees(tmp_path: Path) -> Iterator[dict[str, Path]]:
    _, found = make_repo(tmp_path / "r", hypotheses=("hyp-1",))
    try:
        yield found
    finally:
        for tree in (*found.values(), tmp_path / "r" / "hyp-2"):
            if tree.exists():
                os.chmod(tree, 0o755)


def _start(tmp_path: Path, trees: dict[str, Path], env: dict[str, str] | None = None):
    config = write_config(tmp_path / "cfg" / "po.toml", trees["repo"], SCRIPTS)
    daemon = DaemonProcess(config, env=env, prefix=without_read_override())
    daemon.wait_ready()
    return daemon


def _hide_and_rediscover(daemon: DaemonProcess, trees: dict[str, Path], tmp_path: Path) -> None:
    """hyp-1 made unreadable, then a worktree added: the daemon lists them all (and
    re-arms its watcher) while hyp-1 is hidden; ``worktree_added`` ends that round."""
    os.chmod(trees["hyp-1"], 0)
    git(trees["repo"], "worktree", "add", "-q", "-b", "hyp-2", os.fsdecode(tmp_path / "r/hyp-2"))
    daemon.wait_event("worktree_added", lambda e: e["hypothesis"] == "hyp-2", timeout=30)


def _edit_runs(daemon: DaemonProcess, tree: Path) -> None:
    touch_edit(tree / "src" / "app.py")
    daemon.wait_event("job_finished", lambda e: e["hypothesis"] == tree.name, timeout=30)


def test_a_reload_while_a_worktree_is_unreadable_keeps_it(
    trees: dict[str, Path], tmp_path: Path
) -> None:
    """SIGHUP lists the worktrees too: it dropped the hidden one (and the edit made right
    after its mode came back was lost until the next periodic round)."""
    daemon = _start(tmp_path, trees)
    try:
        os.chmod(trees["hyp-1"], 0)
        daemon.signal(signal.SIGHUP)
        daemon.wait_event("config_reloaded", timeout=30)
        assert daemon.events("worktree_removed") == []
        os.chmod(trees["hyp-1"], 0o755)
        _edit_runs(daemon, trees["hyp-1"])
    finally:
        daemon.stop()


def test_a_worktree_readable_again_while_git_looked_is_kept(
    trees: dict[str, Path], tmp_path: Path
) -> None:
    """Mode flapping (000, 755, ...) meets the discovery between git's look and ours:
    git saw it hidden (prunable), we see it plainly there. It was dropped as removed.
    Made deterministic with a ``git`` that gives the mode back once it has answered."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    flip = tmp_path / "flip"
    real_git = shutil.which("git")
    assert real_git is not None
    wrapper = bindir / "git"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'"{real_git}" "$@"; rc=$?\n'
        'case "$*" in *"worktree list"*)\n'
        f'  if [ -f "{flip}" ]; then chmod 755 "$(cat "{flip}")"; rm -f "{flip}"; fi;;\n'
        "esac\n"
        "exit $rc\n"
    )
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    env = {"PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}
    daemon = _start(tmp_path, trees, env)
    try:
        flip.write_text(os.fsdecode(trees["hyp-1"]))
        _hide_and_rediscover(daemon, trees, tmp_path)
        assert not flip.exists()  # the round that added hyp-2 met hyp-1 hidden
        assert daemon.events("worktree_removed") == []
        assert "hyp-1" in daemon.status()["hypotheses"]
        _edit_runs(daemon, trees["hyp-1"])
    finally:
        daemon.stop()


def test_a_checkout_in_a_worktree_that_was_unreadable_holds_its_runs(
    trees: dict[str, Path], tmp_path: Path
) -> None:
    """While hidden, its git dir (where ``index.lock`` lives) cannot be read; it stayed
    unknown once readable, so runs started in the middle of a checkout there."""
    daemon = _start(tmp_path, trees)
    try:
        _hide_and_rediscover(daemon, trees, tmp_path)
        daemon.wait_event("git_dir_unknown", lambda e: e["hypothesis"] == "hyp-1")
        os.chmod(trees["hyp-1"], 0o755)
        daemon.wait_event("watcher_restarted", timeout=30)  # hyp-1 taken back
        lock = trees["repo"] / ".git" / "worktrees" / "hyp-1" / "index.lock"
        lock.write_text("")  # a checkout in hyp-1 starts ...
        touch_edit(trees["hyp-1"] / "src" / "app.py")  # ... and writes its files
        observe(2.0)  # 40x the debounce: an unheld batch would have started by now
        assert daemon.events("job_started") == []
        lock.unlink()  # the checkout ends
        (batch,) = daemon.wait_event("batch_formed", timeout=30)
        assert batch["reason"] == "git_op_finished"
        assert len(daemon.events("git_dir_unknown")) == 1
    finally:
        daemon.stop()


@pytest.mark.parametrize("replacement", [None, "a file"], ids=["deleted", "replaced_by_a_file"])
def test_a_hidden_worktree_then_gone_is_removed_promptly(
    trees: dict[str, Path], tmp_path: Path, replacement: str | None
) -> None:
    """Nothing watched the hidden root, so its deletion was seen only by the periodic
    round (10 s later). The watcher probes it every 0.5 s: gone is a deletion. Readable
    again but no longer a folder (a file in its place): taking it back asks for a
    rediscovery."""
    daemon = _start(tmp_path, trees)
    try:
        _hide_and_rediscover(daemon, trees, tmp_path)
        daemon.wait_event("worktree_unreadable", timeout=30)
        os.chmod(trees["hyp-1"], 0o755)
        gone_at = time.monotonic()
        shutil.rmtree(trees["hyp-1"])
        if replacement is not None:
            trees["hyp-1"].write_text("not a worktree\n")
        (removed,) = daemon.wait_event("worktree_removed", timeout=30)
        took = time.monotonic() - gone_at
        assert removed["hypothesis"] == "hyp-1"
        assert took < 6.0, f"removal seen after {took:.1f}s: by the periodic round"
    finally:
        daemon.stop()


def test_a_worktree_unreadable_at_start_is_served_and_taken_in_once_readable(
    trees: dict[str, Path], tmp_path: Path
) -> None:
    """Git calls it prunable, so it was left out without a word, and served only by the
    periodic round after its mode came back: an edit made before that was lost."""
    os.chmod(trees["hyp-1"], 0)
    daemon = _start(tmp_path, trees)
    try:
        assert "hyp-1" in daemon.status()["hypotheses"]
        (unreadable,) = daemon.wait_event("worktree_unreadable", timeout=30)
        assert unreadable["path"] == os.fsdecode(trees["hyp-1"])
        os.chmod(trees["hyp-1"], 0o755)
        daemon.wait_event("watcher_restarted", timeout=30)
        _edit_runs(daemon, trees["hyp-1"])
        assert [e for e in daemon.events("worktree_added") if not e.get("initial")] == []
    finally:
        daemon.stop()


def test_a_worktree_whose_git_file_is_unreadable_is_read_again(
    trees: dict[str, Path], tmp_path: Path
) -> None:
    """Only its ``.git`` file hidden: git still lists it (not prunable), but its git dir
    was unknown for good (the error came wrapped, so it was not taken for a permission
    one), and a checkout there held no runs until the worktree set next changed."""
    probe = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from parallel_orchestrator.repo.worktrees import discover\n"
        "from parallel_orchestrator.repo.worktreeindex import index_worktrees\n"
        "from parallel_orchestrator.settings.loader import WorktreeSettings\n"
        "found = discover(WorktreeSettings(repo=Path(sys.argv[1])))\n"
        "index, problems = index_worktrees(found)\n"
        "print(json.dumps({'hidden': sorted(index.hidden), 'problems': len(problems)}))\n"
    )
    dot_git = trees["hyp-1"] / ".git"
    dot_git.chmod(0)
    done = subprocess.run(
        [*without_read_override(), sys.executable, "-c", probe, os.fsdecode(trees["repo"])],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    dot_git.chmod(0o644)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"hidden": ["hyp-1"], "problems": 1}


def test_a_repository_behind_an_unreadable_folder_is_not_called_missing(
    trees: dict[str, Path], tmp_path: Path
) -> None:
    """``chmod 000`` on the folder holding the repository: ``isdir`` says no, and the
    daemon said ``repo_missing`` ("no such directory") about a repository still there."""
    daemon = _start(tmp_path, trees)
    above = trees["repo"].parent
    try:
        above.chmod(0)
        daemon.signal(signal.SIGHUP)  # lists the worktrees while the folder is hidden
        daemon.wait_event("config_reloaded", timeout=30)
        above.chmod(0o755)
        (failed,) = daemon.wait_event("worktree_discovery_failed")
        assert "permission denied" in failed["error"]
        assert daemon.events("repo_missing") == []
        assert daemon.status()["daemon"]["repo_state"] == "ok"
        _edit_runs(daemon, trees["hyp-1"])
    finally:
        above.chmod(0o755)
        daemon.stop()
