"""Whatever a config file holds, loading it gives Settings or a ConfigError of single lines.

Anything else (a KeyError, a TypeError, a ValueError from deep inside) would crash the
daemon on SIGHUP instead of logging ``config_invalid`` and keeping the old config.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parallel_orchestrator.settings.loader import ConfigError, Settings, load_settings

ENV = {"HOME": "/home/fuzz"}

scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.integers(min_value=-3, max_value=3000),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["", ".", "..", "../x", "/abs", "~", "~/x", "restart", "debug", "a b", "'"]),
    st.datetimes(min_value=dt.datetime(1970, 1, 1)),
    st.dates(),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)

# Per key, values that are (mostly) valid, so that generated documents also load.
GOOD_VALUES: dict[str, list[Any]] = {
    "state_dir": ["", "state", "~/st", "/var/lib/po"],
    "status_file": ["", "s.json"],
    "log_file": ["", "log.jsonl"],
    "log_level": ["debug", "info", "warning", "error"],
    "debounce_ms": [1, 200, 5000],
    "max_batch_wait_ms": [1, 2000, 10_000],
    "max_concurrency": [0, 1, 8],
    "on_busy": ["restart", "queue", "ignore"],
    "run_on_start": [True, False],
    "keep_runs": [1, 20],
    "repo": ["", ".", "../repo"],
    "paths": [[], ["a", "b c"]],
    "include": [["*"], ["hyp-*"], []],
    "exclude": [[], ["x"]],
    "ignore": [[], ["*.log"]],
    "respect_gitignore": [True, False],
    "name": ["tests", "lint", "a.b-c_d"],
    "command": [["pytest"], "pytest -q", "sh -c 'exit 1'", ["a", "{worktree}"]],
    "watch": [["**/*.py"], []],
    "timeout_s": [1, 0.5, 300],
    "kill_grace_s": [0, 5, 0.1],
    "env": [{}, {"A": "1"}],
    "cwd": ["", "sub", "a/../b"],
}
DAEMON_KEYS = list(GOOD_VALUES)[:10]
WORKTREE_KEYS = list(GOOD_VALUES)[10:16]
SCRIPT_KEYS = list(GOOD_VALUES)[16:]


def tables(keys: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Known keys with mostly good values, sometimes random ones, rarely a stray key."""
    known = st.fixed_dictionaries(
        {},
        optional={
            key: st.one_of(
                st.sampled_from(GOOD_VALUES[key]), st.sampled_from(GOOD_VALUES[key]), values
            )
            for key in keys
        },
    )
    stray = st.dictionaries(st.text(max_size=8), values, max_size=1) | st.just({})
    return st.builds(lambda a, b: {**b, **a}, known, st.just({}) | stray)


plausible_documents = st.fixed_dictionaries(
    {},
    optional={
        "daemon": tables(DAEMON_KEYS),
        "worktrees": tables(WORKTREE_KEYS),
        "scripts": st.lists(tables(SCRIPT_KEYS), max_size=3),
    },
)


def good_table(keys: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {}, optional={key: st.sampled_from(GOOD_VALUES[key]) for key in keys}
    )


valid_documents = st.fixed_dictionaries(
    {
        "scripts": st.lists(
            st.builds(
                lambda required, rest: {**rest, **required},
                st.fixed_dictionaries(
                    {
                        "name": st.sampled_from(GOOD_VALUES["name"]),
                        "command": st.sampled_from(GOOD_VALUES["command"]),
                    }
                ),
                good_table(SCRIPT_KEYS[2:]),
            ),
            min_size=1,
            max_size=3,
            unique_by=lambda script: script["name"],
        )
    },
    optional={
        # max_batch_wait_ms >= debounce_ms always holds for these choices.
        "daemon": good_table([k for k in DAEMON_KEYS if k != "max_batch_wait_ms"]).map(
            lambda table: {**table, "max_batch_wait_ms": 5000}
        ),
        "worktrees": good_table([k for k in WORKTREE_KEYS if k != "repo"]),
    },
)
random_documents = st.dictionaries(st.text(max_size=8), values, max_size=5)


@pytest.fixture(scope="module")
def config_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "po.toml"


def load_bytes(path: Path, data: bytes) -> Settings | None:
    path.write_bytes(data)
    path.chmod(0o600)
    try:
        return load_settings(path, cwd=path.parent, env=ENV)
    except ConfigError as exc:
        assert exc.errors
        for line in exc.errors:
            assert line and "\n" not in line and "\r" not in line and line.isprintable(), line
        assert "\n" not in str(exc)
        return None


def check_settings(result: Settings | None) -> None:
    if result is None:
        return
    assert result.daemon.debounce_ms >= 1
    assert result.daemon.max_batch_wait_ms >= result.daemon.debounce_ms
    assert result.scripts
    assert len({s.name for s in result.scripts}) == len(result.scripts)
    for script in result.scripts:
        assert script.command and all(script.command)
        assert script.timeout_s > 0 and script.kill_grace_s >= 0
        assert not script.cwd.startswith("/") and not script.cwd.startswith("..")


def dump(document: dict[str, Any]) -> bytes:
    return tomli_w.dumps(document).encode("utf-8", "surrogatepass")


FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@FUZZ
@given(document=plausible_documents)
def test_plausible_documents(config_path: Path, document: dict[str, Any]) -> None:
    check_settings(load_bytes(config_path, dump(document)))


@FUZZ
@given(document=valid_documents)
def test_valid_documents_always_load(config_path: Path, document: dict[str, Any]) -> None:
    result = load_bytes(config_path, dump(document))
    assert result is not None, document
    check_settings(result)
    assert [s.name for s in result.scripts] == [s["name"] for s in document["scripts"]]


@FUZZ
@given(document=random_documents)
def test_random_documents(config_path: Path, document: dict[str, Any]) -> None:
    check_settings(load_bytes(config_path, dump(document)))


@FUZZ
@given(text=st.text(max_size=200))
def test_random_text(config_path: Path, text: str) -> None:
    check_settings(load_bytes(config_path, text.encode("utf-8", "surrogatepass")))


@FUZZ
@given(data=st.binary(max_size=200))
def test_random_bytes(config_path: Path, data: bytes) -> None:
    check_settings(load_bytes(config_path, data))
