"""How fast the daemon takes a ``rerun`` request, against a source edit in the same run.

A real daemon over a throwaway repository (two linked worktrees, one trivial script,
debounce 50 ms). Measured, N times each, alternating:

- rerun: from just before the request file is renamed into ``<state_dir>/requests/``
  (the atomic writer ``parallel-orchestrator rerun`` uses) to the file being gone
  (taken), and to the daemon's ``batch_formed`` (reason ``manual``) timestamp;
- baseline: from just before a source file is saved in a worktree to its
  ``batch_formed`` (the worktree watcher plus the 50 ms debounce a request skips).

The contract is pickup within 100 ms; the ratio to that budget is printed too.

    python benchmarks/rerun_pickup.py            # 40 of each
    python benchmarks/rerun_pickup.py --quick    # 10 of each
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import tomli_w

sys.path.insert(0, os.fspath(Path(__file__).resolve().parents[1] / "daemon"))

from parallel_orchestrator.service.requests import (
    RerunRequest,
    encode_request,
    new_request_name,
)
from parallel_orchestrator.store.atomic import write_atomic

BUDGET_S = 0.100


def git(cwd: Path, *args: str) -> None:
    env = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@x.invalid"}
    env |= {"GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@x.invalid"}
    subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True)


def wait_for(predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.0005)
    raise SystemExit("timed out: the daemon did not react")


def batches(log: Path, reason: str) -> list[float]:
    out = []
    for line in log.read_text().splitlines():
        event = json.loads(line)
        if event["event"] == "batch_formed" and event.get("reason") == reason:
            out.append(datetime.fromisoformat(event["timestamp"]).timestamp())
    return out


def at_least(items: list[float], count: int) -> list[float] | None:
    return items if len(items) >= count else None


def figures(name: str, values: list[float]) -> str:
    ms = sorted(v * 1000 for v in values)
    p95 = ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]
    return (
        f"{name:<34} p50 {statistics.median(ms):6.1f} ms  p95 {p95:6.1f} ms  "
        f"max {ms[-1]:6.1f} ms  (n={len(ms)})"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    n = 10 if parser.parse_args().quick else 40
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        repo = root / "repo"
        repo.mkdir()
        git(repo, "init", "-q", "-b", "main")
        (repo / "src").mkdir()
        (repo / "src" / "a.py").write_text("x = 0\n")
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", "init")
        git(repo, "worktree", "add", "-q", "-b", "h1", os.fspath(root / "h1"))
        config = root / "config.toml"
        doc = {
            "daemon": {"state_dir": "state", "log_file": "daemon.log", "debounce_ms": 50},
            "worktrees": {"repo": os.fspath(repo)},
            "scripts": [{"name": "t", "command": ["true"], "watch": ["src/**"]}],
        }
        config.write_text(tomli_w.dumps(doc))
        config.chmod(0o600)
        log = root / "daemon.log"
        daemon = subprocess.Popen(
            [sys.executable, "-m", "parallel_orchestrator", "run", "-c", os.fspath(config)],
            cwd=root,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for(lambda: log.exists() and "daemon_started" in log.read_text(), 60)
            status = root / "state" / "status.json"
            wait_for(lambda: '"idle"' in status.read_text() if status.exists() else False, 60)
            time.sleep(0.5)  # the control watch arms right after "idle"
            folder = root / "state" / "requests"
            taken, formed, edits = [], [], []
            for i in range(n):
                path = folder / new_request_name()
                data = encode_request(RerunRequest((), False))
                t0 = time.time()
                write_atomic(path, data, mode=0o600, durable=False)
                wait_for(lambda p=path: not p.exists())
                taken.append(time.time() - t0)
                stamps = wait_for(lambda c=i + 1: at_least(batches(log, "manual"), c))
                formed.append(stamps[i] - t0)
                time.sleep(0.2)
                t0 = time.time()
                (root / "h1" / "src" / "a.py").write_text(f"x = {i + 1}\n")
                stamps = wait_for(lambda c=i + 1: at_least(batches(log, "changes"), c))
                edits.append(stamps[i] - t0)
                time.sleep(0.2)
        finally:
            daemon.terminate()
            daemon.wait(30)
    print(figures("rerun: request taken (file gone)", taken))
    print(figures("rerun: batch_formed (manual)", formed))
    print(figures("baseline: save -> batch_formed", edits))
    p50 = statistics.median(formed)
    print(f"rerun batch_formed p50 / 100 ms budget: {p50 / BUDGET_S:.2f}")
    print(f"rerun / baseline save (p50): {p50 / statistics.median(edits):.2f}")


if __name__ == "__main__":
    main()
