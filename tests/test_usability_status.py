"""`status` reads the right daemon's file, survives a corrupt one and never prints raw
control characters; the daemon writes strict JSON; one state dir per repository
(issue 11 items 3 and 11, issue 12 items 1 and 4). Real CLI, real daemon."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from harness import DaemonProcess, make_repo, run_cli, wait_until, write_config

TRUE_SCRIPT = {"name": "t", "command": ["true"], "timeout_s": 20}


def status_doc(config_path: str | None, **cell: Any) -> dict[str, Any]:
    base_cell = {
        "state": "pass",
        "last_result": "pass",
        "exit_code": 0,
        "duration_s": 1.5,
        "started_at": "2026-01-01T00:00:00Z",
        "finished_at": "2026-01-01T00:00:01Z",
        "job_id": "j1",
        "batch_id": "b1",
        "log_path": "/nowhere.log",
        "output_tail": "ok\n",
    }
    return {
        "schema_version": 1,
        "daemon": {
            "pid": 999999999,
            "version": "0.1.0",
            "state": "stopped",
            "started_at": "2026-01-01T00:00:00Z",
            "updated_at": "2026-01-01T00:00:01Z",
            "config_path": config_path,
        },
        "hypotheses": {"hyp-1": {"path": "/p", "branch": "b", "scripts": {"t": base_cell | cell}}},
        "summary": {},
    }


def strict_json(text: str) -> Any:
    def refuse(name: str) -> None:
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


# --------------------------------------------------------------------------- escaping


def test_status_escapes_control_characters(tmp_path: Path) -> None:
    doc = status_doc("/cfg\x1b[2J.toml")
    evil = "hyp\x1b]0;pwned\x07"
    doc["hypotheses"][evil] = doc["hypotheses"].pop("hyp-1")
    doc["hypotheses"][evil]["branch"] = "br\x9b31m"
    doc["daemon"]["version"] = "1\rfake"
    path = tmp_path / "status.json"
    path.write_text(json.dumps(doc))
    done = run_cli("status", "--status-file", str(path), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]", done.stdout), repr(done.stdout)
    assert "hyp\\x1b]0;pwned\\x07" in done.stdout and "br\\x9b31m" in done.stdout
    assert "1\\rfake" in done.stdout and "/cfg\\x1b[2J.toml" in done.stdout
    done = run_cli("status", "--status-file", str(path), "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]", done.stdout), repr(done.stdout)
    assert strict_json(done.stdout)["hypotheses"][evil]["branch"] == "br\x9b31m"


# --------------------------------------------------------------------------- corrupt files


@pytest.mark.parametrize(
    "corrupt",
    [
        {"duration_s": "INF"},  # replaced below by a real Infinity token
        {"state": ["pass"]},
        {"last_result": {"x": 1}, "state": "queued"},
        {"started_at": ["2026"], "state": "running"},
        {"finished_at": 1e308, "exit_code": [1]},
        {"output_tail": ["x"], "log_path": 5},
    ],
)
def test_status_shows_a_corrupt_file_without_a_traceback(
    tmp_path: Path, corrupt: dict[str, Any]
) -> None:
    doc = status_doc(None, **corrupt)
    doc["daemon"]["pid"] = 10**30
    doc["hypotheses"]["hyp-1"]["branch"] = ["main"]
    path = tmp_path / "status.json"
    path.write_text(json.dumps(doc).replace('"INF"', "Infinity"))
    for extra in ((), ("--json",)):
        done = run_cli("status", "--status-file", str(path), *extra, cwd=tmp_path)
        assert "Traceback" not in done.stderr, done.stderr
        assert done.returncode in (0, 3), done.stderr
        if done.returncode == 3:
            assert len(done.stderr.strip().splitlines()) == 1
        elif extra:
            strict_json(done.stdout)
        else:
            assert "hyp-1" in done.stdout


def test_the_daemon_writes_strict_json_after_adopting_a_corrupt_file(tmp_path: Path) -> None:
    repo, _ = make_repo(tmp_path, hypotheses=("hyp-1",))
    scripts = [TRUE_SCRIPT, {**TRUE_SCRIPT, "name": "u"}]
    cfg = write_config(tmp_path / "cfg" / "po.toml", repo, scripts)
    state = cfg.parent / "state"
    state.mkdir(mode=0o700)
    doc = status_doc(str(cfg), duration_s="INF")
    doc["hypotheses"]["hyp-1"]["scripts"]["u"] = {"state": ["fail"], "output_tail": [1]}
    (state / "status.json").write_text(json.dumps(doc).replace('"INF"', "Infinity"))
    d = DaemonProcess(cfg)
    try:
        d.wait_ready()
        written = strict_json(d.status_path.read_text())
        cells = written["hypotheses"]["hyp-1"]["scripts"]
        assert cells["t"]["duration_s"] is None and cells["t"]["last_result"] == "pass"
        assert cells["u"]["state"] == "never_run" and cells["u"]["output_tail"] is None
        done = run_cli("status", "-c", str(cfg), cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    finally:
        assert d.stop() == 0
    strict_json(d.status_path.read_text())


# --------------------------------------------------------------------------- which file


def xdg_env(home: Path) -> dict[str, str]:
    return {
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_STATE_HOME": str(home / ".local" / "state"),
    }


def test_status_reads_its_own_instance_not_the_old_global_file(tmp_path: Path) -> None:
    home = tmp_path / "home"
    cfg_dir = home / ".config" / "parallel-orchestrator"
    repo_a, _ = make_repo(tmp_path / "a", hypotheses=())
    repo_b, _ = make_repo(tmp_path / "b", hypotheses=())
    cfg_a = write_config(cfg_dir / "a.toml", repo_a, [TRUE_SCRIPT], state_dir="", log_file="")
    cfg_b = write_config(cfg_dir / "b.toml", repo_b, [TRUE_SCRIPT], state_dir="", log_file="")
    # project a's daemon once wrote the old single default; b runs under the user unit
    stale = home / ".local" / "state" / "parallel-orchestrator" / "status.json"
    stale.parent.mkdir(parents=True)
    stale.write_text(json.dumps(status_doc(str(cfg_a))))
    own = home / ".local" / "state" / "parallel-orchestrator" / "b" / "status.json"
    own.parent.mkdir(parents=True)
    own.write_text(json.dumps(status_doc(str(cfg_b))))
    done = run_cli("status", "-c", str(cfg_b), "--json", cwd=tmp_path, env=xdg_env(home))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["daemon"]["config_path"] == str(cfg_b)


def test_status_refuses_another_configs_file_naming_both(tmp_path: Path) -> None:
    repo, _ = make_repo(tmp_path, hypotheses=())
    shared = tmp_path / "shared-state"
    shared.mkdir(mode=0o700)
    cfg_a = write_config(tmp_path / "a" / "po.toml", repo, [TRUE_SCRIPT], state_dir=str(shared))
    cfg_b = write_config(tmp_path / "b" / "po.toml", repo, [TRUE_SCRIPT], state_dir=str(shared))
    (shared / "status.json").write_text(json.dumps(status_doc(str(cfg_a))))
    done = run_cli("status", "-c", str(cfg_b), cwd=tmp_path)
    assert done.returncode == 2, done.stdout
    (line,) = done.stderr.strip().splitlines()
    assert str(cfg_a) in line and str(cfg_b) in line and "daemon.state_dir" in line
    assert run_cli("status", "-c", str(cfg_a), cwd=tmp_path).returncode == 0


# --------------------------------------------------------------------------- per repository


def test_default_state_dir_is_per_repository(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = xdg_env(home)
    daemons = []
    try:
        for name in ("alpha", "beta"):
            repo, _ = make_repo(tmp_path / name, hypotheses=())
            cfg = write_config(tmp_path / name / "po.toml", repo, [TRUE_SCRIPT], state_dir="")
            d = DaemonProcess(cfg, env=env)
            daemons.append(d)
            d.wait_event("daemon_started")
        root = home / ".local" / "state" / "parallel-orchestrator"
        found = wait_until(
            lambda: (
                sorted(p.parent.name for p in root.glob("*/status.json"))
                if len(list(root.glob("*/status.json"))) == 2
                else None
            ),
            what="two status files",
        )
        assert [re.sub(r"-[0-9a-f]{8}$", "", n) for n in found] == ["repo", "repo"]
        assert found[0] != found[1]
        for d in daemons:
            done = run_cli("status", "-c", str(d.config), "--json", cwd=tmp_path, env=env)
            assert done.returncode == 0, done.stderr
            assert json.loads(done.stdout)["daemon"]["config_path"] == str(d.config)
            check = run_cli("check", "-c", str(d.config), cwd=tmp_path, env=env)
            assert str(root / "repo-") in check.stdout
    finally:
        for d in daemons:
            d.stop()


def test_second_daemon_names_the_key_and_both_configs(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = xdg_env(home)
    repo, _ = make_repo(tmp_path, hypotheses=())
    first = write_config(tmp_path / "one" / "po.toml", repo, [TRUE_SCRIPT], state_dir="")
    second = write_config(tmp_path / "two" / "po.toml", repo, [TRUE_SCRIPT], state_dir="")
    d = DaemonProcess(first, env=env)
    try:
        d.wait_event("daemon_started")
        done = run_cli("run", "-c", str(second), cwd=tmp_path, env=env)
        assert done.returncode == 2
        (line,) = done.stderr.strip().splitlines()
        assert "daemon.state_dir" in line and "another daemon" in line
        assert str(first) in line and str(second) in line
        assert f"pid {d.proc.pid}" in line
    finally:
        assert d.stop() == 0


def test_readers_resolve_the_units_state_dir_like_status(tmp_path: Path) -> None:
    """logs/output/compare use state_dir_for: the same folder status reads from."""
    from parallel_orchestrator.report.statelocate import state_dir_for, status_file_for
    from parallel_orchestrator.settings.loader import load_settings

    home = tmp_path / "home"
    env = xdg_env(home)
    repo, _ = make_repo(tmp_path, hypotheses=())
    cfg = write_config(
        home / ".config" / "parallel-orchestrator" / "proj.toml",
        repo,
        [TRUE_SCRIPT],
        state_dir="",
        log_file="",
    )
    settings = load_settings(cfg, env=env)
    assert state_dir_for(settings, env) == settings.daemon.state_dir  # nothing yet
    unit_dir = home / ".local" / "state" / "parallel-orchestrator" / "proj"
    unit_dir.mkdir(parents=True)
    (unit_dir / "status.json").write_text(json.dumps(status_doc(str(cfg))))
    assert status_file_for(settings, env) == unit_dir / "status.json"
    assert state_dir_for(settings, env) == unit_dir
    assert settings.daemon.state_dir.name.startswith("repo-")
