"""From a closed batch to scheduler requests, announced by ``batch_formed``.

The planner says which scripts a batch's paths trigger; this turns that into one
``JobRequest`` per hypothesis x script, after dropping hypotheses that went away while
the batch formed. ``run_everything`` is the same for a run that no edit caused (start-up,
a new worktree): every script of every given hypothesis, no changed paths; ``run_cells``
for chosen cells (``rerun``, scripts a reload added or changed).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..pipeline.batcher import Batch
from ..pipeline.planner import plan
from ..pipeline.scheduler import JobRequest
from ..repo.worktrees import Worktree
from ..settings.loader import ScriptSettings

MAX_LOGGED_PATHS = 50


def dispatch_batch(
    batch: Batch,
    worktrees: Mapping[str, Worktree],
    scripts: Sequence[ScriptSettings],
    submit: Callable[[JobRequest], None],
    log: Any,
) -> bool:
    """Submit the jobs ``batch`` triggers; True when a worktree's folder is gone (the
    caller then rediscovers worktrees; that hypothesis' changes are dropped)."""
    changes: dict[str, set[str]] = {}
    vanished = False
    for hyp, paths in batch.changes.items():
        wt = worktrees.get(hyp)
        if wt is None:
            continue
        if not wt.path.is_dir():
            vanished = True
            continue
        changes[hyp] = paths
    if not changes:
        return vanished  # every hypothesis of the batch went away meanwhile
    planned = plan(changes, scripts)
    log.info(
        "batch_formed",
        batch_id=batch.batch_id,
        hypotheses={h: sorted(p)[:MAX_LOGGED_PATHS] for h, p in changes.items()},
        changed_count=sum(len(p) for p in changes.values()),
        jobs=[f"{h}/{s}" for h, names in planned.items() for s in names],
        reason=batch.reason,
    )
    for hyp, names in planned.items():
        for name in names:
            submit(JobRequest(hyp, name, batch.batch_id, set(changes[hyp])))
    return vanished


def run_everything(
    batch_id: str,
    hyps: Sequence[str],
    scripts: Sequence[ScriptSettings],
    submit: Callable[[JobRequest], None],
    log: Any,
    reason: str,
) -> None:
    """Every script in every hypothesis of ``hyps``, as one batch without changed paths."""
    run_cells(batch_id, [(h, s.name) for h in hyps for s in scripts], submit, log, reason)


def run_cells(
    batch_id: str,
    cells: Sequence[tuple[str, str]],
    submit: Callable[[JobRequest], None],
    log: Any,
    reason: str,
) -> None:
    """These (hypothesis, script) cells as one batch without changed paths (a rerun
    asked for, scripts a reload added or changed)."""
    log.info(
        "batch_formed",
        batch_id=batch_id,
        hypotheses={h: [] for h in dict.fromkeys(h for h, _s in cells)},
        changed_count=0,
        jobs=[f"{h}/{s}" for h, s in cells],
        reason=reason,
    )
    for hyp, name in cells:
        submit(JobRequest(hyp, name, batch_id, set()))
