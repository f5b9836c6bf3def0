"""`parallel-orchestrator init`: propose a config from what a repository already has.

The proposal is a starting point a user reads and edits, so it is deliberately small:
only the keys whose value differs per project (scripts, what they watch, what to
ignore) plus the daemon knobs people tune first. Every other key keeps its documented
default and is described in config.example.toml. Detection only reads files of the main
worktree; it never runs project code.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import textwrap
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import tomli_w

from ..errors import OrchestratorError
from ..repo.git import GitError, GitResult, run_git, z_records
from ..settings.loader import (
    DEFAULT_SCRIPT_NAME,
    DEFAULT_WATCH,
    LOCAL_CONFIG_NAME,
    ConfigError,
    check_config_permissions,
    settings_from_document,
)
from ..store.atomic import write_atomic
from ..store.folders import make_dirs
from .pythonproject import project_python, top_level_test_modules, unittest_command, uses_unittest

# The daemon refuses config files that group/others can write; 0o644 minus the umask
# can never be, whatever the umask is.
CONFIG_FILE_MODE = 0o644
FALSIFICATION_DIR = ".falsification"

# Ignore globs (settings' semantics: no "/" -> any path segment, leading "/" -> anchored at
# the worktree root). Only for tools whose build output lands inside the worktree and
# would otherwise retrigger the script that produced it.
# pytest writes a JUnit XML report where {junit} points (PO_JUNIT_XML): test-level results
# in the status file, `logs` and `compare` without the user having to read about them.
PYTEST_ARGS = ("-m", "pytest", "-q", "--junitxml={junit}")
_NODE_IGNORE = ("node_modules", "/dist", "/build", "/coverage")
_CARGO_IGNORE = ("/target",)
_BROAD_IGNORE = ("__pycache__", ".pytest_cache", "*.pyc", "*.o", "/build", "/dist")
# pytest-testmon's database (and its SQLite journal files) change on every run.
_TESTMON_IGNORE = (".testmondata*",)
_PROBE_TIMEOUT_S = 20.0


class InitError(OrchestratorError):
    """Why ``init`` wrote nothing; ``str()`` is one line naming the path involved."""


class OutputExists(InitError, FileExistsError):
    """The output file exists and ``--force`` was not given."""


@dataclass(frozen=True)
class _Detected:
    """One proposed script plus the ignore globs it needs and a line for the header."""

    script: dict[str, Any]
    ignore: tuple[str, ...] = ()
    note: str = ""


@dataclass
class InitResult:
    path: Path
    proposal: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # e.g. the daemon would refuse the file


# --------------------------------------------------------------------------- git


def _git(args: Sequence[str], cwd: Path) -> GitResult:
    try:
        return run_git(cwd, *args)
    except GitError as exc:
        if exc.reason == "not_found":
            raise InitError("git not found on PATH; init needs it to find the repository") from exc
        raise InitError(str(exc)) from exc


def find_repo_root(start: Path) -> Path:
    """The main worktree of the repository around ``start``.

    The main worktree, not the one ``start`` is in: its files are the ones looked at,
    and ``git worktree list`` from it lists every hypothesis. For a bare repository
    there is no main worktree, so the worktree ``start`` is in is used.
    """
    if not start.is_dir():
        raise InitError(f"{start}: no such directory")
    top = _git(["rev-parse", "--show-toplevel"], start)
    if not top.ok:
        raise InitError(f"{start}: not a git repository")
    toplevel = Path(os.fsdecode(top.stdout.rstrip(b"\n")))
    entries = _worktree_entries(toplevel)
    if entries and not entries[0][1] and entries[0][0].is_dir():
        return entries[0][0]
    return toplevel


def _worktree_entries(repo: Path) -> list[tuple[Path, bool]]:
    """(path, is_bare) per `git worktree list` entry, main (or the bare repo) first."""
    listing = _git(["worktree", "list", "--porcelain", "-z"], repo)
    if not listing.ok:
        detail = listing.last_line()
        raise InitError(f"{repo}: git worktree list failed" + (f": {detail}" if detail else ""))
    entries = []
    for lines in z_records(listing.stdout):
        if lines[0].startswith(b"worktree "):
            path = Path(os.fsdecode(lines[0][len(b"worktree ") :]))
            entries.append((path, b"bare" in lines[1:]))
    return entries


def list_worktrees(repo: Path) -> list[Path]:
    """Existing worktree folders, main first. A bare entry has no files, and a vanished
    ("prunable") worktree is no hypothesis, so both are skipped."""
    return [path for path, bare in _worktree_entries(repo) if not bare and path.is_dir()]


# --------------------------------------------------------------------------- detection


def _python(repo: Path, notes: list[str]) -> str:
    """The interpreter the project uses, written out in full (see ``project_python``)."""
    python, why = project_python(repo)
    note = f"python: {python} ({why}); written in full: under systemd jobs get a minimal PATH"
    if note not in notes:
        notes.append(note)
    return python


def _pyproject_has_pytest(path: Path, notes: list[str]) -> bool:
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        notes.append(f"{path.name} could not be parsed ({exc}); its [tool.pytest] was not seen")
        return False
    tool = doc.get("tool")
    return isinstance(tool, dict) and "pytest" in tool


def _ini_has_section(path: Path, section: str) -> bool:
    pattern = re.compile(rf"^\s*\[{re.escape(section)}\]\s*$", re.MULTILINE)
    return bool(pattern.search(path.read_text(encoding="utf-8", errors="replace")))


def _has_test_modules(folder: Path) -> bool:
    if not folder.is_dir():
        return False
    return any(folder.rglob("test_*.py")) or any(folder.rglob("*_test.py"))


def _detect_pytest(repo: Path, notes: list[str]) -> _Detected | None:
    reasons = [n for n in ("pytest.ini", "conftest.py") if (repo / n).is_file()]
    reasons += [
        f"{d}/conftest.py" for d in ("tests", "test") if (repo / d / "conftest.py").is_file()
    ]
    pyproject, setup_cfg, tox_ini = repo / "pyproject.toml", repo / "setup.cfg", repo / "tox.ini"
    if pyproject.is_file() and _pyproject_has_pytest(pyproject, notes):
        reasons.append("pyproject.toml [tool.pytest]")
    if setup_cfg.is_file() and _ini_has_section(setup_cfg, "tool:pytest"):
        reasons.append("setup.cfg [tool:pytest]")
    if tox_ini.is_file() and _ini_has_section(tox_ini, "pytest"):
        reasons.append("tox.ini [pytest]")
    configured = bool(reasons)
    test_dirs = [d for d in ("tests", "test") if _has_test_modules(repo / d)]
    reasons += [f"{d}/test_*.py" for d in test_dirs]
    if top_level_test_modules(repo):
        reasons.append("test_*.py at the top level")
    if not reasons:
        return None
    watch = ["**/*.py"] + [
        n for n in ("pytest.ini", "pyproject.toml", "setup.cfg", "tox.ini") if (repo / n).is_file()
    ]
    python = _python(repo, notes)
    if not configured and uses_unittest(repo, test_dirs):
        command = unittest_command(repo, python, test_dirs)
        script = {"name": DEFAULT_SCRIPT_NAME, "command": command, "watch": watch}
        why = "test modules import unittest, no pytest configuration"
        return _Detected(script, (), f"tests: unittest project ({why}; {', '.join(reasons)})")
    script = {
        "name": DEFAULT_SCRIPT_NAME,
        "command": [python, *PYTEST_ARGS],
        "watch": watch,
    }
    note = f"tests: pytest project ({', '.join(reasons)})"
    if _has_module(python, "testmon", repo):
        script["command"].append("--testmon")
        note += "; pytest-testmon is installed: --testmon runs only the tests a change affects"
        return _Detected(script, _TESTMON_IGNORE, note)
    return _Detected(script, (), note)


def _has_module(python: str, module: str, cwd: Path) -> bool:
    """Whether ``python`` (the interpreter the proposed command runs) can import
    ``module``: asked of that interpreter, since the project's environment is its own."""
    probe = f"import importlib.util,sys; sys.exit(0 if importlib.util.find_spec({module!r}) else 1)"
    try:
        proc = subprocess.run(
            [python, "-c", probe],
            cwd=cwd,
            capture_output=True,
            timeout=_PROBE_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def _detect_npm(repo: Path, notes: list[str]) -> _Detected | None:
    package_json = repo / "package.json"
    if not package_json.is_file():
        return None
    try:
        package = json.loads(package_json.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        notes.append(f"package.json could not be parsed ({exc}); no npm script proposed")
        return None
    scripts = package.get("scripts") if isinstance(package, dict) else None
    test = scripts.get("test") if isinstance(scripts, dict) else None
    if not isinstance(test, str) or "no test specified" in test:  # npm init's placeholder
        return None
    if (repo / "pnpm-lock.yaml").is_file():
        command, tool = ["pnpm", "test"], "pnpm"
    elif (repo / "yarn.lock").is_file():
        command, tool = ["yarn", "test"], "yarn"
    else:
        command, tool = ["npm", "test", "--silent"], "npm"
    watch = [f"**/*.{ext}" for ext in ("js", "mjs", "cjs", "jsx", "ts", "tsx", "json")]
    script: dict[str, Any] = {"name": "npm-test", "command": command, "watch": watch}
    if _uses_jest_junit(package):
        # jest-junit writes ./junit.xml unless told otherwise (JEST_JUNIT_OUTPUT_FILE)
        script["junit"] = ["junit.xml"]
    return _Detected(script, _NODE_IGNORE, f"npm-test: package.json scripts.test (via {tool})")


def _uses_jest_junit(package: object) -> bool:
    if not isinstance(package, dict):
        return False
    for key in ("dependencies", "devDependencies"):
        deps = package.get(key)
        if isinstance(deps, dict) and "jest-junit" in deps:
            return True
    return False


def _detect_cargo(repo: Path, notes: list[str]) -> _Detected | None:
    if not (repo / "Cargo.toml").is_file():
        return None
    script = {
        "name": "cargo-test",
        "command": ["cargo", "test"],
        "watch": ["**/*.rs", "**/Cargo.toml", "Cargo.lock"],
        "timeout_s": 900,  # a cold build is part of the first run
    }
    nextest = repo / ".config" / "nextest.toml"
    if nextest.is_file() and "junit" in nextest.read_text(encoding="utf-8", errors="replace"):
        # nextest's JUnit output is configured per profile: run it, read its reports
        script["command"] = ["cargo", "nextest", "run"]
        script["junit"] = ["target/nextest/*/junit.xml"]
    return _Detected(script, _CARGO_IGNORE, "cargo-test: Cargo.toml")


def _detect_go(repo: Path, notes: list[str]) -> _Detected | None:
    if not (repo / "go.mod").is_file():
        return None
    script = {
        "name": "go-test",
        "command": ["go", "test", "./..."],
        "watch": ["**/*.go", "go.mod", "go.sum"],
    }
    return _Detected(script, (), "go-test: go.mod")


_MAKE_TEST_TARGET = re.compile(r"^test\s*::?(?!=)", re.MULTILINE)


def _makefile_with_test(repo: Path) -> Path | None:
    for name in ("GNUmakefile", "makefile", "Makefile"):  # make's own lookup order
        path = repo / name
        if path.is_file():
            text = path.read_text(encoding="utf-8", errors="replace")
            return path if _MAKE_TEST_TARGET.search(text) else None
    return None


def _detect_make(repo: Path, notes: list[str]) -> _Detected | None:
    makefile = _makefile_with_test(repo)
    if makefile is None:
        return None
    # A Makefile can depend on anything, so it watches everything; build outputs and
    # caches are ignored so a run does not retrigger itself (gitignored files are too).
    script = {"name": "make-test", "command": ["make", "test"], "watch": ["**/*"]}
    return _Detected(script, _BROAD_IGNORE, f"make-test: {makefile.name} has a test target")


def _detect_falsification(
    repo: Path, worktrees: Sequence[Path], notes: list[str]
) -> _Detected | None:
    """The original batch tool's per-hypothesis scripts, `.falsification/test_<id>.sh`.

    One script per hypothesis cannot be one [[scripts]] entry per file: the entry is
    shared by every hypothesis, so its command names the file through the
    placeholders, and each worktree runs its own `test_<its id>.sh` (the id being the
    worktree folder's name, as the daemon defines it). The file is executed directly
    (no shell in between), exactly as the original executor did, so it needs its
    shebang and execute bit. It watches everything: such scripts exercise the whole tree.
    """
    folder = repo / FALSIFICATION_DIR
    found = sorted(folder.glob("test_*.sh")) if folder.is_dir() else []
    if not found:
        return None
    ids = [p.name[len("test_") : -len(".sh")] for p in found]
    notes.append(
        f"falsification: {FALSIFICATION_DIR}/ has scripts for {', '.join(ids)}; each "
        f"hypothesis runs its own {FALSIFICATION_DIR}/test_<hypothesis>.sh, where "
        "<hypothesis> is the worktree folder's name"
    )
    missing = [
        wt.name for wt in worktrees if not (wt / FALSIFICATION_DIR / f"test_{wt.name}.sh").is_file()
    ]
    if missing:
        notes.append(
            f"falsification: no script for {', '.join(missing)} yet (those jobs end in "
            "'error: not found'); add one or narrow [worktrees] include/exclude"
        )
    not_executable = [p.name for p in found if not os.access(p, os.X_OK)]
    if not_executable:
        notes.append(
            f"falsification: not executable: {', '.join(not_executable)} "
            f"(chmod +x them; they are run directly, without a shell)"
        )
    script = {
        "name": "falsification",
        "command": [f"{{worktree}}/{FALSIFICATION_DIR}/test_{{hypothesis}}.sh"],
        "watch": ["**/*"],
    }
    return _Detected(script, _BROAD_IGNORE)


# --------------------------------------------------------------------------- proposal


def _config_relative(repo: Path, config_dir: Path | None) -> str:
    """``repo`` as written in the config: relative to the config's folder when one lies
    inside the other (moving the pair keeps working), otherwise absolute (a long
    ``../../..`` chain breaks as soon as either moves)."""
    if config_dir is None:
        return os.fspath(repo)
    repo_abs, base = repo.resolve(), config_dir.resolve()
    if repo_abs == base or repo_abs.is_relative_to(base) or base.is_relative_to(repo_abs):
        return os.path.relpath(repo_abs, base)
    return os.fspath(repo_abs)


def _unique(name: str, taken: set[str]) -> str:
    candidate, n = name, 2
    while candidate in taken:
        candidate, n = f"{name}-{n}", n + 1
    taken.add(candidate)
    return candidate


def _propose(
    repo: Path,
    *,
    config_file: Path | None,
    worktrees: Sequence[Path] | None,
) -> tuple[dict[str, Any], list[str]]:
    notes: list[str] = []
    worktrees = list(worktrees) if worktrees is not None else [repo]
    detected: list[_Detected] = []
    for detect in (_detect_pytest, _detect_npm, _detect_cargo, _detect_go):
        found = detect(repo, notes)
        if found is not None:
            detected.append(found)
    make = _detect_make(repo, notes)
    if make is not None and not detected:
        detected.append(make)
    elif make is not None:
        # `make test` usually wraps the runner found above; running both doubles the work.
        notes.append(
            "make-test: the Makefile's test target was not proposed because "
            f"{', '.join(d.script['name'] for d in detected)} "
            f"{'covers' if len(detected) == 1 else 'cover'} the same ground; "
            'swap it in if `make test` is the real entry point (command = ["make", "test"])'
        )
    falsification = _detect_falsification(repo, worktrees, notes)
    if falsification is not None:
        detected.append(falsification)
    if not detected:
        command = [_python(repo, notes), *PYTEST_ARGS]
        detected.append(
            _Detected(
                {"name": DEFAULT_SCRIPT_NAME, "command": command, "watch": list(DEFAULT_WATCH)}
            )
        )
        notes.append(
            "nothing recognised (pytest, package.json, Cargo.toml, go.mod, Makefile "
            "test target, .falsification/): proposing the default pytest script"
        )

    taken: set[str] = set()
    scripts = []
    found_notes: list[str] = []  # what was found first, then the caveats
    ignore: dict[str, None] = {}
    for item in detected:
        script = dict(item.script)
        script["name"] = _unique(str(script["name"]), taken)
        script.setdefault("timeout_s", 300)
        scripts.append(script)
        ignore.update(dict.fromkeys(item.ignore))
        if item.note:
            found_notes.append(item.note)
    if config_file is not None:
        inside = _relative_inside(config_file, repo)
        if inside is not None:
            # Editing the config is not a code change (it is applied on SIGHUP).
            ignore["/" + inside] = None

    config_dir = config_file.parent if config_file is not None else None
    proposal: dict[str, Any] = {
        "daemon": {"debounce_ms": 200, "on_busy": "restart", "run_on_start": True},
        "worktrees": {
            "repo": _config_relative(repo, config_dir),
            "ignore": list(ignore),
            "respect_gitignore": True,
        },
        "scripts": scripts,
    }
    return proposal, found_notes + notes


def _relative_inside(path: Path, root: Path) -> str | None:
    path_abs, root_abs = path.resolve(), root.resolve()
    if path_abs.is_relative_to(root_abs):
        return path_abs.relative_to(root_abs).as_posix()
    return None


def propose_config(
    repo: Path,
    *,
    config_file: Path | None = None,
    worktrees: Sequence[Path] | None = None,
) -> dict[str, Any]:
    """A config dict ([daemon], [worktrees], [[scripts]]) for the repository at ``repo``.

    ``config_file`` (where it will be written) makes ``worktrees.repo`` relative to its
    folder and keeps edits of the file itself from triggering runs; ``worktrees`` (all
    hypothesis folders) only refines the notes about per-hypothesis scripts.
    """
    return _propose(repo, config_file=config_file, worktrees=worktrees)[0]


# --------------------------------------------------------------------------- output


def make_header(repo: Path, notes: Sequence[str], now: datetime | None = None) -> str:
    when = (now or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M %Z").strip()
    lines = [
        f"parallel-orchestrator configuration, generated by `parallel-orchestrator init` on {when}",
        f"for the repository {repo}.",
        "See config.example.toml for every key and its default; anything not set here",
        "keeps its default. {hypothesis}, {worktree}, {branch} and {junit} are substituted",
        "in command items; {junit} (also $PO_JUNIT_XML) is where a test runner may write a",
        "JUnit XML report, for test-level results in `status`, `logs` and `compare`.",
        "Reload a running daemon with SIGHUP after editing.",
    ]
    if notes:
        lines.append("")
        lines.append("What init found:")
        for note in notes:
            lines.extend(textwrap.wrap(note, 86, initial_indent="  - ", subsequent_indent="    "))
    return "\n".join(lines)


def render_config(proposal: Mapping[str, Any], header: str) -> str:
    """TOML text: the header as comments, then the proposal (tomli_w keeps key order)."""
    comment = "\n".join(f"# {line}".rstrip() for line in header.splitlines())
    body = tomli_w.dumps(dict(proposal))
    compact = _compact_arrays(body)
    if tomllib.loads(compact) == tomllib.loads(body):  # only a cosmetic change, or none
        body = compact
    return f"{comment}\n\n{body}"


_ARRAY_ITEM = re.compile(r"^ {4}(?P<item>[^\[\]{].*),$")


def _compact_arrays(text: str) -> str:
    """Join tomli_w's one-item-per-line arrays of scalars onto one line when it fits, so
    a command reads like the design's ``["python", "-m", "pytest", "-q"]``."""
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.endswith(" = ["):
            items: list[str] = []
            j = i + 1
            while j < len(lines) and (match := _ARRAY_ITEM.match(lines[j])):
                items.append(match.group("item"))
                j += 1
            joined = f"{line}{', '.join(items)}]"
            if items and j < len(lines) and lines[j] == "]" and len(joined) <= 100:
                out.append(joined)
                i = j + 1
                continue
        out.append(line)
        i += 1
    return "\n".join(out) + "\n"


def write_config(output: Path, text: str, force: bool) -> None:
    """Create ``output`` (mode 0644 minus the umask, so never group/world-writable).

    Without ``force`` the exclusive create is the existence check, so there is no window
    in which a file appearing meanwhile gets overwritten. With ``force`` the new text
    is written to a temp file beside it and renamed over it: readers (a daemon reloading
    on SIGHUP) see the old or the new file, never half of one.
    """
    data = text.encode("utf-8")
    try:
        # 0755 whatever the umask: the daemon refuses a config whose folder others can write.
        make_dirs(output.parent, 0o755)
    except OSError as exc:
        raise InitError(f"{output.parent}: cannot create folder: {exc.strerror or exc}") from exc
    if force and output.is_dir():
        raise InitError(f"{output}: is a directory")
    try:
        write_atomic(output, data, mode=CONFIG_FILE_MODE, exact_mode=False, exclusive=not force)
    except FileExistsError as exc:
        if force:
            raise InitError(f"{output}: cannot write: {exc.strerror or exc}") from exc
        raise OutputExists(f"{output}: already exists; use --force to overwrite it") from exc
    except OSError as exc:
        raise InitError(f"{output}: cannot write: {exc.strerror or exc}") from exc


def printable(text: str) -> str:
    """``text`` safe to print and to write as UTF-8: undecodable bytes of a file name
    (surrogate escapes) and control characters are shown as backslash escapes."""
    raw = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return "".join(
        ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in raw
    )


def default_output(repo_root: Path) -> Path:
    """Beside the code, under the name the daemon looks for in its working folder."""
    return repo_root / LOCAL_CONFIG_NAME


def init_config(
    repo_dir: Path | None = None,
    output: Path | None = None,
    force: bool = False,
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    now: datetime | None = None,
) -> InitResult:
    """The whole `init` command: find the repo, propose, validate, write.

    The text is validated by the real config loader before anything is written, so
    init cannot leave behind a file the daemon would reject for its content; file and
    folder permission problems the daemon would refuse are returned as warnings.
    """
    cwd = cwd if cwd is not None else Path.cwd()
    env = os.environ if env is None else env
    start = repo_dir if repo_dir is not None else cwd
    root = find_repo_root(start if start.is_absolute() else cwd / start)
    if output is None:
        target = default_output(root)
    else:
        target = output if output.is_absolute() else cwd / output
    target = Path(os.path.normpath(target))
    proposal, notes = _propose(root, config_file=target, worktrees=list_worktrees(root))
    notes = [printable(note) for note in notes]  # file names need not be UTF-8
    text = render_config(proposal, make_header(Path(printable(os.fsdecode(root))), notes, now))
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:  # TOML is UTF-8; a path outside it cannot be written
        bad = printable(exc.object[max(0, exc.start - 40) : exc.end + 40])
        raise InitError(f"{target}: a path is not valid UTF-8, TOML cannot hold it: {bad}") from exc
    try:
        settings_from_document(tomllib.loads(text), target, env)
    except (ConfigError, tomllib.TOMLDecodeError) as exc:
        raise InitError(f"{target}: the generated config does not validate (a bug): {exc}") from exc
    write_config(target, text, force)
    return InitResult(target, proposal, notes, check_config_permissions(target))
