/**
 * The step protocol on the wire (step_protocol/SPEC.md, version 2): header names, the
 * Durable-Steps codec, step paths, durations and the bodies of sidecar calls.
 * Pure: no I/O and nothing runtime-specific (no Buffer), so Node, Bun and Deno read it alike.
 */

export const PROTOCOL_VERSION = 2;

// Request headers the gateway adds to every attempt (lower case: compared case-insensitively).
export const RUN_ID = "durable-run-id";
export const ATTEMPT = "durable-attempt";
export const SIDECAR = "durable-sidecar";
export const TOKEN = "durable-token";
export const STEPS = "durable-steps";
/** Response header that makes a failure final; `no` is its one value. */
export const RETRY = "Durable-Retry";

/** Durable-Steps value meaning: too large for a header, `GET {sidecar}/steps`. */
export const STEPS_FETCH = "fetch";
/** Longest step id, in characters (code points). */
export const MAX_STEP_ID = 256;
/** Longest sleep, wait `timeout` or `lookback`, in seconds: 10 years. */
export const MAX_DURATION = 10 * 365 * 86400;
/** Longest duration or timestamp string, in characters. */
export const MAX_TEXT = 64;
export const MAX_EVENT_NAME = 256;
export const MAX_MATCH_KEYS = 32;
export const MAX_MATCH_PATH = 256;
/** Largest `match` value, in bytes of JSON. */
export const MAX_MATCH_VALUE = 4096;

export const PROBLEM_STALE_ATTEMPT = "stale-attempt";

/** Any JSON value: what a step's output is on the wire. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

const encoder = new TextEncoder();

/** Characters in a string counted as code points, the way the gateway counts them. */
export function codePoints(text: string): number {
  let n = 0;
  for (const _ of text) n++;
  return n;
}

/** `repr`-like text of a value for an error message, cut so an absurd one cannot flood it. */
export function short(value: unknown): string {
  let text: string;
  try {
    text = typeof value === "string" ? JSON.stringify(value) : String(value);
  } catch {
    text = Object.prototype.toString.call(value);
  }
  return text.length <= MAX_TEXT ? text : text.slice(0, MAX_TEXT - 3) + "...";
}

/**
 * Completed steps `{stepId: output}` from a Durable-Steps value; `null` means fetch them.
 * Accepts padded and unpadded base64url. Throws Error on a malformed value.
 */
export function decodeSteps(value: string | undefined | null): Record<string, unknown> | null {
  const text = (value ?? "").trim();
  if (!text) return {};
  if (text === STEPS_FETCH) return null;
  let steps: unknown;
  try {
    steps = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(base64UrlBytes(text)));
  } catch (err) {
    throw new Error(`malformed Durable-Steps header: ${(err as Error).message}`);
  }
  if (!isPlainObject(steps)) throw new Error("Durable-Steps must encode a JSON object");
  return steps;
}

const BASE64URL = /^[A-Za-z0-9_-]*={0,2}$/;

/** Bytes of a base64url string (RFC 4648 §5), with or without `=` padding; no Buffer. */
export function base64UrlBytes(text: string): Uint8Array {
  if (!BASE64URL.test(text)) throw new Error("not base64url");
  const bare = text.replace(/=+$/, "");
  if (bare.length % 4 === 1) throw new Error("not base64url: bad length");
  const standard = bare.replace(/-/g, "+").replace(/_/g, "/");
  const binary = atob(standard + "=".repeat((4 - (standard.length % 4)) % 4));
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

/** base64url without padding of a string's UTF-8 bytes (what the gateway sends). */
export function encodeSteps(steps: Record<string, unknown>): string {
  const bytes = encoder.encode(JSON.stringify(steps));
  let binary = "";
  for (const byte of bytes) binary += String.fromCharCode(byte);
  return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/**
 * A step id as one URL path segment: every byte but `A-Z a-z 0-9 - . _ ~` percent-encoded
 * (encodeURIComponent leaves `!'()*` alone, SPEC.md §4 wants them encoded too).
 */
export function stepPath(stepId: string): string {
  let encoded: string;
  try {
    encoded = encodeURIComponent(stepId);
  } catch {
    throw new TypeError(`step id ${short(stepId)} is not valid Unicode (a lone surrogate)`);
  }
  return encoded.replace(/[!'()*]/g, (c) => "%" + c.charCodeAt(0).toString(16).toUpperCase());
}

/** Throws TypeError unless `stepId` is a step id the gateway takes (1-256 characters, no NUL). */
export function checkStepId(stepId: string): string {
  const n = codePoints(stepId);
  if (n === 0 || n > MAX_STEP_ID || stepId.includes("\u0000")) {
    throw new TypeError(
      `a step id is 1 to ${MAX_STEP_ID} characters without U+0000, not ${short(stepId)}`,
    );
  }
  stepPath(stepId); // refuses lone surrogates before any work is done
  return stepId;
}

/** The slug of a problem `type` URI: its last path segment (SPEC.md §6). */
export function problemSlug(typeUri: unknown): string {
  if (typeof typeUri !== "string") return "";
  return typeUri.replace(/\/+$/, "").split("/").pop() ?? "";
}

export function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

// --- durations and timestamps ---------------------------------------------------------

/** A wait's `timeout` or `lookback`: milliseconds as a number, or a string like `30s`, `1h30m`. */
export type Duration = number | string;

const UNITS: Record<string, number> = { ms: 0.001, s: 1, m: 60, h: 3600, d: 86400 };
const NUMBER = String.raw`(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)`;
const DURATION = new RegExp(String.raw`^(?:(?:${NUMBER}\s*(?:ms|s|m|h|d)\s*)+|${NUMBER})$`);
const DURATION_PART = new RegExp(String.raw`(${NUMBER})\s*(ms|s|m|h|d)`, "g");

/**
 * Seconds in a duration string, the grammar the gateway takes (`250ms`, `30s`, `1h30m`,
 * `7d`; a bare number is seconds), checked against 0..MAX_DURATION.
 */
export function parseDurationText(value: string): number {
  const text = value.trim();
  if (text.length > MAX_TEXT || !DURATION.test(text)) {
    throw new RangeError(`invalid duration ${short(value)}: use e.g. 250ms, 30s, 5m, 1h30m, 7d`);
  }
  let seconds = 0;
  let parts = 0;
  for (const [, n, unit] of text.matchAll(DURATION_PART)) {
    seconds += Number(n) * (UNITS[unit as string] as number);
    parts++;
  }
  return checkSeconds(parts ? seconds : Number(text), value);
}

/** Seconds from milliseconds given as a JS number, checked against 0..MAX_DURATION. */
export function secondsFromMs(ms: number, what: string): number {
  if (typeof ms !== "number" || !Number.isFinite(ms)) {
    throw new RangeError(`${what} must be a finite number of milliseconds, not ${short(ms)}`);
  }
  return checkSeconds(ms / 1000, ms);
}

function checkSeconds(seconds: number, given: unknown): number {
  if (!Number.isFinite(seconds) || seconds < 0) {
    throw new RangeError(`invalid duration ${short(given)}: must be finite and >= 0`);
  }
  if (seconds > MAX_DURATION) {
    throw new RangeError(`duration ${short(given)} is too long: at most 10 years (315360000 s)`);
  }
  return seconds;
}

/** A Duration as the wire wants it: a number of seconds, or the string as given. */
export function wireDuration(value: Duration, what: string): number | string {
  if (typeof value === "string") {
    parseDurationText(value);
    return value;
  }
  return secondsFromMs(value, what);
}

const RFC3339 =
  /^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2})$/;

/** A Date from an RFC 3339 timestamp with an offset; throws RangeError otherwise. */
export function parseTimestamp(text: string): Date {
  const trimmed = typeof text === "string" ? text.trim() : "";
  const when = trimmed.length <= MAX_TEXT && RFC3339.test(trimmed) ? new Date(trimmed) : null;
  if (when === null || Number.isNaN(when.getTime())) {
    throw new RangeError(`not an RFC 3339 timestamp with an offset: ${short(text)}`);
  }
  return when;
}

// --- bodies ---------------------------------------------------------------------------

/** JSON text of a step's output; `undefined` (a step with no result) is recorded as null. */
export function outputJson(stepId: string, value: unknown): string {
  if (value === undefined) return "null";
  let text: string | undefined;
  try {
    text = JSON.stringify(value);
  } catch (err) {
    throw new TypeError(`output of step ${short(stepId)} is not JSON-serialisable: ${(err as Error).message}`);
  }
  if (text === undefined) {
    throw new TypeError(`output of step ${short(stepId)} is not JSON-serialisable: ${typeof value}`);
  }
  return text;
}

/** The timing members of a step PUT (SPEC.md §4.3): Unix seconds and milliseconds. */
export interface Timing {
  started_at: number;
  duration_ms: number;
}

/** Body of a PUT that records a step's output; `outputText` is already JSON. */
export function putOutputBody(outputText: string, timing?: Timing): string {
  const tail = timing ? `,"started_at":${timing.started_at},"duration_ms":${timing.duration_ms}` : "";
  return `{"output":${outputText}${tail}}`;
}

/** Body of a PUT that reports a failed try of a step (SPEC.md §4.4). */
export function putErrorBody(message: string, timing: Timing): string {
  return JSON.stringify({ error: { message }, ...timing });
}

/** When a sleep ends: after a number of milliseconds, or at a time. */
export type SleepFor = number | { until: Date | string };

/** Body of a sleep call: `{seconds}` or `{until}`, checked the way the sidecar checks it. */
export function sleepBody(duration: SleepFor, now: number): string {
  if (typeof duration === "number") {
    return JSON.stringify({ seconds: secondsFromMs(duration, "a sleep") });
  }
  if (typeof duration === "string") {
    throw new TypeError(`sleep takes milliseconds or {until}, not the string ${short(duration)}`);
  }
  if (!isPlainObject(duration) || !("until" in duration)) {
    throw new TypeError("sleep takes milliseconds or {until: Date | RFC 3339 string}");
  }
  const until = wakeTime(duration.until);
  if (until.getTime() > now + MAX_DURATION * 1000) {
    throw new RangeError("until is too far ahead: at most 10 years from now");
  }
  return JSON.stringify({
    until: typeof duration.until === "string" ? duration.until : until.toISOString(),
  });
}

/** The Date of a sleep's `until`. */
export function wakeTime(until: Date | string): Date {
  if (until instanceof Date) {
    if (Number.isNaN(until.getTime())) throw new RangeError("until is an invalid Date");
    return until;
  }
  return parseTimestamp(until);
}

/** What a wait matches: dotted paths into the event object and the values they must equal. */
export type Match = Record<string, Json>;

export interface WaitOptions {
  /** The event's name, compared exactly. */
  event: string;
  /** Dotted paths (`data.order_id`) to the values they must equal; absent: any event of the name. */
  match?: Match;
  /** How long to wait from the first call: milliseconds or a string like `1h`; absent: forever. */
  timeout?: Duration;
  /** Also match events that arrived this long before the first call. */
  lookback?: Duration;
}

/** Body of a wait call, checked against the bounds of SPEC.md §4.9. */
export function waitBody(options: WaitOptions): string {
  if (!isPlainObject(options)) throw new TypeError("waitForEvent takes {event, match, timeout, lookback}");
  const body: Record<string, unknown> = { event: checkEventName(options.event) };
  if (options.match !== undefined && Object.keys(checkMatch(options.match)).length) {
    body.match = options.match;
  }
  if (options.timeout !== undefined) body.timeout = wireDuration(options.timeout, "timeout");
  if (options.lookback !== undefined) body.lookback = wireDuration(options.lookback, "lookback");
  return JSON.stringify(body);
}

/** An event name: 1 to MAX_EVENT_NAME characters, without U+0000. */
export function checkEventName(name: unknown): string {
  if (
    typeof name !== "string" ||
    name.length === 0 ||
    codePoints(name) > MAX_EVENT_NAME ||
    name.includes("\u0000")
  ) {
    throw new TypeError(`an event name is a string of 1 to ${MAX_EVENT_NAME} characters, without U+0000`);
  }
  return name;
}

/** A wait's `match`, checked: at most 32 dotted paths, each value at most 4096 bytes of JSON. */
export function checkMatch(match: unknown): Record<string, unknown> {
  if (!isPlainObject(match)) throw new TypeError("a match maps dotted paths to values");
  const entries = Object.entries(match);
  if (entries.length > MAX_MATCH_KEYS) {
    throw new RangeError(`a match has at most ${MAX_MATCH_KEYS} paths, not ${entries.length}`);
  }
  for (const [path, value] of entries) {
    if (!path || path.split(".").includes("")) {
      throw new TypeError(`a match key is a dotted path like data.order_id, not ${short(path)}`);
    }
    if (codePoints(path) > MAX_MATCH_PATH) {
      throw new RangeError(`a match path is at most ${MAX_MATCH_PATH} characters`);
    }
    const text = value === undefined ? undefined : JSON.stringify(value);
    if (text === undefined) throw new TypeError(`match value of ${short(path)} is not JSON`);
    const size = encoder.encode(text).length;
    if (size > MAX_MATCH_VALUE) {
      throw new RangeError(
        `match value of ${short(path)} is ${size} bytes of JSON: at most ${MAX_MATCH_VALUE}`,
      );
    }
  }
  return match;
}
