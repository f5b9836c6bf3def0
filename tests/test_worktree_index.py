"""WorktreeIndex in-process: made-up chunks, no watcher (as watchfiles tests with a fake
RustNotify). One test builds the index from real git worktrees."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from watchfiles import Change

from parallel_orchestrator.repo.filters import GitInternalsFilter, GlobIgnoreFilter
from parallel_orchestrator.repo.worktreeindex import WorktreeIndex, index_worktrees
from parallel_orchestrator.repo.worktrees import discover
from parallel_orchestrator.settings.loader import WorktreeSettings

ROOTS = {"main": "/r/main", "hyp-1": "/r/main/wt/hyp-1", "hyp-2": "/r/hyp-2"}
LOCKS = {
    "main": "/r/main/.git/index.lock",
    "hyp-1": "/r/main/.git/worktrees/hyp-1/index.lock",
    "hyp-2": "/r/main/.git/worktrees/hyp-2/index.lock",
}
ADMIN = {"/r/main/.git/worktrees"}


def make_index() -> WorktreeIndex:
    return WorktreeIndex(ROOTS, LOCKS, ADMIN)


def no_dirs(path: str) -> bool:
    return False


def test_edits_are_grouped_per_hypothesis_relative_to_their_root() -> None:
    seen = make_index().classify(
        {
            (Change.modified, "/r/main/src/a.py"),
            (Change.added, "/r/hyp-2/new.py"),
            (Change.deleted, "/r/hyp-2/old.py"),
        },
        is_dir=no_dirs,
    )
    assert seen.changed == {"main": {"src/a.py"}, "hyp-2": {"new.py", "old.py"}}
    assert seen.created == {"hyp-2": {"new.py"}}
    assert (seen.released, seen.lock_event, seen.rediscover) == ([], False, False)


def test_a_nested_worktree_wins_over_the_one_around_it() -> None:
    index = make_index()
    assert index.locate("/r/main/wt/hyp-1/x.py") == ("hyp-1", "x.py")
    assert index.locate("/r/main/wt/x.py") == ("main", "wt/x.py")
    assert index.locate("/r/main-other/x.py") is None  # a prefix of the name is not a parent
    assert index.locate("/elsewhere/x.py") is None


def test_lock_deleted_releases_that_hypothesis_lock_created_only_signals() -> None:
    index = make_index()
    seen = index.classify({(Change.deleted, LOCKS["hyp-1"])}, is_dir=no_dirs)
    assert (seen.released, seen.lock_event, seen.changed) == (["hyp-1"], True, {})
    seen = index.classify({(Change.added, LOCKS["main"])}, is_dir=no_dirs)
    assert (seen.released, seen.lock_event, seen.changed) == ([], True, {})
    assert index.lock_path("hyp-2") == LOCKS["hyp-2"]
    assert index.lock_path("nope") is None


def test_admin_dir_and_root_changes_ask_for_rediscovery() -> None:
    index = make_index()
    for path in ("/r/main/.git/worktrees", "/r/main/.git/worktrees/hyp-3/gitdir", "/r/hyp-2"):
        seen = index.classify({(Change.added, path)}, is_dir=no_dirs)
        assert seen.rediscover, path
        assert seen.changed == {}, path


def test_ignored_paths_and_root_itself_are_not_changes() -> None:
    git, globs = GitInternalsFilter(), GlobIgnoreFilter(["*.pyc", "/build"])
    seen = make_index().classify(
        {
            (Change.modified, "/r/main/.git/HEAD"),
            (Change.modified, "/r/main/a.pyc"),
            (Change.modified, "/r/main/build/x.o"),
            (Change.modified, "/r/main/src/build/x.py"),
        },
        ignored=lambda rel: git.ignored(rel) or globs.ignored(rel),
        is_dir=no_dirs,
    )
    assert seen.changed == {"main": {"src/build/x.py"}}


def test_folders_are_not_changes_unless_deleted() -> None:
    asked: list[str] = []

    def is_dir(path: str) -> bool:
        asked.append(path)
        return path.endswith("/pkg")

    seen = make_index().classify(
        {
            (Change.added, "/r/main/pkg"),
            (Change.added, "/r/main/pkg/m.py"),
            (Change.deleted, "/r/main/gone"),
        },
        is_dir=is_dir,
    )
    assert seen.changed == {"main": {"pkg/m.py", "gone"}}
    assert seen.created == {"main": {"pkg/m.py"}}
    assert "/r/main/gone" not in asked  # a deleted path is never stat-ed


def test_gitignore_edits_are_reported_per_hypothesis() -> None:
    seen = make_index().classify(
        {(Change.modified, "/r/main/.gitignore"), (Change.added, "/r/hyp-2/sub/.gitignore")},
        is_dir=no_dirs,
    )
    assert seen.gitignore_touched == {"main", "hyp-2"}
    assert seen.changed == {"main": {".gitignore"}, "hyp-2": {"sub/.gitignore"}}


def test_raw_ints_from_rust_notify_classify_like_change_members() -> None:
    index = make_index()
    raw = index.classify({(1, "/r/main/a.py"), (3, LOCKS["main"])}, is_dir=no_dirs)
    assert raw.created == {"main": {"a.py"}} and raw.released == ["main"]


def test_watch_paths_add_admin_dirs_outside_every_root() -> None:
    inside = WorktreeIndex(ROOTS, LOCKS, ADMIN)
    assert sorted(inside.watch_paths()) == sorted(ROOTS.values())
    outside = WorktreeIndex({"hyp-2": "/r/hyp-2"}, {}, ADMIN)
    assert outside.watch_paths() == ["/r/hyp-2", "/r/main/.git"]


def test_index_from_real_worktrees(tmp_path: Path) -> None:
    repo = tmp_path / "main"
    run = ["git", "-C", str(repo)]
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    ident = ["-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*run, *ident, "commit", "-q", "--allow-empty", "-m", "x"], check=True)
    linked = tmp_path / "hyp-1"
    subprocess.run([*run, "worktree", "add", "-q", str(linked), "-b", "hyp-1"], check=True)
    found = discover(WorktreeSettings(repo=repo))
    index, problems = index_worktrees(found)
    assert problems == []
    real = os.path.realpath(repo)
    assert index.lock_path("hyp-1") == f"{real}/.git/worktrees/hyp-1/index.lock"
    assert index.admin_dirs == {f"{real}/.git/worktrees"}
    seen = index.classify({(Change.deleted, f"{real}/.git/worktrees/hyp-1/index.lock")})
    assert seen.released == ["hyp-1"]
