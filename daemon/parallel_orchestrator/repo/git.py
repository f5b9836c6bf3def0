"""The one way the package runs git: a clean environment, a timeout, no orphaned child.

Every git call names its repository with ``-C`` and runs in an environment scrubbed of
the variables that would make git look at another repository (a daemon started from a
git hook or an IDE terminal inherits ``GIT_DIR``, ``GIT_WORK_TREE``, ``GIT_INDEX_FILE``
...). It never waits forever (``GIT_TIMEOUT_S``) and, in its async form, kills and reaps
git when the caller is cancelled or the time is up. A git that cannot be run or does not
finish raises ``GitError``; a git that ran and failed is a ``GitResult`` with its exit
status, since for some commands (``check-ignore``) exit 1 is an answer, not a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..errors import OrchestratorError

GIT_TIMEOUT_S = 30.0

# Variables that would make git use another repository, work tree, index or object store
# than the one we name with -C. GIT_CEILING_DIRECTORIES and GIT_DISCOVERY_ACROSS_FILESYSTEM
# stay: they never redirect git elsewhere, they only stop its upward search where the user
# said it must stop (and tests rely on that to stay out of a repository around /tmp).
REPO_LOCATION_VARS: tuple[str, ...] = (
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_COMMON_DIR",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_NAMESPACE",
    "GIT_PREFIX",
    "GIT_IMPLICIT_WORK_TREE",
)


GitFailure = Literal["not_found", "timeout", "failed"]


class GitError(OrchestratorError):
    """git could not be run (``reason == "not_found"``), did not finish in time
    (``"timeout"``), or a caller found its answer unusable (``"failed"``); one line."""

    def __init__(self, message: str, reason: GitFailure) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class GitResult:
    returncode: int
    stdout: bytes
    stderr: bytes

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def said(self) -> str:
        """git's complaint on one line (its stderr), or the exit status when silent."""
        return " ".join(os.fsdecode(self.stderr).split()) or f"exit status {self.returncode}"

    def last_line(self) -> str:
        """The last line git wrote to stderr ("fatal: ..."), or ""."""
        lines = os.fsdecode(self.stderr).strip().splitlines()
        return lines[-1] if lines else ""


def git_command(repo: Path, *args: str) -> list[str]:
    """``git -C repo ...``: never depends on the daemon's own working directory."""
    return ["git", "-C", os.fspath(repo), *args]


def git_env(
    base: Mapping[str, str] | None = None, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment for our git calls: no repo-redirecting variables, no lock taking."""
    env = dict(os.environ if base is None else base)
    for name in REPO_LOCATION_VARS:
        env.pop(name, None)
    env["GIT_OPTIONAL_LOCKS"] = "0"  # never contend with the user's own git commands
    env["LC_ALL"] = "C"  # stable messages in logs; porcelain output is locale-free anyway
    env.update(extra or {})
    return env


def run_git(
    repo: Path,
    *args: str,
    input: bytes | None = None,
    timeout: float = GIT_TIMEOUT_S,
    extra_env: Mapping[str, str] | None = None,
) -> GitResult:
    """Run ``git -C repo args`` to completion (blocking: not for the event loop)."""
    try:
        done = subprocess.run(
            git_command(repo, *args),
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            env=git_env(extra=extra_env),
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as exc:
        raise _not_found() from exc
    except subprocess.TimeoutExpired as exc:  # run() has killed and reaped git
        raise _timed_out(repo, args, timeout) from exc
    return GitResult(done.returncode, done.stdout, done.stderr)


async def run_git_async(
    repo: Path,
    *args: str,
    input: bytes | None = None,
    timeout: float = GIT_TIMEOUT_S,
    extra_env: Mapping[str, str] | None = None,
) -> GitResult:
    """``run_git`` without blocking the event loop; git is killed and reaped on timeout
    and on cancellation before the exception propagates."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *git_command(repo, *args),
            stdin=asyncio.subprocess.PIPE if input is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=git_env(extra=extra_env),
        )
    except FileNotFoundError as exc:
        raise _not_found() from exc
    try:
        # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancel.
        async with asyncio.timeout(timeout):
            stdout, stderr = await proc.communicate(input)
    except TimeoutError as exc:
        raise _timed_out(repo, args, timeout) from exc
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await asyncio.shield(proc.wait())
    assert proc.returncode is not None
    return GitResult(proc.returncode, stdout, stderr)


def _not_found() -> GitError:
    return GitError("git: not found on PATH", "not_found")


def _timed_out(repo: Path, args: tuple[str, ...], timeout: float) -> GitError:
    words = " ".join(a for a in args[:2] if not a.startswith("-"))
    where = os.fsdecode(repo)
    return GitError(f"{where}: git {words} took over {timeout:g} s", "timeout")


# --------------------------------------------------------------------------- -z output


def split_z(data: bytes) -> list[bytes]:
    """The fields of NUL-terminated output (``check-ignore -z``, ``ls-files -z``)."""
    fields = data.split(b"\0")
    if fields and fields[-1] == b"":
        fields.pop()
    return fields


def z_records(data: bytes) -> list[list[bytes]]:
    """Records of ``--porcelain -z`` output: NUL-terminated lines, a record ends with an
    empty line. Bytes all the way: paths may hold spaces, newlines or non-UTF-8 bytes."""
    records: list[list[bytes]] = []
    record: list[bytes] = []
    for line in data.split(b"\0"):
        if line:
            record.append(line)
            continue
        if record:
            records.append(record)
            record = []
    if record:
        records.append(record)
    return records
