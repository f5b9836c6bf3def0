"""``parallel-orchestrator once``: every selected script in every selected hypothesis, once.

The same runner, job specs and run logs as the daemon, without watching: for CI, for a
quick check before starting the daemon, and for agents that want one answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..backends.base import JobBackend, open_backend
from ..cache.reuse import Hit, ResultReuse, rules_for, write_reused_log
from ..cache.store import CachedResult
from ..cache.testresults import report_from, results_of
from ..jobs.ports import PortBlocks
from ..jobs.runner import JobOutcome, install_child_watcher
from ..jobs.spec import make_spec, prepare_run_files, prune_runs
from ..jobs.tmpdirs import JobTempDirs, temp_base
from ..repo.worktrees import Worktree
from ..report.junit import TestReport
from ..report.safetext import block, one_line
from ..report.testcollect import collect_tests
from ..settings.loader import ScriptSettings, Settings
from ..states import FAIL, PASS
from .onceprogress import OnceProgress


@dataclass(frozen=True)
class OnceResult:
    hypothesis: str
    script: str
    job_id: str
    outcome: JobOutcome
    log_path: Path | None
    tests: TestReport | None = None
    junit_problems: tuple[str, ...] = ()  # "path: error" of each unreadable report
    cache: bool = False  # the script has ``cache = true``: the dict says whether reused
    cached_from: str | None = None  # the job whose result was reused

    def to_dict(self) -> dict[str, Any]:
        o = self.outcome
        cached = {"cached": self.cached_from is not None, "cached_from": self.cached_from}
        return {
            "hypothesis": self.hypothesis,
            "script": self.script,
            "job_id": self.job_id,
            "result": o.result,
            "exit_code": o.exit_code,
            "duration_s": round(o.duration_s, 3),
            "log_path": None if self.log_path is None else os.fsdecode(self.log_path),
            "output_tail": o.output_tail,
            "error": o.error_message or None,
            "tests": self.tests.event_summary() if self.tests is not None else None,
            **(cached if self.cache else {}),
        }


async def run_once(
    settings: Settings,
    worktrees: list[Worktree],
    scripts: list[ScriptSettings],
    progress: OnceProgress | None = None,
    *,
    use_cache: bool = True,
) -> list[OnceResult]:
    """Results in (hypothesis, script) order, whatever order they finished in;
    ``progress`` hears of every job's start and end.

    Scripts with ``cache = true`` reuse stored results of equal inputs and share one run
    among jobs with equal inputs (``use_cache=False``: ``--no-cache``, run everything).

    Raises BackendUnavailable when ``[executor]`` names a cluster that cannot be reached.
    """
    install_child_watcher()
    backend = open_backend(settings.executor.backend, settings.executor.address)
    await backend.start()
    reuse = None
    if use_cache and any(s.cache for s in scripts):
        reuse = ResultReuse(settings.daemon.state_dir, rules_for(settings), watched=False)
        reuse.set_worktrees({wt.id: wt.path for wt in worktrees})
    try:
        return await _run_all(settings, worktrees, scripts, backend, progress, reuse)
    finally:
        if reuse is not None:
            reuse.close()
        await backend.close()


async def _run_all(
    settings: Settings,
    worktrees: list[Worktree],
    scripts: list[ScriptSettings],
    backend: JobBackend,
    progress: OnceProgress | None,
    reuse: ResultReuse | None,
) -> list[OnceResult]:
    session = secrets.token_hex(3)
    limit = asyncio.Semaphore(settings.daemon.max_concurrency or await backend.slots())
    # Side by side as under the daemon: a port block per hypothesis, a temp dir per job.
    ports = PortBlocks(settings.daemon.port_range)
    tmpdirs = JobTempDirs(temp_base(os.environ))
    tmpdirs.open()
    runs_dir = settings.daemon.state_dir / "runs"
    pairs = [(wt, s) for wt in worktrees for s in scripts]
    # An exclusive script's jobs take turns (its lock first, so none holds a slot idle).
    exclusive = {s.name: asyncio.Lock() for s in scripts if s.exclusive}

    async def one(index: int, wt: Worktree, script: ScriptSettings) -> OnceResult:
        job_id = f"{session}-once{index}"
        if reuse is None or not script.cache:
            return await run(job_id, wt, script)
        got = await reuse.run_shared(wt.id, script, lambda: run(job_id, wt, script), _entry)
        if not isinstance(got, Hit):
            return got
        if progress is not None:
            progress.job_started()
            progress.job_finished(got.entry.result)
        return _reused(got, job_id, wt, script, runs_dir)

    async def run(job_id: str, wt: Worktree, script: ScriptSettings) -> OnceResult:
        turn = exclusive.get(script.name) or contextlib.nullcontext()
        async with turn, limit:
            try:
                files = prepare_run_files(runs_dir, wt.id, script.name, job_id, ())
            except OSError:
                files = None  # an unwritable state dir costs the log, not the run
            tmpdir = tmpdirs.create(job_id)  # its root is fresh and ours: OSError is a bug
            extra = {"PO_TMPDIR": os.fsdecode(tmpdir), "TMPDIR": os.fsdecode(tmpdir)}
            base = ports.base_for(wt.id)
            if base is not None:
                extra["PO_PORT_BASE"] = str(base)
            spec = make_spec(
                wt,
                script,
                batch_id=f"{session}-once",
                job_id=job_id,
                files=files,
                base_env=os.environ,
                extra_env=extra,
            )
            if progress is not None:
                progress.job_started()
            started = time.time()
            try:
                outcome = await backend.run(spec)
            finally:
                await tmpdirs.remove(tmpdir)
            found = await asyncio.to_thread(
                collect_tests, files.junit if files else None, wt.path, script.junit, started
            )
            if progress is not None:
                progress.job_finished(outcome.result)
            if files is not None:
                # pruning is housekeeping; a failure must not cost the result
                with contextlib.suppress(OSError):
                    prune_runs(files.log.parent, settings.daemon.keep_runs)
        problems = tuple(str(p) for p in found.problems)
        return OnceResult(
            wt.id,
            script.name,
            job_id,
            outcome,
            spec.log_path,
            found.report,
            problems,
            cache=script.cache,
        )

    ticker = asyncio.ensure_future(progress.tick()) if progress is not None else None
    try:
        jobs = (one(i, wt, s) for i, (wt, s) in enumerate(pairs, 1))
        return list(await asyncio.gather(*jobs))
    finally:
        if ticker is not None:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
            progress.close()
        await tmpdirs.close()


def _entry(done: OnceResult, key: str) -> tuple[CachedResult, Path | None]:
    """A run of ``once`` as a cache entry, and its run log."""
    o = done.outcome
    entry = CachedResult(
        key,
        done.job_id,
        done.hypothesis,
        done.script,
        o.result,
        o.exit_code,
        o.duration_s,
        o.output_tail,
        results_of(done.tests),
    )
    return entry, done.log_path


def _reused(hit: Hit, job_id: str, wt: Worktree, script: ScriptSettings, runs: Path) -> OnceResult:
    """A job answered from the cache: the reused result, with a copy of its run log."""
    e = hit.entry
    log_path: Path | None = None
    with contextlib.suppress(OSError):  # the log is a copy; the result stands without it
        log_path = prepare_run_files(runs, wt.id, script.name, job_id, ()).log
        write_reused_log(log_path, hit)
    outcome = JobOutcome(
        result=e.result, exit_code=e.exit_code, duration_s=e.duration_s, output_tail=e.output_tail
    )
    tests = report_from(e.results)
    return OnceResult(
        wt.id, script.name, job_id, outcome, log_path, tests, cache=True, cached_from=e.job_id
    )


def render_results(results: list[OnceResult]) -> str:
    """A hypothesis x script table: result and duration per cell."""
    hyps = list(dict.fromkeys(r.hypothesis for r in results))
    scripts = list(dict.fromkeys(r.script for r in results))
    cells = {(r.hypothesis, r.script): r for r in results}
    header = ["hypothesis", *(one_line(s) for s in scripts)]
    rows = [header]
    for h in hyps:
        row = [one_line(h)]  # a worktree folder's name: escaped for the terminal
        for s in scripts:
            r = cells.get((h, s))
            if r is None:
                row.append("")
                continue
            o = r.outcome
            text = f"{o.result.upper()} {o.duration_s:.1f}s"
            if r.tests is not None:
                counts = r.tests.counts()
                text += f" {counts['passed']}/{counts['total']} tests"
            if r.cached_from is not None:
                text += " (cached)"
            if o.result == FAIL and o.exit_code is not None:
                text += f" (exit {o.exit_code})"
            row.append(text)
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    passed = sum(r.outcome.result == PASS for r in results)
    lines.append("")
    lines.append(f"{passed}/{len(results)} passed")
    for r in results:
        for problem in r.junit_problems:
            lines.append(f"{r.hypothesis}/{r.script}: junit report unreadable: {one_line(problem)}")
        if r.outcome.result != PASS:
            lines.extend(_failure_report(r))
    return "\n".join(lines)


TAIL_LINES = 20  # of each failing job's output, under the table


def _failure_report(r: OnceResult) -> list[str]:
    """What a failing job said: its error or log path, failing tests, its output's tail.

    Names and output are escaped: whatever a job prints must not drive the terminal.
    """
    name = f"{one_line(r.hypothesis)}/{one_line(r.script)}"
    if r.outcome.error_message:
        lines = [f"{name}: {one_line(r.outcome.error_message)}"]
    elif r.log_path is not None:
        lines = [f"{name}: log {one_line(os.fsdecode(r.log_path))}"]
    else:
        lines = [f"{name}: {r.outcome.result}"]
    failing = _failing_tests(r.tests.event_summary() if r.tests is not None else None)
    if failing:
        lines.append(f"  failing tests: {', '.join(one_line(t) for t in failing)}")
    tail = block(r.outcome.output_tail).rstrip("\n").splitlines()[-TAIL_LINES:]
    if tail:
        lines.append(f"  last {len(tail)} lines of output:")
        lines.extend(f"  | {line}" for line in tail)
    return lines


def _failing_tests(tests: object) -> list[str]:
    """Ids from a JUnit summary (``failing``: ids, or ``{"id", "message"}`` objects)."""
    failing = tests.get("failing") if isinstance(tests, dict) else None
    if not isinstance(failing, list):
        return []
    ids = [item.get("id") if isinstance(item, dict) else item for item in failing]
    return [str(i) for i in ids if i is not None]
