"""``[notify]``: tell people and agents when a cell's result changes.

A result that changes is news: ``pass -> fail``, ``fail -> pass``, anything -> ``timeout``
or ``error``. A run that was merely superseded (``cancelled``) is never news, and the
``previous`` result a hook hears about is the last one that was not ``cancelled``.

The hook (``[notify] command``) runs without a shell with one JSON object on stdin:
``{"hypothesis", "script", "previous", "result", "job_id", "tests"}``. It runs beside the
jobs, never in their way: a task of its own, at most ``MAX_RUNNING`` at once, each in its
own process group (in the daemon's session, so the janitor spares it), killed with that
group after ``HOOK_TIMEOUT_S``. ``notify_failed`` is logged when it cannot start, exits
non-zero or is killed. ``desktop = true`` also runs ``notify-send`` where it is installed,
and says once when it is not.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..settings.loader import NotifySettings
from ..states import CANCELLED, ERROR, TIMEOUT

HOOK_TIMEOUT_S = 10.0
MAX_RUNNING = 4  # hooks at once; more wait their turn
MAX_WAITING = 200  # past this a burst of changes is not queued further (notify_failed)
STDERR_TAIL = 1024
SCRUBBED_PREFIXES = ("NOTIFY_SOCKET", "WATCHDOG_", "LISTEN_")
NEWS_RESULTS = (TIMEOUT, ERROR)


def is_news(previous: str | None, result: str) -> bool:
    """Whether a cell going from ``previous`` to ``result`` is worth a notification."""
    if result in (CANCELLED, previous):
        return False
    if result in NEWS_RESULTS:
        return True
    return previous is not None  # pass <-> fail, and recoveries from timeout/error


class ResultHistory:
    """The last result of each cell that was not ``cancelled``."""

    def __init__(self) -> None:
        self._last: dict[tuple[str, str], str] = {}

    def seed(self, hyp: str, script: str, result: str | None) -> None:
        """What a restarted daemon knows from the previous status file."""
        if result is not None and result != CANCELLED:
            self._last.setdefault((hyp, script), result)

    def record(self, hyp: str, script: str, result: str) -> tuple[bool, str | None]:
        """Note a finished job; returns (is it news, the previous non-cancelled result)."""
        previous = self._last.get((hyp, script))
        if result != CANCELLED:
            self._last[(hyp, script)] = result
        return is_news(previous, result), previous


@dataclass(frozen=True)
class Change:
    hypothesis: str
    script: str
    previous: str | None
    result: str
    job_id: str
    tests: dict[str, Any] | None = None

    def payload(self) -> bytes:
        doc = {
            "hypothesis": self.hypothesis,
            "script": self.script,
            "previous": self.previous,
            "result": self.result,
            "job_id": self.job_id,
            "tests": self.tests,
        }
        return json.dumps(doc, ensure_ascii=False).encode("utf-8", "replace") + b"\n"

    def summary(self) -> tuple[str, str]:
        """(title, body) for a desktop notification."""
        title = f"{self.hypothesis}/{self.script}: {self.previous or 'new'} -> {self.result}"
        failing = (self.tests or {}).get("failing") or []
        names = [f if isinstance(f, str) else str(f.get("id", "")) for f in failing[:5]]
        return title, "\n".join(names) or f"job {self.job_id}"


@dataclass(frozen=True)
class HookFailure:
    error: str
    exit_code: int | None = None
    stderr_tail: str = ""


class ResultHooks:
    """Runs the configured hook (and notify-send) for each ``Change``; never blocks."""

    def __init__(
        self,
        settings: NotifySettings,
        env: Mapping[str, str],
        log: Any,
        *,
        timeout_s: float = HOOK_TIMEOUT_S,
    ) -> None:
        self.settings = settings
        self.timeout_s = timeout_s
        self.log = log
        self._env = {k: v for k, v in env.items() if not k.startswith(SCRUBBED_PREFIXES)}
        self._slots = asyncio.Semaphore(MAX_RUNNING)
        self._tasks: set[asyncio.Task[None]] = set()
        self._groups: set[int] = set()  # process groups of hooks running now
        self._desktop_missing_said = False
        self._closing = False

    def configure(self, settings: NotifySettings) -> None:
        """A reloaded config: later changes use the new command."""
        self.settings = settings

    def fire(self, change: Change) -> None:
        if self._closing:
            return
        commands: list[tuple[str, Sequence[str], bytes]] = []
        if self.settings.command:
            commands.append(("command", self.settings.command, change.payload()))
        if self.settings.desktop:
            notify_send = self._notify_send()
            if notify_send is not None:
                commands.append(("desktop", [notify_send, *change.summary()], b""))
        for kind, argv, stdin in commands:
            if len(self._tasks) >= MAX_RUNNING + MAX_WAITING:
                self._failed(change, kind, argv, HookFailure("too many hooks waiting; skipped"))
                continue
            task = asyncio.get_running_loop().create_task(self._run(change, kind, argv, stdin))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _notify_send(self) -> str | None:
        found = shutil.which("notify-send", path=self._env.get("PATH", os.defpath))
        if found is None and not self._desktop_missing_said:
            self._desktop_missing_said = True
            self.log.warning(
                "notify_desktop_unavailable",
                error="notify-send not found on PATH; [notify] desktop = true does nothing",
            )
        return found

    async def _run(self, change: Change, kind: str, argv: Sequence[str], stdin: bytes) -> None:
        async with self._slots:
            if self._closing:
                return
            failure = await self._execute(argv, stdin)
        if failure is not None:
            self._failed(change, kind, argv, failure)

    async def _execute(self, argv: Sequence[str], stdin: bytes) -> HookFailure | None:
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                env=self._env,
                process_group=0,
            )
        except OSError as exc:
            return HookFailure(f"cannot run {argv[0]}: {exc.strerror or exc}")
        self._groups.add(proc.pid)
        assert proc.stdin is not None and proc.stderr is not None
        stderr = asyncio.ensure_future(_read_tail(proc.stderr))
        try:
            async with asyncio.timeout(self.timeout_s):
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    proc.stdin.write(stdin)
                    await proc.stdin.drain()
                proc.stdin.close()
                code = await proc.wait()
        except TimeoutError:
            return HookFailure(f"killed after {self.timeout_s:g} s")
        finally:
            # The hook's group goes with it (also whatever it left running), so its
            # stderr reaches EOF and nothing it started outlives it.
            _kill_group(proc.pid)
            self._groups.discard(proc.pid)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5.0):
                    await proc.wait()
            tail = await _finish_reading(stderr)
        if code != 0:
            return HookFailure(f"exited with {code}", code, tail)
        return None

    def _failed(self, change: Change, kind: str, argv: Sequence[str], failure: HookFailure) -> None:
        self.log.warning(
            "notify_failed",
            hypothesis=change.hypothesis,
            script=change.script,
            job_id=change.job_id,
            hook=kind,
            command=list(argv),
            error=failure.error,
            exit_code=failure.exit_code,
            stderr_tail=failure.stderr_tail,
        )

    async def close(self) -> None:
        """Shutdown: running hooks are killed with their groups, waiting ones dropped."""
        self._closing = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for pgid in list(self._groups):
            _kill_group(pgid)

    @property
    def busy(self) -> bool:
        return bool(self._tasks)


async def _read_tail(stream: asyncio.StreamReader) -> bytes:
    tail = b""
    while chunk := await stream.read(65536):
        tail = (tail + chunk)[-STDERR_TAIL:]
    return tail


async def _finish_reading(reader: asyncio.Future[bytes]) -> str:
    """The stderr tail, or "" if the stream does not end promptly (a descendant that left
    the hook's group still holds it)."""
    try:
        async with asyncio.timeout(1.0):
            data = await asyncio.shield(reader)
    except TimeoutError:
        reader.cancel()
        return ""
    return data.decode("utf-8", "replace")


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
