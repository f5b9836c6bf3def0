"""From (worktree, script, batch) to the exact ``JobSpec`` a job runs with.

Shared by the daemon and ``once`` so a script behaves the same under both: the same
placeholders, the same ``PO_*`` variables, the same run-log layout
``<state_dir>/runs/<hypothesis>/<script>/<job_id>.log``.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ..repo.worktrees import Worktree
from ..settings.loader import ScriptSettings
from ..store.safe_open import write_new
from .runner import JobSpec, make_private_dirs


@dataclass(frozen=True)
class RunFiles:
    log: Path
    changed: Path  # one changed relative path a line (PO_CHANGED_FILE)
    changed_z: Path  # NUL-separated (PO_CHANGED_FILE_Z): names may contain newlines
    junit: Path  # where the script may write a JUnit XML report (PO_JUNIT_XML, {junit})


_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")


def substitute(item: str, wt: Worktree, extra: Mapping[str, str] | None = None) -> str:
    """Placeholders in one pass: a value that itself contains ``{branch}`` (a folder
    named so) is never substituted again; braces elsewhere (``find -exec {}``) stay."""
    values = {"hypothesis": wt.id, "worktree": os.fsdecode(wt.path), "branch": wt.branch}
    values.update(extra or {})
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), item)


def prepare_run_files(
    runs_dir: Path, hyp: str, script: str, job_id: str, changed: Iterable[str]
) -> RunFiles:
    """Create the run folder (0700) and the changed-file lists (0600); raises OSError."""
    run_dir = runs_dir / hyp / script
    # Every level 0700, not just the last: ``mkdir(parents=True)`` gives the parents
    # (``runs``, ``runs/<hyp>``) the umask's mode, and they name what is being tested.
    make_private_dirs(run_dir)
    paths = sorted(changed)
    files = RunFiles(
        run_dir / f"{job_id}.log",
        run_dir / f"{job_id}.changed",
        run_dir / f"{job_id}.changed0",
        run_dir / f"{job_id}.junit.xml",
    )
    write_new(files.changed, b"".join(os.fsencode(p) + b"\n" for p in paths))
    write_new(files.changed_z, b"".join(os.fsencode(p) + b"\0" for p in paths))
    return files


def prune_runs(run_dir: Path, keep: int) -> None:
    """Keep the newest ``keep`` run logs (and their changed lists) of one hypothesis x script.

    Only regular files count (``lstat``): the job can write in its run folder (its
    ``{junit}`` report lives there), and one dangling ``*.log`` symlink or ``*.log``
    folder made every later prune fail, so the folder grew without bound."""
    found = []
    for path in run_dir.glob("*.log"):
        try:
            st = path.lstat()
        except FileNotFoundError:
            continue  # gone meanwhile (``once`` prunes the same folders)
        if stat.S_ISREG(st.st_mode):
            found.append((st.st_mtime, path))
    logs = [path for _, path in sorted(found)]
    for old in logs[: max(0, len(logs) - keep)]:
        old.unlink(missing_ok=True)
        old.with_suffix(".changed").unlink(missing_ok=True)
        old.with_suffix(".changed0").unlink(missing_ok=True)
        old.with_suffix(".junit.xml").unlink(missing_ok=True)


def prune_orphan_lists(runs_dir: Path) -> list[Path]:
    """Changed-file lists whose job left no run log (the daemon died before the job
    started, or its start failed): removed at start-up, when no job runs.
    ``prune_runs`` goes by the logs, so it would never see these."""
    removed = []
    for suffix in (".changed", ".changed0"):
        for listing in runs_dir.glob(f"*/*/*{suffix}"):
            if not listing.with_suffix(".log").exists():
                listing.unlink(missing_ok=True)
                removed.append(listing)
    return removed


def make_spec(
    wt: Worktree,
    script: ScriptSettings,
    *,
    batch_id: str,
    job_id: str,
    files: RunFiles | None,
    base_env: Mapping[str, str],
    extra_env: Mapping[str, str] | None = None,
) -> JobSpec:
    """``extra_env``: the job's own ``PO_TMPDIR``/``TMPDIR``/``PO_PORT_BASE``; it wins
    over the script's ``env`` (the design sets ``TMPDIR`` to ``PO_TMPDIR``)."""
    env = dict(base_env)
    env.update(script.env)
    junit = os.fsdecode(files.junit) if files else os.devnull
    env.update(
        PO_HYPOTHESIS=wt.id,
        PO_WORKTREE=os.fsdecode(wt.path),
        PO_BATCH_ID=batch_id,
        PO_JOB_ID=job_id,
        PO_CHANGED_FILE=os.fsdecode(files.changed) if files else os.devnull,
        PO_CHANGED_FILE_Z=os.fsdecode(files.changed_z) if files else os.devnull,
        PO_JUNIT_XML=junit,
    )
    env.update(extra_env or {})
    return JobSpec(
        argv=tuple(substitute(a, wt, {"junit": junit}) for a in script.command),
        cwd=wt.path / script.cwd if script.cwd else wt.path,
        env=env,
        timeout_s=script.timeout_s,
        kill_grace_s=script.kill_grace_s,
        job_id=job_id,
        log_path=files.log if files else None,
    )
