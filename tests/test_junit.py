"""JUnit XML parsing on real files: ids, outcomes, nesting, merging, and hostile input."""

from __future__ import annotations

import os
import stat
import threading
import tracemalloc
from pathlib import Path

import pytest

from parallel_orchestrator.report.junit import (
    MAX_CELL_FAILING,
    MAX_DEPTH,
    MAX_ID_CHARS,
    JunitUnreadable,
    parse_report,
    parse_reports,
)
from parallel_orchestrator.report.results import (
    merge_results,
    read_results,
    results_path,
    write_results,
)
from parallel_orchestrator.report.testcollect import collect_tests

NESTED = """<?xml version="1.0" encoding="utf-8"?>
<testsuites>
  <testsuite name="outer">
    <testsuite name="inner">
      <testcase classname="pkg.mod" name="test_ok" time="0.1"/>
      <testcase classname="pkg.mod" name="test_fail"><failure message="assert 1 == 2">trace
      more</failure></testcase>
    </testsuite>
    <testcase classname="" name="bare"><error>Boom happened
second line</error></testcase>
    <testcase classname="pkg.mod" name="test_skip"><skipped message="later"/></testcase>
  </testsuite>
</testsuites>
"""


def write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def test_ids_outcomes_and_messages_across_nested_suites(tmp_path: Path) -> None:
    report = parse_report(write(tmp_path / "r.xml", NESTED))
    assert report.outcomes == {
        "pkg.mod::test_ok": "passed",
        "pkg.mod::test_fail": "failed",
        "bare": "error",
        "pkg.mod::test_skip": "skipped",
    }
    assert report.event_summary() == {
        "total": 4,
        "passed": 1,
        "failed": 1,
        "errors": 1,
        "skipped": 1,
        "failing": ["pkg.mod::test_fail", "bare"],
    }
    assert report.cell_summary()["failing"] == [
        {"id": "pkg.mod::test_fail", "message": "assert 1 == 2"},
        {"id": "bare", "message": "Boom happened"},
    ]


def test_a_bare_testsuite_root_and_merged_reports(tmp_path: Path) -> None:
    one = write(tmp_path / "a.xml", '<testsuite><testcase classname="a" name="t"/></testsuite>')
    two = write(
        tmp_path / "b.xml",
        '<testsuite><testcase classname="a" name="t"><failure message="m"/></testcase>'
        '<testcase classname="b" name="u"/></testsuite>',
    )
    merged, problems = parse_reports([one, two])
    assert problems == []
    assert merged is not None
    assert merged.outcomes == {"a::t": "failed", "b::u": "passed"}  # the worse outcome wins


def test_limits_on_failing_lists_and_messages(tmp_path: Path) -> None:
    cases = "".join(
        f'<testcase classname="c" name="t{i}"><failure message="{"x" * 900}"/></testcase>'
        for i in range(80)
    )
    report = parse_report(write(tmp_path / "r.xml", f"<testsuite>{cases}</testsuite>"))
    assert len(report.event_summary()["failing"]) == 20
    failing = report.cell_summary()["failing"]
    assert len(failing) == MAX_CELL_FAILING
    assert all(len(f["message"]) == 500 for f in failing)
    assert report.counts()["failed"] == 80


@pytest.mark.parametrize(
    ("name", "text", "error"),
    [
        (
            "laughs",
            '<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">'
            '<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>'
            '<testsuite><testcase name="&b;"/></testsuite>',
            "refused",
        ),
        ("truncated", '<testsuite><testcase name="a"/><testcase na', "malformed"),
        ("not junit", "<html><body/></html>", "not a JUnit report"),
        ("empty", "", "malformed"),
    ],
)
def test_untrusted_reports_are_refused(tmp_path: Path, name: str, text: str, error: str) -> None:
    with pytest.raises(JunitUnreadable) as caught:
        parse_report(write(tmp_path / "r.xml", text))
    assert error in caught.value.error
    assert os.fsdecode(tmp_path / "r.xml") in str(caught.value)


def test_an_external_entity_is_never_read(tmp_path: Path) -> None:
    secret = write(tmp_path / "secret.txt", "TOP-SECRET-VALUE")
    hostile = write(
        tmp_path / "r.xml",
        f'<?xml version="1.0"?><!DOCTYPE t [<!ENTITY x SYSTEM "file://{secret}">]>'
        '<testsuite><testcase name="t"><failure message="&x;"/></testcase></testsuite>',
    )
    with pytest.raises(JunitUnreadable) as caught:
        parse_report(hostile)
    assert "TOP-SECRET-VALUE" not in str(caught.value)


def test_size_cap_before_parsing_and_while_reading(tmp_path: Path) -> None:
    big = write(tmp_path / "big.xml", "<testsuite>" + " " * 2000 + "</testsuite>")
    with pytest.raises(JunitUnreadable, match="larger than 1000 bytes"):
        parse_report(big, limit=1000)


def test_a_fifo_does_not_block_and_is_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "r.xml"
    os.mkfifo(fifo)
    done = threading.Event()

    def attempt() -> None:
        with pytest.raises(JunitUnreadable, match="not a regular file"):
            parse_report(fifo)
        done.set()

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(10)
    assert done.is_set()


def test_results_files_are_private_and_merge_partial_runs(tmp_path: Path) -> None:
    write_results(tmp_path, "h", "s", {"job_id": "j1", "tests": {"a": "passed", "b": "failed"}})
    path = results_path(tmp_path, "h", "s")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    merged = merge_results(read_results(tmp_path, "h", "s"), "j2", {"b": "passed", "c": "error"})
    assert merged == {"job_id": "j2", "tests": {"a": "passed", "b": "passed", "c": "error"}}
    assert merge_results(None, "j3", {"x": "skipped"}) == {
        "job_id": "j3",
        "tests": {"x": "skipped"},
    }
    path.write_text("{not json")
    assert read_results(tmp_path, "h", "s") is None


def test_collect_reads_only_reports_written_during_the_job(tmp_path: Path) -> None:
    tree = tmp_path / "wt"
    (tree / "build").mkdir(parents=True)
    stale = write(tree / "build" / "old.xml", '<testsuite><testcase name="stale"/></testsuite>')
    os.utime(stale, (1_000_000, 1_000_000))
    write(tree / "build" / "new.xml", '<testsuite><testcase name="fresh"/></testsuite>')
    job = write(tmp_path / "job.junit.xml", '<testsuite><testcase name="own"/></testsuite>')
    found = collect_tests(job, tree, ["build/*.xml"], started_at=2_000_000)
    assert found.report is not None
    assert set(found.report.outcomes) == {"own", "fresh"}
    nothing = collect_tests(tmp_path / "absent.xml", tree, [], started_at=0)
    assert nothing.report is None and nothing.problems == []


def test_a_symlinked_report_is_not_followed(tmp_path: Path) -> None:
    real = write(tmp_path / "real.xml", '<testsuite><testcase name="t"/></testsuite>')
    link = tmp_path / "r.xml"
    link.symlink_to(real)
    with pytest.raises(JunitUnreadable, match="symbolic link"):
        parse_report(link)


def test_memory_stays_flat_while_streaming(tmp_path: Path) -> None:
    """20,000 cases with 1 KiB of captured output each (a 24 MiB report): the parser keeps
    the outcomes, not the document (a tree of it would be several times the file)."""
    out = "<system-out>" + "x" * 1024 + "</system-out>"
    with open(tmp_path / "r.xml", "w") as f:
        f.write("<testsuites>")
        for suite in range(20):
            f.write(f'<testsuite name="s{suite}">')
            for i in range(1000):
                f.write(f'<testcase classname="m{suite}" name="t{i}">{out}</testcase>')
            f.write("</testsuite>")
        f.write("</testsuites>")
    tracemalloc.start()
    try:
        report = parse_report(tmp_path / "r.xml")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert report.counts()["total"] == 20_000
    assert peak < 8 * 2**20, f"peak {peak / 2**20:.1f} MiB"


def test_deep_nesting_is_refused_before_it_costs_memory(tmp_path: Path) -> None:
    """Every open element is held until it ends: 23 MB of nested <testsuite> cost the
    parser ~380 MiB, 50 MiB (the size cap) would cost ~800 MiB in the daemon."""
    depth = 100_000
    deep = write(
        tmp_path / "deep.xml",
        "<testsuites>"
        + "<testsuite>" * depth
        + '<testcase name="t"/>'
        + "</testsuite>" * depth
        + "</testsuites>",
    )
    with pytest.raises(JunitUnreadable, match=f"nested deeper than {MAX_DEPTH}"):
        parse_report(deep)
    ok = "<testsuites>" + "<testsuite>" * (MAX_DEPTH - 2) + '<testcase name="t"/>'
    fine = write(tmp_path / "ok.xml", ok + "</testsuite>" * (MAX_DEPTH - 2) + "</testsuites>")
    assert parse_report(fine).counts()["total"] == 1


def test_huge_ids_are_cut_but_stay_distinct(tmp_path: Path) -> None:
    """A 2 MB test name went whole into job_finished (20 of them: a 40 MB log line), the
    status cell and every status rewrite."""
    big = "A" * (2 * 1024 * 1024)
    cases = "".join(
        f'<testcase classname="c" name="{big}{i}"><failure message="m"/></testcase>'
        for i in range(3)
    )
    report = parse_report(write(tmp_path / "r.xml", f"<testsuite>{cases}</testsuite>"))
    ids = report.failing_ids()
    assert len(ids) == 3 and len(set(ids)) == 3  # still three tests for compare
    assert all(len(t) <= MAX_ID_CHARS + 20 and t.startswith("c::AAAA") for t in ids)
    again = parse_report(write(tmp_path / "r2.xml", f"<testsuite>{cases}</testsuite>"))
    assert again.failing_ids() == ids  # the same id in every hypothesis: compare matches
