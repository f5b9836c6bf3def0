"""Which status file belongs to the daemon a config describes.

``status``-style commands are run from a shell, which lacks the daemon's
``$STATE_DIRECTORY`` when systemd runs it; so besides the configured (or per-repository
default) location, the folders our unit files give the daemon are tried. A file found
there counts only when its ``daemon.config_path`` is this config: two projects must
never see each other's results, and a file of another config is refused, naming both.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from ..errors import OrchestratorError
from ..settings.loader import APP_DIR_NAME, Settings, config_home, resolve_state_dir, state_root
from ..store.safe_open import read_regular


class ForeignStatusFile(OrchestratorError):
    """The status file found belongs to another config's daemon; one line naming both."""


def candidate_status_files(settings: Settings, env: Mapping[str, str]) -> list[Path]:
    """Where the daemon for this config writes its status file, most likely first.

    With ``state_dir = ""`` a daemon under systemd uses ``$STATE_DIRECTORY``: the user
    template's ``StateDirectory=parallel-orchestrator/%i`` (under ~/.config with systemd
    252, under $XDG_STATE_HOME later) for ``<instance>.toml``, and the system unit's
    /var/lib/parallel-orchestrator for /etc/parallel-orchestrator/config.toml.
    """
    d = settings.daemon
    found = [d.status_file]
    cfg = settings.config_path
    if cfg is None or env.get("STATE_DIRECTORY"):
        return found
    default_dir = resolve_state_dir("", cfg.parent, env, settings.worktrees.repo)
    if d.state_dir != default_dir or d.status_file != default_dir / "status.json":
        return found  # set explicitly: the daemon uses exactly that
    instance = cfg.stem
    found += [
        config_home(env) / APP_DIR_NAME / instance / "status.json",
        state_root(env) / instance / "status.json",
    ]
    if cfg.parent == Path("/etc") / APP_DIR_NAME:
        found.append(Path("/var/lib") / APP_DIR_NAME / "status.json")
    return list(dict.fromkeys(found))


def _recorded_config(path: Path) -> tuple[bool, str | None]:
    """(readable, daemon.config_path) of a status file; unreadable files are not judged."""
    try:
        doc = json.loads(read_regular(path, 1 << 24, follow=True))
    except (OSError, ValueError, RecursionError):
        return False, None
    daemon = doc.get("daemon") if isinstance(doc, dict) else None
    recorded = daemon.get("config_path") if isinstance(daemon, dict) else None
    return True, recorded if isinstance(recorded, str) else None


def _same_config(recorded: str | None, mine: Path | None) -> bool:
    if recorded is None or mine is None:
        return recorded is None and mine is None
    if os.path.normpath(recorded) == os.path.normpath(mine):
        return True
    try:
        return os.path.samefile(recorded, mine)
    except OSError:
        return False


def status_file_for(settings: Settings, env: Mapping[str, str]) -> Path:
    """The status file of this config's daemon (it may not exist yet: then the configured
    location, for the "no status file" message). Raises ForeignStatusFile when the only
    status files found were written by a daemon of another config."""
    mine = settings.config_path
    foreign: list[tuple[Path, str | None]] = []
    for path in candidate_status_files(settings, env):
        if not path.is_file():
            continue
        readable, recorded = _recorded_config(path)
        if not readable or _same_config(recorded, mine):
            return path  # a corrupt file is this daemon's to explain (status reports it)
        foreign.append((path, recorded))
    if foreign:
        path, recorded = foreign[0]
        theirs = recorded if recorded is not None else "the embedded default"
        ours = os.fsdecode(mine) if mine is not None else "the embedded default"
        raise ForeignStatusFile(
            f"{path}: written by the daemon of {theirs}, not of {ours}; "
            "give each config its own daemon.state_dir"
        )
    return settings.daemon.status_file


def state_dir_for(settings: Settings, env: Mapping[str, str]) -> Path:
    """The state dir of this config's daemon, for every reading command (``logs``,
    ``output``, ``compare``, ``wait``...): the folder of the status file found by
    ``status_file_for`` when that is one of the unit folders, else the configured one.
    Raises ForeignStatusFile like ``status_file_for``."""
    d = settings.daemon
    found = status_file_for(settings, env)
    if found == d.status_file or d.status_file != d.state_dir / "status.json":
        return d.state_dir
    return found.parent
