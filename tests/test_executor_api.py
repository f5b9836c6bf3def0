"""The batch tool's executor API, kept backwards compatible, on real scripts."""

from __future__ import annotations

import asyncio
import json
import stat
import subprocess
import textwrap
from pathlib import Path

import pytest

from parallel_orchestrator.async_test_executor import AsyncTestExecutor, confidence_for
from parallel_orchestrator.config import (
    FalsificationConfig,
    Hypothesis,
    HypothesisStatus,
    TestExecutionResult,
    TestResult,
)
from parallel_orchestrator.jobs.runner import cut_marker
from parallel_orchestrator.test_executor import TestExecutor


def hyp(hid: str, estimate: float = 0.0) -> Hypothesis:
    return Hypothesis(id=hid, description=f"hypothesis {hid}", estimated_test_time=estimate)


def add_script(worktree: Path, hid: str, body: str) -> Path:
    path = worktree / ".falsification" / f"test_{hid}.sh"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + textwrap.dedent(body).lstrip())
    path.chmod(0o755)
    return path


@pytest.fixture
def worktree(tmp_path: Path) -> Path:
    wt = tmp_path / "repo-hyp"
    wt.mkdir()
    add_script(wt, "ok", "echo passing; pwd")
    add_script(wt, "bad", "echo failing >&2; exit 3")
    add_script(wt, "slow", "sleep 30")
    add_script(wt, "streams", "echo out; echo err >&2")
    return wt


def test_enums_and_defaults_match_the_original() -> None:
    assert [s.value for s in HypothesisStatus] == [
        "pending",
        "testing",
        "falsified",
        "supported",
        "inconclusive",
    ]
    assert [r.value for r in TestResult] == ["pass", "fail", "timeout", "error"]
    h = Hypothesis(id="h", description="d")
    assert (h.test_strategy, h.expected_behavior, h.estimated_test_time) == ("", "", 0.0)
    assert (h.probability, h.impact, h.test_complexity) == (0.5, 0.5, 0.5)
    assert h.status is HypothesisStatus.PENDING
    assert h.test_results is None and h.confidence_score is None and h.dependencies == []
    assert Hypothesis(id="x", description="y").dependencies is not h.dependencies
    c = FalsificationConfig()
    assert (c.test_timeout, c.min_parallel_time, c.test_command) == (300, 60, "pytest")
    assert c.max_concurrent_tests == 5
    assert (c.worktree_creation_time, c.session_startup_time) == (8.0, 5.0)
    assert (c.environment_setup_time, c.cleanup_time) == (5.0, 3.0)
    assert (c.parallel_overhead_s, c.per_hypothesis_overhead_s, c.kill_grace_s) == (7, 16, 5)
    r = TestExecutionResult(hypothesis_id="h", result=TestResult.PASS, duration=1.0)
    assert (r.stdout, r.stderr, r.exit_code, r.worktree_path, r.error_message) == (
        "",
        "",
        0,
        "",
        "",
    )
    assert r.metrics == {}


async def test_pass_and_fail(worktree: Path) -> None:
    ex = AsyncTestExecutor()
    ok = await ex.execute_single_async(hyp("ok"), worktree)
    assert (ok.result, ok.exit_code, ok.hypothesis_id) == (TestResult.PASS, 0, "ok")
    assert ok.stdout == f"passing\n{worktree}\n"  # ran in the worktree
    assert ok.worktree_path == str(worktree)
    assert ok.metrics["confidence"] == 0.6
    bad = await ex.execute_single_async(hyp("bad"), str(worktree))
    assert (bad.result, bad.exit_code) == (TestResult.FAIL, 3)
    assert (bad.stdout, bad.stderr) == ("", "failing\n")  # it wrote to stderr only
    assert bad.metrics["confidence"] == 0.6


async def test_stdout_and_stderr_are_separate_like_the_original(worktree: Path) -> None:
    """The original returned subprocess.run(capture_output=True)'s two streams."""
    res = await AsyncTestExecutor().execute_single_async(hyp("streams"), worktree)
    assert (res.result, res.stdout, res.stderr) == (TestResult.PASS, "out\n", "err\n")
    sync = TestExecutor().execute_single(hyp("streams"), worktree)
    assert (sync.stdout, sync.stderr) == ("out\n", "err\n")
    [par] = TestExecutor().execute_parallel([hyp("streams")], {"streams": worktree})
    assert (par.stdout, par.stderr) == ("out\n", "err\n")


def test_large_output_is_bounded_head_and_tail(worktree: Path) -> None:
    add_script(worktree, "loud", "echo start; seq 1 450000 >&2; echo end")
    full = subprocess.run(["seq", "1", "450000"], capture_output=True, check=True).stdout
    assert len(full) > 3_000_000
    cap = FalsificationConfig().max_output_bytes
    assert cap == 1 << 20
    res = TestExecutor().execute_single(hyp("loud"), worktree)
    assert res.result is TestResult.PASS
    assert res.stdout == "start\nend\n"
    cut = len(full) - cap
    assert res.stderr == (full[: cap // 2] + cut_marker(cut) + full[-cap // 2 :]).decode()
    small = AsyncTestExecutor(FalsificationConfig(max_output_bytes=1000)).execute_single(
        hyp("loud"), worktree
    )
    assert small.stderr == (full[:500] + cut_marker(len(full) - 1000) + full[-500:]).decode()


async def test_timeout_is_124_and_kills(worktree: Path) -> None:
    ex = AsyncTestExecutor(FalsificationConfig(test_timeout=0.5, kill_grace_s=0.5))
    res = await ex.execute_single_async(hyp("slow"), worktree)
    assert (res.result, res.exit_code) == (TestResult.TIMEOUT, 124)
    assert res.metrics["confidence"] == 0.3
    assert res.duration < 15


async def test_missing_script_is_error_not_found(worktree: Path) -> None:
    res = await AsyncTestExecutor().execute_single_async(hyp("nope"), worktree)
    assert res.result is TestResult.ERROR
    assert "not found" in res.error_message
    assert (res.stdout, res.stderr, res.exit_code) == ("", "", -1)
    assert res.metrics["confidence"] == 0.2


def test_unrunnable_script_is_error_with_the_reason(worktree: Path) -> None:
    add_script(worktree, "noexec", "echo never").chmod(0o644)
    res = TestExecutor().execute_single(hyp("noexec"), worktree)
    assert res.result is TestResult.ERROR
    assert "Permission denied" in res.error_message
    assert (res.stdout, res.stderr, res.exit_code) == ("", "", -1)


def test_confidence_table() -> None:
    assert confidence_for(TestResult.TIMEOUT, 100) == 0.3
    assert confidence_for(TestResult.ERROR, 0.1) == 0.2
    assert confidence_for(TestResult.PASS, 4.99) == 0.6
    assert confidence_for(TestResult.FAIL, 4.99) == 0.6
    assert confidence_for(TestResult.PASS, 5.0) == 0.85
    assert confidence_for(TestResult.FAIL, 60) == 0.85


@pytest.mark.parametrize(
    ("estimates", "expected"),
    [
        ([], False),
        ([1000], False),  # one hypothesis: nothing to parallelise
        ([10, 10], False),  # 20 > 10 + 7 + 32 ? no
        ([39, 39], False),  # 78 > 39 + 7 + 32 = 78 ? no (strictly greater)
        ([39.5, 39.5], True),
        ([40, 40], True),
        ([100, 100, 100], True),  # 300 > 100 + 7 + 48
        ([60, 1, 1], False),
    ],
)
def test_should_parallelize(estimates: list[float], expected: bool) -> None:
    hs = [hyp(f"h{i}", e) for i, e in enumerate(estimates)]
    assert AsyncTestExecutor().should_parallelize(hs) is expected
    assert TestExecutor().should_parallelize(hs) is expected


def test_should_parallelize_uses_config_overheads() -> None:
    cfg = FalsificationConfig(parallel_overhead_s=0, per_hypothesis_overhead_s=0)
    assert AsyncTestExecutor(cfg).should_parallelize([hyp("a", 10), hyp("b", 10)]) is True


async def test_parallel_results_in_input_order_and_missing_worktree(worktree: Path) -> None:
    ex = AsyncTestExecutor()
    hs = [hyp("bad"), hyp("ghost"), hyp("ok")]
    results = await ex.execute_parallel_async(hs, {"ok": worktree, "bad": worktree})
    assert [r.hypothesis_id for r in results] == ["bad", "ghost", "ok"]
    assert [r.result for r in results] == [TestResult.FAIL, TestResult.ERROR, TestResult.PASS]
    assert "ghost" in results[1].error_message


async def test_max_concurrent_tests_is_honoured(tmp_path: Path) -> None:
    wt = tmp_path / "wt"
    (wt / "running").mkdir(parents=True)
    (wt / "counts").mkdir()
    ids = [f"c{i}" for i in range(6)]
    for hid in ids:
        # Each script registers itself, records how many are registered, then leaves.
        add_script(
            wt,
            hid,
            f"""
            touch running/{hid}
            ls running | wc -l > counts/{hid}
            sleep 0.3
            rm running/{hid}
            """,
        )
    ex = AsyncTestExecutor(FalsificationConfig(max_concurrent_tests=2))
    results = await ex.execute_parallel_async([hyp(h) for h in ids], dict.fromkeys(ids, wt))
    assert all(r.result is TestResult.PASS for r in results)
    counts = [int((wt / "counts" / h).read_text()) for h in ids]
    assert max(counts) <= 2, counts


def test_sync_api_and_wrapper_delegate(worktree: Path) -> None:
    cfg = FalsificationConfig(max_concurrent_tests=3)
    wrapper = TestExecutor(cfg)
    assert wrapper.config is cfg and wrapper.async_executor.config is cfg
    single = wrapper.execute_single(hyp("ok"), worktree)
    assert single.result is TestResult.PASS
    many = wrapper.execute_parallel([hyp("ok"), hyp("bad")], {"ok": worktree, "bad": worktree})
    assert [r.result for r in many] == [TestResult.PASS, TestResult.FAIL]
    direct = AsyncTestExecutor(cfg).execute_single(hyp("bad"), worktree)
    assert (direct.result, direct.exit_code) == (TestResult.FAIL, 3)


async def test_sync_api_works_inside_a_running_loop(worktree: Path) -> None:
    res = AsyncTestExecutor().execute_single(hyp("ok"), worktree)  # blocks this loop, by design
    assert res.result is TestResult.PASS
    assert asyncio.get_running_loop().is_running()


def test_to_dict_is_json_friendly(worktree: Path) -> None:
    res = AsyncTestExecutor().execute_single(hyp("bad"), worktree)
    d = res.to_dict()
    assert d["result"] == "fail" and d["exit_code"] == 3 and d["hypothesis_id"] == "bad"
    assert d["worktree_path"] == str(worktree)
    assert set(d) == {
        "hypothesis_id",
        "result",
        "duration",
        "stdout",
        "stderr",
        "exit_code",
        "worktree_path",
        "error_message",
        "metrics",
    }
    assert json.loads(json.dumps(d)) == d
    e = TestExecutionResult(
        hypothesis_id="x",
        result=TestResult.ERROR,
        duration=0.0,
        metrics={"status": HypothesisStatus.FALSIFIED},
    ).to_dict()
    assert e["result"] == "error" and e["metrics"] == {"status": "falsified"}


def test_log_dir_gives_one_private_log_per_hypothesis(worktree: Path, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    res = AsyncTestExecutor(FalsificationConfig(log_dir=logs)).execute_single(hyp("ok"), worktree)
    log = logs / "ok.log"
    assert res.metrics["log_path"] == str(log)
    assert log.read_text().startswith("passing\n")
    assert stat.S_IMODE(log.stat().st_mode) == 0o600


def test_no_log_files_by_default(worktree: Path, tmp_path: Path) -> None:
    before = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    AsyncTestExecutor().execute_single(hyp("ok"), worktree)
    assert sorted(p for p in tmp_path.rglob("*") if p.is_file()) == before


def test_api_test_classes_are_not_collected_by_pytest() -> None:
    # pytest must not mistake the API's Test* classes for test classes.
    assert TestExecutor.__test__ is False  # type: ignore[attr-defined]
    assert TestResult.__test__ is False  # type: ignore[attr-defined]
    assert TestExecutionResult.__test__ is False  # type: ignore[attr-defined]


def test_missing_script_with_a_log_dir_leaves_no_log(worktree: Path, tmp_path: Path) -> None:
    """Without a log the spawn failing tells a missing script; with one, it is checked first."""
    logs = tmp_path / "logs"
    res = AsyncTestExecutor(FalsificationConfig(log_dir=logs)).execute_single(hyp("nope"), worktree)
    assert (res.result, res.exit_code) == (TestResult.ERROR, -1)
    assert res.error_message == f"test script not found: {worktree}/.falsification/test_nope.sh"
    assert not logs.exists()


async def test_missing_worktree_is_error_not_found(tmp_path: Path) -> None:
    gone = tmp_path / "gone"
    [res] = await AsyncTestExecutor().execute_parallel_async([hyp("ok")], {"ok": gone})
    assert (res.result, res.worktree_path) == (TestResult.ERROR, str(gone))
    assert res.error_message == f"test script not found: {gone}/.falsification/test_ok.sh"


async def test_script_path_and_env_match_the_original(worktree: Path) -> None:
    """Paths are built as strings now; they must be what Path built before."""
    add_script(worktree, "env", 'echo "$0|$PO_HYPOTHESIS|$PO_WORKTREE|$PO_JOB_ID"')
    for given in (worktree, f"{worktree}/", f"{worktree}/./"):
        [res] = await AsyncTestExecutor().execute_parallel_async([hyp("env")], {"env": given})
        script, hid, wt, job_id = res.stdout.strip().split("|")
        assert script == str(AsyncTestExecutor.script_path(hyp("env"), worktree))
        assert (hid, wt, res.worktree_path) == ("env", str(worktree), str(worktree))
        assert job_id == res.metrics["job_id"] and job_id.startswith("exec-")


async def test_normal_path_touches_no_proc(worktree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Library use (no subreaper), exit 0, group empty, pipes closed: no /proc scan, no sweep.

    Scanning /proc costs about 0.5 ms per job on a machine without task/*/children. The
    EOF grace is raised so that a loaded machine cannot push a job onto the slow path.
    """
    from parallel_orchestrator.jobs import janitor, runner

    def forbidden(*_args: object, **_kwargs: object) -> object:
        raise AssertionError("the normal path touched /proc")

    for name in ("read_proc", "all_pids", "children_of_self", "sweep_marked", "sweep_adopted"):
        monkeypatch.setattr(janitor, name, forbidden)
    monkeypatch.setattr(runner, "EOF_GRACE_S", 30.0)
    ids = [f"n{i}" for i in range(24)]
    for hid in ids:
        add_script(worktree, hid, "echo out; echo err >&2")
    ex = AsyncTestExecutor(FalsificationConfig(max_concurrent_tests=8))
    results = await ex.execute_parallel_async([hyp(h) for h in ids], dict.fromkeys(ids, worktree))
    assert [(r.result, r.stdout, r.stderr) for r in results] == [
        (TestResult.PASS, "out\n", "err\n")
    ] * len(ids)
