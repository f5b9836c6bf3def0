"""File digest index and input keys on real worktrees: content decides, filters as the watcher's."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from harness import git, make_repo
from parallel_orchestrator.cache.index import FileDigestIndex
from parallel_orchestrator.cache.inputkey import input_key
from parallel_orchestrator.cache.listing import IgnoreRules, list_files
from parallel_orchestrator.settings.loader import ScriptSettings

PY = ("**/*.py",)
SCRIPT = ScriptSettings(name="tests", command=("python", "-m", "pytest", "{worktree}"), watch=PY)
RULES = IgnoreRules(globs=(), respect_gitignore=True)


def key_of(index: FileDigestIndex, script: ScriptSettings = SCRIPT) -> str | None:
    return input_key(script, index.view_digest(script.watch))


def repo_with(tmp_path: Path, files: dict[str, str], hyps=("hyp-1", "hyp-2")) -> dict[str, Path]:
    _, trees = make_repo(tmp_path, hyps, files)
    return trees


FILES = {
    "src/app.py": "VALUE = 1\n",
    "tests/test_app.py": "def test(): pass\n",
    "README.md": "demo\n",
    ".gitignore": "build/\n*.log\n",
}


def test_identical_worktrees_have_equal_keys_and_content_decides(tmp_path: Path) -> None:
    trees = repo_with(tmp_path, FILES)
    a, b = FileDigestIndex(trees["hyp-1"], RULES), FileDigestIndex(trees["hyp-2"], RULES)
    assert key_of(a) == key_of(b) is not None
    before = key_of(a)
    app = trees["hyp-1"] / "src/app.py"
    os.utime(app, ns=(1, 1))  # a bare touch
    app.write_text("VALUE = 1\n")  # rewriting the same bytes
    a.mark_changed(["src/app.py"])
    assert key_of(a) == before
    app.write_text("VALUE = 2\n")
    a.mark_changed(["src/app.py"])
    changed = key_of(a)
    assert changed != before
    app.write_text("VALUE = 1\n")
    a.mark_changed(["src/app.py"])
    assert key_of(a) == before


def test_unwatched_and_ignored_files_do_not_count(tmp_path: Path) -> None:
    trees = repo_with(tmp_path, FILES)
    root = trees["hyp-1"]
    index = FileDigestIndex(root, IgnoreRules(globs=("vendor",), respect_gitignore=True))
    before = key_of(index)
    (root / "README.md").write_text("other\n")  # not matched by **/*.py
    (root / "build").mkdir()
    (root / "build/gen.py").write_text("x = 1\n")  # git-ignored folder
    (root / "vendor").mkdir()
    (root / "vendor/lib.py").write_text("y = 2\n")  # an ``ignore`` glob
    index.mark_changed(["README.md", "build/gen.py", "vendor/lib.py"])
    assert key_of(index) == before
    index.invalidate()  # a full listing agrees
    assert key_of(index) == before
    (root / "src/new.py").write_text("z = 3\n")  # an untracked, watched, not ignored file
    index.mark_changed(["src/new.py"])
    with_new = key_of(index)
    assert with_new != before
    fresh = FileDigestIndex(root, index.rules)
    assert key_of(fresh) == with_new


def test_one_change_rehashes_one_file(tmp_path: Path) -> None:
    files = {f"pkg/m{i}.py": f"v = {i}\n" for i in range(200)}
    trees = repo_with(tmp_path, files, hyps=("hyp-1",))
    index = FileDigestIndex(trees["hyp-1"], RULES)
    key_of(index)
    assert index.rehashed == 200
    (trees["hyp-1"] / "pkg/m7.py").write_text("v = 'changed'\n")
    index.mark_changed(["pkg/m7.py"])
    key_of(index)
    assert index.rehashed == 201


def test_deletions_renames_and_folder_moves(tmp_path: Path) -> None:
    trees = repo_with(tmp_path, {"a/x.py": "1\n", "a/y.py": "2\n", "b.py": "3\n"}, ("h",))
    root = trees["h"]
    index = FileDigestIndex(root, RULES)
    start = key_of(index)
    shutil.move(root / "a", tmp_path / "elsewhere")  # a folder moved out: one event
    index.mark_changed(["a"])
    gone = key_of(index)
    assert gone != start
    assert gone == key_of(FileDigestIndex(root, RULES))
    shutil.move(tmp_path / "elsewhere", root / "a")  # and back in: again one event
    index.mark_changed(["a"])
    assert key_of(index) == start


def test_settings_are_part_of_the_key_but_not_the_hypothesis(tmp_path: Path) -> None:
    trees = repo_with(tmp_path, FILES)
    index = FileDigestIndex(trees["hyp-1"], RULES)
    base = key_of(index)
    variants = [
        ScriptSettings(name="tests", command=("python", "-m", "pytest"), watch=PY),
        ScriptSettings(name="tests", command=SCRIPT.command, watch=PY, cwd="src"),
        ScriptSettings(name="tests", command=SCRIPT.command, watch=PY, env={"A": "1"}),
        ScriptSettings(name="tests", command=SCRIPT.command, watch=("src/**/*.py",)),
    ]
    keys = {key_of(index, s) for s in variants}
    assert base not in keys and len(keys) == len(variants)
    renamed = ScriptSettings(name="other", command=SCRIPT.command, watch=PY, timeout_s=9)
    assert key_of(index, renamed) == base  # the name and the timeout are not inputs


def test_fifo_symlink_and_unreadable_files(tmp_path: Path) -> None:
    trees = repo_with(tmp_path, {"a.py": "1\n"}, ("h",))
    root = trees["h"]
    index = FileDigestIndex(root, RULES)
    start = key_of(index)
    os.mkfifo(root / "pipe.py")  # never opened: reading a FIFO would block
    index.mark_changed(["pipe.py"])
    with_fifo = key_of(index)
    assert with_fifo not in (None, start)
    os.unlink(root / "pipe.py")
    os.symlink("a.py", root / "link.py")
    index.mark_changed(["pipe.py", "link.py"])
    with_link = key_of(index)
    assert with_link not in (None, start, with_fifo)
    os.unlink(root / "link.py")
    index.mark_changed(["link.py"])
    assert key_of(index) == start
    if os.geteuid() != 0:  # root reads anything
        (root / "a.py").chmod(0)
        (root / "a.py").write_bytes(b"")
        index.mark_changed(["a.py"])
        digest = index.view_digest(PY)
        assert digest.value is None and "a.py" in digest.problem


def test_listing_matches_git_and_walk_agree_without_git(tmp_path: Path) -> None:
    trees = repo_with(tmp_path, FILES, ("h",))
    root = trees["h"]
    (root / "build").mkdir()
    (root / "build/out.py").write_text("")
    (root / "x.log").write_text("")
    listed = set(list_files(root, RULES))
    assert listed == {"src/app.py", "tests/test_app.py", "README.md", ".gitignore"}
    walked = set(list_files(root, IgnoreRules(globs=("build", "*.log"), respect_gitignore=False)))
    assert walked == listed
    git(root, "status")  # the listing took no lock that would disturb the user's git


def test_one_regex_per_view_matches_like_pathglob() -> None:
    from parallel_orchestrator.cache.index import globs_regex
    from parallel_orchestrator.repo.pathglob import matches_any

    globs = ("**/*.py", "src/*.toml", "docs/**", "a?c/[!x]*.txt")
    paths = [
        "a.py",
        "x/y/z.py",
        "src/p.toml",
        "src/q/p.toml",
        "docs/a/b",
        "abc/y.txt",
        "abc/x.txt",
        "README.md",
        "docs",
        "b.pyc",
    ]
    for pattern_set in (globs, globs[:1], (), globs[2:]):
        rx = globs_regex(pattern_set)
        assert [bool(rx.match(p)) for p in paths] == [matches_any(p, pattern_set) for p in paths]


def test_large_files_are_streamed_and_content_still_decides(tmp_path: Path) -> None:
    from parallel_orchestrator.cache.digests import ONE_READ_MAX, digest_file

    big = tmp_path / "big.py"
    data = os.urandom(ONE_READ_MAX + 12345)
    big.write_bytes(data)
    first = digest_file(str(big), 0)
    assert first is not None and first.digest is not None
    big.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # the last byte differs
    second = digest_file(str(big), 0)
    assert second is not None and second.digest not in (None, first.digest)
    big.write_bytes(data)
    third = digest_file(str(big), 0)
    assert third is not None and third.digest == first.digest
