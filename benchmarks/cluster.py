"""The dask backend's cost: 200 short jobs through a 2-worker LocalCluster vs the local backend.

    .venv/bin/python benchmarks/cluster.py [--jobs 200] [--concurrency 8] [--rounds 3]

Both backends run the same ``JobSpec`` (``/bin/true`` with a run log, as the daemon runs
it) in the same process and the same run:

* latency: the jobs one after another; per job, the time from ``backend.run()`` to its
  return. Added latency = the dask figure minus the local one (p50 and p90).
* Dask's own floor, same cluster: an empty coroutine task submitted and awaited (the
  result fetched as usual), and one whose result comes back as a worker event (the path
  the backend uses for small results). What is left above it is the backend's own cost.
* throughput: all jobs at once, at most ``--concurrency`` in flight (the cluster has 2
  workers x concurrency/2 threads); wall time of the lot and the ratio dask / local.

The cluster's workers and their job hosts are started and warmed up before timing (the
first job on a worker pays for starting its job host, ~0.2 s, once).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

from distributed import Client, LocalCluster, get_worker

from parallel_orchestrator.backends.base import JobBackend, LocalBackend
from parallel_orchestrator.backends.daskcluster import DaskBackend
from parallel_orchestrator.jobs.model import JobSpec


def spec(folder: Path, n: int) -> JobSpec:
    job_id = f"bench-{n}"
    return JobSpec(
        argv=("/bin/true",),
        cwd=folder,
        env=dict(os.environ, PO_JOB_ID=job_id),
        timeout_s=60,
        job_id=job_id,
        log_path=folder / f"{job_id}.log",
    )


async def one_by_one(backend: JobBackend, folder: Path, jobs: int, base: int) -> list[float]:
    times = []
    for n in range(base, base + jobs):
        t0 = time.perf_counter()
        outcome = await backend.run(spec(folder, n))
        times.append(time.perf_counter() - t0)
        assert outcome.result == "pass", outcome
    return times


async def all_at_once(backend: JobBackend, folder: Path, jobs: int, base: int, limit: int) -> float:
    gate = asyncio.Semaphore(limit)

    async def one(n: int) -> None:
        async with gate:
            outcome = await backend.run(spec(folder, n))
            assert outcome.result == "pass", outcome

    t0 = time.perf_counter()
    await asyncio.gather(*(one(n) for n in range(base, base + jobs)))
    return time.perf_counter() - t0


async def empty_task(n: int, topic: str) -> int:
    if topic:
        get_worker().log_event(topic, {"n": n})
    return n


async def dask_floor(address: str, jobs: int) -> tuple[list[float], list[float]]:
    """Per task: submit -> result, and submit -> the task's event."""
    async with Client(address, asynchronous=True) as client:
        loop = asyncio.get_running_loop()
        heard: dict[int, asyncio.Future[None]] = {}

        def on_event(event: tuple[float, dict[str, int]]) -> None:
            fut = heard.get(event[1]["n"])
            if fut is not None and not fut.done():
                fut.set_result(None)

        client.subscribe_topic("bench-floor", on_event)
        await client.submit(empty_task, -1, "", pure=False)
        by_result, by_event = [], []
        for n in range(jobs):
            t0 = time.perf_counter()
            await client.submit(empty_task, n, "", pure=False)
            by_result.append(time.perf_counter() - t0)
            heard[n] = loop.create_future()
            t0 = time.perf_counter()
            future = client.submit(empty_task, n, "bench-floor", pure=False)
            await heard[n]
            by_event.append(time.perf_counter() - t0)
            await future
        return by_result, by_event


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main(args: argparse.Namespace) -> None:
    threads = max(1, args.concurrency // 2)
    async with LocalCluster(
        n_workers=2,
        threads_per_worker=threads,
        processes=True,
        dashboard_address=None,
        asynchronous=True,
        silence_logs=40,
    ) as cluster:
        dask = DaskBackend(cluster.scheduler_address)
        await dask.start()
        local = LocalBackend()
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            base = 0
            await all_at_once(dask, folder, 4 * args.concurrency, base, args.concurrency)  # warm
            await one_by_one(local, folder, 20, base)
            base += 10_000
            rows = []
            for r in range(args.rounds):
                lat_local = await one_by_one(local, folder, args.jobs, base)
                base += 10_000
                lat_dask = await one_by_one(dask, folder, args.jobs, base)
                base += 10_000
                wall_local = await all_at_once(local, folder, args.jobs, base, args.concurrency)
                base += 10_000
                wall_dask = await all_at_once(dask, folder, args.jobs, base, args.concurrency)
                base += 10_000
                floor_result, floor_event = await dask_floor(cluster.scheduler_address, args.jobs)
                rows.append((lat_local, lat_dask, wall_local, wall_dask, floor_result, floor_event))
                print(
                    f"round {r + 1}: one by one p50 local {pct(lat_local, 0.5) * 1e3:.2f} ms, "
                    f"dask {pct(lat_dask, 0.5) * 1e3:.2f} ms, empty dask task "
                    f"{pct(floor_result, 0.5) * 1e3:.2f} ms (by event "
                    f"{pct(floor_event, 0.5) * 1e3:.2f} ms); "
                    f"{args.jobs} at once (<= {args.concurrency}) local {wall_local:.3f} s, "
                    f"dask {wall_dask:.3f} s"
                )
        await dask.close()
    lat_local = [t for row in rows for t in row[0]]
    lat_dask = [t for row in rows for t in row[1]]
    added50 = (pct(lat_dask, 0.5) - pct(lat_local, 0.5)) * 1e3
    added90 = (pct(lat_dask, 0.9) - pct(lat_local, 0.9)) * 1e3
    floor_result = [t for row in rows for t in row[4]]
    floor_event = [t for row in rows for t in row[5]]
    wall_local = statistics.median(row[2] for row in rows)
    wall_dask = statistics.median(row[3] for row in rows)
    print(f"\n{args.jobs} x /bin/true, 2-worker LocalCluster(processes=True), {args.rounds} rounds")
    print(
        f"latency per job p50: local {pct(lat_local, 0.5) * 1e3:.2f} ms, "
        f"dask {pct(lat_dask, 0.5) * 1e3:.2f} ms -> added {added50:.2f} ms (goal <= 5 ms)"
    )
    print(
        f"Dask's floor p50: an empty task {pct(floor_result, 0.5) * 1e3:.2f} ms, "
        f"its event {pct(floor_event, 0.5) * 1e3:.2f} ms -> the backend's own cost "
        f"{(pct(lat_dask, 0.5) - pct(floor_event, 0.5)) * 1e3:.2f} ms above the event floor"
    )
    print(
        f"latency per job p90: local {pct(lat_local, 0.9) * 1e3:.2f} ms, "
        f"dask {pct(lat_dask, 0.9) * 1e3:.2f} ms -> added {added90:.2f} ms"
    )
    print(
        f"wall, all at once (<= {args.concurrency} in flight): local {wall_local:.3f} s, "
        f"dask {wall_dask:.3f} s -> ratio {wall_dask / wall_local:.2f}x"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    asyncio.run(main(parser.parse_args()))
