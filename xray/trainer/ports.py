"""Ports that a process is told on its command line, handed over without a race.

The usual way (bind port 0, read the number, close the socket, pass the number on) leaves a window between the
close and the server's own bind in which the kernel may give that number to any other socket: it draws both
``bind(port 0)`` and outgoing connections from the ephemeral range. A reservation here instead

- takes numbers from below the ephemeral range (``net.ipv4.ip_local_port_range``), which the kernel never hands
  out by itself, so no other program's ``bind(0)`` or outgoing connection can receive one;
- holds an exclusive lock file per number (``$XRAY_PORT_LOCKS``, default ``/tmp/xray-ports-<uid>``) for as long
  as the reservation lives, so two of our processes (two test sessions, `make train` beside `make tune`) never
  take the same one; the kernel drops the lock when the holder dies, so a crash leaks nothing;
- skips a number that some other program already listens on (its bind fails).

Hold the reservation until the servers that were given the numbers have stopped (the launcher does, for its
workers); once a server has bound its port, a later reservation skips that number anyway.
"""

from __future__ import annotations

import fcntl
import os
import random
import socket
import tempfile
from pathlib import Path

LOWEST = 10000  # above the registered ports most services use


def ephemeral_range(path: str = "/proc/sys/net/ipv4/ip_local_port_range") -> tuple[int, int]:
    try:
        low, high = (int(v) for v in Path(path).read_text().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def _lock_dir() -> Path:
    folder = Path(os.environ.get("XRAY_PORT_LOCKS") or Path(tempfile.gettempdir()) / f"xray-ports-{os.getuid()}")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


class Reservation:
    """``count`` port numbers, reserved until ``release()``, the end of the ``with`` block or the process:
    ``with Reservation(2) as (grpc_port, rest_port): ...``. ``first`` is where the search starts (random by
    default, so that concurrent reservations rarely meet)."""

    def __init__(self, count: int, first: int | None = None):
        if count < 1:
            raise ValueError(f"cannot reserve {count} ports")
        low, _ = ephemeral_range()
        if low - LOWEST < count:
            raise RuntimeError(f"net.ipv4.ip_local_port_range starts at {low}: no room below it for {count} "
                               f"port(s) above {LOWEST}")
        candidates = list(range(LOWEST, low))
        start = candidates.index(first) if first in candidates else random.randrange(len(candidates))
        folder = _lock_dir()
        self.ports: list[int] = []
        self._locks: list[int] = []
        for port in candidates[start:] + candidates[:start]:
            fd = os.open(folder / f"{port}.lock", os.O_CREAT | os.O_RDWR, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            if not _bindable(port):
                os.close(fd)
                continue
            self.ports.append(port)
            self._locks.append(fd)
            if len(self.ports) == count:
                return
        self.release()
        raise RuntimeError(f"no {count} free port(s) in {LOWEST}-{low - 1}")

    def release(self) -> None:
        for fd in self._locks:
            os.close(fd)
        self._locks = []

    def __enter__(self) -> list[int]:
        return self.ports

    def __exit__(self, *exc) -> None:
        self.release()
