"""The real watchfiles watcher on real folders."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest
from watchfiles import Change

from parallel_orchestrator.watch.watcher import Chunk, Watcher, step_for, undecodable_path


class Collector:
    def __init__(self) -> None:
        self.chunks: list[Chunk] = []
        self.restarts: list[str] = []
        self.event = asyncio.Event()

    def on_chunk(self, chunk: Chunk) -> None:
        self.chunks.append(chunk)
        self.event.set()

    def on_restart(self, reason: str) -> None:
        self.restarts.append(reason)
        self.event.set()

    def paths(self) -> set[str]:
        return {p for c in self.chunks for _, p in c.changes}

    async def until(self, predicate, timeout: float = 10.0) -> None:
        async def loop() -> None:
            while not predicate():
                self.event.clear()
                await self.event.wait()

        await asyncio.wait_for(loop(), timeout)


@pytest.fixture
async def watching(tmp_path: Path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    col = Collector()
    w = Watcher(asyncio.get_running_loop(), col.on_chunk, col.on_restart, step_ms=10)
    w.set_paths([str(a), str(b)])
    w.start()
    assert await w.wait_armed(10)
    yield w, col, a, b
    await asyncio.to_thread(w.stop)


async def test_one_watcher_sees_every_root(watching) -> None:
    _w, col, a, b = watching
    (a / "x.py").write_text("1")
    (b / "sub").mkdir()
    (b / "sub" / "y.py").write_text("2")
    await col.until(lambda: {str(a / "x.py"), str(b / "sub" / "y.py")} <= col.paths())


async def test_atomic_save_reports_the_real_path(watching) -> None:
    _w, col, a, _b = watching
    target = a / "mod.py"
    target.write_text("old")
    await col.until(lambda: str(target) in col.paths())
    col.chunks.clear()
    tmp = a / ".mod.py.swp"
    tmp.write_text("new")
    os.replace(tmp, target)
    await col.until(lambda: str(target) in col.paths())


async def test_chunk_times_are_in_the_past(watching) -> None:
    _w, col, a, _b = watching
    before = asyncio.get_running_loop().time()
    (a / "t.py").write_text("x")
    await col.until(lambda: bool(col.chunks))
    c = col.chunks[0]
    assert before - 0.1 <= c.first <= c.last <= asyncio.get_running_loop().time()


async def test_non_utf8_name_restarts_watcher_and_keeps_serving(watching) -> None:
    _w, col, a, b = watching
    bad = os.path.join(os.fsencode(a), b"bad\xff\xfename.py")
    with open(bad, "wb") as f:
        f.write(b"x")
    await col.until(lambda: bool(col.restarts))
    assert "decode" in col.restarts[0]
    assert os.fsdecode(bad) in col.paths()  # the change itself was not lost
    (b / "after.py").write_text("still watching")
    await col.until(lambda: str(b / "after.py") in col.paths())


async def test_changes_are_watchfiles_change_members(watching) -> None:
    _w, col, a, _b = watching
    (a / "new").mkdir()
    (a / "new" / "inside.py").write_text("1")
    await col.until(lambda: str(a / "new" / "inside.py") in col.paths())
    changes = {c for chunk in col.chunks for c in chunk.changes}
    assert all(type(change) is Change for change, _path in changes)
    assert (Change.added, str(a / "new" / "inside.py")) in changes


async def test_a_root_named_in_non_utf8_is_polled(tmp_path: Path) -> None:
    """RustNotify cannot take such a root: it is stat-polled, with the same Change values."""
    root = os.fsdecode(os.path.join(os.fsencode(tmp_path), b"root\xff"))
    os.mkdir(root)
    kept = os.path.join(root, "kept.py")
    with open(kept, "w") as f:
        f.write("old")
    col = Collector()
    w = Watcher(asyncio.get_running_loop(), col.on_chunk, col.on_restart, step_ms=10)
    w.set_paths([root])
    w.start()
    try:
        assert await w.wait_armed(10)
        added = os.path.join(root, "added.py")
        with open(added, "w") as f:
            f.write("x")
        await col.until(lambda: added in col.paths())
        os.unlink(kept)
        await col.until(lambda: kept in col.paths())
        changes = {c for chunk in col.chunks for c in chunk.changes}
        assert (Change.added, added) in changes
        assert (Change.deleted, kept) in changes
        assert all(type(change) is Change for change, _path in changes)
        assert col.restarts == []
    finally:
        await asyncio.to_thread(w.stop)


async def test_rearm_on_new_paths(tmp_path: Path) -> None:
    a, c = tmp_path / "a", tmp_path / "c"
    a.mkdir()
    col = Collector()
    w = Watcher(asyncio.get_running_loop(), col.on_chunk, col.on_restart, step_ms=10)
    w.set_paths([str(a)])
    w.start()
    try:
        assert await w.wait_armed(10)
        c.mkdir()
        assert w.set_paths([str(a), str(c)])
        assert await w.wait_armed(10)
        (c / "new.py").write_text("x")
        await col.until(lambda: str(c / "new.py") in col.paths())
    finally:
        await asyncio.to_thread(w.stop)


async def test_a_removed_root_is_no_rearm_and_a_root_back_again_is(tmp_path: Path) -> None:
    # Re-arming on a removal let an edit made while the new watcher armed be seen by
    # both watchers: one save, two batches, the first run cancelled by the second.
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    col = Collector()
    w = Watcher(asyncio.get_running_loop(), col.on_chunk, col.on_restart, step_ms=10)
    w.set_paths([str(a), str(b)])
    w.start()
    try:
        assert await w.wait_armed(10)
        shutil.rmtree(b)
        assert not w.set_paths([str(a)])  # the armed watcher still covers a
        (a / "x.py").write_text("1")
        await col.until(lambda: str(a / "x.py") in col.paths())
        # The same path back (a worktree recreated where one was deleted) needs a new
        # watch: the old one on it died with the folder.
        b.mkdir()
        assert w.set_paths([str(a), str(b)])
        assert await w.wait_armed(10)
        (b / "y.py").write_text("2")
        await col.until(lambda: str(b / "y.py") in col.paths())
    finally:
        await asyncio.to_thread(w.stop)


async def test_a_root_replaced_at_the_same_path_is_watched_after_rearm(watching) -> None:
    """inotify follows the folder, not the path: a root deleted and made again (a
    repository cloned anew where it was) is seen only after ``rearm``."""
    w, col, a, _b = watching
    shutil.rmtree(a)
    a.mkdir()
    w.rearm()
    assert await w.wait_armed(10)
    (a / "back.py").write_text("1")
    await col.until(lambda: str(a / "back.py") in col.paths())


def test_step_derivation() -> None:
    assert step_for(20, {}) == 13
    assert step_for(200, {}) == 50
    assert step_for(1, {}) == 1
    assert step_for(200, {"PO_WATCH_STEP_MS": "7"}) == 7
    assert step_for(200, {"PO_WATCH_STEP_MS": "junk"}) == 50


def test_undecodable_path_parses_rust_debug_text() -> None:
    msg = 'Unable to decode path "/tmp/x/bad\\xFF\\xFEname \\"q\\"\\n" to string'
    assert undecodable_path(msg) == os.fsdecode(b'/tmp/x/bad\xff\xfename "q"\n')
    assert undecodable_path("something else") is None


async def test_a_stopped_watcher_keeps_nobody_waiting_for_an_arm(tmp_path: Path) -> None:
    """A worktree added as the daemon stops: its re-arm never comes (the watch thread
    is gone), and the thread waiting for it held the process up to 30 s after
    daemon_stopped (asyncio.run waits for its executor threads)."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    col = Collector()
    w = Watcher(asyncio.get_running_loop(), col.on_chunk, col.on_restart, step_ms=10)
    w.set_paths([str(a)])
    w.start()
    assert await w.wait_armed(10)
    w.set_paths([str(a), str(b)])  # a re-arm asked for ...
    waiting = asyncio.ensure_future(w.wait_armed(30))
    await asyncio.sleep(0)  # ... and waited for, when the stop comes
    await asyncio.to_thread(w.stop)
    await asyncio.wait_for(waiting, 5)  # armed just before the stop, or not: at once
    w.set_paths([str(a), str(b), str(tmp_path)])  # a rediscovery racing the shutdown
    assert await asyncio.wait_for(w.wait_armed(30), 5) is False
