"""The on-disk result store: atomic, private, bounded, and never trusting a bad entry."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from parallel_orchestrator.cache.store import CachedResult, ResultStore

KEY = "0123456789abcdef0123456789abcdef"


def entry(key: str = KEY, result: str = "fail", **kw) -> CachedResult:
    fields = dict(
        key=key,
        job_id="s-j1",
        hypothesis="hyp-1",
        script="tests",
        result=result,
        exit_code=1 if result == "fail" else 0,
        duration_s=1.5,
        output_tail="1 failed\n",
        results={"tests": {"total": 1, "failed": 1}},
    )
    fields.update(kw)
    return CachedResult(**fields)


def problems_of(store: ResultStore) -> list[tuple[Path, str]]:
    seen: list[tuple[Path, str]] = []
    store.on_problem = lambda path, error: seen.append((path, error))
    return seen


def test_round_trip_private_and_survives_a_new_instance(tmp_path: Path) -> None:
    cache = tmp_path / "state/cache"
    ResultStore(cache).put(entry(), b"the whole run log\n")
    got = ResultStore(cache).get(KEY)
    assert got is not None
    found, log = got
    assert (found.result, found.exit_code, found.output_tail) == ("fail", 1, "1 failed\n")
    assert found.results == {"tests": {"total": 1, "failed": 1}}
    assert log == b"the whole run log\n"
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    for name in os.listdir(cache):
        assert stat.S_IMODE((cache / name).stat().st_mode) == 0o600, name
    assert ResultStore(cache).get("f" * 32) is None


@pytest.mark.parametrize("result", ["timeout", "error", "cancelled"])
def test_only_pass_and_fail_are_stored(tmp_path: Path, result: str) -> None:
    with pytest.raises(ValueError, match="reusable"):
        ResultStore(tmp_path).put(entry(result=result), None)
    assert os.listdir(tmp_path) == []


def test_corrupt_entries_are_misses_with_a_reason(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    seen = problems_of(store)
    doc = tmp_path / f"{KEY}.json"
    for bad in (b"{not json", b"[]", json.dumps({"format": 1, "key": KEY}).encode()):
        doc.write_bytes(bad)
        assert store.get(KEY) is None
    store.put(entry(), b"log")
    (tmp_path / f"{KEY}.log").write_bytes(b"LOG")  # same size, other bytes
    assert store.get(KEY) is None
    store.put(entry(), b"log")
    data = json.loads(doc.read_text())
    data["result"] = "timeout"
    doc.write_text(json.dumps(data))
    assert store.get(KEY) is None
    assert len(seen) == 5 and all(path.parent == tmp_path for path, _ in seen)
    assert "does not match" in seen[3][1]


def test_fifo_folder_and_symlink_entries_are_misses(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    seen = problems_of(store)
    doc = tmp_path / f"{KEY}.json"
    os.mkfifo(doc)  # opening it for reading must not block
    assert store.get(KEY) is None
    doc.unlink()
    doc.mkdir()
    assert store.get(KEY) is None
    doc.rmdir()
    ResultStore(tmp_path / "real").put(entry(), None)
    doc.symlink_to(tmp_path / "real" / f"{KEY}.json")
    assert store.get(KEY) is None
    assert [e for _, e in seen][:2] == ["not a regular file", "not a regular file"]
    assert len(seen) == 3


def test_bounded_oldest_dropped_first(tmp_path: Path) -> None:
    store = ResultStore(tmp_path, max_entries=3)
    keys = [f"{i:032x}" for i in range(5)]
    for i, key in enumerate(keys):
        store.put(entry(key=key), b"x" * 10)
        os.utime(tmp_path / f"{key}.json", (1000 + i, 1000 + i))
    store.prune()
    assert store.keys() == keys[2:]
    assert sorted(os.listdir(tmp_path)) == sorted(
        f"{k}.{e}" for k in keys[2:] for e in ("json", "log")
    )
    by_bytes = ResultStore(tmp_path / "b", max_bytes=3000)
    for i, key in enumerate(keys):
        by_bytes.put(entry(key=key), b"y" * 1000)
        os.utime(tmp_path / "b" / f"{key}.json", (1000 + i, 1000 + i))
    by_bytes.prune()
    assert by_bytes.keys() == keys[-2:]  # each entry: ~400 bytes of document + 1000 of log


def test_a_crash_before_the_document_leaves_no_entry(tmp_path: Path) -> None:
    # The log is written first; without its document nothing is trusted or listed.
    (tmp_path / f"{KEY}.log").write_bytes(b"half of a put")
    store = ResultStore(tmp_path)
    assert store.get(KEY) is None and store.keys() == []
