"""A throwaway PostgreSQL 15 server for tests: `initdb` in a temporary directory, then
`pg_ctl` on a free loopback port, as the unprivileged `postgres` user when the tests run
as root (PostgreSQL refuses to run as root); stopped, and its files removed, after.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import free_port

BIN = Path(os.environ.get("DURABLE_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
"""Where `initdb` and `pg_ctl` are (Debian's postgresql-15 package puts them here)."""


@dataclass(frozen=True)
class PgServer:
    port: int
    data: Path

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"


def _as_server_user(args: Sequence[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else list(args)


def _run(args: Sequence[str], what: str) -> None:
    done = subprocess.run(_as_server_user(args), capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed ({done.returncode}): {done.stdout}{done.stderr}")


@contextmanager
def pg_server(base: Path) -> Iterator[PgServer]:
    """Start a server with its data under `base` (a fresh directory), trusting local
    connections, with fsync off (its files are thrown away); stop it at the end."""
    if not (BIN / "initdb").exists():
        raise RuntimeError(f"no PostgreSQL server binaries in {BIN} (set DURABLE_TEST_PG_BIN)")
    base.mkdir(parents=True, exist_ok=True)
    data, sockets = base / "data", base / "sockets"
    sockets.mkdir()
    if os.geteuid() == 0:
        shutil.chown(base, "postgres")
        shutil.chown(sockets, "postgres")
        for parent in base.parents:  # the server user must reach its directory
            if parent.stat().st_mode & 0o001 == 0:
                parent.chmod(parent.stat().st_mode | 0o001)
    _run(
        [
            str(BIN / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-sync",
        ],
        "initdb",
    )
    port = free_port()
    options = f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off"
    _run(
        [
            str(BIN / "pg_ctl"),
            "-D",
            str(data),
            "-o",
            options,
            "-l",
            str(base / "log"),
            "-w",
            "start",
        ],
        "pg_ctl start",
    )
    try:
        yield PgServer(port, data)
    finally:
        _run([str(BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"], "stop")
