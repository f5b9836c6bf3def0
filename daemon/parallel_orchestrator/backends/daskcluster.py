"""Running jobs on a Dask cluster: ``[executor] backend = "dask"``.

Imported only for that backend: it needs ``distributed`` (the ``dask`` extra).

Each job is one task (``remote.run_remote``, ``pure=False``, key ``po-job-<job_id>``) that
runs the ``JobSpec`` on a worker through the local runner. What Dask does not give us:

- *Start*: the worker announces it on a topic of ours (``Worker.log_event``), which the
  client receives by subscription; that is when ``job_started`` is due, with the remote
  pid and the worker's address.
- *Cancel*: ``Future.cancel()`` does not stop a running task. Once the worker is known we
  call ``remote.cancel_job`` in that worker process (``Client.run``), which kills the job
  as a local cancel does, and wait (at most kill_grace_s + 2 s) for the task to confirm.
  Before that, the future is cancelled, and a start announced later for a job we gave up
  on is answered with the same ``cancel_job``.
- *A worker that dies mid-job*: the scheduler's ``remove-worker`` event (topic ``all``)
  names it; a job that started there ends ``error`` naming the worker (Dask would rerun
  the task elsewhere; that attempt is cancelled). Its processes die with the worker's job
  host (see ``jobhost``).
- *A lost scheduler*: the client cancels its futures; the affected jobs end ``error``,
  ``scheduler_lost`` is logged, and a new client is connected with backoff
  (``scheduler_reconnected``). Jobs asked for meanwhile end ``error`` at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distributed import Client, LocalCluster
from distributed.client import FutureCancelledError

from ..jobs.model import JobOutcome, JobSpec
from ..store.safe_open import read_regular, write_new
from .interface import BackendUnavailable, EventLog, OnStarted
from .remote import RemoteJob, RemoteResult, cancel_job, from_pushed, run_remote

LOCAL_ADDRESS = "local"
# Files the daemon writes for a job and the job reads: shipped to the worker by content.
SHIPPED_INPUTS: tuple[str, ...] = ("PO_CHANGED_FILE", "PO_CHANGED_FILE_Z")
# Files the job may write that belong in the daemon's state dir: brought back.
SHIPPED_OUTPUTS: tuple[str, ...] = ("PO_JUNIT_XML",)

CONNECT_TIMEOUT_S = 10.0
_WATCH_EVERY_S = 0.5
_BACKOFF_FIRST_S = 0.5
_BACKOFF_MAX_S = 30.0
# Within the daemon's shutdown budget (kill_grace_s + 2 s, of which it gives jobs + 1.5 s).
_KILL_SLACK_S = 1.25
_SEND_INTERVAL_S = 0.002
# After a cancel reached the worker, how much longer than the grace its kill may take.
_KILL_WAIT_S = 10.0
_ABANDONED_KEPT = 1024


class _Quiet:
    def info(self, event: str, **fields: Any) -> None:
        return None

    def warning(self, event: str, **fields: Any) -> None:
        return None


@dataclass(eq=False)
class _Tracked:
    """One job in flight on the cluster, as the daemon follows it."""

    job_id: str
    started: asyncio.Future[tuple[int, str]]
    lost: asyncio.Future[str]  # resolved with the error message: worker died, scheduler lost
    pushed: asyncio.Future[RemoteResult]  # a small result, sent as an event (remote.py)
    worker: str | None = None


@dataclass(eq=False)
class _Connection:
    client: Client
    comm: object  # the client's scheduler stream when we connected; another one = reconnected
    topic: str
    jobs: dict[str, _Tracked] = field(default_factory=dict)

    def healthy(self) -> bool:
        return self.client.status == "running" and self.client.scheduler_comm is self.comm


class DaskBackend:
    """Jobs on a Dask cluster at ``address`` (``"local"``: a LocalCluster of our own)."""

    name = "dask"

    def __init__(
        self,
        address: str,
        *,
        log: Callable[[], EventLog] | None = None,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        cluster_options: dict[str, Any] | None = None,
    ) -> None:
        self.address = address
        # A callable: the daemon's logger is replaced on reload.
        self._log: Callable[[], EventLog] = log if log is not None else _Quiet
        self._connect_timeout_s = connect_timeout_s
        self._cluster_options = cluster_options or {}
        self._cluster: LocalCluster | None = None
        self._target = address
        self._conn: _Connection | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._abandoned: OrderedDict[str, None] = OrderedDict()
        self._background: set[asyncio.Task[Any]] = set()
        # Finished futures, released together every _WATCH_EVERY_S. Dropping one at once
        # sends "release" on the client's batched stream (10 ms windows), and the next
        # job's submit, a moment later, would wait for the next window.
        self._finished: list[Any] = []
        self._check_now = asyncio.Event()  # a job saw the connection go: look at once

    # == life cycle =======================================================================
    async def start(self) -> None:
        if self.address == LOCAL_ADDRESS:
            options: dict[str, Any] = {
                "processes": True,
                "dashboard_address": None,
                "silence_logs": logging.WARNING,
            }
            options.update(self._cluster_options)
            try:
                self._cluster = await LocalCluster(asynchronous=True, **options)
            except Exception as exc:
                raise BackendUnavailable(f"cannot start a local dask cluster: {exc}") from exc
            self._target = self._cluster.scheduler_address
        try:
            self._conn = await self._connect()
        except Exception:
            await self._close_cluster()
            raise
        self._watcher = asyncio.ensure_future(self._watch_connection())

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        if self._background:  # kills still on their way to a worker: a moment for them
            await asyncio.wait(set(self._background), timeout=0.5)
        conn, self._conn = self._conn, None
        if conn is not None:
            for topic in (conn.topic, "all"):
                conn.client.unsubscribe_topic(topic)  # no events to a closing client
            await _close_client(conn.client)
        for task in list(self._background):
            task.cancel()
        await self._close_cluster()

    async def _close_cluster(self) -> None:
        cluster, self._cluster = self._cluster, None
        if cluster is not None:
            await cluster.close()

    @property
    def scheduler_address(self) -> str:
        return self._target

    async def slots(self) -> int:
        """How many tasks the cluster runs at once now (its workers' threads; at least 1)."""
        conn = self._conn
        if conn is None:
            return 1
        identity = await conn.client.scheduler.identity(n_workers=0)
        return max(1, int(identity.get("total_threads", 0)))

    async def _connect(self) -> _Connection:
        try:
            client = await asyncio.wait_for(
                Client(
                    self._target,
                    asynchronous=True,
                    timeout=self._connect_timeout_s,
                    set_as_default=False,
                ),
                self._connect_timeout_s + 5,
            )
        except Exception as exc:  # OSError, TimeoutError, ValueError (a malformed address)
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise BackendUnavailable(
                f"cannot reach the dask scheduler at {self.address}: {reason}"
            ) from exc
        # The client batches what it sends the scheduler in 10 ms windows; a submit that
        # comes a moment after the last send (the job before it) waits for the next
        # window. Workers use 2 ms; so do we (BatchedSend reads it at every send).
        if client.scheduler_comm is not None:
            client.scheduler_comm.interval = _SEND_INTERVAL_S
        conn = _Connection(client, client.scheduler_comm, f"po-started-{client.id}")
        client.subscribe_topic(conn.topic, lambda event: self._on_job_event(conn, event[1]))
        client.subscribe_topic("all", lambda event: self._on_cluster_event(conn, event[1]))
        return conn

    async def _watch_connection(self) -> None:
        """Notice a lost scheduler; fail the jobs it took along; reconnect with backoff."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._check_now.wait(), _WATCH_EVERY_S)
            self._check_now.clear()
            self._finished.clear()
            conn = self._conn
            if conn is None or conn.healthy():
                continue
            self._conn = None
            self._log().warning("scheduler_lost", address=self.address, running_jobs=len(conn.jobs))
            message = f"lost the connection to the dask scheduler at {self.address}"
            for tracked in conn.jobs.values():
                _resolve(tracked.lost, message)
            self._spawn(_close_client(conn.client))
            self._conn = await self._reconnect()

    async def _reconnect(self) -> _Connection:
        delay = _BACKOFF_FIRST_S
        attempts = 0
        down_since = time.monotonic()
        while True:
            attempts += 1
            try:
                conn = await self._connect()
            except BackendUnavailable as exc:
                self._log().warning(
                    "scheduler_reconnect_failed",
                    address=self.address,
                    attempt=attempts,
                    retry_in_s=delay,
                    error=str(exc),
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, _BACKOFF_MAX_S)
                continue
            self._log().info(
                "scheduler_reconnected",
                address=self.address,
                attempts=attempts,
                down_s=round(time.monotonic() - down_since, 3),
            )
            return conn

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # == events from the cluster ==========================================================
    def _on_job_event(self, conn: _Connection, msg: dict[str, Any]) -> None:
        job_id, worker = str(msg["job_id"]), str(msg["worker"])
        tracked = conn.jobs.get(job_id)
        if msg.get("done"):
            if tracked is not None:
                _resolve(tracked.pushed, from_pushed(msg))
            return
        if tracked is None or tracked.lost.done():
            if tracked is not None or job_id in self._abandoned:
                self._spawn(self._cancel_on(conn, job_id, worker))  # a start nobody wants
            return
        tracked.worker = worker
        _resolve(tracked.started, (int(msg["pid"]), worker))

    def _on_cluster_event(self, conn: _Connection, msg: Any) -> None:
        if not isinstance(msg, dict) or msg.get("action") != "remove-worker":
            return
        gone = msg.get("worker")
        verb = "left the cluster" if msg.get("expected") else "died"
        for tracked in conn.jobs.values():
            if tracked.worker == gone:
                _resolve(tracked.lost, f"dask worker {gone} {verb} while running the job")

    async def _cancel_on(self, conn: _Connection, job_id: str, worker: str) -> bool:
        """Kill the job on ``worker`` (the host's normal kill path); False if not there."""
        try:
            found = await conn.client.run(cancel_job, job_id, workers=[worker])
        except Exception as exc:  # the worker or the scheduler is gone: its jobs went too
            self._log().warning(
                "remote_cancel_failed", job_id=job_id, worker=worker, error=str(exc)
            )
            return False
        return bool(found.get(worker))

    def _abandon(self, job_id: str) -> None:
        self._abandoned[job_id] = None
        while len(self._abandoned) > _ABANDONED_KEPT:
            self._abandoned.popitem(last=False)

    # == jobs =============================================================================
    async def run(self, spec: JobSpec, on_started: OnStarted | None = None) -> JobOutcome:
        t0 = time.monotonic()
        started_at = time.time()
        conn = self._conn
        if conn is None:
            return _error(t0, started_at, f"the dask scheduler at {self.address} is unreachable")
        if not spec.job_id:
            spec = _with_job_id(spec, f"anon-{uuid.uuid4().hex}")
        try:
            job = _remote_job(spec, conn.topic)
        except OSError as exc:
            return _error(t0, started_at, f"cannot read {exc.filename}: {exc.strerror}")
        loop = asyncio.get_running_loop()
        tracked = _Tracked(
            spec.job_id, loop.create_future(), loop.create_future(), loop.create_future()
        )
        conn.jobs[spec.job_id] = tracked
        future = conn.client.submit(run_remote, job, key=f"po-job-{spec.job_id}", pure=False)
        waiter = asyncio.ensure_future(_result(future))
        try:
            return await self._follow(conn, spec, tracked, future, waiter, on_started, t0)
        except BaseException:  # cancelled, or on_started failed: the job must end too
            await self._stop_remote(conn, spec, tracked, future, waiter)
            raise
        finally:
            conn.jobs.pop(spec.job_id, None)
            self._finished.append(future)

    async def _follow(
        self,
        conn: _Connection,
        spec: JobSpec,
        tracked: _Tracked,
        future: Any,
        waiter: asyncio.Future[tuple[str, Any]],
        on_started: OnStarted | None,
        t0: float,
    ) -> JobOutcome:
        started_at = time.time()
        reported = False
        while not waiter.done() and not tracked.pushed.done():
            pending = {waiter, tracked.lost, tracked.pushed}
            if not reported:
                pending.add(tracked.started)
            await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if tracked.started.done() and not reported:
                reported = True
                if on_started is not None:
                    on_started(*tracked.started.result())
            if tracked.lost.done() and not waiter.done() and not tracked.pushed.done():
                self._abandon(spec.job_id)
                waiter.cancel()
                self._spawn(conn.client.cancel([future]))
                return _error(t0, started_at, tracked.lost.result())
        if tracked.pushed.done():
            waiter.cancel()  # the result is in; the future is released with us
            kind, value = "ok", tracked.pushed.result()
        else:
            kind, value = waiter.result()
        if kind == "lost":
            self._check_now.set()
            return _error(
                t0, started_at, f"lost the connection to the dask scheduler at {self.address}"
            )
        if kind == "error":
            return _error(t0, started_at, f"the dask task failed: {_describe(value)}")
        result: RemoteResult = value
        if not reported and result.pid is not None and on_started is not None:
            on_started(result.pid, result.worker)
        if result.error:
            return _error(t0, started_at, result.error)
        if result.outcome is None:
            return _error(t0, started_at, f"the job was cancelled on dask worker {result.worker}")
        try:
            _bring_back(spec, result)
        except OSError as exc:  # the state dir failed us: the log is lost, not the result
            extra = dict(result.outcome.extra, log_error=f"{exc.filename}: {exc.strerror}")
            return dataclasses.replace(result.outcome, extra=extra)
        return result.outcome

    async def _stop_remote(
        self,
        conn: _Connection,
        spec: JobSpec,
        tracked: _Tracked,
        future: Any,
        waiter: asyncio.Future[tuple[str, Any]],
    ) -> None:
        """End the job on its worker; wait until it has, at most kill_grace_s + slack.

        Never raises. Past the deadline (a loaded or unreachable cluster) the caller goes
        on and the ending continues in the background, so the kill still happens.
        """
        self._abandon(spec.job_id)
        _resolve(tracked.lost, "cancelled")  # a start announced from now on is cancelled
        ending = asyncio.ensure_future(self._end_remote(conn, spec, tracked, future, waiter))
        self._background.add(ending)
        ending.add_done_callback(self._background.discard)
        limit = max(spec.kill_grace_s, 0) + _KILL_SLACK_S
        done, _ = await asyncio.wait({ending}, timeout=limit)
        if not done:
            self._log().warning("remote_cancel_slow", job_id=spec.job_id, waited_s=limit)

    async def _end_remote(
        self,
        conn: _Connection,
        spec: JobSpec,
        tracked: _Tracked,
        future: Any,
        waiter: asyncio.Future[tuple[str, Any]],
    ) -> None:
        try:
            if waiter.done():
                pass
            elif tracked.worker is None:
                await self._cancel_unannounced(conn, spec.job_id, future)
            else:
                await self._cancel_on(conn, spec.job_id, tracked.worker)
            # The task returns once the host has killed and reaped everything.
            await asyncio.wait(
                {waiter, tracked.pushed},
                timeout=max(spec.kill_grace_s, 0) + _KILL_WAIT_S,
                return_when=asyncio.FIRST_COMPLETED,
            )
        except Exception as exc:  # the worker or the scheduler went: its jobs went with it
            self._log().warning("remote_cancel_failed", job_id=spec.job_id, error=str(exc))
        finally:
            waiter.cancel()
        self._keep_log_of_cancelled(spec, tracked, waiter)

    async def _cancel_unannounced(self, conn: _Connection, job_id: str, future: Any) -> None:
        """A job whose start we have not heard of is queued, or starting on some worker.
        Every worker is told (one that gets the task later refuses it); where it runs it
        is killed, and the task returns. If it runs nowhere, the scheduler drops it."""
        found = await conn.client.run(cancel_job, job_id, on_error="return")
        if not any(answer is True for answer in found.values()):
            await conn.client.cancel([future])

    def _keep_log_of_cancelled(
        self, spec: JobSpec, tracked: _Tracked, waiter: asyncio.Future[tuple[str, Any]]
    ) -> None:
        """A cancelled job's output so far, into its run log (as a local cancel leaves it)."""
        result: RemoteResult | None = None
        if tracked.pushed.done():
            result = tracked.pushed.result()
        elif waiter.done() and not waiter.cancelled() and waiter.result()[0] == "ok":
            result = waiter.result()[1]
        if result is None:
            return
        try:
            _bring_back(spec, result)
        except OSError as exc:
            self._log().warning(
                "run_log_unavailable", job_id=spec.job_id, path=exc.filename, error=exc.strerror
            )


async def _result(future: Any) -> tuple[str, Any]:
    """The task's result as ("ok", RemoteResult) | ("lost", reason) | ("error", exception)."""
    try:
        return "ok", await future
    except FutureCancelledError as exc:  # the client cancelled it: its scheduler went away
        return "lost", exc.reason
    except Exception as exc:
        return "error", exc


async def _close_client(client: Client) -> None:
    try:
        await asyncio.wait_for(client.close(), 5)
    except Exception:  # closing a client whose scheduler is gone may fail: nothing to keep
        logging.getLogger(__name__).debug("closing a dask client failed", exc_info=True)


def _describe(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:500]


def _resolve(fut: asyncio.Future[Any], value: object) -> None:
    if not fut.done():
        fut.set_result(value)


def _with_job_id(spec: JobSpec, job_id: str) -> JobSpec:
    return dataclasses.replace(spec, job_id=job_id, env={**spec.env, "PO_JOB_ID": job_id})


def _remote_job(spec: JobSpec, topic: str) -> RemoteJob:
    """The task's payload: the spec, plus the contents of the files it names."""
    inputs: dict[str, bytes] = {}
    for var in SHIPPED_INPUTS:
        path = spec.env.get(var)
        if path and path != os.devnull:
            inputs[var] = read_regular(Path(path))
    outputs = tuple(var for var in SHIPPED_OUTPUTS if spec.env.get(var, os.devnull) != os.devnull)
    return RemoteJob(spec=spec, topic=topic, inputs=inputs, outputs=outputs)


def _bring_back(spec: JobSpec, result: RemoteResult) -> None:
    """Put the run log and the job's files where a local run would have left them."""
    if spec.log_path is not None:
        write_new(spec.log_path, result.log)
    for var, data in result.outputs.items():
        target = spec.env.get(var)
        if target:
            write_new(Path(target), data)


def _error(t0: float, started_at: float, message: str) -> JobOutcome:
    return JobOutcome(
        result="error",
        exit_code=None,
        duration_s=time.monotonic() - t0,
        output_tail="",
        error_message=message,
        started_at=started_at,
        finished_at=time.time(),
    )
