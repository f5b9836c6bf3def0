"""Text from files and processes made safe to show on a terminal.

Worktree folder names, branch names and job output come from whoever controls the
repository or the job; printed raw, an escape sequence in them could retitle the
terminal, hide lines or fake a result. Everything shown is passed through here first:
control characters (C0, DEL, C1) become visible backslash escapes, and undecodable
bytes of a file name (surrogate escapes) become ``\\xNN``.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

# C0 controls except tab/newline, DEL, C1 controls; lone surrogates (fsdecode'd bytes);
# and the bidirectional overrides/isolates/marks, which reorder what follows them on
# screen ("Trojan Source"): a test id could make "ssap" read as "pass".
_BIDI = "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
_UNSAFE = re.compile(f"[\\x00-\\x08\\x0b-\\x1f\\x7f-\\x9f\\ud800-\\udfff{_BIDI}]")
_UNSAFE_IN_LINE = re.compile(f"[\\x00-\\x1f\\x7f-\\x9f\\ud800-\\udfff{_BIDI}]")


def _escape(match: re.Match[str]) -> str:
    ch = match.group(0)
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    if code > 0xFF:
        return f"\\u{code:04x}"
    return {"\t": "\\t", "\n": "\\n", "\r": "\\r"}.get(ch, f"\\x{code:02x}")


def one_line(text: object) -> str:
    """``text`` as one printable line: every control character escaped."""
    return _UNSAFE_IN_LINE.sub(_escape, str(text))


def block(text: str) -> str:
    """Multi-line ``text`` (job output) with lines and tabs kept, other controls escaped.

    A lone ``\\r`` (progress bars redrawing a line) would let a job overwrite what was
    printed before it on the terminal, so it is escaped too; ``\\r\\n`` stays a newline.
    """
    return _UNSAFE.sub(_escape, text.replace("\r\n", "\n"))


_UNSAFE_IN_JSON = re.compile(f"[\\x7f-\\x9f\\ud800-\\udfff{_BIDI}]")


def json_text(doc: object, *, indent: int | None = 2) -> str:
    """JSON for a terminal or a pipe: non-ASCII kept readable, but DEL, C1 controls, bidi
    controls and lone surrogates written as ``\\uXXXX`` escapes (json leaves them raw), so the text
    is valid JSON, safe on a terminal, and always encodable as UTF-8."""
    text = json.dumps(doc, indent=indent, ensure_ascii=False, allow_nan=False)
    return _UNSAFE_IN_JSON.sub(lambda m: f"\\u{ord(m.group(0)):04x}", text)


def finite(value: Any) -> Any:
    """``value`` with every non-finite float (inf, nan: not JSON) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite(item) for item in value]
    return value
