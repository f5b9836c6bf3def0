"""The status document: the latest state of every hypothesis x script, written atomically.

Readers (``status``, dashboards, agents) may read it at any moment, so it is only ever
replaced whole: a temp file in the same folder, fsync, rename. The schema is a contract.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..states import (
    ACTIVE_STATES,
    CELL_STATES,
    DAEMON_STARTING,
    FINAL_RESULTS,
    NEVER_RUN,
    QUEUED,
    RUNNING,
)
from ..store.atomic import write_atomic
from ..store.safe_open import read_regular, set_aside
from .safetext import finite

SCHEMA_VERSION = 1
SUMMARY_KEYS = CELL_STATES  # the summary's keys, in the design's order


def iso(ts: float | None) -> str | None:
    """ISO 8601 UTC with milliseconds, or None."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def empty_cell() -> dict[str, Any]:
    return {
        "state": NEVER_RUN,
        "last_result": None,
        "exit_code": None,
        "duration_s": None,
        "started_at": None,
        "finished_at": None,
        "job_id": None,
        "batch_id": None,
        "log_path": None,
        "output_tail": None,
        "tests": None,
    }


class StatusBoard:
    """In-memory status document; the daemon mutates it and calls ``write``."""

    def __init__(self, *, pid: int, version: str, config_path: Path | None) -> None:
        now = iso(time.time())
        self.doc: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "daemon": {
                "pid": pid,
                "version": version,
                "state": DAEMON_STARTING,
                "started_at": now,
                "updated_at": now,
                "config_path": os.fsdecode(config_path) if config_path else None,
            },
            "hypotheses": {},
            "summary": dict.fromkeys(SUMMARY_KEYS, 0),
        }

    # -- shape -------------------------------------------------------------------------
    def adopt_previous(self, previous: dict[str, Any]) -> None:
        """Keep last results across restarts: a restarted daemon still shows what passed."""
        hyps = previous.get("hypotheses")
        if not isinstance(hyps, dict):
            return
        for hyp_id, hyp in hyps.items():
            if not isinstance(hyp, dict) or not isinstance(hyp.get("scripts"), dict):
                continue
            mine = self.doc["hypotheses"].get(hyp_id)
            if mine is None:
                continue
            for name, cell in hyp["scripts"].items():
                if name in mine["scripts"] and isinstance(cell, dict):
                    merged = empty_cell()
                    merged.update({k: cell[k] for k in merged if k in cell and _fits(k, cell[k])})
                    if merged["state"] in ACTIVE_STATES:
                        # The old daemon died mid-job; crash recovery refines this.
                        merged["state"] = merged["last_result"] or NEVER_RUN
                    mine["scripts"][name] = merged

    def set_hypotheses(
        self, hypotheses: Iterable[tuple[str, str, str]], scripts: Iterable[str]
    ) -> None:
        """(id, path, branch) for each hypothesis; drops vanished ones, keeps known cells."""
        script_names = list(scripts)
        old = self.doc["hypotheses"]
        new: dict[str, Any] = {}
        for hyp_id, path, branch in hypotheses:
            prev = old.get(hyp_id, {"scripts": {}})
            cells = {name: prev["scripts"].get(name) or empty_cell() for name in script_names}
            new[hyp_id] = {"path": path, "branch": branch, "scripts": cells}
        self.doc["hypotheses"] = new

    def cell(self, hyp: str, script: str) -> dict[str, Any] | None:
        h = self.doc["hypotheses"].get(hyp)
        return None if h is None else h["scripts"].get(script)

    def update(self, hyp: str, script: str, **fields: Any) -> None:
        cell = self.cell(hyp, script)
        if cell is not None:
            cell.update(fields)

    def mark_queued(self, hyp: str, script: str) -> bool:
        """A run was queued; a running cell stays running. True when the cell changed."""
        cell = self.cell(hyp, script)
        if cell is None or cell["state"] == RUNNING:
            return False
        cell["state"] = QUEUED
        return True

    def mark_dropped(self, hyp: str, script: str) -> bool:
        """A queued run was dropped: the cell shows its last result again (or never_run)."""
        cell = self.cell(hyp, script)
        if cell is None or cell["state"] != QUEUED:
            return False
        cell["state"] = cell["last_result"] or NEVER_RUN
        return True

    def set_daemon_state(self, state: str) -> None:
        self.doc["daemon"]["state"] = state

    def set_config_error(self, errors: list[str] | None) -> None:
        """A rejected reload (the daemon runs on the last good config): readers see
        ``daemon.config_error``; a good reload (None) clears it."""
        if errors is None:
            self.doc["daemon"].pop("config_error", None)
        else:
            self.doc["daemon"]["config_error"] = {"errors": errors, "at": iso(time.time())}

    def counts(self) -> dict[str, int]:
        summary = dict.fromkeys(SUMMARY_KEYS, 0)
        for hyp in self.doc["hypotheses"].values():
            for cell in hyp["scripts"].values():
                state = cell["state"]
                if state in summary:
                    summary[state] += 1
        return summary

    def process_ended(self, key: tuple[str, str]) -> float | None:
        """When the cell's latest job ended (wall time); None while one runs or never."""
        cell = self.cell(*key)
        if cell is None or cell.get("state") == RUNNING:
            return None
        finished = cell.get("finished_at")
        if not isinstance(finished, str):
            return None
        try:
            return datetime.fromisoformat(finished.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None

    def render(self) -> bytes:
        self.doc["summary"] = self.counts()
        self.doc["daemon"]["updated_at"] = iso(time.time())
        try:
            text = json.dumps(self.doc, indent=2, ensure_ascii=False, allow_nan=False)
        except ValueError:  # inf/nan (e.g. adopted from a corrupt file) are not JSON
            self.doc = finite(self.doc)
            text = json.dumps(self.doc, indent=2, ensure_ascii=False, allow_nan=False)
        return text.encode("utf-8", "backslashreplace")

    def write(self, path: Path) -> int:
        """0600: the document carries test output, like the run logs (and a missing
        folder is created 0700, like the state dir). Returns the bytes written."""
        data = self.render()
        write_atomic(path, data, mode=0o600, dir_mode=0o700)
        return len(data)


_CELL_STATES = frozenset(CELL_STATES)
_CELL_STRINGS = frozenset(
    ("started_at", "finished_at", "job_id", "batch_id", "log_path", "output_tail")
)


def _fits(key: str, value: Any) -> bool:
    """Whether an adopted cell value has its schema type; a corrupt file (a list where a
    string belongs, a duration of 1e999) must not leak into the new document."""
    if key == "state":
        return isinstance(value, str) and value in _CELL_STATES
    if key == "last_result":
        return value is None or (isinstance(value, str) and value in FINAL_RESULTS)
    if key == "exit_code":
        return value is None or (isinstance(value, int) and not isinstance(value, bool))
    if key == "duration_s":
        number = isinstance(value, int | float) and not isinstance(value, bool)
        return value is None or (number and math.isfinite(value) and value >= 0)
    if key in _CELL_STRINGS:
        return value is None or isinstance(value, str)
    return value is None or isinstance(value, str | int | float | bool | dict)


STATUS_LIMIT = 1 << 28  # far above any real status file; a bound for a hostile one


def load_previous(path: Path, log: Any = None) -> dict[str, Any] | None:
    """The last status document, or None when absent or unusable (never fatal).

    An unusable one (not JSON, not a status document, a FIFO or folder in its place) is
    set aside as ``<name>.corrupt`` and reported as ``state_file_corrupt`` on ``log``:
    kept for a person to look at, out of the daemon's way. Values of the wrong type
    inside a good document are dropped cell by cell (``adopt_previous``).
    """
    try:
        doc = json.loads(read_regular(path, STATUS_LIMIT))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, RecursionError) as exc:
        _set_aside(path, f"{type(exc).__name__}: {exc}", log)
        return None
    if isinstance(doc, dict) and doc.get("schema_version") == SCHEMA_VERSION:
        return doc
    _set_aside(path, f"not a schema_version {SCHEMA_VERSION} status document", log)
    return None


def _set_aside(path: Path, error: str, log: Any) -> None:
    try:
        moved: str | None = os.fsdecode(set_aside(path))
    except OSError as exc:
        moved, error = None, f"{error} (cannot set it aside: {exc.strerror or exc})"
    if log is not None:
        log.warning("state_file_corrupt", path=os.fsdecode(path), error=error, moved_to=moved)
