"""repo/git.py: the one git runner, with real git and real repositories."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
from pathlib import Path

import pytest

from parallel_orchestrator.commands.initializer import find_repo_root
from parallel_orchestrator.errors import OrchestratorError
from parallel_orchestrator.repo.filters import GitCheckIgnoreError, GitIgnoreOracle
from parallel_orchestrator.repo.git import (
    GitError,
    git_env,
    run_git,
    run_git_async,
    split_z,
    z_records,
)
from process_checks import running, wait_until


def make_repo(path: Path, gitignore: str = "") -> Path:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    subprocess.run(["git", "init", "-q", str(path)], check=True, env=clean)
    if gitignore:
        (path / ".gitignore").write_text(gitignore)
    return path


@pytest.fixture
def hijacked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The caller's environment points git at another repository, as in a git hook."""
    other = make_repo(tmp_path / "other")
    for name, value in {
        "GIT_DIR": other / ".git",
        "GIT_WORK_TREE": other,
        "GIT_INDEX_FILE": other / ".git" / "index",
        "GIT_COMMON_DIR": other / ".git",
        "GIT_OBJECT_DIRECTORY": other / ".git" / "objects",
    }.items():
        monkeypatch.setenv(name, str(value))
    return other


def test_env_is_scrubbed_of_repo_location_variables() -> None:
    env = git_env({"GIT_DIR": "/x", "GIT_WORK_TREE": "/y", "HOME": "/h", "GIT_AUTHOR_NAME": "a"})
    assert "GIT_DIR" not in env and "GIT_WORK_TREE" not in env
    assert env["HOME"] == "/h" and env["GIT_AUTHOR_NAME"] == "a"
    assert env["GIT_OPTIONAL_LOCKS"] == "0"


def test_run_git_answers_for_the_named_repository(tmp_path: Path, hijacked: Path) -> None:
    repo = make_repo(tmp_path / "mine")
    done = run_git(repo, "rev-parse", "--absolute-git-dir")
    assert done.ok
    assert Path(os.fsdecode(done.stdout.strip())) == (repo / ".git").resolve()


def test_a_failing_git_is_a_result_not_an_exception(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    done = run_git(tmp_path / "plain", "no-such-command")
    assert not done.ok
    assert "no-such-command" in done.said()
    assert "\n" not in done.said()


async def test_gitignore_oracle_ignores_the_callers_git_dir(tmp_path: Path, hijacked: Path) -> None:
    repo = make_repo(tmp_path / "mine", gitignore="*.log\n")
    assert await GitIgnoreOracle(repo).ignored(["a.log", "a.py"]) == {"a.log"}


def test_init_finds_the_repository_it_was_given(tmp_path: Path, hijacked: Path) -> None:
    repo = make_repo(tmp_path / "mine")
    (repo / "sub").mkdir()
    assert find_repo_root(repo / "sub") == repo.resolve()


def test_errors_share_the_package_root() -> None:
    assert issubclass(GitError, OrchestratorError)
    assert issubclass(GitCheckIgnoreError, GitError)


# --------------------------------------------------------------------------- timeout
# A git that hangs cannot be made on purpose, so a stand-in named `git` on PATH sleeps
# (exec: the process we start is the sleeper itself) and records its pid.


@pytest.fixture
def hanging_git(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    pid_file = tmp_path / "git.pid"
    fake = bin_dir / "git"
    fake.write_text(f'#!/bin/sh\necho $$ > "{pid_file}"\nexec sleep 300\n')
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    return pid_file


def started_pid(pid_file: Path) -> int:
    assert wait_until(lambda: pid_file.exists() and pid_file.read_text().strip() != "")
    return int(pid_file.read_text())


def test_sync_timeout_kills_git(tmp_path: Path, hanging_git: Path) -> None:
    with pytest.raises(GitError, match=r"took over 0\.5 s") as caught:
        run_git(tmp_path, "status", timeout=0.5)
    assert caught.value.reason == "timeout"
    assert not running(started_pid(hanging_git))


async def test_async_timeout_kills_and_reaps_git(tmp_path: Path, hanging_git: Path) -> None:
    with pytest.raises(GitError) as caught:
        await run_git_async(tmp_path, "check-ignore", "--stdin", "-z", input=b"x\0", timeout=0.5)
    assert caught.value.reason == "timeout"
    assert not running(started_pid(hanging_git))


async def test_cancel_kills_and_reaps_git(tmp_path: Path, hanging_git: Path) -> None:
    task = asyncio.ensure_future(run_git_async(tmp_path, "status", timeout=300))
    pid = await asyncio.to_thread(started_pid, hanging_git)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not running(pid)  # killed and reaped before the cancel propagated


def test_missing_git_is_one_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(GitError, match="not found on PATH") as caught:
        run_git(tmp_path, "status")
    assert caught.value.reason == "not_found"


# --------------------------------------------------------------------------- -z parsing


def test_split_z_keeps_any_bytes() -> None:
    assert split_z(b"a b\0new\nline\0\xff.py\0") == [b"a b", b"new\nline", b"\xff.py"]
    assert split_z(b"") == []


def test_z_records_groups_porcelain_lines() -> None:
    data = b"worktree /a\nb\0HEAD 1\0branch refs/heads/x\0\0worktree /c\0bare\0\0"
    assert z_records(data) == [
        [b"worktree /a\nb", b"HEAD 1", b"branch refs/heads/x"],
        [b"worktree /c", b"bare"],
    ]


def test_every_package_error_derives_from_the_one_root() -> None:
    """Seven roots became one: the CLI catches OrchestratorError once."""
    from parallel_orchestrator.backends.hostlink import HostGone
    from parallel_orchestrator.commands.demo import DemoError
    from parallel_orchestrator.commands.initializer import InitError
    from parallel_orchestrator.jobs.tmpdirs import TempDirError
    from parallel_orchestrator.repo.pathglob import GlobError
    from parallel_orchestrator.repo.worktrees import WorktreeError
    from parallel_orchestrator.report.compare import CompareError
    from parallel_orchestrator.report.junit import JunitUnreadable
    from parallel_orchestrator.report.runlogs import RunLogError
    from parallel_orchestrator.report.statelocate import ForeignStatusFile
    from parallel_orchestrator.report.statusview import StatusFileError
    from parallel_orchestrator.service.daemon import DaemonError
    from parallel_orchestrator.settings.loader import ConfigError

    for error in (ConfigError, DaemonError, DemoError, GitError, GlobError, InitError):
        assert issubclass(error, OrchestratorError), error
    assert issubclass(StatusFileError, OrchestratorError)
    assert issubclass(WorktreeError, OrchestratorError)
    assert issubclass(ForeignStatusFile, OrchestratorError)
    assert issubclass(TempDirError, OrchestratorError)
    assert issubclass(HostGone, OrchestratorError)
    for error in (CompareError, JunitUnreadable, RunLogError):
        assert issubclass(error, OrchestratorError), error
    assert issubclass(GlobError, ValueError)  # still what its callers catch
    assert ConfigError(["a: x", "b: y"]).lines == ["a: x", "b: y"]
    assert WorktreeError("one line").lines == ["one line"]
