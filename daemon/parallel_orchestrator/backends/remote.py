"""What runs inside a dask worker: one job, through the worker's job host.

``run_remote`` is the task the daemon submits. It gives the job private copies of the
files the daemon made for it (the daemon's state dir need not be visible here), hands the
``JobSpec`` to the job host (which runs it with the local runner: same group, timeout,
kill and output guarantees), announces the start on the daemon's topic, and returns the
outcome together with the run log and the files the job wrote, so the daemon can put
them where a local run would have left them.

Cancel: ``Future.cancel()`` does not stop a running task, so the daemon calls
``cancel_job`` in this worker process (``Client.run``), which makes the host kill the job
exactly as a local cancel does; the task then returns with ``outcome = None``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import tempfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..jobs.model import JobOutcome, JobSpec
from ..store.safe_open import write_new
from .hostlink import HostedJob, HostGone, HostLink, outcome_of

# Files brought back beside the log (each capped like the log): enough for test reports.
_OUTPUT_CAP_BYTES = 16 * 1024 * 1024
# The job's private temp folder (jobs.tmpdirs), replaced by one on the worker.
TMPDIR_VAR = "PO_TMPDIR"
# After a cancel, how much longer than the job's kill grace the host may take to confirm.
_KILL_SLACK_S = 2.0


@dataclass(frozen=True)
class RemoteJob:
    spec: JobSpec  # exactly as the daemon would run it locally
    topic: str  # where the start is announced (the daemon's subscription)
    # env var -> the content of the file it names on the daemon's side (PO_CHANGED_FILE):
    # written to a private folder on the worker, and the variable pointed there.
    inputs: dict[str, bytes] = field(default_factory=dict)
    # env vars naming files the job may write (a test report): pointed at the private
    # folder here, the files brought back in the result.
    outputs: tuple[str, ...] = ()


@dataclass(frozen=True)
class RemoteResult:
    worker: str  # the worker's address
    pid: int | None  # the job leader's pid on the worker's host
    outcome: JobOutcome | None  # None: cancelled on the daemon's request
    log: bytes = b""  # the run log, already capped by the runner
    outputs: dict[str, bytes] = field(default_factory=dict)
    error: str = ""  # the job host failed; the job's result is then "error"


# A result this small also travels as an event on the daemon's topic (msgpack): it arrives
# ~6 ms sooner than the task's result, which the client fetches with another round trip
# after hearing the task is done. Small, because the scheduler keeps a topic's last 1000
# events in memory.
PUSH_LIMIT_BYTES = 4096


def pushed_form(job_id: str, result: RemoteResult) -> dict[str, object] | None:
    """``result`` as an event message, or None when it is too big to push."""
    if result.outputs or len(result.log) > PUSH_LIMIT_BYTES:
        return None
    outcome = None if result.outcome is None else dataclasses.asdict(result.outcome)
    if outcome is not None and len(str(outcome)) > 2 * PUSH_LIMIT_BYTES:
        return None  # a large capture: let it come as the task's result
    return {
        "job_id": job_id,
        "done": True,
        "worker": result.worker,
        "pid": result.pid,
        "outcome": outcome,
        "log": result.log,
        "error": result.error,
    }


def from_pushed(msg: dict[str, object]) -> RemoteResult:
    """The daemon's side of ``pushed_form``."""
    fields = msg["outcome"]
    outcome = JobOutcome(**fields) if isinstance(fields, dict) else None
    pid = msg["pid"]
    return RemoteResult(
        worker=str(msg["worker"]),
        pid=pid if isinstance(pid, int) else None,
        outcome=outcome,
        log=bytes(msg["log"]) if isinstance(msg["log"], (bytes, bytearray)) else b"",
        error=str(msg["error"] or ""),
    )


# job_id -> the future that cancels it, for the jobs running in this worker process.
_cancels: dict[str, asyncio.Future[None]] = {}
# Jobs cancelled before their task reached this worker: they are not started here.
_refused: OrderedDict[str, None] = OrderedDict()
_REFUSED_KEPT = 1024


async def cancel_job(job_id: str) -> bool:
    """Run by the daemon in the worker (``Client.run``): end the job; False if not here.

    A job not here (yet) is remembered, so a task that arrives later does not start it.
    Runs on the worker's event loop, as the tasks do: no race with ``run_remote``.
    """
    cancel = _cancels.get(job_id)
    if cancel is None:
        _refused[job_id] = None
        while len(_refused) > _REFUSED_KEPT:
            _refused.popitem(last=False)
        return False
    if cancel.done():
        return False
    cancel.set_result(None)
    return True


def _read_capped(path: Path | None, cap: int) -> bytes | None:
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            return f.read(cap)
    except FileNotFoundError:
        return None


def localize(job: RemoteJob, folder: Path) -> JobSpec:
    """The spec with its state-dir files replaced by private ones in ``folder``."""
    spec = job.spec
    env = dict(spec.env)
    argv = list(spec.argv)
    for var, data in job.inputs.items():
        path = folder / f"in-{var}"
        write_new(path, data)
        env[var] = os.fsdecode(path)
    for var in job.outputs:
        local = os.fsdecode(folder / f"out-{var}")
        original = env.get(var)
        env[var] = local
        if original:
            argv = [a.replace(original, local) for a in argv]
    private_tmp = env.get(TMPDIR_VAR)
    if private_tmp:  # the daemon's per-job temp folder is on its host: make one here
        local_tmp = folder / "tmp"
        local_tmp.mkdir(mode=0o700)
        if env.get("TMPDIR") == private_tmp:
            env["TMPDIR"] = os.fsdecode(local_tmp)
        env[TMPDIR_VAR] = os.fsdecode(local_tmp)
    log_path = folder / "run.log" if spec.log_path is not None else None
    return dataclasses.replace(spec, env=env, argv=tuple(argv), log_path=log_path)


async def run_remote(job: RemoteJob) -> RemoteResult:
    """The dask task: run ``job`` on this worker, bring its outcome and files back."""
    from distributed import get_worker  # a worker always has it; the daemon may not

    worker = get_worker()
    address = str(worker.address)
    job_id = job.spec.job_id
    if _refused.pop(job_id, "no") is None:
        return RemoteResult(address, None, None)  # cancelled before it got here
    # Registered before the first await: from now on a cancel finds it.
    cancel: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    _cancels[job_id] = cancel
    folder = Path(tempfile.mkdtemp(prefix="po-job-"))  # 0700
    try:
        spec = localize(job, folder)
        try:
            link = await HostLink.get()
            if cancel.done():
                return RemoteResult(address, None, None)
            hosted = link.run(job_id, spec)
        except HostGone as exc:
            return RemoteResult(address, None, None, error=f"job host on {address}: {exc}")
        ended = await _follow(worker, job, link, hosted, cancel)
        pid = hosted.started.result() if hosted.started.done() else None
        if ended[0] == "failed":
            return RemoteResult(address, pid, None, error=f"job host on {address}: {ended[2]}")
        outputs = {}
        for var in job.outputs:
            data = _read_capped(folder / f"out-{var}", _OUTPUT_CAP_BYTES)
            if data is not None:
                outputs[var] = data
        log = _read_capped(spec.log_path, spec.max_log_bytes + 4096) or b""
        result = RemoteResult(address, pid, outcome_of(ended), log, outputs)
        pushed = pushed_form(job_id, result)
        if pushed is not None:
            worker.log_event(job.topic, pushed)
        return result
    finally:
        _cancels.pop(job_id, None)
        shutil.rmtree(folder, ignore_errors=True)


async def _follow(
    worker: Any, job: RemoteJob, link: HostLink, hosted: HostedJob, cancel: asyncio.Future[None]
) -> tuple[Any, ...]:
    """Announce the start, pass a cancel on to the host; the host's last message."""
    job_id = job.spec.job_id
    try:
        await asyncio.wait(
            {hosted.started, hosted.ended, cancel}, return_when=asyncio.FIRST_COMPLETED
        )
        if hosted.started.done() and not hosted.ended.done():
            worker.log_event(
                job.topic,
                {"job_id": job_id, "pid": hosted.started.result(), "worker": str(worker.address)},
            )
            await asyncio.wait({hosted.ended, cancel}, return_when=asyncio.FIRST_COMPLETED)
        if not hosted.ended.done():
            link.cancel(job_id)
        return await hosted.ended
    except asyncio.CancelledError:  # the worker is closing: end the job before we go
        link.cancel(job_id)
        await asyncio.wait({hosted.ended}, timeout=job.spec.kill_grace_s + _KILL_SLACK_S)
        raise
