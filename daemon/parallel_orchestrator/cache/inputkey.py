"""A job's input key: the script's settings as configured plus its watched files' content.

The settings part is the command *template* (before ``{hypothesis}``, ``{worktree}`` ...
are substituted: the same command in two hypotheses is the same input), ``cwd``, ``env``,
``watch`` and ``junit``. ``timeout_s`` and ``kill_grace_s`` are not inputs: they decide
whether a run ends, not what it computes, and only pass/fail results are reused.
"""

from __future__ import annotations

import json
from typing import Any

import xxhash

from .index import ViewDigest

KEY_FORMAT = 2  # bump when the key's composition changes: old entries simply miss


def settings_fingerprint(script: Any) -> bytes:
    """Canonical bytes of the settings part of the key (any object with the script
    fields; ``junit`` counts as ``[]`` where the settings do not have it yet)."""
    doc = {
        "format": KEY_FORMAT,
        "command": list(script.command),
        "cwd": script.cwd,
        "env": dict(sorted(script.env.items())),
        "watch": list(script.watch),
        "junit": list(getattr(script, "junit", ()) or ()),
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def input_key(script: Any, view: ViewDigest) -> str | None:
    """Hex key of a job's inputs, or None when a watched file's content is unknown."""
    if view.value is None:
        return None
    h = xxhash.xxh3_128(settings_fingerprint(script))
    h.update(b"\0files\0")
    h.update(view.value)
    h.update(view.files.to_bytes(8, "big"))
    return h.hexdigest()
