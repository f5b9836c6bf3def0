"""Reading RustNotify's error strings: which path a decode error names.

watchfiles 1.3 cannot decode a file name that is not UTF-8; it fails with a message that
quotes the path in Rust's ``{:?}`` form. The watcher recovers the path from it so that the
change is not lost and the root holding it can be stat-polled for a while.
"""

from __future__ import annotations

import os
import re

_DECODE_RE = re.compile(r'Unable to decode path "(?P<path>(?:[^"\\]|\\.)*)"')
# Rust's one-character escapes in a Debug-formatted string.
_SIMPLE_ESCAPES = {
    "n": b"\n",
    "t": b"\t",
    "r": b"\r",
    "0": b"\0",
    "\\": b"\\",
    '"': b'"',
    "'": b"'",
}


def _unescape_rust_debug(text: str) -> bytes:
    """Invert Rust's ``{:?}`` of an OsStr: ``\\xNN`` bytes, ``\\u{...}``, ``\\n`` ..."""
    out = bytearray()
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            if nxt == "x" and i + 3 < len(text):
                out.append(int(text[i + 2 : i + 4], 16))
                i += 4
                continue
            if nxt == "u" and text[i + 2 : i + 3] == "{":
                end = text.index("}", i)
                out += chr(int(text[i + 3 : end], 16)).encode("utf-8")
                i = end + 1
                continue
            if nxt in _SIMPLE_ESCAPES:
                out += _SIMPLE_ESCAPES[nxt]
                i += 2
                continue
        out += c.encode("utf-8")
        i += 1
    return bytes(out)


def undecodable_path(error: str) -> str | None:
    """The path named by watchfiles' decode error, as ``os.fsdecode`` would give it."""
    m = _DECODE_RE.search(error)
    if not m:
        return None
    try:
        return os.fsdecode(_unescape_rust_debug(m.group("path")))
    except (ValueError, IndexError):
        return None
