"""Text and Markdown views of a comparison (``compare`` and ``compare --markdown``).

The text view answers "which one wins, and at what cost" at a glance: one row per
hypothesis in rank order, one column per script (its result and passed/total tests), the
number of tests each fixed and broke, then the ids themselves. The Markdown view is the
same table for a pull-request description.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from .compare import MAX_LISTED_IDS
from .safetext import one_line
from .statusview import paint, state_colour, state_mark


def _totals(entry: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    fixed: list[str] = []
    broken: list[str] = []
    for script in entry["scripts"].values():
        fixed += script["fixed"]
        broken += script["broken"]
    return fixed, broken


def _script_text(script: Mapping[str, Any], ascii_only: bool) -> str:
    result = script["result"]
    if result is None:
        mark, word = state_mark("never_run", ascii_only)
    else:
        mark, word = state_mark(result, ascii_only)
    tests = script["tests"]
    text = f"{mark} {word}"
    if tests:
        text += f" {tests['passed']}/{tests['total']}"
    return text


def _listed(ids: list[str]) -> str:
    shown = ", ".join(one_line(t) for t in ids[:MAX_LISTED_IDS])
    more = len(ids) - MAX_LISTED_IDS
    return shown + (f" (+{more} more)" if more > 0 else "")


def render_text(
    comparison: Mapping[str, Any], *, color: bool = False, ascii_only: bool = False
) -> str:
    baseline = comparison["baseline"]
    entries = comparison["hypotheses"]
    scripts = list(entries[0]["scripts"]) if entries else []
    header = ["RANK", "HYPOTHESIS", "BRANCH", *(one_line(s) for s in scripts), "FIXED", "BROKEN"]
    rows: list[list[tuple[str, str | None]]] = [[(h, None) for h in header]]
    for entry in entries:
        fixed, broken = _totals(entry)
        name = one_line(entry["id"]) + (" (baseline)" if entry["id"] == baseline else "")
        branch = one_line(entry["branch"] or "-")
        row = [(str(entry["rank"]), None), (name, None), (branch, None)]
        for script in entry["scripts"].values():
            row.append((_script_text(script, ascii_only), state_colour(script["result"])))
        row.append((str(len(fixed)), "green" if fixed else None))
        row.append((str(len(broken)), "red" if broken else None))
        rows.append(row)
    widths = [max(len(row[i][0]) for row in rows) for i in range(len(header))]
    lines = [f"baseline: {one_line(baseline)}", ""]
    for index, row in enumerate(rows):
        cells = [paint(t, c, color) + " " * (widths[i] - len(t)) for i, (t, c) in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    details = []
    for entry in entries:
        fixed, broken = _totals(entry)
        if fixed:
            details.append(f"{one_line(entry['id'])} fixed:  {_listed(fixed)}")
        if broken:
            details.append(f"{one_line(entry['id'])} broke:  {_listed(broken)}")
    if details:
        lines.append("")
        lines.extend(details)
    return "\n".join(lines) + "\n"


def _md(text: str) -> str:
    """A table cell: pipes escaped, control characters made visible."""
    return one_line(text).replace("\\", "\\\\").replace("|", "\\|")


def _md_code(text: str) -> str:
    """A code span inside a table cell (pipes escaped, as the table needs)."""
    return "`" + _md(text).replace("`", "'") + "`"


def _md_inline_code(text: str) -> str:
    """A code span outside a table: shown exactly (no pipe escapes, which would show),
    fenced by more backticks than the longest run inside it (CommonMark)."""
    shown = one_line(text)
    longest = max((len(run) for run in re.findall("`+", shown)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if shown.startswith("`") or shown.endswith("`") else ""
    return f"{fence}{pad}{shown}{pad}{fence}"


def render_markdown(comparison: Mapping[str, Any]) -> str:
    baseline = comparison["baseline"]
    entries = comparison["hypotheses"]
    scripts = list(entries[0]["scripts"]) if entries else []
    lines = [f"**Baseline:** {_md_code(baseline)}", ""]
    header = ["Rank", "Hypothesis", "Branch", *(_md(s) for s in scripts), "Fixed", "Broken"]
    lines.append("| " + " | ".join(header) + " |")
    aligns = ["---:", "---", "---", *("---" for _ in scripts), "---:", "---:"]
    lines.append("|" + "|".join(aligns) + "|")
    for entry in entries:
        fixed, broken = _totals(entry)
        name = _md_code(entry["id"]) + (" (baseline)" if entry["id"] == baseline else "")
        branch = _md_code(entry["branch"]) if entry["branch"] else "-"
        cells = [str(entry["rank"]), name, branch]
        cells += [_md(_script_text(s, ascii_only=False)) for s in entry["scripts"].values()]
        cells += [str(len(fixed)), str(len(broken))]
        lines.append("| " + " | ".join(cells) + " |")
    details = []
    for entry in entries:
        fixed, broken = _totals(entry)
        for word, ids in (("fixed", fixed), ("broke", broken)):
            if ids:
                shown = ", ".join(_md_inline_code(t) for t in ids[:MAX_LISTED_IDS])
                more = len(ids) - MAX_LISTED_IDS
                suffix = f" and {more} more" if more > 0 else ""
                details.append(f"- {_md_inline_code(entry['id'])} {word}: {shown}{suffix}")
    if details:
        lines += ["", *details]
    return "\n".join(lines) + "\n"
