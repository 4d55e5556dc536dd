// The TypeScript chat example (examples/ts_chat) for real: its built server as a process,
// behind a real gateway running the routes of examples/ts_chat.yaml. A first attempt that
// fails in a step, or breaks its stream off part-way, is retried from the memoized steps
// into one whole answer. test.sh builds the example first (npm --prefix examples/ts_chat
// ci, then run compile).

import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { after, before, describe, test } from "node:test";

import { eventually, request, spawnChild, startGateway } from "./harness.mjs";

const EXAMPLE = fileURLToPath(new URL("../../../examples/ts_chat/", import.meta.url));
const SERVER = `${EXAMPLE}dist/server.js`;
const CONFIG = fileURLToPath(new URL("../../../examples/ts_chat.yaml", import.meta.url));
/** At temperature 0 the simulated model answers a prompt the same way every time. */
const PROMPT = { prompt: "Why does the stream survive a crash?", temperature: 0 };

let example;
let gateway;

/**
 * Start the built example on a free port (`--port 0`); `{url, stop}` once it printed
 * `listening on PORT`. `stop()` sends SIGTERM, then SIGKILL after 5 s.
 */
async function startExample(args) {
  if (!existsSync(SERVER)) {
    throw new Error(`${SERVER} is missing: build the example (npm --prefix examples/ts_chat run build)`);
  }
  const child = spawnChild(process.execPath, [SERVER, "--port", "0", ...args], { stdio: ["ignore", "pipe", "pipe"] }, 5_000);
  const { proc, stop } = child;
  let stdout = "";
  let stderr = "";
  proc.stdout.setEncoding("utf8").on("data", (text) => (stdout = (stdout + text).slice(-8192)));
  proc.stderr.setEncoding("utf8").on("data", (text) => (stderr = (stderr + text).slice(-8192)));
  try {
    const port = await eventually(() => {
      if (child.exited()) {
        throw Object.assign(new Error(`the example exited: ${JSON.stringify(child.exited())}`), { fatal: true });
      }
      const found = /listening on (\d+)/.exec(stdout);
      if (!found) throw new Error("the example has not said it is listening");
      return Number(found[1]);
    }, 15_000);
    return { url: `http://127.0.0.1:${port}`, stop, logs: () => stderr };
  } catch (err) {
    await stop();
    throw new Error(`${err.message}\n${stderr}`);
  }
}

/** The routes of examples/ts_chat.yaml, as the harness takes them, pointed at `upstream`. */
function exampleRoutes(upstream) {
  const text = readFileSync(CONFIG, "utf8");
  const [, routes] = text.split(/^routes:\n/m);
  assert.ok(routes, "examples/ts_chat.yaml has no routes section");
  assert.equal(routes.match(/upstream: http:\/\/127\.0\.0\.1:3003/g)?.length, 1, "one route to port 3003");
  return routes
    .replace("upstream: http://127.0.0.1:3003", `upstream: ${upstream}`)
    .replace(/^ {2}/gm, "") // the harness indents the routes itself
    .trimEnd();
}

before(async () => {
  example = await startExample(["--step-ms", "30", "--token-ms", "1"]);
  try {
    gateway = await startGateway(exampleRoutes(example.url));
  } catch (err) {
    await example.stop();
    throw err;
  }
});

after(async () => {
  await gateway?.stop();
  await example?.stop();
});

/** POST a prompt through the gateway; the whole body read, or `whole: false` if it broke off. */
async function chat(path, body, headers = {}) {
  const res = await fetch(`${gateway.ingress}${path}`, {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(30_000),
  });
  let text = "";
  let whole = true;
  try {
    text = await res.text();
  } catch {
    whole = false;
  }
  return { status: res.status, headers: res.headers, text, whole };
}

/** The events of a whole SSE body, each as its fields (`id`, `event`, `data`). */
function sseEvents(body) {
  assert.ok(body.endsWith("\n\n"), JSON.stringify(body.slice(-80)));
  return body
    .slice(0, -2)
    .split("\n\n")
    .map((block) => Object.fromEntries(block.split("\n").map((line) => line.split(/: (.*)/s, 2))));
}

/** The answer's tokens, checked: ids 0..n-1 in order, then `done` counting them. */
function answerOf(body) {
  const events = sseEvents(body);
  const done = events.pop();
  assert.deepEqual(done, { event: "done", data: JSON.stringify({ tokens: events.length }) });
  assert.deepEqual(
    events.map((e) => e.id),
    events.map((_, i) => String(i)),
  );
  return events.map((e) => JSON.parse(e.data).token).join("");
}

async function counts(runId) {
  const { status, body } = await request(`${example.url}/_counts?run_id=${encodeURIComponent(runId)}`, {
    method: "GET",
  });
  assert.equal(status, 200);
  return body.counts;
}

/** The run as the admin API shows it once finished, with both steps recorded. */
function finished(runId) {
  return eventually(async () => {
    const { status, body } = await request(`${gateway.admin}/v1/runs/${runId}`, { method: "GET" });
    assert.equal(status, 200, JSON.stringify(body));
    assert.equal(body.status, "succeeded");
    // Attempts are written behind the run's status: wait until the last one is there too.
    assert.equal(body.attempts.length, body.attempt);
    assert.ok(body.attempts.every((a) => a.ended_at !== null));
    assert.deepEqual(
      body.steps.map((s) => s.step_id),
      ["retrieve", "plan"],
    );
    return body;
  });
}

const BOUND = { timeout: 45_000 };

describe("the TypeScript chat example behind the gateway", BOUND, () => {
  test("its gateway config is valid as it stands", () => {
    const command = process.env.DURABLE_GATEWAY || "durable-gateway";
    const result = spawnSync(command, ["check", "--config", CONFIG], { encoding: "utf8", timeout: 30_000 });
    assert.equal(result.status, 0, `${result.stdout}${result.stderr}${result.error ?? ""}`);
  });

  test("the answer streams as SSE events after two steps recorded once", async () => {
    const { status, headers, text, whole } = await chat("/chat", PROMPT);
    assert.equal(status, 200, text);
    assert.ok(whole);
    assert.match(headers.get("content-type"), /^text\/event-stream/);
    assert.ok(answerOf(text).includes(PROMPT.prompt));
    const runId = headers.get("durable-run-id");
    const detail = await finished(runId);
    assert.equal(detail.attempt, 1);
    assert.deepEqual(await counts(runId), { retrieve: 1, plan: 1 });
  });

  test("a stream broken off part-way is resumed from the memoized steps, whole and seamless", async () => {
    // Sampling (temperature 1): a second call of either step would write another answer,
    // so the stream can only go on where it broke if the retry reuses attempt 1's outputs.
    const prompt = { ...PROMPT, temperature: 1 };
    const { status, headers, text, whole } = await chat("/chat", prompt, { "X-Crash-After": "7" });
    assert.equal(status, 200, text);
    assert.ok(whole, "the client's stream broke off");
    const answer = answerOf(text);
    assert.ok(answer.split(/\s+/).length > 7, answer);

    const runId = headers.get("durable-run-id");
    const detail = await finished(runId);
    assert.deepEqual(
      detail.attempts.map((a) => a.attempt),
      [1, 2],
    );
    assert.deepEqual(
      detail.steps.map((s) => [s.step_id, s.attempt]),
      [
        ["retrieve", 1],
        ["plan", 1],
      ],
    );
    assert.deepEqual(await counts(runId), { retrieve: 1, plan: 1 });
    // The result URL serves exactly what the client got in one piece.
    const stored = await request(new URL(headers.get("durable-result"), gateway.ingress).href, { method: "GET" });
    assert.equal(stored.status, 200);
    assert.equal(stored.body, text);
  });

  test("a failed model call is retried without calling the finished step again", async () => {
    const { status, headers, text, whole } = await chat("/chat/text", PROMPT, { "X-Fail-Step": "plan" });
    assert.equal(status, 200, text);
    assert.ok(whole);
    assert.match(headers.get("content-type"), /^text\/plain/);
    // The same answer as the example gives directly, without the gateway (temperature 0).
    const direct = await fetch(`${example.url}/chat/text`, {
      method: "POST",
      body: JSON.stringify(PROMPT),
      signal: AbortSignal.timeout(30_000),
    });
    assert.equal(text, await direct.text());

    const runId = headers.get("durable-run-id");
    const detail = await finished(runId);
    const [retrieve, plan] = detail.steps;
    assert.deepEqual([retrieve.attempt, retrieve.errors], [1, []]);
    assert.equal(plan.attempt, 2);
    assert.deepEqual(
      plan.errors.map((e) => [e.attempt, e.message]),
      [[1, "the model call of step plan failed on attempt 1"]],
    );
    assert.deepEqual(await counts(runId), { retrieve: 1, plan: 2 });
  });
});
