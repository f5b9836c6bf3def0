"""ChangeIntake in-process: made-up watcher chunks over real folders, a real event loop and
real loop timers, no watcher and no daemon. Batches are what ``dispatch`` receives."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import structlog
from watchfiles import Change

from parallel_orchestrator.pipeline.batcher import Batch
from parallel_orchestrator.repo.worktreeindex import WorktreeIndex
from parallel_orchestrator.service.intake import ChangeIntake
from parallel_orchestrator.watch.watcher import Chunk

DEBOUNCE_S = 0.05


class Rig:
    """Two worktree folders ``a`` and ``b`` (``b`` has an index.lock path) and an intake."""

    def __init__(self, tmp_path: Path, *, gitignore: bool = False) -> None:
        self.a, self.b = tmp_path / "a", tmp_path / "b"
        self.a.mkdir(exist_ok=True)
        self.b.mkdir(exist_ok=True)
        self.lock = tmp_path / "b.index.lock"
        self.index = WorktreeIndex({"a": str(self.a), "b": str(self.b)}, {"b": str(self.lock)}, ())
        self.batches: list[Batch] = []
        self.rediscovered = 0
        self.tasks: set[asyncio.Task[Any]] = set()
        self.intake = ChangeIntake(
            debounce_s=DEBOUNCE_S,
            max_wait_s=5.0,
            batch_id_prefix="t-b",
            index=lambda: self.index,
            ignore=["*.tmp"],
            dispatch=self.batches.append,
            spawn=self.spawn,
            respect_gitignore=lambda: gitignore,
            rediscover=self.on_rediscover,
            log=structlog.get_logger,
        )

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def on_rediscover(self) -> None:
        self.rediscovered += 1

    def feed(self, *changes: tuple[Change, Path]) -> None:
        now = time.monotonic()
        self.intake.on_chunk(Chunk({(c, str(p)) for c, p in changes}, now, now))


async def wait_for(cond: Callable[[], bool], timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        await asyncio.sleep(0.01)
    return cond()


async def test_one_burst_in_two_worktrees_is_one_batch_without_ignored_paths(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path)
    (rig.a / "x.py").write_text("1")
    (rig.b / "y.py").write_text("2")
    rig.feed(
        (Change.added, rig.a / "x.py"),
        (Change.modified, rig.a / ".git" / "index"),
        (Change.modified, rig.a / "scratch.tmp"),
    )
    rig.feed((Change.modified, rig.b / "y.py"))
    assert await wait_for(lambda: bool(rig.batches))
    await asyncio.sleep(DEBOUNCE_S * 4)  # nothing else follows
    assert [b.changes for b in rig.batches] == [{"a": {"x.py"}, "b": {"y.py"}}]
    assert rig.rediscovered == 0


async def test_a_created_file_gone_again_by_the_close_is_not_a_change(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    (rig.a / "keep.py").write_text("1")
    rig.feed((Change.added, rig.a / "gone.py"), (Change.modified, rig.a / "keep.py"))
    assert await wait_for(lambda: bool(rig.batches))
    assert rig.batches[0].changes == {"a": {"keep.py"}}


async def test_changes_wait_for_the_git_lock_and_leave_when_its_removal_is_seen(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path)
    rig.lock.write_text("")
    (rig.b / "y.py").write_text("2")
    rig.feed((Change.added, rig.lock), (Change.modified, rig.b / "y.py"))
    await asyncio.sleep(DEBOUNCE_S * 6)
    assert rig.batches == []  # held while git works
    rig.lock.unlink()
    rig.feed((Change.deleted, rig.lock))
    assert await wait_for(lambda: bool(rig.batches))
    assert rig.batches[0].changes == {"b": {"y.py"}}
    assert rig.batches[0].reason == "git_op_finished"


async def test_a_root_change_asks_for_rediscovery_and_is_no_edit(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.feed((Change.deleted, rig.a))
    assert rig.rediscovered == 1
    await asyncio.sleep(DEBOUNCE_S * 4)
    assert rig.batches == []


async def test_gitignored_paths_are_dropped_before_the_batch(tmp_path: Path) -> None:
    rig = Rig(tmp_path, gitignore=True)
    subprocess.run(["git", "init", "-q", str(rig.a)], check=True)
    (rig.a / ".gitignore").write_text("*.log\n")
    (rig.a / "x.py").write_text("1")
    (rig.a / "run.log").write_text("1")
    rig.intake.track("a", rig.a)
    rig.feed((Change.modified, rig.a / "x.py"), (Change.modified, rig.a / "run.log"))
    assert await wait_for(lambda: bool(rig.batches))
    assert rig.batches[0].changes == {"a": {"x.py"}}
    rig.intake.close()
    await asyncio.gather(*rig.tasks)
