"""The cluster of one: an SQLite file is used by one process (its file lock), so no other
node is ever absent, takes a run, or sends a notice."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.store.protocols import OnNotice
from gateway.store.records import RunRow


class AloneCluster:
    """`Cluster` for a store no other process shares."""

    __slots__ = ()

    async def join(self, owner: str, on_notice: OnNotice) -> None:
        return None

    async def absent(self, owner: str, now: float) -> list[str]:
        return []

    async def take_over(
        self, owner: str, gone: Sequence[str], now: float, lease_ttl: float, limit: int
    ) -> list[RunRow]:
        return []

    async def taken(self, owner: str, run_ids: Sequence[str]) -> list[str]:
        return []

    async def leave(self) -> None:
        return None
