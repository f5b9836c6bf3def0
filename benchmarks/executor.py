"""Executor overhead: this executor vs the original tool's thread pool vs a posix_spawn floor.

    .venv/bin/python benchmarks/executor.py [--repeat 5] [--concurrency 8]

Workloads: (a) 500 jobs of /bin/true — pure per-job overhead; (b) 50 jobs of `sleep 0.1`
— scheduling. Variants, each run in a fresh interpreter so peak RSS is per variant:

* ``executor``   AsyncTestExecutor.execute_parallel (run_job underneath; library mode)
* ``daemon``     run_job as the daemon runs it: subreaper on, escapee sweep after each job
* ``spawn_in_thread`` the runner's spawn design stripped to its core: Popen in a 4-thread
  pool (fork/exec off the event loop), output via add_reader, exit via pidfd; no kill logic
* ``threadpool`` ThreadPoolExecutor + subprocess.run(capture_output=True), the original's shape
* ``asyncio_bare`` create_subprocess_exec + communicate under a semaphore, nothing else: what
  the asyncio subprocess API costs by itself (no process group, no kill, no bounds)
* ``posix_spawn`` os.posix_spawn + os.waitpid, at most N in flight: the floor

Each job runs ``<worktree>/.falsification/test_<id>.sh`` (a symlink to /bin/true for (a), a
``#!/bin/sh`` script for (b)), the same file for every variant. Reported: median wall and
CPU (user+sys of the interpreter and its reaped children, measured around the work only),
median "own" CPU (the interpreter alone: the variant's overhead without the processes'
own cost, which is the same for all), max peak RSS, and ratios of median walls.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

VARIANTS = ("executor", "daemon", "asyncio_bare", "spawn_in_thread", "threadpool", "posix_spawn")
WORKLOADS = {"a": ("500 x /bin/true", 500), "b": ("50 x sleep 0.1", 50)}


def make_worktree(root: Path, workload: str, n: int) -> Path:
    wt = root / f"wt-{workload}"
    scripts = wt / ".falsification"
    scripts.mkdir(parents=True)
    sleeper = root / "sleep.sh"
    sleeper.write_text("#!/bin/sh\nexec sleep 0.1\n")
    sleeper.chmod(0o755)
    target = "/bin/true" if workload == "a" else str(sleeper)
    for i in range(n):
        (scripts / f"test_h{i}.sh").symlink_to(target)
    return wt


def scripts_of(wt: Path, n: int) -> list[str]:
    return [str(wt / ".falsification" / f"test_h{i}.sh") for i in range(n)]


def run_executor(wt: Path, n: int, conc: int) -> None:
    from parallel_orchestrator.async_test_executor import AsyncTestExecutor
    from parallel_orchestrator.config import FalsificationConfig, Hypothesis, TestResult

    hyps = [Hypothesis(id=f"h{i}", description="") for i in range(n)]
    ex = AsyncTestExecutor(FalsificationConfig(max_concurrent_tests=conc))
    results = ex.execute_parallel(hyps, {h.id: wt for h in hyps})
    assert all(r.result is TestResult.PASS for r in results), results[:3]


def run_daemon_style(wt: Path, n: int, conc: int) -> None:
    from parallel_orchestrator.jobs import janitor
    from parallel_orchestrator.jobs.runner import JobSpec, run_job

    janitor.become_subreaper()
    env = dict(os.environ)

    async def main() -> None:
        limit = asyncio.Semaphore(conc)

        async def one(i: int, script: str) -> str:
            async with limit:
                spec = JobSpec(argv=(script,), cwd=wt, env=env, timeout_s=300, job_id=f"b-{i}")
                return (await run_job(spec)).result

        results = await asyncio.gather(*(one(i, s) for i, s in enumerate(scripts_of(wt, n))))
        assert set(results) == {"pass"}, results[:3]

    asyncio.run(main())


def run_threadpool(wt: Path, n: int, conc: int) -> None:
    def one(script: str) -> int:
        proc = subprocess.run([script], capture_output=True, text=True, timeout=300, cwd=wt)
        return proc.returncode

    with ThreadPoolExecutor(max_workers=conc) as pool:
        codes = list(pool.map(one, scripts_of(wt, n)))
    assert set(codes) == {0}


def run_asyncio_bare(wt: Path, n: int, conc: int) -> None:
    async def main() -> None:
        limit = asyncio.Semaphore(conc)

        async def one(script: str) -> int | None:
            async with limit:
                proc = await asyncio.create_subprocess_exec(
                    script, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=wt
                )
                await asyncio.wait_for(proc.communicate(), 300)
                return proc.returncode

        codes = await asyncio.gather(*(one(s) for s in scripts_of(wt, n)))
        assert set(codes) == {0}

    if sys.version_info < (3, 12):  # same child watcher as ours, so only the API differs
        from parallel_orchestrator.jobs.runner import install_child_watcher

        install_child_watcher()
    asyncio.run(main())


def run_spawn_in_thread(wt: Path, n: int, conc: int) -> None:
    pool = ThreadPoolExecutor(max_workers=4)

    async def one(script: str) -> int | None:
        loop = asyncio.get_running_loop()
        r, w = os.pipe2(os.O_CLOEXEC)
        try:
            proc = await loop.run_in_executor(
                pool,
                lambda: subprocess.Popen(
                    [script],
                    stdin=subprocess.DEVNULL,
                    stdout=w,
                    stderr=w,
                    cwd=wt,
                    start_new_session=True,
                ),
            )
        finally:
            os.close(w)
        os.set_blocking(r, False)
        eof, exited = loop.create_future(), loop.create_future()

        def readable() -> None:
            if not os.read(r, 262144):
                loop.remove_reader(r)
                eof.set_result(None)

        pidfd = os.pidfd_open(proc.pid)

        def ended() -> None:
            loop.remove_reader(pidfd)
            exited.set_result(proc.wait())

        loop.add_reader(r, readable)
        loop.add_reader(pidfd, ended)
        code = await exited
        await eof
        os.close(r)
        os.close(pidfd)
        return code

    async def main() -> None:
        limit = asyncio.Semaphore(conc)

        async def bounded(script: str) -> int | None:
            async with limit:
                return await one(script)

        codes = await asyncio.gather(*(bounded(s) for s in scripts_of(wt, n)))
        assert set(codes) == {0}

    asyncio.run(main())
    pool.shutdown()


def run_posix_spawn(wt: Path, n: int, conc: int) -> None:
    env = dict(os.environ)
    pending = scripts_of(wt, n)
    running = 0
    while pending or running:
        while pending and running < conc:
            script = pending.pop()
            os.posix_spawn(script, [script], env)
            running += 1
        _, status = os.waitpid(-1, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        running -= 1


RUNNERS: dict[str, Callable[[Path, int, int], None]] = {
    "executor": run_executor,
    "daemon": run_daemon_style,
    "asyncio_bare": run_asyncio_bare,
    "spawn_in_thread": run_spawn_in_thread,
    "threadpool": run_threadpool,
    "posix_spawn": run_posix_spawn,
}


def cpu_seconds() -> tuple[float, float]:
    """(CPU of this interpreter, CPU of it plus its reaped children), user+sys."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = me.ru_utime + me.ru_stime
    return own, own + kids.ru_utime + kids.ru_stime


def child_main(variant: str, wt: Path, n: int, conc: int) -> None:
    """One measurement in this (fresh) interpreter; prints one JSON line."""
    if variant in ("executor", "daemon", "asyncio_bare"):  # one-time cost: not measured
        import parallel_orchestrator.async_test_executor  # noqa: F401
    own0, cpu0 = cpu_seconds()
    t0 = time.perf_counter()
    RUNNERS[variant](wt, n, conc)
    wall = time.perf_counter() - t0
    own1, cpu1 = cpu_seconds()
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"wall": wall, "cpu": cpu1 - cpu0, "own": own1 - own0, "rss_mb": rss_mb}))


def measure(variant: str, wt: Path, n: int, conc: int) -> dict[str, float]:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", variant, str(wt), str(n), str(conc)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{variant} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument(
        "--child", nargs=4, metavar=("VARIANT", "WT", "N", "CONC"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        variant, wt, n, conc = args.child
        child_main(variant, Path(wt), int(n), int(conc))
        return 0

    variants = [v for v in args.variants.split(",") if v]
    root = Path(tempfile.mkdtemp(prefix="po-bench-"))
    try:
        print(
            f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
            f"concurrency {args.concurrency}, median of {args.repeat} runs"
        )
        for workload, (label, n) in WORKLOADS.items():
            wt = make_worktree(root, workload, n)
            samples: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
            for r in range(args.repeat):
                order = variants[r % len(variants) :] + variants[: r % len(variants)]
                for v in order:  # rotate so no variant always runs first
                    samples[v].append(measure(v, wt, n, args.concurrency))
            med = {
                v: {k: statistics.median(s[k] for s in samples[v]) for k in ("wall", "cpu", "own")}
                for v in variants
            }
            print(f"\n({workload}) {label}")
            print(
                f"  {'variant':<15} {'wall s':>8} {'cpu s':>8} {'own cpu':>8} {'rss MB':>7}"
                f" {'wall/pool':>10} {'wall/spawn':>11}"
            )
            for v in variants:
                rss = max(s["rss_mb"] for s in samples[v])
                pool = med.get("threadpool", {}).get("wall")
                floor = med.get("posix_spawn", {}).get("wall")
                vs_pool = f"{med[v]['wall'] / pool:.2f}x" if pool else "-"
                vs_floor = f"{med[v]['wall'] / floor:.2f}x" if floor else "-"
                print(
                    f"  {v:<15} {med[v]['wall']:>8.3f} {med[v]['cpu']:>8.3f}"
                    f" {med[v]['own']:>8.3f} {rss:>7.1f} {vs_pool:>10} {vs_floor:>11}"
                )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
