"""Reference backend helper: turns the Durable-* headers into `ctx.step(id, fn)` calls.

Runs inside a backend handler and talks only to the sidecar URL the gateway sent; it
never keeps hidden global state (sessions and pools belong to a StepClient you own).
"""

from __future__ import annotations

import asyncio
import enum
import http.client
import inspect
import logging
import threading
import weakref
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Protocol, Self, TypeVar, cast, final, overload
from urllib.parse import urlsplit

import aiohttp
import orjson
from yarl import URL

from step_protocol import wire

T = TypeVar("T")
log = logging.getLogger("step_protocol")

_JSON: Final = "application/json"
_TIMEOUT: Final = 30.0
"""Seconds a sidecar call may take; a `?durable=sync` write waits for a commit."""


class HeadersLike(Protocol):
    """Anything with `items()` of header pairs: dict, multidict, Starlette or Werkzeug headers."""

    def items(self) -> Iterable[tuple[str, str]]: ...


# --- errors ---------------------------------------------------------------------------


class StepProtocolError(Exception):
    """Base of every error this package raises."""


class SidecarError(StepProtocolError):
    """The sidecar refused a call or could not be reached (`status` is None then).

    The step was not recorded: let the handler fail so the gateway retries it.
    """

    def __init__(self, status: int | None, problem: dict[str, Any]):
        self.status = status
        self.problem = problem
        detail = problem.get("detail") or problem.get("title") or ""
        super().__init__(f"sidecar answered {status}: {detail}" if status else str(detail))


class StaleAttempt(SidecarError):
    """A newer attempt of this run has started; this one's writes are refused.

    Nothing this attempt does counts any more: let it propagate and end the handler.
    """


# --- the parsed headers and the per-context journal (pure) -----------------------------


@dataclass(frozen=True, slots=True)
class RunInfo:
    """What the gateway told this attempt in its Durable-* headers."""

    run_id: str
    attempt: int
    sidecar: str
    """Base URL of the run's sidecar API, without a trailing slash."""
    token: str
    steps: dict[str, Any] | None
    """Completed steps `{step_id: output}`; None means `GET {sidecar}/steps` first."""


def parse_headers(headers: HeadersLike) -> RunInfo | None:
    """RunInfo from request headers (any case); None when the gateway sent none.

    Raises StepProtocolError when only some of the required headers are present: a
    handler must not silently run without durability behind the gateway.
    """
    found: dict[str, str] = {}
    for name, value in headers.items():
        lower = name.lower()
        if lower.startswith("durable-"):
            found[lower] = value
    run_id = found.get("durable-run-id")
    sidecar = found.get("durable-sidecar")
    token = found.get("durable-token")
    if run_id is None and sidecar is None and token is None:
        return None
    if not (run_id and sidecar and token):
        raise StepProtocolError(
            f"incomplete durable headers: need {wire.RUN_ID}, {wire.SIDECAR} and {wire.TOKEN}"
        )
    try:
        attempt = int(found.get("durable-attempt", "1"))
    except ValueError:
        raise StepProtocolError(f"malformed {wire.ATTEMPT} header") from None
    try:
        steps = wire.decode_steps(found.get("durable-steps"))
    except ValueError as exc:
        # The sidecar is the source of truth, so a mangled header costs one GET, not the run.
        log.warning("%s; fetching steps from the sidecar instead", exc)
        steps = None
    return RunInfo(run_id, attempt, sidecar.rstrip("/"), token, steps)


@final
class _Journal:
    """Step ids handed out so far and the memoized outputs, for one context."""

    __slots__ = ("memo", "uses")

    def __init__(self, memo: dict[str, Any] | None) -> None:
        self.memo = memo
        self.uses: dict[str, int] = {}

    def next_id(self, base: str) -> str:
        """`base` first, then `base:1`, `base:2`, … (stable for a deterministic handler)."""
        if not base:
            raise ValueError("a step id must not be empty")
        n = self.uses.get(base, 0)
        self.uses[base] = n + 1
        step_id = f"{base}:{n}" if n else base
        if len(step_id) > wire.MAX_STEP_ID:
            raise ValueError(f"step id longer than {wire.MAX_STEP_ID} characters: {step_id!r}")
        return step_id


class _Put(enum.Enum):
    """What a step PUT's answer means for the caller."""

    RECORDED = "recorded"
    """Accepted (201 new, 200 same output): the value sent is the step's output."""
    CONFLICT = "conflict"
    """Another write won (first write wins): read the stored output back."""


def _problem(status: int, body: bytes) -> dict[str, Any]:
    try:
        problem = orjson.loads(body)
    except orjson.JSONDecodeError:
        problem = None
    if isinstance(problem, dict):
        return problem
    return {"status": status, "detail": body[:500].decode("utf-8", "replace")}


def _refusal(status: int, body: bytes) -> SidecarError:
    problem = _problem(status, body)
    if status == 409 and wire.problem_slug(problem.get("type")) == wire.PROBLEM_STALE_ATTEMPT:
        return StaleAttempt(status, problem)
    return SidecarError(status, problem)


def _put_outcome(status: int, body: bytes) -> _Put:
    """Classify a step PUT's answer; raises for anything but 200, 201 and a step conflict."""
    if status in (200, 201):
        return _Put.RECORDED
    error = _refusal(status, body)
    if status == 409 and not isinstance(error, StaleAttempt):
        return _Put.CONFLICT
    raise error


def _json_ok(status: int, body: bytes) -> dict[str, Any]:
    """The JSON object of a 200 answer; raises SidecarError otherwise."""
    if status != 200:
        raise _refusal(status, body)
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise SidecarError(status, {"detail": f"sidecar sent invalid JSON: {exc}"}) from exc
    if not isinstance(answer, dict):
        raise SidecarError(status, {"detail": "sidecar sent a non-object JSON body"})
    return answer


def _output_body(step_id: str, value: object) -> bytes:
    try:
        return wire.put_output_body(value)
    except TypeError as exc:  # orjson.JSONEncodeError is a TypeError
        raise TypeError(f"output of step {step_id!r} is not JSON-serialisable: {exc}") from exc


def _steps_from(answer: dict[str, Any]) -> dict[str, Any]:
    steps = answer.get("steps")
    if not isinstance(steps, dict):
        raise SidecarError(200, {"detail": "GET steps answer has no `steps` object"})
    return {k: v.get("output") for k, v in steps.items() if isinstance(v, dict)}


# --- asyncio flavour -------------------------------------------------------------------


@final
class RunContext:
    """One attempt of one run, seen from an async handler: `await ctx.step(id, fn)`.

    Outputs must be JSON-serialisable (they are encoded with orjson) and come back from
    JSON on a retry, so return JSON-native values (dict, list, str, int, float, bool, None).
    A step id used again in the same context becomes `id:1`, `id:2`, …, so a loop needs no
    manual numbering as long as the handler calls its steps in the same order each time.
    """

    __slots__ = ("_info", "_session", "_journal", "_fetch_lock", "_auth")

    def __init__(self, info: RunInfo | None, session: aiohttp.ClientSession | None = None):
        self._info = info
        self._session = session
        self._journal = _Journal(info.steps if info else {})
        self._fetch_lock = asyncio.Lock()
        self._auth = {"Authorization": f"Bearer {info.token}"} if info else {}

    @classmethod
    def from_headers(
        cls, headers: HeadersLike, *, session: aiohttp.ClientSession | None = None
    ) -> RunContext:
        """Context for this request. Without `session` every call opens its own connection.

        Prefer `StepClient.context()`, which reuses one keep-alive session.
        """
        return cls(parse_headers(headers), session)

    @property
    def durable(self) -> bool:
        """False when the request did not come through the gateway: steps just run."""
        return self._info is not None

    @property
    def run_id(self) -> str | None:
        return self._info.run_id if self._info else None

    @property
    def attempt(self) -> int:
        """1 for the first attempt (and outside the gateway), then 2, 3, …"""
        return self._info.attempt if self._info else 1

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
        info = self._info
        if info is None:
            value = await _call(fn)
            _output_body(step_id, value)  # same serialisability rule with or without gateway
            return value
        memo = self._journal.memo
        if memo is None:
            memo = await self._load_steps(info)
        if step_id in memo:
            return cast(T, memo[step_id])
        url = f"{info.sidecar}/steps/{wire.step_path(step_id)}"
        try:
            value = await _call(fn)
        except Exception as exc:
            await self._report_failure(url, exc)
            raise
        body = _output_body(step_id, value)
        put_url = f"{url}?{wire.SYNC_QUERY}" if sync else url
        status, answer = await self._request("PUT", put_url, body)
        if _put_outcome(status, answer) is _Put.CONFLICT:
            stored = _json_ok(*await self._request("GET", url))
            return cast(T, stored.get("output"))
        return value

    # Durable sleep and event waits (`POST {base}/steps/{id}/sleep` and `/wait`, SPEC.md
    # "Sleep and wait") will be methods here: ctx.sleep(id, seconds) and ctx.wait_for(...).

    async def _load_steps(self, info: RunInfo) -> dict[str, Any]:
        """Fetch every completed step once, however many steps ask at the same time."""
        async with self._fetch_lock:
            if self._journal.memo is None:
                answer = _json_ok(*await self._request("GET", f"{info.sidecar}/steps"))
                self._journal.memo = _steps_from(answer)
            return self._journal.memo

    async def _report_failure(self, url: str, exc: Exception) -> None:
        try:
            await self._request("PUT", url, wire.put_error_body(str(exc) or type(exc).__name__))
        except Exception as report_exc:  # best effort: the original error matters more
            log.debug("could not record failed try at %s: %s", url, report_exc)

    async def _request(self, method: str, url: str, body: bytes | None = None) -> tuple[int, bytes]:
        headers = self._auth if body is None else {**self._auth, "Content-Type": _JSON}
        # encoded=True: send the step id's percent-encoding as is (yarl would unquote `%3A`).
        target = URL(url, encoded=True)
        try:
            if (session := self._session) is not None:
                async with session.request(method, target, data=body, headers=headers) as resp:
                    return resp.status, await resp.read()
            async with aiohttp.request(method, target, data=body, headers=headers) as resp:
                return resp.status, await resp.read()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise _unreachable(exc) from exc


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

    def __init__(self, *, timeout: float = _TIMEOUT, limit: int = 100) -> None:
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


# --- blocking flavour (Flask, Django, plain WSGI) --------------------------------------

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

    def __init__(self, *, timeout: float = _TIMEOUT) -> None:
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
class SyncRunContext:
    """RunContext for blocking handlers: `ctx.step(id, fn)` with the same rules.

    Made by `SyncStepClient.context()` it reuses that client's per-thread keep-alive
    connection; made by `from_headers()` alone it keeps one connection for its own
    calls, closed when the context is garbage-collected.
    """

    # __weakref__: weakref.finalize() closes the context's own connection.
    __slots__ = (
        "_info",
        "_client",
        "_own",
        "_journal",
        "_auth",
        "_origin",
        "_prefix",
        "__weakref__",
    )

    def __init__(self, info: RunInfo | None, client: SyncStepClient | None = None):
        self._info = info
        self._client = client
        self._own: list[http.client.HTTPConnection] = []
        self._journal = _Journal(info.steps if info else {})
        self._auth = {"Authorization": f"Bearer {info.token}"} if info else {}
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

    @property
    def durable(self) -> bool:
        """False when the request did not come through the gateway: steps just run."""
        return self._info is not None

    @property
    def run_id(self) -> str | None:
        return self._info.run_id if self._info else None

    @property
    def attempt(self) -> int:
        """1 for the first attempt (and outside the gateway), then 2, 3, …"""
        return self._info.attempt if self._info else 1

    def step(self, step_id: str, fn: Callable[[], T], *, sync: bool = False) -> T:
        """The step's output: memoized if a previous attempt completed it, else `fn()` recorded.

        Same rules as `RunContext.step`: JSON-serialisable outputs, `id:1`, `id:2`, … for
        repeated ids, failures of `fn` reported (best effort) and re-raised.
        """
        step_id = self._journal.next_id(step_id)
        if self._info is None:
            value = fn()
            _output_body(step_id, value)
            return value
        memo = self._journal.memo
        if memo is None:
            memo = self._journal.memo = _steps_from(_json_ok(*self._request("GET", "/steps")))
        if step_id in memo:
            return cast(T, memo[step_id])
        path = f"/steps/{wire.step_path(step_id)}"
        try:
            value = fn()
        except Exception as exc:
            self._report_failure(path, exc)
            raise
        body = _output_body(step_id, value)
        put_path = f"{path}?{wire.SYNC_QUERY}" if sync else path
        status, answer = self._request("PUT", put_path, body)
        if _put_outcome(status, answer) is _Put.CONFLICT:
            return cast(T, _json_ok(*self._request("GET", path)).get("output"))
        return value

    # Durable sleep and event waits will be methods here too (see RunContext).

    def _report_failure(self, path: str, exc: Exception) -> None:
        try:
            self._request("PUT", path, wire.put_error_body(str(exc) or type(exc).__name__))
        except Exception as report_exc:  # best effort: the original error matters more
            log.debug("could not record failed try at %s: %s", path, report_exc)

    def _connection(self, fresh: bool) -> http.client.HTTPConnection:
        if self._client is not None:
            return self._client.connection(self._origin, fresh=fresh)
        if self._own and not fresh:
            return self._own[-1]
        _close_all(self._own)
        self._own.append(_connect(self._origin, _TIMEOUT))
        return self._own[-1]

    def _request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        headers = self._auth if body is None else {**self._auth, "Content-Type": _JSON}
        # A kept-alive connection the sidecar has closed fails on first use; every call
        # here is idempotent (GET, or a PUT that answers 200 when repeated), so retry once.
        for fresh in (False, True):
            conn = self._connection(fresh)
            try:
                conn.request(method, self._prefix + path, body=body, headers=headers)
                resp = conn.getresponse()
                return resp.status, resp.read()
            except _CLOSED_BY_PEER as exc:
                conn.close()
                if fresh:
                    raise _unreachable(exc) from exc
            except (http.client.HTTPException, OSError) as exc:
                conn.close()
                raise _unreachable(exc) from exc
        raise AssertionError("unreachable")


_CLOSED_BY_PEER: Final = (
    http.client.RemoteDisconnected,
    ConnectionResetError,
    ConnectionAbortedError,
    BrokenPipeError,
)


def _unreachable(exc: BaseException) -> SidecarError:
    return SidecarError(None, {"detail": f"sidecar unreachable: {exc!r}"})


def _close_all(
    conns: list[http.client.HTTPConnection] | dict[Any, http.client.HTTPConnection],
) -> None:
    for conn in conns.values() if isinstance(conns, dict) else conns:
        conn.close()
    conns.clear()
