"""The exclusive `<file>.lock` a SQLite store holds for its whole life.

Keeps a second gateway process off the same database file; never deletes the lock file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os

from gateway.errors import StoreUnavailable


def lock_path(path: str) -> str:
    return path + ".lock"


def acquire(path: str) -> int:
    """Hold `<path>.lock` exclusively for this process; returns its descriptor.

    flock, not the database's own locks: it is held for the store's whole life, and
    the kernel drops it when the process dies, even by kill -9, so a lock never
    outlives its gateway. The file keeps the holder's pid for the error message; it
    is never deleted, since unlinking a lock file lets two processes lock two files.
    """
    name = lock_path(path)
    try:
        fd = os.open(name, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise StoreUnavailable(f"sqlite: cannot open the lock file {name}: {exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = ""
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            with contextlib.suppress(OSError):
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        os.close(fd)
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise StoreUnavailable(f"sqlite: cannot lock {name}: {exc}") from exc
        raise StoreUnavailable(
            f"sqlite store {path} is in use by another gateway process (pid {holder or '?'})"
        ) from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError:
        pass  # the pid only improves a message; the lock itself is held
    return fd


def release(fd: int | None) -> None:
    """Unlock and close a descriptor from `acquire`; None (no lock held) is a no-op."""
    if fd is not None:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
