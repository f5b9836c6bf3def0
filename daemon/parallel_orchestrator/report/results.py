"""Per-test outcomes of the latest finished job of each cell, kept for ``compare``.

``<state_dir>/results/<hypothesis>/<script>.json`` is ``{"job_id", "tests": {"<id>":
"passed|failed|error|skipped"}}``, replaced atomically (a reader never sees half a file),
mode 0600 in 0700 folders: test names say what is being worked on.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..store.atomic import write_atomic
from ..store.safe_open import open_regular
from .junit import OUTCOMES

RESULTS_DIR = "results"
MAX_RESULTS_BYTES = 256 * 1024 * 1024  # far beyond any suite: a damaged file stays bounded


def results_path(state_dir: Path, hypothesis: str, script: str) -> Path:
    return state_dir / RESULTS_DIR / hypothesis / f"{script}.json"


def results_document(job_id: str, tests: Mapping[str, str]) -> dict[str, Any]:
    return {"job_id": job_id, "tests": dict(tests)}


def merge_results(
    previous: Mapping[str, Any] | None, job_id: str, tests: Mapping[str, str]
) -> dict[str, Any]:
    """The outcome list after a partial run (only some tests ran): tests in ``tests`` take
    their new outcome, the others keep the one ``previous`` recorded; ``job_id`` is the
    new job's. ``previous`` may be None (nothing recorded yet) or a document read back
    with ``read_results``."""
    merged: dict[str, str] = {}
    if previous is not None:
        old = previous.get("tests")
        if isinstance(old, Mapping):
            merged.update({k: v for k, v in old.items() if isinstance(k, str) and v in OUTCOMES})
    merged.update(tests)
    return results_document(job_id, merged)


def write_results(state_dir: Path, hypothesis: str, script: str, doc: Mapping[str, Any]) -> Path:
    """Replace the cell's results file with ``doc``; raises OSError."""
    path = results_path(state_dir, hypothesis, script)
    data = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "replace")
    write_atomic(path, data, mode=0o600, dir_mode=0o700)
    return path


def read_results(state_dir: Path, hypothesis: str, script: str) -> dict[str, Any] | None:
    """The cell's results document, or None when absent or not one (never raises for a
    damaged file: ``compare`` treats it as no test-level results)."""
    if not (_one_name(hypothesis) and _one_name(script)):
        return None  # names from a status file copy must not lead out of results/
    path = results_path(state_dir, hypothesis, script)
    try:
        with os.fdopen(open_regular(path), "rb") as f:
            doc = json.loads(f.read(MAX_RESULTS_BYTES))
    except (OSError, ValueError, RecursionError):  # RecursionError: "[[[[..." nested deep
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("tests"), dict):
        return None
    tests = {k: v for k, v in doc["tests"].items() if isinstance(k, str) and v in OUTCOMES}
    return {"job_id": doc.get("job_id"), "tests": tests}


def _one_name(part: str) -> bool:
    """A single folder or file name (hypothesis ids are folder names, script names are
    checked by the config): no separator, not ``.``/``..``, no NUL."""
    return part not in ("", ".", "..") and "/" not in part and "\0" not in part


def remove_results(state_dir: Path, hypothesis: str, script: str) -> None:
    """A job without readable reports: its cell has no test-level results any more (a
    stale list would make ``compare`` credit fixes the new code may not have)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(results_path(state_dir, hypothesis, script))
