from __future__ import annotations

import subprocess
from pathlib import Path

from parallel_orchestrator.repo.filters import GitIgnoreOracle, GitInternalsFilter, GlobIgnoreFilter


def test_git_internals() -> None:
    f = GitInternalsFilter()
    assert f.ignored(".git/index")
    assert f.ignored("sub/.git/HEAD")
    assert not f.ignored("src/.gitignore")
    assert not f.ignored("git/x")


def test_glob_ignore_names_and_anchored() -> None:
    f = GlobIgnoreFilter(["node_modules", "*.pyc", "/build", "docs/_out/"])
    assert f.ignored("node_modules/x/y.js")
    assert f.ignored("pkg/node_modules/y.js")
    assert f.ignored("a/b/c.pyc")
    assert f.ignored("build/lib/x.py")
    assert not f.ignored("src/build/x.py")  # anchored at the root
    assert f.ignored("docs/_out/index.html")
    assert not f.ignored("src/main.py")


async def test_gitignore_oracle_uses_git_semantics(tmp_path: Path) -> None:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / ".gitignore").write_text("*.log\n!keep.log\nbuild/\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / ".gitignore").write_text("local.txt\n")
    oracle = GitIgnoreOracle(tmp_path)
    paths = [
        "a.log",
        "keep.log",
        "build/x.o",
        "sub/local.txt",
        "src/a.py",
        "name with space.log",
        "weird$(x);.py",
    ]
    assert await oracle.ignored(paths) == {
        "a.log",
        "build/x.o",
        "sub/local.txt",
        "name with space.log",
    }
    # cached: a second answer needs no git (proved by breaking git's view)
    (tmp_path / ".gitignore").write_text("")
    assert "a.log" in await oracle.ignored(["a.log"])
    oracle.invalidate()
    assert await oracle.ignored(["a.log"]) == set()
