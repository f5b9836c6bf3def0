"""store/: the one atomic writer and the regular-file opener, on real files."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from parallel_orchestrator.store.atomic import temp_name, write_atomic
from parallel_orchestrator.store.safe_open import NotRegularFile, open_regular, read_regular


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
