"""``output``: finding the captured output of a cell's latest job, or of a given job.

Run logs live at ``<state_dir>/runs/<hypothesis>/<script>/<job_id>.log`` (the daemon and
``once`` alike). The latest is the one the status cell names, else the newest on disk
(``once`` does not write the status file).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import OrchestratorError
from .safetext import one_line

RUNS_DIR = "runs"
_JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")


class RunLogError(OrchestratorError):
    """A usage problem (a malformed cell or job id); one line naming it."""


def split_cell(text: str) -> tuple[str, str]:
    """``HYPOTHESIS/SCRIPT`` -> (hypothesis, script)."""
    hyp, sep, script = text.rpartition("/")
    if not sep or not _is_name(hyp) or not _is_name(script):
        raise RunLogError(f"{one_line(text)}: expected HYPOTHESIS/SCRIPT (e.g. main/tests)")
    return hyp, script


def _is_name(part: str) -> bool:
    """One folder name under ``runs/``: hypothesis ids are folder names and script names
    are validated by the config, so a ``/``, ``.``/``..`` or NUL is never one, and would
    lead ``output`` out of the state dir."""
    return part not in ("", ".", "..") and "/" not in part and "\0" not in part


def run_folder(state_dir: Path, hypothesis: str, script: str) -> Path:
    return state_dir / RUNS_DIR / hypothesis / script


def find_run_log(
    state_dir: Path,
    hypothesis: str,
    script: str,
    job_id: str | None = None,
    status: Mapping[str, Any] | None = None,
) -> Path | None:
    """The run log to show, or None when there is none."""
    folder = run_folder(state_dir, hypothesis, script)
    if job_id is not None:
        if not _JOB_ID.match(job_id):
            raise RunLogError(f"--job {job_id}: not a job id (e.g. 3fa2c1-j12)")
        path = folder / f"{job_id}.log"
        return path if path.is_file() else None
    cell = _cell(status, hypothesis, script)
    named = cell.get("log_path") if cell else None
    if isinstance(named, str) and Path(named).is_file():
        return Path(named)
    try:
        logs = [p for p in folder.glob("*.log") if p.is_file()]
    except OSError:
        return None
    return max(logs, key=lambda p: p.stat().st_mtime_ns, default=None)


def _cell(status: Mapping[str, Any] | None, hyp: str, script: str) -> Mapping[str, Any] | None:
    if status is None:
        return None
    found = status.get("hypotheses", {}).get(hyp, {})
    cell = found.get("scripts", {}).get(script) if isinstance(found, Mapping) else None
    return cell if isinstance(cell, Mapping) else None
