"""Changed paths -> the scripts they affect.

Pure and synchronous so it can be tested without a watcher: a change affects a script
when its worktree-relative path matches one of the script's ``watch`` globs; a change
that matches none starts nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ..repo.pathglob import matches_any
from ..settings.loader import ScriptSettings


def affected_scripts(changed: Iterable[str], scripts: Iterable[ScriptSettings]) -> list[str]:
    """Names of the scripts (in config order) whose watch globs match any changed path."""
    paths = list(changed)
    return [s.name for s in scripts if any(matches_any(p, s.watch) for p in paths)]


def plan(
    changes: Mapping[str, Iterable[str]], scripts: Iterable[ScriptSettings]
) -> dict[str, list[str]]:
    """Map hypothesis id -> affected script names; hypotheses with none are left out."""
    script_list = list(scripts)
    result: dict[str, list[str]] = {}
    for hyp, paths in changes.items():
        names = affected_scripts(paths, script_list)
        if names:
            result[hyp] = names
    return result
