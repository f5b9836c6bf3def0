"""Thousands of scripts: wall time and status-file bytes of one start-up run.

Runs the real daemon twice on one repository with 4 hypotheses (the main worktree and 3
linked ones), every script the trivial command ``true``, ``run_on_start = true``:

* the big run: ``--scripts`` scripts (default 1,000, so 4,000 jobs);
* the baseline: the per-job cost of the same trivial jobs with a small status file
  (4 hypotheses x ``--baseline-scripts`` scripts, default 10; median of 3 runs).

For each: wall time from launch to the status file saying every cell passed, the job
phase (first ``batch_formed`` to last ``job_finished`` in the log) per job, how many
status writes and bytes the daemon made (its ``status_write_totals`` event, logged at
shutdown), the final status file's size, all bytes the daemon process wrote
(/proc/<pid>/io ``wchar``) and the time from SIGTERM to exit.
Goals (issue 11, item 6): big per-job job-phase time within 2x of the baseline's, and status
bytes written <= 50x the final status file.

    python benchmarks/status_scale.py                 # 1,000 scripts, a few minutes
    python benchmarks/status_scale.py --scripts 200   # quicker
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
from datetime import datetime
from pathlib import Path
from typing import Any

import tomli_w

HYPOTHESES = ("hyp-1", "hyp-2", "hyp-3")


def git(cwd: Path, *args: str) -> None:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "b",
        "GIT_AUTHOR_EMAIL": "b@example.invalid",
        "GIT_COMMITTER_NAME": "b",
        "GIT_COMMITTER_EMAIL": "b@example.invalid",
    }
    subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True)


def make_repo(root: Path) -> Path:
    repo = root / "repo"
    repo.mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    (repo / "a.txt").write_text("a\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "init")
    for hyp in HYPOTHESES:
        git(repo, "worktree", "add", "-q", "-b", hyp, os.fsdecode(root / hyp))
    return repo


def write_config(folder: Path, repo: Path, scripts: int) -> Path:
    doc = {
        "daemon": {"state_dir": "state", "log_file": "daemon.log", "run_on_start": True},
        "worktrees": {"repo": os.fsdecode(repo)},
        "scripts": [
            {"name": f"s{i:05d}", "command": ["true"], "watch": ["never/*.x"], "timeout_s": 60}
            for i in range(scripts)
        ],
    }
    folder.mkdir(parents=True)
    path = folder / "po.toml"
    path.write_text(tomli_w.dumps(doc))
    path.chmod(0o600)
    return path


def all_passed(status: Path, cells: int) -> bool:
    try:
        doc = json.loads(status.read_text())
    except (FileNotFoundError, ValueError):
        return False
    return doc.get("summary", {}).get("pass") == cells


def stamp(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def wchar(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    return 0


def run(root: Path, repo: Path, scripts: int, timeout: float) -> dict[str, Any]:
    folder = root / f"cfg-{scripts}"
    config = write_config(folder, repo, scripts)
    status = folder / "state" / "status.json"
    cells = scripts * (1 + len(HYPOTHESES))
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "parallel_orchestrator", "run", "-c", os.fsdecode(config)],
        cwd=folder,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    done = False
    written = 0
    while time.monotonic() - started < timeout and proc.poll() is None:
        written = wchar(proc.pid)
        if all_passed(status, cells):
            done = True
            break
        time.sleep(0.05)
    wall = time.monotonic() - started
    stop_at = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    stop_s = time.monotonic() - stop_at
    totals: dict[str, Any] = {}
    first = last = None
    for line in (folder / "daemon.log").read_text().splitlines():
        event = json.loads(line)
        if event["event"] == "status_write_totals":
            totals = event
        elif event["event"] == "batch_formed" and first is None:
            first = event["timestamp"]
        elif event["event"] == "job_finished":
            last = event["timestamp"]
    phase = (stamp(last) - stamp(first)) if first and last else float("nan")
    return {
        "scripts": scripts,
        "jobs": cells,
        "done": done,
        "wall_s": wall,
        "per_job_ms": 1000 * phase / cells,
        "status_writes": totals.get("writes"),
        "status_bytes": totals.get("bytes"),
        "final_bytes": status.stat().st_size,
        "process_wchar": written,
        "sigterm_to_exit_s": stop_s,
    }


def show(label: str, r: dict[str, Any]) -> None:
    mb = (r["status_bytes"] or 0) / 1e6
    print(
        f"{label:<9} {r['jobs']:>6} jobs  wall {r['wall_s']:7.1f} s  "
        f"({r['per_job_ms']:.1f} ms/job{'' if r['done'] else ', NOT DONE'})  "
        f"status writes {r['status_writes']}  {mb:.1f} MB  "
        f"final {r['final_bytes'] / 1e3:.0f} kB  process wrote {r['process_wchar'] / 1e6:.1f} MB  "
        f"SIGTERM->exit {r['sigterm_to_exit_s']:.2f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scripts", type=int, default=1000)
    parser.add_argument("--baseline-scripts", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="po-scale-") as tmp:
        root = Path(tmp)
        repo = make_repo(root)
        base = sorted(
            (run(root / f"b{i}", repo, args.baseline_scripts, args.timeout) for i in range(3)),
            key=lambda r: r["per_job_ms"],
        )[1]
        base_per_job = base["per_job_ms"]
        show("baseline", base)
        big = run(root / "big", repo, args.scripts, args.timeout)
        show("big", big)
    print(
        f"per-job time big/baseline: {big['per_job_ms'] / base_per_job:.2f}x (goal <= 2)  "
        f"status bytes / final file: {(big['status_bytes'] or 0) / big['final_bytes']:.1f}x "
        "(goal <= 50)"
    )


if __name__ == "__main__":
    main()
