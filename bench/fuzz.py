"""Fuzz the running gateway from its own OpenAPI documents (schemathesis, property-based).

Starts the bench backend and a gateway on loopback, parks a run's attempt so its sidecar
token stays current, then sends generated requests, valid and invalid, to every operation
the sidecar and admin listeners describe at `GET /openapi.json`, and checks every answer:
no 5xx, the status, headers and body the document gives, every error problem+json; at the
end the gateway must still be healthy, with no traceback in its log. CI runs a few
examples per operation (`tests/integration/test_fuzz.py`); this runs as many as asked:

    python -m bench.fuzz [--examples 200] [--seed N] [--store sqlite|postgres] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import APIOperation, Case, GenerationMode, Response
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    missing_required_header,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from bench.processes import Gateway, Lab, poll

ADMIN_TOKEN = "fuzz-admin-token"
PROBLEM = "application/problem+json"
PROBLEM_TYPES = "https://durable-gateway.dev/problems/"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    missing_required_header,
    unsupported_method,
    ignored_auth,
]
"""schemathesis's checks of each answer; `problem_failure` adds the problem+json one.
Not `positive_data_acceptance`: valid calls are refused for what a schema cannot say (a
step id already completed as another kind, an opaque cursor that is not one)."""

FRAMING = frozenset(
    ("content-length", "transfer-encoding", "te", "trailer", "expect", "connection", "upgrade")
    + ("keep-alive", "host")
)
"""Headers of the HTTP layer, not of any operation: the client sets them, and a generated
one (a `Transfer-Encoding: PMpW` beside the client's `Content-Length: 0`) makes a message
the server's HTTP parser refuses, 400 or 417, before any operation sees it. Dropped from
generated cases; `tests/integration/test_edge.py` checks that ambiguous framing is refused."""

ROUTES = """\
    - name: park
      match: {{path: /park}}
      upstream: {upstream}
      retry: {{max_attempts: 1}}
      attempt_timeout: 1h
    - name: zero
      match: {{path: /0}}
      upstream: {upstream}
    """


@dataclass(frozen=True, slots=True)
class Target:
    """A running gateway, and a live run to aim the sidecar calls at."""

    sidecar: str
    admin: str
    run_id: str
    """A run whose current attempt is parked at the backend: its token can write."""
    token: str
    """The current attempt's `Durable-Token`."""
    stale_token: str
    """The run's previous attempt's token: reads only, writes are `409 stale-attempt`."""
    finished_run: str
    """A run that succeeded."""


@dataclass(slots=True)
class Found:
    """One kind of failure on one operation: how often, and the first example of it."""

    api: str
    operation: str
    kind: str
    example: str
    count: int = 1


@dataclass(slots=True)
class Report:
    operations: int = 0
    examples: int = 0
    unsendable: int = 0
    """Generated requests the HTTP client could not send (a header it cannot encode)."""
    per_operation: dict[str, int] = field(default_factory=dict)
    failures: dict[tuple[str, str, str], Found] = field(default_factory=dict)
    after: list[str] = field(default_factory=list)
    """What was wrong with the gateway after the fuzzing: not healthy, a traceback."""

    def fail(self, api: str, operation: str, kind: str, example: str) -> None:
        found = self.failures.get((api, operation, kind))
        if found is None:
            self.failures[api, operation, kind] = Found(api, operation, kind, example)
        else:
            found.count += 1

    @property
    def ok(self) -> bool:
        return not self.failures and not self.after

    def text(self) -> str:
        failed = sum(f.count for f in self.failures.values())
        lines = [
            f"operations {self.operations}, examples {self.examples}"
            f" (unsendable {self.unsendable}), failures {failed} of {len(self.failures)} kinds",
            *(f"  {name}: {count}" for name, count in self.per_operation.items()),
        ]
        for found in self.failures.values():
            lines += [f"FAIL {found.api} {found.operation}: {found.kind} (x{found.count})"]
            lines += ["    " + line for line in found.example.splitlines()[:40]]
        lines += [f"AFTER {problem}" for problem in self.after]
        return "\n".join(lines)


def problem_failure(response: Response) -> str | None:
    """What is wrong with an error answer that is not RFC 9457 problem+json; None if right."""
    if response.status_code < 400:
        return None
    kind = response.headers.get("content-type", [""])[0].split(";")[0].strip()
    if kind != PROBLEM:
        return f"a {response.status_code} answered as {kind or 'no content type'!r}"
    if response.request.method == "HEAD":
        return None
    try:
        body = response.json()
    except ValueError:
        return f"a {response.status_code} problem whose body is not JSON"
    if not isinstance(body, dict):
        return "a problem body that is not an object"
    if body.get("status") != response.status_code:
        return f"a problem's status {body.get('status')!r} is not the response's"
    if not str(body.get("type", "")).startswith(PROBLEM_TYPES):
        return f"a problem type {body.get('type')!r} outside {PROBLEM_TYPES}"
    if not isinstance(body.get("title"), str) or not isinstance(body.get("detail"), str):
        return "a problem without a title and a detail"
    return None


def operations(schema: Any) -> Iterator[Operation]:
    for result in schema.get_all_operations():
        yield result.ok()


Operation = APIOperation[Any, Any, Any, Any]
AnyCase = Case[Any]
Aim = tuple[dict[str, str], dict[str, str]]
"""Fixed path parameters and headers that make a call reach something: a run, a token."""

ODD_IDS = (
    "a\x00b",  # PostgreSQL's text refuses U+0000
    "%00",
    "%",
    "a/b",
    "a%2Fb",
    " ",
    "\t",
    "\u2028",
    "\ufeff",
    "\U0001f600",
    "é" * 256,
    "x" * 257,
)
"""Step and run ids that have tripped servers before; a generator rarely draws them."""


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def sidecar_aims(op: Operation, target: Target) -> tuple[list[Aim], list[Aim]]:
    """The live run with its current token (twice as often), its stale one, a wrong one;
    and the live run's steps of odd ids."""
    if "{run_id}" not in op.path:
        return [], []
    live = {"run_id": target.run_id}
    wrong = target.token[:-2] + ("AA" if not target.token.endswith("AA") else "BB")
    tokens = (target.token, target.token, target.stale_token, wrong)
    odd = [({**live, "step_id": i}, bearer(target.token)) for i in ODD_IDS]
    return [(live, bearer(token)) for token in tokens], odd if "{step_id}" in op.path else []


def admin_aims(op: Operation, target: Target) -> tuple[list[Aim], list[Aim]]:
    """The admin token (twice as often), on the live and the finished run where the path
    names a run; and runs of odd ids."""
    auth = bearer(ADMIN_TOKEN)
    aims: list[Aim] = [({}, auth), ({}, auth)]
    if "{run_id}" not in op.path:
        return aims, []
    aims += [({"run_id": run_id}, auth) for run_id in (target.run_id, target.finished_run)]
    return aims, [({"run_id": i}, auth) for i in ODD_IDS]


@dataclass(slots=True)
class Fuzzer:
    """Sends one operation's generated calls and records what the checks find."""

    report: Report
    session: requests.Session
    examples: int
    rng: random.Random

    def operation(
        self, api: str, base_url: str, schema: Any, op: Operation, aims: list[Aim], odd: list[Aim]
    ) -> None:
        """The document's boundary cases (schemathesis's coverage phase), each as it comes
        and aimed; then `examples` random ones, valid and not, aimed or not, some with an
        odd id."""
        self.report.operations += 1
        before = self.report.examples
        config = schema.config.generation_for(operation=op)
        modes = list(GenerationMode)
        for case in schema.iter_coverage_cases(
            op, generation_modes=modes, generation_config=config
        ):
            self.send(api, base_url, op, case)
            if aims:
                self.send(api, base_url, op, aimed(case, aims[0]))
        strategies = [op.as_strategy(mode) for mode in modes]
        for path, headers in aims:
            strategies.append(op.as_strategy(path_parameters=path, headers=headers))
        if aims and aims[0][0]:
            strategies.append(op.as_strategy(GenerationMode.NEGATIVE, path_parameters=aims[0][0]))
        if odd:
            strategies.append(
                st.sampled_from(odd).flatmap(
                    lambda aim: op.as_strategy(path_parameters=aim[0], headers=aim[1])
                )
            )

        @seed(self.rng.getrandbits(64))
        @settings(
            max_examples=self.examples,
            deadline=None,
            database=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(st.one_of(strategies))
        def generated(case: AnyCase) -> None:
            self.send(api, base_url, op, case)

        try:
            generated()
        except Unsatisfiable:
            pass  # the document leaves nothing more to generate for this operation
        self.report.per_operation[f"{api} {op.label}"] = self.report.examples - before

    def send(self, api: str, base_url: str, op: Operation, case: AnyCase) -> None:
        label = op.label
        for name in [name for name in case.headers or {} if name.lower() in FRAMING]:
            del case.headers[name]
        try:
            response = case.call(base_url=base_url, session=self.session, timeout=30)
        except (requests.ConnectionError, requests.Timeout) as exc:
            self.report.examples += 1
            self.report.fail(api, label, "no answer", f"{type(exc).__name__}: {exc}\n{_curl(case)}")
            return
        except (requests.RequestException, ValueError, UnicodeError):
            self.report.unsendable += 1
            return
        self.report.examples += 1
        try:
            case.validate_response(response, checks=CHECKS)
        except FailureGroup as group:
            for failure in group.exceptions:
                _record(self.report, api, label, failure, case, response)
        except Failure as failure:
            _record(self.report, api, label, failure, case, response)
        problem = problem_failure(response)
        if problem is not None:
            self.report.fail(api, label, "not problem+json", f"{problem}\n{_curl(case)}")


def aimed(case: AnyCase, aim: Aim) -> AnyCase:
    """The case on the aim's run, with its token where the case sends one."""
    path, headers = aim
    case.path_parameters = {**(case.path_parameters or {}), **path}
    if "Authorization" in case.headers:
        case.headers.update(headers)
    return case


def _record(
    report: Report, api: str, label: str, failure: Failure, case: AnyCase, response: Response
) -> None:
    body = response.text[:500] if response.request.method != "HEAD" else ""
    example = f"{failure.message}\n{_curl(case)}\n-> {response.status_code} {body}"
    report.fail(api, label, failure.title, example)


def _curl(case: AnyCase) -> str:
    text = case.as_curl_command()
    return text if len(text) < 2000 else text[:2000] + "…"


def fuzz(target: Target, examples: int, seed_value: int) -> Report:
    """Every operation of both documents: its boundary cases, then `examples` random calls
    (fewer when the document leaves fewer to generate). Blocking: run it off the loop."""
    report = Report()
    with requests.Session() as session:
        fuzzer = Fuzzer(report, session, examples, random.Random(seed_value))
        for api, base, aims in (
            ("sidecar", target.sidecar, sidecar_aims),
            ("admin", target.admin, admin_aims),
        ):
            # From the served bytes: `from_url` would leave out the document's own path.
            served = session.get(base + "/openapi.json", timeout=30)
            served.raise_for_status()
            schema = schemathesis.openapi.from_dict(served.json())
            for op in operations(schema):
                fuzzer.operation(api, base, schema, op, *aims(op, target))
            if api == "sidecar":
                report.after += still_running(session, target)
    return report


def still_running(session: requests.Session, target: Target) -> list[str]:
    """The live run after the sidecar calls: nothing they sent may have failed it (a write
    acknowledged, then refused by the store, fails its run)."""
    url = f"{target.admin}/v1/runs/{target.run_id}"
    run = session.get(url, headers=bearer(ADMIN_TOKEN), timeout=30).json()
    if run["status"] != "running":
        return [f"the live run is {run['status']} after the sidecar calls: {run['attempts']}"]
    return []


async def prepare(lab: Lab, store_url: str | None = None) -> tuple[Gateway, Target]:
    """A gateway with an admin token before the bench backend, on SQLite unless
    `store_url` names a PostgreSQL database; one finished run, and one whose second
    attempt is parked (its first one cancelled, then retried: a stale token)."""
    backend = await lab.backend()
    gateway = await lab.gateway(
        "fuzz",
        ROUTES.format(upstream=backend.url),
        store_url=store_url,
        extra_yaml=f"security:\n  admin_token: {ADMIN_TOKEN}\n",
    )
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with aiohttp.ClientSession() as http:
        async with http.post(gateway.url + "/0", data=b"{}") as resp:
            assert resp.status == 200, await resp.text()
            finished = resp.headers["Durable-Run-Id"]
        async with http.post(gateway.url + "/park", headers={"Prefer": "respond-async"}) as resp:
            assert resp.status == 202, await resp.text()
            run_id = resp.headers["Durable-Run-Id"]

        async def parked_attempt(attempt: int) -> dict[str, Any]:
            async def read() -> list[dict[str, Any]]:
                async with http.get(backend.url + "/_parked") as resp:
                    parked: list[dict[str, Any]] = (await resp.json())["parked"]
                    return [p for p in parked if p["run_id"] == run_id]

            found = await poll(
                read,
                lambda ps: any(p["attempt"] == attempt for p in ps),
                within=30,
                interval=0.05,
                failure=lambda ps: f"attempt {attempt} of {run_id} never parked: {ps}",
            )
            return next(p for p in found if p["attempt"] == attempt)

        first = await parked_attempt(1)
        for action in ("cancel", "retry"):
            url = f"{gateway.admin}/v1/runs/{run_id}/{action}"
            async with http.post(url, headers=auth) as resp:
                assert resp.status == 200, await resp.text()
        second = await parked_attempt(2)
    target = Target(
        gateway.sidecar, gateway.admin, run_id, second["token"], first["token"], finished
    )
    return gateway, target


def after(gateway: Gateway) -> list[str]:
    """What is wrong with the gateway after the fuzzing: down, unhealthy, a traceback."""
    problems = []
    if gateway.popen.poll() is not None:
        return [f"the gateway exited with {gateway.popen.returncode}"]
    for path in ("/healthz", "/readyz"):
        status = requests.get(gateway.admin + path, timeout=10).status_code
        if status != 200:
            problems.append(f"{path} answered {status}")
    log = gateway.output()
    if "Traceback" in log:
        problems.append(
            "a traceback in the gateway's log:\n" + log[log.index("Traceback") :][:3000]
        )
    return problems


async def measure(
    examples: int, seed_value: int, workdir: Path, store_url: str | None = None
) -> Report:
    """Start everything in `workdir`, fuzz, check the gateway afterwards, stop everything."""
    lab = Lab(workdir)
    try:
        gateway, target = await prepare(lab, store_url)
        report = await asyncio.to_thread(fuzz, target, examples, seed_value)
        report.after = await asyncio.to_thread(after, gateway)
        return report
    finally:
        lab.close()


async def run(examples: int, seed_value: int, workdir: Path, store: str) -> Report:
    """`measure` on the store named: PostgreSQL is a throwaway server of its own."""
    if store == "sqlite":
        return await measure(examples, seed_value, workdir)
    from tests.postgres import pg_server  # the tests' server, needed by this store only

    with pg_server(workdir / "pg") as server:
        return await measure(examples, seed_value, workdir, await server.create_database())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=200, help="per operation")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite")
    args = parser.parse_args(argv)
    seed_value = args.seed if args.seed is not None else random.SystemRandom().getrandbits(32)
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        workdir = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        workdir.mkdir(parents=True, exist_ok=True)
        report = asyncio.run(run(args.examples, seed_value, workdir, args.store))
    print(f"seed {seed_value}, store {args.store}, {time.monotonic() - started:.1f} s")
    print(report.text())
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
