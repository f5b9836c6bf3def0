"""Data types of the executor API, kept exactly as the original batch tool defined them.

Scripts written against the batch tool import these names; fields, defaults and enum
values are a contract. New fields only ever get defaults. (The daemon's TOML settings
live in ``settings``.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any


class HypothesisStatus(Enum):
    PENDING = "pending"
    TESTING = "testing"
    FALSIFIED = "falsified"
    SUPPORTED = "supported"
    INCONCLUSIVE = "inconclusive"


class TestResult(Enum):
    __test__ = False  # not a pytest test class, despite the name

    PASS = "pass"
    FAIL = "fail"
    TIMEOUT = "timeout"
    ERROR = "error"


@dataclass
class Hypothesis:
    id: str
    description: str
    test_strategy: str = ""
    expected_behavior: str = ""
    estimated_test_time: float = 0.0  # seconds; feeds should_parallelize
    probability: float = 0.5
    impact: float = 0.5
    test_complexity: float = 0.5
    status: HypothesisStatus = HypothesisStatus.PENDING
    test_results: dict[str, Any] | None = None
    confidence_score: float | None = None
    dependencies: list[str] = field(default_factory=list)


@dataclass
class TestExecutionResult:
    __test__ = False

    hypothesis_id: str
    result: TestResult
    duration: float
    stdout: str = ""  # the script's stdout, whole up to max_output_bytes (else head+tail)
    stderr: str = ""  # its stderr, likewise; "" for ERROR results (see error_message)
    exit_code: int = 0  # 124 on timeout, -1 when the script could not be run at all
    worktree_path: str = ""
    error_message: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly: enums become their values, paths strings."""
        return {
            "hypothesis_id": self.hypothesis_id,
            "result": self.result.value,
            "duration": self.duration,
            "stdout": self.stdout,
            "stderr": self.stderr,
            "exit_code": self.exit_code,
            "worktree_path": str(self.worktree_path),
            "error_message": self.error_message,
            "metrics": {
                k: (v.value if isinstance(v, Enum) else v) for k, v in self.metrics.items()
            },
        }


@dataclass
class FalsificationConfig:
    test_timeout: float = 300  # seconds per script; exceeded -> TIMEOUT, exit_code 124
    min_parallel_time: float = 60
    test_command: str = "pytest"
    max_concurrent_tests: int = 5  # honoured (the original tool ignored it)
    worktree_creation_time: float = 8.0
    session_startup_time: float = 5.0
    environment_setup_time: float = 5.0
    cleanup_time: float = 3.0
    # should_parallelize: parallel iff sum(estimates) > max(estimates) + fixed + per * n
    parallel_overhead_s: float = 7.0
    per_hypothesis_overhead_s: float = 16.0
    # On timeout the script's process group gets SIGTERM, then SIGKILL after this.
    kill_grace_s: float = 5.0
    # Library use writes no log files unless this is set: <log_dir>/<hypothesis id>.log
    log_dir: Path | None = None
    max_log_bytes: int = 8 * 1024 * 1024  # per log file: first half + last half kept
    # Per stream: TestExecutionResult.stdout and .stderr each hold up to this many bytes;
    # a longer stream keeps its first and last halves around a "[... N bytes cut ...]" line.
    max_output_bytes: int = 1024 * 1024
