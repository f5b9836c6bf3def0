"""What a job is and what became of it: ``JobSpec`` in, ``JobOutcome`` out.

A leaf module (it imports only the leaf ``states``) so that every part of the job
machinery — spawning, watching, output, the runner — and every caller can name these
types without importing the runner, and imports flow one way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..states import OUTPUT_TAIL_BYTES, Result

__all__ = ["JobOutcome", "JobSpec", "Result"]


@dataclass(frozen=True)
class JobSpec:
    argv: tuple[str, ...]
    cwd: Path
    env: dict[str, str]  # the complete environment of the child; scrubbed again by the runner
    timeout_s: float  # <= 0 or inf: no limit
    kill_grace_s: float = 5.0
    job_id: str = ""  # also exported as PO_JOB_ID, the marker used to find escaped descendants
    log_path: Path | None = None  # combined stdout+stderr, created 0600, capped (head + tail)
    max_log_bytes: int = 8 * 1024 * 1024
    tail_bytes: int = OUTPUT_TAIL_BYTES
    # stderr in its own pipe, reported apart (JobOutcome.stderr_*). The log still gets
    # both, interleaved in the order the loop read them (exact order needs one pipe).
    split_stderr: bool = False
    # > 0: JobOutcome.output (and .stderr_output) hold each stream whole up to this many
    # bytes; a longer stream keeps its first and last halves around a cut marker. This is
    # held in memory per stream, so it is off for the daemon (its output goes to the log).
    capture_bytes: int = 0


@dataclass(frozen=True)
class JobOutcome:
    result: Result
    exit_code: int | None  # 124 on timeout; None when it never ran or was cancelled
    duration_s: float
    output_tail: str  # last ~tail_bytes of stdout (+stderr unless split), bad bytes replaced
    error_message: str = ""
    pid: int | None = None
    started_at: float = 0.0  # time.time()
    finished_at: float = 0.0
    extra: dict[str, object] = field(default_factory=dict)
    stderr_tail: str = ""  # split_stderr: last ~tail_bytes of stderr
    output: str = ""  # capture_bytes > 0: stdout (+stderr unless split), see JobSpec
    stderr_output: str = ""  # capture_bytes > 0 and split_stderr: stderr, likewise
