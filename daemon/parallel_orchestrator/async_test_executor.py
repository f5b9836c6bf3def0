"""The batch tool's asyncio executor, rebuilt on the daemon's job runner.

Same public API as before (``execute_parallel_async``, ``execute_single_async``, the sync
``execute_parallel`` / ``execute_single`` and ``should_parallelize``); what changed is under
it: every script runs in its own process group through ``runner.run_job``, so a timeout
kills the script's whole tree, nothing is left behind, output is bounded, and
``max_concurrent_tests`` is honoured.

Output, as the original's ``subprocess.run(capture_output=True)`` returned it: ``stdout``
and ``stderr`` separately (stderr has its own pipe: ``JobSpec.split_stderr``), each whole
up to ``max_output_bytes``; beyond that the first and last halves around a cut marker, so
memory stays bounded where the original held everything.

Logs in library use: none by default; ``FalsificationConfig.log_dir`` turns on one capped
log file per hypothesis (both streams, interleaved).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import urllib.parse
import uuid
from collections.abc import Coroutine, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from .config import (
    FalsificationConfig,
    Hypothesis,
    TestExecutionResult,
    TestResult,
)
from .jobs.runner import JobOutcome, JobSpec, run_job
from .states import ERROR, FAIL, PASS, TIMEOUT

T = TypeVar("T")

# Job ids (the PO_JOB_ID marker) must be unique machine-wide; a random prefix per process
# plus a counter is, and costs no syscall per job (uuid4 reads /dev/urandom, getpid is a
# syscall). A forked child would repeat its parent's ids: it gets a fresh prefix.
_id_prefix = ""
_job_numbers = itertools.count(1)


def _new_id_prefix() -> None:
    global _id_prefix
    _id_prefix = f"exec-{uuid.uuid4().hex[:12]}-{os.getpid()}-"


_new_id_prefix()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_id_prefix)


class _Place:
    """A worktree as one batch's jobs use it, converted once per batch rather than per
    job (``Path`` parsing costs microseconds, and a batch usually shares few worktrees)."""

    __slots__ = ("path", "scripts", "text")

    def __init__(self, worktree: Path | str) -> None:
        # A relative worktree means relative to the caller's current folder, for finding
        # the script and for running it alike: resolved once here, since the job itself
        # starts inside the worktree (where a relative script path would point elsewhere).
        self.path = Path(os.path.abspath(worktree))
        self.text = str(Path(worktree))  # as the caller gave it, for the result
        self.scripts = str(self.path / ".falsification")

    def script(self, hypothesis: Hypothesis) -> str:
        """``str(AsyncTestExecutor.script_path(hypothesis, worktree))``, without Paths."""
        if "/" in hypothesis.id:  # Path would normalise inside the name: let it
            return str(AsyncTestExecutor.script_path(hypothesis, self.path))
        return f"{self.scripts}/test_{hypothesis.id}.sh"


_RESULTS: dict[str, TestResult] = {
    PASS: TestResult.PASS,
    FAIL: TestResult.FAIL,
    TIMEOUT: TestResult.TIMEOUT,
    ERROR: TestResult.ERROR,
}


def confidence_for(result: TestResult, duration: float) -> float:
    """How much a result says about its hypothesis: quick results are likelier flukes."""
    if result is TestResult.TIMEOUT:
        return 0.3
    if result is TestResult.ERROR:
        return 0.2
    return 0.6 if duration < 5.0 else 0.85


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion from synchronous code.

    With no event loop running in this thread it is ``asyncio.run``. Called from inside a
    running loop (a coroutine, a notebook), ``asyncio.run`` would refuse, so the coroutine
    gets a fresh loop in a worker thread and this thread blocks until it is done; the
    caller's loop is blocked meanwhile, which is what a sync call means.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="po-sync") as pool:
        return pool.submit(asyncio.run, coro).result()


class AsyncTestExecutor:
    """Runs ``<worktree>/.falsification/test_<id>.sh`` per hypothesis, bounded in parallel."""

    def __init__(self, config: FalsificationConfig | None = None) -> None:
        self.config = config if config is not None else FalsificationConfig()

    @staticmethod
    def script_path(hypothesis: Hypothesis, worktree: Path) -> Path:
        return Path(worktree) / ".falsification" / f"test_{hypothesis.id}.sh"

    def _calculate_confidence(self, result: TestResult, duration: float) -> float:
        """The original tool's name for ``confidence_for``; its own test suite calls it."""
        return confidence_for(result, duration)

    def _error(
        self,
        hypothesis: Hypothesis,
        worktree: Path | str | None,
        message: str,
        duration: float = 0.0,
    ) -> TestExecutionResult:
        return TestExecutionResult(
            hypothesis_id=hypothesis.id,
            result=TestResult.ERROR,
            duration=duration,
            exit_code=-1,
            worktree_path="" if worktree is None else str(worktree),
            error_message=message,
            metrics={"confidence": confidence_for(TestResult.ERROR, duration)},
        )

    def _spec(
        self, hypothesis: Hypothesis, place: _Place, script: str, base_env: Mapping[str, str]
    ) -> JobSpec:
        cfg = self.config
        env = dict(base_env)
        env["PO_HYPOTHESIS"] = hypothesis.id
        env["PO_WORKTREE"] = str(place.path)  # absolute: the job runs inside it
        log_path = None
        if cfg.log_dir is not None:
            log_path = Path(cfg.log_dir) / (urllib.parse.quote(hypothesis.id, safe="") + ".log")
        return JobSpec(
            argv=(script,),
            cwd=place.path,
            env=env,
            timeout_s=float(cfg.test_timeout),
            kill_grace_s=float(cfg.kill_grace_s),
            job_id=f"{_id_prefix}{next(_job_numbers)}",
            log_path=log_path,
            max_log_bytes=cfg.max_log_bytes,
            tail_bytes=0,  # the result carries the captures, not the daemon's short tail
            split_stderr=True,
            capture_bytes=cfg.max_output_bytes,
        )

    @staticmethod
    def _from_outcome(
        hypothesis: Hypothesis, worktree: str, outcome: JobOutcome, spec: JobSpec
    ) -> TestExecutionResult:
        result = _RESULTS[outcome.result]
        metrics: dict[str, Any] = {
            "confidence": confidence_for(result, outcome.duration_s),
            "job_id": spec.job_id,
        }
        if spec.log_path is not None:
            metrics["log_path"] = str(spec.log_path)
        return TestExecutionResult(
            hypothesis_id=hypothesis.id,
            result=result,
            duration=outcome.duration_s,
            stdout=outcome.output,
            stderr=outcome.stderr_output,
            exit_code=-1 if outcome.exit_code is None else outcome.exit_code,
            worktree_path=worktree,
            error_message=outcome.error_message,
            metrics=metrics,
        )

    async def execute_single_async(
        self, hypothesis: Hypothesis, worktree: Path | str
    ) -> TestExecutionResult:
        """Run one hypothesis's script; never raises for a failing or missing script."""
        return await self._execute(hypothesis, _Place(worktree), os.environ.copy())

    async def _execute(
        self, hypothesis: Hypothesis, place: _Place, base_env: Mapping[str, str]
    ) -> TestExecutionResult:
        script = place.script(hypothesis)
        spec = self._spec(hypothesis, place, script, base_env)
        # A missing script is found by the spawn failing (no stat per job); it is checked
        # up front only when a log is kept, since run_job creates the log file first.
        if spec.log_path is not None and not os.path.isfile(script):
            return self._error(hypothesis, place.text, f"test script not found: {script}")
        outcome = await run_job(spec)
        if outcome.pid is None and outcome.result == ERROR and not os.path.isfile(script):
            # Never ran, and no script there (or a missing worktree): as the original said.
            return self._error(hypothesis, place.text, f"test script not found: {script}")
        return self._from_outcome(hypothesis, place.text, outcome, spec)

    async def execute_parallel_async(
        self, hypotheses: Iterable[Hypothesis], worktrees: Mapping[str, Path | str]
    ) -> list[TestExecutionResult]:
        """Results in input order; at most ``max_concurrent_tests`` scripts at a time."""
        hypotheses = list(hypotheses)
        limit = asyncio.Semaphore(max(1, int(self.config.max_concurrent_tests)))
        base_env = os.environ.copy()  # one snapshot per batch: decoding it costs ~0.1 ms
        places: dict[str, _Place] = {}

        async def one(h: Hypothesis) -> TestExecutionResult:
            worktree = worktrees.get(h.id)
            if worktree is None:
                return self._error(h, None, f"no worktree given for hypothesis {h.id!r}")
            key = os.fspath(worktree)
            place = places.get(key)
            if place is None:
                place = places[key] = _Place(worktree)
            async with limit:
                return await self._execute(h, place, base_env)

        # A TaskGroup, not gather: if one task fails unexpectedly, the others are
        # cancelled *and awaited*, so their process groups are killed before we return.
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(one(h)) for h in hypotheses]
        return [t.result() for t in tasks]

    def execute_parallel(
        self, hypotheses: Iterable[Hypothesis], worktrees: Mapping[str, Path | str]
    ) -> list[TestExecutionResult]:
        """Sync form of ``execute_parallel_async`` (see ``run_sync``)."""
        return run_sync(self.execute_parallel_async(hypotheses, worktrees))

    def execute_single(self, hypothesis: Hypothesis, worktree: Path | str) -> TestExecutionResult:
        """Sync form of ``execute_single_async``; ``test_timeout`` is enforced by the runner."""
        return run_sync(self.execute_single_async(hypothesis, worktree))

    def should_parallelize(self, hypotheses: Iterable[Hypothesis]) -> bool:
        """Parallel only pays when the time saved beats the worktree/session overheads.

        Sequential costs sum(estimates); parallel costs about max(estimates) plus a fixed
        overhead plus a per-hypothesis one (worktree creation, session start, cleanup).
        """
        estimates = [float(h.estimated_test_time) for h in hypotheses]
        if len(estimates) <= 1:
            return False
        cfg = self.config
        parallel = (
            max(estimates)
            + cfg.parallel_overhead_s
            + cfg.per_hypothesis_overhead_s * len(estimates)
        )
        return sum(estimates) > parallel
