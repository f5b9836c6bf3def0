"""Hostile and damaged inputs to ``logs``, ``output``, ``status`` and ``compare``, and to
the daemon's event history: the real CLI and the real daemon on real files in temp dirs.

Every case here was a defect found by attacking the commands: a path out of the state dir,
a command hanging on a FIFO, a traceback on a damaged file, a follower gone silent, an id
that redraws the terminal. What must hold: a one-line error naming the file and the exit
code the design gives (2 usage, 3 nothing to read), never a hang or a traceback.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from harness import make_repo, run_cli, write_config

pytestmark = pytest.mark.timeout(120)

# A command that hangs instead of failing shows up as TimeoutExpired, well within the
# test's own timeout.
HANG_S = 20.0


def _config(tmp_path: Path, **daemon: Any) -> Path:
    repo, _ = make_repo(tmp_path, ("hyp-a",))
    script = {"name": "tests", "command": [sys.executable, "-c", "pass"], "watch": ["**/*"]}
    return write_config(tmp_path / "cfg" / "po.toml", repo, [script], **daemon)


def cli(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, "-c", os.fsdecode(cfg), cwd=cfg.parent, timeout=HANG_S)


def one_line_error(got: subprocess.CompletedProcess[str], code: int, *names: str) -> None:
    assert got.returncode == code, (got.returncode, got.stdout, got.stderr)
    assert "Traceback" not in got.stderr, got.stderr
    assert len(got.stderr.strip().splitlines()) == 1, got.stderr
    for name in names:
        assert name in got.stderr, got.stderr


def test_output_never_leaves_the_state_dir(tmp_path: Path) -> None:
    cfg = _config(tmp_path)  # never ran: no status file to check names against
    outside = tmp_path / "outside" / "s"
    outside.mkdir(parents=True)
    (outside / "x.log").write_text("SECRET\n")
    # runs/<hyp>/<script>: cfg/state/runs/../../../outside/s is tmp_path/outside/s
    for cell in ("../../../outside/s", os.fsdecode(outside), "../s", "hyp-a/..", "./s"):
        got = cli(cfg, "output", cell)
        assert "SECRET" not in got.stdout, cell
        one_line_error(got, 2, "HYPOTHESIS/SCRIPT")
    assert cli(cfg, "output", "hyp-a/tests", "--job", "../../etc/passwd").returncode == 2
    assert cli(cfg, "output", "hyp-a/tests").returncode == 3  # a good name: nothing yet
