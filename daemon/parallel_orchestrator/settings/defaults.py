"""Every default of the config file, written once, as the TOML document would spell it.

``config.example.toml`` spells out exactly this document (a test compares them), the
settings dataclasses take their field defaults from it, and the loader falls back to it
for each key a file leaves out. A leaf module: it imports nothing from the package.

Path keys keep their raw TOML value here ("" or "."); the loader resolves them against
the config file's folder and the environment.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

DAEMON_DEFAULTS: Mapping[str, Any] = MappingProxyType(
    {
        "state_dir": "",  # -> $STATE_DIRECTORY, $XDG_STATE_HOME/parallel-orchestrator, ...
        "status_file": "",  # -> <state_dir>/status.json
        "log_file": "",  # -> JSON lines on stdout
        "log_level": "info",
        "debounce_ms": 200,
        "max_batch_wait_ms": 2000,
        "max_concurrency": 0,  # -> the number of CPUs
        "on_busy": "restart",
        "run_on_start": True,
        "keep_runs": 20,
        "port_range": (20000, 40000),  # [low, high): a block of 100 ports per hypothesis
    }
)

WORKTREE_DEFAULTS: Mapping[str, Any] = MappingProxyType(
    {
        "repo": ".",  # the folder of the config file
        "paths": (),
        "include": ("*",),
        "exclude": (),
        "ignore": (),
        "respect_gitignore": True,
    }
)

# The embedded default script, used when a config has no [[scripts]] at all. In a
# [[scripts]] table ``name`` and ``command`` are required; the other keys default to
# these values.
SCRIPT_DEFAULTS: Mapping[str, Any] = MappingProxyType(
    {
        "name": "tests",
        "command": ("python", "-m", "pytest", "-q"),
        "watch": ("**/*.py",),
        "timeout_s": 300,
        "kill_grace_s": 5,
        "env": MappingProxyType({}),
        "cwd": "",
        "exclusive": False,
        "cache": False,
        "junit": (),  # JUnit XML report globs relative to the worktree
    }
)

NOTIFY_DEFAULTS: Mapping[str, Any] = MappingProxyType(
    {
        "command": (),  # no hook
        "desktop": False,
    }
)

EXECUTOR_DEFAULTS: Mapping[str, Any] = MappingProxyType(
    {
        "backend": "local",  # local | dask
        "address": "",  # dask: the scheduler address
    }
)

COMPARE_DEFAULTS: Mapping[str, Any] = MappingProxyType(
    {
        "baseline": "",  # -> the main worktree of worktrees.repo
    }
)


def default_document() -> dict[str, Any]:
    """The defaults as a plain TOML-shaped document (lists and dicts, as tomllib parses)."""

    def plain(table: Mapping[str, Any]) -> dict[str, Any]:
        return {
            key: list(value)
            if isinstance(value, tuple)
            else dict(value)
            if isinstance(value, Mapping)
            else value
            for key, value in table.items()
        }

    return {
        "daemon": plain(DAEMON_DEFAULTS),
        "worktrees": plain(WORKTREE_DEFAULTS),
        "scripts": [plain(SCRIPT_DEFAULTS)],
        "notify": plain(NOTIFY_DEFAULTS),
        "executor": plain(EXECUTOR_DEFAULTS),
        "compare": plain(COMPARE_DEFAULTS),
    }
