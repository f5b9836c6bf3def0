"""End-to-end: hostile JUnit reports written by jobs of the real daemon. The job keeps the
result its exit code gave, ``tests`` is null, ``junit_unreadable`` names the report, the
daemon's memory stays bounded, and a local file named by an external entity never shows
up anywhere the daemon writes or the CLI prints."""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import pytest

from harness import DaemonProcess, make_repo, run_cli, write_config

pytestmark = pytest.mark.timeout(180)

HOSTILE = r"""
import os, sys
kind, secret = sys.argv[1], sys.argv[2]
out = os.environ["PO_JUNIT_XML"]
head = '<?xml version="1.0"?>\n'
if kind == "laughs":
    ents = '<!ENTITY a0 "lol">' + "".join(
        f'<!ENTITY a{i} "{("&a%d;" % (i - 1)) * 10}">' for i in range(1, 10))
    doc = head + f"<!DOCTYPE l [{ents}]><testsuite><testcase name='&a9;'/></testsuite>"
elif kind == "xxe":
    doc = head + (f'<!DOCTYPE t [<!ENTITY x SYSTEM "file://{secret}">]>'
                  '<testsuite><testcase classname="c" name="t"><failure message="&x;">&x;'
                  '</failure></testcase></testsuite>')
elif kind == "truncated":
    doc = '<testsuite><testcase classname="c" name="ok"/><testcase classname="c" na'
elif kind == "huge":
    case = '<testcase classname="c" name="t"/>'
    with open(out, "w") as f:
        f.write("<testsuite>")
        block = case * 30000
        while f.tell() < 60 * 1024 * 1024:
            f.write(block)
        f.write("</testsuite>")
    doc = None
if doc is not None:
    with open(out, "w") as f:
        f.write(doc)
print("wrote a", kind, "report")
sys.exit(1 if kind == "laughs" else 0)
"""
KINDS = ("laughs", "xxe", "truncated", "huge")
RSS_BOUND_MIB = 150  # the daemon idles well under this; a parsed 60 MiB report would not


def peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_hostile_reports_change_nothing_but_are_reported(tmp_path: Path) -> None:
    repo, _ = make_repo(tmp_path, ())
    marker = f"SECRET-{uuid.uuid4().hex}"
    secret = tmp_path / "secret.txt"
    secret.write_text(marker + "\n")
    tool = tmp_path / "hostile.py"
    tool.write_text(HOSTILE)
    scripts = [
        {"name": kind, "command": [sys.executable, os.fsdecode(tool), kind, os.fsdecode(secret)]}
        for kind in KINDS
    ]
    cfg = write_config(tmp_path / "cfg" / "po.toml", repo, scripts, run_on_start=True)
    d = DaemonProcess(cfg)
    try:
        d.wait_ready()
        done = {e["script"]: e for e in d.wait_event("job_finished", count=4, timeout=120)}
        unreadable = {e["script"]: e for e in d.wait_event("junit_unreadable", count=4)}
        rss = peak_rss_mib(d.proc.pid)
        print(f"daemon peak RSS after the hostile reports: {rss:.1f} MiB")
        statuses = {k: d.cell("repo", k) for k in KINDS}
        shown = [
            run_cli(*args, "-c", os.fsdecode(cfg), cwd=tmp_path).stdout
            for args in (("status",), ("status", "--json"), ("logs", "--json"), ("compare",))
        ]
    finally:
        assert d.stop() == 0
    for kind in KINDS:
        assert done[kind]["result"] == ("fail" if kind == "laughs" else "pass")
        assert done[kind]["tests"] is None
        assert statuses[kind]["tests"] is None
        assert statuses[kind]["state"] == done[kind]["result"]
        event = unreadable[kind]
        assert event["hypothesis"] == "repo"
        assert event["path"].endswith(".junit.xml") and event["error"]
        assert not (cfg.parent / "state" / "results" / "repo" / f"{kind}.json").exists()
    assert "larger than" in unreadable["huge"]["error"]
    assert "malformed" in unreadable["truncated"]["error"]
    assert rss < RSS_BOUND_MIB, f"daemon peak RSS {rss:.0f} MiB"

    everything = [*shown, (tmp_path / "cfg" / "daemon.stderr").read_text(errors="replace")]
    for path in (cfg.parent).rglob("*"):
        if path.is_file() and path.stat().st_size < 10 * 1024 * 1024:
            everything.append(path.read_text(errors="replace"))
    assert not any(marker in text for text in everything)
