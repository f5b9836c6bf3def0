"""What lets hypotheses run side by side, and what tells of their results changing.

The daemon's job glue calls this at three points of each job: ``job_env`` before it
(``PO_TMPDIR``/``TMPDIR``, ``PO_PORT_BASE``), ``cleanup`` after it (whatever its end:
pass, timeout, cancel), and ``finished`` once its result is recorded (the ``[notify]``
hooks). Kept out of the glue so the glue stays about records.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

from ..jobs.ports import PortBlocks, resized
from ..jobs.tmpdirs import JobTempDirs, temp_base
from ..report.hooks import Change, ResultHistory, ResultHooks
from ..settings.loader import Settings


class SideBySide:
    def __init__(
        self,
        settings: Settings,
        env: Mapping[str, str],
        log: Callable[[], Any],
        live: Callable[[], Collection[str]],
    ) -> None:
        self._log = log
        self._live = live
        self.tmpdirs = JobTempDirs(temp_base(env), settings.daemon.state_dir)
        self.ports = PortBlocks(settings.daemon.port_range)
        self.history = ResultHistory()
        self.hooks = ResultHooks(settings.notify, env, _LogProxy(log))
        self._ports_exhausted_said = False

    def open(self) -> None:
        """At start: the jobs' temp root (and a crashed predecessor's removed); raises
        TempDirError."""
        left = self.tmpdirs.open()
        if left is not None:
            self._log().info("tmpdirs_recovered", path=os.fsdecode(left))

    def seed(self, status_doc: dict[str, Any]) -> None:
        """Results kept from the previous run of the daemon (for ``previous``)."""
        for hyp_id, hyp in status_doc["hypotheses"].items():
            for name, cell in hyp["scripts"].items():
                self.history.seed(hyp_id, name, cell.get("last_result"))

    def reload(self, settings: Settings) -> None:
        self.ports = resized(self.ports, settings.daemon.port_range)
        self.hooks.configure(settings.notify)

    def job_env(self, hyp: str, job_id: str) -> tuple[dict[str, str], Path | None]:
        """The job's extra environment and its temp folder (None when it could not be
        made: logged, and the job runs with the daemon's TMPDIR)."""
        env: dict[str, str] = {}
        base = self.ports.base_for(hyp, self._live())
        if base is not None:
            env["PO_PORT_BASE"] = str(base)
        elif not self._ports_exhausted_said:
            self._ports_exhausted_said = True
            self._log().warning(
                "port_blocks_exhausted",
                hypothesis=hyp,
                blocks=self.ports.capacity,
                error="every block of daemon.port_range is taken; widen it",
            )
        tmpdir: Path | None = None
        try:
            tmpdir = self.tmpdirs.create(job_id)
        except OSError as exc:
            self._log().warning("tmpdir_unavailable", job_id=job_id, error=str(exc))
        else:
            env["PO_TMPDIR"] = env["TMPDIR"] = os.fsdecode(tmpdir)
        return env, tmpdir

    async def cleanup(self, job_id: str, tmpdir: Path | None) -> None:
        """After the job (its processes are gone): its temp folder goes."""
        if tmpdir is None:
            return
        try:
            await self.tmpdirs.remove(tmpdir)
        except OSError as exc:
            self._log().warning(
                "tmpdir_cleanup_failed", job_id=job_id, path=os.fsdecode(tmpdir), error=str(exc)
            )

    def finished(
        self, hyp: str, script: str, result: str, job_id: str, tests: dict[str, Any] | None
    ) -> None:
        news, previous = self.history.record(hyp, script, result)
        if news:
            self.hooks.fire(Change(hyp, script, previous, result, job_id, tests))

    async def close(self) -> None:
        """Shutdown, after the jobs: hooks killed, the temp root removed."""
        await self.hooks.close()
        try:
            await self.tmpdirs.close()
        except OSError as exc:
            self._log().warning("tmpdir_cleanup_failed", path="(root)", error=str(exc))


class _LogProxy:
    """The current logger (a reload may replace it) where a logger object is wanted."""

    def __init__(self, log: Callable[[], Any]) -> None:
        self._log = log

    def __getattr__(self, name: str) -> Any:
        return getattr(self._log(), name)


__all__ = ["SideBySide"]
