"""Whether a state dir may be trusted: what it holds decides which processes get killed.

The state dir holds the crash ledger (pids that the next start kills), run logs and
the status file. Whoever else can write it (another user owning it, or a folder
writable by group/others) could plant records or links there, so such a folder is
refused, as OpenSSH's StrictModes refuses a config that others can change. The same
holds for the subfolders that hold records: a symlink there is refused too, since it
would send every write somewhere else.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

# The state dir's subfolders of records: runs/ (logs), jobs/ (crash ledger), cache/ and
# results/ (entries read back at start and by the reading commands), requests/ (what
# ``rerun`` asks the daemon to run), wait/ (markers of ``wait``, watched and deleted by
# the daemon).
STATE_SUBDIRS = ("runs", "jobs", "cache", "results", "requests", "wait")


def _folder_problem(folder: Path, label: str, st: os.stat_result) -> str:
    """One problem with a folder we are about to trust, or ""."""
    if not stat.S_ISDIR(st.st_mode):
        kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a folder"
        return f"refusing {label}: {kind}, not a folder of its own"
    if st.st_uid != os.geteuid():
        return (
            f"refusing {label} owned by another user (uid {st.st_uid}); "
            f"it holds the pids this daemon kills: chown it or choose another daemon.state_dir"
        )
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o022:
        return (
            f"refusing {label} writable by group/others (mode {mode:04o}); "
            f"chmod go-w {os.fsdecode(folder)}"
        )
    return ""


def folders_trusted_by(path: Path) -> list[Path]:
    """Every folder whose writers could change which file ``path`` names, nearest first."""
    folders: dict[str, None] = {}

    def add_ancestors(folder: str) -> None:
        while True:
            folders.setdefault(folder, None)
            parent = os.path.dirname(folder)
            if parent == folder:
                return
            folder = parent

    hop = os.path.abspath(path)
    for _ in range(40):  # the kernel's own limit on symlink hops
        add_ancestors(os.path.dirname(hop))
        real_folder = os.path.realpath(os.path.dirname(hop))
        add_ancestors(real_folder)
        try:
            target = os.readlink(hop)
        except OSError:  # not a link (EINVAL), or gone: the chain ends here
            break
        hop = os.path.normpath(os.path.join(real_folder, target))
    return [Path(folder) for folder in folders]


def _swappable_folder_problem(state_dir: Path) -> str:
    """Why others could swap ``state_dir`` for a folder of theirs, or "".

    Whoever can write a folder on its way (as named, as resolved, at every link) can
    rename the state dir away at any time and put their own in its place, with runs/ or
    jobs/ linked anywhere: each write before the lock's next check would land where they
    chose. So, as for the config file (StrictModes), every such folder must be owned by
    us or root and not writable by group/others, unless sticky (/tmp: others cannot
    rename an entry they do not own).
    """
    for folder in folders_trusted_by(state_dir):
        try:
            st = os.stat(folder)
        except OSError as exc:
            return f"{os.fsdecode(folder)}: cannot stat: {exc.strerror or exc}"
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o022 and not mode & stat.S_ISVTX:
            return (
                f"refusing a state dir in a folder writable by group/others "
                f"({os.fsdecode(folder)}, mode {mode:04o}): they could swap it for theirs; "
                f"chmod go-w it or choose another daemon.state_dir"
            )
        if st.st_uid not in (os.geteuid(), 0):
            return (
                f"refusing a state dir in a folder owned by another user "
                f"({os.fsdecode(folder)}, uid {st.st_uid}): they could swap it for theirs"
            )
    return ""


def state_dir_problems(state_dir: Path) -> list[str]:
    """Why ``state_dir`` (which exists) and its record subfolders cannot be trusted; empty
    when they can. The state dir itself is judged where its path leads (a symlink the
    user configured is fine); its subfolders must be real folders."""
    problems = []
    try:
        st = os.stat(state_dir)
    except OSError as exc:
        return [f"cannot stat: {exc.strerror or exc}"]
    for problem in (
        _folder_problem(state_dir, "a state dir", st),
        _swappable_folder_problem(state_dir),
    ):
        if problem:
            problems.append(problem)
    for name in STATE_SUBDIRS:
        sub = state_dir / name
        try:
            st = os.lstat(sub)
        except FileNotFoundError:
            continue  # created 0700 when first needed
        except OSError as exc:
            problems.append(f"{name}/: cannot stat: {exc.strerror or exc}")
            continue
        problem = _folder_problem(sub, f"its {name}/", st)
        if problem:
            problems.append(problem)
    return problems
