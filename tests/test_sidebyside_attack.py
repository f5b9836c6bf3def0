"""Attacks on issue 15 (side by side, hooks, wait) with the real daemon and CLI."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from test_sidebyside_e2e import Side, finished, side  # noqa: F401  (fixture)

pytestmark = pytest.mark.timeout(180)

# The job swaps its PO_TMPDIR for a symlink to a folder outside (and a read-only tree).
SWAP = r"""
import os, shutil, sys
tmp = os.environ["PO_TMPDIR"]
outside = sys.argv[1]
shutil.rmtree(tmp)
os.symlink(outside, tmp)
"""


def test_a_temp_dir_swapped_for_a_symlink_is_removed_without_following_it(
    side: Side,  # noqa: F811
) -> None:
    outside = side.root / "outside"
    (outside / "deep").mkdir(parents=True)
    (outside / "deep" / "canary").write_text("keep me")
    tool = side.root / "swap.py"
    tool.write_text(SWAP)
    script = {
        "name": "swap",
        "command": [sys.executable, os.fsdecode(tool), os.fsdecode(outside)],
        "timeout_s": 60,
        "kill_grace_s": 1,
        "env": side.env,
    }
    d = side.start([script], run_on_start=True)
    for hyp in side.trees:
        finished(d, hyp, "swap")
    assert (outside / "deep" / "canary").read_text() == "keep me"
    # the link itself went with the job: nothing left, nothing failed
    assert not d.events("tmpdir_cleanup_failed")
    root = Path((d.status_path.parent / "tmproot").read_text().strip())
    assert list(root.iterdir()) == []  # the links went with their jobs
    d.stop()
    assert (outside / "deep" / "canary").read_text() == "keep me"
