"""Save -> verdict with pytest-testmon under the daemon vs the full suite, same run.

    .venv/bin/python benchmarks/verdict.py [--work DIR] [--saves 5]

The real more-itertools suite (``realproject.fetch_project``: its sdist with ``tests/``
and a venv beside it with pytest and pytest-testmon). First the full suite is timed as
a user runs it (``python -m pytest -q tests``, no testmon). Then the daemon runs
``pytest --testmon`` on it (the first run builds testmon's database, a full run), and
one function at a time is changed (a statement added before its first ``return``): the
figure is the time from the save to that job's ``job_finished``, which carries the
verdict. Goal: median <= 10% of the full suite's time.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import tempfile
import time
from datetime import datetime
from pathlib import Path

from realproject import Daemon, daemon_doc, fetch_project

FUNCTIONS = [
    ("more_itertools/recipes.py", "tabulate"),
    ("more_itertools/recipes.py", "nth"),
    ("more_itertools/more.py", "chunked"),
    ("more_itertools/more.py", "spy"),
    ("more_itertools/more.py", "interleave_longest"),
    ("more_itertools/more.py", "windowed"),
    ("more_itertools/recipes.py", "pairwise"),
]


def edit_function(path: Path, name: str, mark: int) -> None:
    """Add a harmless statement before the first ``return`` of function ``name``."""
    lines = path.read_text().splitlines(keepends=True)
    start = next(i for i, ln in enumerate(lines) if re.match(rf"def {name}\(", ln))
    for i in range(start + 1, len(lines)):
        m = re.match(r"(\s+)return\b", lines[i])
        if m:
            lines.insert(i, f"{m.group(1)}_benchmark_edit = {mark}\n")
            path.write_text("".join(lines))
            return
    raise ValueError(f"no return in {name}")


def event_time(event: dict) -> float:
    return datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=None, help="keep downloads here")
    ap.add_argument("--saves", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="po-verdict-") as tmp:
        work = args.work or Path(tmp) / "work"
        src, python = fetch_project(work)
        for leftover in src.glob(".testmondata*"):
            leftover.unlink()
        t0 = time.monotonic()
        full = subprocess.run(
            [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
            cwd=src,
            capture_output=True,
            text=True,
        )
        full_s = time.monotonic() - t0
        summary = full.stdout.strip().splitlines()[-1]
        print(f"full suite (pytest -q tests): {full_s:.1f} s  [{summary}]")
        script = {
            "name": "tests",
            "command": [str(python), "-m", "pytest", "-q", "--testmon", "tests"],
            "watch": ["**/*.py"],
            "timeout_s": 1200,
        }
        daemon = Daemon(Path(tmp) / "daemon", daemon_doc(src, [script], max_concurrency=1))
        try:
            first = daemon.wait(lambda: daemon.events("job_finished"), 1200, "the first run")
            print(f"first --testmon run (builds its database): {first[0]['duration_s']:.1f} s")
            times = []
            for n in range(min(args.saves, len(FUNCTIONS))):
                rel, name = FUNCTIONS[n]
                seen = len(daemon.events("job_finished"))
                saved = time.time()
                edit_function(src / rel, name, n)
                done = daemon.wait(
                    lambda seen=seen: daemon.events("job_finished")[seen:], 600, f"verdict {n}"
                )[0]
                took = event_time(done) - saved
                times.append(took)
                tail = done["output_tail"].strip().splitlines()[-1:]
                print(f"  save {name}() -> {done['result']} in {took:.2f} s  {tail}")
            median = statistics.median(times)
            ratio = median / full_s
            print(
                f"save -> verdict median {median:.2f} s = {ratio:.1%} of the full suite "
                f"(goal <= 10%: {'met' if ratio <= 0.10 else 'MISSED'})"
            )
        finally:
            daemon.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
