"""Partial runs (pytest-testmon): reports merged into the cell's per-test view, removed
tests dropped, on real files; and through the real daemon with a reused result."""

from __future__ import annotations

import json
from pathlib import Path

from harness import DaemonProcess, make_repo, write_config
from parallel_orchestrator.report import junit
from parallel_orchestrator.report.partialrun import merged_report, runs_partially
from parallel_orchestrator.report.results import results_document, write_results


def test_runs_partially() -> None:
    assert runs_partially(["python", "-m", "pytest", "-q", "--testmon"])
    assert runs_partially(["pytest", "--lf"])
    assert not runs_partially(["python", "-m", "pytest", "-q", "--junitxml={junit}"])


def test_merge_keeps_unrun_tests_and_drops_removed_ones(tmp_path: Path) -> None:
    wt = tmp_path / "wt"
    (wt / "tests").mkdir(parents=True)
    (wt / "tests" / "test_a.py").write_text("def test_one(): pass\ndef test_two(): pass\n")
    (wt / "tests" / "test_b.py").write_text("class TestK:\n    async def test_k(self): pass\n")
    state = tmp_path / "state"
    previous = {
        "tests.test_a::test_one": "passed",
        "tests.test_a::test_two": "failed",
        "tests.test_a::test_gone": "failed",  # its def was deleted
        "tests.test_b.TestK::test_k[1]": "passed",
        "tests.test_removed::test_x": "passed",  # its module was deleted
        "other_layout::test_y": "failed",  # cannot tell: kept
    }
    write_results(state, "h", "t", results_document("j1", previous))
    cell = {"failing": [{"id": "tests.test_a::test_two", "message": "old message"}]}
    new = junit.TestReport(outcomes={"tests.test_a::test_one": "failed"}, messages={})
    new.messages["tests.test_a::test_one"] = "new failure"
    merged = merged_report(state, "h", "t", "j2", new, wt, cell)
    assert merged.outcomes == {
        "tests.test_a::test_one": "failed",
        "tests.test_a::test_two": "failed",
        "tests.test_b.TestK::test_k[1]": "passed",
        "other_layout::test_y": "failed",
    }
    assert merged.messages == {
        "tests.test_a::test_one": "new failure",
        "tests.test_a::test_two": "old message",
    }
    assert merged.counts()["failed"] == 3


PARTIAL_RUNNER = r"""
import os, sys
# Stands in for pytest --testmon: reports only the tests named in select.txt (all when
# there is none), as testmon reports only the tests a change affects.
try:
    selected = open("select.txt").read().split()
except FileNotFoundError:
    selected = ["test_one", "test_two"]
cases = "".join(
    f'<testcase classname="tests.test_a" name="{n}">'
    + ('<failure message="bad"/>' if n == "test_two" else "") + "</testcase>"
    for n in selected
)
open(os.environ["PO_JUNIT_XML"], "w").write(f"<testsuite>{cases}</testsuite>")
sys.exit(1 if "test_two" in selected else 0)
"""


def test_daemon_merges_partial_reports_and_reuses_the_merged_view(tmp_path: Path) -> None:
    tool = tmp_path / "runner.py"
    tool.write_text(PARTIAL_RUNNER)
    files = {"tests/test_a.py": "def test_one(): pass\ndef test_two(): pass\n"}
    repo, trees = make_repo(tmp_path / "r", ("hyp-1",), files)
    script = {
        "name": "t",
        "command": ["python3", str(tool), "--testmon"],
        "watch": ["**/*.py"],
        "cache": True,
        "timeout_s": 30,
    }
    cfg = write_config(tmp_path / "cfg" / "po.toml", repo, [script], run_on_start=True)
    d = DaemonProcess(cfg)
    state = d.folder / "state"
    edited = "def test_one(): return 1\ndef test_two(): pass\n"
    try:
        d.wait_event("job_finished", count=2)  # one run, one reuse: both full reports
        # A partial run in hyp-1: only test_one reported (passing); test_two keeps "failed".
        (trees["hyp-1"] / "select.txt").write_text("test_one\n")
        (trees["hyp-1"] / "tests" / "test_a.py").write_text(edited)
        done = d.wait_event("job_finished", count=3)[2]
        assert (done["hypothesis"], done["result"], done["cached"]) == ("hyp-1", "pass", False)
        expected = {"tests.test_a::test_one": "passed", "tests.test_a::test_two": "failed"}
        view = json.loads((state / "results" / "hyp-1" / "t.json").read_text())["tests"]
        assert view == expected
        assert (done["tests"]["total"], done["tests"]["failed"]) == (2, 1)
        # The same inputs in the main worktree: reused, with the merged view.
        (trees["repo"] / "tests" / "test_a.py").write_text(edited)
        hit = d.wait_event("job_finished", count=4)[3]
        assert (hit["hypothesis"], hit["cached"]) == ("repo", True)
        assert hit["tests"] == done["tests"]
        view = json.loads((state / "results" / "repo" / "t.json").read_text())["tests"]
        assert view == expected
    finally:
        assert d.stop() == 0
