"""Worktree discovery against real git repositories and real ``git worktree add``."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from parallel_orchestrator.repo.worktrees import (
    Worktree,
    WorktreeError,
    discover,
    discover_async,
    git_common_dir,
    git_dir,
    index_lock_path,
)
from parallel_orchestrator.settings.loader import WorktreeSettings

GIT_ENV = {
    **os.environ,
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.invalid",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.invalid",
}


def git(cwd: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", *args], cwd=cwd, env=GIT_ENV, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A main worktree ``proj`` with linked worktrees ``proj-hyp-1`` and ``proj-hyp-2``."""
    main = tmp_path / "proj"
    main.mkdir()
    git(main, "init", "-q", "-b", "main")
    (main / "a.py").write_text("x = 1\n")
    git(main, "add", "a.py")
    git(main, "commit", "-q", "-m", "init")
    git(main, "worktree", "add", "-q", "-b", "hyp-1", str(tmp_path / "proj-hyp-1"))
    git(main, "worktree", "add", "-q", "-b", "hyp-2", str(tmp_path / "proj-hyp-2"))
    return main


def ids(worktrees: list[Worktree]) -> list[str]:
    return [wt.id for wt in worktrees]


def test_lists_main_and_linked_worktrees(repo: Path) -> None:
    found = discover(WorktreeSettings(repo=repo))
    head = git(repo, "rev-parse", "HEAD")
    base = repo.parent.resolve()
    assert found == [
        Worktree(id="proj", path=base / "proj", branch="main", head=head, is_main=True),
        Worktree(
            id="proj-hyp-1", path=base / "proj-hyp-1", branch="hyp-1", head=head, is_main=False
        ),
        Worktree(
            id="proj-hyp-2", path=base / "proj-hyp-2", branch="hyp-2", head=head, is_main=False
        ),
    ]


async def test_async_discovery_agrees(repo: Path) -> None:
    settings = WorktreeSettings(repo=repo)
    assert await discover_async(settings) == discover(settings)


def test_repo_may_be_a_subfolder_or_a_linked_worktree(repo: Path) -> None:
    (repo / "sub").mkdir()
    expected = ids(discover(WorktreeSettings(repo=repo)))
    assert ids(discover(WorktreeSettings(repo=repo / "sub"))) == expected
    assert ids(discover(WorktreeSettings(repo=repo.parent / "proj-hyp-2"))) == expected


def test_detached_head_has_empty_branch(repo: Path) -> None:
    git(repo, "worktree", "add", "-q", "--detach", str(repo.parent / "proj-detached"))
    found = {wt.id: wt for wt in discover(WorktreeSettings(repo=repo))}
    assert found["proj-detached"].branch == ""
    assert len(found["proj-detached"].head) >= 40


def test_branch_with_slashes_keeps_its_short_name(repo: Path) -> None:
    git(repo, "worktree", "add", "-q", "-b", "feature/x", str(repo.parent / "proj-fx"))
    found = {wt.id: wt for wt in discover(WorktreeSettings(repo=repo))}
    assert found["proj-fx"].branch == "feature/x"


def test_include_and_exclude(repo: Path) -> None:
    only_hyps = WorktreeSettings(repo=repo, include=("*-hyp-*",))
    assert ids(discover(only_hyps)) == ["proj-hyp-1", "proj-hyp-2"]
    without_two = WorktreeSettings(repo=repo, include=("*",), exclude=("*-2", "nothing"))
    assert ids(discover(without_two)) == ["proj", "proj-hyp-1"]
    assert discover(WorktreeSettings(repo=repo, include=())) == []
    case_matters = WorktreeSettings(repo=repo, include=("PROJ*",))
    assert discover(case_matters) == []


def test_removed_folder_counts_as_removed(repo: Path) -> None:
    shutil.rmtree(repo.parent / "proj-hyp-1")
    assert "prunable" in git(repo, "worktree", "list", "--porcelain")
    assert ids(discover(WorktreeSettings(repo=repo))) == ["proj", "proj-hyp-2"]


def test_locked_worktree_whose_folder_vanished_is_skipped(repo: Path) -> None:
    git(repo, "worktree", "lock", str(repo.parent / "proj-hyp-2"))
    shutil.rmtree(repo.parent / "proj-hyp-2")
    assert ids(discover(WorktreeSettings(repo=repo))) == ["proj", "proj-hyp-1"]


@pytest.mark.parametrize("name", ["hyp with space", "hyp\nnewline", "hyp-\udcff-latin1"])
def test_awkward_folder_names(repo: Path, name: str) -> None:
    target = os.fsencode(repo.parent) + b"/" + os.fsencode(name)
    git(repo, "worktree", "add", "-q", "--detach", os.fsdecode(target))
    found = {wt.id: wt for wt in discover(WorktreeSettings(repo=repo))}
    assert found[name].path == Path(os.fsdecode(target))
    assert found[name].path.is_dir()
    assert git_dir(found[name].path).parent == (repo / ".git" / "worktrees").resolve()


def test_extra_paths_are_hypotheses(repo: Path, tmp_path: Path) -> None:
    extra = tmp_path / "plain dir"
    extra.mkdir()
    settings = WorktreeSettings(repo=repo, paths=(extra, repo.parent / "proj-hyp-1"))
    found = discover(settings)
    assert ids(found) == ["proj", "proj-hyp-1", "proj-hyp-2", "plain dir"]
    assert found[-1] == Worktree(
        id="plain dir", path=extra.resolve(), branch="", head="", is_main=False
    )


def test_only_extra_paths(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "b")
    settings = WorktreeSettings(repo=None, paths=(tmp_path / "a", tmp_path / "link"))
    found = discover(settings)
    assert [(wt.id, wt.path) for wt in found] == [
        ("a", (tmp_path / "a").resolve()),
        ("b", (tmp_path / "b").resolve()),  # realpath: the id is the real folder's name
    ]


def test_missing_extra_path(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    for missing, reason in [("gone", "does not exist"), ("a-file", "is not a directory")]:
        settings = WorktreeSettings(repo=None, paths=(tmp_path / missing,))
        assert discover(settings) == []  # live: counts as removed
        with pytest.raises(WorktreeError, match=f"{missing}: extra worktree path {reason}"):
            discover(settings, strict=True)


def test_duplicate_ids_name_both_paths(repo: Path, tmp_path: Path) -> None:
    other = tmp_path / "elsewhere" / "proj-hyp-1"
    other.mkdir(parents=True)
    settings = WorktreeSettings(repo=repo, paths=(other,))
    first = (repo.parent / "proj-hyp-1").resolve()
    with pytest.raises(WorktreeError) as caught:
        discover(settings)
    assert str(caught.value).startswith(
        f"duplicate hypothesis id 'proj-hyp-1': {first} and {other.resolve()} "
    )
    # Excluding the id removes both, and with them the conflict.
    assert ids(discover(WorktreeSettings(repo=repo, paths=(other,), exclude=("proj-hyp-1",)))) == [
        "proj",
        "proj-hyp-2",
    ]


def test_a_worktree_also_listed_in_paths_appears_once(repo: Path) -> None:
    settings = WorktreeSettings(repo=repo, paths=(repo.parent / "proj-hyp-2",))
    assert ids(discover(settings)) == ["proj", "proj-hyp-1", "proj-hyp-2"]


async def test_not_a_git_repository(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    settings = WorktreeSettings(repo=plain)
    with pytest.raises(WorktreeError, match=r"plain: not a git repository \(git said: .+\)$"):
        discover(settings)
    with pytest.raises(WorktreeError, match=r"plain: not a git repository \(git said: .+\)$"):
        await discover_async(settings)
    with pytest.raises(WorktreeError, match=r"nope: not a git repository"):
        discover(WorktreeSettings(repo=tmp_path / "nope"))
    with pytest.raises(WorktreeError, match=r"plain: not a git repository"):
        git_dir(plain)


def test_git_environment_of_the_caller_is_ignored(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Started from a git hook, GIT_DIR would point git at another repository."""
    other = tmp_path / "other"
    other.mkdir()
    git(other, "init", "-q")
    monkeypatch.setenv("GIT_DIR", str(other / ".git"))
    assert ids(discover(WorktreeSettings(repo=repo))) == ["proj", "proj-hyp-1", "proj-hyp-2"]


def test_git_dirs(repo: Path) -> None:
    main_git = (repo / ".git").resolve()
    linked = repo.parent / "proj-hyp-1"
    assert git_dir(repo) == main_git
    assert git_common_dir(repo) == main_git
    assert git_dir(linked).parent == main_git / "worktrees"
    assert git_common_dir(linked) == main_git
    assert index_lock_path(linked) == git_dir(linked) / "index.lock"
    # Agrees with git itself.
    assert git_dir(linked) == Path(git(linked, "rev-parse", "--absolute-git-dir"))
    # A subfolder has no .git of its own: git is asked.
    (linked / "sub").mkdir()
    assert git_dir(linked / "sub") == git_dir(linked)
    assert git_common_dir(linked / "sub") == main_git


def test_index_lock_appears_where_git_puts_it(repo: Path) -> None:
    linked = repo.parent / "proj-hyp-2"
    lock = index_lock_path(linked)
    assert not lock.exists()
    # git refuses to work while its lock exists: proof that this is the lock it uses.
    lock.write_text("")
    (linked / "a.py").write_text("x = 2\n")
    done = subprocess.run(
        ["git", "add", "a.py"], cwd=linked, env=GIT_ENV, capture_output=True, check=False
    )
    assert done.returncode != 0 and b"index.lock" in done.stderr
