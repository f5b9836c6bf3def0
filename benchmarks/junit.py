"""JUnit XML parsing: time and memory for a 10,000-test report, against plain ElementTree.

    .venv/bin/python benchmarks/junit.py [--tests 10000] [--repeat 5]

The report is what pytest writes for a large suite: 10,000 ``<testcase>`` elements in
nested suites, 5% failing with a message and a multi-line traceback, 2% skipped, some
captured ``<system-out>``. Variants, each run in a fresh interpreter so peak RSS belongs
to that variant alone:

* ``ours``      ``report.junit.parse_report``: defusedxml, streamed (``iterparse``, finished
                cases dropped), size-capped, counts + failing messages + the outcome map
* ``etree``     ``xml.etree.ElementTree.parse`` of the same file and one walk over every
                testcase: the unguarded baseline (expands entities, keeps the whole tree)

Reported: median wall time of the parse (after imports), RSS growth (peak RSS during the
parse minus RSS just before it), and the ratios ours/etree. Goals: <= 0.5 s, <= 20 MiB.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

GOAL_S = 0.5
GOAL_MIB = 20.0

CHILD = r"""
import json, sys, time
from pathlib import Path
variant, path = sys.argv[1], Path(sys.argv[2])

def kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])

import xml.etree.ElementTree as ET
from parallel_orchestrator.report.junit import parse_report
before = kib("VmRSS:")
# reset the high-water mark so VmHWM measures this parse only (Linux >= 4.0)
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
start = time.perf_counter()
if variant == "ours":
    report = parse_report(path)
    total = report.counts()["total"]
else:
    tree = ET.parse(path)
    total = 0
    for case in tree.iter("testcase"):
        total += 1
        for child in case:
            child.get("message")
elapsed = time.perf_counter() - start
peak = kib("VmHWM:")
print(json.dumps({"s": elapsed, "growth_kib": peak - before, "total": total}))
"""


def make_report(path: Path, n: int) -> None:
    parts = ['<?xml version="1.0" encoding="utf-8"?>\n<testsuites>']
    per_suite = 500
    for suite in range(0, n, per_suite):
        parts.append(f'<testsuite name="suite{suite}" tests="{per_suite}">')
        for i in range(suite, min(n, suite + per_suite)):
            cls = f"tests.test_module_{i // 50}.TestClass{i % 7}"
            head = f'<testcase classname="{cls}" name="test_case_{i}" time="0.00{i % 10}">'
            if i % 20 == 0:
                trace = "\n".join(f"  File tests/x.py, line {k}, in f{k}" for k in range(15))
                body = f'<failure message="assert {i} == {i + 1}">{trace}\nAssertionError</failure>'
            elif i % 50 == 1:
                body = '<skipped type="pytest.skip" message="needs network"/>'
            elif i % 10 == 3:
                body = "<system-out>" + ("captured output line\n" * 20) + "</system-out>"
            else:
                body = ""
            parts.append(head + body + "</testcase>")
        parts.append("</testsuite>")
    parts.append("</testsuites>\n")
    path.write_text("".join(parts))


def run_variant(variant: str, report: Path) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, variant, str(report)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.xml"
        make_report(report, args.tests)
        size_mib = report.stat().st_size / 2**20
        print(f"report: {args.tests} test cases, {size_mib:.1f} MiB; {args.repeat} runs each")
        figures: dict[str, tuple[float, float]] = {}
        for variant in ("ours", "etree"):
            runs = [run_variant(variant, report) for _ in range(args.repeat)]
            assert all(r["total"] == args.tests for r in runs), runs
            wall = statistics.median(r["s"] for r in runs)
            growth = max(r["growth_kib"] for r in runs) / 1024
            figures[variant] = (wall, growth)
            print(
                f"  {variant:<6} parse {wall * 1000:7.1f} ms (median)   "
                f"RSS growth {growth:6.1f} MiB (max)"
            )
    ours, base = figures["ours"], figures["etree"]
    print(
        f"ratio ours/etree: time {ours[0] / base[0]:.2f}x, "
        f"RSS growth {ours[1] / max(base[1], 0.01):.2f}x"
    )
    ok_time, ok_mem = ours[0] <= GOAL_S, ours[1] <= GOAL_MIB
    print(
        f"goals: parse <= {GOAL_S} s: {'met' if ok_time else 'MISSED'}; "
        f"RSS growth <= {GOAL_MIB:.0f} MiB: {'met' if ok_mem else 'MISSED'}"
    )


if __name__ == "__main__":
    main()
