/**
 * The run context of one attempt: the Durable-* headers parsed, `step`, `sleep` and
 * `waitForEvent`, and the sidecar calls behind them. Uses only what Node 18+, Bun and
 * Deno share (global fetch, AbortSignal.timeout, TextDecoder); keeps no global state.
 */

import {
  isSuspend,
  SidecarError,
  StaleAttempt,
  StepProtocolError,
  Suspend,
  type Problem,
  type SuspendKind,
} from "./errors.js";
import * as wire from "./wire.js";

/** Milliseconds a sidecar call may take by default; a `sync` write waits for a commit. */
export const DEFAULT_TIMEOUT_MS = 30_000;
/** Largest sidecar answer read by default: above the gateway's default run state (32 MiB). */
export const DEFAULT_MAX_ANSWER_BYTES = 64 * 1024 * 1024;

/**
 * Request headers in any of the shapes servers hand them over: a Web `Headers`, Node's
 * `IncomingHttpHeaders` (`req.headers`), or a plain record. Names are case-insensitive.
 */
export type HeadersInput =
  | { forEach(callback: (value: string, name: string) => void): void; get(name: string): string | null }
  | Record<string, string | string[] | undefined>;

/** What the gateway told this attempt in its Durable-* headers. */
export interface RunInfo {
  readonly runId: string;
  readonly attempt: number;
  /** Base URL of the run's sidecar API, without a trailing slash. */
  readonly sidecar: string;
  readonly token: string;
  /** Completed steps `{stepId: output}`; null means `GET {sidecar}/steps` first. */
  readonly steps: Record<string, unknown> | null;
}

export interface ContextOptions {
  /** Milliseconds each sidecar call may take (default 30 s). */
  timeoutMs?: number;
  /** Largest sidecar answer to read, in bytes (default 64 MiB). */
  maxAnswerBytes?: number;
  /** The fetch to call the sidecar with (default: the global one, which keeps connections alive). */
  fetch?: typeof fetch;
}

export interface StepOptions {
  /** Answer only once the gateway has committed the step (`?durable=sync`). */
  sync?: boolean;
}

/** An event a wait returns (SPEC.md §8). */
export interface DurableEvent {
  name: string;
  id: string;
  data: Record<string, unknown>;
  /** RFC 3339 UTC time the gateway received it. */
  ts: string;
}

/**
 * RunInfo from request headers; null when the gateway sent none (not a durable request).
 * Throws StepProtocolError when only some are present: a handler must not silently run
 * without durability behind the gateway.
 */
export function parseHeaders(headers: HeadersInput): RunInfo | null {
  const found = new Map<string, string>();
  const keep = (name: string, value: string | string[] | undefined | null): void => {
    const lower = name.toLowerCase();
    if (!lower.startsWith("durable-") || value == null || found.has(lower)) return;
    const first = Array.isArray(value) ? value[0] : value;
    if (typeof first === "string") found.set(lower, first);
  };
  if (headers === null || typeof headers !== "object") {
    throw new TypeError("durable() takes the request's headers: Headers, req.headers or a record");
  }
  if (typeof headers.forEach === "function" && typeof headers.get === "function") {
    (headers as { forEach(cb: (value: string, name: string) => void): void }).forEach((value, name) =>
      keep(name, value),
    );
  } else {
    for (const [name, value] of Object.entries(headers as Record<string, string | string[] | undefined>)) {
      keep(name, value);
    }
  }
  const runId = found.get(wire.RUN_ID);
  const sidecar = found.get(wire.SIDECAR);
  const token = found.get(wire.TOKEN);
  if (runId === undefined && sidecar === undefined && token === undefined) return null;
  if (!runId || !sidecar || !token) {
    throw new StepProtocolError(
      "incomplete durable headers: need Durable-Run-Id, Durable-Sidecar and Durable-Token",
    );
  }
  const attemptText = (found.get(wire.ATTEMPT) ?? "1").trim();
  const attempt = /^[0-9]{1,9}$/.test(attemptText) ? Number(attemptText) : 0;
  if (attempt < 1) throw new StepProtocolError(`malformed Durable-Attempt header: ${wire.short(attemptText)}`);
  if (!/^https?:\/\//i.test(sidecar)) {
    throw new StepProtocolError(`Durable-Sidecar is not an http(s) URL: ${wire.short(sidecar)}`);
  }
  let steps: Record<string, unknown> | null;
  try {
    steps = wire.decodeSteps(found.get(wire.STEPS));
  } catch (err) {
    // The sidecar is the source of truth, so a mangled header costs one GET, not the run.
    console.warn(`${(err as Error).message}; fetching steps from the sidecar instead`);
    steps = null;
  }
  return { runId, attempt, sidecar: sidecar.replace(/\/+$/, ""), token, steps };
}

/**
 * The context for this request: `durable(req.headers)`, `durable(request.headers)`.
 * Outside the gateway (no Durable-* headers) steps just run, nothing is recorded.
 */
export function durable(headers: HeadersInput, options: ContextOptions = {}): RunContext {
  return new RunContext(parseHeaders(headers), options);
}

interface Answer {
  status: number;
  text: string;
}

type StepFn<T> = () => T | PromiseLike<T>;

const NO_GATEWAY_WAIT =
  "cannot wait for events without the gateway: this request has no Durable-* headers " +
  "(send it through a durable route)";

/**
 * One attempt of one run: `await ctx.step(id, fn)`.
 *
 * Outputs travel as JSON and come back from JSON on a retry, so return JSON-native values
 * (objects, arrays, strings, numbers, booleans, null); `undefined` is recorded as null.
 * A step id used again in the same context becomes `id:1`, `id:2`, …, so a loop needs no
 * manual numbering as long as the handler calls its steps in the same order each time.
 */
export class RunContext {
  readonly #info: RunInfo | null;
  readonly #auth: string;
  readonly #timeoutMs: number;
  readonly #maxAnswer: number;
  readonly #fetch: typeof fetch;
  readonly #uses = new Map<string, number>();
  #memo: Record<string, unknown> | null;
  #fetching: Promise<Record<string, unknown>> | null = null;

  constructor(info: RunInfo | null, options: ContextOptions = {}) {
    const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    const maxAnswer = options.maxAnswerBytes ?? DEFAULT_MAX_ANSWER_BYTES;
    if (!(Number.isFinite(timeoutMs) && timeoutMs > 0)) throw new RangeError("timeoutMs must be > 0");
    if (!(Number.isInteger(maxAnswer) && maxAnswer > 0)) throw new RangeError("maxAnswerBytes must be > 0");
    this.#info = info;
    this.#auth = info ? `Bearer ${info.token}` : "";
    this.#timeoutMs = timeoutMs;
    this.#maxAnswer = maxAnswer;
    this.#fetch = options.fetch ?? ((input, init) => fetch(input, init));
    this.#memo = info ? info.steps : {};
  }

  /** False when the request did not come through the gateway: steps just run. */
  get durable(): boolean {
    return this.#info !== null;
  }

  get runId(): string | null {
    return this.#info?.runId ?? null;
  }

  /** 1 for the first attempt (and outside the gateway), then 2, 3, … */
  get attempt(): number {
    return this.#info?.attempt ?? 1;
  }

  /**
   * The step's output: the stored one if an earlier attempt completed it, else `fn()`'s,
   * recorded with when it started and how long it ran. If `fn` throws, the failed try is
   * reported to the sidecar (best effort) and the error rethrown. `sync` returns only once
   * the gateway has committed the step to storage.
   */
  async step<T>(id: string, fn: StepFn<T>, options: StepOptions = {}): Promise<T> {
    if (typeof fn !== "function") throw new TypeError("step(id, fn): fn must be a function");
    const stepId = this.#nextId(id); // before any await: keeps Promise.all() numbering stable
    if (this.#info === null) {
      const value = await fn();
      wire.outputJson(stepId, value); // the same serialisability rule with or without gateway
      return value;
    }
    const memo = await this.#completed();
    if (Object.hasOwn(memo, stepId)) return memo[stepId] as T;
    const path = stepUrl(stepId);
    const watch = stopwatch();
    let value: T;
    try {
      value = await fn();
    } catch (err) {
      if (!isSuspend(err)) await this.#reportFailure(path, err, watch());
      throw err;
    }
    const body = wire.putOutputBody(wire.outputJson(stepId, value), watch());
    const answer = await this.#call("PUT", options.sync ? `${path}?durable=sync` : path, body);
    if (answer.status === 200 || answer.status === 201) return value;
    const error = refusal(answer);
    if (answer.status === 409 && !(error instanceof StaleAttempt)) {
      // step-conflict: another attempt recorded a different output first; first write wins.
      return jsonOk(await this.#call("GET", path)).output as T;
    }
    throw error;
  }

  /**
   * Sleep durably for `duration` milliseconds, or `{until}` a Date or RFC 3339 string.
   *
   * A step like any other: returns at once if an earlier attempt saw it end. Otherwise
   * returns when the gateway says it is over, or throws `Suspend`: end the handler then;
   * the gateway calls it again after the wake time. The first call for this id in the run
   * fixes the wake time. Outside the gateway it just sleeps here.
   */
  async sleep(id: string, duration: wire.SleepFor): Promise<void> {
    const body = wire.sleepBody(duration, Date.now());
    const stepId = this.#nextId(id);
    if (this.#info === null) {
      const ms = typeof duration === "number" ? duration : wire.wakeTime(duration.until).getTime() - Date.now();
      return localSleep(ms);
    }
    if (Object.hasOwn(await this.#completed(), stepId)) return;
    const answer = await this.#call("POST", `${stepUrl(stepId)}/sleep`, body);
    if (answer.status === 202) throw new Suspend("sleep", stepId, wakeAt(answer, "wake_at"));
    jsonOk(answer);
  }

  /**
   * The first event named `event` whose dotted paths equal `match`; null on timeout.
   *
   * Throws `Suspend` while none has come: end the handler then; the gateway calls it
   * again when one arrives or `timeout` passes (absent: wait forever). `lookback` also
   * accepts events that arrived that long before the first call. The first call for this
   * id fixes event, match and timeout. Throws StepProtocolError outside the gateway,
   * where nothing could deliver an event.
   */
  async waitForEvent(id: string, options: wire.WaitOptions): Promise<DurableEvent | null> {
    const body = wire.waitBody(options);
    const stepId = this.#nextId(id);
    if (this.#info === null) throw new StepProtocolError(NO_GATEWAY_WAIT);
    const memo = await this.#completed();
    if (Object.hasOwn(memo, stepId)) return memo[stepId] as DurableEvent | null;
    const answer = await this.#call("POST", `${stepUrl(stepId)}/wait`, body);
    if (answer.status === 202) throw new Suspend("wait", stepId, wakeAt(answer, "timeout_at"));
    const event = jsonOk(answer).event;
    if (event !== null && !wire.isPlainObject(event)) {
      throw new SidecarError(answer.status, { detail: "wait answer's `event` is neither an object nor null" });
    }
    return (event ?? null) as DurableEvent | null;
  }

  /** `id` the first time, then `id:1`, `id:2`, … (steps, sleeps and waits share the count). */
  #nextId(base: string): string {
    if (typeof base !== "string" || base === "") throw new TypeError("a step id must be a non-empty string");
    const n = this.#uses.get(base) ?? 0;
    this.#uses.set(base, n + 1);
    return wire.checkStepId(n ? `${base}:${n}` : base);
  }

  /** The completed steps: from the headers, or fetched once however many ask at once. */
  async #completed(): Promise<Record<string, unknown>> {
    if (this.#memo !== null) return this.#memo;
    this.#fetching ??= this.#call("GET", "/steps").then(
      (answer) => (this.#memo = stepsFrom(jsonOk(answer))),
      (err: unknown) => {
        this.#fetching = null; // a failed fetch is tried again by the next step
        throw err;
      },
    );
    return this.#fetching;
  }

  async #reportFailure(path: string, err: unknown, timing: wire.Timing): Promise<void> {
    try {
      await this.#call("PUT", path, wire.putErrorBody(errorMessage(err), timing));
    } catch {
      // Best effort (SPEC.md §4.4): failing to report a failure must not mask it.
    }
  }

  /** One sidecar call, bounded by the timeout; the answer's body read whole (bounded too). */
  async #call(method: string, path: string, body?: string): Promise<Answer> {
    const info = this.#info as RunInfo;
    const headers: Record<string, string> = { authorization: this.#auth };
    if (body !== undefined) headers["content-type"] = "application/json";
    const init: RequestInit = { method, headers, signal: AbortSignal.timeout(this.#timeoutMs) };
    if (body !== undefined) init.body = body;
    try {
      const response = await this.#fetch(info.sidecar + path, init);
      return { status: response.status, text: await readBounded(response, this.#maxAnswer) };
    } catch (err) {
      if (err instanceof SidecarError) throw err;
      const reason = (err as Error)?.name === "TimeoutError" ? `no answer within ${this.#timeoutMs} ms` : String(err);
      throw new SidecarError(null, { detail: `sidecar unreachable (${method} ${path}): ${reason}` }, { cause: err });
    }
  }
}

/** Where a step lives under the sidecar URL. */
function stepUrl(stepId: string): string {
  return `/steps/${wire.stepPath(stepId)}`;
}

/** The body of an answer as text, refusing one larger than `limit` bytes. */
async function readBounded(response: Response, limit: number): Promise<string> {
  const declared = Number(response.headers.get("content-length") ?? "0");
  if (declared > limit || response.body === null) {
    await response.body?.cancel();
    if (declared > limit) throw new SidecarError(response.status, { detail: `answer of ${declared} bytes is over ${limit}` });
    return "";
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let text = "";
  let size = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.byteLength;
    if (size > limit) {
      await reader.cancel();
      throw new SidecarError(response.status, { detail: `answer is over ${limit} bytes` });
    }
    text += decoder.decode(value, { stream: true });
  }
  return text + decoder.decode();
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

/** A refusal as an error: StaleAttempt for a 409 `stale-attempt`, SidecarError otherwise. */
function refusal(answer: Answer): SidecarError {
  const parsed = parseJson(answer.text);
  const problem: Problem = wire.isPlainObject(parsed)
    ? (parsed as Problem)
    : { status: answer.status, detail: answer.text.slice(0, 500) };
  if (answer.status === 409 && wire.problemSlug(problem.type) === wire.PROBLEM_STALE_ATTEMPT) {
    return new StaleAttempt(answer.status, problem);
  }
  return new SidecarError(answer.status, problem);
}

/** The JSON object of a 200 answer; throws SidecarError otherwise. */
function jsonOk(answer: Answer): Record<string, unknown> {
  if (answer.status !== 200) throw refusal(answer);
  const parsed = parseJson(answer.text);
  if (!wire.isPlainObject(parsed)) {
    throw new SidecarError(answer.status, { detail: "sidecar sent no JSON object" });
  }
  return parsed;
}

function stepsFrom(answer: Record<string, unknown>): Record<string, unknown> {
  const steps = answer.steps;
  if (!wire.isPlainObject(steps)) throw new SidecarError(200, { detail: "GET steps answer has no `steps` object" });
  const memo: Record<string, unknown> = {};
  for (const [id, step] of Object.entries(steps)) {
    if (wire.isPlainObject(step)) memo[id] = step.output;
  }
  return memo;
}

/** The time under `key` of a 202 answer; null when absent or unreadable (the 202 is what counts). */
function wakeAt(answer: Answer, key: string): Date | null {
  const parsed = parseJson(answer.text);
  const value = wire.isPlainObject(parsed) ? parsed[key] : undefined;
  if (typeof value !== "string") return null;
  try {
    return wire.parseTimestamp(value);
  } catch {
    return null;
  }
}

/** A failed try's message: the error's, or its name, or its text. */
function errorMessage(err: unknown): string {
  if (err instanceof Error) return err.message || err.name;
  return typeof err === "string" ? err : wire.short(err);
}

/**
 * Times one try of a step's work (SPEC.md §4.3): the start from the wall clock, the
 * duration from the monotonic one so a clock step cannot skew it; cut to the microsecond.
 */
function stopwatch(): () => wire.Timing {
  const startedAt = Date.now() / 1000;
  const start = performance.now();
  return () => ({
    started_at: startedAt,
    duration_ms: Math.trunc((performance.now() - start) * 1000) / 1000,
  });
}

/** setTimeout caps a delay at 2^31-1 ms (about 24.8 days): longer sleeps go in slices. */
const MAX_TIMER_MS = 2 ** 31 - 1;

async function localSleep(ms: number): Promise<void> {
  const end = Date.now() + Math.max(0, ms);
  for (let left = end - Date.now(); left > 0; left = end - Date.now()) {
    await new Promise<void>((resolve) => setTimeout(resolve, Math.min(left, MAX_TIMER_MS)));
  }
}

export type { SuspendKind };
