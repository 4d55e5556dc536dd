"""Reference backend helper: turns the Durable-* headers into `ctx.step(id, fn)`, `ctx.sleep`
and `ctx.wait_for_event` calls.

Runs inside a backend handler and talks only to the sidecar URL the gateway sent; it
never keeps hidden global state (sessions and pools belong to a StepClient you own).
This is the asyncio flavour; the blocking one is re-exported from `_sync_client.py`.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Self, TypeVar, cast, final, overload

import aiohttp
from yarl import URL

from step_protocol import wire
from step_protocol._context import (
    NO_GATEWAY_WAIT,
    TIMEOUT,
    ContextBase,
    PutResult,
    Stopwatch,
    error_body,
    json_ok,
    local_delay,
    log,
    output_body,
    put_outcome,
    put_path,
    sleep_outcome,
    sleep_path,
    step_path,
    steps_from,
    unreachable,
    utc_now,
    wait_outcome,
    wait_path,
)

# Public names that lived here before the split; `X as X` marks each as a re-export.
from step_protocol._context import HeadersLike as HeadersLike
from step_protocol._context import RunInfo as RunInfo
from step_protocol._context import SidecarError as SidecarError
from step_protocol._context import StaleAttempt as StaleAttempt
from step_protocol._context import StepProtocolError as StepProtocolError
from step_protocol._context import Suspend as Suspend
from step_protocol._context import SuspendKind as SuspendKind
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
        Either record carries when `fn` started and how long it ran (SPEC.md §4.3).
        """
        step_id = self._journal.next_id(step_id)  # before any await: keeps gather() stable
        if self._info is None:
            value = await _call(fn)
            output_body(step_id, value)  # same serialisability rule with or without gateway
            return value
        memo = await self._completed()
        if step_id in memo:
            return cast(T, memo[step_id])
        path = step_path(step_id)
        watch = Stopwatch()
        try:
            value = await _call(fn)
        except Suspend:
            raise  # not a failed try: nothing to report
        except Exception as exc:
            await self._report_failure(path, exc, watch)
            raise
        body = output_body(step_id, value, watch)
        status, answer = await self._request("PUT", put_path(path, sync), body)
        if put_outcome(status, answer) is PutResult.CONFLICT:
            stored = json_ok(*await self._request("GET", path))
            return cast(T, stored.get("output"))
        return value

    async def sleep(
        self,
        step_id: str,
        seconds: float | timedelta | None = None,
        *,
        until: datetime | str | None = None,
    ) -> None:
        """Sleep durably for `seconds` (>= 0) or `until` an aware datetime or RFC 3339 string.

        A step like any other: returns at once if an earlier attempt saw it end. Otherwise
        returns when the gateway says it is over, or raises `Suspend`: end the handler
        then; the gateway calls it again after the wake time. The first call for this id
        in the run fixes the wake time. Outside the gateway it just sleeps here.
        """
        body = wire.sleep_body(seconds, until)
        step_id = self._journal.next_id(step_id)
        if self._info is None:
            await asyncio.sleep(local_delay(seconds, until, utc_now()))
            return
        if step_id in await self._completed():
            return
        sleep_outcome(step_id, *await self._request("POST", sleep_path(step_id), body))

    async def wait_for_event(
        self,
        step_id: str,
        event: str,
        *,
        match: Mapping[str, Any] | None = None,
        timeout: wire.Duration | None = None,  # noqa: ASYNC109 (the gateway's durable timer)
        lookback: wire.Duration | None = None,
    ) -> dict[str, Any] | None:
        """The first event named `event` whose dotted paths equal `match`; None on timeout.

        The event is `{"name", "id", "data", "ts"}`. Raises `Suspend` while none has come:
        end the handler then; the gateway calls it again when one arrives or `timeout`
        passes (None: wait forever). `lookback` also accepts events that arrived that long
        before the first call. The first call for this id fixes event, match and timeout.
        Raises StepProtocolError outside the gateway, where nothing could deliver an event.
        """
        body = wire.wait_body(event, match, timeout, lookback)
        step_id = self._journal.next_id(step_id)
        if self._info is None:
            raise StepProtocolError(NO_GATEWAY_WAIT)
        memo = await self._completed()
        if step_id in memo:
            return cast(dict[str, Any] | None, memo[step_id])
        return wait_outcome(step_id, *await self._request("POST", wait_path(step_id), body))

    async def _completed(self) -> dict[str, Any]:
        """The completed steps: from the headers, or fetched once however many ask at once."""
        if self._journal.memo is not None:
            return self._journal.memo
        async with self._fetch_lock:
            if self._journal.memo is None:
                self._journal.memo = steps_from(json_ok(*await self._request("GET", "/steps")))
            return self._journal.memo

    async def _report_failure(self, path: str, exc: Exception, watch: Stopwatch) -> None:
        try:
            await self._request("PUT", path, error_body(exc, watch))
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
