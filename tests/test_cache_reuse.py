"""In-flight sharing and storing on real worktrees: one run per key, nothing stored for
inputs that changed while the job ran, changes after its end do not matter."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from harness import make_repo
from parallel_orchestrator.cache.listing import IgnoreRules
from parallel_orchestrator.cache.reuse import ResultReuse
from parallel_orchestrator.cache.store import CachedResult
from parallel_orchestrator.settings.loader import ScriptSettings

SCRIPT = ScriptSettings(name="tests", command=("true",), watch=("**/*.py",))
RULES = IgnoreRules(globs=(), respect_gitignore=True)


def result_of(key: str, hyp: str, result: str = "pass") -> CachedResult:
    return CachedResult(key, "s-j1", hyp, "tests", result, 0, 0.5, "ok\n")


async def test_four_identical_worktrees_share_one_run(tmp_path: Path) -> None:
    _, trees = make_repo(tmp_path / "r", ("h1", "h2", "h3", "h4"))
    reuse = ResultReuse(tmp_path / "state", RULES)
    reuse.set_worktrees({h: trees[h] for h in ("h1", "h2", "h3", "h4")})
    keys = [await reuse.key(h, SCRIPT) for h in ("h1", "h2", "h3", "h4")]
    assert None not in keys and len({k.value for k in keys}) == 1
    key = keys[0]
    assert await reuse.share(key.value) == (None, True)  # the leader
    waiters = [asyncio.ensure_future(reuse.share(key.value)) for _ in range(3)]
    await asyncio.sleep(0)
    assert not any(w.done() for w in waiters) and reuse.running(key.value)
    log = tmp_path / "run.log"
    log.write_bytes(b"full output\n")
    await reuse.settle(key, "h1", SCRIPT, result_of(key.value, "h1"), log)
    for waiter in waiters:
        hit, leader = await waiter
        assert not leader and hit is not None
        assert (hit.entry.job_id, hit.log) == ("s-j1", b"full output\n")
    later = ResultReuse(tmp_path / "state", RULES)  # a restart
    hit, leader = await later.share(key.value)
    assert hit is not None and not leader
    reuse.close()
    later.close()


async def test_changes_during_the_run_prevent_storing_later_ones_do_not(tmp_path: Path) -> None:
    _, trees = make_repo(tmp_path / "r", ("h1",))
    app = trees["h1"] / "src/app.py"
    reuse = ResultReuse(tmp_path / "state", RULES)
    reuse.set_worktrees({"h1": trees["h1"]})
    key = await reuse.key("h1", SCRIPT)
    assert key is not None
    assert await reuse.share(key.value) == (None, True)
    waiter = asyncio.ensure_future(reuse.share(key.value))
    await asyncio.sleep(0)  # the waiter joins the running job
    app.write_text("VALUE = 2\n")  # edited while "running"
    reuse.changed("h1", ["src/app.py"], time.monotonic())
    ended = time.monotonic()
    await reuse.settle(key, "h1", SCRIPT, result_of(key.value, "h1"), None, ended)
    assert await waiter == (None, False)  # the waiter runs on its own
    assert reuse.store.keys() == []

    key2 = await reuse.key("h1", SCRIPT)
    assert key2 is not None and key2.value != key.value
    assert await reuse.share(key2.value) == (None, True)
    ended = time.monotonic()
    app.write_text("VALUE = 3\n")  # the next save, after the job's end
    reuse.changed("h1", ["src/app.py"], ended + 1.0)
    await reuse.settle(key2, "h1", SCRIPT, result_of(key2.value, "h1"), None, ended)
    assert reuse.store.keys() == [key2.value]
    reuse.close()


async def test_a_timeout_is_never_shared_or_stored(tmp_path: Path) -> None:
    _, trees = make_repo(tmp_path / "r", ("h1",))
    reuse = ResultReuse(tmp_path / "state", RULES, watched=False)
    reuse.set_worktrees({"h1": trees["h1"]})
    key = await reuse.key("h1", SCRIPT)
    assert key is not None
    assert await reuse.share(key.value) == (None, True)
    waiter = asyncio.ensure_future(reuse.share(key.value))
    await asyncio.sleep(0)  # the waiter joins the running job
    await reuse.settle(key, "h1", SCRIPT, result_of(key.value, "h1", "timeout"), None)
    assert await waiter == (None, False)
    assert reuse.store.keys() == []
    assert await reuse.share(key.value) == (None, True)
    reuse.abandon(key.value)  # a cancelled leader lets the next one lead
    assert await reuse.share(key.value) == (None, True)
    reuse.close()


async def test_a_cancelled_leader_hands_the_lead_to_one_waiter(tmp_path: Path) -> None:
    _, trees = make_repo(tmp_path / "r", ("h1",))
    reuse = ResultReuse(tmp_path / "state", RULES)
    reuse.set_worktrees({"h1": trees["h1"]})
    key = await reuse.key("h1", SCRIPT)
    assert key is not None
    assert await reuse.share(key.value) == (None, True)
    waiters = [asyncio.ensure_future(reuse.share(key.value)) for _ in range(3)]
    await asyncio.sleep(0)
    reuse.abandon(key.value)  # the leader was cancelled (a newer change, say)
    done, pending = await asyncio.wait(waiters, timeout=10, return_when=asyncio.FIRST_COMPLETED)
    assert [w.result() for w in done] == [(None, True)] and len(pending) == 2
    log = tmp_path / "run.log"
    log.write_bytes(b"out\n")
    await reuse.settle(key, "h1", SCRIPT, result_of(key.value, "h1"), log)
    for waiter in pending:
        hit, leader = await waiter
        assert hit is not None and not leader
    reuse.close()
