"""The unit files, checked by systemd's own parser without starting any manager.

``systemd-analyze verify`` exits 0 on many real mistakes (an unknown key is "ignored"
with a warning), so any output at all counts as a failure. ``systemd --test`` loads the
units the way the manager would and dumps the parsed result, which shows what a directive
really became (e.g. that KillMode=mixed was not lost to a typo). It refuses to run as root,
so as root both tools run as ``nobody``; they get a private HOME, XDG dirs and unit path in
a temp dir, and nothing is enabled, started or written outside it.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from parallel_orchestrator.settings.loader import ScriptSettings

UNITS = Path(__file__).resolve().parents[1] / "systemd"
SYSTEM_UNIT = "parallel-orchestrator.service"
USER_TEMPLATE = "parallel-orchestrator@.service"
INSTANCE = "parallel-orchestrator@myproject.service"
TOOL_TIMEOUT_S = 120
SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _manager_binary() -> str | None:
    """The systemd manager; Debian ships it in /lib/systemd, only a symlink is on PATH."""
    for candidate in (shutil.which("systemd"), "/lib/systemd/systemd", "/usr/lib/systemd/systemd"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def _unprivileged_prefix() -> list[str]:
    """argv prefix that drops root to ``nobody``; empty when already unprivileged."""
    if os.geteuid() != 0:
        return []
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("running as root and there is no 'nobody' user to drop to")
    if setpriv := shutil.which("setpriv"):
        return [setpriv, f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups"]
    if runuser := shutil.which("runuser"):
        return [runuser, "-u", "nobody", "--"]
    pytest.skip("running as root and neither setpriv nor runuser exists (util-linux)")


@dataclass(frozen=True)
class Sandbox:
    """A fake HOME/XDG layout and unit directories that ``nobody`` can read."""

    root: Path
    home: Path
    config_home: Path
    runtime_dir: Path
    system_units: Path
    user_units: Path
    system_stub: Path

    @property
    def user_stub(self) -> Path:
        return self.home / ".local" / "bin" / "parallel-orchestrator"

    def env(self, unit_path: Path) -> dict[str, str]:
        # The trailing ":" appends the default search path, where sysinit.target & co live.
        return {
            "PATH": SAFE_PATH,
            "HOME": str(self.home),
            "XDG_CONFIG_HOME": str(self.config_home),
            "XDG_RUNTIME_DIR": str(self.runtime_dir),
            "SYSTEMD_UNIT_PATH": f"{unit_path}:",
            "SYSTEMD_LOG_COLOR": "0",
            "LANG": "C.UTF-8",
        }


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    """Units as shipped, plus what verify needs to find: the executables they name.

    The user template is copied unchanged; its ExecStart, %h/.local/bin/parallel-orchestrator,
    resolves into the fake HOME, where a stub executable waits. The system unit's ExecStart
    names /usr/local/bin, which the test cannot populate, so it gets the override
    docs/systemd.md tells admins to use: a drop-in that resets ExecStart. The unit file
    itself stays byte-identical.
    """
    root = Path(tempfile.mkdtemp(prefix="po-units-"))
    root.chmod(0o755)
    box = Sandbox(
        root=root,
        home=root / "home",
        config_home=root / "home" / ".config",
        runtime_dir=root / "run",
        system_units=root / "system",
        user_units=root / "user",
        system_stub=root / "bin" / "parallel-orchestrator",
    )
    stub = "#!/bin/sh\nexit 0\n"
    _write(box.user_stub, stub, 0o755)
    _write(box.system_stub, stub, 0o755)
    _write(box.config_home / "parallel-orchestrator" / "myproject.toml", "")
    _write(box.system_units / SYSTEM_UNIT, (UNITS / SYSTEM_UNIT).read_text())
    _write(
        box.system_units / f"{SYSTEM_UNIT}.d" / "exec-start.conf",
        "[Service]\nExecStart=\n"
        f"ExecStart={box.system_stub} run -c /etc/parallel-orchestrator/config.toml\n",
    )
    _write(box.user_units / USER_TEMPLATE, (UNITS / USER_TEMPLATE).read_text())
    for directory in [p for p in root.rglob("*") if p.is_dir()]:
        directory.chmod(0o755)
    box.runtime_dir.mkdir(mode=0o700)
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        os.chown(box.runtime_dir, nobody.pw_uid, nobody.pw_gid)  # a user manager writes here
    yield box
    shutil.rmtree(root, ignore_errors=True)


def _run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*_unprivileged_prefix(), *argv],
        env=env,
        cwd="/",
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT_S,
        check=False,
    )


def _analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (.ci/install-system-deps installs it)")
    return tool


def _assert_silent(proc: subprocess.CompletedProcess[str]) -> None:
    output = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 0 and output == "", (
        f"systemd-analyze verify rc={proc.returncode}, output:\n{output}"
    )


# ---------------------------------------------------------------- systemd-analyze verify


def test_verify_system_unit(sandbox: Sandbox) -> None:
    proc = _run([_analyze(), "verify", SYSTEM_UNIT], sandbox.env(sandbox.system_units))
    _assert_silent(proc)


@pytest.mark.parametrize("unit", [INSTANCE, USER_TEMPLATE])
def test_verify_user_template(sandbox: Sandbox, unit: str) -> None:
    # A path, not a name: verify then loads the template from that directory as well.
    proc = _run(
        [_analyze(), "--user", "verify", str(sandbox.user_units / unit)],
        sandbox.env(sandbox.user_units),
    )
    _assert_silent(proc)


def test_verify_harness_reports_what_verify_merely_warns_about(sandbox: Sandbox) -> None:
    """Guards the tests above: a typo'd key exits 0 but prints, and printing fails them."""
    broken = sandbox.user_units / "broken@.service"
    text = (UNITS / USER_TEMPLATE).read_text().replace("KillMode=mixed", "KilMode=mixed")
    _write(broken, text)
    proc = _run(
        [_analyze(), "--user", "verify", str(sandbox.user_units / "broken@x.service")],
        sandbox.env(sandbox.user_units),
    )
    assert proc.returncode == 0
    assert "KilMode" in proc.stdout + proc.stderr
    with pytest.raises(AssertionError):
        _assert_silent(proc)


def test_verify_fails_when_the_executable_is_missing(sandbox: Sandbox) -> None:
    sandbox.user_stub.unlink()
    proc = _run(
        [_analyze(), "--user", "verify", str(sandbox.user_units / INSTANCE)],
        sandbox.env(sandbox.user_units),
    )
    assert "is not executable" in proc.stdout + proc.stderr


# ---------------------------------------------------------------- systemd --test dumps


def _manager() -> str:
    manager = _manager_binary()
    if manager is None:
        pytest.skip("the systemd manager binary is not installed")
    return manager


def _dump(sandbox: Sandbox, mode: str, unit: str, unit_dir: Path) -> dict[str, list[str]]:
    """Parsed properties of ``unit`` as ``systemd --test`` loaded it: key -> values."""
    proc = _run([_manager(), "--test", mode, f"--unit={unit}", "--no-pager"], sandbox.env(unit_dir))
    assert proc.returncode == 0, proc.stderr
    # Complaints about our unit ("...: Command ... is not executable", "Unknown key") go to
    # stderr prefixed with its name or its file; other units' noise is not ours to judge.
    ours = [line for line in proc.stderr.splitlines() if unit in line or str(unit_dir) in line]
    assert ours == [], "\n".join(ours)
    section = re.search(
        rf"^\t-> Unit {re.escape(unit)}:\n(.*?)(?=^\t-> Unit |\Z)", proc.stdout, re.M | re.S
    )
    assert section, f"{unit} missing from the dump:\n{proc.stdout[:2000]}"
    props: dict[str, list[str]] = {}
    key = ""
    for line in section.group(1).splitlines():
        stripped = line.strip()
        if stripped.startswith("-> "):
            key = stripped[3:].rstrip(":")  # "-> ExecStart:" heads "Command Line:" lines
            continue
        name, sep, value = stripped.partition(": ")
        if not sep:
            name, value = stripped.rstrip(":"), ""
        if name == "Command Line":
            name = key
        props.setdefault(name, []).append(value)
    return props


def _seconds(span: str) -> float:
    """A systemd time span as the dump prints it ("30s", "1min 30s", "500ms") in seconds."""
    units = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0, "h": 3600.0}
    total = 0.0
    for number, unit in re.findall(r"([\d.]+)\s*(us|ms|min|s|h)", span):
        total += float(number) * units[unit]
    assert total > 0, f"unparsable time span {span!r}"
    return total


def _assert_service_shape(props: dict[str, list[str]]) -> None:
    assert props["Type"] == ["notify"]
    assert props["NotifyAccess"] == ["main"]
    assert props["KillMode"] == ["mixed"]
    assert props["Restart"] == ["on-failure"]
    assert _seconds(props["WatchdogSec"][0]) == 30
    grace = ScriptSettings.__dataclass_fields__["kill_grace_s"].default
    assert isinstance(grace, float)
    assert _seconds(props["TimeoutStopSec"][0]) > grace + 2
    [reload_cmd] = props["ExecReload"]
    assert reload_cmd.startswith("/bin/kill -HUP ") and "MAINPID" in reload_cmd
    assert props["StateDirectoryMode"] == ["0700"]


def test_manager_parses_system_unit(sandbox: Sandbox) -> None:
    props = _dump(sandbox, "--system", SYSTEM_UNIT, sandbox.system_units)
    _assert_service_shape(props)
    assert props["ExecStart"] == [
        f"{sandbox.system_stub} run -c /etc/parallel-orchestrator/config.toml"
    ]
    assert props["StateDirectory"] == ["parallel-orchestrator"]
    assert props["User"] == ["parallel-orchestrator"]
    assert props["ProtectSystem"] == ["strict"]
    assert props["ProtectHome"] == ["read-only"]
    assert props["PrivateTmp"] == ["yes"]
    assert props["ReadWritePaths"] and all(props["ReadWritePaths"])
    assert props["AssertPathExists"][0].startswith("/etc/parallel-orchestrator/config.toml")


def test_manager_parses_user_instance(sandbox: Sandbox) -> None:
    """The user manager is the one that resolves %h and %E, so the instance is loaded there."""
    props = _dump(sandbox, "--user", INSTANCE, sandbox.user_units)
    _assert_service_shape(props)
    config = sandbox.config_home / "parallel-orchestrator" / "myproject.toml"
    assert props["ExecStart"] == [f"{sandbox.user_stub} run -c {config}"]
    assert props["StateDirectory"] == ["parallel-orchestrator/myproject"]
    assert props["AssertPathExists"][0].startswith(str(config))
    for key in ("ProtectSystem", "ProtectHome", "ReadWritePaths"):
        assert props.get(key, ["no"]) in (["no"], [""]), f"{key} needs PrivateUsers= in a user unit"


# ---------------------------------------------------------------- the files as text


def _service_lines(unit: str) -> list[str]:
    text = (UNITS / unit).read_text()
    return text[text.index("[Service]") :].split("\n[Install]")[0].splitlines()[1:]


@pytest.mark.parametrize("unit", [SYSTEM_UNIT, USER_TEMPLATE])
def test_every_directive_is_explained(unit: str) -> None:
    """Each directive, or the run of directives it belongs to, follows a comment."""
    lines = _service_lines(unit)
    for index, line in enumerate(lines):
        if not line or line.startswith("#"):
            continue
        before = index - 1
        while before >= 0 and lines[before] and not lines[before].startswith("#"):
            before -= 1
        assert before >= 0 and lines[before].startswith("#"), f"{unit}: {line!r} is unexplained"


def test_user_template_says_why_it_has_no_filesystem_hardening() -> None:
    text = (UNITS / USER_TEMPLATE).read_text()
    assert "PrivateUsers=" in text
    directives = {
        line.split("=", 1)[0]
        for line in _service_lines(USER_TEMPLATE)
        if line and not line.startswith("#")
    }
    assert not directives & {"ProtectSystem", "ProtectHome", "ReadWritePaths", "PrivateTmp"}
