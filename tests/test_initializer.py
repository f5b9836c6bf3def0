"""`init`: what it proposes for real repositories, and how it writes the file."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import tomllib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from parallel_orchestrator.commands.initializer import (
    InitError,
    OutputExists,
    find_repo_root,
    init_config,
    make_header,
    propose_config,
    render_config,
    write_config,
)
from parallel_orchestrator.settings.loader import DEFAULT_COMMAND, load_settings


def is_python(command0: str) -> bool:
    """init writes the interpreter in full (a venv's, else python3's real path)."""
    return os.path.isabs(command0) and os.access(command0, os.X_OK)


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def make_repo(root: Path, files: Mapping[str, str], name: str = "repo") -> Path:
    repo = root / name
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    for rel, text in files.items():
        path = repo / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        if rel.endswith(".sh"):
            path.chmod(0o755)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "--allow-empty", "-m", "init")
    return repo


def scripts_by_name(proposal: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in proposal["scripts"]}


# --------------------------------------------------------------------------- detection


@pytest.mark.parametrize(
    "files",
    [
        {"pytest.ini": "[pytest]\n"},
        {"conftest.py": ""},
        {"tests/conftest.py": ""},
        {"tests/test_thing.py": "def test_x(): pass\n"},
        {"pyproject.toml": '[tool.pytest.ini_options]\naddopts = "-q"\n'},
        {"setup.cfg": "[metadata]\nname = x\n\n[tool:pytest]\naddopts = -q\n"},
        {"tox.ini": "[pytest]\naddopts = -q\n"},
    ],
    ids=lambda files: next(iter(files)),
)
def test_pytest_projects(tmp_path: Path, files: dict[str, str]) -> None:
    repo = make_repo(tmp_path, files)
    scripts = scripts_by_name(propose_config(repo))
    assert list(scripts) == ["tests"]
    tests = scripts["tests"]
    assert is_python(tests["command"][0])
    assert tests["command"][1:] == ["-m", "pytest", "-q", "--junitxml={junit}"]
    assert tests["watch"][0] == "**/*.py"
    for config_name in ("pytest.ini", "pyproject.toml", "setup.cfg", "tox.ini"):
        assert (config_name in tests["watch"]) == (config_name in files)


def test_pyproject_without_pytest_is_not_a_pytest_project(tmp_path: Path) -> None:
    repo = make_repo(
        tmp_path, {"pyproject.toml": '[project]\nname = "x"\n', "go.mod": "module x\n"}
    )
    assert list(scripts_by_name(propose_config(repo))) == ["go-test"]


def test_package_json_test_script(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"package.json": '{"scripts": {"test": "jest"}}'})
    proposal = propose_config(repo)
    npm = scripts_by_name(proposal)["npm-test"]
    assert npm["command"] == ["npm", "test", "--silent"]
    assert "**/*.js" in npm["watch"] and "**/*.ts" in npm["watch"]
    assert "node_modules" in proposal["worktrees"]["ignore"]


def test_package_json_with_yarn_lock(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"package.json": '{"scripts": {"test": "jest"}}', "yarn.lock": ""})
    assert scripts_by_name(propose_config(repo))["npm-test"]["command"] == ["yarn", "test"]


def test_npm_placeholder_test_script_is_not_a_test_suite(tmp_path: Path) -> None:
    placeholder = '{"scripts": {"test": "echo \\"Error: no test specified\\" && exit 1"}}'
    repo = make_repo(tmp_path, {"package.json": placeholder})
    scripts = scripts_by_name(propose_config(repo))
    assert list(scripts) == ["tests"]  # the fallback


def test_makefile_test_target(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"Makefile": "all:\n\tcc x.c\n\ntest: all\n\t./run-tests\n"})
    proposal = propose_config(repo)
    make = scripts_by_name(proposal)["make-test"]
    assert make["command"] == ["make", "test"]
    assert make["watch"] == ["**/*"]
    assert {"*.o", "/build"} <= set(proposal["worktrees"]["ignore"])


def test_makefile_variable_named_test_is_not_a_target(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"Makefile": "test := yes\nall:\n\ttrue\n"})
    assert list(scripts_by_name(propose_config(repo))) == ["tests"]  # the fallback


def test_makefile_next_to_pytest_is_mentioned_not_doubled(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"Makefile": "test:\n\tpytest\n", "pytest.ini": "[pytest]\n"})
    out = tmp_path / "po.toml"
    result = init_config(repo, out)
    assert list(scripts_by_name(result.proposal)) == ["tests"]
    assert any("make-test" in note for note in result.notes)


def test_cargo_and_go(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"Cargo.toml": "[package]\nname = 'x'\n", "go.mod": "module x\n"})
    proposal = propose_config(repo)
    scripts = scripts_by_name(proposal)
    assert scripts["cargo-test"]["command"] == ["cargo", "test"]
    assert "**/*.rs" in scripts["cargo-test"]["watch"]
    assert scripts["go-test"]["command"] == ["go", "test", "./..."]
    assert "**/*.go" in scripts["go-test"]["watch"]
    assert "/target" in proposal["worktrees"]["ignore"]


def test_falsification_scripts_become_one_per_hypothesis_script(tmp_path: Path) -> None:
    repo = make_repo(
        tmp_path,
        {".falsification/test_hyp-1.sh": "#!/bin/sh\nexit 0\n", "pytest.ini": "[pytest]\n"},
    )
    linked = tmp_path / "hyp-1"
    git(repo, "worktree", "add", "-q", str(linked))
    result = init_config(repo, tmp_path / "po.toml")
    falsification = scripts_by_name(result.proposal)["falsification"]
    assert falsification["command"] == ["{worktree}/.falsification/test_{hypothesis}.sh"]
    assert falsification["watch"] == ["**/*"]
    # the main worktree ("repo") has no test_repo.sh; the linked "hyp-1" has its own
    missing = [n for n in result.notes if "no script for" in n]
    assert len(missing) == 1 and "repo" in missing[0] and "hyp-1" not in missing[0]


def test_nothing_found_falls_back_to_the_default_script(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"README.md": "hello\n"})
    scripts = propose_config(repo)["scripts"]
    assert len(scripts) == 1
    assert scripts[0]["name"] == "tests"
    assert is_python(scripts[0]["command"][0])
    assert tuple(scripts[0]["command"][1:]) == (*DEFAULT_COMMAND[1:], "--junitxml={junit}")
    assert scripts[0]["watch"] == ["**/*.py"]


def test_script_names_are_unique(tmp_path: Path) -> None:
    repo = make_repo(
        tmp_path,
        {
            "pytest.ini": "[pytest]\n",
            "package.json": '{"scripts": {"test": "jest"}}',
            "Cargo.toml": "[package]\n",
            "go.mod": "module x\n",
            ".falsification/test_a.sh": "#!/bin/sh\n",
        },
    )
    names = [s["name"] for s in propose_config(repo)["scripts"]]
    assert names == ["tests", "npm-test", "cargo-test", "go-test", "falsification"]


# --------------------------------------------------------------------------- repo root


def test_not_a_git_repository(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))  # even if /tmp is in a repo
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(InitError, match=f"^{re.escape(str(plain))}: not a git repository$"):
        init_config(plain, tmp_path / "po.toml")
    assert not (tmp_path / "po.toml").exists()


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(InitError, match="no such directory"):
        find_repo_root(tmp_path / "nope")


def test_root_is_the_main_worktree_even_from_a_linked_one(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"pytest.ini": "[pytest]\n", "pkg/mod.py": ""})
    linked = tmp_path / "hyp-2"
    git(repo, "worktree", "add", "-q", str(linked))
    assert find_repo_root(linked / "pkg") == repo.resolve()


# --------------------------------------------------------------------------- output


def test_default_output_is_in_the_repo_with_repo_dot(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"pytest.ini": "[pytest]\n"})
    result = init_config(repo, None, cwd=tmp_path)
    assert result.path == repo.resolve() / "parallel-orchestrator.toml"
    doc = tomllib.loads(result.path.read_text(encoding="utf-8"))
    assert doc["worktrees"]["repo"] == "."
    assert "/parallel-orchestrator.toml" in doc["worktrees"]["ignore"]


def test_repo_is_relative_to_the_config_folder_when_nested(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"pytest.ini": "[pytest]\n"})
    result = init_config(repo, Path("po.toml"), cwd=tmp_path)
    assert result.path == tmp_path / "po.toml"
    assert tomllib.loads(result.path.read_text())["worktrees"]["repo"] == "repo"


def test_repo_is_absolute_when_the_config_lives_elsewhere(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"pytest.ini": "[pytest]\n"})
    (tmp_path / "etc").mkdir()
    other = tmp_path / "etc" / "po.toml"
    result = init_config(repo, other)
    assert tomllib.loads(result.path.read_text())["worktrees"]["repo"] == str(repo.resolve())


def test_written_file_loads_with_the_daemons_loader(tmp_path: Path) -> None:
    repo = make_repo(
        tmp_path,
        {
            "pytest.ini": "[pytest]\n",
            "package.json": '{"scripts": {"test": "jest"}}',
            ".falsification/test_a.sh": "#!/bin/sh\n",
        },
    )
    result = init_config(repo, tmp_path / "po.toml", env={"HOME": str(tmp_path)})
    assert result.warnings == []
    settings = load_settings(result.path, env={"HOME": str(tmp_path)})
    assert settings.worktrees.repo == repo.resolve()
    assert [s.name for s in settings.scripts] == ["tests", "npm-test", "falsification"]
    assert settings.scripts[0].command[1:] == ("-m", "pytest", "-q", "--junitxml={junit}")


def test_render_config_round_trips_and_has_a_header(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"pytest.ini": "[pytest]\n"})
    proposal = propose_config(repo, config_file=repo / "po.toml")
    when = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    text = render_config(proposal, make_header(repo, ["a note"], when))
    assert text.startswith("# parallel-orchestrator configuration, generated by")
    assert "2024-05-01" in text and "config.example.toml" in text and "a note" in text
    assert 'command = ["' in text  # short arrays stay on one line, as in the design
    assert tomllib.loads(text) == proposal


@contextmanager
def umask(value: int) -> Iterator[None]:
    old = os.umask(value)
    try:
        yield
    finally:
        os.umask(old)


def test_never_overwrites_without_force(tmp_path: Path) -> None:
    out = tmp_path / "po.toml"
    out.write_text("# mine\n")
    with pytest.raises(OutputExists) as info:
        write_config(out, "# new\n", force=False)
    assert isinstance(info.value, FileExistsError)
    assert str(out) in str(info.value) and "--force" in str(info.value)
    assert out.read_text() == "# mine\n"


def test_init_refuses_an_existing_output(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"pytest.ini": "[pytest]\n"})
    out = tmp_path / "po.toml"
    out.write_text("# mine\n")
    with pytest.raises(OutputExists, match="--force"):
        init_config(repo, out)
    assert out.read_text() == "# mine\n"
    init_config(repo, out, force=True)
    assert "[[scripts]]" in out.read_text()


def test_force_replaces_and_fixes_the_mode(tmp_path: Path) -> None:
    out = tmp_path / "po.toml"
    out.write_text("# mine\n")
    out.chmod(0o666)
    with umask(0):
        write_config(out, "# new\n", force=True)
    assert out.read_text() == "# new\n"
    assert stat.S_IMODE(out.stat().st_mode) & 0o022 == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["po.toml"]  # no temp file left


def test_new_file_is_never_group_or_world_writable(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "po.toml"
    with umask(0):
        write_config(out, "# new\n", force=False)
    assert stat.S_IMODE(out.stat().st_mode) == 0o644


def test_force_on_a_directory_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "po.toml").mkdir()
    with pytest.raises(InitError, match="is a directory"):
        write_config(tmp_path / "po.toml", "# new\n", force=True)


def test_group_writable_folder_is_reported(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"pytest.ini": "[pytest]\n"})
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o775)
    result = init_config(repo, shared / "po.toml")
    assert result.path.exists()
    assert any("group/others" in w for w in result.warnings)


def test_pytest_testmon_in_the_environment_is_proposed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = make_repo(tmp_path, {"tests/test_thing.py": "def test_x(): pass\n"})
    plain = scripts_by_name(propose_config(repo))["tests"]
    assert "--testmon" not in plain["command"]
    # A package named testmon importable by the interpreter the command runs: what an
    # installed pytest-testmon looks like to the probe.
    site = tmp_path / "site"
    (site / "testmon").mkdir(parents=True)
    (site / "testmon" / "__init__.py").write_text("")
    monkeypatch.setenv("PYTHONPATH", os.fsdecode(site))
    proposal = propose_config(repo)
    tests = scripts_by_name(proposal)["tests"]
    assert tests["command"][1:] == ["-m", "pytest", "-q", "--junitxml={junit}", "--testmon"]
    assert ".testmondata*" in proposal["worktrees"]["ignore"]
    text = render_config(proposal, make_header(repo, []))
    assert "--testmon" in text


def test_runners_with_junit_output_get_their_reports_read(tmp_path: Path) -> None:
    package = '{"scripts": {"test": "jest"}, "devDependencies": {"jest-junit": "^16"}}'
    repo = make_repo(
        tmp_path,
        {
            "package.json": package,
            "Cargo.toml": "[package]\nname = 'x'\n",
            ".config/nextest.toml": "[profile.default.junit]\npath = 'junit.xml'\n",
        },
    )
    scripts = scripts_by_name(propose_config(repo))
    assert scripts["npm-test"]["junit"] == ["junit.xml"]
    assert scripts["cargo-test"]["command"] == ["cargo", "nextest", "run"]
    assert scripts["cargo-test"]["junit"] == ["target/nextest/*/junit.xml"]
