"""parallel-orchestrator: try several candidate changes (git worktrees) side by side.

The package root re-exports the executor API of the original batch tool, which must keep
working unchanged. The exports load lazily (PEP 562) so that the CLI and the daemon do
not pay for modules they never use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "AsyncTestExecutor": "async_test_executor",
    "TestExecutor": "test_executor",
    "FalsificationConfig": "config",
    "Hypothesis": "config",
    "HypothesisStatus": "config",
    "TestExecutionResult": "config",
    "TestResult": "config",
}

__all__ = [
    "AsyncTestExecutor",
    "FalsificationConfig",
    "Hypothesis",
    "HypothesisStatus",
    "TestExecutionResult",
    "TestExecutor",
    "TestResult",
    "__version__",
]

if TYPE_CHECKING:
    from .async_test_executor import AsyncTestExecutor
    from .config import (
        FalsificationConfig,
        Hypothesis,
        HypothesisStatus,
        TestExecutionResult,
        TestResult,
    )
    from .test_executor import TestExecutor


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
