"""A run's trace ids: derived from what the store keeps, alike on every node and restart,
and the `traceparent` each attempt's backend gets in place of the client's."""

from __future__ import annotations

import re

import pytest

from gateway.config import RouteConfig, RouteMatch
from gateway.engine.attempts import build_request
from gateway.engine.runs import Run
from gateway.engine.tokens import Tokens, new_run_id
from gateway.engine.traces import client_traceparent, trace_of
from gateway.store import StoredRequest

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
HEX = re.compile(r"[0-9a-f]+")

# As `proxy.stored_headers` leaves them: the client's traceparent, when sent, is last.
PLAIN = [("Content-Type", "application/json"), ("X-Forwarded-Proto", "http")]


def _with(traceparent: str) -> list[tuple[str, str]]:
    return [*PLAIN, ("traceparent", traceparent)]


def _ids(*values: str) -> None:
    for value in values:
        assert HEX.fullmatch(value) and int(value, 16), value


def test_a_run_without_a_client_trace_gets_one_of_its_own_named_alike_every_time() -> None:
    run_id = new_run_id()
    trace = trace_of(run_id, PLAIN)
    again = trace_of(run_id, list(PLAIN))  # another node, or after a restart

    assert len(trace.trace_id) == 32 and trace.client_span is None and trace.sampled
    _ids(trace.trace_id, trace.run_span, trace.attempt_span(1))
    assert again.trace_id == trace.trace_id
    assert again.run_span == trace.run_span
    assert [again.attempt_span(n) for n in (1, 2, 3)] == [trace.attempt_span(n) for n in (1, 2, 3)]
    assert trace_of(new_run_id(), PLAIN).trace_id != trace.trace_id


def test_each_attempt_has_its_own_span_and_the_backend_gets_it_as_parent() -> None:
    trace = trace_of(new_run_id(), PLAIN)
    spans = [trace.attempt_span(n) for n in range(1, 6)]
    assert len({*spans, trace.run_span}) == 6
    assert trace.attempt_span(2) == spans[1]  # asked again, after later attempts
    assert trace.traceparent(3) == f"00-{trace.trace_id}-{spans[2]}-01"


def test_a_client_traceparent_gives_the_trace_the_parent_and_the_sampling_decision() -> None:
    sampled = trace_of(new_run_id(), _with(f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"), 0.0)
    assert (sampled.trace_id, sampled.client_span, sampled.sampled) == (
        CLIENT_TRACE,
        CLIENT_SPAN,
        True,
    )
    unsampled = trace_of(new_run_id(), _with(f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-00"), 1.0)
    assert not unsampled.sampled
    assert unsampled.traceparent(1).endswith("-00")
    # Runs under one client trace still get attempt spans of their own.
    assert unsampled.attempt_span(1) != sampled.attempt_span(1)


@pytest.mark.parametrize(
    "bad",
    [
        f"00-{'0' * 32}-{CLIENT_SPAN}-01",  # an all-zero trace id is invalid
        f"00-{CLIENT_TRACE}-{'0' * 16}-01",
        f"01-{CLIENT_TRACE}-{CLIENT_SPAN}-01-extra",
        f"00-{CLIENT_TRACE[:-1]}-{CLIENT_SPAN}-01",
        "garbage",
        "",
    ],
)
def test_an_invalid_client_traceparent_is_ignored(bad: str) -> None:
    run_id = new_run_id()
    trace = trace_of(run_id, _with(bad))
    assert trace.client_span is None
    assert trace.trace_id == trace_of(run_id, PLAIN).trace_id


def test_new_traces_are_sampled_by_ratio_alike_on_every_node() -> None:
    run_ids = [f"run-{n}" for n in range(4000)]
    half = [trace_of(run_id, PLAIN, 0.5).sampled for run_id in run_ids]
    assert 1800 < sum(half) < 2200
    assert half == [trace_of(run_id, PLAIN, 0.5).sampled for run_id in run_ids]
    assert not any(trace_of(run_id, PLAIN, 0.0).sampled for run_id in run_ids[:200])
    assert all(trace_of(run_id, PLAIN, 1.0).sampled for run_id in run_ids[:200])
    assert all(trace.traceparent(1).endswith("-00") for trace in [trace_of("run-1", PLAIN, 0.0)])


def test_only_the_last_stored_header_is_the_clients_traceparent() -> None:
    assert client_traceparent(_with("00-x")) == "00-x"
    assert client_traceparent(PLAIN) is None
    assert client_traceparent([]) is None


def _run(headers: list[tuple[str, str]]) -> Run:
    route = RouteConfig(name="r", match=RouteMatch(path="/*"), upstream="http://127.0.0.1:1")
    request = StoredRequest("POST", "/x", headers, b"{}")
    return Run(new_run_id(), route, request, 0.0, attempt=1)


@pytest.mark.parametrize("sent", [None, f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"])
def test_an_attempt_sends_one_traceparent_its_own(sent: str | None) -> None:
    run = _run(PLAIN if sent is None else _with(sent))
    tokens = Tokens(b"s" * 32)
    for attempt in (1, 2):
        headers = build_request(run, attempt, tokens, "http://127.0.0.1:2").headers
        traceparents = [value for name, value in headers if name.lower() == "traceparent"]
        assert traceparents == [run.trace.traceparent(attempt)]
        assert headers[: len(PLAIN)] == PLAIN
    # The stored request is left as it was.
    assert client_traceparent(run.request.headers) == sent
