/**
 * A streaming chat backend in TypeScript, with the JS client (clients/js): two checkpointed
 * model calls, then the answer token by token. The TypeScript twin of examples/chat_backend.py.
 *
 * One command from the repository root (builds the client and this example, then serves):
 *
 *     npm --prefix examples/ts_chat start -- --port 3003 [--crash-after N] [--fail-step plan]
 *                                            [--step-ms 800] [--token-ms 40]
 *     durable-gateway --config examples/ts_chat.yaml   # routes /chat/* durably to port 3003
 *
 * Endpoints:
 *   POST /chat        {"prompt": "...", "temperature": 0.7}: steps "retrieve" and "plan", then
 *                     the answer as text/event-stream, one event per token (`id: <index>`,
 *                     `data: {"token":"..."}`), then `event: done` with `data: {"tokens":N}`
 *   POST /chat/text   the same answer as text/plain chunks
 *   GET /_counts[?run_id=]   how often each step's function ran
 *   GET /_health
 *
 * The steps stand for LLM calls: slow (`--step-ms`), and random like sampling unless the
 * temperature is 0. The answer streams from their memoized outputs only, so a retried
 * attempt sends the same bytes again and the gateway resumes a broken stream without a seam.
 *
 * Failure knobs, on the first attempt only (`Durable-Attempt: 1`), per request by header or
 * for every request by flag:
 *   X-Crash-After: N   (--crash-after N)    break the connection off after N tokens
 *   X-Fail-Step: ID    (--fail-step ID)     the model call of step ID (retrieve or plan) fails
 */

import http from "node:http";
import { parseArgs } from "node:util";
import { setTimeout as delay } from "node:timers/promises";

import { StaleAttempt, type RunContext } from "@durable-gateway/client";
import { durableListener } from "@durable-gateway/client/node";

import { ModelError, plan, retrieve, tokens, type Sampling } from "./model.js";

const STEPS = ["retrieve", "plan"] as const;
type StepName = (typeof STEPS)[number];

/** The command line's pacing and failure knobs. */
interface Options {
  host: string;
  port: number;
  stepMs: number;
  tokenMs: number;
  crashAfter: number | null;
  failStep: StepName | null;
}

const MAX_PROMPT = 4000;
/** Largest request body read: a prompt of MAX_PROMPT characters fits many times over. */
const MAX_BODY = 64 * 1024;
/** Runs whose step counts are kept, oldest dropped first, so a long-lived server stays small. */
const MAX_COUNTED_RUNS = 10_000;

/** A request body or header the example does not accept: answered 400 (or 413). */
class BadRequest extends Error {
  constructor(
    message: string,
    readonly status = 400,
  ) {
    super(message);
  }
}

/** run id ("none" outside the gateway) -> step -> times its model call ran. */
const counts = new Map<string, Map<StepName, number>>();

function count(runId: string | null, step: StepName): void {
  const key = runId ?? "none";
  let run = counts.get(key);
  if (run === undefined) {
    if (counts.size >= MAX_COUNTED_RUNS) counts.delete(counts.keys().next().value as string);
    counts.set(key, (run = new Map()));
  }
  run.set(step, (run.get(step) ?? 0) + 1);
}

/** The body as text, up to MAX_BODY bytes kept; past that it is read to its end and dropped, so the 413 can still be sent. */
async function readBody(req: http.IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size <= MAX_BODY) chunks.push(chunk);
  }
  if (size > MAX_BODY) throw new BadRequest(`the body must be at most ${MAX_BODY} bytes`, 413);
  return Buffer.concat(chunks).toString("utf8");
}

/** The prompt and temperature of a request body, checked. */
function parseBody(raw: string): { prompt: string; temperature: number } {
  let body: unknown;
  try {
    body = JSON.parse(raw);
  } catch {
    throw new BadRequest("the body must be JSON");
  }
  if (body === null || typeof body !== "object" || Array.isArray(body)) {
    throw new BadRequest("the body must be a JSON object");
  }
  const { prompt, temperature = 0.7 } = body as Record<string, unknown>;
  if (typeof prompt !== "string" || prompt.length === 0 || prompt.length > MAX_PROMPT) {
    throw new BadRequest(`prompt must be a string of 1 to ${MAX_PROMPT} characters`);
  }
  if (typeof temperature !== "number" || !Number.isFinite(temperature)) {
    throw new BadRequest("temperature must be a number");
  }
  if (temperature < 0 || temperature > 2) throw new BadRequest("temperature must be between 0 and 2");
  return { prompt, temperature };
}

function header(req: http.IncomingMessage, name: string): string | undefined {
  const value = req.headers[name];
  return Array.isArray(value) ? value[0] : value;
}

function crashAfter(req: http.IncomingMessage, fallback: number | null): number | null {
  const raw = header(req, "x-crash-after");
  if (raw === undefined) return fallback;
  if (!/^[0-9]{1,9}$/.test(raw)) throw new BadRequest("X-Crash-After must be a whole number of tokens");
  return Number(raw);
}

function failStep(req: http.IncomingMessage, fallback: StepName | null): StepName | null {
  const raw = header(req, "x-fail-step");
  if (raw === undefined) return fallback;
  if (!(STEPS as readonly string[]).includes(raw)) throw new BadRequest(`X-Fail-Step must be one of ${STEPS.join(", ")}`);
  return raw as StepName;
}

function sendJson(res: http.ServerResponse, status: number, body: unknown): void {
  const data = JSON.stringify(body);
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(data) });
  res.end(data);
}

/** Write one chunk, waiting while the connection's buffer is full; false once it is gone. */
async function send(res: http.ServerResponse, chunk: string): Promise<boolean> {
  if (res.destroyed) return false;
  if (res.write(chunk)) return true;
  await new Promise<void>((resolve) => {
    const done = (): void => {
      res.off("drain", done);
      res.off("close", done);
      resolve();
    };
    res.on("drain", done);
    res.on("close", done);
  });
  return !res.destroyed;
}

/**
 * Simulate a crash mid-stream: what was written goes out, then the connection closes
 * without the closing chunk, so the body is incomplete and the gateway retries.
 */
function breakOff(res: http.ServerResponse): void {
  res.socket?.end(); // end, not destroy: the tokens written so far are flushed first
}

function sseEvent(index: number, token: string): string {
  return `id: ${index}\ndata: ${JSON.stringify({ token })}\n\n`;
}

/** Two memoized steps, then the answer streamed as SSE (/chat) or plain text (/chat/text). */
async function chat(ctx: RunContext, req: http.IncomingMessage, res: http.ServerResponse, options: Options): Promise<void> {
  let input: { prompt: string; temperature: number };
  let crash: number | null;
  let failing: StepName | null;
  try {
    input = parseBody(await readBody(req));
    crash = crashAfter(req, options.crashAfter);
    failing = failStep(req, options.failStep);
  } catch (err) {
    if (!(err instanceof BadRequest)) throw err;
    return sendJson(res, err.status, { error: err.message });
  }
  const sampling: Sampling = { ...input, delayMs: options.stepMs };
  const call = async <T>(step: StepName, model: () => Promise<T>): Promise<T> => {
    count(ctx.runId, step);
    if (step === failing && ctx.attempt === 1) {
      await delay(options.stepMs); // it fails after taking its time, as a timed-out call does
      throw new ModelError(`the model call of step ${step} failed on attempt ${ctx.attempt}`);
    }
    return model();
  };

  // A thrown error (the failure knob) is reported as the step's failed try, then reaches
  // the adapter, which answers 500: the gateway retries, and the next attempt gets the
  // steps completed so far back instead of calling the model again.
  const context = await ctx.step("retrieve", () => call("retrieve", () => retrieve(sampling)));
  const answer = await ctx.step("plan", () => call("plan", () => plan(sampling, context)));

  // From here on nothing may vary between attempts: every byte comes from the request and
  // the two memoized outputs. Only the crash knob looks at the attempt.
  const sse = new URL(req.url ?? "/", "http://backend").pathname === "/chat";
  const parts = tokens(answer);
  res.writeHead(200, {
    "content-type": sse ? "text/event-stream" : "text/plain; charset=utf-8",
    "cache-control": "no-cache",
  });
  const crashAt = ctx.attempt === 1 ? crash : null;
  for (const [i, token] of parts.entries()) {
    if (i === crashAt) return breakOff(res);
    await delay(options.tokenMs); // the model generating the next token
    if (!(await send(res, sse ? sseEvent(i, token) : token))) return; // the gateway hung up
  }
  if (crashAt !== null) return breakOff(res); // N past the last token: break off all the same
  if (sse) await send(res, `event: done\ndata: ${JSON.stringify({ tokens: parts.length })}\n\n`);
  res.end();
}

/** The adapter's default answer to a failed handler, with a one-line log for the knob's failures. */
function onError(err: unknown, _req: http.IncomingMessage, res: http.ServerResponse): void {
  if (err instanceof ModelError) console.error(`chat: ${err.message}`);
  else if (!(err instanceof StaleAttempt)) console.error("chat: the handler failed:", err);
  if (res.headersSent) res.destroy();
  else sendJson(res, 500, { error: err instanceof ModelError ? err.message : "internal error" });
}

function createServer(options: Options): http.Server {
  const chatListener = durableListener((ctx, req, res) => chat(ctx, req, res, options), { onError });
  const server = http.createServer((req, res) => {
    const url = new URL(req.url ?? "/", "http://backend");
    if (url.pathname === "/chat" || url.pathname === "/chat/text") {
      if (req.method === "POST") return void chatListener(req, res);
      res.setHeader("allow", "POST");
      return sendJson(res, 405, { error: "use POST" });
    }
    if (req.method === "GET" && url.pathname === "/_counts") {
      const runId = url.searchParams.get("run_id");
      if (runId !== null) return sendJson(res, 200, { counts: Object.fromEntries(counts.get(runId) ?? []) });
      return sendJson(res, 200, Object.fromEntries([...counts].map(([run, steps]) => [run, Object.fromEntries(steps)])));
    }
    if (req.method === "GET" && url.pathname === "/_health") return sendJson(res, 200, { ok: true });
    sendJson(res, 404, { error: "not found" });
  });
  // Outlive the gateway's idle keep-alive connections (it drops them after 15 s), so one
  // it reuses is never closed under it.
  server.keepAliveTimeout = 65_000;
  return server;
}

function parseOptions(argv: string[]): Options {
  const { values } = parseArgs({
    args: argv,
    strict: true,
    options: {
      host: { type: "string", default: "127.0.0.1" },
      port: { type: "string", default: "3003" },
      "step-ms": { type: "string", default: "800" },
      "token-ms": { type: "string", default: "40" },
      "crash-after": { type: "string" },
      "fail-step": { type: "string" },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) {
    console.log(
      "usage: node dist/server.js [--host 127.0.0.1] [--port 3003] [--step-ms 800] [--token-ms 40]\n" +
        "                           [--crash-after N] [--fail-step retrieve|plan]",
    );
    process.exit(0);
  }
  const whole = (name: string, text: string, max: number): number => {
    if (!/^[0-9]{1,9}$/.test(text) || Number(text) > max) throw new RangeError(`--${name} must be a whole number from 0 to ${max}`);
    return Number(text);
  };
  const failing = values["fail-step"];
  if (failing !== undefined && !(STEPS as readonly string[]).includes(failing)) {
    throw new RangeError(`--fail-step must be one of ${STEPS.join(", ")}`);
  }
  return {
    host: values.host,
    port: whole("port", values.port, 65535),
    stepMs: whole("step-ms", values["step-ms"], 600_000),
    tokenMs: whole("token-ms", values["token-ms"], 60_000),
    crashAfter: values["crash-after"] === undefined ? null : whole("crash-after", values["crash-after"], 1_000_000),
    failStep: (failing ?? null) as StepName | null,
  };
}

/** Serve until SIGINT or SIGTERM; print `listening on PORT` once bound (port 0 works). */
function main(): void {
  let options: Options;
  try {
    options = parseOptions(process.argv.slice(2));
  } catch (err) {
    console.error(`ts_chat: ${err instanceof Error ? err.message : String(err)}`);
    process.exit(2);
  }
  const server = createServer(options);
  server.listen(options.port, options.host, () => {
    const address = server.address();
    console.log(`listening on ${typeof address === "object" && address ? address.port : options.port}`);
  });
  const stop = (): void => {
    server.close();
    server.closeAllConnections();
  };
  process.once("SIGINT", stop);
  process.once("SIGTERM", stop);
}

main();
