"""Side by side without collisions, part by part: the config keys, the port blocks, and
the result-change hooks with real hook processes."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import sys
import threading
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from parallel_orchestrator.jobs.ports import PortBlocks, resized
from parallel_orchestrator.jobs.tmpdirs import JobTempDirs
from parallel_orchestrator.report.eventlog import get_logger
from parallel_orchestrator.report.hooks import Change, ResultHistory, ResultHooks, is_news
from parallel_orchestrator.settings.loader import ConfigError, NotifySettings, load_settings

SCRIPT = '[[scripts]]\nname = "t"\ncommand = ["true"]\n'


def load(folder: Path, text: str):
    path = folder / "po.toml"
    path.write_text(text)
    path.chmod(0o600)
    return load_settings(path, cwd=folder, env={"HOME": "/home/tester"})


def errors(folder: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(folder, text)
    return caught.value.errors


# -- settings -------------------------------------------------------------------------


def test_defaults(tmp_path: Path) -> None:
    s = load(tmp_path, SCRIPT)
    assert s.daemon.port_range == (20000, 40000)
    assert s.scripts[0].exclusive is False
    assert s.notify == NotifySettings(command=(), desktop=False)


def test_keys_are_read(tmp_path: Path) -> None:
    s = load(
        tmp_path,
        "[daemon]\nport_range = [30000, 30500]\n"
        '[notify]\ncommand = ["notify-me", "--flag"]\ndesktop = true\n'
        + SCRIPT
        + "exclusive = true\n",
    )
    assert s.daemon.port_range == (30000, 30500)
    assert s.scripts[0].exclusive is True
    assert s.notify == NotifySettings(command=("notify-me", "--flag"), desktop=True)
    assert load(tmp_path, "[notify]\ncommand = \"a 'b c'\"\n" + SCRIPT).notify.command == (
        "a",
        "b c",
    )


@pytest.mark.parametrize(
    "value",
    ["[20000]", "[40000, 20000]", "[20000, 20050]", "[80, 2000]", "[20000, 70000]", '"20000"'],
)
def test_bad_port_range_names_the_key(tmp_path: Path, value: str) -> None:
    (only,) = errors(tmp_path, f"[daemon]\nport_range = {value}\n" + SCRIPT)
    assert "daemon.port_range: expected [low, high]" in only


def test_bad_notify_and_exclusive_values(tmp_path: Path) -> None:
    found = errors(
        tmp_path,
        '[notify]\ncommand = [1]\ndesktop = "yes"\nsound = true\n' + SCRIPT + 'exclusive = "y"\n',
    )
    text = "\n".join(found)
    assert "notify.command: expected" in text
    assert "notify.desktop: expected true or false" in text
    assert "notify.sound: unknown key" in text
    assert "scripts[0].exclusive: expected true or false" in text


# -- port blocks ----------------------------------------------------------------------


def test_port_blocks_are_disjoint_stable_and_in_range() -> None:
    blocks = PortBlocks((20000, 40000))
    hyps = [f"hyp-{i}" for i in range(200)]
    bases = {h: blocks.base_for(h, hyps) for h in hyps}
    assert all(b is not None and b >= 20000 and b + 100 <= 40000 for b in bases.values())
    assert len(set(bases.values())) == 200  # every block, each once
    assert all(b % 100 == 0 for b in bases.values())  # type: ignore[operator]
    assert {h: blocks.base_for(h, hyps) for h in hyps} == bases  # stable
    assert blocks.base_for("hyp-201", hyps) is None  # full, all live
    # A hypothesis that went away gives its block up only when one is needed.
    assert blocks.base_for("hyp-201", hyps[1:]) == bases["hyp-0"]


def test_port_block_depends_on_the_id_not_the_order() -> None:
    one, two = PortBlocks((20000, 40000)), PortBlocks((20000, 40000))
    assert one.base_for("alpha") is not None
    assert one.base_for("beta") is not None
    two.base_for("beta")
    assert two.base_for("alpha") == one.base_for("alpha")  # usually the same across restarts
    assert resized(one, (20000, 40000)) is one
    fresh = resized(one, (50000, 50200))
    assert fresh.capacity == 2 and 50000 <= fresh.base_for("alpha") <= 50100  # type: ignore[operator]


# -- what is news ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("previous", "result", "news"),
    [
        ("pass", "fail", True),
        ("fail", "pass", True),
        ("pass", "timeout", True),
        ("fail", "error", True),
        (None, "error", True),
        ("error", "pass", True),
        ("pass", "pass", False),
        ("fail", "fail", False),
        ("timeout", "timeout", False),
        ("pass", "cancelled", False),
        (None, "pass", False),
        (None, "fail", False),
    ],
)
def test_is_news(previous: str | None, result: str, news: bool) -> None:
    assert is_news(previous, result) is news


def test_previous_skips_cancelled() -> None:
    history = ResultHistory()
    history.seed("h", "t", "pass")
    assert history.record("h", "t", "cancelled") == (False, "pass")
    assert history.record("h", "t", "fail") == (True, "pass")
    assert history.record("h", "t", "cancelled") == (False, "fail")
    assert history.record("h", "t", "fail") == (False, "fail")
    assert history.record("h", "t", "pass") == (True, "fail")


# -- hook processes -------------------------------------------------------------------

RECORDER = """
import json, os, sys
data = sys.stdin.read()
with open(sys.argv[1], "a") as f:
    f.write(json.dumps({"stdin": data, "pgid": os.getpgrp(), "pid": os.getpid()}) + "\\n")
"""


def change(result: str = "fail") -> Change:
    return Change("hyp-1", "tests", "pass", result, "s-j7", None)


async def settle(hooks: ResultHooks, timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while hooks.busy:
            await asyncio.sleep(0.01)


async def test_hook_gets_the_json_on_stdin_in_its_own_group(tmp_path: Path) -> None:
    out = tmp_path / "calls.jsonl"
    argv = (sys.executable, "-c", RECORDER, os.fsdecode(out))
    hooks = ResultHooks(NotifySettings(command=argv), {**os.environ, "NOTIFY_SOCKET": "x"}, None)
    hooks.fire(change())
    await settle(hooks)
    (call,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert json.loads(call["stdin"]) == {
        "hypothesis": "hyp-1",
        "script": "tests",
        "previous": "pass",
        "result": "fail",
        "job_id": "s-j7",
        "tests": None,
    }
    assert call["pgid"] == call["pid"] != os.getpgrp()


async def test_failing_missing_and_slow_hooks_log_notify_failed(tmp_path: Path) -> None:
    marker = tmp_path / "slow-started"
    slow = (
        sys.executable,
        "-c",
        f"import time; open({os.fsdecode(marker)!r}, 'w').close(); time.sleep(60)",
    )
    cases = {
        "exit": (sys.executable, "-c", "import sys; sys.stderr.write('boom'); sys.exit(3)"),
        "missing": (os.fsdecode(tmp_path / "no-such-hook"),),
        "slow": slow,
    }
    with capture_logs() as logs:
        for argv in cases.values():
            hooks = ResultHooks(
                NotifySettings(command=argv), os.environ, get_logger(), timeout_s=1.0
            )
            started = time.monotonic()
            hooks.fire(change())
            await settle(hooks)
    failed = [e for e in logs if e["event"] == "notify_failed"]
    assert len(failed) == 3, logs
    by_kind = dict(zip(cases, failed, strict=True))
    assert by_kind["exit"]["exit_code"] == 3 and by_kind["exit"]["stderr_tail"] == "boom"
    assert "cannot run" in by_kind["missing"]["error"]
    assert "killed after 1 s" in by_kind["slow"]["error"]
    assert time.monotonic() - started < 10
    assert marker.exists()
    for e in failed:
        assert (e["hypothesis"], e["script"], e["job_id"]) == ("hyp-1", "tests", "s-j7")


async def test_desktop_without_notify_send_says_so_once(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": os.fsdecode(tmp_path)}  # no notify-send here
    with capture_logs() as logs:
        hooks = ResultHooks(NotifySettings(desktop=True), env, get_logger())
        hooks.fire(change())
        hooks.fire(change("pass"))
        await settle(hooks)
    assert [e["event"] for e in logs] == ["notify_desktop_unavailable"]


async def test_desktop_runs_notify_send(tmp_path: Path) -> None:
    out = tmp_path / "desktop.txt"
    fake = tmp_path / "notify-send"
    fake.write_text(f'#!/bin/sh\nprintf "%s|%s\\n" "$1" "$2" >> {out}\n')
    fake.chmod(0o755)
    hooks = ResultHooks(
        NotifySettings(desktop=True), {**os.environ, "PATH": os.fsdecode(tmp_path)}, None
    )
    hooks.fire(Change("hyp-1", "tests", "pass", "fail", "j1", {"failing": ["t::a", "t::b"]}))
    await settle(hooks)
    assert out.read_text() == "hyp-1/tests: pass -> fail|t::a\nt::b\n"


async def test_close_kills_running_hooks(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    argv = (
        sys.executable,
        "-c",
        f"import os, time; open({os.fsdecode(pidfile)!r}, 'w').write(str(os.getpid()));"
        " time.sleep(60)",
    )
    hooks = ResultHooks(NotifySettings(command=argv), os.environ, None)
    hooks.fire(change())
    async with asyncio.timeout(20):
        while not pidfile.exists() or not pidfile.read_text():
            await asyncio.sleep(0.01)
    pid = int(pidfile.read_text())
    await hooks.close()
    assert not hooks.busy
    async with asyncio.timeout(10):
        while Path(f"/proc/{pid}").exists():
            await asyncio.sleep(0.01)


# -- job temp folders -----------------------------------------------------------------


async def test_job_temp_dirs_are_fresh_private_and_removed(tmp_path: Path) -> None:
    state, base = tmp_path / "state", tmp_path / "tmp"
    state.mkdir()
    base.mkdir()
    dirs = JobTempDirs(base, state)
    assert dirs.open() is None
    one, two = dirs.create("s-j1"), dirs.create("s-j2")
    assert one != two and one.parent == two.parent == dirs.root
    assert stat.S_IMODE(one.stat().st_mode) == 0o700
    assert stat.S_IMODE(one.parent.stat().st_mode) == 0o700
    locked = one / "a" / "b"
    locked.mkdir(parents=True)
    (locked / "f").write_text("x")
    locked.chmod(0o500)
    (one / "a").chmod(0o500)  # a test that made its folders read-only
    await dirs.remove(one)
    assert not one.exists() and two.exists()
    for i in range(200):  # past the on-the-loop limit: removed in a thread of its own
        (two / f"f{i}").write_text("x")
    (two / "sub").mkdir()
    (two / "sub").chmod(0o500)
    before = threading.active_count()
    await dirs.remove(two)
    assert not two.exists()
    two.mkdir()  # for close() below
    assert threading.active_count() <= before + 1  # no pool left behind
    await dirs.close()
    assert not two.parent.exists()
    assert list(base.iterdir()) == []


def test_a_crashed_daemons_temp_root_goes_at_the_next_start(tmp_path: Path) -> None:
    state, base = tmp_path / "state", tmp_path / "tmp"
    state.mkdir()
    base.mkdir()
    crashed = JobTempDirs(base, state)
    crashed.open()
    left = crashed.create("s-j1")
    (left / "data").write_text("x")
    successor = JobTempDirs(base, state)
    assert successor.open() == crashed.root
    assert not left.exists() and not crashed.root.exists()  # type: ignore[union-attr]
    assert successor.root is not None and successor.root.is_dir()


def test_a_recorded_root_that_is_not_ours_is_left_alone(tmp_path: Path) -> None:
    state, base = tmp_path / "state", tmp_path / "tmp"
    state.mkdir()
    base.mkdir()
    precious = tmp_path / "parallel-orchestrator-precious"
    precious.mkdir()
    (precious / "keep").write_text("x")
    link = base / "parallel-orchestrator-link"
    link.symlink_to(precious)
    for recorded in (link, tmp_path / "elsewhere", Path("relative/parallel-orchestrator-x")):
        (state / "tmproot").write_text(os.fsdecode(recorded) + "\n")
        assert JobTempDirs(base, state).open() is None
    assert (precious / "keep").exists()


class _Flushed:
    error = ""

    def flush(self) -> None:
        pass


def test_a_swept_wait_marker_is_answered_only_after_the_sweeps_sentinel_came_through(
    tmp_path: Path,
) -> None:
    """A ``wait`` that began during start-up: its marker is found by listing the folder,
    but the edit made before it may still be in the watcher's queue. Answering at the
    listing gave the verdict of the state before that edit (1 run in 5 under load); the
    marker waits for a sentinel the sweep drops behind it in the same queue."""
    from parallel_orchestrator.watch.waitmarks import WaitMarkers

    markers = WaitMarkers(tmp_path / "wait", _Flushed())
    markers.prepare()
    early = markers.folder / "123-abc.wait"
    early.write_bytes(b"")
    markers.sweep()
    markers.settle(quiet=True)  # the queue may still hold the edit: not yet
    assert early.exists() and not markers.pending
    (sentinel,) = [p for p in markers.folder.iterdir() if p != early]
    markers.seen(os.fsdecode(sentinel))  # the watcher delivers it: all before it is in
    markers.settle(quiet=False)  # the edit it vouches for is still being batched
    assert early.exists()
    markers.settle(quiet=True)
    assert not early.exists() and not sentinel.exists()
    assert markers.acknowledged == 2


def test_a_sweep_of_an_empty_wait_folder_drops_nothing(tmp_path: Path) -> None:
    from parallel_orchestrator.watch.waitmarks import WaitMarkers

    markers = WaitMarkers(tmp_path / "wait", _Flushed())
    markers.prepare()
    markers.sweep()
    assert list(markers.folder.iterdir()) == [] and not markers.pending
