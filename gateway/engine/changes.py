"""Waiting for a change: the one primitive every waiter on a run or a stream uses."""

from __future__ import annotations

import asyncio


async def until_changed(change: asyncio.Future[None], seconds: float) -> None:
    """Wait for a change, or `seconds` at most; the caller re-reads the state either way.

    A timer that settles the future rather than `asyncio.timeout`, which costs about three
    times as much, and this wait happens once per held request.
    """
    timer = asyncio.get_running_loop().call_later(seconds, settle, change)
    try:
        await change
    finally:
        timer.cancel()


def settle(change: asyncio.Future[None]) -> None:
    """Resolve a change future unless it is resolved already."""
    if not change.done():
        change.set_result(None)
