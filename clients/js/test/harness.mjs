// Test harness: a real gateway process on free ports with its own SQLite file, servers
// for the backends under test, and polling with a deadline (no fixed sleeps).

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as delay } from "node:timers/promises";

/** `n` distinct free loopback ports, held open together so none is handed out twice. */
export async function freePorts(n) {
  const servers = await Promise.all(
    Array.from({ length: n }, () =>
      new Promise((resolve, reject) => {
        const s = net.createServer();
        s.once("error", reject);
        s.listen(0, "127.0.0.1", () => resolve(s));
      }),
    ),
  );
  const ports = servers.map((s) => s.address().port);
  await Promise.all(servers.map((s) => new Promise((resolve) => s.close(resolve))));
  return ports;
}

/** Retry `check` until it stops throwing, or rethrow its last error after `within` ms. */
export async function eventually(check, within = 15_000, interval = 25) {
  const deadline = Date.now() + within;
  for (;;) {
    try {
      return await check();
    } catch (err) {
      if (err?.fatal || Date.now() > deadline) throw err;
    }
    await delay(interval);
  }
}

/** Serve `listener` on a free loopback port; `{url, close}`. */
export async function serve(listener) {
  const server = http.createServer(listener);
  // Outlive the gateway's idle keep-alive connections, so a reused one is never closed under it.
  server.keepAliveTimeout = 65_000;
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    close: () =>
      new Promise((resolve) => {
        server.close(resolve);
        server.closeAllConnections();
      }),
  };
}

/**
 * A node:http listener calling a Web-standard `fetch(request) => Response` handler, the way
 * a Web runtime (or Next.js) would call it. An error it throws is logged and answered 500.
 */
export function fetchListener(handler) {
  return async (req, res) => {
    try {
      const chunks = [];
      for await (const chunk of req) chunks.push(chunk);
      const headers = new Headers();
      for (let i = 0; i < req.rawHeaders.length; i += 2) headers.append(req.rawHeaders[i], req.rawHeaders[i + 1]);
      const method = req.method ?? "GET";
      const body = method === "GET" || method === "HEAD" ? undefined : Buffer.concat(chunks);
      const response = await handler(new Request(new URL(req.url, "http://backend"), { method, headers, body }));
      const data = Buffer.from(await response.arrayBuffer());
      res.writeHead(response.status, Object.fromEntries(response.headers));
      res.end(data);
    } catch (err) {
      console.error("fetch handler failed:", err);
      if (res.headersSent) return void res.destroy();
      res.writeHead(500, { "content-type": "application/json" }).end(JSON.stringify({ error: "internal error" }));
    }
  };
}

/**
 * `spawn` a child that cannot outlive this process (SIGKILLed when it exits); `{proc,
 * exited(), stop()}`. `exited()` is null while it runs, else `{code, signal}` or `{error}`;
 * `stop()` sends SIGTERM, then SIGKILL after `graceMs`, and waits for the exit.
 */
export function spawnChild(command, args, options, graceMs) {
  const proc = spawn(command, args, options);
  let exited = null;
  const exit = new Promise((resolve) => proc.once("exit", (code, signal) => resolve((exited = { code, signal }))));
  proc.once("error", (err) => (exited = { error: err.message }));
  const killOnExit = () => proc.kill("SIGKILL");
  process.once("exit", killOnExit);
  return {
    proc,
    exited: () => exited,
    async stop() {
      process.removeListener("exit", killOnExit);
      if (exited !== null) return;
      proc.kill("SIGTERM");
      const timer = setTimeout(() => proc.kill("SIGKILL"), graceMs);
      await exit;
      clearTimeout(timer);
    },
  };
}

/**
 * Routes for `startGateway`: `/NAME/*` to each `{NAME: url}`, with quick retries, so a
 * failed first attempt is retried within the test's bounds.
 */
export function routesTo(upstreams) {
  return Object.entries(upstreams)
    .map(([name, url]) =>
      [
        `- name: ${name}`,
        `  match: {path: /${name}/*}`,
        `  upstream: ${url}`,
        "  retry: {initial_backoff: 20ms, max_backoff: 200ms}",
        "  hold: 10s",
      ].join("\n"),
    )
    .join("\n");
}

/**
 * Start `durable-gateway` (from PATH, or $DURABLE_GATEWAY) with `routes` (YAML lines of the
 * routes list) and wait for its admin /healthz. `stop()` sends SIGTERM, then SIGKILL after 10 s.
 */
export async function startGateway(routes) {
  const dir = mkdtempSync(join(tmpdir(), "dg-js-"));
  const [ingress, sidecar, admin] = await freePorts(3);
  const config = [
    "server:",
    `  ingress: 127.0.0.1:${ingress}`,
    `  sidecar: 127.0.0.1:${sidecar}`,
    `  admin: 127.0.0.1:${admin}`,
    "  shutdown_grace: 2s",
    "storage:",
    `  url: sqlite:///${join(dir, "durable.db")}`,
    "routes:",
    routes.replace(/^/gm, "  "),
  ].join("\n");
  const configPath = join(dir, "gateway.yaml");
  writeFileSync(configPath, config + "\n");
  const logPath = join(dir, "gateway.log");
  const log = openSync(logPath, "a");
  const command = process.env.DURABLE_GATEWAY || "durable-gateway";
  const child = spawnChild(command, ["--config", configPath], { stdio: ["ignore", log, log] }, 10_000);

  const gateway = {
    ingress: `http://127.0.0.1:${ingress}`,
    sidecar: `http://127.0.0.1:${sidecar}`,
    admin: `http://127.0.0.1:${admin}`,
    logs: () => readFileSync(logPath, "utf8"),
    /** The run once its final writes are committed (they follow the answer). */
    finished: (runId) =>
      eventually(async () => {
        const { status, body } = await request(`${gateway.admin}/v1/runs/${runId}`, { method: "GET" });
        assert.equal(status, 200, JSON.stringify(body));
        assert.notEqual(body.finished_at, null);
        assert.ok(body.attempts.every((a) => a.ended_at !== null));
        return body;
      }),
    async stop() {
      await child.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
  try {
    await eventually(async () => {
      if (child.exited()) throw Object.assign(new Error(`gateway exited: ${JSON.stringify(child.exited())}`), { fatal: true });
      const res = await fetch(`${gateway.admin}/healthz`, { signal: AbortSignal.timeout(1000) });
      await res.arrayBuffer();
      if (res.status !== 200) throw new Error(`healthz answered ${res.status}`);
    }, 20_000);
  } catch (err) {
    const output = gateway.logs();
    await gateway.stop();
    throw new Error(`gateway did not come up: ${err.message}\n${output}`);
  }
  return gateway;
}

/** A JSON request with a timeout; `{status, headers, body}` with the body parsed when JSON. */
export async function request(url, { method = "POST", headers = {}, body } = {}) {
  const res = await fetch(url, { method, headers, body, signal: AbortSignal.timeout(30_000) });
  const text = await res.text();
  let parsed = text;
  try {
    parsed = JSON.parse(text);
  } catch {}
  return { status: res.status, headers: res.headers, body: parsed };
}
