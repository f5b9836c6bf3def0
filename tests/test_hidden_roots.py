"""``HiddenRoots`` on its own: which roots the watcher arms, and when it re-arms."""

from __future__ import annotations

from parallel_orchestrator.watch.hiddenroots import HiddenRoots


class FakeFs:
    def __init__(self) -> None:
        self.now = 1000.0
        self.denied: set[str] = set()

    def clock(self) -> float:
        return self.now

    def probe(self, path: str) -> str:
        return "Permission denied" if path in self.denied else ""


def test_a_hidden_root_is_left_out_said_once_and_taken_back_with_its_time() -> None:
    fs = FakeFs()
    roots = HiddenRoots(clock=fs.clock, probe=fs.probe, check_every_s=0.5)
    fs.denied = {"/w/b"}
    assert roots.visible(["/w/a", "/w/b"]) == (["/w/a"], [("/w/b", "Permission denied")])
    fs.now += 5
    assert roots.visible(["/w/a", "/w/b"]) == (["/w/a"], [])  # said once, not per arm
    assert not roots.any_revealed()  # still hidden
    fs.denied.clear()
    fs.now += 0.1
    assert not roots.any_revealed()  # probed at most every check_every_s
    fs.now += 0.5
    assert roots.any_revealed()
    assert roots.visible(["/w/a", "/w/b"]) == (["/w/a", "/w/b"], [])
    assert roots.take() == {"/w/b": 1000.0}  # hidden since the first arm that met it
    assert roots.take() == {}


def test_a_hidden_root_no_longer_asked_for_is_forgotten() -> None:
    fs = FakeFs()
    roots = HiddenRoots(clock=fs.clock, probe=fs.probe, check_every_s=0.0)
    fs.denied = {"/w/b"}
    roots.visible(["/w/a", "/w/b"])
    roots.visible(["/w/a"])
    fs.denied.clear()
    fs.now += 1
    assert not roots.any_revealed()
    assert roots.take() == {}
