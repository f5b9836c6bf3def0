"""Issue 11 item 14: moving or deleting the whole repository.

The daemon used to keep the old paths and log ``worktree_discovery_failed`` every 10 s
forever. Now the status file says ``repo_missing`` (``daemon.repo_state``), the log says
it once, nothing is recreated where the repository was, and when it comes back the
daemon says so once (``repo_restored``) and serves it again.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import time
from pathlib import Path

from harness import DaemonProcess, make_repo, pid_alive, run_cli, wait_until, write_config
from parallel_orchestrator.repo.worktrees import Worktree
from parallel_orchestrator.service.repopresence import replaced_folders


def test_a_moved_repository_is_repo_missing_once_and_recovered_when_back(
    tmp_path: Path,
) -> None:
    _, trees = make_repo(tmp_path / "r", hypotheses=())
    repo = trees["repo"]
    config = write_config(
        tmp_path / "cfg" / "po.toml",
        repo,
        [{"name": "py", "command": ["true"], "watch": ["**/*.py"]}],
    )
    daemon = DaemonProcess(config)
    try:
        daemon.wait_ready()
        assert daemon.status()["daemon"]["repo_state"] == "ok"
        moved = tmp_path / "r" / "moved-away"
        os.rename(repo, moved)
        (missing,) = daemon.wait_event("repo_missing", timeout=30)
        assert missing["repo"] == os.fsdecode(repo)
        daemon.wait_status(lambda d: d["daemon"]["repo_state"] == "repo_missing")
        # A periodic rediscovery round (every 10 s) passes without a word or a folder.
        time.sleep(11)
        assert not repo.exists()
        assert len(daemon.events("repo_missing")) == 1
        os.rename(moved, repo)
        daemon.wait_event("repo_restored", timeout=30)
        daemon.wait_status(lambda d: d["daemon"]["repo_state"] == "ok")
        assert len(daemon.events("repo_missing")) == 1
        assert daemon.events("worktree_discovery_failed") == []
        # Served again: an edit runs the script.
        (repo / "src" / "app.py").write_text("VALUE = 2\n")
        daemon.wait_event("job_finished")
    finally:
        daemon.stop()


def test_status_and_logs_say_the_repository_is_missing_and_back(tmp_path: Path) -> None:
    """``status`` showed "daemon: idle" and the stale table, ``logs`` neither the
    ``repo_missing`` nor the ``repo_restored`` line: the state was in the files only."""
    _, trees = make_repo(tmp_path / "r", hypotheses=())
    repo = trees["repo"]
    config = write_config(tmp_path / "cfg" / "po.toml", repo, SCRIPTS)
    daemon = DaemonProcess(config)
    cfg = ("-c", os.fsdecode(config))
    try:
        daemon.wait_ready()
        moved = tmp_path / "r" / "moved-away"
        os.rename(repo, moved)
        daemon.wait_event("repo_missing")
        daemon.wait_status(lambda d: d["daemon"]["repo_state"] == "repo_missing")
        shown = run_cli("status", *cfg, cwd=config.parent, timeout=30)
        assert shown.returncode == 0, shown.stderr
        assert "repository missing (moved or deleted)" in shown.stdout
        logs = run_cli("logs", *cfg, cwd=config.parent, timeout=30)
        assert "repo_missing" in logs.stdout
        assert os.fsdecode(repo) in logs.stdout
        # ``wait`` gives its verdict (nothing ran: 1) and says why nothing will run.
        waited = run_cli("wait", *cfg, "--timeout", "60", cwd=config.parent, timeout=90)
        assert waited.returncode == 1, waited.stderr
        assert "repository missing (moved or deleted)" in waited.stderr
        os.rename(moved, repo)
        daemon.wait_event("repo_restored")
        daemon.wait_status(lambda d: d["daemon"]["repo_state"] == "ok")
        shown = run_cli("status", *cfg, cwd=config.parent, timeout=30)
        assert "repository missing" not in shown.stdout
        (repo / "src" / "app.py").write_text("VALUE = 2\n")
        waited = run_cli("wait", *cfg, "--timeout", "60", cwd=config.parent, timeout=90)
        assert waited.returncode == 0, waited.stderr
        assert "repository missing" not in waited.stderr
        logs = run_cli("logs", *cfg, cwd=config.parent, timeout=30)
        assert "repo_restored" in logs.stdout
        assert not repo.joinpath("logs").exists()
    finally:
        daemon.stop()


def test_a_repository_swapped_for_a_fresh_clone_between_two_rounds_is_watched_anew(
    tmp_path: Path,
) -> None:
    """Replaced faster than a discovery round notices it missing (``mv repo old && mv
    clone repo``): each round found a repository at the path, so it was never
    ``repo_missing``, never re-armed, and inotify kept watching the old folder: no edit
    in the new one ever ran."""
    _, trees = make_repo(tmp_path / "r", hypotheses=())
    repo = trees["repo"]
    _, fresh = make_repo(tmp_path / "clone", hypotheses=())
    config = write_config(tmp_path / "cfg" / "po.toml", repo, SCRIPTS)
    daemon = DaemonProcess(config)
    try:
        daemon.wait_ready()
        os.rename(repo, tmp_path / "r" / "old")
        os.rename(fresh["repo"], repo)
        (restarted,) = daemon.wait_event("watcher_restarted", timeout=45)
        assert f"{repo}: replaced by another folder" in restarted["reason"]
        (repo / "src" / "app.py").write_text("VALUE = 2\n")
        daemon.wait_event("job_finished")
        assert daemon.events("repo_missing") == []
    finally:
        daemon.stop()


def test_replaced_folders_compares_the_folder_at_a_path_served_before() -> None:
    def wt(name: str, folder: tuple[int, int] | None) -> Worktree:
        path = Path("/x") / name
        return Worktree(id=name, path=path, branch="", head="", is_main=False, folder=folder)

    served = {"a": wt("a", (1, 10)), "b": wt("b", (1, 20)), "c": wt("c", None)}
    found = [wt("a", (1, 11)), wt("b", (1, 20)), wt("c", (1, 30)), wt("d", (1, 40))]
    # a: another folder; b: the same; c: unknown before; d: new (watched as it is added).
    assert replaced_folders(served, found) == [Path("/x/a")]


# -- nothing recreated where the repository was (its folder is git's and the user's) ------
SCRIPTS = [{"name": "py", "command": ["true"], "watch": ["**/*.py"]}]
ANOTHER_DAEMON = "another daemon"


def _reload_round(daemon: DaemonProcess) -> None:
    """One discovery round while the repository is missing, seen through an event rather
    than waited out: a reload discovers the worktrees (as the periodic round every 10 s
    does), then writes the status file and logs ``config_reloaded``."""
    before = len(daemon.events("config_reloaded"))
    daemon.signal(signal.SIGHUP)
    daemon.wait_event("config_reloaded", count=before + 1)


def _start(tmp_path: Path, **daemon_keys: str) -> tuple[Path, Path, DaemonProcess]:
    _, trees = make_repo(tmp_path / "r", hypotheses=())
    repo = trees["repo"]
    keys = {k: v.replace("<repo>", os.fsdecode(repo)) for k, v in daemon_keys.items()}
    config = write_config(tmp_path / "cfg" / "po.toml", repo, SCRIPTS, **keys)
    daemon = DaemonProcess(config)
    return repo, config, daemon


def test_a_log_file_and_status_file_inside_a_moved_repository_are_not_recreated(
    tmp_path: Path,
) -> None:
    repo, config, daemon = _start(
        tmp_path, log_file="<repo>/logs/po.log", status_file="<repo>/out/status.json"
    )
    # The log file is inside the repository: read the same lines from the event history.
    daemon.log_path = config.parent / "state" / "events.jsonl"
    daemon.status_path = repo / "out" / "status.json"
    try:
        daemon.wait_ready()
        moved = tmp_path / "r" / "moved-away"
        os.rename(repo, moved)
        daemon.wait_event("repo_missing")
        _reload_round(daemon)
        assert not repo.exists()
        # Each writer said it once (stderr gets the log's lines meanwhile), not per line.
        assert len(daemon.events("status_write_failed")) == 1
        stderr = daemon.stderr_path.read_text()
        assert stderr.count("cannot write log") == 1
        assert "inside the missing repository" in stderr
        assert '"event": "config_reloaded"' in stderr  # the line itself is not lost

        os.rename(moved, repo)
        daemon.wait_event("repo_restored")
        daemon.wait_status(lambda d: d["daemon"]["repo_state"] == "ok")
        (repo / "src" / "app.py").write_text("VALUE = 2\n")
        daemon.wait_event("job_finished")
        # The log file at its configured path has the lines again.
        wait_until(lambda: "job_finished" in (repo / "logs" / "po.log").read_text())
    finally:
        daemon.stop()


def test_a_deleted_worktree_holding_the_log_and_status_file_is_not_recreated(
    tmp_path: Path,
) -> None:
    """A linked worktree deleted by hand (``rm -rf``) is dropped at the next rediscovery;
    the fence used to be replaced by the worktrees then served, so the next log line and
    status write brought its folder back (holding only logs/ and out/)."""
    _, trees = make_repo(tmp_path / "r", hypotheses=("hyp-1",))
    repo, hyp = trees["repo"], trees["hyp-1"]
    config = write_config(
        tmp_path / "cfg" / "po.toml",
        repo,
        SCRIPTS,
        log_file=os.fsdecode(hyp / "logs" / "po.log"),
        status_file=os.fsdecode(hyp / "out" / "status.json"),
    )
    daemon = DaemonProcess(config)
    daemon.log_path = config.parent / "state" / "events.jsonl"
    daemon.status_path = hyp / "out" / "status.json"
    try:
        daemon.wait_ready()
        shutil.rmtree(hyp)
        daemon.wait_event("worktree_removed")
        _reload_round(daemon)  # a log line and a status write after the removal
        assert not hyp.exists()
        stderr = daemon.stderr_path.read_text()
        assert stderr.count("cannot write log") == 1
        assert f"inside the missing worktree {hyp}" in stderr
        assert len(daemon.events("status_write_failed")) == 1
    finally:
        daemon.stop()
    assert not hyp.exists()


def test_a_state_dir_inside_a_moved_repository_is_waited_for_not_recreated(
    tmp_path: Path,
) -> None:
    repo, config, daemon = _start(tmp_path, state_dir="<repo>/.po-state")
    daemon.status_path = repo / ".po-state" / "status.json"
    try:
        daemon.wait_ready()
        moved = tmp_path / "r" / "moved-away"
        os.rename(repo, moved)
        daemon.wait_event("repo_missing")
        (waiting,) = daemon.wait_event("state_dir_missing")
        assert waiting["repo"] == os.fsdecode(repo)
        shown = run_cli("status", "-c", os.fsdecode(config), cwd=config.parent, timeout=30)
        assert shown.returncode == 3
        assert f"{repo} does not exist" in shown.stderr
        _reload_round(daemon)
        assert not repo.exists()
        assert daemon.events("state_dir_replaced") == []
        assert daemon.events("state_dir_lost") == []

        os.rename(moved, repo)
        daemon.wait_event("state_dir_restored")
        daemon.wait_event("repo_restored")
        daemon.wait_status(lambda d: d["daemon"]["repo_state"] == "ok")
        (repo / "src" / "app.py").write_text("VALUE = 2\n")
        daemon.wait_event("job_finished")
        assert len(daemon.events("state_dir_missing")) == 1
        # The lock it kept still guards the state dir: a second daemon is refused.
        second = run_cli("run", "-c", os.fsdecode(config), cwd=config.parent, timeout=30)
        assert second.returncode == 2
        assert ANOTHER_DAEMON in second.stderr
    finally:
        daemon.stop()
    assert daemon.exit_code == 0


def test_a_deleted_repository_holding_the_state_dir_is_not_recreated(tmp_path: Path) -> None:
    repo, _, daemon = _start(tmp_path, state_dir="<repo>/.po-state")
    daemon.status_path = repo / ".po-state" / "status.json"
    try:
        daemon.wait_ready()
        shutil.rmtree(repo)
        daemon.wait_event("repo_missing")
        daemon.wait_event("state_dir_missing")
        _reload_round(daemon)
        assert not repo.exists()
        assert daemon.events("state_dir_lost") == []
        assert daemon.events("daemon_crashed") == []

        # Back as a fresh repository without the state dir: recreated 0700, locked again.
        _, fresh = make_repo(tmp_path / "fresh", hypotheses=())
        os.rename(fresh["repo"], repo)
        daemon.wait_event("state_dir_restored")
        daemon.wait_event("repo_restored")
        daemon.wait_status(lambda d: d["daemon"]["repo_state"] == "ok")
        assert stat.S_IMODE((repo / ".po-state").stat().st_mode) == 0o700
        # A new folder at the old path: watched anew before repo_restored said it is back.
        (repo / "src" / "app.py").write_text("VALUE = 2\n")
        daemon.wait_event("job_finished")
    finally:
        daemon.stop()
    assert daemon.exit_code == 0


def test_a_daemon_started_on_a_missing_repository_creates_nothing_there(
    tmp_path: Path,
) -> None:
    """The state dir, or the log file, inside a repository that is not there: one line
    naming both, exit 2, and no empty repository folder left behind (it used to make
    the folder, the lock, wait/, requests/ ... and only then fail on discovery)."""
    repo = tmp_path / "r" / "repo"
    for keys, key in (
        ({"state_dir": os.fsdecode(repo / ".po-state")}, "daemon.state_dir"),
        ({"log_file": os.fsdecode(repo / "logs" / "po.log")}, "log file"),
    ):
        config = write_config(tmp_path / "cfg" / "po.toml", repo, SCRIPTS, **keys)
        result = run_cli("run", "-c", os.fsdecode(config), cwd=config.parent, timeout=30)
        assert result.returncode == 2, result.stderr
        assert key in result.stderr
        assert f"inside the missing repository {repo}" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert not repo.exists()


def _gated_repo(tmp_path: Path, in_repo_state_dir: bool = False) -> tuple[Path, Path, Path]:
    """(repo, gate, config): script ``py`` runs on a ``*.py`` edit until ``gate`` exists;
    ``in_repo_state_dir``: the state dir is ``<repo>/.po-state``."""
    gate = tmp_path / "gate"
    _, trees = make_repo(tmp_path / "r", hypotheses=())
    repo = trees["repo"]
    wait_gate = f"while [ ! -e '{gate}' ]; do sleep 0.05; done"
    daemon: dict[str, str] = {}
    if in_repo_state_dir:
        daemon["state_dir"] = os.fsdecode(repo / ".po-state")
    config = write_config(
        tmp_path / "cfg" / "po.toml",
        repo,
        [{"name": "py", "command": ["sh", "-c", wait_gate], "watch": ["**/*.py"]}],
        **daemon,
    )
    return repo, gate, config


def test_a_job_that_ends_while_the_state_dir_is_away_is_not_recovered_later(
    tmp_path: Path,
) -> None:
    """Its ledger record could not be removed (no folder); once the state dir is back the
    record goes, so the next start does not report the passed job as ``error``."""
    repo, gate, config = _gated_repo(tmp_path, in_repo_state_dir=True)
    daemon = DaemonProcess(config)
    daemon.status_path = repo / ".po-state" / "status.json"
    try:
        daemon.wait_ready()
        (repo / "src" / "app.py").write_text("VALUE = 2\n")
        daemon.wait_event("job_started")
        moved = tmp_path / "r" / "moved-away"
        os.rename(repo, moved)
        daemon.wait_event("state_dir_missing")
        gate.touch()
        (finished,) = daemon.wait_event("job_finished")
        assert finished["result"] == "pass"
        os.rename(moved, repo)
        daemon.wait_event("state_dir_restored")
        assert list((repo / ".po-state" / "jobs").glob("*.json")) == []
    finally:
        daemon.stop()
    again = DaemonProcess(config)
    again.status_path = daemon.status_path
    try:
        again.wait_ready()
        assert again.events("job_recovered") == []
        assert again.status()["hypotheses"]["repo"]["scripts"]["py"]["last_result"] == "pass"
    finally:
        again.stop()


def test_a_start_refused_on_a_missing_repository_keeps_the_dead_daemons_job_records(
    tmp_path: Path,
) -> None:
    """``kill -9`` while the repository is away, then ``run`` (systemd restarting it) while
    it still is: the start killed the orphaned job and deleted its ledger record, then
    failed on discovery. The next start, once the repository was back, reported nothing:
    the job had vanished (cell ``never_run``), no ``job_recovered``, no ``error``."""
    repo, gate, config = _gated_repo(tmp_path)
    daemon = DaemonProcess(config)
    try:
        daemon.wait_ready()
        (repo / "src" / "app.py").write_text("VALUE = 2\n")
        (started,) = daemon.wait_event("job_started")
        moved = tmp_path / "r" / "moved-away"
        os.rename(repo, moved)
        daemon.wait_event("repo_missing")
        daemon.proc.kill()
        daemon.proc.wait()
        refused = run_cli("run", "-c", os.fsdecode(config), cwd=config.parent, timeout=60)
        assert refused.returncode == 2
        assert "not a git repository (no such directory)" in refused.stderr
        wait_until(lambda: not pid_alive(started["pid"]), what="the orphaned job killed")
        assert not repo.exists()
        os.rename(moved, repo)
    finally:
        daemon.stop()
        gate.touch()
    again = DaemonProcess(config)
    try:
        again.wait_ready()
        (recovered,) = again.wait_event("job_recovered")
        assert recovered["job_id"] == started["job_id"]
        assert recovered["result"] == "error"
        again.wait_status(lambda d: d["hypotheses"]["repo"]["scripts"]["py"]["state"] == "error")
    finally:
        again.stop()
