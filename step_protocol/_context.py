"""What both flavours of run context share: the Durable-* headers parsed, the step journal,
how sidecar answers are read, the errors and `Suspend`. Pure: no I/O here, so the async client
(`client.py`) and the blocking one (`_sync_client.py`) cannot read the protocol differently.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Protocol, final

import orjson

from step_protocol import wire

log = logging.getLogger("step_protocol")

JSON: Final = "application/json"
TIMEOUT: Final = 30.0
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


class SuspendKind(enum.StrEnum):
    """What a suspended attempt waits for."""

    SLEEP = "sleep"
    WAIT = "wait"


class Suspend(Exception):
    """The gateway asked this attempt to suspend: end the handler now; it will be re-invoked.

    Not a StepProtocolError, because nothing failed. Let it propagate to a framework helper
    (`step_protocol.frameworks`), or catch it and answer anything: the gateway ignores the
    response of an attempt that suspended and re-invokes the request later. `wake_at` is
    when it re-invokes at the latest (a sleep's end, a wait's timeout); None for a wait
    without a timeout, which only a matching event ends.
    """

    def __init__(self, kind: SuspendKind, step_id: str, wake_at: datetime | None) -> None:
        self.kind = kind
        self.step_id = step_id
        self.wake_at = wake_at
        when = wire.format_timestamp(wake_at) if wake_at else "a matching event"
        super().__init__(f"{kind} {step_id!r} suspends the run until {when}")

    @property
    def timeout_at(self) -> datetime | None:
        """A wait's timeout (None: no timeout); always None for a sleep."""
        return self.wake_at if self.kind is SuspendKind.WAIT else None


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
class Journal:
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


class PutResult(enum.Enum):
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


def put_outcome(status: int, body: bytes) -> PutResult:
    """Classify a step PUT's answer; raises for anything but 200, 201 and a step conflict."""
    if status in (200, 201):
        return PutResult.RECORDED
    error = _refusal(status, body)
    if status == 409 and not isinstance(error, StaleAttempt):
        return PutResult.CONFLICT
    raise error


def json_ok(status: int, body: bytes) -> dict[str, Any]:
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


def _wake_time(body: bytes, key: str) -> datetime | None:
    """The time under `key` in a 202 answer; None when absent or unreadable."""
    try:
        answer = orjson.loads(body)
        value = answer.get(key) if isinstance(answer, dict) else None
        return None if value is None else wire.parse_timestamp(value)
    except (orjson.JSONDecodeError, ValueError) as exc:
        # The 202 itself is the signal that matters: suspend even without a readable time.
        log.warning("sidecar sent an unreadable %s: %s", key, exc)
        return None


def sleep_outcome(step_id: str, status: int, body: bytes) -> None:
    """Read a sleep call's answer: 200 is over, 202 raises Suspend, anything else raises."""
    if status == 202:
        raise Suspend(SuspendKind.SLEEP, step_id, _wake_time(body, "wake_at"))
    json_ok(status, body)


def wait_outcome(step_id: str, status: int, body: bytes) -> dict[str, Any] | None:
    """A wait call's event (None: timed out); 202 raises Suspend, a refusal raises."""
    if status == 202:
        raise Suspend(SuspendKind.WAIT, step_id, _wake_time(body, "timeout_at"))
    event = json_ok(status, body).get("event")
    if event is not None and not isinstance(event, dict):
        raise SidecarError(
            status, {"detail": "wait answer's `event` is neither an object nor null"}
        )
    return event


def local_delay(
    seconds: float | timedelta | None, until: datetime | str | None, now: datetime
) -> float:
    """How long a sleep lasts outside the gateway (arguments checked by `wire.sleep_body`)."""
    if until is None:
        return wire.parse_duration(seconds if seconds is not None else 0.0)
    end = until if isinstance(until, datetime) else wire.parse_timestamp(until)
    return max(0.0, (end - now).total_seconds())


def utc_now() -> datetime:
    return datetime.now(UTC)


NO_GATEWAY_WAIT: Final = (
    "cannot wait for events without the gateway: this request has no Durable-* headers "
    "(send it through a durable route)"
)


@final
class Stopwatch:
    """Times one try of a step's work for its PUT (SPEC.md §4.3): the wall-clock start,
    and the duration on the monotonic clock, so a clock step cannot skew it."""

    __slots__ = ("started_at", "_start")

    def __init__(self) -> None:
        self.started_at = time.time()
        self._start = time.perf_counter()

    def duration_ms(self) -> float:
        """Milliseconds since the start, to the microsecond (cut with int(): round(x, 3)
        costs more than the rest of the timing together)."""
        return int((time.perf_counter() - self._start) * 1_000_000) / 1000


def output_body(step_id: str, value: object, watch: Stopwatch | None = None) -> bytes:
    """The PUT body that records a step's output; with its timing when it ran here."""
    try:
        if watch is None:
            return wire.put_output_body(value)
        return wire.put_output_body(value, watch.started_at, watch.duration_ms())
    except TypeError as exc:  # orjson.JSONEncodeError is a TypeError
        raise TypeError(f"output of step {step_id!r} is not JSON-serialisable: {exc}") from exc


def steps_from(answer: dict[str, Any]) -> dict[str, Any]:
    steps = answer.get("steps")
    if not isinstance(steps, dict):
        raise SidecarError(200, {"detail": "GET steps answer has no `steps` object"})
    return {k: v.get("output") for k, v in steps.items() if isinstance(v, dict)}


def step_path(step_id: str) -> str:
    """Where a step lives under the sidecar URL."""
    return f"/steps/{wire.step_path(step_id)}"


def sleep_path(step_id: str) -> str:
    return step_path(step_id) + wire.SLEEP_SUFFIX


def wait_path(step_id: str) -> str:
    return step_path(step_id) + wire.WAIT_SUFFIX


def put_path(path: str, sync: bool) -> str:
    """The step path a PUT goes to; `sync` asks the gateway to commit before answering."""
    return f"{path}?{wire.SYNC_QUERY}" if sync else path


def error_body(exc: Exception, watch: Stopwatch) -> bytes:
    """The PUT body that reports a failed try of a step, and how long it ran."""
    return wire.put_error_body(
        str(exc) or type(exc).__name__, watch.started_at, watch.duration_ms()
    )


def unreachable(exc: BaseException) -> SidecarError:
    return SidecarError(None, {"detail": f"sidecar unreachable: {exc!r}"})


# --- the part of a run context both flavours share -------------------------------------


class ContextBase:
    """The run, its step journal and its token: the state both RunContext flavours keep."""

    __slots__ = ("_info", "_journal", "_auth")

    def __init__(self, info: RunInfo | None) -> None:
        self._info = info
        self._journal = Journal(info.steps if info else {})
        self._auth = {"Authorization": f"Bearer {info.token}"} if info else {}

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

    def _headers(self, body: bytes | None) -> dict[str, str]:
        """Headers of a sidecar call: the token, and the JSON type when there is a body."""
        return self._auth if body is None else {**self._auth, "Content-Type": JSON}
