"""The command line; the only module that turns outcomes into exit codes.

Exit codes (a contract): 0 success; 1 some job did not pass; 2 usage or configuration
error; 3 (``status``) no status file to read, (``rerun``) no daemon running. Every
``OrchestratorError`` a command does not turn into another code itself is caught once,
in ``main``: its lines on stderr, exit 2.
"""

from __future__ import annotations

import argparse
import asyncio
import codecs
import contextlib
import errno
import json
import os
import shlex
import signal
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

from . import __version__
from .errors import OrchestratorError
from .states import PASS

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NO_STATUS = 0, 1, 2, 3
EXIT_TIMEOUT = 124  # ``wait``: the timeout passed first (as timeout(1) says it)
PROG = "parallel-orchestrator"
T = TypeVar("T")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        from .report.safetext import one_line

        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {one_line(message)}\n")


def _fail(message: str, code: int = EXIT_USAGE) -> int:
    """Each line on stderr, control characters escaped: messages name folders, branches
    and files whose names whoever controls the repository chose."""
    from .report.safetext import one_line

    for line in message.splitlines() or [message]:
        print(f"{PROG}: {one_line(line)}", file=sys.stderr)
    return code


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG,
        description="Watch git worktrees (hypotheses) and rerun the scripts each edit affects.",
    )
    p.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="the daemon, in the foreground")
    run.add_argument("-c", "--config", help="config file (default: see README)")

    once = sub.add_parser("once", help="run every selected script once and report")
    once.add_argument("-c", "--config")
    once.add_argument(
        "--hypothesis",
        action="append",
        default=[],
        metavar="ID",
        help="only this hypothesis (repeatable)",
    )
    once.add_argument(
        "--script",
        action="append",
        default=[],
        metavar="NAME",
        help="only this script (repeatable)",
    )
    once.add_argument("--json", action="store_true", help="machine-readable output")
    once.add_argument(
        "--no-cache", action="store_true", help="run every job, even where a result is cached"
    )

    st = sub.add_parser("status", help="show the daemon's status file")
    src = st.add_mutually_exclusive_group()
    src.add_argument("-c", "--config")
    src.add_argument("--status-file", metavar="PATH")
    st.add_argument("--json", action="store_true", help="print the status document")
    st.add_argument("--watch", action="store_true", help="redraw when it changes")

    chk = sub.add_parser("check", help="validate the config and show what it finds")
    chk.add_argument("-c", "--config")

    ini = sub.add_parser("init", help="write a config proposed from the repository")
    ini.add_argument("--repo", metavar="DIR")
    ini.add_argument("--output", metavar="FILE")
    ini.add_argument("--force", action="store_true", help="overwrite an existing file")

    _add_wait_parser(sub)

    demo = sub.add_parser("demo", help="the real daemon on a throwaway repository (~5 s)")
    demo.add_argument("--keep", action="store_true", help="keep the demo folder")

    rerun = sub.add_parser("rerun", help="ask the running daemon to run cells now")
    rerun.add_argument("-c", "--config")
    rerun.add_argument(
        "--failed", action="store_true", help="only cells whose last result is not pass"
    )
    rerun.add_argument(
        "targets", nargs="*", metavar="HYPOTHESIS[/SCRIPT]", help="default: every cell"
    )
    _add_results_parsers(sub)
    return p


def _add_results_parsers(sub: Any) -> None:
    """``compare``, ``logs`` and ``output``: reading what the daemon found."""
    cmp = sub.add_parser("compare", help="rank hypotheses; what each fixed and broke")
    src = cmp.add_mutually_exclusive_group()
    src.add_argument("-c", "--config")
    src.add_argument("--status-file", metavar="PATH")
    cmp.add_argument("--baseline", metavar="ID", help="compare against this hypothesis")
    cmp.add_argument("--script", action="append", default=[], metavar="NAME")
    fmt = cmp.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="machine-readable output")
    fmt.add_argument("--markdown", action="store_true", help="a table for a pull request")

    logs = sub.add_parser("logs", help="the latest results and events, as lines")
    logs.add_argument("-c", "--config")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new ones")
    logs.add_argument("-n", type=_count, default=20, metavar="N", help="how many (default 20)")
    logs.add_argument("--hypothesis", action="append", default=[], metavar="ID")
    logs.add_argument("--script", action="append", default=[], metavar="NAME")
    logs.add_argument(
        "--result",
        action="append",
        default=[],
        metavar="R",
        choices=("pass", "fail", "timeout", "error", "cancelled"),
    )
    logs.add_argument("--json", action="store_true", help="the raw JSON lines")

    out = sub.add_parser("output", help="the captured output of a cell's latest job")
    out.add_argument("-c", "--config")
    out.add_argument("cell", metavar="HYPOTHESIS/SCRIPT")
    out.add_argument("--job", metavar="JOB_ID", help="this job's output instead")


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a count >= 0, got {text!r}")
    return value


def _add_wait_parser(sub: Any) -> None:
    wait = sub.add_parser(
        "wait",
        help="block until the edits made so far have been tested; exit 0 if all pass",
        description="Wait until every change made before this call has been seen by the "
        "daemon and the jobs it started (and anything queued or running for the selected "
        "cells) have finished. Exit 0: every selected cell passes; 1: some does not; "
        "124: the timeout passed first; 3: no daemon is running.",
    )
    wait.add_argument("-c", "--config")
    wait.add_argument("--hypothesis", action="append", default=[], metavar="ID")
    wait.add_argument("--script", action="append", default=[], metavar="NAME")
    wait.add_argument("--timeout", type=_seconds, default=None, metavar="S")
    wait.add_argument("--json", action="store_true", help="print the selected cells as JSON")
    wait.set_defaults(status_file=None)  # always the status file of the config's daemon


def _seconds(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, got {raw!r}")
    return value


# -- helpers --------------------------------------------------------------------------
def _load(config: str | None):  # -> Settings
    from .settings.loader import locate_and_load

    return locate_and_load(config)


def _load_for_reading(config: str | None):  # -> Settings
    """The config for a command that only reads the daemon's state. A config that is
    invalid on disk (a reload the daemon rejected: it runs on) is read only for where
    the state is, with a one-line note; when no state is found there, its errors stand."""
    from .report.safetext import one_line
    from .settings.loader import ConfigError
    from .settings.salvage import salvage_settings

    try:
        return _load(config)
    except ConfigError as exc:
        salvaged = salvage_settings(config, os.environ)
        if salvaged is None or not _has_status_file(salvaged):
            raise
        first = one_line(exc.lines[0]) if exc.lines else "invalid"
        print(
            f"note: the config on disk is invalid ({first}); showing the daemon's state",
            file=sys.stderr,
        )
        return salvaged


def _has_status_file(settings) -> bool:  # (Settings) -> bool
    from .report.statelocate import status_file_for

    return status_file_for(settings, os.environ).is_file()


def _load_and_discover(config: str | None):  # -> (Settings, list[Worktree])
    """Config and hypotheses; a ConfigError or WorktreeError reaches ``main``."""
    from .repo.worktrees import discover

    settings = _load(config)
    return settings, discover(settings.worktrees, strict=True)


# -- commands -------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    # Record termination signals from the very start; the daemon acts on them once its
    # loop runs, so even a SIGTERM during start-up ends in a clean stop.
    early: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: early.append(signum))

    from .report.eventlog import (
        EVENTS_FILE,
        configure_logging,
        drain_logging,
        keep_event_history,
    )
    from .service.daemon import Daemon
    from .service.statedir import prepare_state_dir
    from .store.fence import fence

    settings = _load(args.config)
    d = settings.daemon
    fence(settings.worktrees.repo, ())  # a missing repository is not created (store.fence)
    prepare_state_dir(d.state_dir)  # before the log file, which may live inside it
    try:
        configure_logging(d.log_level, d.log_file)
        keep_event_history(d.state_dir / EVENTS_FILE)
    except OSError as exc:
        return _fail(f"log file {d.log_file}: cannot open: {exc.strerror or exc}")
    if any(sig in (signal.SIGTERM, signal.SIGINT) for sig in early):
        return EXIT_OK  # asked to stop before anything started
    try:
        return asyncio.run(Daemon(settings, early_signals=early).run())
    finally:
        drain_logging()


def cmd_check(args: argparse.Namespace) -> int:
    from .report.safetext import one_line

    settings, worktrees = _load_and_discover(args.config)
    d = settings.daemon
    cfg = os.fsdecode(settings.config_path) if settings.config_path else "(embedded default)"
    print(f"config:      {cfg}")
    print(f"state dir:   {os.fsdecode(d.state_dir)}")
    print(f"status file: {os.fsdecode(d.status_file)}")
    print(f"log:         {os.fsdecode(d.log_file) if d.log_file else 'stdout (JSON lines)'}")
    print(
        f"batching:    debounce {d.debounce_ms} ms, max wait {d.max_batch_wait_ms} ms; "
        f"concurrency {d.concurrency}; on_busy {d.on_busy}"
    )
    ex = settings.executor
    print(f"executor:    {ex.backend}" + (f" (scheduler {ex.address})" if ex.address else ""))
    print(f"hypotheses ({len(worktrees)}):")
    for wt in worktrees:  # names come from folders and branches: escaped for the terminal
        branch = one_line(wt.branch or "(detached)")
        print(f"  {one_line(wt.id):<24} {branch:<24} {one_line(os.fsdecode(wt.path))}")
    print(f"scripts ({len(settings.scripts)}):")
    for s in settings.scripts:
        print(f"  {s.name:<24} {one_line(shlex.join(s.command))}")
        print(f"  {'':<24} watch {one_line(', '.join(s.watch))}; timeout {s.timeout_s:g}s")
    if not worktrees:
        print("warning: no hypothesis found (check worktrees.repo / paths / include)")
    return EXIT_OK


def cmd_once(args: argparse.Namespace) -> int:
    from .commands.oneshot import render_results, run_once

    settings, worktrees = _load_and_discover(args.config)
    known_h = {wt.id for wt in worktrees}
    known_s = {s.name for s in settings.scripts}
    for h in args.hypothesis:
        if h not in known_h:
            return _fail(
                f"--hypothesis {h}: no such hypothesis (known: "
                f"{', '.join(sorted(known_h)) or 'none'})"
            )
    for s in args.script:
        if s not in known_s:
            return _fail(f"--script {s}: no such script (known: {', '.join(sorted(known_s))})")
    selected_wt = [wt for wt in worktrees if not args.hypothesis or wt.id in args.hypothesis]
    scripts = [s for s in settings.scripts if not args.script or s.name in args.script]
    if not selected_wt:
        return _fail("no hypothesis to run (check worktrees.repo / paths / include)")
    from .service.statedir import prepare_state_dir

    prepare_state_dir(settings.daemon.state_dir)  # run logs and cache: trusted, as for run
    progress = _once_progress(len(selected_wt) * len(scripts))
    # An unreachable cluster ([executor]) raises BackendUnavailable, a temp root that cannot
    # be made TempDirError: main() prints either, exit 2.
    work = run_once(settings, selected_wt, scripts, progress, use_cache=not args.no_cache)
    results, stopped_by = asyncio.run(_interruptible(work))
    if stopped_by is not None:
        name = signal.Signals(stopped_by).name
        return _fail(f"stopped by {name}; its jobs were killed", 128 + stopped_by)
    if args.json:
        json.dump(
            {
                "results": [r.to_dict() for r in results],
                "passed": all(r.outcome.result == PASS for r in results),
            },
            sys.stdout,
            indent=2,
        )
        print()
    else:
        print(render_results(results))
    return EXIT_OK if all(r.outcome.result == PASS for r in results) else EXIT_FAILED


def _once_progress(total: int):  # -> OnceProgress
    """A progress line on stderr, only for a person watching a terminal."""
    from .commands.onceprogress import OnceProgress

    try:
        tty = sys.stderr.isatty()
    except (AttributeError, ValueError):
        tty = False
    return OnceProgress(total, sys.stderr if tty else None)


async def _interruptible(work: Coroutine[Any, Any, T]) -> tuple[T | None, int | None]:
    """Run ``work``; SIGINT/SIGTERM cancel it (its jobs are killed and reaped by the
    runner) instead of killing us and orphaning them. Returns (result, signal or None)."""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(work)
    got: list[int] = []

    def stop(sig: int) -> None:
        got.append(sig)
        task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop, sig)
    try:
        return await task, None
    except asyncio.CancelledError:
        if not got:
            raise
        return None, got[0]
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def _status_source(args: argparse.Namespace) -> tuple[Path, Path]:
    """The status file ``status`` reads and its state dir: ``--status-file`` (and its
    folder), else those of the daemon that the config describes (a ConfigError or
    ForeignStatusFile reaches ``main``)."""
    from .report.statelocate import state_dir_for, status_file_for

    if args.status_file:
        return Path(args.status_file), Path(args.status_file).parent
    settings = _load_for_reading(args.config)
    return status_file_for(settings, os.environ), state_dir_for(settings, os.environ)


def cmd_status(args: argparse.Namespace) -> int:
    from .report import statusview
    from .report.safetext import json_text

    path, state_dir = _status_source(args)
    color = statusview.should_color(sys.stdout, os.environ)
    ascii_only = not statusview.can_encode_marks(getattr(sys.stdout, "encoding", None))
    if args.watch:
        _watch_with_keys(path, state_dir, color=color, ascii_only=ascii_only)
        return EXIT_OK
    try:
        doc = statusview.read_status(path)
    except statusview.StatusFileMissing as exc:
        return _fail(str(exc), EXIT_NO_STATUS)
    except statusview.StatusFileInvalid as exc:
        return _fail(str(exc), EXIT_NO_STATUS)
    if args.json:
        print(json_text(doc))
    else:
        print(statusview.render_table(doc, color=color, ascii_only=ascii_only))
    return EXIT_OK


def _watch_with_keys(path: Path, state_dir: Path, **style: bool) -> None:
    """``status --watch`` until ``q``, Ctrl-C or its terminal closes under it (writes
    then fail with EIO: the watch ends like a closed pipe, without a traceback)."""
    try:
        _watch_until_stopped(path, state_dir, **style)
    except OSError as exc:
        if exc.errno != errno.EIO:
            raise
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _watch_until_stopped(path: Path, state_dir: Path, **style: bool) -> None:
    """``status --watch``; with a terminal on stdin, keys too (a, f, q; see watchkeys)."""
    import threading

    from .commands.watchkeys import WatchKeys, stdin_is_terminal
    from .report import statusview

    stop, wake = threading.Event(), threading.Event()
    if not stdin_is_terminal(sys.stdin.fileno()):
        with contextlib.suppress(KeyboardInterrupt):
            statusview.watch_status(path, sys.stdout, stop=stop, **style)
        return

    def rerun(failed: bool) -> str:
        from .commands.rerun import describe, request_rerun

        return describe(request_rerun(path, state_dir, [], failed, wait_s=1.0))

    keys = WatchKeys(
        sys.stdin.fileno(), {"a": lambda: rerun(False), "f": lambda: rerun(True)}, stop, wake
    )
    with contextlib.suppress(KeyboardInterrupt), keys.active():
        statusview.watch_status(path, sys.stdout, stop=stop, wake=wake, footer=keys.footer, **style)


def cmd_rerun(args: argparse.Namespace) -> int:
    from .commands.rerun import NoDaemon, describe, request_rerun

    settings = _load_for_reading(args.config)
    located = _located(settings)
    if isinstance(located, int):
        return located
    status_path, state_dir = located
    try:
        outcome = request_rerun(status_path, state_dir, args.targets, args.failed)
    except NoDaemon as exc:
        return _fail(str(exc), EXIT_NO_STATUS)
    print(describe(outcome))
    return EXIT_OK


def _located(settings) -> tuple[Path, Path] | int:  # (Settings) -> (status file, state dir)
    """The status file and state dir of the daemon this config describes (systemd's may
    differ from the configured one), or the exit code after saying why not."""
    from .report.statelocate import ForeignStatusFile, state_dir_for, status_file_for

    try:
        return status_file_for(settings, os.environ), state_dir_for(settings, os.environ)
    except ForeignStatusFile as exc:
        return _fail(str(exc))


def _default_baseline(settings, doc) -> str | None:  # (Settings | None, dict) -> id
    from .repo.worktrees import WorktreeError, discover
    from .report.compare import guess_main_worktree

    if settings is not None and settings.compare.baseline:
        return settings.compare.baseline
    if settings is not None and settings.worktrees.repo is not None:
        with contextlib.suppress(WorktreeError):
            main = next((wt.id for wt in discover(settings.worktrees) if wt.is_main), None)
            if main is not None:
                return main
    return guess_main_worktree(doc)


def cmd_compare(args: argparse.Namespace) -> int:
    from .report import compareview, statusview
    from .report.compare import CompareError, build_comparison
    from .settings.loader import ConfigError

    settings = None
    if args.status_file:
        path = Path(args.status_file)
        state_dir = path.parent
    else:
        try:
            settings = _load_for_reading(args.config)
        except ConfigError as exc:
            return _fail("\n".join(exc.errors))
        located = _located(settings)
        if isinstance(located, int):
            return located
        path, state_dir = located
    try:
        doc = statusview.read_status(path)
    except statusview.StatusFileError as exc:
        return _fail(str(exc), EXIT_NO_STATUS)
    if not doc.get("hypotheses"):
        return _fail(f"{path}: no hypothesis to compare", EXIT_NO_STATUS)
    baseline = args.baseline or _default_baseline(settings, doc)
    if baseline is None:
        return _fail("no baseline: name one with --baseline ID or [compare] baseline")
    if args.baseline:
        named_by = "--baseline"
    elif settings is not None and settings.compare.baseline:
        named_by = "compare.baseline"
    else:
        named_by = "the main worktree (the default baseline; name another with --baseline)"
    try:
        comparison = build_comparison(doc, state_dir, baseline, args.script, baseline_from=named_by)
    except CompareError as exc:
        return _fail(str(exc))
    if args.json:
        from .report.safetext import json_text

        print(json_text(comparison))
    elif args.markdown:
        sys.stdout.write(compareview.render_markdown(comparison))
    else:
        color = statusview.should_color(sys.stdout, os.environ)
        ascii_only = not statusview.can_encode_marks(getattr(sys.stdout, "encoding", None))
        sys.stdout.write(compareview.render_text(comparison, color=color, ascii_only=ascii_only))
    return EXIT_OK


def _results_state_dir(config: str | None) -> Path | int:
    """The state dir of the daemon for this config, or the exit code after saying why."""
    from .settings.loader import ConfigError

    try:
        settings = _load_for_reading(config)
    except ConfigError as exc:
        return _fail("\n".join(exc.errors))
    located = _located(settings)
    return located if isinstance(located, int) else located[1]


def cmd_logs(args: argparse.Namespace) -> int:
    import threading

    from .report import logview, statusview

    state_dir = _results_state_dir(args.config)
    if isinstance(state_dir, int):
        return state_dir
    wanted = logview.EventFilter(args.hypothesis, args.script, args.result)
    ascii_only = not statusview.can_encode_marks(getattr(sys.stdout, "encoding", None))

    def emit(line: bytes, event: dict[str, Any]) -> None:
        if args.json:
            sys.stdout.write(line.decode("utf-8", "replace") + "\n")
        else:
            sys.stdout.write(logview.format_event(event, ascii_only=ascii_only) + "\n")
        sys.stdout.flush()

    try:  # a history that cannot be read is nothing to read (exit 3), as for ``status``
        if args.follow:
            if not logview.history_exists(state_dir):
                print(f"waiting for {logview.events_path(state_dir)} ...", file=sys.stderr)
            with contextlib.suppress(KeyboardInterrupt):
                logview.follow_events(state_dir, wanted, emit, threading.Event(), n=args.n)
            return EXIT_OK
        if not logview.history_exists(state_dir):
            return _fail(f"{logview.events_path(state_dir)}: no event history yet", EXIT_NO_STATUS)
        events = logview.last_events(state_dir, wanted, args.n)
    except logview.EventHistoryError as exc:
        return _fail(str(exc), EXIT_NO_STATUS)
    if not events:
        return _fail("no matching event", EXIT_NO_STATUS)
    for line, event in events:
        emit(line, event)
    return EXIT_OK


def cmd_output(args: argparse.Namespace) -> int:
    from .report import statusview
    from .report.runlogs import RunLogError, find_run_log, split_cell
    from .settings.loader import ConfigError

    try:
        hyp, script = split_cell(args.cell)
        settings = _load_for_reading(args.config)
    except RunLogError as exc:
        return _fail(str(exc))
    except ConfigError as exc:
        return _fail("\n".join(exc.errors))
    located = _located(settings)
    if isinstance(located, int):
        return located
    status_path, state_dir = located
    try:
        doc = statusview.read_status(status_path)
    except statusview.StatusFileError:
        doc = None
    if doc is not None and hyp not in doc.get("hypotheses", {}):
        known = ", ".join(sorted(doc.get("hypotheses", {}))) or "none"
        return _fail(f"{args.cell}: no such hypothesis {hyp} (known: {known})")
    if doc is not None and script not in doc["hypotheses"][hyp].get("scripts", {}):
        known = ", ".join(doc["hypotheses"][hyp].get("scripts", {})) or "none"
        return _fail(f"{args.cell}: no such script {script} (known: {known})")
    try:
        log = find_run_log(state_dir, hyp, script, args.job, doc)
    except RunLogError as exc:
        return _fail(str(exc))
    if log is None:
        what = f"job {args.job}" if args.job else args.cell
        return _fail(f"{what}: no captured output to show", EXIT_NO_STATUS)
    _print_run_log(log)
    return EXIT_OK


def _print_run_log(log: Path) -> None:
    """The bytes as they are into a pipe or file; on a terminal, control characters made
    visible (a job's output must not drive the terminal)."""
    from .report.safetext import block
    from .store.safe_open import open_regular

    sys.stdout.flush()
    with os.fdopen(open_regular(log, follow=True), "rb") as f:  # a FIFO must not hang
        if sys.stdout.isatty():
            decoder = codecs.getincrementaldecoder("utf-8")("replace")
            while chunk := f.read(1 << 16):
                sys.stdout.write(block(decoder.decode(chunk)))
            sys.stdout.write(block(decoder.decode(b"", final=True)))
            sys.stdout.flush()
            return
        while chunk := f.read(1 << 16):
            sys.stdout.buffer.write(chunk)
    sys.stdout.buffer.flush()


def cmd_wait(args: argparse.Namespace) -> int:
    from .commands.waiter import NoDaemon, WaitUsageError, render, wait_for_verdict

    path, _state_dir = _status_source(args)
    try:
        result = wait_for_verdict(path, args.hypothesis, args.script, args.timeout)
    except NoDaemon as exc:
        return _fail(str(exc), EXIT_NO_STATUS)
    except WaitUsageError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return 130  # the marker was taken back on the way out
    if args.json:
        json.dump(result.to_dict(), sys.stdout, indent=2, ensure_ascii=False)
        print()
    else:
        print(render(result))
    if result.repo_missing:
        from .report.statusview import REPO_MISSING_LINE

        print(f"{PROG}: wait: {REPO_MISSING_LINE}", file=sys.stderr)
    if result.verdict == "timeout":
        print(f"{PROG}: wait: timed out after {args.timeout:g} s", file=sys.stderr)
        return EXIT_TIMEOUT
    return EXIT_OK if result.verdict == "pass" else EXIT_FAILED


def cmd_init(args: argparse.Namespace) -> int:
    from .commands.initializer import init_config

    result = init_config(
        Path(args.repo) if args.repo else None,
        Path(args.output) if args.output else None,
        args.force,
    )
    print(f"wrote {os.fsdecode(result.path)}")
    for note in result.notes:
        print(f"  {note}")
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"next: {PROG} check -c {os.fsdecode(result.path)}")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from .commands.demo import DemoError, run_demo

    try:
        return run_demo(keep=args.keep)
    except DemoError as exc:
        return _fail(str(exc), EXIT_FAILED)


COMMANDS = {
    "run": cmd_run,
    "once": cmd_once,
    "status": cmd_status,
    "check": cmd_check,
    "init": cmd_init,
    "demo": cmd_demo,
    "compare": cmd_compare,
    "logs": cmd_logs,
    "output": cmd_output,
    "rerun": cmd_rerun,
    "wait": cmd_wait,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except OrchestratorError as exc:
        return _fail("\n".join(exc.lines))
    except BrokenPipeError:
        # The reader went away (``status --json | head``): not our error. Point stdout at
        # /dev/null so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
