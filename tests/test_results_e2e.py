"""End-to-end: test-level results from real pytest suites in real worktrees, through the
real daemon, read back with ``status``, ``compare``, ``logs`` and ``output`` as a user would.

The repository has a small calculator and three tests. The baseline (the main worktree)
has one failing test (``test_sub``); ``hyp-fix`` fixes it, ``hyp-break`` breaks another
(``test_mul``), ``hyp-same`` changes nothing.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from harness import DaemonProcess, make_repo, run_cli, wait_until, write_config

pytestmark = pytest.mark.timeout(180)

CALC = """\
def add(a, b):
    return a + b


def sub(a, b):
    return a + b  # the baseline's bug


def mul(a, b):
    return a * b
"""
TESTS = """\
from calc import add, mul, sub


def test_add():
    assert add(2, 3) == 5


def test_sub():
    assert sub(5, 3) == 2


def test_mul():
    assert mul(2, 3) == 6
"""
SUB_ID = "tests.test_calc::test_sub"
MUL_ID = "tests.test_calc::test_mul"
PYTEST = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--junitxml={junit}"]


def save(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@pytest.fixture
def suite(tmp_path: Path) -> Iterator[tuple[DaemonProcess, dict[str, Path], Path]]:
    files = {"calc.py": CALC, "tests/test_calc.py": TESTS, "conftest.py": ""}
    repo, trees = make_repo(tmp_path, ("hyp-fix", "hyp-break", "hyp-same"), files)
    save(trees["hyp-fix"] / "calc.py", CALC.replace("return a + b  # the", "return a - b  # the"))
    save(trees["hyp-break"] / "calc.py", CALC.replace("return a * b", "return a ** b"))
    cfg = write_config(
        tmp_path / "cfg" / "po.toml",
        repo,
        [{"name": "tests", "command": PYTEST, "watch": ["**/*.py"], "timeout_s": 120}],
        run_on_start=True,
        max_concurrency=2,
    )
    d = DaemonProcess(cfg)
    try:
        d.wait_ready()
        d.wait_event("job_finished", count=4, timeout=120)
        yield d, trees, cfg
    finally:
        d.stop()


def cli(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, "-c", os.fsdecode(cfg), cwd=cfg.parent)


def finished(d: DaemonProcess) -> dict[str, dict[str, Any]]:
    """The latest job_finished of each hypothesis."""
    return {e["hypothesis"]: e for e in d.events("job_finished")}


def test_counts_failing_ids_results_files_and_compare(suite) -> None:
    d, trees, cfg = suite
    events = finished(d)
    assert events["repo"]["result"] == "fail"
    assert events["repo"]["tests"] == {
        "total": 3,
        "passed": 2,
        "failed": 1,
        "errors": 0,
        "skipped": 0,
        "failing": [SUB_ID],
    }
    assert events["hyp-fix"]["result"] == "pass"
    assert events["hyp-fix"]["tests"]["failing"] == []
    assert events["hyp-fix"]["tests"]["passed"] == 3
    assert sorted(events["hyp-break"]["tests"]["failing"]) == [MUL_ID, SUB_ID]
    assert events["hyp-same"]["tests"] == events["repo"]["tests"]

    cell = d.cell("hyp-break", "tests")
    assert cell["tests"]["total"] == 3 and cell["tests"]["failed"] == 2
    messages = {f["id"]: f["message"] for f in cell["tests"]["failing"]}
    assert set(messages) == {SUB_ID, MUL_ID}
    assert "assert" in messages[MUL_ID] and len(messages[MUL_ID]) <= 500

    state = cfg.parent / "state"
    results = json.loads((state / "results" / "hyp-break" / "tests.json").read_text())
    assert results == {
        "job_id": events["hyp-break"]["job_id"],
        "tests": {"tests.test_calc::test_add": "passed", SUB_ID: "failed", MUL_ID: "failed"},
    }
    assert stat.S_IMODE((state / "results" / "hyp-break" / "tests.json").stat().st_mode) == 0o600
    assert stat.S_IMODE((state / "results" / "hyp-break").stat().st_mode) == 0o700
    assert stat.S_IMODE((state / "results").stat().st_mode) == 0o700

    shown = cli(cfg, "status")
    assert shown.returncode == 0
    row = next(line for line in shown.stdout.splitlines() if line.startswith("hyp-break"))
    assert "fail 1/3" in row and "test_" in row

    out = cli(cfg, "compare", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["schema_version"] == 1 and doc["baseline"] == "repo"
    ranked = {h["id"]: h for h in doc["hypotheses"]}
    assert [h["rank"] for h in doc["hypotheses"]] == [1, 2, 3, 4]
    assert ranked["hyp-fix"]["rank"] == 1 and ranked["hyp-break"]["rank"] == 4
    fix = ranked["hyp-fix"]["scripts"]["tests"]
    assert fix["fixed"] == [SUB_ID] and fix["broken"] == [] and fix["result"] == "pass"
    assert fix["tests"] == {"total": 3, "passed": 3, "failed": 0, "errors": 0, "skipped": 0}
    broke = ranked["hyp-break"]["scripts"]["tests"]
    assert broke["broken"] == [MUL_ID] and broke["fixed"] == []
    assert ranked["hyp-same"]["scripts"]["tests"]["fixed"] == []
    assert ranked["hyp-same"]["scripts"]["tests"]["broken"] == []
    assert ranked["hyp-fix"]["branch"] == "hyp-fix"

    text = cli(cfg, "compare")
    assert text.returncode == 0
    lines = text.stdout.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("RANK"))
    assert lines[first + 2].split()[:2] == ["1", "hyp-fix"]
    assert f"hyp-fix fixed:  {SUB_ID}" in text.stdout
    assert f"hyp-break broke:  {MUL_ID}" in text.stdout
    md = cli(cfg, "compare", "--markdown")
    assert md.returncode == 0
    assert md.stdout.startswith("**Baseline:** `repo`")
    assert "| 1 | `hyp-fix` | `hyp-fix` |" in md.stdout
    assert f"- `hyp-break` broke: `{MUL_ID}`" in md.stdout

    against = json.loads(cli(cfg, "compare", "--json", "--baseline", "hyp-fix").stdout)
    same = next(h for h in against["hypotheses"] if h["id"] == "hyp-same")
    assert same["scripts"]["tests"]["broken"] == [SUB_ID]
    bad = cli(cfg, "compare", "--baseline", "nope")
    assert bad.returncode == 2 and "--baseline nope" in bad.stderr

    # A repair save: hyp-break fixes mul again; compare follows.
    before = events["hyp-break"]["job_id"]
    save(trees["hyp-break"] / "calc.py", CALC)
    d.wait_event("job_finished", lambda e: e["hypothesis"] == "hyp-break" and e["job_id"] != before)
    doc = json.loads(cli(cfg, "compare", "--json").stdout)
    repaired = next(h for h in doc["hypotheses"] if h["id"] == "hyp-break")
    assert repaired["scripts"]["tests"]["broken"] == []
    assert repaired["scripts"]["tests"]["tests"]["failed"] == 1


def test_logs_and_output(suite) -> None:
    d, trees, cfg = suite
    events = finished(d)
    raw = cli(cfg, "logs", "--json", "--hypothesis", "hyp-break")
    assert raw.returncode == 0, raw.stderr
    lines = [json.loads(line) for line in raw.stdout.splitlines()]
    assert [e["event"] for e in lines] == ["worktree_added", "job_finished"]
    assert lines[-1]["job_id"] == events["hyp-break"]["job_id"]
    human = cli(cfg, "logs", "--result", "fail")
    assert human.returncode == 0
    rows = human.stdout.splitlines()
    assert len(rows) == 3  # repo, hyp-break, hyp-same
    row = next(r for r in rows if "hyp-break/tests" in r)
    assert "fail" in row and "1/3 passed" in row and SUB_ID in row
    assert cli(cfg, "logs", "--hypothesis", "nobody").returncode == 3
    assert len(cli(cfg, "logs", "-n", "2").stdout.splitlines()) == 2

    out = cli(cfg, "output", "hyp-break/tests")
    assert out.returncode == 0
    assert "2 failed, 1 passed" in out.stdout
    first_job = events["hyp-fix"]["job_id"]
    save(trees["hyp-fix"] / "calc.py", CALC)  # hyp-fix now fails: a second run log
    d.wait_event(
        "job_finished", lambda e: e["hypothesis"] == "hyp-fix" and e["job_id"] != first_job
    )
    assert "1 failed, 2 passed" in cli(cfg, "output", "hyp-fix/tests").stdout
    old = cli(cfg, "output", "hyp-fix/tests", "--job", first_job)
    assert old.returncode == 0 and "3 passed" in old.stdout
    assert cli(cfg, "output", "hyp-fix/tests", "--job", "nosuch-j9").returncode == 3
    assert cli(cfg, "output", "nobody/tests").returncode == 2
    assert cli(cfg, "output", "no-slash").returncode == 2


def test_logs_follow_shows_a_new_result_within_a_second(suite) -> None:
    d, trees, cfg = suite
    follower = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "parallel_orchestrator",
            "logs",
            "-f",
            "-n",
            "0",
            "--json",
            "-c",
            os.fsdecode(cfg),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen: list[tuple[float, dict[str, Any]]] = []

    def read() -> None:
        assert follower.stdout is not None
        for line in follower.stdout:
            seen.append((time.monotonic(), json.loads(line)))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        time.sleep(0.5)  # let it start reading (it starts at the end of the history)
        before = {e["job_id"] for e in d.events("job_finished")}
        save(trees["hyp-same"] / "calc.py", CALC + "\n")
        done = d.wait_event("job_finished", lambda e: e["job_id"] not in before)
        logged_at = time.monotonic()
        job_id = done[-1]["job_id"]
        wait_until(lambda: any(e.get("job_id") == job_id for _, e in seen), timeout=10)
        shown_at = next(t for t, e in seen if e.get("job_id") == job_id)
        assert shown_at - logged_at < 1.0
        follower.send_signal(2)  # Ctrl-C
        assert follower.wait(10) == 0
        assert follower.stderr is not None
        assert "Traceback" not in follower.stderr.read()
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()


def test_nothing_to_read_is_exit_3(tmp_path: Path) -> None:
    repo, _ = make_repo(tmp_path, ())
    cfg = write_config(tmp_path / "cfg" / "po.toml", repo, [{"name": "t", "command": ["true"]}])
    for args in (("logs",), ("output", "repo/t"), ("compare",)):
        got = cli(cfg, *args)
        assert got.returncode == 3, (args, got.stderr)
        assert got.stderr.strip()


GLOB_TOOL = r"""
import os, pathlib, sys
out = pathlib.Path("build/reports")
out.mkdir(parents=True, exist_ok=True)
(out / "fresh.xml").write_text(
    '<testsuite><testcase classname="glob" name="fresh">'
    '<failure message="from a fixed place"/></testcase></testsuite>')
sys.exit(1)
"""


def test_junit_globs_read_only_reports_written_during_the_job(tmp_path: Path) -> None:
    repo, _ = make_repo(tmp_path, ())
    reports = repo / "build" / "reports"
    reports.mkdir(parents=True)
    stale = reports / "stale.xml"
    stale.write_text('<testsuite><testcase classname="glob" name="stale"/></testsuite>')
    os.utime(stale, (1_000_000, 1_000_000))
    tool = tmp_path / "glob_tool.py"
    tool.write_text(GLOB_TOOL)
    script = {
        "name": "gradle",
        "command": [sys.executable, os.fsdecode(tool)],
        "junit": ["build/reports/*.xml"],
    }
    cfg = write_config(tmp_path / "cfg" / "po.toml", repo, [script], run_on_start=True)
    d = DaemonProcess(cfg)
    try:
        d.wait_ready()
        done = d.wait_event("job_finished")[0]
        cell = d.cell("repo", "gradle")
    finally:
        assert d.stop() == 0
    assert done["result"] == "fail"
    assert done["tests"] == {
        "total": 1,
        "passed": 0,
        "failed": 1,
        "errors": 0,
        "skipped": 0,
        "failing": ["glob::fresh"],
    }
    assert cell["tests"]["failing"] == [{"id": "glob::fresh", "message": "from a fixed place"}]


def test_a_new_user_gets_test_counts_from_init_and_once(tmp_path: Path) -> None:
    files = {"calc.py": CALC, "tests/test_calc.py": TESTS, "conftest.py": ""}
    repo, _ = make_repo(tmp_path, (), files)
    (repo / "pytest.ini").write_text("[pytest]\n")
    made = run_cli("init", "--repo", os.fsdecode(repo), "--output", "po.toml", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    cfg = tmp_path / "po.toml"
    text = cfg.read_text()
    assert "--junitxml={junit}" in text
    # the interpreter init picked may lack pytest here: run this test's own
    doc = tomllib.loads(text)
    doc["scripts"][0]["command"][0] = sys.executable
    doc["daemon"] = {**doc.get("daemon", {}), "state_dir": "state"}
    cfg.write_text(tomli_w.dumps(doc))
    got = run_cli("once", "-c", os.fsdecode(cfg), "--json", cwd=tmp_path)
    assert got.returncode == 1, got.stderr
    (result,) = json.loads(got.stdout)["results"]
    assert result["tests"]["failing"] == [SUB_ID]
    assert result["tests"]["total"] == 3
    table = run_cli("once", "-c", os.fsdecode(cfg), cwd=tmp_path).stdout
    assert "2/3 tests" in table and SUB_ID in table
