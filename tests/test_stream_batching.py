"""Issue 11 item 13: sustained writes are one batch, not many.

During a stream the watcher returns a chunk every ``chunk`` ms while changes keep
coming; each chunk was dated before it was posted, so the quiet deadline fell between
chunks and one burst became several batches (5,000 files over 2.7 s: 11 batches; 200
files over 50 ms at debounce 20 ms: 2 runs). A batch now stays open while the watcher is
still inside a stream: one batch per burst, up to max_batch_wait_ms, at any debounce.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from harness import DaemonProcess, make_repo, wait_until, write_config

ATTEMPTS = 3


def _write_steadily(folder: Path, count: int, seconds: float) -> float:
    """``count`` new files at an even pace over ``seconds`` (a build, a generator, a sync);
    returns the longest gap between two writes (a loaded machine may pause the writer)."""
    folder.mkdir(parents=True, exist_ok=True)
    started = previous = time.monotonic()
    longest = 0.0
    for i in range(count):
        due = started + seconds * i / count
        while time.monotonic() < due:
            pass  # a busy wait: sleep() is far too coarse for 4 files a millisecond
        (folder / f"f{i:05d}.py").write_text("X = 1\n")
        now = time.monotonic()
        longest, previous = max(longest, now - previous), now
    return longest


def _changed_counts(daemon: DaemonProcess) -> list[int]:
    return [b["changed_count"] for b in daemon.events("batch_formed") if b["changed_count"]]


@pytest.mark.parametrize(
    ("count", "seconds", "debounce_ms"),
    [(200, 0.05, 20), (2000, 1.0, 200)],
    ids=["200-files-in-50ms-debounce-20", "2000-files-in-1s-debounce-200"],
)
def test_a_sustained_stream_of_writes_is_one_batch_and_one_run(
    tmp_path: Path, count: int, seconds: float, debounce_ms: int
) -> None:
    """Each burst whose writer was never paused for half the debounce (a loaded machine
    may pause it longer, which is a real quiet) must be exactly one batch and one run."""
    _, trees = make_repo(tmp_path / "r", hypotheses=("hyp-1",))
    config = write_config(
        tmp_path / "cfg" / "po.toml",
        trees["repo"],
        [{"name": "py", "command": ["true"], "watch": ["**/*.py"]}],
        debounce_ms=debounce_ms,
        max_batch_wait_ms=30000,
    )
    daemon = DaemonProcess(config)
    clean = 0
    try:
        daemon.wait_ready()
        for attempt in range(ATTEMPTS):
            batches_before = len(_changed_counts(daemon))
            runs_before = len(daemon.events("job_finished"))
            longest = _write_steadily(trees["hyp-1"] / f"gen{attempt}", count, seconds)
            wait_until(
                lambda n=batches_before: sum(_changed_counts(daemon)[n:]) >= count,
                60,
                what=f"{count} changed paths",
            )
            daemon.wait_event("job_finished", count=runs_before + 1)
            if longest >= debounce_ms / 2000:
                continue  # the writer itself paused: not a sustained stream
            clean += 1
            assert _changed_counts(daemon)[batches_before:] == [count], f"attempt {attempt}"
            assert len(daemon.events("job_started")) == runs_before + 1
    finally:
        daemon.stop()
    if not clean:
        pytest.skip("the machine paused the writer in every attempt")
