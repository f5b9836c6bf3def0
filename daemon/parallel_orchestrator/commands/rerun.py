"""``parallel-orchestrator rerun``: ask the running daemon to run cells now.

No socket: the request is a file dropped atomically into the daemon's owner-only
``<state_dir>/requests/`` (the format is in service/requests.py). Names are checked
against the status file first (unknown ones: exit 2, named), and the daemon must be
running: its status file names a live pid in a running state (else exit 3). The daemon
removes the file as it takes it, so waiting for the file to go says "taken".
"""

from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import OrchestratorError
from ..report.safetext import one_line
from ..report.statusview import StatusFileError, pid_alive, read_status
from ..service.requests import (
    RerunRequest,
    encode_request,
    new_request_name,
    requests_folder,
    select_cells,
)
from ..store.atomic import write_atomic

PICKUP_POLL_S = 0.005
STOPPED_STATES = ("stopping", "stopped")


class NoDaemon(OrchestratorError):
    """No daemon is running to take the request (exit 3); one line saying why."""


@dataclass
class RerunOutcome:
    cells: list[tuple[str, str]]  # what the status file says the request selects
    pid: int | None = None
    taken: bool = False  # the daemon took the file within the wait
    request: Path | None = None


def _live_daemon(status_path: Path) -> dict[str, Any]:
    """The status document of a running daemon; NoDaemon otherwise."""
    try:
        doc = read_status(status_path)
    except StatusFileError as exc:
        raise NoDaemon(f"no daemon is running: {exc}") from exc
    daemon = doc["daemon"]
    pid, state = daemon.get("pid"), daemon.get("state")
    if state in STOPPED_STATES or not pid_alive(pid):
        raise NoDaemon(
            f"no daemon is running (status file {status_path}: pid {pid}, state {state}); "
            "start one with: parallel-orchestrator run"
        )
    return doc


def _check_folder(folder: Path) -> None:
    """The daemon made it, 0700: a link, or a folder others could write, is refused."""
    try:
        st = os.lstat(folder)
    except FileNotFoundError:
        raise NoDaemon(f"no daemon takes rerun requests here ({folder} does not exist)") from None
    except OSError as exc:
        raise OrchestratorError(f"{folder}: cannot stat: {exc.strerror or exc}") from exc
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise OrchestratorError(
            f"{folder}: refusing to write a request: not a folder of ours that only we can write"
        )


def _cells_of(doc: dict[str, Any]) -> tuple[dict[str, list[str]], dict[tuple[str, str], Any]]:
    scripts_of: dict[str, list[str]] = {}
    last: dict[tuple[str, str], Any] = {}
    for hyp, entry in doc.get("hypotheses", {}).items():
        cells = entry.get("scripts") if isinstance(entry, dict) else None
        cells = cells if isinstance(cells, dict) else {}
        scripts_of[hyp] = list(cells)
        for name, cell in cells.items():
            last[(hyp, name)] = cell.get("last_result") if isinstance(cell, dict) else None
    return scripts_of, last


def request_rerun(
    status_path: Path,
    state_dir: Path,
    targets: list[str],
    failed: bool,
    wait_s: float = 5.0,
) -> RerunOutcome:
    """Drop a request for the daemon and wait up to ``wait_s`` for it to be taken.

    Raises NoDaemon (exit 3) and UnknownTargets (exit 2). Nothing is written when the
    request selects no cell (``--failed`` with every cell passing)."""
    doc = _live_daemon(status_path)
    request = RerunRequest(tuple(targets), failed)
    scripts_of, last = _cells_of(doc)
    outcome = RerunOutcome(select_cells(request, scripts_of, last), doc["daemon"].get("pid"))
    if not outcome.cells:
        return outcome
    folder = requests_folder(state_dir)
    _check_folder(folder)
    path = folder / new_request_name()
    try:
        # Not durable: a request is for a daemon running now, not for after a crash.
        write_atomic(path, encode_request(request), mode=0o600, durable=False)
    except OSError as exc:
        raise OrchestratorError(f"{path}: cannot write the request: {exc.strerror or exc}") from exc
    outcome.request = path
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if not os.path.lexists(path):
            outcome.taken = True
            return outcome
        time.sleep(PICKUP_POLL_S)
    if not pid_alive(outcome.pid):
        try:
            os.unlink(path)
        except FileNotFoundError:
            outcome.taken = True  # taken just now, as the daemon stopped
            return outcome
        raise NoDaemon(f"the daemon (pid {outcome.pid}) stopped before taking the request")
    return outcome


def describe(outcome: RerunOutcome, limit: int = 8) -> str:
    """One line for the terminal."""
    if not outcome.cells:
        return "nothing to rerun: every selected cell passed"
    names = [one_line(f"{h}/{s}") for h, s in outcome.cells]
    shown = ", ".join(names[:limit]) + (f", ... ({len(names) - limit} more)" * (len(names) > limit))
    count = f"{len(names)} cell{'s' * (len(names) != 1)}"
    if outcome.taken:
        return f"rerun: the daemon (pid {outcome.pid}) took {count}: {shown}"
    return (
        f"rerun: asked the daemon (pid {outcome.pid}) for {count}: {shown}; "
        f"it has not taken the request yet ({outcome.request})"
    )
