"""The sd_notify protocol with the standard library: tell systemd how the daemon is doing.

The protocol is one AF_UNIX datagram per message, ``KEY=VALUE`` lines, sent to the socket
named by ``$NOTIFY_SOCKET`` (a path, or ``@name`` for an abstract socket). libsystemd is not
needed for that, so this is the same ~20 lines gunicorn carries.

A failed send is logged as ``notify_failed`` and otherwise ignored: systemd may refuse a
message (e.g. while it is itself shutting down), and a daemon that died on a refused
STOPPING=1 would orphan the jobs it was about to stop. Nothing is sent, and nothing is
logged, when ``$NOTIFY_SOCKET`` is unset, i.e. when not run by systemd.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Mapping

import structlog

# How long one send may block when systemd's receive queue is full. Sends happen on the
# event loop; a short bounded wait keeps READY=1 from being dropped under a burst, while a
# wedged receiver cannot stall the daemon (the send fails, is logged, and we move on).
SEND_TIMEOUT_S = 1.0


def _socket_address(value: str) -> str | None:
    """Map ``$NOTIFY_SOCKET`` to a ``sendto`` address; None for forms systemd 252 never uses.

    A leading ``@`` names a Linux abstract socket, whose address starts with a NUL byte.
    """
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    return None


class Notifier:
    """One daemon's line to systemd, configured from an environment mapping.

    The socket is created at the first send and kept for the Notifier's life rather than
    opened per message: once READY=1 has gone out, STOPPING=1 still goes out when the daemon
    has run out of file descriptors, and a watchdog ping every few seconds costs no socket().
    It stays unconnected (``sendto`` per message), so it keeps working when systemd recreates
    its notify socket (``daemon-reexec``), and it is close-on-exec so no job inherits it.
    """

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self._raw_socket = env.get("NOTIFY_SOCKET", "")
        self._address = _socket_address(self._raw_socket)
        self._watchdog_usec = env.get("WATCHDOG_USEC", "")
        self._watchdog_pid = env.get("WATCHDOG_PID", "")
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        """True when run by systemd with Type=notify (``$NOTIFY_SOCKET`` is set)."""
        return bool(self._raw_socket)

    def send(self, *fields: str) -> bool:
        """Send ``fields`` as one datagram; True when the kernel accepted it.

        Never raises: an unusable socket is logged as ``notify_failed`` and reported as False.
        """
        if not self.enabled:
            return False
        payload = "\n".join(fields)
        try:
            if self._address is None:
                raise OSError(f"unsupported NOTIFY_SOCKET address {self._raw_socket!r}")
            if self._sock is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                sock.settimeout(SEND_TIMEOUT_S)
                self._sock = sock
            self._sock.sendto(payload.encode("utf-8"), self._address)
        except OSError as exc:
            # Looked up per failure, not cached: logging may be configured after we exist.
            structlog.get_logger().warning(
                "notify_failed", error=str(exc), socket=self._raw_socket, payload=payload[:200]
            )
            return False
        return True

    def ready(self) -> bool:
        """Startup or a reload is complete: every worktree is being watched."""
        return self.send("READY=1")

    def reloading(self) -> bool:
        """A reload starts; MONOTONIC_USEC must travel in the same datagram (systemd 253+).

        systemd uses the timestamp to tell this reload from an earlier one; older versions
        ignore the field, so it is always sent.
        """
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> bool:
        """Shutdown has begun; systemd shows the unit as deactivating."""
        return self.send("STOPPING=1")

    def status(self, line: str) -> bool:
        """Show ``line`` in ``systemctl status``; newlines would end the field early."""
        return self.send("STATUS=" + " ".join(line.splitlines()))

    def watchdog(self) -> bool:
        """Keep-alive ping; systemd kills and restarts the unit when pings stop."""
        return self.send("WATCHDOG=1")

    def watchdog_interval(self) -> float | None:
        """Seconds between pings (half of WATCHDOG_USEC), None when no watchdog applies.

        WATCHDOG_PID names the process the watchdog is meant for; a process that merely
        inherited the variables (another pid) must not ping on the daemon's behalf.
        """
        try:
            usec = int(self._watchdog_usec)
        except ValueError:
            return None
        if usec <= 0:
            return None
        if self._watchdog_pid:
            try:
                pid = int(self._watchdog_pid)
            except ValueError:
                return None
            if pid != os.getpid():
                return None
        return usec / 2 / 1e6

    async def run_watchdog(self) -> None:
        """Ping forever at :meth:`watchdog_interval`; returns at once when no watchdog applies.

        Run it as a task on the daemon's event loop: the pings then prove the loop itself
        is turning, so a loop blocked by a bug stops them and systemd restarts the daemon.
        """
        interval = self.watchdog_interval()
        if interval is None or not self.enabled:
            return
        while True:
            self.watchdog()
            await asyncio.sleep(interval)

    def close(self) -> None:
        """Release the socket; a later send opens a new one."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
