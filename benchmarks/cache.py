"""Result reuse: what computing input keys costs, and what reuse saves.

    .venv/bin/python benchmarks/cache.py [--files 10000] [--repeat 7] [--part keys|real|all]

Part ``keys`` (a synthetic git worktree of N source files, 0.1-40 KB, in 50 folders, plus
10% unwatched files):

* incremental: one watched file rewritten with new content, its path marked as the
  watcher would, then the script's input key computed; p50/p90 over ``repeat x 10``
  saves. Goal: p50 <= 5 ms.
* cold: a fresh index lists the worktree (git ls-files) and hashes every watched file,
  against ``git hash-object --stdin-paths`` over exactly the same files in the same run,
  alternating, medians (both read from a warm page cache). Goal: ratio <= 1.0.
* the hash choice: XXH3-128 vs BLAKE3 (and SHA-1, git's) over the same file contents.

Part ``real``: four fresh worktrees of one commit of a
real project's test suite (more-itertools' sdist, fetched with pip), the real daemon run
with ``run_on_start``; wall time from start to all four verdicts, with and without
``cache = true``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from parallel_orchestrator.cache.index import FileDigestIndex
from parallel_orchestrator.cache.inputkey import input_key
from parallel_orchestrator.cache.listing import IgnoreRules, list_files
from parallel_orchestrator.repo.pathglob import matches_any
from parallel_orchestrator.settings.loader import ScriptSettings
from realproject import Daemon, daemon_doc, fetch_project, git

GIT_ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "b",
    "GIT_AUTHOR_EMAIL": "b@example.invalid",
    "GIT_COMMITTER_NAME": "b",
    "GIT_COMMITTER_EMAIL": "b@example.invalid",
}
SCRIPT = ScriptSettings(name="tests", command=("python", "-m", "pytest", "-q"), watch=("**/*.py",))
RULES = IgnoreRules(globs=(), respect_gitignore=True)


def make_worktree(root: Path, n: int) -> Path:
    rng = random.Random(13)
    wt = root / "wt"
    wt.mkdir()
    line = b"value = compute(alpha, beta)  # a typical line of code\n"
    for i in range(n):
        folder = wt / f"pkg{i % 50}" / f"sub{i % 7}"
        folder.mkdir(parents=True, exist_ok=True)
        size = int(min(40_000, rng.lognormvariate(8, 1)))  # median ~3 KB
        (folder / f"mod{i}.py").write_bytes(line * (size // len(line) + 1))
        if i % 10 == 0:
            (folder / f"data{i}.txt").write_bytes(b"unwatched\n" * 10)
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=wt, check=True)
    subprocess.run(["git", "add", "-A"], cwd=wt, check=True, env=GIT_ENV)
    subprocess.run(["git", "commit", "-q", "-m", "x"], cwd=wt, check=True, env=GIT_ENV)
    return wt


def key_now(index: FileDigestIndex) -> str | None:
    return input_key(SCRIPT, index.view_digest(SCRIPT.watch))


def bench_incremental(wt: Path, saves: int) -> list[float]:
    index = FileDigestIndex(wt, RULES)
    key_now(index)
    files = sorted(r for r in list_files(wt, RULES) if matches_any(r, SCRIPT.watch))
    rng = random.Random(7)
    times = []
    for i in range(saves):
        rel = rng.choice(files)
        path = wt / rel
        path.write_bytes(path.read_bytes() + f"# save {i}\n".encode())
        t0 = time.perf_counter()
        index.mark_changed([rel])
        key_now(index)
        times.append(time.perf_counter() - t0)
    return times


def bench_cold(wt: Path, repeat: int) -> tuple[list[float], list[float], int]:
    files = sorted(r for r in list_files(wt, RULES) if matches_any(r, SCRIPT.watch))
    stdin = "".join(f"{f}\n" for f in files).encode()
    ours, git = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        index = FileDigestIndex(wt, RULES)
        key_now(index)
        ours.append(time.perf_counter() - t0)
        assert index.rehashed == len(files), (index.rehashed, len(files))
        t0 = time.perf_counter()
        subprocess.run(
            ["git", "hash-object", "--stdin-paths"],
            cwd=wt,
            input=stdin,
            check=True,
            capture_output=True,
        )
        git.append(time.perf_counter() - t0)
    return ours, git, len(files)


def bench_hashes(wt: Path) -> dict[str, float]:
    import xxhash

    files = sorted(r for r in list_files(wt, RULES) if matches_any(r, SCRIPT.watch))
    blobs = [(wt / f).read_bytes() for f in files]
    fns = {"xxh3_128": xxhash.xxh3_128_digest, "sha1": lambda b: hashlib.sha1(b).digest()}
    try:
        import blake3

        fns["blake3"] = lambda b: blake3.blake3(b).digest()
    except ImportError:
        pass
    out = {}
    for name, fn in fns.items():
        best = min(_timed(lambda fn=fn: [fn(b) for b in blobs]) for _ in range(5))
        out[name] = best
    big = os.urandom(64 << 20)
    for name, fn in fns.items():
        out[name + "_GBps"] = len(big) / min(_timed(lambda fn=fn: fn(big)) for _ in range(3)) / 1e9
    return out


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def part_keys(n: int, repeat: int) -> None:
    with tempfile.TemporaryDirectory(prefix="po-cache-bench-") as tmp:
        wt = make_worktree(Path(tmp), n)
        inc = sorted(bench_incremental(wt, repeat * 10))
        p50, p90 = statistics.median(inc), inc[int(len(inc) * 0.9) - 1]
        print(
            f"incremental key after a one-file save ({n} files): p50 {ms(p50)}  p90 {ms(p90)}"
            f"  (goal p50 <= 5 ms: {'met' if p50 <= 0.005 else 'MISSED'})"
        )
        ours, git, count = bench_cold(wt, repeat)
        mo, mg = statistics.median(ours), statistics.median(git)
        print(
            f"cold key ({count} watched files): ours {ms(mo)}  git hash-object --stdin-paths "
            f"{ms(mg)}  ratio {mo / mg:.2f}x  (goal <= 1.0x: {'met' if mo <= mg else 'MISSED'})"
        )
        h = bench_hashes(wt)
        per_file = {k: v for k, v in h.items() if not k.endswith("_GBps")}
        print(
            "hash only, same contents, best of 5: "
            + "  ".join(
                f"{k} {ms(v)} ({v / count * 1e6:.2f} us/file, {h[k + '_GBps']:.1f} GB/s on 64 MiB)"
                for k, v in per_file.items()
            )
        )


def fresh_worktrees(src: Path, root: Path, n: int) -> Path:
    """A clone of ``src`` with ``n - 1`` linked worktrees: ``n`` hypotheses of one commit."""
    repo = root / "repo"
    git(root, "clone", "-q", os.fsdecode(src), os.fsdecode(repo))
    for i in range(1, n):
        git(repo, "worktree", "add", "-q", "-b", f"hyp-{i}", os.fsdecode(root / f"hyp-{i}"))
    return repo


def part_real(work: Path | None) -> None:
    with tempfile.TemporaryDirectory(prefix="po-cache-real-") as tmp:
        src, python = fetch_project(work or Path(tmp) / "work")
        walls = {}
        for cache in (False, True):
            root = Path(tmp) / f"cache-{cache}"
            root.mkdir()
            repo = fresh_worktrees(src, root, 4)
            script = {
                "name": "tests",
                "command": [os.fsdecode(python), "-m", "pytest", "-q", "-p", "no:cacheprovider"],
                "watch": ["**/*.py"],
                "timeout_s": 1800,
                "cache": cache,
            }
            t0 = time.time()
            daemon = Daemon(root / "daemon", daemon_doc(repo, [script], run_on_start=True))
            try:
                done = daemon.wait(
                    lambda d=daemon: (
                        len(d.events("job_finished")) >= 4 and d.events("job_finished")
                    ),
                    3600,
                    "four verdicts",
                )
            finally:
                daemon.stop()
            last = max(_stamp(e) for e in done)
            walls[cache] = last - t0
            ran = len(daemon.events("job_started"))
            results = sorted(e["result"] for e in done)
            print(
                f"4 fresh worktrees, cache = {str(cache).lower()}: all verdicts in "
                f"{walls[cache]:.1f} s, {ran} processes started, results {results}"
            )
        print(f"time to all verdicts with cache: {walls[True] / walls[False]:.2f}x without")


def _stamp(event: dict) -> float:
    from datetime import datetime

    return datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--part", choices=("keys", "real", "all"), default="keys")
    ap.add_argument("--work", type=Path, default=None, help="keep the real project's download here")
    args = ap.parse_args()
    if args.part in ("keys", "all"):
        part_keys(args.files, args.repeat)
    if args.part in ("real", "all"):
        part_real(args.work)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
