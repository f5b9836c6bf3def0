"""Config loading: every rule of the design's "Configuration (TOML)" section, on real files."""

from __future__ import annotations

import os
import shutil
import tomllib
from dataclasses import fields
from pathlib import Path

import pytest

from parallel_orchestrator.settings.defaults import default_document
from parallel_orchestrator.settings.loader import (
    CompareSettings,
    ConfigError,
    DaemonSettings,
    ExecutorSettings,
    NotifySettings,
    ScriptSettings,
    Settings,
    WorktreeSettings,
    check_config_permissions,
    default_settings,
    find_config_path,
    load_settings,
    locate_and_load,
    repository_state_name,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
MINIMAL_SCRIPT = '[[scripts]]\nname = "t"\ncommand = ["true"]\n'
ENV = {"HOME": "/home/tester"}


def write(folder: Path, text: str, name: str = "po.toml") -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)
    return path


def load(folder: Path, text: str, env: dict[str, str] | None = None) -> Settings:
    return load_settings(write(folder, text), cwd=folder, env=ENV if env is None else env)


def errors_of(folder: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(folder, text)
    for line in caught.value.errors:
        assert "\n" not in line
    assert "\n" not in str(caught.value)
    return caught.value.errors


def only_error(folder: Path, text: str) -> str:
    errors = errors_of(folder, text)
    assert len(errors) == 1, errors
    assert errors[0].startswith(str(folder / "po.toml") + ": ")
    return errors[0]


# --------------------------------------------------------------------------- happy paths


def test_minimal_file_gets_every_default(tmp_path: Path) -> None:
    settings = load(tmp_path, MINIMAL_SCRIPT)
    assert settings.config_path == tmp_path / "po.toml"
    daemon = settings.daemon
    root = Path("/home/tester/.local/state/parallel-orchestrator")
    assert daemon.state_dir == root / repository_state_name(tmp_path)
    assert daemon.status_file == daemon.state_dir / "status.json"
    assert daemon.log_file is None
    assert (daemon.log_level, daemon.debounce_ms, daemon.max_batch_wait_ms) == ("info", 200, 2000)
    assert (daemon.max_concurrency, daemon.on_busy, daemon.run_on_start) == (0, "restart", True)
    assert daemon.keep_runs == 20
    assert daemon.concurrency == (os.cpu_count() or 1)
    assert settings.worktrees == WorktreeSettings(repo=tmp_path)
    assert settings.scripts == (ScriptSettings(name="t", command=("true",)),)
    script = settings.scripts[0]
    assert (script.watch, script.timeout_s, script.kill_grace_s) == (("**/*.py",), 300.0, 5.0)
    assert (script.env, script.cwd) == ({}, "")


def test_full_file_is_read(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        """
        [daemon]
        log_level = "debug"
        debounce_ms = 50
        max_batch_wait_ms = 50
        max_concurrency = 3
        on_busy = "queue"
        run_on_start = false
        keep_runs = 1

        [worktrees]
        include = ["hyp-*"]
        exclude = ["hyp-old"]
        ignore = ["*.log"]
        respect_gitignore = false

        [[scripts]]
        name = "unit.fast-1"
        command = ["pytest", "-x", "{worktree}"]
        watch = ["src/**/*.py", "tests/*.py"]
        timeout_s = 1.5
        kill_grace_s = 0
        env = { PYTHONHASHSEED = "0" }
        cwd = "sub/./dir/"

        [[scripts]]
        name = "lint"
        command = "ruff check 'a file.py'"
        watch = []
        timeout_s = 3
        """,
    )
    d = settings.daemon
    assert (d.log_level, d.debounce_ms, d.max_batch_wait_ms, d.max_concurrency) == (
        "debug",
        50,
        50,
        3,
    )
    assert (d.on_busy, d.run_on_start, d.keep_runs, d.concurrency) == ("queue", False, 1, 3)
    w = settings.worktrees
    assert (w.include, w.exclude, w.ignore, w.respect_gitignore) == (
        ("hyp-*",),
        ("hyp-old",),
        ("*.log",),
        False,
    )
    unit, lint = settings.scripts
    assert unit.command == ("pytest", "-x", "{worktree}")
    assert unit.watch == ("src/**/*.py", "tests/*.py")
    assert (unit.timeout_s, unit.kill_grace_s) == (1.5, 0.0)
    assert unit.env == {"PYTHONHASHSEED": "0"}
    assert unit.cwd == "sub/dir"
    assert lint.command == ("ruff", "check", "a file.py")  # shlex-split, quotes honoured
    assert lint.watch == ()
    assert lint.timeout_s == 3.0 and isinstance(lint.timeout_s, float)  # int accepted


def test_relative_paths_are_relative_to_the_config_folder(tmp_path: Path) -> None:
    conf_dir = tmp_path / "etc"
    elsewhere = tmp_path / "elsewhere"
    conf_dir.mkdir(mode=0o700)
    elsewhere.mkdir(mode=0o700)
    path = write(
        conf_dir,
        """
        [daemon]
        state_dir = "state"
        status_file = "../out/status.json"
        log_file = "~/logs/po.jsonl"
        [worktrees]
        repo = "../repo"
        paths = ["extra/one", "/abs/two", "~/three"]
        """
        + MINIMAL_SCRIPT,
    )
    settings = load_settings(path, cwd=elsewhere, env=ENV)
    assert settings.daemon.state_dir == conf_dir / "state"
    assert settings.daemon.status_file == tmp_path / "out" / "status.json"
    assert settings.daemon.log_file == Path("/home/tester/logs/po.jsonl")
    assert settings.worktrees.repo == tmp_path / "repo"
    assert settings.worktrees.paths == (
        conf_dir / "extra" / "one",
        Path("/abs/two"),
        Path("/home/tester/three"),
    )


def test_relative_config_path_is_taken_from_cwd(tmp_path: Path) -> None:
    write(tmp_path, MINIMAL_SCRIPT)
    settings = load_settings(Path("po.toml"), cwd=tmp_path, env=ENV)
    assert settings.config_path == tmp_path / "po.toml"


def test_status_file_follows_explicit_state_dir(tmp_path: Path) -> None:
    settings = load(tmp_path, '[daemon]\nstate_dir = "/srv/po"\n' + MINIMAL_SCRIPT)
    assert settings.daemon.status_file == Path("/srv/po/status.json")


def test_empty_repo_means_only_paths(tmp_path: Path) -> None:
    settings = load(tmp_path, '[worktrees]\nrepo = ""\npaths = ["a"]\n' + MINIMAL_SCRIPT)
    assert settings.worktrees.repo is None
    assert settings.worktrees.paths == (tmp_path / "a",)
    assert "nothing to watch" in only_error(tmp_path, '[worktrees]\nrepo = ""\n' + MINIMAL_SCRIPT)


# --------------------------------------------------------------------------- state dir env


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"STATE_DIRECTORY": "/var/lib/po"}, "/var/lib/po"),
        ({"STATE_DIRECTORY": "/var/lib/po:/var/lib/other"}, "/var/lib/po"),
        ({"STATE_DIRECTORY": "/var/lib/po", "XDG_STATE_HOME": "/x"}, "/var/lib/po"),
        ({"XDG_STATE_HOME": "/x/state"}, "/x/state/parallel-orchestrator"),
        ({"XDG_STATE_HOME": "relative/ignored"}, "/h/.local/state/parallel-orchestrator"),
        ({"STATE_DIRECTORY": ""}, "/h/.local/state/parallel-orchestrator"),
        ({}, "/h/.local/state/parallel-orchestrator"),
    ],
)
def test_state_dir_from_environment(tmp_path: Path, env: dict[str, str], expected: str) -> None:
    env = {"HOME": "/h", **env}
    if not env.get("STATE_DIRECTORY"):  # one folder per repository below the XDG root
        expected = os.path.join(expected, repository_state_name(tmp_path))
    settings = load(tmp_path, MINIMAL_SCRIPT, env=env)
    assert settings.daemon.state_dir == Path(expected)
    assert settings.daemon.status_file == Path(expected) / "status.json"
    assert default_settings(tmp_path, env).daemon.state_dir == Path(expected)


def test_explicit_state_dir_beats_environment(tmp_path: Path) -> None:
    env = {"HOME": "/h", "STATE_DIRECTORY": "/var/lib/po", "XDG_STATE_HOME": "/x"}
    settings = load(tmp_path, '[daemon]\nstate_dir = "mine"\n' + MINIMAL_SCRIPT, env=env)
    assert settings.daemon.state_dir == tmp_path / "mine"


# --------------------------------------------------------------------------- embedded default


def test_embedded_default(tmp_path: Path) -> None:
    settings = load_settings(None, cwd=tmp_path, env=ENV)
    assert settings == default_settings(tmp_path, ENV)
    assert settings.config_path is None
    assert settings.worktrees.repo == tmp_path
    assert settings.scripts == (
        ScriptSettings(name="tests", command=("python", "-m", "pytest", "-q"), watch=("**/*.py",)),
    )


# --------------------------------------------------------------------------- discovery order


def test_discovery_order(tmp_path: Path) -> None:
    cwd = tmp_path / "cwd"
    xdg = tmp_path / "xdg"
    (xdg / "parallel-orchestrator").mkdir(parents=True)
    cwd.mkdir()
    explicit = write(tmp_path, MINIMAL_SCRIPT, "explicit.toml")
    from_env = write(tmp_path, MINIMAL_SCRIPT, "env.toml")
    local = write(cwd, MINIMAL_SCRIPT, "parallel-orchestrator.toml")
    user = write(xdg / "parallel-orchestrator", MINIMAL_SCRIPT, "config.toml")
    env = {"HOME": str(tmp_path / "home"), "XDG_CONFIG_HOME": str(xdg)}
    env_var = {**env, "PARALLEL_ORCHESTRATOR_CONFIG": str(from_env)}

    assert find_config_path(str(explicit), cwd, env_var) == explicit
    assert find_config_path(None, cwd, env_var) == from_env
    assert find_config_path(None, cwd, env) == local
    local.unlink()
    assert find_config_path(None, cwd, env) == user
    assert find_config_path(None, cwd, {"HOME": str(xdg.parent / "nohome")}) is None
    home_config = tmp_path / "home" / ".config" / "parallel-orchestrator"
    home_config.mkdir(parents=True)
    default_user = write(home_config, MINIMAL_SCRIPT, "config.toml")
    assert find_config_path(None, cwd, {"HOME": str(tmp_path / "home")}) == default_user
    user.unlink()
    assert find_config_path(None, cwd, env) is None
    assert locate_and_load(None, cwd=cwd, env=env).config_path is None


def test_explicit_relative_path_is_relative_to_cwd(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL_SCRIPT)
    assert find_config_path("po.toml", tmp_path, ENV) == path
    assert locate_and_load("po.toml", cwd=tmp_path, env=ENV).config_path == path


@pytest.mark.parametrize("via_env", [False, True])
def test_missing_named_config_is_an_error(tmp_path: Path, via_env: bool) -> None:
    missing = tmp_path / "nope.toml"
    write(tmp_path, MINIMAL_SCRIPT, "parallel-orchestrator.toml")  # must not be used instead
    env = {"PARALLEL_ORCHESTRATOR_CONFIG": str(missing)} if via_env else {}
    with pytest.raises(ConfigError, match=r"nope\.toml: no such config file") as caught:
        find_config_path(None if via_env else missing, tmp_path, env)
    assert ("PARALLEL_ORCHESTRATOR_CONFIG" in str(caught.value)) == via_env


def test_load_of_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"gone\.toml: cannot read"):
        load_settings(tmp_path / "gone.toml", env=ENV)


# --------------------------------------------------------------------------- syntax


def test_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    message = only_error(tmp_path, '[daemon]\nlog_level = "info"\ndebounce_ms = = 3\n')
    assert ": line 3: " in message


def test_syntax_error_at_end_of_file_names_last_line(tmp_path: Path) -> None:
    message = only_error(tmp_path, "[daemon]\nx = [\n")
    assert ": line 2: " in message


def test_duplicate_table_is_a_syntax_error(tmp_path: Path) -> None:
    assert ": line 2: " in only_error(tmp_path, "[daemon]\n[daemon]\n")


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "po.toml"
    path.write_bytes(b'[daemon]\nlog_level = "\xff"\n')
    path.chmod(0o600)
    with pytest.raises(ConfigError, match=r"po\.toml: line 2: not valid UTF-8"):
        load_settings(path, env=ENV)


# --------------------------------------------------------------------------- unknown keys


def test_unknown_top_level_key_and_table(tmp_path: Path) -> None:
    errors = errors_of(tmp_path, 'verbose = true\n[deamon]\nlog_level = "info"\n' + MINIMAL_SCRIPT)
    assert any("verbose: unknown key" in e for e in errors)
    assert any("deamon: unknown key (did you mean 'daemon'?)" in e for e in errors)


def test_unknown_key_in_daemon(tmp_path: Path) -> None:
    message = only_error(tmp_path, "[daemon]\ndebounce = 3\n" + MINIMAL_SCRIPT)
    assert "daemon.debounce: unknown key (did you mean 'debounce_ms'?)" in message


def test_unknown_key_in_worktrees(tmp_path: Path) -> None:
    assert "worktrees.repos: unknown key" in only_error(
        tmp_path, '[worktrees]\nrepos = "."\n' + MINIMAL_SCRIPT
    )


def test_unknown_key_in_a_script(tmp_path: Path) -> None:
    message = only_error(tmp_path, MINIMAL_SCRIPT + "timeout = 3\n")
    assert "scripts[0].timeout: unknown key (did you mean 'timeout_s'?)" in message


def test_unknown_nested_table_key_is_quoted(tmp_path: Path) -> None:
    assert 'daemon."a b": unknown key' in only_error(
        tmp_path, '[daemon]\n"a b" = 1\n' + MINIMAL_SCRIPT
    )


# --------------------------------------------------------------------------- types and values


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        ('debounce_ms = "200"', 'daemon.debounce_ms: expected an integer >= 1, got "200"'),
        ("debounce_ms = true", "daemon.debounce_ms: expected an integer >= 1, got true"),
        ("debounce_ms = 1.5", "daemon.debounce_ms: expected an integer >= 1, got 1.5"),
        ("debounce_ms = 0", "daemon.debounce_ms: expected an integer >= 1, got 0"),
        ("keep_runs = true", "daemon.keep_runs: expected an integer >= 1, got true"),
        ("keep_runs = 0", "daemon.keep_runs: expected an integer >= 1, got 0"),
        ("max_concurrency = -1", "daemon.max_concurrency: expected an integer >= 0, got -1"),
        ("max_concurrency = false", "daemon.max_concurrency: expected an integer >= 0, got false"),
        (
            'on_busy = "wait"',
            'daemon.on_busy: expected one of restart | queue | ignore, got "wait"',
        ),
        ('log_level = "INFO"', "daemon.log_level: expected one of debug | info | warning | error"),
        ('run_on_start = "yes"', 'daemon.run_on_start: expected true or false, got "yes"'),
        ("run_on_start = 1", "daemon.run_on_start: expected true or false, got 1"),
        ("state_dir = 3", "daemon.state_dir: expected a path string, got 3"),
        ("log_file = []", "daemon.log_file: expected a path string, got an array []"),
        (
            "debounce_ms = 500\nmax_batch_wait_ms = 100",
            "daemon.max_batch_wait_ms: expected an integer >= daemon.debounce_ms (500), got 100",
        ),
    ],
)
def test_bad_daemon_values(tmp_path: Path, snippet: str, expected: str) -> None:
    assert expected in only_error(tmp_path, f"[daemon]\n{snippet}\n" + MINIMAL_SCRIPT)


def test_section_of_wrong_type(tmp_path: Path) -> None:
    assert "daemon: expected a table ([daemon]), got 3" in only_error(
        tmp_path, "daemon = 3\n" + MINIMAL_SCRIPT
    )


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        ('paths = "a"', 'worktrees.paths: expected an array of non-empty strings, got "a"'),
        ('paths = ["a", 3]', "worktrees.paths[1]: expected a non-empty string, got 3"),
        ('include = [""]', 'worktrees.include[0]: expected a non-empty string, got ""'),
        ("respect_gitignore = 0", "worktrees.respect_gitignore: expected true or false, got 0"),
        ("repo = false", "worktrees.repo: expected a path string, got false"),
    ],
)
def test_bad_worktree_values(tmp_path: Path, snippet: str, expected: str) -> None:
    assert expected in only_error(tmp_path, f"[worktrees]\n{snippet}\n" + MINIMAL_SCRIPT)


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        ("timeout_s = -3", "scripts[0].timeout_s: expected a number > 0, got -3"),
        ("timeout_s = 0", "scripts[0].timeout_s: expected a number > 0, got 0"),
        ("timeout_s = true", "scripts[0].timeout_s: expected a number > 0, got true"),
        ("timeout_s = inf", "scripts[0].timeout_s: expected a number > 0, got inf"),
        ("timeout_s = nan", "scripts[0].timeout_s: expected a number > 0, got nan"),
        ("kill_grace_s = -0.5", "scripts[0].kill_grace_s: expected a number >= 0, got -0.5"),
        ('watch = "*.py"', 'scripts[0].watch: expected an array of non-empty strings, got "*.py"'),
        ("env = { A = 1 }", "scripts[0].env.A: expected a string, got 1"),
        ('env = "A=1"', 'scripts[0].env: expected a table of strings, got "A=1"'),
        ('cwd = "../up"', 'scripts[0].cwd: must stay inside the worktree, got "../up"'),
        ('cache = "yes"', 'scripts[0].cache: expected true or false, got "yes"'),
        ('cwd = "a/../../up"', "scripts[0].cwd: must stay inside the worktree"),
        (
            'cwd = "/abs"',
            'scripts[0].cwd: expected a path relative to the worktree root, got "/abs"',
        ),
    ],
)
def test_bad_script_values(tmp_path: Path, snippet: str, expected: str) -> None:
    assert expected in only_error(tmp_path, f"{MINIMAL_SCRIPT}{snippet}\n")


@pytest.mark.parametrize(
    "command",
    ['"echo \'unclosed"', '""', '"   "', "[]", '["ok", ""]', "3", '["a", 1]'],
)
def test_bad_commands(tmp_path: Path, command: str) -> None:
    message = only_error(tmp_path, f'[[scripts]]\nname = "t"\ncommand = {command}\n')
    assert "scripts[0].command: " in message


def test_unsplittable_command_string_says_why(tmp_path: Path) -> None:
    message = only_error(tmp_path, '[[scripts]]\nname = "t"\ncommand = "echo \'x"\n')
    assert "No closing quotation" in message


@pytest.mark.parametrize("name", ['""', '"a b"', '"a/b"', '".."', '"."', "3", '"tést"'])
def test_bad_script_names(tmp_path: Path, name: str) -> None:
    assert "scripts[0].name: expected" in only_error(
        tmp_path, f'[[scripts]]\nname = {name}\ncommand = ["true"]\n'
    )


def test_script_requires_name_and_command(tmp_path: Path) -> None:
    errors = errors_of(tmp_path, "[[scripts]]\n")
    assert [e.split(": ")[1] for e in errors] == ["scripts[0].name", "scripts[0].command"]


def test_duplicate_script_names(tmp_path: Path) -> None:
    message = only_error(tmp_path, MINIMAL_SCRIPT + MINIMAL_SCRIPT)
    assert 'scripts[1].name: duplicate script name "t" (also scripts[0])' in message


def test_an_empty_scripts_list_is_an_error(tmp_path: Path) -> None:
    message = only_error(tmp_path, "scripts = []\n")
    assert "scripts: at least one [[scripts]] table is required" in message


@pytest.mark.parametrize("text", ["", "[daemon]\n", "[worktrees]\nrepo = '.'\n"])
def test_no_scripts_table_means_the_default_tests_script(tmp_path: Path, text: str) -> None:
    path = tmp_path / "po.toml"
    path.write_text(text)
    path.chmod(0o600)
    [script] = load_settings(path).scripts
    assert (script.name, script.command, script.watch) == (
        "tests",
        ("python", "-m", "pytest", "-q"),
        ("**/*.py",),
    )


def test_scripts_must_be_an_array_of_tables(tmp_path: Path) -> None:
    assert "scripts: expected an array of tables" in only_error(tmp_path, "scripts = [1, 2]\n")
    assert "scripts: expected an array of tables" in only_error(tmp_path, "[scripts]\nname='t'\n")


def test_all_errors_are_collected(tmp_path: Path) -> None:
    errors = errors_of(
        tmp_path,
        '[daemon]\non_busy = "x"\nkeep_runs = 0\n'
        '[[scripts]]\nname = "t"\ncommand = []\ntimeout_s = -1\n',
    )
    assert len(errors) == 4
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, '[daemon]\non_busy = "x"\nkeep_runs = 0\n' + MINIMAL_SCRIPT)
    assert str(caught.value) == "; ".join(caught.value.errors)


def test_error_messages_stay_on_one_line(tmp_path: Path) -> None:
    message = only_error(tmp_path, '[daemon]\non_busy = "a\\nb"\n' + MINIMAL_SCRIPT)
    assert "\n" not in message and '"a\\nb"' in message


def test_config_error_accepts_a_single_message() -> None:
    error = ConfigError("x: broken\nacross lines")
    assert error.errors == ["x: broken\\nacross lines"]
    assert str(error) == "x: broken\\nacross lines"


# --------------------------------------------------------------------------- permissions


@pytest.mark.parametrize("mode", [0o666, 0o664, 0o646, 0o620])
def test_refuses_a_file_others_can_write(tmp_path: Path, mode: int) -> None:
    path = write(tmp_path, MINIMAL_SCRIPT)
    path.chmod(mode)
    with pytest.raises(ConfigError) as caught:
        load_settings(path, env=ENV)
    assert caught.value.errors == [
        f"{path}: refusing a config file writable by group/others (mode {mode:04o}); chmod go-w it"
    ]
    assert check_config_permissions(path) == caught.value.errors


def test_refuses_a_file_in_a_folder_others_can_write(tmp_path: Path) -> None:
    folder = tmp_path / "shared"
    folder.mkdir()
    path = write(folder, MINIMAL_SCRIPT)
    folder.chmod(0o777)
    with pytest.raises(ConfigError, match=r"folder writable by group/others .*mode 0777"):
        load_settings(path, env=ENV)


def test_refuses_a_symlink_into_a_writable_folder(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    target = write(shared, MINIMAL_SCRIPT)
    shared.chmod(0o775)
    link = tmp_path / "po.toml"
    link.symlink_to(target)
    with pytest.raises(ConfigError, match="shared, mode 0775"):
        load_settings(link, env=ENV)


def test_accepts_a_sticky_world_writable_folder(tmp_path: Path) -> None:
    folder = tmp_path / "tmp-like"
    folder.mkdir()
    path = write(folder, MINIMAL_SCRIPT)
    folder.chmod(0o1777)
    assert load_settings(path, env=ENV).config_path == path


def test_accepts_read_only_modes(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL_SCRIPT)
    for mode in (0o600, 0o644, 0o400, 0o444):
        path.chmod(mode)
        assert check_config_permissions(path) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_refuses_a_file_owned_by_another_user(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL_SCRIPT)
    os.chown(path, 65534, -1)
    with pytest.raises(ConfigError, match=r"owned by another user \(uid 65534\)"):
        load_settings(path, env=ENV)


def test_not_a_regular_file(tmp_path: Path) -> None:
    folder = tmp_path / "dir.toml"
    folder.mkdir(mode=0o700)
    with pytest.raises(ConfigError, match=r"dir\.toml: "):
        load_settings(folder, env=ENV)


# --------------------------------------------------------------------------- example file


def test_example_file_loads_and_spells_out_every_default(tmp_path: Path) -> None:
    example = tmp_path / "config.example.toml"
    shutil.copyfile(REPO_ROOT / "config.example.toml", example)
    example.chmod(0o600)
    settings = load_settings(example, env=ENV)
    assert settings == Settings(
        daemon=default_settings(tmp_path, ENV).daemon,
        worktrees=WorktreeSettings(repo=tmp_path),
        scripts=default_settings(tmp_path, ENV).scripts,
        config_path=example,
    )
    document = tomllib.loads(example.read_text(encoding="utf-8"))
    assert set(document) == {"daemon", "worktrees", "scripts", "notify", "executor", "compare"}
    assert set(document["notify"]) == {f.name for f in fields(NotifySettings)}
    assert set(document["executor"]) == {f.name for f in fields(ExecutorSettings)}
    assert set(document["compare"]) == {f.name for f in fields(CompareSettings)}
    assert set(document["daemon"]) == {f.name for f in fields(DaemonSettings)}
    assert set(document["worktrees"]) == {f.name for f in fields(WorktreeSettings)}
    assert set(document["scripts"][0]) == {f.name for f in fields(ScriptSettings)}


def test_example_file_is_the_one_table_of_defaults() -> None:
    """config.example.toml spells out settings/defaults.py exactly: values, not only keys."""
    document = tomllib.loads((REPO_ROOT / "config.example.toml").read_text(encoding="utf-8"))
    assert document == default_document()


def test_a_file_without_keys_means_every_default(tmp_path: Path) -> None:
    """The loader's fallback for a missing key and the dataclass defaults agree."""
    empty = load(tmp_path, "")
    assert empty.daemon == default_settings(tmp_path, ENV).daemon
    assert empty.worktrees == WorktreeSettings(repo=tmp_path)
    assert empty.scripts == default_settings(tmp_path, ENV).scripts
    script = load(tmp_path, MINIMAL_SCRIPT).scripts[0]
    assert script == ScriptSettings(name="t", command=("true",))
