"""Owned background tasks: `spawn()` keeps a strong reference and names every task.

Raw `asyncio.create_task` is banned by ruff (TID251): a task nobody holds can be
garbage-collected mid-flight, and an unnamed one is impossible to find in a dump.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
log = logging.getLogger("gateway.tasks")

_tasks: set[asyncio.Task[Any]] = set()


def spawn(coro: Coroutine[Any, Any, T], *, name: str) -> asyncio.Task[T]:
    """Start coro as a named task that lives until it ends; log it if it dies of an error."""
    task = asyncio.get_running_loop().create_task(coro, name=name)
    _tasks.add(task)
    task.add_done_callback(_forget)
    return task


def _forget(task: asyncio.Task[Any]) -> None:
    _tasks.discard(task)
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("task %s failed", task.get_name(), exc_info=exc)
