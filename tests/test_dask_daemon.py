"""The daemon with ``[executor] backend = "dask"`` against a real LocalCluster(processes=True).

Events and the status file are the local backend's, plus ``worker`` in ``job_started`` and
``job_finished``; restart and shutdown kill the job's processes on the worker.
"""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("distributed")

from distributed import Client, LocalCluster

from harness import DaemonProcess, make_repo, run_cli, wait_until, write_config
from process_checks import running

STUBBORN = (
    "trap '' TERM; "
    "setsid sh -c 'trap \"\" TERM; echo $$ >> {pids}; exec sleep 300' & "
    "echo $$ >> {pids}; sleep 300 & wait"
)


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(
        n_workers=2, threads_per_worker=4, processes=True, dashboard_address=None, silence_logs=40
    ) as c:
        yield c


def worker_addresses(cluster: LocalCluster) -> set[str]:
    with Client(cluster.scheduler_address) as client:
        return set(client.scheduler_info(n_workers=-1)["workers"])


def with_executor(cfg: Path, address: str) -> Path:
    with open(cfg, "a") as f:
        f.write(f'\n[executor]\nbackend = "dask"\naddress = "{address}"\n')
    return cfg


def read_pids(path: Path, count: int) -> list[int]:
    def enough() -> list[int] | None:
        try:
            words = path.read_text().split()
        except FileNotFoundError:
            return None
        return [int(w) for w in words[:count]] if len(words) >= count else None

    return wait_until(enough, 30, what=f"{count} pids in {path}")


def gone(pids: list[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while any(running(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_the_daemon_runs_jobs_on_the_cluster(cluster: LocalCluster, tmp_path: Path) -> None:
    repo, _ = make_repo(tmp_path)
    script = {
        "name": "unit",
        "command": ["sh", "-c", 'echo "on $PO_HYPOTHESIS"; test "$PO_HYPOTHESIS" = hyp-1'],
        "watch": ["**/*.py"],
        "timeout_s": 30,
    }
    report = (
        '<testsuite tests="2" failures="1"><testcase classname="t" name="ok"/>'
        '<testcase classname="t" name="bad"><failure message="no"/></testcase></testsuite>'
    )
    junit = {
        "name": "junit",
        "command": ["sh", "-c", f"echo '{report}' > \"$0\"", "{junit}"],
        "watch": ["**/*.py"],
        "timeout_s": 30,
    }
    cfg = write_config(tmp_path / "cfg" / "po.toml", repo, [script, junit], run_on_start=True)
    daemon = DaemonProcess(with_executor(cfg, cluster.scheduler_address))
    try:
        reports = daemon.wait_event("job_finished", lambda e: e["script"] == "junit", count=3)
        assert all(e["tests"] == reports[0]["tests"] for e in reports)
        assert reports[0]["tests"]["failing"] == ["t::bad"], reports[0]  # read after shipping
        finished = {
            e["hypothesis"]: e
            for e in daemon.wait_event("job_finished", lambda e: e["script"] == "unit", count=3)
        }
        started = {
            e["hypothesis"]: e for e in daemon.events("job_started") if e["script"] == "unit"
        }
        workers = worker_addresses(cluster)
        assert {finished[h]["result"] for h in ("repo", "hyp-2")} == {"fail"}
        assert finished["hyp-1"]["result"] == "pass"
        for hyp, event in finished.items():
            assert event["worker"] in workers
            assert started[hyp]["worker"] == event["worker"]
            assert isinstance(started[hyp]["pid"], int)
            assert event["output_tail"] == f"on {hyp}\n"
            assert Path(event["log_path"]).read_text() == f"on {hyp}\n"
        cell = daemon.cell("hyp-1", "unit")
        assert cell["state"] == "pass" and cell["output_tail"] == "on hyp-1\n"
        assert not list((cfg.parent / "state" / "jobs").glob("*"))  # no remote pid recorded
    finally:
        assert daemon.stop() == 0


def test_restart_and_shutdown_kill_the_job_on_the_worker(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    repo, trees = make_repo(tmp_path, hypotheses=("hyp-1",))
    pids = tmp_path / "pids"
    script = {
        "name": "slow",
        "command": ["sh", "-c", STUBBORN.format(pids=pids)],
        "watch": ["**/*.py"],
        "timeout_s": 120,
        "kill_grace_s": 1,
    }
    cfg = write_config(
        tmp_path / "cfg" / "po.toml", repo, [script], worktrees={"include": ["hyp-1"]}
    )
    daemon = DaemonProcess(with_executor(cfg, cluster.scheduler_address))
    try:
        daemon.wait_ready()
        (trees["hyp-1"] / "src" / "app.py").write_text("VALUE = 2\n")
        first = read_pids(pids, 2)
        daemon.wait_event("job_started")
        pids.unlink()
        (trees["hyp-1"] / "src" / "app.py").write_text("VALUE = 3\n")  # on_busy = restart
        cancelled = daemon.wait_event("job_finished", lambda e: e["result"] == "cancelled")
        assert cancelled[0]["worker"]
        assert gone(first, 2.0), [p for p in first if running(p)]
        second = read_pids(pids, 2)
        daemon.wait_event("job_started", count=2)
        t0 = time.monotonic()
        daemon.signal(signal.SIGTERM)
        assert daemon.wait_exit(30) == 0
        assert time.monotonic() - t0 < 1 + 2 + 1.5  # kill_grace_s + 2 s, and a start-up margin
        assert gone(second, 1.0), [p for p in second if running(p)]
        last = daemon.events()[-1]
        assert last["event"] == "daemon_stopped"
    finally:
        daemon.stop()


def test_run_with_an_unreachable_scheduler_exits_2_naming_it(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    repo, _ = make_repo(tmp_path)
    cfg = write_config(tmp_path / "cfg" / "po.toml", repo, [{"name": "t", "command": ["true"]}])
    t0 = time.monotonic()
    done = run_cli("run", "-c", str(with_executor(cfg, address)), cwd=tmp_path, timeout=60)
    assert time.monotonic() - t0 < 30
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and address in lines[0], done.stderr


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (via /proc/<pid>/task/*/children)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                kids = [int(k) for k in (task / "children").read_text().split()]
            except OSError:
                continue
            found.extend(kids)
            todo.extend(kids)
    return found


def test_address_local_starts_a_cluster_in_the_daemon_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    repo, _ = make_repo(tmp_path, hypotheses=())
    script = {"name": "t", "command": ["sh", "-c", "echo $PO_HYPOTHESIS"], "timeout_s": 30}
    cfg = write_config(tmp_path / "cfg" / "po.toml", repo, [script], run_on_start=True)
    daemon = DaemonProcess(with_executor(cfg, "local"))
    try:
        event = daemon.wait_event("job_finished", timeout=60)[0]
        assert event["result"] == "pass" and event["worker"].startswith("tcp://")
        below = descendants(daemon.proc.pid)
        assert below  # the cluster's processes, and the workers' job hosts
    finally:
        assert daemon.stop() == 0
    assert gone(below, 10.0), [p for p in below if running(p)]
