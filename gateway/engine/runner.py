"""Runs one run's attempts until it finishes, suspends or pauses, and settles how it ends.

Owned by the driver, which starts each run's task here: the task, never an ingress
handler, drives the run, so a client that disconnects cancels nothing. Retries wait out
their backoff here; a suspension is committed and the run leaves memory until its timer
or event; a final response is queued on the writer, and the run leaves memory once it
is committed (or fails in its place with a problem when the store refuses it for good).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

import orjson

from gateway import metrics, upstream
from gateway.engine import attempts, waits
from gateway.engine.breaker import Breakers
from gateway.engine.budget import Budgets
from gateway.engine.gate import Gate
from gateway.engine.limits import ConcurrencyLimiter, Limits
from gateway.engine.live import LiveRun
from gateway.engine.registry import Registry
from gateway.engine.retries import AttemptOutcome, Decision, Verdict, decide
from gateway.engine.runs import Parked, Run, stored_problem
from gateway.engine.spans import Spans
from gateway.engine.stream import Ended, Stream
from gateway.engine.tokens import Tokens
from gateway.errors import TYPE_BASE, StoreUnavailable, Unavailable
from gateway.store import (
    AppendBody,
    BeginBody,
    CreateRun,
    FinishRun,
    FullStore,
    PutStep,
    RecordAttempt,
    ReplaceResult,
    RunStatus,
    StoredResponse,
    SuspendRun,
    UpdateRun,
    Write,
)
from gateway.store.writer import Writer
from gateway.tasks import spawn
from gateway.upstream.headers import client_response_headers
from step_protocol import wire

log = logging.getLogger("gateway.engine.runner")

INLINE_BODY = 64 * 1024
"""A final body up to this size, with a declared length, is read whole, not streamed."""


class _QueueTimeout(Exception):
    """A new run's first attempt waited past its route's queue_timeout."""


@dataclass(slots=True)
class _Tried:
    """What one attempt came to: its outcome, the final response when it was kept, and
    the retry decision when it was taken already (before reading a response's body)."""

    outcome: AttemptOutcome
    stored: StoredResponse | None = None
    decision: Decision | None = None
    started: float = 0.0
    """When it began and ended (Unix seconds), for its span."""
    ended: float = 0.0


async def _trusted() -> None:
    """The fence of a store no other node shares: this process owns every run it drives."""


class Runner:
    def __init__(
        self,
        *,
        store: FullStore,
        writer: Writer,
        pool: upstream.Pool,
        tokens: Tokens,
        sidecar_url: str,
        limits: Limits,
        registry: Registry | None = None,
        budgets: Budgets | None = None,
        breakers: Breakers | None = None,
        spans: Spans | None = None,
    ) -> None:
        self.store = store
        self.writer = writer
        self.pool = pool
        self.tokens = tokens
        self.sidecar_url = sidecar_url.rstrip("/")
        self.limits = limits
        self.spans = spans or Spans()
        """The runs' trace spans (off unless an exporter is configured)."""
        self.gate = Gate(writer, budgets or Budgets(), breakers or Breakers(), self.spans)
        """Retry budgets and circuit breakers: what may hold an attempt back."""
        self.registry = registry or Registry()
        """The live runs, which the driver shares."""
        self.timers_changed = asyncio.Event()
        """Set when a suspension commits or an event wakes a run: the scheduler, which
        waits on it, re-reads its next wake time."""
        self.fence: Callable[[], Awaitable[None]] = _trusted
        """Awaited before anything an attempt decides is acted on (a final response, a
        retry, a next attempt): returns once this node still owns its runs (see
        `leases.Leases.hold`); a run another node took is cancelled meanwhile."""
        self._rng = random.Random()
        self._in_attempt = 0
        self._drained = asyncio.Event()

    def start(self, live: LiveRun, *, resumed: bool) -> None:
        """Drive a live run in a task of its own; a resumed run starts at its next attempt."""
        live.task = spawn(self._drive(live, resumed=resumed), name=f"run-{live.run.run_id}")

    def mirror_wait(self, run_id: str, step_id: str, output: bytes) -> None:
        """An event completed a wait in the store: mirror it in the live run, if any."""
        live = self.registry.get(run_id)
        if live is None:
            return
        run = live.run
        run.pending.pop(step_id, None)
        run.merge_steps({step_id: output})

    async def drain(self, grace: float) -> None:
        """Wait up to `grace` for the attempts in flight to end."""
        if self._in_attempt:
            try:
                async with asyncio.timeout(grace):
                    await self._drained.wait()
            except TimeoutError:
                log.warning("%d attempts still in flight after %.1fs", self._in_attempt, grace)

    async def _drive(self, live: LiveRun, *, resumed: bool = False) -> None:
        """Attempts until a final response: a resumed run first waits for its wake time."""
        run = live.run
        policy = run.route.settings.retry
        numbered = not resumed  # the first attempt is numbered by CreateRun
        retry = False
        spans = self.spans
        try:
            if resumed and run.wake_at is not None and run.wake_at > time.time():
                start = time.time()
                await asyncio.sleep(run.wake_at - start)
                spans.waited(run, "backoff", start, time.time())
            while True:
                tried = await self._gated_attempt(live, retry=retry, numbered=numbered)
                numbered = retry = False
                await self.fence()
                outcome = tried.outcome
                if run.finished or run.suspension is not None or tried.stored is not None:
                    spans.attempt(run, run.attempt, tried.started, tried.ended, outcome)
                if run.finished:  # in the attempt, or failed meanwhile (see store_refused)
                    return
                if run.suspension is not None:
                    if not await self._suspend(live):
                        return  # the run lives in the store until it is due
                    continue
                if tried.stored is not None:
                    self.finish(live, tried.stored)
                    return
                decision = tried.decision
                if decision is None:
                    decision = decide(outcome, policy, run.attempt - run.suspends, self._rng)
                spans.attempt(run, run.attempt, tried.started, tried.ended, outcome, decision)
                if decision.verdict is Verdict.FINAL:
                    if self._pauses(run, decision):
                        await self._pause(live, decision.reason)
                        return
                    self.finish(live, self._failure_response(run, outcome, decision.reason))
                    return
                metrics.child(metrics.RETRIES, run.route.name).inc()
                run.status = RunStatus.BACKOFF
                run.wake_at = time.time() + decision.delay
                log.info(
                    "attempt %d failed (%s); retry in %.3fs",
                    run.attempt,
                    outcome.detail or f"status {outcome.status}",
                    decision.delay,
                    extra=run.trace.log,
                )
                self.writer.post(
                    UpdateRun(run.run_id, RunStatus.BACKOFF, run.attempt, run.wake_at, time.time())
                )
                live.notify()
                start = time.time()
                await asyncio.sleep(decision.delay)
                spans.waited(run, "backoff", start, time.time(), reason=decision.reason)
                retry = True
        except _QueueTimeout as exc:
            problem = stored_problem(
                run.run_id,
                503,
                "queue-timeout",
                "Service unavailable",
                str(exc),
                attempts=run.attempt,
            )
            self.finish(live, problem)

    @staticmethod
    def _pauses(run: Run, decision: Decision) -> bool:
        return decision.exhausted and run.route.settings.on_exhausted == "pause"

    async def _pause(self, live: LiveRun, reason: str) -> None:
        """`on_exhausted: pause`: keep the run and its steps until an operator retries it."""
        run = live.run
        run.status, run.wake_at = RunStatus.PAUSED, None
        log.warning("paused (%s): waiting for an operator's retry", reason, extra=run.trace.log)
        live.notify()
        await self.writer.submit(
            UpdateRun(run.run_id, RunStatus.PAUSED, run.attempt, None, time.time())
        )
        if live.evictable:
            self.registry.forget(run.run_id)

    async def _suspend(self, live: LiveRun) -> bool:
        """Park a run whose attempt asked to sleep or wait; True when it may go on at once.

        It goes on when the step it blocked on completed meanwhile (an event arrived) or
        its timer is already due; otherwise it is committed as `suspended`, with its
        earliest timer as wake time, and leaves memory unless a client waits on it here.
        """
        run = live.run
        blocked, run.suspension = run.suspension, None
        assert blocked is not None
        run.suspends += 1
        wake = run.next_wake()
        now = time.time()
        if blocked.step_id in run.steps or (wake is not None and wake <= now):
            return True
        run.status, run.wake_at = RunStatus.SUSPENDED, wake
        metrics.child(metrics.SUSPENSIONS, blocked.kind.value).inc()
        log.info(
            "suspended on %s %r until %s",
            blocked.kind.value,
            blocked.step_id,
            "an event" if wake is None else f"{wake - now:.3f}s from now",
            extra=run.trace.log,
        )
        live.wake_requested = False
        live.notify()
        on = f"{blocked.kind.value}:{blocked.step_id}"
        run.parked = Parked(now, on)
        await self.writer.submit(SuspendRun(run.run_id, run.attempt, wake, now, on))
        self.timers_changed.set()
        found = await waits.missed(self.store, run, time.time())
        if found is not None:
            self.mirror_wait(run.run_id, *found)
            return True
        if live.wake_requested:  # due or woken while the suspension was committing
            return True
        if live.evictable:
            self.registry.forget(run.run_id)
        return False

    async def _next_attempt(self, live: LiveRun) -> None:
        """Number the next attempt, durably, before it is sent.

        Waiting for the commit here (never on the first attempt, which CreateRun numbers)
        means a restarted gateway always starts past any attempt a dead process may still
        have running, so no two attempts ever share a number or a sidecar token.
        """
        await self.fence()
        run = live.run
        self.spans.suspension(run, time.time())
        run.attempt += 1
        run.status = RunStatus.RUNNING
        run.wake_at = None
        await self.writer.submit(
            UpdateRun(run.run_id, RunStatus.RUNNING, run.attempt, None, time.time())
        )
        live.notify()

    async def _gated_attempt(self, live: LiveRun, *, retry: bool, numbered: bool) -> _Tried:
        """The next attempt, once the gate lets it through (`numbered`: it is numbered
        already); its upstream's breaker is told how it went."""
        ticket = await self.gate.enter(live, retry=retry)
        try:
            if not numbered:
                await self._next_attempt(live)
            tried = await self._attempt_in_slot(live)
        except BaseException:
            self.gate.abandon(ticket)
            raise
        self.gate.settle(ticket, live, tried.outcome)
        return tried

    async def _attempt_in_slot(self, live: LiveRun) -> _Tried:
        """One attempt inside the route's concurrency slot, counted and recorded."""
        run = live.run
        attempt = run.attempt
        started = time.time()
        live.in_attempt = True
        self._in_attempt += 1
        self._drained.clear()
        limiter = self.limits.concurrency.get(run.route.name)
        try:
            if limiter is not None:
                await self._queue(limiter, run, first=attempt == 1)
            try:
                tried = await self._attempt(live, attempt)
            finally:
                if limiter is not None:
                    limiter.release(run.limit_key)
        finally:
            live.in_attempt = False
            self._in_attempt -= 1
            if not self._in_attempt:
                self._drained.set()
        outcome = tried.outcome
        tried.started, tried.ended = started, time.time()
        kind = "suspended" if run.suspension is not None else outcome.kind.value
        metrics.child(metrics.ATTEMPTS, run.route.name, kind).inc()
        if _never_stored(live):
            return tried  # its attempts must not be stored either
        self.writer.post(
            RecordAttempt(
                run.run_id,
                attempt,
                started,
                tried.ended,
                kind,
                outcome.status,
                outcome.detail,
            )
        )
        return tried

    @staticmethod
    async def _queue(limiter: ConcurrencyLimiter, run: Run, *, first: bool) -> None:
        """A place in the route's concurrency queue for one attempt.

        `queue_timeout` bounds only the first attempt's wait (the client is refused with
        a 503); a run that has started keeps its place in line as long as it takes.
        """
        try:
            await limiter.acquire(run.limit_key, wait_forever=not first)
        except Unavailable as exc:
            raise _QueueTimeout(str(exc)) from None

    async def _attempt(self, live: LiveRun, attempt: int) -> _Tried:
        """One attempt; a final response comes back stored (and streamed to a held client)."""
        run = live.run
        sent = time.perf_counter()
        outcome, resp = await attempts.send(
            self.pool, attempts.build_request(run, attempt, self.tokens, self.sidecar_url)
        )
        if resp is None:
            return _Tried(outcome)
        took = time.perf_counter() - sent
        latency = metrics.child(metrics.UPSTREAM_LATENCY, run.route.name)
        if self.spans.sink is not None and run.trace.sampled:  # links to the attempt's span
            trace = run.trace
            latency.observe(
                took, {"trace_id": trace.trace_id, "span_id": trace.attempt_span(attempt)}
            )
        else:
            latency.observe(took)
        try:
            if run.suspension is not None:
                return _Tried(outcome)  # an attempt that suspended: its response is ignored
            decision = decide(outcome, run.route.settings.retry, attempt - run.suspends, self._rng)
            if decision.verdict is Verdict.RETRY or self._pauses(run, decision):
                return _Tried(outcome, decision=decision)  # a retried body is not kept
            return await self._receive(live, resp, outcome)
        finally:
            resp.release()

    async def _receive(
        self, live: LiveRun, resp: upstream.Response, outcome: AttemptOutcome
    ) -> _Tried:
        """Read a final response into the run's stream, which its clients follow and
        the store keeps in chunks (never waiting for a client, see `Stream`).

        A short body of declared length, with nothing streamed before it, is read whole
        instead, and the held client is answered from the finished run in one write:
        streaming it would cost three awaited writes for what fits in one packet.
        """
        run = live.run
        headers = client_response_headers(resp.headers.items())
        headers.append((wire.RUN_ID, run.run_id))
        length = resp.content_length
        stream = live.stream
        if (
            stream is None
            and length is not None
            and length <= INLINE_BODY
            and run.request.method != "HEAD"
        ):
            try:
                body = await resp.read()
            except (upstream.UpstreamError, TimeoutError) as exc:
                return _Tried(attempts.broken_body(exc))
            stored = StoredResponse(resp.status, headers, body)
            self.finish(live, stored)
            return _Tried(outcome, stored)
        if stream is None:
            cap = run.route.settings.max_response
            stream = Stream(
                run.run_id,
                self.store,
                self.writer,
                cap,
                status=resp.status,
                headers=headers,
                attempt=run.attempt,
            )
            live.stream = stream
        epoch, sent = stream.epoch, stream.size if stream.attempt != run.attempt else None
        stream.open(run.attempt, resp.status, headers)
        live.notify()  # a held client starts following it
        whole = False
        try:
            async for chunk in resp.iter_chunks():
                if not await stream.pour(chunk):
                    return _Tried(outcome)  # the run ended otherwise meanwhile
            whole = True
        except (upstream.UpstreamError, TimeoutError, StoreUnavailable) as exc:
            return _Tried(attempts.broken_body(exc))  # or what streamed could not be read back
        finally:
            stream.close(whole=whole)
            if sent is not None:
                _count_stream_retry(run, stream, epoch, sent)
        stored = stream.response()
        self.finish(live, stored)
        return _Tried(outcome, stored)

    def _failure_response(self, run: Run, outcome: AttemptOutcome, reason: str) -> StoredResponse:
        """The 502 a run ends with when no attempt produced a response."""
        detail = (
            f"upstream {run.route.upstream} gave no response: "
            f"{outcome.detail or outcome.kind.value}; {reason}"
        )
        return stored_problem(
            run.run_id,
            502,
            "upstream-failed",
            "Upstream failed",
            detail,
            attempts=run.attempt,
            outcome=outcome.kind.value,
        )

    def finish(self, live: LiveRun, response: StoredResponse) -> None:
        run = live.run
        if run.finished:
            return
        run.response = response
        run.status = RunStatus.SUCCEEDED if response.status < 400 else RunStatus.FAILED
        stream = live.stream
        if stream is not None and stream.ended is None:
            stream.end(Ended.FAILED)  # the run ended with another response than the stream
        run.wake_at = None
        metrics.child(metrics.RUNS, run.route.name, run.status.value).inc()
        self.spans.run(run, response.status, time.time())
        live.final_commit = asyncio.get_running_loop().create_future()
        self._store_final(live)
        live.notify()

    def _store_final(self, live: LiveRun, *, replacing: bool = False) -> None:
        """Queue the run's final response. `live.final_commit` resolves once the response
        the run holds is committed, and the run leaves memory then: a problem that
        replaced a refused response (`store_refused`, `replacing`: the first may have
        committed without its refused part) is what waiters get, not an error.
        """
        run = live.run
        assert run.response is not None
        kind = ReplaceResult if replacing else FinishRun
        committed = self.writer.submit(
            kind(run.run_id, run.status.value, run.response, time.time())
        )
        committed.add_done_callback(functools.partial(self._final_settled, live, run.response))

    def _final_settled(
        self, live: LiveRun, response: StoredResponse, committed: asyncio.Future[None]
    ) -> None:
        run = live.run
        if run.response is not response:
            return  # replaced meanwhile: the replacement's commit settles the run
        final = live.final_commit
        if final is not None and not final.done():
            if committed.cancelled():
                final.cancel()
            elif (exc := committed.exception()) is not None:
                final.set_exception(exc)  # even the problem was refused: waiters answer 500
                final.exception()
            else:
                final.set_result(None)
        if self.registry.get(run.run_id) is live:
            self.registry.forget(run.run_id)

    def store_refused(self, write: Write, message: str) -> None:
        """`Writer.on_rejected`: a write of a live run can never be stored, so the run
        fails with a 500 problem stored as its result, never to run again. The hook runs
        before the write's future fails, so waiters find the problem in place.

        A refused response is replaced, and so is one whose streamed body lost a chunk;
        a run whose creation was refused fails for the clients holding it and leaves,
        with nothing stored; any other refused write fails the run unless it has its
        final response already. Runs not live here are left
        as the store has them.
        """
        live = self.registry.get(write.run_id)
        if live is None:
            return
        run = live.run
        if isinstance(write, FinishRun) and write.response is not run.response:
            return  # a response replaced already
        problem = stored_problem(
            run.run_id,
            500,
            _NOT_STORED_TYPE,
            "Result not stored",
            f"the store refused {_described(write)}: {message}",
            attempts=run.attempt,
        )
        if isinstance(write, CreateRun):
            run.status, run.response, run.wake_at = RunStatus.FAILED, problem, None
            if live.final_commit is not None and not live.final_commit.done():
                live.final_commit.set_result(None)  # nothing to wait for: nothing is stored
            self._stop(live)
            live.notify()
            self.registry.forget(run.run_id)
        elif isinstance(write, FinishRun) or _streamed_into(write, run):
            if run.response is not None and run.response.body.startswith(_NOT_STORED):
                return  # the problem itself was refused: `_final_settled` gives up
            run.status, run.response = RunStatus.FAILED, problem
            self._store_final(live, replacing=True)
            live.notify()
        elif not run.finished:
            self.finish(live, problem)
            self._stop(live)

    @staticmethod
    def _stop(live: LiveRun) -> None:
        """End a failed run's task, unless it is in an attempt (which may be streaming
        into a held client): `_drive` then returns once the attempt ends."""
        task = live.task
        if task is not None and not task.done() and not live.in_attempt:
            task.cancel()


_NOT_STORED_TYPE: Final = "result-not-stored"
_NOT_STORED: Final = orjson.dumps({"type": TYPE_BASE + _NOT_STORED_TYPE})[:-1]
"""How the body of such a problem begins (`problem_body` puts `type` first)."""


def _streamed_into(write: Write, run: Run) -> bool:
    """A refused chunk of a body the run's final response already refers to."""
    response = run.response
    return (
        isinstance(write, (AppendBody, BeginBody))
        and response is not None
        and response.kept is not None
        and run.finished
    )


def _described(write: Write) -> str:
    """What a refused write held, for the problem's detail."""
    if isinstance(write, FinishRun):
        response = write.response
        size = len(response.body) if response.kept is None else response.kept
        return f"the final response (status {response.status}, {size} bytes)"
    if isinstance(write, CreateRun):
        return f"the request ({len(write.request.body)} bytes of body)"
    if isinstance(write, AppendBody):
        return f"{len(write.data)} bytes of the streamed response at byte {write.offset}"
    if isinstance(write, PutStep):
        return f"the output of step {write.step_id!r} ({len(write.output)} bytes)"
    return f"a {type(write).__name__} record"


def _count_stream_retry(run: Run, stream: Stream, epoch: int, sent: int) -> None:
    """An attempt streamed where an earlier one had begun: say whether clients saw a seam."""
    if stream.epoch == epoch:
        if stream.size >= sent:  # it got past what was sent: a broken one is retried again
            metrics.child(metrics.STREAM_RETRIES, run.route.name, "resumed").inc()
            log.info(
                "attempt %d repeated the %d bytes streamed before; the stream goes on",
                run.attempt,
                sent,
                extra=run.trace.log,
            )
        return
    metrics.child(metrics.STREAM_RETRIES, run.route.name, "diverged").inc()
    log.warning(
        "attempt %d diverged from the %d bytes streamed before (its status %d): "
        "the stream's clients were reset",
        run.attempt,
        sent,
        stream.status,
        extra=run.trace.log,
    )


def _never_stored(live: LiveRun) -> bool:
    """The store refused the run's creation: nothing of it may be stored after."""
    created = live.created
    return (
        created is not None
        and created.done()
        and not created.cancelled()
        and created.exception() is not None
    )
