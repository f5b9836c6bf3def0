"""Process-state checks shared by the janitor and ledger tests."""

from __future__ import annotations

import time
from collections.abc import Callable

from parallel_orchestrator.jobs import janitor


def running(pid: int, start_time: int | None = None) -> bool:
    """Alive and not a zombie (PID 1 here never reaps: kill(pid, 0) would lie)."""
    st = janitor.read_stat(pid)
    if st is None or st.state in ("Z", "X"):
        return False
    return start_time is None or st.start_time == start_time


def wait_until(pred: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True
