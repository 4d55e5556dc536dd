"""PostgreSQL group commit: `executemany` against one `unnest` statement per group, for
the hot write kinds at batch sizes 1, 50 and 500, then PutStep checkpoints per second
through the Writer into one store.

    python -m bench.pg_batch [--dsn postgresql://…] [--durable] [--seconds 3]

Without --dsn it starts a throwaway server (tests/postgres.py); --durable keeps fsync on
there. Each figure is a fresh database's; writes/s is wall time, µs/write the client's
CPU (this process), which the gateway pays on its event loop.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg

from gateway.store import (
    AppendBody,
    CreateRun,
    FinishRun,
    PutStep,
    RecordAttempt,
    StoredRequest,
    StoredResponse,
    UpdateRun,
    Write,
)
from gateway.store.batch import CreatedFinished
from gateway.store.postgres import PostgresStore
from gateway.store.postgres.sql import plan
from gateway.store.postgres.store import execute
from gateway.store.writer import Writer

REQUEST = StoredRequest("POST", "/chat", [("Content-Type", "application/json")], b'{"q":1}' * 20)
RESPONSE = StoredResponse(200, [("Content-Type", "application/json")], b'{"answer":2}' * 20)
OUTPUT = b'{"step":1,"tokens":42,"text":"result of a checkpointed step"}'
SIZES = (1, 50, 500)
Make = Callable[[int, int], list[Write]]
"""(batch number, size) → the batch; each batch's runs are new."""


def _runs(n: int, size: int) -> list[str]:
    return [f"b{n}-r{i}" for i in range(size)]


# The writes each kind needs in place first (its runs), then the batch itself.
KINDS: dict[str, tuple[Make, Make]] = {
    "PutStep": (
        lambda n, size: [],
        lambda n, size: [PutStep(f"b{n}", f"s{i}", OUTPUT, 1, 1.0) for i in range(size)],
    ),
    "AppendBody": (
        lambda n, size: [],
        lambda n, size: [AppendBody(f"b{n}", i * 4096, b"x" * 4096) for i in range(size)],
    ),
    "CreateRun": (
        lambda n, size: [],
        lambda n, size: [CreateRun(r, "chat", REQUEST, 1.0) for r in _runs(n, size)],
    ),
    "CreatedFinished": (
        lambda n, size: [],
        lambda n, size: [
            w
            for r in _runs(n, size)
            for w in (
                CreateRun(r, "chat", REQUEST, 1.0),
                FinishRun(r, "succeeded", RESPONSE, 2.0),
            )
        ],
    ),
    "RecordAttempt": (
        lambda n, size: [],
        lambda n, size: [RecordAttempt(r, 1, 1.0, 2.0, "response", 503) for r in _runs(n, size)],
    ),
    "UpdateRun": (
        lambda n, size: [CreateRun(r, "chat", REQUEST, 1.0) for r in _runs(n, size)],
        lambda n, size: [UpdateRun(r, "backoff", 2, 9.0, 2.0) for r in _runs(n, size)],
    ),
    "FinishRun": (
        lambda n, size: [CreateRun(r, "chat", REQUEST, 1.0) for r in _runs(n, size)],
        lambda n, size: [FinishRun(r, "succeeded", RESPONSE, 2.0) for r in _runs(n, size)],
    ),
}
FORMS: dict[str, frozenset[type[Any]]] = {
    "executemany": frozenset(),
    "unnest": frozenset(
        {CreateRun, CreatedFinished, PutStep, RecordAttempt, UpdateRun, FinishRun, AppendBody}
    ),
}


async def fresh(admin: asyncpg.Connection, dsn: str, name: str) -> str:
    await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    await admin.execute(f"CREATE DATABASE {name}")
    return dsn.rsplit("/", 1)[0] + "/" + name


async def forms(admin: asyncpg.Connection, dsn: str, seconds: float) -> None:
    print(f"{'kind':16} {'size':>5} {'form':12} {'writes/s':>10} {'µs CPU/write':>13}")
    for kind, (setup, make) in KINDS.items():
        for size in SIZES:
            for form, arrays in FORMS.items():
                url = await fresh(admin, dsn, "bench_batch")
                store = await PostgresStore.open(url, pool=1)
                conn = await asyncpg.connect(url)
                try:
                    writes, wall, cpu, n = 0, 0.0, 0.0, 0
                    while wall < seconds and n < 4000:
                        if pre := setup(n, size):
                            await store.apply(pre)
                        batch = make(n, size)
                        n += 1
                        started, started_cpu = time.perf_counter(), time.process_time()
                        async with conn.transaction():
                            await execute(conn, plan(batch, arrays))
                        wall += time.perf_counter() - started
                        cpu += time.process_time() - started_cpu
                        writes += len(batch)
                finally:
                    await conn.close()
                    await store.close()
                print(
                    f"{kind:16} {size:5} {form:12} {writes / wall:10,.0f}"
                    f" {cpu / writes * 1e6:13.1f}"
                )


async def through_writer(admin: asyncpg.Connection, dsn: str, total: int) -> None:
    """PutStep checkpoints posted to the Writer as fast as it takes them."""
    url = await fresh(admin, dsn, "bench_writer")
    store = await PostgresStore.open(url)
    writer = Writer(store)
    writer.start()
    try:
        started = time.perf_counter()
        for i in range(total):
            writer.post(PutStep(f"run-{i % 500}", f"step-{i}", OUTPUT, 1, 1.0))
            if i % 1000 == 999:
                await asyncio.sleep(0)  # let the writer commit while we go on
        await writer.flush()
        elapsed = time.perf_counter() - started
    finally:
        await writer.close()
        await store.close()
    print(
        f"\nWriter: {total:,} PutStep in {elapsed:.2f} s = {total / elapsed:,.0f} checkpoints/s"
        f" ({writer.committed_batches} transactions, {total / writer.committed_batches:.0f}"
        " writes each)"
    )


@contextlib.contextmanager
def server(dsn: str | None, durable: bool) -> Iterator[str]:
    if dsn is not None:
        yield dsn
        return
    from tests.postgres import pg_server

    with tempfile.TemporaryDirectory() as base:
        Path(base).chmod(0o755)
        with pg_server(Path(base) / "pg", durable=durable) as running:
            yield running.dsn


async def main(dsn: str, seconds: float, total: int) -> None:
    admin = await asyncpg.connect(dsn)
    try:
        await forms(admin, dsn, seconds)
        await through_writer(admin, dsn, total)
    finally:
        await admin.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dsn", help="a server to use (its databases bench_* are replaced)")
    parser.add_argument("--durable", action="store_true", help="fsync on (throwaway server)")
    parser.add_argument("--seconds", type=float, default=0.3, help="per figure (default 0.3)")
    parser.add_argument("--checkpoints", type=int, default=100_000)
    args = parser.parse_args()
    with server(args.dsn, args.durable) as url:
        asyncio.run(main(url, args.seconds, args.checkpoints))
