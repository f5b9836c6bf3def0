"""Worktree discovery: which directories are hypotheses right now.

Every worktree ``git worktree list`` reports is a hypothesis (the main one included), plus
the configured extra ``paths``. Discovery runs at start and whenever the daemon suspects
the set changed, so it must be cheap, never block the event loop (``discover_async``) and
treat half-removed worktrees (folder gone, git not yet pruned) as removed.

A worktree nobody can look into right now is not a removed one: ``chmod 000`` on it (or
on its parent) makes git call it prunable and ``isdir`` say no, for as long as the mode
lasts. Dropping it then lost the edit made right after the mode came back (the watch was
gone, and only the next periodic round re-added it). So a worktree whose folder cannot
be examined for lack of permission is served (kept, or taken in at start); it goes
only when its folder is really gone (see ``_hidden_known``).
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path

from ..errors import OrchestratorError
from ..settings.loader import WorktreeSettings
from .git import GIT_TIMEOUT_S, GitError, GitResult, run_git, run_git_async, z_records


class WorktreeError(OrchestratorError):
    """Discovery failed; ``str()`` is one line naming the path involved."""


@dataclass(frozen=True)
class Worktree:
    id: str  # the folder name; unique among hypotheses
    path: Path  # realpath
    branch: str  # short name ("hyp-3"); "" when detached or not a git worktree
    head: str  # commit sha; "" when unknown (extra paths)
    is_main: bool
    # (st_dev, st_ino) of the folder when discovered; None when it could not be read. A
    # new value at the same path is another folder (deleted and cloned again): inotify
    # watches folders, not paths, so it must be watched anew.
    folder: tuple[int, int] | None = field(default=None, compare=False)


def folder_ident(path: Path) -> tuple[int, int] | None:
    """The folder's (st_dev, st_ino), or None when it cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


@dataclass(frozen=True)
class _GitEntry:
    path: bytes
    head: str
    branch: str
    bare: bool
    prunable: bool


# --------------------------------------------------------------------------- discovery


def discover(settings: WorktreeSettings, *, strict: bool = False) -> list[Worktree]:
    """The current hypotheses, main worktree first, then linked ones, then extra paths.

    ``strict`` makes a missing extra path an error (for start-up and ``check``, where it is
    most likely a typo); without it a vanished extra path simply counts as removed.
    """
    entries: list[_GitEntry] = []
    if settings.repo is not None:
        entries = _parse_porcelain(_run_git_sync(settings.repo))
    return _assemble(settings, entries, strict=strict)


async def discover_async(
    settings: WorktreeSettings, *, strict: bool = False, known: Collection[Path] = ()
) -> list[Worktree]:
    """``discover`` without blocking the event loop on git. ``known``: the worktree paths
    being served, kept while a permission hides them (see the module's docstring)."""
    entries: list[_GitEntry] = []
    if settings.repo is not None:
        entries = _parse_porcelain(await _run_git_async(settings.repo))
    return _assemble(settings, entries, strict=strict, known=known)


_LIST_ARGS = ("worktree", "list", "--porcelain", "-z")


def _run_git_sync(repo: Path) -> bytes:
    _require_dir(repo)
    try:
        done = run_git(repo, *_LIST_ARGS)
    except GitError as exc:
        raise _list_failed(repo, exc) from exc
    return _check_git(repo, done)


async def _run_git_async(repo: Path) -> bytes:
    _require_dir(repo)
    try:
        done = await run_git_async(repo, *_LIST_ARGS)  # kills and reaps git if cancelled
    except GitError as exc:
        raise _list_failed(repo, exc) from exc
    return _check_git(repo, done)


def _list_failed(repo: Path, exc: GitError) -> WorktreeError:
    if exc.reason == "timeout":
        return WorktreeError(f"{_show(repo)}: git worktree list took over {GIT_TIMEOUT_S:g} s")
    return WorktreeError("git: not found on PATH; it is needed to list worktrees")


def _require_dir(repo: Path) -> None:
    if not os.path.isdir(repo):
        if hidden_by_permission(repo):  # there, maybe: a folder above it is chmod 000
            raise WorktreeError(f"{_show(repo)}: cannot be examined: permission denied")
        raise WorktreeError(f"{_show(repo)}: not a git repository (no such directory)")


def hidden_by_permission(path: Path | str) -> bool:
    """Whether ``path`` cannot be examined for lack of permission (a folder above it
    cannot be searched): not known to be gone, unlike what ``isdir`` alone says."""
    try:
        os.lstat(path)
    except PermissionError:
        return True
    except (OSError, ValueError):
        return False
    return False


def _check_git(repo: Path, done: GitResult) -> bytes:
    if not done.ok:
        raise WorktreeError(f"{_show(repo)}: not a git repository (git said: {done.said()})")
    return done.stdout


def _parse_porcelain(data: bytes) -> list[_GitEntry]:
    """Parse ``git worktree list --porcelain -z`` (bytes: paths may hold anything)."""
    return [_entry(record) for record in z_records(data)]


def _entry(lines: list[bytes]) -> _GitEntry:
    path, head, branch = b"", "", ""
    bare = prunable = False
    for line in lines:
        label, _, value = line.partition(b" ")
        if label == b"worktree":
            path = value
        elif label == b"HEAD":
            head = value.decode("ascii", "replace")
        elif label == b"branch":
            ref = os.fsdecode(value)
            branch = ref.removeprefix("refs/heads/")
        elif label == b"bare":
            bare = True
        elif label == b"prunable":
            prunable = True
    return _GitEntry(path=path, head=head, branch=branch, bare=bare, prunable=prunable)


def _assemble(
    settings: WorktreeSettings,
    entries: Iterable[_GitEntry],
    *,
    strict: bool,
    known: Collection[Path] = (),
) -> list[Worktree]:
    found: list[Worktree] = []
    seen_paths: set[Path] = set()
    for position, entry in enumerate(entries):
        if entry.bare or not entry.path:
            continue
        raw = os.fsdecode(entry.path)
        if (entry.prunable or not os.path.isdir(raw)) and not _hidden_known(raw, known):
            continue  # removed but not yet pruned: counts as removed
        path = Path(os.path.realpath(raw))
        if path in seen_paths:
            continue
        seen_paths.add(path)
        found.append(
            Worktree(
                id=path.name,
                path=path,
                branch=entry.branch,
                head=entry.head,
                is_main=position == 0,
                folder=folder_ident(path),
            )
        )
    for extra in settings.paths:
        if not os.path.isdir(extra) and not _hidden_known(os.fsdecode(extra), known):
            if strict:
                reason = "does not exist" if not os.path.lexists(extra) else "is not a directory"
                raise WorktreeError(f"{_show(extra)}: extra worktree path {reason}")
            continue
        path = Path(os.path.realpath(extra))
        if path in seen_paths:
            continue  # also a git worktree: listed once
        if not path.name:
            raise WorktreeError(f"{_show(extra)}: cannot be a hypothesis (no folder name)")
        seen_paths.add(path)
        found.append(
            Worktree(
                id=path.name,
                path=path,
                branch="",
                head="",
                is_main=False,
                folder=folder_ident(path),
            )
        )
    selected = [wt for wt in found if _selected(wt.id, settings.include, settings.exclude)]
    _reject_duplicate_ids(selected)
    return selected


def _hidden_known(raw: str, known: Collection[Path]) -> bool:
    """Whether ``raw``, which git calls prunable (or ``isdir`` says is no folder), is a
    worktree to serve anyway: one only a permission hides (its folder, or the ``.git``
    git looks for in it, answers EACCES/EPERM), as opposed to one gone.

    Hidden ones are served whether or not they were (``known``): a worktree unreadable
    when the daemon starts used to be left out without a word, and served only by the
    next periodic round after its mode came back, so an edit made before that was lost.
    Served, the watcher says ``worktree_unreadable`` and takes it in once readable.

    Git looked before we do: a mode flipped back in between (``chmod 000`` then ``755``)
    leaves git's "prunable" stale while the folder and its ``.git`` are plainly there.
    That is git's own test passing now, so a served worktree is kept then too: only a
    folder or ``.git`` really missing (or no longer a folder) counts as removed.
    """
    for probe in (raw, os.path.join(raw, ".git")):
        try:
            os.lstat(probe)
        except PermissionError:
            return True
        except OSError:
            return False
    return Path(os.path.realpath(raw)) in known


def _selected(ident: str, include: Iterable[str], exclude: Iterable[str]) -> bool:
    return any(fnmatchcase(ident, p) for p in include) and not any(
        fnmatchcase(ident, p) for p in exclude
    )


def _reject_duplicate_ids(worktrees: Iterable[Worktree]) -> None:
    by_id: dict[str, Path] = {}
    for wt in worktrees:
        if wt.id in by_id:
            raise WorktreeError(
                f"duplicate hypothesis id {wt.id!r}: {_show(by_id[wt.id])} and "
                f"{_show(wt.path)} (the id is the folder name; rename one or exclude it)"
            )
        by_id[wt.id] = wt.path


# --------------------------------------------------------------------------- git dirs


def git_dir(worktree_path: Path) -> Path:
    """The worktree's own git dir (``<main>/.git/worktrees/<name>`` for a linked one).

    The daemon watches ``<git_dir>/index.lock`` to hold batches back while git works.
    Reads the ``.git`` file directly when it can (no subprocess); falls back to git for
    anything unusual (a subfolder of a repository, say). Cheap; callers need not cache.
    """
    return _git_dirs(worktree_path)[0]


def git_common_dir(worktree_path: Path) -> Path:
    """The repository's shared git dir (``<main>/.git``): refs, objects, worktree list."""
    return _git_dirs(worktree_path)[1]


def index_lock_path(worktree_path: Path) -> Path:
    return git_dir(worktree_path) / "index.lock"


def _git_dirs(worktree_path: Path) -> tuple[Path, Path]:
    root = Path(os.path.realpath(worktree_path))
    dot_git = root / ".git"
    own: Path | None = None
    if dot_git.is_dir():
        own = dot_git
    elif dot_git.is_file():
        own = _read_gitfile(dot_git)
    if own is None:
        return _git_dirs_from_git(root)
    common = own
    commondir_file = own / "commondir"
    if commondir_file.is_file():
        target = commondir_file.read_text(encoding="utf-8", errors="surrogateescape").strip()
        common = Path(os.path.normpath(own / target))
    return own, common


def _read_gitfile(dot_git: Path) -> Path | None:
    try:
        content = dot_git.read_bytes()
    except OSError as exc:
        raise WorktreeError(f"{_show(dot_git)}: cannot read: {exc.strerror or exc}") from exc
    first = content.split(b"\n", 1)[0].rstrip(b"\r")
    if not first.startswith(b"gitdir: "):
        return None
    target = Path(os.fsdecode(first[len(b"gitdir: ") :]))
    return Path(os.path.normpath(dot_git.parent / target))


def _git_dirs_from_git(root: Path) -> tuple[Path, Path]:
    try:
        done = run_git(root, "rev-parse", "--path-format=absolute", "--git-dir", "--git-common-dir")
    except GitError as exc:
        raise WorktreeError(f"{_show(root)}: cannot ask git for its git dir: {exc}") from exc
    lines = done.stdout.split(b"\n")
    if not done.ok or len(lines) < 2:
        raise WorktreeError(f"{_show(root)}: not a git repository (git said: {done.said()})")
    return Path(os.fsdecode(lines[0])), Path(os.fsdecode(lines[1]))


def _show(value: object) -> str:
    """One printable line, whatever bytes the path holds."""
    text = os.fsdecode(value) if isinstance(value, bytes | os.PathLike) else str(value)
    if text.isprintable():
        return text
    return "".join(
        ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text
    )
