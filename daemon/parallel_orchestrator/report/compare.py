"""``compare``: which hypothesis is best, and what each fixed or broke against the baseline.

Reads only files the daemon keeps — the status file (results, durations, branches) and
``<state_dir>/results/`` (per-test outcomes) — so it works while the daemon runs, after
it stopped, or on a copy. Per hypothesis and script, against the baseline's latest result:
``fixed`` (failed or errored in the baseline, passed here) and ``broken`` (passed in the
baseline, failed or errored here). Rank 1 is best: fewest non-passing scripts, then fewest
failing tests, then most fixed, then shortest total duration (then the id, so the order
is stable).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import OrchestratorError
from .results import read_results

SCHEMA_VERSION = 1
BAD_OUTCOMES = ("failed", "error")
COUNT_KEYS = ("total", "passed", "failed", "errors", "skipped")
MAX_LISTED_IDS = 10  # per hypothesis and kind in the text and markdown views


class CompareError(OrchestratorError):
    """A usage problem (an unknown ``--baseline`` or ``--script``); one line naming it."""


def guess_main_worktree(doc: Mapping[str, Any]) -> str | None:
    """Without a config: the hypothesis whose ``.git`` is a folder (the main worktree)."""
    for hyp_id, hyp in doc.get("hypotheses", {}).items():
        path = hyp.get("path") if isinstance(hyp, Mapping) else None
        if isinstance(path, str) and os.path.isdir(os.path.join(path, ".git")):
            return str(hyp_id)
    return None


def _counts(cell: Mapping[str, Any]) -> dict[str, int] | None:
    tests = cell.get("tests")
    if not isinstance(tests, Mapping):
        return None
    counts = {}
    for key in COUNT_KEYS:
        value = tests.get(key)
        counts[key] = value if isinstance(value, int) and not isinstance(value, bool) else 0
    return counts


def _diff(baseline: Mapping[str, str], here: Mapping[str, str]) -> tuple[list[str], list[str]]:
    fixed = [t for t, o in here.items() if o == "passed" and baseline.get(t) in BAD_OUTCOMES]
    broken = [t for t, o in here.items() if o in BAD_OUTCOMES and baseline.get(t) == "passed"]
    return sorted(fixed), sorted(broken)


def _script_entry(
    cell: Mapping[str, Any], tests: Mapping[str, str] | None, base: Mapping[str, str] | None
) -> dict[str, Any]:
    fixed: list[str] = []
    broken: list[str] = []
    if tests is not None and base is not None:
        fixed, broken = _diff(base, tests)
    return {
        "result": cell.get("last_result"),
        "tests": _counts(cell),
        "fixed": fixed,
        "broken": broken,
    }


def _rank_key(entry: Mapping[str, Any], durations: float) -> tuple[Any, ...]:
    scripts = entry["scripts"].values()
    not_passing = sum(1 for s in scripts if s["result"] != "pass")
    failing = sum(
        (s["tests"] or {}).get("failed", 0) + (s["tests"] or {}).get("errors", 0) for s in scripts
    )
    fixed = sum(len(s["fixed"]) for s in scripts)
    return (not_passing, failing, -fixed, durations, entry["id"])


def _duration(cell: Mapping[str, Any]) -> float:
    value = cell.get("duration_s")
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def build_comparison(
    doc: Mapping[str, Any],
    state_dir: Path,
    baseline: str,
    scripts: Sequence[str] = (),
    *,
    baseline_from: str = "--baseline",
) -> dict[str, Any]:
    """The ``compare --json`` document; raises ``CompareError`` for an unknown baseline or
    script name (``baseline_from`` says where the baseline was named, for the message)."""
    hypotheses: Mapping[str, Any] = doc.get("hypotheses", {})
    if baseline not in hypotheses:
        known = ", ".join(sorted(hypotheses)) or "none"
        raise CompareError(f"{baseline_from} {baseline}: no such hypothesis (known: {known})")
    all_scripts: dict[str, None] = {}
    for hyp in hypotheses.values():
        for name in hyp.get("scripts", {}):
            all_scripts.setdefault(name, None)
    for name in scripts:
        if name not in all_scripts:
            known = ", ".join(all_scripts) or "none"
            raise CompareError(f"--script {name}: no such script (known: {known})")
    chosen = [n for n in all_scripts if not scripts or n in scripts]
    outcomes: dict[tuple[str, str], dict[str, str] | None] = {}
    for hyp_id in hypotheses:
        for name in chosen:
            found = read_results(state_dir, hyp_id, name)
            outcomes[hyp_id, name] = found["tests"] if found is not None else None
    entries = []
    for hyp_id, hyp in hypotheses.items():
        cells = hyp.get("scripts", {})
        entry: dict[str, Any] = {"id": hyp_id, "rank": 0, "branch": hyp.get("branch") or None}
        entry["scripts"] = {
            name: _script_entry(
                cells.get(name) or {}, outcomes[hyp_id, name], outcomes[baseline, name]
            )
            for name in chosen
        }
        total = sum(_duration(cells.get(name) or {}) for name in chosen)
        entries.append((_rank_key(entry, total), entry))
    entries.sort(key=lambda item: item[0])
    ranked = []
    for position, (_, entry) in enumerate(entries, start=1):
        entry["rank"] = position
        ranked.append(entry)
    return {"schema_version": SCHEMA_VERSION, "baseline": baseline, "hypotheses": ranked}
