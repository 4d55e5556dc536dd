"""SQLite statements of the admin reads (`gateway.store.reads` runs them): a run's steps with
their sizes and its step errors.

Never loads a request, response or step body: the listing reads resp_status from its
index, and step sizes come from length(), which SQLite answers from the row header.
"""

from __future__ import annotations

from typing import Final

STEPS: Final = (
    "SELECT step_id, attempt, created_at, length(output), started_at, duration_ms FROM steps"
    " WHERE run_id = ? ORDER BY created_at, step_id"
)

# In the order they were recorded; `dropped` counts errors after the last kept one.
STEP_ERRORS: Final = (
    "SELECT step_id, attempt, message, created_at, dropped FROM step_errors"
    " WHERE run_id = ? ORDER BY seq"
)
