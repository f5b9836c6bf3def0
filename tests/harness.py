"""Shared test harness: real git repositories with worktrees, and the real daemon as a
subprocess observed only through its JSON log and status files (as users observe it)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import tomli_w

GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.invalid",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
}
STARTUP_TIMEOUT_S = 60.0
EVENT_TIMEOUT_S = 30.0


def git(cwd: Path, *args: str) -> str:
    env = {**os.environ, **GIT_ENV, "HOME": os.fsdecode(cwd)}
    out = subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True)
    return out.stdout.decode("utf-8", "replace")


def make_repo(
    root: Path, hypotheses: Iterable[str] = ("hyp-1", "hyp-2"), files: dict[str, str] | None = None
) -> tuple[Path, dict[str, Path]]:
    """A main worktree ``root/repo`` plus one linked worktree ``root/<hyp>`` per hypothesis."""
    repo = root / "repo"
    repo.mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    for rel, text in (files or {"src/app.py": "VALUE = 1\n", "README.md": "demo\n"}).items():
        path = repo / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "init")
    trees = {"repo": repo}
    for hyp in hypotheses:
        git(repo, "worktree", "add", "-q", "-b", hyp, os.fsdecode(root / hyp))
        trees[hyp] = root / hyp
    return repo, trees


def write_config(
    path: Path,
    repo: Path,
    scripts: list[dict[str, Any]],
    worktrees: dict[str, Any] | None = None,
    **daemon: Any,
) -> Path:
    """A config file (mode 0600) next to which the daemon keeps ``state/`` and ``daemon.log``;
    ``worktrees`` adds keys to the ``[worktrees]`` table, ``daemon`` to ``[daemon]``."""
    doc = {
        "daemon": {
            "state_dir": "state",
            "log_file": "daemon.log",
            "debounce_ms": 50,
            "max_batch_wait_ms": 1000,
            "run_on_start": False,
            **daemon,
        },
        "worktrees": {"repo": os.fsdecode(repo), **(worktrees or {})},
        "scripts": scripts,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(doc))
    path.chmod(0o600)
    return path


def wait_until(
    predicate: Callable[[], Any],
    timeout: float = EVENT_TIMEOUT_S,
    interval: float = 0.02,
    what: str = "condition",
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


class DaemonProcess:
    """``python -m parallel_orchestrator run -c <config>`` with its log and status files."""

    def __init__(
        self, config: Path, env: dict[str, str] | None = None, prefix: Iterable[str] = ()
    ) -> None:
        """``prefix``: words run before python (``setpriv ... --`` to drop a capability)."""
        self.config = config
        self.folder = config.parent
        self.log_path = self.folder / "daemon.log"
        self.status_path = self.folder / "state" / "status.json"
        self.stderr_path = self.folder / "daemon.stderr"
        self._stderr = open(self.stderr_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                *prefix,
                sys.executable,
                *("-m", "parallel_orchestrator", "run", "-c", os.fsdecode(config)),
            ],
            cwd=self.folder,
            env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=self._stderr,
            stderr=self._stderr,
        )
        self.exit_code: int | None = None

    # -- observation -------------------------------------------------------------------
    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        out = []
        for line in self.log_lines():
            event = json.loads(line)
            if name is None or event["event"] == name:
                out.append(event)
        return out

    def wait_event(
        self,
        name: str,
        where: Callable[[dict[str, Any]], bool] = lambda e: True,
        count: int = 1,
        timeout: float = EVENT_TIMEOUT_S,
    ) -> list[dict[str, Any]]:
        def found() -> list[dict[str, Any]] | None:
            self._check_alive()
            hits = [e for e in self.events(name) if where(e)]
            return hits if len(hits) >= count else None

        return wait_until(found, timeout, what=f"{count} x {name}")

    def log_lines(self) -> list[str]:
        """The complete raw log lines: a line still being written (no newline yet) is left
        for the next read rather than parsed half-way."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return []
        complete = text[: text.rfind("\n") + 1]
        return [ln for ln in complete.splitlines() if ln.strip()]

    def status(self) -> dict[str, Any]:
        return json.loads(self.status_path.read_text())

    def wait_status(
        self,
        predicate: Callable[[dict[str, Any]], Any],
        timeout: float = EVENT_TIMEOUT_S,
        what: str = "status",
    ) -> dict[str, Any]:
        """The first status document satisfying ``predicate`` (read as a user would)."""

        def found() -> dict[str, Any] | None:
            self._check_alive()
            try:
                doc = self.status()
            except (FileNotFoundError, ValueError):
                return None
            return doc if predicate(doc) else None

        return wait_until(found, timeout, what=what)

    def cell(self, hyp: str, script: str) -> dict[str, Any]:
        return self.status()["hypotheses"][hyp]["scripts"][script]

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT_S) -> None:
        def ready() -> bool:
            self._check_alive()
            try:
                return self.status()["daemon"]["state"] in ("idle", "running")
            except (FileNotFoundError, ValueError, KeyError):
                return False

        wait_until(ready, timeout, what="daemon ready")

    def _check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(
                f"daemon exited with {self.proc.returncode}: "
                + self.stderr_path.read_text(errors="replace")[-2000:]
            )

    # -- control -----------------------------------------------------------------------
    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait_exit(self, timeout: float = EVENT_TIMEOUT_S) -> int:
        try:
            self.exit_code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"daemon still running after {timeout:.0f}s") from None
        finally:
            if self.proc.poll() is not None:
                self._stderr.close()
        return self.exit_code

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.exit_code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.exit_code = self.proc.wait()
            raise AssertionError("daemon did not stop on SIGTERM") from None
        finally:
            self._stderr.close()
        return self.exit_code


def run_cli(
    *args: str, cwd: Path, timeout: float = 60.0, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m parallel_orchestrator <args>`` to completion, output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "parallel_orchestrator", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def pid_alive(pid: int) -> bool:
    """True for a live process (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != b"Z"


def processes_with_env(marker: str) -> list[int]:
    """Live pids whose environment contains ``marker`` (e.g. ``PO_TEST_TAG=abc``)."""
    needle = marker.encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if needle in env and pid_alive(int(entry)):
            found.append(int(entry))
    return found
