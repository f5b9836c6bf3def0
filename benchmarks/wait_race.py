"""Save-then-``wait``: how often the verdict is stale, and what ``wait`` costs.

One real daemon, one worktree, a script ``grep -q GOOD src/app.py``. Each round saves a
breaking or a repairing edit (alternately) and asks for the verdict at once, two ways
measured in the same run:

- ``wait``: ``parallel_orchestrator.commands.waiter.wait_for_verdict`` (what
  ``parallel-orchestrator wait`` runs, without the interpreter's start-up);
- baseline, the polling an agent does without ``wait``: read the status file right
  after the save, and again until no cell is queued or running.

A verdict is stale when it is the previous round's. Prints rounds, stale counts and the
p50/p95 time to a verdict for both.

    python benchmarks/wait_race.py               # 2,000 rounds each (about 3 minutes)
    python benchmarks/wait_race.py --rounds 200  # quick
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import tomli_w

from parallel_orchestrator.commands.waiter import wait_for_verdict

BUSY = ("queued", "running")


def git(cwd: Path, *args: str) -> None:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "b",
        "GIT_AUTHOR_EMAIL": "b@example.invalid",
        "GIT_COMMITTER_NAME": "b",
        "GIT_COMMITTER_EMAIL": "b@example.invalid",
    }
    subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def naive_verdict(status: Path) -> str:
    """Read the status file until the cell is neither queued nor running."""
    while True:
        try:
            cell = json.loads(status.read_bytes())["hypotheses"]["hyp-1"]["scripts"]["check"]
        except (OSError, ValueError, KeyError):
            time.sleep(0.002)
            continue
        if cell["state"] not in BUSY:
            return "pass" if cell["state"] == "pass" else "fail"
        time.sleep(0.002)


def rounds(app: Path, n: int, verdict: Callable[[], str]) -> tuple[int, list[float]]:
    stale, times = 0, []
    for i in range(n):
        good = i % 2 == 1
        app.write_text(("GOOD" if good else "BAD") + f" {i}\n")
        started = time.monotonic()
        if verdict() != ("pass" if good else "fail"):
            stale += 1
        times.append(time.monotonic() - started)
    return stale, times


def start_daemon(work: Path) -> tuple[subprocess.Popen[bytes], Path, Path]:
    repo = work / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "src").mkdir()
    (repo / "src" / "app.py").write_text("GOOD\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "init")
    git(repo, "worktree", "add", "-q", "-b", "hyp-1", os.fsdecode(work / "hyp-1"))
    cfg = work / "po.toml"
    cfg.write_text(
        tomli_w.dumps(
            {
                "daemon": {
                    "state_dir": "state",
                    "log_file": "daemon.log",
                    "debounce_ms": 5,
                    "max_batch_wait_ms": 200,
                    "run_on_start": False,
                },
                "worktrees": {"repo": os.fsdecode(repo), "include": ["hyp-1"]},
                "scripts": [{"name": "check", "command": ["grep", "-q", "GOOD", "src/app.py"]}],
            }
        )
    )
    cfg.chmod(0o600)
    proc = subprocess.Popen(
        [sys.executable, "-m", "parallel_orchestrator", "run", "-c", os.fsdecode(cfg)],
        cwd=work,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    status = work / "state" / "status.json"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if json.loads(status.read_bytes())["daemon"]["state"] in ("idle", "running"):
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.05)
    else:
        proc.kill()
        raise SystemExit("the daemon did not start")
    return proc, work / "hyp-1" / "src" / "app.py", status


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="po-wait-race-") as tmp:
        proc, app, status = start_daemon(Path(tmp))
        try:
            naive_stale, naive_times = rounds(app, args.rounds, lambda: naive_verdict(status))
            wait_stale, wait_times = rounds(
                app,
                args.rounds,
                lambda: wait_for_verdict(status, ["hyp-1"], ["check"], timeout_s=60).verdict,
            )
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    print(f"rounds each: {args.rounds}")
    for name, stale, times in (
        ("status file polled at once (baseline)", naive_stale, naive_times),
        ("wait", wait_stale, wait_times),
    ):
        p50, p95 = 1000 * pct(times, 0.5), 1000 * pct(times, 0.95)
        print(
            f"{name:<40} stale {stale:>5} ({100 * stale / args.rounds:.1f} %)   "
            f"to verdict p50 {p50:6.1f} ms  p95 {p95:6.1f} ms"
        )
    return 0 if wait_stale == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
