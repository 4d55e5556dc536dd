"""File modes of a SQLite store: its database, WAL and shared-memory files hold the
signing secret and sealed credentials, so only the gateway's user may read them.

Runs before SQLite opens the file, so nothing is ever written to a readable one; never
loosens a mode.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from typing import Final

from gateway.errors import StoreUnavailable

log = logging.getLogger("gateway.store.sqlite")

PRIVATE: Final = 0o600
_OTHERS: Final = 0o077
SUFFIXES: Final = ("", "-wal", "-shm", "-journal")
"""The database and the files SQLite keeps beside it."""


def make_private(path: str) -> None:
    """Create the database file 0600 when it is new: SQLite gives the -wal and -shm files
    it creates the database's mode, so they are 0600 too. Existing files that group or
    others may use are tightened, with a warning saying so."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, PRIVATE)
    except FileExistsError:
        pass
    except OSError as exc:
        raise StoreUnavailable(f"sqlite: cannot create {path}: {exc}") from exc
    else:
        try:
            os.fchmod(fd, PRIVATE)  # exactly 0600, whatever the umask
        finally:
            os.close(fd)
    for name in (path + suffix for suffix in SUFFIXES):
        with contextlib.suppress(FileNotFoundError):
            _tighten(name)


def _tighten(name: str) -> None:
    mode = stat.S_IMODE(os.stat(name).st_mode)
    if not mode & _OTHERS:
        return
    private = mode & ~_OTHERS
    try:
        os.chmod(name, private)
    except OSError as exc:
        log.warning(
            "sqlite %s is open to group or others (mode %04o) and could not be tightened: %s",
            name,
            mode,
            exc,
        )
        return
    log.warning(
        "sqlite %s was open to group or others (mode %04o): now %04o, as it holds secrets",
        name,
        mode,
        private,
    )
