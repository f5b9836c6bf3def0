"""Watching running job leaders from the event loop: their output pipes and their exit.

What a short job costs is mostly this per-job bookkeeping, so it is kept lean (each choice
is explained where it is made): a loop's pipes and pidfds share one epoll of our own
(``_Mux``) instead of costing an ``add_reader`` each; the leader is reaped when its output
reaches EOF, and its exit is watched by a pidfd only when EOF does not come soon or a kill
needs it (``WatchedLeader``); waits use one future each, not Event + wait_for. Without
pidfds (not Linux, kernel < 5.3) the exit is awaited in a thread instead — correct, but one
thread per job.
"""

from __future__ import annotations

import asyncio
import functools
import os
import select
import weakref
from collections.abc import Callable

from .leaders import forget_leader
from .outputsink import Capture, JobOutput
from .spawner import Spawned

# A leader is normally reaped when its output reaches EOF; if that has not happened this
# long after the start, its exit is watched directly (pidfd) from then on.
EXIT_WATCH_DELAY_S = 0.05
# A loop's mux is closed this long after its last descriptor went (see _Mux).
MUX_IDLE_S = 1.0
_READ_CHUNK = 256 * 1024
_HAVE_EPOLL = hasattr(select, "epoll")
_pidfd_ok: bool | None = None  # have_pidfd's answer, asked once


def have_pidfd() -> bool:
    """Whether leaders' exits can be watched by pidfds (Linux >= 5.3), else by threads."""
    global _pidfd_ok
    if _pidfd_ok is None:
        try:
            os.close(os.pidfd_open(os.getpid()))
            _pidfd_ok = True
        except (AttributeError, OSError):
            _pidfd_ok = False
    return _pidfd_ok


def _after_fork_in_child() -> None:
    """A forked child runs none of the parent's loops: they are not ours to watch."""
    _muxes.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class _Mux:
    """One loop's job descriptors (output pipes, pidfds) in an epoll of our own, which is
    registered with the loop as a single reader.

    Why: ``loop.add_reader`` + ``remove_reader`` cost about 5.5 us of Python per
    descriptor (selector keys, a handle, transport checks), and a job has two or three;
    a raw epoll registration costs 1.4 us, and one loop callback dispatches all that are
    ready. Closed after ``MUX_IDLE_S`` without descriptors (not at once: with short jobs
    the count touches zero between spawns hundreds of times a batch), and in any case
    when its loop is garbage-collected (``_muxes`` holds loops weakly, the mux holds none).
    """

    __slots__ = ("_callbacks", "_epoll", "_idle_check", "closed")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._epoll = select.epoll()  # close-on-exec
        self._callbacks: dict[int, Callable[[], None]] = {}
        # A flag, not the TimerHandle: the handle refers to the loop, and a mux referring
        # to its loop would keep it alive through _muxes forever.
        self._idle_check = False
        self.closed = False
        try:
            loop.add_reader(self._epoll.fileno(), self._dispatch, loop)
        except BaseException:
            self._epoll.close()
            raise

    def add(self, fd: int, callback: Callable[[], None]) -> None:
        self._epoll.register(fd, select.EPOLLIN)
        self._callbacks[fd] = callback

    def remove(self, loop: asyncio.AbstractEventLoop, fd: int) -> None:
        if self._callbacks.pop(fd, None) is None:
            return
        self._epoll.unregister(fd)
        if not self._callbacks and not self._idle_check:
            self._idle_check = True
            loop.call_later(MUX_IDLE_S, self._close_if_idle, loop)

    def _close_if_idle(self, loop: asyncio.AbstractEventLoop) -> None:
        self._idle_check = False
        if self._callbacks:
            return  # busy again; the next time it empties schedules another check
        self.closed = True
        if _muxes.get(loop) is self:
            del _muxes[loop]
        loop.remove_reader(self._epoll.fileno())
        self._epoll.close()

    def _dispatch(self, loop: asyncio.AbstractEventLoop) -> None:
        for fd, _events in self._epoll.poll(0):
            callback = self._callbacks.get(fd)  # None: removed by an earlier callback
            if callback is None:
                continue
            try:
                callback()
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:  # as the loop treats a failing reader callback
                loop.call_exception_handler(
                    {"message": "Exception in a job watcher callback", "exception": exc}
                )


_muxes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Mux] = weakref.WeakKeyDictionary()


def _mux_for(loop: asyncio.AbstractEventLoop) -> _Mux | None:
    """The loop's mux; None where there is no epoll (or the loop takes no weak
    references): then descriptors go to ``loop.add_reader`` one by one."""
    if not _HAVE_EPOLL:
        return None
    try:
        mux = _muxes.get(loop)
        if mux is None or mux.closed:
            mux = _Mux(loop)
            _muxes[loop] = mux
    except TypeError:
        return None
    return mux


def has_mux(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether ``loop`` holds an open mux (one epoll descriptor) at the moment."""
    try:
        mux = _muxes.get(loop)
    except TypeError:  # a loop that takes no weak references never has one
        return False
    return mux is not None and not mux.closed


class WatchedLeader:
    """A running leader, watched by the loop: output pipes into ``output``, and its exit.

    The exit, cheaply: the kernel closes a dying process's files just before it becomes a
    zombie, so when the output pipes reach EOF the leader has almost always exited, and
    one ``waitpid(WNOHANG)`` reaps it. Only if it has not (it closed its output but runs
    on), or if EOF has not come within ``EXIT_WATCH_DELAY_S`` (a background process may
    hold the pipes forever), or once the runner needs the exit for a kill, is the exit
    watched: a pidfd on the loop (per job that is a pidfd_open, two epoll_ctl and a close
    saved for short jobs), or without pidfds a thread waiting.

    State is three flags — ``exited`` (reaped: its status collected, only here, so the pid
    cannot be reused while we may still signal its group), ``eof`` (every output pipe
    closed), ``time_is_up`` — and ``until`` waits for a condition on them. That is cheaper
    than asyncio.Event + wait_for (a task per call on 3.11), and runs several times a job.
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, spawned: Spawned, output: JobOutput
    ) -> None:
        self.loop = loop
        self.popen = spawned.popen
        self.pid = spawned.popen.pid
        self.output = output
        self.exited = False
        self.eof = False
        self.time_is_up = False
        self._waiters: list[asyncio.Future[None]] = []
        captures = [output.stdout] if output.stderr is None else [output.stdout, output.stderr]
        self._open: dict[int, Capture] = {}
        self._fds = list(zip(spawned.read_fds, captures, strict=True))
        self._exit_watched = False
        self._timer: asyncio.TimerHandle | None = None  # see start_clock
        self._deadline: float | None = None
        self._pidfd: int | None = None
        self._exit_waiter: asyncio.Future[int] | None = None
        self._mux: _Mux | None = None

    def _watch_fd(self, fd: int, callback: Callable[[], None]) -> None:
        """Call ``callback`` when ``fd`` is readable: through the loop's mux if it has one."""
        mux = self._mux
        if mux is None or mux.closed:  # closed only when none of our fds were in it
            mux = self._mux = _mux_for(self.loop)
        if mux is None:
            self.loop.add_reader(fd, callback)
        else:
            mux.add(fd, callback)

    def _unwatch_fd(self, fd: int) -> None:
        """Undo ``_watch_fd`` (a no-op for a descriptor not watched)."""
        if self._mux is None:
            self.loop.remove_reader(fd)
        else:
            self._mux.remove(self.loop, fd)

    def watch(self) -> None:
        """Register the pipes with the loop; on failure the caller must ``detach`` and
        abandon the spawn (the job must not run on unwatched)."""
        for fd, capture in self._fds:
            self._open[fd] = capture
            self._watch_fd(fd, functools.partial(self._readable, fd))
        if not have_pidfd():
            self.watch_exit()  # a thread waits from the start; start_clock does the rest

    def start_clock(self, limit: float | None) -> None:
        """Start the job's one timer: first, after ``EXIT_WATCH_DELAY_S``, it watches the
        exit if EOF has not reaped the leader by then; then it ends the job's time, after
        ``limit`` seconds (None: no limit). One timer, not two: asyncio keeps timers in a
        heap ordered by Python-level comparisons, a visible cost per short job."""
        loop = self.loop
        self._deadline = None if limit is None else loop.time() + limit
        if not self._exit_watched and (limit is None or limit > EXIT_WATCH_DELAY_S):
            self._timer = loop.call_later(EXIT_WATCH_DELAY_S, self._tick)
        elif self._deadline is not None:
            self._timer = loop.call_at(self._deadline, self._time_up)

    def stop_clock(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self) -> None:
        self._timer = None
        if self._deadline is not None:  # armed first: the job's time must end regardless
            self._timer = self.loop.call_at(self._deadline, self._time_up)
        self.watch_exit()

    def _time_up(self) -> None:
        self._timer = None
        if not self.exited and self.popen.poll() is not None:
            # It did exit in time; nothing had told us yet (EOF still pending, exit not
            # watched yet): a pass or fail, not a timeout.
            self._reaped()
        self.time_is_up = True
        self._changed()

    def watch_exit(self) -> None:
        """Have the leader's exit wake the loop from now on (see the class docstring)."""
        if self.exited or self._exit_watched:
            return
        self._exit_watched = True
        if have_pidfd():
            try:
                self._pidfd = os.pidfd_open(self.pid)  # unreaped, so never ESRCH
                self._watch_fd(self._pidfd, self._ended)
                return
            except OSError:  # e.g. EMFILE: wait in a thread rather than not at all
                if self._pidfd is not None:
                    os.close(self._pidfd)
                    self._pidfd = None
        self._exit_waiter = self.loop.run_in_executor(None, self.popen.wait)
        self._exit_waiter.add_done_callback(lambda _: self._ended())

    def detach(self) -> None:
        """Undo ``watch`` as far as it got; the pipes stay open (abandon closes them)."""
        for fd, _capture in self._fds:
            self._unwatch_fd(fd)
        self._open.clear()
        self.stop_clock()

    def _readable(self, fd: int) -> None:
        capture = self._open.get(fd)
        if capture is None:
            return
        try:
            data = os.read(fd, _READ_CHUNK)
        except BlockingIOError:
            return
        except OSError as exc:
            out = self.output
            out.read_error = out.read_error or f"output read failed: {exc.strerror}"
            data = b""
        if data:
            self.output.write(capture, data)
        else:
            self._close_pipe(fd)

    def _close_pipe(self, fd: int) -> None:
        if self._open.pop(fd, None) is not None:
            self._unwatch_fd(fd)
            os.close(fd)
        if not self._open and not self.eof:
            self.eof = True
            if not self._exit_watched and not self.exited:
                if self.popen.poll() is not None:  # waitpid(WNOHANG): the usual case
                    self._reaped()
                else:
                    self.watch_exit()
            self._changed()

    def _ended(self) -> None:
        """The pidfd (or the waiting thread) says the leader exited."""
        if self._pidfd is not None:
            self._unwatch_fd(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        self.popen.wait()  # it exited: this reaps without blocking
        self._reaped()
        self._changed()

    def _reaped(self) -> None:
        forget_leader(self.pid)
        self.exited = True

    def _changed(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def ended_or_time_up(self) -> bool:
        return self.exited or self.time_is_up

    def is_exited(self) -> bool:
        return self.exited

    def is_eof(self) -> bool:
        return self.eof

    async def until(self, cond: Callable[[], bool], timeout: float | None = None) -> bool:
        """Wait until ``cond()`` holds (True) or ``timeout`` seconds have passed (False)."""
        if cond():
            return True
        if timeout is not None and timeout <= 0:
            return False
        loop = self.loop
        expired = False
        timer = None
        if timeout is not None:

            def expire() -> None:
                nonlocal expired
                expired = True
                self._changed()

            timer = loop.call_later(timeout, expire)
        try:
            while not cond():
                if expired:
                    return False
                waiter = loop.create_future()
                self._waiters.append(waiter)
                await waiter
            return True
        finally:
            if timer is not None:
                timer.cancel()

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode

    def close(self) -> None:
        """Stop watching the pipes (an unattributed holder may keep one open forever);
        a leader not reaped yet stays watched, to be reaped when it does exit."""
        for fd in list(self._open):
            self._close_pipe(fd)
        self.watch_exit()
