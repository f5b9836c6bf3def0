"""What a new user trips over on the command line (issues 11 and 12), via the real CLI."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import threading
from pathlib import Path

from harness import git, make_repo, run_cli, write_config


def test_init_survives_a_non_utf8_falsification_script_name(tmp_path: Path) -> None:
    repo, _ = make_repo(tmp_path, hypotheses=())
    folder = repo / ".falsification"
    folder.mkdir()
    bad = os.path.join(os.fsencode(folder), b"test_caf\xe9.sh")
    with open(bad, "wb") as f:
        f.write(b"#!/bin/sh\n")
    done = run_cli("init", cwd=repo)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert "caf\\xe9" in done.stdout  # shown escaped, not as a crash
    config = (repo / "parallel-orchestrator.toml").read_bytes().decode("utf-8")
    assert "caf\\xe9" in config
    assert run_cli("check", cwd=repo).returncode == 0


def test_branch_inside_a_folder_name_is_not_substituted_twice(tmp_path: Path) -> None:
    repo, _ = make_repo(tmp_path, hypotheses=())
    odd = tmp_path / "wt-{branch}"
    git(repo, "worktree", "add", "-q", "-b", "feature", os.fsdecode(odd))
    script = {
        "name": "where",
        "command": [
            "sh",
            "-c",
            'test "$1" = "$PO_WORKTREE" && test "$2" = "$(basename "$1")"',
            "sh",
            "{worktree}",
            "{hypothesis}",
        ],
        "timeout_s": 20,
    }
    cfg = write_config(tmp_path / "cfg" / "po.toml", repo, [script])
    done = run_cli("once", "-c", str(cfg), "--hypothesis", "wt-{branch}", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    (result,) = json.loads(done.stdout)["results"]
    assert result["result"] == "pass" and result["hypothesis"] == odd.name


def failing_once_config(tmp_path: Path) -> Path:
    repo, _ = make_repo(tmp_path, hypotheses=("hyp-1",))
    noisy = {
        "name": "noisy",
        "command": [
            "sh",
            "-c",
            'echo first; for i in $(seq 1 40); do echo "line $i"; done;'
            ' printf "\\033]0;owned\\007evil\\n"; exit 3',
        ],
        "timeout_s": 20,
    }
    ok = {"name": "ok", "command": ["true"], "timeout_s": 20}
    return write_config(tmp_path / "cfg" / "po.toml", repo, [noisy, ok])


def test_once_prints_the_output_tail_of_each_failing_job(tmp_path: Path) -> None:
    cfg = failing_once_config(tmp_path)
    done = run_cli("once", "-c", str(cfg), cwd=tmp_path)
    assert done.returncode == 1
    out = done.stdout
    assert "repo/noisy: log " in out and "hyp-1/noisy: log " in out
    assert "  | line 40" in out and "  | \\x1b]0;owned\\x07evil" in out
    assert "  | first" not in out  # only the tail: the last lines
    assert "\x1b" not in out and "\x07" not in out
    assert "ok: log" not in out  # passing jobs print no tail
    assert "once:" not in done.stderr  # no progress line off a terminal


def test_once_shows_progress_on_a_terminal(tmp_path: Path) -> None:
    cfg = failing_once_config(tmp_path)
    main, secondary = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "parallel_orchestrator", "once", "-c", str(cfg)],
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=secondary,
    )
    os.close(secondary)
    chunks: list[bytes] = []
    reader = threading.Thread(target=read_all, args=(main, chunks))
    reader.start()
    stdout, _ = proc.communicate(timeout=120)
    reader.join(timeout=30)
    os.close(main)
    assert proc.returncode == 1
    shown = b"".join(chunks).decode()
    assert "once: 0/4 done" in shown and "running" in shown and "elapsed" in shown
    assert "once: 4/4 done, 0 running, 2 not passed" in shown
    assert shown.endswith("\r\x1b[2K")  # the line is erased before the results
    assert b"  | line 40" in stdout


def read_all(fd: int, into: list[bytes]) -> None:
    while True:
        try:
            data = os.read(fd, 4096)
        except OSError:  # EIO once the last writer closed the terminal
            return
        if not data:
            return
        into.append(data)


def test_a_command_not_found_says_which_path_was_searched(tmp_path: Path) -> None:
    repo, _ = make_repo(tmp_path, hypotheses=())
    script = {
        "name": "py",
        "command": ["no-such-python-xyz", "-V"],
        "env": {"PATH": "/nowhere/bin:/usr/bin"},
        "timeout_s": 20,
    }
    cfg = write_config(tmp_path / "cfg" / "po.toml", repo, [script])
    done = run_cli("once", "-c", str(cfg), "--json", cwd=tmp_path)
    assert done.returncode == 1
    (result,) = json.loads(done.stdout)["results"]
    assert result["result"] == "error"
    assert "cannot run 'no-such-python-xyz'" in result["error"]
    assert "PATH=/nowhere/bin:/usr/bin" in result["error"]


def test_check_and_once_escape_a_worktree_name_with_control_characters(tmp_path: Path) -> None:
    repo, _ = make_repo(tmp_path, hypotheses=())
    evil = tmp_path / "wt\x1b]0;owned\x07"
    git(repo, "worktree", "add", "-q", "-b", "evil", os.fsdecode(evil))
    script = {"name": "t", "command": ["false"], "timeout_s": 20}
    cfg = write_config(tmp_path / "cfg" / "po.toml", repo, [script])
    for args in (("check",), ("once",)):
        done = run_cli(*args, "-c", str(cfg), cwd=tmp_path)
        assert done.returncode in (0, 1), done.stderr
        assert "\x1b" not in done.stdout and "\x07" not in done.stdout, repr(done.stdout)
        assert "wt\\x1b]0;owned\\x07" in done.stdout
