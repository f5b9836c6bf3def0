"""store/: the one atomic writer and the regular-file opener, on real files."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from parallel_orchestrator.store.atomic import remove_stale_temps, temp_name, write_atomic
from parallel_orchestrator.store.fence import (
    FencedError,
    fence,
    missing_fenced_parent,
    reset_fence,
)
from parallel_orchestrator.store.folders import make_dirs
from parallel_orchestrator.store.safe_open import (
    Create,
    NotRegularFile,
    open_regular,
    open_state_file,
    read_regular,
    set_aside,
    write_new,
)
from parallel_orchestrator.store.trust import state_dir_problems


@contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_replaces_the_whole_file_with_the_exact_mode(tmp_path: Path) -> None:
    target = tmp_path / "status.json"
    target.write_bytes(b"old content that is longer than the new one")
    with umask(0o077):
        write_atomic(target, b"new", mode=0o640)
    assert target.read_bytes() == b"new"
    assert mode_of(target) == 0o640  # the umask would have made it 0600
    assert leftovers(tmp_path) == []


def test_without_exact_mode_the_umask_applies(tmp_path: Path) -> None:
    target = tmp_path / "config.toml"
    with umask(0o027):
        write_atomic(target, b"x", mode=0o644, exact_mode=False)
    assert mode_of(target) == 0o640


def test_creates_missing_folders_with_exactly_dir_mode(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "status.json"
    with umask(0o022):
        write_atomic(target, b"{}", mode=0o600, dir_mode=0o700)
    assert target.read_bytes() == b"{}"
    assert mode_of(tmp_path / "a") == 0o700
    assert mode_of(tmp_path / "a" / "b") == 0o700


def test_without_dir_mode_a_missing_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_atomic(tmp_path / "missing" / "f", b"x")
    assert not (tmp_path / "missing").exists()


def test_a_symlink_at_the_target_is_replaced_not_written_through(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    target = tmp_path / "status.json"
    target.symlink_to(victim)
    write_atomic(target, b"new")
    assert victim.read_bytes() == b"precious"
    assert stat.S_ISREG(os.lstat(target).st_mode)
    assert target.read_bytes() == b"new"


def test_a_failed_replace_leaves_no_temp_file_and_raises(tmp_path: Path) -> None:
    target = tmp_path / "busy"
    target.mkdir()
    (target / "inside").write_bytes(b"")  # a non-empty folder cannot be renamed over
    with pytest.raises(OSError):
        write_atomic(target, b"x")
    assert leftovers(tmp_path) == []
    assert (target / "inside").exists()


def test_exclusive_never_overwrites(tmp_path: Path) -> None:
    target = tmp_path / "config.toml"
    write_atomic(target, b"first", exclusive=True)
    with pytest.raises(FileExistsError):
        write_atomic(target, b"second", exclusive=True)
    assert target.read_bytes() == b"first"
    dangling = tmp_path / "link.toml"
    dangling.symlink_to(tmp_path / "nowhere")
    with pytest.raises(FileExistsError):
        write_atomic(dangling, b"x", exclusive=True)
    assert not (tmp_path / "nowhere").exists()


def test_not_durable_writes_the_same_content(tmp_path: Path) -> None:
    target = tmp_path / "record.json"
    write_atomic(target, b"{}", durable=False)
    write_atomic(target, b'{"a": 1}', durable=False)
    assert target.read_bytes() == b'{"a": 1}'
    assert mode_of(target) == 0o600
    assert leftovers(tmp_path) == []


def test_temp_names_match_the_ledgers_sweep_pattern(tmp_path: Path) -> None:
    first, second = temp_name(tmp_path / "j.json"), temp_name(tmp_path / "j.json")
    assert first != second
    assert first.parent == tmp_path
    assert first.match(".j.json.*.tmp")


# --------------------------------------------------------------------------- safe_open


def test_read_regular_reads_a_file_up_to_a_limit(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 200_000)
    assert read_regular(path) == b"x" * 200_000
    assert read_regular(path, limit=10) == b"x" * 10


def test_open_regular_refuses_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.write_bytes(b"x")
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(OSError) as caught:
        open_regular(link)
    assert caught.value.errno == errno.ELOOP


def test_open_regular_refuses_a_fifo_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(NotRegularFile, match="not a regular file"):
        open_regular(fifo)  # O_NONBLOCK: returns at once although no writer exists


def test_open_regular_refuses_a_folder(tmp_path: Path) -> None:
    with pytest.raises(NotRegularFile):
        open_regular(tmp_path)


# -- the one opener for files the daemon creates in the state dir ----------------------
def test_open_state_file_never_writes_through_a_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    link = tmp_path / "daemon.lock"
    link.symlink_to(victim)
    for how in Create:
        with pytest.raises(OSError) as caught:
            open_state_file(link, how)
        assert caught.value.errno in (errno.ELOOP, errno.EEXIST)
    assert victim.read_text() == "precious"


def test_open_state_file_refuses_a_fifo_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "run.log"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # with a reader the open succeeds
    try:
        with pytest.raises(NotRegularFile):
            open_state_file(fifo, Create.TRUNCATE)
    finally:
        os.close(reader)
    with pytest.raises(OSError) as caught:  # without one it fails at once (ENXIO)
        open_state_file(fifo, Create.APPEND)
    assert caught.value.errno == errno.ENXIO


def test_open_state_file_sets_the_exact_mode(tmp_path: Path) -> None:
    existing = tmp_path / "daemon.lock"
    existing.write_text("x")
    existing.chmod(0o644)
    with umask(0o077):
        os.close(open_state_file(existing, Create.UPDATE, 0o600))
        os.close(open_state_file(tmp_path / "new", Create.NEW, 0o640))
    assert mode_of(existing) == 0o600 and mode_of(tmp_path / "new") == 0o640
    with pytest.raises(FileExistsError):
        open_state_file(tmp_path / "new", Create.NEW)


def test_write_new_replaces_a_planted_link_not_its_target(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    listing = tmp_path / "j1.changed"
    listing.symlink_to(victim)
    write_new(listing, b"src/app.py\n")
    assert victim.read_text() == "precious"
    assert not listing.is_symlink() and listing.read_bytes() == b"src/app.py\n"
    assert mode_of(listing) == 0o600


def test_set_aside_keeps_every_copy(tmp_path: Path) -> None:
    first = tmp_path / "a.json"
    first.mkdir()
    assert set_aside(first) == tmp_path / "a.json.corrupt"
    first.write_text("{")
    assert set_aside(first) == tmp_path / "a.json.corrupt.1"
    assert not first.exists()


def test_remove_stale_temps_takes_only_temp_names(tmp_path: Path) -> None:
    (tmp_path / ".status.json.0123abcd.tmp").write_text("{")
    (tmp_path / ".other.json.0123abcd.tmp").write_text("{")
    (tmp_path / "status.json").write_text("{}")
    (tmp_path / ".keep").write_text("")
    assert remove_stale_temps(tmp_path, "status.json") == [tmp_path / ".status.json.0123abcd.tmp"]
    assert remove_stale_temps(tmp_path) == [tmp_path / ".other.json.0123abcd.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".keep", "status.json"]


def test_state_dir_problems_names_each_untrusted_folder(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    assert state_dir_problems(state) == []
    (state / "cache").mkdir(mode=0o700)
    (state / "cache").chmod(0o757)
    (state / "results").symlink_to(tmp_path)
    problems = state_dir_problems(state)
    assert len(problems) == 2
    assert "its cache/ writable by group/others (mode 0757)" in problems[0]
    assert "its results/: a symlink" in problems[1]


# -- the fence: a missing repository or worktree folder is never recreated ------------------
@pytest.fixture
def fenced(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A repository and a worktree folder, fenced as the daemon fences them; unfenced after."""
    repo, worktree = tmp_path / "repo", tmp_path / "wt-1"
    repo.mkdir()
    worktree.mkdir()
    fence(repo, [repo, worktree])
    try:
        yield repo, worktree
    finally:
        reset_fence()


def test_below_a_fenced_folder_that_exists_folders_are_created(fenced: tuple[Path, Path]) -> None:
    repo, _ = fenced
    make_dirs(repo / ".po-state" / "runs", 0o700)
    assert mode_of(repo / ".po-state") == mode_of(repo / ".po-state" / "runs") == 0o700


def test_a_missing_fenced_folder_is_not_recreated_and_nothing_is_created(
    fenced: tuple[Path, Path],
) -> None:
    repo, worktree = fenced
    repo.rmdir()
    with pytest.raises(FencedError) as caught:
        make_dirs(repo / "logs" / "deep", 0o700)
    assert caught.value.errno == errno.ENOENT
    assert isinstance(caught.value, OSError)  # every writer already handles OSError
    assert f"inside the missing repository {repo}" in str(caught.value)
    assert not repo.exists()
    worktree.rmdir()
    with pytest.raises(FencedError, match=f"inside the missing worktree {worktree}"):
        write_atomic(worktree / "out" / "status.json", b"{}", dir_mode=0o700)
    assert not worktree.exists()
    assert missing_fenced_parent(repo / ".po-state") == (repo, "repository")


def test_a_worktree_no_longer_served_stays_fenced(fenced: tuple[Path, Path]) -> None:
    """Deleted by hand, a worktree leaves the served set at the next rediscovery: its
    folder must not come back through a log or status file inside it then either."""
    repo, worktree = fenced
    fence(repo, [repo])  # rediscovery no longer lists it
    worktree.rmdir()
    with pytest.raises(FencedError, match=f"inside the missing worktree {worktree}"):
        make_dirs(worktree / "logs", 0o700)
    assert not worktree.exists()
    worktree.mkdir()  # recreated by the user: used as before
    make_dirs(worktree / "logs", 0o700)


def test_a_fenced_folder_is_recognised_through_a_symlinked_parent(tmp_path: Path) -> None:
    real = tmp_path / "real"
    (real / "repo").mkdir(parents=True)
    (tmp_path / "link").symlink_to(real)
    fence(tmp_path / "link" / "repo", [])
    try:
        (real / "repo").rmdir()
        with pytest.raises(FencedError):
            make_dirs(real / "repo" / "logs", 0o700)
        assert not (real / "repo").exists()
    finally:
        reset_fence()


def test_without_a_fence_missing_parents_are_created_as_before(tmp_path: Path) -> None:
    make_dirs(tmp_path / "repo" / "logs", 0o700)  # a CLI command: nothing is fenced
    assert (tmp_path / "repo" / "logs").is_dir()
    assert missing_fenced_parent(tmp_path / "gone" / "x") is None
