"""One ``labutils train`` per run folder at a time: a lock the kernel releases when its holder dies.

A second job on the same ``--out`` (a requeued Slurm job while the old one still runs on a node
that stopped answering, or a second terminal) would delete the first one's checkpoint being
written (start-up clears ``.ckpt-step*.tmp``), replace its ``loss.jsonl`` and write checkpoints
under the same names. So rank 0 holds ``flock(LOCK_EX)`` on ``<out>/.labutils-train.lock`` for
the whole run; the file records who holds it (host, pid, start time) for the refusal message.

An ``flock`` is not a PID file: ``kill -9``, an OOM kill or a crash release it with the process,
and the next job proceeds. The file is removed on a clean exit; one left by a killed holder is
harmless. On file systems without ``flock`` (some Lustre mounts) the job warns and runs unlocked.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Optional

from ..config import ConfigError

LOCK_NAME = ".labutils-train.lock"


class RunFolderBusy(ConfigError):
    """Another live process holds the run folder's lock; the message names it."""


def _holder(fd: int) -> str:
    """Who holds the lock, as its file says ("unknown" while it is being rewritten)."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        info = json.loads(os.read(fd, 4096).decode() or "{}")
        return (f"pid {info['pid']} on host {info['host']}, started {info['started']}")
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"


class RunLock:
    """``with RunLock(folder):`` holds ``folder``'s lock or raises :class:`RunFolderBusy`."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.fd: Optional[int] = None
        self._made_folder = False

    def acquire(self) -> "RunLock":
        if not self.folder.exists():
            self.folder.mkdir(parents=True, exist_ok=True)
            self._made_folder = True
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                busy = err.errno in (errno.EWOULDBLOCK, errno.EAGAIN)
                message = _holder(fd) if busy else ""
                os.close(fd)
                if busy:
                    raise RunFolderBusy(
                        f"{self.folder} is in use by another labutils train ({message}): wait "
                        "for it to end or stop it, or choose another --out") from None
                print(f"labutils train: warning: cannot lock {self.path} ({err.strerror}): "
                      "running without protection against a second job on this folder",
                      file=sys.stderr, flush=True)
                return self
            # A holder that was ending may have removed the file we opened: lock the one there.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                 "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}).encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        # Removed while still locked, so the next job cannot lock a file that is then gone.
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        os.close(self.fd)
        self.fd = None
        if self._made_folder:   # a run that failed before writing anything leaves no folder
            with contextlib.suppress(OSError):
                self.folder.rmdir()

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
