"""Reference backend helper: turns the Durable-* headers into `ctx.step(id, fn)` calls.

Runs inside a backend handler and talks only to the sidecar URL the gateway sent; it
never keeps hidden global state (sessions and pools belong to a StepClient you own).
This is the asyncio flavour; the blocking one is re-exported from `_sync_client.py`.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Self, TypeVar, cast, final, overload

import aiohttp
from yarl import URL

from step_protocol._context import (
    TIMEOUT,
    ContextBase,
    PutResult,
    error_body,
    json_ok,
    log,
    output_body,
    put_outcome,
    put_path,
    step_path,
    steps_from,
    unreachable,
)

# Public names that lived here before the split; `X as X` marks each as a re-export.
from step_protocol._context import HeadersLike as HeadersLike
from step_protocol._context import RunInfo as RunInfo
from step_protocol._context import SidecarError as SidecarError
from step_protocol._context import StaleAttempt as StaleAttempt
from step_protocol._context import StepProtocolError as StepProtocolError
from step_protocol._context import parse_headers as parse_headers
from step_protocol._sync_client import SyncRunContext as SyncRunContext
from step_protocol._sync_client import SyncStepClient as SyncStepClient

T = TypeVar("T")


@final
class RunContext(ContextBase):
    """One attempt of one run, seen from an async handler: `await ctx.step(id, fn)`.

    Outputs must be JSON-serialisable (they are encoded with orjson) and come back from
    JSON on a retry, so return JSON-native values (dict, list, str, int, float, bool, None).
    A step id used again in the same context becomes `id:1`, `id:2`, …, so a loop needs no
    manual numbering as long as the handler calls its steps in the same order each time.
    """

    __slots__ = ("_session", "_sidecar", "_fetch_lock")

    def __init__(self, info: RunInfo | None, session: aiohttp.ClientSession | None = None):
        super().__init__(info)
        self._session = session
        self._sidecar = info.sidecar if info else ""
        self._fetch_lock = asyncio.Lock()

    @classmethod
    def from_headers(
        cls, headers: HeadersLike, *, session: aiohttp.ClientSession | None = None
    ) -> RunContext:
        """Context for this request. Without `session` every call opens its own connection.

        Prefer `StepClient.context()`, which reuses one keep-alive session.
        """
        return cls(parse_headers(headers), session)

    @overload
    async def step(
        self, step_id: str, fn: Callable[[], Awaitable[T]], *, sync: bool = False
    ) -> T: ...
    @overload
    async def step(self, step_id: str, fn: Callable[[], T], *, sync: bool = False) -> T: ...
    async def step(
        self, step_id: str, fn: Callable[[], Awaitable[T]] | Callable[[], T], *, sync: bool = False
    ) -> T:
        """The step's output: memoized if a previous attempt completed it, else `fn()` recorded.

        `sync=True` returns only once the gateway has committed the step to storage.
        If `fn` raises, the failure is reported to the sidecar (best effort) and re-raised.
        """
        step_id = self._journal.next_id(step_id)  # before any await: keeps gather() stable
        if self._info is None:
            value = await _call(fn)
            output_body(step_id, value)  # same serialisability rule with or without gateway
            return value
        memo = self._journal.memo
        if memo is None:
            memo = await self._load_steps()
        if step_id in memo:
            return cast(T, memo[step_id])
        path = step_path(step_id)
        try:
            value = await _call(fn)
        except Exception as exc:
            await self._report_failure(path, exc)
            raise
        body = output_body(step_id, value)
        status, answer = await self._request("PUT", put_path(path, sync), body)
        if put_outcome(status, answer) is PutResult.CONFLICT:
            stored = json_ok(*await self._request("GET", path))
            return cast(T, stored.get("output"))
        return value

    # Durable sleep and event waits (`POST {base}/steps/{id}/sleep` and `/wait`, SPEC.md
    # "Sleep and wait") will be methods here: ctx.sleep(id, seconds) and ctx.wait_for(...).

    async def _load_steps(self) -> dict[str, Any]:
        """Fetch every completed step once, however many steps ask at the same time."""
        async with self._fetch_lock:
            if self._journal.memo is None:
                self._journal.memo = steps_from(json_ok(*await self._request("GET", "/steps")))
            return self._journal.memo

    async def _report_failure(self, path: str, exc: Exception) -> None:
        try:
            await self._request("PUT", path, error_body(exc))
        except Exception as report_exc:  # best effort: the original error matters more
            log.debug("could not record failed try at %s: %s", self._sidecar + path, report_exc)

    async def _request(
        self, method: str, path: str, body: bytes | None = None
    ) -> tuple[int, bytes]:
        headers = self._headers(body)
        # encoded=True: send the step id's percent-encoding as is (yarl would unquote `%3A`).
        target = URL(self._sidecar + path, encoded=True)
        try:
            if (session := self._session) is not None:
                async with session.request(method, target, data=body, headers=headers) as resp:
                    return resp.status, await resp.read()
            async with aiohttp.request(method, target, data=body, headers=headers) as resp:
                return resp.status, await resp.read()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise unreachable(exc) from exc


async def _call(fn: Callable[[], Awaitable[T]] | Callable[[], T]) -> T:
    result = fn()
    if inspect.isawaitable(result):
        return cast(T, await result)
    return result


@final
class StepClient:
    """Owns one keep-alive aiohttp session for all of a backend's sidecar calls.

    Create it once (at startup, inside the event loop), hand `request.headers` to
    `context()` per request, and `await close()` (or use `async with`) at shutdown.
    """

    __slots__ = ("_session", "_timeout", "_limit")

    def __init__(self, *, timeout: float = TIMEOUT, limit: int = 100) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._timeout = timeout
        self._limit = limit

    def context(self, headers: HeadersLike) -> RunContext:
        """The RunContext for one request."""
        return RunContext(parse_headers(headers), self.session)

    @property
    def session(self) -> aiohttp.ClientSession:
        """The shared session, created on first use (it must be made inside a running loop)."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._limit),
                timeout=aiohttp.ClientTimeout(total=self._timeout),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
