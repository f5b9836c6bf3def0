"""Glob patterns over worktree-relative paths, with ``**`` crossing folders.

fnmatch's ``*`` crosses ``/`` and pathlib's ``match`` anchors from the right, so neither
gives the semantics users know from .gitignore and CI path filters: ``*`` stays within
one path segment, ``**/`` matches zero or more whole folders, ``/**`` everything below.
"""

from __future__ import annotations

import re
from functools import lru_cache

from ..errors import OrchestratorError


def _translate(pattern: str) -> str:
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            if pattern.startswith("**", i):
                before_ok = i == 0 or pattern[i - 1] == "/"
                after = pattern[i + 2 : i + 3]
                if before_ok and after == "/":
                    out.append("(?:.*/)?")  # "**/" : zero or more folders
                    i += 3
                    continue
                if before_ok and after == "":
                    out.append(".*")  # trailing "**": everything below
                    i += 2
                    continue
                out.append("[^/]*")
                i += 2
                continue
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            # As in fnmatch, a "]" first in the set (after any "!") is a literal member.
            j = pattern.find("]", i + 3 if pattern[i + 1 : i + 2] in ("!", "^") else i + 2)
            if j == -1:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1 : j]
                if body[:1] in ("!", "^"):
                    body = "^" + body[1:]
                out.append("[" + body.replace("\\", "\\\\") + "]")
                i = j
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


class GlobError(OrchestratorError, ValueError):
    """A glob that cannot be compiled (e.g. the reversed range ``[z-a]``); one line."""


@lru_cache(maxsize=1024)
def compile_glob(pattern: str) -> re.Pattern[str]:
    """Compile a worktree-relative glob; a leading ``/`` or ``./`` is ignored.

    Raises GlobError for a pattern no path could be matched against, so the config
    loader can reject it up front instead of a batch failing later.
    """
    p = pattern
    while p.startswith("./"):
        p = p[2:]
    p = p.lstrip("/")
    try:
        return re.compile(r"\A" + _translate(p) + r"\Z", re.DOTALL)
    except re.error as exc:
        raise GlobError(f"invalid glob {pattern!r}: {exc.msg}") from exc


def glob_problem(pattern: str) -> str:
    """Why ``pattern`` is not a usable glob, or '' when it is (for config validation)."""
    try:
        compile_glob(pattern)
    except GlobError as exc:
        return str(exc)
    return ""


def matches_any(relpath: str, patterns: tuple[str, ...] | list[str]) -> bool:
    return any(compile_glob(p).match(relpath) for p in patterns)
