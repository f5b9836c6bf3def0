"""What the watcher delivers: chunks of ``(watchfiles.Change, path)`` and when they happened.

A leaf module: the watcher's parts (the RustNotify loop, the stat-poll fallback) and the
daemon that consumes chunks all name these types. Changes are real ``watchfiles.Change``
members, never bare ints (they compare and hash equal to RustNotify's 1/2/3 all the same).
"""

from __future__ import annotations

from dataclasses import dataclass

from watchfiles import Change

# RustNotify reports changes as ints; one dict lookup each makes them Change members
# (cheaper than calling Change(int), which matters for a checkout touching 10,000 files).
_CHANGE_OF_INT: dict[int, Change] = {int(c): c for c in Change}

Changes = set[tuple[Change, str]]


@dataclass(frozen=True)
class Chunk:
    """Changes returned by one watch call; times are ``time.monotonic()`` estimates.

    ``streaming``: changes were still arriving when the chunk was cut (RustNotify stops a
    call after ``chunk`` ms even mid-stream); the batch must stay open for the rest. A
    chunk with ``streaming`` False (possibly empty) ends the stream.
    """

    changes: Changes
    first: float
    last: float
    streaming: bool = False


def changes_from_rust(raw: set[tuple[int, str]]) -> Changes:
    """RustNotify's ``(int, path)`` pairs as ``(Change, path)``."""
    return {(_CHANGE_OF_INT[change], path) for change, path in raw}
