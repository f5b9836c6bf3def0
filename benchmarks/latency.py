"""Save -> command-start latency, runs per burst, idle CPU and RSS of the watching daemon.

Compares, in one run and measured the same way, parallel-orchestrator's daemon with
``entr`` and the ``watchfiles`` CLI when they are installed (skipped cleanly otherwise):
each tool runs ``sh -c 'date +%s%N >> marks'`` on a change, and latency is the time from
just before the save to the mark. For our daemon, ``job_started`` (from its JSON log) is
reported too. All with debounce 20 ms where the tool has such a knob.

    python benchmarks/latency.py            # full run, about 3 minutes
    python benchmarks/latency.py --quick    # fewer edits, 5 s idle, 2 x 2,000 files
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

MARK_CMD = 'date +%s%N >> "$MARKS"'
CLK_TCK = os.sysconf("SC_CLK_TCK")


def git(cwd: Path, *args: str) -> None:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "b",
        "GIT_AUTHOR_EMAIL": "b@example.invalid",
        "GIT_COMMITTER_NAME": "b",
        "GIT_COMMITTER_EMAIL": "b@example.invalid",
    }
    subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True)


def marks(path: Path) -> list[float]:
    try:
        return [int(x) / 1e9 for x in path.read_text().split()]
    except FileNotFoundError:
        return []


def wait_for(predicate: Callable[[], object], timeout: float) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.002)
    return None


def save(path: Path, text: str, atomic: bool) -> None:
    if atomic:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    else:
        with open(path, "w") as f:
            f.write(text)


def cpu_seconds(pid: int) -> float:
    """utime + stime of pid and its threads (not its children)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Tool:
    name = "?"

    def __init__(self, work: Path, target: Path, marks_file: Path) -> None:
        self.work, self.target, self.marks_file = work, target, marks_file
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        raise NotImplementedError

    def ready(self) -> None:
        """Wait until the tool is watching (probe edits until one is seen)."""
        for i in range(200):
            before = len(marks(self.marks_file))
            save(self.target, f"# probe {i}\n", atomic=False)
            if wait_for(lambda before=before: len(marks(self.marks_file)) > before, 0.5):
                wait_for(lambda: False, 0.3)  # let a trailing run finish
                return
        raise RuntimeError(f"{self.name} never reacted")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def extra(self, saved_at: float) -> float | None:
        return None


class Ours(Tool):
    name = "parallel-orchestrator"

    def __init__(
        self, work: Path, target: Path, marks_file: Path, repo: Path, debounce_ms: int = 20
    ) -> None:
        super().__init__(work, target, marks_file)
        self.repo = repo
        self.debounce_ms = debounce_ms
        self.log = work / "po" / "daemon.log"

    def start(self) -> None:
        cfg = self.work / "po" / "po.toml"
        cfg.parent.mkdir(mode=0o700, exist_ok=True)
        cfg.write_text(
            tomli_w.dumps(
                {
                    "daemon": {
                        "state_dir": "state",
                        "log_file": "daemon.log",
                        "debounce_ms": self.debounce_ms,
                        "max_batch_wait_ms": 2000,
                        "run_on_start": False,
                        "on_busy": "queue",
                    },
                    "worktrees": {"repo": os.fsdecode(self.repo)},
                    "scripts": [
                        {
                            "name": "mark",
                            "command": ["sh", "-c", MARK_CMD],
                            "watch": ["**/*.py"],
                            "env": {"MARKS": os.fsdecode(self.marks_file)},
                        }
                    ],
                }
            )
        )
        cfg.chmod(0o600)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "parallel_orchestrator", "run", "-c", os.fsdecode(cfg)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )

    def extra(self, saved_at: float) -> float | None:
        """save -> job_started, from the daemon's own log."""

        def started() -> float | None:
            for line in reversed(self.log.read_text().splitlines()):
                e = json.loads(line)
                if e["event"] == "job_started":
                    ts = e["timestamp"].replace("Z", "+00:00")
                    from datetime import datetime

                    t = datetime.fromisoformat(ts).timestamp()
                    return t if t >= saved_at else None
            return None

        value = wait_for(started, 5)
        return None if value is None else float(value) - saved_at  # type: ignore[arg-type]


class Entr(Tool):
    name = "entr"

    def start(self) -> None:
        files = "\n".join(os.fsdecode(p) for p in self.target.parent.glob("*.py")) + "\n"
        self.proc = subprocess.Popen(
            ["entr", "-n", "-p", "sh", "-c", MARK_CMD],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "MARKS": os.fsdecode(self.marks_file)},
        )
        assert self.proc.stdin is not None
        self.proc.stdin.write(files.encode())
        self.proc.stdin.close()


def find_binary(name: str) -> str | None:
    """On PATH, or beside this Python (a venv's bin/ need not be on PATH)."""
    beside = Path(sys.executable).parent / name
    return shutil.which(name) or (os.fsdecode(beside) if beside.exists() else None)


class WatchfilesCli(Tool):
    name = "watchfiles CLI"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                find_binary("watchfiles") or "watchfiles",
                "--filter",
                "python",
                "--target-type",
                "command",
                f"sh -c '{MARK_CMD}'",
                os.fsdecode(self.target.parent),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "MARKS": os.fsdecode(self.marks_file)},
        )


def measure_tool(tool: Tool, edits: int, burst: int) -> dict[str, object]:
    tool.start()
    try:
        tool.ready()
        result: dict[str, object] = {"tool": tool.name}
        for atomic in (False, True):
            lat: list[float] = []
            extra: list[float] = []
            for i in range(edits):
                before = len(marks(tool.marks_file))
                t0 = time.time()
                save(tool.target, f"VALUE = {i}\n", atomic)
                got = wait_for(lambda b=before: len(marks(tool.marks_file)) > b, 5)
                if got:
                    lat.append(marks(tool.marks_file)[before] - t0)
                    e = tool.extra(t0)
                    if e is not None:
                        extra.append(e)
                wait_for(lambda: False, 0.25)  # quiet gap, so each save is its own batch
            kind = "atomic" if atomic else "plain"
            result[f"{kind}_p50_ms"] = round(1000 * pct(lat, 0.5), 1)
            result[f"{kind}_p90_ms"] = round(1000 * pct(lat, 0.9), 1)
            result[f"{kind}_missed"] = edits - len(lat)
            if extra:
                result[f"{kind}_job_started_p50_ms"] = round(1000 * pct(extra, 0.5), 1)
        runs = []
        for b in range(3):
            wait_for(lambda: False, 0.5)
            before = len(marks(tool.marks_file))
            for i in range(burst):
                save(tool.target.parent / f"burst_{i}.py", f"# {b + 1}\n", atomic=False)
            wait_for(lambda: False, 2.5)
            runs.append(len(marks(tool.marks_file)) - before)
        result["runs_per_burst"] = runs
        return result
    finally:
        tool.stop()


def make_repo(work: Path, burst: int) -> tuple[Path, Path]:
    """The burst files exist beforehand: entr only watches the files it is given."""
    repo = work / "repo"
    (repo / "pkg").mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    (repo / "pkg" / "mod.py").write_text("VALUE = 0\n")
    for i in range(burst):
        (repo / "pkg" / f"burst_{i}.py").write_text("# 0\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "x")
    return repo, repo / "pkg" / "mod.py"


def make_trees(base: Path, trees: int, files: int) -> list[Path]:
    """``trees`` folders ``base/tree<n>`` of ``files`` empty ``.py`` files, 100 a folder."""
    roots = []
    for t in range(trees):
        root = base / f"tree{t}"
        for d in range(max(1, files // 100)):
            folder = root / f"d{d}"
            folder.mkdir(parents=True)
            for f in range(min(100, files)):
                (folder / f"f{f}.py").write_bytes(b"")
        roots.append(root)
    return roots


def idle_and_rss(
    work: Path, trees: int, files: int, idle_s: float, debounce_ms: int
) -> dict[str, object]:
    """Idle CPU and RSS while watching ``trees`` folders of ``files`` files each."""
    base = work / f"big{debounce_ms}"
    paths = [os.fsdecode(root) for root in make_trees(base, trees, files)]
    cfg = base / "po.toml"
    cfg.write_text(
        tomli_w.dumps(
            {
                "daemon": {
                    "state_dir": "state",
                    "log_file": "daemon.log",
                    "debounce_ms": debounce_ms,
                    "max_batch_wait_ms": max(debounce_ms, 2000),
                    "run_on_start": False,
                },
                "worktrees": {"repo": "", "paths": paths, "respect_gitignore": False},
                "scripts": [{"name": "noop", "command": ["true"], "watch": ["**/*.py"]}],
            }
        )
    )
    cfg.chmod(0o600)
    base.chmod(0o700)
    proc = subprocess.Popen(
        [sys.executable, "-m", "parallel_orchestrator", "run", "-c", os.fsdecode(cfg)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    try:
        status = base / "state" / "status.json"
        wait_for(lambda: status.exists() and '"idle"' in status.read_text(), 120)
        time.sleep(2.0)  # let start-up work settle before the idle window
        c0, t0 = cpu_seconds(proc.pid), time.monotonic()
        time.sleep(idle_s)
        c1, t1 = cpu_seconds(proc.pid), time.monotonic()
        return {
            "trees": trees,
            "files_per_tree": files,
            "debounce_ms": debounce_ms,
            "idle_cpu_pct": round(100 * (c1 - c0) / (t1 - t0), 3),
            "rss_mb": round(rss_mb(proc.pid), 1),
        }
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        shutil.rmtree(base, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    edits, burst = (8, 200) if args.quick else (25, 200)
    idle_s, trees, files = (5.0, 2, 2000) if args.quick else (30.0, 10, 10_000)
    work = Path(tempfile.mkdtemp(prefix="po-bench-"))
    work.chmod(0o700)
    rows: list[dict[str, object]] = []
    try:
        for cls in (Ours, Entr, WatchfilesCli):
            binary = {"entr": "entr", "watchfiles CLI": "watchfiles"}.get(cls.name)
            if binary and find_binary(binary) is None:
                print(f"skip {cls.name}: not installed")
                continue
            sub = work / cls.name.replace(" ", "_")
            sub.mkdir()
            repo, target = make_repo(sub, burst)
            mk = sub / "marks"
            tool = Ours(sub, target, mk, repo) if cls is Ours else cls(sub, target, mk)
            row = measure_tool(tool, edits, burst)
            rows.append(row)
            print(json.dumps(row), flush=True)
        print()
        print(
            f"{'tool':<22} {'plain p50/p90 ms':>17} {'atomic p50/p90 ms':>18} "
            f"{'runs per burst':>15}"
        )
        for r in rows:
            print(
                f"{r['tool']:<22} {r['plain_p50_ms']:>8}/{r['plain_p90_ms']:<8} "
                f"{r['atomic_p50_ms']:>9}/{r['atomic_p90_ms']:<8} {r['runs_per_burst']!s:>15}"
            )
        ours = rows[0]
        for r in rows[1:]:
            print(
                f"ratio p50 plain ours/{r['tool']}: "
                f"{ours['plain_p50_ms'] / r['plain_p50_ms']:.2f}  atomic: "  # type: ignore[operator]
                f"{ours['atomic_p50_ms'] / r['atomic_p50_ms']:.2f}"
            )  # type: ignore[operator]
        for debounce in (20, 200):
            idle = idle_and_rss(work, trees, files, idle_s, debounce)
            print(json.dumps(idle), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
