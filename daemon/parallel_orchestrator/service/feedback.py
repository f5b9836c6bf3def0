"""Feedback loops: a script whose runs are triggered only by what its own runs wrote.

A job that writes into a path its own ``watch`` globs match (a report, a cache, a
formatter rewriting sources) makes a change, the change makes a batch, the batch reruns
the job: forever, and silently (194 runs in 15 s were seen). The daemon's own files are
never changes (ownfiles.py); this catches the rest.

Each hypothesis x script's latest run window is kept: from the start of its run to the
moment its process ended (the ``finished_at`` of its status cell, not the end of the
daemon's bookkeeping after it: whoever reacts to ``job_finished`` at once edits after
the process, and that is a change from outside). A batch whose changes all happened
inside that window was caused by that run, as far as anyone can tell. The watcher dates
a change to within half a step (at most 25 ms), so the window ends ``MARGIN_S`` before
the process did: an edit made right after ``job_finished`` is never counted, and the
price is that writes in a job's last ``MARGIN_S`` are not attributed to it (a loop that
writes only then goes unnoticed; pytest's caches and most generators write earlier). After
``THRESHOLD`` such batches in a row the cell is paused: ``feedback_loop_suspected``
(hypothesis, script, paths) is logged and self-caused batches no longer start it. The
first batch with a change from outside (made while the script was not running) runs it
again; once suspected, the next self-caused batch pauses it at once.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ..pipeline.batcher import Batch
from ..pipeline.scheduler import JobRequest

THRESHOLD = 3
MARGIN_S = 0.05  # changes dated this close to a run's end are not counted as its own
MAX_LOGGED_PATHS = 50

Key = tuple[str, str]


@dataclass
class _Cell:
    start: float = 0.0  # when its latest run started (monotonic)
    streak: int = 0  # self-caused batches in a row
    suspected: bool = False
    paused: bool = False


class FeedbackGuard:
    """Wraps the job runner (to see run windows) and the scheduler's submit (to gate)."""

    def __init__(
        self, log: Callable[[], Any], process_ended: Callable[[Key], float | None]
    ) -> None:
        """``process_ended``: the wall time the cell's latest job's process ended (None
        while it runs)."""
        self._log = log
        self._process_ended = process_ended
        self._cells: dict[Key, _Cell] = {}

    def wrap(
        self, run: Callable[[JobRequest], Awaitable[None]]
    ) -> Callable[[JobRequest], Awaitable[None]]:
        """The scheduler's job runner, recording when each run starts (the end comes
        from the status cell)."""

        async def run_and_record(req: JobRequest) -> None:
            self._cells.setdefault(req.key, _Cell()).start = time.monotonic()
            await run(req)

        return run_and_record

    def gate(
        self, batch: Batch, submit: Callable[[JobRequest], object]
    ) -> Callable[[JobRequest], None]:
        """``submit`` for the requests of ``batch``, minus those of paused cells."""

        def submit_unless_looping(req: JobRequest) -> None:
            if self._admit(batch, req):
                submit(req)

        return submit_unless_looping

    def forget(self, hyp: str) -> None:
        """A removed hypothesis."""
        for key in [k for k in self._cells if k[0] == hyp]:
            del self._cells[key]

    def _self_caused(self, batch: Batch, key: Key, cell: _Cell) -> bool:
        if not cell.start or batch.last_change is None:
            return False
        end = time.monotonic()
        ended_wall = self._process_ended(key)
        if ended_wall is not None:  # as monotonic time
            end = min(end, time.monotonic() - (time.time() - ended_wall))
        return cell.start <= batch.first_change and batch.last_change <= end - MARGIN_S

    def _admit(self, batch: Batch, req: JobRequest) -> bool:
        cell = self._cells.get(req.key)
        if cell is None:
            return True
        if not self._self_caused(batch, req.key, cell):
            if cell.paused:
                self._log().info(
                    "feedback_loop_resumed", hypothesis=req.hypothesis, script=req.script
                )
            cell.streak, cell.paused = 0, False
            return True
        cell.streak += 1
        if cell.paused:
            return False
        if cell.streak >= THRESHOLD or cell.suspected:
            cell.paused = cell.suspected = True
            self._log().warning(
                "feedback_loop_suspected",
                hypothesis=req.hypothesis,
                script=req.script,
                paths=sorted(req.changed)[:MAX_LOGGED_PATHS],
                batch_id=batch.batch_id,
                runs_in_a_row=cell.streak,
            )
            return False
        return True
