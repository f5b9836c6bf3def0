"""Which of our children are job leaders: the janitor must never reap those.

The runner alone reaps a leader (when it has watched it exit); until then its pid is in
this registry. Spawning fills it, the leader's watcher empties it, and the janitor's
orphan reaping reads it. A spawn under way counts too: its leader is our child before
its pid is known, so orphan reaping waits until no spawn is in flight.

Its own module (not the spawner's) so that the spawner and the leader watcher both
depend on it and not on each other.
"""

from __future__ import annotations

import os
import threading

from . import janitor

_registry_lock = threading.Lock()
_leaders: set[int] = set()
_spawning = 0  # spawns under way whose leader is not in _leaders yet


def job_leaders() -> frozenset[int]:
    """Pids of job leaders not yet reaped (the runner alone reaps them)."""
    with _registry_lock:
        return frozenset(_leaders)


def reap_orphan_zombies() -> list[int]:
    """Reap exited orphans adopted from jobs; the daemon calls this periodically.

    Skipped while a spawn is in flight: the new leader could be taken for an orphan. The
    scan runs under the registry lock: with only a snapshot of the leaders, a job spawned
    (and exited) during the scan was a zombie no snapshot knew, got reaped here, and its
    runner's ``poll()`` then read ECHILD as exit 0: a failing job reported ``pass``. A
    spawn waits for the scan (a read of /proc/<pid>/stat per child of ours).
    """
    with _registry_lock:
        if _spawning:
            return []
        return janitor.reap_adopted_zombies(frozenset(_leaders))


def spawn_starting() -> None:
    """A leader is about to be forked: hold orphan reaping off until ``spawn_done``."""
    global _spawning
    with _registry_lock:
        _spawning += 1


def spawn_done(pid: int | None) -> None:
    """The fork of ``spawn_starting`` is over: ``pid`` is a job leader (None: it failed)."""
    global _spawning
    with _registry_lock:
        _spawning -= 1
        if pid is not None:
            _leaders.add(pid)


def forget_leader(pid: int) -> None:
    """``pid`` was reaped: no longer a job leader."""
    with _registry_lock:
        _leaders.discard(pid)


def _after_fork_in_child() -> None:
    """A forked child has none of our children: start from a clean slate."""
    global _registry_lock, _spawning
    _registry_lock = threading.Lock()
    _spawning = 0
    _leaders.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
