"""The PostgreSQL text of every schema migration, applied in order to a real PostgreSQL
15 server: the dialect's store (issue 15) builds on it, so it must be right before then."""

from __future__ import annotations

import sqlite3

import asyncpg

from gateway.store import schema
from tests.postgres import PgServer


async def test_every_migration_applies_in_order_on_postgresql(pg_server: PgServer) -> None:
    conn = await asyncpg.connect(await pg_server.create_database())
    try:
        await conn.execute(schema.POSTGRES_META)
        for migration in schema.MIGRATIONS:
            async with conn.transaction():
                for statement in migration.postgres:
                    await conn.execute(statement)
        tables = {
            row["tablename"]
            for row in await conn.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            )
        }
        indexes = {
            row["indexname"]: row["indexdef"]
            for row in await conn.fetch("SELECT indexname, indexdef FROM pg_indexes")
        }
    finally:
        await conn.close()
    # The same tables and named indexes as the SQLite text of the same migrations.
    sqlite = sqlite3.connect(":memory:")
    sqlite.execute(schema.SQLITE_META)
    for migration in schema.MIGRATIONS:
        for statement in migration.sqlite:
            sqlite.execute(statement)
    rows = sqlite.execute("SELECT type, name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'")
    named = {(kind, name) for kind, name in rows}
    sqlite.close()
    assert {name for kind, name in named if kind == "table"} == tables
    assert {name for kind, name in named if kind == "index"} <= set(indexes)
    assert {"runs", "steps", "pending", "bodies", "body_chunks"} <= tables
