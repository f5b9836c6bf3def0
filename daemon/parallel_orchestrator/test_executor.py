"""``TestExecutor``: the batch tool's synchronous entry point, now a thin wrapper.

Kept so that ``from ...test_executor import TestExecutor`` and its sync methods work
unchanged; every call delegates to ``AsyncTestExecutor``. The config types are
re-exported because scripts of the batch tool imported them from here as well.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from .async_test_executor import AsyncTestExecutor
from .config import (
    FalsificationConfig,
    Hypothesis,
    HypothesisStatus,
    TestExecutionResult,
    TestResult,
)

__all__ = [
    "FalsificationConfig",
    "Hypothesis",
    "HypothesisStatus",
    "TestExecutionResult",
    "TestExecutor",
    "TestResult",
]


class TestExecutor:
    """Synchronous facade over ``AsyncTestExecutor`` (same config, same results)."""

    __test__ = False  # not a pytest test class, despite the name

    def __init__(self, config: FalsificationConfig | None = None) -> None:
        self.async_executor = AsyncTestExecutor(config)
        self.config = self.async_executor.config

    def execute_parallel(
        self, hypotheses: Iterable[Hypothesis], worktrees: Mapping[str, Path | str]
    ) -> list[TestExecutionResult]:
        return self.async_executor.execute_parallel(hypotheses, worktrees)

    def execute_single(self, hypothesis: Hypothesis, worktree: Path | str) -> TestExecutionResult:
        return self.async_executor.execute_single(hypothesis, worktree)

    def should_parallelize(self, hypotheses: Iterable[Hypothesis]) -> bool:
        return self.async_executor.should_parallelize(hypotheses)
