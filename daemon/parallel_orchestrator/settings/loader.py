"""The daemon's TOML configuration: discovery, parsing, validation.

Separate from ``config`` (which holds the executor API's dataclasses, a contract of the
original batch tool). Every error names the file and the key; the daemon never starts on
a bad config. Validation collects every problem it can find in one pass, because a user
fixing a config wants the whole list, not one error per restart.
"""

from __future__ import annotations

import datetime as _dt
import difflib
import hashlib
import json
import math
import os
import re
import shlex
import stat
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from ..errors import OrchestratorError
from ..repo.pathglob import glob_problem
from ..store.trust import folders_trusted_by
from .defaults import (
    DAEMON_DEFAULTS,
    EXECUTOR_DEFAULTS,
    NOTIFY_DEFAULTS,
    SCRIPT_DEFAULTS,
    WORKTREE_DEFAULTS,
)

OnBusy = Literal["restart", "queue", "ignore"]

CONFIG_ENV_VAR = "PARALLEL_ORCHESTRATOR_CONFIG"
LOCAL_CONFIG_NAME = "parallel-orchestrator.toml"
APP_DIR_NAME = "parallel-orchestrator"

LOG_LEVELS: tuple[str, ...] = ("debug", "info", "warning", "error")
ON_BUSY_CHOICES: tuple[str, ...] = ("restart", "queue", "ignore")
DEFAULT_COMMAND: tuple[str, ...] = tuple(SCRIPT_DEFAULTS["command"])
DEFAULT_WATCH: tuple[str, ...] = tuple(SCRIPT_DEFAULTS["watch"])
DEFAULT_SCRIPT_NAME: str = SCRIPT_DEFAULTS["name"]
DEFAULT_PORT_RANGE: tuple[int, int] = DAEMON_DEFAULTS["port_range"]
# Short names for the one table of defaults (settings/defaults.py).
_D, _W, _S, _N = DAEMON_DEFAULTS, WORKTREE_DEFAULTS, SCRIPT_DEFAULTS, NOTIFY_DEFAULTS
_E = EXECUTOR_DEFAULTS
PORT_BLOCK_SIZE = 100  # PO_PORT_BASE .. PO_PORT_BASE + 99 belong to one hypothesis

# Script names become directory names (run logs), so they must be safe path components.
_SCRIPT_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")
_BARE_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")
_TOML_LOCATION_RE = re.compile(r"\s*\(at (?:line (\d+), column (\d+)|end of document)\)\s*$")
_MAX_NESTING = 32  # no real config nests more than a few levels
_INT64_MAX = 2**63 - 1  # TOML integers are 64-bit; larger ones would overflow timers


class ConfigError(OrchestratorError):
    """A configuration problem; ``str()`` is one line naming the file and the key.

    ``errors`` holds each problem as its own single line, so the CLI can print one per line
    and a JSON log can carry them as a list.
    """

    def __init__(self, errors: str | Iterable[str]) -> None:
        items = [errors] if isinstance(errors, str) else list(errors)
        self.errors: list[str] = [_one_line(e) for e in items] or ["invalid configuration"]
        super().__init__("; ".join(self.errors))

    @property
    def lines(self) -> list[str]:
        return list(self.errors)


@dataclass(frozen=True)
class DaemonSettings:
    state_dir: Path  # resolved: explicit > $STATE_DIRECTORY > per repository under XDG state
    status_file: Path  # resolved: explicit > <state_dir>/status.json
    log_file: Path | None  # None -> JSON lines on stdout
    log_level: str = _D["log_level"]
    debounce_ms: int = _D["debounce_ms"]
    max_batch_wait_ms: int = _D["max_batch_wait_ms"]
    max_concurrency: int = _D["max_concurrency"]  # as written; ``concurrency`` is effective
    on_busy: OnBusy = _D["on_busy"]
    run_on_start: bool = _D["run_on_start"]
    keep_runs: int = _D["keep_runs"]
    port_range: tuple[int, int] = DEFAULT_PORT_RANGE  # [low, high): PO_PORT_BASE blocks

    @property
    def concurrency(self) -> int:
        return self.max_concurrency or (os.cpu_count() or 1)


@dataclass(frozen=True)
class WorktreeSettings:
    repo: Path | None  # resolved absolute; None when repo = "" (only ``paths``)
    paths: tuple[Path, ...] = ()  # resolved: the default (none) needs no resolving
    include: tuple[str, ...] = _W["include"]
    exclude: tuple[str, ...] = _W["exclude"]
    ignore: tuple[str, ...] = _W["ignore"]
    respect_gitignore: bool = _W["respect_gitignore"]


@dataclass(frozen=True)
class ScriptSettings:
    name: str
    command: tuple[str, ...]  # already shlex-split when given as a string
    watch: tuple[str, ...] = DEFAULT_WATCH
    timeout_s: float = float(_S["timeout_s"])
    kill_grace_s: float = float(_S["kill_grace_s"])
    env: dict[str, str] = field(default_factory=lambda: dict(_S["env"]))
    cwd: str = _S["cwd"]
    exclusive: bool = _S["exclusive"]  # its jobs never overlap in time, across hypotheses
    cache: bool = _S["cache"]  # reuse a pass/fail of equal inputs (cache package)
    junit: tuple[str, ...] = tuple(_S["junit"])  # report globs, besides {junit}


@dataclass(frozen=True)
class NotifySettings:
    """``[notify]``: what runs when a cell's result changes (see report/hooks.py)."""

    command: tuple[str, ...] = _N["command"]  # () -> no hook; exec'd, no shell, JSON on stdin
    desktop: bool = _N["desktop"]  # also notify-send, where it is installed


@dataclass(frozen=True)
class ExecutorSettings:
    """``[executor]``: where jobs run (see backends/)."""

    backend: str = _E["backend"]  # local | dask
    # dask: the scheduler, e.g. tcp://10.0.0.5:8786; "local": a LocalCluster
    address: str = _E["address"]


@dataclass(frozen=True)
class CompareSettings:
    baseline: str = ""  # "" -> the main worktree of worktrees.repo; else a hypothesis id


@dataclass(frozen=True)
class Settings:
    daemon: DaemonSettings
    worktrees: WorktreeSettings
    scripts: tuple[ScriptSettings, ...]
    config_path: Path | None  # None -> the embedded default
    notify: NotifySettings = NotifySettings()
    executor: ExecutorSettings = ExecutorSettings()
    compare: CompareSettings = field(default_factory=CompareSettings)


# --------------------------------------------------------------------------- discovery


def find_config_path(explicit: str | Path | None, cwd: Path, env: Mapping[str, str]) -> Path | None:
    """Locate the config file; None means "use the embedded default".

    A path the user named (``-c`` or the env var) that does not exist is an error rather
    than a silent fall-through: running with a different config than asked for is worse
    than not running.
    """
    if explicit is not None and str(explicit) != "":
        return _must_exist(_absolute(_expand_user(str(explicit), env), cwd), "-c")
    from_env = env.get(CONFIG_ENV_VAR, "")
    if from_env:
        return _must_exist(_absolute(_expand_user(from_env, env), cwd), f"${CONFIG_ENV_VAR}")
    local = _absolute(LOCAL_CONFIG_NAME, cwd)
    if _is_present(local):
        return local
    user = config_home(env) / APP_DIR_NAME / "config.toml"
    if _is_present(user):
        return user
    return None


def config_home(env: Mapping[str, str]) -> Path:
    """$XDG_CONFIG_HOME, ignoring relative values as the XDG spec requires."""
    xdg = env.get("XDG_CONFIG_HOME", "")
    if xdg and os.path.isabs(xdg):
        return Path(xdg)
    return _home(env) / ".config"


def _is_present(path: Path) -> bool:
    """Absent is a normal answer; "cannot tell" (EACCES, ELOOP...) is an error, not absence."""
    try:
        os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as exc:
        raise ConfigError(f"{_show_path(path)}: cannot stat: {exc.strerror or exc}") from exc
    return True


def _must_exist(path: Path, source: str) -> Path:
    if not _is_present(path):
        raise ConfigError(f"{_show_path(path)}: no such config file (given by {source})")
    return path


# --------------------------------------------------------------------------- resolvers
# Small resolvers in watchfiles' style: explicit value > environment > default.


def resolve_state_dir(
    explicit: str, base: Path, env: Mapping[str, str], repo: Path | None = None
) -> Path:
    """Where run logs and the status file live: explicit > systemd's StateDirectory= >
    one folder per repository under $XDG_STATE_HOME (two projects never share one)."""
    if explicit:
        return _absolute(_expand_user(explicit, env), base)
    systemd = env.get("STATE_DIRECTORY", "").split(":")[0]
    if systemd:
        return _absolute(systemd, base)
    return state_root(env) / repository_state_name(repo if repo is not None else base)


def state_root(env: Mapping[str, str]) -> Path:
    """$XDG_STATE_HOME/parallel-orchestrator (relative values ignored, as XDG says)."""
    xdg = env.get("XDG_STATE_HOME", "")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / APP_DIR_NAME
    return _home(env) / ".local" / "state" / APP_DIR_NAME


def repository_state_name(folder: Path) -> str:
    """``<repo-name>-<short hash of its path>`` for the repository around ``folder``.

    The repository is its main worktree, found by reading ``.git`` (a linked worktree's
    ``.git`` file points into the main one's), so a config in any worktree of a
    repository, or in a subfolder, names the same state dir. No git process: this runs
    on every config load.
    """
    root = _main_worktree(folder)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", os.fsdecode(root.name)).strip("._") or "root"
    digest = hashlib.sha256(os.fsencode(root)).hexdigest()[:8]
    return f"{name[:48]}-{digest}"


def _main_worktree(folder: Path) -> Path:
    start = Path(os.path.realpath(folder))
    for candidate in (start, *start.parents):
        dot_git = candidate / ".git"
        try:
            if dot_git.is_dir():
                return candidate
            if dot_git.is_file():
                return _main_of_linked(candidate, dot_git)
        except OSError:
            break
    return start


def _main_of_linked(worktree: Path, dot_git: Path) -> Path:
    """A linked worktree's ``.git`` file says ``gitdir: <main>/.git/worktrees/<name>``;
    that folder's ``commondir`` names the main ``.git`` (relative to it)."""
    try:
        text = dot_git.read_text(encoding="utf-8", errors="surrogateescape")
        if not text.startswith("gitdir:"):
            return worktree
        gitdir = Path(os.path.join(worktree, text[len("gitdir:") :].strip()))
        common = (gitdir / "commondir").read_text(encoding="utf-8").strip()
    except OSError:
        return worktree  # a submodule or a bare setup: the folder itself is the key
    main_git = Path(os.path.realpath(os.path.join(gitdir, common)))
    return main_git.parent if main_git.name == ".git" else worktree


def resolve_status_file(explicit: str, state_dir: Path, base: Path, env: Mapping[str, str]) -> Path:
    """The status file defaults to living next to the run logs it points at."""
    if explicit:
        return _absolute(_expand_user(explicit, env), base)
    return state_dir / "status.json"


def resolve_path_value(raw: str, base: Path, env: Mapping[str, str]) -> Path:
    """A path value of the config as the loader reads it: ``~`` expanded, relative to
    ``base`` (the config's folder)."""
    return _absolute(_expand_user(raw, env), base)


def resolve_log_file(explicit: str, base: Path, env: Mapping[str, str]) -> Path | None:
    """None means JSON lines on stdout (what journald and foreground use want)."""
    if explicit:
        return _absolute(_expand_user(explicit, env), base)
    return None


def _home(env: Mapping[str, str]) -> Path:
    home = env.get("HOME", "")
    if home and os.path.isabs(home):
        return Path(home)
    return Path(os.path.expanduser("~"))


def _expand_user(raw: str, env: Mapping[str, str]) -> str:
    """``~`` expansion that honours the injected env's HOME, so tests need no monkeypatching."""
    if raw == "~" or raw.startswith("~/"):
        return str(_home(env)) + raw[1:]
    if raw.startswith("~"):
        return os.path.expanduser(raw)
    return raw


def _absolute(raw: str, base: Path) -> Path:
    # normpath, not resolve(): no filesystem access, so a path that does not exist yet
    # (a state dir to be created) is fine; worktree discovery does the realpath.
    return Path(os.path.normpath(os.path.join(base, raw)))


# --------------------------------------------------------------------------- loading


def default_settings(cwd: Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """The embedded default: the repository around ``cwd``, one ``tests`` script."""
    cwd = Path(os.path.abspath(cwd if cwd is not None else Path.cwd()))
    env = os.environ if env is None else env
    state_dir = resolve_state_dir("", cwd, env, repo=cwd)
    return Settings(
        daemon=DaemonSettings(
            state_dir=state_dir,
            status_file=resolve_status_file("", state_dir, cwd, env),
            log_file=None,
        ),
        # git itself finds the repository around cwd, so cwd is a valid ``repo``.
        worktrees=WorktreeSettings(repo=cwd),
        scripts=(_default_script(),),
        config_path=None,
    )


def _default_script() -> ScriptSettings:
    """The embedded default's one script; its other keys keep their field defaults."""
    return ScriptSettings(name=DEFAULT_SCRIPT_NAME, command=DEFAULT_COMMAND)


def load_settings(
    path: Path | None,
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """Read, check and resolve a config file (or the embedded default when ``path`` is None)."""
    cwd = Path(os.path.abspath(cwd if cwd is not None else Path.cwd()))
    env = os.environ if env is None else env
    if path is None:
        return default_settings(cwd, env)
    path = _absolute(_expand_user(str(path), env), cwd)
    text = _read_config_text(path)
    source = _show_path(path)
    try:
        document = tomllib.loads(text.removeprefix("\ufeff"))  # editors may write a BOM
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: {_describe_toml_error(exc, text)}") from exc
    except RecursionError as exc:  # tomllib parses nested arrays recursively
        raise ConfigError(
            f"{source}: values nested too deeply (more than {_MAX_NESTING} levels)"
        ) from exc
    too_deep = _too_deep_key(document)
    if too_deep:
        raise ConfigError(
            f"{source}: {too_deep}: values nested too deeply (more than {_MAX_NESTING} levels)"
        )
    return settings_from_document(document, path, env)


def _too_deep_key(document: Mapping[str, Any]) -> str:
    """The top-level key holding values nested beyond ``_MAX_NESTING`` ('' when none).

    Checked without recursion, so that later recursive steps (error rendering, a reload
    inside the daemon's deeper stack) never meet a document deep enough to overflow.
    """
    for key, value in document.items():
        stack: list[tuple[Any, int]] = [(value, 1)]
        while stack:
            item, depth = stack.pop()
            if depth > _MAX_NESTING:
                return _key_part(str(key))
            children = item.values() if isinstance(item, dict) else item
            if isinstance(item, dict | list):
                stack.extend((child, depth + 1) for child in children)
    return ""


def locate_and_load(
    explicit: str | Path | None,
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """``find_config_path`` then ``load_settings``: what ``-c``-taking commands want."""
    cwd = Path(os.path.abspath(cwd if cwd is not None else Path.cwd()))
    env = os.environ if env is None else env
    return load_settings(find_config_path(explicit, cwd, env), cwd=cwd, env=env)


def _read_config_text(path: Path) -> str:
    """Open once and check permissions on the open file, so the check and the read agree.

    O_NONBLOCK so that a FIFO named as the config cannot hang start-up before the
    regular-file check rejects it.
    """
    source = _show_path(path)
    flags = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read: {exc.strerror or exc}") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{source}: not a regular file")
        problems = _file_permission_problems(path, st) + folder_permission_problems(path)
        if problems:
            raise ConfigError(problems)
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        data = b"".join(chunks)
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"{source}: line {line}: not valid UTF-8 ({exc.reason})") from exc


def _describe_toml_error(exc: tomllib.TOMLDecodeError, text: str) -> str:
    message = str(exc)
    found = _TOML_LOCATION_RE.search(message)
    if found is None:
        return f"invalid TOML: {message}"
    message = message[: found.start()]
    if found.group(1) is not None:
        return f"line {found.group(1)}: {message} (column {found.group(2)})"
    last_line = text.count("\n") + (0 if text.endswith("\n") or not text else 1)
    return f"line {max(last_line, 1)}: {message} (at end of file)"


# --------------------------------------------------------------------------- permissions


def check_config_permissions(path: Path) -> list[str]:
    """OpenSSH-StrictModes-style check: who else could change what this daemon runs?

    Returns one line per problem (empty when fine). ``load_settings`` already calls it;
    it is public for ``check``-style commands that want to report without loading.
    """
    try:
        st = os.stat(path)
    except OSError as exc:
        return [f"{_show_path(path)}: cannot stat: {exc.strerror or exc}"]
    return _file_permission_problems(path, st) + folder_permission_problems(path)


def _file_permission_problems(path: Path, st: os.stat_result) -> list[str]:
    if os.name != "posix":
        return []
    source = _show_path(path)
    problems = []
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o022:
        problems.append(
            f"{source}: refusing a config file writable by group/others "
            f"(mode {mode:04o}); chmod go-w it"
        )
    if st.st_uid not in (os.getuid(), 0):
        problems.append(
            f"{source}: refusing a config file owned by another user (uid {st.st_uid}); "
            "it decides what this daemon runs"
        )
    return problems


def folder_permission_problems(path: Path) -> list[str]:
    """The folders matter too: whoever can write one can replace what lies below it.

    As OpenSSH's StrictModes does, every folder from the file up to ``/`` is checked:
    along the path as named, along the real path, and at every symlink met on the way
    (a link in a world-writable folder can be swapped for one to any file). A sticky
    folder (like /tmp) is fine: others cannot replace an entry they do not own.
    """
    if os.name != "posix":
        return []
    problems = []
    for folder in folders_trusted_by(path):
        try:
            st = os.stat(folder)
        except OSError as exc:
            problems.append(f"{_show_path(folder)}: cannot stat: {exc.strerror or exc}")
            continue
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o022 and not mode & stat.S_ISVTX:
            problems.append(
                f"{_show_path(path)}: refusing a config file in a folder writable by "
                f"group/others ({_show_path(folder)}, mode {mode:04o}); chmod go-w it"
            )
        if st.st_uid not in (os.getuid(), 0):
            problems.append(
                f"{_show_path(path)}: refusing a config file in a folder owned by another "
                f"user ({_show_path(folder)}, uid {st.st_uid})"
            )
    return problems


# --------------------------------------------------------------------------- validation


class _Errors:
    """Collects ``<file>: <key path>: <message>`` lines."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.items: list[str] = []

    def add(self, key: str, message: str) -> None:
        where = f"{self.source}: {key}" if key else self.source
        self.items.append(f"{where}: {message}")


_MISSING: Any = object()

_TOP_KEYS = ("daemon", "worktrees", "scripts", "notify", "executor", "compare")
_DAEMON_KEYS = (
    "state_dir",
    "status_file",
    "log_file",
    "log_level",
    "debounce_ms",
    "max_batch_wait_ms",
    "max_concurrency",
    "on_busy",
    "run_on_start",
    "keep_runs",
    "port_range",
)
_WORKTREE_KEYS = ("repo", "paths", "include", "exclude", "ignore", "respect_gitignore")
_SCRIPT_KEYS = (
    "name",
    "command",
    "watch",
    "timeout_s",
    "kill_grace_s",
    "env",
    "cwd",
    "exclusive",
    "cache",
    "junit",
)
_NOTIFY_KEYS = ("command", "desktop")
_EXECUTOR_KEYS = ("backend", "address")
EXECUTOR_BACKENDS: tuple[str, ...] = ("local", "dask")


def settings_from_document(
    document: Mapping[str, Any], path: Path, env: Mapping[str, str]
) -> Settings:
    """Validate a parsed TOML document; relative paths are relative to ``path``'s folder."""
    errs = _Errors(_show_path(path))
    base = path.parent
    _reject_unknown(document, "", _TOP_KEYS, errs)
    repo = _repo_hint(document, base, env)
    daemon = _daemon(_table(document, "daemon", errs), base, env, errs, repo)
    worktrees = _worktrees(_table(document, "worktrees", errs), base, env, errs)
    scripts = _scripts(document.get("scripts", _MISSING), errs)
    notify = _notify(_table(document, "notify", errs), errs)
    executor = _executor(_table(document, "executor", errs), errs)
    compare = _compare(_table(document, "compare", errs), errs)
    if errs.items:
        raise ConfigError(errs.items)
    assert daemon is not None and worktrees is not None and notify is not None
    assert executor is not None and compare is not None
    return Settings(
        daemon=daemon,
        worktrees=worktrees,
        scripts=scripts,
        config_path=path,
        notify=notify,
        executor=executor,
        compare=compare,
    )


def _executor(table: Mapping[str, Any], errs: _Errors) -> ExecutorSettings | None:
    _reject_unknown(table, "executor", _EXECUTOR_KEYS, errs)
    backend = _choice(table, "backend", "executor.", EXECUTOR_BACKENDS, _E["backend"], errs)
    address = table.get("address", _E["address"])
    if not isinstance(address, str) or address != address.strip() or "\0" in address:
        errs.add("executor.address", f"expected a scheduler address string, got {_show(address)}")
        return None
    if backend == "dask" and not address:
        errs.add(
            "executor.address",
            'required with backend = "dask": the scheduler (e.g. "tcp://10.0.0.5:8786") '
            'or "local" for a LocalCluster started in-process',
        )
        return None
    if backend is None:
        return None
    return ExecutorSettings(backend=backend, address=address)


def _compare(table: Mapping[str, Any], errs: _Errors) -> CompareSettings | None:
    _reject_unknown(table, "compare", ("baseline",), errs)
    raw = table.get("baseline", "")
    if not isinstance(raw, str):
        errs.add("compare.baseline", f"expected a hypothesis id (a string), got {_show(raw)}")
        return None
    return CompareSettings(baseline=raw)


def _notify(table: Mapping[str, Any], errs: _Errors) -> NotifySettings | None:
    _reject_unknown(table, "notify", _NOTIFY_KEYS, errs)
    command: tuple[str, ...] | None = ()
    if table.get("command", []) != list(_N["command"]):
        command = _command(table, "notify.", errs)
    desktop = _boolean(table, "desktop", "notify.", _N["desktop"], errs)
    if command is None or desktop is None:
        return None
    return NotifySettings(command=command, desktop=desktop)


def _port_range(table: Mapping[str, Any], k: str, errs: _Errors) -> tuple[int, int] | None:
    """``[low, high]``: ports ``low`` .. ``high - 1``, room for at least one block of 100."""
    raw = table.get("port_range", list(_D["port_range"]))
    wanted = (
        f"[low, high] with 1024 <= low and low + {PORT_BLOCK_SIZE} <= high <= 65536 "
        f"(blocks of {PORT_BLOCK_SIZE} ports)"
    )
    ok = (
        isinstance(raw, list)
        and len(raw) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in raw)
    )
    if not ok or raw[0] < 1024 or not raw[0] + PORT_BLOCK_SIZE <= raw[1] <= 65536:
        errs.add(k + "port_range", f"expected {wanted}, got {_show(raw)}")
        return None
    return (raw[0], raw[1])


def _repo_hint(document: Mapping[str, Any], base: Path, env: Mapping[str, str]) -> Path:
    """The watched repository as far as the default state dir needs it (errors in
    ``worktrees.repo`` are reported by ``_worktrees``); the config's folder without one."""
    table = document.get("worktrees")
    raw = table.get("repo", _W["repo"]) if isinstance(table, dict) else _W["repo"]
    if not isinstance(raw, str) or not raw or "\0" in raw:
        return base
    return _absolute(_expand_user(raw, env), base)


def _daemon(
    table: Mapping[str, Any],
    base: Path,
    env: Mapping[str, str],
    errs: _Errors,
    repo: Path | None = None,
) -> DaemonSettings | None:
    _reject_unknown(table, "daemon", _DAEMON_KEYS, errs)
    k = "daemon."
    state_raw = _path_string(table, "state_dir", k, errs, _D["state_dir"])
    status_raw = _path_string(table, "status_file", k, errs, _D["status_file"])
    log_raw = _path_string(table, "log_file", k, errs, _D["log_file"])
    log_level = _choice(table, "log_level", k, LOG_LEVELS, _D["log_level"], errs)
    debounce = _integer(table, "debounce_ms", k, _D["debounce_ms"], 1, errs)
    max_wait = _integer(table, "max_batch_wait_ms", k, _D["max_batch_wait_ms"], 1, errs)
    if debounce is not None and max_wait is not None and max_wait < debounce:
        errs.add(
            k + "max_batch_wait_ms",
            f"expected an integer >= daemon.debounce_ms ({debounce}), got {max_wait}",
        )
    max_concurrency = _integer(table, "max_concurrency", k, _D["max_concurrency"], 0, errs)
    on_busy = _choice(table, "on_busy", k, ON_BUSY_CHOICES, _D["on_busy"], errs)
    run_on_start = _boolean(table, "run_on_start", k, _D["run_on_start"], errs)
    keep_runs = _integer(table, "keep_runs", k, _D["keep_runs"], 1, errs)
    port_range = _port_range(table, k, errs)
    values = (state_raw, status_raw, log_raw, log_level, debounce, max_wait, port_range)
    if None in (*values, max_concurrency, on_busy, run_on_start, keep_runs):
        return None
    state_dir = resolve_state_dir(cast(str, state_raw), base, env, repo)
    return DaemonSettings(
        state_dir=state_dir,
        status_file=resolve_status_file(cast(str, status_raw), state_dir, base, env),
        log_file=resolve_log_file(cast(str, log_raw), base, env),
        log_level=cast(str, log_level),
        debounce_ms=cast(int, debounce),
        max_batch_wait_ms=cast(int, max_wait),
        max_concurrency=cast(int, max_concurrency),
        on_busy=cast(OnBusy, on_busy),
        run_on_start=cast(bool, run_on_start),
        keep_runs=cast(int, keep_runs),
        port_range=cast(tuple, port_range),
    )


def _worktrees(
    table: Mapping[str, Any], base: Path, env: Mapping[str, str], errs: _Errors
) -> WorktreeSettings | None:
    _reject_unknown(table, "worktrees", _WORKTREE_KEYS, errs)
    k = "worktrees."
    repo_raw = _path_string(table, "repo", k, errs, _W["repo"])
    paths_raw = _string_list(table, "paths", k, _W["paths"], errs, paths=True)
    include = _string_list(table, "include", k, _W["include"], errs)
    exclude = _string_list(table, "exclude", k, _W["exclude"], errs)
    ignore = _glob_list(table, "ignore", k, _W["ignore"], errs)
    respect = _boolean(table, "respect_gitignore", k, _W["respect_gitignore"], errs)
    if repo_raw == "" and paths_raw == ():
        errs.add("worktrees", 'nothing to watch: repo is "" and paths is empty')
    if None in (repo_raw, paths_raw, include, exclude, ignore, respect):
        return None
    repo = _absolute(_expand_user(cast(str, repo_raw), env), base) if repo_raw else None
    return WorktreeSettings(
        repo=repo,
        paths=tuple(_absolute(_expand_user(p, env), base) for p in cast(tuple, paths_raw)),
        include=cast(tuple, include),
        exclude=cast(tuple, exclude),
        ignore=cast(tuple, ignore),
        respect_gitignore=cast(bool, respect),
    )


def _scripts(raw: Any, errs: _Errors) -> tuple[ScriptSettings, ...]:
    if raw is _MISSING:
        # Like every other key, a missing [[scripts]] means its default: the embedded
        # default's one `tests` script. An explicit empty list is a mistake, below.
        return (_default_script(),)
    if not isinstance(raw, list) or not all(isinstance(item, dict) for item in raw):
        errs.add("scripts", f"expected an array of tables ([[scripts]]), got {_show(raw)}")
        return ()
    if not raw:
        errs.add("scripts", "at least one [[scripts]] table is required")
        return ()
    scripts = []
    first_index: dict[str, int] = {}
    for index, table in enumerate(raw):
        script = _script(table, f"scripts[{index}]", errs)
        if script is None:
            continue
        if script.name in first_index:
            errs.add(
                f"scripts[{index}].name",
                f"duplicate script name {_show(script.name)} "
                f"(also scripts[{first_index[script.name]}])",
            )
            continue
        first_index[script.name] = index
        scripts.append(script)
    return tuple(scripts)


def _script(table: Mapping[str, Any], key: str, errs: _Errors) -> ScriptSettings | None:
    _reject_unknown(table, key, _SCRIPT_KEYS, errs)
    k = key + "."
    name = _script_name(table, k, errs)
    command = _command(table, k, errs)
    watch = _glob_list(table, "watch", k, DEFAULT_WATCH, errs)
    timeout_s = _number(table, "timeout_s", k, _S["timeout_s"], errs, allow_zero=False)
    kill_grace_s = _number(table, "kill_grace_s", k, _S["kill_grace_s"], errs, allow_zero=True)
    env = _env_table(table, k, errs)
    cwd = _script_cwd(table, k, errs)
    exclusive = _boolean(table, "exclusive", k, _S["exclusive"], errs)
    junit = _junit_globs(table, k, errs)
    cache = _boolean(table, "cache", k, _S["cache"], errs)
    values = (name, command, watch, timeout_s, kill_grace_s, env, cwd, exclusive, junit)
    if None in (*values, cache):
        return None
    return ScriptSettings(
        name=cast(str, name),
        command=cast(tuple, command),
        watch=cast(tuple, watch),
        timeout_s=cast(float, timeout_s),
        kill_grace_s=cast(float, kill_grace_s),
        env=cast(dict, env),
        cwd=cast(str, cwd),
        exclusive=cast(bool, exclusive),
        cache=cast(bool, cache),
        junit=cast(tuple, junit),
    )


def _junit_globs(table: Mapping[str, Any], k: str, errs: _Errors) -> tuple[str, ...] | None:
    """Report globs stay inside the worktree: no absolute paths, no ``..``."""
    globs = _glob_list(table, "junit", k, (), errs)
    if globs is None:
        return None
    for index, pattern in enumerate(globs):
        if pattern.startswith("/") or ".." in pattern.split("/"):
            errs.add(
                f"{k}junit[{index}]",
                f"expected a glob relative to the worktree (no '/' start, no '..'), "
                f"got {_show(pattern)}",
            )
            return None
    return globs


def _script_name(table: Mapping[str, Any], k: str, errs: _Errors) -> str | None:
    raw = table.get("name", _MISSING)
    wanted = "a name of letters, digits, '_', '.', '-' (it becomes a folder name)"
    if raw is _MISSING:
        errs.add(k + "name", f"required: {wanted}")
        return None
    if not isinstance(raw, str) or not _SCRIPT_NAME_RE.fullmatch(raw) or raw in (".", ".."):
        errs.add(k + "name", f"expected {wanted}, got {_show(raw)}")
        return None
    return raw


def _command(table: Mapping[str, Any], k: str, errs: _Errors) -> tuple[str, ...] | None:
    raw = table.get("command", _MISSING)
    key = k + "command"
    wanted = "a non-empty array of non-empty strings, or a string (shlex-split)"
    if raw is _MISSING:
        errs.add(key, f"required: {wanted}")
        return None
    if isinstance(raw, str):
        try:
            argv = shlex.split(raw)
        except ValueError as exc:
            errs.add(key, f"cannot split the string like a shell would: {exc}; got {_show(raw)}")
            return None
    elif isinstance(raw, list) and all(isinstance(item, str) for item in raw):
        argv = list(raw)
    else:
        errs.add(key, f"expected {wanted}, got {_show(raw)}")
        return None
    if not argv or any(item == "" for item in argv):
        errs.add(key, f"expected {wanted}, got {_show(raw)}")
        return None
    if any("\0" in item for item in argv):
        errs.add(key, "a NUL character cannot be passed to a program")
        return None
    return tuple(argv)


def _env_table(table: Mapping[str, Any], k: str, errs: _Errors) -> dict[str, str] | None:
    raw = table.get("env", _MISSING)
    if raw is _MISSING:
        return dict(_S["env"])
    if not isinstance(raw, dict):
        errs.add(k + "env", f"expected a table of strings, got {_show(raw)}")
        return None
    result: dict[str, str] = {}
    ok = True
    for name, value in raw.items():
        key = f"{k}env.{_key_part(name)}"
        if name == "" or "=" in name or "\0" in name:
            errs.add(key, "expected a variable name without '=' or NUL")
            ok = False
        elif not isinstance(value, str):
            errs.add(key, f"expected a string, got {_show(value)}")
            ok = False
        elif "\0" in value:
            errs.add(key, "a NUL character cannot be passed to a program")
            ok = False
        else:
            result[name] = value
    return result if ok else None


def _script_cwd(table: Mapping[str, Any], k: str, errs: _Errors) -> str | None:
    raw = table.get("cwd", _MISSING)
    if raw is _MISSING:
        return _S["cwd"]
    key = k + "cwd"
    if not isinstance(raw, str) or "\0" in raw:
        errs.add(key, f"expected a path relative to the worktree root, got {_show(raw)}")
        return None
    if raw == "":
        return ""
    if os.path.isabs(raw) or raw.startswith("~"):
        errs.add(key, f"expected a path relative to the worktree root, got {_show(raw)}")
        return None
    normal = os.path.normpath(raw)
    if normal == ".." or normal.startswith("../"):
        errs.add(key, f"must stay inside the worktree, got {_show(raw)}")
        return None
    return "" if normal == "." else normal


# --------------------------------------------------------------------------- typed getters
# Each returns the value (or default when the key is absent) or None after recording an
# error, so one pass finds every problem.


def _table(document: Mapping[str, Any], key: str, errs: _Errors) -> Mapping[str, Any]:
    raw = document.get(key, _MISSING)
    if raw is _MISSING:
        return {}
    if not isinstance(raw, dict):
        errs.add(key, f"expected a table ([{key}]), got {_show(raw)}")
        return {}
    return raw


def _reject_unknown(
    table: Mapping[str, Any], where: str, known: tuple[str, ...], errs: _Errors
) -> None:
    for name in table:
        if name in known:
            continue
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(known)})"
        key = f"{where}.{_key_part(name)}" if where else _key_part(name)
        errs.add(key, f"unknown key{hint}")


def _path_string(
    table: Mapping[str, Any], key: str, k: str, errs: _Errors, default: str
) -> str | None:
    raw = table.get(key, default)
    if not isinstance(raw, str) or "\0" in raw:
        errs.add(k + key, f"expected a path string, got {_show(raw)}")
        return None
    return raw


def _choice(
    table: Mapping[str, Any],
    key: str,
    k: str,
    choices: tuple[str, ...],
    default: str,
    errs: _Errors,
) -> str | None:
    raw = table.get(key, default)
    if not isinstance(raw, str) or raw not in choices:
        errs.add(k + key, f"expected one of {' | '.join(choices)}, got {_show(raw)}")
        return None
    return raw


def _boolean(
    table: Mapping[str, Any], key: str, k: str, default: bool, errs: _Errors
) -> bool | None:
    raw = table.get(key, default)
    if not isinstance(raw, bool):
        errs.add(k + key, f"expected true or false, got {_show(raw)}")
        return None
    return raw


def _integer(
    table: Mapping[str, Any], key: str, k: str, default: int, minimum: int, errs: _Errors
) -> int | None:
    raw = table.get(key, default)
    # bool is a subclass of int in Python, but `debounce_ms = true` is a mistake.
    if isinstance(raw, bool) or not isinstance(raw, int) or not minimum <= raw <= _INT64_MAX:
        errs.add(k + key, f"expected an integer >= {minimum}, got {_show(raw)}")
        return None
    return raw


def _number(
    table: Mapping[str, Any],
    key: str,
    k: str,
    default: float,
    errs: _Errors,
    *,
    allow_zero: bool,
) -> float | None:
    raw = table.get(key, default)
    wanted = "a number >= 0" if allow_zero else "a number > 0"
    value: float | None = None
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        try:
            value = float(raw)
        except OverflowError:
            value = None
    if value is None or not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        errs.add(k + key, f"expected {wanted}, got {_show(raw)}")
        return None
    return value


def _string_list(
    table: Mapping[str, Any],
    key: str,
    k: str,
    default: tuple[str, ...],
    errs: _Errors,
    *,
    paths: bool = False,
) -> tuple[str, ...] | None:
    raw = table.get(key, _MISSING)
    if raw is _MISSING:
        return default
    wanted = "an array of non-empty strings"
    if not isinstance(raw, list):
        errs.add(k + key, f"expected {wanted}, got {_show(raw)}")
        return None
    ok = True
    for index, item in enumerate(raw):
        if not isinstance(item, str) or item == "" or (paths and "\0" in item):
            errs.add(f"{k}{key}[{index}]", f"expected a non-empty string, got {_show(item)}")
            ok = False
    return tuple(raw) if ok else None


def _glob_list(
    table: Mapping[str, Any], key: str, k: str, default: tuple[str, ...], errs: _Errors
) -> tuple[str, ...] | None:
    """A list of worktree-relative globs, each compiled now: a bad one (``[z-a]``) is a
    config error naming its key, not a failure in the first batch or a reload."""
    globs = _string_list(table, key, k, default, errs)
    if globs is None:
        return None
    problems = [(index, glob_problem(item)) for index, item in enumerate(globs)]
    for index, problem in problems:
        if problem:
            errs.add(f"{k}{key}[{index}]", problem)
    return None if any(problem for _, problem in problems) else globs


# --------------------------------------------------------------------------- rendering


def _show(value: Any) -> str:
    """A short, single-line, TOML-flavoured rendering of a value for error messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        text = repr(value)
    elif isinstance(value, str):
        text = json.dumps(value)
    elif isinstance(value, _dt.date | _dt.time):
        text = f"a date/time {value.isoformat()}"
    elif isinstance(value, list):
        text = "an array " + json.dumps(value, default=str)
    elif isinstance(value, dict):
        text = "a table " + json.dumps(value, default=str)
    else:
        text = repr(value)
    return _one_line(text if len(text) <= 80 else text[:77] + "...")


def _show_path(path: Path | str) -> str:
    return _one_line(os.fsdecode(path))


def _key_part(name: str) -> str:
    return name if _BARE_KEY_RE.fullmatch(name) else json.dumps(name)


def _one_line(text: str) -> str:
    """Escape control characters so every message is exactly one printable line."""
    if text.isprintable():
        return text
    return "".join(
        ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text
    )
