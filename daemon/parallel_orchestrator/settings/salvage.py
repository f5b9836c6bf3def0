"""Where the daemon of an invalid config keeps its state: for reading commands only.

A daemon whose config was edited into something invalid runs on with its last good
config (the reload is rejected, ``config_invalid``). ``status``, ``logs``, ``output``
and ``compare`` must still reach that daemon's state, so they read just the keys that
place it (``daemon.state_dir``, ``daemon.status_file``, ``worktrees.repo``) from the
file, however broken the rest is: from the whole document when it is TOML, else line
by line (a line that is not TOML on its own is skipped). Nothing here is ever used to
run anything; the status file found must still name this config (statelocate checks).
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .loader import (
    ConfigError,
    Settings,
    default_settings,
    find_config_path,
    resolve_path_value,
    resolve_state_dir,
    resolve_status_file,
)

MAX_CONFIG_BYTES = 1 << 20
_HEADER_RE = re.compile(r"\s*\[\s*([A-Za-z0-9_.-]+)\s*\]\s*(?:#.*)?")
_WANTED = {"daemon": ("state_dir", "status_file"), "worktrees": ("repo",)}


def _parse_leniently(text: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text.removeprefix("\ufeff"))
    except (tomllib.TOMLDecodeError, RecursionError):
        pass
    found: dict[str, dict[str, Any]] = {}
    table = ""
    for line in text.removeprefix("\ufeff").splitlines():
        header = _HEADER_RE.fullmatch(line)
        if header:
            table = header.group(1)
            continue
        if "=" not in line:
            continue
        try:
            part = tomllib.loads(f"[{table}]\n{line}" if table else line)
        except (tomllib.TOMLDecodeError, RecursionError):
            continue
        for name, keys in _WANTED.items():
            values = part.get(name)
            if isinstance(values, dict):
                found.setdefault(name, {}).update({k: values[k] for k in keys if k in values})
    return found


def _string(doc: Mapping[str, Any], table: str, key: str) -> str:
    values = doc.get(table)
    raw = values.get(key) if isinstance(values, dict) else None
    return raw if isinstance(raw, str) and "\0" not in raw else ""


def salvage_settings(
    explicit: str | None, env: Mapping[str, str], cwd: Path | None = None
) -> Settings | None:
    """Defaults placed where the (invalid) config puts the daemon's state; None when the
    config cannot even be found or read."""
    cwd = Path(os.path.abspath(cwd if cwd is not None else Path.cwd()))
    try:
        path = find_config_path(explicit, cwd, env)
    except ConfigError:
        return None
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            text = f.read(MAX_CONFIG_BYTES).decode("utf-8", "replace")
    except OSError:
        return None
    doc = _parse_leniently(text)
    base = path.parent
    repo_raw = _string(doc, "worktrees", "repo")
    repo = resolve_path_value(repo_raw, base, env) if repo_raw else base
    state_dir = resolve_state_dir(_string(doc, "daemon", "state_dir"), base, env, repo)
    status = resolve_status_file(_string(doc, "daemon", "status_file"), state_dir, base, env)
    d = default_settings(cwd, env)
    return dataclasses.replace(
        d,
        daemon=dataclasses.replace(d.daemon, state_dir=state_dir, status_file=status),
        worktrees=dataclasses.replace(d.worktrees, repo=repo),
        config_path=path,
    )
