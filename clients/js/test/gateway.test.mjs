// The client against a real gateway process: resume at the failed step, loop ids, failed
// tries reported, `fetch`ed step state, durable sleep, wait for an event, idempotency,
// Durable-Retry: no, and steps that just run outside the gateway.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { counts, countsOf, nodeListener, seenSteps, webBridge } from "./backends.mjs";
import { eventually, request, serve, startGateway } from "./harness.mjs";

let gateway;
let nodeBackend;
let webBackend;

before(async () => {
  nodeBackend = await serve(nodeListener);
  webBackend = await serve(webBridge);
  const route = (name, path, upstream) =>
    [
      `- name: ${name}`,
      `  match: {path: ${path}}`,
      `  upstream: ${upstream}`,
      "  retry: {initial_backoff: 20ms, max_backoff: 200ms}",
      "  hold: 10s",
    ].join("\n");
  gateway = await startGateway(
    [route("js", "/js/*", nodeBackend.url), route("web", "/web/*", webBackend.url)].join("\n"),
  );
});

after(async () => {
  await gateway?.stop();
  await nodeBackend?.close();
  await webBackend?.close();
});

/** The run as the admin API shows it. */
async function run(runId) {
  const { status, body } = await request(`${gateway.admin}/v1/runs/${runId}`, { method: "GET" });
  assert.equal(status, 200, JSON.stringify(body));
  return body;
}

// Each scenario is bounded, so a hang fails the run instead of eating the CI budget.
const BOUND = { timeout: 45_000 };

describe("through the gateway", BOUND, () => {
  test("a run that fails at step 2 resumes there without running step 1 again", async () => {
    const { status, body, headers } = await request(`${gateway.ingress}/js/steps?n=3&fail_at=2`);
    assert.equal(status, 200, JSON.stringify(body));
    assert.equal(body.attempt, 2);
    assert.equal(headers.get("durable-run-id"), body.run_id);
    assert.deepEqual(countsOf(body.run_id), { "step-1": 1, "step-2": 1, "step-3": 1 });
    // step-1's output is the one attempt 1 recorded, handed back in Durable-Steps.
    assert.deepEqual(body.results, [
      { step: 1, attempt: 1 },
      { step: 2, attempt: 2 },
      { step: 3, attempt: 2 },
    ]);
  });

  test("a thrown error is reported as the step's failed try, with the backend's timing", async () => {
    const { status, body } = await request(`${gateway.ingress}/js/steps?n=3&fail_at=2&mode=raise`);
    assert.equal(status, 200, JSON.stringify(body));
    assert.equal(body.attempt, 2);
    assert.deepEqual(countsOf(body.run_id), { "step-1": 1, "step-2": 2, "step-3": 1 });
    const detail = await gateway.finished(body.run_id);
    assert.deepEqual(
      detail.attempts.map((a) => a.status),
      [500, 200],
    );
    const [step1, step2, step3] = detail.steps;
    assert.deepEqual(
      detail.steps.map((s) => [s.step_id, s.completed, s.attempt]),
      [
        ["step-1", true, 1],
        ["step-2", true, 2],
        ["step-3", true, 2],
      ],
    );
    assert.deepEqual(step1.errors, []);
    assert.deepEqual(step3.errors, []);
    assert.equal(step2.errors.length, 1);
    assert.equal(step2.errors[0].attempt, 1);
    assert.equal(step2.errors[0].message, "step-2 failed on attempt 1");
    // The client sent started_at and duration_ms with every output.
    for (const step of detail.steps) assert.equal(step.timing, "backend", JSON.stringify(step));
  });

  test("a step id used again in a loop gets item, item:1, item:2, replayed in order", async () => {
    const { status, body } = await request(`${gateway.ingress}/js/loop?n=3`);
    assert.equal(status, 200, JSON.stringify(body));
    assert.equal(body.attempt, 2);
    assert.deepEqual(body.results, [0, 1, 2].map((index) => ({ index, attempt: 1 })));
    assert.deepEqual(countsOf(body.run_id), { "item#0": 1, "item#1": 1, "item#2": 1 });
    const detail = await gateway.finished(body.run_id);
    assert.deepEqual(
      detail.steps.map((s) => s.step_id),
      ["item", "item:1", "item:2"],
    );
  });

  test("step state too large for the header is fetched from the sidecar", async () => {
    const { status, body } = await request(`${gateway.ingress}/js/big`);
    assert.equal(status, 200, JSON.stringify(body));
    assert.equal(body.attempt, 2);
    assert.equal(body.length, 6000);
    assert.deepEqual(seenSteps.get(body.run_id), [null, "fetch"]);
    assert.deepEqual(countsOf(body.run_id), { text: 1 });
  });

  test("a durable sleep suspends the run and resumes it after the nap", async () => {
    const { status, body } = await request(`${gateway.ingress}/js/sleep?ms=1000`);
    assert.equal(status, 200, JSON.stringify(body));
    assert.equal(body.attempt, 2);
    assert.deepEqual(countsOf(body.run_id), { "step-1": 1, "step-2": 1 });
    const detail = await gateway.finished(body.run_id);
    const nap = detail.steps.find((s) => s.step_id === "nap");
    assert.ok(nap?.completed, JSON.stringify(detail.steps));
  });

  test("a wait for an event resumes when the event is posted through the gateway", async () => {
    const accepted = await request(`${gateway.ingress}/web/wait?order_id=7`, {
      headers: { Prefer: "respond-async" },
    });
    assert.equal(accepted.status, 202, JSON.stringify(accepted.body));
    const runId = accepted.headers.get("durable-run-id");
    const location = new URL(accepted.headers.get("location"), gateway.ingress).href;
    await eventually(async () => assert.equal((await run(runId)).status, "suspended"));

    // Another order's event does not wake it; this order's does.
    const other = await request(`${gateway.admin}/v1/events`, {
      body: JSON.stringify({ name: "order.paid", data: { order_id: "8" } }),
      headers: { "content-type": "application/json" },
    });
    assert.equal(other.body.matched, 0);
    const posted = await request(`${gateway.admin}/v1/events`, {
      body: JSON.stringify({ name: "order.paid", data: { order_id: "7", total: 42 } }),
      headers: { "content-type": "application/json" },
    });
    assert.equal(posted.status, 202, JSON.stringify(posted.body));
    assert.equal(posted.body.matched, 1);

    const result = await eventually(async () => {
      const answer = await request(location, { method: "GET", headers: { Prefer: "wait=5" } });
      assert.equal(answer.status, 200, JSON.stringify(answer.body));
      return answer.body;
    }, 30_000);
    assert.equal(result.event.name, "order.paid");
    assert.deepEqual(result.event.data, { order_id: "7", total: 42 });
    assert.deepEqual(result.results[1], { step: 2, paid: { order_id: "7", total: 42 } });
    assert.deepEqual(countsOf(runId), { "step-1": 1, "step-2": 1 });
  });

  test("an Idempotency-Key answers the same result without running the steps again", async () => {
    const headers = { "Idempotency-Key": `order-${Date.now()}` };
    const first = await request(`${gateway.ingress}/js/steps?n=2`, { headers, body: "{}" });
    assert.equal(first.status, 200, JSON.stringify(first.body));
    assert.equal(first.headers.get("idempotent-replayed"), null);
    const again = await request(`${gateway.ingress}/js/steps?n=2`, { headers, body: "{}" });
    assert.equal(again.status, 200);
    assert.equal(again.headers.get("idempotent-replayed"), "true");
    assert.deepEqual(again.body, first.body);
    assert.deepEqual(countsOf(first.body.run_id), { "step-1": 1, "step-2": 1 });
  });

  test("Durable-Retry: no makes a 500 final on its first attempt", async () => {
    const { status, body, headers } = await request(`${gateway.ingress}/js/steps?n=2&fail_at=2&mode=noretry`);
    assert.equal(status, 500);
    assert.deepEqual(body, { error: "final", attempt: 1 });
    const detail = await gateway.finished(headers.get("durable-run-id"));
    assert.equal(detail.attempts.length, 1);
    assert.equal(detail.status, "failed");
  });
});

describe("outside the gateway", BOUND, () => {
  test("steps just run, once each, and nothing is recorded", async () => {
    counts.delete("local");
    const { status, body } = await request(`${nodeBackend.url}/js/steps?n=2`);
    assert.equal(status, 200, JSON.stringify(body));
    assert.deepEqual(body, {
      run_id: null,
      attempt: 1,
      results: [
        { step: 1, attempt: 1 },
        { step: 2, attempt: 1 },
      ],
    });
    assert.deepEqual(countsOf("local"), { "step-1": 1, "step-2": 1 });
  });

  test("a sleep sleeps in process", async () => {
    const { status, body } = await request(`${nodeBackend.url}/js/sleep?ms=20`);
    assert.equal(status, 200, JSON.stringify(body));
    assert.equal(body.results.length, 2);
  });

  test("a wait for an event is refused: nothing could deliver one", async () => {
    const { status, body } = await request(`${webBackend.url}/web/wait?order_id=1`);
    assert.equal(status, 501);
    assert.match(body.error, /without the gateway/);
  });
});
