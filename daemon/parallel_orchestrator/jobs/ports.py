"""``PO_PORT_BASE``: a block of 100 ports of its own for every hypothesis.

N hypotheses run the same suite at once; tests that bind a fixed port then collide, and
in ``compare`` a collision looks like a regression. Each hypothesis gets the start of a
block in ``[daemon] port_range`` that no other hypothesis holds while the daemon runs.

The first block tried is derived from the hypothesis id (crc32), so a hypothesis usually
gets the same block after a restart too; a taken block is skipped (linear probing). A
block is held for the daemon's lifetime, also after its worktree goes away, so a
hypothesis removed and added back keeps its ports; only when every block is held are
those of vanished hypotheses reused.
"""

from __future__ import annotations

import zlib
from collections.abc import Collection

from ..settings.loader import PORT_BLOCK_SIZE


class PortBlocks:
    """Hands out disjoint blocks of ``PORT_BLOCK_SIZE`` ports from ``[low, high)``."""

    def __init__(self, port_range: tuple[int, int]) -> None:
        self.port_range = port_range
        self._low, high = port_range
        self._count = max(0, (high - self._low) // PORT_BLOCK_SIZE)
        self._by_hyp: dict[str, int] = {}  # hypothesis -> block index
        self._holder: dict[int, str] = {}  # block index -> hypothesis

    @property
    def capacity(self) -> int:
        return self._count

    def base_for(self, hyp: str, live: Collection[str] = ()) -> int | None:
        """The first port of ``hyp``'s block, or None when every block is held by a live
        hypothesis (``live``: the hypotheses that exist now; others may give theirs up)."""
        index = self._by_hyp.get(hyp)
        if index is None:
            index = self._claim(hyp, live)
            if index is None:
                return None
        return self._low + index * PORT_BLOCK_SIZE

    def _claim(self, hyp: str, live: Collection[str]) -> int | None:
        if self._count <= 0:
            return None
        start = zlib.crc32(hyp.encode("utf-8", "surrogateescape")) % self._count
        order = [(start + step) % self._count for step in range(self._count)]
        free = next((i for i in order if i not in self._holder), None)
        if free is None:  # full: take back a block whose hypothesis is gone
            free = next((i for i in order if self._holder[i] not in live), None)
            if free is None:
                return None
            del self._by_hyp[self._holder[free]]
        self._holder[free] = hyp
        self._by_hyp[hyp] = free
        return free


def resized(blocks: PortBlocks, port_range: tuple[int, int]) -> PortBlocks:
    """After a reload: the same allocator when the range is unchanged (blocks stay put),
    else a fresh one handing out blocks from the new range."""
    return blocks if blocks.port_range == port_range else PortBlocks(port_range)
