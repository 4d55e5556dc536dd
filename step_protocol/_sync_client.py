"""The blocking flavour of the client (Flask, Django, plain WSGI): `ctx.step(id, fn)`,
`ctx.sleep(...)`, `ctx.wait_for_event(...)`.

Same rules as the asyncio `client.py`, over http.client keep-alive connections; it never
shares a connection between threads. Import it from `step_protocol`.
"""

from __future__ import annotations

import http.client
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Final, Self, TypeVar, cast, final
from urllib.parse import urlsplit

from step_protocol import wire
from step_protocol._context import (
    NO_GATEWAY_WAIT,
    TIMEOUT,
    ContextBase,
    HeadersLike,
    PutResult,
    RunInfo,
    StepProtocolError,
    Stopwatch,
    Suspend,
    error_body,
    json_ok,
    local_delay,
    log,
    output_body,
    parse_headers,
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

T = TypeVar("T")

_Origin = tuple[str, str, int | None]


def _connect(origin: _Origin, timeout: float) -> http.client.HTTPConnection:
    scheme, host, port = origin
    if scheme == "https":
        return http.client.HTTPSConnection(host, port, timeout=timeout)
    return http.client.HTTPConnection(host, port, timeout=timeout)


@final
class SyncStepClient:
    """Keep-alive connections to the sidecar for blocking handlers: one per thread and host.

    Create it once per process; `close()` (or garbage collection) closes them all.
    """

    __slots__ = ("_conns", "_lock", "_timeout", "__weakref__")

    def __init__(self, *, timeout: float = TIMEOUT) -> None:
        # Keyed by thread: http.client connections must not be shared between threads.
        self._conns: dict[tuple[int, _Origin], http.client.HTTPConnection] = {}
        self._lock = threading.Lock()
        self._timeout = timeout
        weakref.finalize(self, _close_all, self._conns)

    def context(self, headers: HeadersLike) -> SyncRunContext:
        """The SyncRunContext for one request."""
        return SyncRunContext(parse_headers(headers), self)

    def connection(self, origin: _Origin, *, fresh: bool = False) -> http.client.HTTPConnection:
        """This thread's connection to `origin`; `fresh` replaces one the server closed."""
        key = (threading.get_ident(), origin)
        with self._lock:
            conn = self._conns.get(key)
            if conn is not None and not fresh:
                return conn
            self._conns[key] = new = _connect(origin, self._timeout)
        if conn is not None:
            conn.close()
        return new

    def close(self) -> None:
        with self._lock:
            _close_all(self._conns)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


@final
class SyncRunContext(ContextBase):
    """RunContext for blocking handlers: `ctx.step`, `ctx.sleep`, `ctx.wait_for_event`, same rules.

    Made by `SyncStepClient.context()` it reuses that client's per-thread keep-alive
    connection; made by `from_headers()` alone it keeps one connection for its own
    calls, closed when the context is garbage-collected.
    """

    # __weakref__: weakref.finalize() closes the context's own connection.
    __slots__ = ("_client", "_own", "_origin", "_prefix", "__weakref__")

    def __init__(self, info: RunInfo | None, client: SyncStepClient | None = None):
        super().__init__(info)
        self._client = client
        self._own: list[http.client.HTTPConnection] = []
        self._origin: _Origin = ("http", "", None)
        self._prefix = ""
        if info is not None:
            parts = urlsplit(info.sidecar)
            self._origin = (parts.scheme, parts.hostname or "", parts.port)
            self._prefix = parts.path
            if client is None:
                weakref.finalize(self, _close_all, self._own)

    @classmethod
    def from_headers(
        cls, headers: HeadersLike, *, client: SyncStepClient | None = None
    ) -> SyncRunContext:
        """Context for this request; pass a SyncStepClient to keep connections across requests."""
        return cls(parse_headers(headers), client)

    def step(self, step_id: str, fn: Callable[[], T], *, sync: bool = False) -> T:
        """The step's output: memoized if a previous attempt completed it, else `fn()` recorded.

        Same rules as `RunContext.step`: JSON-serialisable outputs, `id:1`, `id:2`, … for
        repeated ids, failures of `fn` reported (best effort) and re-raised, `fn`'s timing
        sent with either record.
        """
        step_id = self._journal.next_id(step_id)
        if self._info is None:
            value = fn()
            output_body(step_id, value)
            return value
        memo = self._completed()
        if step_id in memo:
            return cast(T, memo[step_id])
        path = step_path(step_id)
        watch = Stopwatch()
        try:
            value = fn()
        except Suspend:
            raise  # not a failed try: nothing to report
        except Exception as exc:
            self._report_failure(path, exc, watch)
            raise
        body = output_body(step_id, value, watch)
        status, answer = self._request("PUT", put_path(path, sync), body)
        if put_outcome(status, answer) is PutResult.CONFLICT:
            return cast(T, json_ok(*self._request("GET", path)).get("output"))
        return value

    def sleep(
        self,
        step_id: str,
        seconds: float | timedelta | None = None,
        *,
        until: datetime | str | None = None,
    ) -> None:
        """Sleep durably; raises `Suspend` while it lasts (same rules as `RunContext.sleep`).

        Outside the gateway it blocks this thread for the duration instead.
        """
        body = wire.sleep_body(seconds, until)
        step_id = self._journal.next_id(step_id)
        if self._info is None:
            time.sleep(local_delay(seconds, until, utc_now()))
            return
        if step_id in self._completed():
            return
        sleep_outcome(step_id, *self._request("POST", sleep_path(step_id), body))

    def wait_for_event(
        self,
        step_id: str,
        event: str,
        *,
        match: Mapping[str, Any] | None = None,
        timeout: wire.Duration | None = None,
        lookback: wire.Duration | None = None,
    ) -> dict[str, Any] | None:
        """The matching event, None on timeout, or `Suspend` (see `RunContext.wait_for_event`)."""
        body = wire.wait_body(event, match, timeout, lookback)
        step_id = self._journal.next_id(step_id)
        if self._info is None:
            raise StepProtocolError(NO_GATEWAY_WAIT)
        memo = self._completed()
        if step_id in memo:
            return cast(dict[str, Any] | None, memo[step_id])
        return wait_outcome(step_id, *self._request("POST", wait_path(step_id), body))

    def _completed(self) -> dict[str, Any]:
        """The completed steps: from the headers, or fetched on first need."""
        if self._journal.memo is None:
            self._journal.memo = steps_from(json_ok(*self._request("GET", "/steps")))
        return self._journal.memo

    def _report_failure(self, path: str, exc: Exception, watch: Stopwatch) -> None:
        try:
            self._request("PUT", path, error_body(exc, watch))
        except Exception as report_exc:  # best effort: the original error matters more
            log.debug("could not record failed try at %s: %s", path, report_exc)

    def _connection(self, fresh: bool) -> http.client.HTTPConnection:
        if self._client is not None:
            return self._client.connection(self._origin, fresh=fresh)
        if self._own and not fresh:
            return self._own[-1]
        _close_all(self._own)
        self._own.append(_connect(self._origin, TIMEOUT))
        return self._own[-1]

    def _request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        headers = self._headers(body)
        # A kept-alive connection the sidecar has closed fails on first use; every call
        # here is idempotent (GET; a PUT that answers 200 when repeated; a sleep or wait
        # POST, whose first call fixes its timer), so retry once.
        for fresh in (False, True):
            conn = self._connection(fresh)
            try:
                conn.request(method, self._prefix + path, body=body, headers=headers)
                resp = conn.getresponse()
                return resp.status, resp.read()
            except _CLOSED_BY_PEER as exc:
                conn.close()
                if fresh:
                    raise unreachable(exc) from exc
            except (http.client.HTTPException, OSError) as exc:
                conn.close()
                raise unreachable(exc) from exc
        raise AssertionError("unreachable")


_CLOSED_BY_PEER: Final = (
    http.client.RemoteDisconnected,
    ConnectionResetError,
    ConnectionAbortedError,
    BrokenPipeError,
)


def _close_all(
    conns: list[http.client.HTTPConnection] | dict[Any, http.client.HTTPConnection],
) -> None:
    for conn in conns.values() if isinstance(conns, dict) else conns:
        conn.close()
    conns.clear()
