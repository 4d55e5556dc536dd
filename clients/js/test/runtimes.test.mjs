// The client on Bun and Deno: test/runtime_backend.mjs, served by each runtime's own server
// (Bun.serve, Deno.serve) through the Web adapter, behind a real gateway process. For each,
// a run that fails at step 2 resumes there with step 1 run once, and a durable sleep is
// answered 202 and resumed. The runtimes are this package's dev dependencies (npm ci).

import assert from "node:assert/strict";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { after, before, describe, test } from "node:test";

import { eventually, request, routesTo, spawnChild, startGateway } from "./harness.mjs";

const BIN = fileURLToPath(new URL("../node_modules/.bin/", import.meta.url));
const BACKEND = fileURLToPath(new URL("./runtime_backend.mjs", import.meta.url));

/** How each runtime runs the backend: Deno with only the network, and only to loopback. */
const RUNTIMES = {
  bun: { args: [BACKEND], env: () => ({}) },
  deno: {
    args: ["run", "--no-prompt", "--allow-net=127.0.0.1", BACKEND],
    // Its module cache in a directory of its own, removed at the end; no update check.
    env: (dir) => ({ DENO_DIR: dir, DENO_NO_UPDATE_CHECK: "1" }),
  },
};
const BOUND = { timeout: 45_000 };
/** The last this many characters of a runtime's output are kept for failure messages. */
const OUTPUT_CHARS = 16_384;

/**
 * Run the backend under `name` and wait (with a deadline) for the port it prints;
 * `{url, runtime, output, stop}`. `stop()` sends SIGTERM, then SIGKILL after 5 s.
 */
async function startRuntime(name) {
  const command = join(BIN, name);
  if (!existsSync(command)) throw new Error(`${command} is missing: run npm ci in clients/js`);
  const { args, env } = RUNTIMES[name];
  const cache = mkdtempSync(join(tmpdir(), `dg-js-${name}-`));
  const child = spawnChild(
    command,
    args,
    {
      stdio: ["ignore", "pipe", "pipe"],
      env: { ...process.env, NO_COLOR: "1", ...env(cache) }, // plain text in failure messages
    },
    5_000,
  );
  const { proc } = child;
  let output = "";
  const keep = (chunk) => (output = (output + chunk).slice(-OUTPUT_CHARS));
  proc.stdout.setEncoding("utf8");
  proc.stderr.setEncoding("utf8").on("data", keep);

  const backend = {
    output: () => output,
    async stop() {
      await child.stop();
      rmSync(cache, { recursive: true, force: true });
    },
  };
  let stdout = "";
  let firstLine = null;
  proc.stdout.on("data", (chunk) => {
    keep(chunk);
    if (firstLine !== null) return;
    stdout = (stdout + chunk).slice(0, OUTPUT_CHARS);
    const newline = stdout.indexOf("\n");
    if (newline >= 0) firstLine = stdout.slice(0, newline);
  });
  try {
    const { port, runtime } = await eventually(() => {
      if (child.exited()) throw Object.assign(new Error(`exited: ${JSON.stringify(child.exited())}`), { fatal: true });
      if (firstLine === null) throw new Error("no port printed");
      try {
        return JSON.parse(firstLine);
      } catch {
        throw Object.assign(new Error(`printed no JSON line: ${firstLine}`), { fatal: true });
      }
    }, 20_000);
    if (!Number.isInteger(port) || port <= 0) throw new Error(`printed no port: ${firstLine}`);
    return Object.assign(backend, { url: `http://127.0.0.1:${port}`, runtime });
  } catch (err) {
    await backend.stop();
    throw new Error(`${name} backend did not come up: ${err.message}\n${output}`);
  }
}

let gateway;
const backends = {};

before(async () => {
  const names = Object.keys(RUNTIMES);
  const started = await Promise.allSettled(names.map((name) => startRuntime(name)));
  started.forEach((result, i) => {
    if (result.status === "fulfilled") backends[names[i]] = result.value;
  });
  const failed = started.find((result) => result.status === "rejected");
  if (failed) throw failed.reason;
  gateway = await startGateway(routesTo(Object.fromEntries(names.map((name) => [name, backends[name].url]))));
});

after(async () => {
  try {
    await gateway?.stop();
  } finally {
    await Promise.all(Object.values(backends).map((backend) => backend.stop()));
  }
});

/** What the backend counted for a run: `{runtime, counts, errors}`. */
async function seen(name, runId) {
  const url = `${backends[name].url}/counts?run_id=${encodeURIComponent(runId)}`;
  const { status, body } = await request(url, { method: "GET" });
  assert.equal(status, 200, JSON.stringify(body));
  return body;
}

/** `check`, with the runtime's output added to the message of an error it throws. */
function withOutput(name, check) {
  return async () => {
    try {
      await check();
    } catch (err) {
      const output = backends[name]?.output();
      if (output && err instanceof Error) err.message += `\n--- ${name} output ---\n${output}`;
      throw err;
    }
  };
}

describe("the client on Bun and Deno, through the gateway", BOUND, () => {
  for (const name of Object.keys(RUNTIMES)) {
    test(`${name}: a run that fails at step 2 resumes there with step 1 run once`, withOutput(name, async () => {
      const { status, body } = await request(`${gateway.ingress}/${name}/steps?fail_at=2`);
      assert.equal(status, 200, JSON.stringify(body));
      assert.match(body.runtime, new RegExp(`^${name} \\d`), "served by another runtime");
      assert.equal(body.attempt, 2);
      // step-1's output is the one attempt 1 recorded, handed back in Durable-Steps.
      assert.deepEqual(body.results, [
        { step: 1, attempt: 1 },
        { step: 2, attempt: 2 },
        { step: 3, attempt: 2 },
      ]);
      const backend = await seen(name, body.run_id);
      assert.equal(backend.runtime, body.runtime);
      assert.deepEqual(backend.counts, { "step-1": 1, "step-2": 2, "step-3": 1 });
      // The step's error went past the adapter to the app's own handling, which answered 500.
      assert.deepEqual(backend.errors, ["step-2 failed on attempt 1"]);
      const detail = await gateway.finished(body.run_id);
      assert.deepEqual(
        detail.attempts.map((a) => a.status),
        [500, 200],
      );
      const step2 = detail.steps.find((s) => s.step_id === "step-2");
      assert.deepEqual(
        step2?.errors.map((e) => [e.attempt, e.message]),
        [[1, "step-2 failed on attempt 1"]],
        JSON.stringify(detail.steps),
      );
      // The client sent started_at and duration_ms with every output.
      for (const step of detail.steps) assert.equal(step.timing, "backend", JSON.stringify(step));
    }));

    test(`${name}: a durable sleep is answered 202, then resumed with its result`, withOutput(name, async () => {
      const { status, body } = await request(`${gateway.ingress}/${name}/sleep?ms=500`);
      assert.equal(status, 200, JSON.stringify(body));
      assert.match(body.runtime, new RegExp(`^${name} \\d`), "served by another runtime");
      assert.equal(body.attempt, 2);
      assert.deepEqual(body.results, [
        { step: 1, attempt: 1 },
        { step: 2, attempt: 2 },
      ]);
      const backend = await seen(name, body.run_id);
      assert.deepEqual(backend.counts, { "step-1": 1, "step-2": 1 });
      assert.deepEqual(backend.errors, [], "a Suspend reached the app's error handling");
      const detail = await gateway.finished(body.run_id);
      assert.deepEqual(
        detail.attempts.map((a) => a.status),
        [202, 200],
      );
      assert.equal(detail.attempts[0].outcome, "suspended");
      assert.ok(detail.steps.find((s) => s.step_id === "nap")?.completed, JSON.stringify(detail.steps));
    }));
  }
});
