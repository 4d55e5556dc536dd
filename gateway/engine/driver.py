"""The single owner of run state: every change to a run is a command given here.

The HTTP edge, the scheduler, recovery and operators report to the driver: new runs,
step writes, sleeps and waits, events, cancels and retries. It applies them to the live
run and queues the writes (only `sync` ones are awaited); each run's attempts are driven
by its runner task (`runner.py`), and the live runs are kept in its registry.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any

from gateway import metrics
from gateway.config import RouteConfig
from gateway.engine import suspensions, waits
from gateway.engine.credentials import Credentials
from gateway.engine.live import LiveRun
from gateway.engine.mirror import Mirrors
from gateway.engine.runner import Runner
from gateway.engine.runs import Parked, Pending, PendingKind, Run, StepResult, stored_problem
from gateway.engine.stream import Ended, Stream
from gateway.engine.suspensions import Answer
from gateway.engine.tokens import new_run_id
from gateway.engine.traces import NO_TIMING, StepTiming, trace_of
from gateway.errors import Conflict, NotFound, StaleAttempt, Unavailable
from gateway.store import (
    FINAL_STATUSES,
    AddedEvent,
    CancelRun,
    CreateRun,
    DropPending,
    IdempotencyKey,
    KeyRow,
    Notice,
    PutPending,
    PutStep,
    ResetRun,
    RunRow,
    StoredRequest,
    Write,
)
from gateway.store.records import MAX_ERROR_MESSAGE, RecordStepError, RunStatus

log = logging.getLogger("gateway.engine.driver")

_RETRYABLE = frozenset({RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.PAUSED})


def new_owner(node_id: str | None) -> str:
    """A lease owner for this process start: the node's name (default host name and
    pid) and a random part, so a restarted node never mistakes a dead start's runs for
    its own."""
    name = node_id or f"{socket.gethostname()}:{os.getpid()}"
    return f"{name}:{secrets.token_urlsafe(6)}"


LEASE_TTL = 10.0
"""Seconds a run's lease lasts unless renewed (`cluster.lease`): `leases.py` renews it."""
LOST_KEPT = 10_000
"""Run ids of lost runs remembered, to answer their old attempts 409."""


class Driver:
    def __init__(
        self,
        *,
        runner: Runner,
        credentials: Credentials,
        sync_steps: bool,
        routes: Iterable[RouteConfig] = (),
        owner: str | None = None,
        lease: float = LEASE_TTL,
    ) -> None:
        self.runner = runner
        self.credentials = credentials
        """Seals the sensitive headers of each request it stores; opens them to replay."""
        self.store = runner.store
        self.writer = runner.writer
        self.registry = runner.registry
        self.sync_steps = sync_steps
        self.routes = {route.name: route for route in routes}
        """Durable routes by name: a run from the store is driven under its route's
        current settings."""
        self.accepting = True
        self.timers_changed = self.runner.timers_changed
        """Set when a suspension commits or an event wakes a run: the scheduler, which
        waits on it, re-reads its next wake time."""
        self.owner = owner or new_owner(None)
        """Owner name of this process's leases (one per process start)."""
        self.lease = lease
        """Seconds a lease lasts unless renewed (`cluster.lease`)."""
        self.mirrors = Mirrors(self.store, self.writer)
        """Streams of runs other nodes drive, for this node's late joiners."""
        self.lost: OrderedDict[str, None] = OrderedDict()
        """Runs another node took from this one, newest last (bounded): their old
        attempts' sidecar writes get 409, not 404."""

    def reroute(self, routes: Iterable[RouteConfig]) -> None:
        """The routes of a reloaded config. A live run goes on under the route it started
        with; a run loaded from the store from now on (woken, retried, taken over) is
        driven under its route's new settings, or, if the reload removed its route, under
        the settings it had: a removed route is kept here until the process stops."""
        self.routes = self.routes | {route.name: route for route in routes}

    def get(self, run_id: str) -> LiveRun | None:
        return self.registry.get(run_id)

    def admit(
        self,
        route: RouteConfig,
        request: StoredRequest,
        *,
        limit_key: str = "",
        idempotency: IdempotencyKey | None = None,
    ) -> LiveRun:
        """Create a run, queue its record, and start driving it; never waits on storage.

        An Idempotency-Key is stored with the run in one transaction, and indexed here
        so a concurrent duplicate attaches at once.
        """
        run, write = self._new_run(route, request, limit_key, idempotency)
        live = LiveRun(run, idempotency=idempotency)
        live.created = self.writer.submit(write)
        self._start(live, resumed=False)
        return live

    async def admit_keyed(
        self,
        route: RouteConfig,
        request: StoredRequest,
        idempotency: IdempotencyKey,
        *,
        limit_key: str = "",
    ) -> LiveRun | KeyRow:
        """`admit` on a store nodes share: the run and its key are committed first, so a
        duplicate on another node finds one or the other, never two runs. The key's row
        when another request took it first (nothing is created then)."""
        run, write = self._new_run(route, request, limit_key, idempotency)
        taken = await self.store.create_keyed(write)
        if taken is not None:
            return taken
        live = LiveRun(run, idempotency=idempotency)
        live.created = asyncio.get_running_loop().create_future()
        live.created.set_result(None)
        self._start(live, resumed=False)
        return live

    def _new_run(
        self,
        route: RouteConfig,
        request: StoredRequest,
        limit_key: str,
        idempotency: IdempotencyKey | None,
    ) -> tuple[Run, CreateRun]:
        if not self.accepting:
            raise Unavailable("the gateway is shutting down")
        now = time.time()
        run = Run(
            new_run_id(),
            route,
            request,
            now,
            attempt=1,
            limit_key=limit_key,
            sample_ratio=self.runner.spans.sample_ratio,
        )
        write = CreateRun(
            run.run_id,
            route.name,
            self.credentials.seal(run.run_id, request),
            now,
            attempt=1,
            owner=self.owner,
            lease_until=now + self.lease,
            idempotency=idempotency,
        )
        return run, write

    def adopt(self, run: Run) -> LiveRun:
        """Drive a run taken from the store (recovered, due, retried) from its next attempt.

        A suspended run kept in memory for its waiters is the same LiveRun again, so
        a held client sees it finish; if its task is still settling its suspension, that
        task goes on instead of a second one.
        """
        live = self.registry.get(run.run_id)
        if live is None:
            live = LiveRun(run)
            if run.streamed is not None:  # its clients follow on from what is stored
                cap = run.route.settings.max_response
                live.stream = Stream.from_store(
                    run.run_id, self.store, self.writer, cap, run.streamed
                )
            self._start(live, resumed=True)
            return live
        current = live.run
        current.merge_steps(run.steps)
        current.pending = run.pending
        current.status, current.wake_at = RunStatus.RUNNING, None
        if live.task is not None and not live.task.done():
            live.wake_requested = True
        else:
            self.runner.start(live, resumed=True)
        return live

    async def resume(self, row: RunRow) -> LiveRun | None:
        """Drive a run taken from the store (recovered or due) from its next attempt, with
        its steps, pending sleeps and waits, and suspensions; None when its route is gone."""
        run = await self._load(row)
        return None if run is None else self.adopt(run)

    async def _load(self, row: RunRow) -> Run | None:
        """The one way a run is rebuilt from its row and what else the store keeps of it."""
        route = self.routes.get(row.route)
        if route is None or not route.durable:
            log.warning(
                "run of route %r not resumed: the route is no longer configured",
                row.route,
                extra=trace_of(row.run_id, row.request.headers).log,
            )
            return None
        request, unreadable = self.credentials.open(row.run_id, row.request)
        if unreadable:
            log.warning(
                "stored credentials %s do not open under the configured secrets: replayed"
                " without them (add the secret they were written under to"
                " security.previous_secrets)",
                ", ".join(sorted(set(unreadable))),
                extra=trace_of(row.run_id, row.request.headers).log,
            )
        steps = await self.store.load_steps(row.run_id)
        pending = {
            p.step_id: Pending(
                p.step_id, PendingKind(p.kind), p.wake_at, p.event, p.match, p.created_at
            )
            for p in await self.store.list_pending(row.run_id)
        }
        run = Run(
            row.run_id,
            route,
            request,
            row.created_at,
            attempt=row.attempt,
            status=RunStatus(row.status),
            wake_at=row.wake_at,
            steps=steps,
            pending=pending,
            suspends=await self.store.count_suspends(row.run_id),
            streamed=await self.store.get_body(row.run_id),
            sample_ratio=self.runner.spans.sample_ratio,
        )
        if row.suspended_on is not None:  # suspended, or woken and no attempt begun yet
            run.parked = Parked(row.suspended_at or row.updated_at, row.suspended_on)
        elif run.status is RunStatus.RUNNING:  # its attempt was cut off (a restart, a takeover)
            self.runner.spans.attempt(run, run.attempt, row.updated_at, time.time(), None)
        return run

    def watch(self, run_id: str) -> asyncio.Event:
        """An event set when a run now only in the store becomes live here (is resumed)."""
        return self.registry.watch(run_id)

    def _start(self, live: LiveRun, *, resumed: bool) -> None:
        self.registry.add(live)
        self.runner.start(live, resumed=resumed)

    def attached(self, route: str, key: str) -> LiveRun | None:
        """The live run an idempotency key belongs to, if it is live here."""
        return self.registry.attached(route, key)

    # --- steps (reported by the sidecar) ------------------------------------------

    def current(self, run_id: str, attempt: int) -> LiveRun:
        """The live run an attempt's token may write to: 404 unknown, 409 superseded."""
        live = self.registry.get(run_id)
        if live is None:
            if run_id in self.lost:
                raise StaleAttempt("another node took this run over", run_id=run_id)
            raise NotFound("run is not running", run_id=run_id)
        run = live.run
        if attempt != run.attempt or run.finished:
            raise StaleAttempt(
                f"attempt {attempt} is superseded (current: {run.attempt})", run_id=run_id
            )
        if not self.writer.healthy:
            raise Unavailable(
                f"storage cannot take writes ({self.writer.last_error}); retry the step later",
                run_id=run_id,
            )
        return live

    def record_step(
        self, live: LiveRun, step_id: str, output: bytes, timing: StepTiming = NO_TIMING
    ) -> tuple[StepResult, asyncio.Future[None] | None]:
        """Apply a step write to a live run; with the commit future when it was new."""
        run = live.run
        result = run.record_step(step_id, output)
        metrics.child(metrics.STEPS, result.value).inc()
        if result is not StepResult.CREATED:
            return result, None
        now = time.time()
        self.runner.spans.step(run, step_id, now, timing, size=len(output))
        done = self.writer.submit(
            PutStep(
                run.run_id,
                step_id,
                output,
                run.attempt,
                now,
                timing.started_at,
                timing.duration_ms,
            )
        )
        return result, done

    async def put_step(
        self,
        run_id: str,
        attempt: int,
        step_id: str,
        output: bytes,
        sync: bool,
        timing: StepTiming = NO_TIMING,
    ) -> StepResult:
        """Record a step for an attempt; answers once queued, or once committed when sync."""
        result, done = self.record_step(self.current(run_id, attempt), step_id, output, timing)
        if done is not None and (sync or self.sync_steps):
            await done
        return result

    async def post_event(self, event_id: str, name: str, data: bytes, now: float) -> AddedEvent:
        """An event arrived: store it, complete the waits it matches, wake their runs."""
        added = await waits.deliver(self.store, self.writer, event_id, name, data, now)
        for done in added.completed:  # mirror each in its live run, if any
            self.runner.mirror_wait(done.run_id, done.step_id, done.output)
        if added.completed:
            self.timers_changed.set()
        return added

    # --- sleeps and waits (reported by the sidecar) -----------------------------------

    def sleep(self, run_id: str, attempt: int, step_id: str, wake_at: float, now: float) -> Answer:
        """A durable sleep's call: done once its (first call's) wake time has come."""
        live = self.current(run_id, attempt)
        return self._apply(live, suspensions.sleep(live.run, step_id, wake_at, now))

    async def wait(
        self,
        run_id: str,
        attempt: int,
        step_id: str,
        *,
        event: str,
        match: Mapping[str, Any],
        timeout_in: float | None,
        lookback: float | None,
        now: float,
    ) -> Answer:
        """A wait-for-event's call: done once a matching event came, or its timeout."""
        live = self.current(run_id, attempt)
        found = None
        if lookback is not None and suspensions.looks_back(live.run, step_id, lookback):
            rows = await self.store.events_since(event, now - lookback)
            found = suspensions.first_match(match, suspensions.stored_events(rows))
            live = self.current(run_id, attempt)  # still ours after the read?
        plan = suspensions.wait(
            live.run,
            step_id,
            event=event,
            match=match,
            timeout_in=timeout_in,
            now=now,
            looked_back=found,
        )
        return self._apply(live, plan)

    def _apply(self, live: LiveRun, plan: suspensions.Plan) -> Answer:
        run = live.run
        step_id = plan.step_id
        if (fix := plan.fix) is not None:
            run.pending[step_id] = fix
            self.writer.post(
                PutPending(
                    run.run_id,
                    step_id,
                    fix.kind.value,
                    fix.wake_at,
                    fix.event,
                    fix.match,
                    fix.created_at,
                )
            )
        if plan.complete is not None:
            run.pending.pop(step_id, None)
            self.record_step(live, step_id, plan.complete)
            self.writer.post(DropPending(run.run_id, step_id))
        if plan.suspend is not None:
            run.suspension = plan.suspend
        return plan.answer

    def step_error(
        self,
        run_id: str,
        attempt: int,
        step_id: str,
        message: str,
        timing: StepTiming = NO_TIMING,
    ) -> None:
        """Record a failed try of a step; answers once queued (the store bounds them)."""
        run = self.current(run_id, attempt).run
        message = message[:MAX_ERROR_MESSAGE].replace("\x00", "\ufffd")  # no store's text holds it
        now = time.time()
        self.writer.post(RecordStepError(run_id, step_id, attempt, message, now))
        self.runner.spans.step(run, step_id, now, timing, error=message)
        metrics.child(metrics.STEPS, "error").inc()
        log.info(
            "step %s failed on attempt %d: %s",
            step_id,
            attempt,
            message[:200],
            extra=run.trace.log,
        )

    # --- who waits on a live run --------------------------------------------------------

    def hold(self, live: LiveRun) -> None:
        """A handler waits on a live run (a held client, a result URL): it stays in memory
        until the handler calls `release`."""
        live.waiters += 1

    def release(self, live: LiveRun) -> None:
        """A waiter leaves: a parked run nobody waits on lives in the store alone."""
        live.waiters -= 1
        parked = live.run.status in (RunStatus.SUSPENDED, RunStatus.PAUSED)
        if parked and live.evictable and live.task is not None and live.task.done():
            self.registry.forget(live.run.run_id)

    # --- operators' actions (the admin API) --------------------------------------------

    async def cancel(self, run_id: str) -> None:
        """Cancel an unfinished run: its result becomes a 409 problem, its timers and
        waits go. A live run's task is cancelled first, so no attempt outlives it."""
        live = self.registry.get(run_id)
        row = None
        if live is None:
            row = await self.store.get_run(run_id)
            live = self.registry.get(run_id)  # it may have become live during the read
            if live is None:
                if row is None:
                    raise NotFound("no such run", run_id=run_id)
                status, route = row.status, row.route
        if live is not None:
            status, route = live.run.status.value, live.run.route.name
        if status in FINAL_STATUSES:
            raise Conflict(f"the run is already {status}", run_id=run_id)
        response = stored_problem(
            run_id, 409, "run-cancelled", "Run cancelled", "an operator cancelled this run"
        )
        committed = self.writer.submit(CancelRun(run_id, response, time.time()))
        if live is not None:
            if live.task is not None and not live.task.done():
                live.task.cancel()
            run = live.run
            run.status, run.response, run.wake_at = RunStatus.CANCELLED, response, None
            run.pending.clear()
            if live.stream is not None:
                live.stream.end(Ended.CANCELLED)
            live.final_commit = committed
            committed.add_done_callback(lambda _: self.registry.forget(run_id))
            live.notify()
        await asyncio.shield(committed)
        metrics.child(metrics.RUNS, route, RunStatus.CANCELLED.value).inc()
        if live is not None:
            ended: Run | None = live.run
        else:
            assert row is not None  # read above: an unknown run was refused
            ended = self._stored(row)
        if ended is not None:
            self.runner.spans.run(ended, 409, time.time())
            trace = ended.trace
        else:  # its route is gone: the row still names the trace
            assert row is not None
            trace = trace_of(run_id, row.request.headers)
        log.info("cancelled by an operator", extra=trace.log)

    def _stored(self, row: RunRow) -> Run | None:
        """A run only in the store, as far as its row tells (no steps): to end its trace;
        None when its route is gone."""
        route = self.routes.get(row.route)
        if route is None:
            return None
        ratio = self.runner.spans.sample_ratio
        return Run(row.run_id, route, row.request, row.created_at, row.attempt, sample_ratio=ratio)

    def lose(self, run_id: str) -> None:
        """Another node took this run (this one was silent past its lease): stop its
        attempt, write nothing more of it, and send its held clients to the result URL,
        which the new owner's result answers."""
        live = self.registry.get(run_id)
        if live is None or live.run.finished:
            return
        self.lost[run_id] = None
        while len(self.lost) > LOST_KEPT:
            self.lost.popitem(last=False)
        live.lost = True
        if live.task is not None and not live.task.done():
            live.task.cancel()
        if live.stream is not None:
            live.stream.end(Ended.STOPPED)
        self.registry.forget(run_id)
        live.notify()
        metrics.LOST_RUNS.inc()
        log.warning("another node took this run over; this node stops it", extra=live.run.trace.log)

    def heard(self, notice: Notice, run_id: str) -> None:
        """A notice from the node that committed a change: wake what waits on the run
        here, and stop a run cancelled elsewhere."""
        if notice is Notice.RESYNC:
            self.registry.wake_all()
            self.timers_changed.set()
            return
        if notice is Notice.CANCEL:
            self._cancelled_elsewhere(run_id)
        self.registry.wake(run_id)

    def _cancelled_elsewhere(self, run_id: str) -> None:
        live = self.registry.get(run_id)
        if live is None or live.run.finished:
            return
        if live.task is not None and not live.task.done():
            live.task.cancel()
        run = live.run
        run.status, run.wake_at = RunStatus.CANCELLED, None
        run.response = stored_problem(
            run_id, 409, "run-cancelled", "Run cancelled", "an operator cancelled this run"
        )
        run.pending.clear()
        if live.stream is not None:
            live.stream.end(Ended.CANCELLED)
        self.registry.forget(run_id)
        live.notify()
        log.info("cancelled on another node", extra=run.trace.log)

    async def retry(self, run_id: str) -> None:
        """Run a failed, cancelled or paused run again from its completed steps, as a new
        attempt under this process's lease."""
        row = await self.store.get_run(run_id)
        live = self.registry.get(run_id)
        if row is None:
            raise NotFound("no such run", run_id=run_id)
        status = live.run.status.value if live is not None else row.status
        if status not in _RETRYABLE:
            raise Conflict(
                f"only a failed, cancelled or paused run can be retried; this one is {status}",
                run_id=run_id,
            )
        run = await self._load(row)
        if run is None:
            raise Conflict(f"route {row.route!r} is no longer configured", run_id=run_id)
        if live is not None:
            self.registry.forget(run_id)
        run.streamed = None  # ResetRun drops what an earlier attempt streamed
        now = time.time()
        await self.writer.submit(ResetRun(run_id, run.attempt, now, self.owner, now + self.lease))
        run.status, run.response, run.wake_at = RunStatus.RUNNING, None, None
        self.adopt(run)
        log.info("retried by an operator", extra=run.trace.log)

    # --- writes the store refused for good ------------------------------------------

    def store_refused(self, write: Write, message: str) -> None:
        """`Writer.on_rejected`: a write the store refuses for good fails its run."""
        self.runner.store_refused(write, message)

    # --- shutdown -----------------------------------------------------------------------

    async def close(self, grace: float) -> None:
        """Stop admitting; let in-flight attempts finish up to `grace`; cancel the rest.

        A run cut off here stays unfinished in the store, for the next start to resume.
        """
        self.accepting = False
        await self.runner.drain(grace)
        tasks = [lv.task for lv in self.registry if lv.task is not None and not lv.task.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for live in self.registry:
            if live.stream is not None:
                live.stream.end(Ended.STOPPED)
            live.notify()  # held clients get their result URL instead of waiting
        unfinished = sum(1 for lv in self.registry if not lv.run.finished)
        if unfinished:
            log.warning("%d runs left unfinished for the next start", unfinished)
