"""One writer per folder: ``xray shards --out`` and a training workdir.

An advisory lock (flock) on ``<folder>/.xray.lock``, held for the life of the process: the kernel drops it
when the process ends, however it ends, so a killed run never leaves a stale lock behind. The file says who
holds it (command, pid, host, start time), for the message the second run prints. Local paths and mounted
volumes only: object stores (gs://) have no lock of this kind, and a folder there is not locked.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time

LOCK_NAME = ".xray.lock"


class LockedError(RuntimeError):
    """Another process holds the folder; the message names it."""


class FolderLock:
    def __init__(self, folder: str, what: str):
        self.folder, self.what, self.fd = folder, what, None

    def __enter__(self) -> "FolderLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> bool:
        self.release()
        return False

    def acquire(self) -> None:
        if "://" in self.folder:
            return
        os.makedirs(self.folder, exist_ok=True)
        path = os.path.join(self.folder, LOCK_NAME)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            who = (f"{holder.get('what', 'another xray command')} (pid {holder.get('pid', '?')} on "
                   f"{holder.get('host', '?')}, since {holder.get('started', '?')})") if holder else "another xray command"
            raise LockedError(f"{self.folder} is in use by {who}: wait for it to finish, or use another folder") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"what": self.what, "pid": os.getpid(), "host": socket.gethostname(),
                                 "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}).encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def _read(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return json.loads(os.read(fd, 4096) or b"{}")
    except (OSError, ValueError):
        return {}
