"""Record factories the store tests share: a run's creation, and the ids of rows read back."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from gateway.store import CreateRun, RunRow, RunSummary, StoredRequest

REQUEST = StoredRequest("POST", "/chat?q=1", [("Content-Type", "application/json")], b"{}")


def create(
    run_id: str,
    at: float = 100.0,
    owner: str | None = None,
    lease_until: float | None = None,
    *,
    route: str = "chat",
    request: StoredRequest = REQUEST,
    body: bytes | None = None,
) -> CreateRun:
    """A run on `route` created at `at` with `request` (its body replaced by `body`), leased
    to `owner` until `lease_until` when given."""
    if body is not None:
        request = dataclasses.replace(request, body=body)
    return CreateRun(run_id, route, request, at, owner=owner, lease_until=lease_until)


def ids(rows: Iterable[RunRow | RunSummary]) -> list[str]:
    return [row.run_id for row in rows]
