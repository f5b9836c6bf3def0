"""The command line as users call it: real subprocesses, real repositories, exit codes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from harness import make_repo, write_config

PO = [sys.executable, "-m", "parallel_orchestrator"]


def po(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PO, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def scripts(ok_in: str = "hyp-1") -> list[dict[str, object]]:
    return [
        {
            "name": "unit",
            "command": ["sh", "-c", f'test "$PO_HYPOTHESIS" = {ok_in}'],
            "timeout_s": 20,
        },
        {"name": "lint", "command": ["true"], "timeout_s": 20},
    ]


def test_check_lists_hypotheses_and_scripts(tmp_path: Path) -> None:
    repo, _ = make_repo(tmp_path)
    cfg = write_config(tmp_path / "cfg" / "po.toml", repo, scripts())
    done = po("check", "-c", str(cfg))
    assert done.returncode == 0, done.stderr
    for word in ("hyp-1", "hyp-2", "repo", "unit", "lint", str(repo)):
        assert word in done.stdout


def test_check_bad_config_is_one_line_exit_2(tmp_path: Path) -> None:
    cfg = tmp_path / "po.toml"
    cfg.write_text('[daemon]\ndebounce_ms = "fast"\n[[scripts]]\nname="t"\ncommand=["true"]\n')
    cfg.chmod(0o600)
    done = po("check", "-c", str(cfg))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "debounce_ms" in lines[0] and str(cfg) in lines[0]
    assert "Traceback" not in done.stderr


def test_once_table_json_filters_and_exit_codes(tmp_path: Path) -> None:
    repo, _ = make_repo(tmp_path)
    cfg = write_config(tmp_path / "cfg" / "po.toml", repo, scripts())
    done = po("once", "-c", str(cfg))
    assert done.returncode == 1  # unit fails outside hyp-1
    assert re.search(r"hyp-1\s+PASS", done.stdout)
    assert re.search(r"hyp-2\s+FAIL", done.stdout)

    done = po("once", "-c", str(cfg), "--hypothesis", "hyp-1", "--json")
    assert done.returncode == 0, done.stdout
    doc = json.loads(done.stdout)
    assert doc["passed"] is True
    assert {(r["hypothesis"], r["script"]) for r in doc["results"]} == {
        ("hyp-1", "unit"),
        ("hyp-1", "lint"),
    }
    assert all(Path(r["log_path"]).exists() for r in doc["results"])

    done = po("once", "-c", str(cfg), "--script", "lint", "--json")
    assert done.returncode == 0
    assert {r["script"] for r in json.loads(done.stdout)["results"]} == {"lint"}

    done = po("once", "-c", str(cfg), "--hypothesis", "nope")
    assert done.returncode == 2 and "nope" in done.stderr


def test_once_reports_timeout_and_missing_command(tmp_path: Path) -> None:
    repo, _ = make_repo(tmp_path, hypotheses=())
    cfg = write_config(
        tmp_path / "cfg" / "po.toml",
        repo,
        [
            {"name": "slow", "command": ["sleep", "30"], "timeout_s": 0.5, "kill_grace_s": 0.5},
            {"name": "ghost", "command": ["./no-such-script.sh"]},
        ],
    )
    done = po("once", "-c", str(cfg), "--json")
    assert done.returncode == 1
    results = {r["script"]: r for r in json.loads(done.stdout)["results"]}
    assert results["slow"]["result"] == "timeout" and results["slow"]["exit_code"] == 124
    assert results["ghost"]["result"] == "error"
    assert "no-such-script.sh" in results["ghost"]["error"]


def test_status_exit_codes(tmp_path: Path) -> None:
    missing = tmp_path / "status.json"
    done = po("status", "--status-file", str(missing))
    assert done.returncode == 3 and str(missing) in done.stderr
    doc = {
        "schema_version": 1,
        "daemon": {
            "pid": 999999,
            "version": "0",
            "state": "stopped",
            "started_at": None,
            "updated_at": None,
            "config_path": None,
        },
        "hypotheses": {
            "h": {
                "path": "/x",
                "branch": "b",
                "scripts": {
                    "t": {
                        "state": "pass",
                        "last_result": "pass",
                        "exit_code": 0,
                        "duration_s": 1.5,
                        "started_at": None,
                        "finished_at": None,
                        "job_id": "j",
                        "batch_id": "b",
                        "log_path": None,
                        "output_tail": "",
                    }
                },
            }
        },
        "summary": {
            "pass": 1,
            "fail": 0,
            "timeout": 0,
            "error": 0,
            "cancelled": 0,
            "running": 0,
            "queued": 0,
            "never_run": 0,
        },
    }
    missing.write_text(json.dumps(doc))
    done = po("status", "--status-file", str(missing), env={"NO_COLOR": "1"})
    assert done.returncode == 0 and "pass" in done.stdout and "\x1b[" not in done.stdout
    done = po("status", "--status-file", str(missing), "--json")
    assert done.returncode == 0 and json.loads(done.stdout) == doc


def test_init_then_check(tmp_path: Path) -> None:
    repo, _ = make_repo(tmp_path, files={"pkg/mod.py": "X = 1\n", "tests/test_mod.py": "\n"})
    out = tmp_path / "cfgdir" / "po.toml"
    out.parent.mkdir(mode=0o700)
    done = po("init", "--repo", str(repo), "--output", str(out))
    assert done.returncode == 0, done.stderr
    assert po("check", "-c", str(out)).returncode == 0
    again = po("init", "--repo", str(repo), "--output", str(out))
    assert again.returncode == 2 and "--force" in again.stderr
    assert po("init", "--repo", str(repo), "--output", str(out), "--force").returncode == 0


def test_usage_error_is_exit_2() -> None:
    done = po("frobnicate")
    assert done.returncode == 2


def test_demo_runs_and_cleans_up() -> None:
    done = po("demo", timeout=90)
    assert done.returncode == 0, done.stdout + done.stderr
    root = re.search(r"repository in (\S+),", done.stdout)
    assert root is not None
    assert not Path(root.group(1)).exists()
    assert "processes left behind: 0" in done.stdout
    assert "daemon_stopped" in done.stdout


def test_status_finds_the_user_units_state_dir(tmp_path: Path) -> None:
    """Under the user template the daemon writes to $STATE_DIRECTORY, which a shell lacks."""
    home = tmp_path / "home"
    cfg_dir = home / ".config" / "parallel-orchestrator"
    cfg_dir.mkdir(parents=True, mode=0o700)
    repo, _ = make_repo(tmp_path, hypotheses=())
    cfg = write_config(cfg_dir / "myproject.toml", repo, scripts(), state_dir="", log_file="")
    # systemd 252 puts a user unit's StateDirectory=parallel-orchestrator/%i under ~/.config
    state = cfg_dir / "myproject"
    state.mkdir()
    doc = {
        "schema_version": 1,
        "daemon": {
            "pid": 1,
            "version": "0",
            "state": "idle",
            "started_at": None,
            "updated_at": None,
            "config_path": str(cfg),
        },
        "hypotheses": {},
        "summary": {},
    }
    (state / "status.json").write_text(json.dumps(doc))
    env = {"HOME": str(home), "XDG_CONFIG_HOME": "", "XDG_STATE_HOME": ""}
    done = po("status", "-c", str(cfg), "--json", env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["daemon"]["config_path"] == str(cfg)


def test_piping_into_head_is_not_an_error(tmp_path: Path) -> None:
    repo, _ = make_repo(tmp_path)
    cfg = write_config(tmp_path / "cfg" / "po.toml", repo, scripts())
    done = subprocess.run(
        f"{sys.executable} -m parallel_orchestrator check -c {cfg} | head -c 10",
        shell=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr


def test_once_stopped_by_sigterm_kills_its_jobs(tmp_path: Path) -> None:
    import signal

    from harness import pid_alive, wait_until

    repo, _ = make_repo(tmp_path, hypotheses=())
    pidfile = tmp_path / "job.pid"
    cfg = write_config(
        tmp_path / "cfg" / "po.toml",
        repo,
        [
            {
                "name": "long",
                "command": ["sh", "-c", f'echo $$ > "{pidfile}"; exec sleep 300'],
                "timeout_s": 300,
                "kill_grace_s": 1,
            }
        ],
    )
    proc = subprocess.Popen(
        [*PO, "once", "-c", str(cfg)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_until(
            lambda: pidfile.exists() and pidfile.read_text().strip(), 60, what="the job to start"
        )
        job = int(pidfile.read_text())
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "SIGTERM" in err and "Traceback" not in err
    wait_until(lambda: not pid_alive(job), 10, what="the job to be gone")
