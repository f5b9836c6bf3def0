"""``parallel-orchestrator demo``: the real daemon on a throwaway repository, in ~15 s.

Three hypotheses of one small code base: one passes, one fails, one hangs into its
timeout. The demo starts the real daemon, shows the status table, fixes the failing
hypothesis with an editor-style save, shows the table change, then stops the daemon and
checks that nothing it started is left. Everything lives in one temp folder, removed at
the end unless ``--keep``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import tomli_w

from ..errors import OrchestratorError
from ..jobs import janitor
from ..repo.git import GitError, run_git
from ..report import statusview

DEADLINE_S = 60.0

CALC_OK = "def add(a, b):\n    return a + b\n"
CALC_BUG = "def add(a, b):\n    return a - b  # the bug this hypothesis introduced\n"
CALC_HANG = (
    "import time\n\n\ndef add(a, b):\n"
    "    while True:  # this hypothesis never returns\n        time.sleep(0.05)\n"
)
CHECK = """\
from calc import add

assert add(2, 3) == 5, f"add(2, 3) returned {add(2, 3)}, expected 5"
print("ok: add(2, 3) == 5")
"""


class DemoError(OrchestratorError):
    """The demo could not show what it promises; one line."""


_DEMO_IDENTITY = {
    "GIT_AUTHOR_NAME": "demo",
    "GIT_AUTHOR_EMAIL": "demo@example.invalid",
    "GIT_COMMITTER_NAME": "demo",
    "GIT_COMMITTER_EMAIL": "demo@example.invalid",
}


def _git(cwd: Path, *args: str) -> None:
    try:
        done = run_git(cwd, *args, extra_env=_DEMO_IDENTITY)
    except GitError as exc:
        raise DemoError(f"git {' '.join(args)} failed: {exc}") from exc
    if not done.ok:
        raise DemoError(f"git {' '.join(args)} failed: {os.fsdecode(done.stderr).strip()}")


def _save_like_an_editor(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.swp")
    tmp.write_text(text)
    os.replace(tmp, path)


def build_sandbox(root: Path, marker: str) -> Path:
    """The repository, three worktree hypotheses and a config; returns the config path."""
    repo = root / "repo"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    (repo / "calc.py").write_text(CALC_OK)
    (repo / "check.py").write_text(CHECK)
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "calculator")
    for hyp, calc in (("hyp-pass", CALC_OK), ("hyp-fail", CALC_BUG), ("hyp-hang", CALC_HANG)):
        _git(repo, "worktree", "add", "-q", "-b", hyp, os.fsdecode(root / hyp))
        (root / hyp / "calc.py").write_text(calc)
    config = root / "parallel-orchestrator.toml"
    config.write_text(
        tomli_w.dumps(
            {
                "daemon": {
                    "state_dir": "state",
                    "log_file": "daemon.log",
                    "debounce_ms": 100,
                    "run_on_start": True,
                },
                "worktrees": {"repo": "repo", "include": ["hyp-*"]},
                "scripts": [
                    {
                        "name": "check",
                        "command": [sys.executable, "check.py"],
                        "watch": ["**/*.py"],
                        "timeout_s": 3,
                        "kill_grace_s": 1,
                        "env": {"PO_DEMO_MARKER": marker},
                    }
                ],
            }
        )
    )
    config.chmod(0o600)
    root.chmod(0o700)
    return config


def _wait(predicate: Callable[[], Any], what: str, deadline: float) -> Any:
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise DemoError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _events(log: Path) -> list[dict[str, Any]]:
    try:
        lines = log.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in lines if line.strip()]


def _leftovers(marker: str) -> list[int]:
    return janitor.find_with_env(f"PO_DEMO_MARKER={marker}")


def run_demo(keep: bool = False, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    color = statusview.should_color(out, os.environ)
    ascii_only = not statusview.can_encode_marks(getattr(out, "encoding", None))

    def say(text: str = "") -> None:
        print(text, file=out, flush=True)

    def show(status_path: Path) -> None:
        doc = statusview.read_status(status_path)
        say(statusview.render_table(doc, color=color, ascii_only=ascii_only))

    deadline = time.monotonic() + DEADLINE_S
    root = Path(tempfile.mkdtemp(prefix="po-demo-"))
    marker = secrets.token_hex(8)
    daemon: subprocess.Popen[bytes] | None = None
    try:
        config = build_sandbox(root, marker)
        status_path, log_path = root / "state" / "status.json", root / "daemon.log"
        say(f"==> a throwaway repository in {root}, with three hypotheses (git worktrees):")
        say(
            "    hyp-pass  add() is right      hyp-fail  add() subtracts      "
            "hyp-hang  add() never returns"
        )
        say("    one script, 'check', runs `python check.py` in each; timeout 3 s")
        say(f"==> starting the daemon: parallel-orchestrator run -c {config.name}")
        daemon = subprocess.Popen(
            [sys.executable, "-m", "parallel_orchestrator", "run", "-c", os.fsdecode(config)],
            cwd=root,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

        def finished(hyp: str, result: str | None = None, after: int = 0) -> bool:
            if daemon is not None and daemon.poll() is not None:
                err = daemon.stderr.read().decode(errors="replace") if daemon.stderr else ""
                raise DemoError(f"the daemon exited early ({daemon.returncode}): {err.strip()}")
            hits = [
                e
                for e in _events(log_path)[after:]
                if e["event"] == "job_finished" and e["hypothesis"] == hyp
            ]
            return bool(hits) and (result is None or hits[-1]["result"] == result)

        for hyp in ("hyp-pass", "hyp-fail", "hyp-hang"):
            _wait(lambda hyp=hyp: finished(hyp), f"the first run of {hyp}", deadline)
        say("==> every hypothesis ran once at start (the hanging one was killed at its timeout):")
        show(status_path)
        say()
        mark = len(_events(log_path))
        say("==> fixing hyp-fail: an editor-style save of calc.py (temp file + rename)")
        _save_like_an_editor(root / "hyp-fail" / "calc.py", CALC_OK)
        t0 = time.monotonic()
        _wait(lambda: finished("hyp-fail", "pass", mark), "hyp-fail to pass", deadline)
        reacted = time.monotonic() - t0
        for e in _events(log_path)[mark:]:
            if e["event"] in ("batch_formed", "job_started", "job_finished"):
                keys = (
                    ("jobs",)
                    if e["event"] == "batch_formed"
                    else ("hypothesis", "script", "result", "duration_s")
                )
                detail = {k: e[k] for k in keys if k in e}
                if e["event"] == "batch_formed":
                    detail["changed"] = e["hypotheses"]
                say(f"    log: {e['event']:<13} {json.dumps(detail)}")
        say(f"==> only hyp-fail/check reran; it passed {reacted:.2f} s after the save:")
        show(status_path)
        say()
        say("==> stopping the daemon (SIGTERM)")
        daemon.send_signal(signal.SIGTERM)
        try:
            code = daemon.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired as exc:
            raise DemoError("the daemon did not stop on SIGTERM") from exc
        left = _leftovers(marker)
        last = _events(log_path)[-1]["event"]
        say(f"    exit code {code}; last log line: {last}; processes left behind: {len(left)}")
        if code != 0:
            raise DemoError(f"the daemon exited with {code}")
        if left:
            raise DemoError(f"processes left behind: {left}")
        say("==> done. Try it on your own repository:")
        say("    parallel-orchestrator init && parallel-orchestrator run")
        say("    parallel-orchestrator status --watch   # in another terminal")
        return 0
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        if daemon is not None and daemon.stderr is not None:
            daemon.stderr.close()
        if keep:
            say(f"(kept {root})")
        else:
            shutil.rmtree(root, ignore_errors=True)
