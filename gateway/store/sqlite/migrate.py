"""Applies the schema's migrations to an SQLite file, in one IMMEDIATE transaction.

The DDL itself is dialect-shared data in `gateway.store.schema`.
"""

from __future__ import annotations

from collections.abc import Sequence

import aiosqlite

from gateway.store.schema import MIGRATIONS, SQLITE_META, VERSION_KEY, Migration, pending


async def migrate_sqlite(
    conn: aiosqlite.Connection, migrations: Sequence[Migration] = MIGRATIONS
) -> list[int]:
    """Bring the database up to date in one transaction; return the versions applied.

    IMMEDIATE takes the write lock before reading the version, so two processes opening
    the same file at once cannot both apply a step. The connection must be in autocommit
    mode (isolation_level=None) so the transaction is ours, not the sqlite3 module's.
    """
    await conn.execute("BEGIN IMMEDIATE")
    try:
        await conn.execute(SQLITE_META)
        async with conn.execute("SELECT value FROM meta WHERE key = ?", (VERSION_KEY,)) as cur:
            row = await cur.fetchone()
        current = int(row[0]) if row is not None else 0
        steps = pending(current, migrations)
        for migration in steps:
            for statement in migration.sqlite:
                await conn.execute(statement)
        if steps:
            await conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (VERSION_KEY, str(steps[-1].version)),
            )
        await conn.execute("COMMIT")
    except BaseException:
        await conn.rollback()
        raise
    return [m.version for m in steps]
