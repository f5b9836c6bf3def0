"""``parallel-orchestrator wait``: block until the verdict of the edits made so far is in.

Two steps (the daemon's half is in watch/waitmarks.py):

1. Drop a marker into the daemon's wait folder and wait until the daemon deletes it: it
   does so only once every change made before the marker has been seen, batched and its
   jobs queued, and the status file saying so has been written.
2. Read the status file until no selected cell is ``queued`` or ``running``.

Only the status file, the marker and the daemon's pid are used: no socket, and any number
of ``wait`` calls may run at once.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..states import REPO_MISSING

BUSY_STATES = ("queued", "running")
MARKER_POLL_S = 0.002
STATUS_POLL_S = 0.005
ALIVE_CHECK_S = 0.1
REREAD_S = 0.05


class NoDaemon(Exception):
    """No daemon is running for this status file (exit 3); says why in one line."""


class WaitUsageError(Exception):
    """A name that is not in the status file, or a daemon too old for ``wait`` (exit 2)."""


@dataclass
class WaitResult:
    verdict: str  # "pass" | "fail" | "timeout"
    cells: list[dict[str, Any]] = field(default_factory=list)
    # daemon.repo_state said the repository was moved or deleted: why nothing ran
    # (said on stderr; not in --json, whose keys are the design's)
    repo_missing: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "cells": self.cells}


def pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive, though not ours
    try:  # a zombie (the daemon died, its parent has not reaped it) is not running
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


class _StatusReader:
    """Re-reads the status file when it looks replaced, and every ``REREAD_S`` anyway.

    The stat key is only a hint: a replacement can reuse the inode number, keep the size
    (``pass`` and ``fail`` are the same length) and land in the same coarse mtime tick.
    A read that must see every write before it (after the acknowledgement) is forced.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._key: tuple[int, int, int, int] | None = None
        self._read_at = 0.0
        self.doc: dict[str, Any] = {}

    def refresh(self, force: bool = False) -> bool:
        """True when a new document was read. Raises NoDaemon when there is none."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            raise NoDaemon(f"no daemon is running (no status file at {self.path})") from None
        key = (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)
        if not force and key == self._key and time.monotonic() - self._read_at < REREAD_S:
            return False
        try:
            doc = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            raise NoDaemon(f"no daemon is running (no status file at {self.path})") from None
        except ValueError as exc:
            raise NoDaemon(f"{self.path}: not a status file ({exc})") from exc
        if not isinstance(doc, dict) or not isinstance(doc.get("daemon"), dict):
            raise NoDaemon(f"{self.path}: not a status file")
        self._key, self.doc, self._read_at = key, doc, time.monotonic()
        return True

    def check_alive(self) -> None:
        daemon = self.doc["daemon"]
        if daemon.get("state") in ("stopping", "stopped") or not pid_alive(daemon.get("pid")):
            raise NoDaemon(
                f"no daemon is running (status file {self.path}: pid {daemon.get('pid')}, "
                f"state {daemon.get('state')})"
            )


def selected_cells(
    doc: dict[str, Any], hypotheses: Sequence[str], scripts: Sequence[str]
) -> list[tuple[str, str]]:
    """(hypothesis, script) pairs the selection names; WaitUsageError for unknown names."""
    hyps = doc.get("hypotheses") or {}
    known_s = {s for h in hyps.values() for s in (h.get("scripts") or {})}
    unknown = [f"--hypothesis {h}" for h in hypotheses if h not in hyps]
    unknown += [f"--script {s}" for s in scripts if s not in known_s]
    if unknown:
        raise WaitUsageError(
            f"{', '.join(unknown)}: not in the status file (hypotheses: "
            f"{', '.join(sorted(hyps)) or 'none'}; scripts: {', '.join(sorted(known_s)) or 'none'})"
        )
    return [
        (h, s)
        for h in (hypotheses or list(hyps))
        for s in (hyps[h].get("scripts") or {})
        if not scripts or s in scripts
    ]


def _cells(doc: dict[str, Any], keys: list[tuple[str, str]]) -> list[dict[str, Any]]:
    out = []
    for h, s in keys:
        cell = ((doc.get("hypotheses") or {}).get(h) or {}).get("scripts", {}).get(s)
        # A hypothesis removed meanwhile has no verdict: "gone", which is not a pass.
        out.append({"hypothesis": h, "script": s, **(cell or {"state": "gone"})})
    return out


def _make_marker(folder: Path) -> Path:
    name = f"{os.getpid()}-{secrets.token_hex(6)}.wait"
    path = folder / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    os.close(fd)
    return path


def wait_for_verdict(
    status_path: Path,
    hypotheses: Sequence[str] = (),
    scripts: Sequence[str] = (),
    timeout_s: float | None = None,
) -> WaitResult:
    """Raises NoDaemon (exit 3) and WaitUsageError (exit 2)."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    reader = _StatusReader(status_path)
    reader.refresh()
    reader.check_alive()
    keys = selected_cells(reader.doc, hypotheses, scripts)
    folder = reader.doc["daemon"].get("wait_dir")
    if not isinstance(folder, str) or not folder:
        raise WaitUsageError(
            f"the daemon writing {status_path} (version {reader.doc['daemon'].get('version')}) "
            "does not support wait; restart it"
        )
    try:
        marker = _make_marker(Path(folder))
    except OSError as exc:
        raise WaitUsageError(
            f"{folder}: cannot place a wait marker: {exc.strerror or exc}"
        ) from exc
    try:
        if not _await_acknowledgement(marker, reader, deadline):
            result = WaitResult("timeout", _cells(reader.doc, keys))
        else:
            result = _await_cells(reader, keys, deadline)
    finally:
        marker.unlink(missing_ok=True)  # gone already unless we gave up or failed
    result.repo_missing = reader.doc["daemon"].get("repo_state") == REPO_MISSING
    return result


def _await_acknowledgement(marker: Path, reader: _StatusReader, deadline: float | None) -> bool:
    next_check = time.monotonic() + ALIVE_CHECK_S
    while os.path.lexists(marker):
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            return False
        if now >= next_check:
            reader.refresh()
            reader.check_alive()
            next_check = now + ALIVE_CHECK_S
        time.sleep(MARKER_POLL_S)
    return True


def _await_cells(
    reader: _StatusReader, keys: list[tuple[str, str]], deadline: float | None
) -> WaitResult:
    reader.refresh(force=True)  # a document written after the acknowledgement
    next_check = 0.0
    while True:
        cells = _cells(reader.doc, keys)
        if not any(c.get("state") in BUSY_STATES for c in cells):
            if any(c.get("state") == "cancelled" for c in cells):
                # Cut short by a stopping daemon is no verdict on the edit (not a fail).
                reader.check_alive()
            passed = all(c.get("state") == "pass" for c in cells)
            return WaitResult("pass" if passed else "fail", cells)
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            return WaitResult("timeout", cells)
        if now >= next_check:
            reader.check_alive()
            next_check = now + ALIVE_CHECK_S
        time.sleep(STATUS_POLL_S)
        reader.refresh()


def render(result: WaitResult) -> str:
    """One line per cell, then the verdict."""
    lines = []
    for c in result.cells:
        state = str(c.get("state"))
        extra = ""
        if state not in ("pass", *BUSY_STATES) and c.get("log_path"):
            extra = f"  log {c['log_path']}"
        lines.append(f"{c['hypothesis']}/{c['script']}  {state.upper()}{extra}")
    passed = sum(c.get("state") == "pass" for c in result.cells)
    lines.append(f"{passed}/{len(result.cells)} pass")
    return "\n".join(lines)
