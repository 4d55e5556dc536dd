"""Batch planning for the group-commit writer, the same for every dialect.

Pure: folds a run created and finished in one batch into one row, and packs a batch
into as few same-kind groups as order allows. The dialects turn groups into SQL.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson

from gateway.store.records import (
    AppendBody,
    BeginBody,
    CancelRun,
    CreateRun,
    DropPending,
    FinishRun,
    Headers,
    PutPending,
    PutStep,
    RecordAttempt,
    RecordStepError,
    ReplaceResult,
    ResetRun,
    RunStatus,
    SuspendRun,
    UpdateRun,
    Write,
)


@dataclass(slots=True)  # not frozen: built per request (see gateway.store)
class CreatedFinished:
    """A run created and finished within one batch: one INSERT instead of INSERT + UPDATE.

    The happy path's common case: the UPDATE would rewrite the whole row (request body
    included) and every index on it a second time in the same transaction.
    """

    create: CreateRun
    finish: FinishRun

    @property
    def run_id(self) -> str:
        return self.create.run_id


# The tables each kind writes or reads; writes to different tables or runs never
# depend on each other. (CreateRun's idempotency key is only ever written by CreateRun.)
# CancelRun reads its run's status to know whether to delete the streamed body.
TABLES: Final[dict[type[Any], tuple[str, ...]]] = {
    CreateRun: ("runs",),
    CreatedFinished: ("runs",),
    UpdateRun: ("runs",),
    FinishRun: ("runs", "pending"),
    ReplaceResult: ("runs", "pending"),
    SuspendRun: ("runs",),
    CancelRun: ("runs", "pending", "bodies", "body_chunks"),
    ResetRun: ("runs", "bodies", "body_chunks"),
    BeginBody: ("bodies", "body_chunks"),
    AppendBody: ("body_chunks",),
    PutStep: ("steps",),
    RecordAttempt: ("attempts",),
    RecordStepError: ("step_errors",),
    PutPending: ("pending",),
    DropPending: ("pending",),
}


def group_writes(writes: Sequence[Write | CreatedFinished]) -> list[list[Write | CreatedFinished]]:
    """Pack a batch into as few same-kind groups as order allows, one executemany each.

    Only writes to the same (table, run) must keep their order: every statement touches
    rows of its own run in its own tables, and the whole batch is one transaction. So a
    write joins the first group of its kind at or after the groups holding its
    predecessors on each of its (table, run) pairs, and a group keeps submission order.
    A mixed batch of many runs thus costs about one statement per kind, not per write.
    """
    groups: list[list[Write | CreatedFinished]] = []
    kinds: list[type[Any]] = []
    last: dict[tuple[str, str], int] = {}
    for write in writes:  # plain loops: this runs for every write of every batch
        kind = type(write)
        run_id = write.run_id
        tables = TABLES[kind]
        index = 0
        for table in tables:
            index = max(index, last.get((table, run_id), 0))
        while index < len(groups) and kinds[index] is not kind:
            index += 1
        if index == len(groups):
            groups.append([])
            kinds.append(kind)
        groups[index].append(write)
        for table in tables:
            last[table, run_id] = index
    return groups


def encode_headers(headers: Headers) -> bytes:
    """Header pairs as a JSON array; lossless for aiohttp's surrogate-escaped bytes."""
    try:
        return orjson.dumps(headers)
    except TypeError:
        # orjson refuses lone surrogates (non-UTF-8 header bytes as aiohttp decodes
        # them); the json module escapes them as \udcXX and reads them back intact.
        return json.dumps(headers).encode()


def decode_headers(raw: bytes) -> Headers:
    try:
        pairs = orjson.loads(raw)
    except orjson.JSONDecodeError:
        pairs = json.loads(raw)
    return [(str(name), str(value)) for name, value in pairs]


# Writes to other tables than `runs` that never read the run row: a run's CreateRun and
# FinishRun fold around them. (BeginBody and AppendBody of a run keep their order: both
# write body_chunks, so `group_writes` never swaps them.)
_ONLY_CREATE_AND_FINISH: Final = (
    CreateRun,
    FinishRun,
    PutStep,
    RecordAttempt,
    RecordStepError,
    BeginBody,
    AppendBody,
)


def coalesce(writes: Sequence[Write]) -> Sequence[Write | CreatedFinished]:
    """Fold each run's CreateRun and FinishRun of one batch into one CreatedFinished.

    Only for runs whose other writes in the batch are steps, step errors, attempts and
    streamed body writes (rows of other tables that never read the run row), so the
    folded INSERT leaves exactly the row the two statements would have left. A first attempt
    that succeeded is folded in too (see `folds_attempt`): its row is not written.
    """
    created: dict[str, CreateRun] = {}
    finished: dict[str, FinishRun] = {}
    other: set[str] = set()
    for write in writes:
        if isinstance(write, CreateRun):
            created[write.run_id] = write
        elif isinstance(write, FinishRun):
            if write.run_id in created:
                finished[write.run_id] = write
        elif not isinstance(write, _ONLY_CREATE_AND_FINISH):
            other.add(write.run_id)
    fold = {run_id for run_id in finished if run_id not in other}
    if not fold:
        return writes
    out: list[Write | CreatedFinished] = []
    for write in writes:
        if write.run_id not in fold:
            out.append(write)
        elif isinstance(write, CreateRun):
            out.append(CreatedFinished(write, finished[write.run_id]))
        elif isinstance(write, RecordAttempt):
            if not folds_attempt(write, finished[write.run_id]):
                out.append(write)
        elif not isinstance(write, FinishRun):
            out.append(write)
    return out


def folds_attempt(attempt: RecordAttempt, finish: FinishRun) -> bool:
    """True for the happy path's one attempt: the first, answered, and the run succeeded
    with its response. The run's row then says all the attempt row would (see
    `LIST_ATTEMPTS`), so a run created and finished in one batch writes one row, not
    two: each is an insert at a random key, the costliest work a batch does.
    """
    return (
        attempt.attempt == 1
        and attempt.outcome == "response"
        and attempt.detail is None
        and finish.status == RunStatus.SUCCEEDED
        and attempt.status == finish.response.status
    )
