"""Rerun requests: files dropped into ``<state_dir>/requests/`` by ``parallel-orchestrator
rerun`` (and ``status --watch``'s keys), taken by the daemon.

No socket: the state dir is owner-only (0700), so whoever can write a request there
could edit the config and the worktrees anyway. The writer uses the atomic writer
(a ``.<name>.<random>.tmp`` temp file renamed into place), so the daemon never reads
half a request. A request names targets (``HYPOTHESIS`` or ``HYPOTHESIS/SCRIPT``; none
means every cell) and ``failed`` (only cells whose last result is not pass).

Every file is still checked as untrusted input: a regular file (no symlink, FIFO or
folder), at most ``MAX_REQUEST_BYTES``, a JSON object of exactly the known keys and
types. Anything else is logged (``rerun_request_invalid``) and removed; the daemon
removes valid requests as it takes them, so ``rerun`` sees its file go.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import stat
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ..errors import OrchestratorError
from ..store.folders import make_dirs
from ..store.safe_open import read_regular

REQUESTS_DIR = "requests"
REQUEST_VERSION = 1
REQUEST_NAME_RE = re.compile(r"[0-9]{1,20}-[0-9a-f]{8}\.json")
TEMP_NAME_RE = re.compile(r"\..+\.[0-9a-f]{8}\.tmp")
MAX_REQUEST_BYTES = 64 * 1024
MAX_TARGETS = 1000
MAX_TARGET_CHARS = 512
STALE_TEMP_S = 60.0  # a temp file this old is a writer that died mid-write
_FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)


class RequestInvalid(OrchestratorError):
    """A request file that is not a valid request; one line saying why."""


class UnknownTargets(OrchestratorError):
    """Names that are no hypothesis or cell of the daemon; the message names them."""


@dataclass(frozen=True)
class RerunRequest:
    targets: tuple[str, ...]
    failed: bool


def requests_folder(state_dir: Path) -> Path:
    return state_dir / REQUESTS_DIR


def new_request_name() -> str:
    """Sortable by creation time (the daemon takes requests in that order)."""
    return f"{time.time_ns()}-{secrets.token_hex(4)}.json"


def encode_request(request: RerunRequest) -> bytes:
    doc = {"version": REQUEST_VERSION, "targets": list(request.targets), "failed": request.failed}
    return json.dumps(doc).encode("utf-8")


def parse_request(data: bytes) -> RerunRequest:
    """The request in ``data``; RequestInvalid says what is wrong with it."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise RequestInvalid(f"not JSON ({type(exc).__name__})") from exc
    if not isinstance(doc, dict) or set(doc) != {"version", "targets", "failed"}:
        raise RequestInvalid("expected an object with exactly version, targets, failed")
    if doc["version"] != REQUEST_VERSION:
        raise RequestInvalid(f"unknown version {doc['version']!r}")
    targets = doc["targets"]
    if not isinstance(targets, list) or len(targets) > MAX_TARGETS:
        raise RequestInvalid(f"targets: expected a list of at most {MAX_TARGETS} names")
    for target in targets:
        if not isinstance(target, str) or not 0 < len(target) <= MAX_TARGET_CHARS:
            raise RequestInvalid("targets: expected non-empty strings")
        if any(ord(ch) < 0x20 or ch == "\x7f" for ch in target):
            raise RequestInvalid("targets: control characters in a name")
    if not isinstance(doc["failed"], bool):
        raise RequestInvalid("failed: expected true or false")
    return RerunRequest(tuple(targets), doc["failed"])


def select_cells(
    request: RerunRequest,
    scripts_of: Mapping[str, Iterable[str]],
    last_result: Mapping[tuple[str, str], str | None],
) -> list[tuple[str, str]]:
    """The (hypothesis, script) cells a request names, in the daemon's order.

    ``scripts_of``: each hypothesis' scripts; ``last_result``: each cell's last result
    (missing or None: never run). Unknown names raise UnknownTargets naming every one.
    A target is a hypothesis when one has that id, else ``HYPOTHESIS/SCRIPT``.
    """
    every = [(h, s) for h, names in scripts_of.items() for s in names]
    if request.targets:
        wanted: set[tuple[str, str]] = set()
        unknown = []
        for target in request.targets:
            if target in scripts_of:
                wanted.update((target, s) for s in scripts_of[target])
                continue
            hyp, sep, script = target.rpartition("/")
            if sep and hyp in scripts_of and script in set(scripts_of[hyp]):
                wanted.add((hyp, script))
            else:
                unknown.append(target)
        if unknown:
            raise UnknownTargets(_unknown_message(unknown, scripts_of))
        every = [cell for cell in every if cell in wanted]
    if request.failed:
        every = [cell for cell in every if last_result.get(cell) != "pass"]
    return every


def _unknown_message(unknown: list[str], scripts_of: Mapping[str, Iterable[str]]) -> str:
    hyps = ", ".join(sorted(scripts_of)) or "none"
    scripts = sorted({s for names in scripts_of.values() for s in names})
    return (
        f"no such hypothesis or HYPOTHESIS/SCRIPT: {', '.join(unknown)} "
        f"(hypotheses: {hyps}; scripts: {', '.join(scripts) or 'none'})"
    )


class RequestInbox:
    """The daemon's side of the requests folder (all blocking: call it off the loop)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._unremovable: set[str] = set()  # warned about once, not at every scan
        self._refused_folder = False  # a link in the folder's place: said once

    def prepare(self) -> None:
        """Create the folder, owner-only; raises OSError."""
        make_dirs(self.folder, 0o700)

    def collect(self) -> list[tuple[str, RerunRequest | str]]:
        """Take every request in the folder, oldest first: (file name, request), or
        (file name, why it was rejected) for a file that is no valid request. Every
        file returned has been removed (or could not be, said once).

        The folder is opened without following a link and scanned through that
        descriptor: everything scanned is removed, so a link put in the folder's place
        (while the daemon runs) must not lead the scan into a folder of files to keep."""
        try:
            dir_fd = os.open(self.folder, _FOLDER_FLAGS)
        except FileNotFoundError:
            return []
        except OSError as exc:
            if self._refused_folder:
                return []
            self._refused_folder = True
            why = "a symlink" if exc.errno == errno.ELOOP else exc.strerror or str(exc)
            return [(f"{REQUESTS_DIR}/", f"not the daemon's own folder ({why}): nothing taken")]
        try:
            return self._collect_in(dir_fd)
        finally:
            os.close(dir_fd)

    def _collect_in(self, dir_fd: int) -> list[tuple[str, RerunRequest | str]]:
        entries = sorted(os.scandir(dir_fd), key=lambda e: e.name)
        taken: list[tuple[str, RerunRequest | str]] = []
        now = time.time()
        for entry in entries:
            if entry.name in self._unremovable:
                continue
            if TEMP_NAME_RE.fullmatch(entry.name):
                if self._stale(entry, now):
                    taken.append((entry.name, "a writer's temp file left behind"))
                    self._remove(entry, dir_fd)
                continue  # being written: its rename brings it back
            taken.append((entry.name, self._take(entry, dir_fd)))
        return taken

    def _take(self, entry: os.DirEntry[str], dir_fd: int) -> RerunRequest | str:
        try:
            if not REQUEST_NAME_RE.fullmatch(entry.name):
                return "not a request file name"
            try:
                data = read_regular(Path(entry.name), MAX_REQUEST_BYTES + 1, dir_fd=dir_fd)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    return "a symlink"
                return f"cannot read: {exc.strerror or exc}"
            if len(data) > MAX_REQUEST_BYTES:
                return f"larger than {MAX_REQUEST_BYTES} bytes"
            try:
                return parse_request(data)
            except RequestInvalid as exc:
                return str(exc)
        finally:
            self._remove(entry, dir_fd)

    @staticmethod
    def _stale(entry: os.DirEntry[str], now: float) -> bool:
        with contextlib.suppress(OSError):
            return now - entry.stat(follow_symlinks=False).st_mtime > STALE_TEMP_S
        return False

    def _remove(self, entry: os.DirEntry[str], dir_fd: int) -> None:
        try:
            mode = entry.stat(follow_symlinks=False).st_mode
            if stat.S_ISDIR(mode):
                os.rmdir(entry.name, dir_fd=dir_fd)
            else:
                os.unlink(entry.name, dir_fd=dir_fd)
        except FileNotFoundError:
            pass
        except OSError:
            self._unremovable.add(entry.name)
