from __future__ import annotations

import pytest

from parallel_orchestrator.pipeline.planner import affected_scripts, plan
from parallel_orchestrator.repo.pathglob import compile_glob, matches_any
from parallel_orchestrator.settings.loader import ScriptSettings


@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [
        ("**/*.py", "a.py", True),
        ("**/*.py", "pkg/sub/a.py", True),
        ("**/*.py", "a.pyc", False),
        ("*.py", "pkg/a.py", False),
        ("*.py", "a.py", True),
        ("src/**", "src/a/b.c", True),
        ("src/**", "srcx/a", False),
        ("a/**/b.txt", "a/b.txt", True),
        ("a/**/b.txt", "a/x/y/b.txt", True),
        ("docs/*.md", "docs/x/y.md", False),
        ("[ab].py", "a.py", True),
        ("[!ab].py", "a.py", False),
        ("?.py", "x.py", True),
        ("./tests/*.py", "tests/t.py", True),
        ("**", "any/thing", True),
        ("name with space/*.py", "name with space/x.py", True),
        ("weird$(x);'\"/*", "weird$(x);'\"/f", True),
    ],
)
def test_glob_semantics(pattern: str, path: str, expected: bool) -> None:
    assert bool(compile_glob(pattern).match(path)) is expected


def test_matches_any() -> None:
    assert matches_any("a/b.rs", ("**/*.py", "**/*.rs"))
    assert not matches_any("a/b.go", ("**/*.py", "**/*.rs"))


def _script(name: str, *watch: str) -> ScriptSettings:
    return ScriptSettings(name=name, command=("true",), watch=watch)


def test_plan_maps_changes_to_affected_scripts_only() -> None:
    scripts = [_script("py", "**/*.py"), _script("docs", "docs/**"), _script("cfg", "*.toml")]
    changes = {
        "h1": ["pkg/mod.py"],
        "h2": ["docs/index.md", "pyproject.toml"],
        "h3": ["README.md"],  # matches nothing: starts nothing
    }
    assert plan(changes, scripts) == {"h1": ["py"], "h2": ["docs", "cfg"]}


def test_affected_scripts_keeps_config_order() -> None:
    scripts = [_script("b", "**"), _script("a", "**/*.py")]
    assert affected_scripts(["x.py"], scripts) == ["b", "a"]
