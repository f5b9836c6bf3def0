"""``[executor]``: backend and address are validated by ``check`` (exit 2 naming the key)."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness import make_repo, run_cli
from parallel_orchestrator.settings.loader import ConfigError, ExecutorSettings, load_settings

SCRIPT = '[[scripts]]\nname = "t"\ncommand = ["true"]\n'


def config(tmp_path: Path, executor: str) -> Path:
    path = tmp_path / "po.toml"
    path.write_text(f'{executor}\n[worktrees]\nrepo = ""\npaths = ["{tmp_path}"]\n{SCRIPT}')
    path.chmod(0o600)
    return path


def test_the_default_is_the_local_backend(tmp_path: Path) -> None:
    assert load_settings(config(tmp_path, "")).executor == ExecutorSettings("local", "")


@pytest.mark.parametrize("address", ["tcp://10.0.0.5:8786", "local", "10.0.0.5:8786"])
def test_dask_with_an_address(tmp_path: Path, address: str) -> None:
    cfg = config(tmp_path, f'[executor]\nbackend = "dask"\naddress = "{address}"\n')
    assert load_settings(cfg).executor == ExecutorSettings("dask", address)


@pytest.mark.parametrize(
    ("executor", "key"),
    [
        ('[executor]\nbackend = "dask"\n', "executor.address"),
        ('[executor]\nbackend = "ray"\n', "executor.backend"),
        ('[executor]\nbackend = "dask"\naddress = 8786\n', "executor.address"),
        ('[executor]\nbackend = "dask"\nadress = "local"\n', "executor.adress"),
        ('executor = "dask"\n', "executor"),
    ],
)
def test_bad_executor_settings_name_the_key(tmp_path: Path, executor: str, key: str) -> None:
    cfg = config(tmp_path, executor)
    with pytest.raises(ConfigError) as info:
        load_settings(cfg)
    assert any(f"{cfg}: {key}" in e for e in info.value.errors), info.value.errors


def test_check_exits_2_on_dask_without_address(tmp_path: Path) -> None:
    repo, _ = make_repo(tmp_path)
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(f'[worktrees]\nrepo = "{repo}"\n[executor]\nbackend = "dask"\n{SCRIPT}')
    cfg.chmod(0o600)
    done = run_cli("check", "-c", str(cfg), cwd=tmp_path)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "executor.address" in lines[0], done.stderr
