"""At most N jobs at once, one per hypothesis x script, and ``on_busy`` when a batch hits
a job that is still running.

The scheduler only decides *when* a job runs; ``run_job_request`` (given by the daemon)
does the running and the reporting. ``on_busy``:

- ``restart``: cancel the running job (its group is killed and reaped, it ends
  ``cancelled``) and run again once it is gone, never two at once in one worktree;
- ``queue``: one rerun after the current one, however many batches arrive meanwhile;
- ``ignore``: drop the new request.

Waiting jobs whose last result was not ``pass`` start first: the feedback people wait
for is "is it fixed yet".

An ``exclusive`` script (one that needs a single shared resource: a database, a device)
never has two jobs running at once, across hypotheses. Its waiting jobs form one queue
served first come, first served: the failing-first rule does not apply among them, or a
hypothesis that keeps failing would starve the others. A job counts as running until its
runner has killed and reaped it, so a cancelled job and its successor never overlap.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field

from ..states import DROP_BUSY, DROP_STOPPING, QUEUED

Key = tuple[str, str]  # (hypothesis, script)


@dataclass
class JobRequest:
    hypothesis: str
    script: str
    batch_id: str
    changed: set[str] = field(default_factory=set)

    @property
    def key(self) -> Key:
        return (self.hypothesis, self.script)

    def merge(self, newer: JobRequest) -> JobRequest:
        """Coalesce: the newest batch, all the changed paths."""
        return JobRequest(
            self.hypothesis, self.script, newer.batch_id, self.changed | newer.changed
        )


@dataclass
class _Slot:
    running: asyncio.Task[None] | None = None
    cancelling: bool = False
    rerun: JobRequest | None = None  # to start after the running one
    waiting: JobRequest | None = None  # in the ready queue, waiting for a free slot
    seq: int = 0


class SchedulerHooks:
    """What the daemon wants to hear about; default no-ops."""

    def queued(self, req: JobRequest) -> None: ...
    def dropped(self, req: JobRequest, reason: str) -> None: ...
    def idle(self) -> None: ...


class Scheduler:
    def __init__(
        self,
        run_job_request: Callable[[JobRequest], Awaitable[None]],
        *,
        concurrency: int,
        on_busy: str,
        priority: Callable[[Key], int] = lambda _key: 0,
        hooks: SchedulerHooks | None = None,
        exclusive: Collection[str] = (),
    ) -> None:
        self._run = run_job_request
        self.concurrency = max(1, concurrency)
        self.on_busy = on_busy
        self.exclusive = frozenset(exclusive)  # names of scripts whose jobs never overlap
        self._priority = priority
        self._hooks = hooks or SchedulerHooks()
        self._slots: dict[Key, _Slot] = {}
        self._seq = itertools.count()
        self._stopping = False

    # -- queries -----------------------------------------------------------------------
    @property
    def running(self) -> list[Key]:
        return [k for k, s in self._slots.items() if s.running is not None]

    @property
    def waiting(self) -> list[Key]:
        return [k for k, s in self._slots.items() if s.waiting is not None]

    def busy(self) -> bool:
        return any(s.running or s.waiting or s.rerun for s in self._slots.values())

    def pending(self, key: Key) -> bool:
        """Whether another run of ``key`` is due (waiting, or to follow the running one)."""
        slot = self._slots.get(key)
        return slot is not None and (slot.waiting is not None or slot.rerun is not None)

    # -- intake ------------------------------------------------------------------------
    def submit(self, req: JobRequest) -> str:
        """Returns what happened: started, queued, coalesced, restarting, rerun, ignored."""
        if self._stopping:
            self._hooks.dropped(req, DROP_STOPPING)
            return "ignored"
        slot = self._slots.setdefault(req.key, _Slot())
        if slot.running is not None:
            if self.on_busy == "ignore":
                self._hooks.dropped(req, DROP_BUSY)
                return "ignored"
            slot.rerun = req if slot.rerun is None else slot.rerun.merge(req)
            # Said at once, not when the rerun is enqueued: a job that has just ended (its
            # result recorded, its task's done-callback still to come) must not look like
            # the latest verdict meanwhile (``wait`` reads the status file then).
            self._hooks.queued(req)
            if self.on_busy == "restart":
                if not slot.cancelling:
                    slot.cancelling = True
                    slot.running.cancel()
                return "restarting"
            return "rerun"
        if slot.waiting is not None:
            slot.waiting = slot.waiting.merge(req)
            return "coalesced"
        self._enqueue(slot, req)
        return "started" if self._dispatch_one_check(req.key) else QUEUED

    def _enqueue(self, slot: _Slot, req: JobRequest) -> None:
        slot.waiting = req
        slot.seq = next(self._seq)
        self._hooks.queued(req)
        self._dispatch()

    def _dispatch_one_check(self, key: Key) -> bool:
        slot = self._slots.get(key)
        return slot is not None and slot.running is not None

    def _dispatch(self) -> None:
        if self._stopping:
            return
        while len(self.running) < self.concurrency:
            ready = self._ready()
            if not ready:
                return
            _, _, key = min(ready)
            slot = self._slots[key]
            req, slot.waiting = slot.waiting, None
            assert req is not None
            task = asyncio.get_running_loop().create_task(
                self._run(req), name=f"job {key[0]}/{key[1]}"
            )
            slot.running = task
            task.add_done_callback(lambda t, key=key: self._finished(key, t))

    def _ready(self) -> list[tuple[int, int, Key]]:
        """(priority, seq, key) of the jobs that may start now.

        An exclusive script offers only its oldest waiting job, and none while one of its
        jobs runs.
        """
        busy_exclusive = {k[1] for k in self.running if k[1] in self.exclusive}
        ready: list[tuple[int, int, Key]] = []
        heads: dict[str, tuple[int, Key]] = {}  # exclusive script -> its oldest waiting job
        for key, slot in self._slots.items():
            if slot.waiting is None or slot.running is not None:
                continue
            script = key[1]
            if script not in self.exclusive:
                ready.append((self._priority(key), slot.seq, key))
            elif script not in busy_exclusive and (
                script not in heads or slot.seq < heads[script][0]
            ):
                heads[script] = (slot.seq, key)
        ready.extend((self._priority(key), seq, key) for seq, key in heads.values())
        return ready

    def _finished(self, key: Key, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            # The job runner reports its own failures; reaching here is a bug, but one
            # job's bug must not stop the scheduler. Surface it through the loop's handler.
            asyncio.get_running_loop().call_exception_handler(
                {"message": f"job {key[0]}/{key[1]} crashed", "exception": task.exception()}
            )
        slot = self._slots.get(key)
        if slot is None:
            return
        slot.running = None
        slot.cancelling = False
        rerun, slot.rerun = slot.rerun, None
        if rerun is not None and not self._stopping:
            if slot.waiting is not None:
                slot.waiting = slot.waiting.merge(rerun)
            else:
                self._enqueue(slot, rerun)
        if slot.running is None and slot.waiting is None and slot.rerun is None:
            self._slots.pop(key, None)
        self._dispatch()
        if not self.busy():
            self._hooks.idle()

    # -- cancellation ------------------------------------------------------------------
    def cancel_hypothesis(self, hyp: str) -> None:
        """Its worktree went away: drop what waits, cancel what runs."""
        self._cancel_where(lambda key: key[0] == hyp, "worktree_removed")

    def cancel_script(self, script: str) -> None:
        """The script left the config: drop what waits, cancel what runs."""
        self._cancel_where(lambda key: key[1] == script, "script_removed")

    def _cancel_where(self, matches: Callable[[Key], bool], reason: str) -> None:
        for key, slot in list(self._slots.items()):
            if not matches(key):
                continue
            self._drop_pending(slot, reason)
            if slot.running is not None and not slot.cancelling:
                slot.cancelling = True
                slot.running.cancel()
            if slot.running is None:
                self._slots.pop(key, None)

    def _drop_pending(self, slot: _Slot, reason: str) -> None:
        for req in (slot.waiting, slot.rerun):
            if req is not None:
                self._hooks.dropped(req, reason)
        slot.waiting = slot.rerun = None

    async def shutdown(self, timeout: float) -> list[Key]:
        """Stop intake, drop what waits, cancel what runs; returns jobs still alive after
        ``timeout`` (the runner kills with SIGKILL after its grace, so this stays empty
        unless something is badly wrong)."""
        self._stopping = True
        tasks = []
        for slot in self._slots.values():
            self._drop_pending(slot, DROP_STOPPING)
            if slot.running is not None:
                if not slot.cancelling:
                    slot.cancelling = True
                    slot.running.cancel()
                tasks.append(slot.running)
        if not tasks:
            return []
        _done, pending = await asyncio.wait(tasks, timeout=timeout)
        return [k for k, s in self._slots.items() if s.running in pending]

    def set_limits(
        self, concurrency: int, on_busy: str, exclusive: Collection[str] | None = None
    ) -> None:
        self.concurrency = max(1, concurrency)
        self.on_busy = on_busy
        if exclusive is not None:
            self.exclusive = frozenset(exclusive)
        self._dispatch()
