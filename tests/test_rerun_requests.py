"""The request format, cell selection, the config's watched paths and the salvage of an
invalid config's state location: the pure parts behind ``rerun`` and reload-on-save
(their end-to-end tests are in test_dailyuse_controls.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from parallel_orchestrator.service.configwatch import config_paths
from parallel_orchestrator.service.requests import (
    MAX_TARGETS,
    RequestInbox,
    RequestInvalid,
    RerunRequest,
    UnknownTargets,
    encode_request,
    new_request_name,
    parse_request,
    select_cells,
)
from parallel_orchestrator.settings.salvage import salvage_settings

SCRIPTS = {"repo": ["tests", "lint"], "hyp-1": ["tests", "lint"]}
LAST = {("repo", "tests"): "pass", ("repo", "lint"): "fail", ("hyp-1", "tests"): None}


def test_a_request_round_trips() -> None:
    request = RerunRequest(("hyp-1", "repo/lint"), True)
    assert parse_request(encode_request(request)) == request


@pytest.mark.parametrize(
    "doc",
    [
        b"{",
        b"\xff\xfe",
        b"[]",
        json.dumps({"version": 1, "targets": []}).encode(),
        json.dumps({"version": 2, "targets": [], "failed": False}).encode(),
        json.dumps({"version": 1, "targets": "x", "failed": False}).encode(),
        json.dumps({"version": 1, "targets": [1], "failed": False}).encode(),
        json.dumps({"version": 1, "targets": [""], "failed": False}).encode(),
        json.dumps({"version": 1, "targets": ["a\x1b[2J"], "failed": False}).encode(),
        json.dumps({"version": 1, "targets": ["x"] * (MAX_TARGETS + 1), "failed": False}).encode(),
        json.dumps({"version": 1, "targets": [], "failed": 1}).encode(),
        json.dumps({"version": 1, "targets": [], "failed": False, "extra": 1}).encode(),
        b"[" * 100_000,
    ],
)
def test_malformed_requests_are_rejected(doc: bytes) -> None:
    with pytest.raises(RequestInvalid):
        parse_request(doc)


def test_cell_selection() -> None:
    every = select_cells(RerunRequest((), False), SCRIPTS, LAST)
    assert every == [("repo", "tests"), ("repo", "lint"), ("hyp-1", "tests"), ("hyp-1", "lint")]
    failed = select_cells(RerunRequest((), True), SCRIPTS, LAST)
    assert failed == [("repo", "lint"), ("hyp-1", "tests"), ("hyp-1", "lint")]
    named = select_cells(RerunRequest(("hyp-1", "repo/tests"), False), SCRIPTS, LAST)
    assert named == [("repo", "tests"), ("hyp-1", "tests"), ("hyp-1", "lint")]
    assert select_cells(RerunRequest(("repo/tests",), True), SCRIPTS, LAST) == []
    with pytest.raises(UnknownTargets, match="nope, hyp-1/docs"):
        select_cells(RerunRequest(("nope", "hyp-1/docs", "repo"), False), SCRIPTS, LAST)


def test_a_hypothesis_id_with_a_slash_is_still_found() -> None:
    scripts = {"team/hyp": ["tests"]}
    assert select_cells(RerunRequest(("team/hyp",), False), scripts, {}) == [("team/hyp", "tests")]
    assert select_cells(RerunRequest(("team/hyp/tests",), False), scripts, {}) == [
        ("team/hyp", "tests")
    ]


def test_the_inbox_takes_requests_in_order_and_leaves_temp_files(tmp_path: Path) -> None:
    inbox = RequestInbox(tmp_path / "requests")
    inbox.prepare()
    assert (tmp_path / "requests").stat().st_mode & 0o777 == 0o700
    names = [new_request_name() for _ in range(3)]
    for i, name in enumerate(names):
        (inbox.folder / name).write_bytes(encode_request(RerunRequest((f"h{i}",), False)))
    writing = inbox.folder / f".{new_request_name()}.0123abcd.tmp"
    writing.write_bytes(b"{")
    taken = inbox.collect()
    assert [name for name, _ in taken] == sorted(names)
    assert [r.targets for _, r in taken if isinstance(r, RerunRequest)] == [
        ("h0",),
        ("h1",),
        ("h2",),
    ]
    assert sorted(p.name for p in inbox.folder.iterdir()) == [writing.name]
    os.utime(writing, (0, 0))  # a writer that died long ago
    assert [reason for _, reason in inbox.collect()] == ["a writer's temp file left behind"]
    assert list(inbox.folder.iterdir()) == []


def test_config_paths_follow_symlinks(tmp_path: Path) -> None:
    real = tmp_path / "dotfiles" / "po.toml"
    real.parent.mkdir()
    real.write_text("")
    middle = tmp_path / "middle.toml"
    middle.symlink_to(real)
    (tmp_path / "cfg").mkdir()
    link = tmp_path / "cfg" / "config.toml"
    link.symlink_to(Path("..") / "middle.toml")
    root = os.path.realpath(tmp_path)
    assert config_paths(link) == {
        os.path.join(root, "cfg", "config.toml"),
        os.path.join(root, "middle.toml"),
        os.path.join(root, "dotfiles", "po.toml"),
    }


@pytest.mark.parametrize(
    "text",
    [
        '[daemon]\nstate_dir = "st"\ndebounce_ms = "fast"\n[worktrees]\nrepo = "r"\n',
        'this is [[ not toml\n[daemon]\nstate_dir = "st"  # here\n[worktrees]\nrepo = "r"\n',
        'daemon.state_dir = "st"\nworktrees.repo = "r"\n[scripts\n',
    ],
)
def test_salvage_reads_where_the_state_is(tmp_path: Path, text: str) -> None:
    config = tmp_path / "po.toml"
    config.write_text(text)
    settings = salvage_settings(os.fsdecode(config), {"HOME": os.fsdecode(tmp_path)}, tmp_path)
    assert settings is not None
    assert settings.config_path == config
    assert settings.daemon.state_dir == tmp_path / "st"
    assert settings.daemon.status_file == tmp_path / "st" / "status.json"
    assert settings.worktrees.repo == tmp_path / "r"


def test_salvage_of_a_missing_config_is_nothing(tmp_path: Path) -> None:
    missing = os.fsdecode(tmp_path / "nope.toml")
    assert salvage_settings(missing, {"HOME": os.fsdecode(tmp_path)}, tmp_path) is None
