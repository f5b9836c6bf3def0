"""What worktrees a permission hides cost the daemon: idle CPU, and log lines under flapping.

A worktree the daemon cannot read (``chmod 000``) is left out of the watch and probed
every 0.5 s until it can be read again (watch/hiddenroots.py). This measures, in one run
and the same way, the daemon's idle CPU over the same trees with none of them hidden
(the baseline) and with some hidden for the whole window; then one tree whose mode flaps
between 000 and 755 every 50 ms: the ``worktree_unreadable`` / ``watcher_restarted``
lines and the CPU that costs.

As root the daemon runs without CAP_DAC_OVERRIDE (``setpriv``), or modes hide nothing.

    python benchmarks/hidden_roots.py            # 10 trees x 2,000 files, 20 s windows
    python benchmarks/hidden_roots.py --quick    # 4 trees x 500 files, 5 s windows
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import tomli_w

from latency import cpu_seconds, make_trees  # same folder: run as a script


def wait_for(predicate: Callable[[], object], timeout: float) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise SystemExit(f"timed out after {timeout:.0f}s")


def mode_obeying_prefix() -> list[str]:
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        raise SystemExit("running as root without setpriv: file modes cannot hide anything")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search", "--"]


def events(log: Path, name: str) -> int:
    count = 0
    for line in log.read_text().splitlines():
        try:
            count += json.loads(line).get("event") == name
        except ValueError:
            continue
    return count


class Daemon:
    def __init__(self, base: Path, roots: list[Path]) -> None:
        self.base = base
        self.log = base / "daemon.log"
        cfg = base / "po.toml"
        doc = {
            "daemon": {"state_dir": "state", "log_file": "daemon.log", "run_on_start": False},
            "worktrees": {"repo": "", "paths": [os.fsdecode(r) for r in roots]},
            "scripts": [{"name": "noop", "command": ["true"], "watch": ["**/*.py"]}],
        }
        cfg.write_text(tomli_w.dumps(doc))
        cfg.chmod(0o600)
        command = [sys.executable, "-m", "parallel_orchestrator", "run", "-c", os.fsdecode(cfg)]
        self.proc = subprocess.Popen(
            [*mode_obeying_prefix(), *command],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )
        status = base / "state" / "status.json"
        wait_for(lambda: status.exists() and '"idle"' in status.read_text(), 120)
        time.sleep(2.0)  # let start-up work settle before a window

    def cpu_pct(self, seconds: float, during: Callable[[float], None] | None = None) -> float:
        c0, t0 = cpu_seconds(self.proc.pid), time.monotonic()
        (during or time.sleep)(seconds)
        c1, t1 = cpu_seconds(self.proc.pid), time.monotonic()
        return round(100 * (c1 - c0) / (t1 - t0), 3)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)


def idle(work: Path, trees: int, files: int, hidden: int, seconds: float) -> dict[str, object]:
    base = work / f"idle{hidden}"
    base.mkdir()
    roots = make_trees(base, trees, files)
    for root in roots[:hidden]:
        root.chmod(0)  # hidden from the start: left out of the arm, probed every 0.5 s
    daemon = Daemon(base, roots)
    try:
        pct = daemon.cpu_pct(seconds)
    finally:
        daemon.stop()
        for root in roots:
            root.chmod(0o755)
    return {
        "trees": trees,
        "files_per_tree": files,
        "hidden": hidden,
        "idle_cpu_pct": pct,
        "worktree_unreadable": events(daemon.log, "worktree_unreadable"),
    }


def flapping(work: Path, files: int, seconds: float) -> dict[str, object]:
    """One tree hidden at start (so the watcher probes it), then flapping 000/755."""
    base = work / "flap"
    base.mkdir()
    roots = make_trees(base, 2, files)
    roots[0].chmod(0)
    daemon = Daemon(base, roots)
    flips = 0

    def flap(window: float) -> None:
        nonlocal flips
        end = time.monotonic() + window
        while time.monotonic() < end:
            roots[0].chmod(0o755)
            time.sleep(0.025)
            roots[0].chmod(0)
            time.sleep(0.025)
            flips += 1

    try:
        before = events(daemon.log, "watcher_restarted"), events(daemon.log, "worktree_unreadable")
        pct = daemon.cpu_pct(seconds, flap)
        roots[0].chmod(0o755)
        time.sleep(1.5)  # the last reveal is taken in
    finally:
        daemon.stop()
        for root in roots:
            root.chmod(0o755)
    return {
        "flapping_s": seconds,
        "flips": flips,
        "cpu_pct_while_flapping": pct,
        "watcher_restarted": events(daemon.log, "watcher_restarted") - before[0],
        "worktree_unreadable": events(daemon.log, "worktree_unreadable") - before[1],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    trees, files, seconds = (4, 500, 5.0) if args.quick else (10, 2000, 20.0)
    work = Path(tempfile.mkdtemp(prefix="po-hidden-"))
    work.chmod(0o755)
    try:
        base = idle(work, trees, files, 0, seconds)
        print(json.dumps(base), flush=True)
        half = idle(work, trees, files, trees // 2, seconds)
        print(json.dumps(half), flush=True)
        ratio = half["idle_cpu_pct"] / max(base["idle_cpu_pct"], 0.001)  # type: ignore[operator]
        print(json.dumps({"idle_cpu_ratio_hidden_vs_none": round(ratio, 2)}), flush=True)
        print(json.dumps(flapping(work, files, seconds)), flush=True)
    finally:
        for folder, dirs, _files in os.walk(work):
            for d in dirs:
                os.chmod(os.path.join(folder, d), 0o755)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
