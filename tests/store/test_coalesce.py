"""A run created and finished in one batch is written with one INSERT, to the same row."""

from __future__ import annotations

from gateway.store import (
    CreateRun,
    FinishRun,
    FullStore,
    IdempotencyKey,
    KeyRow,
    PutStep,
    StoredRequest,
    StoredResponse,
    UpdateRun,
)
from gateway.store.batch import CreatedFinished, coalesce

REQUEST = StoredRequest("POST", "/a?x=1", [("X-One", "1")], b"body")
RESPONSE = StoredResponse(201, [("Content-Type", "text/plain")], b"done")


def batch(run_id: str, *, backoff: bool) -> list[CreateRun | PutStep | UpdateRun | FinishRun]:
    writes: list[CreateRun | PutStep | UpdateRun | FinishRun] = [
        CreateRun(run_id, "r", REQUEST, 100.0, idempotency=IdempotencyKey(f"key-{run_id}", "fp")),
        PutStep(run_id, "s1", b'"one"', 1, 101.0),
    ]
    if backoff:
        writes.append(UpdateRun(run_id, "running", 2, None, 102.0))
    writes.append(FinishRun(run_id, "succeeded", RESPONSE, 103.0))
    return writes


def test_only_plain_create_and_finish_pairs_fold() -> None:
    folded = coalesce(batch("a", backoff=False) + batch("b", backoff=True))
    kinds = [type(w).__name__ for w in folded]
    assert kinds == [
        "CreatedFinished",
        "PutStep",
        "CreateRun",
        "PutStep",
        "UpdateRun",
        "FinishRun",
    ]
    assert isinstance(folded[0], CreatedFinished) and folded[0].run_id == "a"


async def test_folded_and_unfolded_rows_are_the_same(store: FullStore) -> None:
    await store.apply(batch("a", backoff=False))  # folded
    await store.apply(batch("b", backoff=False)[:2])  # created in one batch…
    await store.apply(batch("b", backoff=False)[2:])  # …finished in the next
    a, b = await store.get_run("a"), await store.get_run("b")
    assert a is not None and b is not None
    for row in (a, b):
        assert (row.status, row.attempt, row.finished_at, row.wake_at) == (
            "succeeded",
            1,
            103.0,
            None,
        )
        assert row.request == REQUEST and row.response == RESPONSE
        assert row.owner is None and row.lease_until is None
    assert await store.load_steps("a") == {"s1": b'"one"'}
    assert await store.find_idempotency("r", "key-a") == KeyRow("fp", "a")
