"""Views of test-level results: the status grid's counts, compare's ranking and renderings,
and the status --watch frames, on real status and results files."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path
from typing import Any

import pytest

from harness import run_cli, wait_until
from parallel_orchestrator.report.compare import CompareError, build_comparison
from parallel_orchestrator.report.compareview import render_markdown, render_text
from parallel_orchestrator.report.results import write_results
from parallel_orchestrator.report.statusview import render_table, watch_status

NOW = 1_700_000_000.0


def cell(result: str, duration: float, tests: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "state": result,
        "last_result": result,
        "exit_code": 0 if result == "pass" else 1,
        "duration_s": duration,
        "started_at": None,
        "finished_at": None,
        "job_id": "j",
        "batch_id": "b",
        "log_path": None,
        "output_tail": "",
        "tests": tests,
    }


def counts(passed: int, failed: int, failing: list[str] = ()) -> dict[str, Any]:
    return {
        "total": passed + failed,
        "passed": passed,
        "failed": failed,
        "errors": 0,
        "skipped": 0,
        "failing": [{"id": t, "message": "m"} for t in failing],
    }


def status_doc(cells: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "daemon": {"pid": None, "version": "0", "state": "stopped", "updated_at": None},
        "hypotheses": {
            h: {"path": f"/r/{h}", "branch": h, "scripts": scripts} for h, scripts in cells.items()
        },
        "summary": {},
    }


@pytest.fixture
def compared(tmp_path: Path) -> tuple[dict[str, Any], Path]:
    doc = status_doc(
        {
            "base": {"t": cell("fail", 5, counts(2, 1, ["m::b"])), "lint": cell("pass", 1, None)},
            "good": {"t": cell("pass", 6, counts(3, 0)), "lint": cell("pass", 1, None)},
            "quick": {"t": cell("fail", 1, counts(2, 1, ["m::b"])), "lint": cell("pass", 1, None)},
            "bad|x": {"t": cell("fail", 2, counts(1, 2, ["m::a"])), "lint": cell("fail", 1, None)},
        }
    )
    outcomes = {
        "base": {"m::a": "passed", "m::b": "failed", "m::c": "passed"},
        "good": {"m::a": "passed", "m::b": "passed", "m::c": "passed"},
        "quick": {"m::a": "passed", "m::b": "failed", "m::c": "passed"},
        "bad|x": {"m::a": "error", "m::b": "failed", "m::c": "passed"},
    }
    for hyp, tests in outcomes.items():
        write_results(tmp_path, hyp, "t", {"job_id": "j", "tests": tests})
    return doc, tmp_path


def test_ranking_and_fixed_broken(compared: tuple[dict[str, Any], Path]) -> None:
    doc, state = compared
    result = build_comparison(doc, state, "base")
    order = [h["id"] for h in result["hypotheses"]]
    # good: all pass; quick and base tie on everything but duration; bad|x fails two scripts
    assert order == ["good", "quick", "base", "bad|x"]
    assert [h["rank"] for h in result["hypotheses"]] == [1, 2, 3, 4]
    by_id = {h["id"]: h for h in result["hypotheses"]}
    assert by_id["good"]["scripts"]["t"]["fixed"] == ["m::b"]
    assert by_id["bad|x"]["scripts"]["t"]["broken"] == ["m::a"]
    assert by_id["bad|x"]["scripts"]["lint"] == {
        "result": "fail",
        "tests": None,
        "fixed": [],
        "broken": [],
    }
    only_lint = build_comparison(doc, state, "base", ["lint"])
    assert list(only_lint["hypotheses"][0]["scripts"]) == ["lint"]
    with pytest.raises(CompareError, match="--baseline nope"):
        build_comparison(doc, state, "nope")
    with pytest.raises(CompareError, match="--script nope"):
        build_comparison(doc, state, "base", ["nope"])


def test_missing_results_mean_no_fixed_or_broken(compared: tuple[dict[str, Any], Path]) -> None:
    doc, state = compared
    (state / "results" / "base" / "t.json").unlink()
    result = build_comparison(doc, state, "base")
    assert all(h["scripts"]["t"]["fixed"] == [] for h in result["hypotheses"])


def test_text_and_markdown(compared: tuple[dict[str, Any], Path]) -> None:
    doc, state = compared
    result = build_comparison(doc, state, "base")
    text = render_text(result, ascii_only=True)
    rows = text.splitlines()
    assert rows[0] == "baseline: base"
    assert rows[4].split()[:6] == ["1", "good", "good", "+", "pass", "3/3"]
    assert "good fixed:  m::b" in text and "bad|x broke:  m::a" in text
    md = render_markdown(result)
    assert "| 4 | `bad\\|x` | `bad\\|x` | ✗ fail 1/3 | ✗ fail | 0 | 1 |" in md
    assert "| 3 | `base` (baseline) |" in md


def test_status_grid_and_watch_show_test_counts(tmp_path: Path) -> None:
    doc = status_doc({"h": {"t": cell("fail", 2, counts(2, 1, ["pkg.mod::test_x"]))}})
    line = next(x for x in render_table(doc, now=NOW).splitlines() if x.startswith("h "))
    assert "✗ fail 2/3 2.0s pkg.mod::test_x" in line
    narrow = render_table(doc, now=NOW, width=32)  # detail shed, the counts kept
    assert "✗ fail 2/3" in narrow and "test_x" not in narrow
    path = tmp_path / "status.json"
    path.write_text(json.dumps(doc))
    out = io.StringIO()
    stop = threading.Event()
    watcher = threading.Thread(
        target=watch_status, args=(path, out), kwargs={"color": False, "stop": stop}
    )
    watcher.start()
    try:
        wait_until(lambda: "fail 2/3" in out.getvalue(), timeout=10, what="a frame")
    finally:
        stop.set()
        watcher.join(10)
    assert "pkg.mod::test_x" in out.getvalue()


def test_compare_reads_a_copied_status_file(compared: tuple[dict[str, Any], Path]) -> None:
    """``--status-file``: results are read beside it, no config needed."""
    doc, state = compared
    (state / "status.json").write_text(json.dumps(doc))
    args = ("compare", "--status-file", str(state / "status.json"))
    no_baseline = run_cli(*args, cwd=state)
    assert no_baseline.returncode == 2 and "--baseline" in no_baseline.stderr
    got = run_cli(*args, "--baseline", "base", "--json", cwd=state)
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["hypotheses"][0]["scripts"]["t"]["fixed"] == ["m::b"]
    missing = run_cli("compare", "--status-file", str(state / "nope.json"), cwd=state)
    assert missing.returncode == 3
