"""Keys for ``status --watch``, as in jest's watch mode: ``a`` rerun all, ``f`` rerun
failed, ``q`` quit.

Only when stdin is a terminal: it is put in cbreak mode (keys arrive one by one, not
echoed; Ctrl-C still interrupts) and given back exactly as found on every way out:
``q``, Ctrl-C, SIGTERM or SIGHUP (a closed terminal). A thread reads the keys, so the
drawing loop stays as it is; it only sets events the loop already waits on.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import termios
import threading
import tty
from collections.abc import Callable, Iterator
from types import FrameType

HELP = "keys: a rerun all, f rerun failed, q quit"
READ_WAIT_S = 0.1


class _Stopped(KeyboardInterrupt):
    """SIGTERM/SIGHUP while watching: unwinds like Ctrl-C, so the terminal is restored."""


def _raise_stopped(_signum: int, _frame: FrameType | None) -> None:
    raise _Stopped


class WatchKeys:
    """Reads keys from ``fd`` in a thread; ``actions`` map a key to a callable whose
    one-line answer is shown under the table (``footer``)."""

    def __init__(
        self,
        fd: int,
        actions: dict[str, Callable[[], str]],
        stop: threading.Event,
        wake: threading.Event,
    ) -> None:
        self._fd = fd
        self._actions = actions
        self._stop = stop
        self._wake = wake
        self._message = ""
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="watch-keys", daemon=True)

    def footer(self) -> str:
        return (self._message + "\n" if self._message else "") + HELP + "\n"

    def _run(self) -> None:
        while not self._done.is_set() and not self._stop.is_set():
            try:
                ready, _, _ = select.select([self._fd], [], [], READ_WAIT_S)
                if not ready:
                    continue
                data = os.read(self._fd, 64)
            except OSError:
                return  # the terminal went away; SIGHUP ends the watch
            if not data:
                return
            for key in data.decode("utf-8", "replace"):
                self._key(key)

    def _key(self, key: str) -> None:
        if key == "q":
            self._stop.set()
        elif key in self._actions:
            try:
                self._message = self._actions[key]()
            except Exception as exc:  # shown under the table; the watch goes on
                self._message = f"{key}: {exc}"
        else:
            return
        self._wake.set()

    @contextlib.contextmanager
    def active(self) -> Iterator[WatchKeys]:
        """cbreak mode and the reader thread for the duration; terminal restored after."""
        saved = termios.tcgetattr(self._fd)
        handlers = {
            sig: signal.signal(sig, _raise_stopped) for sig in (signal.SIGTERM, signal.SIGHUP)
        }
        try:
            tty.setcbreak(self._fd, termios.TCSANOW)
            self._thread.start()
            yield self
        finally:
            self._done.set()
            # A terminal closed under us (EIO) has nothing left to give back.
            with contextlib.suppress(termios.error):
                termios.tcsetattr(self._fd, termios.TCSADRAIN, saved)
            for sig, handler in handlers.items():
                signal.signal(sig, handler)


def stdin_is_terminal(fd: int = 0) -> bool:
    try:
        return os.isatty(fd)
    except OSError:
        return False
