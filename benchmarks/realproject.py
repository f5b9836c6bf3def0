"""A real project's test suite for the benchmarks, and the real daemon to run it.

more-itertools: its sdist on the package index carries ``tests/`` (765 tests, ~20 s on
one core here). ``fetch_project`` downloads it with pip into a work folder (kept between
runs with ``--work DIR``), makes it a git repository, and builds a venv beside it with
pytest and pytest-testmon. ``Daemon`` runs ``python -m parallel_orchestrator run`` and
reads its JSON log, as a user would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tomli_w

PROJECT = "more-itertools"
GIT_ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "b",
    "GIT_AUTHOR_EMAIL": "b@example.invalid",
    "GIT_COMMITTER_NAME": "b",
    "GIT_COMMITTER_EMAIL": "b@example.invalid",
}


def git(cwd: Path, *args: str) -> str:
    out = subprocess.run(["git", *args], cwd=cwd, env=GIT_ENV, check=True, capture_output=True)
    return out.stdout.decode()


def fetch_project(work: Path) -> tuple[Path, Path]:
    """``(source tree as a git repo, venv python)``; reuses what ``work`` already has."""
    work.mkdir(parents=True, exist_ok=True)
    sdists = sorted(work.glob("more_itertools-*.tar.gz"))
    if not sdists:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                "--no-binary",
                ":all:",
                PROJECT,
                "-d",
                os.fsdecode(work),
            ],
            check=True,
        )
        sdists = sorted(work.glob("more_itertools-*.tar.gz"))
    sdist = sdists[-1]
    src = work / sdist.name.removesuffix(".tar.gz")
    if not src.is_dir():
        with tarfile.open(sdist) as tar:
            tar.extractall(work, filter="data")
    if not (src / ".git").exists():
        (src / ".gitignore").write_text(".testmondata*\n.pytest_cache/\n__pycache__/\n")
        git(src, "init", "-q", "-b", "main")
        git(src, "add", "-A")
        git(src, "commit", "-q", "-m", "sdist")
    venv = work / "venv"
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", os.fsdecode(venv)], check=True)
        subprocess.run(
            [os.fsdecode(python), "-m", "pip", "install", "-q", "pytest", "pytest-testmon"],
            check=True,
        )
    return src, python


class Daemon:
    """The real daemon on a config written from ``doc``; its events from the JSON log."""

    def __init__(self, folder: Path, doc: dict[str, Any]) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.config = folder / "config.toml"
        self.config.write_text(tomli_w.dumps(doc))
        self.config.chmod(0o600)
        self.log_path = folder / "daemon.log"
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "parallel_orchestrator", "run", "-c", os.fsdecode(self.config)],
            cwd=folder,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=open(folder / "daemon.stderr", "wb"),  # noqa: SIM115 - child keeps it
        )

    def events(self, name: str) -> list[dict[str, Any]]:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return []
        lines = text[: text.rfind("\n") + 1].splitlines()
        return [e for e in map(json.loads, filter(None, lines)) if e["event"] == name]

    def wait(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited ({self.proc.returncode}) waiting for {what}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(0.01)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def daemon_doc(repo: Path, scripts: list[dict[str, Any]], **daemon: Any) -> dict[str, Any]:
    return {
        "daemon": {"state_dir": "state", "log_file": "daemon.log", **daemon},
        "worktrees": {"repo": os.fsdecode(repo), "ignore": [".testmondata*", ".pytest_cache"]},
        "scripts": scripts,
    }
