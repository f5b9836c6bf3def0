"""Scheduling rules with in-process jobs (real processes are covered by the e2e tests)."""

from __future__ import annotations

import asyncio

from parallel_orchestrator.pipeline.scheduler import JobRequest, Scheduler, SchedulerHooks


class Recorder(SchedulerHooks):
    def __init__(self) -> None:
        self.dropped_reqs: list[tuple[JobRequest, str]] = []
        self.idle_event = asyncio.Event()

    def dropped(self, req: JobRequest, reason: str) -> None:
        self.dropped_reqs.append((req, reason))

    def idle(self) -> None:
        self.idle_event.set()


class Jobs:
    """Each started job waits for its own release event; records starts and ends."""

    def __init__(self) -> None:
        self.started: list[JobRequest] = []
        self.finished: list[tuple[JobRequest, str]] = []
        self.release: dict[int, asyncio.Event] = {}
        self.running = 0
        self.max_running = 0
        self.changed = asyncio.Event()

    async def run(self, req: JobRequest) -> None:
        index = len(self.started)
        self.started.append(req)
        self.release[index] = asyncio.Event()
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        self.changed.set()
        try:
            await self.release[index].wait()
            self.finished.append((req, "done"))
        except asyncio.CancelledError:
            self.finished.append((req, "cancelled"))
            raise
        finally:
            self.running -= 1
            self.changed.set()

    async def until(self, predicate, timeout: float = 5.0) -> None:
        async def loop() -> None:
            while not predicate():
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(loop(), timeout)


def req(h: str, s: str = "t", batch: str = "b1", *changed: str) -> JobRequest:
    return JobRequest(h, s, batch, set(changed))


async def test_concurrency_limit_is_never_exceeded() -> None:
    jobs = Jobs()
    sched = Scheduler(jobs.run, concurrency=2, on_busy="queue")
    for i in range(6):
        sched.submit(req(f"h{i}"))
    await jobs.until(lambda: len(jobs.started) == 2)
    assert len(sched.waiting) == 4
    for i in range(6):
        await jobs.until(lambda i=i: i in jobs.release)
        jobs.release[i].set()
    await jobs.until(lambda: len(jobs.finished) == 6)
    assert jobs.max_running == 2


async def test_restart_cancels_and_reruns_with_the_newest_batch() -> None:
    jobs = Jobs()
    sched = Scheduler(jobs.run, concurrency=4, on_busy="restart")
    sched.submit(req("h", batch="b1"))
    await jobs.until(lambda: len(jobs.started) == 1)
    assert sched.submit(req("h", "t", "b2", "x.py")) == "restarting"
    assert sched.submit(req("h", "t", "b3", "y.py")) == "restarting"
    await jobs.until(lambda: len(jobs.started) == 2)
    assert jobs.finished[0][1] == "cancelled"
    rerun = jobs.started[1]
    assert rerun.batch_id == "b3" and rerun.changed == {"x.py", "y.py"}
    assert jobs.max_running == 1  # never two at once in one worktree


async def test_queue_coalesces_into_one_rerun() -> None:
    jobs = Jobs()
    sched = Scheduler(jobs.run, concurrency=4, on_busy="queue")
    sched.submit(req("h", batch="b1"))
    await jobs.until(lambda: len(jobs.started) == 1)
    for n in range(2, 6):
        assert sched.submit(req("h", batch=f"b{n}")) == "rerun"
    jobs.release[0].set()
    await jobs.until(lambda: len(jobs.started) == 2)
    assert jobs.finished[0][1] == "done"
    assert jobs.started[1].batch_id == "b5"
    jobs.release[1].set()
    await jobs.until(lambda: len(jobs.finished) == 2)
    assert len(jobs.started) == 2  # exactly one rerun


async def test_ignore_drops_while_busy() -> None:
    hooks = Recorder()
    jobs = Jobs()
    sched = Scheduler(jobs.run, concurrency=4, on_busy="ignore", hooks=hooks)
    sched.submit(req("h"))
    await jobs.until(lambda: len(jobs.started) == 1)
    assert sched.submit(req("h", batch="b2")) == "ignored"
    jobs.release[0].set()
    await asyncio.wait_for(hooks.idle_event.wait(), 5)
    assert len(jobs.started) == 1
    assert hooks.dropped_reqs[0][1] == "busy"


async def test_failing_jobs_start_first() -> None:
    jobs = Jobs()
    # 0 = last result was not pass; 1 = it passed
    last = {("pass1", "t"): 1, ("fail1", "t"): 0, ("pass2", "t"): 1, ("fail2", "t"): 0}
    sched = Scheduler(jobs.run, concurrency=1, on_busy="queue", priority=lambda k: last.get(k, 1))
    sched.submit(req("first"))
    await jobs.until(lambda: len(jobs.started) == 1)
    for h in ("pass1", "fail1", "pass2", "fail2"):
        sched.submit(req(h))
    for i in range(5):
        await jobs.until(lambda i=i: i in jobs.release)
        jobs.release[i].set()
    await jobs.until(lambda: len(jobs.finished) == 5)
    assert [r.hypothesis for r in jobs.started] == ["first", "fail1", "fail2", "pass1", "pass2"]


async def test_cancel_hypothesis_and_shutdown() -> None:
    hooks = Recorder()
    jobs = Jobs()
    sched = Scheduler(jobs.run, concurrency=1, on_busy="queue", hooks=hooks)
    sched.submit(req("gone"))
    sched.submit(req("other"))
    await jobs.until(lambda: len(jobs.started) == 1)
    sched.cancel_hypothesis("gone")
    await jobs.until(lambda: len(jobs.started) == 2)
    assert jobs.finished[0] == (jobs.started[0], "cancelled")
    sched.submit(req("third"))
    stuck = await sched.shutdown(timeout=5)
    assert stuck == []
    assert "third" in {r.hypothesis for r, why in hooks.dropped_reqs if why == "stopping"}
    assert jobs.finished[-1][1] == "cancelled"
    assert sched.submit(req("late")) == "ignored"


# -- exclusive scripts ----------------------------------------------------------------


class OverlapJobs(Jobs):
    """Also tracks, per script, how many of its jobs run at once; a cancelled job takes
    its time to die (like a process group getting SIGTERM then a grace period)."""

    def __init__(self) -> None:
        super().__init__()
        self.per_script: dict[str, int] = {}
        self.max_per_script: dict[str, int] = {}
        self.dying = asyncio.Event()  # set: cancelled jobs may finish dying

    async def run(self, req: JobRequest) -> None:
        s = req.script
        self.per_script[s] = self.per_script.get(s, 0) + 1
        self.max_per_script[s] = max(self.max_per_script.get(s, 0), self.per_script[s])
        try:
            await super().run(req)
        except asyncio.CancelledError:
            await self.dying.wait()
            raise
        finally:
            self.per_script[s] -= 1


async def release_all(jobs: Jobs, total: int) -> None:
    for i in range(total):
        await jobs.until(lambda i=i: i in jobs.release)
        jobs.release[i].set()
    await jobs.until(lambda: len(jobs.finished) == total)


async def test_exclusive_jobs_never_overlap_and_are_served_in_arrival_order() -> None:
    jobs = OverlapJobs()
    # The failing-first priority would put h4 first; an exclusive queue is FIFO.
    sched = Scheduler(
        jobs.run,
        concurrency=4,
        on_busy="queue",
        exclusive={"db"},
        priority=lambda k: 0 if k[0] == "h4" else 1,
    )
    for h in ("h1", "h2", "h3", "h4"):
        sched.submit(req(h, "db"))
    await jobs.until(lambda: len(jobs.started) == 1)
    assert len(sched.waiting) == 3
    await release_all(jobs, 4)
    assert [r.hypothesis for r in jobs.started] == ["h1", "h2", "h3", "h4"]
    assert jobs.max_per_script["db"] == 1


async def test_other_scripts_run_beside_an_exclusive_one() -> None:
    jobs = OverlapJobs()
    sched = Scheduler(jobs.run, concurrency=4, on_busy="queue", exclusive={"db"})
    for h in ("h1", "h2"):
        sched.submit(req(h, "db"))
        sched.submit(req(h, "unit"))
    await jobs.until(lambda: len(jobs.started) == 3)
    assert sorted((r.hypothesis, r.script) for r in jobs.started) == [
        ("h1", "db"),
        ("h1", "unit"),
        ("h2", "unit"),
    ]
    await release_all(jobs, 4)
    assert jobs.max_per_script == {"db": 1, "unit": 2}


async def test_exclusive_rerun_queues_behind_other_hypotheses() -> None:
    jobs = OverlapJobs()
    sched = Scheduler(jobs.run, concurrency=4, on_busy="queue", exclusive={"db"})
    sched.submit(req("h1", "db"))
    sched.submit(req("h2", "db"))
    await jobs.until(lambda: len(jobs.started) == 1)
    assert sched.submit(req("h1", "db", "b2")) == "rerun"  # h1 again: behind h2
    await release_all(jobs, 3)
    assert [(r.hypothesis, r.batch_id) for r in jobs.started] == [
        ("h1", "b1"),
        ("h2", "b1"),
        ("h1", "b2"),
    ]


async def test_restarted_exclusive_job_is_gone_before_the_next_starts() -> None:
    jobs = OverlapJobs()
    sched = Scheduler(jobs.run, concurrency=4, on_busy="restart", exclusive={"db"})
    sched.submit(req("h1", "db"))
    sched.submit(req("h2", "db"))
    await jobs.until(lambda: len(jobs.started) == 1)
    assert sched.submit(req("h1", "db", "b2")) == "restarting"
    await asyncio.sleep(0.05)  # the cancelled job is still dying: nothing else may start
    assert len(jobs.started) == 1
    jobs.dying.set()
    await jobs.until(lambda: len(jobs.started) == 2)
    assert jobs.finished[0][1] == "cancelled"
    await release_all(jobs, 3)
    assert [(r.hypothesis, r.batch_id) for r in jobs.started] == [
        ("h1", "b1"),
        ("h2", "b1"),
        ("h1", "b2"),
    ]
    assert jobs.max_per_script["db"] == 1


async def test_exclusive_can_be_turned_on_by_a_reload() -> None:
    jobs = OverlapJobs()
    sched = Scheduler(jobs.run, concurrency=4, on_busy="queue")
    sched.set_limits(4, "queue", exclusive={"db"})
    for h in ("h1", "h2"):
        sched.submit(req(h, "db"))
    await jobs.until(lambda: len(jobs.started) == 1)
    assert sched.pending(("h2", "db")) and not sched.pending(("h1", "db"))
    await release_all(jobs, 2)
    assert jobs.max_per_script["db"] == 1


async def test_a_rerun_is_announced_when_it_is_asked_for() -> None:
    """A job whose result is recorded but whose task has not ended yet: the rerun a new
    batch asks for is announced at once, so the cell never looks settled meanwhile."""

    class Queued(SchedulerHooks):
        def __init__(self) -> None:
            self.keys: list[tuple[str, str]] = []

        def queued(self, req: JobRequest) -> None:
            self.keys.append(req.key)

    for on_busy in ("restart", "queue"):
        hooks = Queued()
        jobs = Jobs()
        sched = Scheduler(jobs.run, concurrency=1, on_busy=on_busy, hooks=hooks)
        sched.submit(req("h"))
        await jobs.until(lambda jobs=jobs: len(jobs.started) == 1)
        assert hooks.keys == [("h", "t")]
        sched.submit(req("h", batch="b2"))
        assert hooks.keys == [("h", "t"), ("h", "t")]
        jobs.release[0].set()
        await jobs.until(lambda jobs=jobs: len(jobs.started) == 2)
        jobs.release[1].set()
        await jobs.until(lambda jobs=jobs: len(jobs.finished) == 2)
