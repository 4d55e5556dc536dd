"""PostgreSQL statements of the admin reads (`gateway.store.reads` runs them): a run's steps
with their sizes and its step errors.

Never loads a request, response or step body: octet_length reads a stored value's size
from its header, and bodies live out of line (TOAST), so a listing reads small rows.
"""

from __future__ import annotations

from typing import Final

STEPS: Final = (
    "SELECT step_id, attempt, created_at, octet_length(output), started_at, duration_ms FROM steps"
    " WHERE run_id = $1 ORDER BY created_at, step_id"
)
# In the order they were recorded; `dropped` counts errors after the last kept one.
STEP_ERRORS: Final = (
    "SELECT step_id, attempt, message, created_at, dropped FROM step_errors"
    " WHERE run_id = $1 ORDER BY seq"
)
