"""Why the store writes a batch as multi-row statements: `executemany` under GIL contention.

The sqlite3 module releases the GIL around each row it steps and must take it back
after; while another thread runs Python, each retake waits for that thread's switch
interval. This inserts one 2,000-row batch from a second thread, alone and beside a
busy thread, row by row (`executemany`) and as 500-row statements.

    python -m bench.sqlite_gil
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable

from gateway.store.sqlite import sql as sqlite_sql

ROWS = 2000
INSERT = "INSERT INTO t VALUES (?, ?, ?, ?, ?)"
Row = tuple[str, int, bytes, float, str]
Insert = Callable[[sqlite3.Connection, list[Row]], None]


def _connect() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    conn.execute("CREATE TABLE t (id TEXT PRIMARY KEY, a INT, b BLOB, c REAL, d TEXT)")
    conn.execute("CREATE INDEX t_a ON t (a)")
    conn.execute("CREATE INDEX t_c ON t (c)")
    return conn


def row_by_row(conn: sqlite3.Connection, rows: list[Row]) -> None:
    conn.execute("BEGIN")
    conn.executemany(INSERT, rows)
    conn.execute("COMMIT")


def multi_row(conn: sqlite3.Connection, rows: list[Row]) -> None:
    """The statements the store's writer makes of a batch (`sqlite_sql.multi_row`)."""
    conn.execute("BEGIN")
    for statement, [flat] in sqlite_sql.multi_row(INSERT, list(rows)):
        conn.execute(statement, flat)
    conn.execute("COMMIT")


def _spin(stop: threading.Event) -> None:
    total = 0
    while not stop.is_set():
        for i in range(1000):
            total += i


def measure(insert: Insert, *, contended: bool, batches: int = 3) -> float:
    """Seconds per batch, inserted from a thread of its own."""
    conn = _connect()
    stop = threading.Event()
    spinner = threading.Thread(target=_spin, args=(stop,))
    if contended:
        spinner.start()
    took: list[float] = []

    def work() -> None:
        for batch in range(batches):
            rows = [(f"r{batch}-{i}", i, b"x" * 60, time.time(), "text") for i in range(ROWS)]
            began = time.perf_counter()
            insert(conn, rows)
            took.append(time.perf_counter() - began)

    worker = threading.Thread(target=work)
    worker.start()
    worker.join()
    stop.set()
    if contended:
        spinner.join()
    conn.close()
    return sorted(took)[len(took) // 2]


def main() -> None:
    print(f"| {ROWS}-row batch | alone | beside a busy thread |")
    print("|---|---:|---:|")
    statements = f"{sqlite_sql.MAX_ROWS}-row statements"
    for name, insert in (("executemany", row_by_row), (statements, multi_row)):
        alone = measure(insert, contended=False)
        busy = measure(insert, contended=True, batches=1 if insert is row_by_row else 3)
        print(f"| {name} | {alone * 1000:.1f} ms | {busy * 1000:.1f} ms |")


if __name__ == "__main__":
    main()
