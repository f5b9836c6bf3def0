"""The batcher is pure logic over explicit timestamps: every test uses a fake clock."""

from __future__ import annotations

from parallel_orchestrator.pipeline.batcher import STALE_LOCK_S, UNREPORTED_UNLOCK_S, Batcher


def make(locked: set[str] | None = None, debounce: float = 0.2, max_wait: float = 2.0):
    locks = locked if locked is not None else set()
    return Batcher(debounce, max_wait, lambda hyp: hyp in locks), locks


def test_batch_closes_debounce_after_last_change() -> None:
    b, _ = make()
    b.add("h", {"a.py"}, 10.0, 10.0)
    assert b.next_deadline(10.0) == 10.2
    assert b.close_due(10.19) == []
    b.add("h", {"b.py"}, 10.15, 10.15)  # a later change pushes the close out
    assert b.close_due(10.3) == []
    [batch] = b.close_due(10.35)
    assert batch.changes == {"h": {"a.py", "b.py"}}
    assert b.next_deadline(11.0) is None


def test_max_wait_caps_a_continuous_burst() -> None:
    b, _ = make(debounce=0.2, max_wait=1.0)
    batches = []
    for i in range(60):  # a change every 50 ms for 3 s: never quiet for 200 ms
        t = i * 0.05
        b.add("h", {f"f{i}"}, t, t)
        batches += b.close_due(t)
    batches += b.close_due(5.0)
    # one batch per max_wait window, never one per change
    assert 3 <= len(batches) <= 4
    assert sum(x.changed_count for x in batches) == 60


def test_a_burst_of_1000_writes_is_one_batch() -> None:
    b, _ = make()
    for i in range(1000):
        t = i * 0.0005
        b.add("h", {f"src/f{i}.py"}, t, t)
        assert b.close_due(t) == []
    [batch] = b.close_due(0.5 + 0.2)
    assert batch.changed_count == 1000


def test_changes_of_several_hypotheses_share_one_batch() -> None:
    b, _ = make()
    b.add("h1", {"a"}, 0.0, 0.0)
    b.add("h2", {"b"}, 0.05, 0.05)
    [batch] = b.close_due(1.0)
    assert batch.changes == {"h1": {"a"}, "h2": {"b"}}


def test_locked_hypothesis_is_held_until_the_lock_goes() -> None:
    b, locks = make(locked={"h1"})
    b.add("h1", {"a"}, 0.0, 0.0)
    b.add("h2", {"b"}, 0.0, 0.0)
    [batch] = b.close_due(0.3)
    assert batch.changes == {"h2": {"b"}}  # h2 is not held back by h1's git operation
    b.add("h1", {"c"}, 0.4, 0.4)
    assert b.close_due(0.7) == []
    assert b.next_deadline(0.7) is not None  # keeps rechecking the lock
    locks.clear()
    b.lock_released("h1")  # the watcher saw index.lock go
    [released] = b.close_due(0.8)
    assert released.changes == {"h1": {"a", "c"}}
    assert released.reason == "git_op_finished"


def test_an_unreported_unlock_waits_for_the_watcher_then_releases_anyway() -> None:
    b, locks = make(locked={"h"})
    b.add("h", {"a"}, 0.0, 0.0)
    assert b.close_due(0.3) == []
    locks.clear()  # gone on disk; the watcher has not said so: git's last files may be
    assert b.close_due(0.5) == []  # still on their way
    b.add("h", {"b"}, 0.6, 0.6)
    [released] = b.close_due(0.5 + UNREPORTED_UNLOCK_S)  # a watcher that missed it
    assert released.changes == {"h": {"a", "b"}}


def test_a_stale_lock_does_not_hold_changes_forever() -> None:
    b, _ = make(locked={"h"})
    b.add("h", {"a"}, 0.0, 0.0)
    assert b.close_due(0.3) == []
    [released] = b.close_due(0.3 + STALE_LOCK_S)
    assert released.reason == "git_lock_stale"


def test_forget_drops_pending_and_held() -> None:
    b, _ = make(locked={"h"})
    b.add("h", {"a"}, 0.0, 0.0)
    b.close_due(0.3)
    b.add("h", {"b"}, 0.4, 0.4)
    b.forget("h")
    assert b.close_due(10.0) == []


def test_batch_ids_are_unique() -> None:
    b, _ = make()
    ids = set()
    for i in range(5):
        b.add("h", {"a"}, i, i)
        ids |= {x.batch_id for x in b.close_due(i + 0.5)}
    assert len(ids) == 5


def test_transient_files_are_dropped_but_deletes_count() -> None:
    existing = {"calc.py"}
    b = Batcher(0.2, 2.0, lambda h: False, exists=lambda h, p: p in existing)
    # an editor's save: temp file created, renamed onto calc.py (modified)
    b.add("h", {".calc.py.swp", "calc.py"}, 0.0, 0.0, created={".calc.py.swp"})
    # a real delete of a file that existed before the batch
    b.add("h", {"old.py"}, 0.0, 0.0)
    [batch] = b.close_due(1.0)
    assert batch.changes == {"h": {"calc.py", "old.py"}}


def test_a_batch_of_only_transient_files_is_empty() -> None:
    b = Batcher(0.2, 2.0, lambda h: False, exists=lambda h, p: False)
    b.add("h", {"tmp123"}, 0.0, 0.0, created={"tmp123"})
    assert b.close_due(1.0) == []


def test_changes_still_pending_when_the_lock_goes_leave_with_the_held_ones() -> None:
    # git wrote its last files just before removing index.lock; the daemon sees the
    # removal (and closes early) before those files' debounce ended: one batch, not two.
    b, locks = make({"h"})
    b.add("h", {"a.py"}, 10.0, 10.0)
    assert b.close_due(10.3) == []  # held: the lock exists
    b.add("h", {"b.py"}, 10.4, 10.4)
    b.add("other", {"c.py"}, 10.4, 10.4)
    locks.clear()
    b.lock_released("h")
    [released] = b.close_due(10.45)  # forced early by the lock's removal
    assert released.reason == "git_op_finished"
    assert released.changes == {"h": {"a.py", "b.py"}}
    [rest] = b.close_due(10.6)  # the other hypothesis keeps its own debounce
    assert rest.changes == {"other": {"c.py"}}
    assert b.next_deadline(11.0) is None
