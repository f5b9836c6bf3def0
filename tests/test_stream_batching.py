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


def _write_steadily(folder: Path, count: int, seconds: float) -> None:
    """``count`` new files at an even pace over ``seconds`` (a build, a generator, a sync)."""
    folder.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    for i in range(count):
        due = started + seconds * i / count
        while time.monotonic() < due:
            pass  # a busy wait: sleep() is far too coarse for 4 files a millisecond
        (folder / f"f{i:05d}.py").write_text("X = 1\n")


def _changed_counts(daemon: DaemonProcess) -> list[int]:
    return [b["changed_count"] for b in daemon.events("batch_formed") if b["changed_count"]]


@pytest.mark.parametrize(
    ("count", "seconds", "debounce_ms", "max_wait_ms"),
    [(200, 0.05, 20, 2000), (2000, 1.0, 200, 2000)],
    ids=["200-files-in-50ms-debounce-20", "2000-files-in-1s-defaults"],
)
def test_a_sustained_stream_of_writes_is_one_batch_and_one_run(
    tmp_path: Path, count: int, seconds: float, debounce_ms: int, max_wait_ms: int
) -> None:
    _, trees = make_repo(tmp_path / "r", hypotheses=("hyp-1",))
    config = write_config(
        tmp_path / "cfg" / "po.toml",
        trees["repo"],
        [{"name": "py", "command": ["true"], "watch": ["**/*.py"]}],
        debounce_ms=debounce_ms,
        max_batch_wait_ms=max_wait_ms,
    )
    daemon = DaemonProcess(config)
    try:
        daemon.wait_ready()
        _write_steadily(trees["hyp-1"] / "gen", count, seconds)
        wait_until(lambda: sum(_changed_counts(daemon)) >= count, 60, what=f"{count} changed paths")
        daemon.wait_event("job_finished")
        assert _changed_counts(daemon) == [count]
        assert len(daemon.events("job_started")) == 1
    finally:
        daemon.stop()
