"""The dask backend against a real ``distributed.LocalCluster(processes=True)``.

One cluster (two worker processes, each with its nanny) serves the whole module; each
test connects its own backend (client) to it. The jobs' processes run on the workers'
job hosts, on this machine, so the tests can watch them by pid.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytest.importorskip("distributed")

from distributed import LocalCluster

from harness import run_cli
from parallel_orchestrator.backends.base import (
    LocalBackend,
)
from parallel_orchestrator.backends.daskcluster import DaskBackend
from parallel_orchestrator.jobs.model import JobOutcome, JobSpec
from process_checks import running


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(
        n_workers=2,
        threads_per_worker=4,
        processes=True,
        dashboard_address=None,
        silence_logs=40,
    ) as c:
        yield c


class Events:
    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, object]]] = []

    def info(self, event: str, **fields: object) -> None:
        self.lines.append((event, fields))

    warning = info


@pytest.fixture
async def backend(cluster: LocalCluster) -> DaskBackend:
    events = Events()
    b = DaskBackend(cluster.scheduler_address, log=lambda: events)
    await b.start()
    yield b
    await b.close()


def spec_for(tmp: Path, job_id: str, script: str, **kw: object) -> JobSpec:
    env = dict(os.environ, PO_JOB_ID=job_id)
    env.update(kw.pop("env", {}))  # type: ignore[arg-type]
    options: dict[str, object] = {"timeout_s": 30.0, "kill_grace_s": 1.0}
    options.update(kw)
    return JobSpec(
        argv=("sh", "-c", script),
        cwd=tmp,
        env=env,
        job_id=job_id,
        log_path=tmp / f"{job_id}.log",
        **options,  # type: ignore[arg-type]
    )


async def pids_in(path: Path, count: int, timeout: float = 20.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            words = path.read_text().split()
        except FileNotFoundError:
            words = []
        if len(words) >= count:
            return [int(w) for w in words[:count]]
        await asyncio.sleep(0.01)
    raise AssertionError(f"{path} did not get {count} pids")


async def all_gone(pids: list[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while any(running(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


# A leader that ignores SIGTERM and a grandchild that left the group with setsid: both
# must still die. The leader writes its pid and the grandchild's into ``pids``.
STUBBORN = (
    "trap '' TERM; "
    "setsid sh -c 'trap \"\" TERM; echo $$ >> pids; exec sleep 300' & "
    "echo $$ >> pids; sleep 300 & wait"
)


def comparable(o: JobOutcome) -> tuple[object, ...]:
    return (o.result, o.exit_code, o.output_tail, o.error_message)


async def test_results_and_logs_equal_the_local_backends(
    backend: DaskBackend, tmp_path: Path
) -> None:
    cases = {
        "pass": ("echo out; echo err >&2", {}),
        "fail": ("echo failing; exit 3", {}),
        "signal": ("kill -KILL $$", {}),
        "timeout": ("echo slow; sleep 30", {"timeout_s": 0.5}),
        "env": ('echo "$PO_JOB_ID $GREETING"', {"env": {"GREETING": "hello"}}),
        "big": ("head -c 300000 /dev/zero | tr '\\0' x; echo", {"max_log_bytes": 4096}),
    }
    local, remote = tmp_path / "local", tmp_path / "remote"
    local.mkdir()
    remote.mkdir()
    starts: list[tuple[int, str | None]] = []
    for name, (script, kw) in cases.items():
        mine = await LocalBackend().run(spec_for(local, name, script, **kw))
        theirs = await backend.run(
            spec_for(remote, name, script, **kw), lambda pid, w: starts.append((pid, w))
        )
        assert comparable(theirs) == comparable(mine), name
        assert (remote / f"{name}.log").read_bytes() == (local / f"{name}.log").read_bytes()
        assert (remote / f"{name}.log").stat().st_mode & 0o777 == 0o600
    conn = backend._conn  # the test looks at the cluster it connected to
    assert conn is not None
    workers = await conn.client.run(os.getpid)
    assert len(starts) == len(cases)
    assert {w for _, w in starts} <= set(workers)
    assert all(pid > 0 for pid, _ in starts)


async def test_a_missing_program_is_an_error_like_locally(
    backend: DaskBackend, tmp_path: Path
) -> None:
    spec = JobSpec(
        argv=("no-such-program-xyz",),
        cwd=tmp_path,
        env=dict(os.environ),
        timeout_s=5,
        job_id="missing",
    )
    mine, theirs = await LocalBackend().run(spec), await backend.run(spec)
    assert theirs.result == "error"
    assert comparable(theirs) == comparable(mine)


async def test_changed_file_lists_reach_the_worker(backend: DaskBackend, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "j.changed").write_text("a.py\nb/c.py\n")
    spec = spec_for(
        tmp_path,
        "changed",
        'cat "$PO_CHANGED_FILE"; echo "$PO_CHANGED_FILE"',
        env={"PO_CHANGED_FILE": str(state / "j.changed")},
    )
    outcome = await backend.run(spec)
    assert outcome.result == "pass"
    lines = outcome.output_tail.splitlines()
    assert lines[:2] == ["a.py", "b/c.py"]
    assert lines[2] != str(state / "j.changed")  # a private copy on the worker


async def test_a_junit_report_comes_back_to_the_daemons_path(
    backend: DaskBackend, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    report = state / "j.junit.xml"
    spec = spec_for(
        tmp_path,
        "junit",
        'echo \'<testsuite tests="1"/>\' > "$1"; echo "$PO_JUNIT_XML" >&2',
        env={"PO_JUNIT_XML": str(report)},
    )
    spec = dataclasses.replace(spec, argv=(*spec.argv, "sh", str(report)))  # like {junit}
    outcome = await backend.run(spec)
    assert outcome.result == "pass", outcome.output_tail
    assert report.read_text() == '<testsuite tests="1"/>\n'
    assert outcome.output_tail.strip() != str(report)  # written on the worker, then shipped


async def test_the_private_temp_folder_is_made_on_the_worker(
    backend: DaskBackend, tmp_path: Path
) -> None:
    daemon_side = str(tmp_path / "not-on-the-worker")
    spec = spec_for(
        tmp_path,
        "tmp",
        'test -d "$PO_TMPDIR" && test "$TMPDIR" = "$PO_TMPDIR" && echo "$PO_TMPDIR"',
        env={"PO_TMPDIR": daemon_side, "TMPDIR": daemon_side},
    )
    outcome = await backend.run(spec)
    assert outcome.result == "pass", outcome.output_tail
    worker_side = outcome.output_tail.strip()
    assert worker_side != daemon_side
    assert not os.path.exists(worker_side)  # removed with the job


async def test_timeout_leaves_no_process_of_the_job(backend: DaskBackend, tmp_path: Path) -> None:
    spec = spec_for(tmp_path, "slow", STUBBORN, timeout_s=1.0, kill_grace_s=0.5)
    outcome = await backend.run(spec)
    assert outcome.result == "timeout" and outcome.exit_code == 124
    pids = await pids_in(tmp_path / "pids", 2)
    assert await all_gone(pids, 5.0), [p for p in pids if running(p)]


async def test_cancel_kills_the_job_on_the_worker_within_the_grace(
    backend: DaskBackend, tmp_path: Path
) -> None:
    started = asyncio.Event()
    spec = spec_for(tmp_path, "cancelme", STUBBORN, kill_grace_s=1.0)
    task = asyncio.ensure_future(backend.run(spec, lambda pid, w: started.set()))
    await asyncio.wait_for(started.wait(), 30)
    pids = await pids_in(tmp_path / "pids", 2)
    t0 = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - t0 < spec.kill_grace_s + 2.0
    assert await all_gone(pids, 1.0), [p for p in pids if running(p)]


async def test_shutdown_cancels_every_running_job(backend: DaskBackend, tmp_path: Path) -> None:
    folders = [tmp_path / f"j{i}" for i in range(4)]
    starts: list[int] = []
    tasks = []
    for i, folder in enumerate(folders):
        folder.mkdir()
        spec = spec_for(folder, f"shut{i}", STUBBORN, kill_grace_s=1.0)
        tasks.append(asyncio.ensure_future(backend.run(spec, lambda pid, w: starts.append(pid))))
    pids = [p for folder in folders for p in await pids_in(folder / "pids", 2)]
    t0 = time.monotonic()
    for task in tasks:
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, asyncio.CancelledError) for r in results)
    assert time.monotonic() - t0 < 1.0 + 2.0
    assert await all_gone(pids, 1.0)


async def test_a_cancel_before_the_start_leaves_nothing_running(
    backend: DaskBackend, tmp_path: Path
) -> None:
    # A job id of this run alone: the check below scans every process on the machine,
    # and other test sessions run this very test at the same time.
    job_id = f"early-{uuid.uuid4().hex}"
    spec = spec_for(tmp_path, job_id, "sleep 300")
    task = asyncio.ensure_future(backend.run(spec))
    await asyncio.sleep(0)  # submitted; not announced as started yet
    t0 = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # Where it had started, the cancel killed it (within the contract's bound) ...
    left = spec.kill_grace_s + 2.0 - (time.monotonic() - t0)
    assert await all_gone(_sleepers_with_job_id(job_id), max(left, 0.1))
    conn = backend._conn
    assert conn is not None
    # The scheduler forgets a cancelled key at once, but a worker that got the task
    # already runs it to its end: the job started late and the backend must answer
    # that start with a kill. So wait until no worker holds the task any more (a job
    # left running would hold it until its 30 s timeout), then nothing of it may remain.
    key = f"po-job-{job_id}"
    deadline = time.monotonic() + 20
    while await _held_by_a_worker(conn.client, key):
        assert time.monotonic() < deadline, "the cancelled job kept running on a worker"
        await asyncio.sleep(0.05)
    assert not [p for p in _sleepers_with_job_id(job_id) if running(p)]  # ... nor later


async def _held_by_a_worker(client: object, key: str) -> bool:
    def holds(dask_worker: object) -> bool:
        return key in dask_worker.state.tasks  # type: ignore[attr-defined]

    held = await client.run(holds)  # type: ignore[attr-defined]
    return any(held.values())


def _sleepers_with_job_id(job_id: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                env = Path(f"/proc/{entry}/environ").read_bytes()
            except OSError:
                continue
            if f"PO_JOB_ID={job_id}".encode() in env.split(b"\0"):
                found.append(int(entry))
    return found


async def test_a_worker_killed_mid_job_is_an_error_naming_it_and_leaves_no_orphan(
    backend: DaskBackend, tmp_path: Path
) -> None:
    where: list[str] = []
    started = asyncio.Event()

    def on_started(pid: int, worker: str | None) -> None:
        where.append(worker or "")
        started.set()

    spec = spec_for(tmp_path, "victim", STUBBORN, kill_grace_s=0.5)
    task = asyncio.ensure_future(backend.run(spec, on_started))
    # The pids file is written on the worker before the start reaches us (worker ->
    # scheduler -> our subscription): wait for the start itself, as the daemon does.
    await asyncio.wait_for(started.wait(), 30)
    pids = await pids_in(tmp_path / "pids", 2)
    conn = backend._conn
    assert conn is not None and where
    worker_pids = await conn.client.run(os.getpid, workers=where)
    os.kill(worker_pids[where[0]], signal.SIGKILL)
    outcome = await asyncio.wait_for(task, 30)
    assert outcome.result == "error"
    assert where[0] in outcome.error_message and "died" in outcome.error_message
    assert await all_gone(pids, 5.0), [p for p in pids if running(p)]
    # The backend still works (the nanny restarts the worker; the other one is there).
    again = await backend.run(spec_for(tmp_path, "after", "echo fine"))
    assert again.result == "pass"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_without_distributed_the_local_backend_still_imports(tmp_path: Path) -> None:
    # A fresh interpreter in which ``distributed`` cannot be imported.
    blocker = tmp_path / "distributed"
    blocker.mkdir()
    (blocker / "__init__.py").write_text("raise ImportError('distributed is not installed')\n")
    code = (
        "import parallel_orchestrator, parallel_orchestrator.cli\n"
        "from parallel_orchestrator.backends.base import open_backend, BackendUnavailable\n"
        "assert open_backend('local').name == 'local'\n"
        "try:\n    open_backend('dask', 'tcp://x:1')\n"
        "except BackendUnavailable as e:\n    print(e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=dict(os.environ, PYTHONPATH=str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "parallel-orchestrator[dask]" in out.stdout


def once_config(tmp_path: Path, address: str) -> Path:
    work = tmp_path / "hyp"
    work.mkdir()
    cfg = tmp_path / "po.toml"
    cfg.write_text(
        f'[daemon]\nstate_dir = "{tmp_path / "state"}"\n'
        f'[worktrees]\nrepo = ""\npaths = ["{work}"]\n'
        f'[executor]\nbackend = "dask"\naddress = "{address}"\n'
        '[[scripts]]\nname = "ok"\ncommand = ["sh", "-c", "echo on $PO_HYPOTHESIS"]\n'
        '[[scripts]]\nname = "bad"\ncommand = ["sh", "-c", "exit 4"]\n'
    )
    cfg.chmod(0o600)
    return cfg


def test_once_runs_on_the_cluster(cluster: LocalCluster, tmp_path: Path) -> None:
    cfg = once_config(tmp_path, cluster.scheduler_address)
    done = run_cli("once", "-c", str(cfg), "--json", cwd=tmp_path, timeout=90)
    assert done.returncode == 1, done.stderr
    results = {r["script"]: r for r in json.loads(done.stdout)["results"]}
    assert results["ok"]["result"] == "pass" and results["bad"]["exit_code"] == 4
    assert Path(results["ok"]["log_path"]).read_text() == "on hyp\n"


def test_once_with_an_unreachable_scheduler_exits_2_in_one_line(tmp_path: Path) -> None:
    address = f"tcp://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    done = run_cli("once", "-c", str(once_config(tmp_path, address)), cwd=tmp_path, timeout=60)
    assert time.monotonic() - t0 < 30
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and address in lines[0], done.stderr


class ClusterProcesses:
    """``dask scheduler`` and ``dask worker`` as separate processes, as a user runs them."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.folder = folder
        self.procs: list[subprocess.Popen[bytes]] = []

    def _start(self, *args: str) -> subprocess.Popen[bytes]:
        log = open(self.folder / f"{args[0]}-{len(self.procs)}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "dask"), *args],
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        log.close()
        self.procs.append(proc)
        return proc

    def scheduler(self) -> subprocess.Popen[bytes]:
        return self._start(
            "scheduler", "--host", "127.0.0.1", "--port", str(self.port), "--no-dashboard"
        )

    def worker(self) -> subprocess.Popen[bytes]:
        return self._start(
            "worker", self.address, "--nworkers", "1", "--nthreads", "2", "--no-dashboard"
        )

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


async def until(predicate: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_a_lost_scheduler_fails_its_jobs_and_is_reconnected(tmp_path: Path) -> None:
    procs = ClusterProcesses(tmp_path)
    events = Events()
    try:
        scheduler = procs.scheduler()
        procs.worker()
        backend = DaskBackend(procs.address, log=lambda: events, connect_timeout_s=20)
        await backend.start()
        try:
            spec = spec_for(tmp_path, "orphan", STUBBORN, kill_grace_s=0.5)
            task = asyncio.ensure_future(backend.run(spec))
            pids = await pids_in(tmp_path / "pids", 2, timeout=60)
            os.killpg(scheduler.pid, signal.SIGKILL)
            outcome = await asyncio.wait_for(task, 30)
            assert outcome.result == "error"
            assert f"lost the connection to the dask scheduler at {procs.address}" in (
                outcome.error_message
            )
            await until(lambda: any(name == "scheduler_lost" for name, _ in events.lines), 10)
            # The worker notices too and ends; its job host takes the job along.
            assert await all_gone(pids, 60.0), [p for p in pids if running(p)]
            procs.scheduler()
            procs.worker()
            await until(lambda: any(n == "scheduler_reconnected" for n, _ in events.lines), 60)
            again = await asyncio.wait_for(backend.run(spec_for(tmp_path, "back", "echo ok")), 60)
            assert again.result == "pass", again
        finally:
            await backend.close()
    finally:
        procs.close()
