"""Reusable results on disk: ``<state_dir>/cache/<key>.json`` (+ ``<key>.log``).

An entry is trusted only whole. The run log is written first, then the JSON document
that names it with its size and digest, each through the project's atomic writer (temp
file, fsync, rename; mode 0600): a crash leaves either no entry or a complete one, and
an orphan log without its document is never read. Reading opens without following
symlinks and without blocking, and accepts only regular files: an entry that is a FIFO,
a folder, malformed, or whose log does not match is a miss (reported through
``on_problem``), never a crash.

Bounded by entry count and bytes; the oldest entries are dropped first.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import xxhash

from ..store.atomic import write_atomic
from ..store.safe_open import NotRegularFile, read_regular

ENTRY_FORMAT = 1
MAX_ENTRIES = 500
MAX_BYTES = 256 * 1024 * 1024
MAX_DOC_BYTES = 16 * 1024 * 1024  # a document (tails, per-test outcomes) larger is corrupt
MAX_LOG_BYTES = 16 * 1024 * 1024  # run logs are capped at 8 MiB by the runner
REUSABLE = ("pass", "fail")
_KEY_RE = re.compile(r"[0-9a-f]{16,64}")


@dataclass(frozen=True)
class CachedResult:
    """A finished pass/fail job as it can be handed to another job with equal inputs.

    ``results`` is opaque here: whatever test-level results the daemon keeps for a job
    (the ``tests`` summaries, the per-test outcomes), reused as they are.
    """

    key: str
    job_id: str
    hypothesis: str
    script: str
    result: str
    exit_code: int | None
    duration_s: float
    output_tail: str
    results: dict[str, Any] | None = None
    stored_at: float = field(default_factory=time.time)


ProblemHook = Callable[[Path, str], None]


class ResultStore:
    def __init__(
        self,
        directory: Path,
        *,
        max_entries: int = MAX_ENTRIES,
        max_bytes: int = MAX_BYTES,
        on_problem: ProblemHook | None = None,
    ) -> None:
        self.dir = directory
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.on_problem = on_problem

    def _doc_path(self, key: str) -> Path:
        if not _KEY_RE.fullmatch(key):
            raise ValueError(f"not a cache key: {key!r}")
        return self.dir / f"{key}.json"

    # -- reading ---------------------------------------------------------------------
    def get(self, key: str) -> tuple[CachedResult, bytes | None] | None:
        """The entry for ``key`` and its run log (None if it had none), or None."""
        path = self._doc_path(key)
        raw = _read_regular(path, MAX_DOC_BYTES)
        if raw is None:
            return None
        if isinstance(raw, str):
            return self._problem(path, raw)
        try:
            doc = json.loads(raw)
            entry, log_meta = _parse(doc, key)
        except (ValueError, TypeError, KeyError) as exc:
            return self._problem(path, f"malformed entry: {exc}")
        if log_meta is None:
            return entry, None
        log_path = self.dir / f"{key}.log"
        log = _read_regular(log_path, MAX_LOG_BYTES)
        if not isinstance(log, bytes):
            return self._problem(log_path, log or "run log missing")
        if len(log) != log_meta[0] or xxhash.xxh3_128_hexdigest(log) != log_meta[1]:
            return self._problem(log_path, "run log does not match its entry")
        return entry, log

    def _problem(self, path: Path, error: str) -> None:
        if self.on_problem is not None:
            self.on_problem(path, error)
        return None

    # -- writing ---------------------------------------------------------------------
    def put(self, entry: CachedResult, log: bytes | None) -> None:
        """Store ``entry`` (pass or fail only); raises OSError when the disk refuses."""
        if entry.result not in REUSABLE:
            raise ValueError(f"only pass/fail results are reusable, not {entry.result!r}")
        doc_path = self._doc_path(entry.key)
        doc: dict[str, Any] = {"format": ENTRY_FORMAT, **asdict(entry), "log": None}
        if log is not None and len(log) <= MAX_LOG_BYTES:
            write_atomic(self.dir / f"{entry.key}.log", log, mode=0o600, dir_mode=0o700)
            doc["log"] = {"size": len(log), "xxh3_128": xxhash.xxh3_128_hexdigest(log)}
        write_atomic(doc_path, json.dumps(doc).encode(), mode=0o600, dir_mode=0o700)
        self.prune()

    def prune(self) -> None:
        """Drop the oldest entries beyond the count and byte bounds (and orphan logs)."""
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return
        entries: list[tuple[float, str, int]] = []
        for name in names:
            stem, _dot, ext = name.partition(".")
            if not _KEY_RE.fullmatch(stem) or ext not in ("json", "log"):
                continue
            try:
                st = os.lstat(self.dir / name)
            except FileNotFoundError:
                continue
            if ext == "log" and f"{stem}.json" not in names:
                if time.time() - st.st_mtime > 60:  # not a put in progress
                    _unlink(self.dir / name)
                continue
            if ext == "json":
                log_size = _size(self.dir / f"{stem}.log")
                entries.append((st.st_mtime, stem, st.st_size + log_size))
        entries.sort()
        total = sum(size for _, _, size in entries)
        while entries and (len(entries) > self.max_entries or total > self.max_bytes):
            _, stem, size = entries.pop(0)
            _unlink(self.dir / f"{stem}.json")
            _unlink(self.dir / f"{stem}.log")
            total -= size

    def keys(self) -> list[str]:
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return []
        return sorted(n[:-5] for n in names if n.endswith(".json") and _KEY_RE.fullmatch(n[:-5]))


def _parse(doc: Any, key: str) -> tuple[CachedResult, tuple[int, str] | None]:
    if not isinstance(doc, dict) or doc.get("format") != ENTRY_FORMAT:
        raise ValueError("unknown format")
    if doc["key"] != key:
        raise ValueError("entry is for another key")
    if doc["result"] not in REUSABLE:
        raise ValueError(f"result {doc['result']!r} is not reusable")
    exit_code = doc["exit_code"]
    if exit_code is not None and type(exit_code) is not int:
        raise TypeError("exit_code")
    results = doc.get("results")
    if results is not None and not isinstance(results, dict):
        raise TypeError("results")
    entry = CachedResult(
        key=key,
        job_id=_str(doc, "job_id"),
        hypothesis=_str(doc, "hypothesis"),
        script=_str(doc, "script"),
        result=doc["result"],
        exit_code=exit_code,
        duration_s=float(doc["duration_s"]),
        output_tail=_str(doc, "output_tail"),
        results=results,
        stored_at=float(doc["stored_at"]),
    )
    log = doc.get("log")
    if log is None:
        return entry, None
    if not isinstance(log, dict) or type(log.get("size")) is not int:
        raise TypeError("log")
    return entry, (log["size"], _str(log, "xxh3_128"))


def _str(doc: dict[str, Any], name: str) -> str:
    value = doc[name]
    if not isinstance(value, str):
        raise TypeError(name)
    return value


def _read_regular(path: Path, limit: int) -> bytes | str | None:
    """The bytes of a regular file (never through a symlink, never blocking on a FIFO); a
    problem as a string; None when there is no file."""
    try:
        data = read_regular(path, limit + 1)
    except FileNotFoundError:
        return None
    except NotRegularFile:
        return "not a regular file"
    except OSError as exc:
        return f"cannot read: {exc.strerror or exc}"
    if len(data) > limit:
        return f"larger than {limit} bytes"
    return data


def _size(path: Path) -> int:
    try:
        return os.lstat(path).st_size
    except OSError:
        return 0


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
