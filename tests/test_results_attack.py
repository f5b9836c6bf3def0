"""Hostile and damaged inputs to ``logs``, ``output``, ``status`` and ``compare``, and to
the daemon's event history: the real CLI and the real daemon on real files in temp dirs.

Every case here was a defect found by attacking the commands: a path out of the state dir,
a command hanging on a FIFO, a traceback on a damaged file, a follower gone silent, an id
that redraws the terminal. What must hold: a one-line error naming the file and the exit
code the design gives (2 usage, 3 nothing to read), never a hang or a traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from harness import DaemonProcess, make_repo, run_cli, wait_until, write_config
from parallel_orchestrator.jobs.spec import prune_runs
from parallel_orchestrator.report.results import write_results

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


@pytest.mark.parametrize("kind", ["fifo", "folder", "symlink"])
def test_logs_refuses_a_history_that_is_not_a_file(tmp_path: Path, kind: str) -> None:
    cfg = _config(tmp_path)
    state = cfg.parent / "state"
    state.mkdir(mode=0o700)
    history = state / "events.jsonl"
    if kind == "fifo":
        os.mkfifo(history)
    elif kind == "folder":
        history.mkdir()
    else:
        (tmp_path / "elsewhere.jsonl").write_text('{"event": "daemon_started"}\n')
        history.symlink_to(tmp_path / "elsewhere.jsonl")
    for args in (("logs",), ("logs", "-f"), ("logs", "--json", "-n", "5")):
        one_line_error(cli(cfg, *args), 3, "events.jsonl")


GOOD = {
    "timestamp": "2026-01-01T10:00:00Z",
    "event": "job_finished",
    "hypothesis": "hyp-a",
    "script": "tests",
    "result": "fail",
    "duration_s": 1.5,
    "tests": {"total": 2, "passed": 1, "failed": 1, "errors": 0, "failing": ["t::bad"]},
}


def test_logs_skips_damaged_lines_and_shows_the_good_ones(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    state = cfg.parent / "state"
    state.mkdir(mode=0o700)
    damaged = [
        "[" * 100_000,  # nested too deep for json
        '{"event": "job_finished", "duration_s": 1e400}',
        '{"event": "job_finished", "duration_s": NaN}',
        '{"event": "job_finished", "duration_s": -1e300}',
        '{"event": "job_finished", "timestamp": "0001-01-01T00:00:00"}',
        '{"event": "job_finished", "timestamp": "0001-01-01T00:00:00+14:00"}',
        '{"event": "job_finished", "hypothesis": {"x": 1}, "tests": {"failing": "abc"}}',
        '{"event": "job_finished", "tests": {"failing": [{"a": 1}], "failed": 1e400}}',
        '{"event": "job_fin',  # cut by a crash
    ]
    lines = [*damaged, json.dumps(GOOD)]
    (state / "events.jsonl").write_text("\n".join(lines) + "\n")
    got = cli(cfg, "logs", "-n", "50")
    assert got.returncode == 0, got.stderr
    assert "Traceback" not in got.stderr
    shown = got.stdout.splitlines()
    assert len(shown) == len(damaged) - 1  # "[[[..." and the cut line skipped, the rest shown
    assert "hyp-a/tests" in shown[-1] and "1/2 passed" in shown[-1] and "t::bad" in shown[-1]


FOLLOW = [sys.executable, "-m", "parallel_orchestrator", "logs", "-f", "-n", "0", "--json"]


def _follow(cfg: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*FOLLOW, "-c", os.fsdecode(cfg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _append(path: Path, event: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(event) + "\n")


def _append_until(path: Path, event: dict[str, Any], shown: Any) -> None:
    """Append ``event`` until ``shown()``: a follower started with ``-n 0`` skips what
    was written before it opened the file, and there is no signal for that moment."""

    def appended_and_shown() -> bool:
        _append(path, event)
        return bool(shown())

    wait_until(appended_and_shown, timeout=15, interval=0.3)


def test_logs_follow_goes_on_after_the_history_is_truncated_in_place(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    state = cfg.parent / "state"
    state.mkdir(mode=0o700)
    history = state / "events.jsonl"
    history.write_text((json.dumps({**GOOD, "job_id": "old"}) + "\n") * 50)
    follower = _follow(cfg)
    seen: list[dict[str, Any]] = []

    def read() -> None:
        assert follower.stdout is not None
        seen.extend(json.loads(line) for line in follower.stdout)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        before = {**GOOD, "job_id": "before"}
        _append_until(history, before, lambda: any(e.get("job_id") == "before" for e in seen))
        with open(history, "r+") as f:  # logrotate's copytruncate: same inode, size 0
            f.truncate(0)
        after = {**GOOD, "job_id": "after"}
        _append_until(history, after, lambda: any(e.get("job_id") == "after" for e in seen))
        assert all(e.get("job_id") != "old" for e in seen)  # -n 0: no old lines
    finally:
        follower.send_signal(2)
        assert follower.wait(10) == 0
        assert follower.stderr is not None
        assert b"Traceback" not in follower.stderr.read()


def test_logs_follow_into_a_reader_that_leaves_exits_cleanly(tmp_path: Path) -> None:
    """``logs -f | head -1``: the pipe closes; the next event ends the follower, exit 0."""
    cfg = _config(tmp_path)
    state = cfg.parent / "state"
    state.mkdir(mode=0o700)
    history = state / "events.jsonl"
    history.write_text("")
    follower = _follow(cfg)
    first: list[bytes] = []
    assert follower.stdout is not None
    reader = threading.Thread(target=lambda: first.append(follower.stdout.readline()))
    reader.start()
    try:
        _append_until(history, {**GOOD, "job_id": "one"}, lambda: first)
        reader.join(10)
        assert json.loads(first[0])["job_id"] == "one"
        follower.stdout.close()  # the reader went away

        def ended() -> bool:
            _append(history, {**GOOD, "job_id": "more"})
            return follower.poll() is not None

        wait_until(ended, timeout=15, interval=0.3)
        assert follower.returncode == 0
        assert follower.stderr is not None
        assert follower.stderr.read() == b""
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()


@pytest.mark.parametrize("kind", ["fifo", "symlink"])
def test_daemon_history_is_never_a_fifo_or_a_link(tmp_path: Path, kind: str) -> None:
    """A FIFO planted as events.jsonl blocked the daemon's first log line forever (an
    open for writing waits for a reader); a symlink redirected its appends."""
    cfg = _config(tmp_path, run_on_start=True)
    state = cfg.parent / "state"
    state.mkdir(mode=0o700)
    history = state / "events.jsonl"
    target = tmp_path / "victim.txt"
    target.write_text("untouched\n")
    if kind == "fifo":
        os.mkfifo(history)
    else:
        history.symlink_to(target)
    d = DaemonProcess(cfg)
    try:
        d.wait_ready()
        d.wait_event("job_finished", count=2)  # repo and hyp-a ran; log file unaffected
        assert d.stop() == 0
    finally:
        if d.proc.poll() is None:
            d.stop()
    assert target.read_text() == "untouched\n"
    assert "events.jsonl" in d.stderr_path.read_text()  # said once, not hidden


def _status(tmp_path: Path, doc: dict[str, Any] | str) -> Path:
    path = tmp_path / "copy" / "status.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


def _doc(cells: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "daemon": {"pid": None, "version": "0", "state": "stopped"},
        "hypotheses": {h: {"path": f"/r/{h}", "branch": h, "scripts": c} for h, c in cells.items()},
        "summary": {},
    }


def test_status_and_compare_do_not_hang_on_a_fifo(tmp_path: Path) -> None:
    fifo = tmp_path / "status.json"
    os.mkfifo(fifo)
    for command in ("status", "compare"):
        got = run_cli(command, "--status-file", os.fsdecode(fifo), cwd=tmp_path, timeout=HANG_S)
        one_line_error(got, 3, "status.json", "not a regular file")


def test_out_of_range_numbers_in_a_status_file_are_shown_as_unknown(tmp_path: Path) -> None:
    # 1e400 is valid JSON that Python reads as inf, which json refuses to write back.
    cells = {"a": {"t": {"last_result": "pass", "duration_s": "DUR", "tests": None}}}
    path = _status(tmp_path, json.dumps(_doc(cells)).replace('"DUR"', "1e400"))
    for args in (("status", "--json"), ("compare", "--json", "--baseline", "a")):
        got = run_cli(*args, "--status-file", os.fsdecode(path), cwd=tmp_path)
        assert got.returncode == 0, got.stderr
        json.loads(got.stdout)
    shown = run_cli("status", "--status-file", os.fsdecode(path), cwd=tmp_path)
    assert shown.returncode == 0 and "Traceback" not in shown.stderr


def test_compare_treats_a_damaged_results_file_as_none(tmp_path: Path) -> None:
    cell = {"last_result": "fail", "duration_s": 1.0, "tests": None}
    path = _status(tmp_path, _doc({"a": {"t": cell}, "b": {"t": cell}}))
    write_results(path.parent, "a", "t", {"job_id": "j", "tests": {"x::y": "failed"}})
    planted = path.parent / "results" / "b" / "t.json"
    planted.parent.mkdir(parents=True)
    planted.write_text("[" * 100_000)
    got = run_cli(
        "compare", "--json", "--baseline", "a", "--status-file", os.fsdecode(path), cwd=tmp_path
    )
    assert got.returncode == 0, got.stderr
    b = next(h for h in json.loads(got.stdout)["hypotheses"] if h["id"] == "b")
    assert b["scripts"]["t"]["fixed"] == [] and b["scripts"]["t"]["broken"] == []


def test_ids_cannot_reorder_the_terminal_or_break_markdown(tmp_path: Path) -> None:
    spoof = "t::bidi\u202egnissap"  # shows as "t::bidipassing" reversed: looks like a pass
    piped = "t::case[a|b]"
    cells = {
        "a": {"t": {"last_result": "fail", "duration_s": 1.0, "tests": None}},
        "b": {"t": {"last_result": "fail", "duration_s": 1.0, "tests": None}},
    }
    path = _status(tmp_path, _doc(cells))
    write_results(
        path.parent, "a", "t", {"job_id": "j", "tests": {spoof: "passed", piped: "failed"}}
    )
    write_results(
        path.parent, "b", "t", {"job_id": "k", "tests": {spoof: "failed", piped: "passed"}}
    )
    where = ("--baseline", "a", "--status-file", os.fsdecode(path))
    text = run_cli("compare", *where, cwd=tmp_path)
    assert text.returncode == 0, text.stderr
    assert "\u202e" not in text.stdout and "t::bidi\\u202egnissap" in text.stdout
    md = run_cli("compare", "--markdown", *where, cwd=tmp_path).stdout
    assert "\u202e" not in md
    # Outside the table a code span shows its text as it is: no "\|" to read.
    assert "- `b` fixed: `t::case[a|b]`" in md
    assert "- `b` broke: `t::bidi\\u202egnissap`" in md
    table = [line for line in md.splitlines() if line.startswith("| ")]
    assert all(line.count(" | ") == table[0].count(" | ") for line in table)


def test_logs_and_status_escape_ids_from_a_real_report(tmp_path: Path) -> None:
    """A report a job wrote, read by the real daemon: ids with newlines, C1 escapes and
    bidi overrides reach ``logs`` and ``status`` only as visible escapes."""
    report = (
        '<testsuite><testcase classname="c" name="nl&#10;2026-01-01 fake  ok">'
        '<failure message="m&#x9b;2J"/></testcase>'
        '<testcase classname="c" name="csi&#x9b;2J&#x202e;kcab"><error/></testcase>'
        "</testsuite>"
    )
    writer = f"import os,sys; open(os.environ['PO_JUNIT_XML'],'w').write({report!r}); sys.exit(1)"
    repo, _ = make_repo(tmp_path, ())
    script = {"name": "tests", "command": [sys.executable, "-c", writer], "watch": ["**/*"]}
    cfg = write_config(tmp_path / "cfg" / "po.toml", repo, [script], run_on_start=True)
    d = DaemonProcess(cfg)
    try:
        d.wait_ready()
        d.wait_event("job_finished")
        for args in (("logs",), ("status",)):
            got = cli(cfg, *args)
            assert got.returncode == 0, got.stderr
            for raw in ("\x9b", "\u202e", "\n2026-01-01 fake"):
                assert raw not in got.stdout, (args, got.stdout)
            shown = "c::csi\\x9b2J\\u202ekcab" if args == ("logs",) else "c::nl\\n2026-01-01"
            assert shown in got.stdout
    finally:
        d.stop()


def test_huge_test_names_do_not_bloat_events_or_the_status_file(tmp_path: Path) -> None:
    # 5 failing tests named by a megabyte each, built in the job (argv stays small)
    writer = (
        "import os,sys\nn='N'*(1024*1024)\n"
        'cases=\'\'.join(f\'<testcase classname="c" name="{n}{i}"><failure message="m"/>'
        "</testcase>' for i in range(5))\n"
        "open(os.environ['PO_JUNIT_XML'],'w').write('<testsuite>'+cases+'</testsuite>')\n"
        "sys.exit(1)\n"
    )
    repo, _ = make_repo(tmp_path, ())
    script = {"name": "tests", "command": [sys.executable, "-c", writer], "watch": ["**/*"]}
    cfg = write_config(tmp_path / "cfg" / "po.toml", repo, [script], run_on_start=True)
    d = DaemonProcess(cfg)
    try:
        d.wait_ready()
        done = d.wait_event("job_finished")[0]
        assert done["tests"]["failed"] == 5 and len(set(done["tests"]["failing"])) == 5
        line = next(ln for ln in d.log_lines() if '"job_finished"' in ln)
        assert len(line) < 64 * 1024, len(line)
        assert d.status_path.stat().st_size < 256 * 1024
        results = json.loads((cfg.parent / "state" / "results" / "repo" / "tests.json").read_text())
        assert sorted(results["tests"]) == sorted(done["tests"]["failing"])
    finally:
        d.stop()


def test_error_messages_escape_names_from_the_repository(tmp_path: Path) -> None:
    """Hypothesis ids are folder names: whoever names a worktree folder controls them,
    and errors that list the known ones printed them raw to the terminal."""
    repo, _ = make_repo(tmp_path, ())
    evil = tmp_path / "evil\x1b]0;PWNED\x07\x1b[2J"
    subprocess.run(
        ["git", "-C", os.fsdecode(repo), "worktree", "add", "-q", "-b", "evil", os.fsdecode(evil)],
        check=True,
    )
    script = {"name": "tests", "command": [sys.executable, "-c", "pass"]}
    cfg = write_config(tmp_path / "cfg" / "po.toml", repo, [script])
    got = cli(cfg, "once", "--hypothesis", "nope\x1b[31m")
    one_line_error(got, 2, "nope\\x1b[31m", "evil\\x1b]0;PWNED\\x07\\x1b[2J")
    assert "\x1b" not in got.stderr and "\x07" not in got.stderr


def test_compare_reads_results_only_inside_the_state_dir(tmp_path: Path) -> None:
    """Hypothesis ids of a copied status file choose which results files are read: an
    id like ``../../x`` must not reach outside ``results/``."""
    cell = {"last_result": "fail", "duration_s": 1.0, "tests": None}
    outside = "../../elsewhere"
    path = _status(tmp_path, _doc({"a": {"t": cell}, outside: {"t": cell}}))
    write_results(path.parent, "a", "t", {"job_id": "j", "tests": {"x::y": "failed"}})
    planted = tmp_path / "elsewhere" / "t.json"  # copy/results/../../elsewhere/t.json
    planted.parent.mkdir()
    planted.write_text(json.dumps({"job_id": "k", "tests": {"x::y": "passed"}}))
    got = run_cli(
        "compare", "--json", "--baseline", "a", "--status-file", os.fsdecode(path), cwd=tmp_path
    )
    assert got.returncode == 0, got.stderr
    there = next(h for h in json.loads(got.stdout)["hypotheses"] if h["id"] == outside)
    assert there["scripts"]["t"]["fixed"] == []


def test_run_logs_are_pruned_whatever_a_job_leaves_in_its_run_folder(tmp_path: Path) -> None:
    """A job can write in its run folder (its {junit} report lives there): a dangling
    ``*.log`` symlink or a ``*.log`` folder made every later prune fail."""
    run_dir = tmp_path / "runs" / "h" / "s"
    run_dir.mkdir(parents=True)
    (run_dir / "planted.log").symlink_to(tmp_path / "nowhere")
    (run_dir / "folder.log").mkdir()
    for i in range(5):
        log = run_dir / f"j{i}.log"
        log.write_text(f"run {i}\n")
        os.utime(log, (1_000_000 + i, 1_000_000 + i))
    prune_runs(run_dir, keep=2)
    assert sorted(p.name for p in run_dir.glob("j*.log")) == ["j3.log", "j4.log"]
