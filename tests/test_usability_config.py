"""Config mistakes a user makes (issue 11): bad globs, absurd nesting, a BOM, a symlink
hop through a world-writable folder. Driven through the real CLI and the real daemon."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import tomli_w

from harness import DaemonProcess, make_repo, run_cli, write_config
from parallel_orchestrator.repo.pathglob import compile_glob, glob_problem

TRUE_SCRIPT = {"name": "t", "command": ["true"], "timeout_s": 20}


def one_error_line(done) -> str:
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("section", "key", "where"),
    [
        ("scripts", "watch", "scripts[0].watch[1]"),
        ("worktrees", "ignore", "worktrees.ignore[1]"),
    ],
)
def test_a_reversed_glob_range_is_a_config_error(
    tmp_path: Path, section: str, key: str, where: str
) -> None:
    repo, _ = make_repo(tmp_path, hypotheses=())
    globs = ["**/*.py", "src/[z-a].py"]
    if section == "scripts":
        cfg = write_config(tmp_path / "po.toml", repo, [{**TRUE_SCRIPT, key: globs}])
    else:
        cfg = write_config(tmp_path / "po.toml", repo, [TRUE_SCRIPT], worktrees={key: globs})
    line = one_error_line(run_cli("check", "-c", str(cfg), cwd=tmp_path))
    assert line.startswith(f"parallel-orchestrator: {cfg}: {where}: ")
    assert "[z-a]" in line and "bad character range" in line


def test_a_bad_glob_on_sighup_keeps_the_old_config(tmp_path: Path) -> None:
    repo, _ = make_repo(tmp_path, hypotheses=())
    cfg = write_config(tmp_path / "po.toml", repo, [TRUE_SCRIPT])
    d = DaemonProcess(cfg)
    try:
        d.wait_ready()
        write_config(cfg, repo, [TRUE_SCRIPT], worktrees={"ignore": ["build/[9-0]"]})
        d.signal(signal.SIGHUP)
        (event,) = d.wait_event("config_invalid")
        assert any("worktrees.ignore[0]" in e for e in event["errors"]), event
        (repo / "src" / "app.py").write_text("VALUE = 2\n")
        d.wait_event("job_finished", lambda e: e["script"] == "t")  # old config still works
    finally:
        assert d.stop() == 0


def test_glob_sets_starting_with_a_bracket_match_like_fnmatch() -> None:
    """``[]-a]`` is the set ']' to 'a' (fnmatch's rule), not an empty set and a syntax error."""
    assert compile_glob("[]-a].py").match("^.py")
    assert not compile_glob("[]-a].py").match("-.py")
    assert compile_glob("[!]]x").match("ax") and not compile_glob("[!]]x").match("]x")
    assert glob_problem("[]-a]") == ""
    assert "bad character range" in glob_problem("[z-a]")


def test_deeply_nested_arrays_are_a_one_line_error(tmp_path: Path) -> None:
    cfg = tmp_path / "po.toml"
    for depth in (100, 5000):
        cfg.write_text("[daemon]\nstate_dir = " + "[" * depth + "]" * depth + "\n")
        cfg.chmod(0o600)
        line = one_error_line(run_cli("check", "-c", str(cfg), cwd=tmp_path))
        assert str(cfg) in line and "nested too deeply" in line


def test_a_utf8_bom_is_accepted(tmp_path: Path) -> None:
    repo, _ = make_repo(tmp_path, hypotheses=())
    cfg = tmp_path / "po.toml"
    body = tomli_w.dumps({"worktrees": {"repo": str(repo)}, "scripts": [TRUE_SCRIPT]})
    cfg.write_bytes(b"\xef\xbb\xbf" + body.encode())
    cfg.chmod(0o600)
    done = run_cli("check", "-c", str(cfg), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "true" in done.stdout


def test_a_symlink_hop_in_a_world_writable_folder_is_refused(tmp_path: Path) -> None:
    """~/po.toml -> shared/hop.toml -> private/real.toml: the real file and the named
    one sit in safe folders, but anyone can swap the hop in the shared folder."""
    repo, _ = make_repo(tmp_path, hypotheses=())
    private = tmp_path / "private"
    real = write_config(private / "real.toml", repo, [TRUE_SCRIPT])
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "hop.toml").symlink_to(real)
    shared.chmod(0o777)
    named = tmp_path / "po.toml"
    named.symlink_to(shared / "hop.toml")
    line = one_error_line(run_cli("check", "-c", str(named), cwd=tmp_path))
    assert f"({shared}, mode 0777)" in line and "writable by group/others" in line
    shared.chmod(0o755)
    assert run_cli("check", "-c", str(named), cwd=tmp_path).returncode == 0


def test_a_world_writable_ancestor_of_the_real_path_is_refused(tmp_path: Path) -> None:
    repo, _ = make_repo(tmp_path, hypotheses=())
    shared = tmp_path / "shared"
    real = write_config(shared / "mine" / "real.toml", repo, [TRUE_SCRIPT])
    (shared / "mine").chmod(0o700)
    shared.chmod(0o777)  # anyone may rename mine/ away and put their own in its place
    named = tmp_path / "po.toml"
    named.symlink_to(real)
    line = one_error_line(run_cli("check", "-c", str(named), cwd=tmp_path))
    assert f"({shared}, mode 0777)" in line
    assert os.stat(real).st_mode & 0o777 == 0o600


def test_deep_nesting_on_sighup_keeps_the_old_config(tmp_path: Path) -> None:
    repo, _ = make_repo(tmp_path, hypotheses=())
    cfg = write_config(tmp_path / "po.toml", repo, [TRUE_SCRIPT])
    d = DaemonProcess(cfg)
    try:
        d.wait_ready()
        cfg.write_text("deep = " + "[" * 5000 + "]" * 5000 + "\n" + cfg.read_text())
        d.signal(signal.SIGHUP)
        (event,) = d.wait_event("config_invalid")
        assert any("nested too deeply" in e for e in event["errors"]), event
        assert d.events("daemon_crashed") == []
        (repo / "src" / "app.py").write_text("VALUE = 3\n")
        d.wait_event("job_finished", lambda e: e["script"] == "t")  # old config still works
    finally:
        assert d.stop() == 0
