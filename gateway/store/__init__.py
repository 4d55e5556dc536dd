"""Storage: records, the Protocols each dialect implements, the group-commit writer.

The request path never awaits a store call on the happy path: writes are queued on
`writer.Writer` and committed in batches by one task. Layout: `records` (plain data),
`protocols` (the seams), `batch` (dialect-neutral batch planning), `schema` (versioned
migrations), `writer`, `open` (from a URL to a store), and one folder per dialect.
This face hands on the records and Protocols; it imports no dialect.
"""

from gateway.store.protocols import (
    FullStore,
    RunQueries,
    Store,
    SuspensionStore,
)
from gateway.store.records import (
    FINAL_STATUSES,
    PARKED_STATUSES,
    AddedEvent,
    AttemptRow,
    CancelRun,
    CompletedWait,
    CreateRun,
    DropPending,
    EventRow,
    FinishRun,
    Headers,
    PendingRow,
    PutPending,
    PutStep,
    RecordAttempt,
    ResetRun,
    RunRow,
    RunStatus,
    RunSummary,
    StepRow,
    StoredRequest,
    StoredResponse,
    SuspendRun,
    UpdateRun,
    Write,
)

__all__ = [
    "AddedEvent",
    "AttemptRow",
    "CancelRun",
    "CompletedWait",
    "CreateRun",
    "DropPending",
    "EventRow",
    "FINAL_STATUSES",
    "FinishRun",
    "FullStore",
    "Headers",
    "PARKED_STATUSES",
    "PendingRow",
    "PutPending",
    "PutStep",
    "RecordAttempt",
    "ResetRun",
    "RunQueries",
    "RunRow",
    "RunStatus",
    "RunSummary",
    "StepRow",
    "Store",
    "StoredRequest",
    "StoredResponse",
    "SuspendRun",
    "SuspensionStore",
    "UpdateRun",
    "Write",
]
