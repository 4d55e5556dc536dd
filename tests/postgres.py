"""A throwaway PostgreSQL 15 server for tests: `initdb` in a temporary directory, then
`pg_ctl` on a free loopback port, as the unprivileged `postgres` user when the tests run
as root (PostgreSQL refuses to run as root); stopped, and its files removed, after.

One server serves a whole test session (the `pg_server` fixture); each test takes a
fresh empty database of its own from it (`PgServer.create_database`).
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from tests.helpers import free_port

BIN = Path(os.environ.get("DURABLE_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
"""Where `initdb` and `pg_ctl` are (Debian's postgresql-15 package puts them here)."""


_names = itertools.count(1)


@dataclass(frozen=True)
class PgServer:
    port: int
    data: Path
    options: str = ""
    """The server's `pg_ctl -o` options, so `start` brings it back as it was."""
    log: Path | None = None

    @property
    def dsn(self) -> str:
        return self.dsn_of("postgres")

    def dsn_of(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    async def create_database(self) -> str:
        """A fresh empty database (no table at all); returns its DSN.

        FILE_COPY copies template1's few files instead of logging every page (WAL_LOG,
        the default since 15): about 12 ms against 30 on this machine.
        """
        name = f"test_{os.getpid()}_{next(_names)}"
        conn = await asyncpg.connect(self.dsn)
        try:
            await conn.execute(f"CREATE DATABASE {name} STRATEGY = FILE_COPY")
        finally:
            await conn.close()
        return self.dsn_of(name)

    async def drop_database(self, dsn: str) -> None:
        """Drop a database `create_database` made, ending any session still on it."""
        name = dsn.rsplit("/", 1)[-1]
        conn = await asyncpg.connect(self.dsn)
        try:
            await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        finally:
            await conn.close()

    async def password_user(self, user: str, password: str) -> None:
        """A role that must log in with `password` over TCP (everyone else is trusted)."""
        hba = self.data / "pg_hba.conf"
        rule = f"host all {user} 127.0.0.1/32 scram-sha-256\n"
        if rule not in hba.read_text():
            hba.write_text(rule + hba.read_text())  # the first matching line wins
        conn = await asyncpg.connect(self.dsn)
        try:
            await conn.execute(f"CREATE ROLE {user} LOGIN PASSWORD '{password}'")
            await conn.execute("SELECT pg_reload_conf()")
        finally:
            await conn.close()

    def stop(self) -> None:
        """Shut the server down (fast: sessions are ended), keeping its files."""
        _run([str(BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"], "stop")

    def start(self) -> None:
        """Start the server again after `stop`, on the same port."""
        _pg_ctl_start(self.data, self.options, self.log)


def _as_server_user(args: Sequence[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else list(args)


def _run(args: Sequence[str], what: str) -> None:
    done = subprocess.run(_as_server_user(args), capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed ({done.returncode}): {done.stdout}{done.stderr}")


@contextmanager
def pg_server(base: Path, *, durable: bool = False) -> Iterator[PgServer]:
    """Start a server with its data under `base` (a fresh directory), trusting local
    connections, with fsync off (its files are thrown away) unless `durable` (for a
    benchmark's figures); stop it at the end."""
    if not (BIN / "initdb").exists():
        raise RuntimeError(f"no PostgreSQL server binaries in {BIN} (set DURABLE_TEST_PG_BIN)")
    base.mkdir(parents=True, exist_ok=True)
    data = base / "data"
    if os.geteuid() == 0:
        shutil.chown(base, "postgres")
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
    # TCP only: a Unix socket's path must fit in 107 bytes, which a deep pytest
    # temporary directory (one per xdist worker) does not. Off: fsync and full-page
    # writes (files thrown away), and synchronous_commit, so a test's many small
    # transactions never wait on a disk shared with other work.
    options = f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories=''"
    if not durable:
        options += " -c fsync=off -c full_page_writes=off -c synchronous_commit=off"
    _pg_ctl_start(data, options, base / "log")
    try:
        yield PgServer(port, data, options, base / "log")
    finally:
        status = [str(BIN / "pg_ctl"), "-D", str(data), "status"]
        if subprocess.run(_as_server_user(status), capture_output=True).returncode == 0:
            _run([str(BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"], "stop")


def _pg_ctl_start(data: Path, options: str, log: Path | None) -> None:
    logging = ["-l", str(log)] if log is not None else []
    _run(
        [str(BIN / "pg_ctl"), "-D", str(data), "-o", options, *logging, "-w", "start"],
        "pg_ctl start",
    )
