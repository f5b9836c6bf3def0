"""Names of states and results, and the sizes shared across the package.

These strings are a contract: they appear in the status file, the JSON log and
``once --json``, and readers (dashboards, agents, the hidden tests of the design) match
them exactly. Written once here so no module spells them on its own. A leaf module: it
imports nothing from the package.
"""

from __future__ import annotations

from typing import Literal

# -- a job's result (JobOutcome.result, a cell's last_result) ---------------------------
PASS = "pass"
FAIL = "fail"
TIMEOUT = "timeout"
ERROR = "error"
CANCELLED = "cancelled"
Result = Literal["pass", "fail", "timeout", "error", "cancelled"]
FINAL_RESULTS: tuple[str, ...] = (PASS, FAIL, TIMEOUT, ERROR, CANCELLED)
FAILING_RESULTS: frozenset[str] = frozenset({FAIL, TIMEOUT, ERROR})

# -- a status cell's state: a final result, or one of these -----------------------------
NEVER_RUN = "never_run"
QUEUED = "queued"
RUNNING = "running"
ACTIVE_STATES: tuple[str, ...] = (RUNNING, QUEUED)
# The status file's summary keys, in the order the design lists them.
CELL_STATES: tuple[str, ...] = (*FINAL_RESULTS, RUNNING, QUEUED, NEVER_RUN)

# -- the daemon's state (status file: daemon.state) -------------------------------------
DAEMON_STARTING = "starting"
DAEMON_IDLE = "idle"
DAEMON_RUNNING = "running"
DAEMON_RELOADING = "reloading"
DAEMON_STOPPING = "stopping"
DAEMON_STOPPED = "stopped"
DAEMON_STATES: tuple[str, ...] = (
    DAEMON_STARTING,
    DAEMON_IDLE,
    DAEMON_RUNNING,
    DAEMON_RELOADING,
    DAEMON_STOPPING,
    DAEMON_STOPPED,
)

# -- the repository's presence (status file: daemon.repo_state) --------------------------
REPO_OK = "ok"
REPO_MISSING = "repo_missing"  # worktrees.repo was moved or deleted: nothing runs

# -- sizes ------------------------------------------------------------------------------
# The last bytes of a job's output kept in its outcome and status cell (output_tail).
OUTPUT_TAIL_BYTES = 2048

# -- why a requested job was dropped (log event job_dropped: reason) --------------------
DROP_BUSY = "busy"  # on_busy = "ignore" and the job is running
DROP_STOPPING = "stopping"  # the daemon is shutting down
