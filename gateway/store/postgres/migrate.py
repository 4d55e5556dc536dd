"""Applies the schema's migrations to a PostgreSQL database, in one transaction under an
advisory lock, so nodes starting together on an empty database apply them once.

The DDL itself is dialect-shared data in `gateway.store.schema`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from gateway.store.schema import MIGRATIONS, POSTGRES_META, VERSION_KEY, Migration, pending

MIGRATION_LOCK: Final = int.from_bytes(b"dg:schem", "big")
"""The key of the transaction-level advisory lock migrations hold; other advisory locks
of the gateway must use other keys."""


async def migrate_postgres(conn: Any, migrations: Sequence[Migration] = MIGRATIONS) -> list[int]:
    """Bring the database up to date in one transaction; return the versions applied.

    The lock comes first and the version is read after it, so a node that waited for
    another's migrations sees them committed and applies nothing. The lock ends with
    the transaction, even if this process dies mid-way (and then nothing was applied).
    """
    async with conn.transaction():
        # However long another node's migrations take, wait for them (not lock_timeout).
        await conn.execute("SET LOCAL lock_timeout = 0")
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await conn.execute(POSTGRES_META)
        row = await conn.fetchrow("SELECT value FROM meta WHERE key = $1", VERSION_KEY)
        steps = pending(int(row[0]) if row is not None else 0, migrations)
        for migration in steps:
            for statement in migration.postgres:
                await conn.execute(statement)
        if steps:
            await conn.execute(
                "INSERT INTO meta (key, value) VALUES ($1, $2)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                VERSION_KEY,
                str(steps[-1].version),
            )
    return [m.version for m in steps]
