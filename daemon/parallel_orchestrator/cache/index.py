"""Per-worktree file digests, kept current from the watcher's change lists.

A job's input key needs the content of every watched file of its worktree. Hashing the
whole tree per job would cost a full read of it; instead each worktree keeps the digest
of every file that some cached script watches, and the watcher's changed paths mark
what to look at again: a one-file save costs one ``lstat`` and one file's hash.

Each distinct ``watch`` glob set is a *view*: a running set hash of its files, the sum
modulo 2**128 of one XXH3-128 per (path, kind, content digest). A change adjusts the sum
by the old and new terms of the files it touched, so the view's digest never needs a
pass over all files. (An additive set hash is only weak against someone *crafting*
collisions; the inputs here are the user's own files.)

Threading: ``mark_changed`` and ``invalidate`` run on the event loop and only touch a
small set under a short lock; ``view_digest`` does all file system work, in a worker
thread, one call per index at a time.
"""

from __future__ import annotations

import itertools
import os
import re
import stat
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import xxhash

from ..repo.pathglob import compile_glob
from .digests import DigestStopped, FileDigest, digest_file
from .listing import IgnoreRules, git_ignored, is_git_worktree, list_files

MASK_128 = (1 << 128) - 1
RECENT_MARKS = 4096  # change marks kept for ``changed_during``; older ones: "changed"
EVERYTHING = ""  # a mark that may touch any file (an invalidation)
_SERIALS = itertools.count(1)


def globs_regex(globs: tuple[str, ...]) -> re.Pattern[str]:
    """One regex matching exactly what ``pathglob.matches_any(path, globs)`` matches."""
    if not globs:
        return re.compile(r"(?!)")
    return re.compile("|".join(f"(?:{compile_glob(g).pattern})" for g in globs), re.DOTALL)


@dataclass
class _View:
    globs: tuple[str, ...]
    regex: re.Pattern[str]
    total: int = 0
    count: int = 0
    unreadable: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class ViewDigest:
    """The content digest of one watch-glob set in one worktree.

    ``value`` is None when some matched file could not be read (``problem`` names it):
    the job's inputs are then unknown and it must run uncached.
    """

    value: bytes | None
    files: int
    problem: str = ""
    seq: int = 0  # the last change mark this digest includes (see ``changed_during``)


class FileDigestIndex:
    """File digests of one worktree, for every glob set asked about so far."""

    def __init__(self, root: Path, rules: IgnoreRules) -> None:
        self.root = root
        self.rules = rules
        self._base = os.fsdecode(root)
        self.files: dict[str, FileDigest] = {}
        self._views: dict[tuple[str, ...], _View] = {}
        self._wanted = globs_regex(())
        self._built = False
        self._pending: set[str] = set()
        self._tracking = False  # changes are kept from the first digest on
        self._full = False
        self._seq = 0  # change marks so far
        self._recent: deque[tuple[int, float, tuple[str, ...]]] = deque(maxlen=RECENT_MARKS)
        self._pending_lock = threading.Lock()
        self._compute_lock = threading.Lock()
        # Which index a key came from: change marks are numbered per index, so a job
        # keyed by a replaced index cannot be judged by the new one's marks.
        self.serial = next(_SERIALS)
        self.rehashed = 0  # files hashed so far: what the tests and benchmarks observe
        # Set when the index is dropped (shutdown, worktree gone): a scan in progress
        # ends with ``DigestStopped`` instead of hashing on.
        self.stop = threading.Event()

    # -- event loop side -------------------------------------------------------------
    def mark_changed(self, relpaths: Iterable[str], when: float | None = None) -> None:
        """Look at these worktree-relative paths again before the next digest; ``when``
        (``time.monotonic()``) is when they changed, as far as the watcher knows.

        Before the first digest was asked for, nothing is kept: it lists everything."""
        rels = tuple(relpaths)
        with self._pending_lock:
            if self._tracking and rels:
                self._pending.update(rels)
                self._note(rels, when)

    def invalidate(self) -> None:
        """List the worktree anew before the next digest (ignore rules changed, or the
        watcher may have missed changes); unchanged files are not rehashed."""
        with self._pending_lock:
            self._full = True
            if self._tracking:
                self._note((EVERYTHING,), None)

    def _note(self, rels: tuple[str, ...], when: float | None) -> None:
        self._seq += 1
        self._recent.append((self._seq, time.monotonic() if when is None else when, rels))

    # -- worker thread side ----------------------------------------------------------
    def view_digest(self, globs: tuple[str, ...]) -> ViewDigest:
        """The digest of the files matched by ``globs``, after applying pending changes.

        Blocking (file system and git): call it from a worker thread.
        """
        with self._compute_lock:
            with self._pending_lock:
                self._tracking = True
                pending, self._pending = self._pending, set()
                full, self._full = self._full, False
                seq = self._seq
            if globs not in self._views:
                self._views[globs] = _View(globs, globs_regex(globs))
                every = tuple(dict.fromkeys(g for v in self._views for g in v))
                self._wanted = globs_regex(every)
                full = True
            try:
                if full or not self._built:
                    self._rescan()
                else:
                    self._apply(pending)
            except DigestStopped:
                with self._pending_lock:
                    self._full = True  # the pending changes are only partly applied
                raise
            view = self._views[globs]
            if view.unreadable:
                first = min(view.unreadable)
                return ViewDigest(None, view.count, f"cannot read {first}", seq)
            return ViewDigest(view.total.to_bytes(16, "big"), view.count, seq=seq)

    def changed_during(
        self, globs: tuple[str, ...], after_seq: int, until: float, *, known_only: bool = False
    ) -> bool:
        """Whether a file of ``globs``' view changed at or before ``until`` (monotonic)
        but was reported after the digest that included mark ``after_seq``: a job keyed
        by that digest may then have seen other content than its key says. Changes made
        after ``until`` (the job's end) do not count. ``known_only``: count only paths
        that are files of the view now (a git-ignored file that the job itself wrote and
        removed does not count; a file changed and changed back does). Blocking: from a
        worker thread."""
        with self._pending_lock:
            marks = [m for m in self._recent if m[0] > after_seq]
            lost = bool(self._recent) and self._recent[0][0] > after_seq + 1
        if lost:
            return True  # the marks in question are no longer kept
        view = self._views.get(globs)
        if view is None:
            return True
        with self._compute_lock:
            for _, when, rels in marks:
                if when > until:
                    continue
                for rel in rels:
                    if rel == EVERYTHING:
                        return True
                    if view.regex.match(rel) and (not known_only or rel in self.files):
                        return True
                    prefix = rel + "/"
                    if any(f.startswith(prefix) for f in self.files):
                        return True  # a folder holding watched files
        return False

    def _rescan(self) -> None:
        """List the worktree; rehash only files whose signature does not prove them
        unchanged (all of them on the first scan)."""
        now = time.time_ns()
        old_files, fresh = self.files, {}
        wanted, base = self._wanted.match, self._base + "/"
        stopped = self.stop.is_set
        for rel in list_files(self.root, self.rules):
            if not wanted(rel):
                continue
            if stopped():
                raise DigestStopped(os.fsdecode(self.root))
            path = base + rel
            old = old_files.get(rel)
            if old is not None:
                try:
                    if old.still_valid_for(os.lstat(path)):
                        fresh[rel] = old
                        continue
                except OSError:
                    continue  # listed by git, gone from disk
            entry = digest_file(path, now, self.stop)
            if entry is not None:
                fresh[rel] = entry
                self.rehashed += 1
        self.files = fresh
        for view in self._views.values():
            view.total, view.count, view.unreadable = 0, 0, set()
            match = view.regex.match
            for rel, entry in fresh.items():
                if match(rel):
                    _add(view, rel, entry)
        self._built = True

    def _apply(self, pending: set[str]) -> None:
        now = time.time_ns()
        new_candidates: list[str] = []
        for rel in sorted(pending):
            if self.rules.filtered(rel):
                continue
            path = os.path.join(self._base, rel)
            try:
                st = os.lstat(path)
            except OSError:
                self._forget_below(rel)
                continue
            if stat.S_ISDIR(st.st_mode):
                # A folder moved in (or renamed): its files are new to us.
                new_candidates.extend(f"{rel}/{sub}" for sub in _walk_files(path, rel, self.rules))
                continue
            old = self.files.get(rel)
            if old is None:
                new_candidates.append(rel)
            elif not old.still_valid_for(st):
                self._replace(rel, digest_file(path, now, self.stop))
        wanted = [r for r in new_candidates if r not in self.files and self._wanted.match(r)]
        if wanted and self.rules.respect_gitignore and is_git_worktree(self.root):
            ignored = git_ignored(self.root, wanted)
            wanted = [r for r in wanted if r not in ignored]
        for rel in wanted:
            self._replace(rel, digest_file(os.path.join(self._base, rel), now, self.stop))

    def _replace(self, rel: str, entry: FileDigest | None) -> None:
        old = self.files.pop(rel, None)
        if entry is not None:
            self.files[rel] = entry
            self.rehashed += 1
        for view in self._views.values():
            if view.regex.match(rel):
                if old is not None:
                    _remove(view, rel, old)
                if entry is not None:
                    _add(view, rel, entry)

    def _forget_below(self, rel: str) -> None:
        if rel in self.files:
            self._replace(rel, None)
            return
        prefix = rel + "/"
        for gone in [r for r in self.files if r.startswith(prefix)]:
            self._replace(gone, None)


def _walk_files(path: str, rel: str, rules: IgnoreRules) -> list[str]:
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(path):
        sub = os.path.relpath(dirpath, path)
        prefix = "" if sub == "." else sub.replace(os.sep, "/") + "/"
        dirnames[:] = [d for d in dirnames if not rules.filtered(f"{rel}/{prefix}{d}")]
        out.extend(
            prefix + name for name in filenames if not rules.filtered(f"{rel}/{prefix}{name}")
        )
    return out


def _term(rel: str, entry: FileDigest) -> int:
    # The owner's execute bit is content, as for git: ``./check.sh`` runs or is refused.
    kind = entry.kind.encode() + (b"x" if entry.sig[4] & stat.S_IXUSR else b"-")
    data = os.fsencode(rel) + b"\0" + kind + (entry.digest or b"?")
    return xxhash.xxh3_128_intdigest(data)


def _add(view: _View, rel: str, entry: FileDigest) -> None:
    view.total = (view.total + _term(rel, entry)) & MASK_128
    view.count += 1
    if entry.digest is None:
        view.unreadable.add(rel)


def _remove(view: _View, rel: str, entry: FileDigest) -> None:
    view.total = (view.total - _term(rel, entry)) & MASK_128
    view.count -= 1
    view.unreadable.discard(rel)
