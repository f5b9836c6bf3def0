"""What a new user trips over on the command line (issues 11 and 12), via the real CLI."""

from __future__ import annotations

import json
import os
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
